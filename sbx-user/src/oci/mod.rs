//! Containers: `sbx-user oci-hook`, an OCI runtime hook that puts a
//! container's cgroup under an sbx policy before the container's process
//! runs its first instruction, and takes it off again when it stops.
//!
//! At `createRuntime` the runtime has made the container's cgroup and its
//! process (runc's `runc init`, waiting for `start`) but nothing of the
//! container's program has run. The hook:
//! 1. reads the container state (stdin) and the bundle's `config.json`;
//! 2. decides from the annotations and the host configuration
//!    ([`config::HostConfig::decide`]) whether a policy applies;
//! 3. refuses a container holding a capability that gets around sbx
//!    ([`spec::DANGEROUS_CAPABILITIES`]);
//! 4. finds the process's cgroup v2 directory (the `0::` line of
//!    `/proc/<pid>/cgroup` under the cgroup2 mount, wherever it is) and
//!    checks the process is alone in it;
//! 5. attaches with [`crate::sandbox::install`], the call `sbx-user attach`
//!    makes, recording the container so `status` and `events` name it;
//! 6. checks again that the process is still alone in that directory.
//!
//! Every error is returned, naming the container; the command exits
//! nonzero and the runtime does not start the container (fail closed).

pub mod config;
pub mod spec;

use std::{
    fs,
    path::{Path, PathBuf},
};

use config::{Choice, ConfigError, Decision, HostConfig};
use spec::State;

use crate::{
    cgroup::Cgroup,
    policy::{FlagInput, Policy},
    sandbox::{self, Owner},
    state::{Paths, Record},
};

/// Why a container is refused (or its sandbox could not be removed).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The state on stdin is not an OCI container state.
    #[error("the container state on stdin is not valid OCI state JSON: {0}")]
    State(#[source] serde_json::Error),
    /// Anything else, for the container `id`.
    #[error("container {id}: {reason}")]
    Container {
        /// The container id.
        id: String,
        /// What went wrong.
        reason: Box<Reason>,
    },
}

/// What went wrong with one container.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// `config.json` could not be read or parsed.
    #[error("cannot read {path}: {message}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The configuration or the annotations refuse it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy does not exist or is invalid.
    #[error("{choice}: {source}")]
    Policy {
        /// What was asked for.
        choice: Choice,
        /// Why it cannot be used.
        source: crate::policy::PolicyError,
    },
    /// The policy file the annotation names does not exist.
    #[error("{choice}: no such policy: {} is not a file (policies are looked up only in {})", .path.display(), .dir.display())]
    NoPolicy {
        /// What was asked for.
        choice: Choice,
        /// Where it was looked for.
        path: PathBuf,
        /// The policy directory.
        dir: PathBuf,
    },
    /// The policy has filesystem rules, which a cgroup cannot enforce.
    #[error("{0} has [filesystem] rules, which only `sbx-user run` enforces (Landlock); the hook cannot hold a container to them")]
    Filesystem(Choice),
    /// The policy restricts pathname UNIX sockets, which only `run`
    /// enforces.
    #[error(
        "{choice} sets unix = {unix}, which only `sbx-user run` enforces (a supervisor beside the command); \
         processes in a container's cgroup could still connect to every UNIX socket they may open: drop `unix` from the policy"
    )]
    Unix {
        /// What was asked for.
        choice: Choice,
        /// The setting.
        unix: String,
    },
    /// It holds capabilities that get around sbx.
    #[error(
        "it holds {caps} ({why}); an OCI hook cannot take capabilities away, so it is refused: drop them \
         (--cap-drop, securityContext.capabilities.drop) or let the host allow them for {choice} in [[allow_capabilities]]",
        caps = .caps.join(", "), why = .why.join("; ")
    )]
    Capabilities {
        /// The capabilities (without `CAP_`).
        caps: Vec<String>,
        /// Why each is dangerous.
        why: Vec<&'static str>,
        /// The policy it would run under.
        choice: Choice,
    },
    /// No process to attach to.
    #[error("the state has no pid (status {status:?}); the hook must run at createRuntime")]
    NoPid {
        /// The status in the state.
        status: String,
    },
    /// Its cgroup v2 directory cannot be found or verified.
    #[error("{0}")]
    Cgroup(String),
    /// Attaching (or removing) failed.
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
    /// Reading records failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The agent was needed and failed.
    #[error("the sbx agent: {0}")]
    Agent(String),
}

/// Where the hook finds things; the defaults are the host's, the tests
/// point them elsewhere.
#[derive(Clone, Debug)]
pub struct HookEnv {
    /// Pins and records.
    pub paths: Paths,
    /// The host configuration.
    pub config: HostConfig,
    /// `/proc`.
    pub proc: PathBuf,
}

/// What the hook did, for its one line of output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: why.
    Untouched(&'static str),
    /// Attached `choice` to `cgroup`.
    Attached {
        /// The policy.
        choice: Choice,
        /// The container's cgroup.
        cgroup: PathBuf,
        /// Whether it was already attached (a second hook file).
        already: bool,
    },
    /// Removed the sandboxes of these cgroups.
    Removed(Vec<PathBuf>),
}

/// Parses the state the runtime wrote on the hook's stdin.
pub fn read_state(text: &[u8]) -> Result<State, OciError> {
    serde_json::from_slice(text).map_err(OciError::State)
}

/// The `createRuntime` hook: decide, check, attach.
pub fn create_runtime(state: &State, env: &HookEnv) -> Result<Outcome, OciError> {
    let fail = |reason: Reason| OciError::Container { id: state.id.clone(), reason: Box::new(reason) };
    create_inner(state, env).map_err(fail)
}

/// The `poststop` hook: remove every sandbox recorded for this container.
/// Idempotent: a container with none left is fine.
pub fn poststop(state: &State, env: &HookEnv) -> Result<Outcome, OciError> {
    let fail = |reason: Reason| OciError::Container { id: state.id.clone(), reason: Box::new(reason) };
    // SEAM(agent, issue 9): when a host agent runs, ask it to forget the
    // container here (it also garbage-collects what a lost poststop left).
    let records = Record::load_all(&env.paths).map_err(|e| fail(e.into()))?;
    let mut removed = Vec::new();
    for r in records.iter().filter(|r| r.container.as_ref().is_some_and(|c| c.id == state.id)) {
        match sandbox::uninstall(r.cgroup_id, &r.cgroup, &env.paths) {
            Ok(()) => {}
            // Pins already gone (a gc, or an earlier poststop that lost its
            // record removal): forget the record.
            Err(sandbox::SandboxError::Loader(crate::loader::LoaderError::NotAttached(_))) => {
                Record::remove(&env.paths, r.cgroup_id).map_err(|e| fail(e.into()))?;
            }
            Err(e) => return Err(fail(e.into())),
        }
        removed.push(r.cgroup.clone());
    }
    Ok(Outcome::Removed(removed))
}

fn create_inner(state: &State, env: &HookEnv) -> Result<Outcome, Reason> {
    let config_path = state.bundle.join("config.json");
    let bundle_err = |message: String| Reason::Bundle { path: config_path.clone(), message };
    let text = fs::read(&config_path).map_err(|e| bundle_err(e.to_string()))?;
    let spec: spec::Config = serde_json::from_slice(&text).map_err(|e| bundle_err(e.to_string()))?;
    // The state carries the annotations (runc and crun copy them); fall
    // back to config.json for runtimes that leave them out.
    let annotations = if state.annotations.is_empty() { &spec.annotations } else { &state.annotations };

    let choice = match env.config.decide(annotations)? {
        Decision::Untouched(why) => return Ok(Outcome::Untouched(why)),
        Decision::Apply { choice, .. } => choice,
    };
    let allowed = env.config.allowed_capabilities(&choice);
    let caps = spec.process.as_ref().and_then(|p| p.capabilities.clone()).unwrap_or_default();
    let held = spec::dangerous_held(&caps, &allowed);
    if !held.is_empty() {
        let why = held
            .iter()
            .filter_map(|c| spec::DANGEROUS_CAPABILITIES.iter().find(|(d, _)| d == c).map(|(_, w)| *w))
            .collect();
        return Err(Reason::Capabilities { caps: held, why, choice });
    }
    prune_gone(&env.paths);
    let policy = load_policy(&choice, &env.config)?;
    let pid = state.pid.filter(|&p| p > 0).ok_or_else(|| Reason::NoPid { status: state.status.clone() })?;
    let (cg, unified) = container_cgroup(&env.proc, pid)?;
    let container = spec::container_info(&state.id, annotations);

    // A second hook file (annotated and host default both installed) runs
    // the hook twice for one container: the second finds its own record.
    if let Some(r) = Record::load(&env.paths, cg.id)? {
        if r.container.as_ref().is_some_and(|c| c.id == state.id) && r.policy == policy {
            return Ok(Outcome::Attached { choice, cgroup: cg.path, already: true });
        }
    }
    // SEAM(agent, issue 9): when the host agent runs, hand it the
    // attachment here (so it owns the maps and fans out events) and fail
    // closed if it is needed but down; with no agent (podman, a bare
    // host) the hook attaches on its own, as below.
    let opts = sandbox::default_options(crate::compile::DEFAULT_MAX_ENTRIES, false);
    sandbox::install(&cg, &policy, opts, &env.paths, Owner::Container(Box::new(container)))?;
    // The process cannot move itself before it runs, but another process
    // could have joined the directory meanwhile: check again, and take
    // the policy off if the directory is no longer the container's alone.
    if let Err(e) = check_alone(&env.proc, pid, &cg, &unified) {
        let _ = sandbox::uninstall(cg.id, &cg.path, &env.paths);
        return Err(e);
    }
    Ok(Outcome::Attached { choice, cgroup: cg.path, already: false })
}

/// Removes the sandboxes of containers whose cgroup is gone. A runtime
/// runs no poststop hook for a container that failed to start after
/// createRuntime (podman does not when the command cannot be executed),
/// so their pins and records are collected here, at the next container
/// start, rather than waiting for a `gc`. A failure here only delays that:
/// it is logged, and the container at hand is not refused for it.
fn prune_gone(paths: &Paths) {
    let Ok(records) = Record::load_all(paths) else { return };
    for r in records.iter().filter(|r| r.container.is_some()) {
        let alive = Cgroup::open(&r.cgroup).is_ok_and(|c| c.id == r.cgroup_id);
        if alive {
            continue;
        }
        match sandbox::uninstall(r.cgroup_id, &r.cgroup, paths) {
            Ok(()) => log::info!("removed the sandbox of a container whose cgroup {} is gone", r.cgroup.display()),
            Err(sandbox::SandboxError::Loader(crate::loader::LoaderError::NotAttached(_))) => {
                let _ = Record::remove(paths, r.cgroup_id);
            }
            Err(e) => log::warn!("could not remove the sandbox of gone cgroup {}: {e}", r.cgroup.display()),
        }
    }
}

/// The policy `choice` names: a built-in profile, or the administrator's
/// file in the policy directory.
fn load_policy(choice: &Choice, config: &HostConfig) -> Result<Policy, Reason> {
    let flags = FlagInput::default();
    let policy = match choice {
        Choice::Profile(name) => Policy::from_sources(Some(name), None, &flags),
        Choice::Policy(name) => {
            let path = config.policy_path(name);
            if !path.is_file() {
                return Err(Reason::NoPolicy { choice: choice.clone(), path, dir: config.policy_dir.clone() });
            }
            Policy::from_sources(None, Some(&path), &flags)
        }
    }
    .map_err(|source| Reason::Policy { choice: choice.clone(), source })?;
    if policy.filesystem.is_some() {
        return Err(Reason::Filesystem(choice.clone()));
    }
    // As `attach` does (`cli::unix_for_cgroup`): nothing on a cgroup judges
    // pathname UNIX sockets, so a `unix` setting the policy file wrote is
    // refused, and a profile's default is dropped (the record says `any`).
    let mut policy = policy;
    match policy.unix_for_cgroup() {
        Err(unix) => return Err(Reason::Unix { choice: choice.clone(), unix: unix.to_string() }),
        Ok(Some(dropped)) => {
            log::warn!("{choice}: unix = {dropped} cannot be enforced on a container's cgroup; recorded as unix = any");
        }
        Ok(None) => {}
    }
    Ok(policy)
}

/// The cgroup v2 directory of process `pid`, checked to hold it alone, and
/// its path as `/proc/<pid>/cgroup` shows it.
fn container_cgroup(proc: &Path, pid: u32) -> Result<(Cgroup, String), Reason> {
    let cg_err = Reason::Cgroup;
    let mountinfo = fs::read_to_string(proc.join("self/mountinfo"))
        .map_err(|e| cg_err(format!("cannot read {}/self/mountinfo: {e}", proc.display())))?;
    let (point, root) = spec::cgroup2_mount(&mountinfo).ok_or_else(|| {
        cg_err("no cgroup2 filesystem is mounted (a cgroup v1-only host): sbx needs cgroup v2; mount it (hybrid layouts work when the runtime puts the container in a cgroup v2 directory of its own)".to_owned())
    })?;
    let file = proc.join(format!("{pid}/cgroup"));
    let text = fs::read_to_string(&file)
        .map_err(|e| cg_err(format!("cannot read {} of the container's process: {e}", file.display())))?;
    let path = spec::unified_path(&text).ok_or_else(|| {
        cg_err(format!(
            "{} has no cgroup v2 (`0::`) line: the runtime did not put the container in the unified hierarchy",
            file.display()
        ))
    })?;
    let dir = spec::cgroup_dir(&point, &root, &path).ok_or_else(|| {
        cg_err(format!(
            "the container's cgroup v2 path {path:?} is not under the cgroup2 mount at {} (which shows {root:?}); \
             the hook must run in the host's cgroup namespace",
            point.display()
        ))
    })?;
    if dir == point {
        return Err(cg_err(format!(
            "the container's process is in the cgroup v2 root ({}), not in a directory of its own",
            point.display()
        )));
    }
    let cg = Cgroup::open(&dir).map_err(|e| cg_err(e.to_string()))?;
    check_alone(proc, pid, &cg, &path)?;
    Ok((cg, path))
}

/// Checks that `pid` is the only process in `cg` and its descendants, and
/// that `/proc/<pid>/cgroup` still names `cg` (as `unified`).
fn check_alone(proc: &Path, pid: u32, cg: &Cgroup, unified: &str) -> Result<(), Reason> {
    let err = Reason::Cgroup;
    let pids = cg.pids().map_err(|e| err(e.to_string()))?;
    let pid_i = i32::try_from(pid).map_err(|_| err(format!("pid {pid} out of range")))?;
    if pids != [pid_i] {
        return Err(err(format!(
            "the container's process (pid {pid}) is not alone in its cgroup v2 directory {}: it holds {pids:?}; \
             attaching there would hold other processes too (the runtime must give each container a cgroup of its own)",
            cg.path.display()
        )));
    }
    let mut stack = vec![cg.path.clone()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| err(format!("reading {}: {e}", d.display())))?;
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let sub = e.path();
                let procs = fs::read_to_string(sub.join("cgroup.procs")).unwrap_or_default();
                if !procs.trim().is_empty() {
                    return Err(err(format!(
                        "the container's cgroup v2 directory {} has a child {} holding processes",
                        cg.path.display(),
                        sub.display()
                    )));
                }
                stack.push(sub);
            }
        }
    }
    let file = proc.join(format!("{pid}/cgroup"));
    let now = fs::read_to_string(&file).map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
    let moved = spec::unified_path(&now).as_deref() != Some(unified);
    if moved {
        return Err(err(format!("the container's process (pid {pid}) left {} during the attach", cg.path.display())));
    }
    Ok(())
}
