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
//!    for the programs' own run time per call. `percall-netns`: the same
//!    calls to a test host in a network namespace the benchmark creates,
//!    over a veth pair ([`netns`]), in the same rounds; and the floor of
//!    any such hook, trivial `return 1` programs ([`floor`]).
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
//! 6. `agent`: `sbx-user agent`: sandboxes made per second through it,
//!    `run` through it, and many sandboxes held by one agent (its memory,
//!    the latency of its event stream).
//!
//! Kernel memory is measured three ways, each named in the output:
//! the memory cgroup charge of the `sbx-user attach` process (it is the
//! creator of the maps and programs, so the kernel charges them to its
//! memcg, and the charge outlives the process), the `bytes_memlock` that
//! `bpftool` reports for the programs and maps, and the change of
//! `Slab + VmallocUsed + Percpu` in /proc/meminfo (global, so noisy).
//!
//! Network traffic goes to 127.0.0.1 and to the test host in the
//! benchmark's own network namespace (198.18.0.0/15) only; the worker
//! refuses any other address. The denied calls target a port the policy
//! denies on one of those two, so even a broken policy could not send a
//! packet off the machine. Everything created (cgroups, pins, memory
//! cgroups, processes, the network namespace and its veth pair) is removed
//! on exit, on error and on Ctrl-C. The per-call figures are also drawn as
//! SVG charts ([`charts`]).
//!
//! Layout: [`runner`] spawns and times the processes and interleaves the
//! configurations; [`worker`] is the protocol with `sbx-bench-worker`;
//! [`sbx`] is every call into `sbx-user` (the one module to adapt when
//! its commands change); [`context`] holds what the sections share and
//! the teardown; [`memory`] and [`bpftool`] measure kernel memory and
//! program run time; [`stats`] and [`report`] turn samples into tables
//! and JSON; one module per section.

mod agent;
mod bpftool;
mod charts;
mod context;
mod events;
mod floor;
mod lifecycle;
mod many;
mod memory;
mod netns;
mod percall;
mod policies;
mod profile;
mod protocol;
mod report;
mod runner;
mod sbx;
mod scale;
mod stats;
#[cfg(test)]
mod tests;
mod worker;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
// The Landlock reference configuration lives in the worker binary, which
// shares this package's dependencies.
use landlock as _;

use context::{find_mount, install_teardown, Ctx, Guard};
use memory::MemAcct;
use policies::Policies;
use report::{write_results, Report};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Rounds of the per-call benchmarks [default: 15, 3 with --quick].
    #[arg(long)]
    pub(crate) rounds: Option<u32>,
    /// Fast smoke run: fewer iterations and rounds, no 1,000,000-rule
    /// policy, 100 sandboxes instead of 10,000.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where to write the JSON results [default: <target>/bench/bench.json].
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Sandboxes in the many-sandboxes benchmark [default: 10000, 100 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub(crate) sandboxes: Option<u32>,
    /// Run only these sections (comma list).
    #[arg(long, value_delimiter = ',', value_name = "SECTION")]
    pub(crate) only: Vec<Section>,
    /// Use the binaries already built instead of building them.
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Where to draw the SVG charts of the per-call figures [default: next
    /// to BENCHMARKS.md; with --quick, next to the JSON].
    #[arg(long, value_name = "DIR")]
    pub(crate) charts: Option<PathBuf>,
    /// A sandlock command-line binary (the comparison, e.g.
    /// `cargo install sandlock-cli --version 0.8.6 --root /opt/sandlock`)
    /// whose `sandlock run -- /bin/true` the lifecycle section times in the
    /// same rounds as `sbx-user run -- /bin/true`. The benchmark never
    /// installs it.
    #[arg(long, value_name = "BINARY")]
    pub(crate) sandlock: Option<PathBuf>,
}

/// A part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Section {
    /// Per-call cost of connect, sendto and denied calls, on loopback.
    Percall,
    /// The same calls to a test host in a network namespace the benchmark
    /// creates, over a veth pair.
    PercallNetns,
    /// Load time and kernel memory by policy size.
    Scale,
    /// `run -- /bin/true`, attach, detach.
    Lifecycle,
    /// Many sandboxes at once.
    Many,
    /// Deny events: latency and a flood.
    Events,
    /// The host agent: creates per second, `run` through it, many
    /// sandboxes held by one agent.
    Agent,
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
    /// The sandlock binary `run` is compared with, and its version line.
    sandlock: Option<(PathBuf, String)>,
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
                lifecycle_rounds: 3,
                lifecycle_reps: 2,
                sandboxes: 100,
                sandlock: None,
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
                load_rounds: 15,
                profile_rounds: 5,
                lifecycle_rounds: 15,
                lifecycle_reps: 4,
                sandboxes: 10_000,
                sandlock: None,
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

/// `cargo xtask` runs the benchmark with cargo's `LD_LIBRARY_PATH` (the
/// target directory, its `deps` of hundreds of files, the toolchain's
/// libraries) in front of the user's: every dynamically linked program it
/// times would look for each library there first. That costs `/bin/true`
/// little, but a sandbox that traps `openat` to a supervisor (sandlock) a
/// round trip per miss: 3.5 ms became 5.0 ms here. The entries cargo added
/// go; the user's own stay.
fn drop_cargo_library_path() {
    let Some(path) = env::var_os("LD_LIBRARY_PATH") else { return };
    let ours: Vec<PathBuf> = [
        Some(target_dir()),
        env::var_os("RUSTUP_HOME").map(PathBuf::from),
        env::var_os("CARGO_HOME").map(PathBuf::from),
    ]
    .into_iter()
    .flatten()
    .collect();
    let kept: Vec<PathBuf> = env::split_paths(&path).filter(|p| !ours.iter().any(|o| p.starts_with(o))).collect();
    // SAFETY: called first thing in `run`, before the benchmark starts a
    // thread, so nothing reads the environment concurrently.
    if kept.is_empty() {
        env::remove_var("LD_LIBRARY_PATH");
    } else if let Ok(joined) = env::join_paths(kept) {
        env::set_var("LD_LIBRARY_PATH", joined);
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks attach BPF programs to real cgroups; they need root\nHint: sudo -E cargo xtask bench");
    }
    drop_cargo_library_path();
    let mut plan = Plan::new(args);
    if let Some(bin) = &args.sandlock {
        plan.sandlock = Some((bin.clone(), lifecycle::check_sandlock(bin)?));
    }
    let target = target_dir();
    // The binary measured is the one `cargo xtask dist` ships: linked
    // statically.
    let sbx = if args.no_build {
        crate::dist::static_bin_path(false)
    } else {
        let sbx = crate::dist::build_static(false)?;
        crate::cargo(&["build", "--release", "-p", "xtask", "--bin", "sbx-bench-worker"])?;
        sbx
    };
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
        bpffs: env::var_os("SBX_BPFFS").map_or_else(|| bench_dir.join(format!("bpffs-{pid}")), PathBuf::from),
        mem: MemAcct::find(&cgroup2, pid),
        bpftool,
        cpu: std::thread::available_parallelism().map_or(None, |n| (n.get() > 1).then(|| n.get() - 1)),
    };
    install_teardown(&ctx);
    let _guard = Guard;
    if env::var_os("SBX_BPFFS").is_none() {
        context::mount_bpffs(&ctx.bpffs)?;
    }
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
    let sections = percall::Want {
        loopback: want(Section::Percall),
        netns: want(Section::PercallNetns),
        scale: want(Section::Scale),
    };
    if sections.loopback || sections.netns || sections.scale {
        let policies = Policies::new(&ctx.work, &plan.sizes)?;
        (report.percall, report.scale) = percall::policy_sections(&ctx, &plan, &policies, sections)?;
    }
    if want(Section::Lifecycle) {
        report.lifecycle = Some(lifecycle::lifecycle(&ctx, &plan)?);
    }
    if want(Section::Many) {
        report.many = Some(many::many(&ctx, &plan)?);
    }
    if want(Section::Events) {
        report.events = Some(events::events(&ctx, &plan)?);
    }
    if want(Section::Agent) {
        report.agent = Some(agent::agent(&ctx, &plan)?);
    }
    let elapsed = started.elapsed();
    write_results(&report, &plan, &ctx, &out, elapsed)?;
    if let Some(pc) = &report.percall {
        // A smoke run's noisy figures must not replace the published charts.
        let dir = args.charts.clone().unwrap_or_else(|| {
            if args.quick {
                out.parent().map_or_else(|| bench_dir.clone(), Path::to_path_buf)
            } else {
                crate::workspace()
            }
        });
        for f in charts::write(pc, &plan.sizes, &dir)? {
            eprintln!("bench: drew {}", f.display());
        }
    }
    Ok(())
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace, where the builds run) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace().join("target"), |d| crate::workspace().join(d))
}
