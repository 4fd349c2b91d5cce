//! Compiles a [`Policy`] into the exact map entries the programs read.
//!
//! Pure: no aya, no I/O. The kernel side does a longest-prefix lookup and
//! reads one port table, so all rule precedence is resolved here:
//!
//! 1. Loopback (127.0.0.0/8, `::1`) is decided by the `loopback` setting
//!    and the rules inside the loopback space (a prefix within
//!    `127.0.0.0/8`, or `::1`): among those that match, the longest prefix
//!    decides (deny on a tie), and any of them beats the setting. Rules
//!    with shorter prefixes (`any`, `0.0.0.0/0`) never apply to loopback.
//!    The unspecified addresses are aliases: `0.0.0.0` gets exactly the
//!    verdicts of `127.0.0.1` and `::` those of `::1`, where the kernel
//!    connects them. [`VERIFY_SENTINEL`] is always denied.
//! 2. Otherwise, among the rules that match the address, port and protocol,
//!    the one with the longest prefix decides; on a tie, deny wins.
//! 3. If none matches, the default decides.
//!
//! Under `dns = "pinned"`, loopback port 53 is refused by built-in rules
//! (a deny on `127.0.0.0/8` and `::1`, an allow of `run`'s stub address)
//! that loopback rules at the same or a longer prefix override.
//!
//! sbx also adds low-priority deny entries for addresses that are not
//! ordinary unicast destinations: `0.0.0.0/8`, multicast (`224.0.0.0/4`,
//! `ff00::/8`), reserved and limited broadcast (`240.0.0.0/4`),
//! IPv4-compatible IPv6 (`::/96`) and local-use NAT64 (`64:ff9b:1::/48`).
//! A user rule at the same or a longer prefix overrides them.
//!
//! # How the resolution works
//! Every distinct prefix becomes one trie entry. An address whose longest
//! matching entry is `p` is covered by exactly the rules at `p` and at the
//! prefixes containing `p`, so the entry for `p` carries the verdict for
//! every port and protocol given those rules. Walking the prefixes in
//! address order with a stack of ancestors computes each entry from its
//! parent in time proportional to its own rules. IPv4 lives in
//! `::ffff:0:0/96`, which never inherits from IPv6 rules that happen to
//! contain it (`[::/0]` is an IPv6 rule).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr},
};

use ipnet::IpNet;
use sbx_common::{
    addr::{self, Nat64Prefix, MAX_NAT64_PREFIXES},
    PortSegment, PortTable, TrieAddr, MAX_SEGMENTS, VERDICT_ALLOW, VERDICT_DENY,
};

use crate::{
    explain::{Decided, Piece, Provenance, Source, TrieSources},
    policy::{Action, Bind, Dns, Loopback, Policy, PortRange, Protocols, Rule, DNS_PORT},
};

/// Default capacity of each trie: room for at least 100,000 rules.
pub const DEFAULT_MAX_ENTRIES: u32 = 131_072;
/// Largest capacity `--max-rules` accepts.
pub const MAX_MAX_ENTRIES: u32 = 1 << 21;

/// A trie entry: prefix and the index of its port table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrieEntry {
    /// Prefix length in the 128-bit trie space.
    pub prefix_len: u32,
    /// Address, network byte order.
    pub addr: TrieAddr,
    /// Index into [`Compiled::tables`].
    pub table: u32,
    /// Whether a user rule names exactly this prefix (see
    /// [`sbx_common::TrieValue::explicit`]).
    pub explicit: bool,
}

/// Everything the maps hold for one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// Entries of the destination trie.
    pub dest: Vec<TrieEntry>,
    /// Entries of the bind trie.
    pub bind: Vec<TrieEntry>,
    /// Port tables, deduplicated; both tries index into this.
    pub tables: Vec<PortTable>,
    /// The policy's NAT64 network-specific prefixes, for the slot.
    pub nat64: [Nat64Prefix; MAX_NAT64_PREFIXES],
    /// Which rule or setting produced each entry's verdicts, port range by
    /// port range: what `explain` and the event path look up.
    pub provenance: Provenance,
}

/// A policy that cannot be put into the maps.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// One prefix needs more distinct port ranges than a table holds.
    #[error(
        "{prefix}: the rules covering this network split the port space into {needed} ranges, more than the {max} a table holds; merge port lists or use ranges (rules involved: {rules})"
    )]
    TooManyRanges {
        /// The prefix, as a CIDR.
        prefix: String,
        /// Ranges needed.
        needed: usize,
        /// The limit ([`MAX_SEGMENTS`]).
        max: usize,
        /// Texts of the rules at and above the prefix.
        rules: String,
    },
    /// More trie entries than the configured capacity.
    #[error("the policy needs {needed} {map} entries but the map holds {max}; raise --max-rules (up to {limit})")]
    TooManyEntries {
        /// Which trie.
        map: &'static str,
        /// Entries needed.
        needed: usize,
        /// Capacity.
        max: u32,
        /// Largest capacity allowed.
        limit: u32,
    },
    /// More port ranges than one sandbox may hold in the host's array.
    #[error(
        "the policy's port lists split into {needed} distinct port ranges, more than the {max} a sandbox may hold; merge port lists or use ranges"
    )]
    TooManyPortRanges {
        /// Ranges needed (over all port tables).
        needed: u64,
        /// The limit ([`sbx_common::MAX_POLICY_SEGMENTS`]).
        max: u32,
    },
}

/// A prefix in the 128-bit trie space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Prefix {
    addr: u128,
    len: u8,
}

impl Prefix {
    fn contains(self, other: Self) -> bool {
        self.len <= other.len && (self.len == 0 || (self.addr ^ other.addr) >> (128 - u32::from(self.len)) == 0)
    }

    fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(n) => {
                Self { addr: (0xffff_u128 << 32) | u128::from(u32::from(n.network())), len: n.prefix_len() + 96 }
            }
            IpNet::V6(n) => Self { addr: u128::from(n.network()), len: n.prefix_len() },
        }
    }

    fn display(self) -> String {
        if self.len >= 96 && self.addr >> 32 == 0xffff {
            #[expect(clippy::cast_possible_truncation, reason = "low 32 bits are the IPv4 address")]
            let v4 = std::net::Ipv4Addr::from(self.addr as u32);
            format!("{v4}/{}", self.len - 96)
        } else {
            format!("{}/{}", Ipv6Addr::from(self.addr), self.len)
        }
    }
}

const V6_ROOT: Prefix = Prefix { addr: 0, len: 0 };
const V4_ROOT: Prefix = Prefix { addr: 0xffff_u128 << 32, len: 96 };

fn v4(addr: [u8; 4], len: u8) -> Prefix {
    Prefix { addr: (0xffff_u128 << 32) | u128::from(u32::from_be_bytes(addr)), len: len + 96 }
}

fn v6(s: &str, len: u8) -> Prefix {
    Prefix { addr: u128::from(s.parse::<Ipv6Addr>().expect("literal")), len }
}

/// A loopback address every policy denies, on every port, so that
/// `sbx-user verify` always has a local target that must be refused.
pub const VERIFY_SENTINEL: std::net::Ipv4Addr = std::net::Ipv4Addr::new(
    sbx_common::SENTINEL[0],
    sbx_common::SENTINEL[1],
    sbx_common::SENTINEL[2],
    sbx_common::SENTINEL[3],
);

/// Where the local host is reached: decided by `loopback` only.
fn local_host_prefixes() -> [Prefix; 4] {
    [v4([127, 0, 0, 0], 8), v4([0, 0, 0, 0], 32), v6("::1", 128), v6("::", 128)]
}

/// The unspecified addresses and the loopback address each is connected
/// to by the kernel (`ip_route_connect`, `tcp_v6_connect`): the first
/// takes the second's trie entry.
fn unspecified_aliases() -> [(Prefix, std::net::IpAddr); 2] {
    [
        (v4([0, 0, 0, 0], 32), IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        (v6("::", 128), IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// Low-priority deny entries for non-unicast and deprecated address forms,
/// and what `explain` calls each.
fn special_denies() -> [(Prefix, &'static str); 6] {
    [
        (v4([0, 0, 0, 0], 8), "0.0.0.0/8"),
        (v4([224, 0, 0, 0], 4), "multicast"),
        (v4([240, 0, 0, 0], 4), "reserved and broadcast addresses"),
        (v6("ff00::", 8), "multicast"),
        (v6("::", 96), "IPv4-compatible IPv6"),
        (v6("64:ff9b:1::", 48), "local-use NAT64"),
    ]
}

/// What `explain` calls built-in deny number `k` (see [`Source::builtin`]).
pub(crate) fn special_deny_name(k: usize) -> &'static str {
    special_denies().get(k).map_or("an address sbx does not route", |s| s.1)
}

/// A verdict and what produced it, as a function of port, for one
/// protocol: `(first port, decided)` pieces sorted by port, the first
/// starting at 0.
type PortFn = Vec<(u16, Decided)>;
/// A partial function: disjoint sorted `(lo, hi, decided)` ranges.
type Partial = Vec<(u16, u16, Decided)>;

fn uniform(d: Decided) -> PortFn {
    vec![(0, d)]
}

fn push_piece(out: &mut PortFn, port: u32, d: Decided) {
    if out.last().is_none_or(|&(_, last)| last != d) {
        out.push((to16(port), d));
    }
}

/// `top` where it is defined, `bottom` elsewhere: one merge of the two
/// sorted lists.
fn overlay(top: &Partial, bottom: &PortFn) -> PortFn {
    if top.is_empty() {
        return bottom.clone();
    }
    let mut out: PortFn = Vec::with_capacity(bottom.len() + 2 * top.len());
    // `bottom[b]` covers the port `pos` the merge has reached.
    let mut b = 0;
    let mut fill = |out: &mut PortFn, from: u32, to: u32| {
        let mut pos = from;
        while pos < to {
            while bottom.get(b + 1).is_some_and(|n| u32::from(n.0) <= pos) {
                b += 1;
            }
            push_piece(out, pos, bottom[b].1);
            pos = bottom.get(b + 1).map_or(to, |n| u32::from(n.0).min(to));
        }
    };
    let mut pos = 0_u32;
    for &(lo, hi, d) in top {
        fill(&mut out, pos, u32::from(lo));
        push_piece(&mut out, u32::from(lo), d);
        pos = u32::from(hi) + 1;
    }
    fill(&mut out, pos, 1 << 16);
    out
}

/// What the rules at one prefix say, for one protocol: deny wins over
/// allow, and among rules of one action the first written is named. One
/// rule (the common case) is its own ports; more take one sweep over
/// their port boundaries.
fn own_partial<'r, 'a: 'r>(rules: impl Iterator<Item = &'r CRule<'a>> + Clone, tcp: bool) -> Partial {
    let applies = move |r: &&CRule<'_>| if tcp { r.protocols.tcp } else { r.protocols.udp };
    let mut matching = rules.filter(applies);
    let Some(first) = matching.clone().next() else { return Vec::new() };
    if matching.clone().nth(1).is_none() {
        let d = Decided { verdict: verdict(first.action), source: first.source };
        return first.ports.iter().map(|p| (p.lo, p.hi, d)).collect();
    }
    // (position, opens, (0 deny / 1 allow, source)): the smallest active
    // key decides.
    let mut events: Vec<(u32, bool, (u8, u32))> = Vec::new();
    for r in matching.by_ref() {
        let key = (u8::from(r.action == Action::Allow), r.source.code());
        for p in r.ports {
            events.push((u32::from(p.lo), true, key));
            events.push((u32::from(p.hi) + 1, false, key));
        }
    }
    events.sort_unstable_by_key(|&(pos, _, _)| pos);
    let mut active: BTreeMap<(u8, u32), u32> = BTreeMap::new();
    let mut out: Partial = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while let Some(&(_, opens, key)) = events.get(i).filter(|e| e.0 == pos) {
            if opens {
                *active.entry(key).or_default() += 1;
            } else if let Some(n) = active.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&key);
                }
            }
            i += 1;
        }
        // Every open range closes later, so an active key has a next event.
        let (Some(&(allow, code)), Some(&(next, _, _))) = (active.keys().next(), events.get(i)) else { continue };
        let verdict = if allow == 0 { VERDICT_DENY } else { VERDICT_ALLOW };
        let d = Decided { verdict, source: Source::from_code(code) };
        let (lo, hi) = (to16(pos), to16(next - 1));
        match out.last_mut() {
            Some(last) if u32::from(last.1) + 1 == pos && last.2 == d => last.1 = hi,
            _ => out.push((lo, hi, d)),
        }
    }
    out
}

fn to16(v: u32) -> u16 {
    u16::try_from(v).expect("port arithmetic stays within 0..=65535")
}

/// A rule lowered to one prefix.
#[derive(Clone, Debug)]
struct CRule<'a> {
    prefix: Prefix,
    action: Action,
    protocols: Protocols,
    ports: &'a [PortRange],
    /// User rules outrank the built-in special denies at the same prefix.
    user: bool,
    /// The user rule (its index) or setting this comes from.
    source: Source,
}

const ALL_PORTS: [PortRange; 1] = [PortRange::ALL];
const PORT_ZERO: [PortRange; 1] = [PortRange::single(0)];
const DNS_PORTS: [PortRange; 1] = [PortRange::single(DNS_PORT)];

/// Verdict functions for both protocols.
#[derive(Clone, Debug)]
struct Resolved {
    tcp: PortFn,
    udp: PortFn,
}

impl Resolved {
    /// Both functions as one list of port ranges (each from its `lo` to
    /// the next one's), coalesced, into `out` (cleared first).
    fn pieces_into(&self, out: &mut Vec<Piece>) {
        out.clear();
        let (tcp_fn, udp_fn) = (&self.tcp, &self.udp);
        let (mut ti, mut ui) = (0, 0);
        while ti < tcp_fn.len() || ui < udp_fn.len() {
            let lo = match (tcp_fn.get(ti), udp_fn.get(ui)) {
                (Some(tp), Some(up)) => tp.0.min(up.0),
                (Some(tp), None) => tp.0,
                (None, Some(up)) => up.0,
                (None, None) => break,
            };
            ti += usize::from(tcp_fn.get(ti).is_some_and(|tp| tp.0 == lo));
            ui += usize::from(udp_fn.get(ui).is_some_and(|up| up.0 == lo));
            let (tcp, udp) = (tcp_fn[ti - 1].1, udp_fn[ui - 1].1);
            if out.last().is_none_or(|p| p.tcp != tcp || p.udp != udp) {
                out.push(Piece { lo, tcp, udp });
            }
        }
    }
}

/// Tables shared by both tries, deduplicated by content: a hash of the
/// used part of each table, chained on collision.
#[derive(Default)]
struct TableSet {
    tables: Vec<PortTable>,
    /// Hash to the newest table with it.
    heads: HashMap<u64, u32, std::hash::BuildHasherDefault<KeyHasher>>,
    /// Per table, the previous one with the same hash.
    next: Vec<Option<u32>>,
}

/// For keys that are hashes already.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

fn table_hash(t: &PortTable) -> u64 {
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    let head = u64::from(t.len) << 16 | u64::from(t.default_tcp) << 8 | u64::from(t.default_udp);
    t.segments[..t.len as usize].iter().fold(mix(0, head), |h, s| {
        mix(h, u64::from(s.lo) << 32 | u64::from(s.hi) << 16 | u64::from(s.tcp) << 8 | u64::from(s.udp))
    })
}

impl TableSet {
    fn intern(&mut self, t: &PortTable) -> u32 {
        let h = table_hash(t);
        let mut at = self.heads.get(&h).copied();
        while let Some(i) = at {
            if self.tables[i as usize] == *t {
                return i;
            }
            at = self.next[i as usize];
        }
        let i = u32::try_from(self.tables.len()).expect("fewer than 2^32 tables");
        self.tables.push(*t);
        self.next.push(self.heads.insert(h, i));
        i
    }
}

/// Turns an entry's pieces into a [`PortTable`]: the most common verdict
/// pair becomes the table default and the rest become segments.
fn to_table(pieces: &[Piece]) -> Result<PortTable, usize> {
    // (lo, hi, tcp, udp), coalesced by verdict.
    let mut ranges: Vec<(u16, u16, u8, u8)> = Vec::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        let hi = pieces.get(i + 1).map_or(u16::MAX, |n| n.lo - 1);
        let (t, u) = (p.tcp.verdict, p.udp.verdict);
        match ranges.last_mut() {
            Some(last) if last.2 == t && last.3 == u => last.1 = hi,
            _ => ranges.push((p.lo, hi, t, u)),
        }
    }
    // At most four verdict pairs: count coverage in a small array.
    let mut coverage: [((u8, u8), u32); 4] = [((0, 0), 0); 4];
    let mut kinds = 0;
    for &(lo, hi, t, u) in &ranges {
        let n = u32::from(hi - lo) + 1;
        if let Some(c) = coverage[..kinds].iter_mut().find(|c| c.0 == (t, u)) {
            c.1 += n;
        } else {
            // Verdicts are allow or deny: at most four pairs.
            coverage[kinds] = ((t, u), n);
            kinds += 1;
        }
    }
    let default = coverage[..kinds]
        .iter()
        .max_by_key(|&&(pair, n)| (n, std::cmp::Reverse(pair)))
        .map(|c| c.0)
        .expect("at least one piece");
    let needed = ranges.iter().filter(|p| (p.2, p.3) != default).count();
    if needed > MAX_SEGMENTS {
        return Err(needed);
    }
    let mut table = PortTable::uniform(default.0, default.1);
    table.len = u32::try_from(needed).expect("at most MAX_SEGMENTS");
    for (slot, &(lo, hi, tcp, udp)) in table.segments.iter_mut().zip(ranges.iter().filter(|p| (p.2, p.3) != default)) {
        *slot = PortSegment { lo, hi, tcp, udp, _pad: [0; 2] };
    }
    Ok(table)
}

fn ports_table(ports: &[PortRange], inside: u8, outside: u8, source: Source) -> Resolved {
    let partial: Partial = ports.iter().map(|r| (r.lo, r.hi, Decided { verdict: inside, source })).collect();
    let f = overlay(&partial, &uniform(Decided { verdict: outside, source }));
    Resolved { tcp: f.clone(), udp: f }
}

fn verdict(a: Action) -> u8 {
    match a {
        Action::Allow => VERDICT_ALLOW,
        Action::Deny => VERDICT_DENY,
    }
}

/// Resolves one trie. `fixed` prefixes get the given functions regardless
/// of rules. `anchors` start from the given function instead of their
/// parent's (rules on shorter prefixes do not reach them); their own rules
/// and those of longer prefixes apply on top, as anywhere else. `default`
/// is what no rule decides.
fn resolve(
    mut rules: Vec<CRule<'_>>,
    fixed: &[(Prefix, Resolved)],
    anchors: &[(Prefix, Resolved)],
    default: Decided,
    user_rules: &[Rule],
    tables: &mut TableSet,
) -> Result<(Vec<TrieEntry>, TrieSources), CompileError> {
    // In address order, so that each prefix's rules are one run.
    rules.sort_unstable_by_key(|r| (r.prefix.addr, r.prefix.len));
    let mut prefixes: Vec<Prefix> = Vec::with_capacity(rules.len() + fixed.len() + anchors.len() + 2);
    prefixes.extend(rules.iter().map(|r| r.prefix));
    prefixes.extend(fixed.iter().chain(anchors).map(|(p, _)| *p));
    prefixes.push(V6_ROOT);
    prefixes.push(V4_ROOT);
    prefixes.sort_unstable_by_key(|p| (p.addr, p.len));
    prefixes.dedup();

    let base = Resolved { tcp: uniform(default), udp: uniform(default) };
    let mut stack: Vec<(Prefix, Resolved, std::ops::Range<usize>)> = Vec::new();
    let mut out = Vec::with_capacity(prefixes.len());
    let mut sources = TrieSources::with_capacity(prefixes.len());
    let mut pieces = Vec::new();
    let mut next_rule = 0;
    for p in prefixes {
        while stack.last().is_some_and(|(top, _, _)| !top.contains(p)) {
            stack.pop();
        }
        let first = next_rule;
        while rules.get(next_rule).is_some_and(|r| r.prefix == p) {
            next_rule += 1;
        }
        let own_range = first..next_rule;
        let own = &rules[own_range.clone()];
        let resolved = if let Some(f) = find(fixed, p) {
            f.clone()
        } else {
            let parent = if let Some(a) = find(anchors, p) {
                a
            } else if p == V4_ROOT || p == V6_ROOT {
                &base
            } else {
                stack.last().map_or(&base, |(_, r, _)| r)
            };
            let mut r = parent.clone();
            for user in [false, true] {
                let layer = own.iter().filter(move |r| r.user == user);
                for tcp in [true, false] {
                    let partial = own_partial(layer.clone(), tcp);
                    if !partial.is_empty() {
                        let f = if tcp { &mut r.tcp } else { &mut r.udp };
                        *f = overlay(&partial, f);
                    }
                }
            }
            r
        };
        resolved.pieces_into(&mut pieces);
        let table = to_table(&pieces).map_err(|needed| {
            let mut names: Vec<&str> = stack
                .iter()
                .map(|(_, _, range)| &rules[range.clone()])
                .chain([own])
                .flatten()
                .filter_map(|r| r.source.rule_index().map(|i| user_rules[i].text.as_str()))
                .collect();
            names.dedup();
            CompileError::TooManyRanges { prefix: p.display(), needed, max: MAX_SEGMENTS, rules: names.join(", ") }
        })?;
        let explicit = own.iter().any(|r| r.source.rule_index().is_some());
        out.push(TrieEntry {
            prefix_len: u32::from(p.len),
            addr: p.addr.to_be_bytes(),
            table: tables.intern(&table),
            explicit,
        });
        sources.push(p.addr, p.len, explicit, &pieces);
        stack.push((p, resolved, own_range));
    }
    Ok((out, sources))
}

/// The function `list` gives prefix `p`, if it names it (a few entries).
fn find(list: &[(Prefix, Resolved)], p: Prefix) -> Option<&Resolved> {
    list.iter().find(|(q, _)| *q == p).map(|(_, r)| r)
}

/// Under `dns = "pinned"`, loopback port 53 belongs to sbx's stub: a
/// built-in deny on all of loopback, and a built-in allow of the stub
/// address. Built-in, so a loopback rule at the same prefix (or a longer
/// one) still decides, as the user wrote it.
fn dns_rules(dns: Dns) -> Vec<CRule<'static>> {
    let Dns::Pinned { stub } = dns else { return Vec::new() };
    let rule = |prefix, action, source| CRule {
        prefix,
        action,
        protocols: Protocols::BOTH,
        ports: &DNS_PORTS,
        user: false,
        source,
    };
    let mut out = vec![
        rule(v4([127, 0, 0, 0], 8), Action::Deny, Source::DNS_PINNED),
        rule(v6("::1", 128), Action::Deny, Source::DNS_PINNED),
    ];
    out.extend(stub.map(|a| rule(v4(a.octets(), 32), Action::Allow, Source::DNS_STUB)));
    out
}

fn lower(rules: &[Rule]) -> Vec<CRule<'_>> {
    let mut out = Vec::with_capacity(rules.len() + 16);
    for (i, r) in rules.iter().enumerate() {
        out.extend(r.nets.iter().map(|n| CRule {
            prefix: Prefix::of(n),
            action: r.action,
            protocols: r.protocols,
            ports: &r.ports,
            user: true,
            source: Source::rule(i),
        }));
    }
    out
}

/// Compiles `policy` for tries of capacity `max_entries`.
pub fn compile(policy: &Policy, max_entries: u32) -> Result<Compiled, CompileError> {
    // `mode` goes to the config map and `filesystem` to Landlock; neither
    // changes the tries.
    let Policy {
        default,
        loopback,
        proxy: _,
        rules,
        bind,
        mode: _,
        filesystem: _,
        redirect: _,
        unix: _,
        unix_origin: _,
        nat64,
        dns,
    } = policy;
    let mut tables = TableSet::default();

    let mut dest_rules = lower(rules);
    dest_rules.extend(special_denies().into_iter().enumerate().map(|(k, (prefix, _))| CRule {
        prefix,
        action: Action::Deny,
        protocols: Protocols::BOTH,
        ports: &ALL_PORTS,
        user: false,
        source: Source::builtin(k),
    }));
    dest_rules.extend(dns_rules(*dns));
    let local = match loopback {
        Loopback::Any => ports_table(&[], VERDICT_ALLOW, VERDICT_ALLOW, Source::LOOPBACK),
        Loopback::None => ports_table(&[], VERDICT_DENY, VERDICT_DENY, Source::LOOPBACK),
        Loopback::Ports(p) => ports_table(p, VERDICT_ALLOW, VERDICT_DENY, Source::LOOPBACK),
    };
    // The setting is where loopback starts; rules inside the loopback
    // space refine it. The unspecified addresses are anchored too, so that
    // nothing reaches them, and then take their alias's entry.
    let anchors: Vec<_> = local_host_prefixes().into_iter().map(|p| (p, local.clone())).collect();
    let fixed = [(v4(VERIFY_SENTINEL.octets(), 32), ports_table(&[], VERDICT_DENY, VERDICT_DENY, Source::SENTINEL))];
    let default = Decided { verdict: verdict(*default), source: Source::DEFAULT };
    let (mut dest, mut dest_sources) = resolve(dest_rules, &fixed, &anchors, default, rules, &mut tables)?;
    for (unspecified, alias) in unspecified_aliases() {
        let from =
            dest_sources.longest(u128::from_be_bytes(lookup_addr(alias))).expect("the loopback anchors are entries");
        let to = dest_sources.find(unspecified.addr, unspecified.len).expect("the unspecified anchors are entries");
        dest[to].table = dest[from].table;
        dest_sources.alias(to, from);
    }

    let allow_all = Decided { verdict: VERDICT_ALLOW, source: Source::BIND_ANY };
    let deny = |source| Decided { verdict: VERDICT_DENY, source };
    let (bind_rules, bind_default, bind_sources): (Vec<CRule<'_>>, Decided, &[Rule]) = match bind {
        Bind::Any => (Vec::new(), allow_all, &[]),
        Bind::Rules(r) => (lower(r), deny(Source::DEFAULT), r),
        Bind::Loopback => {
            let rule = |prefix, ports: &'static [PortRange]| CRule {
                prefix,
                action: Action::Allow,
                protocols: Protocols::BOTH,
                ports,
                user: true,
                source: Source::BIND_LOOPBACK,
            };
            let [lo4, any4, lo6, any6] = local_host_prefixes();
            (
                vec![rule(lo4, &ALL_PORTS), rule(lo6, &ALL_PORTS), rule(any4, &PORT_ZERO), rule(any6, &PORT_ZERO)],
                deny(Source::BIND_LOOPBACK),
                &[],
            )
        }
    };
    let (bind, bind_prov) = resolve(bind_rules, &[], &[], bind_default, bind_sources, &mut tables)?;

    for (map, entries) in [("destination", &dest), ("bind", &bind)] {
        if entries.len() > max_entries as usize {
            return Err(CompileError::TooManyEntries {
                map,
                needed: entries.len(),
                max: max_entries,
                limit: MAX_MAX_ENTRIES,
            });
        }
    }
    let ranges: u64 = tables.tables.iter().map(|t| u64::from(t.len)).sum();
    if ranges > u64::from(sbx_common::MAX_POLICY_SEGMENTS) {
        return Err(CompileError::TooManyPortRanges { needed: ranges, max: sbx_common::MAX_POLICY_SEGMENTS });
    }
    let nat64 = nat64_prefixes(nat64);
    let provenance = Provenance { nat64, dest: dest_sources, bind: bind_prov };
    Ok(Compiled { dest, bind, tables: tables.tables, nat64, provenance })
}

/// Which trie a simulated lookup uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// connect and sendmsg.
    Destination,
    /// bind.
    Bind,
}

/// The NAT64 prefixes as the slot carries them (unused entries zero).
#[must_use]
pub fn nat64_prefixes(nets: &[ipnet::Ipv6Net]) -> [Nat64Prefix; MAX_NAT64_PREFIXES] {
    let mut out = [Nat64Prefix::default(); MAX_NAT64_PREFIXES];
    for (slot, net) in out.iter_mut().zip(nets) {
        *slot = Nat64Prefix { addr: net.network().octets(), len: u32::from(net.prefix_len()) };
    }
    out
}

/// The trie address of `ip`: IPv4 (and IPv4-mapped IPv6) as
/// `::ffff:a.b.c.d`, other IPv6 as it is. Embedded IPv4 forms are judged
/// by [`Compiled::verdict`], as in the programs.
#[must_use]
pub fn lookup_addr(ip: IpAddr) -> TrieAddr {
    match ip {
        IpAddr::V4(v4) => addr::mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Compiled {
    /// What the programs would decide, computed in userspace from the same
    /// entries and port tables the maps hold, by the lookup `explain` uses
    /// ([`Provenance::decide_with`]: longest-prefix match, embedded IPv4
    /// forms by `sbx_common::addr`). `tcp` selects the protocol. Used by
    /// tests and `verify`.
    #[must_use]
    pub fn verdict(&self, hook: Hook, ip: IpAddr, port: u16, tcp: bool) -> u8 {
        let entries = match hook {
            Hook::Destination => &self.dest,
            Hook::Bind => &self.bind,
        };
        self.provenance
            .decide_with(hook, ip, |i| Decided {
                verdict: table_verdict(&self.tables[entries[i].table as usize], port, tcp),
                source: Source::DEFAULT,
            })
            .verdict
    }
}

/// What a port table says for `port`: its segment's verdict, else its
/// default (the programs' reading of it).
fn table_verdict(t: &PortTable, port: u16, tcp: bool) -> u8 {
    let seg = t.segments[..t.len as usize].iter().find(|s| s.lo <= port && port <= s.hi);
    match (seg, tcp) {
        (Some(s), true) => s.tcp,
        (Some(s), false) => s.udp,
        (None, true) => t.default_tcp,
        (None, false) => t.default_udp,
    }
}

#[cfg(test)]
mod tests;
