//! `enter`: the agent moves a client's child into the sandbox `run` made
//! for it. A client that is not root cannot write `cgroup.procs` of a
//! cgroup root owns, and handing it write access (a delegated cgroup)
//! would let it move other processes in and out; so the client forks, its
//! child waits before exec, and the agent checks the child and moves it.
//!
//! The checks fail closed, each from the kernel's own records (the pidfd
//! the client sent, `/proc/<pid>/status`, `/proc/<pid>/exe`,
//! `/proc/<pid>/cgroup`), never from anything the client says: the child
//! is the client's own (its parent is the client's pid from
//! `SO_PEERCRED`), runs as the client's uid and gid (all four ids), has
//! executed nothing since the fork (its executable is the client's), and
//! is not inside an sbx sandbox (moving out of one into a wider policy
//! would be an escape). The pidfd is checked to still name a live process
//! after each read, so what was read was that process.

use std::{
    fs,
    io::Write as _,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use super::access::Caller;

/// The ids `/proc/<pid>/status` gives, as far as `enter` needs them.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    /// Its parent's pid.
    pub ppid: u32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
}

/// Parses the `PPid`, `Uid` and `Gid` lines of `/proc/<pid>/status`.
#[must_use]
pub fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace);
    let four = |name: &str| -> Option<[u32; 4]> {
        let v: Vec<u32> = field(name)?.map(str::parse).collect::<Result<_, _>>().ok()?;
        v.try_into().ok()
    };
    let ppid = field("PPid:")?.next()?.parse().ok()?;
    Some(Status { ppid, uids: four("Uid:")?, gids: four("Gid:")? })
}

/// The cgroup v2 path (relative to the mount, with a leading `/`) in the
/// text of `/proc/<pid>/cgroup`.
#[must_use]
pub fn parse_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The pid a pidfd names, from `/proc/self/fdinfo` (`Pid:`; -1 once the
/// process is gone, 0 outside this pid namespace).
fn pid_of(pidfd: &OwnedFd) -> Result<u32, String> {
    let fd = pidfd.as_raw_fd();
    let link = fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|e| format!("the descriptor sent: {e}"))?;
    if !link.to_string_lossy().contains("pidfd") {
        return Err(format!("the descriptor sent is not a pidfd ({})", link.display()));
    }
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(|e| format!("the pidfd sent: {e}"))?;
    let pid = info.lines().find_map(|l| l.strip_prefix("Pid:")).map(str::trim);
    match pid.and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if p > 0 => u32::try_from(p).map_err(|_| format!("pid {p} out of range")),
        Some(_) => Err("the process of the pidfd sent has exited or is outside the agent's pid namespace".into()),
        None => Err("the pidfd sent names no process (no Pid in its fdinfo)".into()),
    }
}

/// Whether the pidfd's process is still alive (signal 0).
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    rc == 0
}

fn exe_id(pid: u32) -> Result<(u64, u64), String> {
    let m = fs::metadata(format!("/proc/{pid}/exe")).map_err(|e| format!("the executable of pid {pid}: {e}"))?;
    Ok((m.dev(), m.ino()))
}

fn cgroup_of(pid: u32) -> Result<String, String> {
    let text =
        fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| format!("the cgroup of pid {pid}: {e}"))?;
    parse_cgroup(&text).map(str::to_owned).ok_or_else(|| format!("pid {pid} is in no cgroup v2 group"))
}

/// Whether sbx programs hold the cgroup at `rel` (own or inherited).
fn sandboxed(mount: &Path, rel: &str) -> Result<bool, String> {
    let path = mount.join(rel.trim_start_matches('/'));
    let dir = fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let ids = crate::sys::prog_query(dir.as_fd(), crate::sys::AttachType::Connect4, crate::sys::QUERY_EFFECTIVE)
        .map_err(|e| format!("querying the programs on {}: {e}", path.display()))?;
    // A program whose name cannot be read counts as sbx's (fail closed).
    Ok(ids.iter().any(|&id| crate::sys::prog_name(id).map_or(true, |n| n.starts_with("sbx_"))))
}

/// Checks that `pidfd` names a child of `caller` it may move, moves it
/// into the cgroup whose directory is `dir` (at `target`, relative to the
/// cgroup2 mount `mount`), and checks it arrived. Returns its pid.
pub fn move_child(caller: &Caller, pidfd: &OwnedFd, dir: &OwnedFd, mount: &Path, target: &str) -> Result<u32, String> {
    let pid = pid_of(pidfd)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    let status = parse_status(&status).ok_or_else(|| format!("pid {pid}: unreadable status"))?;
    let exe = exe_id(pid)?;
    let from = cgroup_of(pid)?;
    if !alive(pidfd) {
        return Err(format!("pid {pid} exited while it was checked"));
    }
    if status.ppid != caller.pid {
        return Err(format!("pid {pid} is not a child of the client (pid {}): only its own child enters", caller.pid));
    }
    if status.uids.iter().any(|&u| u != caller.uid) || status.gids.iter().any(|&g| g != caller.gid) {
        return Err(format!(
            "pid {pid} runs as uids {:?} gids {:?}, not the client's uid {} gid {}: a command runs only as its client",
            status.uids, status.gids, caller.uid, caller.gid
        ));
    }
    if exe != exe_id(caller.pid)? {
        return Err(format!(
            "pid {pid} has executed a program since its fork; only a child that waits before exec enters"
        ));
    }
    if sandboxed(mount, &from)? {
        return Err(format!(
            "pid {pid} is inside an sbx sandbox ({from}); a process cannot leave its sandbox for another"
        ));
    }
    let procs = crate::sys::openat_file(dir.as_fd(), c"cgroup.procs", libc::O_WRONLY | libc::O_CLOEXEC)
        .map_err(|e| format!("opening cgroup.procs of {target}: {e}"))?;
    (&procs).write_all(pid.to_string().as_bytes()).map_err(|e| format!("moving pid {pid} into {target}: {e}"))?;
    let now = cgroup_of(pid)?;
    if !alive(pidfd) || now != target {
        return Err(format!("pid {pid} is not in {target} after the move (in {now})"));
    }
    Ok(pid)
}

/// The path of `cg` relative to the cgroup2 mount, as `/proc/<pid>/cgroup`
/// writes it.
#[must_use]
pub fn relative(mount: &Path, cg: &Path) -> Option<String> {
    let rel: PathBuf = cg.strip_prefix(mount).ok()?.to_owned();
    Some(format!("/{}", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_cgroup() {
        let text = "Name:\tsbx-user\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t10\nPid:\t10\nPPid:\t9\n\
                    Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1001\t1000\t1000\n";
        assert_eq!(parse_status(text), Some(Status { ppid: 9, uids: [1000; 4], gids: [1000, 1001, 1000, 1000] }));
        assert_eq!(parse_status("PPid:\t1\nUid:\t1\t2\n"), None);
        assert_eq!(parse_cgroup("12:pids:/x\n0::/sbx/run-1\n"), Some("/sbx/run-1"));
        assert_eq!(parse_cgroup("1:name=systemd:/\n"), None);
        assert_eq!(relative(Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup/a/b")).as_deref(), Some("/a/b"));
    }
}
