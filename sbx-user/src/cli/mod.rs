//! Command-line interface: argument definitions and one module per
//! subcommand. `main.rs` only parses and dispatches.
//!
//! # Exit statuses
//! `run` exits with the command's status (128+N when a signal N killed
//! it), [`EXIT_ERROR`] (125) when sbx itself fails or the command line is
//! wrong, 126 when the command cannot be executed and 127 when it is not
//! found, as a shell does. Every other subcommand exits [`EXIT_OK`] (0) on
//! success, [`EXIT_NEGATIVE`] (1) for a negative verdict (`verify` finds a
//! sandbox not enforcing, `check` finds a policy invalid; a subcommand
//! says so by returning [`Negative`]) and [`EXIT_ERROR`] for its own errors
//! and usage errors. So a wrapper can always tell sbx's failures from the
//! command's, and a verdict from a failure to reach one.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::{
    compile::{DEFAULT_MAX_ENTRIES, MAX_MAX_ENTRIES},
    policy::Policy,
    state::{Paths, DEFAULT_BPFFS, DEFAULT_STATE_DIR},
};

pub mod agent;
pub mod attach;
pub mod check;
pub mod detach;
pub mod events;
pub mod gc;
pub mod generate;
pub mod oci_hook;
pub mod origdst;
pub mod profiles;
pub mod run;
pub mod status;
pub mod update;
pub mod verify;
pub mod via_agent;

const POLICY_HELP: &str = "\
POLICY FILE (TOML):
  [network]
  default  = \"deny\"                # what no rule matches: \"deny\" | \"allow\"
  loopback = \"any\"                 # \"any\" | \"none\" | [3128, \"8000-8100\"]
  proxy    = \"127.0.0.1:3128\"      # proxy-only mode
  proxy_mode = \"deny\"              # \"deny\" | \"redirect\": refuse, or send to the proxy
  allow    = [\"10.1.2.3:5432\", \"192.168.0.0/16:80,443\", \"[2001:db8::/32]:443\", \"udp://10.0.0.53:53\"]
  deny     = [\"private\", \"metadata\", \":25\", \"tcp://0.0.0.0/0:6000-6063\"]
  bind     = \"loopback\"            # \"loopback\" | \"any\" | [\"0.0.0.0:8080\", ...]
  mode     = \"enforce\"             # \"enforce\" | \"audit\" (block nothing, report)
  unix     = \"none\"                # host UNIX sockets: \"any\" | \"none\" | [\"/run/x.sock\", ...]

  [filesystem]                     # Landlock, `run` only
  read  = [\"/usr\", \"/etc\", \"/lib\", \"/lib64\", \"/bin\"]   # read and execute
  write = [\"/tmp\", \".\"]                                  # read, write, create, remove

RULES: [tcp://|udp://]TARGET[:PORTS]
  TARGET  IPv4/IPv6 address, CIDR ([v6/len] when ports follow), empty for any
          host (\":25\"), or a token: any, private (RFC 1918, 100.64/10,
          169.254/16, fc00::/7, fe80::/10), metadata (169.254.169.254,
          fd00:ec2::254), or a host name (allow rules only): resolved once
          when the policy is applied and pinned to those addresses.
  PORTS   N, N-M, comma lists, or *. No protocol means TCP and UDP.

PRECEDENCE:
  1. Loopback (127.0.0.0/8, ::1) and unspecified (0.0.0.0, ::) destinations
     are decided by `loopback` alone.
  2. Among the rules matching address, port and protocol, the longest prefix
     decides; on a tie, deny wins.
  3. Otherwise `default`.
  IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
  destinations obey the IPv4 rules. Multicast, broadcast and 0.0.0.0/8 are
  denied unless a rule names them.

PROXY-ONLY MODE (proxy = ADDR:PORT):
  The default becomes deny, the proxy is allowed, explicit allow rules still
  apply. Without `loopback`, a loopback proxy leaves only its own port
  reachable on loopback. `run` exports HTTP_PROXY/HTTPS_PROXY/ALL_PROXY, and
  NO_PROXY=localhost,127.0.0.1,::1,127.0.0.0/8 (loopback is the policy's to
  decide, not the proxy's). The proxy connects on the sandbox's behalf: run it
  under a policy of its own, e.g.
    sbx-user run --profile open --loopback 3128 -- tinyproxy -d -c CONF

UNIX SOCKETS (run only):
  `unix` names the host's pathname sockets the command may connect to
  (ssh-agent, /dev/log, D-Bus, nscd, docker.sock, a database): \"any\" (default
  when nothing says, and the open profile), \"none\" (agent and offline
  profiles) or a list. Sockets the command binds itself always work.
  --unix PATH adds to the list; --unix any|none replaces it.

Flags add rules to the file (--allow, --deny, --unix PATH) or override its
settings (--default, --loopback, --proxy, --bind, --unix any|none). A profile
is applied first.";

/// Exit status of a subcommand that did what was asked.
pub const EXIT_OK: i32 = 0;
/// Exit status of a negative verdict: `verify` found a sandbox that is not
/// enforcing, `check` found the policy invalid.
pub const EXIT_NEGATIVE: i32 = 1;
/// Exit status of sbx's own errors and of usage errors, in every
/// subcommand; the same status `run` uses when it cannot set up, so that
/// it never collides with a command's own failure statuses.
pub const EXIT_ERROR: i32 = crate::run::EXIT_SETUP_FAILED;

/// The exit statuses, as `--help` shows them.
const EXIT_HELP: &str = "\
EXIT STATUS:
  run       the command's status (128+N if signal N killed it); 125 if sbx
            failed or the command line is wrong; 126 if the command cannot be
            executed, 127 if it is not found
  others    0 on success; 1 for a negative verdict (verify: the sandbox is not
            enforcing; check: the policy is invalid); 125 if sbx failed or the
            command line is wrong";

/// A negative verdict: the subcommand worked, and its answer is no. It
/// exits with [`EXIT_NEGATIVE`] where every other error exits with
/// [`EXIT_ERROR`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Negative(pub String);

/// The exit status for an error a subcommand returned.
#[must_use]
pub fn exit_status(err: &anyhow::Error) -> i32 {
    if err.is::<Negative>() {
        EXIT_NEGATIVE
    } else {
        EXIT_ERROR
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a
/// cause whose text the message before it already contains (many errors
/// print their source in their own message).
#[must_use]
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Parses `argv`. On `--help` or `--version` prints them and returns
/// `Err(0)`; on a usage error prints it and returns `Err(EXIT_ERROR)`
/// (clap alone would exit 2, which a command run by `run` may well use).
pub fn parse(argv: &[OsString]) -> Result<Cli, i32> {
    match Cli::try_parse_from(argv) {
        Ok(cli) => Ok(cli),
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            Err(EXIT_OK)
        }
        Err(err) => {
            if let Some(fixed) = command_after_separator(argv, &err) {
                eprintln!(
                    "sbx-user: error: `{}` is not an option of `run`: put the command after --, so that \
                     sbx's options and the command's cannot be mixed up:\n  {}",
                    err.get(clap::error::ContextKind::InvalidArg).map(ToString::to_string).unwrap_or_default(),
                    shell_line(&fixed)
                );
            } else if run_without_command(argv, &err) {
                eprintln!(
                    "sbx-user: error: no command to run: put the command after --, for example\n  {} -- COMMAND [ARGS...]",
                    shell_line(argv.strip_suffix(&["--".into()]).unwrap_or(argv))
                );
            } else {
                let _ = err.print();
            }
            Err(EXIT_ERROR)
        }
    }
}

/// For `run OPTIONS COMMAND ARGS` without `--`: the command line with `--`
/// put before the first argument clap did not expect, if that then parses
/// as a `run`. Hyphenated arguments are left alone (`-x` may be a typo of
/// an option rather than a command).
fn command_after_separator(argv: &[OsString], err: &clap::Error) -> Option<Vec<OsString>> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::UnknownArgument || argv.iter().any(|a| a == "--") {
        return None;
    }
    let Some(ContextValue::String(bad)) = err.get(ContextKind::InvalidArg) else { return None };
    if bad.starts_with('-') {
        return None;
    }
    (1..argv.len()).filter(|&i| argv[i] == bad.as_str()).find_map(|i| {
        let mut fixed = argv.to_vec();
        fixed.insert(i, "--".into());
        matches!(Cli::try_parse_from(&fixed), Ok(Cli { command: Command::Run(_), .. })).then_some(fixed)
    })
}

/// Whether `err` is `run` missing its command.
fn run_without_command(argv: &[OsString], err: &clap::Error) -> bool {
    err.kind() == clap::error::ErrorKind::MissingRequiredArgument
        && argv.iter().any(|a| a == "run")
        && err.to_string().contains("<CMD>")
}

/// `argv` as a line a POSIX shell reads back as the same words.
fn shell_line(argv: &[OsString]) -> String {
    let word = |w: &OsString| {
        let w = w.to_string_lossy();
        if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
            w.into_owned()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// The clap definition of the whole command line, for the man page and
/// shell completions.
#[must_use]
pub fn command() -> clap::Command {
    Cli::command()
}

/// sbx: a Linux egress sandbox enforced by cgroup BPF programs.
#[derive(Debug, Parser)]
#[command(
    name = "sbx-user",
    version,
    about = "A Linux egress sandbox: the kernel holds a process tree to an IP/CIDR/port policy.",
    long_about = "sbx attaches cgroup sock_addr BPF programs (connect4/6, sendmsg4/6, bind4/6) to a \
cgroup v2 directory. Every connect, unconnected UDP send and bind of every process in it is judged \
in the kernel against a policy held in BPF maps; a rejected call fails with EPERM. Enforcement \
needs no capabilities in the sandbox and continues without any sbx process running.",
    after_long_help = format!("EXAMPLES:
  # Run an AI agent that may only use the proxy on 127.0.0.1:3128 and loopback:
  sbx-user run --profile agent -- my-agent

  # Run a build with no network but loopback:
  sbx-user run --profile offline -- make test

  # Allow one database and HTTPS to a /16, nothing else:
  sbx-user run --allow 10.1.2.3:5432 --allow '192.168.0.0/16:443' -- ./job

  # Put an existing cgroup under a policy file; it stays enforced after exit:
  sbx-user attach --cgroup /sys/fs/cgroup/unified/ci/job42 --policy job.toml
  sbx-user status
  sbx-user detach --cgroup /sys/fs/cgroup/unified/ci/job42

  # Check a policy without touching the kernel:
  sbx-user check --policy job.toml

{EXIT_HELP}")
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// bpffs mount point (mounted there if it is not yet).
    #[arg(long, global = true, env = "SBX_BPFFS", default_value = DEFAULT_BPFFS, value_name = "DIR")]
    pub bpffs: PathBuf,
    /// Where sandbox records are kept.
    #[arg(long, global = true, env = "SBX_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// More diagnostics on stderr (-vv for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The host agent's socket: attach, update, detach, status, events
    /// and run go through it (and fail if it does not answer, or its peer
    /// is not root). Without it, the agent at /run/sbx/agent.sock is used when it
    /// answers; `none` never uses an agent.
    #[arg(long, global = true, env = "SBX_AGENT_SOCKET", value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    /// Seconds to wait for the agent's reply before giving up with an error.
    #[arg(long, global = true, env = "SBX_AGENT_TIMEOUT", default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub agent_timeout: u64,
}

impl GlobalArgs {
    /// Pin and record locations.
    #[must_use]
    pub fn paths(&self) -> Paths {
        Paths { bpffs: self.bpffs.clone(), state_dir: self.state_dir.clone() }
    }
}

/// Subcommands. Each one's arguments are built only when it is the one
/// parsed (`defer`): clap's definitions of all of them cost a command
/// about 100 page faults and 0.2-0.4 ms on every start.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Put an existing cgroup v2 directory under a policy, pinned so it
    /// outlives this command.
    #[command(after_long_help = POLICY_HELP)]
    Attach(attach::AttachArgs),
    /// Remove sbx's programs and pins from a cgroup.
    Detach(detach::DetachArgs),
    /// Replace the policy of an attached sandbox: every hook switches at
    /// once, nothing in the sandbox restarts.
    #[command(after_long_help = POLICY_HELP)]
    Update(update::UpdateArgs),
    /// Show deny events (and audit-mode would-be denials).
    Events(events::EventsArgs),
    /// Prove a sandbox enforces: query the kernel for every hook and run
    /// probe connects from inside the cgroup.
    #[command(after_long_help = EXIT_HELP)]
    Verify(verify::VerifyArgs),
    /// Transparent proxy mode: the original destination of a redirected
    /// connection, by the client's source port.
    #[command(name = "orig-dst")]
    OrigDst(origdst::OrigDstArgs),
    /// Show what sbx has attached where.
    Status(status::StatusArgs),
    /// Move sandboxes held by an older sbx's programs to this build's
    /// program set, each under its recorded policy, with no moment of no
    /// enforcement.
    Migrate(update::MigrateArgs),
    /// Remove what sandboxes whose cgroup is gone left behind (pins,
    /// records, policy slots) and program sets no sandbox uses.
    #[command(long_about = "Remove what sandboxes whose cgroup is gone left behind, and program sets no \
sandbox uses.\n\nA runtime that removes a sandbox's cgroup without `sbx-user detach` leaves its pins (the \
kernel has already detached the programs: the links report no cgroup), its record and its policy and event \
indices in the host pool. gc removes them, and program sets of older builds that hold no sandbox. It decides \
from what the kernel and bpffs say, under the host lock, so it is safe beside running attaches. attach runs \
it by itself when the pool is full.")]
    Gc(gc::GcArgs),
    /// Run a command in a fresh sandbox cgroup; clean up when it exits.
    #[command(after_long_help = format!("{}\n\n{EXIT_HELP}", run::long_help(POLICY_HELP)))]
    Run(run::RunArgs),
    /// OCI runtime hook: put a container under a policy at createRuntime
    /// (from its `sbx.io/profile` or `sbx.io/policy` annotation, or the
    /// host default) and remove it at poststop.
    #[command(name = "oci-hook")]
    OciHook(oci_hook::OciHookArgs),
    /// List the built-in profiles.
    Profiles(profiles::ProfilesArgs),
    /// Validate a policy and show what it compiles to, without root.
    #[command(after_long_help = format!("{POLICY_HELP}\n\n{EXIT_HELP}"))]
    Check(check::CheckArgs),
    /// The host agent: a daemon that creates and holds sandboxes for its
    /// clients over a UNIX socket (JSON lines; see the README).
    Agent(agent::AgentArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    #[command(hide = true)]
    Completions(generate::CompletionsArgs),
    /// Print the manual page, or write all of them with --out-dir.
    #[command(hide = true)]
    Man(generate::ManArgs),
}

// Where the policy comes from. Shared by attach, run and check. (Not a
// doc comment: it would become the about of those subcommands, see
// `Command`.)
#[derive(Debug, Args, Clone)]
pub struct PolicyArgs {
    /// Built-in profile applied first (see `sbx-user profiles`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Policy file (TOML, see below).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Allow rule; repeatable, or a comma list.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Deny rule; repeatable, or a comma list.
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// What no rule matches: deny or allow.
    #[arg(long, value_name = "deny|allow")]
    pub default: Option<String>,
    /// Loopback ports: any, none, or a port list like 3128,8000-8100.
    #[arg(long, value_name = "any|none|PORTS")]
    pub loopback: Option<String>,
    /// Proxy-only mode through this ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy: Option<String>,
    /// Where the sandbox may bind: loopback, any, or a rule list.
    #[arg(long, value_name = "loopback|any|RULES")]
    pub bind: Option<String>,
    /// Audit mode: block nothing, report every call the policy would deny.
    #[arg(long)]
    pub audit: bool,
    /// Landlock: readable and executable path (run only); repeatable. Any
    /// filesystem rule replaces run's defaults (see FILES in `run --help`).
    #[arg(long, value_name = "PATH")]
    pub fs_read: Vec<String>,
    /// Landlock: writable path (run only); repeatable.
    #[arg(long, value_name = "PATH")]
    pub fs_write: Vec<String>,
    /// Transparent proxy: rewrite denied direct TCP connects to the proxy
    /// instead of refusing them (needs --proxy).
    #[arg(long)]
    pub proxy_redirect: bool,
    /// Host pathname UNIX socket the command may connect to (repeatable;
    /// adds to the policy's list), or `any` / `none`. Sockets the command
    /// binds itself always work. Default: the profile's (`agent`,
    /// `offline`: none), else any. `run` only.
    #[arg(long, value_name = "PATH|any|none")]
    pub unix: Vec<String>,
    /// Keep allow rules whose host name does not resolve (they match
    /// nothing) instead of failing.
    #[arg(long)]
    pub allow_unresolved: bool,
    /// Name resolution: `pinned` (only the names of pinned allow rules
    /// resolve, answered by sbx; loopback port 53 refused) or `host` (the
    /// host's resolvers, judged like any destination). Default: pinned
    /// where the default is deny, host where it is allow.
    #[arg(long, value_name = "pinned|host")]
    pub dns: Option<String>,
    /// Capacity of each policy trie (rules after expansion).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=i64::from(MAX_MAX_ENTRIES)))]
    pub max_rules: u32,
}

impl PolicyArgs {
    /// The flags as a request to the host agent carries them (no file
    /// text, no filesystem rules): the one mapping of the flag fields
    /// ([`crate::agent::protocol::PolicySource::flags`] maps them back).
    #[must_use]
    pub fn source(&self) -> crate::agent::protocol::PolicySource {
        let Self {
            profile,
            // Read by the caller: `policy` here, sent as text to an agent.
            policy: _,
            allow,
            deny,
            default,
            loopback,
            proxy,
            bind,
            audit,
            // `run`'s Landlock rules, which a request does not carry.
            fs_read: _,
            fs_write: _,
            proxy_redirect,
            allow_unresolved,
            max_rules,
            unix,
            dns,
        } = self;
        crate::agent::protocol::PolicySource {
            profile: profile.clone(),
            toml: None,
            name: None,
            allow: allow.clone(),
            deny: deny.clone(),
            default: default.clone(),
            loopback: loopback.clone(),
            proxy: proxy.clone(),
            bind: bind.clone(),
            audit: *audit,
            proxy_redirect: *proxy_redirect,
            allow_unresolved: *allow_unresolved,
            max_rules: Some(*max_rules),
            unix: unix.clone(),
            dns: dns.clone(),
        }
    }

    /// Builds and validates the policy.
    pub fn policy(&self) -> Result<Policy, crate::policy::PolicyError> {
        let mut flags = self.source().flags();
        flags.fs_read.clone_from(&self.fs_read);
        flags.fs_write.clone_from(&self.fs_write);
        let started = std::time::Instant::now();
        let policy = Policy::from_sources(self.profile.as_deref(), self.policy.as_deref(), &flags)?;
        log::info!("read the policy ({} rules) in {:.1} ms", policy.rules.len(), crate::progress::ms(started));
        Ok(policy)
    }
}

/// Refuses to go on without root-equivalent privileges, saying what
/// subcommand `what` needs them for: the subcommands that only read state
/// (`status`, `events`, `orig-dst`) load nothing, so a message about loading
/// programs would send the user looking in the wrong place.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let needs = match what {
        "status" => {
            "reads the kernel's own view and loads nothing, but that view is root's: \
            CAP_NET_ADMIN to ask which programs each cgroup has (BPF_PROG_QUERY), CAP_SYS_ADMIN to \
            name them (BPF_PROG_GET_FD_BY_ID), CAP_BPF and access to the pins sbx made under the bpffs \
            (mode 0600, root's) to read the counters"
        }
        "events" | "orig-dst" => {
            "reads maps sbx pinned under the bpffs (mode 0600, root's), which \
            needs root (CAP_BPF, and access to the pins); it loads nothing"
        }
        "verify" => {
            "needs root: CAP_NET_ADMIN and CAP_SYS_ADMIN to ask the kernel which \
            programs each hook runs, CAP_BPF to read the pins, and write access to the sandbox's \
            cgroup.procs to place its probe inside"
        }
        "detach" => {
            "needs root (CAP_BPF and CAP_SYS_ADMIN, and access to the pins) to \
            remove sbx's links and pins"
        }
        _ => {
            "needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach cgroup \
            programs)"
        }
    };
    anyhow::bail!(
        "{what} {needs}\nHint: run it with sudo{}",
        if what == "run" { "; the sandboxed command itself gets no privileges" } else { "" }
    );
}

/// Refuses filesystem rules where they cannot apply: Landlock restricts a
/// process sbx starts, not a cgroup.
pub fn no_filesystem_rules(policy: &Policy, command: &str) -> anyhow::Result<()> {
    if policy.filesystem.is_some() {
        anyhow::bail!(
            "filesystem rules ([filesystem], --fs-read, --fs-write) apply only to `sbx-user run`: Landlock restricts a process sbx starts, not a cgroup; `{command}` cannot enforce them"
        );
    }
    Ok(())
}

/// Largest `--event-buffer` accepted: 1 GiB, far beyond what a reader
/// needs between two reads, and well inside what the kernel allows.
pub const MAX_EVENT_BUFFER: u32 = 1 << 30;

/// Parses `--event-buffer BYTES`: 0 (the sandbox's events go to the host
/// event stream) or a power of two from one page ([`page_size`]) to
/// [`MAX_EVENT_BUFFER`], as the kernel requires of a ring buffer.
///
/// # Errors
/// A message naming the value and what is accepted.
pub fn parse_event_buffer(s: &str) -> Result<u32, String> {
    let v: u32 =
        s.trim().parse().map_err(|_| format!("`{s}` is not a byte count (0, or a power of two such as 16384)"))?;
    let page = page_size();
    if v == 0 || (v.is_power_of_two() && v >= page && v <= MAX_EVENT_BUFFER) {
        Ok(v)
    } else {
        Err(format!(
            "{v} bytes: an event ring buffer is a power of two from {page} (one page) to {MAX_EVENT_BUFFER} bytes, \
             or 0 for the host event stream"
        ))
    }
}

/// The kernel's page size (4096 if it cannot be read).
#[must_use]
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// What `attach` and `update` do with a `unix` setting. Nothing sbx puts on
/// a cgroup judges pathname UNIX sockets: the cgroup `sock_addr` programs
/// see inet addresses, and the mount namespace and seccomp supervisor that
/// enforce `unix` under `run` belong to the process `run` starts. So a
/// setting the user wrote is refused; a profile's default is dropped with
/// a warning, and the record says `any`, which is what holds.
pub fn unix_for_cgroup(policy: &mut Policy, command: &str) -> anyhow::Result<()> {
    if !policy.unix.restricts() {
        return Ok(());
    }
    let origin = policy.unix_origin.as_ref().map_or_else(String::new, |o| format!(", set by {o}"));
    let what = format!(
        "`{command}` cannot enforce unix = {}{origin}: processes in an attached cgroup can still connect to \
         every pathname UNIX socket their uid may open (the cgroup programs judge inet addresses only, and the \
         supervisor that enforces `unix` exists only for a command that `sbx-user run` starts)",
        policy.unix
    );
    if policy.unix_for_cgroup().is_err() {
        anyhow::bail!("{what}\nHint: run the workload with `sbx-user run`, or drop `unix` (or give `--unix any`)");
    }
    crate::warn_user!("{what}; recorded as unix = any");
    Ok(())
}

/// Rules shown in a summary before the rest are counted instead.
const SUMMARY_RULES: usize = 20;

/// Prints the policy summary, indented; long rule lists are cut short
/// (`status --json` has them all).
pub fn print_summary(policy: &Policy) {
    for line in policy.summary_with(SUMMARY_RULES) {
        println!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn fixed(words: &[&str]) -> Option<String> {
        let argv = argv(words);
        let err = Cli::try_parse_from(&argv).expect_err("a usage error");
        command_after_separator(&argv, &err).map(|f| shell_line(&f))
    }

    #[test]
    fn a_forgotten_separator_goes_before_the_first_word_clap_did_not_expect() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (
                &["sbx-user", "run", "--profile", "offline", "echo", "hi"],
                Some("sbx-user run --profile offline -- echo hi"),
            ),
            (&["sbx-user", "-v", "run", "echo"], Some("sbx-user -v run -- echo")),
            // The option value that looks like the command stays a value.
            (&["sbx-user", "run", "--allow", "ls", "ls", "-l"], Some("sbx-user run --allow ls -- ls -l")),
            // The command's own options follow it.
            (&["sbx-user", "run", "ls", "-la", "/"], Some("sbx-user run -- ls -la /")),
            // A mistyped option is not a command.
            (&["sbx-user", "run", "--bogus", "ls"], None),
            // Not `run`.
            (&["sbx-user", "status", "extra"], None),
            // There already is a separator: the error is something else.
            (&["sbx-user", "run", "x", "--", "true"], None),
        ];
        for (words, want) in cases {
            assert_eq!(fixed(words).as_deref(), *want, "{words:?}");
        }
    }

    #[test]
    fn shell_lines_quote_what_a_shell_would_split_or_expand() {
        let cases: &[(&[&str], &str)] = &[
            (&["a", "b-c", "d/e.f", "x=1,2:3@4%5+6"], "a b-c d/e.f x=1,2:3@4%5+6"),
            (&["echo 'a b'"], r"'echo '\''a b'\'''"),
            (&[""], "''"),
            (&["$HOME", "*", "a;b"], "'$HOME' '*' 'a;b'"),
        ];
        for (words, want) in cases {
            assert_eq!(shell_line(&argv(words)), *want);
        }
    }

    #[test]
    fn verdicts_exit_1_and_everything_else_125() {
        assert_eq!(exit_status(&Negative("no".into()).into()), EXIT_NEGATIVE);
        assert_eq!(exit_status(&anyhow::Error::from(Negative("no".into())).context("verify")), EXIT_NEGATIVE);
        assert_eq!(exit_status(&anyhow::anyhow!("broken")), EXIT_ERROR);
        assert_eq!(EXIT_ERROR, 125);
    }

    #[test]
    fn error_text_drops_causes_the_message_already_says() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::from(crate::policy::PolicyError::Read { path: "p.toml".into(), source: io });
        assert_eq!(error_text(&e), "cannot read policy file p.toml: gone");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&e), "outer: inner");
    }

    #[test]
    fn help_and_version_exit_0_and_usage_errors_125() {
        assert_eq!(parse(&argv(&["sbx-user", "--version"])).err(), Some(EXIT_OK));
        assert_eq!(parse(&argv(&["sbx-user", "run", "--bogus", "--", "true"])).err(), Some(EXIT_ERROR));
        assert!(parse(&argv(&["sbx-user", "run", "--", "true"])).is_ok());
    }

    #[test]
    fn event_buffers_are_zero_or_a_power_of_two_of_at_least_a_page() {
        let page = page_size();
        assert_eq!(parse_event_buffer("0"), Ok(0));
        assert_eq!(parse_event_buffer(&page.to_string()), Ok(page));
        assert_eq!(parse_event_buffer("1048576"), Ok(1 << 20));
        assert_eq!(parse_event_buffer(&MAX_EVENT_BUFFER.to_string()), Ok(MAX_EVENT_BUFFER));
        for bad in ["1000", "24576", "2048", "2147483648", "-1", "16k", ""] {
            let e = parse_event_buffer(bad).expect_err(bad);
            assert!(e.contains(bad.trim()) || bad.is_empty(), "{bad}: {e}");
        }
        assert!(parse_event_buffer("1000").unwrap_err().contains("power of two"));
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        command().debug_assert();
    }
}
