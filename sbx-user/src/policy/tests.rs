//! Table-driven tests of rule parsing, normalisation, error messages,
//! TOML files, flags, proxy-only mode, profiles and layering.

use super::*;

// ---------------------------------------------------------------------------
// Helpers.

fn origin() -> Origin {
    Origin::flag("--allow")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("test literal {s}: {e}"))
}

fn nets_of(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

const fn pr(lo: u16, hi: u16) -> PortRange {
    PortRange { lo, hi }
}

fn rule_in(text: &str, ctx: RuleContext) -> Rule {
    parse_rule(text, Action::Allow, &origin(), ctx)
        .unwrap_or_else(|e| panic!("`{text}` should parse in {ctx:?} context: {e}"))
}

fn rule(text: &str) -> Rule {
    rule_in(text, RuleContext::Destination)
}

fn rule_err_in(text: &str, ctx: RuleContext) -> String {
    match parse_rule(text, Action::Deny, &origin(), ctx) {
        Ok(r) => panic!("`{text}` should be rejected in {ctx:?} context, parsed as {r:?}"),
        Err(e) => {
            assert!(
                matches!(&e, PolicyError::Invalid { value, .. } if value == text),
                "`{text}`: error should be Invalid and quote the rule: {e:?}"
            );
            e.to_string()
        }
    }
}

fn rule_err(text: &str) -> String {
    rule_err_in(text, RuleContext::Destination)
}

fn layer(src: &str) -> Layer {
    parse_toml(src, "policy.toml").unwrap_or_else(|e| panic!("TOML should parse: {e}\n{src}"))
}

fn toml_err(src: &str) -> PolicyError {
    match parse_toml(src, "policy.toml") {
        Ok(l) => panic!("TOML should be rejected, got {l:?}\n{src}"),
        Err(e) => e,
    }
}

fn build(layers: Vec<Layer>) -> Result<Policy, PolicyError> {
    let mut b = PolicyBuilder::new();
    for l in layers {
        b.apply(l);
    }
    b.build()
}

fn policy_toml(src: &str) -> Policy {
    build(vec![layer(src)]).unwrap_or_else(|e| panic!("policy should build: {e}\n{src}"))
}

fn flags_layer(flags: &FlagInput) -> Layer {
    flags.to_layer().unwrap_or_else(|e| panic!("flags should parse: {e}\n{flags:?}"))
}

fn proxy_flags(proxy: &str) -> FlagInput {
    FlagInput { proxy: Some(proxy.to_owned()), ..FlagInput::default() }
}

// ---------------------------------------------------------------------------
// Rule parsing.

#[test]
fn parses_rules() {
    let all = vec![PortRange::ALL];
    let cases: &[(&str, Protocols, &[&str], Vec<PortRange>)] = &[
        ("10.0.0.1", Protocols::BOTH, &["10.0.0.1/32"], all.clone()),
        ("10.0.0.0/8", Protocols::BOTH, &["10.0.0.0/8"], all.clone()),
        ("10.0.0.1:443", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(443, 443)]),
        ("tcp://10.0.0.1:443", Protocols::TCP, &["10.0.0.1/32"], vec![pr(443, 443)]),
        ("udp://10.0.0.0/24:53", Protocols::UDP, &["10.0.0.0/24"], vec![pr(53, 53)]),
        ("TCP://10.0.0.1", Protocols::TCP, &["10.0.0.1/32"], all.clone()),
        ("Udp://10.0.0.1", Protocols::UDP, &["10.0.0.1/32"], all.clone()),
        ("  10.0.0.1:80  ", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 80)]),
        ("10.0.0.1:*", Protocols::BOTH, &["10.0.0.1/32"], all.clone()),
        ("10.0.0.1:0", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(0, 0)]),
        ("10.0.0.1:65535", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(65535, 65535)]),
        ("10.0.0.1:0-65535", Protocols::BOTH, &["10.0.0.1/32"], all.clone()),
        ("10.0.0.1:8000-8100", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(8000, 8100)]),
        ("10.0.0.1:5-5", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(5, 5)]),
        ("10.0.0.1:443,80", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 80), pr(443, 443)]),
        ("10.0.0.1: 80 , 443 ", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 80), pr(443, 443)]),
        // Overlapping and adjacent ranges merge; duplicates vanish.
        ("10.0.0.1:443,80,81-90,85", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 90), pr(443, 443)]),
        ("10.0.0.1:1-5,6-10", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(1, 10)]),
        ("10.0.0.1:1-5,7-10", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(1, 5), pr(7, 10)]),
        ("10.0.0.1:80,80,80", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 80)]),
        ("10.0.0.1:80,*", Protocols::BOTH, &["10.0.0.1/32"], all.clone()),
        ("10.0.0.1:65535,0-65534", Protocols::BOTH, &["10.0.0.1/32"], all.clone()),
        // Bracketed IPv6, with and without ports and prefix.
        ("[2001:db8::1]:443", Protocols::BOTH, &["2001:db8::1/128"], vec![pr(443, 443)]),
        ("tcp://[2001:db8::1]:80,443", Protocols::TCP, &["2001:db8::1/128"], vec![pr(80, 80), pr(443, 443)]),
        ("[2001:db8::/32]:8000-8100", Protocols::BOTH, &["2001:db8::/32"], vec![pr(8000, 8100)]),
        ("[2001:db8::1]", Protocols::BOTH, &["2001:db8::1/128"], all.clone()),
        ("[10.0.0.1]:80", Protocols::BOTH, &["10.0.0.1/32"], vec![pr(80, 80)]),
        // Bare IPv6 carries no ports.
        ("2001:db8::1", Protocols::BOTH, &["2001:db8::1/128"], all.clone()),
        ("udp://2001:db8::/48", Protocols::UDP, &["2001:db8::/48"], all.clone()),
        ("fd00::/8", Protocols::BOTH, &["fd00::/8"], all.clone()),
        // An empty target is any host.
        (":25", Protocols::BOTH, &["0.0.0.0/0", "::/0"], vec![pr(25, 25)]),
        ("tcp://:25,587", Protocols::TCP, &["0.0.0.0/0", "::/0"], vec![pr(25, 25), pr(587, 587)]),
        // Tokens, any case.
        ("any", Protocols::BOTH, &["0.0.0.0/0", "::/0"], all.clone()),
        ("ANY:53", Protocols::BOTH, &["0.0.0.0/0", "::/0"], vec![pr(53, 53)]),
        ("udp://any:53", Protocols::UDP, &["0.0.0.0/0", "::/0"], vec![pr(53, 53)]),
        (
            "private",
            Protocols::BOTH,
            &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.0.0/16",
                "198.18.0.0/15",
                "fc00::/7",
                "fe80::/10",
            ],
            all.clone(),
        ),
        ("Private:22", Protocols::BOTH, &PRIVATE_NETS, vec![pr(22, 22)]),
        ("metadata", Protocols::BOTH, &["169.254.169.254/32", "fd00:ec2::254/128"], all.clone()),
        ("tcp://metadata:80", Protocols::TCP, &METADATA_NETS, vec![pr(80, 80)]),
        // Addresses near, but not in, the local host ranges.
        ("126.255.255.255", Protocols::BOTH, &["126.255.255.255/32"], all.clone()),
        ("128.0.0.1", Protocols::BOTH, &["128.0.0.1/32"], all.clone()),
        ("0.0.0.0/0", Protocols::BOTH, &["0.0.0.0/0"], all.clone()),
        ("0.0.0.0/8", Protocols::BOTH, &["0.0.0.0/8"], all.clone()),
        ("::2", Protocols::BOTH, &["::2/128"], all.clone()),
        ("[::/127]:80", Protocols::BOTH, &["::/127"], vec![pr(80, 80)]),
        ("[64:ff9b:1::/48]:80", Protocols::BOTH, &["64:ff9b:1::/48"], vec![pr(80, 80)]),
        ("2001::/16", Protocols::BOTH, &["2001::/16"], all.clone()),
    ];
    for (text, protocols, want_nets, ports) in cases {
        let r = rule(text);
        assert_eq!(r.protocols, *protocols, "protocols of `{text}`");
        assert_eq!(r.nets, nets_of(want_nets), "nets of `{text}`");
        assert_eq!(&r.ports, ports, "ports of `{text}`");
        assert_eq!(r.text, text.trim(), "text of `{text}` is kept as written (trimmed)");
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.origin, origin());
    }
}

#[test]
fn parse_rule_keeps_action_and_origin() {
    let at = Origin { source: "p.toml".into(), line: Some(7) };
    for action in [Action::Allow, Action::Deny] {
        let r = parse_rule("10.0.0.1", action, &at, RuleContext::Destination).expect("valid");
        assert_eq!(r.action, action);
        assert_eq!(r.origin, at);
    }
}

#[test]
fn normalises_networks() {
    let cases: &[(&str, &str)] = &[
        ("10.0.0.1/8", "10.0.0.0/8"),
        ("10.1.2.3/16", "10.1.0.0/16"),
        ("10.1.2.3/31", "10.1.2.2/31"),
        ("10.1.2.3/0", "0.0.0.0/0"),
        ("192.168.1.255/24", "192.168.1.0/24"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("2001:db8:ffff::1/33", "2001:db8:8000::/33"),
        // IPv4-mapped IPv6 is IPv4.
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ("::ffff:10.1.2.3/128", "10.1.2.3/32"),
        ("[::ffff:10.1.2.3]", "10.1.2.3/32"),
        ("::ffff:a01:203", "10.1.2.3/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("::ffff:192.168.0.0/112", "192.168.0.0/16"),
        // Shorter than /96 it is an IPv6 network, not IPv4.
        ("::ffff:0:0/95", "::fffe:0:0/95"),
    ];
    for (text, want) in cases {
        assert_eq!(rule(text).nets, vec![net(want)], "`{text}` normalises to {want}");
    }
    let r = rule("[::ffff:10.0.0.1]:80");
    assert_eq!((r.nets, r.ports), (vec![net("10.0.0.1/32")], vec![pr(80, 80)]));
}

#[test]
fn rejects_bad_rules() {
    // (rule, words the message must contain)
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty rule"]),
        ("   ", &["empty rule"]),
        // Host names: `rule_err` parses deny rules, which cannot name
        // hosts (allow rules can; see the pinned-domain tests below).
        ("example.com", &["deny rules cannot name hosts", "`example.com`", "fails open"]),
        ("example.com:443", &["deny rules cannot name hosts"]),
        ("tcp://api.github.com:443", &["deny rules cannot name hosts", "`api.github.com`"]),
        ("localhost", &["deny rules cannot name hosts"]),
        ("my-host", &["deny rules cannot name hosts"]),
        ("[example.com]:80", &["deny rules cannot name hosts"]),
        // Not addresses, CIDRs, tokens or host names at all.
        ("10.0.0.300", &["not an IP address"]),
        ("10.0.0.256", &["not an IP address"]),
        ("exa_mple!", &["not an IP address"]),
        ("exa_mple.com:443", &["not an IP address"]),
        ("1.2.3", &["not an IP address"]),
        ("*", &["not an IP address"]),
        ("10.0.0.1 80", &["not an IP address"]),
        ("fe80::1%eth0", &["not an IP address"]),
        ("10.0.0.1:80:90", &["not an IP address"]),
        // Bad CIDRs.
        ("10.0.0.0/33", &["not a valid CIDR", "/0-/32"]),
        ("10.0.0.0/", &["not a valid CIDR"]),
        ("10.0.0.0/x", &["not a valid CIDR"]),
        ("10.0.0.0/8/8", &["not a valid CIDR"]),
        ("2001:db8::/129", &["not a valid CIDR", "/0-/128"]),
        ("[2001:db8::/129]:80", &["not a valid CIDR"]),
        ("example.com/24", &["not a valid CIDR"]),
        // Ports.
        ("10.0.0.1:65536", &["out of range", "65536"]),
        ("10.0.0.1:99999999999999999999", &["out of range"]),
        ("10.0.0.1:80,70000", &["out of range", "70000"]),
        ("10.0.0.1:1-65536", &["out of range"]),
        ("10.0.0.1:http", &["not a port number"]),
        ("10.0.0.1:-5", &["not a port number"]),
        ("10.0.0.1:5-", &["not a port number"]),
        ("10.0.0.1:1-2-3", &["not a port number"]),
        ("10.0.0.1:80,,443", &["not a port number"]),
        ("10.0.0.1:**", &["not a port number"]),
        ("10.0.0.1:90-80", &["runs backwards", "80-90"]),
        ("10.0.0.1:+80", &["not a port number", "`+80`"]),
        ("10.0.0.1:80,+443", &["not a port number"]),
        ("10.0.0.1:+80-90", &["not a port number"]),
        ("10.0.0.1:", &["empty port list"]),
        ("10.0.0.1: ", &["empty port list"]),
        ("[2001:db8::1]:", &["empty port list"]),
        // Protocols.
        ("http://10.0.0.1", &["unknown protocol", "http://"]),
        ("icmp://10.0.0.1", &["unknown protocol"]),
        ("://10.0.0.1", &["unknown protocol"]),
        ("sctp://[2001:db8::1]:80", &["unknown protocol"]),
        ("tcp://", &["nothing after `tcp://`"]),
        ("udp://", &["nothing after `udp://`"]),
        ("  TCP://  ", &["nothing after `TCP://`"]),
        // Brackets.
        ("[2001:db8::1", &["missing `]`"]),
        ("[2001:db8::1]80", &["unexpected `80` after `]`"]),
        ("[2001:db8::1]/64", &["unexpected"]),
        // Unspecified destinations are aliases of loopback addresses.
        ("0.0.0.0", &["local host", "127.0.0.1", "`127.0.0.1:5432`"]),
        ("0.0.0.0:80", &["127.0.0.1"]),
        ("::", &["::1", "`[::1]:5432`"]),
        ("[::]:80", &["::1"]),
        ("::ffff:0.0.0.0", &["127.0.0.1"]),
        // An IPv6 form of a local address is never reachable: refused.
        ("64:ff9b::7f00:1", &["local IPv4", "`loopback`"]),
        ("[2002:7f00:1::1]:80", &["local IPv4"]),
        ("2001:0:c612:1::80ff:fffe", &["local IPv4"]),
    ];
    for (text, words) in cases {
        let msg = rule_err(text);
        assert!(msg.starts_with("--allow: "), "`{text}`: message should start with the origin: {msg}");
        for w in *words {
            assert!(msg.contains(w), "`{text}`: message should mention {w:?}: {msg}");
        }
    }
}

#[test]
fn deny_by_name_message_explains_fail_open() {
    let msg = rule_err("example.com");
    assert_eq!(
        msg,
        "--allow: `example.com`: deny rules cannot name hosts: `example.com` can resolve to other addresses tomorrow, so a deny list by name fails open; deny its addresses or CIDRs instead"
    );
}

#[test]
fn unspecified_message_points_at_the_alias() {
    let msg = rule_err("0.0.0.0:5432");
    assert!(msg.contains("127.0.0.1") && msg.contains("--loopback"), "{msg}");
}

#[test]
fn loopback_rules() {
    // Rules may name loopback addresses: they refine `loopback`. The
    // IPv4-mapped forms are IPv4 rules; `loopback` names both families.
    let o = Origin::flag("--deny");
    let net = |s: &str| s.parse::<IpNet>().expect("literal");
    let cases: &[(&str, &[&str], &[PortRange])] = &[
        ("127.0.0.53:53", &["127.0.0.53/32"], &[PortRange::single(53)]),
        ("tcp://127.0.0.1:2375", &["127.0.0.1/32"], &[PortRange::single(2375)]),
        ("127.0.0.0/8", &["127.0.0.0/8"], &[PortRange::ALL]),
        ("127.1.2.3/16", &["127.1.0.0/16"], &[PortRange::ALL]),
        ("[::1]:8080", &["::1/128"], &[PortRange::single(8080)]),
        ("::1", &["::1/128"], &[PortRange::ALL]),
        ("[::ffff:127.0.0.1]:5432", &["127.0.0.1/32"], &[PortRange::single(5432)]),
        ("::ffff:127.0.0.0/104", &["127.0.0.0/8"], &[PortRange::ALL]),
        ("loopback:53", &["127.0.0.0/8", "::1/128"], &[PortRange::single(53)]),
        ("LOOPBACK", &["127.0.0.0/8", "::1/128"], &[PortRange::ALL]),
    ];
    for &(text, nets, ports) in cases {
        for action in [Action::Allow, Action::Deny] {
            let r = parse_rule(text, action, &o, RuleContext::Destination).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.nets, nets.iter().map(|n| net(n)).collect::<Vec<_>>(), "{text}");
            assert_eq!(r.ports, ports, "{text}");
            assert!(r.nets.iter().all(crate::policy::is_loopback_net), "{text}");
        }
    }
    // Networks that merely contain loopback are not loopback rules.
    for text in ["0.0.0.0/0", "126.0.0.0/7", "[::/127]", "any"] {
        let r = parse_rule(text, Action::Deny, &o, RuleContext::Destination).expect("valid");
        assert!(!r.nets.iter().any(crate::policy::is_loopback_net), "{text}");
    }
}

#[test]
fn loopback_rule_blocking_the_proxy_is_a_conflict() {
    let build = |deny: &[&str], allow: &[&str]| {
        Policy::from_sources(
            None,
            None,
            &FlagInput {
                proxy: Some("127.0.0.1:3128".into()),
                loopback: Some("any".into()),
                deny: deny.iter().map(ToString::to_string).collect(),
                allow: allow.iter().map(ToString::to_string).collect(),
                ..FlagInput::default()
            },
        )
    };
    for deny in ["127.0.0.1:3128", "loopback", "tcp://127.0.0.0/8:3000-4000"] {
        let msg = build(&[deny], &[]).expect_err(deny).to_string();
        assert!(msg.contains(&format!("`deny {deny}` blocks the proxy on 127.0.0.1:3128")), "{msg}");
    }
    // Other ports, another address, UDP only, or a longer allow: no conflict.
    for (deny, allow) in [
        ("127.0.0.1:3129", None),
        ("127.0.0.2:3128", None),
        ("udp://127.0.0.1:3128", None),
        ("127.0.0.0/8", Some("tcp://127.0.0.1:3128")),
    ] {
        build(&[deny], allow.as_slice()).unwrap_or_else(|e| panic!("{deny}: {e}"));
    }
}

#[test]
fn ipv6_supernets_of_embedded_ipv4_ranges() {
    // Rules that merely contain the NAT64 or 6to4 space are ordinary IPv6
    // rules: the embedded-IPv4 addresses inside them are judged by IPv4
    // rules, as the IPv4-mapped space inside `::/0` is. `[::/0]` must mean
    // the same as the IPv6 half of `any`.
    let cases: &[(&str, &str)] = &[
        ("::/0", "::/0"),
        ("[::/0]:443", "::/0"),
        ("2000::/3", "2000::/3"),
        ("64::/16", "64::/16"),
        ("::/1", "::/1"),
        ("64:ff9b::/64", "64:ff9b::/64"),
        ("2002::/15", "2002::/15"),
    ];
    for (text, want) in cases {
        assert_eq!(rule(text).nets, vec![net(want)], "`{text}`");
    }
}

#[test]
fn bind_rules_accept_local_addresses() {
    let cases: &[(&str, &str, Vec<PortRange>)] = &[
        ("127.0.0.1:8080", "127.0.0.1/32", vec![pr(8080, 8080)]),
        ("127.0.0.0/8", "127.0.0.0/8", vec![PortRange::ALL]),
        ("0.0.0.0:8080", "0.0.0.0/32", vec![pr(8080, 8080)]),
        ("[::1]:8080", "::1/128", vec![pr(8080, 8080)]),
        ("[::]:0", "::/128", vec![pr(0, 0)]),
        ("::ffff:127.0.0.1", "127.0.0.1/32", vec![PortRange::ALL]),
        ("10.0.0.1:9000-9100", "10.0.0.1/32", vec![pr(9000, 9100)]),
    ];
    for (text, want, ports) in cases {
        let r = rule_in(text, RuleContext::Bind);
        assert_eq!((&r.nets, &r.ports), (&vec![net(want)], ports), "bind rule `{text}`");
    }
    // Everything else is validated as for destinations.
    for (text, word) in
        [("example.com:80", "bind rules take addresses, not host names (`example.com`)"), ("1.2.3.4:0-", "not a port")]
    {
        let msg = rule_err_in(text, RuleContext::Bind);
        assert!(msg.contains(word), "bind rule `{text}`: {msg}");
    }
}

#[test]
fn parse_ports_table() {
    let ok: &[(&str, &[PortRange])] = &[
        ("*", &[PortRange::ALL]),
        ("80", &[pr(80, 80)]),
        (" 80 ", &[pr(80, 80)]),
        ("80-80", &[pr(80, 80)]),
        ("443,80", &[pr(80, 80), pr(443, 443)]),
        ("10-20,15-30,31", &[pr(10, 31)]),
        ("10-20,22-30", &[pr(10, 20), pr(22, 30)]),
        ("0", &[pr(0, 0)]),
        ("0-65535", &[PortRange::ALL]),
        ("65535,0", &[pr(0, 0), pr(65535, 65535)]),
        ("1,2,3,4", &[pr(1, 4)]),
        ("100-200,150", &[pr(100, 200)]),
        ("5 - 10", &[pr(5, 10)]),
    ];
    for (text, want) in ok {
        assert_eq!(parse_ports(text).as_deref(), Ok(*want), "ports `{text}`");
    }
    let bad: &[(&str, &str)] = &[
        ("", "empty port list"),
        (",", "not a port number"),
        ("80,", "not a port number"),
        ("65536", "out of range"),
        ("10-5", "runs backwards; write `5-10`"),
        ("abc", "not a port number"),
        ("-1", "not a port number"),
        ("1.5", "not a port number"),
    ];
    for (text, word) in bad {
        let e = parse_ports(text).expect_err(text);
        assert!(e.contains(word), "ports `{text}`: {e}");
    }
}

#[test]
fn merge_ranges_table() {
    let cases: &[(&[PortRange], &[PortRange])] = &[
        (&[], &[]),
        (&[pr(5, 5)], &[pr(5, 5)]),
        (&[pr(5, 5), pr(3, 3)], &[pr(3, 3), pr(5, 5)]),
        (&[pr(5, 5), pr(4, 4)], &[pr(4, 5)]),
        (&[pr(1, 10), pr(2, 3)], &[pr(1, 10)]),
        (&[pr(1, 10), pr(10, 20)], &[pr(1, 20)]),
        (&[pr(1, 10), pr(11, 20)], &[pr(1, 20)]),
        (&[pr(1, 10), pr(12, 20)], &[pr(1, 10), pr(12, 20)]),
        (&[pr(65535, 65535), pr(0, 65534)], &[PortRange::ALL]),
        (&[pr(65535, 65535), pr(65535, 65535)], &[pr(65535, 65535)]),
        (&[pr(30, 40), pr(0, 5), pr(6, 29)], &[pr(0, 40)]),
    ];
    for (input, want) in cases {
        assert_eq!(merge_ranges(input.to_vec()), *want, "merge {input:?}");
    }
}

#[test]
fn port_range_display() {
    for (r, text) in [(PortRange::ALL, "*"), (pr(80, 80), "80"), (pr(8000, 8100), "8000-8100"), (pr(0, 0), "0")] {
        assert_eq!(r.to_string(), text);
    }
    assert_eq!(ports_text(&[pr(80, 80), pr(443, 443), pr(8000, 8100)]), "80,443,8000-8100");
    assert_eq!(ports_text(&[]), "");
}

#[test]
fn split_rule_list_table() {
    let cases: &[(&str, &[&str])] = &[
        ("10.0.0.1", &["10.0.0.1"]),
        ("10.0.0.1:80,443", &["10.0.0.1:80,443"]),
        ("10.0.0.1:80,10.0.0.2", &["10.0.0.1:80", "10.0.0.2"]),
        ("10.0.0.1,10.0.0.2", &["10.0.0.1", "10.0.0.2"]),
        ("10.0.0.1, 10.0.0.2 ", &["10.0.0.1", "10.0.0.2"]),
        ("10.0.0.1:80,443,8000-8100,*", &["10.0.0.1:80,443,8000-8100,*"]),
        ("10.0.0.1:80,443,10.0.0.2:53", &["10.0.0.1:80,443", "10.0.0.2:53"]),
        ("tcp://10.0.0.1:80,443,udp://10.0.0.2:53,5353", &["tcp://10.0.0.1:80,443", "udp://10.0.0.2:53,5353"]),
        ("[2001:db8::1]:80,443,2001:db8::2", &["[2001:db8::1]:80,443", "2001:db8::2"]),
        ("2001:db8::1,2001:db8::2", &["2001:db8::1", "2001:db8::2"]),
        (":25,587", &[":25,587"]),
        ("private,metadata", &["private", "metadata"]),
        ("any:53,any:853", &["any:53", "any:853"]),
        // A number after a rule without ports is a rule of its own (and
        // then fails to parse), not a port of the previous rule.
        ("10.0.0.1,443", &["10.0.0.1", "443"]),
        ("2001:db8::1,443", &["2001:db8::1", "443"]),
        ("", &[""]),
    ];
    for (text, want) in cases {
        assert_eq!(split_rule_list(text), *want, "split `{text}`");
    }
}

// ---------------------------------------------------------------------------
// Flags.

#[test]
fn flags_parse_into_a_layer() {
    let flags = FlagInput {
        allow: vec!["10.0.0.1:80,443,10.0.0.2".into(), "udp://any:53".into()],
        deny: vec!["private".into()],
        default: Some("allow".into()),
        loopback: Some("5432, 8000-8100".into()),
        proxy: None,
        bind: Some("127.0.0.1:8080,0.0.0.0:9000".into()),
        ..FlagInput::default()
    };
    let l = flags_layer(&flags);
    let texts: Vec<_> = l.rules.iter().map(|r| (r.action, r.text.as_str(), r.origin.to_string())).collect();
    assert_eq!(
        texts,
        [
            (Action::Allow, "10.0.0.1:80,443", "--allow".to_owned()),
            (Action::Allow, "10.0.0.2", "--allow".to_owned()),
            (Action::Allow, "udp://any:53", "--allow".to_owned()),
            (Action::Deny, "private", "--deny".to_owned()),
        ]
    );
    assert_eq!(l.default, Some((Action::Allow, Origin::flag("--default"))));
    assert_eq!(l.loopback, Some(Loopback::Ports(vec![pr(5432, 5432), pr(8000, 8100)])));
    let Some(Bind::Rules(bind)) = &l.bind else { panic!("bind rules expected: {:?}", l.bind) };
    let bind: Vec<_> = bind.iter().map(|r| (r.nets.clone(), r.ports.clone(), r.action)).collect();
    assert_eq!(
        bind,
        [
            (vec![net("127.0.0.1/32")], vec![pr(8080, 8080)], Action::Allow),
            (vec![net("0.0.0.0/32")], vec![pr(9000, 9000)], Action::Allow),
        ]
    );
}

#[test]
fn flag_scalars() {
    for (text, want) in [("any", Loopback::Any), ("none", Loopback::None), (" none ", Loopback::None)] {
        let l = flags_layer(&FlagInput { loopback: Some(text.into()), ..FlagInput::default() });
        assert_eq!(l.loopback, Some(want), "--loopback {text}");
    }
    for (text, want) in [("loopback", Bind::Loopback), ("any", Bind::Any), (" any ", Bind::Any)] {
        let l = flags_layer(&FlagInput { bind: Some(text.into()), ..FlagInput::default() });
        assert_eq!(l.bind, Some(want), "--bind {text}");
    }
    for (text, want) in [("deny", Action::Deny), ("allow", Action::Allow), (" allow ", Action::Allow)] {
        let l = flags_layer(&FlagInput { default: Some(text.into()), ..FlagInput::default() });
        assert_eq!(l.default.map(|(a, _)| a), Some(want), "--default {text}");
    }
    let proxies = [
        ("127.0.0.1:3128", "127.0.0.1:3128"),
        ("[::1]:3128", "[::1]:3128"),
        ("10.0.0.5:8080", "10.0.0.5:8080"),
        // A v4-mapped proxy is an IPv4 proxy.
        ("[::ffff:127.0.0.1]:3128", "127.0.0.1:3128"),
        (" 10.0.0.5:8080 ", "10.0.0.5:8080"),
    ];
    for (text, want) in proxies {
        let l = flags_layer(&proxy_flags(text));
        let want: SocketAddr = want.parse().expect("literal");
        assert_eq!(l.proxy, Some((want, Origin::flag("--proxy"))), "--proxy {text}");
    }
}

#[test]
fn flag_errors() {
    let cases: Vec<(FlagInput, &[&str])> = vec![
        (
            FlagInput { allow: vec!["exa_mple!".into()], ..FlagInput::default() },
            &["--allow:", "`exa_mple!`", "not an IP address"],
        ),
        (
            FlagInput { deny: vec!["example.com".into()], ..FlagInput::default() },
            &["--deny:", "deny rules cannot name hosts", "fails open"],
        ),
        (
            FlagInput { deny: vec!["10.0.0.1,tcp://example.com:443".into()], ..FlagInput::default() },
            &["--deny:", "`tcp://example.com:443`", "deny rules cannot name hosts"],
        ),
        (FlagInput { deny: vec!["10.0.0.0/33".into()], ..FlagInput::default() }, &["--deny:", "CIDR"]),
        (FlagInput { deny: vec!["0.0.0.0".into()], ..FlagInput::default() }, &["--deny:", "127.0.0.1"]),
        (FlagInput { allow: vec!["10.0.0.1,443".into()], ..FlagInput::default() }, &["`443`", "not an IP address"]),
        (FlagInput { allow: vec!["10.0.0.1:80,".into()], ..FlagInput::default() }, &["empty rule"]),
        (
            FlagInput { default: Some("maybe".into()), ..FlagInput::default() },
            &["--default:", "`maybe`", "\"deny\" or \"allow\""],
        ),
        (FlagInput { default: Some("Allow".into()), ..FlagInput::default() }, &["--default:"]),
        (
            FlagInput { loopback: Some("all".into()), ..FlagInput::default() },
            &["--loopback:", "\"any\", \"none\" or a port list"],
        ),
        (FlagInput { loopback: Some("70000".into()), ..FlagInput::default() }, &["--loopback:", "out of range"]),
        (FlagInput { loopback: Some(String::new()), ..FlagInput::default() }, &["--loopback:", "empty port list"]),
        (proxy_flags("127.0.0.1"), &["--proxy:", "ADDRESS:PORT"]),
        (proxy_flags("localhost:3128"), &["--proxy:", "ADDRESS:PORT"]),
        (proxy_flags("::1:3128"), &["--proxy:", "ADDRESS:PORT"]),
        (proxy_flags("127.0.0.1:0"), &["--proxy:", "port 0"]),
        (proxy_flags("0.0.0.0:3128"), &["--proxy:", "not 0.0.0.0 or ::"]),
        (proxy_flags("[::]:3128"), &["--proxy:", "not 0.0.0.0 or ::"]),
        (
            FlagInput { bind: Some("example.com:80".into()), ..FlagInput::default() },
            &["--bind:", "bind rules take addresses, not host names"],
        ),
        (
            FlagInput { bind: Some("everywhere".into()), ..FlagInput::default() },
            &["--bind:", "not host names (`everywhere`)"],
        ),
    ];
    for (flags, words) in cases {
        let e = flags.to_layer().expect_err(&format!("{flags:?} should be rejected"));
        let msg = e.to_string();
        assert!(matches!(e, PolicyError::Invalid { .. }), "{flags:?}: Invalid expected: {e:?}");
        for w in words {
            assert!(msg.contains(w), "{flags:?}: message should mention {w:?}: {msg}");
        }
    }
}

// ---------------------------------------------------------------------------
// TOML files.

#[test]
fn toml_full_file() {
    let src = r#"# comment
[network]
default = "deny"
loopback = [5432, "8000-8100", "3000"]
allow = [
  "tcp://10.1.2.3:5432",
  "[2001:db8::/32]:443",
]
deny = ["private"]
bind = ["127.0.0.1:8080", "0.0.0.0:9000"]
"#;
    let l = layer(src);
    assert_eq!(l.default, Some((Action::Deny, Origin { source: "policy.toml".into(), line: Some(3) })));
    assert_eq!(l.loopback, Some(Loopback::Ports(vec![pr(3000, 3000), pr(5432, 5432), pr(8000, 8100)])));
    assert_eq!(l.proxy, None);
    let rules: Vec<_> = l.rules.iter().map(|r| (r.action, r.text.as_str(), r.origin.line)).collect();
    assert_eq!(
        rules,
        [
            (Action::Allow, "tcp://10.1.2.3:5432", Some(6)),
            (Action::Allow, "[2001:db8::/32]:443", Some(7)),
            (Action::Deny, "private", Some(9)),
        ]
    );
    assert_eq!(l.rules[0].origin.to_string(), "policy.toml:6");
    let Some(Bind::Rules(bind)) = &l.bind else { panic!("bind rules expected: {:?}", l.bind) };
    assert_eq!(bind.len(), 2);
    assert_eq!(bind[1].nets, vec![net("0.0.0.0/32")]);
    assert_eq!(bind[1].origin.line, Some(10));
}

#[test]
fn toml_scalar_forms() {
    let cases: &[(&str, Option<Loopback>, Option<Bind>)] = &[
        ("", None, None),
        ("[network]\n", None, None),
        ("[network]\nloopback = \"any\"\n", Some(Loopback::Any), None),
        ("[network]\nloopback = \"none\"\n", Some(Loopback::None), None),
        ("[network]\nloopback = []\n", Some(Loopback::Ports(vec![])), None),
        ("[network]\nloopback = [443, 80, 81]\n", Some(Loopback::Ports(vec![pr(80, 81), pr(443, 443)])), None),
        ("[network]\nloopback = [\"80,443\"]\n", Some(Loopback::Ports(vec![pr(80, 80), pr(443, 443)])), None),
        ("[network]\nbind = \"loopback\"\n", None, Some(Bind::Loopback)),
        ("[network]\nbind = \"any\"\n", None, Some(Bind::Any)),
        ("[network]\nbind = []\n", None, Some(Bind::Rules(vec![]))),
        ("network = {}\n", None, None),
    ];
    for (src, loopback, bind) in cases {
        let l = layer(src);
        assert_eq!(&l.loopback, loopback, "loopback of {src:?}");
        assert_eq!(&l.bind, bind, "bind of {src:?}");
        assert!(l.rules.is_empty() && l.default.is_none() && l.proxy.is_none(), "{src:?}");
    }
    let l = layer("[network]\nproxy = \"127.0.0.1:3128\"\n");
    assert_eq!(
        l.proxy,
        Some(("127.0.0.1:3128".parse().expect("literal"), Origin { source: "policy.toml".into(), line: Some(2) }))
    );
}

#[test]
fn toml_errors_carry_the_line() {
    // (source, line in the Display text, words the message must contain)
    let cases: &[(&str, usize, &[&str])] = &[
        ("[network]\nallow = [\n  \"10.0.0.1\",\n  \"exa_mple!\",\n]\n", 4, &["`exa_mple!`", "not an IP address"]),
        ("[network]\ndeny = [\n  \"10.0.0.1\",\n  \"example.com\",\n]\n", 4, &["deny rules cannot name hosts"]),
        ("[network]\nallow = [\"10.0.0.1\"]\n\ndeny = [\"10.0.0.0/33\"]\n", 4, &["not a valid CIDR"]),
        ("[network]\n\n\ndeny = [\n\"0.0.0.0\"]\n", 5, &["127.0.0.1"]),
        ("[network]\ndefault = \"maybe\"\n", 2, &["\"deny\" or \"allow\""]),
        ("\n[network]\ndefault = \"allow\"\nloopback = \"some\"\n", 4, &["loopback is"]),
        ("[network]\nloopback = 3128\n", 2, &["loopback is"]),
        ("[network]\nloopback = [\"x\"]\n", 2, &["not a port number"]),
        ("[network]\nloopback = [70000]\n", 2, &["out of range"]),
        ("[network]\nloopback = [-1]\n", 2, &["not a port number"]),
        ("[network]\nloopback = [1.5]\n", 2, &["ports are numbers"]),
        ("[network]\nproxy = \"localhost:3128\"\n", 2, &["ADDRESS:PORT"]),
        ("[network]\nbind = \"everywhere\"\n", 2, &["bind is"]),
        ("[network]\nbind = [8080]\n", 2, &["bind rules are strings"]),
        ("[network]\n\nbind = [\"example.com:80\"]\n", 3, &["bind rules take addresses, not host names"]),
        ("[network]\nallow = [\"http://10.0.0.1\"]\n", 2, &["unknown protocol"]),
        ("[network]\nallow = [\"10.0.0.1:90-80\"]\n", 2, &["runs backwards"]),
        ("[network]\nallow = [\"64:ff9b::7f00:1\"]\n", 2, &["local IPv4"]),
    ];
    for (src, line, words) in cases {
        let e = toml_err(src);
        let msg = e.to_string();
        assert!(matches!(e, PolicyError::Invalid { .. }), "{src:?}: Invalid expected: {e:?}");
        assert!(msg.starts_with(&format!("policy.toml:{line}: ")), "{src:?}: line {line} expected: {msg}");
        for w in *words {
            assert!(msg.contains(w), "{src:?}: message should mention {w:?}: {msg}");
        }
    }
}

#[test]
fn toml_syntax_and_unknown_keys() {
    // (source, line, words the message must contain)
    let cases: &[(&str, usize, &[&str])] = &[
        ("[network]\ndefault = \"deny\"\nfoo = 1\n", 3, &["unknown field `foo`"]),
        ("[network]\ndefault = \"deny\"\n\nallows = [\"10.0.0.1\"]\n", 4, &["unknown field `allows`"]),
        ("[netwrk]\ndefault = \"deny\"\n", 1, &["unknown field `netwrk`"]),
        ("default = \"deny\"\n", 1, &["unknown field `default`"]),
        ("[network]\n[network.extra]\n", 2, &["unknown field `extra`"]),
        // Unterminated array: the parser notices at the end of the input.
        ("[network]\ndefault = \"deny\"\nallow = [\"10.0.0.1\"\n", 4, &["expected `]`"]),
        ("[network]\ndefault = deny\n", 2, &[]),
        ("[network]\nallow = \"10.0.0.1\"\n", 2, &["sequence"]),
        ("[network]\nallow = [1]\n", 2, &[]),
        ("[network]\ndefault = 1\n", 2, &[]),
        ("[network]\ndefault = \"deny\"\ndefault = \"allow\"\n", 3, &[]),
    ];
    for (src, line, words) in cases {
        let e = toml_err(src);
        let PolicyError::Syntax { path, line: got, message } = &e else { panic!("{src:?}: Syntax expected: {e:?}") };
        assert_eq!(path, "policy.toml");
        assert_eq!(got, line, "{src:?}: {message}");
        assert!(e.to_string().starts_with(&format!("policy.toml:{line}: ")), "{e}");
        for w in *words {
            assert!(message.contains(w), "{src:?}: message should mention {w:?}: {message}");
        }
    }
}

#[test]
fn load_file_reports_path() {
    let dir = std::env::temp_dir().join(format!("sbx-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("p.toml");
    std::fs::write(&path, "[network]\n\nallow = [\"10.0.0.256\"]\n").expect("write");
    let msg = load_file(&path).expect_err("bad address rejected").to_string();
    let missing = dir.join("missing.toml");
    let read = load_file(&missing).expect_err("missing file");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(msg.starts_with(&format!("{}:3: ", path.display())), "{msg}");
    assert!(matches!(read, PolicyError::Read { .. }), "{read:?}");
    assert!(read.to_string().contains("missing.toml"), "{read}");
}

// ---------------------------------------------------------------------------
// Building, proxy-only mode, profiles, layering.

#[test]
fn empty_policy_defaults() {
    let p = build(vec![]).expect("empty policy");
    assert_eq!(
        p,
        Policy {
            default: Action::Deny,
            loopback: Loopback::Any,
            proxy: None,
            rules: vec![],
            bind: Bind::Loopback,
            mode: Mode::Enforce,
            filesystem: None,
            redirect: false,
            nat64: vec![],
            unix: Unix::Any,
            unix_origin: None,
            dns: Dns::Pinned { stub: None },
        }
    );
    let from_sources = Policy::from_sources(None, None, &FlagInput::default()).expect("empty");
    assert_eq!(from_sources, p);
    assert_eq!(policy_toml(""), p);
}

#[test]
fn proxy_only_mode() {
    let lo = |ports: &[PortRange]| Loopback::Ports(ports.to_vec());
    // (file text, loopback expected)
    let cases: &[(&str, Loopback)] = &[
        ("proxy = \"127.0.0.1:3128\"", lo(&[pr(3128, 3128)])),
        ("proxy = \"127.0.0.1:3128\"\ndefault = \"deny\"", lo(&[pr(3128, 3128)])),
        ("proxy = \"127.0.0.53:3128\"", lo(&[pr(3128, 3128)])),
        ("proxy = \"[::1]:8080\"", lo(&[pr(8080, 8080)])),
        ("proxy = \"[::ffff:127.0.0.1]:3128\"", lo(&[pr(3128, 3128)])),
        ("proxy = \"127.0.0.1:3128\"\nloopback = \"any\"", Loopback::Any),
        ("proxy = \"127.0.0.1:3128\"\nloopback = [5432]", lo(&[pr(3128, 3128), pr(5432, 5432)])),
        ("proxy = \"127.0.0.1:3128\"\nloopback = [3128]", lo(&[pr(3128, 3128)])),
        ("proxy = \"127.0.0.1:3128\"\nloopback = [\"3000-3200\"]", lo(&[pr(3000, 3200)])),
        ("proxy = \"127.0.0.1:3129\"\nloopback = [3128]", lo(&[pr(3128, 3129)])),
        // A proxy elsewhere leaves loopback closed unless asked.
        ("proxy = \"10.0.0.5:3128\"", Loopback::None),
        ("proxy = \"10.0.0.5:3128\"\nloopback = \"any\"", Loopback::Any),
        ("proxy = \"10.0.0.5:3128\"\nloopback = \"none\"", Loopback::None),
        ("proxy = \"10.0.0.5:3128\"\nloopback = [53]", lo(&[pr(53, 53)])),
    ];
    for (body, loopback) in cases {
        let p = policy_toml(&format!("[network]\n{body}\n"));
        assert_eq!(p.default, Action::Deny, "{body}");
        assert_eq!(&p.loopback, loopback, "{body}");
        assert!(p.proxy.is_some(), "{body}");
    }
}

#[test]
fn remote_proxy_adds_a_tcp_allow_rule() {
    let cases: &[(&str, &str, &str)] = &[
        ("10.0.0.5:3128", "10.0.0.5/32", "tcp://10.0.0.5:3128"),
        ("[2001:db8::5]:3128", "2001:db8::5/128", "tcp://[2001:db8::5]:3128"),
        ("[::ffff:10.0.0.5]:3128", "10.0.0.5/32", "tcp://10.0.0.5:3128"),
    ];
    for (proxy, want_net, want_text) in cases {
        let l = flags_layer(&FlagInput { deny: vec!["private".into()], ..proxy_flags(proxy) });
        let p = build(vec![l]).unwrap_or_else(|e| panic!("{proxy}: {e}"));
        assert_eq!(p.rules.len(), 2, "{proxy}");
        let r = &p.rules[1];
        assert_eq!(r.text, *want_text);
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.protocols, Protocols::TCP);
        assert_eq!(r.nets, vec![net(want_net)]);
        assert_eq!(r.ports, vec![pr(3128, 3128)]);
        assert_eq!(r.origin, Origin::flag("--proxy"));
        assert_eq!(p.loopback, Loopback::None);
        assert_eq!(p.default, Action::Deny);
    }
    // A proxy at a NAT64 address is an explicit IPv6 rule for it.
    let l = flags_layer(&proxy_flags("[64:ff9b::a00:5]:3128"));
    let p = build(vec![l]).expect("NAT64 proxy");
    assert_eq!(p.rules[0].nets, vec![net("64:ff9b::a00:5/128")]);
}

#[test]
fn proxy_conflicts() {
    let file = layer("[network]\ndefault = \"allow\"\n");
    let e = build(vec![file, flags_layer(&proxy_flags("127.0.0.1:3128"))]).expect_err("allow + proxy");
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Conflict(_)), "{e:?}");
    for w in ["policy.toml:2", "default = \"allow\"", "--proxy", "127.0.0.1:3128", "proxy-only"] {
        assert!(msg.contains(w), "message should mention {w:?}: {msg}");
    }

    let e = build(vec![layer("[network]\nproxy = \"127.0.0.1:3128\"\nloopback = \"none\"\n")])
        .expect_err("loopback none + loopback proxy");
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Conflict(_)), "{e:?}");
    for w in ["loopback = \"none\"", "127.0.0.1:3128", "policy.toml:2", "loopback = [3128]"] {
        assert!(msg.contains(w), "message should mention {w:?}: {msg}");
    }

    // A later `default = "deny"` clears the conflict; a later "allow" makes it.
    let ok = build(vec![
        layer("[network]\ndefault = \"allow\"\nproxy = \"127.0.0.1:3128\"\n"),
        flags_layer(&FlagInput { default: Some("deny".into()), ..FlagInput::default() }),
    ]);
    assert!(ok.is_ok(), "{ok:?}");
    let bad = build(vec![
        layer("[network]\nproxy = \"127.0.0.1:3128\"\n"),
        flags_layer(&FlagInput { default: Some("allow".into()), ..FlagInput::default() }),
    ]);
    assert!(matches!(bad, Err(PolicyError::Conflict(_))), "{bad:?}");
}

#[test]
fn profiles() {
    let agent = build(vec![profile("agent").expect("agent")]).expect("agent builds");
    assert_eq!(agent.default, Action::Deny);
    assert_eq!(agent.loopback, Loopback::Any);
    assert_eq!(agent.proxy, Some("127.0.0.1:3128".parse().expect("literal")));
    assert_eq!(agent.bind, Bind::Loopback);
    let rules: Vec<_> = agent.rules.iter().map(|r| (r.action, r.text.as_str(), r.origin.to_string())).collect();
    assert_eq!(
        rules,
        [
            (Action::Deny, "private", "profile agent:4".to_owned()),
            (Action::Deny, "metadata", "profile agent:4".to_owned()),
        ]
    );

    let offline = build(vec![profile("offline").expect("offline")]).expect("offline builds");
    assert_eq!(
        offline,
        Policy {
            default: Action::Deny,
            loopback: Loopback::Any,
            proxy: None,
            rules: vec![],
            bind: Bind::Loopback,
            mode: Mode::Enforce,
            filesystem: None,
            redirect: false,
            nat64: vec![],
            unix: Unix::None,
            unix_origin: Some(Origin { source: "profile offline".into(), line: Some(4) }),
            dns: Dns::Pinned { stub: None },
        }
    );
    assert!(!offline.unix_explicit(), "a profile's unix setting is a default, not the user's");

    let open = build(vec![profile("open").expect("open")]).expect("open builds");
    assert_eq!((open.default, open.rules.len(), open.proxy), (Action::Allow, 2, None));

    // Every built-in profile parses and builds on its own.
    for p in PROFILES {
        let l = profile(p.name).unwrap_or_else(|e| panic!("profile {}: {e}", p.name));
        build(vec![l]).unwrap_or_else(|e| panic!("profile {}: {e}", p.name));
        assert!(!p.summary.is_empty());
    }

    let e = profile("agnet").expect_err("unknown profile");
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Invalid { .. }), "{e:?}");
    for w in ["--profile", "`agnet`", "no such profile", "agent", "offline", "open"] {
        assert!(msg.contains(w), "message should mention {w:?}: {msg}");
    }
    assert!(Policy::from_sources(Some("nope"), None, &FlagInput::default()).is_err());
}

#[test]
fn layering() {
    // Flags override file scalars and add rules after the file's.
    let file = layer("[network]\ndefault = \"allow\"\nloopback = \"none\"\nbind = \"any\"\ndeny = [\"10.0.0.0/8\"]\n");
    let flags = flags_layer(&FlagInput {
        allow: vec!["10.1.2.3:5432".into()],
        default: Some("deny".into()),
        loopback: Some("5432".into()),
        ..FlagInput::default()
    });
    let p = build(vec![file, flags]).expect("layers");
    assert_eq!(p.default, Action::Deny);
    assert_eq!(p.loopback, Loopback::Ports(vec![pr(5432, 5432)]));
    assert_eq!(p.bind, Bind::Any, "a layer that does not say keeps the earlier setting");
    let rules: Vec<_> = p.rules.iter().map(|r| (r.action, r.text.as_str())).collect();
    assert_eq!(rules, [(Action::Deny, "10.0.0.0/8"), (Action::Allow, "10.1.2.3:5432")]);

    // Profile, then flags: the flags layer wins and conflicts are checked on
    // the merged result.
    let e =
        Policy::from_sources(Some("agent"), None, &FlagInput { loopback: Some("none".into()), ..FlagInput::default() })
            .expect_err("agent + --loopback none blocks the proxy");
    assert!(matches!(e, PolicyError::Conflict(_)), "{e:?}");
    let p = Policy::from_sources(
        Some("agent"),
        None,
        &FlagInput { loopback: Some("5432".into()), allow: vec!["tcp://10.1.2.3:5432".into()], ..FlagInput::default() },
    )
    .expect("agent + flags");
    assert_eq!(p.loopback, Loopback::Ports(vec![pr(3128, 3128), pr(5432, 5432)]));
    assert_eq!(p.rules.len(), 3);
    let p =
        Policy::from_sources(Some("open"), None, &FlagInput { default: Some("deny".into()), ..FlagInput::default() })
            .expect("open + --default deny");
    assert_eq!(p.default, Action::Deny);

    // Later proxy replaces an earlier one.
    let p = build(vec![layer("[network]\nproxy = \"127.0.0.1:3128\"\n"), flags_layer(&proxy_flags("10.0.0.5:8080"))])
        .expect("proxy override");
    assert_eq!(p.proxy, Some("10.0.0.5:8080".parse().expect("literal")));
    assert_eq!(p.loopback, Loopback::None);
    assert_eq!(p.rules.len(), 1);
}

#[test]
fn from_sources_reads_the_file() {
    let dir = std::env::temp_dir().join(format!("sbx-policy-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("p.toml");
    std::fs::write(&path, "[network]\ndefault = \"allow\"\ndeny = [\"metadata\"]\n").expect("write");
    let p = Policy::from_sources(
        Some("offline"),
        Some(&path),
        &FlagInput { deny: vec!["private".into()], ..FlagInput::default() },
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let p = p.expect("profile + file + flags");
    assert_eq!(p.default, Action::Allow, "the file overrides the profile");
    let rules: Vec<_> = p.rules.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(rules, ["metadata", "private"]);
    assert_eq!(p.rules[0].origin.to_string(), format!("{}:3", path.display()));
}

#[test]
fn summary_lines() {
    let p = build(vec![
        profile("agent").expect("agent"),
        flags_layer(&FlagInput { bind: Some("127.0.0.1:8080".into()), ..FlagInput::default() }),
    ])
    .expect("agent");
    assert_eq!(
        p.summary(),
        [
            "default: deny",
            "loopback: any port",
            "proxy: 127.0.0.1:3128 (proxy-only mode)",
            "deny private",
            "deny metadata",
            "dns: pinned (only pinned names resolve; loopback port 53 refused)",
            "bind: 127.0.0.1:8080",
            "unix sockets: none (only sockets the command binds itself)",
        ]
    );
    let p = policy_toml("[network]\nloopback = [80, \"8000-8100\"]\nallow = [\"tcp://10.0.0.1:443\"]\n");
    assert_eq!(
        p.summary(),
        [
            "default: deny",
            "loopback: 80,8000-8100",
            "allow tcp://10.0.0.1:443",
            "dns: pinned (only pinned names resolve; loopback port 53 refused)",
            "bind: loopback (unspecified address with port 0 only)",
        ]
    );
}

#[test]
fn v4_mapped_space_is_ffff_96() {
    assert_eq!(v4_mapped_space(), "::ffff:0:0/96".parse::<Ipv6Net>().expect("literal"));
}

#[test]
fn policy_serde_round_trip() {
    let p = Policy::from_sources(
        Some("agent"),
        None,
        &FlagInput {
            allow: vec!["udp://[2001:db8::1]:53".into()],
            bind: Some("0.0.0.0:80".into()),
            ..FlagInput::default()
        },
    )
    .expect("policy");
    let text = serde_json::to_string(&p).expect("serialise");
    let back: Policy = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(back, p);
}

// ---------------------------------------------------------------------------
// Pinned domains: allow rules naming hosts, resolved once at build time.
// Every test uses a fake resolver; none touches real DNS.

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("test address {s}: {e}"))).collect()
}

/// A fixed resolver. Anything it does not know fails as a missing name.
fn fake_dns(host: &str) -> std::io::Result<Vec<IpAddr>> {
    match host {
        // Out of order, duplicated, v4-mapped: pinning normalises.
        "github.com" => Ok(ips(&["2001:db8::10", "192.0.2.10", "::ffff:203.0.113.5", "192.0.2.10"])),
        "v4.example" => Ok(ips(&["198.51.100.7"])),
        "v6.example" => Ok(ips(&["2001:db8::6"])),
        "empty.example" => Ok(Vec::new()),
        "localhost" | "local.example" => Ok(ips(&["127.0.0.1"])),
        "mapped-local.example" => Ok(ips(&["::ffff:127.0.0.1"])),
        "v6-local.example" => Ok(ips(&["::1"])),
        "unspecified.example" => Ok(ips(&["0.0.0.0"])),
        "unspecified6.example" => Ok(ips(&["::"])),
        "partly-local.example" => Ok(ips(&["192.0.2.1", "127.0.1.1"])),
        "nat64.example" => Ok(ips(&["64:ff9b::c000:201"])),
        "nat64-local.example" => Ok(ips(&["64:ff9b::7f00:1"])),
        _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")),
    }
}

fn allow_layer(rules: &[&str]) -> Layer {
    flags_layer(&FlagInput { allow: rules.iter().map(|r| (*r).to_owned()).collect(), ..FlagInput::default() })
}

fn build_pinned(layers: Vec<Layer>, allow_unresolved: bool) -> Result<Policy, PolicyError> {
    let mut b = PolicyBuilder::new();
    for l in layers {
        b.apply(l);
    }
    b.build_with(&fake_dns, allow_unresolved)
}

#[test]
fn allow_rules_may_name_hosts() {
    // (rule, host, protocols, ports). Parsing does not resolve: `nets` stays
    // empty until the policy is built.
    let all = vec![PortRange::ALL];
    let cases: &[(&str, &str, Protocols, Vec<PortRange>)] = &[
        ("github.com:443", "github.com", Protocols::BOTH, vec![pr(443, 443)]),
        ("tcp://GitHub.COM:443", "github.com", Protocols::TCP, vec![pr(443, 443)]),
        ("udp://ns1.example.net:53", "ns1.example.net", Protocols::UDP, vec![pr(53, 53)]),
        ("api.example.com:443,80", "api.example.com", Protocols::BOTH, vec![pr(80, 80), pr(443, 443)]),
        ("example.com", "example.com", Protocols::BOTH, all.clone()),
        ("  example.com:8000-8100  ", "example.com", Protocols::BOTH, vec![pr(8000, 8100)]),
        ("my-host", "my-host", Protocols::BOTH, all.clone()),
        ("localhost", "localhost", Protocols::BOTH, all.clone()),
        // Names that merely start with a token are names.
        ("any.example", "any.example", Protocols::BOTH, all.clone()),
        ("private-registry:5000", "private-registry", Protocols::BOTH, vec![pr(5000, 5000)]),
        ("metadata.google.internal:80", "metadata.google.internal", Protocols::BOTH, vec![pr(80, 80)]),
    ];
    for (text, host, protocols, ports) in cases {
        let r = rule(text);
        assert_eq!(r.host.as_deref(), Some(*host), "`{text}` names {host}");
        assert!(r.nets.is_empty(), "`{text}`: nothing is resolved while parsing: {r:?}");
        assert_eq!((r.protocols, &r.ports), (*protocols, ports), "`{text}`");
        assert_eq!((r.action, r.text.as_str()), (Action::Allow, text.trim()), "`{text}`");
        assert_eq!(r.origin, origin());
    }
    // Flags and files take them too; a comma list splits into rules.
    let l = allow_layer(&["github.com:443,v4.example"]);
    let hosts: Vec<_> = l.rules.iter().map(|r| r.host.as_deref()).collect();
    assert_eq!(hosts, [Some("github.com"), Some("v4.example")]);
    let l = layer("[network]\n\nallow = [\"tcp://github.com:443\"]\n");
    assert_eq!(l.rules[0].host.as_deref(), Some("github.com"));
    assert_eq!(l.rules[0].origin.to_string(), "policy.toml:3");
}

#[test]
fn pinned_host_resolves_to_its_addresses() {
    let asked = std::cell::RefCell::new(Vec::new());
    let resolve = |host: &str| {
        asked.borrow_mut().push(host.to_owned());
        fake_dns(host)
    };
    let mut b = PolicyBuilder::new();
    b.apply(allow_layer(&["tcp://GitHub.com:443", "10.0.0.1", "v6.example:22"]));
    let p = b.build_with(&resolve, false).expect("every name resolves");
    // Only host rules are resolved, once each, by their lower-case name.
    assert_eq!(*asked.borrow(), ["github.com", "v6.example"]);
    assert_eq!(p.rules.len(), 3);

    let gh = &p.rules[0];
    assert_eq!(gh.host.as_deref(), Some("github.com"));
    // Sorted, deduplicated, the v4-mapped answer turned into IPv4.
    assert_eq!(gh.nets, nets_of(&["192.0.2.10/32", "203.0.113.5/32", "2001:db8::10/128"]));
    assert_eq!(
        (gh.text.as_str(), gh.action, gh.protocols, &gh.ports),
        ("tcp://GitHub.com:443", Action::Allow, Protocols::TCP, &vec![pr(443, 443)])
    );
    assert_eq!(gh.origin, Origin::flag("--allow"));

    assert_eq!(p.rules[1].host, None);
    assert_eq!(p.rules[1].nets, nets_of(&["10.0.0.1/32"]));

    assert_eq!(p.rules[2].host.as_deref(), Some("v6.example"));
    assert_eq!(p.rules[2].nets, nets_of(&["2001:db8::6/128"]));
    assert_eq!(p.rules[2].ports, vec![pr(22, 22)]);

    // The rest of the policy is as without names.
    assert_eq!((p.default, &p.loopback, p.proxy), (Action::Deny, &Loopback::Any, None));

    // A policy without host rules never calls the resolver.
    let mut b = PolicyBuilder::new();
    b.apply(allow_layer(&["10.0.0.1", "any:443", "private", "metadata"]));
    b.build_with(&|h: &str| panic!("resolver called for {h}"), false).expect("no names");
}

#[test]
fn unresolved_host_is_an_error_naming_it() {
    for (text, host, why) in [
        ("tcp://nowhere.example:443", "nowhere.example", "no such host"),
        ("empty.example", "empty.example", "no addresses"),
    ] {
        let e = build_pinned(vec![allow_layer(&["v4.example", text])], false)
            .expect_err(&format!("`{text}` does not resolve"));
        assert!(
            matches!(&e, PolicyError::Invalid { value, .. } if value == text),
            "`{text}`: Invalid quoting the rule expected: {e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("--allow: `{text}`: {host} does not resolve ({why}); fix the name, or pass --allow-unresolved to keep the rule matching nothing")
        );
    }
    // The error points at the file and line of the rule.
    let src = "[network]\nallow = [\n  \"10.0.0.1\",\n  \"Nowhere.Example:80\",\n]\n";
    let msg = build_pinned(vec![layer(src)], false).expect_err("unresolved").to_string();
    assert!(msg.starts_with("policy.toml:4: `Nowhere.Example:80`: nowhere.example does not resolve"), "{msg}");
    assert!(msg.contains("--allow-unresolved"), "{msg}");
}

#[test]
fn allow_unresolved_keeps_the_rule_matching_nothing() {
    let p = build_pinned(vec![allow_layer(&["nowhere.example:443", "empty.example", "v4.example"])], true)
        .expect("unresolved names are kept");
    let got: Vec<_> =
        p.rules.iter().map(|r| (r.text.as_str(), r.host.as_deref(), r.nets.clone(), r.ports.clone())).collect();
    assert_eq!(
        got,
        [
            ("nowhere.example:443", Some("nowhere.example"), vec![], vec![pr(443, 443)]),
            ("empty.example", Some("empty.example"), vec![], vec![PortRange::ALL]),
            ("v4.example", Some("v4.example"), nets_of(&["198.51.100.7/32"]), vec![PortRange::ALL]),
        ]
    );
}

#[test]
fn host_resolving_to_loopback_pins_loopback() {
    // A name pinned to a loopback address is a loopback rule, as if the
    // address had been written; the unspecified address (what blocklists
    // in /etc/hosts map names to) is refused, even with
    // --allow-unresolved: the name did resolve.
    for (host, ip, pinned) in [
        ("localhost", "127.0.0.1", "127.0.0.1/32"),
        ("mapped-local.example", "::ffff:127.0.0.1", "127.0.0.1/32"),
        ("v6-local.example", "::1", "::1/128"),
        ("partly-local.example", "127.0.1.1", "192.0.2.1/32"),
    ] {
        let p = build_pinned(vec![allow_layer(&[&format!("{host}:5432")])], false)
            .unwrap_or_else(|e| panic!("{host} resolves to {ip}: {e}"));
        let want = if host == "partly-local.example" { nets_of(&["127.0.1.1/32", pinned]) } else { nets_of(&[pinned]) };
        assert_eq!(p.rules[0].nets, want, "{host}");
    }
    for (host, ip) in [("unspecified.example", "0.0.0.0"), ("unspecified6.example", "::")] {
        for allow_unresolved in [false, true] {
            let text = format!("{host}:5432");
            let e = build_pinned(vec![allow_layer(&[&text])], allow_unresolved)
                .expect_err(&format!("{host} resolves to {ip}"));
            assert!(matches!(e, PolicyError::Invalid { .. }), "{host}: {e:?}");
            assert!(
                e.to_string()
                    .starts_with(&format!("--allow: `{text}`: {host} resolves to {ip}, the unspecified address")),
                "{e}"
            );
        }
    }
    // A DNS64 answer is an explicit IPv6 rule for that address; a form of
    // a local address is refused as the rule syntax refuses it.
    let p = build_pinned(vec![allow_layer(&["nat64.example"])], false).expect("DNS64 answer");
    assert_eq!(p.rules[0].nets, vec![net("64:ff9b::c000:201/128")]);
    let msg = build_pinned(vec![allow_layer(&["nat64-local.example"])], false).expect_err("local form").to_string();
    assert!(msg.contains("nat64-local.example resolves to 64:ff9b::7f00:1") && msg.contains("local IPv4"), "{msg}");
}

#[test]
fn deny_and_bind_rules_cannot_name_hosts() {
    for (text, target) in [
        ("example.com", "example.com"),
        ("tcp://example.com:443", "example.com"),
        ("LOCALHOST:80", "LOCALHOST"),
        ("my-host", "my-host"),
    ] {
        // The same text is a fine allow rule...
        assert!(rule(text).host.is_some(), "`{text}` allowed by name");
        // ...but a deny list by name fails open...
        let e = parse_rule(text, Action::Deny, &Origin::flag("--deny"), RuleContext::Destination)
            .expect_err(&format!("deny `{text}`"));
        assert_eq!(
            e.to_string(),
            format!("--deny: `{text}`: deny rules cannot name hosts: `{target}` can resolve to other addresses tomorrow, so a deny list by name fails open; deny its addresses or CIDRs instead")
        );
        // ...and bind rules take addresses, whatever the action.
        for action in [Action::Allow, Action::Deny] {
            let e = parse_rule(text, action, &Origin::flag("--bind"), RuleContext::Bind)
                .expect_err(&format!("bind `{text}`"));
            assert_eq!(
                e.to_string(),
                format!("--bind: `{text}`: bind rules take addresses, not host names (`{target}`)")
            );
        }
    }
    // Through a file: deny by name, and bind by name, point at the line.
    let e = toml_err("[network]\nallow = [\"github.com:443\"]\ndeny = [\"github.com\"]\n");
    assert!(e.to_string().starts_with("policy.toml:3: `github.com`: deny rules cannot name hosts"), "{e}");
    let e = toml_err("[network]\nbind = [\"127.0.0.1:80\", \"localhost:8080\"]\n");
    assert!(
        e.to_string().starts_with("policy.toml:2: `localhost:8080`: bind rules take addresses, not host names"),
        "{e}"
    );
}

#[test]
fn tokens_are_not_host_names() {
    let cases: &[(&str, &[&str])] = &[
        ("any", &ANY_NETS),
        ("ANY", &ANY_NETS),
        ("udp://any:53", &ANY_NETS),
        ("private", &PRIVATE_NETS),
        ("Private:22", &PRIVATE_NETS),
        ("metadata", &METADATA_NETS),
        ("tcp://METADATA:80", &METADATA_NETS),
    ];
    for (text, want) in cases {
        for action in [Action::Allow, Action::Deny] {
            let r = parse_rule(text, action, &origin(), RuleContext::Destination)
                .unwrap_or_else(|e| panic!("{action} `{text}`: {e}"));
            assert_eq!((r.host, r.nets), (None, nets_of(want)), "{action} `{text}`");
        }
    }
    let r = rule_in("any:8080", RuleContext::Bind);
    assert_eq!((r.host, r.nets), (None, nets_of(&ANY_NETS)), "bind `any:8080`");
    // Building never resolves them, allowed or denied.
    let mut b = PolicyBuilder::new();
    b.apply(allow_layer(&["any:443", "private", "metadata"]));
    b.apply(flags_layer(&FlagInput {
        deny: vec!["private".into(), "metadata:80".into(), "any:25".into()],
        ..FlagInput::default()
    }));
    let p = b.build_with(&|h: &str| panic!("resolver called for {h}"), false).expect("tokens only");
    assert!(p.rules.iter().all(|r| r.host.is_none()), "{:?}", p.rules);
}

#[test]
fn summary_shows_pinned_addresses() {
    let p = build_pinned(vec![allow_layer(&["tcp://GitHub.com:443", "nowhere.example", "10.0.0.1"])], true)
        .expect("policy");
    assert_eq!(
        p.summary(),
        [
            "default: deny",
            "loopback: any port",
            "allow tcp://GitHub.com:443 (github.com pinned to 192.0.2.10, 203.0.113.5, 2001:db8::10)",
            "allow nowhere.example (nowhere.example unresolved: matches nothing)",
            "allow 10.0.0.1",
            "dns: pinned (only pinned names resolve; loopback port 53 refused)",
            "bind: loopback (unspecified address with port 0 only)",
        ]
    );
}

#[test]
fn pinned_policy_serde_round_trip() {
    let p = build_pinned(vec![allow_layer(&["github.com:443", "nowhere.example", "10.0.0.1"])], true).expect("policy");
    let text = serde_json::to_string(&p).expect("serialise");
    assert!(text.contains("\"host\":\"github.com\""), "{text}");
    assert_eq!(text.matches("\"host\"").count(), 2, "no `host` key without a name: {text}");
    let back: Policy = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(back, p);
}

#[test]
fn dns_setting() {
    // Derived from the default unless given: pinned where it denies.
    let pinned = Dns::Pinned { stub: None };
    let of = |flags: FlagInput, profile: Option<&str>| Policy::from_sources(profile, None, &flags).map(|p| p.dns);
    assert_eq!(of(FlagInput::default(), None).expect("empty"), pinned);
    assert_eq!(of(FlagInput::default(), Some("agent")).expect("agent"), pinned);
    assert_eq!(of(FlagInput::default(), Some("offline")).expect("offline"), pinned);
    assert_eq!(of(FlagInput::default(), Some("open")).expect("open"), Dns::Host);
    assert_eq!(
        of(FlagInput { default: Some("allow".into()), ..FlagInput::default() }, None).expect("allow"),
        Dns::Host
    );
    assert_eq!(
        of(FlagInput { dns: Some("host".into()), ..FlagInput::default() }, Some("agent")).expect("host"),
        Dns::Host
    );
    assert_eq!(
        of(FlagInput { dns: Some(" pinned ".into()), ..FlagInput::default() }, Some("open")).expect("p"),
        pinned
    );
    assert_eq!(policy_toml("[network]\ndns = \"host\"").dns, Dns::Host);
    assert_eq!(policy_toml("[network]\ndefault = \"allow\"\ndns = \"pinned\"").dns, pinned);
    // Errors name the origin and the choices.
    let e = of(FlagInput { dns: Some("stub".into()), ..FlagInput::default() }, None).expect_err("bad").to_string();
    assert!(e.starts_with("--dns: `stub`: dns is \"pinned\"") && e.contains("\"host\""), "{e}");
    let e = parse_toml("[network]\n\ndns = 1\n", "p.toml").expect_err("not a string").to_string();
    assert!(e.starts_with("p.toml:3:"), "{e}");
    // A proxy on loopback port 53 cannot live beside the stub.
    let e = of(FlagInput { proxy: Some("127.0.0.1:53".into()), ..FlagInput::default() }, None).expect_err("53");
    assert!(e.to_string().contains("loopback port 53"), "{e}");
    of(FlagInput { proxy: Some("127.0.0.1:53".into()), dns: Some("host".into()), ..FlagInput::default() }, None)
        .expect("host DNS leaves port 53 alone");
    // Records from before the setting mean the host's resolvers; the stub
    // address round-trips.
    let mut p = policy_toml("");
    let mut json = serde_json::to_value(&p).expect("serialise");
    json.as_object_mut().expect("object").remove("dns");
    assert_eq!(serde_json::from_value::<Policy>(json).expect("old record").dns, Dns::Host);
    p.dns = Dns::Pinned { stub: Some(Ipv4Addr::new(127, 53, 1, 2)) };
    let back: Policy = serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("parse");
    assert_eq!(back, p);
    assert!(p
        .summary()
        .iter()
        .any(|l| l == "dns: pinned (only pinned names resolve, answered by sbx on 127.53.1.2:53)"));
}

#[test]
fn nat64_prefixes_setting() {
    let l = layer("[network]\nnat64 = [\"64:ff9b:1::/48\", \"2001:db8::/32\"]\n");
    let p = PolicyBuilder::new().apply(l).build().expect("valid");
    assert_eq!(p.nat64, vec!["64:ff9b:1::/48".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
    assert!(p.summary().iter().any(|l| l.contains("NAT64 prefixes")), "{:?}", p.summary());
    for (value, word) in [
        ("64:ff9b:1::/47", "/32, /40, /48, /56, /64 or /96"),
        ("64:ff9b:1::1/48", "host bits"),
        ("2001:db8:1:2:ff00::/96", "bits 64 to 71"),
        ("10.0.0.0/8", "not an IPv6 prefix"),
    ] {
        let msg = toml_err(&format!("[network]\nnat64 = [\"{value}\"]\n")).to_string();
        assert!(msg.contains("policy.toml:2") && msg.contains(word), "{value}: {msg}");
    }
    let five = (1..=5).map(|i| format!("\"2001:db8:{i}::/48\"")).collect::<Vec<_>>().join(", ");
    let msg = toml_err(&format!("[network]\nnat64 = [{five}]\n")).to_string();
    assert!(msg.contains("at most 4"), "{msg}");
}

// ---------------------------------------------------------------------------
// UNIX sockets.

fn unix_of(layers: Vec<Layer>) -> (Unix, bool) {
    let p = build(layers).expect("builds");
    let explicit = p.unix_explicit();
    (p.unix, explicit)
}

fn unix_flags(values: &[&str]) -> Result<Layer, PolicyError> {
    FlagInput { unix: values.iter().map(|v| (*v).to_owned()).collect(), ..FlagInput::default() }.to_layer()
}

fn paths(u: &Unix) -> Vec<String> {
    match u {
        Unix::Paths(p) => p.iter().map(|p| p.path.display().to_string()).collect(),
        other => panic!("want a list, got {other:?}"),
    }
}

#[test]
fn unix_defaults_per_profile_and_for_policies_that_do_not_say() {
    assert_eq!(unix_of(vec![]), (Unix::Any, false));
    assert_eq!(unix_of(vec![layer("[network]\ndefault = \"deny\"\n")]), (Unix::Any, false));
    for (name, want) in [("agent", Unix::None), ("offline", Unix::None), ("open", Unix::Any)] {
        assert_eq!(unix_of(vec![profile(name).expect("profile")]), (want, false), "profile {name}");
    }
}

#[test]
fn unix_in_toml() {
    let (u, explicit) =
        unix_of(vec![layer("[network]\nunix = [\"/run/postgresql/.s.PGSQL.5432\", \"/dev/log\", \"/dev/log\"]\n")]);
    assert_eq!(paths(&u), ["/run/postgresql/.s.PGSQL.5432", "/dev/log"], "duplicates dropped");
    assert!(explicit);
    assert_eq!(unix_of(vec![layer("[network]\nunix = \"none\"\n")]), (Unix::None, true));
    assert_eq!(unix_of(vec![layer("[network]\nunix = \"any\"\n")]).0, Unix::Any);
    // A file overrides the profile.
    assert_eq!(unix_of(vec![profile("agent").expect("agent"), layer("[network]\nunix = \"any\"\n")]).0, Unix::Any);
    assert_eq!(unix_of(vec![layer("[network]\nunix = []\n")]), (Unix::Paths(vec![]), true));
}

#[test]
fn unix_errors_name_file_line_and_value() {
    let cases = [
        ("[network]\nunix = \"all\"\n", "policy.toml:2: `\"all\"`: unix is \"any\", \"none\" or a list"),
        (
            "[network]\ndefault = \"deny\"\nunix = [\"run/x.sock\"]\n",
            "policy.toml:3: `run/x.sock`: socket paths must be absolute",
        ),
        ("[network]\nunix = [\"/run/../x.sock\"]\n", "`/run/../x.sock`: write the socket path without `.` or `..`"),
        ("[network]\nunix = [\"/run/./x.sock\"]\n", "without `.` or `..`"),
        ("[network]\nunix = [\"\"]\n", "empty socket path"),
        ("[network]\nunix = [\"@abstract\"]\n", "abstract sockets are not named by `unix`"),
        ("[network]\nunix = [5432]\n", "unix socket paths are strings"),
        ("[network]\nunix = true\n", "unix is \"any\", \"none\" or a list"),
    ];
    for (src, want) in cases {
        let e = toml_err(src).to_string();
        assert!(e.contains(want), "{src:?}: {e}");
    }
}

#[test]
fn unix_flags_add_paths_or_replace_the_setting() {
    // --unix PATH on the agent profile (none): that list.
    let (u, explicit) = unix_of(vec![profile("agent").expect("agent"), unix_flags(&["/run/a.sock"]).expect("flag")]);
    assert_eq!(paths(&u), ["/run/a.sock"]);
    assert!(explicit);
    // Adds to a file's list.
    let file = layer("[network]\nunix = [\"/run/a.sock\"]\n");
    let u = unix_of(vec![file, unix_flags(&["/run/b.sock", "/run/a.sock"]).expect("flags")]).0;
    assert_eq!(paths(&u), ["/run/a.sock", "/run/b.sock"]);
    // any / none replace.
    let file = layer("[network]\nunix = [\"/run/a.sock\"]\n");
    assert_eq!(unix_of(vec![file, unix_flags(&["none"]).expect("none")]), (Unix::None, true));
    assert_eq!(unix_of(vec![profile("agent").expect("agent"), unix_flags(&["any"]).expect("any")]).0, Unix::Any);
    for bad in [&["none", "/run/a.sock"][..], &["any", "none"], &["relative.sock"], &[""]] {
        let e = unix_flags(bad).expect_err("refused").to_string();
        assert!(e.starts_with("--unix: `"), "{bad:?}: {e}");
    }
}

#[test]
fn unix_setting_in_the_summary() {
    let p = build(vec![profile("agent").expect("agent")]).expect("agent");
    assert!(
        p.summary().iter().any(|l| l == "unix sockets: none (only sockets the command binds itself)"),
        "{:?}",
        p.summary()
    );
    let p = build(vec![unix_flags(&["/dev/log"]).expect("flag")]).expect("list");
    assert!(p.summary().iter().any(|l| l == "unix sockets: /dev/log (and sockets the command binds itself)"));
}
