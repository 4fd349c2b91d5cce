//! `sbx-user check`: validate and compile a policy without the kernel.

use clap::Args;

use super::PolicyArgs;
use crate::compile::compile;

/// Arguments of `check`.
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
    let policy = args.policy.policy()?;
    let compiled = compile(&policy, args.policy.max_rules)?;
    if args.json {
        let v = serde_json::json!({
            "policy": policy,
            "dest_entries": compiled.dest.len(),
            "bind_entries": compiled.bind.len(),
            "tables": compiled.tables.len(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("policy is valid:");
        super::print_summary(&policy);
        println!(
            "compiles to {} destination entries, {} bind entries, {} port tables",
            compiled.dest.len(),
            compiled.bind.len(),
            compiled.tables.len()
        );
    }
    Ok(())
}
