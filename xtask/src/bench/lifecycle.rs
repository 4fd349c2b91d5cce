//! Section 3, lifecycle: `sbx-user run -- /bin/true` against `/bin/true`,
//! `attach` and `detach`, and one attach under strace for where its time
//! goes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    context::{rmdir_retry, Ctx},
    report::Table,
    runner::timed_quiet,
    sbx,
    stats::{dur_ms, ms, x, Stat},
    Plan,
};

/// Wall times in ms.
pub(super) struct Lifecycle {
    pub(super) bin_true: Vec<f64>,
    pub(super) run: Vec<f64>,
    pub(super) attach: Vec<f64>,
    pub(super) detach: Vec<f64>,
    /// One `attach` under strace, if strace is installed.
    pub(super) trace: Option<AttachTrace>,
}

/// Where one `sbx-user attach` spends its time in `bpf(2)`, from
/// `strace -f -T -e trace=bpf` (which slows every traced call a little).
pub(super) struct AttachTrace {
    pub(super) wall_ms: f64,
    /// Command -> (calls, ms).
    pub(super) by_cmd: BTreeMap<String, (u32, f64)>,
    /// `BPF_PROG_LOAD` (verification included) per program, ms.
    pub(super) prog_load: Vec<(String, f64)>,
}

impl AttachTrace {
    pub(super) fn json(&self) -> Value {
        json!({
            "wall_ms": self.wall_ms,
            "bpf_syscalls": self.by_cmd.iter().map(|(k, (n, ms))| (k.clone(), json!({ "calls": n, "ms": ms }))).collect::<serde_json::Map<_, _>>(),
            "prog_load_ms": self.prog_load.iter().map(|(k, ms)| (k.clone(), json!(ms))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Parses strace lines such as
    /// `123 bpf(BPF_PROG_LOAD, {..., prog_name="sbx_connect4", ...}, 148) = 12 <0.021320>`.
    pub(super) fn parse(text: &str, wall_ms: f64) -> Self {
        let mut by_cmd: BTreeMap<String, (u32, f64)> = BTreeMap::new();
        let mut prog_load = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.split_once("bpf(").map(|(_, r)| r) else {
                continue;
            };
            let Some(cmd) = rest.split(',').next() else {
                continue;
            };
            let Some(secs) =
                line.rsplit_once('<').and_then(|(_, t)| t.strip_suffix('>')).and_then(|t| t.parse::<f64>().ok())
            else {
                continue;
            };
            let e = by_cmd.entry(cmd.to_owned()).or_default();
            e.0 += 1;
            e.1 += secs * 1000.0;
            if cmd == "BPF_PROG_LOAD" {
                let name =
                    rest.split_once("prog_name=\"").and_then(|(_, n)| n.split('"').next()).unwrap_or("").to_owned();
                if name.starts_with("sbx_") {
                    prog_load.push((name, secs * 1000.0));
                }
            }
        }
        Self { wall_ms, by_cmd, prog_load }
    }
}

/// Runs one `sbx-user attach` under strace and detaches again.
pub(super) fn trace_attach(ctx: &Ctx, cg: &Path, policy: &[String]) -> Result<Option<AttachTrace>> {
    let has_strace = Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    if !has_strace {
        return Ok(None);
    }
    let log = ctx.work.join("attach.strace");
    let took = sbx::strace_attach(ctx, cg, policy, &log)?;
    ctx.detach(cg)?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(Some(AttachTrace::parse(&text, dur_ms(took))))
}

impl Lifecycle {
    pub(super) fn json(&self) -> Value {
        let s = |v: &Vec<f64>| json!({ "samples": v, "stat": Stat::of(v).map(Stat::json) });
        json!({
            "bin_true_ms": s(&self.bin_true),
            "run_bin_true_ms": s(&self.run),
            "attach_ms": s(&self.attach),
            "detach_ms": s(&self.detach),
            "attach_strace": self.trace.as_ref().map(AttachTrace::json),
        })
    }
}

pub(super) fn lifecycle(ctx: &Ctx, plan: &Plan) -> Result<Lifecycle> {
    let truth = which_true()?;
    let parent = ctx.mkcg("run")?;
    let cg = ctx.mkcg("lifecycle")?;
    let small = sbx::small_policy();
    let mut l = Lifecycle { bin_true: vec![], run: vec![], attach: vec![], detach: vec![], trace: None };
    for round in 0..plan.lifecycle_rounds {
        eprintln!("bench: lifecycle: round {}/{}", round + 1, plan.lifecycle_rounds);
        for rep in 0..plan.lifecycle_reps {
            // Alternate which goes first.
            let order: [u8; 2] = if (round + rep) % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                if which == 0 {
                    let mut c = Command::new(&truth);
                    l.bin_true.push(dur_ms(timed_quiet(&mut c, "/bin/true", None)?));
                } else {
                    l.run.push(dur_ms(sbx::run(ctx, &parent, &small, &truth)?));
                }
            }
            l.attach.push(dur_ms(ctx.attach(&cg, &small, None, None)?));
            l.detach.push(dur_ms(ctx.detach(&cg)?));
        }
    }
    l.trace = trace_attach(ctx, &cg, &small)?;
    rmdir_retry(&cg);
    rmdir_retry(&parent);
    Ok(l)
}

pub(super) fn which_true() -> Result<PathBuf> {
    ["/bin/true", "/usr/bin/true"].iter().map(PathBuf::from).find(|p| p.exists()).context("no /bin/true")
}

pub(super) fn lifecycle_table(l: &Lifecycle, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 3. Sandbox lifecycle\n\n{} rounds of {} repetitions, alternating; small policy.\n",
        plan.lifecycle_rounds, plan.lifecycle_reps
    );
    let base = Stat::of(&l.bin_true);
    let mut t = Table::new(&["operation", "median", "min", "vs /bin/true (median)", "added (median)"]);
    for (label, v) in [
        ("`/bin/true`", &l.bin_true),
        ("`sbx-user run -- /bin/true`", &l.run),
        ("`sbx-user attach`", &l.attach),
        ("`sbx-user detach`", &l.detach),
    ] {
        let Some(st) = Stat::of(v) else { continue };
        t.row(vec![
            label.to_owned(),
            ms(st.median),
            ms(st.min),
            base.map_or("n/a".into(), |b| x(st.median / b.median)),
            base.map_or("n/a".into(), |b| ms(st.median - b.median)),
        ]);
    }
    let _ = writeln!(s, "{t}");
    if let Some(tr) = &l.trace {
        let total: f64 = tr.by_cmd.values().map(|(_, ms)| ms).sum();
        let load = tr.by_cmd.get("BPF_PROG_LOAD").map_or(0.0, |(_, ms)| *ms);
        let _ = writeln!(
            s,
            "Where `attach` spends its time (one attach under `strace -f -T -e trace=bpf`, {} wall): {} in bpf(2), of which \
             {} in `BPF_PROG_LOAD` (the verifier) for {} programs: {}.\n",
            ms(tr.wall_ms),
            ms(total),
            ms(load),
            tr.prog_load.len(),
            tr.prog_load.iter().map(|(n, t)| format!("{n} {t:.1}")).collect::<Vec<_>>().join(", ")
        );
    }
    s
}
