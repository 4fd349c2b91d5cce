//! Section 2, policy scale: parse+compile time, attach time and kernel
//! memory per policy size (its sandboxes are shared with section 1).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    context::{rmdir_retry, Ctx},
    memory::{meminfo_kernel, MemAcct},
    policies::Policies,
    report::Table,
    runner::interleaved,
    sbx,
    stats::{dur_ms, f, mib, ms, thousands, x, Stat},
    Plan,
};

/// Load time and kernel memory of one policy size.
pub(super) struct ScaleRow {
    pub(super) rules: usize,
    /// Why this size was not loaded.
    pub(super) skipped: Option<String>,
    pub(super) entries: Option<u64>,
    pub(super) attach_ms: Vec<f64>,
    pub(super) check_ms: Vec<f64>,
    pub(super) detach_ms: Vec<f64>,
    pub(super) memcg_bytes: Vec<f64>,
    pub(super) meminfo_bytes: Vec<f64>,
}

impl ScaleRow {
    pub(super) fn new(rules: usize) -> Self {
        Self {
            rules,
            skipped: None,
            entries: None,
            attach_ms: vec![],
            check_ms: vec![],
            detach_ms: vec![],
            memcg_bytes: vec![],
            meminfo_bytes: vec![],
        }
    }

    pub(super) fn json(&self) -> Value {
        let s = |v: &Vec<f64>| json!({ "samples": v, "stat": Stat::of(v).map(Stat::json) });
        json!({
            "rules": self.rules,
            "skipped": self.skipped,
            "dest_entries": self.entries,
            "attach_ms": s(&self.attach_ms),
            "check_ms": s(&self.check_ms),
            "detach_ms": s(&self.detach_ms),
            "memcg_kernel_bytes": s(&self.memcg_bytes),
            "meminfo_delta_bytes": s(&self.meminfo_bytes),
        })
    }

    /// Attaches `flags` to `cg`, measuring time and kernel memory.
    pub(super) fn load(&mut self, ctx: &Ctx, cg: &Path, flags: &[String], tag: &str) -> Result<()> {
        let memcg = ctx.mem.as_ref().map(|m| m.child(tag)).transpose()?;
        let mem_before = match (&ctx.mem, &memcg) {
            (Some(m), Some(p)) => Some(m.kernel_bytes(p)?),
            _ => None,
        };
        let info_before = meminfo_kernel();
        let limit = (self.rules > 100_000).then_some(LOAD_LIMIT);
        let took = ctx.attach(cg, flags, memcg.as_deref(), limit)?;
        self.attach_ms.push(dur_ms(took));
        self.meminfo_bytes.push(f(meminfo_kernel()) - f(info_before));
        if let (Some(m), Some(p), Some(b)) = (&ctx.mem, &memcg, mem_before) {
            self.memcg_bytes.push(f(m.kernel_bytes(p)?) - f(b));
        }
        self.entries = ctx.entries(cg).or(self.entries);
        Ok(())
    }
}

/// Longest a load of more than 100,000 rules may take before it is
/// abandoned (the sizes up to 100,000 are the targets and always
/// run to completion).
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace supports 1.85"
)]
pub(super) const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// Loads slower than this get one round only.
pub(super) const SLOW_LOAD: Duration = Duration::from_secs(10);

/// The exponent `e` of `t ~ n^e` between the last two measured sizes, at
/// least 1: times at the small sizes are mostly process start-up.
pub(super) fn growth_exponent(measured: &[(usize, f64)]) -> f64 {
    match measured {
        [.., (n1, t1), (n2, t2)] if *t1 > 0.0 && n2 > n1 => {
            #[expect(clippy::cast_precision_loss, reason = "rule counts are far below 2^52")]
            let e = (t2 / t1).ln() / (*n2 as f64 / *n1 as f64).ln();
            e.max(1.0)
        }
        _ => 1.0,
    }
}

pub(super) fn scale_table(rows: &[ScaleRow], plan: &Plan, ctx: &Ctx) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 2. Policy scale\n\nUp to {} loads per size, interleaved (one for loads over {} s). `attach` is the whole command \
         (parse, compile, fill the sandbox's tries, link the host's program set, pin); parse+compile is `sbx-user check` on \
         the same policy. Kernel memory, of the first load of each size (later loads reuse the emptied tries a detached \
         sandbox leaves in place, which stay charged to their creator): {}; /proc/meminfo is machine-wide and noisy at \
         small sizes. The program set is shared by every sandbox and loaded before (section 3 measures its first load).\n",
        plan.load_rounds,
        SLOW_LOAD.as_secs(),
        ctx.mem.as_ref().map_or("no memory cgroup on this machine".into(), MemAcct::describe)
    );
    let base = rows.first().and_then(|r| Stat::of(&r.attach_ms));
    let mut t = Table::new(&[
        "rules",
        "trie entries",
        "attach (median)",
        "vs 10 rules",
        "parse+compile",
        "detach",
        "kernel memory (memcg)",
        "/proc/meminfo delta",
    ]);
    for r in rows {
        if let Some(why) = &r.skipped {
            let mut row = vec![thousands(f(r.rules as u64)), why.clone()];
            row.resize(8, String::new());
            t.row(row);
            continue;
        }
        let a = Stat::of(&r.attach_ms);
        t.row(vec![
            thousands(f(r.rules as u64)),
            r.entries.map_or("?".into(), |e| thousands(f(e))),
            a.map_or("n/a".into(), |a| ms(a.median)),
            a.zip(base).map_or("n/a".into(), |(a, b)| x(a.median / b.median)),
            Stat::of(&r.check_ms).map_or("n/a".into(), |c| ms(c.median)),
            Stat::of(&r.detach_ms).map_or("n/a".into(), |c| ms(c.median)),
            r.memcg_bytes.first().map_or("n/a".into(), |&m| mib(m)),
            r.meminfo_bytes.first().map_or("n/a".into(), |&m| mib(m)),
        ]);
    }
    let _ = writeln!(s, "{t}");
    s
}

/// Parse and compile alone (`sbx-user check`), smallest first: the first
/// `check` sample of each size. A size above 100,000 whose predicted time
/// exceeds the limit (or whose check fails) is marked skipped, with the
/// sizes after it.
pub(super) fn check_sizes(ctx: &Ctx, plan: &Plan, policies: &Policies) -> Result<Vec<ScaleRow>> {
    let mut rows: Vec<ScaleRow> = plan.sizes.iter().map(|&n| ScaleRow::new(n)).collect();
    let mut measured: Vec<(usize, f64)> = Vec::new();
    let mut skip_rest: Option<String> = None;
    for row in &mut rows {
        let n = row.rules;
        if let Some(why) = &skip_rest {
            row.skipped = Some(why.clone());
            continue;
        }
        if let (Some(&(pn, pt)), true) = (measured.last(), n > 100_000) {
            // Predict from the last size at the growth seen so far, at
            // least linear.
            #[expect(clippy::cast_precision_loss, reason = "rule counts are far below 2^52")]
            let predicted = pt * (n as f64 / pn as f64).powf(growth_exponent(&measured));
            if predicted > LOAD_LIMIT.as_secs_f64() * 1000.0 {
                let why = format!(
                    "not loaded: parsing and compiling {} rules took {:.1} s, so {} rules would take about {:.0} s",
                    thousands(f(pn as u64)),
                    pt / 1000.0,
                    thousands(f(n as u64)),
                    predicted / 1000.0
                );
                eprintln!("bench: {why}");
                row.skipped = Some(why.clone());
                skip_rest = Some(why);
                continue;
            }
        }
        eprintln!("bench: sbx-user check, {} rules", thousands(f(n as u64)));
        let limit = (n > 100_000).then_some(LOAD_LIMIT);
        match sbx::check(ctx, &policies.flags(n), limit) {
            Ok(d) => {
                row.check_ms.push(dur_ms(d));
                measured.push((n, dur_ms(d)));
            }
            Err(e) if n > 100_000 => {
                let why = format!("not loaded: {e:#}");
                row.skipped = Some(why.clone());
                skip_rest = Some(why);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

/// More load rounds on fresh cgroups, sizes interleaved (a size whose
/// first load took longer than [`SLOW_LOAD`] gets none).
pub(super) fn more_rounds(ctx: &Ctx, plan: &Plan, policies: &Policies, rows: &mut [ScaleRow]) -> Result<()> {
    for round in 1..plan.load_rounds {
        eprintln!("bench: scale: round {}/{}", round + 1, plan.load_rounds);
        for i in interleaved(rows.len(), round) {
            let row = &mut rows[i];
            let slow = row.attach_ms.first().is_some_and(|&t| t > dur_ms(SLOW_LOAD));
            if row.skipped.is_some() || slow {
                continue;
            }
            let n = row.rules;
            row.check_ms.push(dur_ms(sbx::check(ctx, &policies.flags(n), None)?));
            let cg = ctx.mkcg(&format!("scale-{n}-{round}"))?;
            row.load(ctx, &cg, &policies.flags(n), &format!("load-{n}-{round}"))?;
            row.detach_ms.push(dur_ms(ctx.detach(&cg)?));
            rmdir_retry(&cg);
        }
    }
    Ok(())
}
