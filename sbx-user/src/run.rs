//! `run`: a fresh sandbox cgroup for one command, torn down when it ends.
//!
//! Order matters for "no instruction of the command runs outside the
//! policy": the cgroup is created and the programs attached first; the
//! child is then created inside the cgroup (`clone3` with
//! `CLONE_INTO_CGROUP`, [`crate::spawn`]; on older kernels it writes `0`
//! to `cgroup.procs` itself before anything else), and proves, confines
//! and execs itself there, so the new program image starts inside the
//! enforced cgroup. The links are pinned like `attach`'s: if
//! `sbx-user run` itself is killed, the child dies with it
//! (`PR_SET_PDEATHSIG`) and anything it left behind stays enforced.

use std::{
    ffi::OsString,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use crate::{
    cgroup::{cgroup2_mount, Cgroup, CgroupError},
    confine::{child_env, Account, Confinement, Exec, Identity},
    dns::{Names, Stub},
    harden::{landlock, seccomp},
    policy::{Dns, Mode, Policy},
    sandbox::{default_options, install, uninstall_removing, Owner, SandboxError},
    spawn,
    state::Paths,
};

/// Exit status when sbx fails before the command starts (as env(1) and
/// timeout(1) use 125).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit status when the command cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Creating or using the cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Attaching failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The child's confinement could not be prepared.
    #[error("cannot confine the command: {0}")]
    Confine(io::Error),
    /// Landlock cannot enforce what was asked.
    #[error(transparent)]
    Landlock(#[from] crate::harden::landlock::LandlockError),
    /// The seccomp filter cannot be built for this machine.
    #[error(transparent)]
    Seccomp(#[from] crate::harden::seccomp::SeccompError),
    /// The private HOME and /tmp could not be made.
    #[error(transparent)]
    Workspace(#[from] crate::harden::workspace::WorkspaceError),
    /// The command is in no `PATH` directory the identity can search.
    #[error("{command}: command not found (PATH searched as {user}: {path})")]
    NotFound {
        /// The program as given.
        command: String,
        /// The `PATH` searched.
        path: String,
        /// Who searched, e.g. `uid 65534 (nobody)`.
        user: String,
    },
    /// The `unix` policy cannot be enforced, or names a missing socket.
    #[error(transparent)]
    Unix(#[from] crate::harden::unix::UnixError),
    /// A socket on stdin, stdout or stderr would reach around the policy.
    #[error(transparent)]
    StdioSocket(#[from] crate::confine::StdioSocketError),
    /// The DNS stub of `dns = "pinned"` could not start.
    #[error(transparent)]
    Dns(#[from] crate::dns::StubError),
    /// The programs did not refuse the start-up proof's connect from inside
    /// the new cgroup: the kernel does not enforce there.
    #[error(
        "the sandbox's programs did not refuse a connect from inside its cgroup (the start-up proof), so the kernel \
         is not enforcing the policy there; the command was not started\nHint: check that cgroup v2 socket hooks apply \
         to this cgroup (no cgroup v1 net_cls/net_prio on kernels before 5.15) and run `sbx-user verify`"
    )]
    NotEnforced,
    /// The host agent did not make the sandbox.
    #[error("the sbx agent made no sandbox: {0}")]
    Agent(#[from] crate::agent::client::ClientError),
    /// The command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// The error.
        source: io::Error,
    },
}

impl RunError {
    /// Exit status for this failure.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            Self::NotFound { .. } => EXIT_NOT_FOUND,
            Self::Spawn { .. } => EXIT_CANNOT_EXEC,
            _ => EXIT_SETUP_FAILED,
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent switches from the command line")]
pub struct RunOptions {
    /// Parent directory for the sandbox cgroup; default `<cgroup2>/sbx`.
    pub cgroup_parent: Option<PathBuf>,
    /// Map capacity.
    pub max_entries: u32,
    /// Run the command as this uid/gid instead of the caller's.
    pub identity: Option<Identity>,
    /// sbx's record directory, made read-only for the command.
    pub state_dir: std::path::PathBuf,
    /// Inherited descriptors (above 2) to leave open.
    pub keep_fds: Vec<u32>,
    /// Print deny events to stderr as they happen.
    pub log_denials: bool,
    /// Trace every decision of the programs for this sandbox on stderr
    /// (`-vv`, through aya-log).
    pub trace: bool,
    /// Run even if the kernel cannot enforce the requested filesystem
    /// rules or `unix` setting, saying what is not enforced.
    pub allow_degraded: bool,
    /// Add Landlock TCP connect-port rules under the eBPF policy where they
    /// express the same thing.
    pub landlock_tcp: bool,
    /// Hand the command sockets on stdin/stdout/stderr that
    /// [`crate::confine::check_stdio`] would refuse.
    pub allow_stdio_sockets: bool,
    /// Let the command write the working directory's git repository
    /// (`--git-writable`): only its hooks and config stay read-only.
    pub git_writable: bool,
    /// The command's HOME (`--home`); default a private per-run one.
    pub home: Option<PathBuf>,
    /// A host agent makes and removes the sandbox instead of this process.
    pub agent: Option<AgentTarget>,
}

/// The host agent that makes `run`'s sandbox: the command is still forked
/// and executed here (so it keeps the caller's session, terminal,
/// foreground process group, working directory and limits), the agent
/// creates and attaches the cgroup and hands over its directory fd, through
/// which the child enters the cgroup before exec.
#[derive(Clone, Debug)]
pub struct AgentTarget {
    /// The agent's socket.
    pub socket: PathBuf,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// The network policy, as the agent builds it.
    pub policy: crate::agent::protocol::PolicySource,
}

/// Signals forwarded to the child.
const FORWARDED: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// Whether `run` found SIGCHLD ignored (and reset it): read by the
/// command's child code, which restores it.
static SIGCHLD_IGNORED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Forwarded signals that end a run that has no command yet.
const TERMINATING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&raw mut set);
        for s in FORWARDED {
            libc::sigaddset(&raw mut set, s);
        }
        set
    }
}

/// Takes the forwarded signals through a signalfd, read by the thread that
/// waits for the command (no thread of its own: one fewer to start, and to
/// wake at exit), and passes them to the command the way a shell or `sudo`
/// does: once.
///
/// A signal the kernel generated (`si_code > 0`: ^C, ^\ or a window
/// change typed at the terminal, a hangup) went to the whole foreground
/// process group, which the command shares with sbx, so the command has it
/// already; forwarding it too would deliver a second ^C, which many tools
/// take as "force quit". Signals a process sent to sbx alone (`kill`,
/// `si_code <= 0`) are forwarded, except those the command sent itself.
/// Before the command exists, a terminating signal is kept: the run stops
/// before the command starts (of several pending at once, the
/// lowest-numbered, the order a signalfd returns them in).
struct Forwarder {
    /// The forwarded signals' signalfd, non-blocking.
    fd: std::os::fd::OwnedFd,
    /// A terminating signal that came before the command existed.
    early: std::cell::Cell<i32>,
}

impl Forwarder {
    /// Blocks the forwarded signals in the calling thread (so in every
    /// thread created after it: they stay pending until read here) and
    /// opens their signalfd.
    fn start() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let set = signal_set();
        // SAFETY: `set` is an initialised sigset; the old mask is not needed.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
        // SAFETY: signalfd(2) with an initialised set; the new descriptor
        // is owned below.
        let fd = unsafe { libc::signalfd(-1, &raw const set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(Self { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, early: std::cell::Cell::new(0) })
    }

    /// Reads every pending signal: before the command exists (`child`
    /// `None`) a terminating one is kept as the early signal, the rest are
    /// dropped; after, each is forwarded by the rule above.
    fn take_pending(&self, child: Option<i32>) {
        loop {
            // SAFETY: an all-zero signalfd_siginfo is a valid out-buffer.
            let mut info = unsafe { std::mem::zeroed::<libc::signalfd_siginfo>() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: read(2) of one record into `info`, which is `size` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) };
            if usize::try_from(n).ok() != Some(size) {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            let sig = i32::try_from(info.ssi_signo).unwrap_or(0);
            match child {
                None => {
                    if TERMINATING.contains(&sig) && self.early.get() == 0 {
                        self.early.set(sig);
                    }
                }
                Some(pid) => {
                    let sender = i32::try_from(info.ssi_pid).unwrap_or(0);
                    if info.ssi_code > 0 || sender == pid {
                        continue;
                    }
                    // SAFETY: kill(2) on the command, which is not reaped
                    // before `forward_until_exit` returns.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }

    /// The terminating signal that arrived before the command existed.
    fn early_signal(&self) -> Option<i32> {
        self.take_pending(None);
        let sig = self.early.get();
        (sig != 0).then_some(sig)
    }

    /// Forwards signals to the command `pid` until it has exited, leaving
    /// it unreaped (so the pid it signals is never another process's).
    fn forward_until_exit(&self, pid: i32) {
        use std::os::fd::FromRawFd as _;
        // What came since `ready` last looked (the command existed then: a
        // terminating signal before it stopped the run) is forwarded by the
        // same rule as the rest: a ^C typed meanwhile reached the command
        // with its process group, a `kill` of sbx did not.
        self.take_pending(Some(pid));
        // SAFETY: pidfd_open(2) of our own child, not yet reaped; the new
        // descriptor is owned below.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a new descriptor nothing else owns.
        let pidfd =
            i32::try_from(raw).ok().filter(|&fd| fd >= 0).map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        loop {
            // Without a pidfd (before Linux 5.3), the exit is looked for
            // every 10 ms.
            let mut fds = [
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd {
                    fd: pidfd.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds (a negative fd is ignored).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, if pidfd.is_some() { -1 } else { 10 }) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // poll itself failing (ENOMEM): no more forwarding, only the
                // exit is waited for.
                exited(pid, true);
                return;
            }
            if fds[0].revents != 0 {
                self.take_pending(Some(pid));
            }
            if fds[1].revents != 0 || (pidfd.is_none() && exited(pid, false)) {
                return;
            }
        }
    }
}

/// Whether child `pid` has exited, left unreaped (`WNOWAIT`); with `block`,
/// waits until it has. An error other than `EINTR` (`ECHILD`: nothing
/// left to wait for) counts as exited: no pid is signalled that may no
/// longer be the command's.
fn exited(pid: i32, block: bool) -> bool {
    let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid out-buffer.
        let mut info = unsafe { std::mem::zeroed::<libc::siginfo_t>() };
        #[expect(clippy::cast_sign_loss, reason = "a pid from spawn")]
        // SAFETY: waitid(2) on our own child with a writable siginfo.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &raw mut info, flags) };
        if rc == 0 {
            // SAFETY: si_pid is set (non-zero) only when a child has exited.
            return unsafe { info.si_pid() != 0 };
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// Runs `command` under `policy`; returns its exit status (128+N when
/// killed by signal N).
pub fn run(command: &[OsString], policy: &Policy, opts: &RunOptions, paths: &Paths) -> Result<i32, RunError> {
    // sbx must outlive its own output: a closed stderr (`... 2>&1 | head
    // -1`) is an EPIPE on a write, never a reason to skip the teardown.
    crate::diag::ignore_sigpipe();
    // Block the forwarded signals before any thread exists, so that every
    // thread sbx starts (the DNS stub, the denial logger) inherits the mask
    // and a SIGTERM waits for the forwarder's signalfd, never acted on by
    // default in some other thread.
    // A SIGCHLD inherited as ignored would have the kernel reap the command
    // by itself: its exit status lost, and nothing left to wait for. The
    // command gets it back as it was (`CommandStart::setup`).
    // SAFETY: setting a signal disposition to its default.
    let was = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    SIGCHLD_IGNORED.store(was == libc::SIG_IGN, std::sync::atomic::Ordering::Relaxed);
    let forwarder = Forwarder::start().map_err(|e| {
        RunError::Confine(io::Error::other(format!("opening a signalfd for the forwarded signals: {e}")))
    })?;
    // Everything that can refuse comes first: nothing is attached if the
    // kernel cannot enforce what was asked.
    let unix = unix_guard(policy, opts)?;
    crate::confine::check_stdio(opts.allow_stdio_sockets, unix.is_some())?;
    let (workspace, ruleset, filter) = prepare_start(command, policy, opts)?;
    // dns = "pinned": the stub listens before the sandbox is made (its
    // address is in the policy the sandbox gets, installed here or by the
    // agent), and outlives the command. Not in audit mode, which blocks
    // nothing: the host's resolvers answer, and each query the policy would
    // refuse is reported.
    let made = std::sync::Arc::new(std::sync::OnceLock::new());
    let mut stub = match policy.dns {
        Dns::Pinned { .. } if policy.mode == Mode::Enforce => {
            Some(Stub::start(Names::of(policy), dns_report(&made, opts.log_denials), dns_refresh(paths, &made))?)
        }
        Dns::Pinned { .. } | Dns::Host => None,
    };
    // The command's mount namespace makes the state directory and bpffs
    // read-only, and only what exists can be: both are made now, before
    // the command's mounts are prepared, not by `install` (which runs
    // while the command's process waits at its gate, mounts made).
    if opts.agent.is_none() {
        std::fs::create_dir_all(&paths.state_dir).map_err(|e| {
            RunError::Confine(io::Error::other(format!(
                "creating the state directory {}: {e}",
                paths.state_dir.display()
            )))
        })?;
        crate::loader::ensure_bpffs(paths).map_err(SandboxError::from)?;
    }
    let stubbed;
    let policy = match &stub {
        Some(s) => {
            stubbed = Policy { dns: Dns::Pinned { stub: Some(s.addr()) }, ..policy.clone() };
            &stubbed
        }
        None => policy,
    };
    // Through the agent, the sandbox is asked for now and received once the
    // command's start is prepared (the agent makes it on the other CPU
    // meanwhile); the direct path makes its cgroup at that point.
    // The agent replies twice: the cgroup, which the command's process is
    // created in, then, while that process makes its mounts, the attach.
    let in_flight = std::cell::RefCell::new(match &opts.agent {
        None => None,
        Some(agent) => Some(AgentRun::send(agent, opts.trace, stub.as_ref().map(Stub::addr))?),
    });
    let sandbox = std::cell::OnceCell::<Made>::new();
    let make_sandbox_now = || -> Result<&Made, RunError> {
        // A first reply that fails ends the request (nothing more comes).
        let request = in_flight.borrow_mut().take();
        let made_now = match request {
            Some(request) => {
                let (made_now, request) = request.made(paths, true)?;
                *in_flight.borrow_mut() = Some(request);
                made_now
            }
            None => (make_sandbox(opts)?, None),
        };
        log::info!("sandbox cgroup {}", made_now.0.path.display());
        let _ = made.set(made_now.0.clone());
        Ok(sandbox.get_or_init(|| made_now))
    };
    // The command's process is started first and waits at its gate (its
    // own set-up, the mount namespace above all, runs on another CPU
    // meanwhile); the policy is put in place, and only then is it let on.
    // Through the agent the agent installs the policy (its second reply
    // says so); a refusal there means it removed the sandbox again.
    let mut installed = opts.agent.is_some();
    let mut readers = None;
    let ready = |cg: &Cgroup| {
        if opts.agent.is_none() {
            let mut attach = default_options(opts.max_entries, false);
            if opts.trace {
                attach.config.flags |= sbx_common::FLAG_DEBUG;
            }
            install(cg, policy, attach, paths, Owner::Run(std::process::id()))?;
            installed = true;
        } else {
            // Fail closed: through the agent, only its second reply says
            // the policy holds.
            let request = in_flight
                .borrow_mut()
                .take()
                .ok_or_else(|| RunError::Confine(io::Error::other("internal error: no agent request to wait for")))?;
            request.attached(cg).map_err(|refused| {
                installed = !refused.removed;
                refused.error
            })?;
        }
        readers = Some(Readers::start(cg, paths, opts));
        // Asked to stop while the sandbox was being made: the command never
        // starts, and the sandbox is torn down as after any run.
        Ok(forwarder.early_signal())
    };
    let start = Start { workspace: &workspace, ruleset: &ruleset, filter: &filter };
    let result = spawn_and_wait(command, policy, &start, opts, unix, &forwarder, make_sandbox_now, ready);
    if let Some(r) = readers {
        r.stop();
    }
    // The command has exited, and what it left is killed next: the stub's
    // thread ends meanwhile (joined below).
    if let Some(s) = stub.as_mut() {
        s.stop_soon();
    }
    let refused = finish(in_flight.into_inner(), sandbox, installed, workspace, opts, paths);
    if let Some(s) = stub {
        s.stop();
    }
    // The agent's refusal to attach is why the start failed (it removed
    // the cgroup the command's process was entering, say).
    let status = match (result, refused) {
        (Err(local), Some(refusal)) => {
            log::info!("the command could not start: {local}");
            return Err(refusal);
        }
        (result, _) => result?,
    };
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt as _;
        128 + status.signal().unwrap_or(0)
    }))
}

/// The command's start: the private HOME and /tmp, the Landlock ruleset
/// and the seccomp filter. Each refuses what the kernel cannot enforce.
fn prepare_start(
    command: &[OsString],
    policy: &Policy,
    opts: &RunOptions,
) -> Result<(crate::harden::workspace::Workspace, landlock::Prepared, seccomp::SeccompFilter), RunError> {
    let identity = opts.identity.unwrap_or_else(Identity::current);
    let workspace = crate::harden::workspace::Workspace::prepare(
        policy.filesystem.as_ref(),
        identity,
        opts.home.as_deref(),
        command.first().map(std::path::Path::new),
        opts.git_writable,
    )?;
    for note in workspace.notes() {
        crate::warn_user!("{note}");
    }
    let tcp = if opts.landlock_tcp { landlock_tcp_rules(policy) } else { None };
    if opts.landlock_tcp && tcp.is_none() {
        crate::warn_user!("--landlock-tcp: port-only rules cannot say what this policy says (loopback any, default allow, a rule on every port, audit or redirect); the eBPF policy alone applies");
    }
    if let Some(t) = &tcp {
        log::info!("Landlock TCP connect ports (second layer): {:?}", t.connect);
    }
    // sbx's default rules are a protection the user did not ask for: where
    // the kernel cannot enforce them, warn and run (the quick start must
    // work); rules the user wrote refuse unless --allow-degraded.
    let ruleset = landlock::prepare_with(&landlock::Request {
        fs: Some(workspace.rules()),
        tcp: tcp.as_ref(),
        allow_degraded: opts.allow_degraded || workspace.defaults(),
    })?;
    for gap in ruleset.degraded() {
        if workspace.defaults() {
            crate::warn_user!("default filesystem rules not enforced: {gap}");
        } else {
            crate::warn_user!("not enforced (--allow-degraded): {gap}");
        }
    }
    log::info!("Landlock ABI {}", ruleset.abi().map_or_else(|| "unavailable".to_owned(), |a| a.to_string()));
    for limit in ruleset.limitations() {
        log::info!("Landlock limitation: {limit}");
    }
    let filter = seccomp::build()?;
    Ok((workspace, ruleset, filter))
}

/// The supervisor for `unix`, or `None` when it allows every socket or the
/// kernel cannot enforce a profile's default (then with a warning). A
/// setting the user gave that the kernel cannot enforce refuses, unless
/// `--allow-degraded`.
fn unix_guard(policy: &Policy, opts: &RunOptions) -> Result<Option<crate::harden::unix::Guard>, RunError> {
    use crate::harden::unix::{Guard, UnixError};
    match Guard::prepare(&policy.unix, policy.mode, opts.log_denials) {
        Ok(g) => Ok(g),
        Err(e @ UnixError::Unsupported(_)) if !policy.unix_explicit() || opts.allow_degraded => {
            let whose = if policy.unix_explicit() {
                "not enforced (--allow-degraded)"
            } else {
                "the profile's default is not enforced"
            };
            crate::warn_user!(
                "unix = {}: {whose}: {e}; the command can connect to every host UNIX socket its identity may open",
                policy.unix
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints the DNS stub's refusals as deny event lines (`--log-denials`),
/// naming the process that asked when it can still be found; nothing
/// before the sandbox exists (`made`).
fn dns_report(made: &std::sync::Arc<std::sync::OnceLock<Cgroup>>, log_denials: bool) -> crate::dns::Report {
    let made = std::sync::Arc::clone(made);
    Box::new(move |refusal, peer, tcp, suppressed| {
        let Some(cg) = made.get().filter(|_| log_denials) else {
            return;
        };
        if suppressed > 0 {
            crate::diag::line(format_args!("sbx: {suppressed} more DNS refusals not shown (rate limit)"));
        }
        let (pid, comm) = crate::dns::peer_process(peer, tcp, &cg.procs_path()).unwrap_or((0, "?".to_owned()));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let view = crate::events::EventView {
            time: crate::events::rfc3339(now),
            sandbox: cg.path.display().to_string(),
            cgroup_id: cg.id,
            pid,
            tid: pid,
            comm,
            hook: "dns",
            protocol: if tcp { "tcp" } else { "udp" }.to_owned(),
            destination: format!("{} {}", refusal.name, crate::dns::type_name(refusal.qtype)),
            verdict: "denied",
            rule: refusal.reason.to_owned(),
            container: None,
        };
        crate::diag::line(format_args!("sbx: {view}"));
    })
}

/// The stub's names again whenever the sandbox's record changes (an
/// `update` re-pins the names; through the agent, the first record is the
/// agent's own resolution); the record is read only when its time stamp
/// moves.
fn dns_refresh(paths: &Paths, made: &std::sync::Arc<std::sync::OnceLock<Cgroup>>) -> crate::dns::Refresh {
    let paths = paths.clone();
    let made = std::sync::Arc::clone(made);
    let mut seen = None;
    Box::new(move || {
        let cgroup_id = made.get()?.id;
        let stamp = std::fs::metadata(paths.record_path(cgroup_id)).and_then(|m| m.modified()).ok()?;
        if seen == Some(stamp) {
            return None;
        }
        seen = Some(stamp);
        let record = crate::state::Record::load(&paths, cgroup_id).ok().flatten()?;
        Some(Names::of(&record.policy))
    })
}

/// The command's resolver files for a stub on `stub`, written into the
/// per-run directory: `(file, host path to mount it over)`.
fn resolver_binds(
    policy: &Policy,
    stub: std::net::Ipv4Addr,
    dir: &std::path::Path,
) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    use crate::dns::{ResolverFiles, HOSTS, NSSWITCH};
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (hosts, nsswitch) = (read(HOSTS), read(NSSWITCH));
    let files = ResolverFiles::new(stub, &Names::of(policy), hosts.as_deref(), nsswitch.as_deref());
    // Beside the private HOME and /tmp, not in a directory of their own:
    // each directory removed at the end costs more than its files (on a
    // disk that discards freed blocks, 0.1-0.2 ms).
    let binds = files.write(dir)?;
    if !binds.iter().any(|(_, t)| t == std::path::Path::new(crate::dns::RESOLV_CONF)) {
        crate::warn_user!(
            "{} does not exist: names resolve only through /etc/hosts (queries to loopback port 53 are refused)",
            crate::dns::RESOLV_CONF
        );
    }
    Ok(binds)
}

/// Most TCP ports a Landlock second layer lists before sbx leaves TCP to the
/// eBPF policy alone.
const LANDLOCK_MAX_PORTS: usize = 1024;

/// Landlock TCP rules that say the same as the policy, where port-only rules
/// can: a deny-by-default policy whose every TCP allowance names its ports.
/// Then a connect to any other port is refused twice, by the cgroup hook
/// and by Landlock. `None` where port-only rules would be wider or
/// narrower than the policy (loopback any, default allow, rules on every
/// port, audit mode, transparent redirect, which rewrites the port after
/// Landlock has judged it).
#[must_use]
pub fn landlock_tcp_rules(policy: &Policy) -> Option<landlock::TcpRules> {
    use crate::policy::{Action, Loopback};
    if policy.default == Action::Allow || policy.mode == Mode::Audit || policy.redirect {
        return None;
    }
    let mut ranges = match &policy.loopback {
        Loopback::Any => return None,
        Loopback::None => Vec::new(),
        Loopback::Ports(p) => p.clone(),
    };
    for rule in policy.rules.iter().filter(|r| r.action == Action::Allow && r.protocols.tcp) {
        ranges.extend(rule.ports.iter().copied());
    }
    // The DNS stub is reached over TCP too (answers too big for UDP).
    if matches!(policy.dns, Dns::Pinned { .. }) {
        ranges.push(crate::policy::PortRange::single(crate::policy::DNS_PORT));
    }
    let ranges = crate::policy::merge_ranges(ranges);
    let count: usize = ranges.iter().map(|r| usize::from(r.hi - r.lo) + 1).sum();
    if count > LANDLOCK_MAX_PORTS {
        return None;
    }
    let ports = ranges.iter().flat_map(|r| r.lo..=r.hi).collect();
    Some(landlock::TcpRules { connect: Some(ports), bind: None })
}

/// Creates the sandbox cgroup below `--cgroup-parent` (or `<cgroup2>/sbx`).
fn make_sandbox(opts: &RunOptions) -> Result<Cgroup, RunError> {
    let parent = match &opts.cgroup_parent {
        Some(p) => p.clone(),
        None => cgroup2_mount()?.join("sbx"),
    };
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    Ok(Cgroup::create(&parent, &format!("run-{pid}-{nanos}"))?)
}

/// The sandbox, once made: its cgroup and, through the agent, the fd of
/// its directory that came with the agent's reply.
type Made = (Cgroup, Option<std::os::fd::OwnedFd>);

/// Removes what `run` made, once its command has ended (or never started);
/// the agent's refusal to attach, if its last reply was read only here.
fn finish(
    in_flight: Option<AgentRun<'_>>,
    sandbox: std::cell::OnceCell<Made>,
    installed: bool,
    workspace: crate::harden::workspace::Workspace,
    opts: &RunOptions,
    paths: &Paths,
) -> Option<RunError> {
    // Preparing the command's start failed while the agent was making the
    // sandbox, or the command's process could not be created: the agent's
    // replies are read, and what it made is removed.
    let made = sandbox.into_inner();
    let (made, refused) = match in_flight {
        Some(request) => request.settle(paths, made),
        None => (made, None),
    };
    // Nothing was made, or nothing is left.
    let Some((cg, _)) = made else { return refused };
    let torn = match &opts.agent {
        // The policy could not be installed: nothing to detach.
        None if !installed => {
            drop(workspace);
            cg.remove().map_err(Into::into)
        }
        None => teardown(&cg, paths, Some(workspace)),
        // The agent refused to attach, and removed the sandbox.
        Some(_) if !installed => Ok(()),
        Some(agent) => teardown_via_agent(agent, &cg, paths),
    };
    if let Err(e) = torn {
        crate::warn_user!("cleaning up {} failed: {e}", cg.path.display());
    }
    refused
}

/// A `run` request the agent is serving (it makes the cgroup and attaches
/// the policy on another CPU while this process prepares the command's
/// start): [`Self::made`] reads the reply that names the cgroup,
/// [`Self::attached`] the one that says the policy holds. An agent older
/// than `staged` replies once, with both.
struct AgentRun<'a> {
    agent: &'a AgentTarget,
    client: crate::agent::client::Client,
    trace: bool,
    dns_stub: Option<std::net::Ipv4Addr>,
    /// The agent replies twice.
    staged: bool,
}

/// The agent did not attach the policy.
struct Refused {
    error: RunError,
    /// The agent said so, and removed the sandbox: nothing is left to
    /// detach. Otherwise (the connection broke) the sandbox may be there.
    removed: bool,
}

impl<'a> AgentRun<'a> {
    /// Asks the agent to make the sandbox (request `run`, staged).
    fn send(agent: &'a AgentTarget, trace: bool, dns_stub: Option<std::net::Ipv4Addr>) -> Result<Self, RunError> {
        let mut request = Self { agent, client: Self::connect(agent)?, trace, dns_stub, staged: true };
        request.ask()?;
        Ok(request)
    }

    fn connect(agent: &AgentTarget) -> Result<crate::agent::client::Client, RunError> {
        Ok(crate::agent::client::Client::connect(&agent.socket, agent.timeout)?)
    }

    fn ask(&mut self) -> Result<(), RunError> {
        let Self { agent, client, trace, dns_stub, staged } = self;
        let request = crate::agent::protocol::Request::Run {
            policy: agent.policy.clone(),
            trace: *trace,
            dns_stub: *dns_stub,
            staged: *staged,
        };
        Ok(client.send(&request)?)
    }

    /// The sandbox the agent made, checked: the fd must be the cgroup it
    /// names. Whatever is wrong with the reply, a sandbox it names is
    /// removed again.
    /// With `retry`, an agent that predates `staged` is asked again.
    fn made(mut self, paths: &Paths, retry: bool) -> Result<(Made, Self), RunError> {
        use crate::agent::client::ClientError;
        let (reply, fd) = match self.client.reply_with_fd() {
            Err(ClientError::Agent { code, message })
                if retry && self.staged && code == "invalid" && message.contains("`staged`") =>
            {
                // An agent older than this sbx-user: asked again, for one
                // reply that comes once the policy is attached.
                log::info!("the agent predates staged run replies; asking for one reply");
                self.client = Self::connect(self.agent)?;
                self.staged = false;
                self.ask()?;
                self.client.reply_with_fd()?
            }
            reply => reply?,
        };
        if self.staged && reply.get("stage").and_then(serde_json::Value::as_str) != Some("made") {
            let made = sandbox_from_reply(self.agent, paths, &reply, fd);
            if let Ok((cg, _)) = made {
                let _ = teardown_via_agent(self.agent, &cg, paths);
            }
            return Err(RunError::Confine(io::Error::other(
                "the agent's first reply to a staged run is not its \"made\" stage",
            )));
        }
        Ok((sandbox_from_reply(self.agent, paths, &reply, fd)?, self))
    }

    /// Waits until the agent has attached the policy to `cg` (its second
    /// reply).
    fn attached(mut self, cg: &Cgroup) -> Result<(), Refused> {
        use crate::agent::client::ClientError;
        if !self.staged {
            return Ok(());
        }
        match self.client.reply_with_fd() {
            Ok((reply, _)) if reply.get("stage").and_then(serde_json::Value::as_str) == Some("attached") => Ok(()),
            Ok(_) => Err(Refused {
                error: RunError::Confine(io::Error::other(
                    "the agent's second reply to a staged run is not its \"attached\" stage",
                )),
                removed: false,
            }),
            // The agent removes the sandbox when it refuses; if the cgroup
            // is still there (its removal failed), it is detached here.
            Err(e) => {
                Err(Refused { removed: matches!(e, ClientError::Agent { .. }) && !cg.path.exists(), error: e.into() })
            }
        }
    }

    /// What is left to remove of a request whose replies were not all
    /// read (`made`: the sandbox its first reply named, if read): both are
    /// read now, so the agent is done with the sandbox. If the agent
    /// refused to attach, nothing is left, and its error comes back.
    fn settle(self, paths: &Paths, made: Option<Made>) -> (Option<Made>, Option<RunError>) {
        // A first reply that is wrong removes what it names.
        let (made, request) = match made {
            Some(m) => (m, self),
            // Not asked again: that would make a sandbox only to remove it.
            None => match self.made(paths, false) {
                Ok(m) => m,
                Err(_) => return (None, None),
            },
        };
        match request.attached(&made.0) {
            Err(Refused { removed: true, error }) => (None, Some(error)),
            _ => (Some(made), None),
        }
    }
}

/// The sandbox the agent's reply to `run` describes.
fn sandbox_from_reply(
    agent: &AgentTarget,
    paths: &Paths,
    reply: &serde_json::Map<String, serde_json::Value>,
    fd: Option<std::os::fd::OwnedFd>,
) -> Result<Made, RunError> {
    let path = reply.get("cgroup").and_then(serde_json::Value::as_str).map(PathBuf::from);
    let id = reply.get("cgroup_id").and_then(serde_json::Value::as_u64);
    let by_pidfd = reply.get("enter").and_then(serde_json::Value::as_str) == Some("pidfd");
    let (Some(path), Some(id)) = (path, id) else {
        return Err(RunError::Confine(io::Error::other("the agent's reply to run lacks the cgroup or its id")));
    };
    let cg = Cgroup { path, id };
    // Not root: the agent moves the child in (request `enter`).
    let Some(fd) = fd else {
        if by_pidfd {
            return Ok((cg, None));
        }
        let _ = teardown_via_agent(agent, &cg, paths);
        return Err(RunError::Confine(io::Error::other("the agent's reply to run carries no directory fd")));
    };
    // The fd is what the child enters by; it must be the cgroup named.
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `fd` is open and `st` a writable stat buffer.
    let ok = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } == 0
        // SAFETY: fstat returned 0 and filled `st`.
        && unsafe { st.assume_init() }.st_ino == id;
    if !ok {
        let _ = teardown_via_agent(agent, &cg, paths);
        return Err(RunError::Confine(io::Error::other("the fd the agent sent is not the cgroup it named")));
    }
    Ok((cg, Some(fd)))
}

/// Asks the agent to remove the sandbox; if no agent answers (it may be
/// restarting), removes it here as the direct path does.
fn teardown_via_agent(agent: &AgentTarget, cg: &Cgroup, paths: &Paths) -> Result<(), Box<dyn std::error::Error>> {
    use crate::agent::{
        client::{Client, ClientError},
        protocol::Request,
    };
    let request = Request::Detach { cgroup: cg.path.display().to_string(), remove: true };
    match Client::connect(&agent.socket, agent.timeout).and_then(|mut c| c.call(&request)) {
        Ok(_) => Ok(()),
        Err(e @ ClientError::Agent { .. }) => Err(e.into()),
        Err(e) => {
            log::warn!("{e}; removing the sandbox directly");
            teardown(cg, paths, None)
        }
    }
}

/// Kills what is left in the sandbox, detaches and removes it. The private
/// HOME and /tmp (`workspace`), once nothing is left that could write
/// there, are removed by a thread meanwhile: on a disk that discards freed
/// blocks at once, each directory removed waits for the device (3-4 ms
/// here), longer than the detach.
fn teardown(
    cg: &Cgroup,
    paths: &Paths,
    workspace: Option<crate::harden::workspace::Workspace>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Err(e) = cg.kill_all(Duration::from_secs(5)) {
        drop(workspace);
        return Err(e.into());
    }
    // If no thread can be made, the closure, and the workspace with it, is
    // dropped here: removed before going on.
    let removing =
        workspace.and_then(|w| std::thread::Builder::new().name("sbx-cleanup".into()).spawn(move || drop(w)).ok());
    // The cgroup is empty: it is removed before its pins go (see
    // `loader::detach_removing`), and again here to report why if it
    // could not be then.
    let detached = uninstall_removing(cg.id, &cg.path, paths, || cg.remove().is_ok())
        .map_err(Into::into)
        .and_then(|()| if cg.path.exists() { cg.remove().map_err(Into::into) } else { Ok(()) });
    if let Some(t) = removing {
        let _ = t.join();
    }
    detached
}

/// Loopback destinations for `NO_PROXY`: names, addresses, and the CIDR
/// for clients that read one (curl, Go, Python's requests take names and
/// addresses; some also take `127.0.0.0/8`).
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1,127.0.0.0/8";

/// The proxy variables of proxy-only mode: `HTTP_PROXY`, `HTTPS_PROXY`,
/// `ALL_PROXY` (and lowercase) name the proxy, `NO_PROXY`/`no_proxy` the
/// loopback destinations. Loopback is decided by the policy's `loopback`
/// and never through the proxy: where loopback is allowed, clients reach
/// local services (the sandbox's own dev server) directly, even through a
/// proxy that refuses localhost, as Squid does by default; where it is
/// not, they fail at once with `EPERM` instead of asking the proxy, which
/// would otherwise reach the host's loopback services for them.
#[must_use]
pub fn proxy_env(policy: &Policy) -> Vec<(&'static str, String)> {
    let Some(proxy) = policy.proxy else {
        return Vec::new();
    };
    let url = format!("http://{proxy}");
    let mut env: Vec<(&'static str, String)> =
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
            .into_iter()
            .map(|k| (k, url.clone()))
            .collect();
    env.extend(["NO_PROXY", "no_proxy"].map(|k| (k, NO_PROXY.to_owned())));
    env
}

/// What `run` prepared for the command's start.
struct Start<'a> {
    workspace: &'a crate::harden::workspace::Workspace,
    ruleset: &'a landlock::Prepared,
    filter: &'a seccomp::SeccompFilter,
}

/// Prepares the command's start, then has `make` make the sandbox, and
/// starts the command's process in it, which waits at its
/// gate while `ready` puts the sandbox's policy in place; lets it on if
/// `ready` succeeds and reports no early signal, and waits for it. On an
/// early signal the command never runs, and the status is that signal's.
#[expect(clippy::too_many_arguments, reason = "run's one call; each is a part of the start")]
fn spawn_and_wait<'s>(
    command: &[OsString],
    policy: &Policy,
    start: &Start<'_>,
    opts: &RunOptions,
    unix: Option<crate::harden::unix::Guard>,
    forwarder: &Forwarder,
    make: impl FnOnce() -> Result<&'s Made, RunError>,
    ready: impl FnOnce(&Cgroup) -> Result<Option<i32>, RunError>,
) -> Result<ExitStatus, RunError> {
    let Start { workspace, ruleset, filter } = *start;
    let mut protect = vec![opts.state_dir.clone()];
    protect.extend(std::env::current_exe().ok());
    protect.extend(workspace.read_only().iter().cloned());
    let carried = carried_into_tmp(workspace, unix.as_ref())?;
    let mut confinement =
        Confinement::prepare(opts.identity, &opts.keep_fds, &protect, Some(workspace.tmp()), &carried)
            .map_err(RunError::Confine)?;
    confinement.pin_dirs(workspace.pinned()).map_err(RunError::Confine)?;
    if let Dns::Pinned { stub: Some(stub) } = policy.dns {
        let binds = resolver_binds(policy, stub, workspace.dir()).map_err(RunError::Confine)?;
        confinement.bind_files(&binds).map_err(RunError::Confine)?;
    }
    let unix_child = unix.as_ref().map(crate::harden::unix::Guard::child_start);
    // SAFETY: getpid has no preconditions.
    let parent_pid = unsafe { libc::getpid() };

    let (program, args) = command.split_first().expect("clap requires a command");
    let identity = opts.identity.unwrap_or_else(Identity::current);
    let account = Account::lookup(identity.uid);
    let env = child_env(std::env::vars_os(), &account, workspace.home(), &proxy_env(policy));
    let search_path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.to_string_lossy().into_owned());
    let exec = Exec::new(program, args, &env).map_err(RunError::Confine)?;
    let searched = exec.searched();
    let (cg, dir) = make()?;
    let enter = enter_of(cg, dir.as_ref(), opts)?;
    let (procs_fd, handshake) = match &enter {
        Enter::Born { procs, .. } => (procs.as_raw_fd(), None),
        Enter::Moved(entry) => (-1, Some(entry.child_end())),
    };
    let start = CommandStart {
        signals: signal_set(),
        parent: parent_pid,
        procs_fd,
        handshake,
        confinement: &confinement,
        ruleset,
        filter,
        unix: unix_child.as_ref(),
        exec: &exec,
    };
    let start_command = |born, gate| start.run(born, gate);

    let name = program.to_string_lossy().into_owned();
    let (pending, procs, mover) = match enter {
        Enter::Born { dir, procs } => {
            // SAFETY: `start_command` keeps to what a child of a raw clone
            // may do (see above).
            let pending = unsafe { spawn::spawn(spawn::Start::InCgroup(dir.as_fd()), start_command) };
            drop(dir);
            (pending, Some(procs), None)
        }
        Enter::Moved(entry) => {
            let mover = entry.start();
            // SAFETY: as above.
            (unsafe { spawn::spawn(spawn::Start::Here, start_command) }, None, Some(mover))
        }
    };
    let spawned = match through_gate(pending, mover, || ready(cg))? {
        AtGate::Started(spawned) => spawned,
        AtGate::Stopped(status) => return Ok(status),
    };
    let mut child = spawned.map_err(|source| {
        if source.raw_os_error() == Some(PROOF_FAILED) {
            RunError::NotEnforced
        } else if searched && source.kind() == io::ErrorKind::NotFound {
            RunError::NotFound {
                command: name.clone(),
                path: search_path.unwrap_or_else(|| "/bin:/usr/bin (default)".to_owned()),
                user: format!("uid {} ({})", identity.uid, account.name),
            }
        } else {
            RunError::Spawn { command: name.clone(), source }
        }
    })?;
    drop(procs);
    let child_pid = child.id();
    // The cgroup as /proc/PID/cgroup names it, for the supervisor only
    // (finding the mount reads /proc/self/mountinfo).
    let relative = || {
        crate::cgroup::cgroup2_mount()
            .ok()
            .and_then(|root| cg.path.strip_prefix(root).ok().map(|r| format!("/{}", r.display())))
            .unwrap_or_default()
    };
    let supervisor = match unix.map(|g| g.supervise(relative())).transpose() {
        Ok(s) => s,
        Err(e) => {
            // Fail closed: without a supervisor the command's connect and
            // bind calls fail (ENOSYS), but it must not run at all.
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child_pid, libc::SIGKILL) };
            let _ = child.wait();
            return Err(RunError::Confine(e));
        }
    };
    // Forward until it exits, then reap: a signal never goes to a pid that
    // has been reaped and may name another process.
    forwarder.forward_until_exit(child_pid);
    let status = child.wait().map_err(|source| RunError::Spawn { command: name, source });
    if let Some(s) = supervisor {
        s.stop();
    }
    status
}

/// What became of the command's process at its gate.
enum AtGate {
    /// Let on: the outcome of its start (exec'd, or the error that
    /// stopped it).
    Started(io::Result<spawn::Child>),
    /// Ended there by an early signal, whose status `run` reports.
    Stopped(ExitStatus),
}

/// The child is at its gate, or on its way there: `ready` puts the policy
/// in place, and the child is let on only if that succeeded and no signal
/// asked `run` to stop meanwhile. Otherwise it ends at its gate.
fn through_gate(
    pending: io::Result<spawn::Pending>,
    mover: Option<Mover>,
    ready: impl FnOnce() -> Result<Option<i32>, RunError>,
) -> Result<AtGate, RunError> {
    let spawned = match pending.map(|p| (ready(), p)) {
        Ok((Ok(None), pending)) => pending.release(),
        Ok((stopped, pending)) => {
            // Killed, then reaped only once the thread that has the agent
            // move it is done with its pid.
            pending.kill();
            if let Some(m) = mover {
                let _ = m.after_spawn(Err(io::Error::from_raw_os_error(libc::ECANCELED)));
            }
            pending.cancel();
            return stopped
                .map(|sig| AtGate::Stopped(std::os::unix::process::ExitStatusExt::from_raw(sig.unwrap_or(0))));
        }
        Err(e) => Err(e),
    };
    Ok(AtGate::Started(match mover {
        Some(m) => m.after_spawn(spawned)?,
        None => spawned,
    }))
}

/// What the child does between clone and exec, prepared in the parent.
struct CommandStart<'a> {
    /// The forwarded signals, which the runner blocks.
    signals: libc::sigset_t,
    /// The runner's pid.
    parent: libc::pid_t,
    /// `cgroup.procs` of the sandbox, for a child not created in it.
    procs_fd: i32,
    /// The agent's handshake, for a child it moves.
    handshake: Option<Handshake>,
    confinement: &'a Confinement,
    ruleset: &'a landlock::Prepared,
    filter: &'a seccomp::SeccompFilter,
    unix: Option<&'a crate::harden::unix::ChildStart>,
    exec: &'a Exec,
}

impl CommandStart<'_> {
    /// In the child: enters the sandbox (unless clone3 created it there),
    /// proves the hooks fire, confines itself and execs the command;
    /// returns only the error that kept the command from starting. System
    /// calls on prepared values only, no allocation ([`crate::spawn`] says
    /// why).
    fn run(&self, born: spawn::Born, gate: spawn::Gate) -> io::Error {
        match self.setup(born, gate) {
            // The PATH search happens here, as the identity, under
            // Landlock: `exec` returns only if nothing could be run.
            Ok(()) => self.exec.exec(),
            Err(e) => e,
        }
    }

    fn setup(&self, born: spawn::Born, gate: spawn::Gate) -> io::Result<()> {
        let Self { signals, parent, procs_fd, handshake, confinement, ruleset, filter, unix, exec: _ } = self;
        // SAFETY: async-signal-safe system calls on values of `self`: the
        // mask, the SIGPIPE and SIGCHLD dispositions, the parent-death
        // signal, one write of a static byte.
        unsafe {
            // The runner blocks the forwarded signals and ignores SIGPIPE;
            // the command gets neither.
            libc::sigprocmask(libc::SIG_UNBLOCK, signals, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if SIGCHLD_IGNORED.load(std::sync::atomic::Ordering::Relaxed) {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            }
            // Die with the runner, so nothing outlives cleanup unnoticed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != *parent {
                return Err(io::Error::last_os_error());
            }
            // Enter the sandbox cgroup before the first instruction of the
            // command runs, unless clone3 created the child there. If this
            // fails, exec never happens.
            match (born, handshake) {
                (spawn::Born::InCgroup, _) => {}
                (spawn::Born::Outside, None) => {
                    if libc::write(*procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                (spawn::Born::Outside, Some(h)) => h.wait_until_moved()?,
            }
        }
        confinement.apply()?;
        if confinement.private_shm() {
            ruleset.grant_write(c"/dev/shm")?;
        }
        // The seccomp filter forbids the mount calls `apply` made; it is
        // loaded while the runner still attaches the policy (the kernel's
        // translation of the filter then costs the command nothing).
        filter.apply()?;
        // The runner lets the child on once the sandbox's policy is in
        // place: nothing below runs before it (and `prove_enforced` checks
        // that the hooks do fire).
        gate.wait()?;
        prove_enforced()?;
        // Landlock (it needs no_new_privs, which `apply` set) after the
        // proof: its TCP rules (--landlock-tcp) would refuse the proof's
        // connect before the programs see it.
        ruleset.restrict_self()?;
        // The UNIX socket helper and notification filter last: the helper
        // gets everything above, and nothing after this point may connect
        // or bind on the supervisor's behalf.
        if let Some(u) = unix {
            u.start()?;
        }
        Ok(())
    }
}

/// The host paths bound into the private /tmp at their own paths: the
/// workspace's carried directories, and allowed host sockets under /tmp
/// (unless a carried directory holds them already).
fn carried_into_tmp(
    workspace: &crate::harden::workspace::Workspace,
    unix: Option<&crate::harden::unix::Guard>,
) -> Result<Vec<(PathBuf, PathBuf)>, RunError> {
    let mut carried = workspace.carried().to_vec();
    if let Some(g) = unix {
        for (host, inside) in crate::harden::unix::tmp_binds(&g.allowed_paths(), workspace.tmp()) {
            if carried.iter().any(|(dir, _)| host.starts_with(dir)) {
                continue;
            }
            let made = inside.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
                std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&inside).map(drop)
            });
            made.map_err(RunError::Confine)?;
            carried.push((host, inside));
        }
    }
    Ok(carried)
}

/// How the child enters the sandbox.
enum Enter {
    /// clone3 creates it in the cgroup whose directory `dir` is (opened
    /// here, or the agent's fd of it); where that is unavailable, the
    /// child writes `procs` (that cgroup's `cgroup.procs`) itself.
    Born { dir: std::os::fd::OwnedFd, procs: std::fs::File },
    /// For a caller that is not root, the agent moves it while it waits
    /// ([`Entry`]).
    Moved(Box<Entry>),
}

fn enter_of(cg: &Cgroup, dir: Option<&std::os::fd::OwnedFd>, opts: &RunOptions) -> Result<Enter, RunError> {
    let procs_path = cg.procs_path();
    let io_err = |action: &'static str, path: PathBuf| move |source| CgroupError::Io { action, path, source };
    let dir = match (dir, &opts.agent) {
        (None, Some(agent)) => return Ok(Enter::Moved(Box::new(Entry::new(agent, cg).map_err(RunError::Confine)?))),
        (None, None) => std::fs::File::open(&cg.path).map(std::os::fd::OwnedFd::from),
        // Through the agent's fd of the cgroup, not by name.
        (Some(dir), _) => dir.try_clone(),
    };
    let dir = dir.map_err(io_err("opening", cg.path.clone()))?;
    let procs = crate::sys::openat_file(dir.as_fd(), c"cgroup.procs", libc::O_WRONLY | libc::O_CLOEXEC)
        .map_err(io_err("opening", procs_path))?;
    Ok(Enter::Born { dir, procs })
}

/// The errno `prove_enforced` fails the spawn with.
/// A child that the agent moves into its sandbox (a caller that is not
/// root): the child sends its pid on `ready` and waits on `go` before it
/// does anything else; a thread of the runner opens a pidfd of it, sends
/// `enter` to the agent with it, checks where the child is, and only then
/// lets it go on. Closing `go` without a byte ends the child before exec.
struct Entry {
    agent: AgentTarget,
    cgroup: PathBuf,
    ready: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    go: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

/// The child's end of an [`Entry`]: raw descriptors, used between fork and
/// exec with async-signal-safe calls only.
#[derive(Clone, Copy)]
struct Handshake {
    ready_w: i32,
    ready_r: i32,
    go_r: i32,
    go_w: i32,
}

impl Handshake {
    /// In the child: sends its pid, then waits for the byte that says it
    /// is in the sandbox.
    fn wait_until_moved(self) -> io::Result<()> {
        // SAFETY: close(2), getpid(2), write(2) and read(2) on descriptors
        // the child inherited, with a stack buffer.
        unsafe {
            // The runner's ends: the child must not hold them, or a runner
            // that gives up could never make `go` read as closed.
            libc::close(self.ready_r);
            libc::close(self.go_w);
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(self.ready_w, pid.as_ptr().cast(), pid.len()) != 4 {
                return Err(io::Error::last_os_error());
            }
            libc::close(self.ready_w);
            let mut b = 0u8;
            let n = libc::read(self.go_r, (&raw mut b).cast(), 1);
            libc::close(self.go_r);
            if n != 1 || b != b'g' {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
        }
        Ok(())
    }
}

fn cloexec_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}

/// The thread that has the agent move the child.
struct Mover {
    thread: std::thread::JoinHandle<Result<(), RunError>>,
    spawned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Entry {
    fn new(agent: &AgentTarget, cg: &Cgroup) -> io::Result<Self> {
        Ok(Self { agent: agent.clone(), cgroup: cg.path.clone(), ready: cloexec_pipe()?, go: cloexec_pipe()? })
    }

    fn child_end(&self) -> Handshake {
        Handshake {
            ready_r: self.ready.0.as_raw_fd(),
            ready_w: self.ready.1.as_raw_fd(),
            go_r: self.go.0.as_raw_fd(),
            go_w: self.go.1.as_raw_fd(),
        }
    }

    /// Starts the thread; call right before `spawn`.
    fn start(self) -> Mover {
        let spawned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&spawned);
        let thread = std::thread::spawn(move || self.run(&done));
        Mover { thread, spawned }
    }

    fn run(self, spawned: &std::sync::atomic::AtomicBool) -> Result<(), RunError> {
        let Self { agent, cgroup, ready: (ready_r, _ready_w), go: (_go_r, go_w) } = self;
        let refused = |m: String| RunError::Confine(io::Error::other(m));
        // The child's pid, or nothing if spawn ended first (the child died).
        let mut pid = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let mut pfd = libc::pollfd { fd: ready_r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&raw mut pfd, 1, 100) };
            if n == 0 {
                if spawned.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(refused("the command's process ended before it could enter its sandbox".into()));
                }
                continue;
            }
            // SAFETY: read(2) into the rest of a stack buffer.
            let r = unsafe { libc::read(ready_r.as_raw_fd(), pid[got..].as_mut_ptr().cast(), 4 - got) };
            match usize::try_from(r) {
                Ok(0) => return Err(refused("the command's process ended before it could enter its sandbox".into())),
                Ok(k) => got += k,
                Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(RunError::Confine(io::Error::last_os_error())),
            }
        }
        let pid = i32::from_ne_bytes(pid);
        // SAFETY: pidfd_open on our own child, which waits unreaped.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let raw = i32::try_from(raw)
            .ok()
            .filter(|&fd| fd >= 0)
            .ok_or_else(|| RunError::Confine(io::Error::last_os_error()))?;
        // SAFETY: a new descriptor nothing else owns.
        let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let request = crate::agent::protocol::Request::Enter { cgroup: cgroup.display().to_string() };
        let mut client = crate::agent::client::Client::connect(&agent.socket, agent.timeout)?;
        client.call_sending_fd(&request, pidfd.as_fd())?;
        // The agent's word is checked: the child is where it says (by the
        // whole path where this mount namespace shows cgroup2, else by the
        // sandbox's unique name: `ip netns exec` hides the mount).
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(RunError::Confine)?;
        let now_path = crate::agent::enter::parse_cgroup(&now);
        let there = match crate::cgroup::cgroup2_mount() {
            Ok(mount) => crate::agent::enter::relative(&mount, &cgroup).is_some_and(|w| now_path == Some(w.as_str())),
            Err(_) => cgroup
                .file_name()
                .is_some_and(|name| now_path.is_some_and(|p| p.ends_with(&format!("/{}", name.to_string_lossy())))),
        };
        if !there {
            return Err(refused(format!(
                "the agent said the command's process entered {}, but it is in {}",
                cgroup.display(),
                crate::agent::enter::parse_cgroup(&now).unwrap_or("?")
            )));
        }
        // SAFETY: write(2) of one byte from a static buffer.
        if unsafe { libc::write(go_w.as_raw_fd(), b"g".as_ptr().cast(), 1) } != 1 {
            return Err(RunError::Confine(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Mover {
    /// After `spawn` returned: the thread's refusal, if any, which says
    /// more than the child's error (the thread has ended, or ends now that
    /// it sees the spawn is over). A child that started anyway is killed.
    fn after_spawn(self, spawned: io::Result<spawn::Child>) -> Result<io::Result<spawn::Child>, RunError> {
        self.spawned.store(true, std::sync::atomic::Ordering::Release);
        let moved = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(RunError::Confine(io::Error::other("the thread moving the command panicked"))));
        match (moved, spawned) {
            (Ok(()), spawned) => Ok(spawned),
            (Err(e), Ok(mut child)) => {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child.id(), libc::SIGKILL) };
                let _ = child.wait();
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }
}

const PROOF_FAILED: i32 = libc::ENOTRECOVERABLE;

/// Proves, in the child after it entered the sandbox cgroup, that the hooks
/// fire there: a connect to the sentinel (which every policy refuses, on
/// the proof port the programs keep out of events and counters) must fail
/// with `EPERM`. Anything else (the kernel not running cgroup v2 socket
/// hooks for this process, say) stops the command before `exec`. Only
/// async-signal-safe calls: it runs between fork and exec.
fn prove_enforced() -> io::Result<()> {
    // SAFETY: plain socket(2), connect(2) and close(2) on a local
    // sockaddr_in; no allocation.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
        sa.sin_port = sbx_common::PROOF_PORT.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(sbx_common::SENTINEL);
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
        let rc = libc::connect(fd, (&raw const sa).cast(), len);
        let errno = *libc::__errno_location();
        libc::close(fd);
        if rc == 0 || errno != libc::EPERM {
            // No allocation here (another thread may hold the allocator's
            // lock): a distinctive errno, which the parent turns into
            // `RunError::NotEnforced`.
            return Err(io::Error::from_raw_os_error(PROOF_FAILED));
        }
    }
    Ok(())
}

/// The threads that print what the kernel reports during a run: deny
/// events (`--log-denials`) and decision traces (`-vv`).
struct Readers {
    logger: Option<DenialLogger>,
    tracer: Option<crate::trace::Tracer>,
}

impl Readers {
    fn start(cg: &Cgroup, paths: &Paths, opts: &RunOptions) -> Self {
        let logger = opts
            .log_denials
            .then(|| DenialLogger::start(cg, paths).map_err(|e| crate::warn_user!("--log-denials: {e}")).ok())
            .flatten();
        let tracer = opts
            .trace
            .then(|| crate::trace::Tracer::start(cg.id, paths).map_err(|e| crate::warn_user!("-vv tracing: {e}")).ok())
            .flatten();
        Self { logger, tracer }
    }

    /// Prints what is left and stops.
    fn stop(self) {
        let Self { logger, tracer } = self;
        if let Some(l) = logger {
            l.stop();
        }
        if let Some(t) = tracer {
            t.stop();
        }
    }
}

/// Prints a sandbox's deny events to stderr from a thread.
struct DenialLogger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl DenialLogger {
    fn start(cg: &Cgroup, paths: &Paths) -> Result<Self, RunError> {
        use std::sync::{atomic::AtomicBool, Arc};
        let mut reader = crate::events::EventReader::open(&paths.pin_dir(cg.id))
            .map_err(|e| RunError::Confine(io::Error::other(e)))?;
        let mut record = crate::state::Record::load(paths, cg.id).ok().flatten();
        let name = cg.path.display().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (pin_dir, paths, cgroup_id) = (paths.pin_dir(cg.id), paths.clone(), cg.id);
        let thread = std::thread::spawn(move || {
            let print = |reader: &mut crate::events::EventReader, record: Option<&crate::state::Record>| {
                for e in reader.drain() {
                    // One write per line: it must not interleave with the
                    // command's own stderr. A closed stderr drops the line.
                    crate::diag::line(format_args!("sbx: {}", crate::events::view(&e, &name, record)));
                }
            };
            for tick in 0u64.. {
                let done = flag.load(std::sync::atomic::Ordering::Acquire);
                print(&mut reader, record.as_ref());
                if done {
                    return;
                }
                // An `update` keeps the ring buffer (a migration from an
                // older sbx pins a new one) and records a new policy: follow
                // both, so the rule text names the policy in force.
                if tick % 10 == 9 {
                    if let Ok(Some(r)) = crate::state::Record::load(&paths, cgroup_id) {
                        if record.as_ref().is_none_or(|old| old.generation != r.generation) {
                            print(&mut reader, record.as_ref());
                            record = Some(r);
                        }
                    }
                    if let Ok(fresh) = crate::events::EventReader::open(&pin_dir) {
                        if fresh.id() != reader.id() {
                            print(&mut reader, record.as_ref());
                            reader = fresh;
                        }
                    }
                }
                reader.wait(Duration::from_millis(100));
            }
        });
        Ok(Self { stop, thread })
    }

    /// Prints what is left and stops.
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FlagInput;

    fn policy(flags: &FlagInput) -> Policy {
        Policy::from_sources(None, None, flags).expect("valid")
    }

    #[test]
    fn proxy_variables() {
        assert!(proxy_env(&policy(&FlagInput::default())).is_empty());
        for loopback in [None, Some("any"), Some("3128")] {
            let p = policy(&FlagInput {
                proxy: Some("127.0.0.1:3128".into()),
                loopback: loopback.map(Into::into),
                ..FlagInput::default()
            });
            let env = proxy_env(&p);
            assert!(env.contains(&("https_proxy", "http://127.0.0.1:3128".to_owned())), "{env:?}");
            assert!(env.contains(&("NO_PROXY", "localhost,127.0.0.1,::1,127.0.0.0/8".to_owned())), "{env:?}");
            assert!(env.contains(&("no_proxy", NO_PROXY.to_owned())), "{env:?}");
            assert_eq!(env.len(), 8, "{env:?}");
        }
    }

    #[test]
    fn landlock_tcp_layer_only_where_ports_say_the_same() {
        let proxy = policy(&FlagInput {
            proxy: Some("127.0.0.1:3128".into()),
            allow: vec!["10.1.2.3:5432".into(), "udp://10.0.0.53:53".into()],
            ..FlagInput::default()
        });
        let t = landlock_tcp_rules(&proxy).expect("proxy-only with ported rules");
        assert_eq!(t.connect, Some(vec![53, 3128, 5432]), "53: the DNS stub of dns = \"pinned\"");
        assert_eq!(t.bind, None);
        // loopback any, a portless allow, default allow, audit, redirect: none.
        assert!(landlock_tcp_rules(&policy(&FlagInput::default())).is_none());
        for flags in [
            FlagInput { loopback: Some("none".into()), allow: vec!["10.0.0.0/8".into()], ..FlagInput::default() },
            FlagInput { loopback: Some("none".into()), default: Some("allow".into()), ..FlagInput::default() },
            FlagInput { proxy: Some("127.0.0.1:3128".into()), audit: true, ..FlagInput::default() },
            FlagInput { proxy: Some("127.0.0.1:3128".into()), proxy_redirect: true, ..FlagInput::default() },
            FlagInput { loopback: Some("1-2000".into()), ..FlagInput::default() },
        ] {
            assert!(landlock_tcp_rules(&policy(&flags)).is_none(), "{flags:?}");
        }
        // Offline (loopback none): every TCP connect refused by both layers.
        let none = policy(&FlagInput { loopback: Some("none".into()), ..FlagInput::default() });
        assert_eq!(landlock_tcp_rules(&none).expect("ports").connect, Some(vec![53]));
        let host =
            policy(&FlagInput { loopback: Some("none".into()), dns: Some("host".into()), ..FlagInput::default() });
        assert_eq!(landlock_tcp_rules(&host).expect("ports").connect, Some(vec![]));
    }
}
