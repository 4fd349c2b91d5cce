//! `sbx-user verify`: prove that a sandbox enforces.

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::{cgroup::Cgroup, state::Record, verify::verify};

// Arguments of `verify`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The sandbox cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks; fails if any check fails.
pub fn run(args: &VerifyArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("verify")?;
    let paths = global.paths();
    let cg = Cgroup::open(&args.cgroup)?;
    let record = Record::load(&paths, cg.id)?;
    let checks = verify(&cg, record.as_ref(), &paths);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{:<4} {:<38} {}", c.result.to_uppercase(), c.name, c.detail);
        }
    }
    let failed = checks.iter().filter(|c| c.result == "fail").count();
    if failed > 0 {
        let verdict =
            format!("{failed} of {} checks failed: {} is not fully enforced", checks.len(), cg.path.display());
        return Err(super::Negative(verdict).into());
    }
    if !args.json {
        println!("{} is enforcing", cg.path.display());
    }
    Ok(())
}
