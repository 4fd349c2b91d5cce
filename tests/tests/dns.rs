//! Loopback deputies and name resolution: rules that refine `loopback`
//! (a host service on a loopback port denied under `loopback = "any"`, one
//! opened under `"none"`), and `run`'s DNS stub (pinned names answer,
//! other names fail at once, no query reaches a host resolver).
//!
//! Traffic stays on loopback or in the test namespace. Names come from
//! `/etc/hosts` ([`HostsEntry`]) or are answered by sbx's own stub, which
//! never forwards: no DNS query leaves the machine.

use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener},
    process::{Command, Output},
};

use sbx_tests::{
    describe, probe, Fixture,
    Proto::{Tcp, Udp},
    Sbx, TestCgroup,
};
// A dependency of the fixture crate this test file does not use directly.
use libc as _;
use serde_json as _;

fn run_cmd(sbx: &Sbx, parent: &TestCgroup, policy: &[&str], command: &[&str]) -> Command {
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent", parent.arg()]).args(policy).arg("--").args(command);
    cmd
}

/// `sbx-user run --cgroup-parent CG POLICY... -- CMD...`, which must exit 0.
fn run(sbx: &Sbx, parent: &TestCgroup, policy: &[&str], command: &[&str]) -> Output {
    let mut cmd = run_cmd(sbx, parent, policy, command);
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", describe(&out));
    out
}

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
    let out = run(&fx.sbx, &fx.cg, policy, &["sh", "-c", &script.join("; ")]);
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
