//! What `run` does to the child between `fork` and `exec`, beyond entering
//! the cgroup: a private mount namespace in which the cgroup filesystems,
//! bpffs, `/sys` and `/proc/sys` are read-only; an optional switch to
//! another uid/gid; dropping every capability; a hard `RLIMIT_CORE` of 1;
//! marking inherited file descriptors close-on-exec; `no_new_privs`.
//!
//! Before any of that, [`check_stdio`] refuses sockets handed in as
//! stdin, stdout or stderr that the policy never judged.
//!
//! Everything is computed in the parent ([`Confinement::prepare`]); the
//! child side ([`Confinement::apply`]) only makes system calls on data
//! prepared in advance, with no allocation, as code between `fork` and
//! `exec` must.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::PathBuf};

/// The target identity for `--user UID[:GID]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id (defaults to the uid).
    pub gid: u32,
}

/// Parses `UID[:GID]` (numeric).
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    let num = |v: &str, what: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("--user `{s}`: {what} `{v}` is not a number; give UID[:GID], e.g. 65534:65534"))
    };
    if let Some((u, g)) = s.split_once(':') {
        Ok(Identity { uid: num(u, "uid")?, gid: num(g, "gid")? })
    } else {
        let uid = num(s, "uid")?;
        Ok(Identity { uid, gid: uid })
    }
}

/// A standard descriptor `run` will not hand to the command.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} (fd {fd}) is {what}: a socket made outside the sandbox was never judged by its policy, \
     so the command could use it to reach what the policy denies.\n\
     Hint: give the command a pipe, a file or a terminal instead, or pass --allow-stdio-sockets \
     if handing it this socket is intended (inetd-style activation)"
)]
pub struct StdioSocketError {
    /// 0, 1 or 2.
    pub fd: i32,
    /// `stdin`, `stdout` or `stderr`.
    pub name: &'static str,
    /// What kind of socket it is, e.g. "a listening `AF_UNIX` socket".
    pub what: String,
}

/// Whether a socket on a standard descriptor may be passed to the
/// command; `None` when it may, else what is wrong with it.
///
/// Allowed: a non-listening `AF_UNIX` socket (a journald stream, a
/// `socketpair` from a supervisor): the command can make those itself,
/// and what it can reach over them is the same as over its own. Refused:
/// any `AF_INET`/`AF_INET6` socket (connected outside the sandbox, or
/// able to send where the hooks never look), any listening socket (it
/// accepts connections the policy never judged), and every other family
/// (`AF_NETLINK`, `AF_PACKET`, `AF_VSOCK`, ...), which the seccomp filter
/// would not let the command create.
#[must_use]
pub fn judge_stdio_socket(domain: i32, listening: bool) -> Option<String> {
    let family = match domain {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        libc::AF_VSOCK => "AF_VSOCK",
        _ => "",
    };
    // Every name starts with a vowel sound, so the article is always "an".
    let family = if family.is_empty() { format!("address family {domain}") } else { family.to_owned() };
    match (domain, listening) {
        (libc::AF_UNIX, false) => None,
        (_, true) => Some(format!("a listening {family} socket")),
        (libc::AF_INET | libc::AF_INET6, false) => Some(format!("an {family} socket")),
        (_, false) => Some(format!("an {family} socket, a family the sandbox may not create")),
    }
}

/// Refuses sockets on stdin, stdout and stderr that [`judge_stdio_socket`]
/// refuses, unless `allow` (`--allow-stdio-sockets`). Closed descriptors
/// and anything that is not a socket (terminals, pipes, files) pass.
///
/// The child inherits exactly these descriptors (they are duplicated at
/// fork, with nothing run in between that could replace them), so
/// checking them in the parent checks what the command gets.
pub fn check_stdio(allow: bool) -> Result<(), StdioSocketError> {
    if allow {
        return Ok(());
    }
    for (fd, name) in [(0, "stdin"), (1, "stdout"), (2, "stderr")] {
        // SAFETY: fstat on a descriptor number into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable and outlives the call.
        if unsafe { libc::fstat(fd, &raw mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        let opt = |name: libc::c_int| -> i32 {
            let mut v: libc::c_int = -1;
            let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
            // SAFETY: getsockopt into an int-sized buffer whose size is passed.
            let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut v).cast(), &raw mut len) };
            if rc == 0 {
                v
            } else {
                -1
            }
        };
        let (domain, listening) = (opt(libc::SO_DOMAIN), opt(libc::SO_ACCEPTCONN));
        // An unknown answer is refused: fail closed.
        let verdict = if domain < 0 || listening < 0 {
            Some("a socket whose family cannot be read".to_owned())
        } else {
            judge_stdio_socket(domain, listening != 0)
        };
        if let Some(what) = verdict {
            return Err(StdioSocketError { fd, name, what });
        }
    }
    Ok(())
}

/// Child-side setup, prepared in the parent.
#[derive(Debug)]
pub struct Confinement {
    /// Mount points made read-only (recursively) in the child's namespace.
    read_only: Vec<CString>,
    /// Paths bind-mounted onto themselves first so they can be made
    /// read-only (they are not mount points of their own).
    bind_first: Vec<CString>,
    identity: Option<Identity>,
    /// Descriptors above 2 that stay open across exec, sorted.
    keep_fds: Vec<u32>,
    /// The runner's pid, for the parent-death check after a uid change.
    parent: libc::pid_t,
}

/// Filesystem types whose mounts the sandbox must never write to.
const PROTECTED_FS: [&str; 3] = ["cgroup2", "cgroup", "bpf"];

impl Confinement {
    /// Computes the setup: which mounts to protect (from
    /// `/proc/self/mountinfo`), the identity, and the descriptors to keep.
    ///
    /// `protect` are further paths (files or directories) made read-only in
    /// the child, such as sbx's own state directory and binary, which a
    /// command running as uid 0 would otherwise own.
    pub fn prepare(identity: Option<Identity>, keep_fds: &[u32], protect: &[PathBuf]) -> io::Result<Self> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut ro: Vec<PathBuf> = vec![PathBuf::from("/sys")];
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fstype = right.split_whitespace().next().unwrap_or("");
            if PROTECTED_FS.contains(&fstype) {
                if let Some(mp) = left.split_whitespace().nth(4) {
                    let mp = PathBuf::from(mp.replace("\\040", " "));
                    if !mp.starts_with("/sys") {
                        ro.push(mp);
                    }
                }
            }
        }
        let c = |p: &PathBuf| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        let read_only = ro.iter().map(c).collect::<io::Result<Vec<_>>>()?;
        let mut bind_first = vec![CString::new("/proc/sys").expect("literal")];
        for p in protect.iter().filter(|p| p.exists()) {
            bind_first.push(c(p)?);
        }
        for &fd in keep_fds {
            // SAFETY: F_GETFD on an arbitrary number only queries flags.
            if unsafe { libc::fcntl(i32::try_from(fd).unwrap_or(-1), libc::F_GETFD) } < 0 {
                return Err(io::Error::other(format!("--keep-fd {fd}: no such open file descriptor")));
            }
        }
        let mut keep_fds: Vec<u32> = keep_fds.iter().copied().filter(|&f| f > 2).collect();
        keep_fds.sort_unstable();
        keep_fds.dedup();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        Ok(Self { read_only, bind_first, identity, keep_fds, parent })
    }

    /// Applies the setup in the child. Async-signal-safe: system calls on
    /// prepared data only.
    pub fn apply(&self) -> io::Result<()> {
        let Self { read_only, bind_first, identity, keep_fds, parent } = self;
        let check = |rc: libc::c_long| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY (whole block): plain system calls with pointers to
        // NUL-terminated strings and structs that outlive each call.
        unsafe {
            // A private mount namespace: the remounts below are the child's
            // alone, and without capabilities it cannot undo them. Private,
            // not slave: a mount the host adds later must not appear here
            // writable.
            check(libc::unshare(libc::CLONE_NEWNS).into())?;
            check(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            for p in bind_first {
                check(
                    libc::mount(
                        p.as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )
                    .into(),
                )?;
            }
            let attr = MountAttr { attr_set: libc::MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
            for p in read_only.iter().chain(bind_first) {
                check(libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    libc::AT_RECURSIVE,
                    std::ptr::from_ref(&attr),
                    std::mem::size_of::<MountAttr>(),
                ))?;
            }
            // Drop the bounding set (so exec cannot regain capabilities,
            // even as uid 0) and the ambient set first: dropping needs
            // CAP_SETPCAP, which the uid switch below takes away. A
            // capability the kernel does not know (EINVAL) ends the loop;
            // any other failure fails the spawn.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    if *libc::__errno_location() == libc::EINVAL {
                        break;
                    }
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0).into())?;
            // A hard core limit of 1 byte, set while still privileged.
            // Not 0: a `core_pattern` pipe helper (systemd-coredump,
            // apport) runs as root outside the sandbox on a core the
            // command controls, and the kernel ignores RLIMIT_CORE for
            // pipes except the value 1, which aborts the dump; a file core
            // needs at least a page, so 1 writes none either. The seccomp
            // filter keeps the command from lowering it to 0.
            let core = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
            check(libc::setrlimit(libc::RLIMIT_CORE, &raw const core).into())?;
            if let Some(id) = identity {
                let gid = id.gid;
                check(libc::setgroups(1, &raw const gid).into())?;
                check(libc::setresgid(gid, gid, gid).into())?;
                check(libc::setresuid(id.uid, id.uid, id.uid).into())?;
                // A uid change clears the parent-death signal: set it again,
                // and make sure the parent did not die in between.
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into())?;
                if libc::getppid() != *parent {
                    return Err(io::Error::other("sbx-user exited while the command was starting"));
                }
            }
            // Then the permitted, effective and inheritable sets.
            let header = CapHeader { version: 0x2008_0522, pid: 0 };
            let data = [CapData::default(); 2];
            check(libc::syscall(libc::SYS_capset, std::ptr::from_ref(&header), data.as_ptr()))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            // Every inherited descriptor above stderr closes at exec,
            // except those kept on purpose. CLOEXEC rather than closing, so
            // std's own exec-error pipe keeps working.
            // CLOSE_RANGE_CLOEXEC is 4: the cast cannot wrap.
            #[expect(clippy::cast_possible_wrap, reason = "a small flag constant")]
            let cloexec = libc::CLOSE_RANGE_CLOEXEC as i32;
            let mut first = 3u32;
            for &fd in keep_fds {
                if fd > first {
                    check(libc::close_range(first, fd - 1, cloexec).into())?;
                }
                first = fd + 1;
            }
            check(libc::close_range(first, u32::MAX, cloexec).into())?;
        }
        Ok(())
    }
}

/// `struct mount_attr` (include/uapi/linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_sockets() {
        let cases = [
            (libc::AF_UNIX, false, None),
            (libc::AF_UNIX, true, Some("a listening AF_UNIX socket")),
            (libc::AF_INET, false, Some("an AF_INET socket")),
            (libc::AF_INET6, false, Some("an AF_INET6 socket")),
            (libc::AF_INET6, true, Some("a listening AF_INET6 socket")),
            (libc::AF_NETLINK, false, Some("an AF_NETLINK socket, a family the sandbox may not create")),
            (libc::AF_VSOCK, true, Some("a listening AF_VSOCK socket")),
            (99, false, Some("an address family 99 socket, a family the sandbox may not create")),
        ];
        for (domain, listening, want) in cases {
            assert_eq!(judge_stdio_socket(domain, listening).as_deref(), want, "{domain} {listening}");
        }
    }

    #[test]
    fn parses_identities() {
        assert_eq!(parse_identity("1000"), Ok(Identity { uid: 1000, gid: 1000 }));
        assert_eq!(parse_identity("65534:100"), Ok(Identity { uid: 65534, gid: 100 }));
        assert!(parse_identity("nobody").unwrap_err().contains("not a number"));
        assert!(parse_identity("1:x").unwrap_err().contains("gid"));
    }
}
