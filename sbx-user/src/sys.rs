//! The few `bpf(2)` commands aya 0.14 does not expose: querying what is
//! attached to a cgroup, and atomically replacing a link's program; the
//! few system interfaces whose `libc` types differ between glibc and musl
//! (the shipped static build links musl); and [`canonicalize`], which lets
//! the kernel resolve a path once instead of `realpath(3)`'s walk.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd},
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type` values of the hooks sbx uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    /// `BPF_CGROUP_INET4_BIND`.
    Bind4 = 8,
    /// `BPF_CGROUP_INET6_BIND`.
    Bind6 = 9,
    /// `BPF_CGROUP_INET4_CONNECT`.
    Connect4 = 10,
    /// `BPF_CGROUP_INET6_CONNECT`.
    Connect6 = 11,
    /// `BPF_CGROUP_UDP4_SENDMSG`.
    Sendmsg4 = 14,
    /// `BPF_CGROUP_UDP6_SENDMSG`.
    Sendmsg6 = 15,
    /// `BPF_CGROUP_INET_SOCK_CREATE`.
    SockCreate = 2,
    /// `BPF_CGROUP_SETSOCKOPT`.
    Setsockopt = 22,
    /// `BPF_CGROUP_INET_EGRESS`.
    Egress = 1,
    /// `BPF_CGROUP_SOCK_OPS`.
    SockOps = 3,
}

/// `BPF_F_QUERY_EFFECTIVE`: include programs inherited from ancestors.
pub const QUERY_EFFECTIVE: u32 = 1;

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
const _: () = assert!(std::mem::size_of::<QueryAttr>() == 64);

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `#[repr(C)]` prefix of
    // `union bpf_attr` for `cmd`; the kernel reads and writes at most
    // `size_of::<T>()` bytes of it, and any pointers inside it point to
    // live buffers the caller owns.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// As [`bpf`], for commands that return a new file descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: as in `bpf`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("open file descriptors are non-negative")
}

/// IDs of the programs attached to `cgroup` at `attach_type`.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: AttachType, flags: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: fd_u32(cgroup),
        attach_type: attach_type as u32,
        query_flags: flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).expect("64"),
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Atomically makes `link` run `new_prog` instead of its current program.
/// Traffic is judged by the old program or the new one, never by neither.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr { link_fd: fd_u32(link), new_prog_fd: fd_u32(new_prog), flags: 0, old_prog_fd: 0 };
    bpf(BPF_LINK_UPDATE, &mut attr)
}

/// `BPF_F_REPLACE`: only update if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

/// As [`link_update`], but only if the link still runs `old_prog`
/// (`EPERM` otherwise): a concurrent update is detected, not overwritten.
pub fn link_update_from(link: BorrowedFd<'_>, old_prog: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(new_prog),
        flags: BPF_F_REPLACE,
        old_prog_fd: fd_u32(old_prog),
    };
    bpf(BPF_LINK_UPDATE, &mut attr)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Opens the program with kernel id `id`.
pub fn prog_get_fd_by_id(id: u32) -> io::Result<std::os::fd::OwnedFd> {
    // prog_id, next_id, open_flags.
    let mut attr = [id, 0u32, 0u32];
    bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr)
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The `obj_pin`/`obj_get` member of `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens a pinned BPF object.
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    bpf_fd(BPF_OBJ_GET, &mut attr)
}

/// Detaches a link from its hook now, whoever else holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = fd_u32(link);
    bpf(BPF_LINK_DETACH, &mut attr)
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The leading members of `link_create` in `union bpf_attr`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to `cgroup` at `attach_type` with a `bpf_link`. The link
/// lives as long as the returned fd or a pin of it.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: AttachType,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: fd_u32(prog), target_fd: fd_u32(cgroup), attach_type: attach_type as u32, flags: 0 };
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Pins a BPF object (link, map, program) at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd_u32(fd), file_flags: 0, path_fd: 0, _pad: 0 };
    bpf(BPF_OBJ_PIN, &mut attr)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The first `N` words (of type `T`) of the kernel's info struct of a BPF
/// object (`BPF_OBJ_GET_INFO_BY_FD`; the kernel fills what it has of them).
fn info_words<T: Copy + Default, const N: usize>(fd: BorrowedFd<'_>) -> io::Result<[T; N]> {
    let mut info = [T::default(); N];
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: u32::try_from(std::mem::size_of_val(&info)).expect("small"),
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The program id a link runs (`struct bpf_link_info.prog_id`).
pub fn link_prog_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    // type, id, prog_id, then type-specific data.
    Ok(info_words::<u32, 16>(link)?[2])
}

/// The name of the program with kernel id `id` (`bpf_prog_info.name`).
pub fn prog_name(id: u32) -> io::Result<String> {
    let fd = prog_get_fd_by_id(id)?;
    // `struct bpf_prog_info` up to and including `name[16]` at offset 64.
    let info = info_words::<u8, 80>(fd.as_fd())?;
    let name = &info[64..80];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `BPF_MAP_TYPE_*` values sbx creates maps of from userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` (a test's).
    PerCpuArray = 6,
    /// `BPF_MAP_TYPE_RINGBUF`.
    RingBuf = 27,
}

/// The `map_create` member of `union bpf_attr`, up to `map_extra`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}
const _: () = assert!(std::mem::size_of::<MapCreateAttr>() == 72);

/// Creates a map (the per-sandbox event rings are made here, outside the object,
/// and put into the program set's outer array). `name` is cut to 15 bytes.
pub fn map_create(
    ty: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut map_name = [0u8; 16];
    for (d, s) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = MapCreateAttr {
        map_type: ty as u32,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        map_ifindex: 0,
        btf_fd: 0,
        btf_key_type_id: 0,
        btf_value_type_id: 0,
        btf_vmlinux_value_type_id: 0,
        map_extra: 0,
    };
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// The `map_elem` members of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_ANY`: create or replace.
pub const UPDATE_ANY: u64 = 0;

/// `BPF_MAP_TYPE_*` of the per-CPU maps: a lookup writes one value per
/// possible CPU, each rounded up to 8 bytes.
const PERCPU_TYPES: [u32; 4] = [5, 6, 10, PERCPU_CGROUP_STORAGE];

/// `BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE` (the sandboxes' `Stats`).
pub const PERCPU_CGROUP_STORAGE: u32 = 21;

/// Bytes the kernel writes for one lookup in (or reads for one update of)
/// a map of type `map_type` with values of `value_size` bytes, on a host
/// with `cpus` possible CPUs.
#[must_use]
pub fn value_len(map_type: u32, value_size: u32, cpus: usize) -> usize {
    let size = value_size as usize;
    if PERCPU_TYPES.contains(&map_type) {
        size.div_ceil(8) * 8 * cpus
    } else {
        size
    }
}

/// Refuses buffers smaller than what the kernel copies for `map`: its key
/// size for `key`, [`value_len`] for `value`. The kernel copies the
/// sizes the map was created with, not the buffer's: a map of another sbx
/// build (a newer program set with a larger `Stats` or `Slot`) would
/// otherwise overwrite memory past the buffer.
fn check_sizes(map: BorrowedFd<'_>, key: usize, value: Option<usize>) -> io::Result<()> {
    // type, id, key_size, value_size (`struct bpf_map_info`).
    let [ty, id, key_size, value_size] = info_words::<u32, 4>(map)?;
    let cpus = if PERCPU_TYPES.contains(&ty) { aya::util::nr_cpus().map_err(|(_, e)| e)? } else { 1 };
    let need = value_len(ty, value_size, cpus);
    if key < key_size as usize || value.is_some_and(|v| v < need) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map id {id} has {key_size}-byte keys and {need}-byte values per lookup, this sbx-user passed {key} and {} \
                 bytes: it was made by another sbx build",
                value.unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

/// Writes `value` under `key`. The kernel copies exactly the map's key and
/// value sizes; smaller buffers are refused ([`check_sizes`]).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    check_sizes(map, key.len(), Some(value.len()))?;
    let mut attr =
        MapElemAttr { map_fd: fd_u32(map), _pad: 0, key: key.as_ptr() as u64, value: value.as_ptr() as u64, flags };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Reads the value under `key` into `value` (`ENOENT` when absent); a
/// buffer smaller than what the kernel writes is refused
/// ([`check_sizes`]).
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    check_sizes(map, key.len(), Some(value.len()))?;
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
}

/// Deletes `key` (`ENOENT` when absent).
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    KeyedMap::new(map, key.len())?.delete(key)
}

/// A map whose key size was checked once ([`check_sizes`]) against the
/// key buffers a loop over its keys passes, so that walking and emptying a
/// map of 100,000 entries costs no extra system call per entry. Each call
/// still refuses a key buffer of another length.
#[derive(Clone, Copy, Debug)]
pub struct KeyedMap<'a> {
    map: BorrowedFd<'a>,
    key: usize,
}

impl<'a> KeyedMap<'a> {
    /// Checks that `map`'s keys are at most `key` bytes.
    pub fn new(map: BorrowedFd<'a>, key: usize) -> io::Result<Self> {
        check_sizes(map, key, None)?;
        Ok(Self { map, key })
    }

    fn same_length(&self, buf: &[u8]) -> io::Result<()> {
        if buf.len() == self.key {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {}-byte key buffer for a map checked for {}-byte keys", buf.len(), self.key),
            ))
        }
    }

    /// Deletes `key` (`ENOENT` when absent).
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.same_length(key)?;
        let mut attr = MapElemAttr { map_fd: fd_u32(self.map), _pad: 0, key: key.as_ptr() as u64, value: 0, flags: 0 };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr)
    }

    /// The key after `key` (the first key for `None`); `ENOENT` at the end.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
        self.same_length(next)?;
        if let Some(k) = key {
            self.same_length(k)?;
        }
        let mut attr = MapElemAttr {
            map_fd: fd_u32(self.map),
            _pad: 0,
            key: key.map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_GET_NEXT_KEY, &mut attr)
    }
}

/// The bytes of a plain `#[repr(C)]` value of the kernel contract.
pub fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding holes or invalid bit patterns and is
    // `size_of::<T>()` bytes long.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A `T` from the first `size_of::<T>()` bytes of `b` (zero-filled past
/// the end of a shorter buffer).
#[must_use]
pub fn from_bytes<T: aya::Pod>(b: &[u8]) -> T {
    // SAFETY: every bit pattern is a valid `T: Pod`; zeroed is valid too.
    let mut v: T = unsafe { std::mem::zeroed() };
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: `n` bytes fit both buffers.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), std::ptr::from_mut(&mut v).cast::<u8>(), n) };
    v
}

/// The kernel id of a program or map (`bpf_prog_info.id` and
/// `bpf_map_info.id` are both the second u32).
pub fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(info_words::<u32, 2>(fd)?[1])
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

/// The key after `key` (the first key for `None`); `ENOENT` at the end.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
    KeyedMap::new(map, key.map_or(next.len(), <[u8]>::len).min(next.len()))?.next_key(key, next)
}

/// Opens the map with kernel id `id`.
pub fn map_get_fd_by_id(id: u32) -> io::Result<std::os::fd::OwnedFd> {
    // map_id, next_id, open_flags.
    let mut attr = [id, 0u32, 0u32];
    bpf_fd(BPF_MAP_GET_FD_BY_ID, &mut attr)
}

/// The capacity of a map (the fifth u32 of `struct bpf_map_info`).
pub fn map_max_entries(map: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(info_words::<u32, 5>(map)?[4])
}

/// The value size of a map (the fourth u32 of `struct bpf_map_info`).
pub fn map_value_size(map: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(info_words::<u32, 4>(map)?[3])
}

/// The cgroup id a cgroup link is attached to (`bpf_link_info.cgroup`,
/// after `type`, `id`, `prog_id` and padding); 0 once the cgroup is gone
/// and the link is defunct.
pub fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(info_words::<u64, 8>(link)?[2])
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `count` key/value pairs (`keys` and `values` hold them back to
/// back at the map's sizes) in one command. For an outer map of maps the
/// kernel then waits for one RCU grace period instead of one per entry.
pub fn map_update_batch(map: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: u32) -> io::Result<()> {
    if count > 0 {
        let n = count as usize;
        check_sizes(map, keys.len() / n, Some(values.len() / n))?;
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd_u32(map),
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// `openat(dir, name, flags)` as a [`std::fs::File`].
pub fn openat_file(dir: BorrowedFd<'_>, name: &std::ffi::CStr, flags: i32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: `dir` is an open fd and `name` a C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// `close_range(2)` by its system call (musl has no wrapper); returns what
/// the system call does. Async-signal-safe.
///
/// # Safety
/// Closing descriptors others still use is the caller's concern.
#[must_use]
pub unsafe fn close_range(first: u32, last: u32, flags: i32) -> libc::c_long {
    // SAFETY: close_range takes two unsigned ints and an int.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }
}

/// A control buffer's or message's length as `msghdr.msg_controllen` and
/// `cmsghdr.cmsg_len` take it (`size_t` for glibc, `socklen_t` for musl).
#[must_use]
pub fn control_len<T: TryFrom<u32>>(bytes: usize) -> T {
    u32::try_from(bytes).ok().and_then(|n| T::try_from(n).ok()).expect("a control buffer of a few bytes")
}

/// The bytes of data after the header of control message `h`.
///
/// # Safety
/// `h` points at a control message the kernel filled in.
#[must_use]
pub unsafe fn cmsg_payload(h: *const libc::cmsghdr) -> usize {
    // SAFETY: the caller's: `h` is readable. `cmsg_len` is a `size_t` for
    // glibc, a `socklen_t` for musl.
    #[allow(clippy::unnecessary_fallible_conversions, reason = "from a usize on glibc, a u32 on musl")]
    let len = u64::try_from(unsafe { (*h).cmsg_len }).unwrap_or(0);
    // SAFETY: CMSG_LEN is arithmetic.
    let header = u64::from(unsafe { libc::CMSG_LEN(0) });
    usize::try_from(len.saturating_sub(header)).unwrap_or(0)
}

/// `path` with every symbolic link, `.` and `..` resolved, as
/// [`std::fs::canonicalize`] gives it: the kernel resolves the path once
/// (`open` with `O_PATH`) and names what it found (`/proc/self/fd`), a
/// handful of system calls whatever the depth. `realpath(3)` reads every
/// component's link instead, and musl's then maps and unmaps a page for
/// its result. The name is used only if it is absolute and names the same
/// file (not a pipe's `pipe:[N]`, a deleted file's ` (deleted)`, or a
/// path outside this process's root); otherwise, and without `/proc`,
/// `std::fs::canonicalize` walks the path, and its answer too must name
/// the file opened: a path that leads into another mount namespace
/// (`/proc/PID/root/...`) is an error, never a name for another file.
pub fn canonicalize(path: impl AsRef<std::path::Path>) -> io::Result<std::path::PathBuf> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _};
    let path = path.as_ref();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `c` is a C string; O_PATH opens nothing for reading.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new fd that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let opened = file.metadata().ok();
    let same = |p: &std::path::Path| {
        opened.as_ref().is_none_or(|o| std::fs::metadata(p).is_ok_and(|m| m.dev() == o.dev() && m.ino() == o.ino()))
    };
    if let Ok(name) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        if name.is_absolute() && opened.is_some() && same(&name) {
            return Ok(name);
        }
    }
    // The walk's answer must name the file opened too: through
    // `/proc/PID/root` of a process in another mount namespace, realpath
    // strips the prefix and names whatever this process has at the rest.
    let walked = std::fs::canonicalize(path)?;
    if same(&walked) {
        Ok(walked)
    } else {
        Err(io::Error::other(format!(
            "no path from this process's root names the file it leads to ({} is another file; a path through \
             another mount namespace, such as /proc/PID/root/...?)",
            walked.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_agrees_with_std() {
        let dir = std::env::temp_dir().join(format!("sbx-canonical-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        std::fs::write(dir.join("a/b/f"), "x").expect("write");
        std::os::unix::fs::symlink("a/b", dir.join("link")).expect("symlink");
        std::os::unix::fs::symlink("missing", dir.join("dangling")).expect("symlink");
        for p in [
            dir.join("a/b/f"),
            dir.join("link/f"),
            dir.join("link/../b/./f"),
            dir.join("a//b/"),
            dir.clone(),
            std::path::PathBuf::from("/"),
            std::path::PathBuf::from("/dev/null"),
            std::path::PathBuf::from("."),
        ] {
            assert_eq!(
                canonicalize(&p).expect("canonical"),
                std::fs::canonicalize(&p).expect("std"),
                "{}",
                p.display()
            );
        }
        for p in [dir.join("dangling"), dir.join("nothing"), dir.join("a/b/f/x"), std::path::PathBuf::new()] {
            let (ours, std) = (canonicalize(&p).unwrap_err(), std::fs::canonicalize(&p).unwrap_err());
            assert_eq!(ours.raw_os_error(), std.raw_os_error(), "{}", p.display());
        }
        // A pipe has no path: neither finds one.
        let mut fds = [0; 2];
        // SAFETY: pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let p = std::path::PathBuf::from(format!("/proc/self/fd/{}", fds[0]));
        assert!(canonicalize(&p).is_err() && std::fs::canonicalize(&p).is_err());
        // SAFETY: closing the pipe made above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn per_cpu_values_are_rounded_and_counted_per_possible_cpu() {
        // The per-CPU counters of two builds: 184 and 320 bytes a CPU.
        assert_eq!(value_len(21, 184, 2), 368);
        assert_eq!(value_len(21, 320, 2), 640);
        assert_eq!(value_len(6, 12, 4), 64);
        assert_eq!(value_len(2, 12, 4), 12, "an array is one value");
        assert_eq!(value_len(19, 136, 2), 136, "cgroup storage (the slot) is one value");
    }
}
