//! Command-line interface: argument definitions and one module per
//! subcommand. `main.rs` only parses and dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    compile::{DEFAULT_MAX_ENTRIES, MAX_MAX_ENTRIES},
    policy::{FlagInput, Policy},
    state::{Paths, DEFAULT_BPFFS, DEFAULT_STATE_DIR},
};

pub mod attach;
pub mod check;
pub mod detach;
pub mod events;
pub mod origdst;
pub mod profiles;
pub mod run;
pub mod status;
pub mod update;
pub mod verify;

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

Flags add rules to the file (--allow, --deny) or override its settings
(--default, --loopback, --proxy, --bind). A profile is applied first.";

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
    after_long_help = "EXAMPLES:
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
  sbx-user check --policy job.toml"
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
}

impl GlobalArgs {
    /// Pin and record locations.
    #[must_use]
    pub fn paths(&self) -> Paths {
        Paths { bpffs: self.bpffs.clone(), state_dir: self.state_dir.clone() }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put an existing cgroup v2 directory under a policy, pinned so it
    /// outlives this command.
    #[command(after_long_help = POLICY_HELP)]
    Attach(attach::AttachArgs),
    /// Remove sbx's programs and pins from a cgroup.
    Detach(detach::DetachArgs),
    /// Replace the policy of an attached sandbox, atomically per hook,
    /// without restarting anything in it.
    #[command(after_long_help = POLICY_HELP)]
    Update(update::UpdateArgs),
    /// Show deny events (and audit-mode would-be denials).
    Events(events::EventsArgs),
    /// Prove a sandbox enforces: query the kernel for every hook and run
    /// probe connects from inside the cgroup.
    Verify(verify::VerifyArgs),
    /// Transparent proxy mode: the original destination of a redirected
    /// connection, by the client's source port.
    #[command(name = "orig-dst")]
    OrigDst(origdst::OrigDstArgs),
    /// Show what sbx has attached where.
    Status(status::StatusArgs),
    /// Run a command in a fresh sandbox cgroup; clean up when it exits.
    #[command(after_long_help = run::long_help(POLICY_HELP))]
    Run(run::RunArgs),
    /// List the built-in profiles.
    Profiles(profiles::ProfilesArgs),
    /// Validate a policy and show what it compiles to, without root.
    #[command(after_long_help = POLICY_HELP)]
    Check(check::CheckArgs),
}

/// Where the policy comes from. Shared by attach, run and check.
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
    /// Landlock: readable and executable path (run only); repeatable.
    #[arg(long, value_name = "PATH")]
    pub fs_read: Vec<String>,
    /// Landlock: writable path (run only); repeatable.
    #[arg(long, value_name = "PATH")]
    pub fs_write: Vec<String>,
    /// Transparent proxy: rewrite denied direct TCP connects to the proxy
    /// instead of refusing them (needs --proxy).
    #[arg(long)]
    pub proxy_redirect: bool,
    /// Keep allow rules whose host name does not resolve (they match
    /// nothing) instead of failing.
    #[arg(long)]
    pub allow_unresolved: bool,
    /// Capacity of each policy trie (rules after expansion).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=i64::from(MAX_MAX_ENTRIES)))]
    pub max_rules: u32,
}

impl PolicyArgs {
    /// Builds and validates the policy.
    pub fn policy(&self) -> Result<Policy, crate::policy::PolicyError> {
        let flags = FlagInput {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            default: self.default.clone(),
            loopback: self.loopback.clone(),
            proxy: self.proxy.clone(),
            bind: self.bind.clone(),
            audit: self.audit,
            fs_read: self.fs_read.clone(),
            fs_write: self.fs_write.clone(),
            allow_unresolved: self.allow_unresolved,
            proxy_redirect: self.proxy_redirect,
        };
        Policy::from_sources(self.profile.as_deref(), self.policy.as_deref(), &flags)
    }
}

/// Refuses to go on without root-equivalent privileges, with a hint.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach cgroup programs)\nHint: run it with sudo; the sandboxed command itself gets no privileges"
        );
    }
    Ok(())
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

/// Rules shown in a summary before the rest are counted instead.
const SUMMARY_RULES: usize = 20;

/// Prints the policy summary, indented; long rule lists are cut short
/// (`status --json` has them all).
pub fn print_summary(policy: &Policy) {
    let lines = policy.summary();
    let rules = policy.rules.len();
    // summary(): default, [mode], loopback, [proxy], one line per rule, bind, [fs].
    let first_rule = lines.len() - rules - lines.iter().rev().take_while(|l| !l.starts_with("bind:")).count() - 1;
    for (i, line) in lines.iter().enumerate() {
        let nth = i.wrapping_sub(first_rule);
        if nth < rules && nth >= SUMMARY_RULES {
            if nth == SUMMARY_RULES {
                println!("  ... and {} more rules", rules - SUMMARY_RULES);
            }
            continue;
        }
        println!("  {line}");
    }
}
