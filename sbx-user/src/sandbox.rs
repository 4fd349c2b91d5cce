//! Putting a cgroup under a policy and taking it off again: compile,
//! attach through [`crate::loader`], and keep the [`Record`] in step.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    cgroup::Cgroup,
    compile::{compile, CompileError},
    loader::{self, AttachOptions, Attached, LoaderError},
    policy::Policy,
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
}

/// Who set a sandbox up, for the record.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    /// `sbx-user attach` (or a library caller).
    Attach,
    /// `sbx-user run` with this pid.
    Run(u32),
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
    let compiled = compile(policy, opts.max_entries)?;
    let attached = loader::attach(cg, &compiled, opts, paths)?;
    let (by, runner_pid) = match owner {
        Owner::Attach => ("attach", None),
        Owner::Run(pid) => ("run", Some(pid)),
    };
    let record = Record {
        cgroup: cg.path.clone(),
        cgroup_id: cg.id,
        policy: policy.clone(),
        attached_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        by: by.to_owned(),
        runner_pid,
        dest_entries: compiled.dest.len(),
        bind_entries: compiled.bind.len(),
        tables: compiled.tables.len(),
        max_entries: opts.max_entries,
    };
    if let Err(e) = record.save(paths) {
        if !attached.replaced {
            let _ = loader::detach(cg.id, &cg.path, paths);
        }
        return Err(e.into());
    }
    Ok((attached, record))
}

/// Detaches sbx from a cgroup and forgets its record.
pub fn uninstall(cgroup_id: u64, cgroup_path: &std::path::Path, paths: &Paths) -> Result<(), SandboxError> {
    loader::detach(cgroup_id, cgroup_path, paths)?;
    Record::remove(paths, cgroup_id)?;
    Ok(())
}
