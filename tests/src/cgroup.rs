//! Test cgroups, and an independent look at what the kernel has attached.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::util::wait_until;

/// Every hook sbx has: (name as `status` reports it, `bpf_attach_type`),
/// from sbx-user's own table, so a hook added there is seen here.
#[must_use]
pub fn hooks() -> Vec<(&'static str, u32)> {
    sbx_user::loader::HOOKS.iter().map(|&(_, ty, name)| (name, ty as u32)).collect()
}

/// Names of the hooks a sandbox without a transparent proxy has, as
/// `status` reports them, sorted.
#[must_use]
pub fn all_hooks() -> Vec<&'static str> {
    let mut v: Vec<&str> = sbx_user::loader::hooks_for(false).map(|h| h.2).collect();
    v.sort_unstable();
    v
}

/// Programs per hook (every hook of [`hooks`]), from [`prog_counts`].
pub type HookCounts = std::collections::BTreeMap<&'static str, u32>;

/// `n` programs at every hook a sandbox without a transparent proxy has,
/// none at the others (`sock_ops`).
#[must_use]
pub fn per_hook(n: u32) -> HookCounts {
    let used = all_hooks();
    hooks().into_iter().map(|(h, _)| (h, if used.contains(&h) { n } else { 0 })).collect()
}

/// Mount point of the cgroup2 filesystem, read from `/proc/self/mountinfo`.
///
/// # Panics
/// When no cgroup2 filesystem is mounted.
#[must_use]
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            // Mount points escape space, tab, newline and backslash as \ooo.
            let raw = left.split_whitespace().nth(4)?;
            let mut out = Vec::new();
            let b = raw.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
                    out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            Some(PathBuf::from(String::from_utf8_lossy(&out).into_owned()))
        })
        .expect("cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo); the tests need it")
}

/// A cgroup `sbx-test-<pid>-<n>` under the cgroup2 mount.
///
/// Dropping it kills every process in it and its descendants, removes any
/// sbx pins left on it (which detaches the programs), and removes the
/// directories.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    id: u64,
}

impl TestCgroup {
    /// Creates a fresh cgroup.
    ///
    /// # Panics
    /// When not root or the directory cannot be created.
    #[must_use]
    pub fn new() -> Self {
        crate::require_root();
        let path = cgroup2_mount().join(format!("sbx-test-{}-{}", std::process::id(), crate::next_id()));
        if path.exists() {
            // Left behind by an earlier process with the same pid.
            cleanup_tree(&path);
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        let id = fs::metadata(&path).expect("stat of the new cgroup").ino();
        Self { path, id }
    }

    /// Creates a child cgroup `name` inside this one (removed with it).
    ///
    /// # Panics
    /// When it cannot be created.
    #[must_use]
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", p.display()));
        p
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for command lines.
    ///
    /// # Panics
    /// Never: the path is built from UTF-8 parts.
    #[must_use]
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("cgroup paths are UTF-8")
    }

    /// The cgroup id (the directory's inode number), as sbx keys pins by.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The cgroup directories under this one (not itself).
    ///
    /// # Panics
    /// When the directory cannot be listed.
    #[must_use]
    pub fn children(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.path)
            .expect("listing the test cgroup")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Number of sbx programs attached directly to this cgroup, per hook.
    #[must_use]
    pub fn prog_counts(&self) -> HookCounts {
        prog_counts(&self.path, false)
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        cleanup_tree(&self.path);
    }
}

/// Kills everything in `path` and below, removes sbx pins left on any of
/// those cgroups (e.g. by a `run` that was killed), then removes the
/// directories, deepest first. Best effort: runs in `Drop`.
fn cleanup_tree(path: &Path) {
    let mut dirs = vec![path.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    let populated = |p: &Path| {
        fs::read_to_string(p.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
    };
    let emptied = wait_until(Duration::from_secs(5), || {
        for d in &dirs {
            for pid in fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) by a pid read from cgroup.procs; a
                    // stale pid at worst gives ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        !populated(path)
    });
    if !emptied {
        eprintln!("warning: processes remain in {}", path.display());
    }
    for d in &dirs {
        // Unpinning the links drops their last reference, which detaches
        // them; `sbx-user detach` may not have run if the test panicked.
        let Ok(meta) = fs::metadata(d) else { continue };
        let pins = crate::bpffs().join("sbx").join(meta.ino().to_string());
        if let Ok(entries) = fs::read_dir(&pins) {
            for e in entries.flatten() {
                // Link and map pins, and the program set marker directory.
                let _ = fs::remove_file(e.path()).or_else(|_| fs::remove_dir(e.path()));
            }
            let _ = fs::remove_dir(&pins);
        }
    }
    for d in dirs.iter().rev() {
        // The kernel frees a cgroup asynchronously after its last task
        // exits; rmdir says EBUSY for a moment.
        let removed = wait_until(Duration::from_secs(2), || fs::remove_dir(d).is_ok() || !d.exists());
        if !removed {
            eprintln!("warning: could not remove cgroup {}", d.display());
        }
    }
}

/// Number of programs attached at each of [`hooks`] on the cgroup at
/// `path`, asked of the kernel with `BPF_PROG_QUERY` (independently of
/// sbx-user). With `effective`, counts what applies there including
/// programs inherited from ancestors.
///
/// # Panics
/// When the cgroup cannot be opened or the query fails.
#[must_use]
pub fn prog_counts(path: &Path, effective: bool) -> HookCounts {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let dir = fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut out = HookCounts::new();
    for (hook, attach_type) in hooks() {
        let slot = out.entry(hook).or_insert(0);
        // The `query` member of `union bpf_attr`: target_fd u32 @0,
        // attach_type u32 @4, query_flags u32 @8, attach_flags u32 @12,
        // prog_ids u64 @16, prog_cnt u32 @24; the rest must be zero. With
        // prog_ids NULL the kernel only reports the count.
        let mut attr = [0u32; 16];
        attr[0] = u32::try_from(dir.as_raw_fd()).expect("fds are non-negative");
        attr[1] = attach_type;
        attr[2] = if effective { BPF_F_QUERY_EFFECTIVE } else { 0 };
        // SAFETY: bpf(2) reads and writes `attr`, a live buffer of the size
        // passed.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
        assert!(rc == 0, "BPF_PROG_QUERY {hook} on {}: {}", path.display(), std::io::Error::last_os_error());
        *slot = attr[6];
    }
    out
}
