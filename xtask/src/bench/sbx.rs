//! Every call into `sbx-user`: the commands the benchmark drives, the
//! policy flags it passes, and what it reads back from sbx's records and
//! pins. Keep this module thin: when `sbx-user`'s commands, records or
//! pin layout change, this is the one place to adapt.

use std::{
    fs, io,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    context::{check_interrupted, Ctx},
    runner::{in_cgroups, procs_fd, timed_output, timed_quiet},
};

/// Ports the policies allow on loopback and on the netns test host;
/// everything above is denied.
pub(super) const ALLOWED_PORTS: &str = "1-9999";
/// The small policy: a database, HTTPS to a /16, an IPv6 /32, loopback
/// ports 1-9999.
pub(super) const SMALL_POLICY: [&str; 8] = [
    "--allow",
    "10.1.2.3:5432",
    "--allow",
    "192.168.0.0/16:80,443",
    "--allow",
    "[2001:db8::/32]:443",
    "--loopback",
    ALLOWED_PORTS,
];

/// Flags allowing the netns test host's ports [`ALLOWED_PORTS`], as
/// `--loopback` allows loopback's.
pub(super) fn allow_test_host(addr: Ipv4Addr) -> Vec<String> {
    vec!["--allow".to_owned(), format!("{addr}:{ALLOWED_PORTS}")]
}

/// The small policy's flags, owned.
pub(super) fn small_policy() -> Vec<String> {
    SMALL_POLICY.iter().map(|s| (*s).to_owned()).collect()
}

/// Flags for a policy file of `n` generated rules.
pub(super) fn policy_file_flags(file: &Path, n: usize) -> Vec<String> {
    let mut f = vec![
        "--policy".to_owned(),
        file.to_string_lossy().into_owned(),
        "--loopback".to_owned(),
        ALLOWED_PORTS.to_owned(),
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

impl Ctx {
    pub(super) fn sbx_cmd(&self) -> Command {
        let mut c = Command::new(&self.sbx);
        c.env("SBX_STATE_DIR", &self.state_dir).env("SBX_BPFFS", &self.bpffs);
        c
    }

    /// `sbx-user attach`, optionally run inside memory cgroup `memcg`
    /// (from a launcher already there: see [`Ctx::attach_each`]).
    pub(super) fn attach(
        &self,
        cg: &Path,
        policy: &[String],
        memcg: Option<&Path>,
        limit: Option<Duration>,
    ) -> Result<Duration> {
        if let Some(m) = memcg {
            let t = self.attach_each(&[(cg.to_owned(), policy.to_vec())], m, limit)?;
            return Ok(t[0]);
        }
        let mut cmd = self.sbx_cmd();
        cmd.args(["attach", "--cgroup"]).arg(cg).args(policy);
        timed_quiet(&mut cmd, &format!("sbx-user attach --cgroup {}", cg.display()), limit)
    }

    /// `sbx-user attach` for each `(cgroup, policy)`, one after another,
    /// inside memory cgroup `memcg`, so the kernel memory they create is
    /// charged there. They are started by one launcher process
    /// (`sbx-bench-worker spawn`) placed in `memcg` once: a process born in
    /// a cgroup costs nothing to put there, while moving one into it waits
    /// for an RCU grace period (10-60 ms here), which would swamp a
    /// millisecond attach. Returns each attach's wall time.
    pub(super) fn attach_each(
        &self,
        sandboxes: &[(PathBuf, Vec<String>)],
        memcg: &Path,
        limit: Option<Duration>,
    ) -> Result<Vec<Duration>> {
        let mut text = String::new();
        for (cg, policy) in sandboxes {
            let mut words = vec![
                self.sbx.to_string_lossy().into_owned(),
                "attach".to_owned(),
                "--cgroup".to_owned(),
                cg.to_string_lossy().into_owned(),
            ];
            words.extend(policy.iter().cloned());
            text.push_str(&words.join("\t"));
            text.push('\n');
        }
        let list = self.work.join("attach-list.txt");
        fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
        let mut cmd = Command::new(&self.worker);
        cmd.arg("spawn").arg("--list").arg(&list).env("SBX_STATE_DIR", &self.state_dir).env("SBX_BPFFS", &self.bpffs);
        // The launcher is also in a cgroup of ours (a v2 memory cgroup
        // already is one), so teardown finds and stops it.
        let mut cgs = vec![procs_fd(memcg)?];
        if !memcg.starts_with(&self.root) {
            cgs.push(procs_fd(&self.mkcg("launcher")?)?);
        }
        in_cgroups(&mut cmd, cgs.iter().map(AsRawFd::as_raw_fd).collect(), Vec::new());
        let what = if sandboxes.len() == 1 {
            format!("sbx-user attach --cgroup {}", sandboxes[0].0.display())
        } else {
            format!("{} sbx-user attach commands", sandboxes.len())
        };
        let (_, out) = timed_output(&mut cmd, &what, limit)?;
        let v: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("parsing the launcher's output {out:?}"))?;
        let ns: Vec<Duration> =
            v["ns"].as_array().into_iter().flatten().filter_map(Value::as_u64).map(Duration::from_nanos).collect();
        if ns.len() != sandboxes.len() {
            anyhow::bail!("the launcher timed {} of {} attaches", ns.len(), sandboxes.len());
        }
        Ok(ns)
    }

    pub(super) fn detach(&self, cg: &Path) -> Result<Duration> {
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
    pub(super) fn entries(&self, cg: &Path) -> Option<u64> {
        let id = fs::metadata(cg).ok()?.ino();
        let text = fs::read_to_string(self.state_dir.join(format!("{id}.json"))).ok()?;
        let (_, after) = text.split_once("\"dest_entries\"")?;
        let digits: String =
            after.trim_start_matches([':', ' ', '\n']).chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
}

/// `sbx-user check` with `flags`: parse and compile only.
pub(super) fn check(ctx: &Ctx, flags: &[String], limit: Option<Duration>) -> Result<Duration> {
    let mut cmd = ctx.sbx_cmd();
    cmd.arg("check").args(flags);
    timed_quiet(&mut cmd, "sbx-user check", limit)
}

/// `sbx-user run --cgroup-parent PARENT FLAGS -- PROGRAM`, timed.
pub(super) fn run(ctx: &Ctx, parent: &Path, flags: &[String], program: &Path) -> Result<Duration> {
    let mut c = ctx.sbx_cmd();
    c.arg("run").arg("--cgroup-parent").arg(parent).args(flags).arg("--").arg(program);
    timed_quiet(&mut c, "sbx-user run -- /bin/true", None)
}

/// `sbx-user attach` under `strace -f -T -e trace=bpf`, writing the trace
/// to `log`.
pub(super) fn strace_attach(ctx: &Ctx, cg: &Path, policy: &[String], log: &Path) -> Result<Duration> {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-T", "-e", "trace=bpf", "-o"])
        .arg(log)
        .arg(&ctx.sbx)
        .env("SBX_STATE_DIR", &ctx.state_dir)
        .env("SBX_BPFFS", &ctx.bpffs)
        .args(["attach", "--cgroup"])
        .arg(cg)
        .args(policy);
    timed_quiet(&mut cmd, "strace sbx-user attach", None)
}

/// Whether sbx pinned a sandbox for `cg` under `bpffs` (teardown detaches
/// only those).
pub(super) fn looks_attached(bpffs: &Path, cg: &Path) -> bool {
    fs::metadata(cg).is_ok_and(|meta| bpffs.join("sbx").join(meta.ino().to_string()).exists())
}

/// `sbx-user detach` for teardown: untimed and quiet; says whether it
/// worked.
pub(super) fn detach_quietly(sbx: &Path, state_dir: &Path, bpffs: &Path, cg: &Path) -> bool {
    Command::new(sbx)
        .args(["detach", "--cgroup"])
        .arg(cg)
        .env("SBX_STATE_DIR", state_dir)
        .env("SBX_BPFFS", bpffs)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first `events_dropped` field anywhere in `v`.
pub(super) fn find_events_dropped(v: &Value) -> Option<u64> {
    match v {
        Value::Object(m) => {
            m.get("events_dropped").and_then(Value::as_u64).or_else(|| m.values().find_map(find_events_dropped))
        }
        Value::Array(a) => a.iter().find_map(find_events_dropped),
        _ => None,
    }
}

/// `events_dropped` from `sbx-user status --json` for `cg`.
pub(super) fn events_dropped(ctx: &Ctx, cg: &Path) -> Option<u64> {
    let mut cmd = ctx.sbx_cmd();
    cmd.args(["status", "--json", "--cgroup"]).arg(cg);
    let (_, out) = timed_output(&mut cmd, "sbx-user status", None).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    find_events_dropped(&v)
}

/// A running `sbx-user events --follow --json` for one sandbox, its lines
/// stamped with `CLOCK_MONOTONIC` as they arrive. It runs in a cgroup of
/// ours, so teardown finds it even if this process dies first.
pub(super) struct EventFollower {
    pub(super) child: std::process::Child,
    pub(super) lines: std::sync::Arc<Mutex<Vec<u64>>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl EventFollower {
    pub(super) fn start(ctx: &Ctx, cg: &Path) -> Result<Self> {
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

    pub(super) fn count(&self) -> usize {
        self.lines.lock().map_or(0, |v| v.len())
    }

    pub(super) fn arrivals(&self) -> Vec<u64> {
        self.lines.lock().map_or_else(|_| Vec::new(), |v| v.clone())
    }

    /// Waits until no line has arrived for `quiet`.
    pub(super) fn settle(&self, quiet: Duration, max: Duration) {
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
    pub(super) fn stop(mut self) -> Vec<u64> {
        self.kill();
        self.arrivals()
    }

    pub(super) fn kill(&mut self) {
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
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl Ctx {
    /// `sbx-user update --cgroup CG FLAGS`, timed.
    pub(super) fn update(&self, cg: &Path, policy: &[String]) -> Result<Duration> {
        let mut cmd = self.sbx_cmd();
        cmd.args(["update", "--cgroup"]).arg(cg).args(policy);
        timed_quiet(&mut cmd, &format!("sbx-user update --cgroup {}", cg.display()), None)
    }
}

impl Ctx {
    /// Makes sure the host (our bpffs) has the program set loaded, outside
    /// any measurement: one attach and detach on a scratch cgroup.
    pub(super) fn warm_set(&self) -> Result<()> {
        let cg = self.mkcg("warm")?;
        self.attach(&cg, &host_event_stream(), None, None)?;
        self.detach(&cg)?;
        super::context::rmdir_retry(&cg);
        Ok(())
    }
}

/// `--event-buffer 0`: the sandbox's events go to the host event stream
/// (no ring buffer of its own).
pub(super) fn host_event_stream() -> Vec<String> {
    vec!["--event-buffer".to_owned(), "0".to_owned()]
}

/// Prefix of sbx's program set directories (`<bpffs>/sbx/set-<id>`) and of
/// the marker in a sandbox's pins (`<bpffs>/sbx/<cgroup-id>/set-<id>`) that
/// names the set holding it.
const SET_PREFIX: &str = "set-";

/// What [`remove_unused_sets`] did.
#[derive(Debug, Default)]
pub(super) struct SetCleanup {
    /// Set directories removed (no sandbox named them).
    pub(super) removed: Vec<String>,
    /// Set directories kept because a sandbox's marker names them.
    pub(super) in_use: Vec<String>,
}

/// Removes every program set directory under `<bpffs>/sbx` that no
/// sandbox's `set-<id>` marker names, so the next `sbx-user` call loads
/// its set afresh (the first use on a host). It holds sbx's host lock (an
/// `flock` on `<bpffs>/sbx`) meanwhile, so no `sbx-user` is between opening
/// a set and writing its marker; a set any sandbox uses, ours or anyone
/// else's, is never touched.
pub(super) fn remove_unused_sets(bpffs: &Path) -> Result<SetCleanup> {
    let root = bpffs.join("sbx");
    let mut out = SetCleanup::default();
    let Ok(dir) = fs::File::open(&root) else {
        return Ok(out);
    };
    loop {
        // SAFETY: flock(2) on a descriptor we own; released when it closes.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("locking {}", root.display()));
        }
    }
    let names: Vec<String> = fs::read_dir(&root)
        .with_context(|| format!("listing {}", root.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let mut in_markers = std::collections::BTreeSet::new();
    for sandbox in names.iter().filter(|n| n.parse::<u64>().is_ok()) {
        let pins = match fs::read_dir(root.join(sandbox)) {
            Ok(p) => p,
            // Gone since it was listed: it names nothing any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}/{sandbox}", root.display())),
        };
        in_markers
            .extend(pins.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix(SET_PREFIX).map(str::to_owned)));
    }
    for set in names.iter().filter_map(|n| n.strip_prefix(SET_PREFIX)) {
        if in_markers.contains(set) {
            out.in_use.push(set.to_owned());
            continue;
        }
        let path = root.join(format!("{SET_PREFIX}{set}"));
        fs::remove_dir_all(&path).with_context(|| format!("removing the unused program set {}", path.display()))?;
        out.removed.push(set.to_owned());
    }
    drop(dir);
    Ok(out)
}
