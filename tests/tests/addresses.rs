//! Address forms, protocols and precedence, end to end: the policy is
//! attached with `sbx-user attach` and judged by real socket calls.
//!
//! Namespace-side hosts: `ns_v4`/`ns_v6` (`.2`, `::2`) and
//! `ns_v4b`/`ns_v6b` (`.3`, `::3`). Port 8080 has a TCP server, 8081 is
//! closed, UDP port 9999 has a receiver when a test starts one. An allowed
//! connect to 8081 fails with `ECONNREFUSED`; a denied one with `EPERM`.

use sbx_tests::{
    probe, prog_counts, Fixture,
    Proto::{Tcp, Udp},
};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;
use serde_json as _;

/// `::ffff:a.b.c.d`.
fn mapped(v4: std::net::Ipv4Addr) -> String {
    format!("::ffff:{v4}")
}

#[test]
fn tcp_connects_v4_v6_and_mapped_allowed_or_eperm() {
    let fx = Fixture::new(probe!());
    fx.net.serve_tcp(8080);
    let n = &fx.net;
    fx.attach(&["--allow", &format!("tcp://{}:8080", n.ns_v4), "--allow", &format!("tcp://[{}]:8080", n.ns_v6)]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8081), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6b, 8080), "err EPERM");
    // A dual-stack socket reaching IPv4 obeys the IPv4 rules.
    assert_eq!(p.connect(Tcp, mapped(n.ns_v4), 8080), "ok");
    assert_eq!(p.connect(Tcp, mapped(n.ns_v4), 8081), "err EPERM");
    assert_eq!(p.connect(Tcp, mapped(n.ns_v4b), 8080), "err EPERM");
    // A tcp:// rule does not open UDP.
    assert_eq!(p.connect(Udp, n.ns_v4, 8080), "err EPERM");

    // Processes outside the sandbox cgroup are not affected.
    let o = fx.outside();
    assert_eq!(o.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
    assert_eq!(o.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(o.connect(Tcp, n.ns_v6b, 8080), "ok");
    assert_eq!(o.connect(Tcp, mapped(n.ns_v4b), 8080), "ok");
}

#[test]
fn udp_unconnected_sendto_is_judged_and_denied_datagrams_never_arrive() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let rx = n.udp_receiver(9999);
    fx.attach(&["--allow", &format!("udp://{}:9999", n.ns_v4), "--allow", &format!("udp://[{}]:9999", n.ns_v6)]);
    let p = fx.inside();
    assert_eq!(p.sendto(n.ns_v4, 9999, "v4-allowed"), "ok");
    assert_eq!(p.sendto(n.ns_v6, 9999, "v6-allowed"), "ok");
    assert_eq!(p.sendto(mapped(n.ns_v4), 9999, "mapped-allowed"), "ok");
    assert_eq!(p.sendto(n.ns_v4b, 9999, "v4-other-host"), "err EPERM");
    assert_eq!(p.sendto(n.ns_v4, 9998, "v4-other-port"), "err EPERM");
    assert_eq!(p.sendto(n.ns_v6b, 9999, "v6-other-host"), "err EPERM");
    assert_eq!(p.sendto(mapped(n.ns_v4b), 9999, "mapped-other-host"), "err EPERM");
    // The rule is udp:// only.
    assert_eq!(p.connect(Tcp, n.ns_v4, 9999), "err EPERM");
    // Outside the sandbox the same datagram goes through.
    assert_eq!(fx.outside().sendto(n.ns_v4b, 9999, "outside"), "ok");

    let got = rx.sync();
    for allowed in ["v4-allowed", "v6-allowed", "mapped-allowed", "outside"] {
        assert!(got.iter().any(|g| g == allowed), "{allowed} did not arrive: {got:?}");
    }
    for denied in ["v4-other-host", "v4-other-port", "v6-other-host", "mapped-other-host"] {
        assert!(!got.iter().any(|g| g == denied), "{denied} arrived although sendto failed: {got:?}");
    }
}

#[test]
fn udp_connect_is_judged() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let rx = n.udp_receiver(9999);
    fx.attach(&["--allow", &format!("udp://{}:9999", n.ns_v4), "--allow", &format!("udp://[{}]:9999", n.ns_v6)]);
    let p = fx.inside();
    assert_eq!(p.connect_send(n.ns_v4, 9999, "c-v4-allowed"), "ok");
    assert_eq!(p.connect_send(n.ns_v6, 9999, "c-v6-allowed"), "ok");
    assert_eq!(p.connect_send(mapped(n.ns_v4), 9999, "c-mapped-allowed"), "ok");
    assert_eq!(p.connect_send(n.ns_v4b, 9999, "c-v4-denied"), "err EPERM");
    assert_eq!(p.connect_send(n.ns_v6b, 9999, "c-v6-denied"), "err EPERM");
    assert_eq!(p.connect_send(mapped(n.ns_v4b), 9999, "c-mapped-denied"), "err EPERM");

    let got = rx.sync();
    for allowed in ["c-v4-allowed", "c-v6-allowed", "c-mapped-allowed"] {
        assert!(got.iter().any(|g| g == allowed), "{allowed} did not arrive: {got:?}");
    }
    assert!(!got.iter().any(|g| g.ends_with("-denied")), "a denied datagram arrived: {got:?}");
}

#[test]
fn sendto_on_a_connected_udp_socket_judges_the_new_destination() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let rx = n.udp_receiver(9999);
    fx.attach(&["--allow", &format!("udp://{}:9999", n.ns_v4)]);
    let p = fx.inside();
    let (a, b) = (n.ns_v4.to_string(), n.ns_v4b.to_string());
    assert_eq!(p.run(&["connected-sendto", &a, "9999", &b, "9999", "redirected"]), "err EPERM");
    assert_eq!(p.run(&["connected-sendto", &a, "9999", &a, "9999", "same"]), "ok");
    let got = rx.sync();
    assert!(got.iter().any(|g| g == "same"), "{got:?}");
    assert!(!got.iter().any(|g| g == "redirected"), "{got:?}");
}

#[test]
fn threads_forked_children_exec_children_and_child_cgroups_are_covered() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4), "--allow", &format!("[{}]:8080", n.ns_v6)]);
    let p = fx.inside();
    for ip in [n.ns_v4.to_string(), n.ns_v6.to_string(), mapped(n.ns_v4)] {
        assert_eq!(p.connect_thread(Tcp, &ip, 8080), "ok", "{ip}");
        assert_eq!(p.connect_thread(Tcp, &ip, 8081), "err EPERM", "{ip}");
        assert_eq!(p.connect_thread(Udp, &ip, 8081), "err EPERM", "{ip}");
        assert_eq!(p.fork_connect(Tcp, &ip, 8080), "ok", "{ip}");
        assert_eq!(p.fork_connect(Tcp, &ip, 8081), "err EPERM", "{ip}");
        assert_eq!(p.fork_connect(Udp, &ip, 8081), "err EPERM", "{ip}");
    }

    // A program exec'd by a shell inside the sandbox.
    let script = format!("{} connect tcp {} 8081; {} connect tcp {} 8080", p.arg(), n.ns_v4, p.arg(), n.ns_v4);
    let out = p.place().output(std::process::Command::new("sh").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "err EPERM\nok\n");

    // A process in a child cgroup inherits the programs.
    let leaf = fx.cg.child("leaf");
    assert_eq!(prog_counts(&leaf, false), sbx_tests::per_hook(0), "nothing is attached to the child itself");
    assert_eq!(prog_counts(&leaf, true), sbx_tests::per_hook(1), "the parent's programs are effective in the child");
    let q = fx.probe.in_cgroup(&leaf);
    assert_eq!(q.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    assert_eq!(q.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(q.sendto(n.ns_v6, 8081, "x"), "err EPERM");
}

#[test]
fn deny_private_but_allow_one_host_port() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--default", "allow", "--deny", "private", "--allow", &format!("{}:8080", n.ns_v4)]);
    let p = fx.inside();
    // The /32 with a port beats the /8 of `private`, for that port only.
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, mapped(n.ns_v4), 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    // fd00::/8 is inside fc00::/7.
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "err EPERM");
    assert_eq!(p.sendto(n.ns_v4b, 9999, "x"), "err EPERM");
}

#[test]
fn allow_subnet_but_deny_one_host() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let v4net = format!("{}/24", n.ns_v4);
    let v6net = format!("{}/64", n.ns_v6);
    fx.attach(&[
        "--allow",
        &v4net,
        "--deny",
        &n.ns_v4b.to_string(),
        "--allow",
        &v6net,
        "--deny",
        &n.ns_v6b.to_string(),
    ]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, mapped(n.ns_v4b), 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v6b, 8080), "err EPERM");
}

#[test]
fn any_host_port_rules_and_longest_prefix_and_ties() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    // `:8080` denies the port on every host; the /32 allow is longer.
    fx.attach(&["--default", "allow", "--deny", ":8080", "--allow", &format!("tcp://{}:8080", n.ns_v4b)]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(p.sendto(n.ns_v4b, 8080, "x"), "err EPERM", "the /32 allow is tcp:// only");

    // The other way round: only port 8080, anywhere.
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", "tcp://:8080"]);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v6b, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");

    // Allow and deny of the same prefix and port: deny wins.
    let same = format!("{}:8080", n.ns_v4);
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", &same, "--deny", &same]);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
}

/// Loopback is decided by `--loopback` alone. These probes run inside the
/// test namespace, whose own loopback has the server on `[::]:8080`.
#[test]
fn loopback_any() {
    let fx = Fixture::new(probe!());
    fx.net.serve_tcp(8080);
    fx.attach(&["--default", "deny", "--loopback", "any"]);
    let p = fx.inside_ns();
    for ip in ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"] {
        assert_eq!(p.connect(Tcp, ip, 8080), "ok", "{ip}");
        assert_eq!(p.connect(Tcp, ip, 8081), "err ECONNREFUSED", "{ip}");
    }
    assert_eq!(p.sendto("127.0.0.1", 9999, "x"), "ok");
    assert_eq!(p.connect(Tcp, fx.net.ns_v4, 8080), "err EPERM", "default deny still applies");
}

#[test]
fn loopback_none_even_under_default_allow() {
    let fx = Fixture::new(probe!());
    fx.net.serve_tcp(8080);
    fx.attach(&["--default", "allow", "--loopback", "none"]);
    let p = fx.inside_ns();
    for ip in ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0"] {
        assert_eq!(p.connect(Tcp, ip, 8080), "err EPERM", "{ip}");
        assert_eq!(p.connect(Udp, ip, 9999), "err EPERM", "{ip}");
        assert_eq!(p.sendto(ip, 9999, "x"), "err EPERM", "{ip}");
    }
    assert_eq!(p.connect(Tcp, fx.net.ns_v4, 8080), "ok", "non-loopback follows the default");
}

#[test]
fn loopback_port_list() {
    let fx = Fixture::new(probe!());
    fx.net.serve_tcp(8080);
    fx.net.serve_tcp(8082);
    fx.attach(&["--loopback", "8080,9000-9001"]);
    let p = fx.inside_ns();
    for ip in ["127.0.0.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"] {
        assert_eq!(p.connect(Tcp, ip, 8080), "ok", "{ip}");
        assert_eq!(p.connect(Tcp, ip, 9000), "err ECONNREFUSED", "{ip}");
        assert_eq!(p.connect(Tcp, ip, 8082), "err EPERM", "{ip}");
        assert_eq!(p.sendto(ip, 8082, "x"), "err EPERM", "{ip}");
        assert_eq!(p.sendto(ip, 9001, "x"), "ok", "{ip}");
    }
}

/// Only under a policy that must deny them, and from inside the test
/// namespace (no route off the machine), so nothing can leak even if
/// enforcement were broken.
#[test]
fn multicast_broadcast_and_special_ranges_denied_under_default_allow() {
    let fx = Fixture::new(probe!());
    fx.attach(&["--default", "allow"]);
    let p = fx.inside_ns();
    for ip in [
        "224.0.0.251",        // mDNS group
        "239.255.255.250",    // SSDP group
        "255.255.255.255",    // limited broadcast
        "240.0.0.1",          // reserved
        "0.1.2.3",            // 0.0.0.0/8 other than 0.0.0.0
        "ff02::fb",           // IPv6 multicast
        "::ffff:224.0.0.251", // mapped multicast
        "::10.1.2.3",         // IPv4-compatible IPv6
        "64:ff9b:1::a01:203", // local-use NAT64
    ] {
        assert_eq!(p.sendto(ip, 5353, "x"), "err EPERM", "{ip}");
        assert_eq!(p.connect(Udp, ip, 5353), "err EPERM", "{ip}");
    }
    assert_eq!(p.connect(Tcp, "224.0.0.251", 80), "err EPERM");
    // The default itself allows: unicast in the namespace goes through.
    assert_eq!(p.sendto(fx.net.ns_v4, 9999, "x"), "ok");
}

/// NAT64 and 6to4 addresses obey the rule of the IPv4 address they embed.
/// Run inside the test namespace, which has no route for them: an allowed
/// connect fails with `ENETUNREACH` and nothing is sent anywhere.
#[test]
fn nat64_and_6to4_follow_the_ipv4_rules() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let nat64 = |v4: std::net::Ipv4Addr| format!("64:ff9b::{v4}");
    let six_to_four = |v4: std::net::Ipv4Addr| {
        let o = v4.octets();
        format!("2002:{:02x}{:02x}:{:02x}{:02x}::1", o[0], o[1], o[2], o[3])
    };
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let p = fx.inside_ns();
    for ip in [nat64(n.ns_v4), six_to_four(n.ns_v4)] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err ENETUNREACH", "{ip}: allowed, but unroutable");
        assert_eq!(p.sendto(&ip, 8080, "x"), "err ENETUNREACH", "{ip}");
        assert_eq!(p.connect(Tcp, &ip, 8081), "err EPERM", "{ip}");
    }
    for ip in [nat64(n.ns_v4b), six_to_four(n.ns_v4b), "64:ff9c::a01:203".to_owned()] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err EPERM", "{ip}");
        assert_eq!(p.sendto(&ip, 8080, "x"), "err EPERM", "{ip}");
    }

    // Default allow with the IPv4 host denied.
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--default", "allow", "--deny", &n.ns_v4.to_string()]);
    for ip in [nat64(n.ns_v4), six_to_four(n.ns_v4)] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err EPERM", "{ip}");
        assert_eq!(p.connect(Udp, &ip, 53), "err EPERM", "{ip}");
        assert_eq!(p.sendto(&ip, 53, "x"), "err EPERM", "{ip}");
    }
    for ip in [nat64(n.ns_v4b), six_to_four(n.ns_v4b)] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err ENETUNREACH", "{ip}");
    }
}

#[test]
fn af_unspec_connect_is_a_disconnect_not_a_bypass() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let rx = n.udp_receiver(9999);
    fx.attach(&["--default", "deny"]);
    let p = fx.inside();
    for ip in [n.ns_v4.to_string(), n.ns_v6.to_string(), mapped(n.ns_v4)] {
        for proto in ["tcp", "udp"] {
            // `ok`: connect returned 0, the socket stayed unconnected and
            // (UDP) a send without an address failed.
            assert_eq!(p.run(&["unspec-connect", proto, &ip, "8080"]), "ok", "{proto} {ip}:8080");
            assert_eq!(p.run(&["unspec-connect", proto, &ip, "9999"]), "ok", "{proto} {ip}:9999");
        }
        assert_eq!(p.connect(Tcp, &ip, 8080), "err EPERM", "{ip}");
    }
    let got = rx.sync();
    assert!(got.iter().all(|g| g.starts_with("sync-")), "{got:?}");
}

#[test]
fn bind_loopback_mode_is_the_default() {
    let fx = Fixture::new(probe!());
    fx.attach(&[]);
    let p = fx.inside_ns();
    let n = &fx.net;
    for proto in [Tcp, Udp] {
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(p.bind(proto, ip, 0), "ok", "{proto:?} {ip}:0");
            assert_eq!(p.bind(proto, ip, 8080), "ok", "{proto:?} {ip}:8080");
        }
        for ip in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert_eq!(p.bind(proto, ip, 0), "ok", "{proto:?} {ip}:0");
            assert_eq!(p.bind(proto, ip, 8080), "err EPERM", "{proto:?} {ip}:8080");
        }
        assert_eq!(p.bind(proto, n.ns_v4, 8080), "err EPERM", "{proto:?}");
        assert_eq!(p.bind(proto, n.ns_v4, 0), "err EPERM", "{proto:?}");
        assert_eq!(p.bind(proto, n.ns_v6, 8080), "err EPERM", "{proto:?}");
    }
    // The kernel accepts AF_UNSPEC with INADDR_ANY as AF_INET; so does sbx's
    // judgement of the address.
    assert_eq!(p.run(&["unspec-bind", "0.0.0.0", "8080"]), "err EPERM");
    assert_eq!(p.run(&["unspec-bind", "0.0.0.0", "0"]), "ok");
    // Outside the sandbox binding is unrestricted.
    let o = fx.outside().in_netns(n.name());
    assert_eq!(o.bind(Tcp, "0.0.0.0", 8080), "ok");
}

#[test]
fn bind_any() {
    let fx = Fixture::new(probe!());
    fx.attach(&["--bind", "any"]);
    let p = fx.inside_ns();
    let n = &fx.net;
    for proto in [Tcp, Udp] {
        for ip in
            ["0.0.0.0".to_owned(), "::".to_owned(), "127.0.0.1".to_owned(), n.ns_v4.to_string(), n.ns_v6.to_string()]
        {
            assert_eq!(p.bind(proto, &ip, 8080), "ok", "{proto:?} {ip}");
        }
    }
}

#[test]
fn bind_rules() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    fx.attach(&["--bind", &format!("0.0.0.0:8080,udp://[::]:5353,{}:9000", n.ns_v4)]);
    let p = fx.inside_ns();
    assert_eq!(p.bind(Tcp, "0.0.0.0", 8080), "ok");
    assert_eq!(p.bind(Udp, "0.0.0.0", 8080), "ok");
    assert_eq!(p.bind(Tcp, "0.0.0.0", 8081), "err EPERM");
    assert_eq!(p.bind(Tcp, "0.0.0.0", 0), "err EPERM", "only what the rules name");
    assert_eq!(p.bind(Tcp, "127.0.0.1", 8081), "err EPERM", "only what the rules name");
    assert_eq!(p.bind(Tcp, "::", 8080), "err EPERM", "0.0.0.0 does not name ::");
    assert_eq!(p.bind(Udp, "::", 5353), "ok");
    assert_eq!(p.bind(Tcp, "::", 5353), "err EPERM", "the rule is udp:// only");
    assert_eq!(p.bind(Tcp, n.ns_v4, 9000), "ok");
    assert_eq!(p.bind(Tcp, n.ns_v4b, 9000), "err EPERM");
    assert_eq!(p.bind(Tcp, n.ns_v4, 8080), "err EPERM", "0.0.0.0:8080 is the unspecified address only");
}

#[test]
fn teredo_isatap_and_network_specific_nat64_follow_the_ipv4_rules() {
    // Inside the test namespace, which has no route for these prefixes: an
    // allowed destination fails with ENETUNREACH, a denied one with EPERM,
    // and nothing can leave even if enforcement were broken.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let hex = |v4: std::net::Ipv4Addr, invert: bool| {
        let o = v4.octets().map(|b| if invert { !b } else { b });
        format!("{:02x}{:02x}:{:02x}{:02x}", o[0], o[1], o[2], o[3])
    };
    let teredo = |server, client| format!("2001:0:{}::{}", hex(server, false), hex(client, true));
    let isatap = |v4| format!("fd00:1::5efe:{}", hex(v4, false));
    let nsp = |v4: std::net::Ipv4Addr| {
        // RFC 6052 /48 layout under 2001:db8:122::/48: octets 1-2 in bits
        // 48-63, octets 3-4 in bits 72-87.
        let o = v4.octets();
        format!("2001:db8:122:{:02x}{:02x}:{:02x}:{:02x}00::", o[0], o[1], o[2], o[3])
    };
    let dir = sbx_tests::TempDir::new("nsp");
    let policy = dir.path().join("nat64.toml");
    std::fs::write(
        &policy,
        format!("[network]\nnat64 = [\"2001:db8:122::/48\"]\nallow = [\"{}:8080\", \"{}:3544\"]\n", n.ns_v4, n.ns_v4b),
    )
    .expect("writing the policy");
    fx.attach(&["--policy", policy.to_str().expect("UTF-8")]);
    let p = fx.inside_ns();
    for ip in [isatap(n.ns_v4), nsp(n.ns_v4)] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err ENETUNREACH", "{ip}: the IPv4 it embeds is allowed");
        assert_eq!(p.connect(Tcp, &ip, 8081), "err EPERM", "{ip}: port 8081 of it is not");
    }
    for ip in [isatap(n.ns_v4b), nsp(n.ns_v4b)] {
        assert_eq!(p.connect(Tcp, &ip, 8080), "err EPERM", "{ip}: the IPv4 it embeds is denied");
    }
    // Teredo: both the server and the client must pass.
    let both = teredo(n.ns_v4b, n.ns_v4b);
    assert_eq!(p.sendto(&both, 3544, "x"), "err ENETUNREACH", "{both}: server and client allowed");
    let client_denied = teredo(n.ns_v4b, std::net::Ipv4Addr::new(198, 18, 255, 1));
    assert_eq!(p.sendto(&client_denied, 3544, "x"), "err EPERM", "{client_denied}: the client is denied");
    let server_denied = teredo(std::net::Ipv4Addr::new(198, 18, 255, 1), n.ns_v4b);
    assert_eq!(p.sendto(&server_denied, 3544, "x"), "err EPERM", "{server_denied}: the server is denied");
    // Forms of local addresses are refused whatever the loopback setting.
    for ip in ["2001:0:c612:1::80ff:fffe", "fd00:1::5efe:7f00:1", "2001:db8:122:7f00:0:100::"] {
        assert_eq!(p.connect(Tcp, ip, 8080), "err EPERM", "{ip}");
    }
    // An explicit IPv6 rule at least as specific as the form decides.
    let host = isatap(n.ns_v4b);
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", &format!("[{host}]:8080")]);
    assert_eq!(p.connect(Tcp, &host, 8080), "err ENETUNREACH", "{host}: the explicit IPv6 rule allows it");
    assert_eq!(p.connect(Tcp, isatap(n.ns_v4), 8080), "err EPERM", "its neighbour follows the IPv4 rules");
}
