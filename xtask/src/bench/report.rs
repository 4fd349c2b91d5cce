//! The report: Markdown tables on stdout, every sample in the JSON, and the
//! targets from the issues with their verdicts.

use std::{
    env,
    fmt::{self, Write as _},
    fs,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    agent::{agent_table, agent_targets, AgentBench},
    context::Ctx,
    events::{events_table, Events},
    lifecycle::{lifecycle_table, Lifecycle},
    many::{many_table, Many},
    memory::MemAcct,
    percall::{Percall, Route},
    policies::size_label,
    scale::{scale_table, ScaleRow},
    stats::{f, kib, ms, thousands, x, Stat},
    Plan,
};

/// Prints the tables and writes the JSON.
pub(super) fn write_results(report: &Report, plan: &Plan, ctx: &Ctx, out: &Path, elapsed: Duration) -> Result<()> {
    let machine = machine();
    let command = format!(
        "cargo xtask bench{}",
        env::args().skip_while(|a| a != "bench").skip(1).fold(String::new(), |mut s, a| {
            let _ = write!(s, " {a}");
            s
        })
    );
    let tables = report.tables(plan, &machine, &command, elapsed, ctx);
    println!("{tables}");
    let json = json!({
        "command": command,
        "machine": machine,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "elapsed_s": elapsed.as_secs_f64(),
        "plan": {
            "rounds": plan.rounds, "tcp_iters": plan.tcp_iters, "fast_iters": plan.fast_iters,
            "sizes": plan.sizes, "load_rounds": plan.load_rounds, "profile_rounds": plan.profile_rounds,
            "lifecycle_rounds": plan.lifecycle_rounds, "lifecycle_reps": plan.lifecycle_reps, "sandboxes": plan.sandboxes,
        },
        "memory_method": ctx.mem.as_ref().map(MemAcct::describe),
        // This process's own peak memory: a large heap here would make every
        // fork of a timed command slower.
        "xtask_peak_rss_kib": fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse::<u64>().ok())
        }),
        "percall": report.percall.as_ref().map(Percall::json),
        "scale": report.scale.as_ref().map(|s| s.iter().map(ScaleRow::json).collect::<Vec<_>>()),
        "lifecycle": report.lifecycle.as_ref().map(Lifecycle::json),
        "many": report.many.as_ref().map(Many::json),
        "events": report.events.as_ref().map(Events::json),
        "agent": report.agent.as_ref().map(AgentBench::json),
        "targets": report.targets(plan).iter().map(Target::json).collect::<Vec<_>>(),
        "table_markdown": tables,
    });
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(out, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {} ({:.0} s)", out.display(), elapsed.as_secs_f64());
    Ok(())
}

#[derive(Default)]
pub(super) struct Report {
    pub(super) percall: Option<Percall>,
    pub(super) scale: Option<Vec<ScaleRow>>,
    pub(super) lifecycle: Option<Lifecycle>,
    pub(super) many: Option<Many>,
    pub(super) events: Option<Events>,
    pub(super) agent: Option<AgentBench>,
}

/// A target from the issue, with the measured figure.
pub(super) struct Target {
    pub(super) what: &'static str,
    pub(super) goal: String,
    pub(super) figure: String,
    pub(super) met: Option<bool>,
}

impl Target {
    pub(super) fn json(&self) -> Value {
        json!({ "target": self.what, "goal": self.goal, "figure": self.figure, "met": self.met })
    }
}

pub(super) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

pub(super) fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let virt = Command::new("systemd-detect-virt")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty());
    let load = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": kernel,
        "memory_gib": f(mem_kib) / 1024.0 / 1024.0,
        "virtualization": virt,
        "loadavg_at_end": load,
        "commit": commit(),
    })
}

/// The commit the binaries were built from, `+` when the tree differs
/// from it (read-only git commands).
pub(super) fn commit() -> Option<String> {
    let ws = crate::workspace();
    let out = Command::new("git").arg("-C").arg(&ws).args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || hash.is_empty() {
        return None;
    }
    let clean = Command::new("git").arg("-C").arg(&ws).args(["diff", "--quiet", "HEAD", "--"]).status().ok()?.success();
    Some(if clean { hash } else { format!("{hash}+") })
}

/// A Markdown table builder.
pub(super) struct Table {
    pub(super) head: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(head: &[&str]) -> Self {
        Self { head: head.iter().map(|s| (*s).to_owned()).collect(), rows: vec![] }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "| {} |", self.head.join(" | "))?;
        writeln!(out, "|{}", self.head.iter().map(|_| "---|").collect::<String>())?;
        for r in &self.rows {
            writeln!(out, "| {} |", r.join(" | "))?;
        }
        Ok(())
    }
}

/// The configuration names the targets compare: the largest generated
/// policy not above 100,000 rules, and the smallest.
pub(super) fn big_small(plan: &Plan) -> (String, String) {
    let big = plan.sizes.iter().copied().filter(|&n| n <= 100_000).max().unwrap_or(0);
    let small = plan.sizes.iter().copied().min().unwrap_or(0);
    (format!("sbx-{}", size_label(big)), format!("sbx-{}", size_label(small)))
}

impl Report {
    pub(super) fn targets(&self, plan: &Plan) -> Vec<Target> {
        let mut out = Vec::new();
        let (big, small) = big_small(plan);
        let pc = self.percall.as_ref().and_then(|p| p.route(Route::Loopback));
        let ratio = |cfg: &str, base: &str, op: &str| pc.and_then(|p| p.ratio(cfg, base, op));
        // Wall-clock median decides; min and CPU time are shown beside it.
        let fig = |cfg: &str, base: &str, op: &str| {
            let r = ratio(cfg, base, op);
            let cpu = pc.and_then(|p| p.cpu_ratio(cfg, base, op));
            r.map_or("not measured".into(), |r| {
                format!(
                    "median {} (min {}; CPU time median {})",
                    x(r.median),
                    x(r.min),
                    cpu.map_or("n/a".into(), |c| x(c.median))
                )
            })
        };
        for (op, what, goal) in [
            ("tcp_cycle", "TCP connect+accept cycle, 100,000 rules vs no sandbox", 1.05),
            ("udp_sendto", "UDP sendto, 100,000 rules vs no sandbox", 1.10),
        ] {
            out.push(Target {
                what,
                goal: format!("<= {goal:.2}x"),
                figure: fig(&big, "none", op),
                met: ratio(&big, "none", op).map(|r| r.median <= goal),
            });
        }
        for (op, what) in [
            ("refused", "connect to a closed port, 100,000 vs 10 rules"),
            ("tcp_cycle", "TCP cycle, 100,000 vs 10 rules"),
            ("udp_sendto", "UDP sendto, 100,000 vs 10 rules"),
        ] {
            out.push(Target {
                what,
                goal: "<= 1.05x".into(),
                figure: fig(&big, &small, op),
                met: ratio(&big, &small, op).map(|r| r.median <= 1.05),
            });
        }
        for cfg in [big.as_str(), "sbx-small"] {
            let d = pc.and_then(|p| p.stat(cfg, "denied_connect"));
            let c = pc.and_then(|p| p.stat(cfg, "refused"));
            out.push(Target {
                what: if cfg == "sbx-small" {
                    "denied connect faster than a closed port (small policy)"
                } else {
                    "denied connect faster than a closed port (100,000 rules)"
                },
                goal: "denied < closed".into(),
                figure: match (d, c) {
                    (Some(d), Some(c)) => {
                        format!("{} ns vs {} ns ({})", thousands(d.median), thousands(c.median), x(d.median / c.median))
                    }
                    _ => "not measured".into(),
                },
                met: d.zip(c).map(|(d, c)| d.median < c.median),
            });
        }
        self.netns_targets(plan, &mut out);
        self.issue8_targets(&mut out);
        if let Some(a) = &self.agent {
            agent_targets(a, &mut out);
        }
        out
    }

    /// Issue 8's targets: the cost of a sandbox on one shared program set.
    fn issue8_targets(&self, out: &mut Vec<Target>) {
        let l = self.lifecycle.as_ref();
        for (what, runs) in [
            ("`sbx-user run -- /bin/true` over `/bin/true`, program set loaded, no other sandbox", l.map(|l| &l.run)),
            ("`sbx-user run -- /bin/true` over `/bin/true`, beside another sandbox", l.map(|l| &l.run_beside)),
        ] {
            let added = l.and_then(|l| Some((Stat::of(runs?)?, Stat::of(&l.bin_true)?)));
            out.push(Target {
                what,
                goal: "adds <= 3 ms".into(),
                figure: added.map_or("not measured".into(), |(r, b)| {
                    format!(
                        "adds {} (median; min {}; {})",
                        ms(r.median - b.median),
                        ms(r.min - b.min),
                        x(r.median / b.median)
                    )
                }),
                met: added.map(|(r, b)| r.median - b.median <= 3.0),
            });
        }
        // The 3 ms was set where sandlock added 3.5 ms: on another machine
        // the same ratio to sandlock, measured in the same rounds, is the
        // target that travels.
        if let Some(l) = l.filter(|l| !l.sandlock.is_empty()) {
            let added = (|| {
                let base = Stat::of(&l.bin_true)?.median;
                Some((Stat::of(&l.run)?.median - base, Stat::of(&l.sandlock)?.median - base))
            })();
            out.push(Target {
                what: "`sbx-user run -- /bin/true` against `sandlock run -- /bin/true`, same rounds",
                goal: "adds <= 3/3.5 of what sandlock adds (the issue's 3 ms where sandlock added 3.5)".into(),
                figure: added.map_or("not measured".into(), |(sbx, sandlock)| {
                    format!("sbx adds {}, sandlock {} ({})", ms(sbx), ms(sandlock), x(sbx / sandlock))
                }),
                met: added.map(|(sbx, sandlock)| sbx <= sandlock * 3.0 / 3.5),
            });
        }
        let first = l.and_then(|l| Some((Stat::of(&l.first_run)?, Stat::of(&l.bin_true)?)));
        out.push(Target {
            what: "`sbx-user run -- /bin/true`, first use on the host (loads the program set)",
            goal: "reported separately".into(),
            figure: first.map_or_else(
                || l.and_then(|l| l.first_note.clone()).unwrap_or_else(|| "not measured".into()),
                |(r, b)| format!("adds {} (median; min {})", ms(r.median - b.median), ms(r.min - b.min)),
            ),
            met: first.map(|_| true),
        });
        for (what, samples) in [
            ("`sbx-user attach`, small policy, no other sandbox", l.map(|l| &l.attach)),
            ("`sbx-user update`, small policy, no other sandbox", l.map(|l| &l.update)),
            ("`sbx-user attach`, small policy, beside another sandbox", l.map(|l| &l.attach_beside)),
            ("`sbx-user update`, small policy, beside another sandbox", l.map(|l| &l.update_beside)),
        ] {
            let st = samples.and_then(|v| Stat::of(v));
            out.push(Target {
                what,
                goal: "<= 2 ms".into(),
                figure: st.map_or("not measured".into(), |s| format!("median {} (min {})", ms(s.median), ms(s.min))),
                met: st.map(|s| s.median <= 2.0),
            });
        }
        let load = self
            .scale
            .as_ref()
            .and_then(|s| s.iter().find(|r| r.rules == 100_000))
            .and_then(|r| Stat::of(&r.attach_ms));
        out.push(Target {
            what: "load 100,000 rules (`sbx-user attach`, end to end)",
            goal: "< 0.5 s".into(),
            figure: load.map_or("not measured".into(), |s| format!("median {} (min {})", ms(s.median), ms(s.min))),
            met: load.map(|s| s.median < 500.0),
        });
        self.many_targets(out);
    }

    /// Issue 8's targets for many sandboxes at once, and issue 11's
    /// per-call target beside them.
    fn many_targets(&self, out: &mut Vec<Target>) {
        let Some(m) = &self.many else { return };
        for (name, mem_what, enf_what) in [
            (
                "own-ring",
                "concurrent sandboxes, own event ring: kernel memory each beyond its bare cgroup",
                "concurrent sandboxes, own event ring: each enforces its own policy, not a neighbour's",
            ),
            (
                "host-stream",
                "concurrent sandboxes, host event stream: kernel memory each beyond its bare cgroup",
                "concurrent sandboxes, host event stream: each enforces its own policy, not a neighbour's",
            ),
        ] {
            let Some(md) = m.mode(name) else { continue };
            let per = md.per_sandbox(m.n);
            out.push(Target {
                what: mem_what,
                goal: format!("<= 16 KiB ({} sandboxes)", thousands(f(u64::from(m.n)))),
                figure: format!(
                    "{} (/proc/meminfo){}",
                    kib(per),
                    md.memcg_bytes.map_or(String::new(), |b| format!("; memcg {}", kib(b / f(u64::from(m.n)))))
                ),
                met: Some(per <= 16.0 * 1024.0),
            });
            out.push(Target {
                what: enf_what,
                goal: "all".into(),
                figure: format!("{} of {} correct", md.checked - md.failures.len() as u64, m.n),
                met: Some(md.all_correct(m.n)),
            });
        }
        let nb = m.neighbours.as_ref().and_then(|p| p.route(Route::Netns));
        for (cfg, what) in [
            ("sbx-10", "netns, beside the many sandboxes: TCP connect+accept+close, 10 rules vs no sandbox"),
            ("sbx-100k", "netns, beside the many sandboxes: TCP connect+accept+close, 100,000 rules vs no sandbox"),
        ] {
            let r = nb.and_then(|p| p.ratio(cfg, "none", "tcp_cycle"));
            let cpu = nb.and_then(|p| p.cpu_ratio(cfg, "none", "tcp_cycle"));
            out.push(Target {
                what,
                goal: "<= 1.03x".into(),
                figure: r.map_or("not measured".into(), |r| {
                    format!(
                        "median {} (min {}; CPU time median {})",
                        x(r.median),
                        x(r.min),
                        cpu.map_or("n/a".into(), |c| x(c.median))
                    )
                }),
                met: r.map(|r| r.median <= 1.03),
            });
        }
    }

    /// Issue 11's targets, on the route to the netns test host.
    fn netns_targets(&self, plan: &Plan, out: &mut Vec<Target>) {
        let (big, small) = big_small(plan);
        let pc = self.percall.as_ref().and_then(|p| p.route(Route::Netns));
        let ratio = |cfg: &str, base: &str, op: &str| pc.and_then(|p| p.ratio(cfg, base, op));
        let fig = |cfg: &str, base: &str, op: &str| {
            let cpu = pc.and_then(|p| p.cpu_ratio(cfg, base, op));
            ratio(cfg, base, op).map_or("not measured".into(), |r| {
                format!(
                    "median {} (min {}; CPU time median {})",
                    x(r.median),
                    x(r.min),
                    cpu.map_or("n/a".into(), |c| x(c.median))
                )
            })
        };
        for (cfg, base, op, what, goal) in [
            (&small, "none", "tcp_cycle", "netns: TCP connect+accept+close, 10 rules vs no sandbox", 1.03),
            (&big, "none", "tcp_cycle", "netns: TCP connect+accept+close, 100,000 rules vs no sandbox", 1.03),
            (&big, small.as_str(), "tcp_cycle", "netns: TCP connect+accept+close, 100,000 vs 10 rules", 1.02),
            (&small, "none", "udp_sendto", "netns: UDP sendto, 10 rules vs no sandbox", 1.08),
            (&big, "none", "udp_sendto", "netns: UDP sendto, 100,000 rules vs no sandbox", 1.08),
            (&small, "floor", "udp_sendto", "netns: UDP sendto, 10 rules vs the trivial `return 1` programs", 1.03),
            (&big, "floor", "udp_sendto", "netns: UDP sendto, 100,000 rules vs the trivial `return 1` programs", 1.03),
            (&small, "none", "refused", "netns: connect to a closed port, 10 rules vs no sandbox", 1.05),
            (&big, "none", "refused", "netns: connect to a closed port, 100,000 rules vs no sandbox", 1.05),
        ] {
            out.push(Target {
                what,
                goal: format!("<= {goal:.2}x"),
                figure: fig(cfg, base, op),
                met: ratio(cfg, base, op).map(|r| r.median <= goal),
            });
        }
        let d = pc.and_then(|p| p.stat(&big, "denied_connect"));
        let c = pc.and_then(|p| p.stat(&big, "refused"));
        out.push(Target {
            what: "netns: denied connect faster than a closed port (100,000 rules)",
            goal: "denied < closed".into(),
            figure: match (d, c) {
                (Some(d), Some(c)) => {
                    format!("{} ns vs {} ns ({})", thousands(d.median), thousands(c.median), x(d.median / c.median))
                }
                _ => "not measured".into(),
            },
            met: d.zip(c).map(|(d, c)| d.median < c.median),
        });
    }

    pub(super) fn tables(&self, plan: &Plan, machine: &Value, command: &str, elapsed: Duration, ctx: &Ctx) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "- Command: `{command}` ({:.0} s), commit {}",
            elapsed.as_secs_f64(),
            machine["commit"].as_str().unwrap_or("unknown")
        );
        let _ = writeln!(
            s,
            "- Machine: {}, {} CPUs, {:.0} GiB, Linux {}{}; load average at the end {}\n",
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cpus"],
            machine["memory_gib"].as_f64().unwrap_or(0.0),
            machine["kernel"].as_str().unwrap_or("?"),
            machine["virtualization"].as_str().map_or(String::new(), |v| format!(" ({v})")),
            machine["loadavg_at_end"].as_str().unwrap_or("?"),
        );
        if let Some(p) = &self.percall {
            s.push_str(&p.tables(plan));
        }
        if let Some(rows) = &self.scale {
            s.push_str(&scale_table(rows, plan, ctx));
        }
        if let Some(p) = &self.percall {
            s.push_str(&p.by_size_tables(plan));
        }
        if let Some(l) = &self.lifecycle {
            s.push_str(&lifecycle_table(l, plan));
        }
        if let Some(m) = &self.many {
            s.push_str(&many_table(m, self.percall.as_ref()));
        }
        if let Some(e) = &self.events {
            s.push_str(&events_table(e, self.percall.as_ref()));
        }
        if let Some(a) = &self.agent {
            s.push_str(&agent_table(a, plan));
        }
        let _ = writeln!(s, "### Targets\n");
        let mut t = Table::new(&["target", "goal", "measured", "verdict"]);
        for tg in self.targets(plan) {
            t.row(vec![tg.what.to_owned(), tg.goal.clone(), tg.figure.clone(), verdict(tg.met).to_owned()]);
        }
        let _ = writeln!(s, "{t}");
        s
    }
}
