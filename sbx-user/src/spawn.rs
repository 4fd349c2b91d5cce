//! Starting `run`'s command: a raw `clone3(2)` that creates the child
//! directly inside its sandbox cgroup (`CLONE_INTO_CGROUP`, Linux 5.7),
//! a gate the child waits at while the runner puts the sandbox's policy
//! in place (so that the child's own set-up, its mount namespace above
//! all, runs on the other CPU meanwhile), an exec-error pipe, and waiting
//! for it.
//!
//! # Why not `std::process::Command`
//! With `pre_exec`, std forks and the child moves itself by writing `0` to
//! `cgroup.procs`. That write takes the cgroup threadgroup rwsem for
//! writing, which waits for an RCU grace period: 1.5 ms on an idle 2-CPU
//! VM, 10-15 ms under load, on every `run`. A child that clone3 creates in
//! the cgroup takes that rwsem for reading only, as every fork does; it
//! also never runs a single instruction outside the sandbox cgroup.
//!
//! # What the child may do
//! After a raw clone the child is a copy of a multi-threaded process that
//! glibc did not fork: glibc's locks may be held by threads that do not
//! exist in the child, its list of threads still names the parent's, and
//! its `fork()` handlers never ran. So the child code (everything `run`
//! passes as `child`) makes raw system calls and async-signal-safe calls
//! only, on data prepared before the clone, with no allocation, and none
//! of glibc's functions that walk its threads: `setresuid`, `setresgid`
//! and `setgroups` broadcast to every thread glibc knows of (see
//! [`crate::confine`], which calls the system calls directly, right for a
//! single-threaded child), and `fork` takes locks another thread may hold
//! (see [`raw_fork`]).
//!
//! # Falling back
//! A kernel before 5.7 (or a seccomp profile that refuses clone3, as some
//! container runtimes' do with `ENOSYS`) cannot create the child in the
//! cgroup. Then the child is cloned where the runner is and writes
//! `cgroup.procs` itself before anything else, as before ([`Born::Outside`]);
//! `run` says so with a warning in the log. Either way, nothing of the
//! command runs before it is in the cgroup.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    process::ExitStatus,
};

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h), Linux 5.7.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// Where the child should start.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// In the cgroup whose directory this is (`CLONE_INTO_CGROUP`).
    InCgroup(BorrowedFd<'a>),
    /// Where the runner is; the child enters its sandbox itself.
    Here,
}

/// Where the child was created, as the child code learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Born {
    /// Already inside the cgroup of [`Start::InCgroup`].
    InCgroup,
    /// Where the runner is: the child must enter its cgroup before
    /// anything else (clone3 into a cgroup was unavailable, or not asked).
    Outside,
}

/// A child process started by [`spawn`], not yet reaped.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
}

impl Child {
    /// The child's process id.
    #[must_use]
    pub fn id(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for the child to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt as _;
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child, into a local.
            if unsafe { libc::waitpid(self.pid, &raw mut status, 0) } == self.pid {
                return Ok(ExitStatus::from_raw(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// A plain `fork()` by system call, for a child of [`spawn`]'s child code
/// (glibc's `fork` would take locks that may be held by threads that do
/// not exist there). Returns 0 in the new process, its pid in the caller,
/// or -1 with `errno` set. Async-signal-safe.
///
/// # Safety
/// As for `fork` in a multi-threaded process: the new process may only
/// make async-signal-safe calls until it execs or exits.
#[must_use]
pub unsafe fn raw_fork() -> libc::pid_t {
    // `clone(SIGCHLD)` with no stack, thread ids or TLS: the argument
    // order of those differs between architectures, but all are 0.
    let flags = libc::c_ulong::try_from(libc::SIGCHLD).unwrap_or(17);
    // SAFETY: a fork-like clone; the caller keeps to what the new process
    // may do.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    libc::pid_t::try_from(pid).unwrap_or(-1)
}

/// Starts a child that runs `child` and then exits; `child` must exec the
/// command, returning only the error that stopped it. The child is given
/// its [`Gate`], which it must pass ([`Gate::wait`]) before it does what
/// only a sandbox whose policy is in place may do: the runner prepares the
/// sandbox meanwhile and then lets it through ([`Pending::release`]), or
/// ends it ([`Pending::cancel`]). The error the child returns (its
/// `errno`; an error without one arrives as `EINVAL`) is what `release`
/// returns, after reaping the child; `Ok` means the exec succeeded.
///
/// `child` is `FnMut`, called through a reference: the child never drops
/// what it captured, since freeing memory there could take a malloc lock
/// that a thread of the parent held at the clone.
///
/// # Safety
/// `child` runs after a raw clone of this multi-threaded process: it must
/// keep to the rules in the module documentation (no allocation, no
/// locks, raw or async-signal-safe system calls on data prepared before).
pub unsafe fn spawn(start: Start<'_>, mut child: impl FnMut(Born, Gate) -> io::Error) -> io::Result<Pending> {
    let (read_end, write_end) = cloexec_pipe()?;
    let (gate_r, gate_w) = cloexec_pipe()?;
    let (pid, born) = match start {
        Start::InCgroup(dir) => match clone_into(dir) {
            Ok(pid) => (pid, Born::InCgroup),
            Err(e) if unavailable(&e) => {
                log::warn!(
                    "clone3(CLONE_INTO_CGROUP) is unavailable ({e}); the command moves itself into its cgroup \
                     through cgroup.procs (Linux 5.7+ avoids that write and its RCU grace period)"
                );
                // SAFETY: the child below keeps to async-signal-safe calls.
                (check_pid(unsafe { raw_fork() })?, Born::Outside)
            }
            Err(e) => return Err(e),
        },
        // SAFETY: as above.
        Start::Here => (check_pid(unsafe { raw_fork() })?, Born::Outside),
    };
    if pid == 0 {
        drop(read_end);
        let err = child(born, Gate { read: gate_r.as_raw_fd(), write: gate_w.as_raw_fd() });
        let errno = err.raw_os_error().unwrap_or(libc::EINVAL).to_ne_bytes();
        // SAFETY: write(2) of a stack buffer and _exit(2): async-signal-safe.
        unsafe {
            libc::write(write_end.as_raw_fd(), errno.as_ptr().cast(), errno.len());
            libc::_exit(1)
        }
    }
    drop(write_end);
    drop(gate_r);
    Ok(Pending { pid, pipes: Some((read_end, gate_w)) })
}

/// The child's side of the gate it waits at: raw descriptors, used between
/// clone and exec with async-signal-safe calls only.
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    read: i32,
    write: i32,
}

impl Gate {
    /// In the child: waits until the runner lets it through. Fails with
    /// `ECANCELED` if the runner ends it instead, or is gone.
    pub fn wait(self) -> io::Result<()> {
        // SAFETY: close(2) and read(2) on inherited descriptors into a
        // stack byte.
        unsafe {
            // The runner's end: the child must not hold it, or a runner
            // that gives up could never make the gate read as closed.
            libc::close(self.write);
            let mut b = 0u8;
            let n = loop {
                let n = libc::read(self.read, (&raw mut b).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            libc::close(self.read);
            if n != 1 || b != GO {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
        }
        Ok(())
    }
}

/// The byte that opens the gate.
const GO: u8 = b'g';

/// A child started by [`spawn`] that has not yet been let through its
/// gate. Dropping it ends the child, as [`Pending::cancel`] does.
#[derive(Debug)]
pub struct Pending {
    pid: libc::pid_t,
    /// The exec-error pipe's read end (its write end closes at exec) and
    /// the gate's write end; taken by `finish`.
    pipes: Option<(OwnedFd, OwnedFd)>,
}

impl Pending {
    /// The child's process id.
    #[must_use]
    pub fn id(&self) -> libc::pid_t {
        self.pid
    }

    /// Lets the child through its gate and waits until it has exec'd the
    /// command (`Ok`) or reports the error that stopped it (then reaped).
    pub fn release(mut self) -> io::Result<Child> {
        if let Some((_, gate)) = &self.pipes {
            // SAFETY: write(2) of one byte from a static buffer. A child
            // that ended before its gate makes it fail (EPIPE): its own
            // error, read by `finish`, says why.
            unsafe { libc::write(gate.as_raw_fd(), [GO].as_ptr().cast(), 1) };
        }
        self.finish()
    }

    /// Ends the child (it never gets past its gate: only `release` opens
    /// it) and reaps it.
    pub fn cancel(self) {
        drop(self);
    }

    /// Kills the child without reaping it (its pid stays its own until
    /// [`Pending::cancel`]). It cannot have exec'd: nothing of the command
    /// runs, and a child that is stopped, or still on its way to the gate
    /// (in its mounts, or waiting for the agent), is not waited for.
    pub fn kill(&self) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Closes the gate's end (a child still at it ends there) and reads
    /// the exec-error pipe to its end.
    fn finish(&mut self) -> io::Result<Child> {
        let pid = self.pid;
        let Some((errors, gate)) = self.pipes.take() else {
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        };
        drop(gate);
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < errno.len() {
            // SAFETY: read(2) into the rest of a stack buffer.
            let n = unsafe { libc::read(errors.as_raw_fd(), errno[got..].as_mut_ptr().cast(), errno.len() - got) };
            match n {
                0 => break,
                n if n > 0 => got += n.unsigned_abs(),
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    let e = io::Error::last_os_error();
                    kill_and_reap(pid);
                    return Err(e);
                }
            }
        }
        let mut started = Child { pid };
        match got {
            // The pipe closed at exec: the command runs.
            0 => Ok(started),
            4 => {
                let _ = started.wait();
                Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
            }
            _ => {
                kill_and_reap(pid);
                Err(io::Error::other("the command's start-up sent a truncated error report"))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((errors, gate)) = self.pipes.take() {
            // Only `release` opens the gate: the child has not exec'd.
            drop(gate);
            self.kill();
            drop(errors);
            let _ = Child { pid: self.pid }.wait();
        }
    }
}

/// The errors of a clone3 that cannot create a child in a cgroup on this
/// kernel: no clone3 (before 5.3, or refused by a seccomp profile), a
/// `struct clone_args` larger than the kernel knows (`E2BIG`, before 5.7),
/// or an unknown flag (`EINVAL`).
fn unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM))
}

/// clone3 with `CLONE_INTO_CGROUP`: 0 in the child, its pid in the parent.
fn clone_into(dir: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: u64::try_from(libc::SIGCHLD).unwrap_or(17),
        cgroup: u64::try_from(dir.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a fork-like `struct clone_args` (no CLONE_VM, no
    // stack: the child continues on a copy of this stack, as after fork)
    // and its size; the caller's child code keeps to async-signal-safe calls.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, std::mem::size_of::<CloneArgs>()) };
    check_pid(libc::pid_t::try_from(pid).unwrap_or(-1))
}

fn check_pid(pid: libc::pid_t) -> io::Result<libc::pid_t> {
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill(2) of our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = Child { pid }.wait();
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_error_comes_back_and_the_child_is_reaped() {
        // SAFETY: the child code makes no call at all.
        let e = unsafe { spawn(Start::Here, |_, _| io::Error::from_raw_os_error(libc::ENOEXEC)) }
            .and_then(Pending::release)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOEXEC));
        // An error without an errno arrives as EINVAL, as std's does.
        // SAFETY: as above (the error is made before, not allocated in the child).
        let e = unsafe { spawn(Start::Here, |_, _| io::Error::from(io::ErrorKind::Other)) }
            .and_then(Pending::release)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_started_child_reports_its_exit_status() {
        let argv = [c"/bin/sh".as_ptr(), c"-c".as_ptr(), c"exit 7".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        // SAFETY: execve with prepared NUL-terminated arrays; no allocation.
        let mut child = unsafe {
            spawn(Start::Here, |_, gate| {
                if let Err(e) = gate.wait() {
                    return e;
                }
                libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                io::Error::last_os_error()
            })
        }
        .and_then(Pending::release)
        .expect("spawn");
        assert!(child.id() > 0);
        assert_eq!(child.wait().expect("wait").code(), Some(7));
    }

    #[test]
    fn a_child_cancelled_at_its_gate_never_gets_past_it() {
        let (r, w) = cloexec_pipe().expect("pipe");
        let marker = w.as_raw_fd();
        // SAFETY: the child makes raw system calls only.
        let pending = unsafe {
            spawn(Start::Here, |_, gate| {
                if let Err(e) = gate.wait() {
                    return e;
                }
                libc::write(marker, b"x".as_ptr().cast(), 1);
                io::Error::from_raw_os_error(libc::ENOEXEC)
            })
        }
        .expect("spawn");
        let pid = pending.id();
        pending.cancel();
        drop(w);
        let mut b = [0u8; 1];
        // SAFETY: read(2) into a stack buffer.
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) }, 0, "the child passed its gate");
        // SAFETY: kill(2) with signal 0 only asks whether the pid exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the cancelled child was reaped");
    }
}
