//! What each request does, with the same library calls as the CLI
//! ([`crate::sandbox::install`], [`crate::sandbox::uninstall`],
//! [`crate::state::Record`]), so that a sandbox made through the agent is
//! exactly the one `sbx-user attach` would make. These functions block
//! (bpf(2), the filesystem, name resolution); the server runs them on
//! tokio's blocking pool.
//!
//! Who created each sandbox is kept beside the records, in
//! `<state-dir>/agent/<cgroup-id>.json` (an [`Owner`]), written before the
//! sandbox is attached and removed after it is detached, so that a crash
//! in between leaves a trace the next start cleans up ([`recover`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    access::Caller,
    protocol::{ErrorCode, PolicySource},
    roots::{ResolveError, Resolved, Roots},
    Config,
};
use crate::{
    cgroup::Cgroup,
    compile::DEFAULT_MAX_ENTRIES,
    loader,
    policy::Policy,
    sandbox::{default_options, install, uninstall, Owner as RecordOwner},
    state::{Paths, Record, RunnerState},
};

/// A request that failed: the reply's code and message.
#[derive(Debug)]
pub struct OpError {
    /// The error code.
    pub code: ErrorCode,
    /// What went wrong, for the client's user.
    pub message: String,
}

impl OpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<ResolveError> for OpError {
    fn from(e: ResolveError) -> Self {
        let code = match &e {
            ResolveError::NotManaged { .. } => ErrorCode::NotManaged,
            ResolveError::NotFound { .. } => ErrorCode::NotFound,
            ResolveError::BadName { .. } | ResolveError::Exists(_) => ErrorCode::Invalid,
            ResolveError::Io { .. } | ResolveError::Cgroup(_) => ErrorCode::Failed,
        };
        Self::new(code, e.to_string())
    }
}

/// Everything an operation needs.
#[derive(Debug)]
pub struct Context<'a> {
    /// The configuration in force.
    pub config: &'a Config,
    /// The managed roots, opened.
    pub roots: &'a Roots,
    /// Pins and records.
    pub paths: &'a Paths,
}

/// Who created a sandbox through the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    /// The creator's uid.
    pub uid: u32,
    /// The cgroup.
    pub cgroup: PathBuf,
    /// Whether the agent made the cgroup (and may remove it).
    pub created: bool,
}

fn owner_dir(paths: &Paths) -> PathBuf {
    paths.state_dir.join("agent")
}

fn owner_path(paths: &Paths, id: u64) -> PathBuf {
    owner_dir(paths).join(format!("{id}.json"))
}

fn failed(what: &str, path: &Path, e: &io::Error) -> OpError {
    OpError::new(ErrorCode::Failed, format!("{what} {}: {e}", path.display()))
}

/// The owner record of sandbox `id`, if the agent made it.
fn load_owner(paths: &Paths, id: u64) -> Result<Option<Owner>, OpError> {
    let p = owner_path(paths, id);
    match fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| failed("parsing", &p, &io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed("reading", &p, &e)),
    }
}

fn save_owner(paths: &Paths, id: u64, owner: &Owner) -> Result<(), OpError> {
    let dir = owner_dir(paths);
    fs::create_dir_all(&dir).map_err(|e| failed("creating", &dir, &e))?;
    let p = owner_path(paths, id);
    let tmp = p.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(owner).expect("owners serialise")).map_err(|e| failed("writing", &tmp, &e))?;
    fs::rename(&tmp, &p).map_err(|e| failed("writing", &p, &e))
}

fn remove_owner(paths: &Paths, id: u64) -> Result<(), OpError> {
    let p = owner_path(paths, id);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed("removing", &p, &e)),
    }
}

fn all_owners(paths: &Paths) -> Vec<(u64, Owner)> {
    let mut out: Vec<(u64, Owner)> = fs::read_dir(owner_dir(paths))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_suffix(".json")?.parse().ok()?;
            let owner = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            Some((id, owner))
        })
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

/// The uid that may act on sandbox `id` besides root: its creator, or root
/// when the agent did not make it.
fn creator(paths: &Paths, id: u64) -> Result<u32, OpError> {
    Ok(load_owner(paths, id)?.map_or(0, |o| o.uid))
}

/// The creator of sandbox `id` (root when unknown).
#[must_use]
pub fn creator_of(paths: &Paths, id: u64) -> u32 {
    creator(paths, id).unwrap_or(0)
}

/// `events`: the cgroup ids of the sandboxes named, each checked like
/// `status`; `None` for every sandbox the caller may see.
pub fn event_filter(
    ctx: &Context<'_>,
    caller: &Caller,
    cgroups: Option<&[String]>,
) -> Result<Option<std::collections::HashSet<u64>>, OpError> {
    let Some(names) = cgroups else { return Ok(None) };
    let mut ids = std::collections::HashSet::new();
    for name in names {
        let resolved = ctx.roots.resolve(name)?;
        check_owner(caller, ctx.paths, &resolved)?;
        if !ctx.paths.pin_dir(resolved.cgroup.id).exists() {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("sbx is not attached to {}", resolved.cgroup.path.display()),
            ));
        }
        ids.insert(resolved.cgroup.id);
    }
    Ok(Some(ids))
}

fn check_owner(caller: &Caller, paths: &Paths, r: &Resolved) -> Result<Option<Owner>, OpError> {
    let owner = load_owner(paths, r.cgroup.id)?;
    let uid = owner.as_ref().map_or(0, |o| o.uid);
    if caller.may_act_on(uid) {
        Ok(owner)
    } else {
        Err(OpError::new(
            ErrorCode::NotOwner,
            format!(
                "{} is not a sandbox uid {} created; only its creator and root may act on it",
                r.cgroup.path.display(),
                caller.uid
            ),
        ))
    }
}

/// Builds the policy of a request exactly as the CLI builds it from the
/// same profile, file text and flags.
///
/// `unix` rules are enforced by the supervisor of the `sbx-user run` that
/// asked (`for_run`); for a cgroup the agent attaches, an explicit one is
/// refused, as `attach` refuses it.
pub fn build_policy(src: &PolicySource, for_run: bool) -> Result<(Policy, u32), OpError> {
    let PolicySource { profile, toml, name, max_rules, .. } = src;
    let bad = |m: String| OpError::new(ErrorCode::Policy, m);
    if let Some(text) = toml {
        // Refused before parsing: filesystem rules are canonicalised while
        // they are parsed, and the agent runs as root, so parsing them
        // would tell a client which root-only paths exist.
        if text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("filesystem")) {
            return Err(bad(
                "filesystem rules ([filesystem]) apply only to `sbx-user run`: Landlock restricts a process sbx starts, not a cgroup".into(),
            ));
        }
    }
    let flags = src.flags();
    let file = toml.as_deref().map(|t| (t, name.as_deref().unwrap_or("the request's policy")));
    let mut policy = Policy::from_text_sources(profile.as_deref(), file, &flags).map_err(|e| bad(e.to_string()))?;
    if for_run {
        // Enforced by the runner's own supervisor.
        policy.drop_unix();
    } else if let Err(unix) = policy.unix_for_cgroup() {
        return Err(bad(format!(
            "unix = {unix}: processes in an attached cgroup can still connect to every pathname UNIX socket their uid may \
             open (the cgroup programs judge inet addresses only); only `sbx-user run` enforces `unix`"
        )));
    }
    if policy.filesystem.is_some() {
        return Err(bad("filesystem rules apply only to `sbx-user run`".into()));
    }
    let max = max_rules.unwrap_or(DEFAULT_MAX_ENTRIES);
    if !(16..=crate::compile::MAX_MAX_ENTRIES).contains(&max) {
        return Err(bad(format!("max_rules = {max} is out of range (16 to {})", crate::compile::MAX_MAX_ENTRIES)));
    }
    Ok((policy, max))
}

fn record_json(rec: &Record, owner: u32) -> Value {
    json!({
        "cgroup": rec.cgroup,
        "cgroup_id": rec.cgroup_id,
        "creator_uid": owner,
        "by": rec.by,
        "runner_pid": rec.runner_pid,
        "attached_at": rec.attached_at,
        "generation": rec.generation,
        "dest_entries": rec.dest_entries,
        "bind_entries": rec.bind_entries,
        "tables": rec.tables,
        "max_entries": rec.max_entries,
        "summary": rec.policy.summary(),
    })
}

/// `attach`.
pub fn attach(
    ctx: &Context<'_>,
    caller: &Caller,
    cgroup: &str,
    create: bool,
    replace: bool,
    src: &PolicySource,
) -> Result<Value, OpError> {
    if !caller.is_root() && !create {
        return Err(OpError::new(
            ErrorCode::NotOwner,
            "only root may attach to an existing cgroup: it may hold another user's processes; send \"create\": true to have the agent make a cgroup of your own",
        ));
    }
    let (policy, max_rules) = build_policy(src, false)?;
    if !caller.is_root() {
        owned_below_limit(ctx, caller)?;
    }
    let resolved = if create { ctx.roots.create(cgroup)? } else { ctx.roots.resolve(cgroup)? };
    let cg = &resolved.cgroup;
    let existing_owner = if create {
        // Recorded before anything is attached: a crash from here on
        // leaves a trace that `recover` follows.
        let owner = Owner { uid: caller.uid, cgroup: cg.path.clone(), created: true };
        if let Err(e) = save_owner(ctx.paths, cg.id, &owner) {
            let _ = cg.remove();
            return Err(e);
        }
        Some(owner)
    } else {
        check_owner(caller, ctx.paths, &resolved)?
    };
    let opts = default_options(max_rules, replace);
    match install(cg, &policy, opts, ctx.paths, RecordOwner::Attach) {
        Ok((attached, record)) => Ok(json!({
            "cgroup": cg.path,
            "cgroup_id": cg.id,
            "created": create,
            "replaced": attached.replaced,
            "generation": record.generation,
            "prog_ids": attached.prog_ids(),
            "pin_dir": attached.pin_dir,
            "dest_entries": record.dest_entries,
            "bind_entries": record.bind_entries,
            "tables": record.tables,
            "max_entries": record.max_entries,
            "creator_uid": existing_owner.as_ref().map_or(0, |o| o.uid),
            "summary": policy.summary(),
            "policy": policy,
        })),
        Err(e) => {
            if create {
                let _ = cg.remove();
                let _ = remove_owner(ctx.paths, cg.id);
            }
            Err(OpError::new(ErrorCode::Failed, format!("no policy was attached to {}: {e}", cg.path.display())))
        }
    }
}

/// Refuses a caller that owns `limits.max_sandboxes_per_user` sandboxes.
fn owned_below_limit(ctx: &Context<'_>, caller: &Caller) -> Result<(), OpError> {
    let owned = all_owners(ctx.paths).iter().filter(|(_, o)| o.uid == caller.uid).count();
    let limit = ctx.config.limits.max_sandboxes_per_user;
    if owned >= limit {
        return Err(OpError::new(
            ErrorCode::Limit,
            format!(
                "uid {} owns {owned} sandboxes already, the limit (limits.max_sandboxes_per_user = {limit})",
                caller.uid
            ),
        ));
    }
    Ok(())
}

/// `update`.
pub fn update(ctx: &Context<'_>, caller: &Caller, cgroup: &str, src: &PolicySource) -> Result<Value, OpError> {
    let resolved = ctx.roots.resolve(cgroup)?;
    let owner = check_owner(caller, ctx.paths, &resolved)?;
    let cg = &resolved.cgroup;
    let (policy, max_rules) = build_policy(src, false)?;
    if !ctx.paths.pin_dir(cg.id).exists() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("sbx is not attached to {}; attach first", cg.path.display()),
        ));
    }
    // As the record says (a run, a container or a pod's sandbox keep
    // what they are across an update).
    let record = Record::load(ctx.paths, cg.id).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let record_owner = RecordOwner::of(record.as_ref());
    let (_, record) = install(cg, &policy, default_options(max_rules, true), ctx.paths, record_owner).map_err(|e| {
        OpError::new(ErrorCode::Failed, format!("the policy of {} was not changed: {e}", cg.path.display()))
    })?;
    Ok(json!({
        "cgroup": cg.path,
        "cgroup_id": cg.id,
        "generation": record.generation,
        "creator_uid": owner.map_or(0, |o| o.uid),
        "summary": policy.summary(),
        "policy": policy,
    }))
}

/// `detach`.
pub fn detach(ctx: &Context<'_>, caller: &Caller, cgroup: &str, remove: bool) -> Result<Value, OpError> {
    let resolved = ctx.roots.resolve(cgroup)?;
    let owner = check_owner(caller, ctx.paths, &resolved)?;
    let cg = &resolved.cgroup;
    let fail = |e: &dyn std::fmt::Display| OpError::new(ErrorCode::Failed, format!("{}: {e}", cg.path.display()));
    let record = Record::load(ctx.paths, cg.id).map_err(|e| fail(&e))?;
    if let Some(RunnerState::Running(pid)) =
        record.as_ref().map(Record::runner).filter(|r| *r != RunnerState::Running(caller.pid))
    {
        return Err(OpError::new(
            ErrorCode::Invalid,
            format!("{} belongs to a running `sbx-user run` (pid {pid}); stop that command instead", cg.path.display()),
        ));
    }
    if remove && !owner.as_ref().is_some_and(|o| o.created) {
        return Err(OpError::new(
            ErrorCode::Invalid,
            format!("{} was not created by the agent; it detaches but does not remove it", cg.path.display()),
        ));
    }
    let pinned = ctx.paths.pin_dir(cg.id).exists();
    if !pinned && record.is_none() && owner.is_none() {
        return Err(OpError::new(ErrorCode::NotFound, format!("sbx is not attached to {}", cg.path.display())));
    }
    if remove {
        // The processes go first: nothing may run in it unconfined.
        cg.kill_all(std::time::Duration::from_secs(5)).map_err(|e| fail(&e))?;
    }
    if pinned {
        uninstall(cg.id, &cg.path, ctx.paths).map_err(|e| fail(&e))?;
    }
    Record::remove(ctx.paths, cg.id).map_err(|e| fail(&e))?;
    if remove {
        cg.remove().map_err(|e| fail(&e))?;
    }
    remove_owner(ctx.paths, cg.id)?;
    Ok(json!({ "cgroup": cg.path, "cgroup_id": cg.id, "removed": remove }))
}

/// `run`, in two stages (the server replies after each for a `staged`
/// request, after the second only otherwise): [`run_make`] makes a new
/// cgroup under the first root, [`RunMade::attach`] attaches the policy
/// with the caller as its runner. For root the first stage also gives the
/// cgroup's directory fd (the child enters by it); a caller that is not
/// root gets none, and its child enters by `enter` ([`enter`]).
/// A `run` sandbox whose cgroup exists (with its owner record) and whose
/// policy is not attached yet: nothing holds a process in it, so the
/// client's child must not exec before [`Self::attach`] has succeeded.
/// Dropped unattached (the attach failed or panicked, the client went
/// away), it kills what entered the cgroup and removes it.
pub struct RunMade {
    cg: Cgroup,
    policy: Policy,
    opts: crate::loader::AttachOptions,
    runner: u32,
    paths: Paths,
    attached: bool,
}

/// A `run` sandbox whose policy is attached, for undoing it when its
/// client cannot be told ([`Self::remove`]).
#[derive(Debug)]
pub struct RunAttached {
    cgroup: String,
}

impl RunAttached {
    /// Removes the sandbox as `detach` with `remove` does (what runs in it
    /// first): its client never learnt that it may let its command on.
    pub fn remove(&self, ctx: &Context<'_>, caller: &Caller) -> Result<Value, OpError> {
        detach(ctx, caller, &self.cgroup, true)
    }
}

/// The first stage of `run`: the policy built and checked, the cgroup made
/// and its owner recorded; the reply's cgroup fields and, for root, the
/// cgroup's directory fd.
pub fn run_make(
    ctx: &Context<'_>,
    caller: &Caller,
    src: &PolicySource,
    trace: bool,
    dns_stub: Option<std::net::Ipv4Addr>,
) -> Result<(RunMade, Value, Option<std::os::fd::OwnedFd>), OpError> {
    let (mut policy, max_rules) = build_policy(src, true)?;
    if let Some(addr) = dns_stub {
        let bad = |m: String| OpError::new(ErrorCode::Policy, m);
        if addr.octets()[..2] != [127, 53] {
            return Err(bad(format!("dns_stub {addr} is not in 127.53.0.0/16, where sbx's DNS stubs answer")));
        }
        match policy.dns {
            crate::policy::Dns::Pinned { .. } => policy.dns = crate::policy::Dns::Pinned { stub: Some(addr) },
            crate::policy::Dns::Host => {
                return Err(bad(format!(
                    "dns_stub {addr}: the policy's dns is \"host\"; a stub serves dns = \"pinned\""
                )))
            }
        }
    }
    if !caller.is_root() {
        if trace {
            return Err(OpError::new(
                ErrorCode::Denied,
                "trace (-vv) is for root: the program set's trace buffer holds the lines of every traced sandbox",
            ));
        }
        owned_below_limit(ctx, caller)?;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let resolved = ctx.roots.create(&format!("run-{}-{nanos}", caller.pid))?;
    let cg = resolved.cgroup;
    let owner = Owner { uid: caller.uid, cgroup: cg.path.clone(), created: true };
    if let Err(e) = save_owner(ctx.paths, cg.id, &owner) {
        let _ = cg.remove();
        return Err(e);
    }
    let mut opts = default_options(max_rules, false);
    if trace {
        opts.config.flags |= sbx_common::FLAG_DEBUG;
    }
    let mut v = json!({ "cgroup": cg.path, "cgroup_id": cg.id });
    let fd = if caller.is_root() {
        Some(resolved.fd)
    } else {
        v["enter"] = json!("pidfd");
        None
    };
    Ok((RunMade { cg, policy, opts, runner: caller.pid, paths: ctx.paths.clone(), attached: false }, v, fd))
}

impl RunMade {
    /// The second stage: attaches the policy; the reply's `generation` and
    /// `summary`. If it fails, what the client put in the cgroup meanwhile
    /// (its child, at its gate) is killed and the sandbox removed.
    pub fn attach(mut self, ctx: &Context<'_>) -> Result<(Value, RunAttached), OpError> {
        match install(&self.cg, &self.policy, self.opts, ctx.paths, RecordOwner::Run(self.runner)) {
            Ok((_, record)) => {
                self.attached = true;
                let v = json!({ "generation": record.generation, "summary": self.policy.summary() });
                Ok((v, RunAttached { cgroup: self.cg.path.display().to_string() }))
            }
            Err(e) => Err(OpError::new(ErrorCode::Failed, format!("the policy could not be attached: {e}"))),
        }
    }
}

impl Drop for RunMade {
    fn drop(&mut self) {
        if self.attached {
            return;
        }
        let removed = self.cg.kill_all(std::time::Duration::from_secs(5)).is_ok() && self.cg.remove().is_ok();
        if removed {
            let _ = remove_owner(&self.paths, self.cg.id);
        } else {
            // The owner record stays: the next start's recovery finds it.
            log::warn!("could not remove the unattached sandbox {}", self.cg.path.display());
        }
    }
}

/// `enter`: moves the caller's child (the pidfd it sent) into the sandbox
/// the caller's `run` made, after the checks of [`super::enter`].
pub fn enter(
    ctx: &Context<'_>,
    caller: &Caller,
    cgroup: &str,
    pidfd: Option<std::os::fd::OwnedFd>,
) -> Result<Value, OpError> {
    let Some(pidfd) = pidfd else {
        return Err(OpError::new(
            ErrorCode::Invalid,
            "enter: the request line carries no file descriptor; send the child's pidfd as SCM_RIGHTS ancillary data on its first byte",
        ));
    };
    let resolved = ctx.roots.resolve(cgroup)?;
    check_owner(caller, ctx.paths, &resolved)?;
    let cg = &resolved.cgroup;
    let fail = |e: &dyn std::fmt::Display| OpError::new(ErrorCode::Failed, format!("{}: {e}", cg.path.display()));
    match Record::load(ctx.paths, cg.id).map_err(|e| fail(&e))? {
        Some(Record { runner_pid: Some(pid), .. }) if pid == caller.pid => {}
        _ => {
            return Err(OpError::new(
                ErrorCode::NotOwner,
                format!("{} is not a sandbox `run` made for this client (pid {})", cg.path.display(), caller.pid),
            ))
        }
    }
    if cg.populated().map_err(|e| fail(&e))? {
        return Err(OpError::new(
            ErrorCode::Invalid,
            format!("{} holds a process already; one child enters a sandbox `run` made, once", cg.path.display()),
        ));
    }
    let mount = crate::cgroup::cgroup2_mount().map_err(|e| fail(&e))?;
    let target = super::enter::relative(&mount, &cg.path)
        .ok_or_else(|| fail(&format_args!("not below the cgroup2 mount {}", mount.display())))?;
    let pid = super::enter::move_child(caller, &pidfd, &resolved.fd, &mount, &target)
        .map_err(|e| OpError::new(ErrorCode::Denied, format!("enter: {e}")))?;
    Ok(json!({ "cgroup": cg.path, "cgroup_id": cg.id, "pid": pid }))
}

/// `list`.
pub fn list(ctx: &Context<'_>, caller: &Caller) -> Result<Value, OpError> {
    let records = Record::load_all(ctx.paths).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let mut out = Vec::new();
    for rec in &records {
        let uid = creator(ctx.paths, rec.cgroup_id)?;
        if caller.may_act_on(uid) {
            out.push(record_json(rec, uid));
        }
    }
    Ok(json!({ "sandboxes": out }))
}

/// `status`.
pub fn status(ctx: &Context<'_>, caller: &Caller, cgroup: &str) -> Result<Value, OpError> {
    let resolved = ctx.roots.resolve(cgroup)?;
    let owner = check_owner(caller, ctx.paths, &resolved)?;
    let cg = &resolved.cgroup;
    let record = Record::load(ctx.paths, cg.id).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let Some(record) = record else {
        return Err(OpError::new(ErrorCode::NotFound, format!("sbx is not attached to {}", cg.path.display())));
    };
    let mut v = record_json(&record, owner.map_or(0, |o| o.uid));
    let hooks = hook_state(cg, record.policy.redirect);
    v["enforcing_hooks"] = json!(hooks.as_ref().map(|(on, _)| on.clone()).unwrap_or_default());
    v["missing_hooks"] = json!(hooks.as_ref().map(|(_, off)| off.clone()).unwrap_or_default());
    v["problem"] = match &hooks {
        Err(e) => json!(e),
        Ok((_, off)) if !off.is_empty() => json!(format!("not enforcing at {}", off.join(", "))),
        Ok(_) => Value::Null,
    };
    v["counters"] = json!(crate::events::sandbox_counters(ctx.paths, cg.id).ok());
    Ok(v)
}

/// The hooks where the kernel reports an sbx program on `cg`, and those
/// where it does not.
fn hook_state(cg: &Cgroup, redirect: bool) -> Result<(Vec<String>, Vec<String>), String> {
    let q = loader::query(cg).map_err(|e| e.to_string())?;
    let (on, off): (Vec<_>, Vec<_>) = q.into_iter().partition(|(_, progs)| progs.iter().any(|p| p.starts_with("sbx_")));
    Ok((
        on.into_iter().map(|(h, _)| h.to_owned()).collect(),
        off.into_iter()
            .filter(|(h, _)| loader::hooks_for(redirect).any(|x| x.2 == *h))
            .map(|(h, _)| h.to_owned())
            .collect(),
    ))
}

/// At start: finishes what a crash interrupted. An owner record with no
/// sandbox record means the agent died between creating the cgroup and
/// recording the attach. If nothing runs in the cgroup, whatever was
/// attached is taken off again and a cgroup the agent made is removed; if
/// something does, it stays held and is reported.
/// Returns what it cleaned, for the log.
#[must_use]
pub fn recover(paths: &Paths) -> Vec<String> {
    let mut cleaned = Vec::new();
    for (id, owner) in all_owners(paths) {
        if Record::load(paths, id).ok().flatten().is_some() {
            continue;
        }
        let cg = Cgroup::open(&owner.cgroup).ok().filter(|c| c.id == id);
        if cg.as_ref().is_some_and(|c| c.populated().unwrap_or(true)) {
            // Processes are in it: keep whatever holds them (fail closed)
            // and let an administrator decide.
            log::warn!(
                "{} has no sandbox record but holds processes; left as it is (detach it with \"remove\" to clean up)",
                owner.cgroup.display()
            );
            continue;
        }
        if paths.pin_dir(id).exists() {
            if let Err(e) = uninstall(id, &owner.cgroup, paths) {
                log::warn!("cannot take the half-made sandbox {} off: {e}", owner.cgroup.display());
                continue;
            }
        }
        if let (Some(cg), true) = (&cg, owner.created) {
            if let Err(e) = cg.remove() {
                log::warn!("cannot remove the half-made cgroup {}: {e}", cg.path.display());
                continue;
            }
        }
        let _ = remove_owner(paths, id);
        cleaned.push(owner.cgroup.display().to_string());
    }
    cleaned
}
