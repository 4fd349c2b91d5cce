//! Finding, checking, creating and emptying cgroup v2 directories.
//!
//! The cgroup2 mount is read from `/proc/self/mountinfo`, never assumed to
//! be `/sys/fs/cgroup` (hybrid hosts mount v1 controllers there).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// `CGROUP2_SUPER_MAGIC` from include/uapi/linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup problem, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error("cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup-parent")]
    NoCgroup2,
    /// The path is not a directory on a cgroup2 filesystem.
    #[error("{path} is not a cgroup v2 directory: {reason}")]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An I/O operation on a cgroup file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// cgroup v1 `net_cls`/`net_prio` may switch cgroup v2 socket matching off.
    #[error("{0}")]
    V1SocketMatching(String),
    /// Processes stayed in the cgroup after it was killed.
    #[error("processes are still in {path} after killing them; it was left in place")]
    NotEmpty {
        /// The cgroup.
        path: PathBuf,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { action, path, source }
}

/// Whether kernel `release` keeps cgroup v2 socket matching on whatever
/// cgroup v1 hierarchies are mounted (5.15 and later); `false` when it
/// cannot be parsed (the mounts are then looked at).
fn v1_matching_ignored(release: &str) -> bool {
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let version = |n: Option<&str>| n.and_then(|s| s.parse::<u32>().ok());
    matches!((version(nums.next()), version(nums.next())), (Some(major), Some(minor)) if (major, minor) >= (5, 15))
}

/// Why cgroup v2 socket hooks might not hold on this host, if they might
/// not: before Linux 5.15, the first use of a cgroup v1 `net_cls` or
/// `net_prio` controller switches cgroup v2 socket matching off for new
/// sockets, and the `sock_addr` programs then judge nothing. `release` is
/// `uname -r`, `mountinfo` the text of `/proc/self/mountinfo`.
#[must_use]
pub fn v1_socket_matching_conflict(release: &str, mountinfo: &str) -> Option<String> {
    if v1_matching_ignored(release) {
        return None;
    }
    let v1 = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut f = right.split_whitespace();
        let (fstype, _source, options) = (f.next()?, f.next()?, f.next()?);
        let netclass = options.split(',').any(|o| o == "net_cls" || o == "net_prio");
        (fstype == "cgroup" && netclass).then(|| left.split_whitespace().nth(4).unwrap_or("?").to_owned())
    })?;
    Some(format!(
        "cgroup v1 net_cls/net_prio is mounted at {v1} and this kernel ({release}) is older than 5.15: using them \
         switches cgroup v2 socket matching off, and sbx's programs would judge nothing; refusing to attach\nHint: \
         unmount the v1 net_cls/net_prio hierarchy (or boot with cgroup_no_v1=net_cls,net_prio), or use Linux 5.15+"
    ))
}

/// Fails when [`v1_socket_matching_conflict`] finds one on this host.
pub fn check_socket_matching() -> Result<(), CgroupError> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // The mounts matter only before 5.15; reading them costs more than
    // the rest of an agent's attach checks.
    if v1_matching_ignored(release.trim()) {
        return Ok(());
    }
    let info =
        fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    match v1_socket_matching_conflict(release.trim(), &info) {
        Some(why) => Err(CgroupError::V1SocketMatching(why)),
        None => Ok(()),
    }
}

/// Mount point of the cgroup2 filesystem, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    find_mount(&info, "cgroup2").ok_or(CgroupError::NoCgroup2)
}

/// The first mount point of filesystem type `fstype` in mountinfo text.
#[must_use]
pub fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == fstype)
            .then(|| left.split_whitespace().nth(4).map(|p| PathBuf::from(unescape_mount(p))))
            .flatten()
    })
}

/// Undoes mountinfo's octal escapes (`\040` for space).
fn unescape_mount(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A checked cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Canonical path.
    pub path: PathBuf,
    /// The kernel's cgroup id (the directory's inode number on cgroup2).
    pub id: u64,
}

impl Cgroup {
    /// Checks that `path` is a directory on a cgroup2 filesystem.
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let not = |reason: String| CgroupError::NotCgroup2 { path: path.to_owned(), reason };
        let canonical = crate::sys::canonicalize(path).map_err(|e| not(e.to_string()))?;
        let meta = fs::metadata(&canonical).map_err(|e| not(e.to_string()))?;
        if !meta.is_dir() {
            return Err(not("not a directory".into()));
        }
        let magic = statfs_magic(&canonical).map_err(|e| not(e.to_string()))?;
        if magic != CGROUP2_SUPER_MAGIC {
            let hint = cgroup2_mount()
                .map_or_else(|_| String::new(), |m| format!("; the cgroup2 hierarchy is mounted at {}", m.display()));
            return Err(not(format!("it is on a filesystem of type {magic:#x}, not cgroup2{hint}")));
        }
        Ok(Self { path: canonical, id: meta.ino() })
    }

    /// Creates `parent/name` (and `parent` if needed) and opens it. Nothing
    /// is created unless the nearest existing ancestor of `parent` is a
    /// cgroup v2 directory.
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        if !parent.exists() {
            let existing = parent.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
            Self::open(existing).map_err(|e| match e {
                CgroupError::NotCgroup2 { reason, .. } => CgroupError::NotCgroup2 {
                    path: parent.to_owned(),
                    reason: format!("its existing ancestor {} is not in cgroup v2 ({reason})", existing.display()),
                },
                other => other,
            })?;
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        Self::open(parent)?;
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err("creating", &path))?;
        Self::open(&path)
    }

    /// Opens the directory itself, as the attach target for BPF links.
    pub fn dir_fd(&self) -> Result<fs::File, CgroupError> {
        fs::File::open(&self.path).map_err(io_err("opening", &self.path))
    }

    /// Path of `cgroup.procs`.
    #[must_use]
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids currently in the cgroup (not its descendants).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let p = self.procs_path();
        let text = fs::read_to_string(&p).map_err(io_err("reading", &p))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Whether any process is in the cgroup or its descendants.
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let p = self.path.join("cgroup.events");
        let text = fs::read_to_string(&p).map_err(io_err("reading", &p))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Kills every process in the cgroup and its descendants and waits up
    /// to `timeout` for it to empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            fs::OpenOptions::new()
                .write(true)
                .open(&kill)
                .and_then(|mut f| f.write_all(b"1"))
                .map_err(io_err("writing", &kill))?;
        }
        let deadline = Instant::now() + timeout;
        while self.populated()? {
            // Without cgroup.kill (before 5.14), or for processes forked
            // while the kill ran: signal what is listed, until empty.
            for pid in self.pids()? {
                // SAFETY: kill(2) with a pid read from cgroup.procs; a
                // stale pid at worst returns ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty { path: self.path.clone() });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Removes the (empty) cgroup directory, and any empty child cgroups.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.path)
    }
}

fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    for entry in fs::read_dir(path).map_err(io_err("listing", path))? {
        let entry = entry.map_err(io_err("listing", path))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut tries = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            // The kernel frees a cgroup asynchronously after its last task
            // exits; rmdir says EBUSY for a moment.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("removing", path)(e)),
        }
    }
}

fn statfs_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid C string and `st` a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // `f_type` is an `i64` for glibc and a `u64` for musl; magic numbers
    // fit either.
    #[allow(clippy::useless_conversion, reason = "i64 to i64 on glibc, u64 to i64 on musl")]
    i64::try_from(st.f_type).map_err(|_| io::Error::other("a file system magic number out of range"))
}

/// Filesystem magic of `path`, for checking bpffs.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    statfs_magic(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_net_cls_before_5_15_is_a_conflict() {
        let with = "30 25 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid - cgroup cgroup rw,net_cls,net_prio\n\
                    31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let without = "31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                       32 25 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert!(v1_socket_matching_conflict("5.10.0-21-amd64", with).is_some_and(|m| m.contains("net_cls")));
        assert_eq!(v1_socket_matching_conflict("5.10.0-21-amd64", without), None);
        assert_eq!(v1_socket_matching_conflict("5.15.0", with), None);
        assert_eq!(v1_socket_matching_conflict("6.18.0", with), None);
        // An unreadable release is checked against the mounts (fail closed).
        assert!(v1_socket_matching_conflict("garbage", with).is_some());
    }

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_mount(info, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_mount(info, "bpf"), None);
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        let info = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(info, "cgroup2"), Some(PathBuf::from("/mnt/my cg")));
    }
}
