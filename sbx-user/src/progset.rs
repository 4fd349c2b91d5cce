//! The host's program set: the sbx programs loaded (verified) once per host
//! and build, pinned under `<bpffs>/sbx/set-<id>/`, with the host-wide maps
//! they read. Every sandbox links these same programs to its cgroup and
//! gets a [`Slot`](sbx_common::Slot) naming its policy.
//!
//! The set's id is a hash of the eBPF object and the contract version, not
//! the crate version: two builds of one version never share programs, and
//! a loader never drives programs of another contract. Loading happens
//! under the host lock (an `flock` on `<bpffs>/sbx`), which also serialises
//! the allocation of policy and event indices between concurrent CLIs.

use std::{
    collections::HashMap,
    fs,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::{programs::Program, EbpfLoader};
use sbx_common::{
    PolicyMeta, Pool, CONTRACT_VERSION, EVENT_SLOTS, HOST_RULES, MAPS, MAP_POOL, POLICY_SLOTS, QUARANTINE_POLICIES,
    QUARANTINE_RULES, SEGMENT_BLOCKS,
};

use crate::{
    fnv,
    loader::{LoaderError, HOOKS},
    state::Paths,
    sys,
};

/// The compiled eBPF object, built by `build.rs`.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sbx"));

/// Prefix of program set directories in `<bpffs>/sbx`.
pub const SET_PREFIX: &str = "set-";

/// This build's program set id: FNV-1a 64 of the object, then of the
/// contract version, in hex. The object's part is hashed by `build.rs`.
#[must_use]
pub fn set_id() -> String {
    format!("{:016x}", fnv::extend(OBJECT_FNV, &u64::from(CONTRACT_VERSION).to_le_bytes()))
}

/// FNV-1a 64 of [`OBJECT`], computed by `build.rs`.
const OBJECT_FNV: u64 = parse_hex(env!("SBX_OBJECT_FNV"));

/// A hex `u64`, at compile time.
const fn parse_hex(text: &str) -> u64 {
    let digits = text.as_bytes();
    let mut value = 0u64;
    let mut at = 0;
    while at < digits.len() {
        let digit = match digits[at] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("SBX_OBJECT_FNV is not lowercase hex"),
        };
        value = (value << 4) | digit as u64;
        at += 1;
    }
    value
}

/// The host lock, held while it lives.
pub struct HostLock {
    _dir: fs::File,
}

/// Takes the host lock on `<bpffs>/sbx` (creating it), waiting for another
/// sbx process that holds it.
pub fn lock(paths: &Paths) -> Result<HostLock, LoaderError> {
    let root = paths.pin_root();
    let err = |action, e: std::io::Error| LoaderError::Pin { action, path: root.clone(), detail: e.to_string() };
    fs::create_dir_all(&root).map_err(|e| err("creating", e))?;
    let dir = fs::File::open(&root).map_err(|e| err("opening", e))?;
    loop {
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(HostLock { _dir: dir });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err("locking", e));
        }
    }
}

/// The loaded, pinned program set of this build.
#[derive(Debug)]
pub struct ProgramSet {
    /// Its directory in bpffs.
    pub dir: PathBuf,
    /// Its id (see [`set_id`]).
    pub id: String,
    /// Opened when first used: `update`, `detach` and `status` need none.
    progs: [std::sync::OnceLock<OwnedFd>; 10],
    prog_ids: std::sync::OnceLock<Vec<u32>>,
    ours: std::sync::OnceLock<bool>,
    maps: HashMap<&'static str, OwnedFd>,
}

fn prog_pin(name: &str) -> String {
    format!("prog_{name}")
}

impl ProgramSet {
    /// Opens this build's set, loading and pinning it first if the host
    /// does not have it. The caller holds the host lock.
    pub fn open_or_load(paths: &Paths, _lock: &HostLock) -> Result<Arc<Self>, LoaderError> {
        let id = set_id();
        let dir = paths.pin_root().join(format!("{SET_PREFIX}{id}"));
        if !dir.exists() {
            let started = Instant::now();
            load_and_pin(&dir)?;
            log::info!(
                "loaded the sbx program set {id} on this host ({} programs verified in {} ms); later sandboxes reuse it",
                HOOKS.len(),
                started.elapsed().as_millis()
            );
        }
        let set = Self::open(&dir, id)?;
        // Just loaded, or loaded by a build of the same programs without
        // the anchor (and not given up on: see `NO_ANCHOR`).
        if !set.dir.join(anchor_pin(HOOKS[0].0)).exists() && !set.dir.join(NO_ANCHOR).exists() {
            set.anchor();
        }
        Ok(set)
    }

    /// Opens the pinned set with id `id` (another build's, for a sandbox it
    /// holds).
    pub fn open_id(paths: &Paths, id: &str) -> Result<Arc<Self>, LoaderError> {
        Self::open(&paths.pin_root().join(format!("{SET_PREFIX}{id}")), id.to_owned())
    }

    /// Opens the pinned set in `dir`, or hands out the one this process
    /// opened there before if the directory is still the same one (device
    /// and inode: a set removed by `gc` and loaded again is a new
    /// directory). Opening costs one `BPF_OBJ_GET` per program and map,
    /// which the agent would otherwise pay on every request. A set that
    /// `gc` unpinned stays in the kernel while this process holds it, until
    /// its next open here sees the change.
    fn open(dir: &Path, id: String) -> Result<Arc<Self>, LoaderError> {
        /// Sets opened so far, by the device and inode of their directory.
        type Opened = Vec<((u64, u64), Arc<ProgramSet>)>;
        static OPENED: Mutex<Opened> = Mutex::new(Vec::new());
        let stat = |e: std::io::Error| LoaderError::Pin {
            action: "opening the pinned program set",
            path: dir.to_owned(),
            detail: e.to_string(),
        };
        let meta = fs::metadata(dir).map_err(stat)?;
        let key = (meta.dev(), meta.ino());
        let mut opened = OPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, set)) = opened.iter().find(|(k, s)| *k == key && s.dir == dir) {
            return Ok(Arc::clone(set));
        }
        let get = |name: String| {
            let path = dir.join(&name);
            sys::obj_get(&path).map_err(|e| LoaderError::Pin {
                action: "opening the pinned program set's",
                path,
                detail: e.to_string(),
            })
        };
        // A set of this contract has every map of it; a set of an older
        // contract (no host rule trie) has the ones it has, and is only
        // read through those (its slots and counters), and written only to
        // zero a slot.
        let mut maps = HashMap::new();
        let mut missing = None;
        for m in MAPS {
            match get(crate::loader::pin_name_map(m)) {
                Ok(fd) => {
                    maps.insert(m, fd);
                }
                Err(e) => {
                    missing.get_or_insert(e);
                }
            }
        }
        if let Some(e) = missing {
            if id == set_id() || maps.contains_key(sbx_common::MAP_RULES) {
                return Err(e);
            }
        }
        let set = Arc::new(Self {
            dir: dir.to_owned(),
            id,
            progs: Default::default(),
            prog_ids: std::sync::OnceLock::new(),
            ours: std::sync::OnceLock::new(),
            maps,
        });
        opened.retain(|(_, s)| s.dir != dir);
        opened.push((key, Arc::clone(&set)));
        Ok(set)
    }

    /// Links every program to an empty cgroup of its own
    /// (`<cgroup2>/sbx/anchor-<id>`), pinned in the set's directory as
    /// `anchor_link_*`. The kernel switches each cgroup hook on (a static
    /// key, patched into the kernel text on every CPU with an IPI to each)
    /// when its first program on the host is attached and off when its last
    /// goes: without the anchor, a host's only sandbox would flip nine keys
    /// when it comes and nine when it goes (0.7-1.7 ms of `run`, and a
    /// stall of every CPU). A process moved into the anchor is denied
    /// everything (its slot is never written). Best effort: without the
    /// anchor, sandboxes only start and stop more slowly. `gc` removes it
    /// with the set.
    fn anchor(&self) {
        let made = (|| -> Result<(), String> {
            let root = crate::cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
            let cg = anchor_cgroup(&root, &self.id);
            fs::create_dir_all(&cg).map_err(|e| format!("creating {}: {e}", cg.display()))?;
            let fd = fs::File::open(&cg).map_err(|e| format!("opening {}: {e}", cg.display()))?;
            for (name, ty, _) in &HOOKS {
                let prog = self.prog(name).map_err(|e| e.to_string())?;
                let link = sys::link_create(prog, fd.as_fd(), *ty).map_err(|e| format!("linking {name}: {e}"))?;
                let path = self.dir.join(anchor_pin(name));
                sys::obj_pin(link.as_fd(), &path).map_err(|e| format!("pinning {}: {e}", path.display()))?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => log::debug!("the cgroup hooks stay switched on while program set {} is loaded", self.id),
            Err(e) => {
                // No half anchor; and not tried again by every command.
                for (name, _, _) in &HOOKS {
                    let _ = fs::remove_file(self.dir.join(anchor_pin(name)));
                }
                let _ = fs::create_dir(self.dir.join(NO_ANCHOR));
                log::info!(
                    "no anchor for program set {} ({e}): a host's first and last sandbox switch the cgroup hooks on and off",
                    self.id
                );
            }
        }
    }

    /// The program for hook `name` (a [`HOOKS`] program name), opened
    /// from its pin when first asked for.
    pub fn prog(&self, name: &str) -> Result<BorrowedFd<'_>, LoaderError> {
        let i = HOOKS.iter().position(|h| h.0 == name).expect("a program of HOOKS");
        if let Some(fd) = self.progs[i].get() {
            return Ok(fd.as_fd());
        }
        let path = self.dir.join(prog_pin(name));
        let fd = sys::obj_get(&path).map_err(|e| LoaderError::Pin {
            action: "opening the pinned program set's",
            path,
            detail: e.to_string(),
        })?;
        Ok(self.progs[i].get_or_init(|| fd).as_fd())
    }

    /// A map of the set (a name from [`MAPS`]; see [`ProgramSet::has_map`]
    /// for a set of another build).
    #[must_use]
    pub fn map(&self, name: &str) -> BorrowedFd<'_> {
        self.maps.get(name).expect("a map of MAPS").as_fd()
    }

    /// Whether the set has map `name` (a set of an older contract may not).
    #[must_use]
    pub fn has_map(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    /// Whether the set's policy maps and pool have this build's layout, so
    /// that this build may free its policies (by quarantine) and event
    /// rings: this build's set, or another build's whose host trie and
    /// pool are as this build's. Any other set is only read, its slots
    /// zeroed, and it is freed whole by `gc` once unused.
    #[must_use]
    pub fn layout_is_ours(&self) -> bool {
        *self.ours.get_or_init(|| {
            self.id == set_id()
                || (self.has_map(sbx_common::MAP_RULES)
                    && sys::map_value_size(self.map(MAP_POOL)).is_ok_and(|n| n as usize == std::mem::size_of::<Pool>()))
        })
    }

    /// Kernel ids of the set's programs, in [`HOOKS`] order.
    #[must_use]
    pub fn prog_ids(&self) -> Vec<u32> {
        self.prog_ids
            .get_or_init(|| {
                HOOKS.iter().map(|h| self.prog(h.0).ok().and_then(|p| sys::prog_id(p).ok()).unwrap_or(0)).collect()
            })
            .clone()
    }

    fn pool(&self) -> Result<Pool, LoaderError> {
        let mut buf = vec![0u8; std::mem::size_of::<Pool>()];
        sys::map_lookup(self.map(MAP_POOL), &0u32.to_ne_bytes(), &mut buf).map_err(|e| map_err(MAP_POOL, &e))?;
        Ok(sys::from_bytes(&buf))
    }

    fn set_pool(&self, pool: &Pool) -> Result<(), LoaderError> {
        sys::map_update(self.map(MAP_POOL), &0u32.to_ne_bytes(), sys::bytes_of(pool), sys::UPDATE_ANY)
            .map_err(|e| map_err(MAP_POOL, &e))
    }

    /// Takes a free policy index (never 0) and a run of `blocks` free
    /// segment blocks (its first block; 0 when `blocks` is 0), and counts
    /// `rules` entries against the host's. When nothing free is left,
    /// `end` ends the quarantine (see [`Pool`]) and the allocation is tried
    /// once more. The caller holds the host lock.
    pub fn alloc_policy(
        &self,
        blocks: u32,
        rules: u32,
        end: &dyn Fn() -> Result<bool, LoaderError>,
    ) -> Result<(u32, u32), LoaderError> {
        let mut waited = false;
        loop {
            let mut pool = self.pool()?;
            let full = if pool.rules + u64::from(rules) > u64::from(HOST_RULES) {
                LoaderError::Full {
                    what: "policy entries of the host",
                    limit: HOST_RULES,
                    hint: "every sandbox's entries share the host's trie; detach sandboxes that are no longer needed, or run `sbx-user gc`",
                }
            } else if let Some(index) = take_bit(&mut pool.policies) {
                let first = if blocks == 0 { Some(0) } else { take_run(&mut pool.blocks, blocks) };
                if let Some(first) = first {
                    pool.rules += u64::from(rules);
                    self.set_pool(&pool)?;
                    return Ok((index, first));
                }
                LoaderError::Full {
                    what: "port-range blocks of the host",
                    limit: SEGMENT_BLOCKS,
                    hint: "no run of free blocks is long enough for this policy's port ranges; detach sandboxes that are no longer needed",
                }
            } else {
                LoaderError::Full {
                    what: "policy slots",
                    limit: POLICY_SLOTS - 1,
                    hint: "each sandbox holds one (two during an update); detach sandboxes that are no longer needed",
                }
            };
            if waited || !end()? {
                return Err(full);
            }
            waited = true;
        }
    }

    /// The quarantined policy indices, and whether any block is
    /// quarantined.
    pub fn quarantined(&self) -> Result<(Vec<u32>, bool), LoaderError> {
        let pool = self.pool()?;
        let blocks = pool.quarantined_blocks.iter().any(|&w| w != 0);
        Ok((bits(&pool.quarantined_policies), blocks))
    }

    /// Ends the quarantine after a grace period: every quarantined block
    /// is free again, and so is each index of `cleared` (its entries
    /// removed), with its count of entries. The caller holds the lock.
    pub fn end_quarantine(&self, cleared: &[(u32, u32)]) -> Result<(), LoaderError> {
        let mut pool = self.pool()?;
        finish_quarantine(&mut pool, cleared);
        self.set_pool(&pool)
    }

    /// Waits for an RCU grace period: the kernel follows a successful write
    /// to an outer map of maps with `synchronize_rcu()` before it returns
    /// (whatever the number of CPUs, preemptible RCU and `nohz_full`
    /// included), and every program of the cgroup hooks runs inside an RCU
    /// read-side section. The write puts a one-page ring at index 0 of the
    /// event rings' outer array, which no slot names (0 means the host
    /// stream).
    pub(crate) fn grace_period(&self) -> Result<(), LoaderError> {
        let err = |what: &str, e: &std::io::Error| LoaderError::Kernel {
            what: format!("waiting for an RCU grace period before reusing freed policy indices ({what})"),
            detail: e.to_string(),
        };
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let ring = sys::map_create(sys::MapType::RingBuf, 0, 0, page, 0, "sbx_grace")
            .map_err(|e| err("creating a ring buffer", &e))?;
        let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&ring)).expect("fds are non-negative");
        sys::map_update(self.map(sbx_common::MAP_EVENTS_OF), &0u32.to_ne_bytes(), &fd.to_ne_bytes(), sys::UPDATE_ANY)
            .map_err(|e| err("writing the event rings' outer array", &e))
    }

    /// What policy index `index` holds.
    pub fn policy_meta(&self, index: u32) -> Result<PolicyMeta, LoaderError> {
        let mut buf = [0u8; std::mem::size_of::<PolicyMeta>()];
        sys::map_lookup(self.map(sbx_common::MAP_POLICIES), &index.to_ne_bytes(), &mut buf)
            .map_err(|e| map_err(sbx_common::MAP_POLICIES, &e))?;
        Ok(sys::from_bytes(&buf))
    }

    /// Writes what policy index `index` holds.
    pub fn set_policy_meta(&self, index: u32, meta: &PolicyMeta) -> Result<(), LoaderError> {
        sys::map_update(self.map(sbx_common::MAP_POLICIES), &index.to_ne_bytes(), sys::bytes_of(meta), sys::UPDATE_ANY)
            .map_err(|e| map_err(sbx_common::MAP_POLICIES, &e))
    }

    /// Counts the segment blocks and rule entries of the pool again from
    /// what each policy index in use holds (quarantined blocks stay
    /// taken): what an interrupted free left counted is given back.
    /// Returns whether the pool changed. The caller holds the lock.
    pub fn recount(&self) -> Result<bool, LoaderError> {
        let mut pool = self.pool()?;
        let mut blocks = pool.quarantined_blocks;
        let (mut rules, mut quarantined) = (0u64, 0u64);
        for i in bits(&pool.policies) {
            let meta = self.policy_meta(i)?;
            rules += u64::from(meta.entries);
            if has_bit(&pool.quarantined_policies, i) {
                quarantined += u64::from(meta.entries);
                continue;
            }
            for b in meta_blocks(&meta) {
                set_bit(&mut blocks, b);
            }
        }
        if blocks == pool.blocks && rules == pool.rules && quarantined == pool.quarantined_rules {
            return Ok(false);
        }
        log::info!(
            "recounted the host's policy pool: {} rule entries (counted {}), {} port-range blocks (counted {})",
            rules,
            pool.rules,
            blocks.iter().map(|w| w.count_ones()).sum::<u32>(),
            pool.blocks.iter().map(|w| w.count_ones()).sum::<u32>()
        );
        pool.blocks = blocks;
        pool.rules = rules;
        pool.quarantined_rules = quarantined;
        self.set_pool(&pool)?;
        Ok(true)
    }

    /// Quarantines policy `index` and the blocks `meta` names (see
    /// [`Pool`]); its entries stay counted until they are removed. Returns
    /// whether the quarantine is due to end. The caller holds the lock.
    pub fn release_policy(&self, index: u32, meta: &PolicyMeta) -> Result<bool, LoaderError> {
        let mut pool = self.pool()?;
        if index != 0 {
            set_bit(&mut pool.quarantined_policies, index);
        }
        for b in meta_blocks(meta) {
            set_bit(&mut pool.quarantined_blocks, b);
        }
        pool.quarantined_rules += u64::from(meta.entries);
        self.set_pool(&pool)?;
        let held: u32 = pool.quarantined_policies.iter().map(|w| w.count_ones()).sum();
        Ok(held >= QUARANTINE_POLICIES || pool.quarantined_rules >= QUARANTINE_RULES)
    }

    /// Takes a free event ring index (never 0). The caller holds the lock.
    pub fn alloc_events(&self) -> Result<u32, LoaderError> {
        let mut pool = self.pool()?;
        let i = take_bit(&mut pool.events).ok_or(LoaderError::Full {
            what: "per-sandbox event buffers",
            limit: EVENT_SLOTS - 1,
            hint: "attach further sandboxes with --event-buffer 0 (the host event stream)",
        })?;
        self.set_pool(&pool)?;
        Ok(i)
    }

    /// The indices in use in the pool whose flag in `policies`/`events` is
    /// false (nothing names them). Index 0 is never in use.
    pub fn unreferenced(&self, policies: &[bool], events: &[bool]) -> Result<(Vec<u32>, Vec<u32>), LoaderError> {
        let mut pool = self.pool()?;
        // A quarantined policy is freed already, only not yet given out.
        for (w, q) in pool.policies.iter_mut().zip(pool.quarantined_policies) {
            *w &= !q;
        }
        let stale = |words: &[u64], named: &[bool]| -> Vec<u32> {
            (1..u32::try_from(words.len() * 64).expect("small"))
                .filter(|&i| has_bit(words, i) && !named.get(i as usize).copied().unwrap_or(false))
                .collect()
        };
        Ok((stale(&pool.policies, policies), stale(&pool.events, events)))
    }

    /// Returns event ring indices to the pool (policy indices go through
    /// [`ProgramSet::release_policy`], which quarantines them). The caller
    /// holds the host lock.
    pub fn free_events(&self, events: &[u32]) -> Result<(), LoaderError> {
        let mut pool = self.pool()?;
        for &i in events.iter().filter(|&&i| i != 0) {
            clear_bit(&mut pool.events, i);
        }
        self.set_pool(&pool)
    }
}

/// Sets and returns the lowest clear bit above 0.
fn take_bit(words: &mut [u64]) -> Option<u32> {
    for (w, word) in words.iter_mut().enumerate() {
        let free = !*word & if w == 0 { !1 } else { !0 };
        if free != 0 {
            let bit = free.trailing_zeros();
            *word |= 1 << bit;
            return u32::try_from(w * 64).ok().map(|base| base + bit);
        }
    }
    None
}

/// Sets the first run of `n` clear bits (lowest first) and returns its
/// first bit.
fn take_run(words: &mut [u64], n: u32) -> Option<u32> {
    let bits = u32::try_from(words.len() * 64).ok()?;
    let (mut start, mut len) = (0, 0);
    for i in 0..bits {
        if has_bit(words, i) {
            (start, len) = (i + 1, 0);
            continue;
        }
        len += 1;
        if len == n {
            for b in start..start + n {
                set_bit(words, b);
            }
            return Some(start);
        }
    }
    None
}

/// The blocks of [`sbx_common::MAP_SEGMENTS`] a policy owns.
fn meta_blocks(meta: &PolicyMeta) -> std::ops::Range<u32> {
    meta.first_block..meta.first_block.saturating_add(meta.blocks).min(SEGMENT_BLOCKS)
}

fn has_bit(words: &[u64], i: u32) -> bool {
    words.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(words: &mut [u64], i: u32) {
    if let Some(w) = words.get_mut(i as usize / 64) {
        *w |= 1 << (i % 64);
    }
}

/// The set bits of `words`, lowest first.
fn bits(words: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            let bit = rest.trailing_zeros();
            out.push(u32::try_from(w * 64).expect("small") + bit);
            rest &= rest - 1;
        }
    }
    out
}

/// After a grace period: frees every quarantined block, and each index of
/// `cleared` with its entries.
fn finish_quarantine(pool: &mut Pool, cleared: &[(u32, u32)]) {
    for (w, q) in pool.blocks.iter_mut().zip(pool.quarantined_blocks.iter_mut()) {
        *w &= !*q;
        *q = 0;
    }
    for &(i, entries) in cleared {
        if !has_bit(&pool.quarantined_policies, i) {
            continue;
        }
        clear_bit(&mut pool.quarantined_policies, i);
        clear_bit(&mut pool.policies, i);
        pool.rules = pool.rules.saturating_sub(u64::from(entries));
        pool.quarantined_rules = pool.quarantined_rules.saturating_sub(u64::from(entries));
    }
}

fn clear_bit(words: &mut [u64], i: u32) {
    if let Some(w) = words.get_mut(i as usize / 64) {
        *w &= !(1 << (i % 64));
    }
}

pub(crate) fn map_err(map: &'static str, e: &std::io::Error) -> LoaderError {
    LoaderError::Kernel { what: format!("map {map}"), detail: e.to_string() }
}

/// Loads the object, verifies every program and pins programs and maps
/// into `dir`, atomically: everything goes to a temporary directory that
/// is renamed into place at the end.
fn load_and_pin(dir: &Path) -> Result<(), LoaderError> {
    let mut ebpf = EbpfLoader::new()
        // The programs use no CO-RE relocations: parsing the kernel's BTF
        // (megabytes) would only cost time.
        .btf(None)
        .load(OBJECT)
        .map_err(LoaderError::Load)?;
    for (name, _, _) in HOOKS {
        let loaded = match ebpf.program_mut(name).expect("object defines every program") {
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::SockOps(p) => p.load(),
            other => unreachable!("unexpected program type {:?}", other.prog_type()),
        };
        loaded.map_err(|e| LoaderError::Program { program: name, detail: crate::loader::program_error(&e) })?;
    }
    // bpffs refuses names with a dot in them.
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("set");
    let tmp = dir.with_file_name(format!("tmp-{name}-{}", std::process::id()));
    let pin_err = |path: &Path, detail: String| LoaderError::Pin { action: "pinning", path: path.to_owned(), detail };
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| pin_err(&tmp, e.to_string()))?;
    let pin_all = || -> Result<(), LoaderError> {
        for (name, _, _) in HOOKS {
            let path = tmp.join(prog_pin(name));
            let fd = ebpf.program(name).expect("defined").fd().map_err(|e| pin_err(&path, e.to_string()))?;
            sys::obj_pin(fd.as_fd(), &path).map_err(|e| pin_err(&path, e.to_string()))?;
        }
        for map in MAPS.iter().chain([&sbx_common::MAP_AYA_LOGS]) {
            let path = tmp.join(crate::loader::pin_name_map(map));
            ebpf.map(map).expect("defined").pin(&path).map_err(|e| pin_err(&path, e.to_string()))?;
        }
        fs::rename(&tmp, dir).map_err(|e| pin_err(dir, e.to_string()))
    };
    pin_all().inspect_err(|_| {
        let _ = fs::remove_dir_all(&tmp);
    })
}

/// A directory in a set's bpffs directory: making its anchor failed once
/// (see [`ProgramSet::anchor`]), and it is not tried again.
const NO_ANCHOR: &str = "no_anchor";

/// The pin name, in the set's directory, of the anchor's link of `program`.
fn anchor_pin(program: &str) -> String {
    format!("anchor_{}", crate::loader::pin_name_link(program))
}

/// The anchor cgroup of program set `id` (see [`ProgramSet::anchor`]).
#[must_use]
pub fn anchor_cgroup(cgroup2: &Path, id: &str) -> PathBuf {
    cgroup2.join("sbx").join(format!("anchor-{id}"))
}

/// Program set directories on this host other than this build's.
#[must_use]
pub fn other_sets(paths: &Paths) -> Vec<PathBuf> {
    let mine = format!("{SET_PREFIX}{}", set_id());
    fs::read_dir(paths.pin_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(SET_PREFIX) && n != mine))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_taken_lowest_first_never_zero_and_freed() {
        let mut words = [0u64; 2];
        assert_eq!(take_bit(&mut words), Some(1));
        assert_eq!(take_bit(&mut words), Some(2));
        clear_bit(&mut words, 1);
        assert_eq!(take_bit(&mut words), Some(1));
        words[0] = !0;
        assert_eq!(take_bit(&mut words), Some(64));
        words = [!0, !0];
        assert_eq!(take_bit(&mut words), None);
    }

    #[test]
    fn runs_are_the_first_long_enough_gap() {
        let mut words = [0u64; 2];
        assert_eq!(take_run(&mut words, 3), Some(0));
        assert_eq!(words[0], 0b111);
        // Bits 4 and 5 taken too: bit 3 alone is too short for two.
        words[0] |= 0b11_0000;
        assert_eq!(take_run(&mut words, 2), Some(6));
        assert_eq!(take_run(&mut words, 1), Some(3));
        // Across a word boundary.
        words = [!0 >> 2, 0];
        assert_eq!(take_run(&mut words, 4), Some(62));
        assert_eq!(words, [!0, 0b11]);
        assert_eq!(take_run(&mut words, 63), None, "only 62 bits are left");
        assert_eq!(take_run(&mut words, 62), Some(66));
    }

    #[test]
    fn a_quarantine_ends_for_the_indices_whose_entries_are_gone() {
        // SAFETY: Pool is plain integers; all zeroes is an empty pool.
        let mut pool: Pool = unsafe { std::mem::zeroed() };
        for i in [5, 6] {
            set_bit(&mut pool.policies, i);
            set_bit(&mut pool.quarantined_policies, i);
        }
        set_bit(&mut pool.blocks, 9);
        set_bit(&mut pool.quarantined_blocks, 9);
        set_bit(&mut pool.blocks, 10);
        (pool.rules, pool.quarantined_rules) = (30, 20);
        assert_eq!(bits(&pool.quarantined_policies), [5, 6]);
        // Index 6's entries could not be removed: it stays quarantined.
        finish_quarantine(&mut pool, &[(5, 12)]);
        assert_eq!(bits(&pool.policies), [6]);
        assert_eq!(bits(&pool.quarantined_policies), [6]);
        assert_eq!(bits(&pool.blocks), [10], "a block in use stays in use");
        assert_eq!((pool.rules, pool.quarantined_rules), (18, 8));
        // An index that is not quarantined is not freed by mistake.
        set_bit(&mut pool.policies, 7);
        finish_quarantine(&mut pool, &[(7, 1)]);
        assert_eq!(bits(&pool.policies), [6, 7]);
    }

    #[test]
    fn the_set_id_depends_on_the_object_and_the_contract() {
        let id = |data: &[u8], contract: u64| fnv::extend(fnv::extend(fnv::OFFSET, data), &contract.to_le_bytes());
        assert_ne!(id(b"a", 2), id(b"b", 2));
        assert_ne!(id(b"a", 2), id(b"a", 3));
        // The hash build.rs made is the hash of the object this build holds.
        assert_eq!(set_id(), format!("{:016x}", id(OBJECT, u64::from(CONTRACT_VERSION))));
    }
}
