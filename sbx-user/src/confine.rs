//! What `run` does to the child between `fork` and `exec`, beyond entering
//! the cgroup: a private mount namespace in which the cgroup filesystems,
//! bpffs, `/sys` and `/proc/sys` are read-only and a private directory is
//! mounted over `/tmp`; an optional switch to
//! another uid/gid; dropping every capability; a hard `RLIMIT_CORE` of 1;
//! marking inherited file descriptors close-on-exec; `no_new_privs`.
//!
//! Before any of that, [`check_stdio`] refuses sockets handed in as
//! stdin, stdout or stderr that the policy never judged. After it,
//! [`Exec`] looks the command up in `PATH` as the new identity and
//! executes it with the environment [`child_env`] computed.
//!
//! Everything is computed in the parent ([`Confinement::prepare`]); the
//! child side ([`Confinement::apply`]) only makes system calls on data
//! prepared in advance, with no allocation, as code between `fork` and
//! `exec` must.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
};

/// The target identity for `--user UID[:GID]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id (defaults to the uid).
    pub gid: u32,
}

impl Identity {
    /// The calling process's real uid and gid.
    #[must_use]
    pub fn current() -> Self {
        // SAFETY: getuid and getgid have no preconditions.
        unsafe { Self { uid: libc::getuid(), gid: libc::getgid() } }
    }
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

/// Under a `unix` policy that restricts host sockets: whether a
/// non-listening `AF_UNIX` socket of type `sock_type` on a standard
/// descriptor may be passed. A datagram socket sends to any socket path
/// given to `sendto`, and an unconnected stream socket connects anywhere:
/// the supervisor of [`crate::harden::unix`] never sees either.
#[must_use]
pub fn judge_stdio_unix(sock_type: i32, connected: bool) -> Option<String> {
    match (sock_type, connected) {
        (libc::SOCK_STREAM | libc::SOCK_SEQPACKET, true) => None,
        (libc::SOCK_DGRAM, _) => {
            Some("an AF_UNIX datagram socket, which can send to any host socket the `unix` policy denies".to_owned())
        }
        _ => Some(
            "an unconnected AF_UNIX socket, which can connect to any host socket the `unix` policy denies".to_owned(),
        ),
    }
}

/// Refuses sockets on stdin, stdout and stderr that [`judge_stdio_socket`]
/// refuses, unless `allow` (`--allow-stdio-sockets`). Closed descriptors
/// and anything that is not a socket (terminals, pipes, files) pass.
///
/// The child inherits exactly these descriptors (they are duplicated at
/// fork, with nothing run in between that could replace them), so
/// checking them in the parent checks what the command gets.
pub fn check_stdio(allow: bool, unix_restricted: bool) -> Result<(), StdioSocketError> {
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
        } else if domain == libc::AF_UNIX && listening == 0 && unix_restricted {
            // SAFETY: getpeername into a zeroed sockaddr_storage whose size is passed.
            let connected = unsafe {
                let mut a: libc::sockaddr_storage = std::mem::zeroed();
                let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&a)).unwrap_or(128);
                libc::getpeername(fd, (&raw mut a).cast(), &raw mut len) == 0
            };
            judge_stdio_unix(opt(libc::SO_TYPE), connected)
        } else {
            judge_stdio_socket(domain, listening != 0)
        };
        if let Some(what) = verdict {
            return Err(StdioSocketError { fd, name, what });
        }
    }
    Ok(())
}

/// What the password database says about a uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name (`pw_name`); the uid in decimal when there is no entry.
    pub name: String,
    /// Home directory (`pw_dir`), if there is an entry and it names one.
    pub home: Option<PathBuf>,
}

impl Account {
    /// Looks `uid` up in the password database ([`crate::names`]). A uid
    /// without an entry gets its number as name and no home.
    #[must_use]
    pub fn lookup(uid: u32) -> Self {
        let Some(pw) = crate::names::user_by_uid(uid) else {
            return Self { name: uid.to_string(), home: None };
        };
        Self { name: pw.name, home: (pw.dir.is_absolute() && pw.dir != std::path::Path::new("/")).then_some(pw.dir) }
    }
}

/// Tool directories that default to `$HOME/<dir>`: when the command's HOME
/// is a private one, these variables point at the account's real ones (if
/// they exist and the variable is not set), so toolchains installed there
/// (rustup, pyenv, nvm, rbenv) keep working. They stay read-only unless a
/// rule grants more.
pub const TOOL_HOMES: [(&str, &str); 5] = [
    ("CARGO_HOME", ".cargo"),
    ("RUSTUP_HOME", ".rustup"),
    ("PYENV_ROOT", ".pyenv"),
    ("RBENV_ROOT", ".rbenv"),
    ("NVM_DIR", ".nvm"),
];

/// The command's environment: the caller's, with HOME, USER and LOGNAME
/// of the identity it runs as, `XDG_RUNTIME_DIR` removed (the caller's
/// runtime directory holds its session bus and agent sockets), TMPDIR
/// removed when it points into the /tmp the command cannot see, the tool
/// directories of [`TOOL_HOMES`], and then `extra` (the proxy variables).
#[must_use]
pub fn child_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    account: &Account,
    home: &std::path::Path,
    extra: &[(&str, String)],
) -> Vec<(OsString, OsString)> {
    let replaced = ["HOME", "USER", "LOGNAME", "XDG_RUNTIME_DIR"];
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(k, v)| {
            let k = k.as_bytes();
            if replaced.iter().any(|r| r.as_bytes() == k) || extra.iter().any(|(e, _)| e.as_bytes() == k) {
                return false;
            }
            // /tmp inside the sandbox is a private, empty one.
            !(k == b"TMPDIR" && std::path::Path::new(v).starts_with("/tmp"))
        })
        .collect();
    if let Some(real) = &account.home {
        if real != home {
            for (var, dir) in TOOL_HOMES {
                let path = real.join(dir);
                if !env.iter().any(|(k, _)| k.as_bytes() == var.as_bytes()) && path.is_dir() {
                    env.push((var.into(), path.into_os_string()));
                }
            }
        }
    }
    env.push(("HOME".into(), home.as_os_str().to_owned()));
    env.push(("USER".into(), account.name.clone().into()));
    env.push(("LOGNAME".into(), account.name.clone().into()));
    env.extend(extra.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    env
}

/// The default `PATH` glibc's `execvp` uses when none is set.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The command's `execve`, prepared in the parent: `PATH` is searched in
/// the child, after the identity switch and Landlock, so the command is
/// found as the identity it runs as would find it.
///
/// glibc's `execvp` reports `EACCES` when a `PATH` directory cannot be
/// searched and the command is in none of the others, which turns
/// "command not found" (127) into "permission denied" (126) for an
/// unprivileged identity under root's `PATH`. Here a directory the
/// identity cannot search is skipped, as a shell does; `EACCES` is kept
/// for a command that exists but cannot be executed.
pub struct Exec {
    /// Paths to try, in order: the program itself when it contains a `/`,
    /// else each `PATH` entry joined with it.
    candidates: Vec<CString>,
    /// Whether `candidates` came from a `PATH` search.
    searched: bool,
    /// Keeps the strings `argv`/`envp` point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// For each candidate, `/bin/sh CANDIDATE ARGS...`, for a file the
    /// kernel cannot execute (`ENOEXEC`), as `execvp` does.
    sh_argv: Vec<Vec<*const libc::c_char>>,
}

// SAFETY: the raw pointers point into `_strings` and `candidates`, which
// the value owns and never changes after construction; they are only read.
unsafe impl Send for Exec {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Exec {}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pointer arrays only mirror `candidates` and the strings.
        f.debug_struct("Exec")
            .field("candidates", &self.candidates)
            .field("searched", &self.searched)
            .finish_non_exhaustive()
    }
}

impl Exec {
    /// Prepares `program args...` with environment `env`, searching the
    /// `PATH` in `env` (or `/bin:/usr/bin`) when `program` has no `/`.
    pub fn new(program: &OsStr, args: &[OsString], env: &[(OsString, OsString)]) -> io::Result<Self> {
        let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("a NUL byte in the command or environment"));
        let name = program.as_bytes();
        let searched = !name.contains(&b'/');
        let candidates = if searched {
            if name.is_empty() {
                Vec::new()
            } else {
                let path = env
                    .iter()
                    .find(|(k, _)| k.as_bytes() == b"PATH")
                    .map_or(DEFAULT_PATH.as_bytes(), |(_, v)| v.as_bytes());
                path.split(|&b| b == b':')
                    .map(|dir| {
                        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                        let mut full = dir.to_vec();
                        full.push(b'/');
                        full.extend_from_slice(name);
                        c(&full)
                    })
                    .collect::<io::Result<Vec<_>>>()?
            }
        } else {
            vec![c(name)?]
        };
        let mut strings = Vec::new();
        for a in std::iter::once(program).chain(args.iter().map(OsString::as_os_str)) {
            strings.push(c(a.as_bytes())?);
        }
        let nargs = strings.len();
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            strings.push(c(&kv)?);
        }
        strings.push(CString::from(c"/bin/sh"));
        let ptr = |s: &CString| s.as_ptr();
        let mut arg_ptrs: Vec<_> = strings[..nargs].iter().map(ptr).collect();
        arg_ptrs.push(std::ptr::null());
        let mut envp: Vec<_> = strings[nargs..strings.len() - 1].iter().map(ptr).collect();
        envp.push(std::ptr::null());
        let sh = strings[strings.len() - 1].as_ptr();
        let sh_argv = candidates
            .iter()
            .map(|cand| {
                let mut v = vec![sh, cand.as_ptr()];
                v.extend(strings[1..nargs].iter().map(ptr));
                v.push(std::ptr::null());
                v
            })
            .collect();
        Ok(Self { candidates, searched, _strings: strings, argv: arg_ptrs, envp, sh_argv })
    }

    /// Whether the program was looked up in `PATH`.
    #[must_use]
    pub fn searched(&self) -> bool {
        self.searched
    }

    /// Executes the command; returns only on failure, with `ENOENT` when
    /// no candidate exists for the calling identity, `EACCES` when one
    /// exists but cannot be executed, or the error that stopped the search.
    ///
    /// Async-signal-safe and allocation-free, for a `pre_exec` closure.
    #[must_use]
    pub fn exec(&self) -> io::Error {
        let mut denied = false;
        for (cand, sh) in self.candidates.iter().zip(&self.sh_argv) {
            if self.searched {
                // SAFETY: stat into a zeroed buffer on a NUL-terminated path.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // A directory this identity cannot search, a missing file,
                // or a directory by that name: not here, look further.
                // SAFETY: as above; `st` outlives the call.
                if unsafe { libc::stat(cand.as_ptr(), &raw mut st) } != 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR
                {
                    continue;
                }
            }
            // SAFETY: execve with NUL-terminated arrays of pointers into
            // strings this value owns; it returns only on failure.
            unsafe { libc::execve(cand.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOEXEC) => {
                    // SAFETY: as above, with `/bin/sh CANDIDATE ARGS...`.
                    unsafe { libc::execve(sh[0], sh.as_ptr(), self.envp.as_ptr()) };
                    return io::Error::last_os_error();
                }
                Some(libc::EACCES) if self.searched => denied = true,
                Some(libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT) if self.searched => {
                }
                _ => return err,
            }
        }
        io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT })
    }
}

/// Child-side setup, prepared in the parent.
#[derive(Debug)]
pub struct Confinement {
    /// Whether the runner is root; a runner that is not (through the host
    /// agent) makes no mounts and changes no identity.
    privileged: bool,
    /// Mount points made read-only (recursively) in the child's namespace.
    read_only: Vec<CString>,
    /// Paths bind-mounted onto themselves first so they can be made
    /// read-only (they are not mount points of their own).
    bind_first: Vec<CString>,
    identity: Option<Identity>,
    /// A directory bind-mounted over `/tmp`, so the command has a private
    /// one (after the read-only mounts, which may lie under `/tmp`).
    private_tmp: Option<CString>,
    /// Directories under the host's `/tmp` (first) bind-mounted onto their
    /// places in the private one (second).
    carried: Vec<(CString, CString)>,
    /// The working directory, entered again through the new mounts when it
    /// lies under `/tmp`.
    reenter: Option<CString>,
    /// Files bind-mounted read-only over host files (file, target), such
    /// as the DNS stub's `resolv.conf` over `/etc/resolv.conf`.
    file_binds: Vec<(CString, CString)>,
    /// Descriptors above 2 that stay open across exec, sorted.
    keep_fds: Vec<u32>,
    /// Whether the child mounts a private tmpfs on `/dev/shm` (the host
    /// has the directory, and the runner is root).
    private_shm: bool,
    /// Directories bind-mounted onto themselves, writable, first: as mount
    /// points they cannot be renamed or removed (the directories holding a
    /// read-only `.git`, so that it cannot be moved away with them).
    pinned: Vec<CString>,
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
    ///
    /// `private_tmp`, if given, is mounted over `/tmp` (when the host has
    /// one), with the `carried` directories (host path, path inside
    /// `private_tmp`) mounted inside it first.
    pub fn prepare(
        identity: Option<Identity>,
        keep_fds: &[u32],
        protect: &[PathBuf],
        private_tmp: Option<&std::path::Path>,
        carried: &[(PathBuf, PathBuf)],
    ) -> io::Result<Self> {
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
            let flags = unsafe { libc::fcntl(i32::try_from(fd).unwrap_or(-1), libc::F_GETFD) };
            if flags < 0 {
                return Err(io::Error::other(format!("--keep-fd {fd}: no such open file descriptor")));
            }
            // Every descriptor sbx opens itself is close-on-exec; one it
            // inherited cannot be (it would not have been inherited).
            if flags & libc::FD_CLOEXEC != 0 {
                return Err(io::Error::other(format!(
                    "--keep-fd {fd}: not a file descriptor sbx-user inherited (it is one of sbx's own)"
                )));
            }
        }
        let mut keep_fds: Vec<u32> = keep_fds.iter().copied().filter(|&f| f > 2).collect();
        keep_fds.sort_unstable();
        keep_fds.dedup();
        let private_tmp = match private_tmp {
            Some(p) if std::path::Path::new("/tmp").is_dir() => Some(c(&p.to_path_buf())?),
            _ => None,
        };
        let carried = if private_tmp.is_some() {
            carried.iter().map(|(host, inside)| Ok((c(host)?, c(inside)?))).collect::<io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        // Entered again once the mounts are made, so that paths relative to
        // it see them (a mount on the working directory itself, or on one
        // of its ancestors, is not seen from a working directory entered
        // before it).
        let reenter = match std::env::current_dir() {
            Ok(cwd) => Some(c(&cwd)?),
            Err(_) => None,
        };
        // SAFETY: getpid and geteuid have no preconditions.
        let (parent, privileged) = unsafe { (libc::getpid(), libc::geteuid() == 0) };
        Ok(Self {
            privileged,
            read_only,
            bind_first,
            identity,
            private_tmp,
            carried,
            reenter,
            file_binds: Vec::new(),
            keep_fds,
            private_shm: privileged && std::fs::symlink_metadata("/dev/shm").is_ok_and(|m| m.is_dir()),
            pinned: Vec::new(),
            parent,
        })
    }

    /// Bind-mounts each of `dirs` onto itself in the child, before the
    /// read-only mounts: a mount point cannot be renamed or removed.
    pub fn pin_dirs(&mut self, dirs: &[PathBuf]) -> io::Result<()> {
        for d in dirs {
            self.pinned.push(CString::new(d.as_os_str().as_bytes()).map_err(io::Error::other)?);
        }
        Ok(())
    }

    /// Whether the child's `/dev/shm` is a private tmpfs (then it needs its
    /// own Landlock write rule, [`crate::harden::landlock::Prepared::grant_write`]).
    #[must_use]
    pub fn private_shm(&self) -> bool {
        self.private_shm
    }

    /// Mounts each `(file, target)` read-only over `target` in the child
    /// (a target that is a symbolic link is followed: the file it names is
    /// covered).
    pub fn bind_files(&mut self, binds: &[(PathBuf, PathBuf)]) -> io::Result<()> {
        let c = |p: &PathBuf| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        for (file, target) in binds {
            self.file_binds.push((c(file)?, c(target)?));
        }
        Ok(())
    }

    /// Applies the setup in the child. Async-signal-safe: system calls on
    /// prepared data only.
    pub fn apply(&self) -> io::Result<()> {
        // The mounts' fields are read by `mount_private`.
        let Self { privileged, identity, keep_fds, parent, .. } = self;
        // SAFETY (whole block): plain system calls with pointers to
        // NUL-terminated strings and structs that outlive each call.
        unsafe {
            // Not root (a member of the agent's group, whose child the
            // agent moved into its sandbox): no mount namespace, no
            // bounding set to drop (no_new_privs below keeps exec from
            // gaining anything), no identity to change. What root-owned
            // mounts hide is not writable by the caller's uid anyway.
            if *privileged {
                mount_private(self)?;
                drop_bounding_set()?;
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
                // The system calls, not glibc's wrappers: those broadcast
                // the change to every thread glibc knows of, and this child
                // of a raw clone (crate::spawn) is single-threaded while
                // glibc's list still names the runner's threads. (The
                // 32-bit-id calls: `run` refuses architectures other than
                // x86_64 and aarch64, where these are the only ones.)
                // Each id passed as a whole register (c_ulong).
                let gid = id.gid;
                let (g, u) = (libc::c_ulong::from(gid), libc::c_ulong::from(id.uid));
                check(libc::syscall(libc::SYS_setgroups, libc::c_ulong::from(1u8), &raw const gid))?;
                check(libc::syscall(libc::SYS_setresgid, g, g, g))?;
                check(libc::syscall(libc::SYS_setresuid, u, u, u))?;
                // A uid change clears the parent-death signal: set it again,
                // and make sure the parent did not die in between (ESRCH:
                // no allocation here for a message).
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into())?;
                if libc::getppid() != *parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
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
                    check(crate::sys::close_range(first, fd - 1, cloexec))?;
                }
                first = fd + 1;
            }
            check(crate::sys::close_range(first, u32::MAX, cloexec))?;
        }
        Ok(())
    }
}

/// The child's private mount namespace: protected filesystems and paths
/// read-only, the private `/tmp` with its carried directories.
/// Async-signal-safe: system calls on prepared data only.
fn mount_private(c: &Confinement) -> io::Result<()> {
    let Confinement { private_shm, pinned, read_only, bind_first, file_binds, private_tmp, carried, reenter, .. } = c;
    let (private_shm, private_tmp, reenter) = (*private_shm, private_tmp.as_ref(), reenter.as_ref());
    // SAFETY (whole block): plain system calls with pointers to
    // NUL-terminated strings and structs that outlive each call.
    unsafe {
        // A private mount namespace: the remounts below are the child's
        // alone, and without capabilities it cannot undo them. Private,
        // not slave: a mount the host adds later must not appear here
        // writable. And a private IPC namespace: System V message queues,
        // semaphores and shared memory, and POSIX message queues, are the
        // sandbox's own, reach no host process and end with it.
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC).into())?;
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
        // Each onto itself: the pinned directories first (writable), so
        // that the read-only mounts below them stack on their mounts.
        for p in pinned.iter().chain(bind_first) {
            check(
                libc::mount(p.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
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
        mount_files_read_only(file_binds, &attr)?;
        // A private /dev/shm: POSIX shared memory and semaphores of the
        // command's own, which reach no host process and end with it.
        if private_shm {
            check(
                libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/dev/shm".as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=1777".as_ptr().cast(),
                )
                .into(),
            )?;
        }
        // The private /tmp last: it hides whatever of the above lies
        // under the host's /tmp, and the host's temporary files.
        if let Some(tmp) = private_tmp {
            let bind = |from: &CString, to: *const libc::c_char| {
                libc::mount(from.as_ptr(), to, std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
            };
            for (host, inside) in carried {
                check(bind(host, inside.as_ptr()).into())?;
            }
            check(bind(tmp, c"/tmp".as_ptr()).into())?;
        }
        // Enter the working directory again through the new mounts, so
        // relative and absolute paths agree.
        if let Some(cwd) = reenter {
            check(libc::chdir(cwd.as_ptr()).into())?;
        }
    }
    Ok(())
}

/// A system call's return value as a result (negative: `errno`).
/// Async-signal-safe.
fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability from the bounding set. Async-signal-safe.
fn drop_bounding_set() -> io::Result<()> {
    // SAFETY: prctl(2) with constant arguments.
    unsafe {
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
    }
    Ok(())
}

/// Bind-mounts each `(file, target)` over `target` and makes the new mount
/// read-only (`attr`). Async-signal-safe: system calls on prepared data.
fn mount_files_read_only(binds: &[(CString, CString)], attr: &MountAttr) -> io::Result<()> {
    for (file, target) in binds {
        // SAFETY: mount(2) with NUL-terminated paths that outlive the call.
        let rc =
            unsafe { libc::mount(file.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: mount_setattr(2) on a NUL-terminated path with a
        // `struct mount_attr` and its size, both outliving the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                0,
                std::ptr::from_ref(attr),
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
    fn stdio_unix_sockets_under_a_unix_policy() {
        assert_eq!(judge_stdio_unix(libc::SOCK_STREAM, true), None, "journald's stdout");
        assert_eq!(judge_stdio_unix(libc::SOCK_SEQPACKET, true), None);
        assert!(judge_stdio_unix(libc::SOCK_STREAM, false).is_some_and(|w| w.contains("unconnected")));
        assert!(judge_stdio_unix(libc::SOCK_DGRAM, true).is_some_and(|w| w.contains("datagram")));
        assert!(judge_stdio_unix(-1, true).is_some());
    }

    #[test]
    fn parses_identities() {
        assert_eq!(parse_identity("1000"), Ok(Identity { uid: 1000, gid: 1000 }));
        assert_eq!(parse_identity("65534:100"), Ok(Identity { uid: 65534, gid: 100 }));
        assert!(parse_identity("nobody").unwrap_err().contains("not a number"));
        assert!(parse_identity("1:x").unwrap_err().contains("gid"));
    }
}
