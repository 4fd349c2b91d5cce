//! Which part of a policy decided a call, for deny events and `verify`.
//!
//! The kernel reports what was refused (hook, address, port, protocol);
//! it does not carry rule texts. [`crate::compile`] records, for every
//! trie entry and port range, the rule or setting that produced its
//! verdict: a [`Provenance`], kept in the sandbox's record. Explaining a
//! call is one lookup in it by the steps the programs take (the longest
//! prefix containing the address, then the port range; embedded IPv4
//! forms classified by [`sbx_common::addr`]), so the answer is the
//! kernel's verdict and the rule that produced it, with no rule scanned
//! and nothing decided a second time. The compile tests check, over
//! thousands of random policies, that it agrees with the port tables the
//! maps hold and with a reference evaluator.

use std::net::IpAddr;

use sbx_common::{
    addr::{self, Nat64Prefix, MAX_NAT64_PREFIXES},
    VERDICT_ALLOW, VERDICT_DENY,
};

use crate::{
    compile::{lookup_addr, Hook},
    policy::{Action, Bind, Loopback, Policy},
};

mod codec;

/// What produced a verdict: a user rule (by index) or a setting. Compact
/// (one `u32`), so a provenance of 100,000 entries stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(u32);

impl Source {
    /// No rule matched: the `default` setting (for bind rules: deny).
    pub const DEFAULT: Self = Self(0);
    /// The `loopback` setting.
    pub const LOOPBACK: Self = Self(1);
    /// [`crate::compile::VERIFY_SENTINEL`], always refused.
    pub const SENTINEL: Self = Self(2);
    /// `dns = "pinned"`: loopback port 53 refused.
    pub const DNS_PINNED: Self = Self(3);
    /// `dns = "pinned"`: `run`'s stub on loopback port 53.
    pub const DNS_STUB: Self = Self(4);
    /// An embedded-IPv4 form of a local address (decided at lookup).
    pub const EMBEDDED_LOCAL: Self = Self(5);
    /// `bind = "any"`.
    pub const BIND_ANY: Self = Self(6);
    /// `bind = "loopback"`.
    pub const BIND_LOOPBACK: Self = Self(7);
    const FIRST_BUILTIN: u32 = 8;
    const FIRST_RULE: u32 = 16;

    /// Built-in deny `k` (an index into compile's table of them).
    pub(crate) fn builtin(k: usize) -> Self {
        let k = u32::try_from(k).expect("a handful of built-in denies");
        assert!(Self::FIRST_BUILTIN + k < Self::FIRST_RULE, "room for the built-in denies");
        Self(Self::FIRST_BUILTIN + k)
    }

    /// User rule `i` of the trie's rule list (`rules`, or bind's rules).
    pub(crate) fn rule(i: usize) -> Self {
        Self(Self::FIRST_RULE + u32::try_from(i).expect("fewer than 2^32 rules"))
    }

    /// The user rule this names, if it names one.
    #[must_use]
    pub fn rule_index(self) -> Option<usize> {
        self.0.checked_sub(Self::FIRST_RULE).map(|i| i as usize)
    }

    fn builtin_index(self) -> Option<usize> {
        (Self::FIRST_BUILTIN..Self::FIRST_RULE).contains(&self.0).then(|| (self.0 - Self::FIRST_BUILTIN) as usize)
    }

    /// The compact form: settings first, then the rules in order.
    pub(crate) fn code(self) -> u32 {
        self.0
    }

    pub(crate) fn from_code(code: u32) -> Self {
        Self(code)
    }
}

/// A verdict and what produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`].
    pub verdict: u8,
    /// The rule or setting.
    pub source: Source,
}

/// One port range of an entry: from `lo` to the next piece's `lo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First port.
    pub lo: u16,
    /// For TCP.
    pub tcp: Decided,
    /// For UDP.
    pub udp: Decided,
}

const NO_PARENT: u32 = u32::MAX;

/// One trie entry: its prefix, whether a user rule names it, and where
/// its pieces are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    addr: u128,
    len: u8,
    explicit: bool,
    first: u32,
    count: u32,
    /// The nearest entry containing this one ([`NO_PARENT`] if none).
    parent: u32,
}

impl Node {
    fn contains(&self, host: u128) -> bool {
        self.len == 0 || (self.addr ^ host) >> (128 - u32::from(self.len)) == 0
    }

    fn contains_prefix(&self, addr: u128, len: u8) -> bool {
        self.len <= len && self.contains(addr)
    }
}

/// The provenance of one trie: its entries in address order (the order
/// `compile` emits them, so entry `i` is the map entry `i`).
#[derive(Clone, Debug, Default)]
pub struct TrieSources {
    nodes: Vec<Node>,
    pieces: Vec<Piece>,
}

impl TrieSources {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self { nodes: Vec::with_capacity(n), pieces: Vec::with_capacity(n * 2) }
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Appends an entry. Entries come in `(addr, len)` order; `pieces`
    /// starts at port 0.
    pub(crate) fn push(&mut self, addr: u128, len: u8, explicit: bool, pieces: &[Piece]) {
        let mut parent = self.nodes.len().checked_sub(1);
        while let Some(i) = parent {
            if self.nodes[i].contains_prefix(addr, len) {
                break;
            }
            parent = self.parent_of(i);
        }
        let first = u32::try_from(self.pieces.len()).expect("fewer than 2^32 pieces");
        let count = u32::try_from(pieces.len()).expect("fewer than 2^32 pieces");
        self.pieces.extend_from_slice(pieces);
        let parent = parent.map_or(NO_PARENT, |p| u32::try_from(p).expect("fewer than 2^32 entries"));
        self.nodes.push(Node { addr, len, explicit, first, count, parent });
    }

    fn parent_of(&self, i: usize) -> Option<usize> {
        let p = self.nodes[i].parent;
        (p != NO_PARENT).then_some(p as usize)
    }

    /// The entry a trie lookup of `host` finds: the longest prefix
    /// containing it. A binary search for the last entry at or below
    /// `host`, then up its containing entries (at most 128).
    #[must_use]
    pub fn longest(&self, host: u128) -> Option<usize> {
        let mut i = self.nodes.partition_point(|n| n.addr <= host).checked_sub(1);
        while let Some(k) = i {
            if self.nodes[k].contains(host) {
                return Some(k);
            }
            i = self.parent_of(k);
        }
        None
    }

    /// The entry for exactly this prefix.
    pub(crate) fn find(&self, addr: u128, len: u8) -> Option<usize> {
        self.nodes.binary_search_by_key(&(addr, len), |n| (n.addr, n.len)).ok()
    }

    /// Entry `to` decides as entry `from` does (an unspecified address
    /// takes its loopback alias's verdicts).
    pub(crate) fn alias(&mut self, to: usize, from: usize) {
        let (first, count) = (self.nodes[from].first, self.nodes[from].count);
        self.nodes[to].first = first;
        self.nodes[to].count = count;
    }

    fn entry_pieces(&self, i: usize) -> &[Piece] {
        let n = &self.nodes[i];
        &self.pieces[n.first as usize..(n.first + n.count) as usize]
    }

    #[cfg(test)]
    pub(crate) fn entry_pieces_for_test(&self, i: usize) -> &[Piece] {
        self.entry_pieces(i)
    }

    /// What entry `i` decides for `port`.
    #[must_use]
    pub fn at(&self, i: usize, port: u16, tcp: bool) -> Decided {
        let pieces = self.entry_pieces(i);
        let k = pieces.partition_point(|p| p.lo <= port).max(1);
        let p = &pieces[k - 1];
        if tcp {
            p.tcp
        } else {
            p.udp
        }
    }
}

/// Equal when the entries and what they decide are: where the pieces are
/// kept (shared by an alias, or each its own after a round trip through
/// the record) does not matter.
impl PartialEq for TrieSources {
    fn eq(&self, other: &Self) -> bool {
        self.nodes.len() == other.nodes.len()
            && self.nodes.iter().zip(&other.nodes).enumerate().all(|(i, (a, b))| {
                (a.addr, a.len, a.explicit) == (b.addr, b.len, b.explicit)
                    && self.entry_pieces(i) == other.entry_pieces(i)
            })
    }
}

impl Eq for TrieSources {}

/// Which rule or setting produced every verdict of a compiled policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The NAT64 prefixes the programs classify with.
    pub nat64: [Nat64Prefix; MAX_NAT64_PREFIXES],
    /// The destination trie.
    pub dest: TrieSources,
    /// The bind trie.
    pub bind: TrieSources,
}

impl Provenance {
    fn trie(&self, hook: Hook) -> &TrieSources {
        match hook {
            Hook::Destination => &self.dest,
            Hook::Bind => &self.bind,
        }
    }

    /// What the programs decide for `ip` at `hook`, and what produced it.
    #[must_use]
    pub fn decide(&self, hook: Hook, ip: IpAddr, port: u16, tcp: bool) -> Decided {
        let trie = self.trie(hook);
        self.decide_with(hook, ip, |i| trie.at(i, port, tcp))
    }

    /// The programs' lookup, with `judge` giving what entry `i` decides
    /// for the port in question: the longest-prefix match; for an embedded
    /// IPv4 form (destinations only), refused if it reaches a local
    /// address, else an explicit entry at least as long as the form's
    /// prefix decides, else the IPv4 address(es) it reaches (for Teredo
    /// the server, then the client). One copy for `explain` and for
    /// [`crate::compile::Compiled::verdict`], which judges by the port
    /// tables instead of the pieces.
    pub(crate) fn decide_with(&self, hook: Hook, ip: IpAddr, judge: impl Fn(usize) -> Decided) -> Decided {
        let trie = self.trie(hook);
        let a = lookup_addr(ip);
        let lookup = |a: [u8; 16]| {
            trie.longest(u128::from_be_bytes(a))
                .map_or(Decided { verdict: VERDICT_DENY, source: Source::DEFAULT }, &judge)
        };
        let form = if hook == Hook::Destination { addr::embedded(&a, &self.nat64) } else { None };
        let Some(e) = form else {
            return lookup(a);
        };
        if e.is_local() {
            return Decided { verdict: VERDICT_DENY, source: Source::EMBEDDED_LOCAL };
        }
        let hit = trie.longest(u128::from_be_bytes(a));
        if let Some(h) = hit.filter(|&h| trie.nodes[h].explicit && u32::from(trie.nodes[h].len) >= e.prefix_len) {
            return judge(h);
        }
        let first = lookup(addr::mapped(e.v4));
        match e.second {
            Some(client) if first.verdict == VERDICT_ALLOW => lookup(addr::mapped(client)),
            _ => first,
        }
    }

    /// The compact text form kept in the sandbox's record: base64 of
    /// entries in address order, each with its prefix (as the difference
    /// from the previous one) and its port ranges, each range with a
    /// varint rule index and verdict per protocol. The rule texts are the
    /// record's policy; they are not repeated.
    #[must_use]
    pub fn encode(&self) -> String {
        codec::encode(self)
    }

    /// Reads [`Self::encode`]'s form; `None` if it is damaged.
    #[must_use]
    pub fn decode(text: &str) -> Option<Self> {
        codec::decode(text)
    }
}

/// Why a call got its verdict, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `loopback` setting (its text): loopback and unspecified
    /// destinations no loopback rule decides.
    Loopback(String),
    /// The address `verify` relies on being refused, on every port.
    VerifySentinel,
    /// `dns = "pinned"`: loopback port 53 is refused, except `run`'s stub
    /// (`true`: this is the stub).
    DnsPinned(bool),
    /// An embedded-IPv4 form (NAT64, 6to4, Teredo, ISATAP) of a local
    /// address, always refused.
    EmbeddedLocal,
    /// A user rule: its action, text and where it was written.
    Rule {
        /// allow/deny.
        action: Action,
        /// The rule as written.
        text: String,
        /// File and line, or flag.
        origin: String,
    },
    /// A built-in deny of a non-unicast or deprecated range.
    Builtin(&'static str),
    /// Nothing matched; the default decided.
    Default(Action),
    /// Proxy-only mode: nothing matched, so the connect is denied (only
    /// the proxy and what the rules allow are reachable).
    ProxyOnly(std::net::SocketAddr),
    /// The bind setting (`loopback` or `any`).
    BindSetting(&'static str),
    /// The record does not match what was compiled (a rule index past
    /// the policy's rules).
    Unknown,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Loopback(setting) => write!(f, "loopback = {setting}"),
            Self::DnsPinned(false) => f.write_str(
                "dns = \"pinned\": loopback port 53 is only sbx's DNS stub (a loopback rule or dns = \"host\" opens a resolver)",
            ),
            Self::DnsPinned(true) => f.write_str("dns = \"pinned\": sbx's DNS stub"),
            Self::VerifySentinel => {
                write!(f, "{} is always refused (the target of `sbx-user verify`)", crate::compile::VERIFY_SENTINEL)
            }
            Self::EmbeddedLocal => f.write_str("an IPv6 form (NAT64, 6to4, Teredo, ISATAP) of a local address"),
            Self::Rule { action, text, origin } => write!(f, "{action} {text} ({origin})"),
            Self::Builtin(what) => write!(f, "built-in deny of {what}"),
            Self::Default(a) => write!(f, "default {a}"),
            Self::ProxyOnly(p) => write!(f, "default deny (proxy-only mode: only the proxy {p} and allowed rules)"),
            Self::BindSetting(s) => write!(f, "bind = \"{s}\""),
            Self::Unknown => f.write_str("(policy unknown)"),
        }
    }
}

/// The reason `d` names, in the words of `policy` (the one compiled).
#[must_use]
pub fn reason(policy: &Policy, hook: Hook, d: Decided) -> Reason {
    let rules = match (hook, &policy.bind) {
        (Hook::Destination, _) => &policy.rules[..],
        (Hook::Bind, Bind::Rules(r)) => &r[..],
        (Hook::Bind, _) => &[],
    };
    if let Some(i) = d.source.rule_index() {
        return rules.get(i).map_or(Reason::Unknown, |r| Reason::Rule {
            action: r.action,
            text: r.text.clone(),
            origin: r.origin.to_string(),
        });
    }
    if let Some(k) = d.source.builtin_index() {
        return Reason::Builtin(crate::compile::special_deny_name(k));
    }
    match d.source {
        Source::DEFAULT if hook == Hook::Bind => Reason::Default(Action::Deny),
        Source::DEFAULT => match policy.proxy {
            Some(p) if !policy.redirect => Reason::ProxyOnly(p),
            _ => Reason::Default(policy.default),
        },
        Source::LOOPBACK => Reason::Loopback(loopback_text(&policy.loopback)),
        Source::SENTINEL => Reason::VerifySentinel,
        Source::DNS_PINNED => Reason::DnsPinned(false),
        Source::DNS_STUB => Reason::DnsPinned(true),
        Source::EMBEDDED_LOCAL => Reason::EmbeddedLocal,
        Source::BIND_ANY => Reason::BindSetting("any"),
        Source::BIND_LOOPBACK => Reason::BindSetting("loopback"),
        _ => Reason::Unknown,
    }
}

/// Why a call at `hook` to `ip`:`port` got its verdict under `policy`,
/// compiled as `provenance`: one lookup.
#[must_use]
pub fn explain(policy: &Policy, provenance: &Provenance, hook: Hook, ip: IpAddr, port: u16, tcp: bool) -> Reason {
    reason(policy, hook, provenance.decide(hook, ip, port, tcp))
}

/// Text for the loopback setting.
fn loopback_text(loopback: &Loopback) -> String {
    match loopback {
        Loopback::Any => "any".into(),
        Loopback::None => "none".into(),
        Loopback::Ports(p) => crate::policy::ports_text(p),
    }
}

#[cfg(test)]
mod tests;
