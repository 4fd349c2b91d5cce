//! `sbx-user events`: show deny events.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::GlobalArgs;
use crate::{
    cgroup::Cgroup,
    events::{view, EventReader},
    loader,
    state::Record,
};

/// Arguments of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this sandbox (default: every sandbox sbx has attached).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Keep waiting for new events until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Prints pending events (and, with `--follow`, new ones as they come).
pub fn run(args: &EventsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("events")?;
    let paths = global.paths();
    let mut ids = loader::pinned_sandboxes(&paths);
    if let Some(p) = &args.cgroup {
        let cg = Cgroup::open(p)?;
        if !ids.contains(&cg.id) {
            anyhow::bail!("sbx is not attached to {}", cg.path.display());
        }
        ids = vec![cg.id];
    }
    let mut readers = Vec::new();
    for id in ids {
        let record = Record::load(&paths, id)?;
        let name = record.as_ref().map_or_else(|| format!("cgroup id {id}"), |r| r.cgroup.display().to_string());
        readers.push((EventReader::open(&paths.pin_dir(id))?, name, record));
    }
    if !args.json {
        println!(
            "{:<24} {:<6} {:>7}/{:<7} {:<15} {:<11} {:<4} {:<40} RULE",
            "TIME", "VERDICT", "PID", "TID", "COMM", "HOOK", "PROTO", "DESTINATION"
        );
    }
    loop {
        for (reader, name, record) in &mut readers {
            for e in reader.drain() {
                let v = view(&e, name, record.as_ref().map(|r| (&r.policy, r.generation)));
                if args.json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    println!("{v}");
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        match readers.first() {
            Some((r, _, _)) if readers.len() == 1 => r.wait(Duration::from_millis(500)),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
