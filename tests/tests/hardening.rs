//! The hooks besides the six `sock_addr` ones, and audit mode. Probes run
//! as root with every capability, as under `attach`, so only sbx stands
//! between them and a raw socket.

use sbx_tests::{probe, Fixture, Proto::Tcp};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;
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

/// Runs a Python snippet inside the sandbox cgroup (host namespace) and
/// returns its stdout lines.
fn py_inside(fx: &Fixture, code: &str, args: &[String]) -> Vec<String> {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(code).args(args);
    let out = fx.inside().place().output(&mut cmd);
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn connected_udp_with_control_messages_is_judged_by_its_peer() {
    // QUIC stacks and Go's WriteMsgUDP send on connected UDP sockets with
    // IP_TOS/IPV6_TCLASS (ECN), pktinfo, TTL/hop limit: the kernel runs
    // the sendmsg hook with an all-zero address, which used to be judged
    // as 0.0.0.0:0 and refused.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let receiver = n.udp_receiver(4433);
    fx.attach(&[
        "--loopback",
        "none",
        "--allow",
        &format!("udp://{}:4433", n.ns_v4),
        "--allow",
        &format!("udp://[{}]:4433", n.ns_v6),
    ]);
    let code = r"
import errno, socket, sys
v4, v6 = sys.argv[1:3]
def send(family, addr, cmsgs, payload):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect(addr)
    try:
        s.sendmsg([payload], cmsgs); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
tos = (socket.IPPROTO_IP, socket.IP_TOS, (2).to_bytes(4, 'little'))
ttl = (socket.IPPROTO_IP, socket.IP_TTL, (9).to_bytes(4, 'little'))
tclass = (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, (2).to_bytes(4, 'little'))
hops = (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, (9).to_bytes(4, 'little'))
print(send(socket.AF_INET, (v4, 4433), [tos], b'ecn4'))
print(send(socket.AF_INET, (v4, 4433), [tos, ttl], b'ttl4'))
print(send(socket.AF_INET6, (v6, 4433), [tclass], b'ecn6'))
print(send(socket.AF_INET6, (v6, 4433), [tclass, hops], b'hop6'))
print(send(socket.AF_INET6, ('::ffff:' + v4, 4433), [tos], b'mapped'))
";
    let got = py_inside(&fx, code, &[n.ns_v4.to_string(), n.ns_v6.to_string()]);
    assert_eq!(got, ["ok"; 5], "connected sends with control messages to an allowed peer");
    for payload in ["ecn4", "ttl4", "ecn6", "hop6", "mapped"] {
        assert!(receiver.wait_for(payload), "{payload} arrived: {:?}", receiver.payloads());
    }
    // The peer is what is judged: after an update that denies it, the same
    // socket may no longer send to it.
    let code = r"
import errno, socket, sys, time
v4, go = sys.argv[1:3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((v4, 4433))
tos = (socket.IPPROTO_IP, socket.IP_TOS, (2).to_bytes(4, 'little'))
s.sendmsg([b'before'], [tos]); print('sent')
sys.stdout.flush()
while not __import__('os').path.exists(go): time.sleep(0.02)
try:
    s.sendmsg([b'after'], [tos]); print('ok')
except OSError as e:
    print(errno.errorcode[e.errno])
";
    let go = n.dir().join("go");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(code).arg(n.ns_v4.to_string()).arg(&go).stdout(std::process::Stdio::piped());
    let child = fx.inside().place().spawn(&mut cmd);
    assert!(receiver.wait_for("before"));
    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--loopback", "none"]);
    std::fs::write(&go, "").expect("go");
    let out = child.wait_with_output().expect("waiting");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sent\nEPERM\n");
    assert!(!receiver.sync().iter().any(|p| p == "after"), "the denied datagram never arrived");
}

#[test]
fn setsockopt_allows_clearing_ip_options_and_large_values_and_refuses_2292_pktoptions() {
    let fx = Fixture::new(probe!());
    fx.attach(&["--default", "allow"]);
    let code = r"
import errno, socket
def attempt(family, level, name, value):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(level, name, value); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
print(attempt(socket.AF_INET, socket.IPPROTO_IP, socket.IP_OPTIONS, b''))
print(attempt(socket.AF_INET, socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 1])))
print(attempt(socket.AF_INET, socket.SOL_SOCKET, socket.SO_LINGER, bytes(8192)))
print(attempt(socket.AF_INET6, socket.IPPROTO_IPV6, 6, bytes(8)))
";
    let got = py_inside(&fx, code, &[]);
    assert_eq!(got, ["ok", "EPERM", "ok", "EPERM"], "clear, set options, >page value, IPV6_2292PKTOPTIONS");
}
