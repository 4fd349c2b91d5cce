//! `bpftool`: the programs attached below a cgroup, their memory and their
//! run-time statistics.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub(super) fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing bpftool {} output", args.join(" ")))
}

/// Programs attached anywhere below `root`: `(id, name)`.
pub(super) fn progs_under(root: &Path) -> Result<Vec<(u64, String)>> {
    let tree = bpftool_json(&["cgroup", "tree", &root.to_string_lossy()])?;
    let mut out = Vec::new();
    for cg in tree.as_array().into_iter().flatten() {
        for p in cg["programs"].as_array().into_iter().flatten() {
            if let Some(id) = p["id"].as_u64() {
                out.push((id, p["name"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    Ok(out)
}

/// `bytes_memlock` of the programs attached below `root` and of the maps
/// they use: `(programs, maps)`.
pub(super) fn memlock_under(root: &Path) -> Result<(u64, u64)> {
    let ids: HashSet<u64> = progs_under(root)?.into_iter().map(|(id, _)| id).collect();
    let progs = bpftool_json(&["prog", "show"])?;
    let mut prog_bytes = 0;
    let mut map_ids = HashSet::new();
    for p in progs.as_array().into_iter().flatten() {
        if p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            prog_bytes += p["bytes_memlock"].as_u64().unwrap_or(0);
            map_ids.extend(p["map_ids"].as_array().into_iter().flatten().filter_map(Value::as_u64));
        }
    }
    let maps = bpftool_json(&["map", "show"])?;
    let map_bytes = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| map_ids.contains(&id)))
        .filter_map(|m| m["bytes_memlock"].as_u64())
        .sum();
    Ok((prog_bytes, map_bytes))
}

/// `(run_time_ns, run_cnt)` of each program, by id (needs
/// `kernel.bpf_stats_enabled=1`).
pub(super) fn prog_stats() -> Result<BTreeMap<u64, (u64, u64)>> {
    let progs = bpftool_json(&["prog", "show"])?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((p["id"].as_u64()?, (p["run_time_ns"].as_u64().unwrap_or(0), p["run_cnt"].as_u64().unwrap_or(0))))
        })
        .collect())
}
