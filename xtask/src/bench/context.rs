//! What the sections share ([`Ctx`]), the cgroups below our own, and the
//! teardown that removes everything on exit, on error and on Ctrl-C.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{memory::MemAcct, netns, sbx};

/// What the benchmarks share.
pub(super) struct Ctx {
    pub(super) sbx: PathBuf,
    pub(super) worker: PathBuf,
    /// Our cgroup v2 directory; every benchmark cgroup is below it.
    pub(super) root: PathBuf,
    /// `SBX_STATE_DIR` for every `sbx-user` call, so the host's records are
    /// untouched.
    pub(super) state_dir: PathBuf,
    /// Generated policy files.
    pub(super) work: PathBuf,
    /// The bpffs every `sbx-user` call pins in (`SBX_BPFFS`): by default a
    /// private instance the benchmark mounts ([`mount_bpffs`]), so its
    /// program set, pool and `bpf_stats` are its own.
    pub(super) bpffs: PathBuf,
    pub(super) mem: Option<MemAcct>,
    pub(super) bpftool: bool,
    /// CPU the worker is pinned to.
    pub(super) cpu: Option<usize>,
}

/// Reads the mount table for the first mount whose type and super options
/// match.
pub(super) fn find_mount(matches: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
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
pub(super) fn unescape_mount(s: &str) -> String {
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

/// Set by SIGINT/SIGTERM/SIGHUP; every spawn checks it, so the main thread
/// unwinds to [`Guard`], which tears down.
pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(super) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What teardown needs, set once.
pub(super) struct Teardown {
    pub(super) sbx: PathBuf,
    pub(super) root: PathBuf,
    pub(super) state_dir: PathBuf,
    pub(super) work: PathBuf,
    pub(super) bpffs: PathBuf,
    /// Whether `bpffs` is our own mount, unmounted at the end.
    pub(super) bpffs_ours: AtomicBool,
    pub(super) mem_root: Option<PathBuf>,
    /// The value of `kernel.bpf_stats_enabled` to restore, if we changed it.
    pub(super) bpf_stats: Mutex<Option<String>>,
    /// Network namespaces and veth pairs made so far: `(netns, host end)`.
    pub(super) netns: Mutex<Vec<(String, String)>>,
    /// tmpfs instances mounted so far (the agent's state directory).
    pub(super) tmpfs: Mutex<Vec<PathBuf>>,
    pub(super) done: AtomicBool,
}

pub(super) static TEARDOWN: OnceLock<Teardown> = OnceLock::new();

pub(super) fn install_teardown(ctx: &Ctx) {
    let mem_root = ctx.mem.as_ref().map(|m| match m {
        MemAcct::V1 { root } | MemAcct::V2 { root } => root.clone(),
    });
    let _ = TEARDOWN.set(Teardown {
        sbx: ctx.sbx.clone(),
        root: ctx.root.clone(),
        state_dir: ctx.state_dir.clone(),
        work: ctx.work.clone(),
        bpffs: ctx.bpffs.clone(),
        bpffs_ours: AtomicBool::new(false),
        mem_root,
        bpf_stats: Mutex::new(None),
        netns: Mutex::new(Vec::new()),
        tmpfs: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Tears everything down when dropped: on success, on error, on panic.
pub(super) struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = TEARDOWN.get() {
            t.run();
        }
    }
}

impl Teardown {
    pub(super) fn run(&self) {
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
            if sbx::looks_attached(&self.bpffs, d) && !sbx::detach_quietly(&self.sbx, &self.state_dir, &self.bpffs, d) {
                eprintln!("bench: warning: could not detach sbx from {}", d.display());
            }
        }
        for d in &dirs {
            kill_members(d);
        }
        if self.bpffs_ours.load(Ordering::SeqCst) {
            unmount(&self.bpffs);
        }
        for dir in self.tmpfs.lock().map_or_else(|_| Vec::new(), |mut v| std::mem::take(&mut *v)) {
            unmount(&dir);
        }
        let nets = self.netns.lock().map_or_else(|_| Vec::new(), |mut v| std::mem::take(&mut *v));
        for (name, host_if) in nets {
            netns::delete(&name, &host_if);
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
pub(super) fn cgroup_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub(super) fn kill_members(cg: &Path) {
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
pub(super) fn rmdir_retry(dir: &Path) {
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

/// Mounts a bpffs instance of our own at `dir` (each mount of bpffs is a
/// fresh instance) and registers it for teardown. With it, the program set
/// the benchmark measures, its policy pool and the `bpf_stats` of its
/// programs are not shared with sandboxes anyone else runs on the host,
/// and everything the benchmark left in it (tries and rings kept for the
/// next sandbox) goes when it is unmounted.
pub(super) fn mount_bpffs(dir: &Path) -> Result<()> {
    mount_instance(dir, "bpf")?;
    if let Some(t) = TEARDOWN.get() {
        t.bpffs_ours.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// Mounts a fresh instance of filesystem `fstype` at `dir`.
fn mount_instance(dir: &Path, fstype: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let c = |s: &str| std::ffi::CString::new(s).context("a path with a NUL byte");
    let target = c(dir.to_str().context("the mount point is not UTF-8")?)?;
    let ty = c(fstype)?;
    // SAFETY: valid C strings; no mount data.
    let rc = unsafe { libc::mount(ty.as_ptr(), target.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = fs::remove_dir(dir);
        bail!("mounting a private {fstype} at {}: {e}", dir.display());
    }
    Ok(())
}

/// Mounts a tmpfs at `dir` (as `/run` is on a systemd host) and registers
/// it for teardown.
pub(super) fn mount_tmpfs(dir: &Path) -> Result<()> {
    mount_instance(dir, "tmpfs")?;
    if let Some(t) = TEARDOWN.get() {
        if let Ok(mut v) = t.tmpfs.lock() {
            v.push(dir.to_owned());
        }
    }
    Ok(())
}

/// Unmounts `dir` (lazily) and removes the mount point.
pub(super) fn unmount(dir: &Path) {
    let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        eprintln!("bench: warning: unmounting {}: {}", dir.display(), io::Error::last_os_error());
        return;
    }
    let _ = fs::remove_dir(dir);
}

pub(super) const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
impl Ctx {
    pub(super) fn mkcg(&self, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        Ok(p)
    }
}
