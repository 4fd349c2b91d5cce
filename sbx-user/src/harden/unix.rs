//! Pathname UNIX sockets for `run`: which host sockets the command may
//! connect to (`[network] unix`, `--unix`).
//!
//! # Why this mechanism
//! Nothing the cgroup `sock_addr` programs see covers `AF_UNIX`, and
//! Landlock before ABI 9 has no right for connecting to a socket file. A
//! mount layout that hides the host's socket directories is a deny list:
//! a socket in any directory it does not know (a home, `/var/lib/...`, one
//! a daemon creates after the start) stays reachable. A seccomp filter
//! cannot read the socket family behind a descriptor or the address behind
//! a pointer, so a user-notification supervisor that sees only `AF_UNIX`
//! calls needs the sandbox's `AF_UNIX` sockets to be recognisable, and
//! one that answers "continue" for the others races: another thread can
//! put a UNIX socket at that descriptor number, or rewrite the address,
//! between the check and the kernel's own read.
//!
//! So the sandbox never holds a UNIX socket the kernel would connect:
//!
//! - `socket(AF_UNIX, SOCK_STREAM | SOCK_SEQPACKET)` is answered by the
//!   supervisor with a *parked* socket: one end of a socketpair whose
//!   other end is closed. The kernel refuses to connect it (`EISCONN`) and
//!   to listen on it (`EINVAL`). `SOCK_DGRAM` (and `SOCK_RAW`, which is
//!   the same for `AF_UNIX`) fail with `EPERM`, in `socket` and
//!   `socketpair`: a datagram socket sends to any address given to
//!   `sendto`, connected or not, and `sendto`/`sendmsg` are a hot path the
//!   filter must not send to a supervisor.
//! - `connect` and `bind` go to the supervisor. On a parked socket it
//!   carries them out (below) and puts the result in the descriptor's
//!   place (`SECCOMP_IOCTL_NOTIF_ADDFD`); on anything else it lets the
//!   kernel go on. That "continue" is safe because of the first point: a
//!   descriptor swapped in meanwhile is parked, connected, or listening,
//!   and the kernel's connect on it fails. Inet calls pay one round trip
//!   to the supervisor (`connect`, `bind`), nothing else.
//! - The supervisor's connect is done by a *helper*: a process forked by
//!   the command's own start-up, after the identity switch, Landlock and
//!   the base seccomp filter, so it resolves paths in the command's mount
//!   namespace, with its uid, its Landlock domain (abstract-socket scope
//!   included) and its cgroup, and what a host daemon reads with
//!   `SO_PEERCRED` is a sandboxed process, never root. The helper opens
//!   the path relative to the caller's working directory (`O_PATH`,
//!   following symbolic links as `connect` does), the supervisor judges the
//!   inode it got (device and inode number), and the helper connects to
//!   exactly that inode through `/proc/self/fd/N`: no name is looked up
//!   twice, so `..`, symbolic links, relative paths, hard links and renames
//!   all end at the inode that was judged.
//! - Allowed: the inodes of the `unix` list, opened when `run` starts and
//!   kept open (so the inode number is not reused), or again when the
//!   connect happens (a daemon that made its socket anew); and the
//!   sandbox's own sockets. Those are made by the helper too (`bind` on a
//!   parked socket binds and listens at once), so a connection the helper
//!   makes to an own socket has the helper as its peer (`SO_PEERCRED`):
//!   that is checked after connecting, and a connection to anything else
//!   is closed and refused.
//!
//! If the supervisor or the helper is gone, calls fail: the kernel answers
//! `ENOSYS` to a notification nobody listens for, and the supervisor
//! `ECONNREFUSED` when the helper does not answer.
//!
//! # Differences a program may notice
//! A stream socket bound to a name listens at once (binding a client
//! socket before `connect` fails with `EINVAL` at the connect); socket
//! options set before `connect` are copied to the connected socket only
//! for the common ones; `connect` never blocks on a full backlog
//! (`EAGAIN`); UNIX datagram sockets cannot be made; `getpeername` on a
//! socket not yet connected succeeds with an empty name.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use crate::policy::{Mode, Unix};

/// Why the UNIX socket policy cannot be enforced.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// A kernel feature the supervisor needs is missing.
    #[error("the kernel cannot enforce `unix`: {0}\nHint: seccomp user notification with SECCOMP_IOCTL_NOTIF_ADDFD and pidfd_getfd need Linux 5.14 or newer")]
    Unsupported(String),
    /// A socket of the `unix` list is missing or not a socket.
    #[error("{origin}: unix socket `{}`: {why}", path.display())]
    Path {
        /// The path as written.
        path: PathBuf,
        /// Where it was written.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// Setting up the supervisor failed.
    #[error("cannot set up the UNIX socket supervisor: {0}")]
    Io(#[from] io::Error),
}

/// `struct sockaddr_un` is 110 bytes: family, then `sun_path[108]`.
const SUN_LEN: usize = std::mem::size_of::<libc::sockaddr_un>();
/// Offset of `sun_path`.
const PATH_OFF: usize = std::mem::size_of::<libc::sa_family_t>();

/// Helper operations.
const OP_RESOLVE: u32 = 1;
const OP_CONNECT_FD: u32 = 2;
const OP_CONNECT_ADDR: u32 = 3;
const OP_BIND_PATH: u32 = 4;
const OP_BIND_ADDR: u32 = 5;

/// A request to the helper; descriptors travel alongside (`SCM_RIGHTS`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    op: u32,
    /// `SOCK_STREAM` or `SOCK_SEQPACKET`.
    sock_type: u32,
    /// Bytes of `addr` used.
    addr_len: u32,
    _pad: u32,
    addr: [u8; SUN_LEN],
    _pad2: [u8; 2],
}

/// The helper's answer: 0 or an errno, its pid, and up to two descriptors.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Reply {
    errno: i32,
    pid: i32,
    nfds: u32,
    _pad: u32,
}

/// The notification filter: `socket`/`socketpair`/`connect`/`bind` as the
/// module documentation says, everything else allowed (the base filter
/// judges the rest).
fn program() -> Vec<libc::sock_filter> {
    // Jump offsets count instructions after the jump; built as a list of
    // (instruction, labels) and resolved below.
    #[derive(Clone, Copy)]
    enum L {
        Notify,
        Eperm,
        Allow,
        Socket,
        Pair,
        Next,
    }
    enum I {
        Ld(u32),
        And(u32),
        Jeq(u32, L, L),
        Ret(u32),
        Label(L),
    }
    let k = libc::c_int::cast_unsigned;
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "small syscall numbers")]
    let nr = |n: libc::c_long| n as u32;
    let arch = super::seccomp::audit_arch();
    let arg_lo = |i: u32| 16 + 8 * i;
    let ret_eperm = libc::SECCOMP_RET_ERRNO | k(libc::EPERM);
    let body = vec![
        I::Ld(4),
        I::Jeq(arch, L::Next, L::Allow),
        I::Ld(0),
        I::Jeq(nr(libc::SYS_connect), L::Notify, L::Next),
        I::Jeq(nr(libc::SYS_bind), L::Notify, L::Next),
        I::Jeq(nr(libc::SYS_socket), L::Socket, L::Next),
        I::Jeq(nr(libc::SYS_socketpair), L::Pair, L::Allow),
        I::Label(L::Socket),
        I::Ld(arg_lo(0)),
        I::Jeq(k(libc::AF_UNIX), L::Next, L::Allow),
        I::Ld(arg_lo(1)),
        I::And(0xf),
        I::Jeq(k(libc::SOCK_STREAM), L::Notify, L::Next),
        I::Jeq(k(libc::SOCK_SEQPACKET), L::Notify, L::Next),
        I::Jeq(k(libc::SOCK_DGRAM), L::Eperm, L::Next),
        I::Jeq(k(libc::SOCK_RAW), L::Eperm, L::Allow),
        I::Label(L::Pair),
        I::Ld(arg_lo(0)),
        I::Jeq(k(libc::AF_UNIX), L::Next, L::Allow),
        I::Ld(arg_lo(1)),
        I::And(0xf),
        I::Jeq(k(libc::SOCK_DGRAM), L::Eperm, L::Next),
        I::Jeq(k(libc::SOCK_RAW), L::Eperm, L::Allow),
        I::Label(L::Notify),
        I::Ret(libc::SECCOMP_RET_USER_NOTIF),
        I::Label(L::Eperm),
        I::Ret(ret_eperm),
        I::Label(L::Allow),
        I::Ret(libc::SECCOMP_RET_ALLOW),
    ];
    // Positions of labels, counting only real instructions.
    let mut pos = std::collections::HashMap::new();
    let mut count = 0usize;
    for insn in &body {
        match insn {
            I::Label(label) => {
                pos.insert(*label as u8, count);
            }
            _ => count += 1,
        }
    }
    #[expect(clippy::cast_possible_truncation, reason = "BPF opcodes fit u16")]
    let op = |v: u32| v as u16;
    let mut out = Vec::with_capacity(count);
    for insn in &body {
        let here = out.len();
        let rel = |label: L| -> u8 {
            if matches!(label, L::Next) {
                return 0;
            }
            let target = pos[&(label as u8)];
            u8::try_from(target - here - 1).expect("short program")
        };
        out.push(match *insn {
            I::Label(_) => continue,
            I::Ld(off) => {
                libc::sock_filter { code: op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS), jt: 0, jf: 0, k: off }
            }
            I::And(v) => {
                libc::sock_filter { code: op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K), jt: 0, jf: 0, k: v }
            }
            I::Jeq(value, yes, no) => libc::sock_filter {
                code: op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
                jt: rel(yes),
                jf: rel(no),
                k: value,
            },
            I::Ret(v) => libc::sock_filter { code: op(libc::BPF_RET | libc::BPF_K), jt: 0, jf: 0, k: v },
        });
    }
    out
}

/// An allowed socket: its inode, kept open.
#[derive(Debug)]
struct Allowed {
    path: PathBuf,
    dev: u64,
    ino: u64,
    _pin: OwnedFd,
}

/// The supervisor and helper, prepared in the parent before the fork.
#[derive(Debug)]
pub struct Guard {
    program: Vec<libc::sock_filter>,
    allowed: Vec<Allowed>,
    /// The supervisor's end of the helper channel, and the helper's.
    helper: (OwnedFd, OwnedFd),
    /// Where the command's start-up sends the notification listener, and
    /// the end it writes to.
    listener: (OwnedFd, OwnedFd),
    audit: bool,
    log: bool,
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair into a two-int array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Checks that the kernel has what the supervisor needs.
fn probe() -> Result<(), UnixError> {
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !actions.split_whitespace().any(|a| a == "user_notif") {
        return Err(UnixError::Unsupported("seccomp has no user notification (user_notif)".into()));
    }
    // SAFETY: pidfd_open on our own pid; the result is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if pidfd < 0 {
        return Err(UnixError::Unsupported(format!("pidfd_open: {}", io::Error::last_os_error())));
    }
    let pidfd = i32::try_from(pidfd).map_err(|_| UnixError::Unsupported("pidfd_open".into()))?;
    // SAFETY: pidfd_getfd of our own stderr; the copy is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 2, 0) };
    let err = io::Error::last_os_error();
    // SAFETY: closing descriptors this function opened.
    unsafe {
        libc::close(pidfd);
        if fd >= 0 {
            libc::close(i32::try_from(fd).unwrap_or(-1));
        }
    }
    if fd < 0 && err.raw_os_error() == Some(libc::ENOSYS) {
        return Err(UnixError::Unsupported("pidfd_getfd (Linux 5.6) is missing".into()));
    }
    // ADDFD with SECCOMP_ADDFD_FLAG_SEND is Linux 5.14.
    // SAFETY: uname into a zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is writable.
    unsafe { libc::uname(&raw mut u) };
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (5, 14) {
        return Err(UnixError::Unsupported(format!("Linux {release} is older than 5.14")));
    }
    Ok(())
}

impl Guard {
    /// Prepares enforcement of `unix`; `None` for [`Unix::Any`].
    pub fn prepare(unix: &Unix, mode: Mode, log: bool) -> Result<Option<Self>, UnixError> {
        if !unix.restricts() {
            return Ok(None);
        }
        probe()?;
        let mut allowed = Vec::new();
        if let Unix::Paths(list) = unix {
            for p in list {
                let err = |why: String| UnixError::Path { path: p.path.clone(), origin: p.origin.to_string(), why };
                let c = CString::new(p.path.as_os_str().as_bytes()).map_err(|_| err("NUL byte".into()))?;
                // SAFETY: open with a NUL-terminated path; the fd is owned below.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(err(format!(
                        "{}; list sockets that exist when `run` starts",
                        io::Error::last_os_error()
                    )));
                }
                // SAFETY: `fd` was just opened and is owned here only.
                let pin = unsafe { OwnedFd::from_raw_fd(fd) };
                let (dev, ino, mode) = fstat(pin.as_raw_fd())?;
                if mode & libc::S_IFMT != libc::S_IFSOCK {
                    return Err(err("not a socket".into()));
                }
                allowed.push(Allowed { path: p.path.clone(), dev, ino, _pin: pin });
            }
        }
        Ok(Some(Self {
            program: program(),
            allowed,
            helper: seqpacket_pair()?,
            listener: seqpacket_pair()?,
            audit: mode == Mode::Audit,
            log,
        }))
    }

    /// The allowed host socket paths, for the mount layout (those under
    /// `/tmp` are bound into the private one).
    #[must_use]
    pub fn allowed_paths(&self) -> Vec<PathBuf> {
        self.allowed.iter().map(|a| a.path.clone()).collect()
    }

    /// What the command's start-up needs, as plain data for `pre_exec`.
    #[must_use]
    pub fn child_start(&self) -> ChildStart {
        ChildStart {
            program: self.program.clone(),
            helper_end: self.helper.1.as_raw_fd(),
            send_end: self.listener.1.as_raw_fd(),
        }
    }

    /// After the command started: receives the listener and serves
    /// notifications in a thread until [`Supervisor::stop`]. `cgroup` is
    /// the sandbox's cgroup as `/proc/PID/cgroup` names it (`/sbx/run-..`).
    pub fn supervise(self, cgroup: String) -> io::Result<Supervisor> {
        let Self { program: _, allowed, helper, listener, audit, log } = self;
        drop(helper.1);
        drop(listener.1);
        // The listener was sent before exec, so it is there by now; never
        // wait for it (the caller kills the command if it is not).
        set_timeout(listener.0.as_raw_fd(), 1);
        let mut buf = [0u8; 4];
        let (n, fds) = recv_fds(listener.0.as_raw_fd(), &mut buf)?;
        let Some(&fd) = fds.first().filter(|_| n > 0) else {
            return Err(io::Error::other("the command's start-up sent no seccomp listener"));
        };
        // SAFETY: received just now and owned here only.
        let notify = unsafe { OwnedFd::from_raw_fd(fd) };
        // Linux 6.6+: wake the supervisor on the caller's CPU, which about
        // halves the round trip an inet connect pays (best effort).
        // SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP.
        let sync_wake_up: u64 = 1;
        // SAFETY: ioctl with the flag word passed by value.
        unsafe { libc::ioctl(notify.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, sync_wake_up) };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // A helper that stops answering (the command can stop it: same
        // uid) must not hang the supervisor.
        set_timeout(helper.0.as_raw_fd(), 5);
        let mut state = State { allowed, helper: helper.0, helper_pid: 0, own: HashSet::new(), audit, log, cgroup };
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                let mut pfd = libc::pollfd { fd: notify.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll on one valid descriptor.
                let rc = unsafe { libc::poll(&raw mut pfd, 1, 100) };
                if rc <= 0 {
                    continue;
                }
                if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 && pfd.revents & libc::POLLIN == 0 {
                    return;
                }
                state.serve_one(notify.as_raw_fd());
            }
        });
        Ok(Supervisor { stop, thread })
    }
}

/// The child's part of [`Guard`]: copied into the `pre_exec` closure.
#[derive(Debug)]
pub struct ChildStart {
    program: Vec<libc::sock_filter>,
    helper_end: RawFd,
    send_end: RawFd,
}

impl ChildStart {
    /// In the command's start-up, after the base seccomp filter: forks the
    /// helper, installs the notification filter and hands its listener to
    /// the supervisor. Async-signal-safe: system calls on prepared data.
    pub fn start(&self) -> io::Result<()> {
        let Self { program, helper_end, send_end } = self;
        // SAFETY (whole block): fork, waitpid, seccomp and sendmsg with
        // pointers to locals that outlive each call. The forks are system
        // calls (`raw_fork`): this runs in a child of a raw clone, where
        // glibc's `fork` could wait on locks of threads that are not there.
        unsafe {
            let first = crate::spawn::raw_fork();
            if first < 0 {
                return Err(io::Error::last_os_error());
            }
            if first == 0 {
                // Double fork: the helper must not be a child the command
                // waits for.
                if crate::spawn::raw_fork() == 0 {
                    helper_main(*helper_end);
                }
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(first, &raw mut status, 0);
            let prog = libc::sock_fprog {
                len: u16::try_from(program.len()).unwrap_or(u16::MAX),
                filter: program.as_ptr().cast_mut(),
            };
            let listener = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const prog,
            );
            if listener < 0 {
                return Err(io::Error::last_os_error());
            }
            let listener = i32::try_from(listener).unwrap_or(-1);
            // The command must not keep the listener: it could answer its
            // own notifications.
            let sent = send_fds(*send_end, &[0u8; 4], &[listener]);
            libc::close(listener);
            sent
        }
    }
}

/// The running supervisor thread.
#[derive(Debug)]
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Supervisor {
    /// Stops serving (the command has exited).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// A receive timeout of `seconds` on socket `fd`.
fn set_timeout(fd: RawFd, seconds: u8) {
    let timeout = libc::timeval { tv_sec: seconds.into(), tv_usec: 0 };
    // SAFETY: setsockopt from a timeval whose size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
}

fn fstat(fd: RawFd) -> io::Result<(u64, u64, u32)> {
    // SAFETY: fstat into a zeroed buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    if unsafe { libc::fstat(fd, &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino, st.st_mode))
}

/// Sends `data` with descriptors. Async-signal-safe.
fn send_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // At most four descriptors: 16 bytes.
        let bytes = u32::try_from(std::mem::size_of_val(fds)).unwrap_or(u32::MAX).min(16);
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(bytes), libc::CMSG_LEN(bytes)) };
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = crate::sys::control_len(space as usize);
        // SAFETY: the control buffer (64 bytes) holds one header and up
        // to four descriptors; CMSG_FIRSTHDR points into it.
        unsafe {
            let h = libc::CMSG_FIRSTHDR(&raw const msg);
            (*h).cmsg_level = libc::SOL_SOCKET;
            (*h).cmsg_type = libc::SCM_RIGHTS;
            (*h).cmsg_len = crate::sys::control_len(len as usize);
            let data = libc::CMSG_DATA(h);
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>(), *fd);
            }
        }
    }
    // SAFETY: `msg` points at live buffers.
    if unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives data and up to four descriptors (close-on-exec).
/// Async-signal-safe: the descriptors are returned in a fixed array.
fn recv_fds_raw(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, [RawFd; 4], usize)> {
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = crate::sys::control_len(std::mem::size_of_val(&cmsg));
    // SAFETY: `msg` points at live buffers.
    let n = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = [-1; 4];
    let mut count = 0;
    // SAFETY: walking the control messages the kernel wrote into `cmsg`.
    unsafe {
        let mut h = libc::CMSG_FIRSTHDR(&raw const msg);
        while !h.is_null() {
            if (*h).cmsg_level == libc::SOL_SOCKET && (*h).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(h);
                let n = crate::sys::cmsg_payload(h) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let fd = std::ptr::read_unaligned(data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>());
                    if count < out.len() {
                        out[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            h = libc::CMSG_NXTHDR(&raw const msg, h);
        }
    }
    Ok((usize::try_from(n).unwrap_or(0), out, count))
}

fn recv_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<RawFd>)> {
    let (n, fds, count) = recv_fds_raw(sock, buf)?;
    Ok((n, fds[..count].to_vec()))
}

// ---------------------------------------------------------------------------
// The helper: runs in the sandbox, allocation-free.

/// The helper's loop; never returns.
///
/// # Safety
/// Called in a freshly forked, single-threaded child; only makes system
/// calls on stack buffers.
unsafe fn helper_main(sock: RawFd) -> ! {
    // SAFETY (whole function): raw system calls on stack buffers and
    // descriptors this process owns.
    unsafe {
        // Nothing else of the command's: std's exec-error pipe above all,
        // whose writer must close when the command execs.
        if sock > 0 {
            let _ = crate::sys::close_range(0, u32::try_from(sock - 1).unwrap_or(0), 0);
        }
        let _ = crate::sys::close_range(u32::try_from(sock + 1).unwrap_or(u32::MAX), u32::MAX, 0);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"sbx-unix".as_ptr(), 0, 0, 0);
        let pid = libc::getpid();
        loop {
            let mut req = [0u8; std::mem::size_of::<Request>()];
            let Ok((n, fds, count)) = recv_fds_raw(sock, &mut req) else { libc::_exit(0) };
            if n == 0 {
                libc::_exit(0);
            }
            let mut reply = Reply { pid, ..Reply::default() };
            let mut out = [-1; 2];
            if n == req.len() {
                let r: Request = std::ptr::read_unaligned(req.as_ptr().cast());
                match helper_do(&r, &fds[..count], &mut out) {
                    Ok(k) => reply.nfds = k,
                    Err(e) => reply.errno = e,
                }
            } else {
                reply.errno = libc::EINVAL;
            }
            for &fd in &fds[..count] {
                libc::close(fd);
            }
            let bytes: [u8; std::mem::size_of::<Reply>()] = std::mem::transmute(reply);
            let nfds = reply.nfds as usize;
            if send_fds(sock, &bytes, &out[..nfds]).is_err() {
                libc::_exit(0);
            }
            for &fd in &out[..nfds] {
                libc::close(fd);
            }
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `AF_UNIX` as `sun_family` holds it.
#[expect(clippy::cast_possible_truncation, reason = "AF_UNIX is 1")]
const FAMILY: libc::sa_family_t = libc::AF_UNIX as libc::sa_family_t;

/// A `sockaddr_un` naming `path` (shorter than `sun_path`) and its length.
fn sun(path: &[u8]) -> (libc::sockaddr_un, u32) {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = FAMILY;
    let used = path.len().min(addr.sun_path.len() - 1);
    for (slot, &byte) in addr.sun_path.iter_mut().zip(&path[..used]) {
        *slot = byte.cast_signed();
    }
    (addr, u32::try_from(PATH_OFF + used + 1).unwrap_or(0))
}

/// Writes `/proc/self/fd/N` into `buf`; returns its length. No allocation.
fn proc_self_fd(fd: RawFd, buf: &mut [u8; 32]) -> usize {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut count, mut rest) = (0, fd.unsigned_abs());
    loop {
        digits[count] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    while count > 0 {
        count -= 1;
        buf[at] = digits[count];
        at += 1;
    }
    at
}

/// A fresh UNIX socket of `sock_type`, non-blocking, close-on-exec.
fn new_socket(sock_type: i32) -> Result<RawFd, i32> {
    // SAFETY: socket(2) with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_UNIX, sock_type | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if sock < 0 {
        Err(errno())
    } else {
        Ok(sock)
    }
}

/// `rc` as a result; on failure closes `sock` and returns the errno.
fn or_close(rc: libc::c_int, sock: RawFd) -> Result<(), i32> {
    if rc == 0 {
        return Ok(());
    }
    let e = errno();
    // SAFETY: closing a descriptor this helper made.
    unsafe { libc::close(sock) };
    Err(e)
}

/// One helper operation; returns how many of `out` it filled.
/// Allocation-free, as [`helper_main`] needs.
fn helper_do(req: &Request, fds: &[RawFd], out: &mut [RawFd; 2]) -> Result<u32, i32> {
    let len = (req.addr_len as usize).min(SUN_LEN);
    // The path as the kernel reads it: up to the first NUL of sun_path.
    let mut path = [0u8; SUN_LEN - PATH_OFF + 1];
    let raw = &req.addr[PATH_OFF..len.max(PATH_OFF)];
    let plen = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    path[..plen].copy_from_slice(&raw[..plen]);
    let sock_type = i32::try_from(req.sock_type).map_err(|_| libc::EINVAL)?;
    let first_fd = || fds.first().copied().ok_or(libc::EINVAL);
    match req.op {
        OP_RESOLVE => {
            let cwd = first_fd()?;
            if plen == 0 {
                return Err(libc::ENOENT);
            }
            // SAFETY: openat with a NUL-terminated path (`path` has a
            // zero after `plen`).
            let fd = unsafe { libc::openat(cwd, path.as_ptr().cast(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(errno());
            }
            out[0] = fd;
            Ok(1)
        }
        OP_CONNECT_FD => {
            // "/proc/self/fd/N": the inode the supervisor judged.
            let mut buf = [0u8; 32];
            let n = proc_self_fd(first_fd()?, &mut buf);
            let (addr, alen) = sun(&buf[..n]);
            let sock = new_socket(sock_type)?;
            // SAFETY: connect with a sockaddr_un and its length.
            or_close(unsafe { libc::connect(sock, (&raw const addr).cast(), alen) }, sock)?;
            out[0] = sock;
            Ok(1)
        }
        OP_CONNECT_ADDR | OP_BIND_ADDR => {
            let sock = new_socket(sock_type)?;
            let alen = u32::try_from(len).unwrap_or(0);
            // SAFETY: connect/bind with the caller's address bytes, `len`
            // of them, inside `req.addr`; listen on our socket.
            let rc = unsafe {
                if req.op == OP_CONNECT_ADDR {
                    libc::connect(sock, req.addr.as_ptr().cast(), alen)
                } else if libc::bind(sock, req.addr.as_ptr().cast(), alen) == 0 {
                    libc::listen(sock, libc::SOMAXCONN)
                } else {
                    -1
                }
            };
            or_close(rc, sock)?;
            out[0] = sock;
            Ok(1)
        }
        OP_BIND_PATH => bind_path(&path[..plen], first_fd()?, sock_type, out),
        _ => Err(libc::EINVAL),
    }
}

/// Binds a new socket to `path` as the kernel would for the caller (the
/// directory resolved from its working directory `cwd`), listens, and
/// opens the file it made (`O_PATH`, not following a link).
fn bind_path(path: &[u8], cwd: RawFd, sock_type: i32, out: &mut [RawFd; 2]) -> Result<u32, i32> {
    if path.is_empty() {
        return Err(libc::ENOENT);
    }
    let (dir_end, name_start) = match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (1, 1),
        Some(at) => (at, at + 1),
        None => (0, 0),
    };
    if name_start >= path.len() {
        return Err(libc::EINVAL);
    }
    // SAFETY (whole block): dup/openat/fchdir/bind/listen on descriptors
    // this helper holds and NUL-terminated stack buffers.
    unsafe {
        let dirfd = if dir_end == 0 {
            libc::dup(cwd)
        } else {
            let mut dir = [0u8; SUN_LEN];
            dir[..dir_end].copy_from_slice(&path[..dir_end]);
            libc::openat(cwd, dir.as_ptr().cast(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        };
        if dirfd < 0 {
            return Err(errno());
        }
        // Bind by the last component from inside the directory: no
        // length limit beyond the caller's own, and no second lookup of
        // the directory.
        let entered = libc::fchdir(dirfd);
        libc::close(dirfd);
        if entered != 0 {
            return Err(errno());
        }
        let (addr, alen) = sun(&path[name_start..]);
        let sock = new_socket(sock_type)?;
        or_close(libc::bind(sock, (&raw const addr).cast(), alen), sock)?;
        or_close(libc::listen(sock, libc::SOMAXCONN), sock)?;
        let file =
            libc::openat(libc::AT_FDCWD, addr.sun_path.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC);
        out[0] = sock;
        if file >= 0 {
            out[1] = file;
            return Ok(2);
        }
        Ok(1)
    }
}

// ---------------------------------------------------------------------------
// The supervisor.

struct State {
    allowed: Vec<Allowed>,
    helper: OwnedFd,
    /// The helper's pid, from its first answer: peer of own sockets.
    helper_pid: i32,
    /// Inodes the helper bound for the sandbox, kept open.
    own: HashSet<(u64, u64)>,
    audit: bool,
    log: bool,
    /// The sandbox's cgroup, relative to the cgroup2 root.
    cgroup: String,
}

/// What to answer a notification.
enum Answer {
    /// Let the kernel run the call.
    Continue,
    /// Return this value.
    Value(i64),
    /// Fail with this errno.
    Error(i32),
    /// Already answered (`ADDFD` with `SEND`).
    Sent,
}

impl State {
    fn serve_one(&mut self, notify: RawFd) {
        // SAFETY: RECV needs a zeroed buffer.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: ioctl with a buffer of the size the request encodes.
        if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_RECV, &raw mut n) } != 0 {
            return;
        }
        let answer = self.handle(notify, &n).unwrap_or_else(|e| Answer::Error(e.raw_os_error().unwrap_or(libc::EPERM)));
        let mut resp = libc::seccomp_notif_resp { id: n.id, val: 0, error: 0, flags: 0 };
        match answer {
            Answer::Sent => return,
            Answer::Continue => resp.flags = u32::try_from(libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE).unwrap_or(1),
            Answer::Value(v) => resp.val = v,
            Answer::Error(e) => resp.error = -e,
        }
        // SAFETY: ioctl with a response struct; ENOENT (the caller was
        // interrupted or died) needs nothing.
        unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_SEND, &raw mut resp) };
    }

    fn handle(&mut self, notify: RawFd, n: &libc::seccomp_notif) -> io::Result<Answer> {
        let nr = libc::c_long::from(n.data.nr);
        let args = n.data.args;
        #[expect(clippy::cast_possible_truncation, reason = "int arguments live in the low half")]
        let low = |i: usize| (args[i] as u32).cast_signed();
        if nr == libc::SYS_socket {
            return Self::park(notify, n.id, low(1), low(2));
        }
        if nr != libc::SYS_connect && nr != libc::SYS_bind {
            return Ok(Answer::Continue);
        }
        let tid = i32::try_from(n.pid).map_err(io::Error::other)?;
        let fd = low(0);
        let Some(sock) = take_fd(tid, fd)? else { return Ok(Answer::Continue) };
        let (domain, peer) = (sockopt_int(sock.as_raw_fd(), libc::SO_DOMAIN), peer_pid(sock.as_raw_fd()));
        // SAFETY: getpid has no preconditions.
        if domain != Some(libc::AF_UNIX) || peer != Some(unsafe { libc::getpid() }) {
            // Not parked: the kernel's own call cannot connect it (see the
            // module documentation), whatever is at `fd` by then.
            return Ok(Answer::Continue);
        }
        let sock_type = sockopt_int(sock.as_raw_fd(), libc::SO_TYPE).unwrap_or(libc::SOCK_STREAM);
        let len = usize::try_from(args[2]).unwrap_or(usize::MAX);
        if !(PATH_OFF..=SUN_LEN).contains(&len) {
            return Ok(Answer::Error(libc::EINVAL));
        }
        let mut addr = [0u8; SUN_LEN];
        read_target(tid, args[1], &mut addr[..len])?;
        if !id_valid(notify, n.id) {
            return Ok(Answer::Error(libc::EINTR));
        }
        if u16::from_ne_bytes([addr[0], addr[1]]) != FAMILY {
            return Ok(Answer::Error(libc::EINVAL));
        }
        let abstract_or_auto = len == PATH_OFF || addr[PATH_OFF] == 0;
        let mut len = len;
        if !abstract_or_auto {
            // The helper would read /proc/self as itself.
            let end = addr[PATH_OFF..len].iter().position(|&b| b == 0).map_or(len, |i| PATH_OFF + i);
            if let Some(p) = for_caller(&addr[PATH_OFF..end], tid, tgid(tid).unwrap_or(tid)) {
                if PATH_OFF + p.len() >= SUN_LEN {
                    return Ok(Answer::Error(libc::ENAMETOOLONG));
                }
                addr[PATH_OFF..].fill(0);
                addr[PATH_OFF..PATH_OFF + p.len()].copy_from_slice(&p);
                len = PATH_OFF + p.len() + 1;
            }
        }
        let mut req = Request {
            op: 0,
            sock_type: u32::try_from(sock_type).unwrap_or(1),
            addr_len: u32::try_from(len).unwrap_or(0),
            _pad: 0,
            addr,
            _pad2: [0; 2],
        };
        let path = String::from_utf8_lossy(&addr[PATH_OFF..len.max(PATH_OFF)]).trim_end_matches('\0').to_owned();
        let new = match self.carry_out(nr == libc::SYS_bind, tid, &mut req, abstract_or_auto, &path)? {
            Ok(new) => new,
            Err(errno) => return Ok(Answer::Error(errno)),
        };
        // The new socket takes the parked one's place, with its file
        // status flags, descriptor flag and common options.
        // SAFETY: fcntl on descriptors owned here.
        unsafe {
            let fl = libc::fcntl(sock.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(new.as_raw_fd(), libc::F_SETFL, fl);
            }
        }
        for opt in [libc::SO_PASSCRED, libc::SO_PASSSEC] {
            if let Some(v) = sockopt_int(sock.as_raw_fd(), opt) {
                set_sockopt_int(new.as_raw_fd(), opt, v);
            }
        }
        let cloexec = fd_cloexec(tid, fd);
        let mut add = libc::seccomp_notif_addfd {
            id: n.id,
            flags: u32::try_from(libc::SECCOMP_ADDFD_FLAG_SETFD).unwrap_or(1),
            srcfd: u32::try_from(new.as_raw_fd()).unwrap_or(0),
            newfd: u32::try_from(fd).unwrap_or(0),
            newfd_flags: if cloexec { u32::try_from(libc::O_CLOEXEC).unwrap_or(0) } else { 0 },
        };
        // SAFETY: ioctl with an addfd struct naming a descriptor we own.
        if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &raw mut add) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Answer::Value(0))
    }

    /// The helper's bind or connect for a parked socket: the new socket,
    /// or the errno the caller gets.
    fn carry_out(
        &mut self,
        bind: bool,
        tid: i32,
        req: &mut Request,
        abstract_or_auto: bool,
        path: &str,
    ) -> io::Result<Result<OwnedFd, i32>> {
        let missing = || Ok(Err(libc::EIO));
        if abstract_or_auto {
            req.op = if bind { OP_BIND_ADDR } else { OP_CONNECT_ADDR };
            return self.ask(req, &[])?.0.map_or_else(missing, |s| Ok(Ok(s)));
        }
        let cwd = open_cwd(tid)?;
        if bind {
            req.op = OP_BIND_PATH;
            let (sock, file) = self.ask(req, &[cwd.as_raw_fd()])?;
            if let Some(f) = file {
                let (dev, ino, _) = fstat(f.as_raw_fd())?;
                self.own.insert((dev, ino));
            }
            return sock.map_or_else(missing, |s| Ok(Ok(s)));
        }
        req.op = OP_RESOLVE;
        let (Some(target), _) = self.ask(req, &[cwd.as_raw_fd()])? else { return missing() };
        let (dev, ino, mode) = fstat(target.as_raw_fd())?;
        if mode & libc::S_IFMT != libc::S_IFSOCK {
            return Ok(Err(libc::ECONNREFUSED));
        }
        let listed = self.allowed.iter().any(|a| {
            (a.dev, a.ino) == (dev, ino) || std::fs::metadata(&a.path).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
        });
        let own = self.own.contains(&(dev, ino));
        if !listed && !own {
            self.report(tid, path, "not in the unix list and not a socket the command bound");
            if !self.audit {
                return Ok(Err(libc::EPERM));
            }
        }
        req.op = OP_CONNECT_FD;
        let Some(conn) = self.ask(req, &[target.as_raw_fd()])?.0 else { return missing() };
        // An own inode was recorded at bind time; the peer (whoever last
        // called listen on it: the helper, or the command again) proves
        // the listener is still the sandbox's.
        if own && !listed && !self.in_sandbox(peer_pid(conn.as_raw_fd())) {
            self.report(tid, path, "the file is no longer the socket the command bound");
            if !self.audit {
                return Ok(Err(libc::EPERM));
            }
        }
        Ok(Ok(conn))
    }

    /// `socket(AF_UNIX, STREAM|SEQPACKET)`: a parked socket.
    fn park(notify: RawFd, id: u64, ty: i32, protocol: i32) -> io::Result<Answer> {
        if protocol != 0 && protocol != libc::AF_UNIX {
            return Ok(Answer::Error(libc::EPROTONOSUPPORT));
        }
        let flags = ty & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
        if ty & !(0xf | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return Ok(Answer::Error(libc::EINVAL));
        }
        let mut fds = [0; 2];
        // SAFETY: socketpair into a two-int array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                (ty & 0xf) | libc::SOCK_CLOEXEC | (flags & libc::SOCK_NONBLOCK),
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both were just created.
        let (keep, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(peer);
        let mut add = libc::seccomp_notif_addfd {
            id,
            flags: u32::try_from(libc::SECCOMP_ADDFD_FLAG_SEND).unwrap_or(2),
            srcfd: u32::try_from(keep.as_raw_fd()).unwrap_or(0),
            newfd: 0,
            newfd_flags: if flags & libc::SOCK_CLOEXEC != 0 { u32::try_from(libc::O_CLOEXEC).unwrap_or(0) } else { 0 },
        };
        // SAFETY: ioctl with an addfd struct naming a descriptor we own;
        // with SEND it also answers the call with the new number.
        if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &raw mut add) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Answer::Sent)
    }

    /// One request to the helper: its socket and second descriptor.
    fn ask(&mut self, req: &Request, fds: &[RawFd]) -> io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
        // SAFETY: Request is plain bytes.
        let bytes: [u8; std::mem::size_of::<Request>()] = unsafe { std::mem::transmute(*req) };
        let gone = |_| io::Error::from_raw_os_error(libc::ECONNREFUSED);
        send_fds(self.helper.as_raw_fd(), &bytes, fds).map_err(gone)?;
        let mut buf = [0u8; std::mem::size_of::<Reply>()];
        let (n, got) = recv_fds(self.helper.as_raw_fd(), &mut buf).map_err(gone)?;
        // SAFETY: each received descriptor is owned here from now on.
        let mut owned: Vec<OwnedFd> = got.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
        if n != buf.len() {
            log::warn!("the UNIX socket helper is gone; refusing");
            return Err(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        }
        // SAFETY: Reply is plain integers.
        let reply: Reply = unsafe { std::mem::transmute(buf) };
        self.helper_pid = reply.pid;
        if reply.errno != 0 {
            return Err(io::Error::from_raw_os_error(reply.errno));
        }
        let second = (owned.len() > 1).then(|| owned.remove(1));
        Ok((owned.into_iter().next(), second))
    }

    /// Whether `pid` is the helper or a process in the sandbox's cgroup.
    fn in_sandbox(&self, pid: Option<i32>) -> bool {
        let Some(pid) = pid.filter(|&p| p > 0) else { return false };
        if pid == self.helper_pid {
            return true;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        text.lines().filter_map(|l| l.strip_prefix("0::")).any(|cg| {
            cg == self.cgroup || cg.strip_prefix(self.cgroup.as_str()).is_some_and(|rest| rest.starts_with('/'))
        })
    }

    fn report(&self, tid: i32, path: &str, why: &str) {
        if self.log {
            let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
            let verdict = if self.audit { "audit" } else { "denied" };
            crate::diag::line(format_args!(
                "sbx: unix connect {verdict}: pid {tid} ({}) to {path}: {why}",
                comm.trim_end()
            ));
        }
    }
}

/// A path that names the caller's own `/proc` entry (`/proc/self/...`,
/// `/proc/thread-self/...`, `/dev/fd/...`), spelled with its pid, so the
/// helper resolves it as the caller would; `None` for any other path.
fn for_caller(path: &[u8], tid: i32, leader: i32) -> Option<Vec<u8>> {
    let swaps: [(&[u8], String); 3] = [
        (b"/proc/self/", format!("/proc/{leader}/")),
        (b"/proc/thread-self/", format!("/proc/{leader}/task/{tid}/")),
        (b"/dev/fd/", format!("/proc/{leader}/fd/")),
    ];
    swaps.iter().find_map(|(prefix, with)| {
        let rest = path.strip_prefix(*prefix)?;
        Some([with.as_bytes(), rest].concat())
    })
}

/// A copy of descriptor `fd` of thread `tid`; `None` if it has none there.
fn take_fd(tid: i32, fd: i32) -> io::Result<Option<OwnedFd>> {
    /// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread, not its group.
    const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;
    // SAFETY: pidfd_open on a pid; the result is owned below.
    let mut pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if pidfd < 0 {
        // SAFETY: as above, for the thread group leader.
        pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid(tid).unwrap_or(tid), 0) };
    }
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).map_err(io::Error::other)?) };
    // SAFETY: pidfd_getfd with a valid pidfd.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::EBADF) => Ok(None),
            _ => Err(io::Error::last_os_error()),
        };
    }
    // SAFETY: just received.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(i32::try_from(copy).map_err(io::Error::other)?) }))
}

fn tgid(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn open_cwd(tid: i32) -> io::Result<OwnedFd> {
    let p = CString::new(format!("/proc/{tid}/cwd")).map_err(io::Error::other)?;
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_target(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: usize::try_from(addr).unwrap_or(0) as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: reads the caller's memory into `buf`, whose size is given.
    let n = unsafe { libc::process_vm_readv(tid, &raw const local, 1, &raw const remote, 1, 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

fn id_valid(notify: RawFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: ioctl with a u64.
    unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &raw mut id) == 0 }
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt into an int-sized buffer.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &raw mut len) };
    (rc == 0).then_some(v)
}

fn set_sockopt_int(fd: RawFd, opt: libc::c_int, v: i32) {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: setsockopt from an int.
    unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const v).cast(), len) };
}

fn peer_pid(fd: RawFd) -> Option<i32> {
    // SAFETY: ucred is plain integers.
    let mut c: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).unwrap_or(12);
    // SAFETY: getsockopt into a ucred-sized buffer.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut c).cast(), &raw mut len) };
    (rc == 0).then_some(c.pid)
}

fn fd_cloexec(tid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}")).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|f| f & i64::from(libc::O_CLOEXEC) != 0)
}

/// For each allowed path under the host's `/tmp`, where it appears in the
/// private one (`tmp`): (host path, mount point to create).
#[must_use]
pub fn tmp_binds(paths: &[PathBuf], tmp: &Path) -> Vec<(PathBuf, PathBuf)> {
    paths
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix("/tmp").ok()?;
            (!rel.as_os_str().is_empty()).then(|| (p.clone(), tmp.join(rel)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the few opcodes [`program`] uses.
    fn run(prog: &[libc::sock_filter], nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&super::super::seccomp::audit_arch().to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            let class = u32::from(i.code) & 0x07;
            match class {
                0x00 => {
                    let off = i.k as usize;
                    acc = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4 bytes"));
                }
                0x04 => acc &= i.k,
                0x05 => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("opcode class {other}"),
            }
            pc += 1;
        }
    }

    #[expect(clippy::cast_sign_loss, clippy::cast_possible_truncation, reason = "test constants")]
    #[test]
    fn the_filter_sends_unix_stream_sockets_connect_and_bind_and_refuses_datagrams() {
        let p = program();
        let nr = |n: libc::c_long| n as u32;
        let a = |d: i32, t: i32| [d as u64, t as u64, 0, 0, 0, 0];
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let cases = [
            (nr(libc::SYS_socket), a(libc::AF_UNIX, libc::SOCK_STREAM), notify),
            (
                nr(libc::SYS_socket),
                a(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK),
                notify,
            ),
            (nr(libc::SYS_socket), a(libc::AF_UNIX, libc::SOCK_SEQPACKET), notify),
            (nr(libc::SYS_socket), a(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC), eperm),
            (nr(libc::SYS_socket), a(libc::AF_UNIX, libc::SOCK_RAW), eperm),
            (nr(libc::SYS_socket), a(libc::AF_INET, libc::SOCK_STREAM), allow),
            (nr(libc::SYS_socket), a(libc::AF_INET6, libc::SOCK_DGRAM), allow),
            (nr(libc::SYS_socketpair), a(libc::AF_UNIX, libc::SOCK_STREAM), allow),
            (nr(libc::SYS_socketpair), a(libc::AF_UNIX, libc::SOCK_DGRAM), eperm),
            (nr(libc::SYS_socketpair), a(libc::AF_UNIX, libc::SOCK_RAW | libc::SOCK_CLOEXEC), eperm),
            (nr(libc::SYS_connect), a(3, 0), notify),
            (nr(libc::SYS_bind), a(3, 0), notify),
            (nr(libc::SYS_sendto), a(3, 0), allow),
            (nr(libc::SYS_sendmsg), a(3, 0), allow),
            (nr(libc::SYS_getpid), a(0, 0), allow),
        ];
        for (n, args, want) in cases {
            assert_eq!(run(&p, n, args), want, "syscall {n} {args:?}");
        }
        // The high half of `int domain` is ignored by the kernel: so here.
        assert_eq!(run(&p, nr(libc::SYS_socket), [(1 << 32) | 1, 1, 0, 0, 0, 0]), notify);
    }

    #[test]
    fn the_callers_own_proc_entries_are_spelled_with_its_pid() {
        let f = |p: &str| for_caller(p.as_bytes(), 12, 10).map(|v| String::from_utf8(v).expect("utf8"));
        assert_eq!(f("/proc/self/fd/7").as_deref(), Some("/proc/10/fd/7"));
        assert_eq!(f("/proc/thread-self/fd/7").as_deref(), Some("/proc/10/task/12/fd/7"));
        assert_eq!(f("/dev/fd/3").as_deref(), Some("/proc/10/fd/3"));
        assert_eq!(f("/proc/selfish"), None);
        assert_eq!(f("/run/a.sock"), None);
    }

    #[test]
    fn allowed_sockets_under_tmp_are_bound_into_the_private_one() {
        let binds = tmp_binds(
            &[PathBuf::from("/tmp/ssh-x/agent.1"), PathBuf::from("/run/a.sock"), PathBuf::from("/tmpfoo/b")],
            Path::new("/var/tmp/sbx-run-1/tmp"),
        );
        assert_eq!(
            binds,
            [(PathBuf::from("/tmp/ssh-x/agent.1"), PathBuf::from("/var/tmp/sbx-run-1/tmp/ssh-x/agent.1"))]
        );
    }
}
