//! `sbx-user oci-hook`: the OCI runtime hook (see [`crate::oci`]).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};

use super::GlobalArgs;
use crate::oci::{
    self,
    config::{HostConfig, DEFAULT_CONFIG, DEFAULT_TIMEOUT_SECS},
    HookEnv, Outcome,
};
use crate::state::{DEFAULT_BPFFS, DEFAULT_STATE_DIR};

/// The hook stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// From the state's `status`: `creating` or `created` is
    /// create-runtime, `stopped` is poststop.
    Auto,
    /// Attach, before the container's first instruction.
    CreateRuntime,
    /// Remove what create-runtime attached.
    Poststop,
}

// Arguments of `oci-hook`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
#[command(after_long_help = "The runtime writes the container state (JSON) on stdin. Install it with the \
hooks.d files of the repository (podman, CRI-O; containerd through NRI). A container opts in with the \
annotation sbx.io/profile=NAME (a built-in profile) or sbx.io/policy=NAME (<policy_dir>/NAME.toml); the host \
configuration can set a default for every container. A pod's sandbox (infra) container puts its policy on \
the pod's cgroup, so that every container of the pod is held from its first instruction; the pod's other \
containers are recorded so that events name them. Where the host agent answers, the hook attaches through it \
(`agent = \"auto\"`, the default; `\"required\"` refuses containers while it is down; `\"off\"`). Any error \
exits 125, naming the container and the reason, and the runtime does not start the container.")]
pub struct OciHookArgs {
    /// Which stage this is.
    #[arg(value_enum, default_value_t = Stage::Auto)]
    pub stage: Stage,
    /// The host configuration (default profile, policy directory, timeout,
    /// capability exceptions).
    #[arg(long, env = "SBX_OCI_HOOK_CONFIG", default_value = DEFAULT_CONFIG, value_name = "FILE")]
    pub config: PathBuf,
    /// Fail unless the configuration exists and sets a `[default]` (for
    /// the hooks.d file that runs the hook on every container).
    #[arg(long)]
    pub require_default: bool,
}

/// The container id the watchdog names; empty until the state is read.
type Named = Arc<Mutex<(Instant, String)>>;

/// Runs the hook within the configured time.
pub fn run(args: &OciHookArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let named: Named = Arc::new(Mutex::new((start + Duration::from_secs(DEFAULT_TIMEOUT_SECS), String::new())));
    watchdog(Arc::clone(&named), start);

    // The configuration first, so that its timeout bounds reading the
    // state too (a runtime that never closes the hook's stdin); its errors
    // are reported once the state names the container.
    let config = HostConfig::load(&args.config, args.require_default);
    if let Ok(c) = &config {
        set(&named, |n| n.0 = start + Duration::from_secs(c.timeout_secs));
    }
    let mut input = Vec::new();
    std::io::stdin().take(1 << 20).read_to_end(&mut input)?;
    let state = oci::read_state(&input)?;
    let in_container = |e: &dyn std::fmt::Display| anyhow::anyhow!("container {}: {e}", state.id);
    set(&named, |n| n.1.clone_from(&state.id));
    let config = config.map_err(|e| in_container(&e))?;
    if args.require_default && config.default.is_none() {
        return Err(in_container(&format_args!(
            "{} sets no [default], but this hook was installed to hold every container to the host default \
             (--require-default); set [default] or install the annotation-only hooks.d file instead",
            args.config.display()
        )));
    }
    super::require_root("oci-hook").map_err(|e| in_container(&e))?;

    let which = match (args.stage, state.status.as_str()) {
        (Stage::Auto, "creating" | "created") => Stage::CreateRuntime,
        (Stage::Auto, "stopped") => Stage::Poststop,
        (Stage::Auto, other) => {
            return Err(in_container(&format_args!(
                "status {other:?}: run the hook at createRuntime (status creating) or poststop (stopped), or name the stage"
            )))
        }
        (s, _) => s,
    };
    let env = HookEnv {
        paths: global.paths(),
        config,
        config_path: args.config.clone(),
        proc: PathBuf::from("/proc"),
        agent_socket: global.agent_socket.clone(),
        agent_timeout: Duration::from_secs(global.agent_timeout),
        private_paths: global.state_dir != Path::new(DEFAULT_STATE_DIR) || global.bpffs != Path::new(DEFAULT_BPFFS),
    };
    let outcome =
        if which == Stage::Poststop { oci::poststop(&state, &env)? } else { oci::create_runtime(&state, &env)? };
    let id = &state.id;
    match outcome {
        Outcome::Untouched(why) => println!("sbx: container {id}: untouched: {why}"),
        Outcome::Attached { choice, cgroup, already, pod, agent } => println!(
            "sbx: container {id}: {} {choice} on {}{}{}",
            if already { "already under" } else { "attached" },
            cgroup.display(),
            if pod { " (the pod's cgroup: every container of the pod is held by it)" } else { "" },
            if agent && !already { ", through the host agent" } else { "" }
        ),
        Outcome::Joined { pod, cgroup, own } => {
            println!(
                "sbx: container {id}: held by its pod's policy on {}, recorded as {}",
                pod.display(),
                cgroup.display()
            );
            if let Some(own) = own {
                println!("sbx: container {id}: and by {own} on {} (both must allow)", cgroup.display());
            }
        }
        Outcome::Removed { removed, kept } => {
            if removed.is_empty() && kept.is_empty() {
                println!("sbx: container {id}: nothing to remove");
            }
            for c in removed {
                println!("sbx: container {id}: removed the sandbox of {}", c.display());
            }
            for (c, why) in kept {
                println!(
                    "sbx: container {id}: kept the sandbox of {}: {why} (the pod's last container, or the collection \
                     once its cgroup is gone, takes it off)",
                    c.display()
                );
            }
        }
    }
    Ok(())
}

fn set(named: &Named, f: impl FnOnce(&mut (Instant, String))) {
    if let Ok(mut n) = named.lock() {
        f(&mut n);
    }
}

/// Ends the process with an error naming the container once the deadline
/// passes, whatever the hook is waiting for (a lock, the kernel, DNS for
/// a policy's host names): a hook must never hang a container start.
fn watchdog(named: Named, start: Instant) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(50));
        let (deadline, id) = match named.lock() {
            Ok(n) => (n.0, n.1.clone()),
            Err(_) => (start, String::new()),
        };
        if Instant::now() >= deadline {
            let who =
                if id.is_empty() { "(container state not read yet)".to_owned() } else { format!("container {id}") };
            eprintln!(
                "sbx-user: error: {who}: the hook did not finish within {} s; refusing the container \
                 (`sbx-user gc` removes anything a half-done attach left)",
                deadline.duration_since(start).as_secs()
            );
            std::process::exit(super::EXIT_ERROR);
        }
    });
}
