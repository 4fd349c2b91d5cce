//! Section 4, many sandboxes: N at once, each with its own small policy,
//! twice: with each sandbox's own event ring (the default) and with the
//! host event stream (`--event-buffer 0`). Each time: the kernel memory a
//! sandbox costs beyond its bare cgroup, the attach rate, a check that
//! every sandbox enforces its own policy and not a neighbour's (connects
//! to the test host in the benchmark's network namespace), and, with the
//! first, the per-call rounds again beside the N neighbours.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    context::{check_interrupted, rmdir_retry, Ctx},
    memory::{meminfo_kernel, meminfo_unreclaimable, settle_meminfo},
    netns::TestHost,
    percall::{self, Percall},
    report::Table,
    sbx,
    stats::{dur_ms, f, kib, median, mib, ms, thousands, x, Stat},
    worker, Plan,
};

/// First port of the many-sandboxes check; sandbox `i` may reach `BASE + i`
/// on the test host.
pub(super) const MANY_PORT_BASE: u16 = 20_000;

/// One pass over N sandboxes with one event setting.
pub(super) struct ManyMode {
    pub(super) name: &'static str,
    pub(super) label: &'static str,
    /// Program set directories that could not be removed before the pass
    /// because a sandbox uses them (its memory figure then includes tries
    /// reused from earlier sandboxes).
    pub(super) sets_in_use: Vec<String>,
    pub(super) mkdir_ms: f64,
    /// `Slab + VmallocUsed + Percpu` change of creating the N bare cgroups.
    pub(super) bare_bytes: f64,
    pub(super) attach_ms: Vec<f64>,
    pub(super) detach_ms: Vec<f64>,
    /// The same change over the N attaches, after the cgroups existed.
    pub(super) meminfo_bytes: f64,
    /// The change of `SUnreclaim + VmallocUsed + Percpu` over the attaches.
    pub(super) unreclaim_bytes: f64,
    /// The memory cgroup charge of the N attaching processes.
    pub(super) memcg_bytes: Option<f64>,
    pub(super) checked: u64,
    pub(super) failures: Vec<Value>,
    pub(super) check_ms: f64,
}

pub(super) struct Many {
    pub(super) n: u32,
    pub(super) modes: Vec<ManyMode>,
    /// Per-call rounds with the first mode's N sandboxes attached.
    pub(super) neighbours: Option<Percall>,
}

impl ManyMode {
    fn json(&self, n: u32) -> Value {
        let nf = f(u64::from(n));
        json!({
            "mode": self.name,
            "label": self.label,
            "program_sets_in_use_before": self.sets_in_use,
            "mkdir_total_ms": self.mkdir_ms,
            "bare_cgroups_meminfo_delta_bytes": self.bare_bytes,
            "attach_total_ms": self.attach_ms.iter().sum::<f64>(),
            "attach_ms": Stat::of(&self.attach_ms).map(Stat::json),
            "attach_ms_samples": self.attach_ms,
            "attaches_per_s": self.rate(),
            "detach_total_ms": self.detach_ms.iter().sum::<f64>(),
            "meminfo_delta_bytes": self.meminfo_bytes,
            "meminfo_delta_bytes_per_sandbox": self.meminfo_bytes / nf,
            "meminfo_unreclaimable_delta_bytes": self.unreclaim_bytes,
            "memcg_kernel_bytes_total": self.memcg_bytes,
            "enforcement": { "checked": self.checked, "failures": self.failures, "ms": self.check_ms },
        })
    }

    /// Sequential attaches per second.
    pub(super) fn rate(&self) -> f64 {
        let total: f64 = self.attach_ms.iter().sum();
        if total > 0.0 {
            f(self.attach_ms.len() as u64) * 1000.0 / total
        } else {
            0.0
        }
    }

    /// Kernel memory per sandbox beyond its bare cgroup, bytes.
    pub(super) fn per_sandbox(&self, n: u32) -> f64 {
        self.meminfo_bytes / f(u64::from(n))
    }

    pub(super) fn all_correct(&self, n: u32) -> bool {
        self.failures.is_empty() && self.checked == u64::from(n)
    }
}

impl Many {
    pub(super) fn json(&self) -> Value {
        json!({
            "sandboxes": self.n,
            "modes": self.modes.iter().map(|m| m.json(self.n)).collect::<Vec<_>>(),
            "percall_with_neighbours": self.neighbours.as_ref().map(Percall::json),
        })
    }

    pub(super) fn mode(&self, name: &str) -> Option<&ManyMode> {
        self.modes.iter().find(|m| m.name == name)
    }
}

pub(super) fn many(ctx: &Ctx, plan: &Plan) -> Result<Many> {
    // The test host exists before any policy names it.
    let host = TestHost::new()?;
    eprintln!("bench: many: test host {} in netns {}", host.addr, host.name);
    let mut modes = Vec::new();
    let mut neighbours = None;
    for (name, label, extra) in [
        ("own-ring", "own event ring (default, 16 KiB)", Vec::new()),
        ("host-stream", "host event stream (`--event-buffer 0`)", sbx::host_event_stream()),
    ] {
        let with_percall = neighbours.is_none();
        let (mode, nb) = one_mode(ctx, plan, &host, name, label, &extra, with_percall)?;
        modes.push(mode);
        if nb.is_some() {
            neighbours = nb;
        }
    }
    rmdir_retry(&ctx.root.join("many"));
    Ok(Many { n: plan.sandboxes, modes, neighbours })
}

fn one_mode(
    ctx: &Ctx,
    plan: &Plan,
    host: &TestHost,
    name: &'static str,
    label: &'static str,
    extra: &[String],
    with_percall: bool,
) -> Result<(ManyMode, Option<Percall>)> {
    let n = plan.sandboxes;
    // A fresh program set, so no sandbox reuses the tries and rings that
    // earlier sandboxes left in place; then one attach loads it, outside
    // the measurement.
    let cleanup = sbx::remove_unused_sets(&ctx.bpffs)?;
    settle_meminfo(Duration::from_secs(15));
    ctx.warm_set()?;
    settle_meminfo(Duration::from_secs(10));

    eprintln!("bench: many ({name}): creating {n} cgroups");
    let info0 = meminfo_kernel();
    let mkdir_start = Instant::now();
    let cgs: Vec<PathBuf> = (0..n).map(|i| ctx.mkcg(&format!("many/{name}/s{i}"))).collect::<Result<_>>()?;
    let mkdir_ms = dur_ms(mkdir_start.elapsed());
    settle_meminfo(Duration::from_secs(5));
    let info1 = meminfo_kernel();
    let unre1 = meminfo_unreclaimable();

    let memcg = ctx.mem.as_ref().map(|m| m.child(&format!("many-{name}"))).transpose()?;
    let mem_before = match (&ctx.mem, &memcg) {
        (Some(m), Some(p)) => Some(m.kernel_bytes(p)?),
        _ => None,
    };
    // Its own port on the test host and its own /24: no two alike.
    let sandboxes: Vec<(PathBuf, Vec<String>)> = cgs
        .iter()
        .enumerate()
        .map(|(i, cg)| {
            let i = u16::try_from(i).expect("at most 10,000 sandboxes");
            let mut flags = vec![
                "--allow".to_owned(),
                format!("{}:{}", host.addr, MANY_PORT_BASE + i),
                "--allow".to_owned(),
                format!("10.{}.{}.0/24:443", i >> 8, i & 0xff),
            ];
            flags.extend(extra.iter().cloned());
            (cg.clone(), flags)
        })
        .collect();
    eprintln!("bench: many ({name}): attaching {n} sandboxes");
    let attach_ms: Vec<f64> = match &memcg {
        Some(m) => ctx.attach_each(&sandboxes, m, None)?.into_iter().map(dur_ms).collect(),
        None => {
            sandboxes.iter().map(|(cg, flags)| ctx.attach(cg, flags, None, None).map(dur_ms)).collect::<Result<_>>()?
        }
    };
    settle_meminfo(Duration::from_secs(5));
    let meminfo_bytes = f(meminfo_kernel()) - f(info1);
    let unreclaim_bytes = f(meminfo_unreclaimable()) - f(unre1);
    let memcg_bytes = match (&ctx.mem, &memcg, mem_before) {
        (Some(m), Some(p), Some(b)) => Some(f(m.kernel_bytes(p)?) - f(b)),
        _ => None,
    };

    // Enforcement: one worker visits every sandbox; in sandbox i, port
    // BASE+i of the test host must not be refused by policy (nothing
    // listens: ECONNREFUSED) and BASE+i+1, the neighbour's, must be.
    let list = ctx.work.join(format!("many-{name}.txt"));
    let mut text = String::new();
    for (i, cg) in cgs.iter().enumerate() {
        let i = u32::try_from(i).expect("small");
        let own = u32::from(MANY_PORT_BASE) + i;
        let other = u32::from(MANY_PORT_BASE) + (i + 1) % n;
        let _ = writeln!(text, "{} {own} {other}", cg.display());
    }
    fs::write(&list, text)?;
    let start_cg = ctx.mkcg("many-check")?;
    let (hop_time, v) = worker::hop(ctx, &start_cg, &list, host.addr)?;
    rmdir_retry(&start_cg);
    let checked = v["checked"].as_u64().unwrap_or(0);
    let failures = v["failures"].as_array().cloned().unwrap_or_default();

    let neighbours = if with_percall {
        eprintln!("bench: many ({name}): per-call rounds beside {n} sandboxes");
        Some(percall::with_neighbours(ctx, plan, host)?)
    } else {
        None
    };

    eprintln!("bench: many ({name}): detaching");
    let mut detach_ms = Vec::with_capacity(n as usize);
    for cg in &cgs {
        check_interrupted()?;
        detach_ms.push(dur_ms(ctx.detach(cg)?));
    }
    for cg in &cgs {
        rmdir_retry(cg);
    }
    rmdir_retry(&ctx.root.join("many").join(name));
    if let Some(p) = memcg {
        rmdir_retry(&p);
    }
    let mode = ManyMode {
        name,
        label,
        sets_in_use: cleanup.in_use,
        mkdir_ms,
        bare_bytes: f(info1) - f(info0),
        attach_ms,
        detach_ms,
        meminfo_bytes,
        unreclaim_bytes,
        memcg_bytes,
        checked,
        failures,
        check_ms: dur_ms(hop_time),
    };
    Ok((mode, neighbours))
}

pub(super) fn many_table(m: &Many, alone: Option<&Percall>) -> String {
    let mut s = String::new();
    let nf = f(u64::from(m.n));
    let _ = writeln!(
        s,
        "### 4. Many sandboxes\n\n{} cgroups, each attached with its own small policy (its own port on the test host and \
         its own /24), one after another, all held at once; twice, from a freshly loaded program set each time: with each \
         sandbox's own event ring (the default) and with the host event stream. Kernel memory per sandbox: the change of \
         `Slab + VmallocUsed + Percpu` over the attaches, after the bare cgroups were made (their own cost is shown \
         apart). Enforcement: one process enters each sandbox in turn and connects to the test host in the benchmark's \
         network namespace: its own port must not be refused by policy, its neighbour's must fail with EPERM.\n",
        thousands(nf)
    );
    let mut head = vec!["figure"];
    head.extend(m.modes.iter().map(|md| md.label));
    let mut t = Table::new(&head);
    let mut row = |label: &str, cell: &dyn Fn(&ManyMode) -> String| {
        let mut r = vec![label.to_owned()];
        r.extend(m.modes.iter().map(cell));
        t.row(r);
    };
    row("kernel memory per sandbox, beyond its bare cgroup (/proc/meminfo)", &|md| kib(md.per_sandbox(m.n)));
    row("kernel memory, all sandboxes (/proc/meminfo)", &|md| mib(md.meminfo_bytes));
    row("the same without reclaimable slab (`SUnreclaim + VmallocUsed + Percpu`), per sandbox", &|md| {
        kib(md.unreclaim_bytes / nf)
    });
    row("kernel memory per sandbox (memcg charge of the attaching processes)", &|md| {
        md.memcg_bytes.map_or("n/a".into(), |b| kib(b / nf))
    });
    row("bare cgroup, for comparison (/proc/meminfo, per cgroup)", &|md| kib(md.bare_bytes / nf));
    row("attach (sequential), per sandbox", &|md| {
        Stat::of(&md.attach_ms).map_or("n/a".into(), |a| format!("{} median, {} min", ms(a.median), ms(a.min)))
    });
    row("attach rate (sequential `sbx-user attach` processes)", &|md| format!("{:.0} per s", md.rate()));
    row("attach, first vs last tenth (median)", &|md| {
        let tenth = (md.attach_ms.len() / 10).max(1);
        if md.attach_ms.len() < 20 {
            return "n/a".into();
        }
        format!("{} vs {}", ms(median(&md.attach_ms[..tenth])), ms(median(&md.attach_ms[md.attach_ms.len() - tenth..])))
    });
    row("detach (sequential), per sandbox", &|md| ms(median(&md.detach_ms)));
    row("create the bare cgroups, per cgroup", &|md| ms(md.mkdir_ms / nf));
    row("each enforces its own policy, not its neighbour's", &|md| {
        format!("{} of {} correct ({})", md.checked - md.failures.len() as u64, m.n, ms(md.check_ms))
    });
    let _ = writeln!(s, "{t}");
    for md in &m.modes {
        if !md.sets_in_use.is_empty() {
            let _ = writeln!(
                s,
                "- {}: the program set could not be loaded afresh (a sandbox used {}); reused tries make its memory \
                 figure low.",
                md.label,
                md.sets_in_use.join(", ")
            );
        }
        for fl in md.failures.iter().take(10) {
            let _ = writeln!(s, "- {}: enforcement failure: {fl}", md.label);
        }
    }
    if let Some(nb) = &m.neighbours {
        s.push_str(&neighbour_table(nb, alone, m));
    }
    s
}

/// The per-call rounds beside the neighbours, with section 1's ratios of
/// the same configurations (alone) for comparison.
fn neighbour_table(nb: &Percall, alone: Option<&Percall>, m: &Many) -> String {
    let mut s = String::new();
    let first = m.modes.first().map_or("", |md| md.label);
    let _ = writeln!(
        s,
        "Per-call cost with the {} sandboxes above attached ({first}): the same calls, interleaving and checks as section \
         1, {} rounds; ratios against no sandbox in the same rounds (medians), beside section 1's ratio for the same \
         configuration without neighbours.\n",
        thousands(f(u64::from(m.n))),
        nb.routes.first().map_or(0, |(_, smp)| smp.wall.get("none").and_then(|o| o.values().next()).map_or(0, Vec::len))
    );
    let mut t =
        Table::new(&["route", "call", "configuration", "median ns", "vs none", "CPU vs none", "alone: vs none"]);
    for (route, samples) in &nb.routes {
        for (op, op_label) in percall::OPS.iter().take(3) {
            for c in &nb.configs {
                let Some(st) = samples.stat(&c.name, op) else { continue };
                let alone_r = alone.and_then(|a| a.route(*route)).and_then(|a| a.ratio(&c.name, "none", op));
                t.row(vec![
                    route.label().to_owned(),
                    (*op_label).to_owned(),
                    c.label.clone(),
                    thousands(st.median),
                    samples.ratio(&c.name, "none", op).map_or("n/a".into(), |r| x(r.median)),
                    samples.cpu_ratio(&c.name, "none", op).map_or("n/a".into(), |r| x(r.median)),
                    if c.name == "none" { String::new() } else { alone_r.map_or("n/a".into(), |r| x(r.median)) },
                ]);
            }
        }
    }
    let _ = writeln!(s, "{t}");
    s
}
