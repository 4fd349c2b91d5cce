//! The sbx programs: one `cgroup/sock_addr` program per hook.
//!
//! Each program asks one question: may this socket reach (or bind) this
//! address, port and protocol? The answer comes from maps the loader filled
//! with a pre-resolved policy (see `sbx-common`): one LPM trie lookup on the
//! 128-bit address, one array lookup for the port table, one bounded scan.
//!
//! Return value 1 lets the call proceed; 0 makes it fail with `EPERM`. Any
//! internal error (a missing map entry, an unexpected protocol) returns 0:
//! **an error rejects**.
//!
//! Address forms are decided on what they reach:
//! - IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is already the trie's encoding of
//!   IPv4, so dual-stack sockets obey the IPv4 rules.
//! - NAT64 (`64:ff9b::a.b.c.d`, RFC 6052) and 6to4 (`2002:AABB:CCDD::/48`,
//!   RFC 3056) are rewritten to the IPv4 address they embed before lookup.
//! - Unspecified (`0.0.0.0`, `::`) reaches the local host and shares the
//!   loopback entry; multicast, broadcast, `0.0.0.0/8` and IPv4-compatible
//!   `::a.b.c.d` have deny entries the loader always adds.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

// The library target exists for build-dependency tracking only.
use sbx_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (clippy, `cargo check --workspace`) only type-check the
    // crate; the programs are compiled for the BPF target by aya-build.
}
