//! The benchmark suite (`cargo xtask bench`). See BENCHMARKS.md.
//!
//! Every figure is a ratio against a baseline measured in the same run,
//! with the configurations interleaved over several rounds (round `r`
//! starts at configuration `r`, so no configuration always runs first),
//! and the minimum and median of the rounds reported: the machines are
//! shared and noisy. Nothing here fails on a number; targets are reported
//! as met or missed.
//!
//! Sections:
//! 1. `percall`: ns per socket call, timed by `sbx-bench-worker` from
//!    inside each configuration's cgroup (no sandbox; sbx with a small
//!    policy, the same in audit mode with a follower reading the events;
//!    sbx with 10 to 1,000,000 generated CIDR rules; Landlock), in wall and
//!    on-CPU time, then interleaved passes with `kernel.bpf_stats_enabled=1`
//!    for the programs' own run time per call.
//! 2. `scale`: parse+compile time, attach time and kernel memory per policy
//!    size. Sections 1 and 2 share their sandboxes: loading a large policy
//!    is the expensive part of both. A size above 100,000 rules whose load
//!    is predicted to take more than two minutes is skipped and says why.
//! 3. `lifecycle`: `sbx-user run -- /bin/true` against `/bin/true`;
//!    `attach` and `detach`, and one attach under strace for where its time
//!    goes.
//! 4. `many`: N sandboxes at once, each with its own policy, and a check
//!    that each enforces its own.
//! 5. `events`: deny-to-event latency for a follower, and a flood.
//!
//! Kernel memory is measured three ways, each named in the output:
//! the memory cgroup charge of the `sbx-user attach` process (it is the
//! creator of the maps and programs, so the kernel charges them to its
//! memcg, and the charge outlives the process), the `bytes_memlock` that
//! `bpftool` reports for the programs and maps, and the change of
//! `Slab + VmallocUsed + Percpu` in /proc/meminfo (global, so noisy).
//!
//! Network traffic goes to 127.0.0.1 only. The denied calls target a
//! loopback port the policy denies, so even a broken policy could not send
//! a packet off the machine. Everything created (cgroups, pins, memory
//! cgroups, processes) is removed on exit, on error and on Ctrl-C.

use std::{
    collections::{BTreeMap, HashSet},
    env,
    fmt::{self, Write as _},
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
// The Landlock reference configuration lives in the worker binary, which
// shares this package's dependencies.
use landlock as _;
use serde_json::{json, Value};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Rounds of the per-call benchmarks [default: 15, 3 with --quick].
    #[arg(long)]
    pub(crate) rounds: Option<u32>,
    /// Fast smoke run: fewer iterations and rounds, no 1,000,000-rule
    /// policy, 100 sandboxes instead of 1,000.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where to write the JSON results [default: <target>/bench/bench.json].
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Sandboxes in the many-sandboxes benchmark [default: 1000, 100 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub(crate) sandboxes: Option<u32>,
    /// Run only these sections (comma list).
    #[arg(long, value_delimiter = ',', value_name = "SECTION")]
    pub(crate) only: Vec<Section>,
    /// Use the binaries already built instead of building them.
    #[arg(long)]
    pub(crate) no_build: bool,
}

/// A part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Section {
    /// Per-call cost of connect, sendto and denied calls.
    Percall,
    /// Load time and kernel memory by policy size.
    Scale,
    /// `run -- /bin/true`, attach, detach.
    Lifecycle,
    /// Many sandboxes at once.
    Many,
    /// Deny events: latency and a flood.
    Events,
}

/// How big the run is.
#[derive(Clone, Debug)]
struct Plan {
    /// Rounds of the per-call section.
    rounds: u32,
    tcp_iters: u32,
    fast_iters: u32,
    sizes: Vec<usize>,
    load_rounds: u32,
    /// Rounds of the `bpf_stats` pass.
    profile_rounds: u32,
    lifecycle_rounds: u32,
    lifecycle_reps: u32,
    sandboxes: u32,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        let mut p = if args.quick {
            Self {
                rounds: 3,
                tcp_iters: 1_000,
                fast_iters: 3_000,
                sizes: vec![10, 1_000, 100_000],
                load_rounds: 1,
                profile_rounds: 1,
                lifecycle_rounds: 2,
                lifecycle_reps: 2,
                sandboxes: 100,
            }
        } else {
            // Many short rounds rather than a few long ones: on a shared
            // machine one worker run can be 15% off the next, so the
            // median needs samples more than each sample needs length.
            Self {
                rounds: 15,
                tcp_iters: 3_000,
                fast_iters: 10_000,
                sizes: vec![10, 1_000, 100_000, 1_000_000],
                load_rounds: 3,
                profile_rounds: 5,
                lifecycle_rounds: 5,
                lifecycle_reps: 4,
                sandboxes: 1_000,
            }
        };
        if let Some(r) = args.rounds {
            p.rounds = r.max(1);
        }
        if let Some(n) = args.sandboxes {
            p.sandboxes = n;
        }
        p
    }
}

/// Loopback ports the policies allow; everything above is denied.
const ALLOWED_LOOPBACK: &str = "1-9999";
/// First port of the many-sandboxes check; sandbox `i` may reach `BASE + i`.
const MANY_PORT_BASE: u16 = 20_000;
/// The small policy: a database, HTTPS to a /16, an IPv6 /32, loopback
/// ports 1-9999.
const SMALL_POLICY: [&str; 8] = [
    "--allow",
    "10.1.2.3:5432",
    "--allow",
    "192.168.0.0/16:80,443",
    "--allow",
    "[2001:db8::/32]:443",
    "--loopback",
    ALLOWED_LOOPBACK,
];

// ---------------------------------------------------------------------------
// Entry point.

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks attach BPF programs to real cgroups; they need root\nHint: sudo -E cargo xtask bench");
    }
    let plan = Plan::new(args);
    let target = target_dir();
    if !args.no_build {
        crate::cargo(&["build", "--release", "-p", "sbx-user"])?;
        crate::cargo(&["build", "--release", "-p", "xtask", "--bin", "sbx-bench-worker"])?;
    }
    let sbx = target.join("release/sbx-user");
    let worker = target.join("release/sbx-bench-worker");
    for b in [&sbx, &worker] {
        if !b.exists() {
            bail!("{} is missing; run without --no-build", b.display());
        }
    }
    let bpftool = Command::new("bpftool").arg("version").output().is_ok_and(|o| o.status.success());
    if !bpftool {
        eprintln!("bench: bpftool not found: no memlock figures and no bpf_stats profile\nHint: cargo xtask setup --test-deps");
    }
    let out = args.out.clone().unwrap_or_else(|| target.join("bench/bench.json"));
    let bench_dir = target.join("bench");
    let cgroup2 = find_mount(|fstype, _| fstype == "cgroup2")
        .context("cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it first")?;
    let pid = std::process::id();
    let ctx = Ctx {
        sbx,
        worker,
        root: cgroup2.join(format!("sbx-bench-{pid}")),
        state_dir: bench_dir.join(format!("state-{pid}")),
        work: bench_dir.join(format!("work-{pid}")),
        bpffs: env::var_os("SBX_BPFFS").map_or_else(|| PathBuf::from("/sys/fs/bpf"), PathBuf::from),
        mem: MemAcct::find(&cgroup2, pid),
        bpftool,
        cpu: std::thread::available_parallelism().map_or(None, |n| (n.get() > 1).then(|| n.get() - 1)),
    };
    install_teardown(&ctx);
    let _guard = Guard;
    fs::create_dir_all(&ctx.work).with_context(|| format!("creating {}", ctx.work.display()))?;
    fs::create_dir(&ctx.root).with_context(|| format!("creating cgroup {}", ctx.root.display()))?;
    if let Some(m) = &ctx.mem {
        m.create_root()?;
    }

    let want = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let started = Instant::now();
    let mut report = Report::default();
    eprintln!("bench: plan {plan:?}");
    eprintln!(
        "bench: kernel memory by {}",
        ctx.mem
            .as_ref()
            .map_or("bpftool and /proc/meminfo only (no memory cgroup found)".to_owned(), MemAcct::describe)
    );
    if want(Section::Percall) || want(Section::Scale) {
        let policies = Policies::new(&ctx.work, &plan.sizes)?;
        (report.percall, report.scale) =
            policy_sections(&ctx, &plan, &policies, want(Section::Percall), want(Section::Scale))?;
    }
    if want(Section::Lifecycle) {
        report.lifecycle = Some(lifecycle(&ctx, &plan)?);
    }
    if want(Section::Many) {
        report.many = Some(many(&ctx, &plan)?);
    }
    if want(Section::Events) {
        report.events = Some(events(&ctx, &plan)?);
    }
    let elapsed = started.elapsed();
    write_results(&report, &plan, &ctx, &out, elapsed)
}

/// Prints the tables and writes the JSON.
fn write_results(report: &Report, plan: &Plan, ctx: &Ctx, out: &Path, elapsed: Duration) -> Result<()> {
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

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace, where the builds run) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace().join("target"), |d| crate::workspace().join(d))
}

// ---------------------------------------------------------------------------
// Environment: cgroups, memory accounting, teardown.

/// What the benchmarks share.
struct Ctx {
    sbx: PathBuf,
    worker: PathBuf,
    /// Our cgroup v2 directory; every benchmark cgroup is below it.
    root: PathBuf,
    /// `SBX_STATE_DIR` for every `sbx-user` call, so the host's records are
    /// untouched.
    state_dir: PathBuf,
    /// Generated policy files.
    work: PathBuf,
    bpffs: PathBuf,
    mem: Option<MemAcct>,
    bpftool: bool,
    /// CPU the worker is pinned to.
    cpu: Option<usize>,
}

/// Reads the mount table for the first mount whose type and super options
/// match.
fn find_mount(matches: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _source, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        let point = left.split_whitespace().nth(4)?;
        matches(fstype, opts).then(|| PathBuf::from(unescape_mount(point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A memory cgroup to run `sbx-user attach` in, so its kernel allocations
/// (the maps and programs it creates, which outlive it) are counted.
#[derive(Clone, Debug)]
enum MemAcct {
    /// A cgroup v1 memory hierarchy: `memory.kmem.usage_in_bytes`.
    V1 { root: PathBuf },
    /// cgroup v2 with the memory controller delegated to our cgroup:
    /// `memory.stat` `kernel`.
    V2 { root: PathBuf },
}

impl MemAcct {
    fn find(cgroup2: &Path, pid: u32) -> Option<Self> {
        let name = format!("sbx-bench-{pid}");
        if let Some(m) = find_mount(|t, opts| t == "cgroup" && opts.split(',').any(|o| o == "memory")) {
            if m.join("memory.kmem.usage_in_bytes").exists() {
                return Some(Self::V1 { root: m.join(name) });
            }
        }
        let delegated = fs::read_to_string(cgroup2.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"));
        delegated.then(|| Self::V2 { root: cgroup2.join(name).join("memcg") })
    }

    fn describe(&self) -> String {
        match self {
            Self::V1 { .. } => {
                "memory cgroup v1 charge (memory.kmem.usage_in_bytes of the attaching process's memcg)".into()
            }
            Self::V2 { .. } => "memory cgroup v2 charge (memory.stat `kernel` of the attaching process's memcg)".into(),
        }
    }

    fn create_root(&self) -> Result<()> {
        match self {
            Self::V1 { root } => {
                fs::create_dir(root).with_context(|| format!("creating memory cgroup {}", root.display()))
            }
            Self::V2 { root } => {
                let parent = root.parent().expect("below our cgroup");
                fs::write(parent.join("cgroup.subtree_control"), "+memory")
                    .with_context(|| format!("enabling the memory controller in {}", parent.display()))?;
                fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
                fs::write(root.join("cgroup.subtree_control"), "+memory")
                    .with_context(|| format!("enabling the memory controller in {}", root.display()))
            }
        }
    }

    /// A fresh memory cgroup for one measurement.
    fn child(&self, name: &str) -> Result<PathBuf> {
        let (Self::V1 { root } | Self::V2 { root }) = self;
        let p = root.join(name);
        fs::create_dir(&p).with_context(|| format!("creating memory cgroup {}", p.display()))?;
        Ok(p)
    }

    /// Removes the per-measurement memory cgroups made so far.
    fn remove_children(&self) {
        let (Self::V1 { root } | Self::V2 { root }) = self;
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_retry(&e.path());
            }
        }
    }

    /// Kernel memory charged to `cg`, in bytes.
    fn kernel_bytes(&self, cg: &Path) -> Result<u64> {
        match self {
            Self::V1 { .. } => {
                let p = cg.join("memory.kmem.usage_in_bytes");
                let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                s.trim().parse().with_context(|| format!("parsing {}", p.display()))
            }
            Self::V2 { .. } => {
                let p = cg.join("memory.stat");
                let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                let field =
                    |k: &str| s.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok());
                Ok(field("kernel").unwrap_or_else(|| {
                    ["slab", "percpu", "kernel_stack", "pagetables", "vmalloc"].iter().filter_map(|k| field(k)).sum()
                }))
            }
        }
    }
}

/// `Slab + VmallocUsed + Percpu` from /proc/meminfo, in bytes.
fn meminfo_kernel() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            ["Slab", "VmallocUsed", "Percpu"]
                .contains(&k)
                .then(|| v.split_whitespace().next()?.parse::<u64>().ok())
                .flatten()
        })
        .sum::<u64>()
        * 1024
}

/// Set by SIGINT/SIGTERM/SIGHUP; every spawn checks it, so the main thread
/// unwinds to [`Guard`], which tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What teardown needs, set once.
struct Teardown {
    sbx: PathBuf,
    root: PathBuf,
    state_dir: PathBuf,
    work: PathBuf,
    bpffs: PathBuf,
    mem_root: Option<PathBuf>,
    /// The value of `kernel.bpf_stats_enabled` to restore, if we changed it.
    bpf_stats: Mutex<Option<String>>,
    done: AtomicBool,
}

static TEARDOWN: OnceLock<Teardown> = OnceLock::new();

fn install_teardown(ctx: &Ctx) {
    let mem_root = ctx.mem.as_ref().map(|m| match m {
        MemAcct::V1 { root } | MemAcct::V2 { root } => root.clone(),
    });
    let _ = TEARDOWN.set(Teardown {
        sbx: ctx.sbx.clone(),
        root: ctx.root.clone(),
        state_dir: ctx.state_dir.clone(),
        work: ctx.work.clone(),
        bpffs: ctx.bpffs.clone(),
        mem_root,
        bpf_stats: Mutex::new(None),
        done: AtomicBool::new(false),
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Tears everything down when dropped: on success, on error, on panic.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = TEARDOWN.get() {
            t.run();
        }
    }
}

impl Teardown {
    fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(v) = self.bpf_stats.lock().map_or(None, |mut g| g.take()) {
            let _ = fs::write(BPF_STATS, v);
        }
        let mut dirs = Vec::new();
        cgroup_dirs(&self.root, &mut dirs);
        // Children before parents.
        dirs.reverse();
        for d in &dirs {
            let Ok(meta) = fs::metadata(d) else { continue };
            if self.bpffs.join("sbx").join(meta.ino().to_string()).exists() {
                let ok = Command::new(&self.sbx)
                    .args(["detach", "--cgroup"])
                    .arg(d)
                    .env("SBX_STATE_DIR", &self.state_dir)
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    eprintln!("bench: warning: could not detach sbx from {}", d.display());
                }
            }
        }
        for d in &dirs {
            kill_members(d);
        }
        for d in &dirs {
            rmdir_retry(d);
        }
        if let Some(m) = &self.mem_root {
            let mut mdirs = Vec::new();
            cgroup_dirs(m, &mut mdirs);
            mdirs.reverse();
            for d in &mdirs {
                rmdir_retry(d);
            }
        }
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// `dir` and every directory below it, parents first.
fn cgroup_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_dirs(&e.path(), out);
            }
        }
    }
}

/// Kills, by pid, the processes in one of our cgroups (only workers we
/// started can be there) and waits for it to empty.
fn kill_members(cg: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid from our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes an empty cgroup, retrying while the kernel still frees it.
fn rmdir_retry(dir: &Path) {
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("bench: warning: removing {}: {e}", dir.display());
                return;
            }
        }
    }
    eprintln!("bench: warning: {} stayed busy; it was left in place", dir.display());
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

// ---------------------------------------------------------------------------
// Spawning.

/// Opens a `cgroup.procs` for the child to write `0` to.
fn procs_fd(cg: &Path) -> Result<fs::File> {
    let p = cg.join("cgroup.procs");
    fs::OpenOptions::new().write(true).open(&p).with_context(|| format!("opening {}", p.display()))
}

/// Makes the child join the cgroups of `procs` (writing `0` to each
/// `cgroup.procs`) between fork and exec, then place `fds` (source, target).
///
/// With nothing to do it registers nothing: a `pre_exec` hook makes std
/// spawn with fork(2) instead of `posix_spawn`, and fork copies the page
/// tables of this process, which would add to the timed commands.
fn in_cgroups(cmd: &mut Command, procs: Vec<RawFd>, fds: Vec<(RawFd, RawFd)>) {
    if procs.is_empty() && fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on values it owns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(src, dst) in &fds {
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs the child at nice -20: on a shared machine the timing loop then
/// loses its CPU to other work far less often. It only runs for a second
/// or so at a time.
fn high_priority(cmd: &mut Command) {
    // SAFETY: setpriority(2) between fork and exec on the child itself.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            Ok(())
        });
    }
}

/// Runs a command to completion; returns its wall time and stdout. With a
/// `limit`, a watchdog kills the child (by its pid) when it runs longer.
/// The wait itself is a plain blocking wait, so the timing is not
/// quantised by polling.
fn timed_output(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<(Duration, String)> {
    cmd.stdout(Stdio::piped());
    timed(cmd, what, limit)
}

/// As [`timed_output`], with stdout discarded: `sbx-user` prints policy
/// summaries nobody here reads.
fn timed_quiet(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<Duration> {
    cmd.stdout(Stdio::null());
    Ok(timed(cmd, what, limit)?.0)
}

fn timed(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<(Duration, String)> {
    check_interrupted()?;
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("running {what}"))?;
    let pid = i32::try_from(child.id()).expect("pids fit i32");
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = limit.map(|l| {
        std::thread::spawn(move || {
            let fired = wait.recv_timeout(l) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
            if fired {
                // SAFETY: kill(2) on our own child, not yet reaped (the
                // main thread reaps it only after this thread is told).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            fired
        })
    });
    let out = child.wait_with_output();
    let d = start.elapsed();
    let _ = done.send(());
    let killed = watchdog.is_some_and(|w| w.join().unwrap_or(false));
    let out = out.with_context(|| format!("running {what}"))?;
    if killed {
        bail!("{what} did not finish within {} s and was killed", limit.unwrap_or_default().as_secs());
    }
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((d, String::from_utf8_lossy(&out.stdout).into_owned()))
}

impl Ctx {
    fn sbx_cmd(&self) -> Command {
        let mut c = Command::new(&self.sbx);
        c.env("SBX_STATE_DIR", &self.state_dir);
        c
    }

    /// `sbx-user attach`, optionally run inside memory cgroup `memcg`.
    fn attach(&self, cg: &Path, policy: &[String], memcg: Option<&Path>, limit: Option<Duration>) -> Result<Duration> {
        let mut cmd = self.sbx_cmd();
        cmd.args(["attach", "--cgroup"]).arg(cg).args(policy);
        let file = memcg.map(procs_fd).transpose()?;
        in_cgroups(&mut cmd, file.iter().map(AsRawFd::as_raw_fd).collect(), Vec::new());
        let d = timed_quiet(&mut cmd, &format!("sbx-user attach --cgroup {}", cg.display()), limit)?;
        Ok(d)
    }

    fn detach(&self, cg: &Path) -> Result<Duration> {
        let mut cmd = self.sbx_cmd();
        cmd.args(["detach", "--cgroup"]).arg(cg);
        timed_quiet(&mut cmd, &format!("sbx-user detach --cgroup {}", cg.display()), None)
    }

    /// The trie sizes sbx recorded for the sandbox on `cg`.
    ///
    /// The record holds the whole policy (hundreds of MB for a million
    /// rules), so it is searched as text: parsing it into a `Value` would
    /// leave this process with gigabytes of heap, and every later fork
    /// (each spawn with a `pre_exec` hook) would copy those page tables
    /// inside a timed measurement.
    fn entries(&self, cg: &Path) -> Option<u64> {
        let id = fs::metadata(cg).ok()?.ino();
        let text = fs::read_to_string(self.state_dir.join(format!("{id}.json"))).ok()?;
        let (_, after) = text.split_once("\"dest_entries\"")?;
        let digits: String =
            after.trim_start_matches([':', ' ', '\n']).chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    fn mkcg(&self, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        Ok(p)
    }
}

// ---------------------------------------------------------------------------
// bpftool.

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing bpftool {} output", args.join(" ")))
}

/// Programs attached anywhere below `root`: `(id, name)`.
fn progs_under(root: &Path) -> Result<Vec<(u64, String)>> {
    let tree = bpftool_json(&["cgroup", "tree", &root.to_string_lossy()])?;
    let mut out = Vec::new();
    for cg in tree.as_array().into_iter().flatten() {
        for p in cg["programs"].as_array().into_iter().flatten() {
            if let Some(id) = p["id"].as_u64() {
                out.push((id, p["name"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    Ok(out)
}

/// `bytes_memlock` of the programs attached below `root` and of the maps
/// they use: `(programs, maps)`.
fn memlock_under(root: &Path) -> Result<(u64, u64)> {
    let ids: HashSet<u64> = progs_under(root)?.into_iter().map(|(id, _)| id).collect();
    let progs = bpftool_json(&["prog", "show"])?;
    let mut prog_bytes = 0;
    let mut map_ids = HashSet::new();
    for p in progs.as_array().into_iter().flatten() {
        if p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            prog_bytes += p["bytes_memlock"].as_u64().unwrap_or(0);
            map_ids.extend(p["map_ids"].as_array().into_iter().flatten().filter_map(Value::as_u64));
        }
    }
    let maps = bpftool_json(&["map", "show"])?;
    let map_bytes = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| map_ids.contains(&id)))
        .filter_map(|m| m["bytes_memlock"].as_u64())
        .sum();
    Ok((prog_bytes, map_bytes))
}

/// `(run_time_ns, run_cnt)` of each program, by id (needs
/// `kernel.bpf_stats_enabled=1`).
fn prog_stats() -> Result<BTreeMap<u64, (u64, u64)>> {
    let progs = bpftool_json(&["prog", "show"])?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((p["id"].as_u64()?, (p["run_time_ns"].as_u64().unwrap_or(0), p["run_cnt"].as_u64().unwrap_or(0))))
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Generated policies.

/// A small deterministic generator (`SplitMix64`), so every run loads the
/// same rules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `n` distinct CIDR rules: half IPv4 (/8 to /32, never 0/8, 127/8 or
/// 224/3), half IPv6 in `2000::/3` (/16 to /64, never 6to4's `2002::/16`);
/// half allow, half deny; 60% with ports (443; 80,443; 5432; 8000-8100;
/// udp 53; tcp 22). Returns `(allow, deny)`.
fn gen_rules(n: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    let mut rng = Rng(seed);
    let mut distinct = HashSet::with_capacity(n);
    let (mut allow, mut deny) = (Vec::with_capacity(n / 2 + 1), Vec::with_capacity(n / 2 + 1));
    while distinct.len() < n {
        let v4 = rng.next() & 1 == 0;
        let (key, target) = if v4 {
            let len = u32::try_from(rng.range(8, 32)).expect("small");
            let first = loop {
                let o = rng.range(1, 223);
                if o != 127 {
                    break o;
                }
            };
            let raw = (u32::try_from(first).expect("octet") << 24)
                | (u32::try_from(rng.next() & 0xff_ffff).expect("24 bits"));
            let addr = raw & (u32::MAX << (32 - len));
            ((4u8, u128::from(addr), len), format!("{}/{len}", Ipv4Addr::from(addr)))
        } else {
            let len = u32::try_from(rng.range(16, 64)).expect("small");
            let top = loop {
                let t = rng.range(0x2000, 0x3fff);
                if t != 0x2002 {
                    break t;
                }
            };
            let raw = (u128::from(top) << 112) | (u128::from(rng.next()) << 48);
            let addr = raw & (u128::MAX << (128 - len));
            ((6u8, addr, len), format!("{}/{len}", Ipv6Addr::from(addr)))
        };
        if !distinct.insert(key) {
            continue;
        }
        let (scheme, ports) = match rng.range(0, 9) {
            0..=3 => ("", None),
            4 => ("", Some("443")),
            5 => ("", Some("80,443")),
            6 => ("", Some("5432")),
            7 => ("", Some("8000-8100")),
            8 => ("udp://", Some("53")),
            _ => ("tcp://", Some("22")),
        };
        let rule = match (ports, v4) {
            (None, _) => format!("{scheme}{target}"),
            (Some(p), true) => format!("{scheme}{target}:{p}"),
            (Some(p), false) => format!("{scheme}[{target}]:{p}"),
        };
        if rng.next() & 1 == 0 { &mut allow } else { &mut deny }.push(rule);
    }
    (allow, deny)
}

/// Policy files by size, written once.
struct Policies {
    files: BTreeMap<usize, PathBuf>,
}

impl Policies {
    fn new(dir: &Path, sizes: &[usize]) -> Result<Self> {
        let mut files = BTreeMap::new();
        for &n in sizes {
            let (allow, deny) = gen_rules(n, 0x5b_0000 + n as u64);
            let mut text = String::with_capacity(n * 32);
            text.push_str("# Generated by `cargo xtask bench`.\n[network]\ndefault = \"deny\"\nallow = [\n");
            for r in &allow {
                let _ = writeln!(text, "  \"{r}\",");
            }
            text.push_str("]\ndeny = [\n");
            for r in &deny {
                let _ = writeln!(text, "  \"{r}\",");
            }
            text.push_str("]\n");
            let path = dir.join(format!("rules-{n}.toml"));
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            files.insert(n, path);
        }
        Ok(Self { files })
    }

    /// `sbx-user` policy flags for `n` generated rules.
    fn flags(&self, n: usize) -> Vec<String> {
        let mut f = vec![
            "--policy".to_owned(),
            self.files[&n].to_string_lossy().into_owned(),
            "--loopback".to_owned(),
            ALLOWED_LOOPBACK.to_owned(),
        ];
        // The trie needs one entry per distinct prefix plus sbx's own few;
        // NO_PREALLOC means the capacity costs nothing until used.
        let need = n + 1024;
        if need > 131_072 {
            f.push("--max-rules".to_owned());
            f.push(need.next_power_of_two().min(1 << 21).to_string());
        }
        f
    }
}

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Statistics and formatting.

#[expect(clippy::cast_precision_loss, reason = "byte counts and durations are far below 2^52")]
fn f(x: u64) -> f64 {
    x as f64
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

/// Minimum and median of samples.
#[derive(Clone, Copy, Debug)]
struct Stat {
    min: f64,
    median: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Self> {
        (!v.is_empty()).then(|| Self { min: min(v), median: median(v) })
    }

    fn ratio(self, base: Self) -> Self {
        Self { min: self.min / base.min, median: self.median / base.median }
    }

    fn json(self) -> Value {
        json!({ "min": self.min, "median": self.median })
    }
}

/// Thousands separators for readability.
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "display of a positive measurement")]
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let groups: Vec<&str> =
        digits.as_bytes().rchunks(3).rev().map(|g| std::str::from_utf8(g).expect("ASCII digits")).collect();
    groups.join(",")
}

fn mib(bytes: f64) -> String {
    if bytes.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn ms(d: f64) -> String {
    format!("{d:.1} ms")
}

fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// 1. Per-call cost and 2. policy scale.

/// Per-call operations, in table order.
const OPS: [(&str, &str); 5] = [
    ("tcp_cycle", "TCP connect+accept+close"),
    ("refused", "connect to a closed port (ECONNREFUSED)"),
    ("udp_sendto", "UDP sendto"),
    ("denied_connect", "denied connect"),
    ("denied_sendto", "denied sendto"),
];

#[derive(Clone, Debug)]
enum Kind {
    None,
    Landlock,
    Sbx { flags: Vec<String>, rules: Option<usize>, audit: bool },
}

#[derive(Clone, Debug)]
struct Config {
    name: String,
    label: String,
    kind: Kind,
    cg: PathBuf,
}

impl Config {
    /// The outcome every call of `op` must have in this configuration.
    fn expected(&self, op: &str) -> &'static str {
        match (op, &self.kind) {
            ("refused", _) | ("denied_connect", Kind::None | Kind::Sbx { audit: true, .. }) => "ECONNREFUSED",
            ("denied_connect", Kind::Landlock) => "EACCES",
            ("denied_connect" | "denied_sendto", Kind::Sbx { audit: false, .. }) => "EPERM",
            _ => "ok",
        }
    }

    fn is_sbx(&self) -> bool {
        matches!(self.kind, Kind::Sbx { .. })
    }
}

/// The loopback sockets the per-call benchmarks use, held by this process
/// for the whole section so their ports stay what the policies expect.
struct Net {
    listener: OwnedFd,
    udp: OwnedFd,
    udp_denied: OwnedFd,
    _refused: OwnedFd,
    _denied: OwnedFd,
    tcp_port: u16,
    refused_port: u16,
    denied_port: u16,
    udp_port: u16,
    denied_udp_port: u16,
}

/// A socket bound to `127.0.0.1:port` (0: the kernel picks), moved to a
/// descriptor of at least 100 so it cannot collide with the numbers the
/// worker expects (3, 4, 5) when the child dup2s them there.
fn bound(ty: libc::c_int, port: u16) -> io::Result<(OwnedFd, u16)> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut sa = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("fits"),
        // Network byte order.
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("fits");
    // SAFETY: `sa` is a valid sockaddr_in of length `len`.
    if unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&sa).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getsockname writes at most `len` bytes into `sa`.
    if unsafe { libc::getsockname(fd.as_raw_fd(), std::ptr::from_mut(&mut sa).cast(), &raw mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh descriptor we own.
    Ok((unsafe { OwnedFd::from_raw_fd(high) }, u16::from_be(sa.sin_port)))
}

/// Binds the first free port in 7000..=9999 (inside the allowed loopback
/// range).
fn bound_allowed(ty: libc::c_int) -> Result<(OwnedFd, u16)> {
    for port in 7000..=9999 {
        if let Ok(b) = bound(ty, port) {
            return Ok(b);
        }
    }
    bail!("no free loopback port in 7000-9999")
}

/// Binds a port above the allowed range.
fn bound_denied(ty: libc::c_int) -> Result<(OwnedFd, u16)> {
    let (fd, port) = bound(ty, 0).context("binding an ephemeral loopback port")?;
    if port > 9999 {
        return Ok((fd, port));
    }
    for port in 40_000..=50_000 {
        if let Ok(b) = bound(ty, port) {
            return Ok(b);
        }
    }
    bail!("no free loopback port above 9999")
}

impl Net {
    fn new() -> Result<Self> {
        let (listener, tcp_port) = bound_allowed(libc::SOCK_STREAM)?;
        // SAFETY: listen(2) on a bound TCP socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), 1024) } != 0 {
            return Err(io::Error::last_os_error()).context("listen on the benchmark port");
        }
        let (refused, refused_port) = bound_allowed(libc::SOCK_STREAM)?;
        let (udp, udp_port) = bound_allowed(libc::SOCK_DGRAM)?;
        let (denied, denied_port) = bound_denied(libc::SOCK_STREAM)?;
        let (udp_denied, denied_udp_port) = bound_denied(libc::SOCK_DGRAM)?;
        Ok(Self {
            listener,
            udp,
            udp_denied,
            _refused: refused,
            _denied: denied,
            tcp_port,
            refused_port,
            denied_port,
            udp_port,
            denied_udp_port,
        })
    }
}

/// One worker run in `cfg`'s cgroup: ns per call for each of `ops` (all
/// when empty), after checking every call had the expected outcome.
fn percall_once(
    ctx: &Ctx,
    net: &Net,
    cfg: &Config,
    iters: (u32, u32),
    ops: &[&str],
) -> Result<BTreeMap<String, (f64, f64)>> {
    let mut cmd = Command::new(&ctx.worker);
    cmd.arg("percall")
        .args(["--tcp-port", &net.tcp_port.to_string()])
        .args(["--refused-port", &net.refused_port.to_string()])
        .args(["--denied-port", &net.denied_port.to_string()])
        .args(["--udp-port", &net.udp_port.to_string()])
        .args(["--denied-udp-port", &net.denied_udp_port.to_string()])
        .args(["--tcp-iters", &iters.0.to_string()])
        .args(["--fast-iters", &iters.1.to_string()]);
    if !ops.is_empty() {
        cmd.args(["--ops", &ops.join(",")]);
    }
    if let Some(cpu) = ctx.cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    if matches!(cfg.kind, Kind::Landlock) {
        // The listener and the closed port (so the ECONNREFUSED row is
        // measurable); the denied port is not in the ruleset.
        cmd.args(["--landlock-connect", &format!("{},{}", net.tcp_port, net.refused_port)]);
    }
    let procs = procs_fd(&cfg.cg)?;
    in_cgroups(
        &mut cmd,
        vec![procs.as_raw_fd()],
        vec![(net.listener.as_raw_fd(), 3), (net.udp.as_raw_fd(), 4), (net.udp_denied.as_raw_fd(), 5)],
    );
    high_priority(&mut cmd);
    let (_, stdout) = timed_output(&mut cmd, &format!("the worker in {}", cfg.name), None)?;
    drop(procs);
    let v: Value = serde_json::from_str(stdout.trim()).context("parsing the worker's output")?;
    let mut out = BTreeMap::new();
    for (op, r) in v["ops"].as_object().into_iter().flatten() {
        let want = cfg.expected(op);
        let outcomes = r["outcomes"].as_object().cloned().unwrap_or_default();
        if outcomes.len() != 1 || !outcomes.contains_key(want) {
            bail!(
                "{}: {op}: expected every call to give {want}, got {}; the policy is not doing what the benchmark assumes",
                cfg.name,
                Value::Object(outcomes)
            );
        }
        out.insert(
            op.clone(),
            (r["ns_per_op"].as_f64().unwrap_or(f64::NAN), r["cpu_ns_per_op"].as_f64().unwrap_or(f64::NAN)),
        );
    }
    Ok(out)
}

/// BPF run time per call of one operation in one configuration.
#[derive(Clone, Debug, Default)]
struct BpfCost {
    /// Sum over every sbx program of the cgroup, ns per call.
    total_ns: f64,
    /// Program name -> (ns per call, runs per call).
    progs: BTreeMap<String, (f64, f64)>,
}

/// Results of the per-call section.
struct Percall {
    configs: Vec<Config>,
    /// config name -> op -> samples (ns/op), one per round.
    samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// The same, in on-CPU time of the worker thread.
    cpu: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// config name -> op -> BPF cost (`bpf_stats` pass).
    bpf: BTreeMap<String, BTreeMap<String, BpfCost>>,
    /// Events the reader of the audit configuration printed.
    audit_events: u64,
    ports: Value,
}

impl Percall {
    fn stat(&self, cfg: &str, op: &str) -> Option<Stat> {
        Stat::of(self.samples.get(cfg)?.get(op)?)
    }

    fn ratio(&self, cfg: &str, base: &str, op: &str) -> Option<Stat> {
        Some(self.stat(cfg, op)?.ratio(self.stat(base, op)?))
    }

    fn cpu_stat(&self, cfg: &str, op: &str) -> Option<Stat> {
        Stat::of(self.cpu.get(cfg)?.get(op)?)
    }

    fn cpu_ratio(&self, cfg: &str, base: &str, op: &str) -> Option<Stat> {
        Some(self.cpu_stat(cfg, op)?.ratio(self.cpu_stat(base, op)?))
    }

    /// `bpf_stats` ns per call of one program for `op` in `cfg`, as text.
    fn prog_ns(&self, cfg: &str, op: &str, prog: &str) -> String {
        opt_ns(self.bpf.get(cfg).and_then(|b| b.get(op)).and_then(|c| c.progs.get(prog)).map(|p| p.0))
    }

    fn bpf_ns(&self, cfg: &str, op: &str) -> Option<f64> {
        Some(self.bpf.get(cfg)?.get(op)?.total_ns)
    }

    fn json(&self) -> Value {
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

/// Load time and kernel memory of one policy size.
struct ScaleRow {
    rules: usize,
    /// Why this size was not loaded.
    skipped: Option<String>,
    entries: Option<u64>,
    attach_ms: Vec<f64>,
    check_ms: Vec<f64>,
    detach_ms: Vec<f64>,
    memcg_bytes: Vec<f64>,
    memlock_progs: Vec<f64>,
    memlock_maps: Vec<f64>,
    meminfo_bytes: Vec<f64>,
}

impl ScaleRow {
    fn new(rules: usize) -> Self {
        Self {
            rules,
            skipped: None,
            entries: None,
            attach_ms: vec![],
            check_ms: vec![],
            detach_ms: vec![],
            memcg_bytes: vec![],
            memlock_progs: vec![],
            memlock_maps: vec![],
            meminfo_bytes: vec![],
        }
    }

    fn json(&self) -> Value {
        let s = |v: &Vec<f64>| json!({ "samples": v, "stat": Stat::of(v).map(Stat::json) });
        json!({
            "rules": self.rules,
            "skipped": self.skipped,
            "dest_entries": self.entries,
            "attach_ms": s(&self.attach_ms),
            "check_ms": s(&self.check_ms),
            "detach_ms": s(&self.detach_ms),
            "memcg_kernel_bytes": s(&self.memcg_bytes),
            "bpftool_memlock_prog_bytes": s(&self.memlock_progs),
            "bpftool_memlock_map_bytes": s(&self.memlock_maps),
            "meminfo_delta_bytes": s(&self.meminfo_bytes),
        })
    }

    /// Attaches `flags` to `cg`, measuring time and kernel memory.
    fn load(&mut self, ctx: &Ctx, cg: &Path, flags: &[String], tag: &str) -> Result<()> {
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
        if ctx.bpftool {
            let (p, m) = memlock_under(cg)?;
            self.memlock_progs.push(f(p));
            self.memlock_maps.push(f(m));
        }
        self.entries = ctx.entries(cg).or(self.entries);
        Ok(())
    }
}

/// Longest a load of more than 100,000 rules may take before it is
/// abandoned (the sizes up to 100,000 are the issue's targets and always
/// run to completion).
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace supports 1.85"
)]
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// Loads slower than this get one round only.
const SLOW_LOAD: Duration = Duration::from_secs(10);

/// Sections 1 and 2: they share the sandboxes, because loading a large
/// policy is the expensive part of both.
#[expect(clippy::too_many_lines, reason = "one sequence of phases, each short")]
fn policy_sections(
    ctx: &Ctx,
    plan: &Plan,
    policies: &Policies,
    want_percall: bool,
    want_scale: bool,
) -> Result<(Option<Percall>, Option<Vec<ScaleRow>>)> {
    // Parse and compile alone (`sbx-user check`), smallest first; a size
    // above 100,000 whose predicted time exceeds the limit is skipped.
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
        let mut check = ctx.sbx_cmd();
        check.arg("check").args(policies.flags(n));
        let limit = (n > 100_000).then_some(LOAD_LIMIT);
        match timed_quiet(&mut check, "sbx-user check", limit) {
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

    let net = if want_percall { Some(Net::new()?) } else { None };
    if let Some(net) = &net {
        eprintln!(
            "bench: percall: listener 127.0.0.1:{}, closed {}, udp {}, denied tcp {} udp {}",
            net.tcp_port, net.refused_port, net.udp_port, net.denied_port, net.denied_udp_port
        );
    }
    let small: Vec<String> = SMALL_POLICY.iter().map(|s| (*s).to_owned()).collect();
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
            let k = configs.len();
            for i in 0..k {
                let c = &configs[(i + round as usize) % k];
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
            "allowed_loopback": ALLOWED_LOOPBACK,
        });
        percall = Some(Percall { configs: configs.clone(), samples, cpu, bpf, audit_events, ports });
    }

    // More load rounds on fresh cgroups, sizes interleaved.
    if want_scale {
        for round in 1..plan.load_rounds {
            eprintln!("bench: scale: round {}/{}", round + 1, plan.load_rounds);
            let k = rows.len();
            for i in 0..k {
                let row = &mut rows[(i + round as usize) % k];
                let slow = row.attach_ms.first().is_some_and(|&t| t > dur_ms(SLOW_LOAD));
                if row.skipped.is_some() || slow {
                    continue;
                }
                let n = row.rules;
                let mut check = ctx.sbx_cmd();
                check.arg("check").args(policies.flags(n));
                row.check_ms.push(dur_ms(timed_quiet(&mut check, "sbx-user check", None)?));
                let cg = ctx.mkcg(&format!("scale-{n}-{round}"))?;
                row.load(ctx, &cg, &policies.flags(n), &format!("load-{n}-{round}"))?;
                row.detach_ms.push(dur_ms(ctx.detach(&cg)?));
                rmdir_retry(&cg);
            }
        }
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

/// The exponent `e` of `t ~ n^e` between the last two measured sizes, at
/// least 1: times at the small sizes are mostly process start-up.
fn growth_exponent(measured: &[(usize, f64)]) -> f64 {
    match measured {
        [.., (n1, t1), (n2, t2)] if *t1 > 0.0 && n2 > n1 => {
            #[expect(clippy::cast_precision_loss, reason = "rule counts are far below 2^52")]
            let e = (t2 / t1).ln() / (*n2 as f64 / *n1 as f64).ln();
            e.max(1.0)
        }
        _ => 1.0,
    }
}

/// One more worker pass per sbx configuration and operation with
/// `kernel.bpf_stats_enabled=1`: the programs' own run time per call.
/// Separate from the timed rounds because the statistics add two clock
/// reads to every program run.
fn profile(
    ctx: &Ctx,
    net: &Net,
    configs: &[Config],
    plan: &Plan,
) -> Result<BTreeMap<String, BTreeMap<String, BpfCost>>> {
    let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
    if let Some(t) = TEARDOWN.get() {
        if let Ok(mut g) = t.bpf_stats.lock() {
            g.get_or_insert_with(|| old.trim().to_owned());
        }
    }
    fs::write(BPF_STATS, "1").context("setting kernel.bpf_stats_enabled=1")?;
    // Per (configuration, operation): one cost per round.
    let mut acc: BTreeMap<(String, String), Vec<BpfCost>> = BTreeMap::new();
    let result = (|| -> Result<()> {
        let sbx: Vec<&Config> = configs.iter().filter(|c| c.is_sbx()).collect();
        let mut progs: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for c in &sbx {
            progs.insert(c.name.clone(), progs_under(&c.cg)?.into_iter().collect());
        }
        for round in 0..plan.profile_rounds {
            eprintln!("bench: percall: bpf_stats round {}/{}", round + 1, plan.profile_rounds);
            for i in 0..sbx.len() {
                let c = sbx[(i + round as usize) % sbx.len()];
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
                    acc.entry((c.name.clone(), op.to_owned())).or_default().push(cost);
                }
            }
        }
        Ok(())
    })();
    // Medians over the rounds, per program and in total.
    let mut out: BTreeMap<String, BTreeMap<String, BpfCost>> = BTreeMap::new();
    for ((cfg, op), costs) in acc {
        let totals: Vec<f64> = costs.iter().map(|c| c.total_ns).collect();
        let mut m = BpfCost { total_ns: median(&totals), progs: BTreeMap::new() };
        let names: HashSet<&String> = costs.iter().flat_map(|c| c.progs.keys()).collect();
        for name in names {
            let ns: Vec<f64> = costs.iter().filter_map(|c| c.progs.get(name)).map(|p| p.0).collect();
            let runs: Vec<f64> = costs.iter().filter_map(|c| c.progs.get(name)).map(|p| p.1).collect();
            m.progs.insert(name.clone(), (median(&ns), median(&runs)));
        }
        out.entry(cfg).or_default().insert(op, m);
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

/// A running `sbx-user events --follow --json` for one sandbox, its lines
/// stamped with `CLOCK_MONOTONIC` as they arrive. It runs in a cgroup of
/// ours, so teardown finds it even if this process dies first.
struct EventFollower {
    child: std::process::Child,
    lines: std::sync::Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventFollower {
    fn start(ctx: &Ctx, cg: &Path) -> Result<Self> {
        check_interrupted()?;
        let home = ctx.mkcg("readers")?;
        let mut cmd = ctx.sbx_cmd();
        cmd.args(["events", "--follow", "--json", "--cgroup"])
            .arg(cg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let procs = procs_fd(&home)?;
        in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
        let mut child = cmd.spawn().context("starting sbx-user events --follow")?;
        drop(procs);
        let stdout = child.stdout.take().expect("piped");
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let thread = std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in io::BufReader::new(stdout).lines() {
                if line.is_err() {
                    return;
                }
                let t = monotonic_ns();
                if let Ok(mut v) = sink.lock() {
                    v.push(t);
                }
            }
        });
        // Give it time to open the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, lines, thread: Some(thread) })
    }

    fn count(&self) -> usize {
        self.lines.lock().map_or(0, |v| v.len())
    }

    fn arrivals(&self) -> Vec<u64> {
        self.lines.lock().map_or_else(|_| Vec::new(), |v| v.clone())
    }

    /// Waits until no line has arrived for `quiet`.
    fn settle(&self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        let mut last = self.count();
        let mut since = Instant::now();
        while start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.count();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Stops the reader (by its pid) and returns the arrival stamps.
    fn stop(mut self) -> Vec<u64> {
        self.kill();
        self.arrivals()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `CLOCK_MONOTONIC` in ns, as the worker stamps its calls.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// 5. Events.

/// Deny events: latency from a denied call to the line a follower prints,
/// and what a flood of denials delivers.
struct Events {
    latency_ms: Vec<f64>,
    paced: u32,
    flood_calls: u64,
    flood_ns_per_call: f64,
    flood_s: f64,
    flood_delivered: u64,
    flood_dropped: Option<u64>,
}

impl Events {
    fn json(&self) -> Value {
        json!({
            "latency_ms": { "samples": self.latency_ms, "stat": Stat::of(&self.latency_ms).map(Stat::json), "max": self.latency_ms.iter().copied().fold(0.0, f64::max) },
            "paced_denials": self.paced,
            "flood": {
                "denied_calls": self.flood_calls,
                "ns_per_call": self.flood_ns_per_call,
                "seconds": self.flood_s,
                "events_delivered": self.flood_delivered,
                "events_dropped": self.flood_dropped,
            },
        })
    }
}

/// The first `events_dropped` field anywhere in `v`.
fn find_events_dropped(v: &Value) -> Option<u64> {
    match v {
        Value::Object(m) => {
            m.get("events_dropped").and_then(Value::as_u64).or_else(|| m.values().find_map(find_events_dropped))
        }
        Value::Array(a) => a.iter().find_map(find_events_dropped),
        _ => None,
    }
}

/// `events_dropped` from `sbx-user status --json` for `cg`.
fn events_dropped(ctx: &Ctx, cg: &Path) -> Option<u64> {
    let mut cmd = ctx.sbx_cmd();
    cmd.args(["status", "--json", "--cgroup"]).arg(cg);
    let (_, out) = timed_output(&mut cmd, "sbx-user status", None).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    find_events_dropped(&v)
}

fn events(ctx: &Ctx, plan: &Plan) -> Result<Events> {
    let cg = ctx.mkcg("events")?;
    let small: Vec<String> = SMALL_POLICY.iter().map(|s| (*s).to_owned()).collect();
    ctx.attach(&cg, &small, None, None)?;
    let (_denied, port) = bound_denied(libc::SOCK_STREAM)?;
    let reader = EventFollower::start(ctx, &cg)?;

    // Latency: denied connects 20 ms apart, far below the rate limit.
    let paced = if plan.rounds >= 7 { 100 } else { 20 };
    let mut cmd = Command::new(&ctx.worker);
    cmd.args(["paced", "--port", &port.to_string(), "--count", &paced.to_string(), "--interval-ms", "20"]);
    let procs = procs_fd(&cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (_, out) = timed_output(&mut cmd, "the paced worker", None)?;
    drop(procs);
    let v: Value = serde_json::from_str(out.trim()).context("parsing the paced worker's output")?;
    let sent: Vec<u64> = v["t_ns"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    reader.settle(Duration::from_millis(500), Duration::from_secs(5));
    let arrivals = reader.arrivals();
    if arrivals.len() != sent.len() {
        bail!(
            "{} denied connects gave {} events; expected one each (the rate limit is far above this pace)",
            sent.len(),
            arrivals.len()
        );
    }
    let latency_ms: Vec<f64> = sent.iter().zip(&arrivals).map(|(s, a)| f(a.saturating_sub(*s)) / 1e6).collect();

    // Flood: as many denied connects as the CPU allows.
    let before = reader.count();
    let dropped_before = events_dropped(ctx, &cg);
    let flood = plan.fast_iters * 4;
    let mut cmd = Command::new(&ctx.worker);
    cmd.args(["percall", "--ops", "denied_connect", "--tcp-port", "1", "--refused-port", "1", "--udp-port", "1"])
        .args(["--denied-udp-port", "1", "--tcp-iters", "0"])
        .args(["--denied-port", &port.to_string(), "--fast-iters", &flood.to_string()]);
    if let Some(cpu) = ctx.cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    let procs = procs_fd(&cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (took, out) = timed_output(&mut cmd, "the flood worker", None)?;
    drop(procs);
    let v: Value = serde_json::from_str(out.trim()).context("parsing the flood worker's output")?;
    let r = &v["ops"]["denied_connect"];
    if r["outcomes"].as_object().is_none_or(|o| o.len() != 1 || !o.contains_key("EPERM")) {
        bail!("flood: expected every connect to fail with EPERM, got {}", r["outcomes"]);
    }
    reader.settle(Duration::from_secs(1), Duration::from_secs(10));
    let delivered = (reader.count() - before) as u64;
    let dropped = events_dropped(ctx, &cg).zip(dropped_before).map(|(a, b)| a.saturating_sub(b));
    drop(reader);
    ctx.detach(&cg)?;
    rmdir_retry(&cg);
    Ok(Events {
        latency_ms,
        paced,
        flood_calls: u64::from(flood + flood / 10),
        flood_ns_per_call: r["ns_per_op"].as_f64().unwrap_or(f64::NAN),
        flood_s: took.as_secs_f64(),
        flood_delivered: delivered,
        flood_dropped: dropped,
    })
}

// ---------------------------------------------------------------------------
// 3. Lifecycle.

/// Wall times in ms.
struct Lifecycle {
    bin_true: Vec<f64>,
    run: Vec<f64>,
    attach: Vec<f64>,
    detach: Vec<f64>,
    /// One `attach` under strace, if strace is installed.
    trace: Option<AttachTrace>,
}

/// Where one `sbx-user attach` spends its time in `bpf(2)`, from
/// `strace -f -T -e trace=bpf` (which slows every traced call a little).
struct AttachTrace {
    wall_ms: f64,
    /// Command -> (calls, ms).
    by_cmd: BTreeMap<String, (u32, f64)>,
    /// `BPF_PROG_LOAD` (verification included) per program, ms.
    prog_load: Vec<(String, f64)>,
}

impl AttachTrace {
    fn json(&self) -> Value {
        json!({
            "wall_ms": self.wall_ms,
            "bpf_syscalls": self.by_cmd.iter().map(|(k, (n, ms))| (k.clone(), json!({ "calls": n, "ms": ms }))).collect::<serde_json::Map<_, _>>(),
            "prog_load_ms": self.prog_load.iter().map(|(k, ms)| (k.clone(), json!(ms))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Parses strace lines such as
    /// `123 bpf(BPF_PROG_LOAD, {..., prog_name="sbx_connect4", ...}, 148) = 12 <0.021320>`.
    fn parse(text: &str, wall_ms: f64) -> Self {
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
fn trace_attach(ctx: &Ctx, cg: &Path, policy: &[String]) -> Result<Option<AttachTrace>> {
    let has_strace = Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    if !has_strace {
        return Ok(None);
    }
    let log = ctx.work.join("attach.strace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-T", "-e", "trace=bpf", "-o"])
        .arg(&log)
        .arg(&ctx.sbx)
        .env("SBX_STATE_DIR", &ctx.state_dir)
        .args(["attach", "--cgroup"])
        .arg(cg)
        .args(policy);
    let took = timed_quiet(&mut cmd, "strace sbx-user attach", None)?;
    ctx.detach(cg)?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(Some(AttachTrace::parse(&text, dur_ms(took))))
}

impl Lifecycle {
    fn json(&self) -> Value {
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

fn lifecycle(ctx: &Ctx, plan: &Plan) -> Result<Lifecycle> {
    let truth = which_true()?;
    let parent = ctx.mkcg("run")?;
    let cg = ctx.mkcg("lifecycle")?;
    let small: Vec<String> = SMALL_POLICY.iter().map(|s| (*s).to_owned()).collect();
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
                    let mut c = ctx.sbx_cmd();
                    c.arg("run").arg("--cgroup-parent").arg(&parent).args(&small).arg("--").arg(&truth);
                    l.run.push(dur_ms(timed_quiet(&mut c, "sbx-user run -- /bin/true", None)?));
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

fn which_true() -> Result<PathBuf> {
    ["/bin/true", "/usr/bin/true"].iter().map(PathBuf::from).find(|p| p.exists()).context("no /bin/true")
}

// ---------------------------------------------------------------------------
// 4. Many sandboxes.

struct Many {
    n: u32,
    mkdir_ms: f64,
    attach_ms: Vec<f64>,
    detach_ms: Vec<f64>,
    memcg_bytes: Option<f64>,
    memlock: Option<(f64, f64)>,
    meminfo_bytes: f64,
    checked: u64,
    failures: Vec<Value>,
    check_ms: f64,
}

impl Many {
    fn json(&self) -> Value {
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

fn many(ctx: &Ctx, plan: &Plan) -> Result<Many> {
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
    let mut cmd = Command::new(&ctx.worker);
    cmd.arg("hop").arg("--list").arg(&list);
    let procs = procs_fd(&start_cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (hop_time, stdout) = timed_output(&mut cmd, "the enforcement check", None)?;
    drop(procs);
    let v: Value = serde_json::from_str(stdout.trim()).context("parsing the enforcement check")?;
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

// ---------------------------------------------------------------------------
// Report.

#[derive(Default)]
struct Report {
    percall: Option<Percall>,
    scale: Option<Vec<ScaleRow>>,
    lifecycle: Option<Lifecycle>,
    many: Option<Many>,
    events: Option<Events>,
}

/// A target from the issue, with the measured figure.
struct Target {
    what: &'static str,
    goal: String,
    figure: String,
    met: Option<bool>,
}

impl Target {
    fn json(&self) -> Value {
        json!({ "target": self.what, "goal": self.goal, "figure": self.figure, "met": self.met })
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn machine() -> Value {
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
fn commit() -> Option<String> {
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
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Self { head: head.iter().map(|s| (*s).to_owned()).collect(), rows: vec![] }
    }

    fn row(&mut self, cells: Vec<String>) {
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

fn x(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}x")
    } else {
        "n/a".into()
    }
}

fn opt_ns(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

/// The configuration names the targets compare: the largest generated
/// policy not above 100,000 rules, and the smallest.
fn big_small(plan: &Plan) -> (String, String) {
    let big = plan.sizes.iter().copied().filter(|&n| n <= 100_000).max().unwrap_or(0);
    let small = plan.sizes.iter().copied().min().unwrap_or(0);
    (format!("sbx-{}", size_label(big)), format!("sbx-{}", size_label(small)))
}

impl Report {
    fn targets(&self, plan: &Plan) -> Vec<Target> {
        let mut out = Vec::new();
        let (big, small) = big_small(plan);
        let pc = self.percall.as_ref();
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
        let load = self
            .scale
            .as_ref()
            .and_then(|s| s.iter().find(|r| r.rules == 100_000))
            .and_then(|r| Stat::of(&r.attach_ms));
        out.push(Target {
            what: "load 100,000 rules (`sbx-user attach`, end to end)",
            goal: "< 1 s".into(),
            figure: load.map_or("not measured".into(), |s| format!("median {} (min {})", ms(s.median), ms(s.min))),
            met: load.map(|s| s.median < 1000.0),
        });
        let added = self.lifecycle.as_ref().and_then(|l| Some((Stat::of(&l.run)?, Stat::of(&l.bin_true)?)));
        out.push(Target {
            what: "`sbx-user run -- /bin/true` over `/bin/true`",
            goal: "adds < 30 ms".into(),
            figure: added.map_or("not measured".into(), |(r, b)| {
                format!("adds {} (median; min {})", ms(r.median - b.median), ms(r.min - b.min))
            }),
            met: added.map(|(r, b)| r.median - b.median < 30.0),
        });
        if let Some(m) = &self.many {
            let nf = f(u64::from(m.n));
            let total = m.memcg_bytes.or(m.memlock.map(|(p, q)| p + q));
            out.push(Target {
                what: "concurrent sandboxes: total kernel memory",
                goal: format!("{} sandboxes < 1 GiB", thousands(nf)),
                figure: total.map_or("not measured".into(), |b| format!("{} ({} per sandbox)", mib(b), mib(b / nf))),
                met: total.map(|b| b * 1000.0 / nf < 1024.0 * 1024.0 * 1024.0),
            });
            out.push(Target {
                what: "concurrent sandboxes: each enforces its own policy",
                goal: "all".into(),
                figure: format!("{} of {} correct", m.checked - m.failures.len() as u64, m.n),
                met: Some(m.failures.is_empty() && m.checked == u64::from(m.n)),
            });
        }
        out
    }

    fn tables(&self, plan: &Plan, machine: &Value, command: &str, elapsed: Duration, ctx: &Ctx) -> String {
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
            s.push_str(&Self::percall_tables(p, plan));
        }
        if let Some(rows) = &self.scale {
            s.push_str(&scale_table(rows, plan, ctx));
        }
        if let Some(p) = &self.percall {
            s.push_str(&p.by_size_table(plan));
        }
        if let Some(l) = &self.lifecycle {
            s.push_str(&lifecycle_table(l, plan));
        }
        if let Some(m) = &self.many {
            s.push_str(&many_table(m));
        }
        if let Some(e) = &self.events {
            s.push_str(&events_table(e, self.percall.as_ref()));
        }
        let _ = writeln!(s, "### Targets\n");
        let mut t = Table::new(&["target", "goal", "measured", "verdict"]);
        for tg in self.targets(plan) {
            t.row(vec![tg.what.to_owned(), tg.goal.clone(), tg.figure.clone(), verdict(tg.met).to_owned()]);
        }
        let _ = writeln!(s, "{t}");
        s
    }

    fn percall_tables(pc: &Percall, plan: &Plan) -> String {
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

fn scale_table(rows: &[ScaleRow], plan: &Plan, ctx: &Ctx) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 2. Policy scale\n\nUp to {} loads per size, interleaved (one for loads over {} s). `attach` is the whole command \
         (parse, compile, load and verify the programs, fill the maps, attach, pin); parse+compile is `sbx-user check` on the \
         same policy. Kernel memory: {}. bpftool's `bytes_memlock` for an LPM trie counts only its rule nodes (not intermediate \
         nodes or allocator caches); /proc/meminfo is machine-wide and noisy at small sizes.\n",
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
        "bpftool memlock progs + maps",
        "/proc/meminfo delta",
    ]);
    for r in rows {
        if let Some(why) = &r.skipped {
            t.row(vec![
                thousands(f(r.rules as u64)),
                why.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
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
            Stat::of(&r.memcg_bytes).map_or("n/a".into(), |m| mib(m.median)),
            if r.memlock_maps.is_empty() {
                "n/a".into()
            } else {
                format!("{} + {}", mib(median(&r.memlock_progs)), mib(median(&r.memlock_maps)))
            },
            Stat::of(&r.meminfo_bytes).map_or("n/a".into(), |m| mib(m.median)),
        ]);
    }
    let _ = writeln!(s, "{t}");
    s
}

impl Percall {
    /// Per-call cost by policy size.
    fn by_size_table(&self, plan: &Plan) -> String {
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
}

fn lifecycle_table(l: &Lifecycle, plan: &Plan) -> String {
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

fn many_table(m: &Many) -> String {
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

fn events_table(e: &Events, p: Option<&Percall>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 5. Events\n\nA sandbox with the small policy and one follower (`sbx-user events --follow --json`). Latency: {} denied \
         connects 20 ms apart, from just before the call to the follower's line arriving. Flood: denied connects as fast as one \
         CPU makes them.\n",
        e.paced
    );
    let mut t = Table::new(&["figure", "value"]);
    if let Some(l) = Stat::of(&e.latency_ms) {
        t.row(vec![
            "deny to event line".into(),
            format!(
                "median {:.2} ms, min {:.2} ms, max {:.2} ms",
                l.median,
                l.min,
                e.latency_ms.iter().copied().fold(0.0, f64::max)
            ),
        ]);
    }
    t.row(vec![
        "flood: denied connects".into(),
        format!("{} in {:.2} s ({} ns each)", thousands(f(e.flood_calls)), e.flood_s, thousands(e.flood_ns_per_call)),
    ]);
    t.row(vec![
        "flood: events delivered".into(),
        format!("{} ({:.0} per s)", thousands(f(e.flood_delivered)), f(e.flood_delivered) / e.flood_s),
    ]);
    t.row(vec!["flood: events dropped (rate limit)".into(), e.flood_dropped.map_or("n/a".into(), |d| thousands(f(d)))]);
    if let Some(p) = p {
        if let Some(r) = p.ratio("sbx-audit", "sbx-small", "denied_connect") {
            t.row(vec![
                "denied connect, audit mode with follower vs enforce".into(),
                format!("median {} (audit lets it through to a closed port)", x(r.median)),
            ]);
        }
    }
    let _ = writeln!(s, "{t}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_distinct_and_avoid_loopback() {
        let (allow, deny) = gen_rules(5_000, 7);
        assert_eq!(allow.len() + deny.len(), 5_000);
        for r in allow.iter().chain(&deny) {
            let target = r.split_once("://").map_or(r.as_str(), |(_, t)| t).trim_start_matches('[');
            assert!(!target.starts_with("127.") && !target.starts_with("0."), "{r}");
            assert!(!target.starts_with("2002:"), "{r}");
        }
        assert_eq!(gen_rules(100, 1), gen_rules(100, 1));
    }

    #[test]
    fn median_and_min() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
        assert!((min(&[4.0, 1.0]) - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(10), "10");
        assert_eq!(size_label(1_000), "1k");
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}
