//! sbx: an egress sandbox the kernel enforces.
//!
//! sbx puts a process tree in a cgroup v2 directory and attaches
//! `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` programs to it (connect4/6, sendmsg4/6,
//! bind4/6). The programs judge every connect, unconnected UDP send and
//! bind against a policy held in BPF maps: a loopback setting, IP/CIDR
//! allow and deny rules with ports and protocols, a default, and an
//! optional proxy-only mode. A rejected call fails with `EPERM`.
//!
//! # Pipeline
//! [`policy`] parses and validates input into a [`policy::Policy`];
//! [`compile`] turns it into exact map entries (pure, unit-tested);
//! [`loader`] is the only module that touches aya: it loads the programs,
//! fills the maps, attaches and pins the links. [`cgroup`] finds and
//! manages cgroup v2 directories, [`state`] records what is attached where,
//! and [`run`] runs a command in a fresh sandbox, with [`dns`]'s stub
//! answering its name queries under `dns = "pinned"`.
//!
//! # Threat model (summary; see README)
//! The sandboxed process is untrusted and holds no capabilities; the
//! caller of `sbx-user` is a root host agent. Enforcement is in the kernel
//! and continues without any sbx process. Requires Linux 5.8+ (`bpf_link` for
//! cgroups) with cgroup v2 and BTF; tested on 6.18.
//!
//! # Tests
//! Pure parts are unit-tested with plain `cargo test`. The `tests` crate
//! attaches the real programs to real cgroups and asserts exact errnos
//! (`cargo xtask test`, as root).

pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod compile;
pub mod confine;
pub mod diag;
pub mod dns;
pub mod events;
pub mod explain;
pub(crate) mod fnv;
pub mod gc;
pub mod harden;
pub mod loader;
pub mod names;
pub mod oci;
pub mod policy;
pub mod progress;
pub mod progset;
pub mod run;
pub mod sandbox;
pub mod spawn;
pub mod state;
pub mod sys;
pub mod trace;
pub mod verify;

// Used by the `sbx-user` binary only.
use env_logger as _;

#[cfg(target_env = "musl")]
use dlmalloc as _;
