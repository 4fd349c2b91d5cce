//! The one module that drives the kernel for a sandbox: link the host's
//! program set ([`crate::progset`]) to a cgroup, create and fill the
//! sandbox's policy maps, write its slot, pin, query, update and detach.
//!
//! Attaching is all-or-nothing and fails closed: the links are created
//! while the sandbox's slot is still zero (which denies everything), the
//! slot is written in one map update once every link exists, and only then
//! are the links pinned. If anything fails, the links made so far are
//! dropped (which detaches them), the policy maps are freed and the pins
//! removed.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use sbx_common::{
    rule_key, Config, PolicyMeta, PortSegment, PortTable, RuleKey, Slot, Stats, TrieValue, DEFAULT_TCP, DEFAULT_UDP,
    LEGACY_MAPS, MAP_CONNECTS, MAP_EVENTS, MAP_EVENTS_OF, MAP_RULES, MAP_SEGMENTS, MAP_SLOT, MAP_STATS,
    MAX_POLICY_SEGMENTS, PROGRAMS, RULE_BIND, RULE_DEST, RULE_MARK, RULE_PREFIX, SEGMENT_BLOCK,
};

use crate::{
    cgroup::{fs_magic, Cgroup},
    compile::Compiled,
    progset::{self, map_err, ProgramSet},
    state::Paths,
    sys::{self, AttachType, MapType},
};

/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Hook of each program, in [`PROGRAMS`] order: program name, attach
/// type, and the name users see.
pub const HOOKS: [(&str, AttachType, &str); 10] = [
    (PROGRAMS[0], AttachType::Connect4, "connect4"),
    (PROGRAMS[1], AttachType::Connect6, "connect6"),
    (PROGRAMS[2], AttachType::Sendmsg4, "sendmsg4"),
    (PROGRAMS[3], AttachType::Sendmsg6, "sendmsg6"),
    (PROGRAMS[4], AttachType::Bind4, "bind4"),
    (PROGRAMS[5], AttachType::Bind6, "bind6"),
    (PROGRAMS[6], AttachType::SockCreate, "sock_create"),
    (PROGRAMS[7], AttachType::Setsockopt, "setsockopt"),
    (PROGRAMS[8], AttachType::Egress, "egress"),
    (PROGRAMS[9], AttachType::SockOps, "sockops"),
];

/// The hooks a sandbox needs: every one, except the `sock_ops` program
/// unless the sandbox redirects to a proxy (it runs several times per TCP
/// connection for nothing otherwise).
pub fn hooks_for(redirect: bool) -> impl Iterator<Item = &'static (&'static str, AttachType, &'static str)> {
    HOOKS.iter().filter(move |h| redirect || h.1 != AttachType::SockOps)
}

/// A kernel-side failure, with what a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object or a map could not be created.
    #[error("loading the sbx eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program failed verification or loading.
    #[error("loading program {program} failed: {detail}")]
    Program {
        /// Program name.
        program: &'static str,
        /// The error, with the verifier log when there is one.
        detail: String,
    },
    /// A map update failed.
    #[error("filling map {map} failed: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The error.
        source: aya::maps::MapError,
    },
    /// Attaching a program to the cgroup failed; nothing was left attached.
    #[error("attaching {hook} to {cgroup} failed: {detail}; nothing was left attached")]
    Attach {
        /// Hook name.
        hook: &'static str,
        /// The cgroup.
        cgroup: PathBuf,
        /// The error.
        detail: String,
    },
    /// sbx programs are already attached to this cgroup.
    #[error("sbx is already attached to {cgroup} ({detail}); pass --replace to swap the policy, or run `sbx-user detach --cgroup {cgroup}`")]
    AlreadyAttached {
        /// The cgroup.
        cgroup: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Nothing of sbx's is attached to this cgroup.
    #[error("sbx is not attached to {0}")]
    NotAttached(PathBuf),
    /// Pinning or unpinning failed; for an attach, nothing was left attached.
    #[error("{action} {path} failed: {detail}")]
    Pin {
        /// What was being done.
        action: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The error.
        detail: String,
    },
    /// bpffs is missing and could not be mounted.
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}; mount it (mount -t bpf bpf {path}) or pass --bpffs")]
    Bpffs {
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A kernel query failed.
    #[error("querying programs attached to {cgroup} failed: {source}")]
    Query {
        /// The cgroup.
        cgroup: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cgroup could not be opened.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A host-wide limit is reached.
    #[error("all {limit} {what} of this host are in use; {hint}")]
    Full {
        /// What ran out.
        what: &'static str,
        /// How many the host has.
        limit: u32,
        /// What to do.
        hint: &'static str,
    },
    /// A bpf(2) command on a map or link failed.
    #[error("{what}: {detail}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's error.
        detail: String,
    },
}

/// Options for [`attach`].
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    /// Capacity of each trie.
    pub max_entries: u32,
    /// Swap the programs of an existing sbx attachment atomically.
    pub replace: bool,
    /// The sandbox settings the programs read.
    pub config: Config,
    /// Size of the sandbox's own event ring buffer in bytes (a power of
    /// two, at least a page), or 0: its events go to the host stream.
    pub events_bytes: u32,
}

/// Connections in flight whose original destination a transparent-proxy
/// sandbox remembers (least recently used first out).
pub const REDIRECT_SLOTS: u32 = 4096;

/// Default size of a sandbox's own event ring buffer: 16 KiB, about 180
/// events between two reads.
pub const DEFAULT_EVENTS_BYTES: u32 = 16 * 1024;

/// What [`attach`] did.
#[derive(Clone, Debug)]
pub struct Attached {
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Whether an existing attachment was replaced in place.
    pub replaced: bool,
    /// The program set that holds the sandbox.
    pub program_set: std::sync::Arc<ProgramSet>,
    /// The policy generation the slot carries (what the record must say).
    pub generation: u32,
    /// The policy index the sandbox's slot names.
    pub policy: u32,
}

impl Attached {
    /// An attachment replaced in place (`update`, or a migration).
    fn replaced(set: &std::sync::Arc<ProgramSet>, pin_dir: PathBuf, policy: u32, generation: u32) -> Self {
        Self { pin_dir, replaced: true, program_set: std::sync::Arc::clone(set), policy, generation }
    }

    /// Kernel program ids, in [`HOOKS`] order.
    #[must_use]
    pub fn prog_ids(&self) -> Vec<u32> {
        self.program_set.prog_ids()
    }
}

/// Pin file name of the link of `program`.
#[must_use]
pub fn pin_name_link(program: &str) -> String {
    format!("link_{program}")
}

/// Pin file name of map `map`.
#[must_use]
pub fn pin_name_map(map: &str) -> String {
    format!("map_{map}")
}

/// Makes sure bpffs is mounted at `paths.bpffs`, mounting it if not.
pub fn ensure_bpffs(paths: &Paths) -> Result<(), LoaderError> {
    let path = &paths.bpffs;
    if fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC) {
        return Ok(());
    }
    let err = |source| LoaderError::Bpffs { path: path.clone(), source };
    fs::create_dir_all(path).map_err(err)?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let target = c(path.to_str().ok_or_else(|| err(std::io::Error::other("path is not UTF-8")))?);
    let (src, fstype) = (c("bpf"), c("bpf"));
    // SAFETY: valid C strings; no mount data.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at {}", path.display());
    Ok(())
}

pub(crate) fn program_error(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            // The full log is thousands of lines; the end says why.
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            log::debug!("full verifier log:\n{log}");
            format!("{io_error}; end of the verifier log (-vv for all of it):\n{tail}")
        }
        other => other.to_string(),
    }
}

/// Links one program of the set to a cgroup. aya 0.14 cannot turn every
/// cgroup link type into a pinnable `FdLink` (sockopt links, for one), so
/// all go through the same raw `BPF_LINK_CREATE`.
fn attach_one(set: &ProgramSet, name: &str, ty: AttachType, dir: &fs::File) -> Result<OwnedFd, String> {
    sys::link_create(set.prog(name).map_err(|e| e.to_string())?, dir.as_fd(), ty).map_err(|e| e.to_string())
}

/// Names of the programs attached directly to `cg` at each hook.
pub fn query(cg: &Cgroup) -> Result<Vec<(&'static str, Vec<String>)>, LoaderError> {
    let dir = cg.dir_fd()?;
    // Only the programs on this cgroup are looked up: walking every
    // program on the host would make each attach cost O(sandboxes).
    HOOKS
        .iter()
        .map(|&(_, ty, hook)| {
            let ids = sys::prog_query(dir.as_fd(), ty, 0)
                .map_err(|source| LoaderError::Query { cgroup: cg.path.clone(), source })?;
            let progs = ids.iter().map(|&id| sys::prog_name(id).unwrap_or_else(|_| format!("id {id}"))).collect();
            Ok((hook, progs))
        })
        .collect()
}

/// Whether sbx has anything on `cg`: pins, or programs the kernel reports.
pub fn existing(cg: &Cgroup, paths: &Paths) -> Result<Option<String>, LoaderError> {
    let pin_dir = paths.pin_dir(cg.id);
    if pin_dir.exists() {
        return Ok(Some(format!("pins in {}", pin_dir.display())));
    }
    // Every sbx attachment links connect4 (links are created together and
    // dropped together when an attach fails), so that one hook answers;
    // the full list is only for the message.
    let dir = cg.dir_fd()?;
    let ids = sys::prog_query(dir.as_fd(), AttachType::Connect4, 0)
        .map_err(|source| LoaderError::Query { cgroup: cg.path.clone(), source })?;
    if !ids.iter().any(|&id| sys::prog_name(id).is_ok_and(|n| n.starts_with("sbx_"))) {
        return Ok(None);
    }
    let attached: Vec<String> = query(cg)?
        .into_iter()
        .filter(|(_, progs)| progs.iter().any(|p| p.starts_with("sbx_")))
        .map(|(hook, _)| hook.to_owned())
        .collect();
    Ok(Some(format!("sbx programs on {} without pins, probably a running `sbx-user run`", attached.join(", "))))
}

/// A policy written into the host maps at policy index `index`.
struct PolicyMaps {
    index: u32,
}

/// Where each port table of a compiled policy goes in the host's segment
/// array: its ranges' offset from the policy's first segment, in table
/// order, and the number of segments in all.
fn segment_layout(tables: &[PortTable]) -> Result<(Vec<u32>, u32), LoaderError> {
    let mut offsets = Vec::with_capacity(tables.len());
    let mut total = 0u32;
    for t in tables {
        offsets.push(total);
        total = total.saturating_add(t.len);
    }
    if total > MAX_POLICY_SEGMENTS {
        return Err(LoaderError::Full {
            what: "port ranges of one sandbox",
            limit: MAX_POLICY_SEGMENTS,
            hint: "the policy's port lists split into more distinct ranges than a sandbox may hold; merge port lists or use ranges",
        });
    }
    Ok((offsets, total))
}

/// Writes a policy into the host's maps at a fresh policy index and
/// returns it: its meta, its port ranges in blocks of its own, its marker,
/// then its destination and bind entries. Nothing reads them before a slot
/// names the index. On failure, whatever was written is removed again.
fn install_policy(set: &ProgramSet, compiled: &Compiled) -> Result<PolicyMaps, LoaderError> {
    let (offsets, segments) = segment_layout(&compiled.tables)?;
    let blocks = segments.div_ceil(SEGMENT_BLOCK);
    let entries = u32::try_from(compiled.dest.len() + compiled.bind.len() + 1).expect("compile bounds the entries");
    let (index, first_block) = set.alloc_policy(blocks, entries, &|| end_quarantine(set))?;
    let meta = PolicyMeta { entries, first_block, blocks, _pad: 0 };
    let made = (|| {
        set.set_policy_meta(index, &meta)?;
        let base = first_block * SEGMENT_BLOCK;
        fill_segments(set, base, &compiled.tables)?;
        sys::map_update(set.map(MAP_RULES), &marker_key(index), sys::bytes_of(&TrieValue::deny()), sys::UPDATE_ANY)
            .map_err(|e| kernel_err("writing the policy's marker entry", &e))?;
        let started = std::time::Instant::now();
        fill_rules(set, index, RULE_DEST, &compiled.dest, &compiled.tables, &offsets, base)?;
        log::debug!("filled {} destination entries in {:.1} ms", compiled.dest.len(), crate::progress::ms(started));
        fill_rules(set, index, RULE_BIND, &compiled.bind, &compiled.tables, &offsets, base)
    })();
    match made {
        Ok(()) => Ok(PolicyMaps { index }),
        Err(e) => {
            // The meta is known here even if writing it failed.
            remove_policy_as(set, index, &meta);
            Err(e)
        }
    }
}

/// Writes the port ranges of `tables`, one after another, from segment
/// `base` on.
fn fill_segments(set: &ProgramSet, base: u32, tables: &[PortTable]) -> Result<(), LoaderError> {
    let segs: Vec<PortSegment> = tables.iter().flat_map(|t| t.segments[..t.len as usize].iter().copied()).collect();
    for (n, chunk) in segs.chunks(FILL_BATCH).enumerate() {
        let first = base + u32::try_from(n * FILL_BATCH).expect("bounded by MAX_POLICY_SEGMENTS");
        let keys: Vec<u8> =
            (0..chunk.len()).flat_map(|i| (first + u32::try_from(i).expect("small")).to_ne_bytes()).collect();
        let values: Vec<u8> = chunk.iter().flat_map(|s| sys::bytes_of(s).to_vec()).collect();
        let count = u32::try_from(chunk.len()).expect("at most FILL_BATCH");
        sys::map_update_batch(set.map(MAP_SEGMENTS), &keys, &values, count)
            .map_err(|e| kernel_err("writing the policy's port ranges", &e))?;
    }
    Ok(())
}

/// Frees policy `index`: it is quarantined (see [`sbx_common::Pool`]),
/// its entries and port ranges left as they are until a grace period has
/// passed, since a program that read the old slot may still be deciding
/// by them (a decision can take several lookups, and a policy half
/// removed could answer what neither the old nor the new policy would).
/// When the quarantine is due, it ends here.
fn remove_policy(set: &ProgramSet, index: u32) {
    if !set.layout_is_ours() {
        // A set of an older layout: its maps go with the set when `gc`
        // removes it once no sandbox uses it.
        log::debug!("policy {index} of program set {} is freed with the set", set.id);
        return;
    }
    match set.policy_meta(index) {
        Ok(meta) => remove_policy_as(set, index, &meta),
        Err(e) => log::warn!("reading what policy {index} holds: {e}; its index stays taken until `sbx-user gc`"),
    }
}

/// As [`remove_policy`], for a policy whose meta is `meta`.
fn remove_policy_as(set: &ProgramSet, index: u32, meta: &PolicyMeta) {
    match set.release_policy(index, meta) {
        Ok(true) => {
            if let Err(e) = end_quarantine(set) {
                log::warn!("removing the freed policies: {e}; `sbx-user gc` tries again");
            }
        }
        Ok(false) => {}
        Err(e) => log::warn!("returning policy index {index} to the pool: {e}"),
    }
}

/// Ends the quarantine: waits for an RCU grace period, then removes the
/// entries of every quarantined policy (no program can be reading them
/// any more) and gives their indices and blocks out again. A policy whose
/// entries cannot all be removed stays quarantined for the next time.
/// Returns whether anything was quarantined. The caller holds the lock.
pub(crate) fn end_quarantine(set: &ProgramSet) -> Result<bool, LoaderError> {
    let (policies, blocks) = set.quarantined()?;
    if policies.is_empty() && !blocks {
        return Ok(false);
    }
    set.grace_period()?;
    let started = std::time::Instant::now();
    let mut cleared = Vec::with_capacity(policies.len());
    for i in policies {
        let meta = match set.policy_meta(i) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!("reading what policy {i} holds: {e}; it stays quarantined");
                continue;
            }
        };
        match clear_policy(set, i) {
            Ok(()) => {
                let _ = set.set_policy_meta(i, &PolicyMeta::default());
                cleared.push((i, meta.entries));
            }
            Err(e) => log::warn!("removing the entries of policy {i}: {e}; it stays quarantined"),
        }
    }
    set.end_quarantine(&cleared)?;
    log::debug!("removed {} freed policies in {:.1} ms", cleared.len(), crate::progress::ms(started));
    Ok(true)
}

/// The keys of `index`'s entries in the host trie (marker first), found by
/// walking from its marker: a policy's entries are one subtree of the
/// trie, and its marker is that subtree's first key.
fn policy_keys(set: &ProgramSet, index: u32) -> std::io::Result<Vec<[u8; RULE_KEY]>> {
    let map = sys::KeyedMap::new(set.map(MAP_RULES), RULE_KEY)?;
    let first = marker_key(index);
    let mut value = [0u8; std::mem::size_of::<TrieValue>()];
    match sys::map_lookup(set.map(MAP_RULES), &first, &mut value) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let ours = |k: &[u8; RULE_KEY]| k[4..7] == first[4..7];
    let mut keys = vec![first];
    let mut next = [0u8; RULE_KEY];
    loop {
        let prev = *keys.last().expect("not empty");
        match map.next_key(Some(&prev), &mut next) {
            Ok(()) if ours(&next) => keys.push(next),
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(keys)
}

/// Size of a [`MAP_RULES`] key: prefix length, then [`RuleKey`].
const RULE_KEY: usize = 4 + std::mem::size_of::<RuleKey>();

/// The whole [`MAP_RULES`] key of `addr`/`prefix_len` (address bits) in
/// `index`'s entries of `kind`.
fn trie_key(prefix_len: u32, index: u32, kind: u8, addr: &sbx_common::TrieAddr) -> [u8; RULE_KEY] {
    let mut key = [0u8; RULE_KEY];
    key[..4].copy_from_slice(&(RULE_PREFIX + prefix_len).to_ne_bytes());
    key[4..].copy_from_slice(&rule_key(index, kind, addr));
    key
}

/// The key of policy `index`'s marker entry (see [`sbx_common::RULE_MARK`]).
fn marker_key(index: u32) -> [u8; RULE_KEY] {
    trie_key(128, index, RULE_MARK, &[0; 16])
}

/// Deletes every entry of policy `index`, its marker last (so that a walk
/// cut short can start again from it). Only for a policy no slot names any
/// more, after a grace period (see [`end_quarantine`]).
fn clear_policy(set: &ProgramSet, index: u32) -> std::io::Result<()> {
    let mut keys = policy_keys(set, index)?;
    let Some(mark) = (!keys.is_empty()).then(|| keys.remove(0)) else {
        return Ok(());
    };
    keys.sort_by_key(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
    let map = sys::KeyedMap::new(set.map(MAP_RULES), RULE_KEY)?;
    for k in keys.iter().chain([&mark]) {
        match map.delete(k) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// As [`remove_policy`], for garbage collection.
pub(crate) fn release_policy(set: &ProgramSet, index: u32) {
    remove_policy(set, index);
}

/// Removes the pins of the sandbox on cgroup `id` (its links detach).
pub(crate) fn remove_pins_of(paths: &Paths, id: u64) -> Result<(), LoaderError> {
    remove_pins(&paths.pin_dir(id))
}

fn kernel_err(what: &str, e: &std::io::Error) -> LoaderError {
    LoaderError::Kernel { what: what.to_owned(), detail: e.to_string() }
}

/// Entries written per `BPF_MAP_UPDATE_BATCH` call.
const FILL_BATCH: usize = 4096;

/// Writes `entries` of `kind` into the host trie under policy `index`,
/// [`FILL_BATCH`] per system call (one call each where the kernel has no
/// batch update for tries), each naming its table's ranges at
/// `base + offsets[table]`.
fn fill_rules(
    set: &ProgramSet,
    index: u32,
    kind: u8,
    entries: &[crate::compile::TrieEntry],
    tables: &[PortTable],
    offsets: &[u32],
    base: u32,
) -> Result<(), LoaderError> {
    const VALUE: usize = std::mem::size_of::<TrieValue>();
    let map = set.map(MAP_RULES);
    let what = if kind == RULE_BIND { "bind" } else { "destination" };
    let fail = |err: &std::io::Error| kernel_err(&format!("writing the policy's {what} entries"), err);
    let (mut keys, mut values) = (Vec::with_capacity(FILL_BATCH * RULE_KEY), Vec::with_capacity(FILL_BATCH * VALUE));
    let mut batched = true;
    let mut flush = |keys: &mut Vec<u8>, values: &mut Vec<u8>| -> Result<(), LoaderError> {
        let count = keys.len() / RULE_KEY;
        if batched && count > 0 {
            let n = u32::try_from(count).expect("at most FILL_BATCH");
            match sys::map_update_batch(map, keys, values, n) {
                Ok(()) => {
                    keys.clear();
                    values.clear();
                    return Ok(());
                }
                // No batch update for this map type here (the kernel's
                // ENOTSUPP is 524): one at a time.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) => {
                    log::debug!("no batch update for the rule trie ({e}): one entry per call");
                    batched = false;
                }
                Err(e) => return Err(fail(&e)),
            }
        }
        for (key, value) in keys.chunks_exact(RULE_KEY).zip(values.chunks_exact(VALUE)) {
            sys::map_update(map, key, value, sys::UPDATE_ANY).map_err(|e| fail(&e))?;
        }
        keys.clear();
        values.clear();
        Ok(())
    };
    for e in crate::progress::track("filling the policy maps", entries.len(), entries) {
        keys.extend_from_slice(&trie_key(e.prefix_len, index, kind, &e.addr));
        let table = &tables[e.table as usize];
        let value = TrieValue {
            segs: base + offsets[e.table as usize],
            prefix_len: u8::try_from(e.prefix_len).expect("prefix lengths are at most 128"),
            explicit: u8::from(e.explicit),
            nsegs: u8::try_from(table.len).expect("at most MAX_SEGMENTS"),
            defaults: defaults_of(table),
        };
        values.extend_from_slice(sys::bytes_of(&value));
        if keys.len() == FILL_BATCH * RULE_KEY {
            flush(&mut keys, &mut values)?;
        }
    }
    flush(&mut keys, &mut values)
}

/// The [`TrieValue::defaults`] bits of `table`.
fn defaults_of(table: &PortTable) -> u8 {
    let mut bits = 0;
    if table.default_tcp == sbx_common::VERDICT_ALLOW {
        bits |= DEFAULT_TCP;
    }
    if table.default_udp == sbx_common::VERDICT_ALLOW {
        bits |= DEFAULT_UDP;
    }
    bits
}

fn put_inner(set: &ProgramSet, outer: &'static str, index: u32, inner: &OwnedFd) -> Result<(), LoaderError> {
    let fd = u32::try_from(inner.as_raw_fd()).expect("fds are non-negative");
    sys::map_update(set.map(outer), &index.to_ne_bytes(), &fd.to_ne_bytes(), sys::UPDATE_ANY)
        .map_err(|e| map_err(outer, &e))
}

/// Event ring indices given rings at once when a fresh one is needed.
const PREINSTALL: u32 = 32;

/// Puts event rings of `bytes` bytes at `first` and the next indices that
/// have none, [`PREINSTALL`] at a time: one batch write of the outer map,
/// so one RCU grace period for all of them instead of one per ring (about
/// 10 ms each here). The rings wait, empty, for the sandboxes that get the
/// indices; nothing reads them before a slot names one.
fn preinstall_rings(set: &ProgramSet, first: u32, bytes: u32) -> Result<(), LoaderError> {
    let last = (first + PREINSTALL).min(sbx_common::EVENT_SLOTS);
    let indices: Vec<u32> = (first..last).filter(|&i| inner(set, MAP_EVENTS_OF, i).is_none()).collect();
    let count = u32::try_from(indices.len()).expect("at most PREINSTALL");
    let keys: Vec<u8> = indices.iter().flat_map(|i| i.to_ne_bytes()).collect();
    let rings = indices
        .iter()
        .map(|_| {
            sys::map_create(MapType::RingBuf, 0, 0, bytes, 0, "sbx_events")
                .map_err(|e| kernel_err(&format!("creating a {bytes}-byte event ring buffer"), &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let values: Vec<u8> =
        rings.iter().flat_map(|m| u32::try_from(m.as_raw_fd()).expect("fds are non-negative").to_ne_bytes()).collect();
    sys::map_update_batch(set.map(MAP_EVENTS_OF), &keys, &values, count).map_err(|e| map_err(MAP_EVENTS_OF, &e))
}

/// The inner map at `index` of `outer`, if any (userspace lookups of an
/// outer map return the inner map's id).
fn inner(set: &ProgramSet, outer: &'static str, index: u32) -> Option<OwnedFd> {
    let mut id = [0u8; 4];
    sys::map_lookup(set.map(outer), &index.to_ne_bytes(), &mut id).ok()?;
    sys::map_get_fd_by_id(u32::from_ne_bytes(id)).ok()
}

/// A sandbox's own event ring buffer, at a fresh event index, pinned as
/// `map_SBX_EVENTS` in `pin_dir` (where `events` and `run --log-denials`
/// find it, as for sandboxes of contract 1).
fn install_events(set: &ProgramSet, bytes: u32, pin_dir: &Path) -> Result<u32, LoaderError> {
    let index = set.alloc_events()?;
    let made = (|| {
        // A ring left in place by an earlier sandbox is reused as the
        // tries are (readers skip events of another sandbox in it).
        if inner(set, MAP_EVENTS_OF, index).is_none() {
            preinstall_rings(set, index, bytes)?;
        }
        let ring = match inner(set, MAP_EVENTS_OF, index) {
            Some(fd) if sys::map_max_entries(fd.as_fd()).is_ok_and(|n| n == bytes) => {
                // Events the previous sandbox left unread must not reach
                // this one's readers (cgroup ids, which name the sandbox in
                // an event, are reused).
                discard_events(&fd);
                fd
            }
            _ => {
                let fd = sys::map_create(MapType::RingBuf, 0, 0, bytes, 0, "sbx_events")
                    .map_err(|e| kernel_err(&format!("creating a {bytes}-byte event ring buffer"), &e))?;
                put_inner(set, MAP_EVENTS_OF, index, &fd)?;
                fd
            }
        };
        let path = pin_dir.join(pin_name_map(MAP_EVENTS));
        let _ = fs::remove_file(&path);
        sys::obj_pin(ring.as_fd(), &path).map_err(|e| LoaderError::Pin {
            action: "pinning",
            path: path.clone(),
            detail: e.to_string(),
        })
    })();
    if let Err(e) = made {
        let _ = set.free_events(&[index]);
        return Err(e);
    }
    Ok(index)
}

/// Consumes whatever a reused ring buffer still holds.
fn discard_events(ring: &OwnedFd) {
    let Ok(dup) = ring.try_clone() else { return };
    let Ok(data) = aya::maps::MapData::from_fd(dup) else { return };
    if let Ok(mut r) = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)) {
        while r.next().is_some() {}
    }
}

/// Returns event index `index` to the pool; its ring stays for the next
/// sandbox.
fn remove_events(set: &ProgramSet, index: u32) {
    // An older contract's pool has another layout: its rings go with the
    // set (see [`remove_policy`]).
    if index == 0 || !set.layout_is_ours() {
        return;
    }
    if let Err(e) = set.free_events(&[index]) {
        log::warn!("returning event index {index} to the pool: {e}");
    }
}

/// The slot of cgroup `id`, if its storage exists (a program of the set is
/// or was linked to it and the cgroup still exists).
#[must_use]
pub fn read_slot(set: &ProgramSet, id: u64) -> Option<Slot> {
    let mut buf = [0u8; std::mem::size_of::<Slot>()];
    sys::map_lookup(set.map(MAP_SLOT), &id.to_ne_bytes(), &mut buf).ok()?;
    Some(sys::from_bytes(&buf))
}

/// Zeroes the slot of cgroup `id` if it has one (denies everything from
/// here); whether no slot names anything any more.
fn zero_slot(set: &ProgramSet, id: u64) -> bool {
    read_slot(set, id).is_none_or(|_| write_slot(set, id, &Slot::default()).is_ok())
}

/// Replaces the slot of cgroup `id` in one map update: the kernel swaps
/// the cell's buffer, so every hook of the sandbox moves at once.
fn write_slot(set: &ProgramSet, id: u64, slot: &Slot) -> Result<(), LoaderError> {
    sys::map_update(set.map(MAP_SLOT), &id.to_ne_bytes(), sys::bytes_of(slot), sys::UPDATE_ANY)
        .map_err(|e| map_err(MAP_SLOT, &e))
}

/// Per-CPU counters of cgroup `id`'s sandbox, summed; `Ok(None)` when its
/// cgroup storage is gone. A set of another build whose counters have
/// another size is an error (the lookup refuses a buffer of this build's
/// size rather than let the kernel write past it).
pub fn read_stats(set: &ProgramSet, id: u64) -> std::io::Result<Option<Stats>> {
    let (each, mut buf) = stats_buffer()?;
    match sys::map_lookup(set.map(MAP_STATS), &id.to_ne_bytes(), &mut buf) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut total: Stats = sys::from_bytes(&[]);
    for chunk in buf.chunks(each) {
        let s: Stats = sys::from_bytes(chunk);
        for (t, c) in total.counters.iter_mut().zip(s.counters) {
            *t += c;
        }
    }
    Ok(Some(total))
}

/// Zeroes every CPU's cell of cgroup `id`'s [`Stats`].
fn zero_stats(set: &ProgramSet, id: u64) -> Result<(), LoaderError> {
    let (_, zeroed) = stats_buffer().map_err(|e| map_err(MAP_STATS, &e))?;
    sys::map_update(set.map(MAP_STATS), &id.to_ne_bytes(), &zeroed, sys::UPDATE_ANY).map_err(|e| map_err(MAP_STATS, &e))
}

/// A zeroed buffer for one cell of [`MAP_STATS`] on every possible CPU, and
/// the bytes of each CPU's part.
fn stats_buffer() -> std::io::Result<(usize, Vec<u8>)> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    #[expect(clippy::cast_possible_truncation, reason = "a few hundred bytes")]
    let size = std::mem::size_of::<Stats>() as u32;
    let total = sys::value_len(sys::PERCPU_CGROUP_STORAGE, size, cpus);
    Ok((total / cpus, vec![0u8; total]))
}

fn slot_for(cg: &Cgroup, policy: u32, events: u32, config: &Config, compiled: &Compiled) -> Slot {
    let Config { flags, generation, events_per_sec, events_burst, proxy_addr, proxy_port, _pad } = *config;
    Slot {
        cgroup_id: cg.id,
        policy,
        flags,
        generation,
        events,
        events_per_sec,
        events_burst,
        proxy_addr,
        proxy_port,
        _pad: 0,
        nat64: compiled.nat64,
    }
}

/// Name of the empty directory in a sandbox's pin directory that names the
/// program set holding it (bpffs holds no regular files).
fn set_marker(set: &ProgramSet) -> String {
    format!("{}{}", progset::SET_PREFIX, set.id)
}

/// The program set id a sandbox's pins name, `None` for a sandbox of
/// contract 1 (its own programs and maps, pinned beside its links).
#[must_use]
pub fn holder(pin_dir: &Path) -> Option<String> {
    fs::read_dir(pin_dir)
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix(progset::SET_PREFIX).map(str::to_owned))
}

/// Whether `pin_dir` holds a sandbox of contract 1.
#[must_use]
pub fn is_legacy(pin_dir: &Path) -> bool {
    // Its config map; the event ring buffer's pin name is shared with
    // sandboxes of program sets, which pin their own ring there too.
    pin_dir.join(pin_name_map(sbx_common::MAP_CONFIG)).exists()
}

/// What holds a sandbox, as its pins and the kernel say.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Holder {
    /// Its own programs and maps (an sbx from before program sets).
    Legacy,
    /// A program set: its id, and the policy index the sandbox's slot names
    /// (`None` when the slot cannot be read: the cgroup is gone or the set
    /// is damaged).
    Set {
        /// The set's id.
        id: String,
        /// Whether it is this build's set.
        current: bool,
        /// The policy index in the slot (0: not written, denies all).
        policy: Option<u32>,
        /// The policy generation in the slot (what the sandbox's record
        /// must say, unless an update was cut short).
        generation: Option<u32>,
    },
    /// Neither: pins without a marker.
    Unknown,
}

/// When the kernel's slot carries another policy generation than the
/// sandbox's record (an `update` cut short after it switched the policy and
/// before it wrote the record): what to say.
#[must_use]
pub fn stale_record(holder: &Holder, record_generation: u32) -> Option<String> {
    match holder {
        Holder::Set { generation: Some(g), policy: Some(p), .. } if *p != 0 && *g != record_generation => {
            Some(format!(
            "the kernel enforces policy generation {g}, the record describes generation {record_generation} (an update \
             was cut short): run `sbx-user update` again to put a known policy in force"
        ))
        }
        _ => None,
    }
}

/// What holds the sandbox on cgroup `id`.
#[must_use]
pub fn holder_of(paths: &Paths, id: u64) -> Holder {
    let pin_dir = paths.pin_dir(id);
    if is_legacy(&pin_dir) {
        return Holder::Legacy;
    }
    let Some(set_id) = holder(&pin_dir) else {
        return Holder::Unknown;
    };
    let slot = ProgramSet::open_id(paths, &set_id).ok().and_then(|set| read_slot(&set, id));
    let policy = slot.map(|slot| if slot.cgroup_id == id { slot.policy } else { 0 });
    let generation = slot.filter(|s| s.cgroup_id == id).map(|s| s.generation);
    Holder::Set { current: set_id == progset::set_id(), id: set_id, policy, generation }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Legacy => write!(f, "its own programs (an older sbx; `sbx-user update` migrates it)"),
            Self::Unknown => write!(f, "unknown (pins without a program set marker)"),
            Self::Set { id, current, policy, .. } => {
                let which = if *current { "this build's" } else { "an older build's; `sbx-user update` migrates it" };
                match policy {
                    Some(0) => write!(f, "program set {id} ({which}), slot NOT WRITTEN: denies everything"),
                    Some(p) => write!(f, "program set {id} ({which}), policy slot {p}"),
                    None => write!(f, "program set {id} ({which}), slot unreadable"),
                }
            }
        }
    }
}

/// Opens the program set that holds the sandbox pinned in `pin_dir`.
pub fn open_holder(paths: &Paths, pin_dir: &Path) -> Result<Option<std::sync::Arc<ProgramSet>>, LoaderError> {
    let Some(id) = holder(pin_dir) else {
        return Ok(None);
    };
    ProgramSet::open_id(paths, &id).map(Some)
}

/// Links the set to `cg`, writes its policy and pins the links.
pub fn attach(cg: &Cgroup, compiled: &Compiled, opts: AttachOptions, paths: &Paths) -> Result<Attached, LoaderError> {
    ensure_bpffs(paths)?;
    let lock = progset::lock(paths)?;
    let set = ProgramSet::open_or_load(paths, &lock)?;
    let existing = existing(cg, paths)?;
    if let Some(detail) = &existing {
        if !opts.replace {
            return Err(LoaderError::AlreadyAttached { cgroup: cg.path.clone(), detail: detail.clone() });
        }
    }
    let pin_dir = paths.pin_dir(cg.id);
    if existing.is_some() && pin_dir.exists() {
        return replace(&set, cg, compiled, opts, paths);
    }
    if existing.is_some() {
        return Err(LoaderError::AlreadyAttached {
            cgroup: cg.path.clone(),
            detail: "unpinned sbx programs cannot be replaced; stop the `sbx-user run` that owns them".into(),
        });
    }
    // Claim the pin directory atomically: of two concurrent attaches to
    // one cgroup, exactly one gets it (they are also serialised by the
    // host lock; the claim keeps that true across sbx versions).
    match fs::create_dir(&pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(LoaderError::AlreadyAttached {
                cgroup: cg.path.clone(),
                detail: format!("pins in {} (another attach won)", pin_dir.display()),
            })
        }
        Err(e) => return Err(LoaderError::Pin { action: "creating", path: pin_dir.clone(), detail: e.to_string() }),
    }
    let mut policy = None;
    let mut events = 0;
    let result = (|| {
        fs::create_dir(pin_dir.join(set_marker(&set))).map_err(|e| LoaderError::Pin {
            action: "creating",
            path: pin_dir.join(set_marker(&set)),
            detail: e.to_string(),
        })?;
        let p = install_policy(&set, compiled)?;
        let index = p.index;
        policy = Some(p);
        if opts.events_bytes > 0 {
            events = install_events(&set, opts.events_bytes, &pin_dir)?;
        }
        link_and_pin(&set, cg, &slot_for(cg, index, events, &opts.config, compiled), &pin_dir, &[])
    })();
    if let Err(e) = result {
        // The cgroup's cell outlives the links (until the cgroup goes), so
        // it is zeroed first; then the links go. If neither could be done,
        // the policy and event indices stay taken (the slot still names
        // them, so `gc` does not free them either).
        let zeroed = zero_slot(&set, cg.id);
        let detached = remove_pins(&pin_dir).is_ok();
        if zeroed || detached {
            if let Some(p) = policy {
                remove_policy(&set, p.index);
            }
            remove_events(&set, events);
        } else {
            log::warn!("the failed attach's slot may still name its policy and event indices: they stay taken");
        }
        return Err(e);
    }
    let index = policy.map_or(0, |p| p.index);
    Ok(Attached {
        pin_dir,
        replaced: false,
        program_set: std::sync::Arc::clone(&set),
        policy: index,
        generation: opts.config.generation,
    })
}

/// Links every hook the slot needs to `cg` while its slot denies
/// everything, writes the slot (one update: the sandbox is enforcing from
/// here), then pins the links, replacing the link pins in `old` (which are
/// detached only after the new links hold).
fn link_and_pin(
    set: &ProgramSet,
    cg: &Cgroup,
    slot: &Slot,
    pin_dir: &Path,
    old: &[PathBuf],
) -> Result<(), LoaderError> {
    let redirect = slot.flags & sbx_common::FLAG_REDIRECT != 0;
    // A re-attached cgroup still has its old cells: zero them, so the new
    // links deny everything until the new slot is written, and no verdict
    // the egress hook remembers from the old sandbox (whose policy index
    // and generation the new one may have again) survives.
    if read_slot(set, cg.id).is_some() {
        write_slot(set, cg.id, &Slot::default())?;
        zero_stats(set, cg.id)?;
        // Absent unless the old sandbox connected; the programs make it anew.
        let _ = sys::map_delete(set.map(MAP_CONNECTS), &cg.id.to_ne_bytes());
    }
    let dir = cg.dir_fd()?;
    let mut links = Vec::with_capacity(HOOKS.len());
    for &(name, ty, hook) in hooks_for(redirect) {
        let link = attach_one(set, name, ty, &dir).map_err(|detail| LoaderError::Attach {
            hook,
            cgroup: cg.path.clone(),
            detail,
        })?;
        links.push((name, link));
    }
    write_slot(set, cg.id, slot)?;
    // Each new link is pinned under a name of its own, then moved over the
    // old pin of its hook in one rename: the old link loses its pin (its
    // last reference: the kernel detaches it) in the same step that gives
    // the new one its name. At every moment each hook is held by the old
    // link, the new one or both (both must allow); a pin that fails leaves
    // every old link in place.
    if old.is_empty() {
        // Nothing to take over: each link gets its name at once.
        for (name, link) in &links {
            let path = pin_dir.join(pin_name_link(name));
            sys::obj_pin(link.as_fd(), &path).map_err(|e| LoaderError::Pin {
                action: "pinning",
                path: path.clone(),
                detail: e.to_string(),
            })?;
        }
        return Ok(());
    }
    let mut pending: Vec<PathBuf> = Vec::with_capacity(links.len());
    for (name, link) in &links {
        let path = pin_dir.join(format!("pending_{}", pin_name_link(name)));
        let _ = fs::remove_file(&path);
        if let Err(e) = sys::obj_pin(link.as_fd(), &path) {
            for p in &pending {
                let _ = fs::remove_file(p);
            }
            return Err(LoaderError::Pin { action: "pinning", path, detail: e.to_string() });
        }
        pending.push(path);
    }
    for (k, ((name, _), from)) in links.iter().zip(&pending).enumerate() {
        let to = pin_dir.join(pin_name_link(name));
        // Held open across the rename, to detach it at once after (not
        // when the kernel gets to the last reference, which someone else
        // may also hold).
        let replaced = old.contains(&to).then(|| sys::obj_get(&to).ok()).flatten();
        if let Err(e) = fs::rename(from, &to) {
            // The hooks not renamed yet keep their old links.
            for p in &pending[k..] {
                let _ = fs::remove_file(p);
            }
            return Err(LoaderError::Pin { action: "renaming", path: from.clone(), detail: e.to_string() });
        }
        if let Some(fd) = replaced {
            let _ = sys::link_detach(fd.as_fd());
        }
    }
    // Old hooks no new link took over (`sock_ops` of a sandbox that no
    // longer redirects).
    for path in old {
        if !links.iter().any(|(name, _)| pin_dir.join(pin_name_link(name)) == *path) {
            let _ = sys::obj_get(path).and_then(|fd| sys::link_detach(fd.as_fd()));
            let _ = fs::remove_file(path);
        }
    }
    // The link fds close here: the pins hold the links.
    Ok(())
}

/// Switches an attached sandbox to a new policy: fresh maps at a new
/// policy index, then one slot write, then the old maps go once no program
/// can still be reading them. A sandbox held by another program set (an
/// older sbx) is migrated to this build's set instead.
fn replace(
    set: &std::sync::Arc<ProgramSet>,
    cg: &Cgroup,
    compiled: &Compiled,
    opts: AttachOptions,
    paths: &Paths,
) -> Result<Attached, LoaderError> {
    let pin_dir = paths.pin_dir(cg.id);
    let redirect = opts.config.flags & sbx_common::FLAG_REDIRECT != 0;
    if holder(&pin_dir).as_deref() != Some(set.id.as_str()) {
        return migrate(set, cg, compiled, opts, paths);
    }
    let old = read_slot(set, cg.id).ok_or_else(|| LoaderError::NotAttached(cg.path.clone()))?;
    // The generation comes from the kernel's slot, not only from the
    // record: an update killed after its slot write and before its record
    // would otherwise give the next one a generation already used, and a
    // verdict the hooks keep for (policy index, generation) could be taken
    // for the new policy's once the index is reused.
    let mut opts = opts;
    opts.config.generation = opts.config.generation.max(old.generation.wrapping_add(1));
    let new = install_policy(set, compiled)?;
    // The optional sock_ops hook comes and goes with redirect mode; it
    // decides nothing, so adding or removing it is not part of the switch.
    let sockops = HOOKS.iter().find(|h| h.1 == AttachType::SockOps).expect("listed");
    let sockops_pin = pin_dir.join(pin_name_link(sockops.0));
    let hooked = (|| {
        match (redirect, sockops_pin.exists()) {
            (true, false) => {
                let dir = cg.dir_fd()?;
                let link = attach_one(set, sockops.0, sockops.1, &dir).map_err(|detail| LoaderError::Attach {
                    hook: sockops.2,
                    cgroup: cg.path.clone(),
                    detail,
                })?;
                sys::obj_pin(link.as_fd(), &sockops_pin).map_err(|e| LoaderError::Pin {
                    action: "pinning",
                    path: sockops_pin.clone(),
                    detail: e.to_string(),
                })?;
            }
            (false, true) => {
                let _ = sys::obj_get(&sockops_pin).and_then(|fd| sys::link_detach(fd.as_fd()));
                let _ = fs::remove_file(&sockops_pin);
            }
            _ => {}
        }
        write_slot(set, cg.id, &slot_for(cg, new.index, old.events, &opts.config, compiled))
    })();
    if let Err(e) = hooked {
        remove_policy(set, new.index);
        return Err(e);
    }
    if old.policy != 0 {
        remove_policy(set, old.policy);
    }
    Ok(Attached::replaced(set, pin_dir, new.index, opts.config.generation))
}

/// Moves a sandbox held by another program set (contract 1's per-sandbox
/// programs, or an older set) to `set` with no moment of no enforcement:
/// the new links are added beside the old ones (both must allow; until the
/// new slot is written the new ones deny everything), then the old links
/// are detached and the old maps unpinned.
fn migrate(
    set: &std::sync::Arc<ProgramSet>,
    cg: &Cgroup,
    compiled: &Compiled,
    opts: AttachOptions,
    paths: &Paths,
) -> Result<Attached, LoaderError> {
    let pin_dir = paths.pin_dir(cg.id);
    let old_set = open_holder(paths, &pin_dir).ok().flatten();
    let old_slot = old_set.as_ref().and_then(|s| read_slot(s, cg.id));
    let old_links: Vec<PathBuf> =
        PROGRAMS.iter().map(|p| pin_dir.join(pin_name_link(p))).filter(|p| p.exists()).collect();
    let new = install_policy(set, compiled)?;
    let mut events = 0;
    let result = (|| {
        if opts.events_bytes > 0 {
            // Pinned over the old ring buffer's name; readers reopen it.
            events = install_events(set, opts.events_bytes, &pin_dir)?;
        }
        link_and_pin(set, cg, &slot_for(cg, new.index, events, &opts.config, compiled), &pin_dir, &old_links)
    })();
    if let Err(e) = result {
        // The old links still hold wherever the new ones were not pinned;
        // new links that were pinned deny everything from here. The new
        // policy goes only once the slot no longer names it.
        if zero_slot(set, cg.id) {
            remove_policy(set, new.index);
            remove_events(set, events);
        } else {
            log::warn!(
                "the failed migration's slot may still name policy {} and its events: they stay taken",
                new.index
            );
        }
        return Err(e);
    }
    for m in LEGACY_MAPS {
        let path = pin_dir.join(pin_name_map(m));
        if m != MAP_EVENTS || events == 0 {
            let _ = fs::remove_file(&path);
        }
    }
    if let (Some(old), Some(slot)) = (&old_set, old_slot) {
        let _ = write_slot(old, cg.id, &Slot::default());
        remove_policy(old, slot.policy);
        remove_events(old, slot.events);
        let _ = fs::remove_dir(pin_dir.join(set_marker(old)));
    }
    let _ = fs::create_dir(pin_dir.join(set_marker(set)));
    log::info!("migrated {} to program set {}", cg.path.display(), set.id);
    Ok(Attached::replaced(set, pin_dir, new.index, opts.config.generation))
}

/// Detaches every pinned link in `pin_dir` at once (not when the last
/// reference happens to go away) and removes the directory.
fn remove_pins(pin_dir: &Path) -> Result<(), LoaderError> {
    remove_pins_as(pin_dir, true)
}

/// As [`remove_pins`]; with `detach_links` false, the links are only
/// unpinned, and the kernel releases them when their last reference goes
/// (for a cgroup already removed, which nothing can enter any more).
fn remove_pins_as(pin_dir: &Path, detach_links: bool) -> Result<(), LoaderError> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LoaderError::Pin { action: "listing", path: pin_dir.to_owned(), detail: e.to_string() }),
    };
    let mut first_err = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(progset::SET_PREFIX) {
            let _ = fs::remove_dir(&path);
            continue;
        }
        let file = entry.file_name();
        let file = file.to_string_lossy();
        // `pending_link_*`: a link pinned by an attach that failed before
        // it could take its name.
        let is_link = detach_links && (file.starts_with("link_") || file.starts_with("pending_link_"));
        if is_link {
            match sys::obj_get(&path).and_then(|fd| sys::link_detach(fd.as_fd())) {
                Ok(()) => {}
                Err(e) => {
                    first_err.get_or_insert(LoaderError::Pin {
                        action: "detaching",
                        path: path.clone(),
                        detail: e.to_string(),
                    });
                }
            }
        }
        if let Err(e) = fs::remove_file(&path) {
            first_err.get_or_insert(LoaderError::Pin {
                action: "unpinning",
                path: path.clone(),
                detail: e.to_string(),
            });
        }
    }
    if let Err(e) = fs::remove_dir(pin_dir) {
        first_err.get_or_insert(LoaderError::Pin {
            action: "removing",
            path: pin_dir.to_owned(),
            detail: e.to_string(),
        });
    }
    first_err.map_or(Ok(()), Err)
}

/// Detaches sbx from the cgroup with id `cgroup_id` and removes its pins.
/// The slot is zeroed first, so the sandbox denies everything while its
/// links go, and its policy and event indices return to the pool.
pub fn detach(cgroup_id: u64, cgroup_path: &Path, paths: &Paths) -> Result<(), LoaderError> {
    detach_removing(cgroup_id, cgroup_path, paths, || false)
}

/// As [`detach`], for a sandbox whose cgroup is empty and goes with it
/// (`run`'s teardown): after the slot is zeroed, `remove_cgroup` removes
/// the cgroup, and if it could, the links are only unpinned, the kernel
/// releasing them off this process's path instead of nine detaches one by
/// one. If it could not, they are detached as by [`detach`].
pub fn detach_removing(
    cgroup_id: u64,
    cgroup_path: &Path,
    paths: &Paths,
    remove_cgroup: impl FnOnce() -> bool,
) -> Result<(), LoaderError> {
    let pin_dir = paths.pin_dir(cgroup_id);
    if !pin_dir.exists() {
        return Err(LoaderError::NotAttached(cgroup_path.to_owned()));
    }
    let _lock = progset::lock(paths)?;
    let set = open_holder(paths, &pin_dir)?;
    let slot = set.as_ref().and_then(|s| read_slot(s, cgroup_id));
    if let (Some(set), Some(_)) = (&set, slot) {
        write_slot(set, cgroup_id, &Slot::default())?;
    }
    let removed = remove_pins_as(&pin_dir, !remove_cgroup());
    if let (Some(set), Some(slot)) = (&set, slot) {
        if slot.policy != 0 {
            remove_policy(set, slot.policy);
        }
        remove_events(set, slot.events);
    }
    removed
}

/// Ids of the sandboxes that have a pin directory.
#[must_use]
pub fn pinned_sandboxes(paths: &Paths) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(paths.pin_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use sbx_common::{PortSegment, VERDICT_ALLOW, VERDICT_DENY};

    use super::*;

    fn table(len: u32, tcp: u8, udp: u8) -> PortTable {
        let mut t = PortTable::uniform(tcp, udp);
        t.len = len;
        for (i, s) in t.segments.iter_mut().take(len as usize).enumerate() {
            let lo = u16::try_from(i * 10).expect("small");
            *s = PortSegment { lo, hi: lo + 1, tcp: VERDICT_ALLOW, udp: VERDICT_DENY, _pad: [0; 2] };
        }
        t
    }

    #[test]
    fn port_tables_are_laid_out_one_after_another() {
        let tables = [table(3, VERDICT_DENY, VERDICT_DENY), table(0, VERDICT_ALLOW, VERDICT_DENY), table(2, 0, 1)];
        let (offsets, total) = segment_layout(&tables).expect("small");
        assert_eq!(offsets, [0, 3, 3], "a uniform table takes no range");
        assert_eq!(total, 5);
        assert_eq!(defaults_of(&tables[0]), 0);
        assert_eq!(defaults_of(&tables[1]), DEFAULT_TCP);
        assert_eq!(defaults_of(&tables[2]), DEFAULT_UDP);
    }

    #[test]
    fn a_policy_with_more_ranges_than_a_sandbox_may_hold_is_refused() {
        let full = table(u32::try_from(sbx_common::MAX_SEGMENTS).expect("32"), 0, 0);
        let n = sbx_common::MAX_POLICY_SEGMENTS as usize / sbx_common::MAX_SEGMENTS;
        let fits = vec![full; n];
        assert_eq!(segment_layout(&fits).expect("exactly at the limit").1, sbx_common::MAX_POLICY_SEGMENTS);
        let over = vec![full; n + 1];
        let e = segment_layout(&over).expect_err("one table too many");
        assert!(e.to_string().contains(&sbx_common::MAX_POLICY_SEGMENTS.to_string()), "names the limit: {e}");
    }
}
