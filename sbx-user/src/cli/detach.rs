//! `sbx-user detach`: remove sbx from a cgroup.

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::{cgroup::Cgroup, sandbox::uninstall};

/// Arguments of `detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The cgroup v2 directory sbx was attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
}

/// Detaches and unpins.
pub fn run(args: &DetachArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("detach")?;
    let cg = Cgroup::open(&args.cgroup)?;
    uninstall(cg.id, &cg.path, &global.paths())?;
    println!("detached from {}", cg.path.display());
    Ok(())
}
