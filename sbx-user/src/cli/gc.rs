//! `sbx-user gc`: remove what sandboxes whose cgroup is gone left behind.

use clap::Args;

use super::GlobalArgs;

// Arguments of `gc`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Collects and reports.
pub fn run(args: &GcArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("gc")?;
    let got = crate::gc::collect(&global.paths(), args.dry_run)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&got)?);
        return Ok(());
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    for id in &got.sandboxes {
        println!("{verb} the pins and record of sandbox {id} (its cgroup is gone)");
    }
    for dir in &got.sets {
        println!("{verb} unused program set {}", dir.display());
    }
    for id in &got.members {
        println!("{verb} the record of pod container cgroup {id} (it or its pod is gone)");
    }
    for path in &got.partial_records {
        println!("{verb} {}, a record a killed sbx-user left half-written", path.display());
    }
    for dir in &got.workspaces {
        println!("{verb} {}, the private HOME and /tmp of a killed `sbx-user run`", dir.display());
    }
    if got.policies + got.events > 0 {
        println!("{verb} {} policy and {} event indices no sandbox names", got.policies, got.events);
    }
    if got.sandboxes.is_empty()
        && got.sets.is_empty()
        && got.members.is_empty()
        && got.partial_records.is_empty()
        && got.workspaces.is_empty()
        && got.policies + got.events == 0
    {
        println!("nothing to collect");
    }
    Ok(())
}
