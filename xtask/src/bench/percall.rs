//! Section 1, per-call cost: the configurations, the interleaved timed
//! rounds from inside each configuration's cgroup, and their tables.
//! Sections 1 and 2 share their sandboxes ([`policy_sections`]).
//!
//! Two routes: loopback (`percall`), and a test host in a network
//! namespace the benchmark creates, over a veth pair (`percall-netns`),
//! so the calls leave through a real interface. Both run on the same
//! sandboxes in the same interleaved rounds.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    context::{rmdir_retry, Ctx},
    floor::Floor,
    netns::TestHost,
    policies::{size_label, Policies},
    profile::{profile, Costs},
    report::{big_small, Table},
    runner::interleaved,
    sbx::{self, EventFollower},
    scale::{self, ScaleRow},
    stats::{dur_ms, f, opt_ns, thousands, x, Stat},
    worker::{percall_once, Net},
    Plan,
};

/// Per-call operations, in table order.
pub(super) const OPS: [(&str, &str); 6] = [
    ("tcp_cycle", "TCP connect+accept+close"),
    ("refused", "connect to a closed port (ECONNREFUSED)"),
    ("udp_sendto", "UDP sendto"),
    ("denied_connect", "denied connect"),
    ("denied_sendto", "denied sendto"),
    ("refused_spread", "connect to 8 closed ports in turn (each judged by a policy walk)"),
];

#[derive(Clone, Debug)]
pub(super) enum Kind {
    None,
    /// Trivial `connect4`/`sendmsg4` programs that return 1
    /// ([`super::floor`]).
    Floor,
    Landlock,
    Sbx {
        flags: Vec<String>,
        rules: Option<usize>,
        audit: bool,
    },
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
            ("refused" | "refused_spread", _)
            | ("denied_connect", Kind::None | Kind::Floor | Kind::Sbx { audit: true, .. }) => "ECONNREFUSED",
            ("denied_connect", Kind::Landlock) => "EACCES",
            ("denied_connect" | "denied_sendto", Kind::Sbx { audit: false, .. }) => "EPERM",
            _ => "ok",
        }
    }

    pub(super) fn is_sbx(&self) -> bool {
        matches!(self.kind, Kind::Sbx { .. })
    }

    /// Whether the configuration runs programs of its own (sbx's or the
    /// floor's), whose run time `bpf_stats` can measure.
    pub(super) fn has_programs(&self) -> bool {
        matches!(self.kind, Kind::Sbx { .. } | Kind::Floor)
    }
}

/// Where the per-call modes send their calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Route {
    /// 127.0.0.1.
    Loopback,
    /// The test host in the benchmark's network namespace, over a veth
    /// pair.
    Netns,
}

impl Route {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Netns => "netns",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Netns => "test host over a veth pair",
        }
    }
}

/// The samples of one route.
#[derive(Default)]
pub(super) struct Samples {
    /// config name -> op -> samples (ns/op), one per round.
    pub(super) wall: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// The same, in on-CPU time of the worker thread.
    pub(super) cpu: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// config name -> op -> BPF cost (`bpf_stats` pass).
    pub(super) bpf: Costs,
}

/// Results of the per-call section.
pub(super) struct Percall {
    pub(super) configs: Vec<Config>,
    /// The routes measured, in table order.
    pub(super) routes: Vec<(Route, Samples)>,
    /// Events the reader of the audit configuration printed.
    pub(super) audit_events: u64,
    /// The ports (and the test host's addresses) of every route.
    pub(super) ports: Value,
}

impl Percall {
    pub(super) fn route(&self, r: Route) -> Option<&Samples> {
        self.routes.iter().find(|(k, _)| *k == r).map(|(_, s)| s)
    }

    pub(super) fn json(&self) -> Value {
        let route = |r: Route| self.route(r).map_or_else(Vec::new, |s| s.json(&self.configs));
        json!({
            "configs": route(Route::Loopback),
            "netns_configs": route(Route::Netns),
            "routes": self.routes.iter().map(|(r, _)| r.name()).collect::<Vec<_>>(),
            "ports": self.ports,
            "audit_events_read": self.audit_events,
        })
    }
}

impl Samples {
    pub(super) fn stat(&self, cfg: &str, op: &str) -> Option<Stat> {
        Stat::of(self.wall.get(cfg)?.get(op)?)
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

    /// One object per configuration, with every operation measured.
    pub(super) fn json(&self, configs: &[Config]) -> Vec<Value> {
        configs
            .iter()
            .map(|c| {
                let ops: serde_json::Map<String, Value> = OPS
                    .iter()
                    .filter_map(|(op, _)| {
                        let s = self.stat(&c.name, op)?;
                        let floor = self.ratio(&c.name, "floor", op).filter(|_| c.is_sbx());
                        let bpf = self.bpf.get(&c.name).and_then(|b| b.get(*op));
                        Some((
                            (*op).to_owned(),
                            json!({
                                "samples_ns": self.wall[&c.name][*op],
                                "ns": s.json(),
                                "ratio_vs_none": self.ratio(&c.name, "none", op).map(Stat::json),
                                "cpu_samples_ns": self.cpu.get(&c.name).and_then(|m| m.get(*op)),
                                "cpu_ns": self.cpu_stat(&c.name, op).map(Stat::json),
                                "cpu_ratio_vs_none": self.cpu_ratio(&c.name, "none", op).map(Stat::json),
                                "ratio_vs_floor": floor.map(Stat::json),
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
            .collect()
    }
}

/// Which parts of sections 1 and 2 to run.
#[derive(Clone, Copy, Debug)]
pub(super) struct Want {
    /// Per-call cost on loopback.
    pub(super) loopback: bool,
    /// Per-call cost to the test host in a network namespace.
    pub(super) netns: bool,
    /// Policy scale.
    pub(super) scale: bool,
}

impl Want {
    fn percall(self) -> bool {
        self.loopback || self.netns
    }
}

/// The configurations of the per-call rounds. The generated policies are
/// in it whenever they are loaded (for section 2 too).
fn configs(
    ctx: &Ctx,
    want: Want,
    policies: &Policies,
    rows: &[ScaleRow],
    host: Option<Ipv4Addr>,
) -> Result<Vec<Config>> {
    // Every sbx policy also allows the test host's ports 1-9999, as it
    // allows those of loopback, so one sandbox serves both routes.
    let extra = host.map(sbx::allow_test_host).unwrap_or_default();
    let with_host = |mut flags: Vec<String>| {
        flags.extend(extra.iter().cloned());
        flags
    };
    let small = with_host(sbx::small_policy());
    let mut configs = Vec::new();
    if want.percall() {
        configs.push(Config {
            name: "none".into(),
            label: "no sandbox".into(),
            kind: Kind::None,
            cg: ctx.mkcg("pc-none")?,
        });
        configs.push(Config {
            name: "floor".into(),
            label: "trivial connect4/sendmsg4 programs (return 1)".into(),
            kind: Kind::Floor,
            cg: ctx.mkcg("pc-floor")?,
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
            kind: Kind::Sbx { flags: with_host(policies.flags(n)), rules: Some(n), audit: false },
            cg: ctx.mkcg(&format!("pc-rules-{n}"))?,
        });
    }
    if want.percall() {
        configs.push(Config {
            name: "landlock".into(),
            label: "Landlock TCP connect rules".into(),
            kind: Kind::Landlock,
            cg: ctx.mkcg("pc-landlock")?,
        });
    }
    Ok(configs)
}

/// The interleaved timed rounds over every configuration and route (the
/// routes alternate which goes first), then the `bpf_stats` pass.
fn rounds(
    ctx: &Ctx,
    plan: &Plan,
    configs: &[Config],
    nets: &[(Route, &Net)],
    with_profile: bool,
) -> Result<Vec<(Route, Samples)>> {
    let mut out: Vec<(Route, Samples)> = nets.iter().map(|(r, _)| (*r, Samples::default())).collect();
    for round in 0..plan.rounds {
        eprintln!("bench: percall: round {}/{}", round + 1, plan.rounds);
        for i in interleaved(configs.len(), round) {
            let c = &configs[i];
            for j in interleaved(nets.len(), round) {
                let net = nets[j].1;
                let r = percall_once(ctx, net, c, (plan.tcp_iters, plan.fast_iters), &[])?;
                let samples = &mut out[j].1;
                for (op, (ns, cpu_ns)) in r {
                    let name = c.name.clone();
                    samples.wall.entry(name.clone()).or_default().entry(op.clone()).or_default().push(ns);
                    samples.cpu.entry(name).or_default().entry(op).or_default().push(cpu_ns);
                }
            }
        }
    }
    if ctx.bpftool && with_profile {
        let mut bpf = profile(ctx, nets, configs, plan)?;
        for (route, samples) in &mut out {
            samples.bpf = bpf.remove(route).unwrap_or_default();
        }
    }
    Ok(out)
}

/// Sections 1 and 2: they share the sandboxes, because loading a large
/// policy is the expensive part of both.
pub(super) fn policy_sections(
    ctx: &Ctx,
    plan: &Plan,
    policies: &Policies,
    want: Want,
) -> Result<(Option<Percall>, Option<Vec<ScaleRow>>)> {
    let mut rows = scale::check_sizes(ctx, plan, policies)?;
    // The program set is loaded once per host; no load here includes it.
    ctx.warm_set()?;

    let net = if want.loopback { Some(Net::new(Ipv4Addr::LOCALHOST)?) } else { None };
    if let Some(net) = &net {
        eprintln!(
            "bench: percall: listener 127.0.0.1:{}, closed {}, udp {}, denied tcp {} udp {}",
            net.tcp_port, net.refused_port, net.udp_port, net.denied_port, net.denied_udp_port
        );
    }
    // The test host exists before any policy names it, and before any
    // call is aimed at it.
    let host = if want.netns { Some(TestHost::new()?) } else { None };
    let host_net = match &host {
        Some(h) => {
            let addr = h.addr;
            let n = h.inside(move || Net::new(addr))?;
            eprintln!(
                "bench: percall-netns: test host {} in netns {} (via {} {}): listener {}, closed {}, udp {}, denied tcp {} udp {}",
                h.addr, h.name, h.host_if, h.local, n.tcp_port, n.refused_port, n.udp_port, n.denied_port, n.denied_udp_port
            );
            Some(n)
        }
        None => None,
    };
    let configs = configs(ctx, want, policies, &rows, host.as_ref().map(|h| h.addr))?;

    // Attach every sbx configuration; for the generated policies this is
    // the first load sample, with kernel memory.
    let mut floors = Vec::new();
    for c in &configs {
        match &c.kind {
            Kind::Sbx { flags, rules, .. } => {
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
            Kind::Floor => floors.push(Floor::attach(&c.cg)?),
            Kind::None | Kind::Landlock => {}
        }
    }

    let mut percall = None;
    if want.percall() {
        // The audit configuration's events are read as they come, as a user
        // following them would.
        let audit_cg = &configs.iter().find(|c| c.name == "sbx-audit").expect("configured").cg;
        let reader = EventFollower::start(ctx, audit_cg)?;
        let mut nets: Vec<(Route, &Net)> = Vec::new();
        if let Some(n) = &net {
            nets.push((Route::Loopback, n));
        }
        if let Some(n) = &host_net {
            nets.push((Route::Netns, n));
        }
        let routes = rounds(ctx, plan, &configs, &nets, true)?;
        let audit_events = reader.stop().len() as u64;
        let port_json = |n: &Net| {
            json!({
                "addr": n.addr, "listener": n.tcp_port, "closed": n.refused_port, "udp": n.udp_port,
                "denied_tcp": n.denied_port, "denied_udp": n.denied_udp_port,
                "allowed_ports": sbx::ALLOWED_PORTS,
            })
        };
        let mut ports = net.as_ref().map_or_else(|| json!({}), port_json);
        if let (Some(h), Some(n)) = (&host, &host_net) {
            ports["netns"] = json!({ "name": h.name, "veth": h.host_if, "local": h.local, "host": port_json(n) });
        }
        percall = Some(Percall { configs: configs.clone(), routes, audit_events, ports });
    }
    // Before their cgroups go.
    drop(floors);
    drop(host_net);
    drop(host);

    if want.scale {
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
    Ok((percall, want.scale.then_some(rows)))
}

/// Rule counts of the per-call rounds run beside the many sandboxes.
pub(super) const NEIGHBOUR_SIZES: [usize; 2] = [10, 100_000];

/// The per-call rounds again while the many-sandboxes section holds its
/// sandboxes: no sandbox, the trivial programs, and sbx with
/// [`NEIGHBOUR_SIZES`] rules, on loopback and to the test host `host`, the
/// same interleaving and checks as section 1 (no `bpf_stats` pass).
pub(super) fn with_neighbours(ctx: &Ctx, plan: &Plan, host: &TestHost) -> Result<Percall> {
    let policies = Policies::new(&ctx.work, &NEIGHBOUR_SIZES)?;
    let net = Net::new(Ipv4Addr::LOCALHOST)?;
    let addr = host.addr;
    let host_net = host.inside(move || Net::new(addr))?;
    let extra = sbx::allow_test_host(host.addr);
    let mut configs = vec![
        Config { name: "none".into(), label: "no sandbox".into(), kind: Kind::None, cg: ctx.mkcg("nb-none")? },
        Config {
            name: "floor".into(),
            label: "trivial connect4/sendmsg4 programs (return 1)".into(),
            kind: Kind::Floor,
            cg: ctx.mkcg("nb-floor")?,
        },
    ];
    for n in NEIGHBOUR_SIZES {
        let mut flags = policies.flags(n);
        flags.extend(extra.iter().cloned());
        configs.push(Config {
            name: format!("sbx-{}", size_label(n)),
            label: format!("sbx, {} CIDR rules", thousands(f(n as u64))),
            kind: Kind::Sbx { flags, rules: Some(n), audit: false },
            cg: ctx.mkcg(&format!("nb-rules-{n}"))?,
        });
    }
    let mut floors = Vec::new();
    for c in &configs {
        match &c.kind {
            Kind::Sbx { flags, .. } => {
                ctx.attach(&c.cg, flags, None, None)?;
            }
            Kind::Floor => floors.push(Floor::attach(&c.cg)?),
            Kind::None | Kind::Landlock => {}
        }
    }
    let routes = rounds(ctx, plan, &configs, &[(Route::Loopback, &net), (Route::Netns, &host_net)], false)?;
    drop(floors);
    for c in &configs {
        if c.is_sbx() {
            ctx.detach(&c.cg)?;
        }
        rmdir_retry(&c.cg);
    }
    Ok(Percall { configs, routes, audit_events: 0, ports: json!({}) })
}

impl Percall {
    /// Section 1's tables, one set per route.
    pub(super) fn tables(&self, plan: &Plan) -> String {
        let mut s = String::new();
        for (route, samples) in &self.routes {
            s.push_str(&self.route_tables(*route, samples, plan));
        }
        s
    }

    /// Section 2's per-call columns, one table per route.
    pub(super) fn by_size_tables(&self, plan: &Plan) -> String {
        let mut s = String::new();
        for (route, samples) in &self.routes {
            s.push_str(&samples.by_size_table(*route, plan));
        }
        s
    }

    /// What one route's table measured.
    fn route_intro(&self, route: Route, plan: &Plan) -> String {
        let mut s = String::new();
        match route {
            Route::Loopback => {
                let _ = writeln!(
                    s,
                    "### 1. Per-call cost\n\nns per call, timed by a process inside the cgroup; {} rounds, configurations interleaved; \
                     {} TCP cycles and {} of every other call per round; the worker runs at nice -20. Ratios are against no \
                     sandbox, same statistic; vs floor: the median against the trivial `return 1` programs. CPU ratio: the same \
                     median ratio in the worker thread's on-CPU time, which leaves out time the CPU spent on other work. BPF ns: \
                     the programs' own run time per call (every program of the cgroup that ran, from \
                     `kernel.bpf_stats_enabled=1` in separate interleaved passes, median of {} rounds).\n",
                    plan.rounds,
                    thousands(f(u64::from(plan.tcp_iters))),
                    thousands(f(u64::from(plan.fast_iters))),
                    plan.profile_rounds
                );
            }
            Route::Netns => {
                let host = &self.ports["netns"];
                let _ = writeln!(
                    s,
                    "### 1b. Per-call cost to a test host in a network namespace\n\nThe same calls, rounds and columns as \
                     section 1, to {} in network namespace `{}` over a veth pair (from {}): every packet leaves through a real \
                     interface, so the egress path runs as it does for traffic off the machine. Both routes ran in the same \
                     interleaved rounds, on the same sandboxes; every sbx policy allows ports {} of the test host as it allows \
                     them on loopback.\n",
                    host["host"]["addr"].as_str().unwrap_or("?"),
                    host["name"].as_str().unwrap_or("?"),
                    host["local"].as_str().unwrap_or("?"),
                    sbx::ALLOWED_PORTS
                );
            }
        }
        s
    }

    /// The per-call table of one route and where the added time goes.
    fn route_tables(&self, route: Route, pc: &Samples, plan: &Plan) -> String {
        let mut s = self.route_intro(route, plan);
        let (big, small) = big_small(plan);
        let mut shown = vec!["none", "floor", "sbx-small", small.as_str(), big.as_str(), "sbx-audit", "landlock"];
        shown.dedup();
        let mut t = Table::new(&[
            "call",
            "configuration",
            "median ns",
            "ratio",
            "min ns",
            "ratio",
            "CPU ratio",
            "vs floor",
            "BPF ns",
            "every call gave",
        ]);
        for (op, label) in OPS {
            for name in &shown {
                let Some(c) = self.configs.iter().find(|c| c.name == *name) else {
                    continue;
                };
                let Some(st) = pc.stat(&c.name, op) else {
                    continue;
                };
                let r = pc.ratio(&c.name, "none", op).unwrap_or(Stat { min: f64::NAN, median: f64::NAN });
                let note = match (&c.kind, op) {
                    (Kind::Landlock, "udp_sendto" | "denied_sendto") => " (Landlock ABI 4 has no UDP rules)",
                    (Kind::None | Kind::Floor, "denied_connect" | "denied_sendto") => " (nothing denies it)",
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
                    if c.is_sbx() {
                        pc.ratio(&c.name, "floor", op).map_or("n/a".into(), |r| x(r.median))
                    } else {
                        String::new()
                    },
                    if c.has_programs() { opt_ns(pc.bpf_ns(&c.name, op)) } else { String::new() },
                    format!("{}{note}", c.expected(op)),
                ]);
            }
        }
        let _ = writeln!(s, "{t}");
        if route == Route::Loopback || self.route(Route::Loopback).is_none() {
            let _ = writeln!(
                s,
                "The audit-mode reader (`sbx-user events --follow --json`) printed {} events over the run; the rest were \
                 dropped by the per-CPU rate limit.\n",
                thousands(f(self.audit_events))
            );
        }

        // Where the time goes, for the largest sandbox and for the floor.
        for cfg in [big.as_str(), "floor"] {
            if let Some(table) = pc.where_time_goes(cfg) {
                let _ = writeln!(
                    s,
                    "Where the added time goes ({cfg}, {}), in on-CPU time (less noisy than wall time): added = median CPU ns \
                     minus the no-sandbox median; BPF = the programs' run time; the rest is the kernel's cgroup-BPF plumbing \
                     around the programs (and noise).\n\n{table}",
                    route.label()
                );
            }
        }
        s
    }
}

impl Samples {
    /// The added time of `cfg` against no sandbox, split into its
    /// programs' run time and the rest; `None` without `bpf_stats` figures.
    fn where_time_goes(&self, cfg: &str) -> Option<Table> {
        let b = self.bpf.get(cfg)?;
        let mut t = Table::new(&["call", "added ns", "BPF ns", "rest ns", "programs (ns per call x runs per call)"]);
        for (op, label) in OPS {
            let (Some(with), Some(without)) = (self.cpu_stat(cfg, op), self.cpu_stat("none", op)) else {
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
        Some(t)
    }

    /// Per-call cost by policy size on one route.
    fn by_size_table(&self, route: Route, plan: &Plan) -> String {
        let mut s = String::new();
        let (_, small) = big_small(plan);
        let _ = writeln!(s, "Per-call cost by policy size, {} (medians, same rounds as section 1):\n", route.label());
        let mut t = Table::new(&[
            "rules",
            "closed-port connect ns",
            "vs none",
            "vs 10 rules",
            "CPU vs 10 rules",
            "BPF ns",
            "of which connect4 / egress",
            "8 closed ports in turn ns",
            "vs 10 rules",
            "CPU vs 10 rules",
            "connect4 ns",
            "TCP cycle vs none",
            "CPU vs none",
            "UDP sendto vs none",
            "CPU vs none",
            "vs floor",
            "BPF ns",
            "of which sendmsg4 / egress",
            "denied connect ns",
        ]);
        let r = |v: Option<Stat>| v.map_or("n/a".into(), |r| x(r.median));
        for &n in &plan.sizes {
            let name = format!("sbx-{}", size_label(n));
            if !self.wall.contains_key(&name) {
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
                self.stat(&name, "refused_spread").map_or("n/a".into(), |s| thousands(s.median)),
                r(self.ratio(&name, &small, "refused_spread")),
                r(self.cpu_ratio(&name, &small, "refused_spread")),
                self.prog_ns(&name, "refused_spread", "sbx_connect4"),
                r(self.ratio(&name, "none", "tcp_cycle")),
                r(self.cpu_ratio(&name, "none", "tcp_cycle")),
                r(self.ratio(&name, "none", "udp_sendto")),
                r(self.cpu_ratio(&name, "none", "udp_sendto")),
                r(self.ratio(&name, "floor", "udp_sendto")),
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
}
