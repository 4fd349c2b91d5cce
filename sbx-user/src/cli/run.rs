//! `sbx-user run`: run a command in a fresh sandbox.

use std::{ffi::OsString, path::PathBuf};

use clap::Args;

use super::{GlobalArgs, PolicyArgs};
use crate::run::{run as run_sandboxed, RunOptions, EXIT_SETUP_FAILED};

// Arguments of `run`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
#[expect(clippy::struct_excessive_bools, reason = "each is an independent command-line switch")]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Parent cgroup for the sandbox (default: `sbx` under the cgroup2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,
    /// Run the command as UID[:GID] (numeric). Default: the invoking user
    /// from sudo (`SUDO_UID`/`SUDO_GID`), else nobody (65534:65534). `--user 0`
    /// keeps root, still without any capability. Whoever it runs as, the
    /// default filesystem rules keep it from writing outside the working
    /// directory, its private HOME and /tmp (see FILES below).
    #[arg(long, value_name = "UID[:GID]", value_parser = crate::confine::parse_identity)]
    pub user: Option<crate::confine::Identity>,
    /// HOME for the command, granted for writing. Default: a private,
    /// empty per-run directory, removed when the command ends.
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Leave this inherited file descriptor open in the command (all
    /// others above 2 are closed); repeatable.
    #[arg(long, value_name = "N")]
    pub keep_fd: Vec<u32>,
    /// Run even if the kernel cannot enforce the filesystem rules or the
    /// `unix` setting the user gave, and say what is not enforced.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Second layer: Landlock TCP connect-port rules under the eBPF policy,
    /// where port-only rules say the same thing (default deny, every TCP
    /// allowance with ports, loopback not "any"). Landlock judges before the
    /// cgroup hook, so a connect it refuses fails with EACCES and produces no
    /// sbx event.
    #[arg(long)]
    pub landlock_tcp: bool,
    /// Hand the command a socket on stdin, stdout or stderr even when it is
    /// an `AF_INET`/`AF_INET6` socket, a listening socket, or of a family the
    /// sandbox may not create. Such a socket was made outside the sandbox
    /// and is never judged by the policy (inetd-style activation, `socat
    /// EXEC:`), so by default `run` refuses to start (exit 125). A connected
    /// `AF_UNIX` socket (journald) is always allowed.
    #[arg(long)]
    pub allow_stdio_sockets: bool,
    /// Let the command write the working directory's git repository, so it
    /// can commit, stash or rebase there. By default every repository in
    /// what the command may write is read-only for it: git outside the
    /// sandbox runs what a repository says (hooks, `core.fsmonitor`, a
    /// `commondir`, a rebase's `exec` lines, a replaced `.git`), at your
    /// next `git status` or shell prompt. With this flag only `.git/hooks`
    /// and `.git/config` stay read-only, which stops the plainest of those
    /// and not the rest: use it for commands you trust with your checkout.
    #[arg(long)]
    pub git_writable: bool,
    /// Print each denial to stderr as it happens.
    #[arg(long)]
    pub log_denials: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `run --help`'s text after the options: the policy file, then what the
/// command may read and write.
#[must_use]
pub fn long_help(policy_help: &str) -> String {
    use crate::{
        confine::TOOL_HOMES,
        harden::workspace::{IMPLICIT_READ, IMPLICIT_WRITE},
    };
    let tools: Vec<&str> = TOOL_HOMES.iter().map(|(var, _)| *var).collect();
    format!(
        "{policy_help}

FILES (Landlock):
  Without filesystem rules ([filesystem], --fs-read, --fs-write) run applies
  defaults, so that the command cannot write the user's dotfiles or other
  projects (files that run later, outside the sandbox):
    read, execute  everything the identity's permissions allow (/)
    write          the working directory (not when it is /, /tmp, a home
                   directory, contains one, or is inside a dot-directory of
                   one), the private HOME and /tmp, the devices below
    read-only      .git/hooks and .git/config of a checkout in the working
                   directory (they run at the user's next git command)
  With filesystem rules, exactly those, plus HOME, /tmp and what every
  process needs:
    read, write    {write}
    read           {read}
  In both cases a regular file given as stdin (read), stdout or stderr (write)
  stays reachable by name (echo usage >/dev/stderr).
  HOME is a private, empty per-run directory (or --home DIR) and /tmp a
  private per-run directory mounted over /tmp; both are removed when the
  command ends. HOME, USER and LOGNAME name the identity the command runs as;
  XDG_RUNTIME_DIR is unset. When HOME is not the identity's own,
  {tools}
  point at the identity's real ones if they exist (read-only unless a rule
  grants them), so toolchains installed there keep working.
  The command is looked up in PATH as the identity it runs as: directories it
  cannot search are skipped (not found: exit 127).

THROUGH THE HOST AGENT (--agent-socket, or one answering on /run/sbx/agent.sock):
  The agent makes and holds the sandbox; the command is still this process's
  child (same terminal, job control, working directory). A member of the
  agent's group who is not root may run commands this way, as itself only
  (--user of anyone else is refused): the agent moves the command's process
  into the sandbox before it executes anything. It then runs without the
  private mount namespace (a process that is not root cannot make one): the
  host's /tmp (as the Landlock rules allow), a private HOME, and --dns host
  (the DNS stub's resolver files need mounts). -vv is for root.",
        write = IMPLICIT_WRITE.join(" "),
        read = IMPLICIT_READ.join(" "),
        tools = tools.join(", "),
    )
}

/// Runs the command; returns the exit status to exit with.
#[must_use]
pub fn run(args: &RunArgs, global: &GlobalArgs) -> i32 {
    // From the first message on (`-v` times reading the policy): a closed
    // stderr is an EPIPE, not the end of `run` (see `crate::run::run`).
    crate::diag::ignore_sigpipe();
    let policy = match args.policy.policy() {
        Ok(p) => p,
        Err(e) => {
            crate::error_user!("{e}");
            return EXIT_SETUP_FAILED;
        }
    };
    let agent = match super::via_agent::run_target(&args.policy, global) {
        Ok(Some(_)) if args.cgroup_parent.is_some() => {
            crate::error_user!("--cgroup-parent: through the host agent, the agent puts the sandbox below its own cgroup root; pass --agent-socket none to choose the parent");
            return EXIT_SETUP_FAILED;
        }
        Ok(Some(_))
            if matches!(policy.dns, crate::policy::Dns::Pinned { .. })
                && policy.mode == crate::policy::Mode::Enforce
                && crate::confine::Identity::current().uid != 0 =>
        {
            crate::error_user!("dns = \"pinned\": the DNS stub (the default where the default is deny) needs its resolver files mounted over the command's, which only root's `run` can do; pass --dns host");
            return EXIT_SETUP_FAILED;
        }
        Ok(Some(_)) if global.verbose >= 2 && crate::confine::Identity::current().uid != 0 => {
            crate::error_user!("-vv: only root may trace a sandbox made by the host agent (the program set's trace buffer holds every traced sandbox's lines)");
            return EXIT_SETUP_FAILED;
        }
        Ok(a) => a,
        Err(e) => {
            crate::error_user!("{}", super::error_text(&e));
            return EXIT_SETUP_FAILED;
        }
    };
    // Without an agent, only root makes sandboxes. Through one, a member of
    // its group runs commands as itself alone.
    let me = crate::confine::Identity::current();
    let identity = if me.uid == 0 {
        Some(args.user.unwrap_or_else(default_identity))
    } else if agent.is_none() {
        if let Err(e) = super::require_root("run") {
            crate::error_user!("{e}");
        }
        return EXIT_SETUP_FAILED;
    } else if let Some(user) = args.user.filter(|u| u.uid != me.uid || u.gid != me.gid) {
        crate::error_user!(
            "--user {}:{}: through the host agent, a user that is not root runs commands as itself only (uid {}:{})",
            user.uid,
            user.gid,
            me.uid,
            me.gid
        );
        return EXIT_SETUP_FAILED;
    } else {
        None
    };
    let opts = RunOptions {
        cgroup_parent: args.cgroup_parent.clone(),
        max_entries: args.policy.max_rules,
        identity,
        state_dir: global.state_dir.clone(),
        keep_fds: args.keep_fd.clone(),
        log_denials: args.log_denials,
        allow_degraded: args.allow_degraded,
        landlock_tcp: args.landlock_tcp,
        allow_stdio_sockets: args.allow_stdio_sockets,
        git_writable: args.git_writable,
        home: args.home.clone(),
        trace: global.verbose >= 2,
        agent,
    };
    match run_sandboxed(&args.command, &policy, &opts, &global.paths()) {
        Ok(code) => code,
        Err(e) => {
            crate::error_user!("{e}");
            e.exit_code()
        }
    }
}

/// Who the command runs as without `--user`: the user sudo was invoked by,
/// else nobody. Never root by default: a root command, even without
/// capabilities, owns every root-owned file on the host.
fn default_identity() -> crate::confine::Identity {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok()).filter(|&v| v != 0);
    match (var("SUDO_UID"), var("SUDO_GID")) {
        (Some(uid), Some(gid)) => crate::confine::Identity { uid, gid },
        (Some(uid), None) => crate::confine::Identity { uid, gid: uid },
        _ => crate::confine::Identity { uid: 65534, gid: 65534 },
    }
}
