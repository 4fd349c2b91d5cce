//! What sbx has attached where: pins under bpffs and a record per sandbox.
//!
//! Layout, keyed by the cgroup id so that a renamed path still matches:
//! - `<bpffs>/sbx/<cgroup-id>/link_<program>`: the six pinned links. These
//!   keep enforcement in place with no sbx process running.
//! - `<bpffs>/sbx/<cgroup-id>/map_<MAP>`: the pinned policy maps.
//! - `<state-dir>/<cgroup-id>.json`: a [`Record`] with the cgroup path and
//!   the policy, for `status` (bpffs cannot hold regular files).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{explain::Provenance, policy::Policy};

/// Default bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Default directory for sandbox records.
pub const DEFAULT_STATE_DIR: &str = "/run/sbx";

/// Where pins and records live.
#[derive(Clone, Debug)]
pub struct Paths {
    /// bpffs mount point.
    pub bpffs: PathBuf,
    /// Record directory.
    pub state_dir: PathBuf,
}

impl Paths {
    /// sbx's directory inside bpffs.
    #[must_use]
    pub fn pin_root(&self) -> PathBuf {
        self.bpffs.join("sbx")
    }

    /// Pin directory of one sandbox.
    #[must_use]
    pub fn pin_dir(&self, cgroup_id: u64) -> PathBuf {
        self.pin_root().join(cgroup_id.to_string())
    }

    /// Record file of one sandbox.
    #[must_use]
    pub fn record_path(&self, cgroup_id: u64) -> PathBuf {
        self.state_dir.join(format!("{cgroup_id}.json"))
    }
}

/// One attached sandbox, as `status` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// Its kernel id.
    pub cgroup_id: u64,
    /// The policy in force.
    pub policy: Policy,
    /// Unix time of the attach.
    pub attached_at: u64,
    /// `attach` or `run`.
    pub by: String,
    /// For `run`: the pid of the `sbx-user run` process.
    pub runner_pid: Option<u32>,
    /// Entries in the destination trie.
    pub dest_entries: usize,
    /// Entries in the bind trie.
    pub bind_entries: usize,
    /// Port tables.
    pub tables: usize,
    /// Capacity of each trie.
    pub max_entries: u32,
    /// Policy generation, bumped by every update; events carry it.
    #[serde(default)]
    pub generation: u32,
    /// For `run`: the start time of the `sbx-user run` process (field 22 of
    /// `/proc/<pid>/stat`, clock ticks since boot), so that a reused pid is
    /// not mistaken for the owner.
    #[serde(default)]
    pub runner_start: Option<u64>,
    /// For a sandbox an OCI runtime hook attached (`sbx-user oci-hook`):
    /// the container it holds, so that `status` and `events` name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Which rule produced each verdict of the maps, compact
    /// ([`Provenance::encode`]; the rule texts are `policy`'s). Absent in
    /// records of an older sbx: then `policy` is compiled once to get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    /// [`Self::provenance`] read, on first use.
    #[serde(skip)]
    pub(crate) decoded: std::sync::OnceLock<Option<Provenance>>,
}

/// The container a sandbox holds, as the runtime named it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's container id.
    pub id: String,
    /// Kubernetes pod namespace (`io.kubernetes.pod.namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// Kubernetes pod name (`io.kubernetes.pod.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Kubernetes container name (`io.kubernetes.container.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// For a pod's sandbox (infra) container whose policy the hook attached
    /// at the pod's cgroup, so that every container of the pod inherits it:
    /// the policy, as the hook chose it (`profile offline`, `policy ci`).
    /// The sandbox's record is then the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_policy: Option<String>,
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pod_policy.is_some() {
            write!(f, "pod sandbox {}", self.id)?;
        } else {
            write!(f, "container {}", self.id)?;
        }
        if let (Some(ns), Some(pod)) = (&self.pod_namespace, &self.pod_name) {
            write!(f, " (pod {ns}/{pod}")?;
            if let Some(c) = &self.container_name {
                write!(f, " container {c}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// A container of a pod whose policy is attached at the pod's cgroup (see
/// [`Container::pod_policy`]): its own cgroup, a descendant of the pod's,
/// holds no sandbox of its own (or a nested one), so this names the
/// container for events, which carry the caller's cgroup id. Kept in
/// `<state-dir>/members/<cgroup-id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The container's own cgroup directory.
    pub cgroup: PathBuf,
    /// Its kernel id (what events carry as the caller's cgroup).
    pub cgroup_id: u64,
    /// The cgroup id of the pod sandbox that holds it.
    pub sandbox: u64,
    /// The container.
    pub container: Container,
}

impl Member {
    fn dir(paths: &Paths) -> PathBuf {
        paths.state_dir.join("members")
    }

    fn path(paths: &Paths, cgroup_id: u64) -> PathBuf {
        Self::dir(paths).join(format!("{cgroup_id}.json"))
    }

    /// Writes it atomically.
    pub fn save(&self, paths: &Paths) -> Result<(), StateError> {
        let dir = Self::dir(paths);
        fs::create_dir_all(&dir).map_err(|source| StateError { action: "creating", path: dir, source })?;
        let path = Self::path(paths, self.cgroup_id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string(self).expect("members serialise");
        fs::write(&tmp, text).map_err(|source| StateError { action: "writing", path: tmp.clone(), source })?;
        fs::rename(&tmp, &path).map_err(|source| StateError { action: "writing", path, source })
    }

    /// The member record of cgroup `cgroup_id`, if there is a readable one.
    #[must_use]
    pub fn load(paths: &Paths, cgroup_id: u64) -> Option<Self> {
        serde_json::from_slice(&fs::read(Self::path(paths, cgroup_id)).ok()?).ok()
    }

    /// Every member record (damaged ones are skipped with a warning).
    #[must_use]
    pub fn load_all(paths: &Paths) -> Vec<Self> {
        let mut out: Vec<Self> = fs::read_dir(Self::dir(paths))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| match fs::read(e.path()).map(|t| serde_json::from_slice(&t)) {
                Ok(Ok(m)) => Some(m),
                Ok(Err(err)) => {
                    log::warn!("skipping {}: {err}", e.path().display());
                    None
                }
                Err(_) => None,
            })
            .collect();
        out.sort_by_key(|m| m.cgroup_id);
        out
    }

    /// Removes the member record of cgroup `cgroup_id`.
    pub fn remove(paths: &Paths, cgroup_id: u64) -> Result<(), StateError> {
        let path = Self::path(paths, cgroup_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError { action: "removing", path, source }),
        }
    }
}

/// Start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock
/// ticks since boot), or `None` if there is no such process.
#[must_use]
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after it start after the last ')'. Field 3 is the first of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the `sbx-user run` that owns a sandbox still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerState {
    /// Not owned by a `run` (an `attach`ed sandbox).
    NoRunner,
    /// The `run` process with this pid still runs.
    Running(u32),
    /// The `run` process with this pid has exited (or the pid now names
    /// another process): what it set up is a leftover.
    Gone(u32),
}

/// A record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{action} sandbox record {path}: {source}")]
pub struct StateError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl Record {
    /// The sandbox's name in reports: its cgroup path, and the container
    /// it holds if a runtime hook attached it.
    #[must_use]
    pub fn name(&self) -> String {
        match &self.container {
            Some(c) => format!("{} [{c}]", self.cgroup.display()),
            None => self.cgroup.display().to_string(),
        }
    }

    /// Which rule produced each verdict of this sandbox's maps: the
    /// recorded provenance, or for a record without one (an older sbx)
    /// what compiling its policy gives. `None` if neither works.
    #[must_use]
    pub fn provenance(&self) -> Option<&Provenance> {
        self.decoded
            .get_or_init(|| match &self.provenance {
                Some(text) => Provenance::decode(text),
                None => crate::compile::compile(&self.policy, self.max_entries).ok().map(|c| c.provenance),
            })
            .as_ref()
    }

    /// Whether the `sbx-user run` that owns this sandbox still runs, judged
    /// by pid and start time (pids are reused).
    #[must_use]
    pub fn runner(&self) -> RunnerState {
        let Some(pid) = self.runner_pid else {
            return RunnerState::NoRunner;
        };
        match (process_start_time(pid), self.runner_start) {
            (Some(now), Some(then)) if now == then => RunnerState::Running(pid),
            // A record from before start times were kept: the pid alone.
            (Some(_), None) => RunnerState::Running(pid),
            _ => RunnerState::Gone(pid),
        }
    }

    /// Writes the record atomically (temp file and rename).
    pub fn save(&self, paths: &Paths) -> Result<(), StateError> {
        let path = paths.record_path(self.cgroup_id);
        let err = |action| {
            let path = path.clone();
            move |source| StateError { action, path, source }
        };
        fs::create_dir_all(&paths.state_dir).map_err(err("creating the directory of"))?;
        let tmp = path.with_extension("json.tmp");
        // Compact and streamed: a record holds the whole policy, 100,000
        // rules and more (20 MB), and their provenance.
        let mut file = io::BufWriter::with_capacity(1 << 16, fs::File::create(&tmp).map_err(err("writing"))?);
        serde_json::to_writer(&mut file, self).map_err(|e| err("writing")(io::Error::other(e)))?;
        io::Write::flush(&mut file).map_err(err("writing"))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(err("writing"))
    }

    /// Reads one sandbox's record, if there is one.
    pub fn load(paths: &Paths, cgroup_id: u64) -> Result<Option<Self>, StateError> {
        read_record(&paths.record_path(cgroup_id))
    }

    /// Every record in the state directory.
    pub fn load_all(paths: &Paths) -> Result<Vec<Self>, StateError> {
        let dir = match fs::read_dir(&paths.state_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError { action: "listing", path: paths.state_dir.clone(), source }),
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") {
                // One damaged record must not hide every other sandbox.
                match read_record(&p) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(e) => log::warn!("skipping {e}"),
                }
            }
        }
        out.sort_by_key(|r| r.cgroup_id);
        Ok(out)
    }

    /// Removes one sandbox's record.
    pub fn remove(paths: &Paths, cgroup_id: u64) -> Result<(), StateError> {
        let path = paths.record_path(cgroup_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError { action: "removing", path, source }),
        }
    }
}

fn read_record(path: &Path) -> Result<Option<Record>, StateError> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| StateError {
            action: "parsing",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError { action: "reading", path: path.to_owned(), source }),
    }
}
