//! Section 3, lifecycle: `sbx-user run -- /bin/true` against `/bin/true`
//! once the host has the program set, and the first use on a host (the
//! set removed first, when no sandbox uses it); `attach`, `update` and
//! `detach` of a small policy; one attach under strace for where its time
//! goes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    bpftool::memlock_under,
    context::{rmdir_retry, Ctx},
    memory::{meminfo_kernel, settle_meminfo},
    report::Table,
    runner::{in_cgroups, interleaved, procs_fd, timed_quiet},
    sbx,
    stats::{dur_ms, f, mib, ms, x, Stat},
    Plan,
};

/// Wall times in ms.
pub(super) struct Lifecycle {
    pub(super) bin_true: Vec<f64>,
    pub(super) run: Vec<f64>,
    /// `/bin/true` in a new cgroup: mkdir, the child writes itself into
    /// `cgroup.procs` before exec, rmdir after; what moving a process into
    /// a cgroup costs any sandbox (no sbx involved).
    pub(super) moved_true: Vec<f64>,
    /// `sbx-user --version`: the binary started and ended, no work; the
    /// floor under every `sbx-user` command (the page faults of a 6 MiB
    /// binary, statically linked as shipped, clap, the exit).
    pub(super) version: Vec<f64>,
    /// `sandlock run -- /bin/true` (`--sandlock`), the issue's comparison:
    /// Landlock, seccomp and a seccomp-notify supervisor, no cgroup.
    pub(super) sandlock: Vec<f64>,
    /// `run -- /bin/true` as the first use on the host: it loads and
    /// verifies the program set.
    pub(super) first_run: Vec<f64>,
    /// `Slab + VmallocUsed + Percpu` change over each first use, bytes:
    /// the program set's kernel memory, once per host.
    pub(super) first_mem: Vec<f64>,
    /// Why the first use was not measured (a sandbox uses the set).
    pub(super) first_note: Option<String>,
    pub(super) attach: Vec<f64>,
    pub(super) update: Vec<f64>,
    pub(super) detach: Vec<f64>,
    /// The same four with one other sandbox attached the whole time, as on
    /// a host that runs any. (The kernel switches a cgroup-BPF hook on, a
    /// static key patched into the text of every CPU, at its first link on
    /// the host and off at its last; since contract 6 the program set's
    /// anchor cgroup holds one link of each, so both rows should agree.)
    pub(super) run_beside: Vec<f64>,
    pub(super) attach_beside: Vec<f64>,
    pub(super) update_beside: Vec<f64>,
    pub(super) detach_beside: Vec<f64>,
    /// `bytes_memlock` of the program set's programs and of the maps they
    /// use, from bpftool, while a sandbox is attached: `(programs, maps)`.
    pub(super) set_memlock: Option<(f64, f64)>,
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
            "bin_true_moved_into_new_cgroup_ms": s(&self.moved_true),
            "sbx_user_version_ms": s(&self.version),
            "sandlock_run_bin_true_ms": s(&self.sandlock),
            "first_use_run_bin_true_ms": s(&self.first_run),
            "first_use_meminfo_delta_bytes": s(&self.first_mem),
            "first_use_note": self.first_note,
            "attach_ms": s(&self.attach),
            "update_ms": s(&self.update),
            "detach_ms_beside_another_sandbox": s(&self.detach_beside),
            "run_bin_true_ms_beside_another_sandbox": s(&self.run_beside),
            "attach_ms_beside_another_sandbox": s(&self.attach_beside),
            "update_ms_beside_another_sandbox": s(&self.update_beside),
            "program_set_memlock_bytes": self.set_memlock.map(|(p, m)| json!({ "programs": p, "maps": m })),
            "detach_ms": s(&self.detach),
            "attach_strace": self.trace.as_ref().map(AttachTrace::json),
        })
    }
}

pub(super) fn lifecycle(ctx: &Ctx, plan: &Plan) -> Result<Lifecycle> {
    let truth = which_true()?;
    let parent = ctx.mkcg("run")?;
    let cg = ctx.mkcg("lifecycle")?;
    let resident = ctx.mkcg("lifecycle-resident")?;
    let small = sbx::small_policy();
    // The policy `update` switches to and back from: one more rule.
    let mut other = small.clone();
    other.extend(["--allow".to_owned(), "10.1.2.4:5432".to_owned()]);
    let mut l = Lifecycle {
        bin_true: vec![],
        run: vec![],
        moved_true: vec![],
        version: vec![],
        sandlock: vec![],
        first_run: vec![],
        first_mem: vec![],
        first_note: None,
        attach: vec![],
        update: vec![],
        detach: vec![],
        run_beside: vec![],
        attach_beside: vec![],
        update_beside: vec![],
        detach_beside: vec![],
        set_memlock: None,
        trace: None,
    };
    // The host has the programs before the first warm sample.
    sbx::run(ctx, &parent, &small, &truth)?;
    for round in 0..plan.lifecycle_rounds {
        eprintln!("bench: lifecycle: round {}/{}", round + 1, plan.lifecycle_rounds);
        // 0: /bin/true, 1: run with the set loaded, 2: run as the first use
        // on the host, 3: /bin/true moved into a new cgroup, 4: `sbx-user
        // --version`, 5: `sandlock run -- /bin/true` (with --sandlock);
        // rotated per round.
        for which in interleaved(6, round) {
            match which {
                0 => {
                    for _ in 0..plan.lifecycle_reps {
                        let mut c = Command::new(&truth);
                        l.bin_true.push(dur_ms(timed_quiet(&mut c, "/bin/true", None)?));
                    }
                }
                3 => {
                    for rep in 0..plan.lifecycle_reps {
                        l.moved_true.push(dur_ms(moved_true(&parent, &truth, round, rep)?));
                    }
                }
                4 => {
                    for _ in 0..plan.lifecycle_reps {
                        let mut c = Command::new(&ctx.sbx);
                        c.arg("--version");
                        l.version.push(dur_ms(timed_quiet(&mut c, "sbx-user --version", None)?));
                    }
                }
                1 => {
                    for _ in 0..plan.lifecycle_reps {
                        l.run.push(dur_ms(sbx::run(ctx, &parent, &small, &truth)?));
                    }
                }
                5 => {
                    let Some((sandlock, _)) = &plan.sandlock else { continue };
                    for _ in 0..plan.lifecycle_reps {
                        let mut c = sandlock_run(sandlock, &truth);
                        l.sandlock.push(dur_ms(timed_quiet(&mut c, "sandlock run -- /bin/true", None)?));
                    }
                }
                2 => first_use(ctx, &parent, &small, &truth, &mut l)?,
                _ => unreachable!("six kinds"),
            }
        }
        let cycle = |attach: &mut Vec<f64>, update: &mut Vec<f64>, detach: &mut Vec<f64>| -> Result<()> {
            for rep in 0..plan.lifecycle_reps {
                attach.push(dur_ms(ctx.attach(&cg, &small, None, None)?));
                let (a, b) = if rep % 2 == 0 { (&other, &small) } else { (&small, &other) };
                update.push(dur_ms(ctx.update(&cg, a)?));
                update.push(dur_ms(ctx.update(&cg, b)?));
                detach.push(dur_ms(ctx.detach(&cg)?));
            }
            Ok(())
        };
        cycle(&mut l.attach, &mut l.update, &mut l.detach)?;
        // Beside a resident sandbox.
        ctx.attach(&resident, &small, None, None)?;
        if ctx.bpftool && l.set_memlock.is_none() {
            let (p, m) = memlock_under(&resident)?;
            l.set_memlock = Some((f(p), f(m)));
        }
        for _ in 0..plan.lifecycle_reps {
            l.run_beside.push(dur_ms(sbx::run(ctx, &parent, &small, &truth)?));
        }
        cycle(&mut l.attach_beside, &mut l.update_beside, &mut l.detach_beside)?;
        ctx.detach(&resident)?;
    }
    l.trace = trace_attach(ctx, &cg, &small)?;
    rmdir_retry(&cg);
    rmdir_retry(&resident);
    rmdir_retry(&parent);
    Ok(l)
}

/// `/bin/true` in a cgroup made for it, as a sandbox starts its command:
/// mkdir, the child moves itself there between fork and exec, rmdir once
/// it exited.
fn moved_true(parent: &Path, truth: &Path, round: u32, rep: u32) -> Result<Duration> {
    let start = Instant::now();
    let cg = parent.join(format!("moved-{round}-{rep}"));
    fs::create_dir(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    let procs = procs_fd(&cg)?;
    let mut c = Command::new(truth);
    in_cgroups(&mut c, vec![procs.as_raw_fd()], Vec::new());
    timed_quiet(&mut c, "/bin/true in a new cgroup", None)?;
    drop(procs);
    rmdir_retry(&cg);
    Ok(start.elapsed())
}

/// One `run -- /bin/true` as the first use on the host: the program set is
/// removed first (only if no sandbox's marker names it), so this run loads
/// and verifies it.
fn first_use(ctx: &Ctx, parent: &Path, policy: &[String], truth: &Path, l: &mut Lifecycle) -> Result<()> {
    let cleanup = sbx::remove_unused_sets(&ctx.bpffs)?;
    if !cleanup.in_use.is_empty() {
        l.first_note = Some(format!(
            "not measured: a sandbox uses the program set ({}) in {}",
            cleanup.in_use.join(", "),
            ctx.bpffs.display()
        ));
        return Ok(());
    }
    // The removed set's memory is freed after a grace period: let that
    // land before the baseline.
    settle_meminfo(Duration::from_secs(5));
    let before = meminfo_kernel();
    l.first_run.push(dur_ms(sbx::run(ctx, parent, policy, truth)?));
    l.first_mem.push(f(meminfo_kernel()) - f(before));
    Ok(())
}

/// `sandlock run -- /bin/true` with what a dynamically linked `/bin/true`
/// reads (sandlock grants no path by default) and one allowed destination
/// of the small policy (the rest of it cannot be said: `--net-allow` takes
/// hosts, not CIDRs).
fn sandlock_run(sandlock: &Path, truth: &Path) -> Command {
    let mut c = Command::new(sandlock);
    c.arg("run");
    for dir in ["/usr", "/lib", "/lib64", "/bin", "/etc"] {
        c.args(["-r", dir]);
    }
    c.args(["--net-allow", "10.1.2.3:5432", "--"]).arg(truth);
    c
}

/// The version line of the sandlock binary `--sandlock` names, once it has
/// run `/bin/true` here: a binary that cannot is refused before the
/// benchmark starts, never silently left out.
pub(super) fn check_sandlock(sandlock: &Path) -> Result<String> {
    let out = Command::new(sandlock)
        .arg("--version")
        .output()
        .with_context(|| format!("--sandlock {}: cannot run it", sandlock.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        anyhow::bail!(
            "--sandlock {}: `--version` failed ({}): is it sandlock's command line?",
            sandlock.display(),
            out.status
        );
    }
    let out = sandlock_run(sandlock, &which_true()?).output().context("running sandlock")?;
    if !out.status.success() {
        anyhow::bail!(
            "--sandlock {}: `sandlock run -- /bin/true` failed ({}): {}",
            sandlock.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(version)
}

pub(super) fn which_true() -> Result<PathBuf> {
    ["/bin/true", "/usr/bin/true"].iter().map(PathBuf::from).find(|p| p.exists()).context("no /bin/true")
}

pub(super) fn lifecycle_table(l: &Lifecycle, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 3. Sandbox lifecycle\n\n{} rounds, the {} kinds of start rotated per round ({} repetitions each of \
         `/bin/true`, `/bin/true` moved into a new cgroup, `sbx-user --version`{} and `run` with the program set \
         loaded; one first use, after \
         removing the unused set); then {} attach, update (to a policy with one more rule and back: two per attach) \
         and detach; then, with one other sandbox attached (as on any host that runs one), {} `run` and the same \
         attach, update and detach. The program set's anchor cgroup keeps each cgroup-BPF hook switched on (without \
         it, a host's first link of each attach type flips a static key, which patches kernel text on every CPU, and \
         its last detach flips it back), so the two kinds should agree. Small policy; every `sbx-user` command is a \
         whole process, started from the benchmark.\n",
        plan.lifecycle_rounds,
        if plan.sandlock.is_some() { "six" } else { "five" },
        plan.lifecycle_reps,
        if plan.sandlock.is_some() { ", `sandlock run -- /bin/true`" } else { "" },
        plan.lifecycle_reps,
        plan.lifecycle_reps
    );
    let base = Stat::of(&l.bin_true);
    let sandlock_label = &plan.sandlock.as_ref().map_or_else(String::new, |(_, v)| {
        format!("`sandlock run -- /bin/true` ({v}: Landlock, seccomp, a seccomp-notify supervisor; no cgroup)")
    });
    let mut t = Table::new(&["operation", "median", "min", "vs /bin/true (median)", "added (median)"]);
    for (label, v) in [
        ("`/bin/true`", &l.bin_true),
        ("`/bin/true` moved into a new cgroup (mkdir, `cgroup.procs`, exec, rmdir; no sbx)", &l.moved_true),
        ("`sbx-user --version` (the binary started and ended: the floor of every command)", &l.version),
        ("`sbx-user run -- /bin/true`, program set loaded", &l.run),
        (sandlock_label, &l.sandlock),
        ("`sbx-user run -- /bin/true`, first use on the host (loads the set)", &l.first_run),
        ("`sbx-user attach`", &l.attach),
        ("`sbx-user update`", &l.update),
        ("`sbx-user detach`", &l.detach),
        ("`sbx-user run -- /bin/true`, beside another sandbox", &l.run_beside),
        ("`sbx-user attach`, beside another sandbox", &l.attach_beside),
        ("`sbx-user update`, beside another sandbox", &l.update_beside),
        ("`sbx-user detach`, beside another sandbox", &l.detach_beside),
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
    if let Some(note) = &l.first_note {
        let _ = writeln!(s, "First use on the host: {note}.\n");
    }
    if let Some(m) = Stat::of(&l.first_mem) {
        let _ = writeln!(
            s,
            "Kernel memory of the program set (once per host): {} median over the first uses (change of \
             `Slab + VmallocUsed + Percpu`){}.\n",
            mib(m.median),
            l.set_memlock.map_or(String::new(), |(p, q)| format!(
                "; bpftool's `bytes_memlock`: programs {}, the host maps they use {}",
                mib(p),
                mib(q)
            ))
        );
    }
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
