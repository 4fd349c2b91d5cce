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

/// Arguments of `update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The cgroup sbx is attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Loads the new policy into fresh maps and points every pinned link at
/// the new programs with `BPF_LINK_UPDATE`: each hook switches atomically
/// from a complete old policy to a complete new one, and the sandboxed
/// processes keep running.
pub fn run(args: &UpdateArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let policy = args.policy.policy()?;
    super::no_filesystem_rules(&policy, "update")?;
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
    let owner = match Record::load(&paths, cg.id)? {
        Some(Record { runner_pid: Some(pid), .. }) => Owner::Run(pid),
        Some(Record { container: Some(c), .. }) => Owner::Container(Box::new(c.clone())),
        _ => Owner::Attach,
    };
    let opts = default_options(args.policy.max_rules, true);
    install(&cg, &policy, opts, &paths, owner)
        .with_context(|| format!("the policy of {} was not changed", cg.path.display()))?;
    println!("updated policy of {} (cgroup id {})", cg.path.display(), cg.id);
    super::print_summary(&policy);
    Ok(())
}
