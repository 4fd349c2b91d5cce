//! What `cargo xtask bench` and `sbx-bench-worker` must agree on, written
//! once: the worker binary includes this file too (`#[path]`).

use std::os::fd::RawFd;

/// The listening TCP socket the parent passes to `percall`.
pub(crate) const FD_LISTENER: RawFd = 3;
/// The bound UDP socket on the allowed port.
pub(crate) const FD_UDP_ALLOWED: RawFd = 4;
/// The bound UDP socket on the denied port.
pub(crate) const FD_UDP_DENIED: RawFd = 5;
