//! `sbx-user check`: validate and compile a policy without the kernel.
//!
//! An invalid policy is a verdict ([`super::Negative`], exit 1); a policy
//! file that cannot be read is an error (exit 125): nothing was checked.

use clap::Args;

use super::{Negative, PolicyArgs};
use crate::{compile::compile, policy::PolicyError};

// Arguments of `check`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Validates, compiles and prints.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let task = crate::progress::Task::start("checking the policy");
    let checked = match args.policy.policy() {
        Err(e @ PolicyError::Read { .. }) => return Err(e.into()),
        Err(e) => Err(e.to_string()),
        Ok(policy) => compile(&policy, args.policy.max_rules).map(|c| (policy, c)).map_err(|e| e.to_string()),
    };
    drop(task);
    let (policy, compiled) = match checked {
        Ok(ok) => ok,
        Err(why) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "valid": false, "error": why }))?);
            }
            return Err(Negative(format!("the policy is invalid: {why}")).into());
        }
    };
    let ranges: u64 = compiled.tables.iter().map(|t| u64::from(t.len)).sum();
    if args.json {
        let v = serde_json::json!({
            "valid": true,
            "policy": policy,
            "dest_entries": compiled.dest.len(),
            "bind_entries": compiled.bind.len(),
            "tables": compiled.tables.len(),
            "port_ranges": ranges,
            "port_ranges_limit": sbx_common::MAX_POLICY_SEGMENTS,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("policy is valid:");
        super::print_summary(&policy);
        println!(
            "compiles to {} destination entries, {} bind entries, {} port tables with {ranges} port ranges (a sandbox may hold {})",
            compiled.dest.len(),
            compiled.bind.len(),
            compiled.tables.len(),
            sbx_common::MAX_POLICY_SEGMENTS
        );
    }
    Ok(())
}
