//! The kernel contract of sbx: every type that crosses the user/kernel boundary.
//!
//! The eBPF programs in `sbx-ebpf` and the loader in `sbx-user` both compile
//! this crate, so a layout change is seen by both sides at once. Every key and
//! value is `#[repr(C)]`, uses fixed-width integers and spells out its padding;
//! nothing here is a `bool` or a Rust enum, because the kernel side reads bytes
//! the loader wrote and an invalid bit pattern would be undefined behaviour.
//! Each layout is pinned by a compile-time size assertion.
//!
//! # How a verdict is found
//! Both IPv4 and IPv6 destinations are looked up in one LPM trie keyed by a
//! 128-bit address: IPv4 `a.b.c.d` is stored as the IPv4-mapped IPv6 address
//! `::ffff:a.b.c.d` with its prefix length plus 96. The trie value names a
//! [`PortTable`]: a short sorted list of port ranges with a TCP and a UDP
//! verdict each, plus a verdict for ports outside every range. The loader has
//! already resolved rule precedence, so the programs do one trie lookup, one
//! array lookup and a bounded scan. The cost does not depend on how many rules
//! the policy has.
#![no_std]

/// Name of the destination trie (connect and sendmsg hooks).
pub const MAP_DEST: &str = "SBX_DEST";
/// Name of the bind trie (bind hooks).
pub const MAP_BIND: &str = "SBX_BIND";
/// Name of the port-table array shared by both tries.
pub const MAP_PORTS: &str = "SBX_PORTS";

/// Program names, one per hook. The kernel keeps 15 bytes of a program name.
pub const PROG_CONNECT4: &str = "sbx_connect4";
/// See [`PROG_CONNECT4`].
pub const PROG_CONNECT6: &str = "sbx_connect6";
/// See [`PROG_CONNECT4`].
pub const PROG_SENDMSG4: &str = "sbx_sendmsg4";
/// See [`PROG_CONNECT4`].
pub const PROG_SENDMSG6: &str = "sbx_sendmsg6";
/// See [`PROG_CONNECT4`].
pub const PROG_BIND4: &str = "sbx_bind4";
/// See [`PROG_CONNECT4`].
pub const PROG_BIND6: &str = "sbx_bind6";

/// `cgroup/sock_create`: which sockets may be created at all.
pub const PROG_SOCK_CREATE: &str = "sbx_sock_create";
/// `cgroup/setsockopt`: refuses options that redirect packets.
pub const PROG_SETSOCKOPT: &str = "sbx_setsockopt";
/// `cgroup_skb/egress`: the backstop on the packets actually sent.
pub const PROG_EGRESS: &str = "sbx_egress";

/// Every program sbx attaches, in attach order.
pub const PROGRAMS: [&str; 9] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_BIND4,
    PROG_BIND6,
    PROG_SOCK_CREATE,
    PROG_SETSOCKOPT,
    PROG_EGRESS,
];

/// Verdict value: reject the call with `EPERM`. Zero, so that zeroed memory
/// (an unwritten table slot) denies.
pub const VERDICT_DENY: u8 = 0;
/// Verdict value: let the call proceed.
pub const VERDICT_ALLOW: u8 = 1;

/// Maximum number of port ranges in one [`PortTable`]. Bounds the scan in
/// the programs and the size of a table (8 + 8 * 32 = 264 bytes).
pub const MAX_SEGMENTS: usize = 32;

/// Data part of an LPM trie key ([`MAP_DEST`], [`MAP_BIND`]): an IPv6
/// address in network byte order. IPv4 is stored IPv4-mapped
/// (`::ffff:a.b.c.d`) with the prefix length raised by 96.
pub type TrieAddr = [u8; 16];

/// Value of the LPM tries: which [`PortTable`] decides for this prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrieValue {
    /// Index into [`MAP_PORTS`].
    pub table: u32,
}
const _: () = assert!(core::mem::size_of::<TrieValue>() == 4);

/// One port range of a [`PortTable`] with its verdict per protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSegment {
    /// First port of the range, host byte order.
    pub lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub hi: u16,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`] for TCP.
    pub tcp: u8,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`] for UDP.
    pub udp: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PortSegment>() == 8);

/// A resolved port verdict table, the value of [`MAP_PORTS`].
///
/// `segments[..len]` are sorted by `lo` and disjoint; a port outside all of
/// them gets `default_tcp`/`default_udp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortTable {
    /// Number of valid entries in `segments`, at most [`MAX_SEGMENTS`].
    pub len: u32,
    /// Verdict for TCP ports outside every segment.
    pub default_tcp: u8,
    /// Verdict for UDP ports outside every segment.
    pub default_udp: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// Port ranges; entries past `len` are zero and never read.
    pub segments: [PortSegment; MAX_SEGMENTS],
}
const _: () = assert!(core::mem::size_of::<PortTable>() == 8 + 8 * MAX_SEGMENTS);

impl PortTable {
    /// A table with no segments that gives `tcp`/`udp` for every port.
    #[must_use]
    pub const fn uniform(tcp: u8, udp: u8) -> Self {
        Self {
            len: 0,
            default_tcp: tcp,
            default_udp: udp,
            _pad: [0; 2],
            segments: [PortSegment { lo: 0, hi: 0, tcp: 0, udp: 0, _pad: [0; 2] }; MAX_SEGMENTS],
        }
    }
}

/// IP protocol numbers the programs distinguish.
pub const IPPROTO_TCP: u32 = 6;
/// See [`IPPROTO_TCP`].
pub const IPPROTO_UDP: u32 = 17;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and arrays with explicit padding
    // fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::TrieValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTable {}
}
