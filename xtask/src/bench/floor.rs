//! The floor of any cgroup `sock_addr` hook: two programs that return 1
//! (allow) without looking at anything, attached as `connect4` and
//! `sendmsg4` to one configuration's cgroup. What they cost is what the
//! kernel charges for running a program on those calls at all; the part
//! of sbx's cost above them is sbx's own.
//!
//! Loaded with raw bpf(2) (`BPF_PROG_LOAD` of `mov r0, 1; exit`, then
//! `BPF_LINK_CREATE` on the cgroup), so the benchmark needs no BPF object
//! of its own. Closing the descriptors detaches and frees them; nothing
//! is pinned.

use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

// From include/uapi/linux/bpf.h (Linux 6.18); the numbers are ABI.
/// `enum bpf_cmd`: `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `enum bpf_cmd`: `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_prog_type`: `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `enum bpf_attach_type`: `BPF_CGROUP_INET4_CONNECT`.
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `enum bpf_attach_type`: `BPF_CGROUP_UDP4_SENDMSG`.
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;

/// The hooks the floor holds, with the program names `bpftool` shows.
pub(super) const HOOKS: [(&str, u32); 2] =
    [("bench_nop_c4", BPF_CGROUP_INET4_CONNECT), ("bench_nop_s4", BPF_CGROUP_UDP4_SENDMSG)];

/// `mov64 r0, 1; exit` as `struct bpf_insn` (code, dst:4|src:4, off, imm),
/// little-endian. `BPF_ALU64 | BPF_MOV | BPF_K` is 0xb7, `BPF_JMP |
/// BPF_EXIT` is 0x95.
const RETURN_1: [u64; 2] =
    [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to
/// `expected_attach_type`; the kernel treats a shorter attr as zero-filled.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

/// The `BPF_LINK_CREATE` part of `union bpf_attr` with no target-specific
/// fields (none for a cgroup).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 16);

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix of
    // the size given; bpf(2) reads it, and writes only into the log buffer
    // it points to, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf(2) returned an impossible descriptor"))?;
    // SAFETY: a successful BPF_PROG_LOAD or BPF_LINK_CREATE returns a new
    // descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads one `return 1` program for `attach_type`. When the kernel refuses
/// it, loads it again with a verifier log, for the error.
fn load(name: &str, attach_type: u32) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: 2,
        insns: RETURN_1.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let first = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = u32::try_from(log.len()).expect("64 KiB");
    attr.log_buf = log.as_mut_ptr() as u64;
    let _ = bpf(BPF_PROG_LOAD, &mut attr);
    let text = String::from_utf8_lossy(log.split(|&b| b == 0).next().unwrap_or_default()).trim().to_owned();
    Err(first).with_context(|| format!("loading the trivial program {name} (BPF_PROG_LOAD); verifier log: {text:?}"))
}

/// The floor programs, attached to one cgroup while this lives.
pub(super) struct Floor {
    /// `(program, link)` per hook; the link goes first on drop.
    _held: Vec<(OwnedFd, OwnedFd)>,
}

impl Floor {
    /// Loads the programs and attaches them to `cg` with bpf links.
    pub(super) fn attach(cg: &Path) -> Result<Self> {
        let dir = fs::File::open(cg).with_context(|| format!("opening cgroup {}", cg.display()))?;
        let mut held = Vec::new();
        for (name, attach_type) in HOOKS {
            let prog = load(name, attach_type)?;
            let mut attr = LinkCreateAttr {
                prog_fd: u32::try_from(prog.as_raw_fd()).expect("descriptors are positive"),
                target_fd: u32::try_from(dir.as_raw_fd()).expect("descriptors are positive"),
                attach_type,
                flags: 0,
            };
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("attaching {name} to {} (BPF_LINK_CREATE)", cg.display()))?;
            held.push((link, prog));
        }
        Ok(Self { _held: held })
    }
}
