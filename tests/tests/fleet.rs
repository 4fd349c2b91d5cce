//! One program set for every sandbox: each program finds the policy of the
//! sandbox it is attached for through cgroup storage bound to the attach
//! point, not through the calling task.

use std::process::Command;

use sbx_tests::{describe, probe, Background, Fixture, Place, Proto::Tcp, Sbx, TempDir, TestCgroup};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;
use serde_json as _;

/// The sbx program ids the kernel reports on `cg` for connect4.
fn connect4_progs(cg: &std::path::Path) -> String {
    let out = Command::new("bpftool").args(["cgroup", "show"]).arg(cg).output().expect("running bpftool cgroup show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("connect4"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn sandboxes_share_one_loaded_program_set() {
    let fx = Fixture::new(probe!());
    let other = TestCgroup::new();
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    // The second attach loads nothing: the host has the set already.
    let out = fx.sbx.ok(&["-v", "attach", "--cgroup", other.arg(), "--allow", &format!("{}:8080", n.ns_v4b)]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("loaded the sbx program set"), "{}", describe(&out));
    let (a, b) = (connect4_progs(fx.cg.path()), connect4_progs(other.path()));
    assert!(!a.is_empty(), "connect4 attached");
    assert_eq!(a, b, "both sandboxes run the same connect4 program");
    // Each enforces its own policy, not its neighbour's.
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    let p = fx.probe.in_cgroup(other.path());
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    fx.sbx.detach(&other);
}

#[test]
fn a_process_in_a_descendant_cgroup_is_held_by_the_sandbox() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let deep = fx.cg.child("a");
    let deep = {
        std::fs::create_dir(deep.join("b")).expect("creating a/b");
        deep.join("b")
    };
    let p = fx.probe.in_cgroup(&deep);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "err EPERM");
}

#[test]
fn nested_sandboxes_are_held_by_both_policies() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    n.serve_tcp(8081);
    // Outer: 8080 on both test addresses. Inner: only the first address,
    // 8080 and 8081. Only what both allow passes.
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4), "--allow", &format!("{}:8080", n.ns_v4b)]);
    let inner = fx.cg.child("inner");
    let inner_arg = inner.to_str().expect("UTF-8");
    fx.sbx.ok(&[
        "attach",
        "--cgroup",
        inner_arg,
        "--allow",
        &format!("{}:8080", n.ns_v4),
        "--allow",
        &format!("{}:8081", n.ns_v4),
    ]);
    let p = fx.probe.in_cgroup(&inner);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok", "both allow");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM", "the outer sandbox denies");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "the inner sandbox denies");
    // The outer sandbox alone, for a process beside the inner one.
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4b, 8080), "ok");
    fx.sbx.ok(&["detach", "--cgroup", inner_arg]);
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok", "the outer policy alone after the inner detach");
}

#[test]
fn a_socket_made_inside_stays_held_after_its_task_leaves() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let free = TestCgroup::new();
    // Creates a socket in the sandbox, moves itself out, then connects.
    let py = r"
import errno, os, socket, sys
host, other, free = sys.argv[1:4]
inside = [socket.socket() for _ in range(2)]
open(os.path.join(free, 'cgroup.procs'), 'w').write(str(os.getpid()))
def attempt(s, addr):
    try:
        s.settimeout(3); s.connect(addr); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print(attempt(inside[0], (other, 8080)))
print(attempt(inside[1], (host, 8080)))
print(attempt(socket.socket(), (other, 8080)))
";
    let place = Place { cgroup: Some(fx.cg.path().to_owned()), netns: None };
    let mut cmd = Command::new("python3");
    cmd.args(["-c", py, &n.ns_v4.to_string(), &n.ns_v4b.to_string(), free.arg()]);
    let out = place.output(&mut cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "EPERM\nok\nok\n",
        "sockets made inside keep the sandbox's policy; a socket made outside does not: {}",
        describe(&out)
    );
}

#[test]
fn a_sandbox_whose_slot_is_not_written_denies_everything() {
    // The state between linking the programs and writing the policy:
    // the slot is zero. Reproduced by zeroing the slot of an attached
    // sandbox with bpftool.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--default", "allow"]);
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    // The sandbox's pins name the program set holding it.
    let pins = sbx_tests::bpffs().join("sbx").join(fx.cg.id().to_string());
    let marker = std::fs::read_dir(&pins)
        .expect("listing the sandbox's pins")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("set-"))
        .expect("a program set marker in the pins");
    let set = sbx_tests::bpffs().join("sbx").join(marker.file_name());
    let key: Vec<String> = fx.cg.id().to_le_bytes().iter().map(u8::to_string).collect();
    let show = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(set.join("map_SBX_SLOT"))
        .output()
        .expect("running bpftool");
    let info: serde_json::Value = serde_json::from_slice(&show.stdout).expect("bpftool -j");
    let size = usize::try_from(info["bytes_value"].as_u64().expect("bytes_value")).expect("small");
    let value = vec!["0".to_owned(); size];
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(set.join("map_SBX_SLOT"))
        .arg("key")
        .args(&key)
        .arg("value")
        .args(&value)
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map update: {}", describe(&out));
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, "127.0.0.1", 9), "err EPERM", "loopback too");
    assert_eq!(p.run(&["socket", "inet", "stream", "6"]), "err EPERM", "not even a socket");
    // Writing the policy again (update) restores it.
    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--default", "allow"]);
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    assert!(Sbx::has_pins(fx.cg.id()));
}

/// An nftables table of this test, deleted on drop.
struct NatTable(String);

impl NatTable {
    /// DNAT in the host's OUTPUT hook: TCP and UDP to `from`:`port` go to
    /// `to`:`port`. It runs before the egress hook, which then sees `to`.
    fn new(from: std::net::Ipv4Addr, to: std::net::Ipv4Addr, port: u16) -> Self {
        let name = format!("sbx_test_{}_{}", std::process::id(), port);
        let script = format!(
            "table ip {name} {{\n chain out {{\n  type nat hook output priority -100;\n  \
             ip daddr {from} tcp dport {port} dnat to {to}\n  ip daddr {from} udp dport {port} dnat to {to}\n }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("running nft (nftables)");
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), script.as_bytes()).expect("writing");
        drop(child.stdin.take());
        assert!(child.wait().expect("nft").success(), "nft -f failed for {script}");
        Self(name)
    }
}

impl Drop for NatTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "ip", &self.0]).status();
    }
}

#[test]
fn the_egress_backstop_agrees_with_the_connect_hook_under_dnat() {
    // A connection to an allowed address that the host translates (a
    // ClusterIP, a published port) must not be dropped because the backstop
    // sees the translated address; and a denied address stays denied
    // whatever it is translated to.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let receiver = n.udp_receiver(9999);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4), "--allow", &format!("udp://{}:9999", n.ns_v4)]);
    let _nat = (NatTable::new(n.ns_v4, n.ns_v4b, 8080), NatTable::new(n.ns_v4, n.ns_v4b, 9999));
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok", "allowed, translated to a host the policy does not name");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "the translated-to host itself stays denied");
    // Connected UDP: connect() judged the allowed address; the datagrams
    // leave translated.
    assert_eq!(
        p.run(&["connected-sendto", &n.ns_v4.to_string(), "9999", &n.ns_v4.to_string(), "9999", "natted"]),
        "ok"
    );
    assert!(receiver.wait_for("natted"), "the translated datagram arrived: {:?}", receiver.payloads());
}

#[test]
fn gc_removes_what_a_removed_cgroup_left_and_nothing_alive() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    // A runtime creates sandbox cgroups, sbx attaches, the runtime removes
    // the cgroups without telling sbx. Several, so that the kernel frees
    // their cells while gc walks the slots (a walk cut short at a freed
    // cell once freed the live sandbox's policy).
    let mut gone = Vec::new();
    for i in 0..8 {
        let dir = fx.cg.child(&format!("gone{i}"));
        fx.sbx.ok(&["attach", "--cgroup", dir.to_str().expect("UTF-8"), "--default", "allow"]);
        gone.push((std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).expect("stat")), dir));
    }
    for (_, dir) in &gone {
        std::fs::remove_dir(dir).expect("removing a cgroup under sbx's feet");
    }
    let gone_id = gone[7].0;
    assert!(Sbx::has_pins(gone_id), "the pins are still there");
    // The kernel's cgroup release is asynchronous: wait until gc sees it.
    // Pins and pool indices are collected as the kernel releases them,
    // possibly in different passes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut collected, mut freed) = (false, 0);
    while !(collected && freed >= 1) {
        let out = fx.sbx.ok(&["gc", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc --json");
        let ids: Vec<u64> =
            v["sandboxes"].as_array().expect("array").iter().filter_map(serde_json::Value::as_u64).collect();
        collected |= ids.contains(&gone_id);
        freed += v["policies"].as_u64().unwrap_or(0);
        // Whatever gc has freed so far, the live sandbox holds its policy.
        assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok", "the live sandbox during gc: {v}");
        assert!(std::time::Instant::now() < deadline, "gc never collected the removed cgroup: {v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!Sbx::has_pins(gone_id), "gc removed the pins");
    // The live sandbox is untouched and still enforcing.
    assert!(Sbx::has_pins(fx.cg.id()));
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4b, 8080), "err EPERM");
}

#[test]
fn two_readers_of_one_sandbox_share_its_events_and_an_update_keeps_the_stream() {
    // A sandbox's stream has one consumer position: two followers get
    // every event between them, each once. The stream survives an update
    // (the followers were started before it).
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    fx.attach(&["--default", "deny"]);
    let spawn = || {
        let mut cmd = fx.sbx.cmd();
        cmd.args(["events", "--follow", "--json", "--cgroup", fx.cg.arg()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning events --follow")
    };
    let (first, second) = (spawn(), spawn());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p = fx.inside();
    for port in 9001..9021 {
        assert_eq!(p.connect(Tcp, n.ns_v4, port), "err EPERM");
    }
    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--default", "deny", "--allow", &format!("{}:9999", n.ns_v4)]);
    for port in 9021..9041 {
        assert_eq!(p.connect(Tcp, n.ns_v4, port), "err EPERM");
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let mut ports = Vec::new();
    for mut child in [first, second] {
        let _ = child.kill();
        let out = child.wait_with_output().expect("reaping events");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON event");
            let dest = v["destination"].as_str().unwrap_or_default().to_owned();
            if let Some(port) = dest.strip_prefix(&format!("{}:", n.ns_v4)) {
                ports.push(port.parse::<u16>().expect("a port"));
            }
        }
    }
    ports.sort_unstable();
    assert_eq!(ports, (9001..9041).collect::<Vec<u16>>(), "every event once, before and after the update");
}

#[test]
fn a_connected_udp_socket_follows_every_update_of_its_sandbox() {
    // Datagrams of a connected UDP socket pass no sendmsg hook: the egress
    // backstop judges them, agreeing with a remembered verdict only while
    // the policy that made it is in force. Flipping between a policy that
    // allows the peer and one that does not, with policy indices freed and
    // taken again, each datagram must follow the policy of its moment.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let receiver = n.udp_receiver(9999);
    let allow = format!("udp://{}:9999", n.ns_v4);
    let other = format!("udp://{}:9998", n.ns_v4);
    fx.attach(&["--allow", &allow]);
    let steps = TempDir::new("udp-steps");
    let script = r#"
import os, socket, sys, time
d, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, 9999))
print("connected", flush=True)
for step in range(n):
    while not os.path.exists(os.path.join(d, f"go{step}")):
        time.sleep(0.002)
    try:
        s.send(f"step{step}".encode())
        print("sent", flush=True)
    except OSError as e:
        print(f"err {e.errno}", flush=True)
"#;
    let policies = [&allow, &other, &allow, &other, &allow, &other, &other, &allow];
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(steps.path()).arg(n.ns_v4.to_string()).arg(policies.len().to_string());
    let mut sender = Background::spawn_at("connected UDP sender", &mut cmd, fx.inside().place());
    assert_eq!(sender.read_line(), "connected");
    let mut sent = Vec::new();
    for (step, policy) in policies.iter().enumerate() {
        if step > 0 {
            fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", policy]);
        }
        std::fs::write(steps.path().join(format!("go{step}")), "").expect("writing a step file");
        sent.push(sender.read_line());
        if *policy == &allow {
            assert!(receiver.wait_for(&format!("step{step}")), "step {step} allowed: {:?}", receiver.payloads());
        }
    }
    // The last datagram was allowed and arrived; the denied ones, sent
    // before it, would have arrived first.
    let got = receiver.payloads();
    for (step, policy) in policies.iter().enumerate() {
        let arrived = got.contains(&format!("step{step}"));
        assert_eq!(
            arrived,
            *policy == &allow,
            "step {step} under {policy}: arrived {arrived}; sends {sent:?}, got {got:?}"
        );
    }
}

#[test]
fn a_verdict_kept_for_a_destination_serves_only_its_protocol_and_policy() {
    // The connect and sendmsg hooks take a verdict this layer's policy
    // lately gave the same destination, whatever the socket. It must
    // never answer for another protocol, nor outlive the policy that made
    // it. One process on one CPU (the verdicts are kept per CPU): TCP
    // connects to a port the policy allows for TCP only, then UDP to it;
    // after an update that no longer allows it, TCP again.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    n.serve_tcp(8081);
    fx.attach(&["--allow", &format!("tcp://{}:8080", n.ns_v4)]);
    let steps = TempDir::new("kept-verdict-steps");
    let script = r#"
import errno, os, socket, sys, time
d, host = sys.argv[1], sys.argv[2]
def tcp(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port)); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, port)); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
print(" ".join(tcp(8080) for _ in range(6)), "|", udp(8080), "|", tcp(8080), flush=True)
while not os.path.exists(os.path.join(d, "updated")):
    time.sleep(0.002)
print(tcp(8080), tcp(8081), tcp(8080), flush=True)
"#;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "python3", "-c", script]).arg(steps.path()).arg(n.ns_v4.to_string());
    let mut client = Background::spawn_at("one client on one CPU", &mut cmd, fx.inside().place());
    // TCP to the allowed port; UDP to it (allowed for TCP only) right
    // after; TCP again after the denied UDP.
    assert_eq!(client.read_line(), "ok ok ok ok ok ok | EPERM | ok");
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", &format!("tcp://{}:8081", n.ns_v4)]);
    std::fs::write(steps.path().join("updated"), "").expect("writing the step file");
    assert_eq!(client.read_line(), "EPERM ok EPERM", "after the update, the old policy's verdicts are gone");
}

/// Every key of the host trie of program set `set` (`bpftool map dump` of
/// the pinned map): its policy index and the address bytes.
fn rule_keys(set: &str) -> Vec<(u32, [u8; 16])> {
    let map = sbx_tests::bpffs().join("sbx").join(format!("set-{set}")).join("map_SBX_RULES");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {}: {}", map.display(), describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool -j");
    let byte =
        |b: &serde_json::Value| u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex");
    v.as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let key: Vec<u8> = e["key"].as_array().expect("key bytes").iter().map(byte).collect();
            // Prefix length (4 bytes), then policy << 8 | kind, big-endian,
            // then the address.
            (u32::from_be_bytes([0, key[4], key[5], key[6]]), key[8..24].try_into().expect("16 bytes"))
        })
        .collect()
}

/// The policy indices with entries in the host trie, with their counts.
fn rule_policies(set: &str) -> std::collections::BTreeMap<u32, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for (policy, _) in rule_keys(set) {
        *seen.entry(policy).or_insert(0) += 1;
    }
    seen
}

/// The policy indices with an entry for exactly `ip` (a /32 of this
/// test's own network, which no other test's policy names).
fn policies_naming(set: &str, ip: std::net::Ipv4Addr) -> std::collections::BTreeSet<u32> {
    let mapped = ip.to_ipv6_mapped().octets();
    rule_keys(set).into_iter().filter(|(_, a)| *a == mapped).map(|(p, _)| p).collect()
}

fn slot_policy(v: &serde_json::Value) -> u32 {
    let p = v["held_by"]["set"]["policy"].as_u64().unwrap_or_else(|| panic!("a written slot: {v:#}"));
    u32::try_from(p).expect("u32")
}

#[test]
fn each_policy_has_its_own_entries_in_the_host_trie_and_takes_them_away() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    n.serve_tcp(8081);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let set = fx.sbx.status(&fx.cg)["held_by"]["set"]["id"].as_str().expect("set id").to_owned();
    let mine = slot_policy(&fx.sbx.status(&fx.cg));
    let neighbours: Vec<TestCgroup> = (0..6).map(|_| TestCgroup::new()).collect();
    for (i, cg) in neighbours.iter().enumerate() {
        // Distinct port lists, so each policy has port ranges of its own.
        let ports = format!("{}:8081,{}", n.ns_v4b, 9000 + i * 3);
        fx.sbx.ok(&["attach", "--cgroup", cg.arg(), "--allow", &ports]);
    }
    let policies: Vec<u32> = neighbours.iter().map(|cg| slot_policy(&fx.sbx.status(cg))).collect();
    let before = rule_policies(&set);
    for p in policies.iter().chain([&mine]) {
        assert!(before.get(p).is_some_and(|&c| c > 1), "policy {p} has its marker and entries: {before:?}");
    }
    // Detach half, update the others. A freed policy is quarantined: its
    // entries stay, untouched, until a grace period has passed (a program
    // that read the old slot may still be deciding by them). The
    // quarantine ends once it holds 64 policies (or on `gc`, which this
    // test leaves to the gc test, since it is host-wide), and then a
    // detached or replaced policy has taken all its entries with it, and
    // no other policy has lost one.
    for cg in &neighbours[..3] {
        fx.sbx.detach(cg);
    }
    for cg in &neighbours[3..] {
        fx.sbx.ok(&["update", "--cgroup", cg.arg(), "--allow", &format!("{}:8081", n.ns_v4)]);
    }
    let quarantined = rule_policies(&set);
    let naming_b = policies_naming(&set, n.ns_v4b);
    for cg in &neighbours[3..] {
        let inside = fx.probe.in_cgroup(cg.path());
        assert_eq!(inside.connect(Tcp, n.ns_v4, 8081), "ok", "the new policy holds at once");
        assert_eq!(inside.connect(Tcp, n.ns_v4b, 8081), "err EPERM", "the old one is out of force at once");
    }
    let churn = TestCgroup::new();
    // sbx_common::QUARANTINE_POLICIES.
    for _ in 0..64 {
        fx.sbx.ok(&["attach", "--cgroup", churn.arg(), "--default", "allow", "--event-buffer", "0"]);
        fx.sbx.detach(&churn);
    }
    let after = rule_policies(&set);
    for p in &policies {
        // Still ours while it names this test's host (another test's
        // releases may have ended the quarantine first, and the index may
        // serve another sandbox by now).
        if naming_b.contains(p) {
            assert_eq!(quarantined.get(p), before.get(p), "policy {p} kept its entries while quarantined");
        }
    }
    // Only the six freed policies named the neighbours' host; once the
    // quarantine is over (their indices may serve other sandboxes by now),
    // no entry names it.
    let left = policies_naming(&set, n.ns_v4b);
    assert!(left.is_empty(), "the freed policies' entries are gone after the quarantine: {left:?}");
    assert_eq!(after.get(&mine), before.get(&mine), "the fixture's policy kept every entry");
    for cg in &neighbours[3..] {
        let p = slot_policy(&fx.sbx.status(cg));
        assert!(after.get(&p).is_some_and(|&c| c > 1), "the updated policy {p} is there: {after:?}");
        let inside = fx.probe.in_cgroup(cg.path());
        assert_eq!(inside.connect(Tcp, n.ns_v4, 8081), "ok", "the new policy holds");
        assert_eq!(inside.connect(Tcp, n.ns_v4b, 8081), "err EPERM", "the old one is gone");
        assert_eq!(inside.connect(Tcp, n.ns_v4, 8080), "err EPERM", "a neighbour's rule does not apply");
    }
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8081), "err EPERM", "a neighbour's rule does not apply");
    for cg in &neighbours[3..] {
        fx.sbx.detach(cg);
    }
}

#[test]
fn the_program_set_keeps_the_hooks_switched_on_through_an_empty_anchor_that_denies_everything() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let set = fx.sbx.status(&fx.cg)["held_by"]["set"]["id"].as_str().expect("set id").to_owned();
    let anchor = sbx_tests::cgroup2_mount().join("sbx").join(format!("anchor-{set}"));
    assert!(anchor.is_dir(), "the set's anchor cgroup {} exists", anchor.display());
    // Every hook of the set is linked there, so no sandbox's attach or
    // detach is the host's first or last of its hook.
    let out = Command::new("bpftool").args(["cgroup", "show"]).arg(&anchor).output().expect("bpftool cgroup show");
    let shown = String::from_utf8_lossy(&out.stdout);
    for prog in ["sbx_connect4", "sbx_connect6", "sbx_sendmsg4", "sbx_bind4", "sbx_egress", "sbx_sock_create"] {
        assert!(shown.contains(prog), "{prog} is linked to the anchor: {shown}");
    }
    assert_eq!(connect4_progs(&anchor), connect4_progs(fx.cg.path()), "the same programs as every sandbox's");
    // Its slot is never written: a process put there is denied everything.
    let p = fx.probe.in_cgroup(&anchor);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, "127.0.0.1", 8080), "err EPERM");
    // And the sandbox beside it is not affected.
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
}
