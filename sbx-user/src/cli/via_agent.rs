//! The CLI through the host agent: which agent to use, and `attach`,
//! `update`, `detach` and `status` as requests to it. The output is the
//! direct path's, from what the agent replies.
//!
//! An agent named by `--agent-socket` or `SBX_AGENT_SOCKET` must answer;
//! anything else is an error, never a quiet fallback. The default socket
//! is used when it answers and skipped when nothing listens there (no
//! agent on this host); when it answers wrongly (a peer that is not root, no
//! reply in time) that is an error too. The default is also skipped when
//! `--state-dir` or `--bpffs` name other places than the defaults: the
//! caller asked for a private set of sandboxes, not the host's.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Map, Value};

use super::{GlobalArgs, PolicyArgs};
use crate::{
    agent::{
        client::{Client, ClientError},
        config::DEFAULT_SOCKET,
        protocol::{PolicySource, Request},
    },
    loader::HOOKS,
    policy::Policy,
    state::{DEFAULT_BPFFS, DEFAULT_STATE_DIR},
};

/// The agent to go through, if any.
pub fn client(global: &GlobalArgs) -> anyhow::Result<Option<Client>> {
    let timeout = Duration::from_secs(global.agent_timeout);
    match &global.agent_socket {
        Some(p) if p.as_os_str() == "none" => Ok(None),
        Some(p) => Client::connect(p, timeout).map(Some).with_context(|| {
            format!("--agent-socket (or SBX_AGENT_SOCKET) names {}; nothing was done without it", p.display())
        }),
        None => {
            if global.state_dir != Path::new(DEFAULT_STATE_DIR) || global.bpffs != Path::new(DEFAULT_BPFFS) {
                return Ok(None);
            }
            match Client::connect(Path::new(DEFAULT_SOCKET), timeout) {
                Ok(c) => Ok(Some(c)),
                Err(ClientError::Connect { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) =>
                {
                    Ok(None)
                }
                Err(e) => Err(anyhow::Error::from(e).context(format!(
                    "the agent socket {DEFAULT_SOCKET} exists but does not serve; pass --agent-socket none to act directly"
                ))),
            }
        }
    }
}

/// The agent for `status`: for root only when one is named, since root's
/// direct `status` reads the kernel's own view of every sandbox on the
/// host, the agent's managed ones and the rest.
pub fn client_for_status(global: &GlobalArgs) -> anyhow::Result<Option<Client>> {
    // SAFETY: geteuid has no preconditions.
    if global.agent_socket.is_none() && unsafe { libc::geteuid() } == 0 {
        return Ok(None);
    }
    client(global)
}

/// The policy request of `args`: the policy file is read here, as the
/// caller (the agent never opens a client's paths), and sent as text.
pub fn policy_source(args: &PolicyArgs, command: &str) -> anyhow::Result<PolicySource> {
    if !args.fs_read.is_empty() || !args.fs_write.is_empty() {
        anyhow::bail!(
            "filesystem rules (--fs-read, --fs-write) apply only to `sbx-user run`: Landlock restricts a process sbx starts, not a cgroup; `{command}` cannot enforce them"
        );
    }
    let toml = match &args.policy {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read policy file {}", p.display()))?)
        }
        None => None,
    };
    Ok(PolicySource { toml, name: args.policy.as_ref().map(|p| p.display().to_string()), ..args.source() })
}

/// For `run`: the agent that makes the sandbox, if one serves, with the
/// network part of the policy (the filesystem rules are Landlock's, which
/// `run` applies to the command itself).
pub fn run_target(args: &PolicyArgs, global: &GlobalArgs) -> anyhow::Result<Option<crate::run::AgentTarget>> {
    let Some(agent) = client(global)? else { return Ok(None) };
    let mut network = args.clone();
    network.fs_read.clear();
    network.fs_write.clear();
    let mut policy = policy_source(&network, "run")?;
    if let Some(text) = &policy.toml {
        let mut table: toml::Table = text.parse().context("the policy file")?;
        if table.remove("filesystem").is_some() {
            policy.toml = Some(toml::to_string(&table).context("the policy file without [filesystem]")?);
        }
    }
    Ok(Some(crate::run::AgentTarget {
        socket: agent.path().to_owned(),
        timeout: Duration::from_secs(global.agent_timeout),
        policy,
    }))
}

/// A cgroup argument as the agent needs it: absolute, as the caller's
/// working directory makes it (symlinks are the agent's to refuse).
fn cgroup_name(path: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("cgroup path {}", path.display()))?;
    abs.to_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("cgroup path {} is not UTF-8", abs.display()))
}

fn call(client: &mut Client, request: &Request) -> anyhow::Result<Map<String, Value>> {
    let path = client.path().to_owned();
    client.call(request).with_context(|| format!("the sbx agent at {}", path.display()))
}

fn text(reply: &Map<String, Value>, key: &str) -> String {
    match reply.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn policy_of(reply: &Map<String, Value>) -> Option<Policy> {
    reply.get("policy").and_then(|p| serde_json::from_value(p.clone()).ok())
}

/// `sbx-user update`: through the agent if one serves, else directly.
pub fn update_command(args: &super::update::UpdateArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    match client(global)? {
        Some(mut agent) => update(&mut agent, &args.cgroup, &args.policy),
        None => super::update::run(args, global),
    }
}

/// `sbx-user status`: through the agent if one serves (for root only when
/// it is named), else directly.
pub fn status_command(args: &super::status::StatusArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    match client_for_status(global)? {
        Some(mut agent) => status(&mut agent, args.cgroup.as_ref(), args.json),
        None => super::status::run(args, global),
    }
}

/// `sbx-user events`: through the agent if one is named or the caller is
/// not root, else directly. Through the agent, events are followed as they
/// come (the agent is the one reader of its sandboxes' rings, so there is
/// no backlog to drain): `--follow` is required.
pub fn events_command(args: &super::events::EventsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let Some(mut agent) = client_for_status(global)? else { return super::events::run(args, global) };
    if !args.follow {
        anyhow::bail!(
            "through the host agent, events are followed as they come: pass --follow (the agent reads its sandboxes' events itself, so there is no backlog to show)"
        );
    }
    let cgroups = args.cgroup.as_deref().map(cgroup_name).transpose()?.map(|c| vec![c]);
    if !args.json {
        println!(
            "{:<24} {:<6} {:>7}/{:<7} {:<15} {:<11} {:<4} {:<40} RULE",
            "TIME", "VERDICT", "PID", "TID", "COMM", "HOOK", "PROTO", "DESTINATION"
        );
    }
    let mut last_dropped = 0;
    let path = agent.path().to_owned();
    agent
        .follow_events(cgroups, |line| {
            let dropped = line.get("dropped").and_then(Value::as_u64).unwrap_or(0);
            if dropped > last_dropped {
                eprintln!("sbx-user: {} events lost: this reader was too slow", dropped - last_dropped);
                last_dropped = dropped;
            }
            let Some(Value::Object(e)) = line.get("event") else { return true };
            if args.json {
                println!("{}", Value::Object(e.clone()));
            } else {
                let f = |k: &str| text(e, k);
                println!(
                    "{} {:<6} {:>7}/{:<7} {:<15} {:<11} {:<4} {:<40} {}",
                    f("time"),
                    f("verdict"),
                    f("pid"),
                    f("tid"),
                    f("comm"),
                    f("hook"),
                    f("protocol"),
                    f("destination"),
                    f("rule")
                );
            }
            true
        })
        .with_context(|| format!("the sbx agent at {}", path.display()))
}

/// `attach` through the agent.
pub fn attach(
    client: &mut Client,
    cgroup: &Path,
    create: bool,
    replace: bool,
    policy: &PolicyArgs,
) -> anyhow::Result<()> {
    let request =
        Request::Attach { cgroup: cgroup_name(cgroup)?, create, replace, policy: policy_source(policy, "attach")? };
    let r = call(client, &request)?;
    println!(
        "{} {} (cgroup id {})",
        if r.get("replaced") == Some(&Value::Bool(true)) { "replaced policy on" } else { "attached to" },
        text(&r, "cgroup"),
        text(&r, "cgroup_id")
    );
    if let Some(Value::Array(ids)) = r.get("prog_ids") {
        for ((_, _, hook), id) in HOOKS.iter().zip(ids) {
            println!("  {hook:<9} program id {id}");
        }
    }
    println!("  pinned in {}", text(&r, "pin_dir"));
    println!(
        "  {} destination entries, {} bind entries, {} port tables (capacity {})",
        text(&r, "dest_entries"),
        text(&r, "bind_entries"),
        text(&r, "tables"),
        text(&r, "max_entries")
    );
    if let Some(p) = policy_of(&r) {
        super::print_summary(&p);
    }
    Ok(())
}

/// `update` through the agent.
pub fn update(client: &mut Client, cgroup: &Path, policy: &PolicyArgs) -> anyhow::Result<()> {
    let request = Request::Update { cgroup: cgroup_name(cgroup)?, policy: policy_source(policy, "update")? };
    let r = call(client, &request)?;
    println!("updated policy of {} (cgroup id {})", text(&r, "cgroup"), text(&r, "cgroup_id"));
    if let Some(p) = policy_of(&r) {
        super::print_summary(&p);
    }
    Ok(())
}

/// `detach` through the agent; `remove` also removes a cgroup the agent
/// created.
pub fn detach(client: &mut Client, cgroup: &Path, remove: bool) -> anyhow::Result<()> {
    let r = call(client, &Request::Detach { cgroup: cgroup_name(cgroup)?, remove })?;
    if remove {
        println!("removed {}", text(&r, "cgroup"));
    } else {
        println!("detached from {}", text(&r, "cgroup"));
    }
    Ok(())
}

/// `status` through the agent: the sandboxes the caller may see.
pub fn status(client: &mut Client, cgroup: Option<&PathBuf>, json: bool) -> anyhow::Result<()> {
    let entries: Vec<Value> = if let Some(c) = cgroup {
        vec![Value::Object(call(client, &Request::Status { cgroup: cgroup_name(c)? })?)]
    } else {
        let list = call(client, &Request::List {})?;
        let mut out = Vec::new();
        for s in list.get("sandboxes").and_then(Value::as_array).into_iter().flatten() {
            let name = s.get("cgroup").and_then(Value::as_str).unwrap_or_default().to_owned();
            match client.call(&Request::Status { cgroup: name.clone() }) {
                Ok(m) => out.push(Value::Object(m)),
                // Outside the managed roots (attached directly): the
                // listing says what the agent knows of it.
                Err(ClientError::Agent { message, .. }) => {
                    let mut v = s.clone();
                    v["problem"] = Value::String(message);
                    out.push(v);
                }
                Err(e) => return Err(e.into()),
            }
        }
        out
    };
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|mut e| {
            if let Value::Object(m) = &mut e {
                m.remove("v");
                m.remove("ok");
                m.remove("id");
            }
            e
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no sandboxes");
    }
    for e in &entries {
        let state = if e.get("problem").is_none_or(Value::is_null) { "enforcing" } else { "PROBLEM" };
        println!("{} (cgroup id {}): {state}", e["cgroup"].as_str().unwrap_or("?"), e["cgroup_id"]);
        if let Some(p) = e.get("problem").and_then(Value::as_str) {
            println!("  problem: {p}");
        }
        let hooks: Vec<&str> = e
            .get("enforcing_hooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  by {} (uid {}); {} destination entries; hooks: {}",
            e["by"].as_str().unwrap_or("?"),
            e["creator_uid"],
            e["dest_entries"],
            hooks.join(" ")
        );
        for line in e.get("summary").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            println!("  {line}");
        }
    }
    Ok(())
}
