//! Landlock for `run`: filesystem rules, scopes and TCP port rules.
//!
//! One ruleset, built in the parent by [`prepare`] and enforced in the
//! child by [`Prepared::restrict_self`] just before exec:
//!
//! - Filesystem, when the user asked for rules (`[filesystem]`,
//!   `--fs-read`, `--fs-write`): every filesystem right the kernel knows is
//!   handled (denied by default); paths under `read` get read and execute
//!   (`ReadFile | ReadDir | Execute`), paths under `write` get every right
//!   (read, write, create, remove, truncate, device ioctl, and from ABI 9
//!   connecting to pathname UNIX sockets).
//! - Scopes, always when the kernel has ABI 6: the command cannot connect
//!   to abstract UNIX sockets made outside the sandbox (host daemons) nor
//!   signal processes outside it.
//! - TCP ports, when the caller passes [`TcpRules`] (ABI 4): a second
//!   layer under the eBPF policy where the policy can be said as a port
//!   list. Landlock denies with `EACCES`, the eBPF programs with `EPERM`.
//!
//! The highest ABI both the kernel and the `landlock` crate know is used.
//! When filesystem rules were asked for and the kernel cannot enforce them
//! fully, [`prepare`] refuses with [`LandlockError::Unenforceable`] unless
//! degraded operation is allowed; then [`Prepared::degraded`] says what is
//! not enforced. Gaps in what the user did not ask for directly (scopes,
//! TCP ports, pathname UNIX sockets before ABI 9) never refuse; they are
//! listed by [`Prepared::limitations`].
//!
//! Everything that allocates or opens files runs in the parent: the
//! ruleset file descriptor (close-on-exec) is created there, and the child
//! makes only two system calls.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use landlock::{
    make_bitflags, Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible as _, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _, Scope, ABI,
};

/// The newest ABI this module asks for; the kernel may support less.
const LATEST: ABI = ABI::V10;

/// `LANDLOCK_CREATE_RULESET_VERSION` (include/uapi/linux/landlock.h).
const CREATE_RULESET_VERSION: libc::c_ulong = 1;

/// Rights granted beneath a `read` path.
fn read_access() -> BitFlags<AccessFs> {
    AccessFs::from_read(LATEST)
}

/// Rights granted beneath a `write` path: all of them.
fn write_access() -> BitFlags<AccessFs> {
    AccessFs::from_all(LATEST)
}

/// The filesystem rights without which the rules do not mean what the
/// user wrote: read, write, create and remove (ABI 1), truncate (ABI 3)
/// and device ioctl (ABI 5). `Refer` (ABI 2) is not among them: without it
/// ABI 1 denies cross-directory renames outright, which is stricter.
/// `ResolveUnix` (ABI 9) is not either, as no kernel in use has it yet;
/// its absence is a limitation.
fn required_fs() -> BitFlags<AccessFs> {
    AccessFs::from_all(ABI::V1) | AccessFs::Truncate | AccessFs::IoctlDev
}

/// The scopes asked for whenever the kernel has them.
const SCOPES: BitFlags<Scope> = make_bitflags!(Scope::{AbstractUnixSocket | Signal});

/// Paths for the filesystem rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsRules {
    /// Readable and executable, recursively.
    pub read: Vec<PathBuf>,
    /// Readable, writable, and allowed to create and remove, recursively.
    pub write: Vec<PathBuf>,
}

impl FsRules {
    /// Canonicalises both lists (see [`canonicalise`]).
    pub fn new<R, W>(read: R, write: W) -> Result<Self, LandlockError>
    where
        R: IntoIterator,
        R::Item: AsRef<Path>,
        W: IntoIterator,
        W::Item: AsRef<Path>,
    {
        Ok(Self { read: canonicalise(read)?, write: canonicalise(write)? })
    }
}

/// TCP port rules for Landlock. `None` leaves that operation to the eBPF
/// policy alone; `Some(ports)` allows exactly those ports (an empty list
/// denies every TCP connect or bind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpRules {
    /// Remote ports `connect(2)` may reach on TCP sockets.
    pub connect: Option<Vec<u16>>,
    /// Local ports `bind(2)` may take on TCP sockets (0 is "any ephemeral
    /// port" and must be listed for an explicit bind to port 0).
    pub bind: Option<Vec<u16>>,
}

/// What to enforce; see [`prepare_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// Filesystem rules the user asked for, canonicalised.
    pub fs: Option<&'a FsRules>,
    /// TCP port rules derived from the network policy.
    pub tcp: Option<&'a TcpRules>,
    /// Run even when the filesystem rules cannot be fully enforced.
    pub allow_degraded: bool,
}

/// Why Landlock could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A filesystem rule names a path that does not exist.
    #[error("filesystem rule path {} does not exist", path.display())]
    Missing {
        /// The path as given.
        path: PathBuf,
    },
    /// A filesystem rule path could not be resolved.
    #[error("cannot resolve filesystem rule path {}: {source}", path.display())]
    Resolve {
        /// The path as given.
        path: PathBuf,
        /// The error from `realpath`.
        source: io::Error,
    },
    /// A filesystem rule path could not be opened for the ruleset.
    #[error("cannot open {} for a Landlock rule: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The error from the landlock crate.
        source: landlock::PathFdError,
    },
    /// Filesystem rules were asked for and the kernel cannot enforce them
    /// all; degraded operation was not allowed.
    #[error(
        "the kernel cannot enforce the filesystem rules:\n  - {}\nHint: {hint}",
        missing.join("\n  - ")
    )]
    Unenforceable {
        /// What would not be enforced, one sentence each.
        missing: Vec<String>,
        /// What to do about it.
        hint: String,
    },
    /// The landlock crate refused the ruleset.
    #[error("building the Landlock ruleset failed: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel reports Landlock but no ruleset came out.
    #[error("the kernel reports Landlock ABI {abi} but no ruleset was created")]
    NotCreated {
        /// The ABI the kernel reported.
        abi: u32,
    },
}

/// Canonicalises paths for filesystem rules: resolves symbolic links and
/// `..`, requires that each exists, and drops duplicates (keeping order).
pub fn canonicalise<I>(paths: I) -> Result<Vec<PathBuf>, LandlockError>
where
    I: IntoIterator,
    I::Item: AsRef<Path>,
{
    let mut out: Vec<PathBuf> = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let canonical = crate::sys::canonicalize(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                LandlockError::Missing { path: path.to_path_buf() }
            } else {
                LandlockError::Resolve { path: path.to_path_buf(), source }
            }
        })?;
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// The Landlock ABI of the running kernel, or `None` when Landlock is not
/// built in or not enabled.
#[must_use]
pub fn kernel_abi() -> Option<u32> {
    probe().ok()
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
fn probe() -> io::Result<u32> {
    let zero: libc::c_ulong = 0;
    // SAFETY: with this flag and a null attribute the call only returns
    // the ABI version; it reads and writes no memory.
    let v = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), zero, CREATE_RULESET_VERSION)
    };
    if v < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// What to do when the kernel falls short, as a hint in the style of the landlock
/// crate's sandboxer example.
fn degraded_hint() -> String {
    match probe() {
        Ok(abi) => format!(
            "the kernel has Landlock ABI {abi}; upgrade the kernel for the missing features, \
             or pass --allow-degraded to run without them"
        ),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => "Landlock is built into this kernel but not \
             enabled at boot; add `landlock` to the `lsm=` kernel parameter, or pass --allow-degraded to run \
             without filesystem rules"
            .to_owned(),
        Err(_) => "this kernel has no Landlock (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK=y); use such a kernel, \
             or pass --allow-degraded to run without filesystem rules"
            .to_owned(),
    }
}

/// What a kernel with Landlock ABI `abi` (0: none) enforces of a request,
/// and what it does not: `(degraded, limitations)`. `degraded` lists gaps
/// in the filesystem rules the user asked for; `limitations` the rest.
fn assess(abi: u32, fs: bool, tcp: bool) -> (Vec<String>, Vec<String>) {
    let mut degraded = Vec::new();
    let mut limitations = Vec::new();
    if fs {
        if abi == 0 {
            degraded.push("no filesystem rule is enforced: Landlock is not available".to_owned());
        } else {
            if abi < 3 {
                degraded.push(
                    "truncating files outside the write paths (truncate(2), O_TRUNC) is not restricted \
                     (needs Landlock ABI 3, Linux 6.2)"
                        .to_owned(),
                );
            }
            if abi < 5 {
                degraded.push(
                    "ioctl(2) on device files opened under the read paths is not restricted \
                     (needs Landlock ABI 5, Linux 6.10)"
                        .to_owned(),
                );
            }
            if abi < 2 {
                limitations.push(
                    "renaming or linking files across directories is always denied, even within the write \
                     paths (Landlock ABI 1; ABI 2, Linux 5.19, allows it)"
                        .to_owned(),
                );
            }
            if abi < 9 {
                limitations.push(
                    "connecting to pathname UNIX sockets is not restricted by the filesystem rules \
                     (needs Landlock ABI 9)"
                        .to_owned(),
                );
            }
        }
    }
    if abi < 6 {
        limitations.push(
            "abstract UNIX sockets and signals are not scoped to the sandbox (needs Landlock ABI 6, Linux 6.12)"
                .to_owned(),
        );
    }
    if tcp && abi < 4 {
        limitations.push(
            "TCP port rules are not enforced by Landlock (needs Landlock ABI 4, Linux 6.7); the eBPF policy \
             still applies"
                .to_owned(),
        );
    }
    (degraded, limitations)
}

/// Which parts of the request the prepared ruleset enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforced {
    /// The filesystem rules (possibly degraded; see [`Prepared::degraded`]).
    pub fs: bool,
    /// Abstract UNIX socket and signal scoping.
    pub scopes: bool,
    /// The TCP port rules.
    pub tcp: bool,
}

/// A ruleset built in the parent, to be enforced in the child.
///
/// `Send + Sync`: it can be moved into a `Command::pre_exec` closure.
#[derive(Debug)]
pub struct Prepared {
    /// The ruleset; `None` when there is nothing the kernel can enforce.
    fd: Option<OwnedFd>,
    /// The rights a `write` path gets that this kernel handles (what
    /// [`Prepared::grant_write`] adds in the child), as the kernel's bits.
    write_bits: u64,
    abi: Option<u32>,
    enforced: Enforced,
    degraded: Vec<String>,
    limitations: Vec<String>,
}

/// Prepares filesystem rules (if any) and scopes; see [`prepare_with`].
pub fn prepare(fs: Option<&FsRules>, allow_degraded: bool) -> Result<Prepared, LandlockError> {
    prepare_with(&Request { fs, tcp: None, allow_degraded })
}

/// Builds the ruleset for `request` in the calling process.
///
/// Fails with [`LandlockError::Unenforceable`] when filesystem rules were
/// asked for, the kernel cannot enforce all of them, and
/// `allow_degraded` is false.
pub fn prepare_with(request: &Request<'_>) -> Result<Prepared, LandlockError> {
    let Request { fs, tcp, allow_degraded } = *request;
    let abi = kernel_abi();
    let level = abi.unwrap_or(0);
    let tcp_requested = tcp.is_some_and(|t| t.connect.is_some() || t.bind.is_some());
    let (degraded, limitations) = assess(level, fs.is_some(), tcp_requested);
    if !degraded.is_empty() && !allow_degraded {
        return Err(LandlockError::Unenforceable { missing: degraded, hint: degraded_hint() });
    }
    let enforced = Enforced { fs: fs.is_some() && level >= 1, scopes: level >= 6, tcp: tcp_requested && level >= 4 };
    let fd = if enforced == Enforced::default() {
        None
    } else {
        let fd = build(fs, tcp, allow_degraded)?;
        if fd.is_none() {
            return Err(LandlockError::NotCreated { abi: level });
        }
        fd
    };
    // The rights the ruleset handles are those of the kernel's ABI: a rule
    // added in the child may name no other.
    let write_bits = if enforced.fs {
        (write_access() & AccessFs::from_all(ABI::from(i32::try_from(level).unwrap_or(i32::MAX)))).bits()
    } else {
        0
    };
    Ok(Prepared { fd, write_bits, abi, enforced, degraded, limitations })
}

/// Creates the ruleset and adds the rules; `None` if the kernel supports
/// none of it.
fn build(fs: Option<&FsRules>, tcp: Option<&TcpRules>, allow_degraded: bool) -> Result<Option<OwnedFd>, LandlockError> {
    let mut ruleset = Ruleset::default();
    if fs.is_some() {
        // What the rules need is a hard requirement unless degraded
        // operation is allowed; anything newer is taken when available.
        let level = if allow_degraded { CompatLevel::BestEffort } else { CompatLevel::HardRequirement };
        ruleset = ruleset
            .set_compatibility(level)
            .handle_access(required_fs())?
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(LATEST))?;
    }
    ruleset = ruleset.set_compatibility(CompatLevel::BestEffort);
    if let Some(TcpRules { connect, bind }) = tcp {
        if connect.is_some() {
            ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
        }
        if bind.is_some() {
            ruleset = ruleset.handle_access(AccessNet::BindTcp)?;
        }
    }
    // Rules are added best-effort: that only trims rights the kernel does
    // not handle (or directory rights on a file), never widens access.
    let mut created = ruleset.scope(SCOPES)?.create()?;
    if let Some(FsRules { read, write }) = fs {
        for (paths, access) in [(read, read_access()), (write, write_access())] {
            for path in paths {
                let fd = PathFd::new(path).map_err(|source| LandlockError::Open { path: path.clone(), source })?;
                created = created.add_rule(PathBeneath::new(fd, access))?;
            }
        }
    }
    if let Some(TcpRules { connect, bind }) = tcp {
        for (ports, access) in [(connect, AccessNet::ConnectTcp), (bind, AccessNet::BindTcp)] {
            let mut ports = ports.clone().unwrap_or_default();
            ports.sort_unstable();
            ports.dedup();
            for port in ports {
                created = created.add_rule(NetPort::new(port, access))?;
            }
        }
    }
    Ok(created.into())
}

impl Prepared {
    /// The kernel's Landlock ABI, or `None` without Landlock.
    #[must_use]
    pub fn abi(&self) -> Option<u32> {
        self.abi
    }

    /// What the ruleset enforces.
    #[must_use]
    pub fn enforced(&self) -> Enforced {
        self.enforced
    }

    /// Gaps in the requested filesystem rules (non-empty only when
    /// degraded operation was allowed), one sentence each.
    #[must_use]
    pub fn degraded(&self) -> &[String] {
        &self.degraded
    }

    /// Other things this kernel does not enforce (scopes, TCP port rules,
    /// pathname UNIX sockets), one sentence each; for `--verbose`.
    #[must_use]
    pub fn limitations(&self) -> &[String] {
        &self.limitations
    }

    /// Adds a `write` rule for the directory `path` to the ruleset, in the
    /// child before [`Self::restrict_self`]: for a directory the child
    /// mounted itself (its private `/dev/shm`), which the parent could not
    /// open. Nothing without filesystem rules. Async-signal-safe.
    ///
    /// # Errors
    /// When `path` cannot be opened or the kernel refuses the rule: the
    /// child must not run with the directory unwritable or wider.
    pub fn grant_write(&self, path: &std::ffi::CStr) -> io::Result<()> {
        /// `struct landlock_path_beneath_attr` (packed, as in the uapi).
        #[repr(C, packed)]
        struct PathBeneathAttr {
            allowed_access: u64,
            parent_fd: i32,
        }
        /// `LANDLOCK_RULE_PATH_BENEATH`.
        const RULE_PATH_BENEATH: libc::c_long = 1;
        let Some(ruleset) = self.fd.as_ref().filter(|_| self.write_bits != 0) else { return Ok(()) };
        // SAFETY: open(2) of a NUL-terminated path.
        let dir = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if dir < 0 {
            return Err(io::Error::last_os_error());
        }
        let attr = PathBeneathAttr { allowed_access: self.write_bits, parent_fd: dir };
        // SAFETY: landlock_add_rule(2) with the ruleset fd this value owns
        // and a pointer to an attribute that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                libc::c_long::from(ruleset.as_raw_fd()),
                RULE_PATH_BENEATH,
                std::ptr::from_ref(&attr),
                0 as libc::c_ulong,
            )
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(dir) };
        if rc != 0 {
            return Err(err);
        }
        Ok(())
    }

    /// Sets `PR_SET_NO_NEW_PRIVS` and enforces the ruleset on the calling
    /// thread (`landlock_restrict_self(fd, 0)`); with no ruleset, only sets
    /// `no_new_privs`.
    ///
    /// Async-signal-safe and allocation-free, for a `Command::pre_exec`
    /// closure. The ruleset fd is close-on-exec, so the command does not
    /// inherit it.
    pub fn restrict_self(&self) -> io::Result<()> {
        let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: prctl(2) with integer arguments only, passed as unsigned
        // long because the kernel rejects garbage in the upper halves.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let Some(fd) = &self.fd else { return Ok(()) };
        let fd = libc::c_long::from(fd.as_raw_fd());
        // SAFETY: landlock_restrict_self(2) on a ruleset fd this value owns,
        // with no flags; it reads no user memory.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, zero) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harden::testutil::{errno_if_failed, in_child, landlock_abi_at_least};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn prepared_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Prepared>();
    }

    #[test]
    fn assess_by_abi() {
        // (abi, fs, tcp) -> (number of degraded, number of limitations)
        let cases = [
            ((0, false, false), (0, 1)),
            ((0, true, false), (1, 1)),
            ((0, true, true), (1, 2)),
            ((1, true, false), (2, 3)),
            ((2, true, false), (2, 2)),
            ((3, true, false), (1, 2)),
            ((4, true, true), (1, 2)),
            ((5, true, false), (0, 2)),
            ((6, true, false), (0, 1)),
            ((6, false, false), (0, 0)),
            ((7, true, true), (0, 1)),
            ((9, true, true), (0, 0)),
            ((10, false, true), (0, 0)),
        ];
        for ((abi, fs, tcp), (d, l)) in cases {
            let (degraded, limitations) = assess(abi, fs, tcp);
            assert_eq!(
                (degraded.len(), limitations.len()),
                (d, l),
                "abi {abi} fs {fs} tcp {tcp}: {degraded:?} {limitations:?}"
            );
        }
        assert!(assess(0, true, false).0[0].contains("Landlock is not available"));
        assert!(assess(4, true, false).0[0].contains("ioctl"));
        assert!(assess(2, true, false).0[0].contains("truncat"));
        assert!(assess(5, false, false).1[0].contains("ABI 6"));
    }

    #[test]
    fn unenforceable_lists_each_gap() {
        let (missing, _) = assess(2, true, false);
        let err = LandlockError::Unenforceable { missing, hint: "do this".to_owned() };
        let text = err.to_string();
        assert!(text.starts_with("the kernel cannot enforce the filesystem rules:\n  - truncating"), "{text}");
        assert!(text.contains("\n  - ioctl(2)"), "{text}");
        assert!(text.ends_with("\nHint: do this"), "{text}");
    }

    #[test]
    fn required_rights_match_their_abis() {
        assert_eq!(required_fs() & !AccessFs::from_all(ABI::V5), BitFlags::EMPTY);
        assert!(!(required_fs() & !AccessFs::from_all(ABI::V4)).is_empty());
        assert_eq!(read_access(), make_bitflags!(AccessFs::{ReadFile | ReadDir | Execute}));
        assert!(write_access().contains(required_fs()));
    }

    /// A directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("sbx-landlock-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("creating a temporary directory");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cstr(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
    }

    #[test]
    fn canonicalise_resolves_and_dedups() {
        let dir = TempDir::new("canon");
        let sub = dir.0.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&sub, dir.0.join("link")).unwrap();
        let got = canonicalise([sub.join("..").join("sub"), dir.0.join("link"), dir.0.clone()]).unwrap();
        let real_dir = std::fs::canonicalize(&dir.0).unwrap();
        assert_eq!(got, vec![real_dir.join("sub"), real_dir]);
    }

    #[test]
    fn canonicalise_names_the_missing_path() {
        let missing = PathBuf::from("/nonexistent-sbx/x");
        let err = canonicalise([Path::new("/etc"), &missing]).unwrap_err();
        assert!(matches!(&err, LandlockError::Missing { path } if *path == missing), "{err:?}");
        assert_eq!(err.to_string(), "filesystem rule path /nonexistent-sbx/x does not exist");
        let err = FsRules::new(["/etc"], ["/nonexistent-sbx/w"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-sbx/w"), "{err}");
    }

    #[test]
    fn prepare_without_rules_reports_the_kernel() {
        let p = prepare(None, false).expect("prepare");
        assert_eq!(p.abi(), kernel_abi());
        let abi = p.abi().unwrap_or(0);
        assert_eq!(p.enforced(), Enforced { fs: false, scopes: abi >= 6, tcp: false });
        assert!(p.degraded().is_empty());
        assert_eq!(p.fd.is_some(), abi >= 6);
    }

    /// What the filesystem test probes, in report order.
    const FS_PROBES: [&str; 12] = [
        "restrict_self",
        "create a file in the write dir",
        "mkdir in the write dir",
        "rmdir in the write dir",
        "unlink in the write dir",
        "create a file outside the write dir",
        "read /root",
        "read /etc/passwd",
        "open /etc/passwd for writing",
        "truncate a read-only file",
        "read a read-only file",
        "open a read-only file for writing",
    ];

    #[test]
    fn filesystem_rules_in_a_child() {
        if !landlock_abi_at_least(5, "filesystem_rules_in_a_child") {
            return;
        }
        let write_dir = TempDir::new("write");
        let outside = TempDir::new("outside");
        let ro_file = outside.0.join("read-only");
        std::fs::write(&ro_file, "keep").unwrap();
        let read: Vec<&Path> = ["/usr", "/lib", "/lib64", "/etc", "/bin"]
            .into_iter()
            .map(Path::new)
            .filter(|p| p.exists())
            .chain([ro_file.as_path()])
            .collect();
        let rules = FsRules::new(read, [&write_dir.0]).expect("rules");
        let prepared = prepare(Some(&rules), false).expect("prepare");
        assert!(prepared.enforced().fs);
        assert!(prepared.degraded().is_empty(), "{:?}", prepared.degraded());

        let file = cstr(&write_dir.0.join("file"));
        let sub = cstr(&write_dir.0.join("sub"));
        let other = cstr(&outside.0.join("other-file"));
        let ro = cstr(&ro_file);
        let got = in_child(|out: &mut [i32; FS_PROBES.len()]| {
            out[0] = prepared.restrict_self().map_or_else(|e| e.raw_os_error().unwrap_or(-1), |()| 0);
            // SAFETY (whole block): system calls on NUL-terminated paths
            // prepared before fork; fds opened here are closed again.
            unsafe {
                let open = |p: &CString, flags: libc::c_int| -> i32 {
                    let fd = libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o600);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                    errno_if_failed(fd.into())
                };
                out[1] = open(&file, libc::O_CREAT | libc::O_WRONLY);
                out[2] = errno_if_failed(libc::mkdir(sub.as_ptr(), 0o700).into());
                out[3] = errno_if_failed(libc::rmdir(sub.as_ptr()).into());
                out[4] = errno_if_failed(libc::unlink(file.as_ptr()).into());
                out[5] = open(&other, libc::O_CREAT | libc::O_WRONLY);
                out[6] = open(&CString::from(c"/root"), libc::O_RDONLY | libc::O_DIRECTORY);
                out[7] = open(&CString::from(c"/etc/passwd"), libc::O_RDONLY);
                out[8] = open(&CString::from(c"/etc/passwd"), libc::O_WRONLY);
                out[9] = errno_if_failed(libc::truncate(ro.as_ptr(), 0).into());
                out[10] = open(&ro, libc::O_RDONLY);
                out[11] = open(&ro, libc::O_WRONLY);
            }
        })
        .values();
        let want = [0, 0, 0, 0, 0, libc::EACCES, libc::EACCES, 0, libc::EACCES, libc::EACCES, 0, libc::EACCES];
        let wrong: Vec<String> = FS_PROBES
            .iter()
            .zip(got.iter().zip(want))
            .filter(|(_, (g, w))| *g != w)
            .map(|(name, (g, w))| format!("{name}: errno {g}, want {w}"))
            .collect();
        assert!(wrong.is_empty(), "under Landlock:\n{}", wrong.join("\n"));
        assert_eq!(std::fs::read_to_string(&ro_file).unwrap(), "keep");
        assert!(!outside.0.join("other-file").exists());
    }

    /// A `sockaddr_un` for an abstract name, built before fork.
    fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: sockaddr_un is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap();
        for (dst, src) in addr.sun_path[1..].iter_mut().zip(name) {
            *dst = libc::c_char::from_ne_bytes([*src]);
        }
        let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
        (addr, libc::socklen_t::try_from(len).unwrap())
    }

    #[test]
    fn scopes_in_a_child() {
        use std::os::linux::net::SocketAddrExt as _;
        if !landlock_abi_at_least(6, "scopes_in_a_child") {
            return;
        }
        let name = format!("sbx-landlock-scope-{}", std::process::id());
        let listener = std::os::unix::net::UnixListener::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
        )
        .expect("listening on an abstract socket");
        let (addr, len) = abstract_addr(name.as_bytes());
        let prepared = prepare(None, false).expect("prepare");
        assert!(prepared.enforced().scopes);
        let got = in_child(|out: &mut [i32; 5]| {
            // SAFETY (whole block): socket calls on a sockaddr built before
            // fork; kill with signal 0 only checks permission.
            unsafe {
                let connect = || -> i32 {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    let r = libc::connect(fd, (&raw const addr).cast(), len);
                    let e = errno_if_failed(r.into());
                    libc::close(fd);
                    e
                };
                out[0] = connect();
                out[1] = prepared.restrict_self().map_or_else(|e| e.raw_os_error().unwrap_or(-1), |()| 0);
                out[2] = connect();
                out[3] = errno_if_failed(libc::kill(libc::getppid(), 0).into());
                out[4] = errno_if_failed(libc::kill(libc::getpid(), 0).into());
            }
        })
        .values();
        drop(listener);
        assert_eq!(
            got,
            [0, 0, libc::EPERM, libc::EPERM, 0],
            "[connect before, restrict_self, connect after, kill(parent, 0), kill(self, 0)]"
        );
    }

    fn loopback(port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        }
    }

    #[test]
    fn tcp_rules_in_a_child() {
        if !landlock_abi_at_least(4, "tcp_rules_in_a_child") {
            return;
        }
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        let (a, d) = (loopback(port(&allowed)), loopback(port(&denied)));
        let bind_to = loopback(0);
        let tcp = TcpRules { connect: Some(vec![port(&allowed)]), bind: Some(vec![]) };
        let prepared = prepare_with(&Request { fs: None, tcp: Some(&tcp), allow_degraded: false }).expect("prepare");
        assert!(prepared.enforced().tcp);
        let got = in_child(|out: &mut [i32; 4]| {
            out[0] = prepared.restrict_self().map_or_else(|e| e.raw_os_error().unwrap_or(-1), |()| 0);
            // SAFETY (whole block): socket calls on sockaddrs built before
            // fork; each fd is closed again.
            unsafe {
                let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap();
                let call = |f: &dyn Fn(libc::c_int) -> libc::c_int| -> i32 {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    let e = errno_if_failed(f(fd).into());
                    libc::close(fd);
                    e
                };
                out[1] = call(&|fd| libc::connect(fd, (&raw const a).cast(), len));
                out[2] = call(&|fd| libc::connect(fd, (&raw const d).cast(), len));
                out[3] = call(&|fd| libc::bind(fd, (&raw const bind_to).cast(), len));
            }
        })
        .values();
        assert_eq!(
            got,
            [0, 0, libc::EACCES, libc::EACCES],
            "[restrict_self, connect allowed port, connect other port, bind]"
        );
    }
}
