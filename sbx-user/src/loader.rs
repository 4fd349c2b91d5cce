//! The one module that touches aya: load the programs, fill the maps,
//! attach to a cgroup with `bpf_link`, pin, query, replace and detach.
//!
//! Attaching is all-or-nothing: the six links are created in memory first
//! and only pinned once every one succeeded; if anything fails, the links
//! made so far are dropped (which detaches them) and the pins removed.

use std::{
    fs,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    programs::Program,
    Ebpf, EbpfLoader,
};
use sbx_common::{
    Config, PortTable, TrieAddr, TrieValue, MAPS, MAP_BIND, MAP_CONFIG, MAP_DEST, MAP_EVENTS, MAP_ORIGDST, MAP_PORTS,
    MAP_REDIRECTED, PROGRAMS,
};

use crate::{
    cgroup::{fs_magic, Cgroup},
    compile::Compiled,
    state::Paths,
    sys::{self, AttachType},
};

/// The compiled eBPF object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sbx"));

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
    /// Size of the event ring buffer in bytes (a power of two, at least a page).
    pub events_bytes: u32,
}

/// Connections in flight whose original destination a transparent-proxy
/// sandbox remembers (least recently used first out).
pub const REDIRECT_SLOTS: u32 = 4096;

/// Default event ring buffer size: 64 KiB, about 800 events.
pub const DEFAULT_EVENTS_BYTES: u32 = 64 * 1024;

/// What [`attach`] did.
#[derive(Clone, Debug)]
pub struct Attached {
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Whether an existing attachment was replaced in place.
    pub replaced: bool,
    /// Kernel program ids, in [`HOOKS`] order.
    pub prog_ids: Vec<u32>,
}

fn pin_name_link(program: &str) -> String {
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

/// Loads the object and fills its maps with `compiled`.
fn load(compiled: &Compiled, opts: AttachOptions) -> Result<Ebpf, LoaderError> {
    let tables = u32::try_from(compiled.tables.len().max(1)).expect("tables fit u32");
    let redirect_slots = if opts.config.flags & sbx_common::FLAG_REDIRECT == 0 { 1 } else { REDIRECT_SLOTS };
    let mut ebpf = EbpfLoader::new()
        // The programs use no CO-RE relocations: parsing the kernel's BTF
        // (megabytes) on every attach would only cost time.
        .btf(None)
        .map_max_entries(MAP_DEST, opts.max_entries)
        .map_max_entries(MAP_BIND, opts.max_entries)
        .map_max_entries(MAP_PORTS, tables)
        .map_max_entries(MAP_EVENTS, opts.events_bytes)
        // LRU hashes are preallocated; only transparent-proxy sandboxes
        // need room in them.
        .map_max_entries(MAP_REDIRECTED, redirect_slots)
        .map_max_entries(MAP_ORIGDST, redirect_slots)
        .load(OBJECT)
        .map_err(LoaderError::Load)?;
    {
        let map = ebpf.map_mut(MAP_CONFIG).expect("object defines SBX_CONFIG");
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(|source| LoaderError::Map { map: MAP_CONFIG, source })?;
        config.set(0, opts.config, 0).map_err(|source| LoaderError::Map { map: MAP_CONFIG, source })?;
    }
    fill_trie(&mut ebpf, MAP_DEST, &compiled.dest)?;
    fill_trie(&mut ebpf, MAP_BIND, &compiled.bind)?;
    {
        let map = ebpf.map_mut(MAP_PORTS).expect("object defines SBX_PORTS");
        let mut ports: Array<&mut MapData, PortTable> =
            Array::try_from(map).map_err(|source| LoaderError::Map { map: MAP_PORTS, source })?;
        for (i, t) in compiled.tables.iter().enumerate() {
            let i = u32::try_from(i).expect("index fits u32");
            ports.set(i, t, 0).map_err(|source| LoaderError::Map { map: MAP_PORTS, source })?;
        }
    }
    for (name, _, _) in HOOKS {
        let loaded = match ebpf.program_mut(name).expect("object defines every program") {
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::SockOps(p) => p.load(),
            other => unreachable!("unexpected program type {:?}", other.prog_type()),
        };
        loaded.map_err(|e| LoaderError::Program { program: name, detail: program_error(&e) })?;
    }
    Ok(ebpf)
}

fn program_error(e: &aya::programs::ProgramError) -> String {
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

fn fill_trie(ebpf: &mut Ebpf, name: &'static str, entries: &[crate::compile::TrieEntry]) -> Result<(), LoaderError> {
    let map = ebpf.map_mut(name).expect("object defines the tries");
    let mut trie: LpmTrie<&mut MapData, TrieAddr, TrieValue> =
        LpmTrie::try_from(map).map_err(|source| LoaderError::Map { map: name, source })?;
    for e in crate::progress::track("filling the policy maps", entries.len(), entries) {
        trie.insert(&Key::new(e.prefix_len, e.addr), TrieValue { table: e.table }, 0)
            .map_err(|source| LoaderError::Map { map: name, source })?;
    }
    Ok(())
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Program {
    ebpf.program_mut(name).expect("object defines every program")
}

/// Attaches one program with `bpf_link` and returns the link fd. aya 0.14
/// cannot turn every cgroup link type into a pinnable `FdLink` (sockopt
/// links, for one), so all nine go through the same raw `BPF_LINK_CREATE`.
fn attach_one(p: &Program, ty: AttachType, dir: &fs::File) -> Result<OwnedFd, String> {
    let fd = p.fd().map_err(|e| e.to_string())?;
    sys::link_create(fd.as_fd(), dir.as_fd(), ty).map_err(|e| e.to_string())
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
    let attached: Vec<String> = query(cg)?
        .into_iter()
        .filter(|(_, progs)| progs.iter().any(|p| p.starts_with("sbx_")))
        .map(|(hook, _)| hook.to_owned())
        .collect();
    Ok((!attached.is_empty())
        .then(|| format!("sbx programs on {} without pins, probably a running `sbx-user run`", attached.join(", "))))
}

/// Loads `compiled`, attaches it to `cg` and pins links and maps.
pub fn attach(cg: &Cgroup, compiled: &Compiled, opts: AttachOptions, paths: &Paths) -> Result<Attached, LoaderError> {
    ensure_bpffs(paths)?;
    let existing = existing(cg, paths)?;
    if let Some(detail) = &existing {
        if !opts.replace {
            return Err(LoaderError::AlreadyAttached { cgroup: cg.path.clone(), detail: detail.clone() });
        }
    }
    let mut ebpf = load(compiled, opts)?;
    let redirect = opts.config.flags & sbx_common::FLAG_REDIRECT != 0;
    let pin_dir = paths.pin_dir(cg.id);
    let prog_ids = HOOKS.iter().map(|&(name, _, _)| prog(&mut ebpf, name).info().map_or(0, |i| i.id())).collect();
    if existing.is_some() && pin_dir.exists() {
        replace_in_place(&mut ebpf, &pin_dir, cg, redirect)?;
        return Ok(Attached { pin_dir, replaced: true, prog_ids });
    }
    if existing.is_some() {
        return Err(LoaderError::AlreadyAttached {
            cgroup: cg.path.clone(),
            detail: "unpinned sbx programs cannot be replaced; stop the `sbx-user run` that owns them".into(),
        });
    }

    // Claim the pin directory atomically: of two concurrent attaches to
    // one cgroup, exactly one gets it, and the other leaves the winner's
    // pins alone.
    let root = paths.pin_root();
    fs::create_dir_all(&root).map_err(|e| LoaderError::Pin {
        action: "creating",
        path: root.clone(),
        detail: e.to_string(),
    })?;
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
    let dir = match cg.dir_fd() {
        Ok(d) => d,
        Err(e) => {
            let _ = fs::remove_dir(&pin_dir);
            return Err(e.into());
        }
    };
    let mut links = Vec::with_capacity(HOOKS.len());
    for &(name, ty, hook) in hooks_for(redirect) {
        match attach_one(prog(&mut ebpf, name), ty, &dir) {
            Ok(link) => links.push((name, link)),
            Err(detail) => {
                // The links made so far detach when `links` drops.
                let _ = fs::remove_dir(&pin_dir);
                return Err(LoaderError::Attach { hook, cgroup: cg.path.clone(), detail });
            }
        }
    }
    // Every hook is attached (in memory). Pin them; on any failure, undo.
    let mut pin_all = || -> Result<(), LoaderError> {
        let pin_err =
            |path: &Path, detail: String| LoaderError::Pin { action: "pinning", path: path.to_owned(), detail };
        for map in MAPS {
            let path = pin_dir.join(pin_name_map(map));
            ebpf.map(map).expect("defined").pin(&path).map_err(|e| pin_err(&path, e.to_string()))?;
        }
        for (name, link) in links.drain(..) {
            let path = pin_dir.join(pin_name_link(name));
            // The link fd is closed right away: the pin holds the link.
            sys::obj_pin(link.as_fd(), &path).map_err(|e| pin_err(&path, e.to_string()))?;
        }
        Ok(())
    };
    if let Err(e) = pin_all() {
        // Detach pinned links explicitly; unpinned ones detach on drop.
        let _ = remove_pins(&pin_dir);
        return Err(e);
    }
    Ok(Attached { pin_dir, replaced: false, prog_ids })
}

/// Points each pinned link at the new programs (atomic per hook), then
/// swaps the map pins.
fn replace_in_place(ebpf: &mut Ebpf, pin_dir: &Path, cg: &Cgroup, redirect: bool) -> Result<(), LoaderError> {
    let pin_err = |action, path: &Path, detail: String| LoaderError::Pin { action, path: path.to_owned(), detail };
    // The optional sock_ops hook comes and goes with redirect mode; it
    // decides nothing, so adding or removing it is not part of the swap.
    let sockops = HOOKS.iter().find(|h| h.1 == AttachType::SockOps).expect("listed");
    let sockops_pin = pin_dir.join(pin_name_link(sockops.0));
    match (redirect, sockops_pin.exists()) {
        (true, false) => {
            let dir = cg.dir_fd()?;
            let link = attach_one(prog(ebpf, sockops.0), sockops.1, &dir).map_err(|detail| LoaderError::Attach {
                hook: sockops.2,
                cgroup: cg.path.clone(),
                detail,
            })?;
            sys::obj_pin(link.as_fd(), &sockops_pin).map_err(|e| pin_err("pinning", &sockops_pin, e.to_string()))?;
        }
        (false, true) => {
            let _ = sys::obj_get(&sockops_pin).and_then(|fd| sys::link_detach(fd.as_fd()));
            let _ = fs::remove_file(&sockops_pin);
        }
        _ => {}
    }
    let mut link_fds = Vec::new();
    for &(name, _, _) in hooks_for(redirect) {
        let path = pin_dir.join(pin_name_link(name));
        let fd = sys::obj_get(&path).map_err(|e| pin_err("opening pinned link", &path, e.to_string()))?;
        link_fds.push((name, path, fd));
    }
    // The programs the links run now, to check each swap against and to go
    // back to if a later swap fails: the sandbox ends under the old policy
    // or the new one, never under a mix.
    let mut olds = Vec::with_capacity(link_fds.len());
    for (_, path, fd) in &link_fds {
        let old = sys::link_prog_id(fd.as_fd())
            .and_then(sys::prog_get_fd_by_id)
            .map_err(|e| pin_err("reading the program of", path, e.to_string()))?;
        olds.push(old);
    }
    for (i, (name, path, fd)) in link_fds.iter().enumerate() {
        let swapped = prog(ebpf, name)
            .fd()
            .map_err(|e| e.to_string())
            .and_then(|new| sys::link_update_from(fd.as_fd(), olds[i].as_fd(), new.as_fd()).map_err(|e| e.to_string()));
        if let Err(detail) = swapped {
            for ((_, back_path, back_fd), old) in link_fds[..i].iter().zip(&olds) {
                if let Err(e) = sys::link_update(back_fd.as_fd(), old.as_fd()) {
                    log::error!("rolling {} back to the old policy failed: {e}", back_path.display());
                }
            }
            return Err(pin_err(
                "updating link (every hook was put back on the old policy; a concurrent update fails this way)",
                path,
                detail,
            ));
        }
    }
    for map in MAPS {
        let path = pin_dir.join(pin_name_map(map));
        let _ = fs::remove_file(&path);
        ebpf.map(map).expect("defined").pin(&path).map_err(|e| pin_err("pinning", &path, e.to_string()))?;
    }
    Ok(())
}

/// Detaches every pinned link in `pin_dir` at once (not when the last
/// reference happens to go away) and removes the directory.
fn remove_pins(pin_dir: &Path) -> Result<(), LoaderError> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LoaderError::Pin { action: "listing", path: pin_dir.to_owned(), detail: e.to_string() }),
    };
    let mut first_err = None;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_link = entry.file_name().to_string_lossy().starts_with("link_");
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
pub fn detach(cgroup_id: u64, cgroup_path: &Path, paths: &Paths) -> Result<(), LoaderError> {
    let pin_dir = paths.pin_dir(cgroup_id);
    if !pin_dir.exists() {
        return Err(LoaderError::NotAttached(cgroup_path.to_owned()));
    }
    remove_pins(&pin_dir)
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
