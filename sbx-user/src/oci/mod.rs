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
//!    makes, recording the container so `status` and `events` name it, or
//!    asks the host agent to (`attach`), when one answers ([`Via`]);
//! 6. checks again that the process is still alone in that directory.
//!
//! Pods ([`pod`]): a pod's sandbox (infra) container puts the policy on the
//! directory above its own, the pod's cgroup, once that is verified to be
//! the pod's (by name, and holding nothing but the sandbox). Every later
//! container of the pod is made below it and so is held from its first
//! instruction with no attach of its own; its hook records it
//! ([`Member`]) so that events, which carry the caller's cgroup, name it,
//! checks its capabilities, and adds its own policy as a nested layer when
//! it names another one (both must allow).
//!
//! Every error is returned, naming the container; the command exits
//! nonzero and the runtime does not start the container (fail closed).

pub mod config;
pub mod pod;
pub mod spec;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use config::{AgentMode, Choice, ConfigError, Decision, HostConfig};
use spec::State;

use crate::{
    agent::{
        client::{Client, ClientError},
        config::DEFAULT_SOCKET,
        protocol::{PolicySource, Request},
    },
    cgroup::Cgroup,
    policy::{FlagInput, Policy},
    sandbox::{self, Owner},
    state::{Container, Member, Paths, Record},
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
    /// The configuration file, for messages.
    pub config_path: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
    /// The agent socket named by `--agent-socket`/`SBX_AGENT_SOCKET`
    /// (the configuration's `agent_socket` comes first).
    pub agent_socket: Option<PathBuf>,
    /// How long to wait for the agent's reply.
    pub agent_timeout: Duration,
    /// Whether `--state-dir`/`--bpffs` name other places than the
    /// defaults: then the agent's default socket is not used unless named
    /// (as the CLI does: the caller asked for a private set of sandboxes).
    pub private_paths: bool,
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
        /// The container's cgroup, or the pod's for a pod sandbox.
        cgroup: PathBuf,
        /// Whether it was already attached (a second hook file).
        already: bool,
        /// Whether `cgroup` is the pod's (the container is its sandbox).
        pod: bool,
        /// Whether the host agent attached it.
        agent: bool,
    },
    /// The container joins a pod whose sandbox holds the pod's cgroup
    /// under a policy: it is held from its first instruction by that,
    /// recorded so that events name it, and under its own policy too
    /// (a nested layer: both must allow) when it names another one.
    Joined {
        /// The pod's cgroup.
        pod: PathBuf,
        /// The container's own cgroup.
        cgroup: PathBuf,
        /// Its own layer, when it names a policy other than the pod's.
        own: Option<Choice>,
    },
    /// Removed the sandboxes of these cgroups; kept those of pods whose
    /// cgroup still holds processes.
    Removed {
        /// Taken off.
        removed: Vec<PathBuf>,
        /// Left on, with why.
        kept: Vec<(PathBuf, String)>,
    },
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

/// The `poststop` hook: remove every sandbox recorded for this container,
/// and the member record of a container in a pod. A pod's sandbox stays on
/// the pod's cgroup while processes remain in it (the sandbox stopped
/// before the pod's other containers): the last container's poststop, or
/// the collection once the runtime removes the pod's cgroup, takes it off.
/// Idempotent: a container with none left is fine.
pub fn poststop(state: &State, env: &HookEnv) -> Result<Outcome, OciError> {
    let fail = |reason: Reason| OciError::Container { id: state.id.clone(), reason: Box::new(reason) };
    // Through the agent when it answers, so that it forgets the sandbox;
    // alone otherwise, even when the configuration requires the agent:
    // taking a policy off a stopped container holds nothing less, and
    // leaving it would leak it until a gc.
    let mut via = Via::connect(env, false).unwrap_or_else(|e| {
        log::warn!("{e}; removing without the agent");
        Via::Local
    });
    let records = Record::load_all(&env.paths).map_err(|e| fail(e.into()))?;
    let members = Member::load_all(&env.paths);
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    let mine = |r: &&Record| r.container.as_ref().is_some_and(|c| c.id == state.id);
    for r in records.iter().filter(mine) {
        let pod = r.container.as_ref().is_some_and(|c| c.pod_policy.is_some());
        if pod && still_populated(r) {
            kept.push((r.cgroup.clone(), "the pod's cgroup still holds processes".to_owned()));
            continue;
        }
        remove_sandbox(&mut via, env, r).map_err(fail)?;
        removed.push(r.cgroup.clone());
    }
    for m in members.iter().filter(|m| m.container.id == state.id) {
        Member::remove(&env.paths, m.cgroup_id).map_err(|e| fail(e.into()))?;
        // The last container of a pod whose sandbox stopped first.
        let pod = records.iter().find(|r| r.cgroup_id == m.sandbox && !removed.contains(&r.cgroup));
        if let Some(pod) = pod.filter(|p| !still_populated(p)) {
            remove_sandbox(&mut via, env, pod).map_err(fail)?;
            removed.push(pod.cgroup.clone());
            kept.retain(|(c, _)| *c != pod.cgroup);
        }
    }
    prune_gone(&env.paths);
    Ok(Outcome::Removed { removed, kept })
}

/// Whether the cgroup of record `r` still exists and holds processes.
fn still_populated(r: &Record) -> bool {
    Cgroup::open(&r.cgroup).ok().filter(|c| c.id == r.cgroup_id).is_some_and(|c| c.populated().unwrap_or(true))
}

/// Takes the sandbox of record `r` off (a pod's: with its member records).
fn remove_sandbox(via: &mut Via, env: &HookEnv, r: &Record) -> Result<(), Reason> {
    via.detach(env, r.cgroup_id, &r.cgroup)?;
    if r.container.as_ref().is_some_and(|c| c.pod_policy.is_some()) {
        for m in Member::load_all(&env.paths).iter().filter(|m| m.sandbox == r.cgroup_id) {
            Member::remove(&env.paths, m.cgroup_id)?;
        }
    }
    Ok(())
}

/// The bundle's `config.json`.
fn read_spec(state: &State) -> Result<spec::Config, Reason> {
    let config_path = state.bundle.join("config.json");
    let bundle_err = |message: String| Reason::Bundle { path: config_path.clone(), message };
    let text = fs::read(&config_path).map_err(|e| bundle_err(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| bundle_err(e.to_string()))
}

/// Refuses a container that holds capabilities getting around sbx, unless
/// the host allows them for `choice`.
fn check_capabilities(spec: &spec::Config, env: &HookEnv, choice: &Choice) -> Result<(), Reason> {
    let allowed = env.config.allowed_capabilities(choice);
    let caps = spec.process.as_ref().and_then(|p| p.capabilities.clone()).unwrap_or_default();
    let held = spec::dangerous_held(&caps, &allowed);
    if held.is_empty() {
        return Ok(());
    }
    let why = held
        .iter()
        .filter_map(|c| spec::DANGEROUS_CAPABILITIES.iter().find(|(d, _)| d == c).map(|(_, w)| *w))
        .collect();
    Err(Reason::Capabilities { caps: held, why, choice: choice.clone() })
}

fn create_inner(state: &State, env: &HookEnv) -> Result<Outcome, Reason> {
    let spec = read_spec(state)?;
    // The state carries the annotations (runc and crun copy them); fall
    // back to config.json for runtimes that leave them out.
    let annotations = if state.annotations.is_empty() { &spec.annotations } else { &state.annotations };
    let pid = state.pid.filter(|&p| p > 0);

    let choice = match env.config.decide(annotations)? {
        Decision::Untouched(why) => return join_only(state, env, &spec, annotations, pid, why),
        Decision::Apply { choice, .. } => choice,
    };
    check_capabilities(&spec, env, &choice)?;
    prune_gone(&env.paths);
    let policy = load_policy(&choice, &env.config)?;
    let pid = pid.ok_or_else(|| Reason::NoPid { status: state.status.clone() })?;
    let found = container_cgroup(&env.proc, pid)?;
    let container = spec::container_info(&state.id, annotations);
    let mut via = Via::connect(env, true)?;
    let ctx = Attach { state, env, pid, found: &found, choice: &choice, policy: &policy };

    if let Some(runtime) = sandbox_runtime(pod::role(annotations), &found.cgroup) {
        return ctx.pod(&mut via, runtime, annotations, container);
    }
    if let Some(pod) = pod_holding(&env.paths, &found.cgroup)? {
        let pod_choice = pod_choice(&pod)?;
        check_capabilities(&spec, env, &pod_choice)?;
        Member {
            cgroup: found.cgroup.path.clone(),
            cgroup_id: found.cgroup.id,
            sandbox: pod.cgroup_id,
            container: container.clone(),
        }
        .save(&env.paths)?;
        if pod_choice == choice {
            return Ok(Outcome::Joined { pod: pod.cgroup, cgroup: found.cgroup.path.clone(), own: None });
        }
        // Its own policy as well, one layer below the pod's.
        ctx.container(&mut via, container)?;
        return Ok(Outcome::Joined { pod: pod.cgroup, cgroup: found.cgroup.path.clone(), own: Some(choice) });
    }
    ctx.container(&mut via, container)
}

/// A container that names no policy of its own (and no host default
/// covers): untouched, unless it joins a pod whose sandbox sbx holds; then
/// it is recorded, so that events name it, and checked for capabilities.
fn join_only(
    state: &State,
    env: &HookEnv,
    spec: &spec::Config,
    annotations: &BTreeMap<String, String>,
    pid: Option<u32>,
    why: &'static str,
) -> Result<Outcome, Reason> {
    if pod::role(annotations) != pod::Role::Container {
        return Ok(Outcome::Untouched(why));
    }
    let Some(pid) = pid else { return Ok(Outcome::Untouched(why)) };
    // A container whose cgroup cannot be found or is shared is in no pod
    // sbx holds (a pod's containers each have their own): untouched.
    let Ok(found) = container_cgroup(&env.proc, pid) else { return Ok(Outcome::Untouched(why)) };
    let Some(pod) = pod_holding(&env.paths, &found.cgroup)? else { return Ok(Outcome::Untouched(why)) };
    check_capabilities(spec, env, &pod_choice(&pod)?)?;
    let container = spec::container_info(&state.id, annotations);
    Member { cgroup: found.cgroup.path.clone(), cgroup_id: found.cgroup.id, sandbox: pod.cgroup_id, container }
        .save(&env.paths)?;
    Ok(Outcome::Joined { pod: pod.cgroup, cgroup: found.cgroup.path, own: None })
}

/// The policy a pod sandbox's record says the pod is under.
fn pod_choice(pod: &Record) -> Result<Choice, Reason> {
    pod.container.as_ref().and_then(|c| c.pod_policy.as_deref()).and_then(Choice::parse).ok_or_else(|| {
        Reason::Cgroup(format!("the record of pod cgroup {} does not say its policy", pod.cgroup.display()))
    })
}

/// The runtime whose pod sandbox this container is, if it is one.
fn sandbox_runtime(role: pod::Role, cg: &Cgroup) -> Option<pod::Runtime> {
    match role {
        pod::Role::Sandbox(r) => Some(r),
        pod::Role::PodmanUnmarked => {
            let parent = cg.path.parent()?.file_name()?.to_str()?;
            pod::is_podman_pod_dir(parent).then_some(pod::Runtime::Podman)
        }
        pod::Role::Container => None,
    }
}

/// The record of the pod sandbox holding an ancestor of `cg`, if any.
fn pod_holding(paths: &Paths, cg: &Cgroup) -> Result<Option<Record>, Reason> {
    for dir in cg.path.ancestors().skip(1) {
        let Ok(a) = Cgroup::open(dir) else { break };
        if let Some(r) = Record::load(paths, a.id)? {
            if r.container.as_ref().is_some_and(|c| c.pod_policy.is_some()) {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

/// One container's attach: what it needs, found and checked.
struct Attach<'a> {
    state: &'a State,
    env: &'a HookEnv,
    pid: u32,
    found: &'a Found,
    choice: &'a Choice,
    policy: &'a Policy,
}

impl Attach<'_> {
    /// What an attach to `cgroup` did.
    fn attached(&self, cgroup: &Path, already: bool, pod: bool, via: &Via) -> Outcome {
        Outcome::Attached {
            choice: self.choice.clone(),
            cgroup: cgroup.to_owned(),
            already,
            pod,
            agent: via.is_agent(),
        }
    }

    /// The policy on the container's own cgroup.
    fn container(&self, via: &mut Via, container: Container) -> Result<Outcome, Reason> {
        let (env, cg) = (self.env, &self.found.cgroup);
        // A second hook file (annotated and host default both installed)
        // runs the hook twice for one container: the second finds its own
        // record.
        if let Some(r) = Record::load(&env.paths, cg.id)? {
            if r.container.as_ref().is_some_and(|c| c.id == self.state.id) && r.policy == *self.policy {
                return Ok(self.attached(&cg.path, true, false, via));
            }
        }
        via.attach(env, cg, self.choice, self.policy, container, false)?;
        let outcome = self.attached(&cg.path, false, false, via);
        // The process cannot move itself before it runs, but another
        // process could have joined the directory meanwhile: check again,
        // and take the policy off if the directory is no longer the
        // container's alone.
        if let Err(e) = check_alone(&env.proc, self.pid, cg, &self.found.unified) {
            let _ = via.detach(env, cg.id, &cg.path);
            return Err(e);
        }
        Ok(outcome)
    }

    /// A pod's sandbox: the policy on the pod's cgroup, the directory
    /// above the sandbox's, checked to be the pod's and to hold nothing
    /// but the sandbox.
    fn pod(
        &self,
        via: &mut Via,
        runtime: pod::Runtime,
        annotations: &BTreeMap<String, String>,
        mut container: Container,
    ) -> Result<Outcome, Reason> {
        let (env, cg) = (self.env, &self.found.cgroup);
        let err = Reason::Cgroup;
        let parent = cg.path.parent().filter(|p| *p != self.found.mount).ok_or_else(|| {
            err(format!(
                "the {runtime} pod sandbox's cgroup {} is directly below the cgroup2 root: there is no pod cgroup to attach to",
                cg.path.display()
            ))
        })?;
        let name = parent.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        pod::check_pod_dir(runtime, name, annotations).map_err(|why| {
            err(format!(
                "it is a {runtime} pod sandbox, but the directory above its cgroup, {}, cannot be verified as the pod's:                  {why}; refusing rather than holding a directory other containers may share",
                parent.display()
            ))
        })?;
        let pod = Cgroup::open(parent).map_err(|e| err(e.to_string()))?;
        check_pod_holds_only(&pod, cg, &self.state.id)?;
        container.pod_policy = Some(self.choice.to_string());
        let replace = match Record::load(&env.paths, pod.id)? {
            Some(r) if r.container.as_ref().is_some_and(|c| c.id == self.state.id) && r.policy == *self.policy => {
                return Ok(self.attached(&pod.path, true, true, via));
            }
            // An earlier sandbox of this pod (a runtime recreates a
            // sandbox that died): the new one takes its place.
            Some(r) if r.container.as_ref().is_some_and(|c| c.pod_policy.is_some()) => true,
            Some(r) => {
                return Err(err(format!(
                    "the pod's cgroup {} is under sbx already ({}), not by a sandbox of this pod; refusing",
                    pod.path.display(),
                    r.name()
                )))
            }
            None => false,
        };
        via.attach(env, &pod, self.choice, self.policy, container, replace)?;
        let outcome = self.attached(&pod.path, false, true, via);
        let recheck = check_alone(&env.proc, self.pid, cg, &self.found.unified)
            .and_then(|()| check_pod_holds_only(&pod, cg, &self.state.id));
        if let Err(e) = recheck {
            if !replace {
                let _ = via.detach(env, pod.id, &pod.path);
            }
            return Err(e);
        }
        Ok(outcome)
    }
}

/// Checks that nothing but the sandbox `own` (and helpers named after it,
/// CRI-O's conmon) runs in the pod's cgroup `pod`: when the sandbox
/// starts, the pod has no other container yet.
fn check_pod_holds_only(pod: &Cgroup, own: &Cgroup, sandbox_id: &str) -> Result<(), Reason> {
    let err = Reason::Cgroup;
    let procs = |d: &Path| fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
    if !procs(&pod.path).trim().is_empty() {
        return Err(err(format!("the pod's cgroup {} holds processes of its own", pod.path.display())));
    }
    let mut stack = vec![pod.path.clone()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| err(format!("reading {}: {e}", d.display())))?;
        for e in entries.flatten() {
            let sub = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) || sub == own.path {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if !procs(&sub).trim().is_empty() && !pod::is_sandbox_helper(&name, sandbox_id) {
                return Err(err(format!(
                    "the pod's cgroup {} holds processes besides its sandbox, in {}: it is not a pod that is starting;                      refusing rather than holding them",
                    pod.path.display(),
                    sub.display()
                )));
            }
            stack.push(sub);
        }
    }
    Ok(())
}

/// Who puts a policy on a cgroup: this process, or the host agent, which
/// then knows the sandbox (it lists it, fans out its events and takes it
/// over again after a restart).
enum Via {
    /// `sandbox::install` here.
    Local,
    /// The agent's `attach` and `detach`.
    Agent(Client),
}

impl Via {
    /// The agent to attach through, as [`AgentMode`] says; `create` for
    /// createRuntime, where a required agent that is down refuses the
    /// container.
    fn connect(env: &HookEnv, create: bool) -> Result<Self, Reason> {
        let mode = env.config.agent;
        if mode == AgentMode::Off {
            return Ok(Self::Local);
        }
        let named = env.config.agent_socket.clone().or_else(|| env.agent_socket.clone());
        let required = || {
            format!(
                "the configuration ({}) sets agent = \"required\": the container does not start without the agent",
                env.config_path.display()
            )
        };
        let path = match named {
            Some(p) if p.as_os_str() == "none" && mode == AgentMode::Auto => return Ok(Self::Local),
            Some(p) if p.as_os_str() == "none" => {
                return Err(Reason::Agent(format!("the agent socket is set to none; {}", required())))
            }
            Some(p) => p,
            None if env.private_paths && mode == AgentMode::Auto => return Ok(Self::Local),
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        match Client::connect(&path, env.agent_timeout) {
            Ok(c) => Ok(Self::Agent(c)),
            Err(ClientError::Connect { source, .. })
                if mode == AgentMode::Auto
                    && matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) =>
            {
                Ok(Self::Local)
            }
            Err(e) if mode == AgentMode::Required && create => Err(Reason::Agent(format!("{e}; {}", required()))),
            Err(e) => Err(Reason::Agent(e.to_string())),
        }
    }

    fn is_agent(&self) -> bool {
        matches!(self, Self::Agent(_))
    }

    /// Puts `policy` (`choice`) on `cg`, recorded as `container`'s.
    fn attach(
        &mut self,
        env: &HookEnv,
        cg: &Cgroup,
        choice: &Choice,
        policy: &Policy,
        container: Container,
        replace: bool,
    ) -> Result<(), Reason> {
        let client = match self {
            Self::Local => {
                let opts = sandbox::default_options(crate::compile::DEFAULT_MAX_ENTRIES, replace);
                sandbox::install(cg, policy, opts, &env.paths, Owner::Container(Box::new(container)))?;
                return Ok(());
            }
            Self::Agent(c) => c,
        };
        let cgroup = cg.path.to_str().ok_or_else(|| Reason::Cgroup(format!("{} is not UTF-8", cg.path.display())))?;
        let request = Request::Attach {
            cgroup: cgroup.to_owned(),
            create: false,
            replace,
            policy: source_of(choice, &env.config)?,
        };
        let at = client.path().display().to_string();
        match client.call(&request) {
            Ok(_) => {}
            Err(ClientError::Agent { code, message }) if code == "not_managed" => {
                return Err(Reason::Agent(format!(
                    "at {at}: {message}: the agent holds only cgroups below the subtrees it manages; add the runtime's \
                     cgroup parent (here {}) to cgroup_roots in the agent's configuration, or set agent = \"off\" in {} \
                     to attach without it",
                    cg.path.parent().unwrap_or(&cg.path).display(),
                    env.config_path.display()
                )))
            }
            Err(e) => return Err(Reason::Agent(format!("at {at}: {e}"))),
        }
        // The agent records who attached as `attach`: name the container
        // in its record, which the hook and the agent share.
        let named = Record::load(&env.paths, cg.id).map_err(Reason::from).and_then(|r| {
            let mut r = r.ok_or_else(|| {
                Reason::Agent(format!(
                    "at {at}: it attached to {} but its record is not in {}: the hook and the agent must share the state directory",
                    cg.path.display(),
                    env.paths.state_dir.display()
                ))
            })?;
            "oci-hook".clone_into(&mut r.by);
            r.container = Some(container);
            r.save(&env.paths).map_err(Reason::from)
        });
        if let Err(e) = named {
            if !replace {
                let _ = self.detach(env, cg.id, &cg.path);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes sbx off cgroup `id` at `path` (which may be gone: its pins
    /// and record are removed here then, as the agent cannot name it).
    fn detach(&mut self, env: &HookEnv, id: u64, path: &Path) -> Result<(), Reason> {
        if let Self::Agent(client) = self {
            let alive = Cgroup::open(path).is_ok_and(|c| c.id == id);
            if let (true, Some(cgroup)) = (alive, path.to_str()) {
                match client.call(&Request::Detach { cgroup: cgroup.to_owned(), remove: false }) {
                    Ok(_) => return Ok(()),
                    Err(ClientError::Agent { code, .. }) if code == "not_found" => {}
                    Err(e) => return Err(Reason::Agent(format!("at {}: {e}", client.path().display()))),
                }
            }
        }
        match sandbox::uninstall(id, path, &env.paths) {
            Ok(()) => Ok(()),
            // Pins already gone (a gc, or an earlier poststop that lost its
            // record removal): forget the record.
            Err(sandbox::SandboxError::Loader(crate::loader::LoaderError::NotAttached(_))) => {
                Record::remove(&env.paths, id).map_err(Reason::from)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The agent's policy request for `choice`: the profile's name, or the
/// text of the administrator's policy file.
fn source_of(choice: &Choice, config: &HostConfig) -> Result<PolicySource, Reason> {
    Ok(match choice {
        Choice::Profile(name) => PolicySource { profile: Some(name.clone()), ..PolicySource::default() },
        Choice::Policy(name) => {
            let path = config.policy_path(name);
            let toml =
                fs::read_to_string(&path).map_err(|e| Reason::Bundle { path: path.clone(), message: e.to_string() })?;
            PolicySource { toml: Some(toml), name: Some(path.display().to_string()), ..PolicySource::default() }
        }
    })
}

/// Removes the sandboxes of containers whose cgroup is gone. A runtime
/// runs no poststop hook for a container that failed to start after
/// createRuntime (podman does not when the command cannot be executed),
/// so their pins and records are collected here, at the next container
/// start, rather than waiting for a `gc`. A failure here only delays that:
/// it is logged, and the container at hand is not refused for it.
fn prune_gone(paths: &Paths) {
    for m in Member::load_all(paths) {
        if !Cgroup::open(&m.cgroup).is_ok_and(|c| c.id == m.cgroup_id) {
            let _ = Member::remove(paths, m.cgroup_id);
        }
    }
    let Ok(records) = Record::load_all(paths) else { return };
    for r in records.iter().filter(|r| r.container.is_some()) {
        let pod = r.container.as_ref().is_some_and(|c| c.pod_policy.is_some());
        let cg = Cgroup::open(&r.cgroup).ok().filter(|c| c.id == r.cgroup_id);
        // A pod's cgroup that holds no process has no sandbox running
        // (the sandbox is in it from before its hook until it stops):
        // a sandbox that failed to start, whose cgroup the runtime keeps.
        let gone = match cg {
            None => true,
            Some(c) => pod && !c.populated().unwrap_or(true),
        };
        if !gone {
            continue;
        }
        match sandbox::uninstall(r.cgroup_id, &r.cgroup, paths) {
            Ok(()) => log::info!("removed the sandbox of {}, which no container holds any more", r.cgroup.display()),
            Err(sandbox::SandboxError::Loader(crate::loader::LoaderError::NotAttached(_))) => {
                let _ = Record::remove(paths, r.cgroup_id);
            }
            Err(e) => {
                log::warn!("could not remove the sandbox of {}: {e}", r.cgroup.display());
                continue;
            }
        }
        for m in Member::load_all(paths).iter().filter(|m| m.sandbox == r.cgroup_id) {
            let _ = Member::remove(paths, m.cgroup_id);
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

/// A container's cgroup v2 directory, checked to hold its process alone.
struct Found {
    /// The directory.
    cgroup: Cgroup,
    /// Its path as `/proc/<pid>/cgroup` shows it.
    unified: String,
    /// The cgroup2 mount point.
    mount: PathBuf,
}

/// The cgroup v2 directory of process `pid`, checked to hold it alone.
fn container_cgroup(proc: &Path, pid: u32) -> Result<Found, Reason> {
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
    Ok(Found { cgroup: cg, unified: path, mount: point })
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
