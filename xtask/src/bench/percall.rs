//! Section 1, per-call cost: the configurations, the interleaved timed
//! rounds from inside each configuration's cgroup, and their tables.
//! Sections 1 and 2 share their sandboxes ([`policy_sections`]).

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    context::{rmdir_retry, Ctx},
    policies::{size_label, Policies},
    profile::{profile, BpfCost},
    report::{big_small, Table},
    runner::interleaved,
    sbx::{self, EventFollower},
    scale::{self, ScaleRow},
    stats::{dur_ms, f, opt_ns, thousands, x, Stat},
    worker::{percall_once, Net},
    Plan,
};

/// Per-call operations, in table order.
pub(super) const OPS: [(&str, &str); 5] = [
    ("tcp_cycle", "TCP connect+accept+close"),
    ("refused", "connect to a closed port (ECONNREFUSED)"),
    ("udp_sendto", "UDP sendto"),
    ("denied_connect", "denied connect"),
    ("denied_sendto", "denied sendto"),
];

#[derive(Clone, Debug)]
pub(super) enum Kind {
    None,
    Landlock,
    Sbx { flags: Vec<String>, rules: Option<usize>, audit: bool },
}

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) kind: Kind,
    pub(super) cg: PathBuf,
}

impl Config {
    /// The outcome every call of `op` must have in this configuration.
    pub(super) fn expected(&self, op: &str) -> &'static str {
        match (op, &self.kind) {
            ("refused", _) | ("denied_connect", Kind::None | Kind::Sbx { audit: true, .. }) => "ECONNREFUSED",
            ("denied_connect", Kind::Landlock) => "EACCES",
            ("denied_connect" | "denied_sendto", Kind::Sbx { audit: false, .. }) => "EPERM",
            _ => "ok",
        }
    }

    pub(super) fn is_sbx(&self) -> bool {
        matches!(self.kind, Kind::Sbx { .. })
    }
}

/// Results of the per-call section.
pub(super) struct Percall {
    pub(super) configs: Vec<Config>,
    /// config name -> op -> samples (ns/op), one per round.
    pub(super) samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// The same, in on-CPU time of the worker thread.
    pub(super) cpu: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// config name -> op -> BPF cost (`bpf_stats` pass).
    pub(super) bpf: BTreeMap<String, BTreeMap<String, BpfCost>>,
    /// Events the reader of the audit configuration printed.
    pub(super) audit_events: u64,
    pub(super) ports: Value,
}

impl Percall {
    pub(super) fn stat(&self, cfg: &str, op: &str) -> Option<Stat> {
        Stat::of(self.samples.get(cfg)?.get(op)?)
    }

    pub(super) fn ratio(&self, cfg: &str, base: &str, op: &str) -> Option<Stat> {
        Some(self.stat(cfg, op)?.ratio(self.stat(base, op)?))
    }

    pub(super) fn cpu_stat(&self, cfg: &str, op: &str) -> Option<Stat> {
        Stat::of(self.cpu.get(cfg)?.get(op)?)
    }

    pub(super) fn cpu_ratio(&self, cfg: &str, base: &str, op: &str) -> Option<Stat> {
        Some(self.cpu_stat(cfg, op)?.ratio(self.cpu_stat(base, op)?))
    }

    /// `bpf_stats` ns per call of one program for `op` in `cfg`, as text.
    pub(super) fn prog_ns(&self, cfg: &str, op: &str, prog: &str) -> String {
        opt_ns(self.bpf.get(cfg).and_then(|b| b.get(op)).and_then(|c| c.progs.get(prog)).map(|p| p.0))
    }

    pub(super) fn bpf_ns(&self, cfg: &str, op: &str) -> Option<f64> {
        Some(self.bpf.get(cfg)?.get(op)?.total_ns)
    }

    pub(super) fn json(&self) -> Value {
        let configs: Vec<Value> = self
            .configs
            .iter()
            .map(|c| {
                let ops: serde_json::Map<String, Value> = OPS
                    .iter()
                    .filter_map(|(op, _)| {
                        let s = self.stat(&c.name, op)?;
                        let bpf = self.bpf.get(&c.name).and_then(|b| b.get(*op));
                        Some((
                            (*op).to_owned(),
                            json!({
                                "samples_ns": self.samples[&c.name][*op],
                                "ns": s.json(),
                                "ratio_vs_none": self.ratio(&c.name, "none", op).map(Stat::json),
                                "cpu_samples_ns": self.cpu.get(&c.name).and_then(|m| m.get(*op)),
                                "cpu_ns": self.cpu_stat(&c.name, op).map(Stat::json),
                                "cpu_ratio_vs_none": self.cpu_ratio(&c.name, "none", op).map(Stat::json),
                                "expected_outcome": c.expected(op),
                                "bpf_ns_per_call": bpf.map(|b| b.total_ns),
                                "bpf_programs": bpf.map(|b| b.progs.iter().map(|(k, (ns, runs))| (k.clone(), json!({ "ns_per_call": ns, "runs_per_call": runs }))).collect::<serde_json::Map<_, _>>()),
                            }),
                        ))
                    })
                    .collect();
                json!({
                    "name": c.name,
                    "label": c.label,
                    "rules": match &c.kind { Kind::Sbx { rules, .. } => json!(rules), _ => Value::Null },
                    "ops": ops,
                })
            })
            .collect();
        json!({ "configs": configs, "ports": self.ports, "audit_events_read": self.audit_events })
    }
}

/// Sections 1 and 2: they share the sandboxes, because loading a large
/// policy is the expensive part of both.
#[expect(clippy::too_many_lines, reason = "one sequence of phases, each short")]
pub(super) fn policy_sections(
    ctx: &Ctx,
    plan: &Plan,
    policies: &Policies,
    want_percall: bool,
    want_scale: bool,
) -> Result<(Option<Percall>, Option<Vec<ScaleRow>>)> {
    let mut rows = scale::check_sizes(ctx, plan, policies)?;

    let net = if want_percall { Some(Net::new()?) } else { None };
    if let Some(net) = &net {
        eprintln!(
            "bench: percall: listener 127.0.0.1:{}, closed {}, udp {}, denied tcp {} udp {}",
            net.tcp_port, net.refused_port, net.udp_port, net.denied_port, net.denied_udp_port
        );
    }
    let small = sbx::small_policy();
    let mut configs = Vec::new();
    if want_percall {
        configs.push(Config {
            name: "none".into(),
            label: "no sandbox".into(),
            kind: Kind::None,
            cg: ctx.mkcg("pc-none")?,
        });
        configs.push(Config {
            name: "sbx-small".into(),
            label: "sbx, small policy".into(),
            kind: Kind::Sbx { flags: small.clone(), rules: None, audit: false },
            cg: ctx.mkcg("pc-small")?,
        });
        let mut audit = small.clone();
        audit.push("--audit".into());
        configs.push(Config {
            name: "sbx-audit".into(),
            label: "sbx, small policy, audit mode, events read".into(),
            kind: Kind::Sbx { flags: audit, rules: None, audit: true },
            cg: ctx.mkcg("pc-audit")?,
        });
    }
    for row in rows.iter().filter(|r| r.skipped.is_none()) {
        let n = row.rules;
        configs.push(Config {
            name: format!("sbx-{}", size_label(n)),
            label: format!("sbx, {} CIDR rules", thousands(f(n as u64))),
            kind: Kind::Sbx { flags: policies.flags(n), rules: Some(n), audit: false },
            cg: ctx.mkcg(&format!("pc-rules-{n}"))?,
        });
    }
    if want_percall {
        configs.push(Config {
            name: "landlock".into(),
            label: "Landlock TCP connect rules".into(),
            kind: Kind::Landlock,
            cg: ctx.mkcg("pc-landlock")?,
        });
    }

    // Attach every sbx configuration; for the generated policies this is
    // the first load sample, with kernel memory.
    for c in &configs {
        let Kind::Sbx { flags, rules, .. } = &c.kind else {
            continue;
        };
        eprintln!("bench: attaching {}", c.label);
        match rules {
            Some(n) => {
                let row = rows.iter_mut().find(|r| r.rules == *n).expect("a row per size");
                row.load(ctx, &c.cg, flags, &format!("load-{n}-0"))?;
            }
            None => {
                ctx.attach(&c.cg, flags, None, None)?;
            }
        }
    }

    let mut percall = None;
    if let Some(net) = &net {
        // The audit configuration's events are read as they come, as a user
        // following them would.
        let audit_cg = &configs.iter().find(|c| c.name == "sbx-audit").expect("configured").cg;
        let reader = EventFollower::start(ctx, audit_cg)?;
        let mut samples: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        let mut cpu: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for round in 0..plan.rounds {
            eprintln!("bench: percall: round {}/{}", round + 1, plan.rounds);
            for i in interleaved(configs.len(), round) {
                let c = &configs[i];
                let r = percall_once(ctx, net, c, (plan.tcp_iters, plan.fast_iters), &[])?;
                for (op, (ns, cpu_ns)) in r {
                    let name = c.name.clone();
                    samples.entry(name.clone()).or_default().entry(op.clone()).or_default().push(ns);
                    cpu.entry(name).or_default().entry(op).or_default().push(cpu_ns);
                }
            }
        }
        let bpf = if ctx.bpftool { profile(ctx, net, &configs, plan)? } else { BTreeMap::new() };
        let audit_events = reader.stop().len() as u64;
        let ports = json!({
            "listener": net.tcp_port, "closed": net.refused_port, "udp": net.udp_port,
            "denied_tcp": net.denied_port, "denied_udp": net.denied_udp_port,
            "allowed_loopback": sbx::ALLOWED_LOOPBACK,
        });
        percall = Some(Percall { configs: configs.clone(), samples, cpu, bpf, audit_events, ports });
    }

    if want_scale {
        scale::more_rounds(ctx, plan, policies, &mut rows)?;
    }

    for c in &configs {
        if c.is_sbx() {
            let d = ctx.detach(&c.cg)?;
            if let Kind::Sbx { rules: Some(n), .. } = c.kind {
                if let Some(row) = rows.iter_mut().find(|r| r.rules == n) {
                    row.detach_ms.push(dur_ms(d));
                }
            }
        }
        rmdir_retry(&c.cg);
    }
    if let Some(m) = &ctx.mem {
        m.remove_children();
    }
    Ok((percall, want_scale.then_some(rows)))
}

impl Percall {
    /// Per-call cost by policy size.
    pub(super) fn by_size_table(&self, plan: &Plan) -> String {
        let mut s = String::new();
        let (_, small) = big_small(plan);
        let _ = writeln!(s, "Per-call cost by policy size (medians, same rounds as section 1):\n");
        let mut t = Table::new(&[
            "rules",
            "closed-port connect ns",
            "vs none",
            "vs 10 rules",
            "CPU vs 10 rules",
            "BPF ns",
            "of which connect4 / egress",
            "TCP cycle vs none",
            "CPU vs none",
            "UDP sendto vs none",
            "CPU vs none",
            "BPF ns",
            "of which sendmsg4 / egress",
            "denied connect ns",
        ]);
        let r = |v: Option<Stat>| v.map_or("n/a".into(), |r| x(r.median));
        for &n in &plan.sizes {
            let name = format!("sbx-{}", size_label(n));
            if !self.samples.contains_key(&name) {
                continue;
            }
            t.row(vec![
                thousands(f(n as u64)),
                self.stat(&name, "refused").map_or("n/a".into(), |s| thousands(s.median)),
                r(self.ratio(&name, "none", "refused")),
                r(self.ratio(&name, &small, "refused")),
                r(self.cpu_ratio(&name, &small, "refused")),
                opt_ns(self.bpf_ns(&name, "refused")),
                format!(
                    "{} / {}",
                    self.prog_ns(&name, "refused", "sbx_connect4"),
                    self.prog_ns(&name, "refused", "sbx_egress")
                ),
                r(self.ratio(&name, "none", "tcp_cycle")),
                r(self.cpu_ratio(&name, "none", "tcp_cycle")),
                r(self.ratio(&name, "none", "udp_sendto")),
                r(self.cpu_ratio(&name, "none", "udp_sendto")),
                opt_ns(self.bpf_ns(&name, "udp_sendto")),
                format!(
                    "{} / {}",
                    self.prog_ns(&name, "udp_sendto", "sbx_sendmsg4"),
                    self.prog_ns(&name, "udp_sendto", "sbx_egress")
                ),
                self.stat(&name, "denied_connect").map_or("n/a".into(), |s| thousands(s.median)),
            ]);
        }
        let _ = writeln!(s, "{t}");
        s
    }

    /// The per-call table and where the added time goes.
    pub(super) fn tables(&self, plan: &Plan) -> String {
        let pc = self;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### 1. Per-call cost\n\nns per call, timed by a process inside the cgroup; {} rounds, configurations interleaved; \
             {} TCP cycles and {} of every other call per round; the worker runs at nice -20. Ratios are against no \
             sandbox, same statistic. CPU ratio: the same median ratio in the worker thread's on-CPU time, which leaves out \
             time the CPU spent on other work. BPF ns: the sbx programs' own run time per call (every program of the \
             sandbox that ran, from `kernel.bpf_stats_enabled=1` in separate interleaved passes, median of {} rounds).\n",
            plan.rounds,
            thousands(f(u64::from(plan.tcp_iters))),
            thousands(f(u64::from(plan.fast_iters))),
            plan.profile_rounds
        );
        let (big, _) = big_small(plan);
        let shown = ["none", "sbx-small", big.as_str(), "sbx-audit", "landlock"];
        let mut t = Table::new(&[
            "call",
            "configuration",
            "median ns",
            "ratio",
            "min ns",
            "ratio",
            "CPU ratio",
            "BPF ns",
            "every call gave",
        ]);
        for (op, label) in OPS {
            for name in shown {
                let Some(c) = pc.configs.iter().find(|c| c.name == name) else {
                    continue;
                };
                let Some(st) = pc.stat(&c.name, op) else {
                    continue;
                };
                let r = pc.ratio(&c.name, "none", op).unwrap_or(Stat { min: f64::NAN, median: f64::NAN });
                let note = match (&c.kind, op) {
                    (Kind::Landlock, "udp_sendto" | "denied_sendto") => " (Landlock ABI 4 has no UDP rules)",
                    (Kind::None, "denied_connect" | "denied_sendto") => " (nothing denies it)",
                    (Kind::Sbx { audit: true, .. }, "denied_connect" | "denied_sendto") => {
                        " (audit: allowed, reported)"
                    }
                    _ => "",
                };
                t.row(vec![
                    label.to_owned(),
                    c.label.clone(),
                    thousands(st.median),
                    x(r.median),
                    thousands(st.min),
                    x(r.min),
                    pc.cpu_ratio(&c.name, "none", op).map_or("n/a".into(), |r| x(r.median)),
                    if c.is_sbx() { opt_ns(pc.bpf_ns(&c.name, op)) } else { String::new() },
                    format!("{}{note}", c.expected(op)),
                ]);
            }
        }
        let _ = writeln!(s, "{t}");
        let _ = writeln!(
            s,
            "The audit-mode reader (`sbx-user events --follow --json`) printed {} events over the run; the rest were \
             dropped by the per-CPU rate limit.\n",
            thousands(f(pc.audit_events))
        );

        // Where the time goes, for the 100,000-rule sandbox.
        if let Some(b) = pc.bpf.get(&big) {
            let _ = writeln!(
                s,
                "Where the added time goes ({big}), in on-CPU time (less noisy than wall time): added = median CPU ns minus the \
                 no-sandbox median; BPF = the programs' run time; the rest is the kernel's cgroup-BPF plumbing around the \
                 programs (and noise).\n"
            );
            let mut t =
                Table::new(&["call", "added ns", "BPF ns", "rest ns", "programs (ns per call x runs per call)"]);
            for (op, label) in OPS {
                let (Some(with), Some(without)) = (pc.cpu_stat(&big, op), pc.cpu_stat("none", op)) else {
                    continue;
                };
                let cost = b.get(op).cloned().unwrap_or_default();
                let added = with.median - without.median;
                t.row(vec![
                    label.to_owned(),
                    format!("{added:.0}"),
                    format!("{:.0}", cost.total_ns),
                    format!("{:.0}", added - cost.total_ns),
                    cost.progs
                        .iter()
                        .map(|(k, (ns, runs))| format!("{k} {ns:.0} x {runs:.2}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
            let _ = writeln!(s, "{t}");
        }
        s
    }
}
