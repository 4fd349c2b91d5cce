//! Reasons as users read them. That `explain` gives the kernel's verdict
//! for every address is the randomized cross-check in `compile/tests.rs`.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    compile::{compile, DEFAULT_MAX_ENTRIES},
    policy::{Dns, FlagInput, Policy},
};

fn policy(allow: &[&str], deny: &[&str]) -> Policy {
    let flags = FlagInput {
        allow: allow.iter().map(ToString::to_string).collect(),
        deny: deny.iter().map(ToString::to_string).collect(),
        ..FlagInput::default()
    };
    Policy::from_sources(None, None, &flags).expect("valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

/// Compiles `p` and explains a destination.
fn destination(p: &Policy, a: &str, port: u16, tcp: bool) -> Reason {
    let c = compile(p, DEFAULT_MAX_ENTRIES).expect("compiles");
    explain(p, &c.provenance, Hook::Destination, ip(a), port, tcp)
}

fn text(p: &Policy, a: &str, port: u16, tcp: bool) -> String {
    destination(p, a, port, tcp).to_string()
}

#[test]
fn names_the_deciding_rule() {
    let p = policy(&["10.1.2.3:5432"], &["private"]);
    assert!(matches!(destination(&p, "10.1.2.3", 5432, true), Reason::Rule { action: Action::Allow, .. }));
    assert_eq!(text(&p, "10.1.2.3", 80, true), "deny private (--deny)");
    assert_eq!(text(&p, "::ffff:10.9.9.9", 80, true), "deny private (--deny)");
    assert_eq!(destination(&p, "8.8.8.8", 53, false), Reason::Default(Action::Deny));
    assert_eq!(text(&p, "127.0.0.1", 1, true), "loopback = any");
    assert_eq!(text(&p, "::", 1, true), "loopback = any");
    assert_eq!(destination(&p, "64:ff9b::7f00:1", 1, true), Reason::EmbeddedLocal);
    assert_eq!(text(&p, "64:ff9b::a01:203", 80, true), "deny private (--deny)");
    // Teredo via an allowed server to a private client: the client decides.
    let t = policy(&["198.18.0.1"], &["private"]);
    assert_eq!(text(&t, "2001:0:c612:1::f5fe:fdfe", 3544, false), "deny private (--deny)");
    // An explicit IPv6 rule as specific as the form's prefix decides.
    let x = policy(&["[64:ff9b::a01:203]"], &["private"]);
    assert!(matches!(destination(&x, "64:ff9b::a01:203", 1, true), Reason::Rule { action: Action::Allow, .. }));
    assert_eq!(destination(&p, "224.0.0.251", 5353, false), Reason::Builtin("multicast"));
    assert_eq!(text(&p, "240.0.0.1", 1, true), "built-in deny of reserved and broadcast addresses");
}

#[test]
fn names_the_loopback_rule_that_decided() {
    let p = policy(&["tcp://127.0.0.1:5432"], &["127.0.0.53:53", "loopback:2375"]);
    assert_eq!(text(&p, "127.0.0.53", 53, false), "deny 127.0.0.53:53 (--deny)");
    assert_eq!(text(&p, "::ffff:127.0.0.53", 53, true), "deny 127.0.0.53:53 (--deny)");
    assert_eq!(text(&p, "127.0.0.1", 2375, true), "deny loopback:2375 (--deny)");
    assert_eq!(text(&p, "::1", 2375, true), "deny loopback:2375 (--deny)");
    // The unspecified addresses take their loopback alias's reasons.
    assert_eq!(text(&p, "0.0.0.0", 2375, true), "deny loopback:2375 (--deny)");
    assert_eq!(text(&p, "::", 2375, true), "deny loopback:2375 (--deny)");
    assert_eq!(text(&p, "0.0.0.0", 5432, true), "allow tcp://127.0.0.1:5432 (--allow)");
    assert_eq!(destination(&p, "127.0.0.1", 5432, false), Reason::Loopback("any".into()));
    assert_eq!(destination(&p, "127.0.0.2", 53, false), Reason::DnsPinned(false));
    assert_eq!(destination(&p, "127.255.255.254", 53, false), Reason::VerifySentinel);
}

#[test]
fn names_the_dns_setting_on_loopback_port_53() {
    let mut p = policy(&["127.0.0.53:53"], &[]);
    p.dns = Dns::Pinned { stub: Some(Ipv4Addr::new(127, 53, 0, 9)) };
    assert_eq!(destination(&p, "127.0.0.1", 53, false), Reason::DnsPinned(false));
    assert_eq!(destination(&p, "0.0.0.0", 53, true), Reason::DnsPinned(false));
    assert_eq!(destination(&p, "::1", 53, false), Reason::DnsPinned(false));
    assert_eq!(destination(&p, "127.53.0.9", 53, false), Reason::DnsPinned(true));
    assert!(matches!(destination(&p, "127.0.0.53", 53, false), Reason::Rule { action: Action::Allow, .. }));
    assert_eq!(destination(&p, "127.0.0.1", 54, false), Reason::Loopback("any".into()));
    assert!(text(&p, "::1", 53, true).starts_with("dns = \"pinned\": loopback port 53"));
    p.dns = Dns::Host;
    assert_eq!(destination(&p, "127.0.0.1", 53, false), Reason::Loopback("any".into()));
}

#[test]
fn names_settings() {
    let mut p = policy(&[], &[]);
    p.loopback = Loopback::Ports(vec![crate::policy::PortRange::single(80)]);
    assert_eq!(text(&p, "127.0.0.1", 81, true), "loopback = 80");
    // Proxy-only mode names itself where the default decides.
    let proxy = |addr: &str| {
        let flags = FlagInput { proxy: Some(addr.into()), ..FlagInput::default() };
        Policy::from_sources(None, None, &flags).expect("valid")
    };
    let remote = proxy("198.18.0.9:3128");
    assert_eq!(
        text(&remote, "198.18.0.1", 443, true),
        "default deny (proxy-only mode: only the proxy 198.18.0.9:3128 and allowed rules)"
    );
    assert_eq!(text(&remote, "198.18.0.9", 3128, true), "allow tcp://198.18.0.9:3128 (--proxy)");
    // A proxy on loopback is reached through the loopback setting.
    assert_eq!(text(&proxy("127.0.0.1:3128"), "127.0.0.1", 3128, true), "loopback = 3128");
    // Bind: the setting, or the bind rule.
    let c = compile(&p, DEFAULT_MAX_ENTRIES).expect("compiles");
    let bind = |a: &str, port| explain(&p, &c.provenance, Hook::Bind, ip(a), port, true).to_string();
    assert_eq!(bind("0.0.0.0", 80), "bind = \"loopback\"");
    assert_eq!(bind("10.0.0.1", 0), "bind = \"loopback\"");
}

#[test]
fn tie_goes_to_deny_and_specific_beats_builtin() {
    let p = policy(&["10.0.0.1", "224.0.0.251:5353"], &["10.0.0.1"]);
    assert!(matches!(destination(&p, "10.0.0.1", 1, true), Reason::Rule { action: Action::Deny, .. }));
    assert!(matches!(destination(&p, "224.0.0.251", 5353, false), Reason::Rule { action: Action::Allow, .. }));
}

#[test]
fn the_first_written_of_equal_rules_is_named() {
    let p = policy(&[], &["10.0.0.0/8:80", "private", "10.0.0.0/8"]);
    assert_eq!(text(&p, "10.0.0.1", 80, true), "deny 10.0.0.0/8:80 (--deny)");
    assert_eq!(text(&p, "10.0.0.1", 81, true), "deny private (--deny)");
}

#[test]
fn a_rule_index_past_the_policy_is_unknown() {
    let p = policy(&[], &[]);
    let d = Decided { verdict: VERDICT_DENY, source: Source::rule(3) };
    assert_eq!(reason(&p, Hook::Destination, d), Reason::Unknown);
}
