//! `sbx-user agent`: the host agent (see [`crate::agent`]).

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::agent::{
    config::{Overrides, DEFAULT_CONFIG, DEFAULT_SOCKET},
    server, Options,
};

// Arguments of `agent`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The UNIX socket to serve.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A cgroup subtree clients may create sandboxes in; repeatable.
    /// Replaces the configuration file's `cgroup_roots`.
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Vec<PathBuf>,
    /// Besides root, members of this group may use the agent (the socket
    /// becomes 0660 root:GROUP).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Configuration file (TOML); the default one may be absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and the cgroup roots, then exit.
    #[arg(long)]
    pub check: bool,
}

/// Runs the agent, or checks its configuration.
pub fn run(args: &AgentArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let opts = Options {
        socket: args.socket.clone(),
        config: args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into()),
        config_explicit: args.config.is_some(),
        overrides: Overrides { cgroup_roots: args.cgroup_root.clone(), group: args.group.clone() },
    };
    if args.check {
        println!("{}", server::check(&opts)?);
        return Ok(());
    }
    super::require_root("agent")?;
    server::serve(opts, global.paths())?;
    Ok(())
}
