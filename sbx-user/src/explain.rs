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
    policy::{Action, Bind, Dns, Loopback, Policy, Rule, DNS_PORT},
};

/// Why a destination got its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `loopback` setting (loopback and unspecified destinations no
    /// loopback rule decides).
    Loopback,
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
    /// The bind setting (`loopback` or `any`).
    BindSetting(&'static str),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Loopback => f.write_str("loopback setting"),
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

/// The loopback address the kernel connects an unspecified one to.
fn unalias(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The rule that decides among those matching (longest prefix, deny on a
/// tie). With `loopback`, only rules inside the loopback space count, as
/// only they apply to loopback destinations.
fn best_rule(rules: &[Rule], ip: IpAddr, port: u16, tcp: bool) -> Option<(u8, &Rule)> {
    best_rule_in(rules, ip, port, tcp, false)
}

fn best_rule_in(rules: &[Rule], ip: IpAddr, port: u16, tcp: bool, loopback: bool) -> Option<(u8, &Rule)> {
    let mut best: Option<(u8, &Rule)> = None;
    for r in rules {
        let proto_ok = if tcp { r.protocols.tcp } else { r.protocols.udp };
        if !proto_ok || !r.ports.iter().any(|p| p.lo <= port && port <= p.hi) {
            continue;
        }
        for net in &r.nets {
            if !net.contains(&ip) || (loopback && !crate::policy::is_loopback_net(net)) {
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
    if ip == IpAddr::V4(crate::compile::VERIFY_SENTINEL) {
        return Reason::VerifySentinel;
    }
    if local_host(ip) {
        let ip = unalias(ip);
        let user = best_rule_in(&policy.rules, ip, port, tcp, true);
        // The built-in port 53 rules of dns = "pinned" sit below user
        // rules of the same prefix (see `compile`).
        let builtin = match (policy.dns, ip) {
            (Dns::Pinned { stub }, IpAddr::V4(a)) if port == DNS_PORT => {
                Some(if stub == Some(a) { (32, true) } else { (8, false) })
            }
            (Dns::Pinned { .. }, IpAddr::V6(_)) if port == DNS_PORT => Some((128, false)),
            _ => None,
        };
        return match (user, builtin) {
            (Some((ulen, r)), Some((blen, _))) if ulen >= blen => rule_reason(r),
            (_, Some((_, stub))) => Reason::DnsPinned(stub),
            (Some((_, r)), None) => rule_reason(r),
            (None, None) => Reason::Loopback,
        };
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

/// Whether a TCP (`tcp`) or UDP connect to `ip`:`port` is allowed, by the
/// same precedence as [`destination`] (the verdict its reason gives).
#[must_use]
pub fn allows_destination(policy: &Policy, ip: IpAddr, port: u16, tcp: bool) -> bool {
    match destination(policy, ip, port, tcp) {
        Reason::Loopback => match &policy.loopback {
            Loopback::Any => true,
            Loopback::None => false,
            Loopback::Ports(p) => p.iter().any(|r| r.lo <= port && port <= r.hi),
        },
        Reason::DnsPinned(stub) => stub,
        Reason::Rule { action, .. } | Reason::Default(action) => action == Action::Allow,
        Reason::VerifySentinel | Reason::EmbeddedLocal | Reason::Builtin(_) | Reason::BindSetting(_) => false,
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
    fn names_the_loopback_rule_that_decided() {
        let p = policy(&["tcp://127.0.0.1:5432"], &["127.0.0.53:53", "loopback:2375"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let text = |a: &str, port: u16, tcp: bool| destination(&p, ip(a), port, tcp).to_string();
        assert_eq!(text("127.0.0.53", 53, false), "deny 127.0.0.53:53 (--deny)");
        assert_eq!(text("::ffff:127.0.0.53", 53, true), "deny 127.0.0.53:53 (--deny)");
        assert_eq!(text("127.0.0.1", 2375, true), "deny loopback:2375 (--deny)");
        assert_eq!(text("::1", 2375, true), "deny loopback:2375 (--deny)");
        assert_eq!(text("0.0.0.0", 2375, true), "deny loopback:2375 (--deny)");
        assert_eq!(text("::", 2375, true), "deny loopback:2375 (--deny)");
        assert_eq!(text("0.0.0.0", 5432, true), "allow tcp://127.0.0.1:5432 (--allow)");
        assert_eq!(destination(&p, ip("127.0.0.1"), 5432, false), Reason::Loopback);
        assert_eq!(destination(&p, ip("127.0.0.2"), 53, false), Reason::DnsPinned(false));
        assert_eq!(destination(&p, ip("127.255.255.254"), 53, false), Reason::VerifySentinel);
    }

    #[test]
    fn names_the_dns_setting_on_loopback_port_53() {
        let mut p = policy(&["127.0.0.53:53"], &[]);
        p.dns = Dns::Pinned { stub: Some(Ipv4Addr::new(127, 53, 0, 9)) };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(destination(&p, ip("127.0.0.1"), 53, false), Reason::DnsPinned(false));
        assert_eq!(destination(&p, ip("0.0.0.0"), 53, true), Reason::DnsPinned(false));
        assert_eq!(destination(&p, ip("::1"), 53, false), Reason::DnsPinned(false));
        assert_eq!(destination(&p, ip("127.53.0.9"), 53, false), Reason::DnsPinned(true));
        assert!(matches!(destination(&p, ip("127.0.0.53"), 53, false), Reason::Rule { action: Action::Allow, .. }));
        assert_eq!(destination(&p, ip("127.0.0.1"), 54, false), Reason::Loopback);
        assert!(destination(&p, ip("::1"), 53, true).to_string().starts_with("dns = \"pinned\": loopback port 53"));
        p.dns = Dns::Host;
        assert_eq!(destination(&p, ip("127.0.0.1"), 53, false), Reason::Loopback);
    }

    #[test]
    fn allows_agrees_with_the_compiled_maps() {
        // The verdict explain gives is the one the maps hold.
        let mut p = policy(&["tcp://127.0.0.1:5432", "10.1.2.3:443"], &["127.0.0.53:53", "loopback:2375", "private"]);
        p.dns = Dns::Pinned { stub: Some(Ipv4Addr::new(127, 53, 0, 9)) };
        let c = crate::compile::compile(&p, crate::compile::DEFAULT_MAX_ENTRIES).expect("compiles");
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "127.0.0.53",
            "127.53.0.9",
            "10.1.2.3",
            "10.9.9.9",
            "8.8.8.8",
            "127.255.255.254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            for port in [1, 53, 443, 2375, 5432] {
                for tcp in [true, false] {
                    let want = c.verdict(crate::compile::Hook::Destination, ip, port, tcp) == sbx_common::VERDICT_ALLOW;
                    assert_eq!(allows_destination(&p, ip, port, tcp), want, "{ip} {port} tcp={tcp}");
                }
            }
        }
    }

    #[test]
    fn tie_goes_to_deny_and_specific_beats_builtin() {
        let p = policy(&["10.0.0.1", "224.0.0.251:5353"], &["10.0.0.1"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(matches!(destination(&p, ip("10.0.0.1"), 1, true), Reason::Rule { action: Action::Deny, .. }));
        assert!(matches!(destination(&p, ip("224.0.0.251"), 5353, false), Reason::Rule { action: Action::Allow, .. }));
    }
}
