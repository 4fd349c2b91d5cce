//! `sbx-user attach`: put an existing cgroup under a policy.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{GlobalArgs, PolicyArgs};
use crate::{
    cgroup::Cgroup,
    loader::HOOKS,
    sandbox::{default_options, install, Owner},
};

/// Arguments of `attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The cgroup v2 directory to enforce on (its descendants inherit it).
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Replace the policy of an existing sbx attachment, atomically per hook.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Validates, attaches, pins and reports.
pub fn run(args: &AttachArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let task = crate::progress::Task::start("loading the policy");
    let mut policy = args.policy.policy()?;
    super::no_filesystem_rules(&policy, "attach")?;
    super::unix_for_cgroup(&mut policy, "attach")?;
    super::require_root("attach")?;
    let cg = Cgroup::open(&args.cgroup)?;
    let opts = default_options(args.policy.max_rules, args.replace);
    let (attached, record) = install(&cg, &policy, opts, &global.paths(), Owner::Attach)
        .with_context(|| format!("no policy was attached to {}", cg.path.display()))?;
    drop(task);
    println!(
        "{} {} (cgroup id {})",
        if attached.replaced { "replaced policy on" } else { "attached to" },
        cg.path.display(),
        cg.id
    );
    for ((_, _, hook), id) in HOOKS.iter().zip(&attached.prog_ids) {
        println!("  {hook:<9} program id {id}");
    }
    println!("  pinned in {}", attached.pin_dir.display());
    println!(
        "  {} destination entries, {} bind entries, {} port tables (capacity {})",
        record.dest_entries, record.bind_entries, record.tables, record.max_entries
    );
    super::print_summary(&policy);
    Ok(())
}
