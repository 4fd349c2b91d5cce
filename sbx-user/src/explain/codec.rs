//! The record's compact form of a [`Provenance`].
//!
//! Bytes, then base64 (the record is JSON):
//! - a version byte;
//! - the NAT64 prefixes: a count, then 16 address bytes and a length each;
//! - per trie (destination, bind): a varint entry count, then per entry
//!   its prefix length (one byte), the varint difference of its address
//!   from the previous entry's, a varint `pieces << 1 | explicit`, and per
//!   piece the varint distance of its first port from the previous
//!   piece's (the first piece starts at port 0 and carries none) and one
//!   varint `source << 1 | verdict` for TCP and one for UDP.
//!
//! About 10 to 20 bytes an entry: a 100,000-rule policy adds ~2 MB to a
//! record that already holds its rules' texts.

use sbx_common::addr::Nat64Prefix;

use super::{Decided, Piece, Provenance, Source, TrieSources};

const VERSION: u8 = 1;

pub(super) fn encode(p: &Provenance) -> String {
    let mut out = Vec::with_capacity(16 + (p.dest.len() + p.bind.len()) * 12);
    out.push(VERSION);
    let used: Vec<&Nat64Prefix> = p.nat64.iter().filter(|n| n.len != 0).collect();
    out.push(u8::try_from(used.len()).expect("at most MAX_NAT64_PREFIXES"));
    for n in used {
        out.extend_from_slice(&n.addr);
        out.push(u8::try_from(n.len).expect("at most 128"));
    }
    for trie in [&p.dest, &p.bind] {
        put(&mut out, trie.nodes.len() as u128);
        let mut prev = 0_u128;
        for (i, n) in trie.nodes.iter().enumerate() {
            out.push(n.len);
            put(&mut out, n.addr - prev);
            prev = n.addr;
            let pieces = trie.entry_pieces(i);
            put(&mut out, (pieces.len() as u128) << 1 | u128::from(n.explicit));
            let mut lo = 0;
            for (k, piece) in pieces.iter().enumerate() {
                if k > 0 {
                    put(&mut out, u128::from(piece.lo - lo));
                }
                lo = piece.lo;
                for d in [piece.tcp, piece.udp] {
                    put(&mut out, u128::from(d.source.code()) << 1 | u128::from(d.verdict));
                }
            }
        }
    }
    base64(&out)
}

pub(super) fn decode(text: &str) -> Option<Provenance> {
    let bytes = unbase64(text)?;
    let mut r = Reader { bytes: &bytes, at: 0 };
    if r.byte()? != VERSION {
        return None;
    }
    let mut p = Provenance::default();
    let count = usize::from(r.byte()?);
    if count > p.nat64.len() {
        return None;
    }
    for slot in p.nat64.iter_mut().take(count) {
        let mut addr = [0; 16];
        for b in &mut addr {
            *b = r.byte()?;
        }
        *slot = Nat64Prefix { addr, len: u32::from(r.byte()?) };
    }
    for trie in [&mut p.dest, &mut p.bind] {
        let entries = usize::try_from(r.varint()?).ok()?;
        // Every entry takes at least four bytes: no allocation beyond them.
        *trie = TrieSources::with_capacity(entries.min(bytes.len() / 4));
        let mut prev: Option<(u128, u8)> = None;
        let mut pieces = Vec::new();
        for _ in 0..entries {
            let len = r.byte()?;
            let addr = prev.map_or(0, |(a, _)| a).checked_add(r.varint()?)?;
            // In order, at most 128 bits, no host bits.
            let host_bits = if len == 0 { addr } else { addr << u32::from(len).min(127) >> u32::from(len).min(127) };
            if len > 128 || (len < 128 && host_bits != 0) || prev.is_some_and(|q| q >= (addr, len)) {
                return None;
            }
            prev = Some((addr, len));
            let head = r.varint()?;
            let (n, explicit) = (usize::try_from(head >> 1).ok()?, head & 1 == 1);
            if n == 0 || n > 1 << 17 {
                return None;
            }
            pieces.clear();
            let mut lo = 0_u16;
            for k in 0..n {
                if k > 0 {
                    let step = u16::try_from(r.varint()?).ok().filter(|&s| s > 0)?;
                    lo = lo.checked_add(step)?;
                }
                let (tcp, udp) = (r.decided()?, r.decided()?);
                pieces.push(Piece { lo, tcp, udp });
            }
            trie.push(addr, len, explicit, &pieces);
        }
    }
    (r.at == bytes.len()).then_some(p)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u128> {
        let mut v = 0_u128;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn decided(&mut self) -> Option<Decided> {
        let v = self.varint()?;
        let verdict = u8::try_from(v & 1).ok()?;
        let code = u32::try_from(v >> 1).ok()?;
        Some(Decided { verdict, source: Source::from_code(code) })
    }
}

/// LEB128.
fn put(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let low = u8::try_from(v & 0x7f).expect("seven bits");
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (i, quad) in text.chunks(4).enumerate() {
        let last = i + 1 == text.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0_u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad;
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..40_u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            assert_eq!(unbase64(&base64(&bytes)).as_deref(), Some(&bytes[..]), "{n} bytes");
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(unbase64("Zm8"), None);
        assert_eq!(unbase64("Z=8="), None);
        assert_eq!(unbase64("Zm8*"), None);
    }

    #[test]
    fn damaged_forms_are_refused() {
        let p = crate::policy::Policy::from_sources(
            None,
            None,
            &crate::policy::FlagInput { allow: vec!["10.0.0.1:443".into()], ..Default::default() },
        )
        .expect("valid");
        let c = crate::compile::compile(&p, crate::compile::DEFAULT_MAX_ENTRIES).expect("compiles");
        let text = c.provenance.encode();
        assert_eq!(decode(&text).as_ref(), Some(&c.provenance));
        let bytes = unbase64(&text).expect("valid");
        // Every truncation and every flipped byte: refused or decoded,
        // never a panic.
        for cut in 0..bytes.len() {
            assert_eq!(decode(&base64(&bytes[..cut])), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&base64(&b));
            }
        }
    }
}
