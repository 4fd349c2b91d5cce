//! Which part of a policy decided a call, for deny events.
//!
//! The kernel reports what was refused (hook, address, port, protocol);
//! it does not carry rule texts. This module recomputes the decision from
//! the [`Policy`] itself, by the documented precedence, and names the rule
//! as the user wrote it. Pure; the compile tests cross-check the same
//! precedence against the compiled maps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::{
    compile::lookup_addr,
    policy::{Action, Bind, Loopback, Policy, Rule},
};

/// Why a destination got its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `loopback` setting (loopback and unspecified destinations).
    Loopback,
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
    /// The bind setting (`loopback` or `any`).
    BindSetting(&'static str),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Loopback => f.write_str("loopback setting"),
            Self::EmbeddedLocal => f.write_str("an IPv6 form (NAT64, 6to4, Teredo, ISATAP) of a local address"),
            Self::Rule { action, text, origin } => write!(f, "{action} {text} ({origin})"),
            Self::Builtin(what) => write!(f, "built-in deny of {what}"),
            Self::Default(a) => write!(f, "default {a}"),
            Self::BindSetting(s) => write!(f, "bind = \"{s}\""),
        }
    }
}

const BUILTIN: [(&str, &str); 6] = [
    ("0.0.0.0/8", "0.0.0.0/8"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast addresses"),
    ("ff00::/8", "multicast"),
    ("::/96", "IPv4-compatible IPv6"),
    ("64:ff9b:1::/48", "local-use NAT64"),
];

/// `ip` with IPv4-mapped IPv6 as IPv4 (the trie's encoding).
fn judged(ip: IpAddr) -> IpAddr {
    let a = Ipv6Addr::from(lookup_addr(ip));
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}

fn local_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
    }
}

fn best_rule(rules: &[Rule], ip: IpAddr, port: u16, tcp: bool) -> Option<(u8, &Rule)> {
    let mut best: Option<(u8, &Rule)> = None;
    for r in rules {
        let proto_ok = if tcp { r.protocols.tcp } else { r.protocols.udp };
        if !proto_ok || !r.ports.iter().any(|p| p.lo <= port && port <= p.hi) {
            continue;
        }
        for net in &r.nets {
            if !net.contains(&ip) {
                continue;
            }
            let len = net.prefix_len();
            let better = match best {
                None => true,
                Some((blen, b)) => len > blen || (len == blen && r.action == Action::Deny && b.action == Action::Allow),
            };
            if better {
                best = Some((len, r));
            }
        }
    }
    best
}

fn rule_reason(r: &Rule) -> Reason {
    Reason::Rule { action: r.action, text: r.text.clone(), origin: r.origin.to_string() }
}

/// Why a connect or send to `ip`:`port` got its verdict. Embedded IPv4
/// forms are classified as the programs do (`sbx_common::addr`): a form of
/// a local address is refused; else an explicit IPv6 rule at least as long
/// as the form's prefix decides; else the IPv4 address (for Teredo, the
/// server, then the client) decides.
#[must_use]
pub fn destination(policy: &Policy, ip: IpAddr, port: u16, tcp: bool) -> Reason {
    let nsp = crate::compile::nat64_prefixes(&policy.nat64);
    let form = match judged(ip) {
        IpAddr::V6(v6) => sbx_common::addr::embedded(&v6.octets(), &nsp),
        IpAddr::V4(_) => None,
    };
    let Some(e) = form else {
        return plain_destination(policy, judged(ip), port, tcp);
    };
    if e.is_local() {
        return Reason::EmbeddedLocal;
    }
    let explicit = policy
        .rules
        .iter()
        .flat_map(|r| &r.nets)
        .any(|n| matches!(n, IpNet::V6(_)) && n.contains(&ip) && u32::from(n.prefix_len()) >= e.prefix_len);
    if explicit {
        return plain_destination(policy, ip, port, tcp);
    }
    let first = plain_destination(policy, IpAddr::V4(Ipv4Addr::from(e.v4)), port, tcp);
    match (e.second, first.allows()) {
        (Some(client), true) => plain_destination(policy, IpAddr::V4(Ipv4Addr::from(client)), port, tcp),
        _ => first,
    }
}

impl Reason {
    /// Whether this reason lets the call through (for the two-address
    /// Teredo form, where the server's reason may allow and the client's
    /// then decides).
    fn allows(&self) -> bool {
        matches!(self, Self::Rule { action: Action::Allow, .. } | Self::Default(Action::Allow))
    }
}

fn plain_destination(policy: &Policy, ip: IpAddr, port: u16, tcp: bool) -> Reason {
    if local_host(ip) {
        return Reason::Loopback;
    }
    let user = best_rule(&policy.rules, ip, port, tcp);
    let builtin = BUILTIN
        .iter()
        .filter_map(|(net, what)| {
            let net: IpNet = net.parse().expect("literal");
            net.contains(&ip).then_some((net.prefix_len(), *what))
        })
        .max_by_key(|(len, _)| *len);
    match (user, builtin) {
        (Some((ulen, r)), Some((blen, _))) if ulen >= blen => rule_reason(r),
        (_, Some((_, what))) => Reason::Builtin(what),
        (Some((_, r)), None) => rule_reason(r),
        (None, None) => Reason::Default(policy.default),
    }
}

/// Why a bind to `ip`:`port` got its verdict.
#[must_use]
pub fn bind(policy: &Policy, ip: IpAddr, port: u16, tcp: bool) -> Reason {
    match &policy.bind {
        Bind::Any => Reason::BindSetting("any"),
        Bind::Loopback => Reason::BindSetting("loopback"),
        Bind::Rules(rules) => {
            best_rule(rules, judged(ip), port, tcp).map_or(Reason::Default(Action::Deny), |(_, r)| rule_reason(r))
        }
    }
}

/// Text for the loopback setting, for display next to [`Reason::Loopback`].
#[must_use]
pub fn loopback_text(policy: &Policy) -> String {
    match &policy.loopback {
        Loopback::Any => "any".into(),
        Loopback::None => "none".into(),
        Loopback::Ports(p) => crate::policy::ports_text(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FlagInput, Policy};

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let flags = FlagInput {
            allow: allow.iter().map(ToString::to_string).collect(),
            deny: deny.iter().map(ToString::to_string).collect(),
            ..FlagInput::default()
        };
        Policy::from_sources(None, None, &flags).expect("valid")
    }

    #[test]
    fn names_the_deciding_rule() {
        let p = policy(&["10.1.2.3:5432"], &["private"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(matches!(destination(&p, ip("10.1.2.3"), 5432, true), Reason::Rule { action: Action::Allow, .. }));
        let r = destination(&p, ip("10.1.2.3"), 80, true);
        assert_eq!(r.to_string(), "deny private (--deny)");
        assert_eq!(destination(&p, ip("::ffff:10.9.9.9"), 80, true).to_string(), "deny private (--deny)");
        assert_eq!(destination(&p, ip("8.8.8.8"), 53, false), Reason::Default(Action::Deny));
        assert_eq!(destination(&p, ip("127.0.0.1"), 1, true), Reason::Loopback);
        assert_eq!(destination(&p, ip("::"), 1, true), Reason::Loopback);
        assert_eq!(destination(&p, ip("64:ff9b::7f00:1"), 1, true), Reason::EmbeddedLocal);
        assert_eq!(destination(&p, ip("64:ff9b::a01:203"), 80, true).to_string(), "deny private (--deny)");
        // Teredo via an allowed server to a private client: the client decides.
        let t = policy(&["198.18.0.1"], &["private"]);
        assert_eq!(destination(&t, ip("2001:0:c612:1::f5fe:fdfe"), 3544, false).to_string(), "deny private (--deny)");
        // An explicit IPv6 rule as specific as the form's prefix decides.
        let x = policy(&["[64:ff9b::a01:203]"], &["private"]);
        assert!(matches!(destination(&x, ip("64:ff9b::a01:203"), 1, true), Reason::Rule { action: Action::Allow, .. }));
        assert_eq!(destination(&p, ip("224.0.0.251"), 5353, false), Reason::Builtin("multicast"));
    }

    #[test]
    fn tie_goes_to_deny_and_specific_beats_builtin() {
        let p = policy(&["10.0.0.1", "224.0.0.251:5353"], &["10.0.0.1"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(matches!(destination(&p, ip("10.0.0.1"), 1, true), Reason::Rule { action: Action::Deny, .. }));
        assert!(matches!(destination(&p, ip("224.0.0.251"), 5353, false), Reason::Rule { action: Action::Allow, .. }));
    }
}
