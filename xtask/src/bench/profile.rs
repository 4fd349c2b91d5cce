//! Where the time goes: the programs' own run time per call, from
//! `kernel.bpf_stats_enabled=1` in passes separate from the timed rounds.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
};

use anyhow::{Context as _, Result};

use super::{
    bpftool::{prog_stats, progs_under},
    context::{Ctx, BPF_STATS, TEARDOWN},
    percall::{Config, Route, OPS},
    runner::interleaved,
    stats::{f, median},
    worker::{percall_once, Net},
    Plan,
};

/// BPF run time per call of one operation in one configuration.
#[derive(Clone, Debug, Default)]
pub(super) struct BpfCost {
    /// Sum over every program of the cgroup, ns per call.
    pub(super) total_ns: f64,
    /// Program name -> (ns per call, runs per call).
    pub(super) progs: BTreeMap<String, (f64, f64)>,
}

/// Config name -> op -> cost.
pub(super) type Costs = BTreeMap<String, BTreeMap<String, BpfCost>>;
/// [`Costs`] per route.
pub(super) type ByRoute = BTreeMap<Route, Costs>;

/// One more worker pass per configuration with programs and operation with
/// `kernel.bpf_stats_enabled=1`: the programs' own run time per call.
/// Separate from the timed rounds because the statistics add two clock
/// reads to every program run.
///
/// Covers every configuration with programs of its own (sbx and the
/// floor) on every route in `nets`; returns route -> config -> op -> cost.
pub(super) fn profile(ctx: &Ctx, nets: &[(Route, &Net)], configs: &[Config], plan: &Plan) -> Result<ByRoute> {
    let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
    if let Some(t) = TEARDOWN.get() {
        if let Ok(mut g) = t.bpf_stats.lock() {
            g.get_or_insert_with(|| old.trim().to_owned());
        }
    }
    fs::write(BPF_STATS, "1").context("setting kernel.bpf_stats_enabled=1")?;
    // Per (route, configuration, operation): one cost per round.
    let mut acc: BTreeMap<(Route, String, String), Vec<BpfCost>> = BTreeMap::new();
    let result = (|| -> Result<()> {
        let sbx: Vec<&Config> = configs.iter().filter(|c| c.has_programs()).collect();
        let mut progs: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for c in &sbx {
            progs.insert(c.name.clone(), progs_under(&c.cg)?.into_iter().collect());
        }
        for round in 0..plan.profile_rounds {
            eprintln!("bench: percall: bpf_stats round {}/{}", round + 1, plan.profile_rounds);
            for i in interleaved(sbx.len(), round) {
                let c = sbx[i];
                for &(route, net) in nets {
                    for (op, _) in OPS {
                        let iters = if op == "tcp_cycle" { plan.tcp_iters / 2 } else { plan.fast_iters / 2 };
                        let before = prog_stats()?;
                        percall_once(ctx, net, c, (iters, iters), &[op])?;
                        let after = prog_stats()?;
                        // The worker warms up with a tenth as many calls first.
                        let calls = f(u64::from(iters + iters / 10));
                        let mut cost = BpfCost::default();
                        for (id, name) in &progs[&c.name] {
                            let (Some(b), Some(a)) = (before.get(id), after.get(id)) else {
                                continue;
                            };
                            let runs = a.1.saturating_sub(b.1);
                            if runs == 0 {
                                continue;
                            }
                            let ns = f(a.0.saturating_sub(b.0)) / calls;
                            cost.total_ns += ns;
                            cost.progs.insert(name.clone(), (ns, f(runs) / calls));
                        }
                        acc.entry((route, c.name.clone(), op.to_owned())).or_default().push(cost);
                    }
                }
            }
        }
        Ok(())
    })();
    // Medians over the rounds, per program and in total.
    let mut out = ByRoute::new();
    for ((route, cfg, op), costs) in acc {
        let totals: Vec<f64> = costs.iter().map(|c| c.total_ns).collect();
        let mut m = BpfCost { total_ns: median(&totals), progs: BTreeMap::new() };
        let names: HashSet<&String> = costs.iter().flat_map(|c| c.progs.keys()).collect();
        for name in names {
            let ns: Vec<f64> = costs.iter().filter_map(|c| c.progs.get(name)).map(|p| p.0).collect();
            let runs: Vec<f64> = costs.iter().filter_map(|c| c.progs.get(name)).map(|p| p.1).collect();
            m.progs.insert(name.clone(), (median(&ns), median(&runs)));
        }
        out.entry(route).or_default().entry(cfg).or_default().insert(op, m);
    }
    let _ = fs::write(BPF_STATS, old.trim());
    if let Some(t) = TEARDOWN.get() {
        if let Ok(mut g) = t.bpf_stats.lock() {
            *g = None;
        }
    }
    result?;
    Ok(out)
}
