//! `sbx-user attach`: put an existing cgroup under a policy.

use std::path::PathBuf;

use clap::Args;

use super::{GlobalArgs, PolicyArgs};
use crate::{
    cgroup::Cgroup,
    loader::HOOKS,
    sandbox::{default_options, install, Owner},
};

// Arguments of `attach`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The cgroup v2 directory to enforce on (its descendants inherit it).
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Replace the policy of an existing sbx attachment, atomically per hook.
    #[arg(long)]
    pub replace: bool,
    /// Size of the sandbox's own event ring buffer in bytes (a power of two
    /// of at least a page); 0 sends its events to the host event stream
    /// instead, which costs the sandbox no ring of its own. Applies when the
    /// sandbox is created (or moved from an older program set); `--replace` keeps the ring it has.
    #[arg(long, value_name = "BYTES", default_value_t = crate::loader::DEFAULT_EVENTS_BYTES,
          value_parser = super::parse_event_buffer)]
    pub event_buffer: u32,
    /// Create the cgroup first (its parent must exist). Through the host
    /// agent, a caller that is not root may only attach this way.
    #[arg(long, conflicts_with = "replace")]
    pub create: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Validates, attaches, pins and reports.
pub fn run(args: &AttachArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(mut agent) = super::via_agent::client(global)? {
        return super::via_agent::attach(&mut agent, &args.cgroup, args.create, args.replace, &args.policy);
    }
    let task = crate::progress::Task::start("loading the policy");
    let mut policy = args.policy.policy()?;
    super::no_filesystem_rules(&policy, "attach")?;
    super::unix_for_cgroup(&mut policy, "attach")?;
    super::require_root("attach")?;
    let cg = if args.create { create(&args.cgroup)? } else { Cgroup::open(&args.cgroup)? };
    let mut opts = default_options(args.policy.max_rules, args.replace);
    opts.events_bytes = args.event_buffer;
    let (attached, record) = match install(&cg, &policy, opts, &global.paths(), Owner::Attach) {
        Ok(done) => done,
        Err(e) => {
            if args.create {
                let _ = cg.remove();
            }
            return Err(anyhow::Error::from(e).context(format!("no policy was attached to {}", cg.path.display())));
        }
    };
    drop(task);
    println!(
        "{} {} (cgroup id {})",
        if attached.replaced { "replaced policy on" } else { "attached to" },
        cg.path.display(),
        cg.id
    );
    for ((_, _, hook), id) in HOOKS.iter().zip(&attached.prog_ids()) {
        println!("  {hook:<9} program id {id}");
    }
    println!("  pinned in {}", attached.pin_dir.display());
    println!(
        "  {} destination entries, {} bind entries, {} port tables (capacity {})",
        record.dest_entries, record.bind_entries, record.tables, record.max_entries
    );
    super::print_summary(&policy);
    Ok(())
}

/// Creates the cgroup `path` names (not its parents).
fn create(path: &std::path::Path) -> anyhow::Result<Cgroup> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        anyhow::bail!("--create needs a cgroup path with a parent and a name, not {}", path.display());
    };
    let name = name.to_str().ok_or_else(|| anyhow::anyhow!("cgroup name {} is not UTF-8", path.display()))?;
    Ok(Cgroup::create(parent, name)?)
}
