//! The benchmark suite (`cargo xtask bench`). See BENCHMARKS.md.

use anyhow::Result;
use clap::Args;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Rounds per configuration.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: u32,
}

pub(crate) fn run(_args: &BenchArgs) -> Result<()> {
    anyhow::bail!("not written yet")
}
