//! The hooks besides the six `sock_addr` ones, and audit mode. Probes run
//! as root with every capability, as under `attach`, so only sbx stands
//! between them and a raw socket.

use sbx_tests::{probe, Fixture, Proto::Tcp};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use serde_json as _;

#[test]
fn only_tcp_and_udp_inet_sockets_can_be_created() {
    let fx = Fixture::new(probe!());
    fx.attach(&["--default", "allow"]);
    let p = fx.inside_ns();
    let o = fx.outside().in_netns(fx.net.name());
    // (family, type, protocol number, whether every kernel has it).
    let refused = [
        ("inet", "raw", "1", true),       // raw ICMP
        ("inet", "raw", "255", true),     // IPPROTO_RAW
        ("inet6", "raw", "58", true),     // raw ICMPv6
        ("inet", "stream", "262", false), // MPTCP (CONFIG_MPTCP, net.mptcp.enabled)
        ("inet6", "stream", "262", false),
        ("inet", "dgram", "136", false), // UDP-Lite (on its way out of Linux)
    ];
    for (family, ty, proto, everywhere) in refused {
        // Without sbx, root gets the socket.
        let outside = o.run(&["socket", family, ty, proto]);
        if everywhere {
            assert_eq!(outside, "ok", "{family} {ty} {proto} outside the sandbox");
        } else if outside != "ok" {
            eprintln!("note: this kernel has no {family} {ty} {proto} socket ({outside}); nothing to refuse");
            continue;
        }
        assert_eq!(p.run(&["socket", family, ty, proto]), "err EPERM", "{family} {ty} {proto}");
    }
    for (family, ty, proto) in
        [("inet", "stream", "0"), ("inet", "stream", "6"), ("inet6", "dgram", "0"), ("inet6", "dgram", "17")]
    {
        assert_eq!(p.run(&["socket", family, ty, proto]), "ok", "{family} {ty} {proto}");
    }
}

#[test]
fn source_routing_options_are_refused() {
    let fx = Fixture::new(probe!());
    fx.attach(&["--default", "allow"]);
    let p = fx.inside_ns();
    let o = fx.outside().in_netns(fx.net.name());
    for which in ["ip-options", "ipv6-rthdr"] {
        assert_eq!(o.run(&["setsockopt", which]), "ok", "{which} outside the sandbox");
        assert_eq!(p.run(&["setsockopt", which]), "err EPERM", "{which}");
    }
}

#[test]
fn audit_mode_blocks_nothing() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--audit", "--default", "deny"]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "ok");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["mode"], "audit", "{e:#}");
    // Switching to enforce blocks again.
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--default", "deny"]);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
}
