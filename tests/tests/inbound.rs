//! Connections the sandbox accepts: a peer may complete a connection to a
//! socket in the sandbox only if `bind` allows the sandbox's local address
//! and port and the policy lets the sandbox reach the peer on some port
//! (loopback peers: `loopback` against the local port). Judged on the
//! SYN-ACK the sandbox sends, by the egress hook.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use sbx_tests::{describe, probe, Fixture, Place};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;
use serde_json as _;

/// A TCP listener inside `place`: binds `addr` (or, for `None`, listens
/// without binding: the kernel autobinds it on every address), accepts for
/// a few seconds, and prints the port, then one line per accepted peer.
fn listener(place: &Place, addr: Option<&str>) -> (Child, u16) {
    let code = r"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sys.argv[1] != '-':
    host, port = sys.argv[1].rsplit(':', 1)
    s.bind((host, int(port)))
s.listen(16)
print(s.getsockname()[1], flush=True)
s.settimeout(0.2)
end = time.time() + 8
while time.time() < end:
    try:
        c, peer = s.accept()
        print('accepted', peer[0], flush=True)
        c.close()
    except socket.timeout:
        pass
";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", code, addr.unwrap_or("-")]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = place.spawn(&mut cmd);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("reading the port");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("listener port: {line:?}"));
    (child, port)
}

fn accepted(child: Child) -> String {
    let mut child = child;
    // A client's connect returns once the kernel completed the handshake,
    // before the listener's accept loop (0.2 s timeouts) has taken and
    // printed the connection: give it time to, then stop it.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let _ = child.kill();
    let out = child.wait_with_output().expect("reaping the listener");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_host_the_policy_denies_cannot_connect_into_a_listener() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    // The sandbox may reach the first test address (on one port) and bind
    // anywhere; the second address is denied.
    fx.attach(&["--bind", "any", "--allow", &format!("{}:8080", n.ns_v4)]);
    let (server, port) = listener(fx.inside().place(), Some("0.0.0.0:0"));
    // Clients in the test namespace, from each of its addresses.
    let ns = fx.outside().in_netns(n.name());
    let bind_b = ns.run(&["connect-from", &n.ns_v4b.to_string(), &n.host_v4.to_string(), &port.to_string()]);
    let bind_a = ns.run(&["connect-from", &n.ns_v4.to_string(), &n.host_v4.to_string(), &port.to_string()]);
    let got = accepted(server);
    assert_eq!(bind_a, "ok", "an allowed peer connects in: {got}");
    assert_ne!(bind_b, "ok", "a denied peer must not complete the handshake");
    assert!(got.contains(&format!("accepted {}", n.ns_v4)), "{got}");
    assert!(!got.contains(&format!("accepted {}", n.ns_v4b)), "{got}");
    let events = fx.sbx.events(&fx.cg);
    assert!(
        events
            .iter()
            .any(|e| e["hook"] == "accept" && e["destination"] == format!("from {} to local port {port}", n.ns_v4b)),
        "the refusal is reported: {events:?}"
    );
}

#[test]
fn a_listener_made_without_bind_is_held_by_the_bind_policy() {
    // listen() without bind() autobinds on every address; bind = "loopback"
    // (the default) must still mean loopback only.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    fx.attach(&["--default", "allow"]);
    let (server, port) = listener(fx.inside().place(), None);
    let ns = fx.outside().in_netns(n.name());
    let from_ns = ns.run(&["connect", "tcp", &n.host_v4.to_string(), &port.to_string()]);
    // A loopback client on the host: loopback = any allows the local port.
    let from_lo = fx.outside().run(&["connect", "tcp", "127.0.0.1", &port.to_string()]);
    let got = accepted(server);
    assert_ne!(from_ns, "ok", "autobound listener reached from the network: {got}");
    assert_eq!(from_lo, "ok", "loopback clients of a sandbox server keep working: {got}");
}

#[test]
fn loopback_clients_are_governed_by_loopback_on_the_local_port_also_under_run() {
    let fx = Fixture::new(probe!());
    for (loopback, want) in [("8000-8999", true), ("none", false)] {
        let mut cmd = fx.sbx.cmd();
        let code = "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 8765))\ns.listen(4)\nprint('ready', flush=True)\ns.settimeout(4)\ntry:\n    c, p = s.accept(); print('accepted', flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\n";
        cmd.args(["run", "--cgroup-parent", fx.cg.arg(), "--loopback", loopback, "--", "python3", "-c", code])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("sbx-user run");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        out.read_line(&mut line).expect("ready");
        assert_eq!(line, "ready\n", "loopback = {loopback}");
        let client = fx.outside().run(&["connect", "tcp", "127.0.0.1", "8765"]);
        line.clear();
        out.read_line(&mut line).expect("result");
        let status = child.wait_with_output().expect("waiting");
        assert_eq!(client == "ok", want, "loopback = {loopback}: client {client}: {}", describe(&status));
        assert_eq!(line == "accepted\n", want, "loopback = {loopback}: {line}");
    }
}
