//! Table-driven tests of rule precedence through [`Compiled::verdict`], the
//! exact entries and tables, the capacity errors, and a randomized
//! cross-check against a naive evaluator written from the precedence rules
//! in the module docs.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::{
    explain::Provenance,
    policy::{parse_rule, parse_toml, FlagInput, Mode, Origin, PolicyBuilder, RuleContext},
};

// ---------------------------------------------------------------------------
// Helpers.

const A: u8 = VERDICT_ALLOW;
const D: u8 = VERDICT_DENY;

/// Which protocols a probe checks.
#[derive(Clone, Copy, Debug)]
enum P {
    Tcp,
    Udp,
    Both,
}
use P::{Both, Tcp, Udp};

/// `(address, port, protocols, expected verdict)`.
type Probe = (&'static str, u16, P, u8);
/// `(port, protocols, expected verdict)`.
type PortProbe = (u16, P, u8);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("test address {s}: {e}"))
}

/// A policy from the body of a `[network]` table. Unless the body sets
/// `dns`, it is `"host"`, so that tables about other things do not carry
/// the DNS stub's port 53 entries (those have tests of their own).
fn policy(body: &str) -> Policy {
    let dns = if body.contains("dns =") { "" } else { "\ndns = \"host\"" };
    let src = format!("[network]\n{body}{dns}\n");
    let layer = parse_toml(&src, "test.toml").unwrap_or_else(|e| panic!("{e}\n{src}"));
    PolicyBuilder::new().apply(layer).build().unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn compiled(p: &Policy) -> Compiled {
    let c = compile(p, DEFAULT_MAX_ENTRIES).unwrap_or_else(|e| panic!("compile: {e}\n{p:#?}"));
    assert_well_formed(&c);
    c
}

fn check(c: &Compiled, hook: Hook, what: &str, probes: &[Probe]) {
    for &(addr, port, protos, want) in probes {
        let protos: &[(bool, &str)] = match protos {
            Tcp => &[(true, "tcp")],
            Udp => &[(false, "udp")],
            Both => &[(true, "tcp"), (false, "udp")],
        };
        for &(tcp, name) in protos {
            let got = c.verdict(hook, ip(addr), port, tcp);
            assert_eq!(
                got,
                want,
                "{what}: {hook:?} {name} {addr} port {port}: got {}, want {}",
                name_of(got),
                name_of(want)
            );
        }
    }
}

fn name_of(v: u8) -> &'static str {
    match v {
        VERDICT_ALLOW => "allow",
        VERDICT_DENY => "deny",
        _ => "invalid verdict",
    }
}

/// Compiles the policy in `body` and checks destination probes.
fn dest_case(body: &str, probes: &[Probe]) {
    check(&compiled(&policy(body)), Hook::Destination, body, probes);
}

/// Invariants the programs rely on, checked for every compiled policy.
fn assert_well_formed(c: &Compiled) {
    for (i, t) in c.tables.iter().enumerate() {
        let len = t.len as usize;
        assert!(len <= MAX_SEGMENTS, "table {i}: len {len}");
        assert_eq!(t._pad, [0; 2], "table {i}: padding");
        assert!(t.default_tcp <= 1 && t.default_udp <= 1, "table {i}: verdicts");
        for (j, s) in t.segments[..len].iter().enumerate() {
            assert!(s.lo <= s.hi, "table {i} segment {j}: {s:?}");
            assert!(s.tcp <= 1 && s.udp <= 1 && s._pad == [0; 2], "table {i} segment {j}: {s:?}");
            assert_ne!((s.tcp, s.udp), (t.default_tcp, t.default_udp), "table {i} segment {j} repeats the default");
            if j > 0 {
                let prev = t.segments[j - 1];
                assert!(prev.hi < s.lo, "table {i}: segments {} and {j} overlap or are unsorted", j - 1);
                assert!(
                    prev.hi + 1 < s.lo || (prev.tcp, prev.udp) != (s.tcp, s.udp),
                    "table {i}: adjacent segments {} and {j} should have been coalesced",
                    j - 1
                );
            }
        }
        assert!(
            t.segments[len..].iter().all(|s| *s == PortSegment::default()),
            "table {i}: slots past len must be zero"
        );
        assert!(!c.tables[..i].contains(t), "table {i} is a duplicate");
    }
    for (name, entries) in [("dest", &c.dest), ("bind", &c.bind)] {
        let mut seen = std::collections::HashSet::new();
        for e in entries {
            assert!(e.prefix_len <= 128, "{name}: {e:?}");
            let p = prefix_of(e);
            let host_mask = u128::MAX.checked_shr(u32::from(p.len)).unwrap_or(0);
            assert_eq!(p.addr & host_mask, 0, "{name}: host bits set in {e:?}");
            assert!((e.table as usize) < c.tables.len(), "{name}: table index out of range in {e:?}");
            assert!(seen.insert((e.prefix_len, e.addr)), "{name}: duplicate prefix {e:?}");
        }
        for root in [V6_ROOT, V4_ROOT] {
            assert!(entries.iter().any(|e| prefix_of(e) == root), "{name}: missing root {}", root.display());
        }
    }
    assert_provenance_matches_tables(c);
}

fn prefix_of(e: &TrieEntry) -> Prefix {
    Prefix { addr: u128::from_be_bytes(e.addr), len: u8::try_from(e.prefix_len).expect("<= 128") }
}

/// The provenance has the maps' entries, in order, and each entry's pieces
/// decide what its port table does, on every port: both are step
/// functions, so they are compared at every boundary of either.
fn assert_provenance_matches_tables(c: &Compiled) {
    for (hook, entries, trie) in
        [(Hook::Destination, &c.dest, &c.provenance.dest), (Hook::Bind, &c.bind, &c.provenance.bind)]
    {
        assert_eq!(trie.len(), entries.len(), "{hook:?}: provenance and map entries differ in number");
        for (i, e) in entries.iter().enumerate() {
            let p = prefix_of(e);
            assert_eq!(trie.find(p.addr, p.len), Some(i), "{hook:?}: entry {i} {} out of place", p.display());
            let t = &c.tables[e.table as usize];
            let mut ports: Vec<u16> = trie.entry_pieces_for_test(i).iter().map(|p| p.lo).collect();
            for s in &t.segments[..t.len as usize] {
                ports.push(s.lo);
                ports.extend(s.hi.checked_add(1));
            }
            ports.push(0);
            for port in ports {
                for tcp in [true, false] {
                    let table = table_verdict(t, port, tcp);
                    let d = trie.at(i, port, tcp);
                    assert_eq!(d.verdict, table, "{hook:?} entry {} port {port} tcp={tcp}: {d:?}", p.display());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Precedence.

#[test]
fn deny_private_allow_one_service() {
    for default in ["allow", "deny"] {
        let other = if default == "allow" { A } else { D };
        dest_case(
            &format!("default = \"{default}\"\ndeny = [\"private\"]\nallow = [\"10.1.2.3:5432\"]"),
            &[
                ("10.1.2.3", 5432, Both, A),
                ("10.1.2.3", 5431, Both, D),
                ("10.1.2.3", 5433, Both, D),
                ("10.1.2.3", 0, Both, D),
                ("10.1.2.4", 5432, Both, D),
                ("10.1.2.2", 5432, Both, D),
                ("192.168.1.1", 80, Both, D),
                ("172.16.0.1", 5432, Both, D),
                ("172.32.0.1", 5432, Both, other),
                ("100.64.0.1", 443, Both, D),
                ("169.254.169.254", 80, Both, D),
                ("fd00::1", 443, Both, D),
                ("fe80::1", 443, Both, D),
                ("8.8.8.8", 53, Both, other),
                ("2001:db8::1", 443, Both, other),
                ("::ffff:10.1.2.3", 5432, Both, A),
                ("::ffff:10.1.2.3", 80, Both, D),
            ],
        );
    }
}

#[test]
fn pinned_hosts_compile_like_their_addresses() {
    // A pinned-domain rule compiles exactly as the addresses it resolved
    // to; one that did not resolve (kept by --allow-unresolved) adds
    // nothing.
    let src = "[network]\ndeny = [\"private\"]\nallow = [\"tcp://db.example:5432\", \"gone.example\"]\n";
    let layer = parse_toml(src, "test.toml").unwrap_or_else(|e| panic!("{e}\n{src}"));
    let resolve = |host: &str| -> std::io::Result<Vec<IpAddr>> {
        match host {
            "db.example" => Ok(vec![ip("10.1.2.3"), ip("2001:db8::7")]),
            _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")),
        }
    };
    let pinned = PolicyBuilder::new().apply(layer).build_with(&resolve, true).unwrap_or_else(|e| panic!("{e}\n{src}"));
    let by_address = policy("deny = [\"private\"]\nallow = [\"tcp://10.1.2.3:5432\", \"tcp://[2001:db8::7]:5432\"]");
    let c = compiled(&pinned);
    assert_eq!(entry_names(&c.dest), entry_names(&compiled(&by_address).dest));
    check(
        &c,
        Hook::Destination,
        src,
        &[
            ("10.1.2.3", 5432, Tcp, A),
            ("::ffff:10.1.2.3", 5432, Tcp, A),
            ("2001:db8::7", 5432, Tcp, A),
            ("10.1.2.3", 5432, Udp, D),
            ("10.1.2.3", 5433, Tcp, D),
            ("10.1.2.4", 5432, Tcp, D),
            ("2001:db8::8", 5432, Tcp, D),
            ("8.8.8.8", 443, Both, D),
        ],
    );
}

#[test]
fn longer_prefix_wins() {
    let cases: &[(&str, &[Probe])] = &[
        (
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.1\"]",
            &[
                ("10.0.0.1", 80, Both, D),
                ("10.0.0.1", 0, Both, D),
                ("10.0.0.1", 65535, Both, D),
                ("10.0.0.0", 80, Both, A),
                ("10.0.0.2", 80, Both, A),
                ("10.255.255.255", 80, Both, A),
                ("11.0.0.1", 80, Both, D),
                ("9.255.255.255", 80, Both, D),
            ],
        ),
        // Nested three deep, alternating.
        (
            "default = \"allow\"\ndeny = [\"10.0.0.0/8\", \"10.1.2.0/24\"]\nallow = [\"10.1.0.0/16\", \"10.1.2.3\"]",
            &[
                ("10.2.0.1", 80, Both, D),
                ("10.1.0.1", 80, Both, A),
                ("10.1.2.1", 80, Both, D),
                ("10.1.2.3", 80, Both, A),
                ("10.1.3.1", 80, Both, A),
                ("11.0.0.0", 80, Both, A),
            ],
        ),
        // Host bits in the rule do not matter.
        (
            "allow = [\"10.9.9.9/8\"]\ndeny = [\"10.1.2.3/16\"]",
            &[("10.2.0.0", 1, Both, A), ("10.1.0.0", 1, Both, D), ("10.1.255.255", 1, Both, D)],
        ),
        // IPv6 the same way.
        (
            "allow = [\"2001:db8::/32\"]\ndeny = [\"[2001:db8:1::/48]:*\"]",
            &[
                ("2001:db8::1", 443, Both, A),
                ("2001:db8:1::1", 443, Both, D),
                ("2001:db8:2::1", 443, Both, A),
                ("2001:db9::1", 443, Both, D),
            ],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn tie_deny_wins() {
    let cases: &[(&str, &[Probe])] = &[
        ("allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]", &[("10.1.2.3", 80, Both, D)]),
        ("default = \"allow\"\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]", &[("10.1.2.3", 80, Both, D)]),
        // Different spellings of one prefix tie after normalisation.
        (
            "allow = [\"10.0.0.1/8\", \"::ffff:10.0.0.0/104\"]\ndeny = [\"10.255.0.0/8:22\"]",
            &[("10.1.2.3", 22, Both, D), ("10.1.2.3", 21, Both, A), ("10.1.2.3", 23, Both, A)],
        ),
        (
            "allow = [\"10.0.0.1:80-90\"]\ndeny = [\"10.0.0.1:85\"]",
            &[
                ("10.0.0.1", 79, Both, D),
                ("10.0.0.1", 80, Both, A),
                ("10.0.0.1", 84, Both, A),
                ("10.0.0.1", 85, Both, D),
                ("10.0.0.1", 86, Both, A),
                ("10.0.0.1", 90, Both, A),
                ("10.0.0.1", 91, Both, D),
            ],
        ),
        (
            "default = \"allow\"\nallow = [\"10.0.0.1:*\"]\ndeny = [\"10.0.0.1:0,65535\", \"10.0.0.1:1000-2000\"]",
            &[
                ("10.0.0.1", 0, Both, D),
                ("10.0.0.1", 1, Both, A),
                ("10.0.0.1", 999, Both, A),
                ("10.0.0.1", 1000, Both, D),
                ("10.0.0.1", 2000, Both, D),
                ("10.0.0.1", 2001, Both, A),
                ("10.0.0.1", 65534, Both, A),
                ("10.0.0.1", 65535, Both, D),
            ],
        ),
        // Tie is per protocol: a deny for one protocol leaves the other.
        (
            "allow = [\"10.0.0.1:80\"]\ndeny = [\"tcp://10.0.0.1:80\"]",
            &[("10.0.0.1", 80, Tcp, D), ("10.0.0.1", 80, Udp, A)],
        ),
        // A token ties with the same literal prefix.
        ("allow = [\"any\"]\ndeny = [\"0.0.0.0/0:25\"]", &[("8.8.8.8", 25, Both, D), ("8.8.8.8", 26, Both, A)]),
        // Order of rules does not matter.
        ("deny = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.0/8\"]", &[("10.1.2.3", 80, Both, D)]),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn port_rules_do_not_shadow_other_ports() {
    let cases: &[(&str, &[Probe])] = &[
        // A deny for one port on a host leaves the host's other ports to
        // the network rule.
        (
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.1:22\"]",
            &[
                ("10.0.0.1", 22, Both, D),
                ("10.0.0.1", 21, Both, A),
                ("10.0.0.1", 23, Both, A),
                ("10.0.0.1", 80, Both, A),
                ("10.0.0.2", 22, Both, A),
            ],
        ),
        (
            "default = \"allow\"\ndeny = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.1:443\"]",
            &[("10.0.0.1", 443, Both, A), ("10.0.0.1", 80, Both, D), ("10.0.0.2", 443, Both, D)],
        ),
        // Three levels with ports at each.
        (
            "allow = [\"10.0.0.0/8:80\", \"10.1.2.0/24:443\"]\ndeny = [\"10.1.0.0/16:80-90\"]",
            &[
                ("10.1.2.3", 80, Both, D),
                ("10.1.2.3", 443, Both, A),
                ("10.1.2.3", 91, Both, D),
                ("10.1.3.3", 80, Both, D),
                ("10.1.3.3", 443, Both, D),
                ("10.2.0.1", 80, Both, A),
                ("10.2.0.1", 443, Both, D),
            ],
        ),
        // Allow ranges at a shorter prefix, punched at a longer one and
        // re-opened at a longer one still.
        (
            "allow = [\"10.0.0.0/8:1000-2000\", \"10.1.1.0/24:1499-1501\"]\ndeny = [\"10.1.0.0/16:1500\"]",
            &[
                ("10.2.0.1", 1500, Both, A),
                ("10.1.0.1", 1499, Both, A),
                ("10.1.0.1", 1500, Both, D),
                ("10.1.0.1", 1501, Both, A),
                ("10.1.1.1", 1500, Both, A),
                ("10.1.1.1", 1000, Both, A),
                ("10.1.1.1", 999, Both, D),
                ("10.1.1.1", 2001, Both, D),
            ],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn protocol_specific_rules() {
    let cases: &[(&str, &[Probe])] = &[
        (
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"udp://10.0.0.0/8:53\"]",
            &[("10.0.0.1", 53, Tcp, A), ("10.0.0.1", 53, Udp, D), ("10.0.0.1", 54, Both, A)],
        ),
        (
            "allow = [\"tcp://10.0.0.1\"]\ndeny = [\"udp://10.0.0.1\"]",
            &[("10.0.0.1", 80, Tcp, A), ("10.0.0.1", 80, Udp, D)],
        ),
        (
            "default = \"allow\"\ndeny = [\"tcp://10.0.0.1\"]",
            &[("10.0.0.1", 80, Tcp, D), ("10.0.0.1", 80, Udp, A), ("10.0.0.2", 80, Both, A)],
        ),
        (
            "allow = [\"tcp://10.0.0.0/8\"]\ndeny = [\"10.0.0.1:22\"]",
            &[
                ("10.0.0.1", 22, Both, D),
                ("10.0.0.1", 80, Tcp, A),
                ("10.0.0.1", 80, Udp, D),
                ("10.0.0.2", 22, Tcp, A),
                ("10.0.0.2", 22, Udp, D),
            ],
        ),
        // A UDP rule at a longer prefix does not shadow TCP of the shorter.
        (
            "deny = [\"10.0.0.0/8\"]\nallow = [\"udp://10.0.0.1:53\", \"tcp://10.0.0.0/16:443\"]",
            &[
                ("10.0.0.1", 53, Udp, A),
                ("10.0.0.1", 53, Tcp, D),
                ("10.0.0.1", 443, Tcp, A),
                ("10.0.0.1", 443, Udp, D),
                ("10.1.0.1", 443, Tcp, D),
            ],
        ),
        // Same prefix: a TCP allow ties with an all-protocol deny and loses.
        ("deny = [\"10.0.0.0/8\"]\nallow = [\"tcp://10.0.0.0/8:443\"]", &[("10.0.0.1", 443, Tcp, D)]),
        (
            "allow = [\"udp://any:53\", \"tcp://[2001:db8::/32]:443\"]",
            &[
                ("8.8.8.8", 53, Udp, A),
                ("8.8.8.8", 53, Tcp, D),
                ("2001:4860::8888", 53, Udp, A),
                ("2001:db8::1", 443, Tcp, A),
                ("2001:db8::1", 443, Udp, D),
            ],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn default_decides_when_nothing_matches() {
    for (default, v) in [("allow", A), ("deny", D)] {
        dest_case(
            &format!("default = \"{default}\"\nallow = [\"tcp://10.0.0.1:443\"]\ndeny = [\"udp://10.0.0.2:53\"]"),
            &[
                ("8.8.8.8", 443, Both, v),
                ("10.0.0.1", 443, Udp, v),
                ("10.0.0.1", 80, Tcp, v),
                ("10.0.0.2", 53, Tcp, v),
                ("10.0.0.1", 443, Tcp, A),
                ("10.0.0.2", 53, Udp, D),
                ("2001:db8::1", 80, Both, v),
                ("::ffff:8.8.8.8", 80, Both, v),
            ],
        );
    }
}

#[test]
fn loopback_setting() {
    // Local-host addresses in every spelling.
    let local = [
        "127.0.0.1",
        "127.0.0.0",
        "127.255.255.255",
        "127.1.2.3",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:0.0.0.0",
    ];
    // Embedded forms of local addresses leave the host: never the loopback
    // setting, always refused (the programs and the egress backstop agree).
    for (lo, default) in [("\"any\"", "allow"), ("\"none\"", "deny"), ("[22]", "allow")] {
        let c = compiled(&policy(&format!("default = \"{default}\"\nloopback = {lo}")));
        for form in ["64:ff9b::7f00:1", "2002:7f00:1::", "2001:0:c612:1::80ff:fffe", "fd00::5efe:7f00:1"] {
            for tcp in [true, false] {
                assert_eq!(c.verdict(Hook::Destination, ip(form), 22, tcp), D, "{form} under loopback = {lo}");
            }
        }
    }
    for default in ["allow", "deny"] {
        // (loopback setting, (port, protocol, verdict) for every local address)
        let cases: &[(&str, &[PortProbe])] = &[
            ("\"any\"", &[(0, Both, A), (22, Both, A), (5432, Both, A), (65535, Both, A)]),
            ("\"none\"", &[(0, Both, D), (22, Both, D), (5432, Both, D), (65535, Both, D)]),
            (
                "[5432, \"8000-8100\"]",
                &[
                    (5432, Both, A),
                    (5431, Both, D),
                    (5433, Both, D),
                    (8000, Both, A),
                    (8050, Both, A),
                    (8100, Both, A),
                    (8101, Both, D),
                    (0, Both, D),
                    (22, Both, D),
                ],
            ),
            ("[]", &[(5432, Both, D), (0, Both, D)]),
            ("[0, 65535]", &[(0, Both, A), (65535, Both, A), (1, Both, D), (65534, Both, D)]),
        ];
        for (setting, ports) in cases {
            // Rules never reach the local host, whatever their prefix.
            for rules in [
                "",
                "allow = [\"any\", \"0.0.0.0/0\", \"[::/0]\", \"0.0.0.0/8\", \"[::/96]\", \"126.0.0.0/7\"]",
                "deny = [\"any\", \"0.0.0.0/0\", \"[::/0]\", \"0.0.0.0/8\", \"[::/96]\", \"126.0.0.0/7\"]",
            ] {
                let body = format!("default = \"{default}\"\nloopback = {setting}\n{rules}");
                let c = compiled(&policy(&body));
                for addr in local {
                    for &(port, protos, want) in *ports {
                        check(&c, Hook::Destination, &body, &[(addr, port, protos, want)]);
                    }
                }
            }
        }
        // Neighbours of the local host are ordinary (or special) addresses.
        let v = if default == "allow" { A } else { D };
        dest_case(
            &format!("default = \"{default}\"\nloopback = \"any\""),
            &[
                ("126.255.255.255", 80, Both, v),
                ("128.0.0.0", 80, Both, v),
                ("::2", 80, Both, D),
                ("0.0.0.1", 80, Both, D),
                ("::ffff:0.0.0.1", 80, Both, D),
            ],
        );
        dest_case(
            &format!("default = \"{default}\"\nloopback = \"none\""),
            &[("126.255.255.255", 80, Both, v), ("128.0.0.0", 80, Both, v)],
        );
    }
}

#[test]
fn loopback_rules_refine_the_setting() {
    let cases: &[(&str, &[Probe])] = &[
        (
            // Under "any", deny the host's DNS stub and a daemon's port.
            "loopback = \"any\"\ndeny = [\"127.0.0.53:53\", \"127.0.0.1:2375\"]",
            &[
                ("127.0.0.53", 53, Both, D),
                ("::ffff:127.0.0.53", 53, Both, D),
                ("127.0.0.53", 54, Both, A),
                ("127.0.0.1", 2375, Both, D),
                ("::ffff:127.0.0.1", 2375, Both, D),
                // 0.0.0.0 is connected to 127.0.0.1: the same verdicts.
                ("0.0.0.0", 2375, Both, D),
                ("::ffff:0.0.0.0", 2375, Both, D),
                ("0.0.0.0", 2376, Both, A),
                ("127.0.0.2", 2375, Both, A),
                ("::1", 2375, Both, A),
                ("::", 2375, Both, A),
                ("127.0.0.1", 80, Both, A),
            ],
        ),
        (
            // Under "none", open one service.
            "loopback = \"none\"\nallow = [\"127.0.0.1:5432\"]",
            &[
                ("127.0.0.1", 5432, Both, A),
                ("0.0.0.0", 5432, Both, A),
                ("127.0.0.1", 5433, Both, D),
                ("127.0.0.2", 5432, Both, D),
                ("::1", 5432, Both, D),
                ("::", 5432, Both, D),
            ],
        ),
        (
            // IPv6 loopback, and its unspecified alias.
            "loopback = \"any\"\ndeny = [\"[::1]:6379\"]",
            &[("::1", 6379, Both, D), ("::", 6379, Both, D), ("127.0.0.1", 6379, Both, A), ("0.0.0.0", 6379, Both, A)],
        ),
        (
            // The token covers both families; a longer allow beats it.
            "loopback = [8000]\ndeny = [\"loopback:8000\"]\nallow = [\"tcp://127.0.0.1:8000\"]",
            &[
                ("127.0.0.1", 8000, Tcp, A),
                ("127.0.0.1", 8000, Udp, D),
                ("0.0.0.0", 8000, Tcp, A),
                ("127.0.0.2", 8000, Both, D),
                ("::1", 8000, Both, D),
                ("::", 8000, Both, D),
                ("127.0.0.1", 8001, Both, D),
            ],
        ),
        (
            // A rule on the whole of 127/8 beats the setting (same prefix),
            // longer prefixes beat it, and deny wins a tie.
            "loopback = \"none\"\nallow = [\"127.0.0.0/8\", \"127.0.0.9:80\"]\ndeny = [\"127.0.0.0/24\", \"127.0.0.9:80\"]",
            &[
                ("127.1.2.3", 1, Both, A),
                ("127.0.0.1", 1, Both, D),
                ("0.0.0.0", 1, Both, D),
                ("127.0.1.1", 1, Both, A),
                ("127.0.0.9", 80, Both, D),
                ("::1", 1, Both, D),
            ],
        ),
        (
            // Rules outside loopback never reach it, rules inside never
            // leave it, and the verify sentinel stays refused.
            "default = \"allow\"\nloopback = \"none\"\nallow = [\"any\", \"127.0.0.0/8:7\", \"127.255.255.254\"]\ndeny = [\"126.0.0.0/7:7\"]",
            &[
                ("127.0.0.1", 7, Both, A),
                ("127.0.0.1", 8, Both, D),
                ("126.0.0.1", 7, Both, D),
                ("127.255.255.254", 7, Both, D),
                ("127.255.255.254", 1, Both, D),
                ("128.0.0.1", 7, Both, A),
            ],
        ),
        (
            // Protocol-specific loopback rules.
            "loopback = \"any\"\ndeny = [\"udp://127.0.0.53:53\"]",
            &[("127.0.0.53", 53, Udp, D), ("127.0.0.53", 53, Tcp, A), ("0.0.0.0", 53, Both, A)],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn dns_pinned_keeps_loopback_port_53_for_the_stub() {
    let with_stub = |body: &str, stub: Option<[u8; 4]>| {
        let mut p = policy(&format!("dns = \"pinned\"\n{body}"));
        p.dns = Dns::Pinned { stub: stub.map(Ipv4Addr::from) };
        compiled(&p)
    };
    let c = with_stub("loopback = \"any\"", Some([127, 53, 0, 1]));
    check(
        &c,
        Hook::Destination,
        "dns pinned, stub 127.53.0.1",
        &[
            ("127.53.0.1", 53, Both, A),
            ("::ffff:127.53.0.1", 53, Both, A),
            ("127.53.0.1", 54, Both, A),
            ("127.0.0.53", 53, Both, D),
            ("127.0.0.1", 53, Both, D),
            ("0.0.0.0", 53, Both, D),
            ("::1", 53, Both, D),
            ("::", 53, Both, D),
            ("127.0.0.53", 52, Both, A),
            ("::1", 54, Both, A),
            // Port 53 elsewhere is the rules' business.
            ("10.0.0.53", 53, Both, D),
        ],
    );
    let mut want = entry_names(&compiled(&policy("loopback = \"any\"")).dest);
    want.push("127.53.0.1/32".to_owned());
    want.sort();
    assert_eq!(entry_names(&c.dest), want, "one entry more: the stub");
    // The stub stays reachable under "none" and under loopback denies;
    // a loopback rule opens another resolver; without a stub (attach)
    // nothing on loopback answers on 53.
    let c = with_stub(
        "loopback = \"none\"\ndeny = [\"127.0.0.0/8\"]\nallow = [\"udp://127.0.0.53:53\"]",
        Some([127, 53, 0, 1]),
    );
    check(
        &c,
        Hook::Destination,
        "none",
        &[
            ("127.53.0.1", 53, Both, A),
            ("127.53.0.1", 80, Both, D),
            ("127.0.0.53", 53, Udp, A),
            ("127.0.0.53", 53, Tcp, D),
        ],
    );
    let c = with_stub("loopback = \"any\"\nallow = [\"loopback:53\"]", None);
    check(&c, Hook::Destination, "same prefix", &[("127.0.0.1", 53, Both, A), ("::1", 53, Both, A)]);
    let c = with_stub("loopback = \"any\"", None);
    check(&c, Hook::Destination, "attach", &[("127.53.0.1", 53, Both, D), ("127.0.0.53", 53, Both, D)]);
}

#[test]
fn loopback_rule_entries() {
    // Exactly one entry per loopback rule prefix, under the anchors; the
    // unspecified address shares its alias's table.
    let c = compiled(&policy("loopback = \"any\"\ndeny = [\"127.0.0.53:53\", \"127.0.0.1:2375\"]"));
    let mut want = vec![
        "::/0",
        "0.0.0.0/0",
        "127.0.0.0/8",
        "0.0.0.0/32",
        "::1/128",
        "::/128",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "ff00::/8",
        "::/96",
        "64:ff9b:1::/48",
        "127.255.255.254/32",
        "127.0.0.53/32",
        "127.0.0.1/32",
    ];
    want.sort_unstable();
    assert_eq!(entry_names(&c.dest), want);
    let table_of = |name: &str| {
        let e = c.dest.iter().find(|e| prefix_of(e).display() == name).unwrap_or_else(|| panic!("{name}"));
        c.tables[e.table as usize]
    };
    let mut one_port = PortTable::uniform(A, A);
    one_port.len = 1;
    one_port.segments[0] = PortSegment { lo: 2375, hi: 2375, tcp: D, udp: D, _pad: [0; 2] };
    assert_eq!(table_of("127.0.0.1/32"), one_port);
    assert_eq!(table_of("0.0.0.0/32"), one_port);
    one_port.segments[0] = PortSegment { lo: 53, hi: 53, tcp: D, udp: D, _pad: [0; 2] };
    assert_eq!(table_of("127.0.0.53/32"), one_port);
    assert_eq!(table_of("127.0.0.0/8"), PortTable::uniform(A, A));
    assert_eq!(table_of("::/128"), PortTable::uniform(A, A));
}

#[test]
fn embedded_ipv4_is_judged_by_ipv4_rules() {
    let cases: &[(&str, &[Probe])] = &[
        (
            "default = \"allow\"\ndeny = [\"10.0.0.0/8\"]",
            &[
                ("10.1.2.3", 80, Both, D),
                ("::ffff:10.1.2.3", 80, Both, D),
                ("64:ff9b::10.1.2.3", 80, Both, D),
                ("64:ff9b::a01:203", 80, Both, D),
                ("2002:a01:203::", 80, Both, D),
                ("2002:a01:203:1234:5678::1", 80, Both, D),
                ("::ffff:8.8.8.8", 80, Both, A),
                ("64:ff9b::8.8.8.8", 80, Both, A),
                ("2002:808:808::1", 80, Both, A),
                // Not NAT64 well-known prefix: bits 32..95 non-zero.
                ("64:ff9b:0:0:1::a01:203", 80, Both, A),
                ("2003:a01:203::", 80, Both, A),
            ],
        ),
        (
            "allow = [\"tcp://10.1.2.3:443\"]",
            &[
                ("64:ff9b::a01:203", 443, Tcp, A),
                ("64:ff9b::a01:203", 443, Udp, D),
                ("64:ff9b::a01:203", 80, Tcp, D),
                ("2002:a01:203::1", 443, Tcp, A),
                ("::ffff:10.1.2.3", 443, Tcp, A),
                ("64:ff9b::a01:204", 443, Tcp, D),
            ],
        ),
        // Special addresses embedded in NAT64/6to4 are still special.
        (
            "default = \"allow\"",
            &[
                ("64:ff9b::224.0.0.251", 5353, Both, D),
                ("2002:ffff:ffff::", 67, Both, D),
                ("64:ff9b::0.1.2.3", 80, Both, D),
                ("64:ff9b::8.8.8.8", 80, Both, A),
            ],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn families_do_not_mix() {
    let cases: &[(&str, &[Probe])] = &[
        // An IPv6 rule covering everything does not cover IPv4 addresses,
        // however they are spelled.
        (
            "allow = [\"[::/0]\"]",
            &[
                ("2001:db8::1", 443, Both, A),
                ("fd00::1", 443, Both, A),
                ("10.0.0.1", 443, Both, D),
                ("8.8.8.8", 443, Both, D),
                ("::ffff:8.8.8.8", 443, Both, D),
                ("64:ff9b::808:808", 443, Both, D),
                ("2002:808:808::", 443, Both, D),
            ],
        ),
        (
            "default = \"allow\"\ndeny = [\"::/0\", \"[::/80]\", \"::fffe:0:0/95\"]",
            &[
                ("2001:db8::1", 443, Both, D),
                ("::fffe:1:2", 443, Both, D),
                ("8.8.8.8", 443, Both, A),
                ("::ffff:8.8.8.8", 443, Both, A),
                ("64:ff9b::808:808", 443, Both, A),
            ],
        ),
        (
            "allow = [\"0.0.0.0/0\"]",
            &[("8.8.8.8", 443, Both, A), ("::ffff:8.8.8.8", 443, Both, A), ("2001:db8::1", 443, Both, D)],
        ),
        (
            "allow = [\"[2000::/3]:443\"]",
            &[
                ("2001:db8::1", 443, Both, A),
                ("2001:db8::1", 80, Both, D),
                ("2002:808:808::", 443, Both, D),
                ("8.8.8.8", 443, Both, D),
            ],
        ),
        (
            "allow = [\"any:443\"]",
            &[("2001:db8::1", 443, Both, A), ("8.8.8.8", 443, Both, A), ("8.8.8.8", 80, Both, D)],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn special_addresses() {
    let specials: &[(&str, u16)] = &[
        ("224.0.0.251", 5353),
        ("239.255.255.250", 1900),
        ("255.255.255.255", 67),
        ("240.0.0.1", 80),
        ("0.1.2.3", 80),
        ("ff02::fb", 5353),
        ("ff05::1:3", 547),
        ("::10.0.0.1", 80),
        ("::8.8.8.8", 80),
        ("64:ff9b:1::a00:1", 80),
        ("::ffff:224.0.0.1", 80),
    ];
    // Denied under allow-any, by default or by an explicit shorter rule.
    for body in [
        "default = \"allow\"",
        "allow = [\"any\"]",
        "allow = [\"0.0.0.0/0\", \"[::/0]\", \"0.0.0.0/1\", \"128.0.0.0/1\"]",
    ] {
        let c = compiled(&policy(body));
        for &(addr, port) in specials {
            check(&c, Hook::Destination, body, &[(addr, port, Both, D)]);
        }
        check(&c, Hook::Destination, body, &[("8.8.8.8", 53, Both, A), ("2001:db8::1", 53, Both, A)]);
    }
    // Allowed by a rule at the same or a longer prefix, for its ports only.
    let cases: &[(&str, &[Probe])] = &[
        (
            "default = \"allow\"\nallow = [\"udp://224.0.0.251:5353\", \"udp://[ff02::fb]:5353\"]",
            &[
                ("224.0.0.251", 5353, Udp, A),
                ("224.0.0.251", 5353, Tcp, D),
                ("224.0.0.251", 5354, Udp, D),
                ("224.0.0.252", 5353, Udp, D),
                ("ff02::fb", 5353, Udp, A),
                ("ff02::fb", 5353, Tcp, D),
                ("ff02::fc", 5353, Udp, D),
            ],
        ),
        (
            "allow = [\"224.0.0.0/4\"]",
            &[("224.0.0.251", 1, Both, A), ("239.1.1.1", 1, Both, A), ("240.0.0.1", 1, Both, D)],
        ),
        (
            "allow = [\"192.0.0.0/2\"]",
            &[("224.0.0.251", 1, Both, D), ("255.255.255.255", 1, Both, D), ("200.0.0.1", 1, Both, A)],
        ),
        ("allow = [\"udp://255.255.255.255:67\"]", &[("255.255.255.255", 67, Udp, A), ("255.255.255.255", 68, Udp, D)]),
        ("allow = [\"240.0.0.0/4\"]", &[("255.255.255.255", 67, Both, A), ("240.0.0.1", 1, Both, A)]),
        ("allow = [\"0.0.0.0/8\"]", &[("0.1.2.3", 80, Both, A), ("0.0.0.1", 80, Both, A)]),
        ("allow = [\"[::/96]\"]", &[("::10.0.0.1", 80, Both, A), ("::2", 80, Both, A)]),
        ("allow = [\"[64:ff9b:1::/48]:80\"]", &[("64:ff9b:1::a00:1", 80, Both, A), ("64:ff9b:1::a00:1", 81, Both, D)]),
        ("allow = [\"[ff00::/8]\"]", &[("ff02::fb", 1, Both, A)]),
        // A user deny at the special prefix still denies.
        ("default = \"allow\"\ndeny = [\"224.0.0.0/4:80\"]", &[("224.0.0.1", 80, Both, D), ("224.0.0.1", 81, Both, D)]),
        // A longer user rule for some ports leaves the others to the special deny.
        (
            "default = \"allow\"\nallow = [\"224.0.0.0/24:5353\"]",
            &[("224.0.0.251", 5353, Both, A), ("224.0.0.251", 5352, Both, D), ("224.0.1.1", 5353, Both, D)],
        ),
    ];
    for (body, probes) in cases {
        dest_case(body, probes);
    }
}

#[test]
fn tokens_and_nesting_with_metadata() {
    dest_case(
        "default = \"allow\"\ndeny = [\"private\"]\nallow = [\"tcp://metadata:80\"]",
        &[
            ("169.254.169.254", 80, Tcp, A),
            ("169.254.169.254", 80, Udp, D),
            ("169.254.169.254", 443, Tcp, D),
            ("169.254.1.1", 80, Tcp, D),
            ("fd00:ec2::254", 80, Tcp, A),
            ("fd00:ec2::253", 80, Tcp, D),
            ("8.8.8.8", 80, Both, A),
        ],
    );
}

#[test]
fn proxy_only_mode() {
    // Loopback proxy: only its port on the local host; everything else denied.
    dest_case(
        "proxy = \"127.0.0.1:3128\"\ndeny = [\"private\"]\nallow = [\"10.1.2.3:22\"]",
        &[
            ("127.0.0.1", 3128, Both, A),
            ("::1", 3128, Both, A),
            ("127.0.0.1", 3129, Both, D),
            ("127.0.0.1", 53, Both, D),
            ("8.8.8.8", 443, Both, D),
            ("2001:db8::1", 443, Both, D),
            ("10.1.2.3", 22, Both, A),
            ("10.1.2.3", 23, Both, D),
        ],
    );
    // Remote proxy: TCP to it beats `deny private` (longer prefix).
    dest_case(
        "proxy = \"10.0.0.5:3128\"\ndeny = [\"private\"]",
        &[
            ("10.0.0.5", 3128, Tcp, A),
            ("10.0.0.5", 3128, Udp, D),
            ("10.0.0.5", 3129, Tcp, D),
            ("10.0.0.6", 3128, Tcp, D),
            ("127.0.0.1", 3128, Both, D),
            ("8.8.8.8", 443, Both, D),
        ],
    );
    // The agent profile.
    let layer = crate::policy::profile("agent").expect("agent profile");
    let p = PolicyBuilder::new().apply(layer).build().expect("agent");
    check(
        &compiled(&p),
        Hook::Destination,
        "profile agent",
        &[
            ("127.0.0.1", 3128, Both, A),
            ("127.0.0.1", 5432, Both, A),
            ("169.254.169.254", 80, Both, D),
            ("10.0.0.1", 443, Both, D),
            ("1.1.1.1", 443, Both, D),
            ("2606:4700::1111", 443, Both, D),
        ],
    );
}

#[test]
fn bind_modes() {
    let loopback_bind: &[Probe] = &[
        ("127.0.0.1", 8080, Both, A),
        ("127.0.0.1", 0, Both, A),
        ("127.1.2.3", 1, Both, A),
        ("::1", 8080, Both, A),
        ("::ffff:127.0.0.1", 80, Both, A),
        ("0.0.0.0", 0, Both, A),
        ("0.0.0.0", 8080, Both, D),
        ("0.0.0.0", 1, Both, D),
        ("::", 0, Both, A),
        ("::", 8080, Both, D),
        ("::ffff:0.0.0.0", 0, Both, A),
        ("::ffff:0.0.0.0", 80, Both, D),
        ("10.0.0.1", 0, Both, D),
        ("10.0.0.1", 8080, Both, D),
        ("0.0.0.1", 0, Both, D),
        ("2001:db8::1", 0, Both, D),
        ("::2", 0, Both, D),
        ("128.0.0.1", 80, Both, D),
    ];
    // The destination settings do not change bind.
    for body in ["", "bind = \"loopback\"", "default = \"allow\"\nloopback = \"none\"\nallow = [\"any\"]"] {
        check(&compiled(&policy(body)), Hook::Bind, body, loopback_bind);
    }
    let c = compiled(&policy("bind = \"any\""));
    check(
        &c,
        Hook::Bind,
        "bind any",
        &[
            ("0.0.0.0", 8080, Both, A),
            ("0.0.0.0", 0, Both, A),
            ("10.0.0.1", 1, Both, A),
            ("::", 443, Both, A),
            ("2001:db8::1", 65535, Both, A),
            ("224.0.0.1", 5353, Both, A),
        ],
    );
    // ... and bind does not change the destinations.
    check(&c, Hook::Destination, "bind any", &[("8.8.8.8", 80, Both, D), ("127.0.0.1", 80, Both, A)]);
}

#[test]
fn bind_rules_mode() {
    let body = "bind = [\"0.0.0.0:8080\", \"udp://[::]:5353\", \"10.0.0.0/8:9000-9100\", \"[::1]\"]";
    check(
        &compiled(&policy(body)),
        Hook::Bind,
        body,
        &[
            ("0.0.0.0", 8080, Both, A),
            ("::ffff:0.0.0.0", 8080, Both, A),
            ("0.0.0.0", 8081, Both, D),
            ("0.0.0.0", 0, Both, D),
            ("127.0.0.1", 8080, Both, D),
            ("127.0.0.1", 0, Both, D),
            ("::", 5353, Udp, A),
            ("::", 5353, Tcp, D),
            ("::", 0, Both, D),
            ("10.1.2.3", 9050, Both, A),
            ("10.1.2.3", 9101, Both, D),
            ("::1", 22, Both, A),
            ("11.0.0.1", 9050, Both, D),
        ],
    );
    check(
        &compiled(&policy("bind = []")),
        Hook::Bind,
        "bind = []",
        &[("127.0.0.1", 0, Both, D), ("0.0.0.0", 0, Both, D)],
    );
}

// ---------------------------------------------------------------------------
// Exact entries, byte order, tables.

fn entry_names(entries: &[TrieEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| prefix_of(e).display()).collect();
    v.sort();
    v
}

#[test]
fn empty_policy() {
    let p = policy("");
    let c = compiled(&p);
    let mut want_dest = vec![
        "::/0",
        "0.0.0.0/0",
        "127.0.0.0/8",
        "0.0.0.0/32",
        "::1/128",
        "::/128",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "ff00::/8",
        "::/96",
        "64:ff9b:1::/48",
        "127.255.255.254/32",
    ];
    want_dest.sort_unstable();
    assert_eq!(entry_names(&c.dest), want_dest);
    let mut want_bind = vec!["::/0", "0.0.0.0/0", "127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128"];
    want_bind.sort_unstable();
    assert_eq!(entry_names(&c.bind), want_bind);
    // Deny everything, allow everything (loopback), and port 0 only (bind).
    let mut port0 = PortTable::uniform(D, D);
    port0.len = 1;
    port0.segments[0] = PortSegment { lo: 0, hi: 0, tcp: A, udp: A, _pad: [0; 2] };
    let mut tables = c.tables.clone();
    tables.sort_by_key(|t| (t.len, t.default_tcp));
    assert_eq!(tables, [PortTable::uniform(D, D), PortTable::uniform(A, A), port0]);
    check(
        &c,
        Hook::Destination,
        "empty",
        &[("8.8.8.8", 53, Both, D), ("2001:db8::1", 443, Both, D), ("127.0.0.1", 5432, Both, A), ("::1", 1, Both, A)],
    );
    // A policy that lists nothing compiles the same whatever the input path.
    let from_flags = Policy::from_sources(None, None, &FlagInput { dns: Some("host".into()), ..FlagInput::default() })
        .expect("flags");
    assert_eq!(compiled(&from_flags), c);
    // Compiling is deterministic.
    assert_eq!(compiled(&p), c);
}

#[test]
fn trie_entries_are_network_order() {
    let c = compiled(&policy("allow = [\"10.1.2.0/24:8000-8100\", \"[2001:db8::/32]:443\", \"192.168.1.1\"]"));
    let find = |len: u32, addr: [u8; 16]| {
        c.dest
            .iter()
            .find(|e| e.prefix_len == len && e.addr == addr)
            .unwrap_or_else(|| panic!("no entry /{len} {addr:02x?} in {:#?}", c.dest))
    };
    let e = find(120, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 0]);
    let t = c.tables[e.table as usize];
    assert_eq!((t.default_tcp, t.default_udp, t.len), (D, D, 1));
    assert_eq!(t.segments[0], PortSegment { lo: 8000, hi: 8100, tcp: A, udp: A, _pad: [0; 2] });
    let e = find(32, [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.tables[e.table as usize].segments[0].lo, 443);
    find(128, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 1]);
    find(96, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    find(0, [0; 16]);
    find(104, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 0]);
    find(128, Ipv6Addr::LOCALHOST.octets());
    find(100, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 224, 0, 0, 0]);
    find(48, [0, 0x64, 0xff, 0x9b, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn lookup_addr_table() {
    let cases: &[(&str, [u8; 16])] = &[
        ("10.1.2.3", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]),
        ("::ffff:10.1.2.3", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]),
        // Embedded forms stay IPv6 in the trie; `verdict` classifies them.
        ("64:ff9b::a01:203", [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3]),
        ("2002:a01:203::", [0x20, 0x02, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("2001:db8::1", [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ("64:ff9b:1::a01:203", [0, 0x64, 0xff, 0x9b, 0, 1, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3]),
        ("64:ff9b::1:0:a01:203", [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 1, 0, 0, 10, 1, 2, 3]),
        ("::a01:203", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3]),
        ("::1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ("0.0.0.0", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]),
    ];
    for (addr, want) in cases {
        assert_eq!(lookup_addr(ip(addr)), *want, "lookup_addr({addr})");
    }
}

#[test]
fn tables_are_shared() {
    let rules: Vec<String> = (0..50).map(|i| format!("\"tcp://10.{i}.0.0/16:443,8443\"")).collect();
    let body = format!("allow = [{}]\ndeny = [\"[2001:db8::/32]:443\"]", rules.join(", "));
    let c = compiled(&policy(&body));
    let idx: std::collections::HashSet<u32> =
        c.dest.iter().filter(|e| e.prefix_len == 112 && e.addr[12] == 10).map(|e| e.table).collect();
    assert_eq!(c.dest.iter().filter(|e| e.prefix_len == 112 && e.addr[12] == 10).count(), 50);
    assert_eq!(idx.len(), 1, "fifty identical port sets share one table");
    // deny-all, allow-all (loopback), the shared table, bind's port 0. The
    // IPv6 deny under a deny default resolves to deny-all and shares it:
    // tables are deduplicated by content, not by rule.
    assert_eq!(c.tables.len(), 4, "{:#?}", c.tables);
    let v6 = c.dest.iter().find(|e| e.prefix_len == 32 && e.addr[..4] == [0x20, 0x01, 0x0d, 0xb8]).expect("v6 entry");
    assert_eq!(c.tables[v6.table as usize], PortTable::uniform(D, D));
    check(
        &c,
        Hook::Destination,
        &body,
        &[
            ("10.7.1.1", 443, Tcp, A),
            ("10.7.1.1", 443, Udp, D),
            ("10.49.0.1", 8443, Tcp, A),
            ("10.50.0.1", 443, Tcp, D),
        ],
    );
}

#[test]
fn table_default_is_the_commonest_verdict() {
    // Default allow with a few denied ports: segments are the denies.
    let c = compiled(&policy("default = \"allow\"\ndeny = [\"10.0.0.1:22,25\"]"));
    let e = c.dest.iter().find(|e| e.prefix_len == 128 && e.addr[12..] == [10, 0, 0, 1]).expect("entry");
    let t = c.tables[e.table as usize];
    assert_eq!((t.default_tcp, t.default_udp, t.len), (A, A, 2));
    assert_eq!(
        t.segments[..2],
        [
            PortSegment { lo: 22, hi: 22, tcp: D, udp: D, _pad: [0; 2] },
            PortSegment { lo: 25, hi: 25, tcp: D, udp: D, _pad: [0; 2] }
        ]
    );
    // Mixed protocols give per-protocol verdicts in one segment.
    let c = compiled(&policy("allow = [\"tcp://10.0.0.1:80\", \"udp://10.0.0.1:80-81\"]"));
    let e = c.dest.iter().find(|e| e.prefix_len == 128 && e.addr[12..] == [10, 0, 0, 1]).expect("entry");
    let t = c.tables[e.table as usize];
    assert_eq!((t.default_tcp, t.default_udp, t.len), (D, D, 2));
    assert_eq!(
        t.segments[..2],
        [
            PortSegment { lo: 80, hi: 80, tcp: A, udp: A, _pad: [0; 2] },
            PortSegment { lo: 81, hi: 81, tcp: D, udp: A, _pad: [0; 2] }
        ]
    );
}

// ---------------------------------------------------------------------------
// Capacity errors.

#[test]
fn too_many_entries() {
    let p = PolicyBuilder::new().build().expect("empty");
    assert_eq!(compile(&p, 13).expect("13 entries fit").dest.len(), 13);
    match compile(&p, 12) {
        Err(e @ CompileError::TooManyEntries { map: "destination", needed: 13, max: 12, limit: MAX_MAX_ENTRIES }) => {
            let msg = e.to_string();
            assert!(msg.contains("13 destination entries") && msg.contains("--max-rules"), "{msg}");
        }
        other => panic!("TooManyEntries for destination expected: {other:?}"),
    }
    // The bind trie is checked too.
    let rules: Vec<String> = (0..20).map(|i| format!("\"10.0.0.{i}:80\"")).collect();
    let p = policy(&format!("bind = [{}]", rules.join(", ")));
    assert_eq!(compile(&p, 22).expect("22 fit").bind.len(), 22);
    assert!(
        matches!(compile(&p, 21), Err(CompileError::TooManyEntries { map: "bind", needed: 22, max: 21, .. })),
        "{:?}",
        compile(&p, 21)
    );
    // Many destination rules.
    let rules: Vec<String> = (0..1000).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
    let p = policy(&format!("allow = [{}]", rules.join(", ")));
    // The 1000 rules, the 12 fixed and special entries, and the verify
    // sentinel.
    assert_eq!(compile(&p, DEFAULT_MAX_ENTRIES).expect("fits").dest.len(), 1013);
    assert!(matches!(compile(&p, 1012), Err(CompileError::TooManyEntries { needed: 1013, .. })));
}

fn odd_ports(n: u16, from: u16) -> String {
    (0..n).map(|i| (from + 2 * i).to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn too_many_ranges() {
    let limit = u16::try_from(MAX_SEGMENTS).expect("small");
    // Exactly MAX_SEGMENTS allowed singles fit.
    let ok = policy(&format!("allow = [\"10.0.0.1:{}\"]", odd_ports(limit, 1)));
    let c = compiled(&ok);
    check(
        &c,
        Hook::Destination,
        "32 ports",
        &[("10.0.0.1", 1, Both, A), ("10.0.0.1", 2, Both, D), ("10.0.0.1", 63, Both, A)],
    );
    // One more does not.
    let text = format!("10.0.0.1:{}", odd_ports(limit + 1, 1));
    let bad = policy(&format!("allow = [\"{text}\"]"));
    match compile(&bad, DEFAULT_MAX_ENTRIES) {
        Err(e @ CompileError::TooManyRanges { .. }) => {
            let CompileError::TooManyRanges { prefix, needed, max, rules } = &e else { unreachable!() };
            assert_eq!((prefix.as_str(), *needed, *max), ("10.0.0.1/32", MAX_SEGMENTS + 1, MAX_SEGMENTS));
            assert_eq!(rules, &text);
            assert!(e.to_string().starts_with("10.0.0.1/32: "), "{e}");
        }
        other => panic!("TooManyRanges expected: {other:?}"),
    }
    // Ranges inherited from a shorter prefix count at the longer one, and
    // the message names the rules at both.
    let outer = format!("10.0.0.0/8:{}", odd_ports(20, 1));
    let inner = format!("[::ffff:10.0.0.1]:{}", odd_ports(20, 101));
    let p = policy(&format!("allow = [\"{outer}\", \"{inner}\", \"11.0.0.0/8\"]"));
    match compile(&p, DEFAULT_MAX_ENTRIES) {
        Err(CompileError::TooManyRanges { prefix, needed, rules, .. }) => {
            assert_eq!((prefix.as_str(), needed), ("10.0.0.1/32", 40));
            assert!(rules.contains(&outer) && rules.contains(&inner) && !rules.contains("11.0.0.0"), "{rules}");
        }
        other => panic!("TooManyRanges expected: {other:?}"),
    }
    // IPv6 prefixes are named as IPv6.
    let p = policy(&format!("deny = [\"[2001:db8::1]:{}\"]\ndefault = \"allow\"", odd_ports(limit + 1, 1)));
    assert!(
        matches!(compile(&p, DEFAULT_MAX_ENTRIES), Err(CompileError::TooManyRanges { ref prefix, .. }) if prefix == "2001:db8::1/128"),
        "{:?}",
        compile(&p, DEFAULT_MAX_ENTRIES)
    );
    // Loopback ports count too (the prefix is 127.0.0.0/8).
    let p = policy(&format!("loopback = [{}]", odd_ports(limit + 1, 1)));
    assert!(matches!(compile(&p, DEFAULT_MAX_ENTRIES), Err(CompileError::TooManyRanges { .. })));
    // Contiguous ports merge and need one segment.
    let many: Vec<String> = (1000..1100).map(|p: u16| p.to_string()).collect();
    let p = policy(&format!("allow = [\"10.0.0.1:{}\"]", many.join(",")));
    let c = compiled(&p);
    check(&c, Hook::Destination, "100 ports", &[("10.0.0.1", 1050, Both, A), ("10.0.0.1", 1100, Both, D)]);
}

// ---------------------------------------------------------------------------
// Randomized cross-check against a naive evaluator.

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn u16(&mut self) -> u16 {
        let [hi, lo, ..] = self.next().to_be_bytes();
        u16::from_be_bytes([hi, lo])
    }

    fn byte(&mut self) -> u8 {
        self.next().to_be_bytes()[0]
    }
}

/// Ports the rules are built from, so boundaries collide often.
const PORTS: [u16; 12] = [0, 1, 52, 53, 80, 81, 443, 8000, 8080, 8100, 65534, 65535];

fn random_ports(rng: &mut Rng) -> Option<String> {
    if rng.chance(40) {
        return None;
    }
    let n = 1 + rng.below(3);
    let parts: Vec<String> = (0..n)
        .map(|_| match rng.below(6) {
            0 => "*".to_owned(),
            1 | 2 => rng.pick(&PORTS).to_string(),
            _ => {
                let (a, b) = (*rng.pick(&PORTS), *rng.pick(&PORTS));
                format!("{}-{}", a.min(b), a.max(b))
            }
        })
        .collect();
    Some(parts.join(","))
}

fn random_v4_target(rng: &mut Rng) -> String {
    let base: [u8; 2] = *rng.pick(&[[10, 1], [10, 2], [192, 168]]);
    let (c, d) = (rng.byte(), rng.byte());
    let len = *rng.pick(&[0_u8, 8, 12, 15, 16, 16, 17, 20, 24, 24, 28, 30, 31, 32, 32, 32]);
    match rng.below(4) {
        0 if len == 32 => format!("{}.{}.{c}.{d}", base[0], base[1]),
        1 => format!("[::ffff:{}.{}.{c}.{d}/{}]", base[0], base[1], len + 96),
        _ => format!("{}.{}.{c}.{d}/{len}", base[0], base[1]),
    }
}

const OTHER_TARGETS: [&str; 22] = [
    "any",
    "private",
    "metadata",
    "0.0.0.0/0",
    "0.0.0.0/8",
    "0.1.0.0/16",
    "224.0.0.0/4",
    "224.0.0.251",
    "255.255.255.255",
    "240.0.0.0/8",
    "[ff02::fb]",
    "[ff00::/8]",
    "[::/96]",
    "[64:ff9b:1::/48]",
    "[2001:db8::/32]",
    "[2001:db8:1::/48]",
    "[2001:db8:1::5]",
    "[::/0]",
    "[fe80::/10]",
    "[::/80]",
    "126.0.0.0/7",
    "",
];

/// Destination targets inside the loopback space, in every spelling.
const LOOPBACK_TARGETS: [&str; 12] = [
    "127.0.0.1",
    "127.53.0.1",
    "127.0.0.53",
    "127.9.9.9",
    "127.0.0.0/8",
    "127.0.0.0/24",
    "127.9.0.0/16",
    "127.255.255.254",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:127.0.0.0/120]",
    "loopback",
];

fn random_rule_text(rng: &mut Rng, bind: bool) -> String {
    let proto = *rng.pick(&["", "", "tcp://", "udp://"]);
    let mut target = if rng.chance(70) { random_v4_target(rng) } else { (*rng.pick(&OTHER_TARGETS)).to_owned() };
    if !bind && rng.chance(15) {
        target = (*rng.pick(&LOOPBACK_TARGETS)).to_owned();
    }
    if bind && rng.chance(20) {
        target =
            (*rng.pick(&["127.0.0.1", "127.0.0.0/8", "0.0.0.0", "[::]", "[::1]", "[::ffff:127.0.0.1]"])).to_owned();
    }
    let ports = random_ports(rng);
    if target.is_empty() && ports.is_none() {
        target = "any".to_owned();
    }
    match ports {
        Some(p) => format!("{proto}{target}:{p}"),
        None => format!("{proto}{target}"),
    }
}

fn random_policy(rng: &mut Rng) -> Policy {
    let origin = Origin { source: "random".into(), line: None };
    let n = rng.below(9);
    let rules = (0..n)
        .map(|_| {
            let text = random_rule_text(rng, false);
            let action = if rng.chance(50) { Action::Allow } else { Action::Deny };
            parse_rule(&text, action, &origin, RuleContext::Destination)
                .unwrap_or_else(|e| panic!("generated rule `{text}` should parse: {e}"))
        })
        .collect();
    let loopback = match rng.below(3) {
        0 => Loopback::Any,
        1 => Loopback::None,
        _ => Loopback::Ports(
            crate::policy::parse_ports(&random_ports(rng).unwrap_or_else(|| "80".into())).expect("valid ports"),
        ),
    };
    let bind = match rng.below(3) {
        0 => Bind::Loopback,
        1 => Bind::Any,
        _ => Bind::Rules(
            (0..rng.below(4))
                .map(|_| {
                    let text = random_rule_text(rng, true);
                    parse_rule(&text, Action::Allow, &origin, RuleContext::Bind)
                        .unwrap_or_else(|e| panic!("generated bind rule `{text}` should parse: {e}"))
                })
                .collect(),
        ),
    };
    let default = if rng.chance(50) { Action::Allow } else { Action::Deny };
    let dns = match rng.below(3) {
        0 => Dns::Host,
        1 => Dns::Pinned { stub: None },
        _ => Dns::Pinned { stub: Some(*rng.pick(&[Ipv4Addr::new(127, 53, 0, 1), Ipv4Addr::new(127, 0, 0, 53)])) },
    };
    Policy {
        default,
        loopback,
        proxy: None,
        rules,
        bind,
        mode: Mode::Enforce,
        filesystem: None,
        redirect: false,
        nat64: vec![],
        unix: crate::policy::Unix::Any,
        unix_origin: None,
        dns,
    }
}

const PROBE_ADDRS: [&str; 29] = [
    "127.0.0.1",
    "127.53.0.1",
    "127.0.0.53",
    "127.0.0.2",
    "127.255.255.254",
    "64:ff9b:0:0:1::a01:203",
    "127.9.9.9",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.251",
    "239.1.1.1",
    "255.255.255.255",
    "240.0.0.1",
    "8.8.8.8",
    "169.254.169.254",
    "10.0.0.0",
    "10.255.255.255",
    "::1",
    "::",
    "::a01:203",
    "ff02::fb",
    "64:ff9b:1::a01:203",
    "2001:db8::1",
    "2001:db8:1::5",
    "2001:db8:1::6",
    "fe80::1",
    "fd00:ec2::254",
    "2606:4700::1111",
    "::fffe:1:2",
];

fn v4_nets(p: &Policy) -> Vec<ipnet::Ipv4Net> {
    p.rules
        .iter()
        .flat_map(|r| &r.nets)
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn random_probe_ip(rng: &mut Rng, v4_nets: &[ipnet::Ipv4Net]) -> IpAddr {
    let addr = match rng.below(10) {
        0..=3 if !v4_nets.is_empty() => {
            // Inside a rule's network, or just outside it.
            let n = rng.pick(v4_nets);
            let size = 1_u64 << (32 - n.prefix_len());
            let base = u64::from(u32::from(n.network()));
            let off = match rng.below(4) {
                0 => 0,
                1 => size - 1,
                2 => size,
                _ => rng.next() % size,
            };
            let a = if rng.chance(10) { base.wrapping_sub(1) } else { base + off };
            IpAddr::V4(Ipv4Addr::from((a & 0xffff_ffff) as u32))
        }
        4..=6 => {
            let base: [u8; 2] = *rng.pick(&[[10, 1], [10, 2], [192, 168], [10, 3]]);
            IpAddr::V4(Ipv4Addr::new(base[0], base[1], rng.byte(), rng.byte()))
        }
        _ => ip(PROBE_ADDRS[rng.below(PROBE_ADDRS.len())]),
    };
    // Spell IPv4 as IPv6 now and then.
    match addr {
        IpAddr::V4(v4) if rng.chance(30) => {
            let [o0, o1, o2, o3] = v4.octets();
            let text = match rng.below(3) {
                0 => format!("::ffff:{v4}"),
                1 => format!("64:ff9b::{v4}"),
                _ => format!("2002:{o0:02x}{o1:02x}:{o2:02x}{o3:02x}::{:x}", rng.u16()),
            };
            ip(&text)
        }
        other => other,
    }
}

/// Written from the module docs, not from the implementation: what address
/// family and address the programs judge.
/// IPv4-mapped IPv6 as IPv4; everything else as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    v6.to_ipv4_mapped().map_or(ip, IpAddr::V4)
}

/// The reference's own reading of the embedded-IPv4 forms (RFC 6052 well
/// known prefix, RFC 3056 6to4, RFC 4380 Teredo, RFC 5214 ISATAP): the
/// IPv4 addresses reached and the form's prefix length. Written from the
/// RFCs, apart from `sbx_common::addr`, so the cross-check is one.
fn reference_form(ip: IpAddr) -> Option<(Vec<Ipv4Addr>, u8)> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((vec![v4(s[6], s[7])], 96))
    } else if s[0] == 0x2002 {
        Some((vec![v4(s[1], s[2])], 16))
    } else if s[0] == 0x2001 && s[1] == 0 {
        Some((vec![v4(s[2], s[3]), v4(!s[6], !s[7])], 32))
    } else if (s[4] == 0 || s[4] == 0x200) && s[5] == 0x5efe {
        Some((vec![v4(s[6], s[7])], 64))
    } else {
        None
    }
}

fn covers(ports: &[PortRange], port: u16) -> bool {
    ports.iter().any(|r| r.lo <= port && port <= r.hi)
}

fn proto_ok(p: Protocols, tcp: bool) -> bool {
    if tcp {
        p.tcp
    } else {
        p.udp
    }
}

/// Longest matching rule; `None` if no rule matches. Deny wins ties.
fn best_rule(rules: &[Rule], ip: IpAddr, port: u16, tcp: bool) -> Option<(u8, Action)> {
    let mut best: Option<(u8, Action)> = None;
    for r in rules {
        if !proto_ok(r.protocols, tcp) || !covers(&r.ports, port) {
            continue;
        }
        for n in &r.nets {
            if !n.contains(&ip) {
                continue;
            }
            let len = n.prefix_len();
            best = match best {
                Some((l, _)) if l > len => best,
                Some((l, Action::Deny)) if l == len => best,
                _ => Some((len, r.action)),
            };
        }
    }
    best
}

fn special_nets() -> Vec<IpNet> {
    ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "ff00::/8", "::/96", "64:ff9b:1::/48"]
        .iter()
        .map(|s| s.parse::<IpNet>().expect("literal"))
        .collect()
}

fn reference_dest(p: &Policy, specials: &[IpNet], ip: IpAddr, port: u16, tcp: bool) -> u8 {
    let ip = canonical(ip);
    if let Some((reached, len)) = reference_form(ip) {
        if reached.iter().any(|a| a.octets()[0] == 127 || a.octets()[0] == 0) {
            return D;
        }
        let explicit = p
            .rules
            .iter()
            .flat_map(|r| &r.nets)
            .any(|n| matches!(n, IpNet::V6(_)) && n.contains(&ip) && n.prefix_len() >= len);
        if !explicit {
            let all = reached.iter().all(|a| reference_plain(p, specials, IpAddr::V4(*a), port, tcp) == A);
            return if all { A } else { D };
        }
    }
    reference_plain(p, specials, ip, port, tcp)
}

fn reference_plain(p: &Policy, specials: &[IpNet], ip: IpAddr, port: u16, tcp: bool) -> u8 {
    let local = match ip {
        IpAddr::V4(a) => a.octets()[0] == 127 || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unspecified(),
    };
    if local {
        if ip == IpAddr::V4(VERIFY_SENTINEL) {
            return D;
        }
        // 0.0.0.0 and :: are what 127.0.0.1 and ::1 are; only rules inside
        // the loopback space apply, and any of them beats the setting.
        let ip = match ip {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            other => other,
        };
        let loopback_rules: Vec<Rule> = p
            .rules
            .iter()
            .map(|r| Rule {
                nets: r.nets.iter().copied().filter(crate::policy::is_loopback_net).collect(),
                ..r.clone()
            })
            .collect();
        let user = best_rule(&loopback_rules, ip, port, tcp);
        // dns = "pinned": port 53 is denied on loopback (/8 and ::1) but
        // allowed on the stub (/32), below user rules of the same prefix.
        let builtin = match (p.dns, ip) {
            (Dns::Pinned { stub }, IpAddr::V4(a)) if port == 53 => {
                Some(if stub == Some(a) { (32, Action::Allow) } else { (8, Action::Deny) })
            }
            (Dns::Pinned { .. }, IpAddr::V6(_)) if port == 53 => Some((128, Action::Deny)),
            _ => None,
        };
        match (user, builtin) {
            (Some((ulen, action)), Some((blen, _))) if ulen >= blen => return verdict(action),
            (_, Some((_, action))) | (Some((_, action)), None) => return verdict(action),
            (None, None) => {}
        }
        return match &p.loopback {
            Loopback::Any => A,
            Loopback::None => D,
            Loopback::Ports(ports) => {
                if covers(ports, port) {
                    A
                } else {
                    D
                }
            }
        };
    }
    let special = specials.iter().filter(|n| n.contains(&ip)).map(IpNet::prefix_len).max();
    match (best_rule(&p.rules, ip, port, tcp), special) {
        (Some((_, action)), None) => verdict(action),
        (Some((len, action)), Some(s)) if len >= s => verdict(action),
        (_, Some(_)) => D,
        (None, None) => verdict(p.default),
    }
}

fn reference_bind(p: &Policy, ip: IpAddr, port: u16, tcp: bool) -> u8 {
    let ip = canonical(ip);
    let allowed = match &p.bind {
        Bind::Any => true,
        Bind::Loopback => match ip {
            IpAddr::V4(a) => a.octets()[0] == 127 || (a.is_unspecified() && port == 0),
            IpAddr::V6(a) => a.is_loopback() || (a.is_unspecified() && port == 0),
        },
        Bind::Rules(rules) => best_rule(rules, ip, port, tcp).is_some(),
    };
    if allowed {
        A
    } else {
        D
    }
}

#[test]
fn random_policies_match_reference() {
    let mut rng = Rng(0x5b_c0ff_ee15_600d);
    let specials = special_nets();
    let mut checked = 0_usize;
    for case in 0..3000 {
        let p = random_policy(&mut rng);
        let c = compile(&p, DEFAULT_MAX_ENTRIES).unwrap_or_else(|e| panic!("case {case}: {e}\n{:#?}", p.summary()));
        assert_well_formed(&c);
        // `explain` reads the provenance as the record keeps it.
        let prov = Provenance::decode(&c.provenance.encode()).expect("the record's form reads back");
        assert!(prov == c.provenance, "case {case}: the provenance changed through the record's form");
        let nets = v4_nets(&p);
        for _ in 0..40 {
            let addr = random_probe_ip(&mut rng, &nets);
            let port = if rng.chance(70) {
                let base = *rng.pick(&PORTS);
                match rng.below(3) {
                    0 => base.saturating_sub(1),
                    1 => base.saturating_add(1),
                    _ => base,
                }
            } else {
                rng.u16()
            };
            for tcp in [true, false] {
                let (got, want) =
                    (c.verdict(Hook::Destination, addr, port, tcp), reference_dest(&p, &specials, addr, port, tcp));
                assert_eq!(
                    got,
                    want,
                    "case {case}: destination {} {addr} port {port}: compiled says {}, reference says {}\npolicy: {:#?}",
                    if tcp { "tcp" } else { "udp" },
                    name_of(got),
                    name_of(want),
                    p.summary()
                );
                assert_explained(&p, &c, &prov, Hook::Destination, (addr, port, tcp), got, case);
                let (got, want) = (c.verdict(Hook::Bind, addr, port, tcp), reference_bind(&p, addr, port, tcp));
                assert_explained(&p, &c, &prov, Hook::Bind, (addr, port, tcp), got, case);
                assert_eq!(
                    got,
                    want,
                    "case {case}: bind {} {addr} port {port}: compiled says {}, reference says {}\npolicy: {:#?}",
                    if tcp { "tcp" } else { "udp" },
                    name_of(got),
                    name_of(want),
                    p.summary()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3000 * 40 * 2);
}

/// `explain`'s answer for a call: the verdict the maps give (`kernel`),
/// from the entry a linear longest-prefix search finds, and a source that
/// can have given it (a rule that matches the address the programs judge,
/// port and protocol, with that action; a setting that applies there).
fn assert_explained(
    p: &Policy,
    c: &Compiled,
    prov: &Provenance,
    hook: Hook,
    (ip, port, tcp): (IpAddr, u16, bool),
    kernel: u8,
    case: usize,
) {
    let d = prov.decide(hook, ip, port, tcp);
    let why = crate::explain::reason(p, hook, d);
    let what = format!("case {case}: {hook:?} {ip} port {port} tcp={tcp}: explain says {d:?} ({why})");
    assert_eq!(d.verdict, kernel, "{what}, the maps say {}\npolicy: {:#?}", name_of(kernel), p.summary());
    let (entries, trie) = match hook {
        Hook::Destination => (&c.dest, &prov.dest),
        Hook::Bind => (&c.bind, &prov.bind),
    };
    let host = u128::from_be_bytes(lookup_addr(ip));
    let linear = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| prefix_of(e).contains(Prefix { addr: host, len: 128 }))
        .max_by_key(|(_, e)| e.prefix_len)
        .map(|(i, _)| i);
    assert_eq!(trie.longest(host), linear, "{what}: the lookup found another entry than a linear search");
    let rules = match (hook, &p.bind) {
        (Hook::Destination, _) => &p.rules[..],
        (Hook::Bind, Bind::Rules(r)) => &r[..],
        (Hook::Bind, _) => &[],
    };
    let judged = canonical(ip);
    let mut reached = vec![judged];
    match judged {
        IpAddr::V4(a) if a.is_unspecified() => reached.push(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(a) if a.is_unspecified() => reached.push(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    if hook == Hook::Destination {
        reached.extend(reference_form(judged).into_iter().flat_map(|(v4s, _)| v4s).map(IpAddr::V4));
        // The network-specific NAT64 forms, which the reference does not read.
        if let Some(e) = addr::embedded(&lookup_addr(judged), &c.nat64) {
            reached.extend([Some(e.v4), e.second].into_iter().flatten().map(|a| IpAddr::V4(Ipv4Addr::from(a))));
        }
    }
    let local = reached.iter().any(|a| match a {
        IpAddr::V4(a) => a.octets()[0] == 127 || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unspecified(),
    });
    if let Some(i) = d.source.rule_index() {
        let r = &rules[i];
        assert_eq!(verdict(r.action), d.verdict, "{what}: the rule's action is not the verdict");
        assert!(covers(&r.ports, port) && proto_ok(r.protocols, tcp), "{what}: the rule does not cover the call");
        assert!(r.nets.iter().any(|n| reached.iter().any(|a| n.contains(a))), "{what}: the rule does not match");
        return;
    }
    match d.source {
        Source::DEFAULT if hook == Hook::Destination => assert_eq!(d.verdict, verdict(p.default), "{what}"),
        Source::DEFAULT => assert!(d.verdict == D && matches!(p.bind, Bind::Rules(_)), "{what}"),
        Source::LOOPBACK | Source::DNS_PINNED | Source::DNS_STUB => assert!(local, "{what}: not a local address"),
        Source::SENTINEL | Source::EMBEDDED_LOCAL => assert_eq!(d.verdict, D, "{what}"),
        Source::BIND_ANY => assert!(hook == Hook::Bind && p.bind == Bind::Any && d.verdict == A, "{what}"),
        Source::BIND_LOOPBACK => assert!(hook == Hook::Bind && p.bind == Bind::Loopback, "{what}"),
        _ => assert!(matches!(why, crate::explain::Reason::Builtin(_)) && d.verdict == D, "{what}"),
    }
}

/// The IPv6 forms of `v4` the programs classify (`sbx_common::addr`):
/// IPv4-mapped, NAT64 (the well-known prefix and a network-specific one),
/// 6to4, Teredo (as server and as client) and ISATAP.
fn forms_of(v4: Ipv4Addr, nsp: Option<ipnet::Ipv6Net>, rng: &mut Rng) -> Vec<IpAddr> {
    let o = v4.octets();
    let mut out = vec![IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())];
    let v6 = |b: [u8; 16]| IpAddr::V6(std::net::Ipv6Addr::from(b));
    let mut wk = [0_u8; 16];
    wk[1] = 0x64;
    wk[2] = 0xff;
    wk[3] = 0x9b;
    wk[12..].copy_from_slice(&o);
    out.push(v6(wk));
    if let Some(n) = nsp {
        // RFC 6052 2.2: the IPv4 octets after the prefix, skipping octet 8.
        let mut b = n.network().octets();
        let mut at = usize::from(n.prefix_len() / 8);
        for octet in o {
            if at == 8 {
                at += 1;
            }
            b[at] = octet;
            at += 1;
        }
        out.push(v6(b));
    }
    let mut six = [0_u8; 16];
    six[0] = 0x20;
    six[1] = 0x02;
    six[2..6].copy_from_slice(&o);
    six[10..12].copy_from_slice(&rng.u16().to_be_bytes());
    out.push(v6(six));
    let other = Ipv4Addr::new(198, 18, 0, rng.byte()).octets();
    for (server, client) in [(o, other), (other, o)] {
        let mut t = [0_u8; 16];
        t[1] = 0x01;
        t[4..8].copy_from_slice(&server);
        for (k, c) in client.iter().enumerate() {
            t[12 + k] = !c;
        }
        out.push(v6(t));
    }
    let mut isatap = [0_u8; 16];
    isatap[0] = 0xfd;
    isatap[8] = if rng.chance(50) { 0 } else { 2 };
    isatap[10] = 0x5e;
    isatap[11] = 0xfe;
    isatap[12..].copy_from_slice(&o);
    out.push(v6(isatap));
    out
}

#[test]
fn explain_agrees_with_the_maps_on_every_address_form() {
    // Thousands of random policies, some with a NAT64 network-specific
    // prefix and IPv6 rules over the forms' ranges; every address spelled
    // in each form the programs classify.
    let mut rng = Rng(0xe7_91a1_4ed0);
    let nsps = ["2001:db8:122::/48", "2001:db8::/32", "2001:db8:122:344::/64", "2001:db8:100::/40"];
    let v6_rules =
        ["[2002::/16]", "[2001::/32]", "[64:ff9b::/96]", "[2001:db8:122::/48]", "[fd00::/64]", "[2002:a01::/32]"];
    let origin = Origin { source: "random".into(), line: None };
    let mut checked = 0_usize;
    for case in 0..2000 {
        let mut p = random_policy(&mut rng);
        let nsp = rng.chance(50).then(|| rng.pick(&nsps).parse::<ipnet::Ipv6Net>().expect("literal"));
        p.nat64 = nsp.into_iter().collect();
        for _ in 0..rng.below(3) {
            let text = format!("{}:{}", rng.pick(&v6_rules), random_ports(&mut rng).unwrap_or_else(|| "*".into()));
            let action = if rng.chance(50) { Action::Allow } else { Action::Deny };
            p.rules.push(parse_rule(&text, action, &origin, RuleContext::Destination).expect("valid"));
        }
        let c = compile(&p, DEFAULT_MAX_ENTRIES).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_well_formed(&c);
        let prov = Provenance::decode(&c.provenance.encode()).expect("the record's form reads back");
        let nets = v4_nets(&p);
        for _ in 0..8 {
            let v4 = match random_probe_ip(&mut rng, &nets) {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::new(10, 1, 0, rng.byte())),
            };
            for addr in forms_of(v4, nsp, &mut rng) {
                let port = *rng.pick(&PORTS);
                for tcp in [true, false] {
                    for hook in [Hook::Destination, Hook::Bind] {
                        let kernel = c.verdict(hook, addr, port, tcp);
                        assert_explained(&p, &c, &prov, hook, (addr, port, tcp), kernel, case);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 200_000, "{checked}");
}

#[test]
fn rule_order_does_not_matter() {
    // Rule order never changes the compiled result.
    let mut rng = Rng(0x0dd_ba11);
    for case in 0..300 {
        let p = random_policy(&mut rng);
        let mut reversed = p.clone();
        reversed.rules.reverse();
        let (a, b) = (compiled(&p), compiled(&reversed));
        let norm = |c: &Compiled| {
            let mut v: Vec<_> = c.dest.iter().map(|e| (e.prefix_len, e.addr, c.tables[e.table as usize])).collect();
            v.sort_by_key(|(l, a, _)| (*l, *a));
            v
        };
        assert!(norm(&a) == norm(&b), "case {case}: rule order changed the result\n{:#?}", p.summary());
    }
}

#[test]
fn verdict_of_socket_addrs() {
    // Sanity: the simulated lookup handles the address forms the programs see.
    let c = compiled(&policy("allow = [\"tcp://10.0.0.1:443\"]"));
    for s in ["10.0.0.1:443", "[::ffff:10.0.0.1]:443", "[64:ff9b::a00:1]:443"] {
        let sa: SocketAddr = s.parse().expect("literal");
        assert_eq!(c.verdict(Hook::Destination, sa.ip(), sa.port(), true), A, "{s}");
    }
}

#[test]
fn embedded_forms_are_judged_as_the_ipv4_they_reach() {
    let c = compiled(&policy(
        "nat64 = [\"2001:db8:122::/48\"]\ndefault = \"allow\"\ndeny = [\"private\"]\nallow = [\"[2002:a00:1::/48]:443\"]",
    ));
    let v = |a: &str, port| c.verdict(Hook::Destination, ip(a), port, true);
    // Network-specific prefix /48: 10.0.0.1 and 192.0.2.33.
    assert_eq!(v("2001:db8:122:a00:0:100::", 80), D, "NSP form of 10.0.0.1");
    assert_eq!(v("2001:db8:122:c000:2:2100::", 80), A, "NSP form of 192.0.2.33");
    // Teredo: an allowed server with a private client is denied.
    assert_eq!(v("2001:0:c000:221::f5ff:fffe", 3544), D, "client 10.0.0.1");
    assert_eq!(v("2001:0:c000:221::3fff:fdde", 3544), A, "client 192.0.2.33");
    // ISATAP.
    assert_eq!(v("2001:db8:1::5efe:a00:1", 80), D);
    // The explicit /48 rule decides for 6to4 of 10.0.0.1 on 443 only; other
    // ports fall back to what the trie inherits at that prefix (default
    // allow, as the rule is IPv6 and sees no IPv4 rule).
    assert_eq!(v("2002:a00:1::1", 443), A, "explicit IPv6 rule");
    assert_eq!(v("2002:a00:2::1", 443), D, "outside the explicit rule: 10.0.0.2 is private");
    // Forms of local addresses: always refused.
    assert_eq!(v("2001:db8:122:7f00:0:100::", 80), D);
}

/// A policy file of `n` distinct generated rules, like the benchmark's:
/// half IPv4 and half IPv6 prefixes, half allow and half deny, some with
/// ports or a protocol.
fn generated_policy(n: usize) -> String {
    use std::fmt::Write as _;
    let mut rng = Rng(0x5b_0000 + n as u64);
    let mut seen = std::collections::HashSet::new();
    let (mut allow, mut deny) = (String::new(), String::new());
    while seen.len() < n {
        let (key, target) = if rng.chance(50) {
            let len = 8 + rng.below(25);
            let first = u32::try_from(1 + rng.below(222)).expect("octet") << 24;
            let addr = (first | u32::try_from(rng.next() & 0xff_ffff).expect("24 bits")) & (u32::MAX << (32 - len));
            ((4, u128::from(addr), len), format!("{}/{len}", Ipv4Addr::from(addr)))
        } else {
            let len = 16 + rng.below(49);
            let addr = ((0x2400_u128 + u128::from(rng.u16() & 0x1bff)) << 112 | u128::from(rng.next()) << 48)
                & (u128::MAX << (128 - len));
            ((6, addr, len), format!("[{}/{len}]", std::net::Ipv6Addr::from(addr)))
        };
        if !seen.insert(key) {
            continue;
        }
        let rule = match rng.below(10) {
            0..=3 => target,
            4 => format!("{target}:443"),
            5 => format!("{target}:80,443"),
            6 => format!("{target}:8000-8100"),
            7 => format!("udp://{target}:53"),
            _ => format!("tcp://{target}:22"),
        };
        let _ = writeln!(if rng.chance(50) { &mut allow } else { &mut deny }, "  \"{rule}\",");
    }
    format!("[network]\ndefault = \"deny\"\nallow = [\n{allow}]\ndeny = [\n{deny}]\n")
}

#[test]
#[ignore = "timing, by hand: cargo test --release -p sbx-user -- --ignored --nocapture load_phase_times"]
fn load_phase_times() {
    // Where a big policy's load goes, phase by phase (SBX_POLICY=FILE
    // times that file instead of 100,000 generated rules).
    use std::time::Instant;
    let (name, src) = match std::env::var("SBX_POLICY") {
        Ok(path) => (path.clone(), std::fs::read_to_string(&path).expect("reading SBX_POLICY")),
        Err(_) => ("generated.toml".to_owned(), generated_policy(100_000)),
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..3 {
        let t = Instant::now();
        let _: toml::Table = toml::from_str(&src).expect("TOML");
        let toml_ms = ms(t);
        let t = Instant::now();
        let layer = parse_toml(&src, &name).expect("parse");
        let parse_ms = ms(t);
        let t = Instant::now();
        let mut b = PolicyBuilder::new();
        b.apply(layer);
        let p = b.into_policy(&|_| Ok(Vec::new()), false).expect("build");
        let build_ms = ms(t);
        let t = Instant::now();
        let c = compile(&p, MAX_MAX_ENTRIES).expect("compile");
        let compile_ms = ms(t);
        let t = Instant::now();
        let provenance = c.provenance.encode();
        let encode_ms = ms(t);
        let t = Instant::now();
        let json = serde_json::to_string(&p).expect("JSON");
        let json_ms = ms(t);
        eprintln!(
            "{} rules: TOML alone {toml_ms:.1} ms; parse (TOML and rules) {parse_ms:.1} ms; build {build_ms:.1} ms; \
             compile {compile_ms:.1} ms ({} entries); provenance {encode_ms:.1} ms ({} bytes); policy as JSON {json_ms:.1} ms ({} bytes)",
            p.rules.len(),
            c.dest.len(),
            provenance.len(),
            json.len()
        );
    }
}
