//! Address classification, written once for the programs, `compile`'s
//! simulator and `explain`: which IPv6 forms embed an IPv4 address, and
//! which IPv4 address (or addresses) they reach.
//!
//! A destination in one of these forms is judged as the IPv4 address it
//! reaches (both addresses, for Teredo), unless an explicit IPv6 rule at
//! least as specific as the form's prefix decides it (a user who allows a
//! real IPv6 host in such a range keeps it). A form that embeds a local
//! address (`127.0.0.0/8`, `0.0.0.0/8`) leaves the host to reach it: it is
//! not loopback, and it is refused.
//!
//! Addresses are `[u8; 16]` in network byte order; IPv4 is carried mapped
//! (`::ffff:a.b.c.d`), the trie's own encoding, and is not an embedded form.
//!
//! Every function is `#[inline(always)]`: the eBPF programs call them on
//! their hot path, where a BPF-to-BPF call would cost more than the body.
#![expect(clippy::inline_always, reason = "called from the eBPF programs' hot path; see the module docs")]

/// Most NAT64 network-specific prefixes (RFC 6052) a policy may name.
pub const MAX_NAT64_PREFIXES: usize = 4;

/// A NAT64 network-specific prefix (RFC 6052 section 2.2). `len` is 32,
/// 40, 48, 56, 64 or 96, or 0 for an unused entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat64Prefix {
    /// The prefix, network byte order (bits past `len` zero).
    pub addr: [u8; 16],
    /// Its length in bits.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<Nat64Prefix>() == 20);

/// What an embedded form reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// The IPv4 address the packet reaches first (the NAT64 target, the
    /// 6to4 relay's destination, the ISATAP router, the Teredo server).
    pub v4: [u8; 4],
    /// A second IPv4 address that must pass too (the Teredo client).
    pub second: Option<[u8; 4]>,
    /// Length of the form's prefix in bits: an explicit IPv6 rule at least
    /// this long decides instead of the IPv4 address.
    pub prefix_len: u32,
}

impl Embedded {
    /// Whether the form reaches a local address (refused).
    #[inline(always)]
    #[must_use]
    pub fn is_local(&self) -> bool {
        is_local_v4(self.v4) || self.second.is_some_and(is_local_v4)
    }
}

/// `::ffff:a.b.c.d`, the trie's encoding of an IPv4 address.
#[inline(always)]
#[must_use]
pub const fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// Whether `a` is IPv4-mapped (`::ffff:0:0/96`).
#[inline(always)]
#[must_use]
pub fn is_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// `127.0.0.0/8` or `0.0.0.0/8`: reached only on the local host.
#[inline(always)]
#[must_use]
pub fn is_local_v4(v4: [u8; 4]) -> bool {
    v4[0] == 127 || v4[0] == 0
}

/// The IPv4 address of a NAT64 address under `p` (RFC 6052 2.2: the
/// octets skip bits 64 to 71, the "u" octet).
#[inline(always)]
fn nat64_v4(a: &[u8; 16], p: &Nat64Prefix) -> Option<[u8; 4]> {
    let n = match p.len {
        32 => 4,
        40 => 5,
        48 => 6,
        56 => 7,
        64 => 8,
        96 => 12,
        _ => return None,
    };
    let mut i = 0;
    while i < 12 {
        if i < n && a[i] != p.addr[i] {
            return None;
        }
        i += 1;
    }
    Some(match p.len {
        32 => [a[4], a[5], a[6], a[7]],
        40 => [a[5], a[6], a[7], a[9]],
        48 => [a[6], a[7], a[9], a[10]],
        56 => [a[7], a[9], a[10], a[11]],
        64 => [a[9], a[10], a[11], a[12]],
        _ => [a[12], a[13], a[14], a[15]],
    })
}

/// The embedded form of `a`, if it is one: NAT64 (the well-known prefix
/// `64:ff9b::/96` and the policy's network-specific prefixes `nsp`), 6to4
/// (`2002::/16`), Teredo (`2001::/32`: server, and the client address
/// stored inverted in the last 32 bits) or an ISATAP interface identifier
/// (`::0:5efe:a.b.c.d` and `::200:5efe:a.b.c.d` in any /64).
#[inline(always)]
#[must_use]
pub fn embedded(a: &[u8; 16], nsp: &[Nat64Prefix; MAX_NAT64_PREFIXES]) -> Option<Embedded> {
    if is_mapped(a) {
        return None;
    }
    let one = |v4: [u8; 4], prefix_len: u32| Some(Embedded { v4, second: None, prefix_len });
    if a[0] == 0 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4..12] == [0; 8] {
        return one([a[12], a[13], a[14], a[15]], 96);
    }
    let mut i = 0;
    while i < MAX_NAT64_PREFIXES {
        if let Some(v4) = nat64_v4(a, &nsp[i]) {
            return one(v4, nsp[i].len);
        }
        i += 1;
    }
    if a[0] == 0x20 && a[1] == 0x02 {
        return one([a[2], a[3], a[4], a[5]], 16);
    }
    if a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0 {
        return Some(Embedded {
            v4: [a[4], a[5], a[6], a[7]],
            second: Some([!a[12], !a[13], !a[14], !a[15]]),
            prefix_len: 32,
        });
    }
    if (a[8] == 0 || a[8] == 2) && a[9] == 0 && a[10] == 0x5e && a[11] == 0xfe {
        return one([a[12], a[13], a[14], a[15]], 64);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (head, tail) = s.split_once("::").map_or((s, ""), |(h, t)| (h, t));
        let words = |p: &str| -> [u16; 8] {
            let mut w = [0u16; 8];
            for (i, part) in p.split(':').filter(|x| !x.is_empty()).enumerate() {
                w[i] = u16::from_str_radix(part, 16).expect("hex");
            }
            w
        };
        let (h, t) = (words(head), words(tail));
        let hn = head.split(':').filter(|x| !x.is_empty()).count();
        let tn = tail.split(':').filter(|x| !x.is_empty()).count();
        let mut all = [0u16; 8];
        all[..hn].copy_from_slice(&h[..hn]);
        all[8 - tn..].copy_from_slice(&t[..tn]);
        for (i, w) in all.iter().enumerate() {
            out[i * 2..i * 2 + 2].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    const NONE: [Nat64Prefix; MAX_NAT64_PREFIXES] = [Nat64Prefix { addr: [0; 16], len: 0 }; MAX_NAT64_PREFIXES];

    fn v4(e: Option<Embedded>) -> Option<([u8; 4], Option<[u8; 4]>, u32)> {
        e.map(|e| (e.v4, e.second, e.prefix_len))
    }

    #[test]
    fn well_known_forms() {
        assert_eq!(v4(embedded(&a("64:ff9b::c612:1"), &NONE)), Some(([198, 18, 0, 1], None, 96)));
        assert_eq!(v4(embedded(&a("2002:c612:1::1"), &NONE)), Some(([198, 18, 0, 1], None, 16)));
        // Teredo: server 198.18.0.1, client 198.18.0.2 stored inverted.
        assert_eq!(
            v4(embedded(&a("2001:0:c612:1:0:0:39ed:fffd"), &NONE)),
            Some(([198, 18, 0, 1], Some([198, 18, 0, 2]), 32))
        );
        assert_eq!(v4(embedded(&a("fd00::5efe:c612:1"), &NONE)), Some(([198, 18, 0, 1], None, 64)));
        assert_eq!(v4(embedded(&a("fd00::200:5efe:c612:1"), &NONE)), Some(([198, 18, 0, 1], None, 64)));
        assert_eq!(embedded(&mapped([10, 0, 0, 1]), &NONE), None, "mapped IPv4 is IPv4, not a form");
        assert_eq!(embedded(&a("fd00::1"), &NONE), None);
        assert_eq!(embedded(&a("2001:db8::1"), &NONE), None, "2001:db8::/32 is not Teredo (2001::/32)");
        assert!(embedded(&a("64:ff9b::7f00:1"), &NONE).is_some_and(|e| e.is_local()));
        assert!(embedded(&a("2001:0:c612:1:0:0:80ff:fffe"), &NONE).is_some_and(|e| e.is_local()), "client 127.0.0.1");
    }

    #[test]
    fn network_specific_prefixes_follow_rfc_6052() {
        // RFC 6052 2.4 examples for 192.0.2.33 under 2001:db8::/32../96.
        let cases = [
            ("2001:db8::", 32, "2001:db8:c000:221::"),
            ("2001:db8:100::", 40, "2001:db8:1c0:2:21::"),
            ("2001:db8:122::", 48, "2001:db8:122:c000:2:2100::"),
            ("2001:db8:122:300::", 56, "2001:db8:122:3c0:0:221::"),
            ("2001:db8:122:344::", 64, "2001:db8:122:344:c0:2:2100:0"),
            ("2001:db8:122:344::", 96, "2001:db8:122:344::c000:221"),
        ];
        for (prefix, len, addr) in cases {
            let mut nsp = NONE;
            nsp[1] = Nat64Prefix { addr: a(prefix), len };
            assert_eq!(v4(embedded(&a(addr), &nsp)), Some(([192, 0, 2, 33], None, len)), "{prefix}/{len}");
        }
        let mut nsp = NONE;
        nsp[0] = Nat64Prefix { addr: a("2001:db8:122::"), len: 48 };
        assert_eq!(embedded(&a("2001:db8:123:c000:2:2100::"), &nsp), None, "outside the prefix");
    }
}
