//! FNV-1a 64, the hash of the program set's id. Shared with `build.rs`,
//! which hashes the eBPF object once at build time, so that no command
//! hashes the object (about a megabyte) again.

/// The FNV-1a 64 offset basis: the hash of nothing.
#[allow(dead_code, reason = "used by build.rs, which includes this file, and by the tests")]
pub(crate) const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues the hash `h` over `data`.
#[must_use]
pub(crate) const fn extend(mut h: u64, data: &[u8]) -> u64 {
    let mut i = 0;
    while i < data.len() {
        h ^= data[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}
