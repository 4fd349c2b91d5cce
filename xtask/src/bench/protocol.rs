//! What `cargo xtask bench` and `sbx-bench-worker` must agree on, written
//! once: the worker binary includes this file too (`#[path]`).

use std::{net::Ipv4Addr, os::fd::RawFd};

/// The listening TCP socket the parent passes to `percall`.
pub(crate) const FD_LISTENER: RawFd = 3;
/// The bound UDP socket on the allowed port.
pub(crate) const FD_UDP_ALLOWED: RawFd = 4;
/// The bound UDP socket on the denied port.
pub(crate) const FD_UDP_DENIED: RawFd = 5;

/// Closed ports the `refused_spread` operation connects to in turn: more
/// destinations than the four recent verdicts a sandbox layer keeps per
/// CPU, so that every connect is judged by a walk of the policy, as the
/// first connect to a destination is.
pub(crate) const SPREAD_PORTS: usize = 8;

/// 198.18.0.0/15 (RFC 2544's benchmarking range): the only non-loopback
/// addresses the benchmark contacts, all inside its own network
/// namespace.
pub(crate) const BENCH_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Whether `a` is in [`BENCH_NET`].
pub(crate) fn in_bench_net(a: Ipv4Addr) -> bool {
    let (net, len) = BENCH_NET;
    let mask = u32::MAX << (32 - u32::from(len));
    u32::from(a) & mask == u32::from(net)
}
