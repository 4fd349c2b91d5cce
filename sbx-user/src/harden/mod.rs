//! Process hardening for `run`: what the cgroup-BPF policy does not cover.
//!
//! The eBPF programs judge inet connects, sends and binds. Two kernel
//! mechanisms close the rest, both applied to the child between fork and
//! exec, after it has entered the sandbox cgroup:
//!
//! - [`landlock`]: filesystem rules (`[filesystem] read`/`write`,
//!   `--fs-read`/`--fs-write`), scoping of abstract UNIX sockets and
//!   signals (Landlock ABI 6), and TCP port rules as a second layer.
//! - [`workspace`]: the private HOME and `/tmp`, sbx's default filesystem
//!   rules (write only the working directory, HOME and `/tmp`) when the
//!   user gives none, and the paths every process needs otherwise.
//! - [`unix`]: which host pathname UNIX sockets the command may connect
//!   to, by a seccomp user-notification supervisor and a helper inside the
//!   sandbox.
//! - [`seccomp`]: a classic-BPF filter for what no LSM hook here sees:
//!   socket families other than UNIX, inet and netlink (`AF_PACKET`,
//!   `AF_VSOCK`, ...), `bpf(2)`, `io_uring`, new namespaces and mounts.
//!
//! Both split the work the same way: everything that allocates, opens
//! files or may fail with a useful message runs in the parent
//! ([`seccomp::build`], [`landlock::prepare`]); the child only makes the
//! final system calls ([`seccomp::SeccompFilter::apply`],
//! [`landlock::Prepared::restrict_self`]), which are async-signal-safe and
//! do not allocate, as `Command::pre_exec` requires.
//!
//! Order in the child: enter the cgroup, make the mounts, load the seccomp
//! filter (after the mounts, which it forbids; before the gate, while the
//! runner still attaches the policy: every call after it, the gate's read,
//! the start-up proof's socket and connect, `landlock_restrict_self`, the
//! UNIX socket helper's fork and listener, is one the filter allows), wait
//! at the gate, prove the hooks fire, then Landlock (after the proof, whose
//! connect its TCP rules would refuse), then exec.
//! Both set `PR_SET_NO_NEW_PRIVS`, so the command cannot regain privileges
//! through set-user-ID programs.
//!
//! # Tests
//! The builders are unit-tested as pure functions (the seccomp program is
//! run through a small classic-BPF interpreter). The real mechanisms are
//! tested by forking a child, restricting it, and reporting the errno of
//! each probe back to the parent through a pipe. These need no privileges.
//! Tests that need a newer Landlock ABI than the kernel has say so on
//! stderr and pass, unless `SBX_TEST_LANDLOCK_ABI=<n>` demands at least
//! ABI `n`, in which case a kernel below it fails the test.

pub mod landlock;
pub mod seccomp;
pub mod unix;
pub mod workspace;

#[cfg(test)]
pub(crate) mod testutil {
    //! Fork-based test harness shared by the hardening tests.

    use std::io::{self, Read as _};
    use std::os::fd::{FromRawFd as _, OwnedFd};

    /// How a forked child ended.
    #[derive(Debug)]
    #[expect(dead_code, reason = "the fields are read through Debug in failure messages")]
    pub(crate) enum Outcome<const N: usize> {
        /// The child reported `N` values and exited 0.
        Reported([i32; N]),
        /// The child was killed by this signal.
        Signalled(i32),
        /// Anything else: exit status and how many bytes it reported.
        Other { status: i32, bytes: usize },
    }

    impl<const N: usize> Outcome<N> {
        /// The reported values; panics with the outcome otherwise.
        pub(crate) fn values(self) -> [i32; N] {
            match self {
                Self::Reported(v) => v,
                other => panic!("child did not report: {other:?}"),
            }
        }
    }

    /// The errno of the last failed call, or 0 when `ret` is not negative.
    ///
    /// Async-signal-safe: reads errno, allocates nothing.
    pub(crate) fn errno_if_failed(ret: i64) -> i32 {
        if ret < 0 {
            io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    }

    /// Runs `f` in a forked child and returns what it wrote into its array.
    ///
    /// `f` runs after `fork` in a copy of a multi-threaded process, so it
    /// must only make async-signal-safe calls: raw system calls on values
    /// prepared by the caller, no allocation, no locks.
    pub(crate) fn in_child<const N: usize>(f: impl FnOnce(&mut [i32; N])) -> Outcome<N> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
        // SAFETY: fork(2); the child only runs `f` and async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let mut out = [0i32; N];
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut out))).is_ok();
            let len = std::mem::size_of_val(&out);
            // SAFETY: `out` is `len` readable bytes; `_exit` never returns
            // and skips the harness's atexit handlers.
            unsafe {
                if ok && usize::try_from(libc::write(fds[1], out.as_ptr().cast(), len)) == Ok(len) {
                    libc::_exit(0);
                }
                libc::_exit(101);
            }
        }
        // SAFETY: both fds came from pipe2 above and are owned here only.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(write_end);
        let mut bytes = Vec::new();
        std::fs::File::from(read_end).read_to_end(&mut bytes).expect("reading the child's report");
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is writable.
        assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid, "waitpid");
        if libc::WIFSIGNALED(status) {
            return Outcome::Signalled(libc::WTERMSIG(status));
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 && bytes.len() == N * 4 {
            let mut values = [0i32; N];
            for (v, chunk) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = i32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
            }
            return Outcome::Reported(values);
        }
        Outcome::Other { status, bytes: bytes.len() }
    }

    /// Whether a test needing Landlock ABI `needed` can run here. When it
    /// cannot, says so on stderr; fails instead if `SBX_TEST_LANDLOCK_ABI`
    /// demands at least that ABI.
    pub(crate) fn landlock_abi_at_least(needed: u32, test: &str) -> bool {
        let have = super::landlock::kernel_abi().unwrap_or(0);
        if have >= needed {
            return true;
        }
        let demanded = std::env::var("SBX_TEST_LANDLOCK_ABI")
            .ok()
            .map(|v| v.parse::<u32>().expect("SBX_TEST_LANDLOCK_ABI is a number"));
        assert!(
            demanded.is_none_or(|d| d < needed),
            "{test}: SBX_TEST_LANDLOCK_ABI={} but the kernel has Landlock ABI {have}",
            demanded.unwrap_or(0)
        );
        eprintln!("SKIPPED {test}: needs Landlock ABI {needed}, the kernel has {have}");
        false
    }
}
