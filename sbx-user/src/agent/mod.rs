//! `sbx-user agent`: one privileged daemon that holds the sandboxes of a
//! host and serves a JSON-lines protocol on a UNIX socket, so that a CI
//! runner or an agent platform (in any language) can create, change and
//! remove sandboxes without being root.
//!
//! # Threat model
//! The agent runs as root; its clients are root or members of one
//! configured group, checked on every connection with the kernel's
//! credentials of the peer ([`access`]). A member is not root-equivalent:
//! it only acts on sandboxes it had the agent create, only below the
//! managed cgroup subtrees ([`roots`], resolved with `openat2`
//! `RESOLVE_BENEATH`, no symlinks), and its requests are bounded in size and
//! refused on any unknown field ([`protocol`]). Enforcement never depends
//! on the agent: every sandbox is pinned in bpffs as with `sbx-user
//! attach`, so an agent that stops, crashes or restarts leaves every
//! sandbox enforced, and the next one finds them all again in the kernel's
//! and bpffs's state (nothing lives only in its memory).
//!
//! # Layout
//! [`config`] (the file and the flags), [`protocol`] (the wire format, a
//! pure decoder), [`access`] (peer credentials), [`roots`] (cgroup
//! names), [`ops`] (what each request does, with the CLI's library calls),
//! [`server`] (tokio: the socket, connections, signals) and [`client`]
//! (what the CLI uses to talk to an agent).

use std::{io, path::PathBuf};

pub mod access;
pub mod client;
pub mod config;
pub mod enter;
pub mod events;
pub mod fdpass;
#[cfg(test)]
mod fuzz;
pub mod ops;
pub mod protocol;
pub mod roots;
pub mod server;

pub use config::Config;

/// Why the agent cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A managed root is unusable.
    #[error(transparent)]
    Roots(#[from] roots::ResolveError),
    /// The socket could not be set up.
    #[error("{action} socket {path}: {source}")]
    Socket {
        /// What was being done.
        action: &'static str,
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another agent answers on the socket.
    #[error("an sbx agent already serves {0}; stop it first (systemctl stop sbx-agent) or pass another --socket")]
    Running(PathBuf),
    /// The runtime or the signal handlers could not be set up.
    #[error("starting the agent's runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The socket to serve.
    pub socket: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// Whether the file was named explicitly (then it must exist).
    pub config_explicit: bool,
    /// What the flags say.
    pub overrides: config::Overrides,
}
