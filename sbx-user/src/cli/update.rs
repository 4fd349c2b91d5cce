//! `sbx-user update`: replace the policy of a running sandbox.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{GlobalArgs, PolicyArgs};
use crate::{
    cgroup::Cgroup,
    sandbox::{default_options, install, Owner},
    state::Record,
};

// Arguments of `update`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The cgroup sbx is attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Fills the new policy into maps at a fresh policy index and switches the
/// sandbox's slot to it in one map update: every hook moves from the
/// complete old policy to the complete new one at the same instant, nothing
/// is reloaded, and the sandboxed processes keep running. A sandbox held by
/// an older program set is migrated to this build's.
pub fn run(args: &UpdateArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut policy = args.policy.policy()?;
    super::no_filesystem_rules(&policy, "update")?;
    super::unix_for_cgroup(&mut policy, "update")?;
    super::require_root("update")?;
    let paths = global.paths();
    let cg = Cgroup::open(&args.cgroup)?;
    if !paths.pin_dir(cg.id).exists() {
        anyhow::bail!(
            "sbx is not attached to {} (no pins in {}); use `sbx-user attach` first",
            cg.path.display(),
            paths.pin_dir(cg.id).display()
        );
    }
    let record = Record::load(&paths, cg.id)?;
    let owner = Owner::of(record.as_ref());
    // A `run` keeps serving its DNS stub: the new policy keeps reaching it.
    if let (Some(old), crate::policy::Dns::Pinned { stub: stub @ None }) = (&record, &mut policy.dns) {
        if let crate::policy::Dns::Pinned { stub: Some(a) } = old.policy.dns {
            *stub = Some(a);
        }
    }
    let opts = default_options(args.policy.max_rules, true);
    install(&cg, &policy, opts, &paths, owner)
        .with_context(|| format!("the policy of {} was not changed", cg.path.display()))?;
    println!("updated policy of {} (cgroup id {})", cg.path.display(), cg.id);
    super::print_summary(&policy);
    Ok(())
}

// Arguments of `migrate`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Only this sandbox (default: every sandbox that an older program set,
    /// or an sbx from before program sets, holds).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Only say which sandboxes would move.
    #[arg(long)]
    pub dry_run: bool,
}

/// Moves sandboxes held by older program sets to this build's, each under
/// its recorded policy, with no moment of no enforcement (see `update`).
pub fn migrate(args: &MigrateArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("migrate")?;
    let paths = global.paths();
    let only = args.cgroup.as_deref().map(Cgroup::open).transpose()?.map(|cg| cg.id);
    let mut moved = 0;
    for rec in Record::load_all(&paths)? {
        if only.is_some_and(|id| id != rec.cgroup_id) {
            continue;
        }
        let current =
            matches!(crate::loader::holder_of(&paths, rec.cgroup_id), crate::loader::Holder::Set { current: true, .. });
        if current || !paths.pin_dir(rec.cgroup_id).exists() {
            continue;
        }
        let cg = Cgroup::open(&rec.cgroup)?;
        if cg.id != rec.cgroup_id {
            anyhow::bail!("{} now names another cgroup than the one sbx recorded", rec.cgroup.display());
        }
        if args.dry_run {
            println!("would migrate {} (cgroup id {})", cg.path.display(), cg.id);
            moved += 1;
            continue;
        }
        let owner = Owner::of(Some(&rec));
        let opts = default_options(rec.max_entries, true);
        install(&cg, &rec.policy, opts, &paths, owner)
            .with_context(|| format!("migrating {} failed; it stays held by its old programs", cg.path.display()))?;
        println!("migrated {} (cgroup id {}) to program set {}", cg.path.display(), cg.id, crate::progset::set_id());
        moved += 1;
    }
    if moved == 0 {
        println!("nothing to migrate: every sandbox is held by this build's program set");
    }
    Ok(())
}
