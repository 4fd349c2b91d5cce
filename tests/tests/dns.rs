//! Loopback deputies and name resolution: rules that refine `loopback`
//! (a host service on a loopback port denied under `loopback = "any"`, one
//! opened under `"none"`), and `run`'s DNS stub (pinned names answer,
//! other names fail at once, no query reaches a host resolver).
//!
//! Traffic stays on loopback or in the test namespace. Names come from
//! `/etc/hosts` ([`HostsEntry`]) or are answered by sbx's own stub, which
//! never forwards: no DNS query leaves the machine.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener},
    process::Output,
};

use sbx_tests::{
    describe, probe, Fixture, HostsEntry,
    Proto::{Tcp, Udp},
};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;
// A dependency of the fixture crate this test file does not use directly.
use libc as _;
use serde_json as _;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A dual-stack TCP listener on `[::]:port` of the host: reachable at every
/// loopback address of both families. Connections wait in the backlog.
fn host_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).expect("binding [::]:0");
    let port = l.local_addr().expect("local address").port();
    (l, port)
}

/// Runs `probe connect tcp ADDR PORT` for each case in one `sh -c` and
/// returns the results, one per case.
fn connect_all(fx: &Fixture, policy: &[&str], cases: &[(&str, u16)]) -> (Vec<String>, Output) {
    let probe = fx.probe.arg();
    let script: Vec<String> = cases.iter().map(|(ip, port)| format!("{probe} connect tcp {ip} {port}")).collect();
    let out = fx.sbx.run_ok(&fx.cg, policy, &["sh", "-c", &script.join("; ")]);
    (stdout(&out).lines().map(str::to_owned).collect(), out)
}

#[test]
fn a_loopback_deny_rule_under_loopback_any_refuses_that_service_only() {
    let fx = Fixture::new(probe!());
    let (_a, denied) = host_listener();
    let (_b, other) = host_listener();
    let rule4 = format!("127.0.0.1:{denied}");
    let rule6 = format!("[::1]:{other}");
    let cases = [
        ("127.0.0.1", denied, "err EPERM"),
        // The same service by its other spellings on IPv4.
        ("0.0.0.0", denied, "err EPERM"),
        ("::ffff:127.0.0.1", denied, "err EPERM"),
        ("::ffff:0.0.0.0", denied, "err EPERM"),
        // Another loopback address, IPv6, another port: `loopback = "any"`.
        ("127.0.0.2", denied, "ok"),
        ("::1", denied, "ok"),
        ("127.0.0.1", other, "ok"),
        // The IPv6 rule, and `::`, which the kernel connects to ::1.
        ("::1", other, "err EPERM"),
        ("::", other, "err EPERM"),
    ];
    let probes: Vec<(&str, u16)> = cases.iter().map(|&(ip, port, _)| (ip, port)).collect();
    for user in ["65534", "0"] {
        let (got, out) = connect_all(
            &fx,
            &["--profile", "agent", "--user", user, "--log-denials", "--deny", &rule4, "--deny", &rule6],
            &probes,
        );
        let want: Vec<&str> = cases.iter().map(|c| c.2).collect();
        assert_eq!(got, want, "--user {user}: {cases:?}\n{}", describe(&out));
        // Each denial names the rule that decided.
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("sbx: ") && l.contains(" denied ")).collect();
        assert_eq!(lines.len(), 6, "{err}");
        assert_eq!(lines.iter().filter(|l| l.ends_with(&format!(" deny {rule4} (--deny)"))).count(), 4, "{err}");
        assert_eq!(lines.iter().filter(|l| l.ends_with(&format!(" deny {rule6} (--deny)"))).count(), 2, "{err}");
    }
}

#[test]
fn a_loopback_allow_rule_under_loopback_none_opens_that_service_only() {
    let fx = Fixture::new(probe!());
    let (_a, open) = host_listener();
    let (_b, closed) = host_listener();
    let cases = [
        ("127.0.0.1", open, "ok"),
        ("0.0.0.0", open, "ok"),
        ("::ffff:127.0.0.1", open, "ok"),
        ("127.0.0.2", open, "err EPERM"),
        ("::1", open, "err EPERM"),
        ("127.0.0.1", closed, "err EPERM"),
    ];
    let probes: Vec<(&str, u16)> = cases.iter().map(|&(ip, port, _)| (ip, port)).collect();
    let rule = format!("tcp://127.0.0.1:{open}");
    let (got, out) = connect_all(&fx, &["--loopback", "none", "--allow", &rule], &probes);
    assert_eq!(got, cases.iter().map(|c| c.2).collect::<Vec<_>>(), "{cases:?}\n{}", describe(&out));
}

#[test]
fn loopback_rules_judge_udp_and_tcp_in_a_namespace_and_denied_datagrams_never_arrive() {
    // Attached (no `run`): the rules are the kernel's, whoever starts the
    // process. The namespace's servers listen on [::] (dual-stack).
    let fx = Fixture::new(probe!());
    fx.net.serve_tcp(8080);
    let rx = fx.net.udp_receiver(9999);
    fx.attach(&["--loopback", "any", "--deny", "udp://127.0.0.53:9999", "--deny", "loopback:8080"]);
    let p = fx.inside_ns();
    for ip in ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"] {
        assert_eq!(p.connect(Tcp, ip, 8080), "err EPERM", "{ip}");
        assert_eq!(p.connect(Tcp, ip, 8081), "err ECONNREFUSED", "{ip}: other ports stay open");
    }
    assert_eq!(p.sendto("127.0.0.53", 9999, "to-the-stub"), "err EPERM");
    assert_eq!(p.connect(Udp, "127.0.0.53", 9999), "err EPERM");
    assert_eq!(p.sendto("::ffff:127.0.0.53", 9999, "mapped-stub"), "err EPERM");
    assert_eq!(p.sendto("127.0.0.1", 9999, "other-address"), "ok");
    assert_eq!(p.connect(Tcp, "127.0.0.53", 9999), "err ECONNREFUSED", "the rule is udp:// only");
    let got = rx.sync();
    assert!(got.iter().any(|g| g == "other-address"), "{got:?}");
    assert!(!got.iter().any(|g| g == "to-the-stub" || g == "mapped-stub"), "a denied datagram arrived: {got:?}");
    // `events` names the rule.
    let events = fx.sbx.events(&fx.cg);
    assert!(!events.is_empty());
    for e in &events {
        let rule = e["rule"].as_str().unwrap_or_default();
        assert!(rule == "deny loopback:8080 (--deny)" || rule == "deny udp://127.0.0.53:9999 (--deny)", "{e:#}");
    }
}

// ---------------------------------------------------------------------------
// Name resolution inside `run`.

/// Python: `query(server, name, tcp)` sends one `A` query to `server`:53
/// and returns `rcode=N a=ADDR,...` or the errno name of the failure.
/// `stub()` is the nameserver `/etc/resolv.conf` names.
const DNS_PY: &str = r#"
import errno, os, socket, struct, sys, time
def stub():
    for line in open("/etc/resolv.conf"):
        if line.startswith("nameserver"):
            return line.split()[1]
def query(server, name, tcp=False, qtype=1):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        if tcp:
            s.connect((server, 53))
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            r = b""
            while len(r) < n:
                r += s.recv(n - len(r))
        else:
            s.sendto(q, (server, 53))
            r = s.recv(4096)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    rcode = r[3] & 0xF
    an = struct.unpack(">H", r[6:8])[0]
    at = 12 + len(q) - 12
    out = []
    for _ in range(an):
        rtype, _, _, rdlen = struct.unpack(">HHIH", r[at + 2:at + 12])
        data = r[at + 12:at + 12 + rdlen]
        out.append(socket.inet_ntop(socket.AF_INET if rtype == 1 else socket.AF_INET6, data))
        at += 12 + rdlen
    return "rcode=%d a=%s" % (rcode, ",".join(out))
"#;

/// A UDP and TCP "resolver" on `addr`:53 of the host that records whatever
/// reaches it: no query from the sandbox may.
struct FakeResolver {
    udp: std::net::UdpSocket,
    _tcp: TcpListener,
}

impl FakeResolver {
    fn new(addr: std::net::Ipv4Addr) -> Self {
        let udp = std::net::UdpSocket::bind((addr, 53)).unwrap_or_else(|e| panic!("binding {addr}:53/udp: {e}"));
        udp.set_nonblocking(true).expect("nonblocking");
        let tcp = TcpListener::bind((addr, 53)).unwrap_or_else(|e| panic!("binding {addr}:53/tcp: {e}"));
        Self { udp, _tcp: tcp }
    }

    /// The datagrams that arrived.
    fn received(&self) -> usize {
        let mut buf = [0u8; 512];
        let mut n = 0;
        while self.udp.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

/// A loopback address of this test for a fake resolver (not 127.0.0.53,
/// which a host's systemd-resolved may hold): from the pid and a counter,
/// so that two tests of this process running at once never share one.
fn fake_resolver_addr() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let [.., b, c] = pid.to_be_bytes();
    let d = n.to_be_bytes()[3] & 0x3f;
    std::net::Ipv4Addr::new(127, 54 + (d % 8), b, c | 1)
}

#[test]
fn under_agent_pinned_names_resolve_to_their_pins_and_other_names_fail_at_once() {
    let fx = Fixture::new(probe!());
    let net = &fx.net;
    net.serve_tcp(8080);
    let pinned = HostsEntry::new(IpAddr::V4(net.ns_v4));
    let name = pinned.name().to_owned();
    let rule = format!("tcp://{name}:8080");
    // The sandbox's /etc/hosts has no line for the name: the answer comes
    // from sbx's stub, which has the pinned address.
    let body = format!(
        r#"{DNS_PY}
name = sys.argv[1]
print("hosts-line", sum(name in l for l in open("/etc/hosts")))
t = time.monotonic()
print("gai-pinned", sorted({{a[4][0] for a in socket.getaddrinfo(name, 8080, proto=socket.IPPROTO_TCP)}}))
try:
    socket.getaddrinfo("other.example", 443)
    print("gai-other resolved")
except socket.gaierror as e:
    print("gai-other", e.errno == socket.EAI_NONAME, round(time.monotonic() - t, 1) < 1.0)
c = socket.create_connection((name, 8080), timeout=3)
print("connect-pinned ok")
c.close()
print("udp-pinned", query(stub(), name.upper()))
print("tcp-pinned", query(stub(), name, tcp=True))
print("udp-other", query(stub(), "secret-data.other.example"))
print("tcp-other", query(stub(), "tcp-only.other.example", tcp=True))
print("aaaa-pinned", query(stub(), name, qtype=28))
"#
    );
    let out = fx.sbx.run_ok(
        &fx.cg,
        &["--profile", "agent", "--log-denials", "--allow", &rule],
        &["python3", "-c", &body, &name],
    );
    let text = stdout(&out);
    let a = net.ns_v4;
    for want in [
        "hosts-line 0".to_owned(),
        format!("gai-pinned ['{a}']"),
        "gai-other True True".to_owned(),
        "connect-pinned ok".to_owned(),
        format!("udp-pinned rcode=0 a={a}"),
        format!("tcp-pinned rcode=0 a={a}"),
        "udp-other rcode=3 a=".to_owned(),
        "tcp-other rcode=3 a=".to_owned(),
        "aaaa-pinned rcode=0 a=".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == want), "missing `{want}`:\n{text}\n{}", describe(&out));
    }
    // Each refused name is reported once, by the process that asked.
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("sbx: ") && l.contains(" dns ")).collect();
    for (refused, proto) in
        [("other.example", "udp"), ("secret-data.other.example", "udp"), ("tcp-only.other.example", "tcp")]
    {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(7) == Some(refused))
            .unwrap_or_else(|| panic!("no report of {refused}: {err}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[2], f[4], f[5], f[6]), ("denied", "python3", "dns", proto), "{line}");
        assert!(line.contains("dns = \"pinned\": not the name of a pinned allow rule"), "{line}");
    }
    assert!(!lines.iter().any(|l| l.contains(&name)), "a pinned name is not refused: {err}");
}

#[test]
fn getent_node_and_python_fail_fast_with_the_reason_on_log_denials() {
    let fx = Fixture::new(probe!());
    let pinned = HostsEntry::new(IpAddr::V4(fx.net.ns_v4));
    let name = pinned.name().to_owned();
    let node = "const t = Date.now();\
        require('dns').lookup('other.example', (e) => {\
          console.log('node-lookup', e && e.code, Date.now() - t < 1000);\
          fetch('http://other.example/').then(() => console.log('node-fetch ok'), (e) =>\
            console.log('node-fetch', e.cause && e.cause.code, Date.now() - t < 2000));\
        });";
    let script = format!(
        "getent hosts {name}; echo getent-pinned $?; \
         s=$(date +%s%N); getent hosts other.example; r=$?; e=$(date +%s%N); \
         echo getent-other $r $(( (e - s) / 1000000 < 1000 )); \
         node -e \"$NODE\"; \
         python3 -c 'import socket,time;t=time.monotonic();\n\
try: socket.getaddrinfo(\"other.example\", 80)\n\
except socket.gaierror as e: print(\"python\", e.errno == socket.EAI_NONAME, time.monotonic() - t < 1)'"
    );
    let mut cmd = fx.sbx.run_cmd(
        &fx.cg,
        &["--profile", "agent", "--log-denials", "--allow", &format!("{name}:443")],
        &["sh", "-c", &script],
    );
    cmd.env("NODE", node);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    for want in [
        format!("{}       {name}", fx.net.ns_v4),
        "getent-pinned 0".to_owned(),
        "getent-other 2 1".to_owned(),
        "node-lookup ENOTFOUND true".to_owned(),
        "node-fetch ENOTFOUND true".to_owned(),
        "python True True".to_owned(),
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == want.split_whitespace().collect::<Vec<_>>()),
            "missing `{want}`:\n{}",
            describe(&out)
        );
    }
    // `other.example` is reported once per two seconds, naming the first
    // process that asked.
    let err = stderr(&out);
    let reports: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sbx: ") && l.contains(" dns ") && l.contains(" other.example "))
        .collect();
    assert!(!reports.is_empty(), "{err}");
    let f: Vec<&str> = reports[0].split_whitespace().collect();
    assert_eq!((f[2], f[4], f[5]), ("denied", "getent", "dns"), "{}", reports[0]);
    assert!(reports[0].ends_with("dns = \"pinned\": not the name of a pinned allow rule, so it does not resolve (allow it by name, e.g. `--allow NAME:443`, or use --dns host)"), "{}", reports[0]);
}

#[test]
fn dns_queries_never_reach_a_resolver_the_policy_does_not_allow() {
    let fx = Fixture::new(probe!());
    let addr = fake_resolver_addr();
    let resolver = FakeResolver::new(addr);
    let body = format!(
        r#"{DNS_PY}
for server in [sys.argv[1], "127.0.0.1", "127.0.0.53", "0.0.0.0", "::1"]:
    print("udp", server, query(server, "secret-data.evil.example"))
    print("tcp", server, query(server, "secret-data.evil.example", tcp=True))
print("stub", query(stub(), "localhost"))
"#
    );
    for user in ["65534", "0"] {
        let out = fx.sbx.run_ok(
            &fx.cg,
            &["--profile", "agent", "--user", user],
            &["python3", "-c", &body, &addr.to_string()],
        );
        let text = stdout(&out);
        for server in [addr.to_string().as_str(), "127.0.0.1", "127.0.0.53", "0.0.0.0", "::1"] {
            for proto in ["udp", "tcp"] {
                let want = format!("{proto} {server} EPERM");
                assert!(text.lines().any(|l| l == want), "--user {user}: missing `{want}`:\n{}", describe(&out));
            }
        }
        assert!(text.lines().any(|l| l == "stub rcode=0 a=127.0.0.1"), "{}", describe(&out));
        assert_eq!(resolver.received(), 0, "a query reached the host's resolver");
    }
    // A loopback rule opens the resolver (the policy says so), and so does
    // dns = "host" under loopback = "any".
    let one = format!("{DNS_PY}\nprint(query(sys.argv[1], 'allowed.example'))\n");
    for policy in [
        vec!["--profile", "agent", "--allow", &format!("udp://{addr}:53")],
        vec!["--profile", "agent", "--dns", "host"],
    ] {
        let out = fx.sbx.run_ok(
            &fx.cg,
            &policy,
            &["sh", "-c", "timeout 1 python3 -c \"$0\" \"$1\"; true", &one, &addr.to_string()],
        );
        assert_eq!(resolver.received(), 1, "{policy:?}: {}", describe(&out));
    }
}

#[test]
fn attached_cgroups_refuse_loopback_port_53_under_dns_pinned() {
    let fx = Fixture::new(probe!());
    let rx = fx.net.udp_receiver(53);
    fx.attach(&["--profile", "agent"]);
    let p = fx.inside_ns();
    for ip in ["127.0.0.53", "127.0.0.1", "::1", "0.0.0.0"] {
        assert_eq!(p.sendto(ip, 53, "query"), "err EPERM", "{ip}");
        assert_eq!(p.connect(Tcp, ip, 53), "err EPERM", "{ip}");
    }
    assert!(rx.sync().is_empty(), "a datagram reached port 53");
    let events = fx.sbx.events(&fx.cg);
    assert!(!events.is_empty());
    for e in &events {
        let rule = e["rule"].as_str().unwrap_or_default();
        assert!(rule.starts_with("dns = \"pinned\": loopback port 53 is only sbx's DNS stub"), "{e:#}");
    }
}

#[test]
fn the_stub_answers_over_tcp_under_loopback_none_and_the_landlock_tcp_layer() {
    // Neither `loopback = "none"` nor Landlock's TCP port rules keep the
    // command from its stub, over UDP or TCP.
    let fx = Fixture::new(probe!());
    let body = format!(
        "{DNS_PY}\nprint('udp', query(stub(), 'localhost'))\nprint('tcp', query(stub(), 'localhost', tcp=True))\n\
         print('other', query('127.0.0.1', 'x.example', tcp=True))\n\
         try:\n    socket.create_connection(('127.0.0.1', 5432), timeout=1)\nexcept OSError as e:\n    print('landlock', errno.errorcode[e.errno])\n"
    );
    let out = fx.sbx.run_ok(&fx.cg, &["--loopback", "none", "--landlock-tcp"], &["python3", "-c", &body]);
    assert_eq!(
        stdout(&out),
        // Port 53 elsewhere on loopback: Landlock lets it through (port
        // rules), the cgroup hook refuses it; another port: Landlock.
        "udp rcode=0 a=127.0.0.1\ntcp rcode=0 a=127.0.0.1\nother EPERM\nlandlock EACCES\n",
        "{}",
        describe(&out)
    );
}

#[test]
fn audit_mode_starts_no_stub_and_keeps_the_hosts_resolver_files() {
    // Audit blocks nothing, so `run` does not replace name resolution; it
    // only reads the files here (no query is sent).
    let fx = Fixture::new(probe!());
    let host = std::fs::read_to_string("/etc/resolv.conf").expect("the host's resolv.conf");
    let out = fx.sbx.run_ok(&fx.cg, &["--profile", "agent", "--audit"], &["cat", "/etc/resolv.conf"]);
    assert_eq!(stdout(&out), host, "{}", describe(&out));
    let out = fx.sbx.run_ok(&fx.cg, &["--profile", "agent"], &["cat", "/etc/resolv.conf"]);
    assert!(stdout(&out).contains("\nnameserver 127.53."), "{}", describe(&out));
}

#[test]
fn an_update_of_a_run_sandbox_keeps_its_stub_reachable_and_answering_the_new_names() {
    let fx = Fixture::new(probe!());
    let added = HostsEntry::new(IpAddr::V4(fx.net.ns_v4b));
    let body = format!(
        "{DNS_PY}\nprint('ready', flush=True)\nsys.stdin.readline()\nprint(query(stub(), 'localhost'), flush=True)\n\
         for _ in range(50):\n    r = query(stub(), sys.argv[1])\n    if r.startswith('rcode=0'):\n        break\n    time.sleep(0.1)\n\
         print(r)\n"
    );
    let mut cmd = fx.sbx.run_cmd(&fx.cg, &["--profile", "agent"], &["python3", "-c", &body, added.name()]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("starting sbx-user run");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut lines, &mut ready).expect("reading stdout");
    assert_eq!(ready, "ready\n", "the command did not start");
    let run_cg = fx.cg.children().into_iter().next().expect("the run's cgroup");
    let allow = format!("{}:443", added.name());
    fx.sbx.ok(&["update", "--cgroup", run_cg.to_str().expect("utf-8"), "--profile", "agent", "--allow", &allow]);
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"go\n").expect("writing stdin");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut lines, &mut text).expect("reading stdout");
    let out = child.wait_with_output().expect("waiting");
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", describe(&out));
    assert_eq!(text, format!("rcode=0 a=127.0.0.1\nrcode=0 a={}\n", fx.net.ns_v4b), "{}", describe(&out));
}

#[test]
fn verify_probes_a_loopback_port_the_loopback_rules_allow() {
    // The setting allows two ports, a rule denies the first: `verify`
    // must connect to the second, not report the first as a failure.
    let fx = Fixture::new(probe!());
    fx.attach(&["--loopback", "47100-47101", "--deny", "tcp://127.0.0.1:47100"]);
    let out = fx.sbx.ok(&["verify", "--cgroup", fx.cg.arg()]);
    let text = stdout(&out);
    assert!(text.contains("127.0.0.1:47101"), "{}", describe(&out));
}

#[test]
fn dig_at_a_host_resolver_is_refused_and_dig_at_the_stub_answers_pinned_names_only() {
    // The issue's reproduction: `dig @127.0.0.53 secret.example` from the
    // `agent` profile reached a host stub resolver. Now it is refused at
    // once, nothing arrives at a resolver listening there, and `dig` with
    // the sandbox's resolv.conf gets the pinned name and NXDOMAIN for others.
    let fx = Fixture::new(probe!());
    let addr = fake_resolver_addr();
    let resolver = FakeResolver::new(addr);
    let pinned = HostsEntry::new(IpAddr::V4(fx.net.ns_v4));
    let script = format!(
        "dig +tries=1 +time=2 @{addr} secret.example; echo dig-host $?; \
         dig +tries=1 +time=2 +tcp @{addr} secret.example >/dev/null; echo dig-host-tcp $?; \
         echo dig-pinned $(dig +short {name}); \
         dig other.example | grep -o 'status: [A-Z]*'; \
         dig +tcp {name} | grep -o 'status: [A-Z]*'",
        name = pinned.name()
    );
    let started = std::time::Instant::now();
    let out = fx.sbx.run_ok(
        &fx.cg,
        &["--profile", "agent", "--log-denials", "--allow", &format!("{}:443", pinned.name())],
        &["sh", "-c", &script],
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("UDP setup with {addr}#53({addr}) for secret.example failed: permission denied")),
        "{}",
        describe(&out)
    );
    for want in [
        "dig-host 9".to_owned(),
        "dig-host-tcp 9".to_owned(),
        format!("dig-pinned {}", fx.net.ns_v4),
        "status: NXDOMAIN".to_owned(),
        "status: NOERROR".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == want), "missing `{want}`:\n{}", describe(&out));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "took {:?}: a timeout somewhere", started.elapsed());
    assert_eq!(resolver.received(), 0, "a query reached the resolver on {addr}");
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.contains(" connect4 ")
            && l.contains(&format!("{addr}:53"))
            && l.contains("dns = \"pinned\": loopback port 53 is only sbx's DNS stub")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains(" dig ") && l.contains(" dns ") && l.contains(" other.example A ")),
        "{err}"
    );
}
