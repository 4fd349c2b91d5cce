//! `sbx-user attach`: put an existing cgroup under a policy.

use std::path::PathBuf;

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
    /// Create the cgroup first (its parent must exist). Through the host
    /// agent, a caller that is not root may only attach this way.
    #[arg(long, conflicts_with = "replace")]
    pub create: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Validates, attaches, pins and reports.
pub fn run(args: &AttachArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(mut agent) = super::via_agent::client(global)? {
        return super::via_agent::attach(&mut agent, &args.cgroup, args.create, args.replace, &args.policy);
    }
    let task = crate::progress::Task::start("loading the policy");
    let policy = args.policy.policy()?;
    super::no_filesystem_rules(&policy, "attach")?;
    super::require_root("attach")?;
    let cg = if args.create { create(&args.cgroup)? } else { Cgroup::open(&args.cgroup)? };
    let opts = default_options(args.policy.max_rules, args.replace);
    let (attached, record) = match install(&cg, &policy, opts, &global.paths(), Owner::Attach) {
        Ok(done) => done,
        Err(e) => {
            if args.create {
                let _ = cg.remove();
            }
            return Err(anyhow::Error::from(e).context(format!("no policy was attached to {}", cg.path.display())));
        }
    };
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

/// Creates the cgroup `path` names (not its parents).
fn create(path: &std::path::Path) -> anyhow::Result<Cgroup> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        anyhow::bail!("--create needs a cgroup path with a parent and a name, not {}", path.display());
    };
    let name = name.to_str().ok_or_else(|| anyhow::anyhow!("cgroup name {} is not UTF-8", path.display()))?;
    Ok(Cgroup::create(parent, name)?)
}
