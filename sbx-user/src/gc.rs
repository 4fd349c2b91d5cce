//! Garbage collection: what sbx left in the kernel and bpffs for sandboxes
//! that no longer exist.
//!
//! A container runtime or a CI runner removes a sandbox's cgroup without
//! asking sbx. The kernel then detaches the programs (the pinned links turn
//! defunct: they report cgroup id 0) and frees the cgroup's storage, but
//! the pins, the record and the pool's policy and event indices remain.
//! `gc` removes them, and program sets no sandbox uses any more. It works
//! from what the kernel and bpffs say, under the host lock, so it never
//! races an attach.

use std::{fs, os::fd::AsFd as _, path::PathBuf};

use sbx_common::{Slot, EVENT_SLOTS, MAP_SLOT, POLICY_SLOTS};
use serde::Serialize;

use crate::{
    loader::{self, pin_name_link, LoaderError},
    progset::{self, ProgramSet, SET_PREFIX},
    state::{Paths, Record},
    sys,
};

/// What a collection removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Collected {
    /// Sandboxes whose cgroup is gone: their pins and records.
    pub sandboxes: Vec<u64>,
    /// Policy indices no slot names, returned to the pool.
    pub policies: usize,
    /// Event ring indices no slot names, returned to the pool.
    pub events: usize,
    /// Program set directories no sandbox uses.
    pub sets: Vec<PathBuf>,
    /// Member records (containers of held pods) of gone cgroups or pods.
    pub members: Vec<u64>,
    /// Half-written records (`*.json.tmp`) a killed `sbx-user` left behind.
    pub partial_records: Vec<PathBuf>,
    /// Private HOME and /tmp directories of killed `sbx-user run`s
    /// (`/var/tmp/sbx-run-<pid>-*`, no process with that pid, a minute old).
    pub workspaces: Vec<PathBuf>,
}

/// How old a half-written record must be before `gc` takes it for one a
/// killed process left (a live save renames its file within milliseconds).
const PARTIAL_RECORD_AGE: std::time::Duration = std::time::Duration::from_mins(1);

/// The `*.json.tmp` files in `dir` older than [`PARTIAL_RECORD_AGE`].
fn partial_records(dir: &std::path::Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json.tmp")))
        .filter(|e| {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a >= PARTIAL_RECORD_AGE))
        })
        .map(|e| e.path())
        .collect()
}

/// Whether the sandbox pinned for cgroup `id` holds nothing any more: every
/// pinned link reports cgroup id 0 (the cgroup is gone), or a program-set
/// sandbox has no link pinned at all (a link that cannot be read counts as
/// alive, so nothing is removed on doubt; a directory of an older sbx
/// without links may be an attach of that sbx in progress, which does not
/// take the host lock, and is left alone).
fn defunct(paths: &Paths, id: u64) -> bool {
    let dir = paths.pin_dir(id);
    let links: Vec<_> =
        sbx_common::PROGRAMS.iter().map(|p| dir.join(pin_name_link(p))).filter(|p| p.exists()).collect();
    if links.is_empty() {
        return !loader::is_legacy(&dir);
    }
    links.iter().all(|l| sys::obj_get(l).and_then(|fd| sys::link_cgroup_id(fd.as_fd())).is_ok_and(|c| c == 0))
}

/// Collects. With `dry_run`, only reports what it would remove.
pub fn collect(paths: &Paths, dry_run: bool) -> Result<Collected, LoaderError> {
    let _lock = progset::lock(paths)?;
    let mut out = Collected::default();
    for id in loader::pinned_sandboxes(paths) {
        if defunct(paths, id) {
            out.sandboxes.push(id);
            if !dry_run {
                // The kernel freed the slot with the cgroup; the pool
                // indices it named are found unreferenced below.
                let _ = loader::remove_pins_of(paths, id);
                let _ = Record::remove(paths, id);
            }
        }
    }
    // Containers of pods an OCI hook recorded (`state::Member`) whose
    // cgroup is gone, or whose pod's sandbox is.
    let pinned = loader::pinned_sandboxes(paths);
    for m in crate::state::Member::load_all(paths) {
        let alive = crate::cgroup::Cgroup::open(&m.cgroup).is_ok_and(|c| c.id == m.cgroup_id);
        if !alive || !pinned.contains(&m.sandbox) {
            out.members.push(m.cgroup_id);
            if !dry_run {
                let _ = crate::state::Member::remove(paths, m.cgroup_id);
            }
        }
    }
    let in_use: Vec<String> =
        loader::pinned_sandboxes(paths).into_iter().filter_map(|id| loader::holder(&paths.pin_dir(id))).collect();
    let current = progset::set_id();
    for dir in set_dirs(paths) {
        let Some(id) = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(SET_PREFIX)) else {
            continue;
        };
        if id != current && !in_use.iter().any(|u| u == id) {
            out.sets.push(dir.clone());
            if !dry_run {
                // Its pins go (the anchor's links with them), then the
                // anchor cgroup.
                let _ = fs::remove_dir_all(&dir);
                if let Ok(root) = crate::cgroup::cgroup2_mount() {
                    let _ = fs::remove_dir(progset::anchor_cgroup(&root, id));
                }
            }
            continue;
        }
        if let Ok(set) = ProgramSet::open_id(paths, id) {
            if !set.layout_is_ours() {
                // An older layout's set: freed whole once unused.
                continue;
            }
            let (p, e) = reconcile(&set, dry_run)?;
            out.policies += p;
            out.events += e;
        }
    }
    for dir in [paths.state_dir.clone(), paths.state_dir.join("members")] {
        for path in partial_records(&dir) {
            if !dry_run {
                let _ = fs::remove_file(&path);
            }
            out.partial_records.push(path);
        }
    }
    // Only when the records can be read: a run's directory is never taken
    // while its sandbox is recorded.
    if let Ok(records) = Record::load_all(paths) {
        let runners: Vec<u32> = records.iter().filter_map(|r| r.runner_pid).collect();
        for dir in crate::harden::workspace::abandoned(&runners) {
            if dry_run || fs::remove_dir_all(&dir).is_ok() {
                out.workspaces.push(dir);
            }
        }
    }
    Ok(out)
}

fn set_dirs(paths: &Paths) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(paths.pin_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(SET_PREFIX)))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The cgroup ids of every slot, all of them: the kernel frees a removed
/// cgroup's cell at a moment of its own, and the next key after a cell that
/// has just gone is `ENOENT`, as at the end of the map. A walk cut short
/// there would leave the slots after it unseen, and their policies would be
/// freed under live sandboxes; so a walk that stops at a key which no
/// longer exists starts again (ids seen twice are harmless). `None` if no
/// walk got to the end: then nothing may be freed.
fn slot_ids(set: &ProgramSet) -> Option<Vec<u64>> {
    let mut ids = Vec::new();
    let mut key: Option<[u8; 8]> = None;
    let mut next = [0u8; 8];
    let mut restarts = 0;
    loop {
        if sys::map_next_key(set.map(MAP_SLOT), key.as_ref().map(<[u8; 8]>::as_slice), &mut next).is_ok() {
            ids.push(u64::from_ne_bytes(next));
            key = Some(next);
            continue;
        }
        let vanished = key.is_some_and(|k| loader::read_slot(set, u64::from_ne_bytes(k)).is_none());
        if !vanished {
            return Some(ids);
        }
        if restarts == 100 {
            return None;
        }
        restarts += 1;
        key = None;
    }
}

/// Returns the pool's indices that no live slot names. Returns how many
/// policy and event indices were (or would be) freed.
fn reconcile(set: &ProgramSet, dry_run: bool) -> Result<(usize, usize), LoaderError> {
    let (mut policies, mut events) = (vec![false; POLICY_SLOTS as usize], vec![false; EVENT_SLOTS as usize]);
    let Some(ids) = slot_ids(set) else {
        log::warn!("the sandbox slots kept changing while gc read them; no policy or event index freed this time");
        return Ok((0, 0));
    };
    for id in ids {
        if let Some(Slot { policy, events: ev, .. }) = loader::read_slot(set, id) {
            if let Some(p) = policies.get_mut(policy as usize) {
                *p = true;
            }
            if let Some(e) = events.get_mut(ev as usize) {
                *e = true;
            }
        }
    }
    let (stale_p, stale_e) = set.unreferenced(&policies, &events)?;
    if !dry_run {
        for &i in &stale_p {
            loader::release_policy(set, i);
        }
        set.free_events(&stale_e)?;
        // What was freed (here or by an update or detach) goes now, after
        // a grace period, and the pool's counts are checked.
        loader::end_quarantine(set)?;
        set.recount()?;
    }
    Ok((stale_p.len(), stale_e.len()))
}
