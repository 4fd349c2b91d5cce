//! Putting a cgroup under a policy and taking it off again: compile,
//! attach through [`crate::loader`], and keep the [`Record`] in step.

use std::time::{SystemTime, UNIX_EPOCH};

use sbx_common::{Config, FLAG_AUDIT, FLAG_REDIRECT};

use crate::{
    cgroup::Cgroup,
    compile::{compile, CompileError},
    loader::{self, AttachOptions, Attached, LoaderError},
    policy::{Mode, Policy},
    state::{Paths, Record, StateError},
};

/// Anything that can stop a sandbox from being set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The policy does not fit the maps.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The kernel side failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The record could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The host cannot enforce cgroup socket hooks.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

/// Who set a sandbox up, for the record.
#[derive(Clone, Debug)]
pub enum Owner {
    /// `sbx-user attach` (or a library caller).
    Attach,
    /// `sbx-user run` with this pid.
    Run(u32),
    /// `sbx-user oci-hook`, for this container.
    Container(Box<crate::state::Container>),
}

impl Owner {
    /// Who a record says set its sandbox up, for installing it again
    /// (`update`, `migrate`) without losing that.
    #[must_use]
    pub fn of(record: Option<&Record>) -> Self {
        match record {
            Some(Record { container: Some(c), .. }) => Self::Container(Box::new(c.clone())),
            Some(Record { runner_pid: Some(pid), .. }) => Self::Run(*pid),
            _ => Self::Attach,
        }
    }
}

/// Default event rate limit per CPU (events per second, and burst).
pub const DEFAULT_EVENT_RATE: u32 = 1000;

/// Attach options with sbx's defaults.
#[must_use]
pub fn default_options(max_entries: u32, replace: bool) -> AttachOptions {
    AttachOptions {
        max_entries,
        replace,
        config: Config { events_per_sec: DEFAULT_EVENT_RATE, events_burst: DEFAULT_EVENT_RATE, ..Config::default() },
        events_bytes: loader::DEFAULT_EVENTS_BYTES,
    }
}

/// Compiles `policy`, attaches it to `cg` and records it. Nothing is left
/// attached if any step fails.
pub fn install(
    cg: &Cgroup,
    policy: &Policy,
    opts: AttachOptions,
    paths: &Paths,
    owner: Owner,
) -> Result<(Attached, Record), SandboxError> {
    // Fail closed where the kernel would not run the programs for this
    // cgroup's sockets.
    crate::cgroup::check_socket_matching()?;
    let started = std::time::Instant::now();
    let mut compiled = compile(policy, opts.max_entries)?;
    log::info!(
        "compiled to {} destination and {} bind entries in {:.1} ms",
        compiled.dest.len(),
        compiled.bind.len(),
        crate::progress::ms(started)
    );
    let started = std::time::Instant::now();
    let generation = Record::load(paths, cg.id)?.map_or(1, |r| r.generation.wrapping_add(1));
    let mut opts = opts;
    // Tracing is the caller's choice, not the policy's: kept from `opts`.
    let mut flags = opts.config.flags & sbx_common::FLAG_DEBUG;
    if policy.mode == Mode::Audit {
        flags |= FLAG_AUDIT;
    }
    let (mut proxy_addr, mut proxy_port) = ([0; 16], 0);
    if let (true, Some(p)) = (policy.redirect, policy.proxy) {
        flags |= FLAG_REDIRECT;
        proxy_addr = crate::compile::lookup_addr(p.ip());
        proxy_port = u32::from(p.port());
    }
    opts.config = Config { flags, generation, proxy_addr, proxy_port, ..opts.config };
    let attached = match loader::attach(cg, &compiled, opts, paths) {
        // The host pool is full: sandboxes whose cgroup a runtime removed
        // may still hold indices. Collect them once and try again.
        Err(LoaderError::Full { .. }) => {
            let got = crate::gc::collect(paths, false)?;
            log::info!("the host pool was full; gc freed {} policy and {} event indices", got.policies, got.events);
            loader::attach(cg, &compiled, opts, paths)?
        }
        other => other?,
    };
    log::info!("filled the maps and attached in {:.1} ms", crate::progress::ms(started));
    // The loader may have raised it past the record's (see loader::replace).
    let generation = attached.generation;
    let started = std::time::Instant::now();
    let (by, runner_pid, container) = match owner {
        Owner::Attach => ("attach", None, None),
        Owner::Run(pid) => ("run", Some(pid), None),
        Owner::Container(c) => ("oci-hook", None, Some(*c)),
    };
    let record = Record {
        cgroup: cg.path.clone(),
        cgroup_id: cg.id,
        policy: policy.clone(),
        attached_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        by: by.to_owned(),
        runner_pid,
        runner_start: runner_pid.and_then(crate::state::process_start_time),
        dest_entries: compiled.dest.len(),
        bind_entries: compiled.bind.len(),
        tables: compiled.tables.len(),
        max_entries: opts.max_entries,
        generation,
        container,
        provenance: Some(compiled.provenance.encode()),
        decoded: std::sync::OnceLock::from(Some(std::mem::take(&mut compiled.provenance))),
    };
    if let Err(e) = record.save(paths) {
        if !attached.replaced {
            let _ = loader::detach(cg.id, &cg.path, paths);
        }
        return Err(e.into());
    }
    log::info!("recorded in {:.1} ms", crate::progress::ms(started));
    Ok((attached, record))
}

/// Detaches sbx from a cgroup and forgets its record.
pub fn uninstall(cgroup_id: u64, cgroup_path: &std::path::Path, paths: &Paths) -> Result<(), SandboxError> {
    uninstall_removing(cgroup_id, cgroup_path, paths, || false)
}

/// As [`uninstall`], for an emptied cgroup that `remove_cgroup` removes on
/// the way (see [`loader::detach_removing`]).
pub fn uninstall_removing(
    cgroup_id: u64,
    cgroup_path: &std::path::Path,
    paths: &Paths,
    remove_cgroup: impl FnOnce() -> bool,
) -> Result<(), SandboxError> {
    loader::detach_removing(cgroup_id, cgroup_path, paths, remove_cgroup)?;
    Record::remove(paths, cgroup_id)?;
    Ok(())
}
