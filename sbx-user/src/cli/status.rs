//! `sbx-user status`: what sbx has attached where.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::{
    cgroup::Cgroup,
    loader,
    policy::Policy,
    state::{Record, RunnerState},
};

// Arguments of `status`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Entry {
    cgroup: Option<PathBuf>,
    cgroup_id: u64,
    /// Hooks where the kernel reports an sbx program on this cgroup.
    enforcing_hooks: Vec<String>,
    /// Hooks with no sbx program: enforcement is incomplete.
    missing_hooks: Vec<String>,
    by: Option<String>,
    runner_pid: Option<u32>,
    /// The container an OCI runtime hook attached this sandbox for.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<crate::state::Container>,
    /// For a pod's sandbox: the containers of the pod the hook recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<crate::state::Member>,
    attached_at: Option<u64>,
    dest_entries: Option<usize>,
    policy: Option<Policy>,
    counters: Option<crate::events::Counters>,
    /// What holds the sandbox: a program set (and the policy index its
    /// slot names) or its own programs.
    held_by: loader::Holder,
    problem: Option<String>,
}

/// What is wrong with a sandbox whose `sbx-user run` has exited without
/// tearing it down.
fn leftover(rec: &Record) -> Option<String> {
    let RunnerState::Gone(pid) = rec.runner() else {
        return None;
    };
    Some(format!(
        "left behind: the `sbx-user run` that made it (pid {pid}) has exited; `sbx-user detach --cgroup {}` removes it",
        rec.cgroup.display()
    ))
}

/// Reports each sandbox, checking the kernel rather than trusting records.
pub fn run(args: &StatusArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("status")?;
    let paths = global.paths();
    let mut ids = loader::pinned_sandboxes(&paths);
    let records = Record::load_all(&paths)?;
    let members = crate::state::Member::load_all(&paths);
    ids.extend(records.iter().map(|r| r.cgroup_id));
    ids.sort_unstable();
    ids.dedup();
    if let Some(path) = &args.cgroup {
        let cg = Cgroup::open(path)?;
        ids.retain(|&id| id == cg.id);
        if ids.is_empty() {
            anyhow::bail!("sbx is not attached to {}", cg.path.display());
        }
    }
    let entries: Vec<Entry> = ids
        .into_iter()
        .map(|id| {
            let rec = records.iter().find(|r| r.cgroup_id == id);
            let mut e = Entry {
                cgroup: rec.map(|r| r.cgroup.clone()),
                cgroup_id: id,
                enforcing_hooks: Vec::new(),
                missing_hooks: loader::hooks_for(rec.is_some_and(|r| r.policy.redirect))
                    .map(|h| h.2.to_owned())
                    .collect(),
                by: rec.map(|r| r.by.clone()),
                runner_pid: rec.and_then(|r| r.runner_pid),
                container: rec.and_then(|r| r.container.clone()),
                members: members.iter().filter(|m| m.sandbox == id).cloned().collect(),
                attached_at: rec.map(|r| r.attached_at),
                dest_entries: rec.map(|r| r.dest_entries),
                policy: rec.map(|r| r.policy.clone()),
                counters: crate::events::sandbox_counters(&paths, id).ok(),
                held_by: loader::holder_of(&paths, id),
                problem: None,
            };
            match rec.map(|r| Cgroup::open(&r.cgroup)) {
                None => e.problem = Some("no record of this sandbox (pins only)".into()),
                Some(Err(err)) => e.problem = Some(format!("cgroup is gone: {err}")),
                Some(Ok(cg)) if cg.id != id => e.problem = Some("cgroup path now names a different cgroup".into()),
                Some(Ok(_)) if rec.and_then(leftover).is_some() => e.problem = rec.and_then(leftover),
                Some(Ok(cg)) => match loader::query(&cg) {
                    Ok(q) => {
                        let (on, off): (Vec<_>, Vec<_>) =
                            q.into_iter().partition(|(_, progs)| progs.iter().any(|p| p.starts_with("sbx_")));
                        e.enforcing_hooks = on.into_iter().map(|(h, _)| h.to_owned()).collect();
                        let redirect = rec.is_some_and(|r| r.policy.redirect);
                        e.missing_hooks = off
                            .into_iter()
                            .filter(|(h, _)| loader::hooks_for(redirect).any(|x| x.2 == *h))
                            .map(|(h, _)| h.to_owned())
                            .collect();
                        if !e.missing_hooks.is_empty() {
                            e.problem = Some(format!("not enforcing at {}", e.missing_hooks.join(", ")));
                        } else if matches!(e.held_by, loader::Holder::Set { policy: Some(0) | None, .. }) {
                            e.problem = Some(format!("held by {}", e.held_by));
                        } else if let Some(stale) = rec.and_then(|r| loader::stale_record(&e.held_by, r.generation)) {
                            e.problem = Some(stale);
                        }
                    }
                    Err(err) => e.problem = Some(err.to_string()),
                },
            }
            e
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!(
        "Landlock ABI on this kernel: {} (filesystem rules and scopes for `run`)",
        crate::harden::landlock::kernel_abi().map_or_else(|| "unavailable".to_owned(), |a| a.to_string())
    );
    if entries.is_empty() {
        println!("no sandboxes");
    }
    for e in &entries {
        print_entry(e);
    }
    Ok(())
}

/// One sandbox, for people.
fn print_entry(e: &Entry) {
    let path = e.cgroup.as_ref().map_or_else(|| "?".to_owned(), |p| p.display().to_string());
    let state = if e.problem.is_none() { "enforcing" } else { "PROBLEM" };
    println!("{path} (cgroup id {}): {state}", e.cgroup_id);
    if let Some(p) = &e.problem {
        println!("  problem: {p}");
    }
    if let (Some(by), Some(n)) = (&e.by, e.dest_entries) {
        let pid = e.runner_pid.map(|p| format!(" pid {p}")).unwrap_or_default();
        println!("  by {by}{pid}; {n} destination entries; hooks: {}", e.enforcing_hooks.join(" "));
    }
    if let Some(c) = &e.container {
        println!("  {c}");
    }
    for m in &e.members {
        println!("  holds {} in {}", m.container, m.cgroup.display());
    }
    println!("  held by {}", e.held_by);
    if let Some(policy) = &e.policy {
        super::print_summary(policy);
    }
    if let Some(c) = &e.counters {
        let busy: Vec<String> = c
            .hooks
            .iter()
            .filter(|(_, a, d)| a + d > 0)
            .map(|(h, a, d)| format!("{h} {a} allowed/{d} denied"))
            .collect();
        println!(
            "  counters: {}; events dropped: {}",
            if busy.is_empty() { "no calls yet".to_owned() } else { busy.join(", ") },
            c.events_dropped
        );
    }
}
