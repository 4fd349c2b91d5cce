//! Section 4, many sandboxes: N at once, each with its own policy, and a
//! check that each enforces its own.

use std::{fmt::Write as _, fs, path::PathBuf, time::Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    bpftool::memlock_under,
    context::{rmdir_retry, Ctx},
    memory::meminfo_kernel,
    report::Table,
    stats::{dur_ms, f, median, mib, ms, thousands, Stat},
    worker, Plan,
};

/// First port of the many-sandboxes check; sandbox `i` may reach `BASE + i`.
pub(super) const MANY_PORT_BASE: u16 = 20_000;

pub(super) struct Many {
    pub(super) n: u32,
    pub(super) mkdir_ms: f64,
    pub(super) attach_ms: Vec<f64>,
    pub(super) detach_ms: Vec<f64>,
    pub(super) memcg_bytes: Option<f64>,
    pub(super) memlock: Option<(f64, f64)>,
    pub(super) meminfo_bytes: f64,
    pub(super) checked: u64,
    pub(super) failures: Vec<Value>,
    pub(super) check_ms: f64,
}

impl Many {
    pub(super) fn json(&self) -> Value {
        json!({
            "sandboxes": self.n,
            "mkdir_total_ms": self.mkdir_ms,
            "attach_total_ms": self.attach_ms.iter().sum::<f64>(),
            "attach_ms": Stat::of(&self.attach_ms).map(Stat::json),
            "detach_total_ms": self.detach_ms.iter().sum::<f64>(),
            "memcg_kernel_bytes_total": self.memcg_bytes,
            "bpftool_memlock_prog_bytes_total": self.memlock.map(|m| m.0),
            "bpftool_memlock_map_bytes_total": self.memlock.map(|m| m.1),
            "meminfo_delta_bytes": self.meminfo_bytes,
            "enforcement": { "checked": self.checked, "failures": self.failures, "ms": self.check_ms },
        })
    }
}

pub(super) fn many(ctx: &Ctx, plan: &Plan) -> Result<Many> {
    let n = plan.sandboxes;
    let mkdir_start = Instant::now();
    let cgs: Vec<PathBuf> = (0..n).map(|i| ctx.mkcg(&format!("many/s{i}"))).collect::<Result<_>>()?;
    let mkdir_ms = dur_ms(mkdir_start.elapsed());
    let memcg = ctx.mem.as_ref().map(|m| m.child("many")).transpose()?;
    let mem_before = match (&ctx.mem, &memcg) {
        (Some(m), Some(p)) => Some(m.kernel_bytes(p)?),
        _ => None,
    };
    let info_before = meminfo_kernel();
    let mut attach_ms = Vec::with_capacity(n as usize);
    for (i, cg) in cgs.iter().enumerate() {
        let i = u16::try_from(i).expect("at most 10,000 sandboxes");
        if i % 100 == 0 {
            eprintln!("bench: many: attaching {}..{}", i, (u32::from(i) + 100).min(n));
        }
        // Its own loopback port and its own /24: no two policies alike.
        let flags = vec![
            "--loopback".to_owned(),
            (MANY_PORT_BASE + i).to_string(),
            "--allow".to_owned(),
            format!("10.{}.{}.0/24:443", i >> 8, i & 0xff),
        ];
        attach_ms.push(dur_ms(ctx.attach(cg, &flags, memcg.as_deref(), None)?));
    }
    let meminfo_bytes = f(meminfo_kernel()) - f(info_before);
    let memcg_bytes = match (&ctx.mem, &memcg, mem_before) {
        (Some(m), Some(p), Some(b)) => Some(f(m.kernel_bytes(p)?) - f(b)),
        _ => None,
    };
    let memlock = if ctx.bpftool {
        let (p, m) = memlock_under(&ctx.root.join("many"))?;
        Some((f(p), f(m)))
    } else {
        None
    };

    // Enforcement: one worker visits every sandbox; in sandbox i, port
    // BASE+i must not be refused by policy and port BASE+i+1 (the
    // neighbour's) must be.
    let list = ctx.work.join("many.txt");
    let mut text = String::new();
    for (i, cg) in cgs.iter().enumerate() {
        let i = u32::try_from(i).expect("small");
        let own = u32::from(MANY_PORT_BASE) + i;
        let other = u32::from(MANY_PORT_BASE) + (i + 1) % n;
        let _ = writeln!(text, "{} {own} {other}", cg.display());
    }
    fs::write(&list, text)?;
    let start_cg = ctx.mkcg("many-check")?;
    let (hop_time, v) = worker::hop(ctx, &start_cg, &list)?;
    let checked = v["checked"].as_u64().unwrap_or(0);
    let failures = v["failures"].as_array().cloned().unwrap_or_default();

    eprintln!("bench: many: detaching");
    let mut detach_ms = Vec::with_capacity(n as usize);
    for cg in &cgs {
        detach_ms.push(dur_ms(ctx.detach(cg)?));
    }
    for cg in &cgs {
        rmdir_retry(cg);
    }
    rmdir_retry(&start_cg);
    rmdir_retry(&ctx.root.join("many"));
    if let Some(p) = memcg {
        rmdir_retry(&p);
    }
    Ok(Many {
        n,
        mkdir_ms,
        attach_ms,
        detach_ms,
        memcg_bytes,
        memlock,
        meminfo_bytes,
        checked,
        failures,
        check_ms: dur_ms(hop_time),
    })
}

pub(super) fn many_table(m: &Many) -> String {
    let mut s = String::new();
    let nf = f(u64::from(m.n));
    let _ = writeln!(
        s,
        "### 4. Many sandboxes\n\n{} cgroups, each attached with its own policy (its own loopback port and its own /24), one \
         after another, all held at once. Enforcement: one process enters each sandbox in turn; its own port must not be \
         refused by policy, its neighbour's must fail with EPERM.\n",
        thousands(nf)
    );
    let mut t = Table::new(&["figure", "total", "per sandbox"]);
    let total_attach: f64 = m.attach_ms.iter().sum();
    let a = Stat::of(&m.attach_ms);
    t.row(vec![
        "attach (sequential)".into(),
        format!("{:.1} s", total_attach / 1000.0),
        a.map_or("n/a".into(), |a| format!("{} median, {} min", ms(a.median), ms(a.min))),
    ]);
    let tenth = (m.attach_ms.len() / 10).max(1);
    if m.attach_ms.len() >= 20 {
        t.row(vec![
            "attach, first vs last tenth".into(),
            String::new(),
            format!(
                "{} vs {} median",
                ms(median(&m.attach_ms[..tenth])),
                ms(median(&m.attach_ms[m.attach_ms.len() - tenth..]))
            ),
        ]);
    }
    let total_detach: f64 = m.detach_ms.iter().sum();
    t.row(vec!["detach (sequential)".into(), format!("{:.1} s", total_detach / 1000.0), ms(total_detach / nf)]);
    t.row(vec!["create cgroups".into(), ms(m.mkdir_ms), ms(m.mkdir_ms / nf)]);
    if let Some(b) = m.memcg_bytes {
        t.row(vec!["kernel memory (memcg)".into(), mib(b), mib(b / nf)]);
    }
    if let Some((p, q)) = m.memlock {
        t.row(vec!["bpftool memlock, programs".into(), mib(p), mib(p / nf)]);
        t.row(vec!["bpftool memlock, maps".into(), mib(q), mib(q / nf)]);
    }
    t.row(vec!["/proc/meminfo delta".into(), mib(m.meminfo_bytes), mib(m.meminfo_bytes / nf)]);
    t.row(vec![
        "enforcement check".into(),
        format!("{} of {} correct ({})", m.checked - m.failures.len() as u64, m.n, ms(m.check_ms)),
        String::new(),
    ]);
    let _ = writeln!(s, "{t}");
    for fl in m.failures.iter().take(10) {
        let _ = writeln!(s, "- enforcement failure: {fl}");
    }
    s
}
