//! `sbx-user detach`: remove sbx from a cgroup.

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::{
    cgroup::Cgroup,
    sandbox::uninstall,
    state::{Record, RunnerState},
};

// Arguments of `detach`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The cgroup v2 directory sbx was attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Through the host agent: also kill what runs in the cgroup and remove
    /// it, if the agent created it (`attach --create`).
    #[arg(long)]
    pub remove: bool,
}

/// Detaches and unpins. The leftovers of a `run` whose `sbx-user` process
/// is gone (killed, or its machine's OOM killer) are removed whole: the
/// processes still in its cgroup, the pins, the record and the cgroup `run`
/// made.
pub fn run(args: &DetachArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(mut agent) = super::via_agent::client(global)? {
        return super::via_agent::detach(&mut agent, &args.cgroup, args.remove);
    }
    if args.remove {
        anyhow::bail!(
            "--remove removes a cgroup the host agent created, and no agent serves (see --agent-socket); without it, detach and then rmdir the cgroup"
        );
    }
    super::require_root("detach")?;
    let paths = global.paths();
    let cg = Cgroup::open(&args.cgroup)?;
    let record = Record::load(&paths, cg.id)?;
    match record.as_ref().map(Record::runner) {
        Some(RunnerState::Running(pid)) => anyhow::bail!(
            "{} belongs to a running `sbx-user run` (pid {pid}); stop that command instead (it tears its sandbox down)",
            cg.path.display()
        ),
        Some(RunnerState::Gone(pid)) => {
            cg.kill_all(std::time::Duration::from_secs(5))?;
            if paths.pin_dir(cg.id).exists() {
                uninstall(cg.id, &cg.path, &paths)?;
            }
            Record::remove(&paths, cg.id)?;
            cg.remove()?;
            println!("removed {} (left behind by `sbx-user run` pid {pid}, which has exited)", cg.path.display());
            for dir in crate::harden::workspace::remove_leftovers(pid) {
                println!("removed {} (its private HOME and /tmp)", dir.display());
            }
        }
        Some(RunnerState::NoRunner) | None => {
            uninstall(cg.id, &cg.path, &paths)?;
            println!("detached from {}", cg.path.display());
        }
    }
    Ok(())
}
