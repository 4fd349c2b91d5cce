//! A seccomp filter for what neither the eBPF policy nor Landlock sees.
//!
//! The cgroup `sock_addr` programs judge inet connects, sends and binds.
//! Everything below bypasses them or their assumptions, so the sandboxed
//! command loses it:
//!
//! | System call | Verdict |
//! |---|---|
//! | `socket(domain, ..)` | `AF_UNIX`, `AF_INET`, `AF_INET6` allowed; any other family (`AF_PACKET`, `AF_VSOCK`, `AF_XDP`, ...) fails with `EAFNOSUPPORT` |
//! | `socket(AF_NETLINK, type, protocol)` | only `NETLINK_ROUTE` (glibc's `getifaddrs`, `ip addr`); every other netlink protocol fails with `EPROTONOSUPPORT`, as on a kernel without it (`NETLINK_SOCK_DIAG` dumps every socket of the host's network namespace, `NETLINK_AUDIT`, `NETLINK_KOBJECT_UEVENT`, ...) |
//! | `setrlimit(RLIMIT_CORE, ..)`, `prlimit64(.., RLIMIT_CORE, new, NULL)` | return 0 and change nothing: `run` sets a hard limit of 1, which already means "no core" (see below); with `old` also given, `EPERM` |
//! | `socketpair(domain, ..)` | only `AF_UNIX`; otherwise `EAFNOSUPPORT` |
//! | `bpf` | `EPERM` |
//! | `io_uring_setup`, `io_uring_enter`, `io_uring_register` | `EPERM`: `io_uring` is disabled, so its socket operations cannot sidestep the hooks |
//! | `unshare(flags)`, `clone(flags, ..)` with any `CLONE_NEW*` flag | `EPERM`: no new user, network, mount, ... namespaces |
//! | `clone3` | `ENOSYS`: its flags live in memory a filter cannot read, and libc falls back to `clone` on `ENOSYS` |
//! | `setns` | `EPERM` |
//! | `ioctl(fd, TIOCSTI or TIOCLINUX, ..)` | `EPERM`: no typing into the user's terminal, whose shell would run it outside the sandbox |
//! | `ptrace`, `process_vm_readv`, `process_vm_writev`, `pidfd_getfd` | `EPERM`: no reaching into processes outside the sandbox |
//! | `add_key`, `request_key`, `keyctl` | `EPERM`: key upcalls run helpers outside the sandbox (the kernel DNS resolver among them) |
//! | `mount`, `umount2`, `pivot_root`, `open_tree`, `open_tree_attr`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr` | `EPERM` |
//! | `chmod`, `fchmod`, `fchmodat`, `fchmodat2`, `mknod`, `mknodat`, `creat`, and `open`/`openat` with `O_CREAT` or `O_TMPFILE`, whose mode has `S_ISUID` or `S_ISGID` | `EPERM`: no set-user-ID or set-group-ID file (a program that runs as the sandbox's identity, outside the sandbox, for whoever starts it; Landlock does not govern modes) |
//! | `openat2` | `ENOSYS`: its mode lives in memory a filter cannot read; libc and runtimes fall back to `openat` |
//! | anything else | allowed |
//!
//! # Core dumps
//! `run` gives the command a hard `RLIMIT_CORE` of 1 byte. A file core needs
//! at least a page, so none is written; and when `core_pattern` pipes cores
//! to a helper (`|/usr/lib/systemd/systemd-coredump ...`, apport), the
//! kernel ignores the limit except for the value 1, which it reserves for
//! crashing helpers and answers with "`RLIMIT_CORE` is set to 1, aborting
//! core" (`coredump_pipe()` in fs/coredump.c). That helper runs as root
//! outside the sandbox and parses a core whose contents the sandbox
//! controls. A limit of 0 would not stop it, and an unprivileged process may
//! lower its hard limit, so the filter keeps the command from changing
//! `RLIMIT_CORE` at all. It pretends success rather than failing, because
//! programs that lower it to 0 (test harnesses, `ulimit -c 0`) often treat a
//! failure as fatal, and what they asked for (no core) already holds.
//!
//! The filter first checks `seccomp_data.arch` and kills the process on a
//! mismatch (an `x86_64` process calling the i386 table through `int 0x80`,
//! where `socketcall` would hide the socket family), and on `x86_64` returns
//! `ENOSYS` for x32 system calls (`nr | __X32_SYSCALL_BIT`), which share
//! the `x86_64` audit arch but would not match any number below.
//!
//! # 64-bit arguments
//! The filter reads only the low 32 bits of each argument it inspects
//! (offset 16 + 8i on these little-endian targets). That is exact here:
//! `socket`/`socketpair` take `int domain` and `int protocol`, and
//! `setrlimit`/`prlimit64` an `unsigned int resource`, so the kernel itself
//! ignores the high half; `prlimit64`'s `new` pointer is tested whole (both
//! halves); `unshare` and `clone` take `unsigned long` flags, but
//! every `CLONE_NEW*` bit is in the low half, and a bit test on the word
//! holding those bits sees exactly what the kernel sees.
//!
//! Supported on `x86_64` and little-endian `aarch64`; [`build`] fails
//! elsewhere so the caller can fail closed.

use std::{fmt, io};

/// Why the filter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter has no system call table for this architecture.
    #[error("the seccomp filter is not implemented for {arch}; sbx supports x86_64 and aarch64")]
    UnsupportedArch {
        /// The architecture sbx was built for.
        arch: &'static str,
    },
    /// The program could not be assembled: a bug in this module.
    #[error("internal error: the seccomp program does not assemble: {0}")]
    Assemble(&'static str),
}

/// A built filter, ready to be applied between fork and exec.
///
/// Holds only plain data, so it is `Send + Sync` and can be moved into a
/// `Command::pre_exec` closure.
pub struct SeccompFilter {
    program: Vec<libc::sock_filter>,
}

impl fmt::Debug for SeccompFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeccompFilter").field("instructions", &self.program.len()).finish()
    }
}

/// Builds the filter for the architecture sbx was compiled for.
pub fn build() -> Result<SeccompFilter, SeccompError> {
    #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little")))]
    {
        program::build().map(|program| SeccompFilter { program })
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little"))))]
    {
        Err(SeccompError::UnsupportedArch { arch: std::env::consts::ARCH })
    }
}

impl SeccompFilter {
    /// Sets `PR_SET_NO_NEW_PRIVS` and installs the filter on the calling
    /// thread (flags 0: no `TSYNC`, as the child between fork and exec has
    /// one thread).
    ///
    /// Async-signal-safe and allocation-free: two system calls on data
    /// built by [`build`], so it may run in a `Command::pre_exec` closure.
    pub fn apply(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            // `program::build` checks the length against BPF_MAXINSNS (4096).
            len: u16::try_from(self.program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            filter: self.program.as_ptr().cast_mut(),
        };
        let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: prctl(2) with integer arguments only, passed as unsigned
        // long because the kernel rejects garbage in the upper halves.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mode = libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER);
        // SAFETY: `prog` points at `self.program`, which outlives the call;
        // the kernel copies the program before returning and never writes it.
        if unsafe { libc::syscall(libc::SYS_seccomp, mode, zero, &raw const prog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The classic-BPF instructions, for inspection and tests.
    #[must_use]
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

/// The audit architecture the filters expect (`seccomp_data.arch`).
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little")))]
pub(crate) const fn audit_arch() -> u32 {
    program::arch::AUDIT_ARCH
}

/// No filter is built for other architectures ([`build`] fails first).
#[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little"))))]
pub(crate) const fn audit_arch() -> u32 {
    0
}

/// `struct seccomp_data` offsets (include/uapi/linux/seccomp.h).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (`args[i]` is a `u64` at 16 + 8i; these
/// targets are little-endian, so the low half comes first).
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// `BPF_MAXINSNS` (`include/uapi/linux/bpf_common.h`).
const BPF_MAXINSNS: usize = 4096;

/// `SECCOMP_RET_ERRNO` with `errno` in the data bits.
#[expect(clippy::cast_sign_loss, reason = "errno values are small and positive")]
const fn ret_errno(errno: libc::c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

/// A `c_int` flag or constant as the `u32` the filter compares.
#[expect(clippy::cast_sign_loss, reason = "the constants used are non-negative")]
const fn k(v: libc::c_int) -> u32 {
    v as u32
}

/// The `CLONE_NEW*` flags `unshare` must not see.
const UNSHARE_DENIED: u32 = k(libc::CLONE_NEWUSER
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWTIME);

/// The same for `clone`, whose low byte (`CSIGNAL`) is the exit signal:
/// `CLONE_NEWTIME` (0x80) shares that byte, so `clone` cannot request it
/// (only `unshare` and `clone3` can) and testing it would misjudge the
/// signal.
const CLONE_DENIED: u32 = UNSHARE_DENIED & !0xff;

/// Socket families `socket(2)` may create.
/// `TIOCSTI` and `TIOCLINUX` (same values on `x86_64` and `aarch64`).
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;

const ALLOWED_FAMILIES: [u32; 3] = [k(libc::AF_UNIX), k(libc::AF_INET), k(libc::AF_INET6)];

/// The only netlink protocol `socket(AF_NETLINK, ..)` may open.
const ALLOWED_NETLINK: u32 = k(libc::NETLINK_ROUTE);

/// The mode bits no file the command creates or changes may get.
const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// The `open` flags that make it create a file with the mode argument
/// (`O_TMPFILE` without the `O_DIRECTORY` it includes).
const CREATING: u32 = k(libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY));

/// `RLIMIT_CORE` as the filter compares it.
#[allow(clippy::cast_sign_loss, clippy::unnecessary_cast, reason = "a u32 on glibc, an i32 on musl; the value is 4")]
const RLIMIT_CORE: u32 = libc::RLIMIT_CORE as u32;

/// Offset of the high 32 bits of argument `i`.
const fn off_arg_hi(i: u32) -> u32 {
    off_arg_lo(i) + 4
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little")))]
mod program {
    use super::{
        k, off_arg_hi, off_arg_lo, ret_errno, SeccompError, ALLOWED_FAMILIES, ALLOWED_NETLINK, BPF_MAXINSNS,
        CLONE_DENIED, CREATING, OFF_ARCH, OFF_NR, RLIMIT_CORE, SET_ID_BITS, UNSHARE_DENIED,
    };

    /// Per-architecture constants.
    #[cfg(target_arch = "x86_64")]
    pub(super) mod arch {
        /// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`
        /// (include/uapi/linux/audit.h).
        pub(in super::super) const AUDIT_ARCH: u32 = 0xC000_003E;
        /// `__X32_SYSCALL_BIT`: x32 calls arrive with this audit arch and
        /// the bit set in the number (arch/x86/include/uapi/asm/unistd.h).
        pub(in super::super) const X32_SYSCALL_BIT: Option<u32> = Some(0x4000_0000);
    }

    /// Per-architecture constants.
    #[cfg(target_arch = "aarch64")]
    pub(super) mod arch {
        /// `AUDIT_ARCH_AARCH64`: `EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
        pub(in super::super) const AUDIT_ARCH: u32 = 0xC000_00B7;
        /// aarch64 has no second table under the same audit arch.
        pub(in super::super) const X32_SYSCALL_BIT: Option<u32> = None;
    }

    /// `open_tree_attr` (Linux 6.15); numbers from 424 up are the same on
    /// every architecture, and libc 0.2 does not name this one yet.
    const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

    /// A system call number as the filter sees it.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "system call numbers are small and non-negative"
    )]
    const fn nr(n: libc::c_long) -> u32 {
        n as u32
    }

    /// System calls that fail with `EPERM`, whatever their arguments.
    pub(super) const DENIED_EPERM: [(&str, u32); 22] = [
        // Reaching into processes outside the sandbox, which the policy
        // does not cover (Landlock confines ptrace only when it has a
        // domain, which older kernels without rules do not create).
        ("ptrace", nr(libc::SYS_ptrace)),
        ("process_vm_readv", nr(libc::SYS_process_vm_readv)),
        ("process_vm_writev", nr(libc::SYS_process_vm_writev)),
        ("pidfd_getfd", nr(libc::SYS_pidfd_getfd)),
        // The kernel's key upcalls run /sbin/request-key outside the
        // sandbox (a DNS resolver among them).
        ("request_key", nr(libc::SYS_request_key)),
        ("add_key", nr(libc::SYS_add_key)),
        ("bpf", nr(libc::SYS_bpf)),
        ("io_uring_setup", nr(libc::SYS_io_uring_setup)),
        ("io_uring_enter", nr(libc::SYS_io_uring_enter)),
        ("io_uring_register", nr(libc::SYS_io_uring_register)),
        ("setns", nr(libc::SYS_setns)),
        ("mount", nr(libc::SYS_mount)),
        ("umount2", nr(libc::SYS_umount2)),
        ("pivot_root", nr(libc::SYS_pivot_root)),
        ("open_tree", nr(libc::SYS_open_tree)),
        ("open_tree_attr", nr(SYS_OPEN_TREE_ATTR)),
        ("move_mount", nr(libc::SYS_move_mount)),
        ("fsopen", nr(libc::SYS_fsopen)),
        ("fsconfig", nr(libc::SYS_fsconfig)),
        ("fsmount", nr(libc::SYS_fsmount)),
        ("fspick", nr(libc::SYS_fspick)),
        ("mount_setattr", nr(libc::SYS_mount_setattr)),
    ];

    /// System calls with a mode argument (its index) that must carry no
    /// set-ID bit.
    #[cfg(target_arch = "x86_64")]
    pub(super) const MODE_ARG: [(&str, u32, u32); 7] = [
        ("chmod", nr(libc::SYS_chmod), 1),
        ("fchmod", nr(libc::SYS_fchmod), 1),
        ("creat", nr(libc::SYS_creat), 1),
        ("mknod", nr(libc::SYS_mknod), 1),
        ("fchmodat", nr(libc::SYS_fchmodat), 2),
        ("fchmodat2", nr(libc::SYS_fchmodat2), 2),
        ("mknodat", nr(libc::SYS_mknodat), 2),
    ];
    /// System calls with a mode argument (its index) that must carry no
    /// set-ID bit.
    #[cfg(target_arch = "aarch64")]
    pub(super) const MODE_ARG: [(&str, u32, u32); 4] = [
        ("fchmod", nr(libc::SYS_fchmod), 1),
        ("fchmodat", nr(libc::SYS_fchmodat), 2),
        ("fchmodat2", nr(libc::SYS_fchmodat2), 2),
        ("mknodat", nr(libc::SYS_mknodat), 2),
    ];
    /// `open`-like calls: (name, number, index of the flags, index of the
    /// mode, which counts only when the flags create a file).
    #[cfg(target_arch = "x86_64")]
    pub(super) const OPEN_ARGS: [(&str, u32, u32, u32); 2] =
        [("open", nr(libc::SYS_open), 1, 2), ("openat", nr(libc::SYS_openat), 2, 3)];
    /// `open`-like calls: (name, number, index of the flags, index of the
    /// mode, which counts only when the flags create a file).
    #[cfg(target_arch = "aarch64")]
    pub(super) const OPEN_ARGS: [(&str, u32, u32, u32); 1] = [("openat", nr(libc::SYS_openat), 2, 3)];
    pub(super) const SYS_OPENAT2: u32 = nr(libc::SYS_openat2);

    pub(super) const SYS_SOCKET: u32 = nr(libc::SYS_socket);
    pub(super) const SYS_IOCTL: u32 = nr(libc::SYS_ioctl);
    pub(super) const SYS_KEYCTL: u32 = nr(libc::SYS_keyctl);
    pub(super) const SYS_SOCKETPAIR: u32 = nr(libc::SYS_socketpair);
    pub(super) const SYS_UNSHARE: u32 = nr(libc::SYS_unshare);
    pub(super) const SYS_CLONE: u32 = nr(libc::SYS_clone);
    pub(super) const SYS_CLONE3: u32 = nr(libc::SYS_clone3);
    pub(super) const SYS_SETRLIMIT: u32 = nr(libc::SYS_setrlimit);
    pub(super) const SYS_PRLIMIT64: u32 = nr(libc::SYS_prlimit64);

    /// A jump target, resolved when the program is finished.
    #[derive(Clone, Copy)]
    struct Label(usize);

    enum Insn {
        Stmt(libc::sock_filter),
        /// Conditional jump; `None` falls through to the next instruction.
        Jump {
            code: u16,
            k: u32,
            jt: Option<Label>,
            jf: Option<Label>,
        },
    }

    /// A tiny assembler: forward jumps to named labels, checked offsets.
    #[derive(Default)]
    struct Asm {
        insns: Vec<Insn>,
        labels: Vec<Option<usize>>,
    }

    #[expect(clippy::cast_possible_truncation, reason = "BPF opcode constants fit u16")]
    const fn op(v: u32) -> u16 {
        v as u16
    }
    const LD_ABS: u16 = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
    const RET_K: u16 = op(libc::BPF_RET | libc::BPF_K);
    const JEQ_K: u16 = op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
    const JGE_K: u16 = op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K);
    const JSET_K: u16 = op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K);

    impl Asm {
        fn label(&mut self) -> Label {
            self.labels.push(None);
            Label(self.labels.len() - 1)
        }
        fn bind(&mut self, l: Label) {
            self.labels[l.0] = Some(self.insns.len());
        }
        fn stmt(&mut self, code: u16, k: u32) {
            self.insns.push(Insn::Stmt(libc::sock_filter { code, jt: 0, jf: 0, k }));
        }
        fn load(&mut self, offset: u32) {
            self.stmt(LD_ABS, offset);
        }
        fn ret(&mut self, verdict: u32) {
            self.stmt(RET_K, verdict);
        }
        fn jump(&mut self, code: u16, k: u32, jt: Option<Label>, jf: Option<Label>) {
            self.insns.push(Insn::Jump { code, k, jt, jf });
        }
        /// `if A == k goto target`.
        fn jeq(&mut self, k: u32, target: Label) {
            self.jump(JEQ_K, k, Some(target), None);
        }
        fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
            let Self { insns, labels } = self;
            let offset = |pc: usize, target: Option<Label>| -> Result<u8, SeccompError> {
                let Some(Label(l)) = target else { return Ok(0) };
                let to = labels[l].ok_or(SeccompError::Assemble("a label is never bound"))?;
                // Classic BPF only jumps forward, by at most 255.
                to.checked_sub(pc + 1)
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or(SeccompError::Assemble("a jump is backwards or longer than 255"))
            };
            let program = insns
                .into_iter()
                .enumerate()
                .map(|(pc, insn)| match insn {
                    Insn::Stmt(s) => Ok(s),
                    Insn::Jump { code, k, jt, jf } => {
                        Ok(libc::sock_filter { code, jt: offset(pc, jt)?, jf: offset(pc, jf)?, k })
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            if program.len() > BPF_MAXINSNS {
                return Err(SeccompError::Assemble("the program is longer than BPF_MAXINSNS"));
            }
            Ok(program)
        }
    }

    /// The program; see the module documentation for what it decides.
    pub(super) fn build() -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut a = Asm::default();
        let (kill, allow, eperm, enosys) = (a.label(), a.label(), a.label(), a.label());
        let (socket, socketpair, unshare, clone) = (a.label(), a.label(), a.label(), a.label());
        let (ioctl, netlink, setrlimit, prlimit, pretend) = (a.label(), a.label(), a.label(), a.label(), a.label());

        // Wrong table: kill, as nothing below would mean anything.
        a.load(OFF_ARCH);
        a.jump(JEQ_K, arch::AUDIT_ARCH, None, Some(kill));
        a.load(OFF_NR);
        if let Some(bit) = arch::X32_SYSCALL_BIT {
            a.jump(JGE_K, bit, Some(enosys), None);
        }
        a.jeq(SYS_SOCKET, socket);
        a.jeq(SYS_SOCKETPAIR, socketpair);
        a.jeq(SYS_UNSHARE, unshare);
        a.jeq(SYS_CLONE, clone);
        a.jeq(SYS_CLONE3, enosys);
        a.jeq(SYS_IOCTL, ioctl);
        a.jeq(SYS_KEYCTL, eperm);
        a.jeq(SYS_SETRLIMIT, setrlimit);
        a.jeq(SYS_PRLIMIT64, prlimit);
        for (_, n) in &DENIED_EPERM {
            a.jeq(*n, eperm);
        }
        // One mode check per argument index (1 to 3).
        let mode_at = [a.label(), a.label(), a.label()];
        let mode_label = |i: u32| mode_at[usize::try_from(i - 1).expect("small")];
        for (_, n, i) in &MODE_ARG {
            a.jeq(*n, mode_label(*i));
        }
        let opens: Vec<Label> = OPEN_ARGS.iter().map(|_| a.label()).collect();
        for ((_, n, _, _), l) in OPEN_ARGS.iter().zip(&opens) {
            a.jeq(*n, *l);
        }
        a.jeq(SYS_OPENAT2, enosys);
        a.ret(libc::SECCOMP_RET_ALLOW);

        // A creating open's mode, like the mode of chmod and mknod: no
        // set-ID bit (all `unsigned int` or `int`: the low half).
        for ((_, _, flags, mode), l) in OPEN_ARGS.iter().zip(&opens) {
            a.bind(*l);
            a.load(off_arg_lo(*flags));
            a.jump(JSET_K, CREATING, Some(mode_label(*mode)), Some(allow));
        }
        for (i, l) in (1..=3).zip(mode_at) {
            a.bind(l);
            a.load(off_arg_lo(i));
            a.jump(JSET_K, SET_ID_BITS, Some(eperm), Some(allow));
        }

        // socket(int domain, int type, int protocol): `int`, so the kernel
        // ignores the high half and so may we.
        a.bind(socket);
        a.load(off_arg_lo(0));
        for family in ALLOWED_FAMILIES {
            a.jeq(family, allow);
        }
        a.jeq(k(libc::AF_NETLINK), netlink);
        a.ret(ret_errno(libc::EAFNOSUPPORT));

        // socket(AF_NETLINK, type, int protocol).
        a.bind(netlink);
        a.load(off_arg_lo(2));
        a.jeq(ALLOWED_NETLINK, allow);
        a.ret(ret_errno(libc::EPROTONOSUPPORT));

        // setrlimit(unsigned int resource, const struct rlimit *).
        a.bind(setrlimit);
        a.load(off_arg_lo(0));
        a.jump(JEQ_K, RLIMIT_CORE, Some(pretend), Some(allow));
        // prlimit64(pid, unsigned int resource, new, old): reading the
        // limit (new == NULL) is fine.
        a.bind(prlimit);
        a.load(off_arg_lo(1));
        a.jump(JEQ_K, RLIMIT_CORE, None, Some(allow));
        let sets = a.label();
        a.load(off_arg_lo(2));
        a.jump(JEQ_K, 0, None, Some(sets));
        a.load(off_arg_hi(2));
        a.jump(JEQ_K, 0, Some(allow), None);
        a.bind(sets);
        // With `old` asked for too, pretending would leave it unwritten.
        a.load(off_arg_lo(3));
        a.jump(JEQ_K, 0, None, Some(eperm));
        a.load(off_arg_hi(3));
        a.jump(JEQ_K, 0, Some(pretend), Some(eperm));

        a.bind(socketpair);
        a.load(off_arg_lo(0));
        a.jeq(k(libc::AF_UNIX), allow);
        a.ret(ret_errno(libc::EAFNOSUPPORT));

        // unshare(unsigned long flags), clone(unsigned long flags, ...):
        // every CLONE_NEW* bit is in the low half.
        // ioctl(fd, unsigned long request, ...): TIOCSTI pushes input into
        // the terminal, which the user's shell runs outside the sandbox
        // after sbx exits; TIOCLINUX can paste console selections the same
        // way. Request numbers fit the low half.
        a.bind(ioctl);
        a.load(off_arg_lo(1));
        a.jeq(super::TIOCSTI, eperm);
        a.jeq(super::TIOCLINUX, eperm);
        a.ret(libc::SECCOMP_RET_ALLOW);

        a.bind(unshare);
        a.load(off_arg_lo(0));
        a.jump(JSET_K, UNSHARE_DENIED, Some(eperm), Some(allow));
        a.bind(clone);
        a.load(off_arg_lo(0));
        a.jump(JSET_K, CLONE_DENIED, Some(eperm), Some(allow));

        a.bind(allow);
        a.ret(libc::SECCOMP_RET_ALLOW);
        a.bind(eperm);
        a.ret(ret_errno(libc::EPERM));
        a.bind(enosys);
        a.ret(ret_errno(libc::ENOSYS));
        a.bind(pretend);
        a.ret(ret_errno(0));
        a.bind(kill);
        a.ret(libc::SECCOMP_RET_KILL_PROCESS);
        a.finish()
    }
}

#[cfg(all(test, any(target_arch = "x86_64", all(target_arch = "aarch64", target_endian = "little"))))]
mod tests {
    use super::program::{
        arch, DENIED_EPERM, MODE_ARG, OPEN_ARGS, SYS_CLONE, SYS_CLONE3, SYS_IOCTL, SYS_KEYCTL, SYS_OPENAT2,
        SYS_PRLIMIT64, SYS_SETRLIMIT, SYS_SOCKET, SYS_SOCKETPAIR, SYS_UNSHARE,
    };
    use super::*;
    use crate::harden::testutil::{errno_if_failed, in_child, Outcome};

    /// Runs a classic-BPF program over a `seccomp_data`, supporting the
    /// instructions the builder emits; panics on anything else, so a
    /// change in the builder cannot go untested.
    fn interpret(program: &[libc::sock_filter], data: &libc::seccomp_data) -> u32 {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&data.nr.to_ne_bytes());
        bytes[4..8].copy_from_slice(&data.arch.to_ne_bytes());
        bytes[8..16].copy_from_slice(&data.instruction_pointer.to_ne_bytes());
        for (i, arg) in data.args.iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = program.get(pc).expect("the program runs off its end");
            let ins = u32::from(insn.code);
            let jump = |taken: bool| pc + 1 + usize::from(if taken { insn.jt } else { insn.jf });
            pc = match ins {
                x if x == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = usize::try_from(insn.k).unwrap();
                    acc = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
                    pc + 1
                }
                x if x == libc::BPF_RET | libc::BPF_K => return insn.k,
                x if x == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => jump(acc == insn.k),
                x if x == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => jump(acc >= insn.k),
                x if x == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => jump(acc & insn.k != 0),
                other => panic!("the interpreter does not know opcode {other:#x}"),
            };
        }
    }

    fn data(nr: u32, args: [u64; 6]) -> libc::seccomp_data {
        libc::seccomp_data {
            nr: i32::from_ne_bytes(nr.to_ne_bytes()),
            arch: arch::AUDIT_ARCH,
            instruction_pointer: 0,
            args,
        }
    }

    fn verdict(nr: u32, arg0: u64) -> u32 {
        let filter = build().expect("build");
        interpret(filter.instructions(), &data(nr, [arg0, 1, 0, 0, 0, 0]))
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = ret_errno(libc::EPERM);
    const ENOSYS: u32 = ret_errno(libc::ENOSYS);
    const EAFNOSUPPORT: u32 = ret_errno(libc::EAFNOSUPPORT);

    fn family(f: libc::c_int) -> u64 {
        u64::from(k(f))
    }

    #[test]
    fn socket_families() {
        let cases = [
            (libc::AF_UNIX, ALLOW),
            (libc::AF_INET, ALLOW),
            (libc::AF_INET6, ALLOW),
            (libc::AF_NETLINK, ALLOW),
            (libc::AF_PACKET, EAFNOSUPPORT),
            (libc::AF_VSOCK, EAFNOSUPPORT),
            (libc::AF_XDP, EAFNOSUPPORT),
            (libc::AF_BLUETOOTH, EAFNOSUPPORT),
            (libc::AF_ALG, EAFNOSUPPORT),
            (libc::AF_UNSPEC, EAFNOSUPPORT),
        ];
        for (f, want) in cases {
            assert_eq!(verdict(SYS_SOCKET, family(f)), want, "socket({f})");
        }
    }

    #[test]
    fn netlink_only_route() {
        let filter = build().expect("build");
        let socket = |family: u64, protocol: u64| {
            interpret(
                filter.instructions(),
                &data(SYS_SOCKET, [family, u64::from(k(libc::SOCK_RAW)), protocol, 0, 0, 0]),
            )
        };
        let netlink = family(libc::AF_NETLINK);
        assert_eq!(socket(netlink, u64::from(k(libc::NETLINK_ROUTE))), ALLOW);
        // The kernel reads `int protocol`: a high half does not matter.
        assert_eq!(socket(netlink, 1 << 32), ALLOW);
        let eproto = ret_errno(libc::EPROTONOSUPPORT);
        for p in [
            libc::NETLINK_SOCK_DIAG,
            libc::NETLINK_AUDIT,
            libc::NETLINK_KOBJECT_UEVENT,
            libc::NETLINK_NETFILTER,
            libc::NETLINK_XFRM,
            libc::NETLINK_GENERIC,
            libc::NETLINK_CONNECTOR,
            31,
        ] {
            assert_eq!(socket(netlink, u64::from(k(p))), eproto, "netlink protocol {p}");
        }
        // Protocol numbers of other families are not netlink's.
        assert_eq!(socket(family(libc::AF_INET), u64::from(k(libc::NETLINK_SOCK_DIAG))), ALLOW);
    }

    #[test]
    fn core_limit_cannot_be_changed() {
        let filter = build().expect("build");
        let call = |nr: u32, args: [u64; 6]| interpret(filter.instructions(), &data(nr, args));
        let core = u64::from(RLIMIT_CORE);
        let pretend = ret_errno(0);
        assert_eq!(call(SYS_SETRLIMIT, [core, 0x1000, 0, 0, 0, 0]), pretend);
        assert_eq!(call(SYS_SETRLIMIT, [(1 << 32) | core, 0x1000, 0, 0, 0, 0]), pretend);
        // RLIMIT_NOFILE (7; an i32 for musl, a u32 for glibc).
        assert_eq!(call(SYS_SETRLIMIT, [u64::from(RLIMIT_CORE + 3), 0x1000, 0, 0, 0, 0]), ALLOW);
        // prlimit64(pid, resource, new, old).
        assert_eq!(call(SYS_PRLIMIT64, [0, core, 0, 0x1000, 0, 0]), ALLOW, "reading");
        assert_eq!(call(SYS_PRLIMIT64, [0, core, 0x1000, 0, 0, 0]), pretend, "setting");
        assert_eq!(call(SYS_PRLIMIT64, [0, core, 1 << 40, 0, 0, 0]), pretend, "a pointer above 4 GiB");
        assert_eq!(call(SYS_PRLIMIT64, [0, core, 0x1000, 0x2000, 0, 0]), EPERM, "setting and reading");
        assert_eq!(call(SYS_PRLIMIT64, [0, core, 0x1000, 1 << 40, 0, 0]), EPERM);
        assert_eq!(call(SYS_PRLIMIT64, [1234, core, 0x1000, 0, 0, 0]), pretend, "another process");
        assert_eq!(call(SYS_PRLIMIT64, [0, 7, 0x1000, 0x2000, 0, 0]), ALLOW, "RLIMIT_NOFILE");
    }

    #[test]
    fn socket_family_high_half_is_ignored_like_the_kernel_does() {
        // The kernel truncates `int domain`; so does the filter.
        assert_eq!(verdict(SYS_SOCKET, (1 << 32) | family(libc::AF_PACKET)), EAFNOSUPPORT);
        assert_eq!(verdict(SYS_SOCKET, (1 << 32) | family(libc::AF_INET)), ALLOW);
    }

    #[test]
    fn socketpair_only_unix() {
        assert_eq!(verdict(SYS_SOCKETPAIR, family(libc::AF_UNIX)), ALLOW);
        for f in [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, libc::AF_PACKET, libc::AF_VSOCK] {
            assert_eq!(verdict(SYS_SOCKETPAIR, family(f)), EAFNOSUPPORT, "socketpair({f})");
        }
    }

    #[test]
    fn namespaces() {
        let each = [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
        ];
        for flag in each {
            let flags = u64::from(k(flag));
            assert_eq!(verdict(SYS_UNSHARE, flags), EPERM, "unshare({flag:#x})");
            assert_eq!(verdict(SYS_CLONE, flags | u64::from(k(libc::SIGCHLD))), EPERM, "clone({flag:#x})");
            // Other flags alongside do not hide it; nor do high bits.
            assert_eq!(verdict(SYS_UNSHARE, flags | u64::from(k(libc::CLONE_FILES)) | (1 << 40)), EPERM);
        }
        assert_eq!(verdict(SYS_UNSHARE, u64::from(k(libc::CLONE_NEWTIME))), EPERM);
        // Harmless flags pass, as does fork-like and thread-like clone.
        assert_eq!(verdict(SYS_UNSHARE, u64::from(k(libc::CLONE_FILES | libc::CLONE_FS))), ALLOW);
        assert_eq!(verdict(SYS_UNSHARE, 0), ALLOW);
        assert_eq!(verdict(SYS_CLONE, u64::from(k(libc::SIGCHLD))), ALLOW);
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        assert_eq!(verdict(SYS_CLONE, u64::from(k(thread))), ALLOW);
        // clone's low byte is the exit signal, not CLONE_NEWTIME.
        assert_eq!(verdict(SYS_CLONE, 0x80), ALLOW);
        assert_eq!(verdict(SYS_CLONE3, 0), ENOSYS);
    }

    #[test]
    fn no_set_id_file_can_be_made() {
        let filter = build().expect("build");
        let call = |n: u32, at: u32, mode: u64, flags: Option<(u32, u64)>| {
            let mut args = [3, 0x1000, 0, 0, 0, 0];
            args[usize::try_from(at).unwrap()] = mode;
            if let Some((i, f)) = flags {
                args[usize::try_from(i).unwrap()] = f;
            }
            interpret(filter.instructions(), &data(n, args))
        };
        for (name, n, at) in &MODE_ARG {
            for (mode, want) in [(0o755, ALLOW), (0o1777, ALLOW), (0o4755, EPERM), (0o2755, EPERM), (0o106_755, EPERM)]
            {
                assert_eq!(call(*n, *at, mode, None), want, "{name} mode {mode:o}");
            }
        }
        let creating = u64::from(k(libc::O_CREAT | libc::O_WRONLY));
        let tmpfile = u64::from(k(libc::O_TMPFILE | libc::O_RDWR));
        for (name, n, flags, at) in &OPEN_ARGS {
            assert_eq!(call(*n, *at, 0o4755, Some((*flags, creating))), EPERM, "{name} O_CREAT 4755");
            assert_eq!(call(*n, *at, 0o2700, Some((*flags, tmpfile))), EPERM, "{name} O_TMPFILE 2700");
            assert_eq!(call(*n, *at, 0o755, Some((*flags, creating))), ALLOW, "{name} O_CREAT 755");
            // Without O_CREAT the mode is not used (and may be anything).
            assert_eq!(call(*n, *at, 0o4755, Some((*flags, u64::from(k(libc::O_RDONLY))))), ALLOW, "{name} read");
        }
        assert_eq!(call(SYS_OPENAT2, 2, 0, None), ENOSYS, "openat2");
    }

    #[test]
    fn denied_calls() {
        for (name, n) in &DENIED_EPERM {
            assert_eq!(verdict(*n, 0), EPERM, "{name}");
        }
        assert_eq!(verdict(SYS_KEYCTL, 0), EPERM, "keyctl");
    }

    #[test]
    fn terminal_injection_ioctls_are_refused() {
        let filter = build().expect("build");
        let ioctl = |request: u64| interpret(filter.instructions(), &data(SYS_IOCTL, [0, request, 0, 0, 0, 0]));
        assert_eq!(ioctl(0x5412), EPERM, "TIOCSTI");
        assert_eq!(ioctl(0x541C), EPERM, "TIOCLINUX");
        assert_eq!(ioctl(0x5401), ALLOW, "TCGETS");
        assert_eq!(ioctl(0x5413), ALLOW, "TIOCGWINSZ");
    }

    #[test]
    fn everything_else_is_allowed() {
        let denied: Vec<u32> = DENIED_EPERM.iter().map(|(_, n)| *n).collect();
        let special = [
            SYS_SOCKET,
            SYS_SOCKETPAIR,
            SYS_UNSHARE,
            SYS_CLONE,
            SYS_CLONE3,
            SYS_IOCTL,
            SYS_KEYCTL,
            SYS_SETRLIMIT,
            SYS_PRLIMIT64,
            SYS_OPENAT2,
        ];
        for n in 0..600 {
            if !denied.contains(&n) && !special.contains(&n) {
                assert_eq!(verdict(n, u64::MAX), ALLOW, "syscall {n}");
            }
        }
    }

    #[test]
    fn wrong_arch_is_killed() {
        let filter = build().expect("build");
        for other in [0x4000_0003_u32 /* AUDIT_ARCH_I386 */, 0x4000_0028 /* ARM */, 0] {
            let mut d = data(SYS_SOCKET, [family(libc::AF_INET), 0, 0, 0, 0, 0]);
            d.arch = other;
            assert_eq!(interpret(filter.instructions(), &d), libc::SECCOMP_RET_KILL_PROCESS);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_calls_are_refused() {
        assert_eq!(verdict(SYS_SOCKET | 0x4000_0000, family(libc::AF_PACKET)), ENOSYS);
        assert_eq!(verdict(u32::MAX, 0), ENOSYS);
    }

    #[test]
    fn filter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SeccompFilter>();
    }

    /// What the child probes, in report order.
    const PROBES: [&str; 21] = [
        "apply",
        "socket(AF_PACKET)",
        "socket(AF_VSOCK)",
        "socket(AF_INET, SOCK_STREAM)",
        "socket(AF_INET6, SOCK_DGRAM)",
        "socket(AF_UNIX)",
        "socket(AF_NETLINK, NETLINK_ROUTE)",
        "socket((1 << 32) | AF_PACKET)",
        "socketpair(AF_UNIX)",
        "socketpair(AF_INET)",
        "bpf",
        "io_uring_setup",
        "unshare(CLONE_NEWUSER)",
        "clone(CLONE_NEWNET | SIGCHLD)",
        "clone3",
        "mount",
        "setns",
        "socket(AF_NETLINK, NETLINK_SOCK_DIAG)",
        "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)",
        "setrlimit(RLIMIT_CORE, 0) returns 0",
        "RLIMIT_CORE unchanged (hard limit still 77)",
    ];

    /// The real filter on the running kernel, in a forked child.
    #[test]
    #[expect(clippy::too_many_lines, reason = "one probe per line, in report order")]
    fn enforced_in_a_child() {
        let filter = build().expect("build");
        let got = in_child(|out: &mut [i32; PROBES.len()]| {
            let limit = libc::rlimit { rlim_cur: 77, rlim_max: 77 };
            // SAFETY: setrlimit with a valid struct, before the filter.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const limit) };
            out[0] = match filter.apply() {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            };
            // SAFETY (whole block): raw system calls with constant
            // arguments or null pointers the kernel checks; file
            // descriptors created here are closed again.
            unsafe {
                let sock = |domain: i64, ty: libc::c_int, proto: libc::c_int| -> i32 {
                    let fd = libc::syscall(libc::SYS_socket, domain, libc::c_long::from(ty), libc::c_long::from(proto));
                    let e = errno_if_failed(fd);
                    if fd >= 0 {
                        libc::close(libc::c_int::try_from(fd).unwrap_or(-1));
                    }
                    e
                };
                out[1] = sock(libc::AF_PACKET.into(), libc::SOCK_RAW, 0);
                out[2] = sock(libc::AF_VSOCK.into(), libc::SOCK_STREAM, 0);
                out[3] = sock(libc::AF_INET.into(), libc::SOCK_STREAM, 0);
                out[4] = sock(libc::AF_INET6.into(), libc::SOCK_DGRAM, 0);
                out[5] = sock(libc::AF_UNIX.into(), libc::SOCK_STREAM, 0);
                out[6] = sock(libc::AF_NETLINK.into(), libc::SOCK_RAW, libc::NETLINK_ROUTE);
                out[7] = sock((1 << 32) | i64::from(libc::AF_PACKET), libc::SOCK_RAW, 0);
                let mut pair = [0; 2];
                let r = libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr());
                out[8] = errno_if_failed(r.into());
                if r == 0 {
                    libc::close(pair[0]);
                    libc::close(pair[1]);
                }
                out[9] =
                    errno_if_failed(libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, pair.as_mut_ptr()).into());
                // Without the filter: EFAULT/EINVAL, not EPERM (we are root).
                out[10] = errno_if_failed(libc::syscall(libc::SYS_bpf, 5, std::ptr::null::<u8>(), 0));
                out[11] = errno_if_failed(libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null::<u8>()));
                out[12] = errno_if_failed(libc::unshare(libc::CLONE_NEWUSER).into());
                let flags = libc::c_long::from(libc::CLONE_NEWNET | libc::SIGCHLD);
                let pid = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(0);
                }
                out[13] = errno_if_failed(pid);
                if pid > 0 {
                    libc::waitpid(libc::pid_t::try_from(pid).unwrap_or(-1), std::ptr::null_mut(), 0);
                }
                out[14] = errno_if_failed(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0));
                // Without the filter: ENOENT (no such mount point).
                let target = c"/nonexistent-sbx-seccomp-test";
                out[15] = errno_if_failed(
                    libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT,
                        std::ptr::null(),
                    )
                    .into(),
                );
                // Without the filter: EBADF.
                out[16] = errno_if_failed(libc::setns(-1, 0).into());
                out[17] = sock(libc::AF_NETLINK.into(), libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG);
                out[18] = sock(libc::AF_NETLINK.into(), libc::SOCK_DGRAM, libc::NETLINK_KOBJECT_UEVENT);
                let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                out[19] = errno_if_failed(libc::setrlimit(libc::RLIMIT_CORE, &raw const zero).into());
                let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::getrlimit(libc::RLIMIT_CORE, &raw mut now);
                out[20] = i32::from(now.rlim_max != 77);
            }
        });
        let got = match got {
            Outcome::Reported(v) => v,
            other => panic!("the filtered child did not report: {other:?}"),
        };
        let want = [
            0,
            libc::EAFNOSUPPORT,
            libc::EAFNOSUPPORT,
            0,
            0,
            0,
            0,
            libc::EAFNOSUPPORT,
            0,
            libc::EAFNOSUPPORT,
            libc::EPERM,
            libc::EPERM,
            libc::EPERM,
            libc::EPERM,
            libc::ENOSYS,
            libc::EPERM,
            libc::EPERM,
            libc::EPROTONOSUPPORT,
            libc::EPROTONOSUPPORT,
            0,
            0,
        ];
        let wrong: Vec<String> = PROBES
            .iter()
            .zip(got.iter().zip(want))
            .filter(|(_, (g, w))| *g != w)
            .map(|(name, (g, w))| format!("{name}: errno {g}, want {w}"))
            .collect();
        assert!(wrong.is_empty(), "under the filter:\n{}", wrong.join("\n"));
    }

    /// A 32-bit system call from a 64-bit process is killed, so the i386
    /// table (and its `socketcall`) is out of reach.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_entry_is_killed() {
        /// getpid through `int 0x80` (i386 number 20).
        fn int80_getpid() -> i64 {
            let mut rax: i64 = 20;
            // SAFETY: `int 0x80` with eax=20 is i386 getpid: no arguments,
            // no memory access. It returns in rax; r8-r11 are declared
            // clobbered because kernels before 4.17 zeroed them there.
            unsafe {
                std::arch::asm!(
                    "int 0x80",
                    inout("rax") rax => rax,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    options(nostack),
                );
            }
            rax
        }
        let filter = build().expect("build");
        // Control: without the filter the compat entry must work (it does
        // unless the kernel lacks IA32 emulation), or the test proves nothing.
        let control = in_child(|out: &mut [i32; 1]| out[0] = i32::from(int80_getpid() > 0));
        if !matches!(control, Outcome::Reported([1])) {
            eprintln!("SKIPPED i386_entry_is_killed: no i386 emulation here ({control:?})");
            return;
        }
        let got = in_child(|out: &mut [i32; 1]| {
            if filter.apply().is_ok() {
                out[0] = i32::from(int80_getpid() > 0);
            }
        });
        assert!(matches!(got, Outcome::Signalled(libc::SIGSYS)), "want death by SIGSYS, got {got:?}");
    }
}
