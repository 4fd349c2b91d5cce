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
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use ipnet::IpNet;
use sbx_common::{
    addr::{self, Nat64Prefix, MAX_NAT64_PREFIXES},
    PortSegment, PortTable, TrieAddr, MAX_SEGMENTS, VERDICT_ALLOW, VERDICT_DENY,
};

use crate::policy::{Action, Bind, Dns, Loopback, Policy, PortRange, Protocols, Rule, DNS_PORT};

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

/// Low-priority deny entries for non-unicast and deprecated address forms.
fn special_denies() -> [Prefix; 6] {
    [
        v4([0, 0, 0, 0], 8),
        v4([224, 0, 0, 0], 4),
        v4([240, 0, 0, 0], 4),
        v6("ff00::", 8),
        v6("::", 96),
        v6("64:ff9b:1::", 48),
    ]
}

/// A verdict as a function of port, for one protocol: `(first port,
/// verdict)` pieces sorted by port, the first starting at 0.
type PortFn = Vec<(u16, u8)>;
/// A partial function: disjoint sorted `(lo, hi, verdict)` ranges.
type Partial = Vec<(u16, u16, u8)>;

fn uniform(v: u8) -> PortFn {
    vec![(0, v)]
}

fn at(f: &PortFn, port: u16) -> u8 {
    let i = f.partition_point(|&(start, _)| start <= port);
    f[i - 1].1
}

fn partial_at(p: &Partial, port: u16) -> Option<u8> {
    let i = p.partition_point(|&(lo, _, _)| lo <= port);
    (i > 0 && p[i - 1].1 >= port).then(|| p[i - 1].2)
}

/// `top` where it is defined, `bottom` elsewhere.
fn overlay(top: &Partial, bottom: &PortFn) -> PortFn {
    if top.is_empty() {
        return bottom.clone();
    }
    let mut points: Vec<u32> = bottom.iter().map(|&(s, _)| u32::from(s)).collect();
    for &(lo, hi, _) in top {
        points.push(u32::from(lo));
        points.push(u32::from(hi) + 1);
    }
    points.sort_unstable();
    points.dedup();
    let mut out: PortFn = Vec::new();
    for p in points.into_iter().filter(|&p| u16::try_from(p).is_ok()) {
        let port = u16::try_from(p).expect("filtered to u16");
        let v = partial_at(top, port).unwrap_or_else(|| at(bottom, port));
        if out.last().is_none_or(|&(_, last)| last != v) {
            out.push((port, v));
        }
    }
    out
}

/// What the rules at one prefix say, for one protocol: deny wins over allow.
fn own_partial(rules: &[&CRule], tcp: bool) -> Partial {
    let pick = |action: Action| -> Vec<PortRange> {
        let ranges = rules
            .iter()
            .filter(|r| r.action == action && if tcp { r.protocols.tcp } else { r.protocols.udp })
            .flat_map(|r| r.ports.iter().copied())
            .collect();
        crate::policy::merge_ranges(ranges)
    };
    let deny = pick(Action::Deny);
    let allow = pick(Action::Allow);
    let deny_p: Partial = deny.iter().map(|r| (r.lo, r.hi, VERDICT_DENY)).collect();
    // Allow ranges minus deny ranges, then merged with the deny ranges.
    let mut out = deny_p.clone();
    for a in allow {
        let mut lo = u32::from(a.lo);
        let hi = u32::from(a.hi);
        for &(dlo, dhi, _) in &deny_p {
            let (dlo, dhi) = (u32::from(dlo), u32::from(dhi));
            if dhi < lo || dlo > hi {
                continue;
            }
            if dlo > lo {
                out.push((to16(lo), to16(dlo - 1), VERDICT_ALLOW));
            }
            lo = dhi + 1;
        }
        if lo <= hi {
            out.push((to16(lo), to16(hi), VERDICT_ALLOW));
        }
    }
    out.sort_unstable();
    out
}

fn to16(v: u32) -> u16 {
    u16::try_from(v).expect("port arithmetic stays within 0..=65535")
}

/// A rule lowered to one prefix.
#[derive(Clone, Debug)]
struct CRule {
    prefix: Prefix,
    action: Action,
    protocols: Protocols,
    ports: Vec<PortRange>,
    /// User rules outrank the built-in special denies at the same prefix.
    user: bool,
    /// Index of the user rule, for error messages.
    source: Option<usize>,
}

/// Verdict functions for both protocols.
#[derive(Clone, Debug)]
struct Resolved {
    tcp: PortFn,
    udp: PortFn,
}

/// Tables shared by both tries, deduplicated by content.
#[derive(Default)]
struct TableSet {
    tables: Vec<PortTable>,
    index: HashMap<PortTable, u32>,
}

impl TableSet {
    fn intern(&mut self, t: &PortTable) -> u32 {
        *self.index.entry(*t).or_insert_with(|| {
            self.tables.push(*t);
            u32::try_from(self.tables.len() - 1).expect("fewer than 2^32 tables")
        })
    }
}

/// Turns a resolved pair of functions into a [`PortTable`]: the most common
/// verdict pair becomes the table default and the rest become segments.
fn to_table(r: &Resolved) -> Result<PortTable, usize> {
    let mut points: Vec<u16> = r.tcp.iter().chain(&r.udp).map(|&(s, _)| s).collect();
    points.sort_unstable();
    points.dedup();
    // (lo, hi, tcp, udp), coalesced.
    let mut pieces: Vec<(u16, u16, u8, u8)> = Vec::new();
    for (i, &lo) in points.iter().enumerate() {
        let hi = points.get(i + 1).map_or(u16::MAX, |&n| n - 1);
        let (t, u) = (at(&r.tcp, lo), at(&r.udp, lo));
        match pieces.last_mut() {
            Some(last) if last.2 == t && last.3 == u => last.1 = hi,
            _ => pieces.push((lo, hi, t, u)),
        }
    }
    let mut coverage: HashMap<(u8, u8), u32> = HashMap::new();
    for &(lo, hi, t, u) in &pieces {
        *coverage.entry((t, u)).or_default() += u32::from(hi - lo) + 1;
    }
    let (&default, _) =
        coverage.iter().max_by_key(|&(&pair, &n)| (n, std::cmp::Reverse(pair))).expect("at least one piece");
    let segs: Vec<_> = pieces.iter().filter(|p| (p.2, p.3) != default).collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(segs.len());
    }
    let mut table = PortTable::uniform(default.0, default.1);
    table.len = u32::try_from(segs.len()).expect("at most MAX_SEGMENTS");
    for (slot, &&(lo, hi, tcp, udp)) in table.segments.iter_mut().zip(&segs) {
        *slot = PortSegment { lo, hi, tcp, udp, _pad: [0; 2] };
    }
    Ok(table)
}

fn ports_table(ports: &[PortRange], inside: u8, outside: u8) -> Resolved {
    let partial: Partial = ports.iter().map(|r| (r.lo, r.hi, inside)).collect();
    let f = overlay(&partial, &uniform(outside));
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
/// and those of longer prefixes apply on top, as anywhere else.
fn resolve(
    rules: &[CRule],
    fixed: &[(Prefix, Resolved)],
    anchors: &[(Prefix, Resolved)],
    default: Action,
    user_rules: &[Rule],
    tables: &mut TableSet,
) -> Result<Vec<TrieEntry>, CompileError> {
    let mut by_prefix: HashMap<Prefix, Vec<&CRule>> = HashMap::new();
    for r in rules {
        by_prefix.entry(r.prefix).or_default().push(r);
    }
    let fixed_map: HashMap<Prefix, &Resolved> = fixed.iter().map(|(p, r)| (*p, r)).collect();
    let anchor_map: HashMap<Prefix, &Resolved> = anchors.iter().map(|(p, r)| (*p, r)).collect();
    let mut prefixes: Vec<Prefix> = by_prefix.keys().copied().collect();
    prefixes.extend(fixed_map.keys().copied());
    prefixes.extend(anchor_map.keys().copied());
    prefixes.push(V6_ROOT);
    prefixes.push(V4_ROOT);
    prefixes.sort_unstable_by_key(|p| (p.addr, p.len));
    prefixes.dedup();

    let base = Resolved { tcp: uniform(verdict(default)), udp: uniform(verdict(default)) };
    let mut stack: Vec<(Prefix, Resolved)> = Vec::new();
    let mut out = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        while stack.last().is_some_and(|(top, _)| !top.contains(p)) {
            stack.pop();
        }
        let resolved = if let Some(f) = fixed_map.get(&p) {
            (*f).clone()
        } else {
            let parent = if let Some(a) = anchor_map.get(&p) {
                *a
            } else if p == V4_ROOT || p == V6_ROOT {
                &base
            } else {
                stack.last().map_or(&base, |(_, r)| r)
            };
            let own = by_prefix.get(&p).map_or(&[][..], Vec::as_slice);
            let (user, builtin): (Vec<&CRule>, Vec<&CRule>) = own.iter().partition(|r| r.user);
            let mut r = parent.clone();
            for (layer, tcp) in [(&builtin, true), (&builtin, false), (&user, true), (&user, false)] {
                if layer.is_empty() {
                    continue;
                }
                let f = if tcp { &mut r.tcp } else { &mut r.udp };
                *f = overlay(&own_partial(layer, tcp), f);
            }
            r
        };
        let table = to_table(&resolved).map_err(|needed| {
            let mut names: Vec<&str> = stack
                .iter()
                .map(|(q, _)| *q)
                .chain([p])
                .flat_map(|q| by_prefix.get(&q).into_iter().flatten())
                .filter_map(|r| r.source.map(|i| user_rules[i].text.as_str()))
                .collect();
            names.dedup();
            CompileError::TooManyRanges { prefix: p.display(), needed, max: MAX_SEGMENTS, rules: names.join(", ") }
        })?;
        let explicit = by_prefix.get(&p).is_some_and(|rs| rs.iter().any(|r| r.source.is_some()));
        out.push(TrieEntry {
            prefix_len: u32::from(p.len),
            addr: p.addr.to_be_bytes(),
            table: tables.intern(&table),
            explicit,
        });
        stack.push((p, resolved));
    }
    Ok(out)
}

/// Under `dns = "pinned"`, loopback port 53 belongs to sbx's stub: a
/// built-in deny on all of loopback, and a built-in allow of the stub
/// address. Built-in, so a loopback rule at the same prefix (or a longer
/// one) still decides, as the user wrote it.
fn dns_rules(dns: Dns) -> Vec<CRule> {
    let Dns::Pinned { stub } = dns else { return Vec::new() };
    let rule = |prefix, action| CRule {
        prefix,
        action,
        protocols: Protocols::BOTH,
        ports: vec![PortRange::single(DNS_PORT)],
        user: false,
        source: None,
    };
    let mut out = vec![rule(v4([127, 0, 0, 0], 8), Action::Deny), rule(v6("::1", 128), Action::Deny)];
    out.extend(stub.map(|a| rule(v4(a.octets(), 32), Action::Allow)));
    out
}

fn lower(rules: &[Rule]) -> Vec<CRule> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.nets.iter().map(move |n| CRule {
                prefix: Prefix::of(n),
                action: r.action,
                protocols: r.protocols,
                ports: r.ports.clone(),
                user: true,
                source: Some(i),
            })
        })
        .collect()
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
    dest_rules.extend(special_denies().into_iter().map(|prefix| CRule {
        prefix,
        action: Action::Deny,
        protocols: Protocols::BOTH,
        ports: vec![PortRange::ALL],
        user: false,
        source: None,
    }));
    dest_rules.extend(dns_rules(*dns));
    let local = match loopback {
        Loopback::Any => ports_table(&[], VERDICT_ALLOW, VERDICT_ALLOW),
        Loopback::None => ports_table(&[], VERDICT_DENY, VERDICT_DENY),
        Loopback::Ports(p) => ports_table(p, VERDICT_ALLOW, VERDICT_DENY),
    };
    // The setting is where loopback starts; rules inside the loopback
    // space refine it. The unspecified addresses are anchored too, so that
    // nothing reaches them, and then take their alias's entry.
    let anchors: Vec<_> = local_host_prefixes().into_iter().map(|p| (p, local.clone())).collect();
    let fixed = [(v4(VERIFY_SENTINEL.octets(), 32), ports_table(&[], VERDICT_DENY, VERDICT_DENY))];
    let mut dest = resolve(&dest_rules, &fixed, &anchors, *default, rules, &mut tables)?;
    for (unspecified, alias) in unspecified_aliases() {
        let table = longest_match(&dest, alias).map(|e| e.table).expect("the loopback anchors are entries");
        for e in dest.iter_mut().filter(|e| prefix_of(e) == unspecified) {
            e.table = table;
        }
    }

    let (bind_rules, bind_default, bind_sources): (Vec<CRule>, Action, &[Rule]) = match bind {
        Bind::Any => (Vec::new(), Action::Allow, &[]),
        Bind::Rules(r) => (lower(r), Action::Deny, r),
        Bind::Loopback => {
            let rule = |prefix, ports| CRule {
                prefix,
                action: Action::Allow,
                protocols: Protocols::BOTH,
                ports,
                user: true,
                source: None,
            };
            let zero = vec![PortRange::single(0)];
            let all = vec![PortRange::ALL];
            let [lo4, any4, lo6, any6] = local_host_prefixes();
            (
                vec![rule(lo4, all.clone()), rule(lo6, all), rule(any4, zero.clone()), rule(any6, zero)],
                Action::Deny,
                &[],
            )
        }
    };
    let bind = resolve(&bind_rules, &[], &[], bind_default, bind_sources, &mut tables)?;

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
    Ok(Compiled { dest, bind, tables: tables.tables, nat64: nat64_prefixes(nat64) })
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

fn prefix_of(e: &TrieEntry) -> Prefix {
    Prefix { addr: u128::from_be_bytes(e.addr), len: u8::try_from(e.prefix_len).expect("<= 128") }
}

/// The entry a trie lookup of `ip` finds: the longest prefix containing it.
fn longest_match(entries: &[TrieEntry], ip: IpAddr) -> Option<&TrieEntry> {
    let host = Prefix { addr: u128::from_be_bytes(lookup_addr(ip)), len: 128 };
    entries.iter().filter(|e| prefix_of(e).contains(host)).max_by_key(|e| e.prefix_len)
}

impl Compiled {
    /// The longest entry of `hook`'s trie containing `a`.
    fn entry(&self, hook: Hook, a: TrieAddr) -> Option<&TrieEntry> {
        let entries = match hook {
            Hook::Destination => &self.dest,
            Hook::Bind => &self.bind,
        };
        let host = Prefix { addr: u128::from_be_bytes(a), len: 128 };
        entries
            .iter()
            .filter(|e| {
                let p = Prefix { addr: u128::from_be_bytes(e.addr), len: u8::try_from(e.prefix_len).expect("<= 128") };
                p.contains(host)
            })
            .max_by_key(|e| e.prefix_len)
    }

    fn table_verdict(&self, entry: Option<&TrieEntry>, port: u16, tcp: bool) -> u8 {
        let Some(entry) = entry else {
            return VERDICT_DENY;
        };
        let t = &self.tables[entry.table as usize];
        let seg = t.segments[..t.len as usize].iter().find(|s| s.lo <= port && port <= s.hi);
        match (seg, tcp) {
            (Some(s), true) => s.tcp,
            (Some(s), false) => s.udp,
            (None, true) => t.default_tcp,
            (None, false) => t.default_udp,
        }
    }

    /// What the programs would decide, computed in userspace from the same
    /// entries and the same classification (`sbx_common::addr`): the
    /// longest-prefix match and its port table; an embedded IPv4 form is
    /// judged as the IPv4 address(es) it reaches unless an explicit rule at
    /// least as long as the form's prefix matches it; a form of a local
    /// address is refused; bind judges the address itself. `tcp` selects
    /// the protocol. Used by tests and to
    /// explain decisions.
    #[must_use]
    pub fn verdict(&self, hook: Hook, ip: IpAddr, port: u16, tcp: bool) -> u8 {
        let a = lookup_addr(ip);
        let form = if hook == Hook::Destination { addr::embedded(&a, &self.nat64) } else { None };
        let Some(e) = form else {
            return self.table_verdict(self.entry(hook, a), port, tcp);
        };
        if e.is_local() {
            return VERDICT_DENY;
        }
        let hit = self.entry(hook, a);
        if let Some(h) = hit.filter(|h| h.explicit && h.prefix_len >= e.prefix_len) {
            return self.table_verdict(Some(h), port, tcp);
        }
        let first = self.table_verdict(self.entry(hook, addr::mapped(e.v4)), port, tcp);
        match e.second {
            Some(client) if first == VERDICT_ALLOW => {
                self.table_verdict(self.entry(hook, addr::mapped(client)), port, tcp)
            }
            _ => first,
        }
    }
}

#[cfg(test)]
mod tests;
