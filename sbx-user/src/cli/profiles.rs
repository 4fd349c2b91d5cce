//! `sbx-user profiles`: list the built-in profiles.

use clap::Args;

use crate::policy::PROFILES;

// Arguments of `profiles`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Print each profile's policy file as well.
    #[arg(long)]
    pub show: bool,
}

/// Lists the profiles.
pub fn run(args: &ProfilesArgs) {
    for p in PROFILES {
        println!("{:<10} {}", p.name, p.summary);
        if args.show {
            for line in p.toml.lines() {
                println!("    {line}");
            }
            println!();
        }
    }
}
