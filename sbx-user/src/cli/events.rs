//! `sbx-user events`: show deny events.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::GlobalArgs;
use crate::{
    cgroup::Cgroup,
    events::{view, EventReader},
    loader,
    state::{Member, Paths, Record},
};

// Arguments of `events`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
#[command(after_long_help = "Streams: each sandbox with an event buffer of its own (the default for attach and \
run) has one stream, and a stream has one consumer position: two readers of the same sandbox (two `events \
--follow`, or one beside `run --log-denials`) share its events, each event going to one of them. Sandboxes \
attached with --event-buffer 0 report to the host stream instead (one ring buffer for the host, each event \
naming its sandbox), read with --host; reading it consumes the events of every such sandbox. A host agent \
that fans events out to any number of subscribers is the way to give several readers every event.")]
pub struct EventsArgs {
    /// Only this sandbox (default: every sandbox sbx has attached).
    #[arg(long, value_name = "PATH", conflicts_with = "host")]
    pub cgroup: Option<PathBuf>,
    /// Read the host stream: the events of every sandbox without a buffer
    /// of its own.
    #[arg(long)]
    pub host: bool,
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
    let mut on_host = Vec::new();
    for id in ids {
        let record = Record::load(&paths, id)?;
        let name = record.as_ref().map_or_else(|| format!("cgroup id {id}"), Record::name);
        let own = paths.pin_dir(id).join(loader::pin_name_map(sbx_common::MAP_EVENTS));
        if own.exists() {
            readers.push((EventReader::open(&paths.pin_dir(id))?, name, record));
        } else {
            on_host.push((id, name, record));
        }
    }
    if !args.json {
        println!(
            "{:<24} {:<6} {:>7}/{:<7} {:<15} {:<11} {:<4} {:<40} RULE",
            "TIME", "VERDICT", "PID", "TID", "COMM", "HOOK", "PROTO", "DESTINATION"
        );
    }
    if args.host || (args.cgroup.is_some() && !on_host.is_empty()) {
        let set = crate::progset::ProgramSet::open_id(&paths, &crate::progset::set_id())?;
        let mut host = EventReader::open_host(&set.dir)?;
        return host_stream(&mut host, &on_host, args, &paths);
    }
    loop {
        for (reader, name, record) in &mut readers {
            for e in reader.drain() {
                let v = view(&e, name, record.as_ref());
                print_view(v, record.as_ref(), &paths, args.json)?;
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

/// The container the process of an event is in: the one recorded for its
/// own cgroup (a container of a pod held at the pod's cgroup), else the
/// one an OCI hook attached the sandbox for.
fn container_of(e: &crate::events::EventView, record: Option<&Record>, paths: &Paths) -> Option<String> {
    let member = (e.cgroup_id != 0).then(|| Member::load(paths, e.cgroup_id)).flatten();
    member.map(|m| m.container).or_else(|| record.and_then(|r| r.container.clone())).map(|c| c.to_string())
}

/// The host stream, each event named after the sandbox it names.
fn host_stream(
    host: &mut EventReader,
    known: &[(u64, String, Option<Record>)],
    args: &EventsArgs,
    paths: &Paths,
) -> anyhow::Result<()> {
    let only = args.cgroup.as_ref().and(known.first().map(|k| k.0));
    loop {
        for e in host.drain() {
            if only.is_some_and(|id| id != e.sandbox) {
                continue;
            }
            let k = known.iter().find(|k| k.0 == e.sandbox);
            let name = k.map_or_else(|| format!("cgroup id {}", e.sandbox), |k| k.1.clone());
            let record = k.and_then(|k| k.2.as_ref());
            print_view(view(&e, &name, record), record, paths, args.json)?;
        }
        if !args.follow {
            return Ok(());
        }
        host.wait(Duration::from_millis(500));
    }
}

/// One event line: JSON, or the table row (followed by the container of
/// [`container_of`], which the JSON has as `container`).
fn print_view(
    mut v: crate::events::EventView,
    record: Option<&Record>,
    paths: &Paths,
    json: bool,
) -> anyhow::Result<()> {
    v.container = container_of(&v, record, paths);
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{v}{}", v.container.as_ref().map(|c| format!("  [{c}]")).unwrap_or_default());
    }
    Ok(())
}
