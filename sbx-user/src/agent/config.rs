//! The agent's configuration: `/etc/sbx/agent.toml`, overridden by flags.
//!
//! ```toml
//! # Cgroup subtrees clients may name; sandboxes live only below them.
//! cgroup_roots = ["/sys/fs/cgroup/unified/sbx-agent"]
//! # Besides root, members of this group may use the agent.
//! group = "sbx"
//!
//! [limits]
//! max_request_bytes = 4194304   # longest request line
//! max_connections = 256         # clients served at once
//! max_sandboxes_per_user = 1024 # sandboxes one non-root uid may own
//! idle_timeout_secs = 600       # a client that sends nothing is dropped
//! write_timeout_secs = 10       # a client that reads nothing is dropped
//! event_queue = 1024            # events queued per subscriber
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/sbx/agent.toml";
/// Default socket.
pub const DEFAULT_SOCKET: &str = "/run/sbx/agent.sock";

/// A configuration problem, naming the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("agent configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column).
        message: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("agent configuration: {0}")]
    Invalid(String),
}

/// Limits that keep one client from starving the others.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest request line, in bytes, newline included.
    pub max_request_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Sandboxes a non-root uid may own at once.
    pub max_sandboxes_per_user: usize,
    /// Seconds a client may send nothing before it is dropped.
    pub idle_timeout_secs: u64,
    /// Seconds a reply may wait for the client to read before the client
    /// is dropped.
    pub write_timeout_secs: u64,
    /// Events queued for one subscriber; beyond it, events are dropped
    /// for that subscriber and counted in its stream.
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 4 << 20,
            max_connections: 256,
            max_sandboxes_per_user: 1024,
            idle_timeout_secs: 600,
            write_timeout_secs: 10,
            event_queue: 1024,
        }
    }
}

/// The configuration file's contents.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Managed cgroup subtrees.
    #[serde(default)]
    pub cgroup_roots: Vec<PathBuf>,
    /// Group whose members may use the agent.
    #[serde(default)]
    pub group: Option<String>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
}

/// What the flags say, overriding the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--cgroup-root`, repeatable: replaces the file's list.
    pub cgroup_roots: Vec<PathBuf>,
    /// `--group`.
    pub group: Option<String>,
}

/// The configuration in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Managed cgroup subtrees, as given.
    pub cgroup_roots: Vec<PathBuf>,
    /// Group name and its gid.
    pub group: Option<(String, u32)>,
    /// Limits.
    pub limits: Limits,
}

/// Reads `path`. The default file may be absent (defaults apply); a file
/// named on the command line must exist.
pub fn load_file(path: &Path, must_exist: bool) -> Result<FileConfig, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(FileConfig::default()),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    parse(&text, path)
}

/// Parses configuration text.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// Merges the file and the flags and checks the result.
pub fn resolve(file: FileConfig, flags: &Overrides) -> Result<Config, ConfigError> {
    let FileConfig { cgroup_roots, group, limits } = file;
    let cgroup_roots = if flags.cgroup_roots.is_empty() { cgroup_roots } else { flags.cgroup_roots.clone() };
    if cgroup_roots.is_empty() {
        return Err(ConfigError::Invalid(
            "no managed cgroup subtree: set cgroup_roots in the configuration file or pass --cgroup-root DIR \
             (the agent refuses to act on cgroups it was not given)"
                .into(),
        ));
    }
    for r in &cgroup_roots {
        if !r.is_absolute() {
            return Err(ConfigError::Invalid(format!("cgroup root {} is not an absolute path", r.display())));
        }
    }
    let group = flags.group.clone().or(group);
    let group = match group {
        None => None,
        Some(name) => {
            let gid = gid_of(&name).ok_or_else(|| {
                ConfigError::Invalid(format!("group {name:?} does not exist (create it with groupadd)"))
            })?;
            if gid == 0 {
                return Err(ConfigError::Invalid(format!(
                    "group {name:?} is gid 0: its members would act as root through the agent; name a dedicated group"
                )));
            }
            Some((name, gid))
        }
    };
    if limits.max_request_bytes < 1024 || limits.max_request_bytes > 64 << 20 {
        return Err(ConfigError::Invalid(format!(
            "limits.max_request_bytes = {} is out of range (1024 to 67108864)",
            limits.max_request_bytes
        )));
    }
    if limits.max_connections == 0
        || limits.idle_timeout_secs == 0
        || limits.write_timeout_secs == 0
        || limits.event_queue == 0
    {
        return Err(ConfigError::Invalid(
            "limits.max_connections, idle_timeout_secs, write_timeout_secs and event_queue must be at least 1".into(),
        ));
    }
    Ok(Config { cgroup_roots, group, limits })
}

/// The gid of group `name`, from the system's group database
/// ([`crate::names`]).
#[must_use]
pub fn gid_of(name: &str) -> Option<u32> {
    crate::names::gid_by_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file = parse("cgroup_roots = [\"/a\"]\n[limits]\nmax_connections = 3\n", Path::new("f")).expect("valid");
        let cfg = resolve(file.clone(), &Overrides::default()).expect("valid");
        assert_eq!(cfg.cgroup_roots, [PathBuf::from("/a")]);
        assert_eq!(cfg.limits.max_connections, 3);
        assert_eq!(cfg.limits.max_request_bytes, Limits::default().max_request_bytes);
        let flags = Overrides { cgroup_roots: vec!["/b".into(), "/c".into()], group: None };
        assert_eq!(resolve(file, &flags).expect("valid").cgroup_roots, [PathBuf::from("/b"), PathBuf::from("/c")]);
    }

    #[test]
    fn refuses_what_it_cannot_enforce() {
        let bad = |text: &str, flags: &Overrides| {
            parse(text, Path::new("f")).and_then(|f| resolve(f, flags)).expect_err(text).to_string()
        };
        let none = Overrides::default();
        assert!(bad("", &none).contains("no managed cgroup subtree"));
        assert!(bad("cgroup_roots = [\"rel\"]", &none).contains("not an absolute path"));
        assert!(bad("cgroup_roots = [\"/a\"]\ngroup = \"root\"", &none).contains("gid 0"));
        assert!(bad("cgroup_roots = [\"/a\"]\ngroup = \"no-such-group-sbx\"", &none).contains("does not exist"));
        assert!(bad("cgroup_roots = [\"/a\"]\n[limits]\nmax_request_bytes = 10", &none).contains("out of range"));
        assert!(bad("cgroup_root = [\"/a\"]", &none).contains("unknown field"));
    }
}
