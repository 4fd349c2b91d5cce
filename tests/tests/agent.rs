//! The host agent, `sbx-user agent`, through its socket: who may use it,
//! which cgroups it acts on, what it does with bad requests and slow
//! clients, and that its sandboxes stay enforced while it restarts.
//! Clients are the Python program in `tests/src/agent_client.py` (a
//! foreign program speaking the documented protocol) or raw sockets.

use std::{
    fs,
    io::{BufReader, Read as _, Write as _},
    os::unix::{fs::MetadataExt as _, fs::PermissionsExt as _, net::UnixStream},
    process::Command,
    time::{Duration, Instant},
};

use sbx_tests::{
    cgroup2_mount, probe, Agent, Place, Proto::Tcp, Sbx, TempDir, TestCgroup, TestGroup, TestNet, TestUser,
};
use serde_json::{json, Value};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;

fn req(v: &Value) -> String {
    v.to_string()
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error reply: {reply}"))
}

fn ok(reply: &Value) -> &Value {
    assert_eq!(reply["ok"], true, "the agent refused: {reply}");
    reply
}

fn hello() -> String {
    req(&json!({"v": 1, "op": "hello"}))
}

/// `sbx-user` as `member` (with its groups), talking to `agent`.
fn sbx_as(member: &TestUser, agent: &Agent, sbx: &Sbx) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &member.uid.to_string(), "--regid", &member.gid.to_string(), "--init-groups", "--"])
        .arg(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg()])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null());
    cmd
}

/// A root cgroup, state, a group with one member, and an agent serving
/// them.
fn member_fixture() -> (TestCgroup, Sbx, TestGroup, TestUser, Agent) {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let group = TestGroup::new();
    let member = TestUser::new(&[&group]);
    let agent = Agent::start(&sbx, &[root.path()], "", &["--group", &group.name]);
    (root, sbx, group, member, agent)
}

/// The agent's group decides who gets in: a stranger is refused (by the
/// socket's mode, and by the agent itself when the mode is opened up), a
/// member is served, but only on the sandboxes it created.
#[test]
fn the_agent_serves_root_and_its_group_and_members_only_their_own_sandboxes() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let group = TestGroup::new();
    let member = TestUser::new(&[&group]);
    let other_member = TestUser::new(&[&group]);
    let stranger = TestUser::new(&[]);
    let agent = Agent::start(&sbx, &[root.path()], "", &["--group", &group.name]);

    let meta = fs::metadata(agent.socket()).expect("the socket");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.uid(), 0);
    let gid: u32 =
        String::from_utf8_lossy(&Command::new("getent").args(["group", &group.name]).output().expect("getent").stdout)
            .split(':')
            .nth(2)
            .expect("gid field")
            .parse()
            .expect("a gid");
    assert_eq!(meta.gid(), gid, "socket group");

    // The socket's mode keeps a stranger out...
    let r = agent.py(Some(&stranger), &[hello()]);
    assert_eq!(r[0]["connect_error"], "EACCES", "{r:?}");
    // ...and so does the agent, by the peer's credentials, if it gets in.
    fs::set_permissions(agent.socket(), fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = agent.py(Some(&stranger), &[hello()]);
    assert_eq!(code(&r[0]), "denied", "{r:?}");
    assert!(r[0]["error"]["message"].as_str().is_some_and(|m| m.contains(&group.name)), "{r:?}");
    fs::set_permissions(agent.socket(), fs::Permissions::from_mode(0o660)).expect("chmod");

    // A member, by a supplementary group.
    let r = agent.py(Some(&member), &[hello()]);
    assert_eq!(ok(&r[0])["uid"], member.uid);
    assert_eq!(r[0]["root"], false);

    // Not on a cgroup it did not have the agent create.
    let existing = root.child("existing");
    let attach_existing = req(&json!({"v": 1, "op": "attach", "cgroup": existing, "policy": {"profile": "offline"}}));
    assert_eq!(code(&agent.py(Some(&member), &[attach_existing])[0]), "not_owner");
    assert_eq!(sbx_tests::prog_counts(&existing, false), sbx_tests::per_hook(0), "nothing attached to it");

    // Its own sandbox, enforced like any other.
    let policy = json!({"allow": [format!("{}:8080", net.ns_v4)]});
    let r = agent
        .py(Some(&member), &[req(&json!({"v": 1, "op": "attach", "cgroup": "job", "create": true, "policy": policy}))]);
    assert_eq!(ok(&r[0])["creator_uid"], member.uid);
    let job = root.path().join("job");
    assert_eq!(r[0]["cgroup"], job.display().to_string());
    let inside = probe!().in_cgroup(&job).in_netns(net.name());
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8080), "ok");
    assert_eq!(inside.connect(Tcp, net.ns_v4b, 8080), "err EPERM");

    // Another member can neither see nor touch it.
    for r in agent.py(
        Some(&other_member),
        &[
            req(&json!({"v": 1, "op": "status", "cgroup": "job"})),
            req(&json!({"v": 1, "op": "update", "cgroup": "job", "policy": {"default": "allow"}})),
            req(&json!({"v": 1, "op": "detach", "cgroup": "job", "remove": true})),
        ],
    ) {
        assert_eq!(code(&r), "not_owner", "{r}");
    }
    let r = agent.py(Some(&other_member), &[req(&json!({"v": 1, "op": "list"}))]);
    assert_eq!(ok(&r[0])["sandboxes"], json!([]));
    assert_eq!(inside.connect(Tcp, net.ns_v4b, 8080), "err EPERM", "still enforced");

    // Its creator and root see it.
    let r = agent.py(Some(&member), &[req(&json!({"v": 1, "op": "list"}))]);
    assert_eq!(ok(&r[0])["sandboxes"].as_array().map(Vec::len), Some(1), "{r:?}");
    let r = agent.call(&json!({"v": 1, "op": "list"}));
    assert_eq!(ok(&r)["sandboxes"][0]["creator_uid"], member.uid);

    // Its creator removes it.
    let r = agent.py(Some(&member), &[req(&json!({"v": 1, "op": "detach", "cgroup": "job", "remove": true}))]);
    assert_eq!(ok(&r[0])["removed"], true);
    assert!(!job.exists(), "the cgroup is removed");
    assert!(
        sbx.records().iter().all(|p| p.extension().is_none_or(|e| e != "json")),
        "no record left: {:?}",
        sbx.records()
    );
}

/// Requests name cgroups below the managed subtree only: `..`, another
/// absolute path, a symlink out of it and the root itself are refused and
/// nothing is attached anywhere.
#[test]
fn cgroups_outside_the_managed_subtree_are_refused() {
    let root = TestCgroup::new();
    let outside = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let links = TempDir::new("links");
    let link = links.path().join("cg");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    let name = outside.path().file_name().expect("a name").to_string_lossy().into_owned();
    let up = format!("../{name}");
    let abs_up = format!("{}/../{name}", root.arg());
    let through_link = format!("{}/x", link.display());
    let cases = [
        outside.arg(),
        up.as_str(),
        abs_up.as_str(),
        &link.display().to_string(),
        through_link.as_str(),
        root.arg(),
        "/",
        ".",
    ];
    for cg in cases {
        for create in [false, true] {
            let r = agent.call(
                &json!({"v": 1, "op": "attach", "cgroup": cg, "create": create, "policy": {"profile": "offline"}}),
            );
            assert_eq!(code(&r), "not_managed", "{cg} (create {create}): {r}");
        }
    }
    assert_eq!(outside.prog_counts(), sbx_tests::per_hook(0), "nothing attached outside");
    assert!(!cgroup2_mount().join("x").exists());
    let r = agent.call(&json!({"v": 1, "op": "attach", "cgroup": "missing", "policy": {"profile": "offline"}}));
    assert_eq!(code(&r), "not_found", "{r}");
}

fn read_reply(reader: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading a reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

/// Garbage gets an error reply and the connection goes on; an oversized
/// request gets one and the connection is closed; the agent serves the
/// next client either way.
#[test]
fn malformed_and_oversized_requests_get_error_replies() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "[limits]\nmax_request_bytes = 4096\n", &[]);
    let s = UnixStream::connect(agent.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut w = s.try_clone().expect("dup");
    let mut r = BufReader::new(s);
    let cases: &[(&[u8], &str)] = &[
        (b"this is not json\n", "malformed"),
        (b"\xff\xfe\x00\n", "malformed"),
        (b"[1,2,3]\n", "malformed"),
        (b"{\"op\":\"list\"}\n", "version"),
        (b"{\"v\":2,\"op\":\"list\"}\n", "version"),
        (b"{\"v\":1,\"op\":\"format_disk\"}\n", "invalid"),
        (b"{\"v\":1,\"op\":\"attach\",\"cgroup\":\"x\",\"polcy\":{}}\n", "invalid"),
        (b"{\"v\":1,\"op\":\"attach\",\"cgroup\":\"x\",\"create\":true,\"policy\":{\"allow\":[\"300.1.1.1\"]}}\n", "policy"),
        (b"{\"v\":1,\"op\":\"attach\",\"cgroup\":\"x\",\"create\":true,\"policy\":{\"toml\":\"[filesystem]\\nread=['/root']\"}}\n", "policy"),
    ];
    for (line, want) in cases {
        w.write_all(line).expect("write");
        let reply = read_reply(&mut r);
        assert_eq!(code(&reply), *want, "{}: {reply}", String::from_utf8_lossy(line));
    }
    assert!(!root.path().join("x").exists(), "a refused policy creates no cgroup");
    w.write_all(b"{\"v\":1,\"id\":\"after\",\"op\":\"hello\"}\n").expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(ok(&reply)["id"], "after", "the connection goes on after bad requests");

    let big = vec![b'x'; 10_000];
    w.write_all(&big).expect("write");
    let reply = read_reply(&mut r);
    assert_eq!(code(&reply), "too_large", "{reply}");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection is closed after an oversized request");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "hello"})))["protocol"], 1, "the agent still serves");
}

/// A client that stops halfway through a request, or never reads its
/// replies, holds up nobody else, and is dropped after the timeouts.
#[test]
fn a_stalled_client_blocks_no_one() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "[limits]\nidle_timeout_secs = 2\nwrite_timeout_secs = 1\n", &[]);
    // Half a request, then nothing.
    let mut half = UnixStream::connect(agent.socket()).expect("connect");
    half.write_all(b"{\"v\":1,\"op\":\"hel").expect("write");
    // Requests, and never a read.
    let deaf = UnixStream::connect(agent.socket()).expect("connect");
    let mut deaf_w = deaf.try_clone().expect("dup");
    let writer = std::thread::spawn(move || {
        let line = b"{\"v\":1,\"op\":\"hello\"}\n".repeat(1000);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if deaf_w.write_all(&line).is_err() {
                return true;
            }
        }
        false
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    ok(&agent.call(&json!({"v": 1, "op": "list"})));
    assert!(t.elapsed() < Duration::from_secs(1), "another client waited {:?}", t.elapsed());
    assert!(writer.join().expect("writer thread"), "the agent drops a client that does not read its replies");
    half.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 16];
    let n = loop {
        match half.read(&mut buf) {
            // A signal to the test process (another test's child exiting).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other.expect("EOF, not a timeout"),
        }
    };
    assert_eq!(n, 0, "the idle client is dropped");
    assert!(agent.log_text().contains("did not read its reply"), "{}", agent.log_text());
    drop(deaf);
}

/// The protocol from a program in another language: one connection, the
/// requests pipelined with ids, from creation to removal.
#[test]
fn a_python_client_drives_the_whole_protocol() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    net.serve_tcp(8081);
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let toml = format!("[network]\ndefault = \"deny\"\nallow = [\"{}:8080\"]\n", net.ns_v4);
    let job = root.path().join("py");
    let replies = agent.py(
        None,
        &[
            req(&json!({"v": 1, "id": 1, "op": "hello"})),
            req(&json!({"v": 1, "id": 2, "op": "attach", "cgroup": job, "create": true, "policy": {"toml": toml, "name": "job.toml"}})),
            req(&json!({"v": 1, "id": 3, "op": "status", "cgroup": "py"})),
        ],
    );
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(ok(r)["id"], i + 1);
    }
    assert_eq!(replies[1]["generation"], 1);
    let hooks: Vec<String> = serde_json::from_value(replies[2]["enforcing_hooks"].clone()).expect("a list of hooks");
    assert!(sbx_tests::all_hooks().iter().all(|h| hooks.iter().any(|x| x == h)), "{}", replies[2]);
    assert_eq!(replies[2]["missing_hooks"], json!([]), "{}", replies[2]);
    assert_eq!(replies[2]["problem"], Value::Null);
    let inside = probe!().in_cgroup(&job).in_netns(net.name());
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8080), "ok");
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8081), "err EPERM");

    // The record is the CLI's: `sbx-user status` reports the sandbox.
    let status = sbx.ok(&["status", "--json"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&job.display().to_string()));

    let replies = agent.py(
        None,
        &[
            req(&json!({"v": 1, "id": "u", "op": "update", "cgroup": "py", "policy": {"allow": [format!("{}:8081", net.ns_v4)]}})),
            req(&json!({"v": 1, "op": "list"})),
        ],
    );
    assert_eq!(ok(&replies[0])["generation"], 2);
    assert_eq!(ok(&replies[1])["sandboxes"][0]["cgroup"], job.display().to_string());
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8081), "ok");
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8080), "err EPERM");

    // A cgroup the agent did not create is detached, never removed.
    let existing = root.child("existing");
    ok(&agent.call(&json!({"v": 1, "op": "attach", "cgroup": existing, "policy": {"profile": "offline"}})));
    let r = agent.call(&json!({"v": 1, "op": "detach", "cgroup": existing, "remove": true}));
    assert_eq!(code(&r), "invalid", "{r}");
    ok(&agent.call(&json!({"v": 1, "op": "detach", "cgroup": existing})));
    assert!(existing.exists());
    assert_eq!(sbx_tests::prog_counts(&existing, false), sbx_tests::per_hook(0));

    let r = agent.call(&json!({"v": 1, "op": "detach", "cgroup": "py", "remove": true}));
    assert_eq!(ok(&r)["removed"], true);
    assert!(!job.exists());
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
}

/// Restarting the agent (SIGTERM, and SIGKILL) never leaves a sandbox
/// unenforced: a client inside connects throughout, and the new agent
/// finds every sandbox again.
#[test]
fn sandboxes_stay_enforced_while_the_agent_restarts() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let mut agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let policy = json!({"allow": [format!("{}:8080", net.ns_v4)]});
    ok(&agent.call(&json!({"v": 1, "op": "attach", "cgroup": "job", "create": true, "policy": policy})));
    let job = root.path().join("job");

    // Connects from inside, to the allowed and to a denied host, for 4 s.
    let py = r"
import errno, socket, sys, time
ok, denied = (sys.argv[1], 8080), (sys.argv[2], 8080)
end = time.time() + 4
while time.time() < end:
    for name, addr in (('allowed', ok), ('denied', denied)):
        s = socket.socket(); s.settimeout(2)
        try:
            s.connect(addr); r = 'ok'
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
        s.close()
        print(name, r, flush=True)
    time.sleep(0.01)
";
    let place = Place { cgroup: Some(job.clone()), netns: Some(net.name().to_owned()) };
    let mut cmd = Command::new("python3");
    cmd.args(["-c", py, &net.ns_v4.to_string(), &net.ns_v4b.to_string()]);
    let client = std::thread::spawn(move || place.output(&mut cmd));

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.stop_with(libc::SIGTERM), Some(0), "SIGTERM stops the agent cleanly: {}", agent.log_text());
    assert!(!agent.socket().exists(), "a clean stop removes the socket");
    std::thread::sleep(Duration::from_millis(500));
    agent.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.stop_with(libc::SIGKILL), None);
    std::thread::sleep(Duration::from_millis(500));
    agent.restart();

    let out = client.join().expect("client thread");
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut allowed, mut denied) = (0, 0);
    for line in text.lines() {
        match line {
            "allowed ok" => allowed += 1,
            "denied EPERM" => denied += 1,
            other => panic!("during the restarts: {other}\n{text}"),
        }
    }
    assert!(
        allowed > 20 && denied > 20,
        "too few connects: {allowed} allowed, {denied} denied\n{}",
        sbx_tests::describe(&out)
    );

    // The new agent knows the sandbox from the kernel's and bpffs's state.
    let r = agent.call(&json!({"v": 1, "op": "status", "cgroup": "job"}));
    assert_eq!(ok(&r)["missing_hooks"], json!([]), "{r}");
    assert!(r["enforcing_hooks"].as_array().is_some_and(|h| h.len() >= sbx_tests::all_hooks().len()), "{r}");
    ok(&agent.call(&json!({"v": 1, "op": "detach", "cgroup": "job", "remove": true})));
}

/// What an agent killed halfway through creating a sandbox leaves (the
/// cgroup and the owner record, the pins, no sandbox record) is cleaned up
/// by the next start.
#[test]
fn the_next_start_cleans_up_a_sandbox_a_killed_agent_left_half_made() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let mut agent = Agent::start(&sbx, &[root.path()], "", &[]);
    ok(&agent
        .call(&json!({"v": 1, "op": "attach", "cgroup": "half", "create": true, "policy": {"profile": "offline"}})));
    assert_eq!(agent.stop_with(libc::SIGKILL), None);
    let half = root.path().join("half");
    let id = fs::metadata(&half).expect("the cgroup").ino();
    // The state between loader::attach and the record's write.
    fs::remove_file(sbx.state_dir().join(format!("{id}.json"))).expect("removing the record");
    assert!(Sbx::has_pins(id));
    agent.restart();
    assert!(!half.exists(), "the half-made cgroup is removed: {}", agent.log_text());
    assert!(!Sbx::has_pins(id), "its pins are removed");
    assert!(!sbx.state_dir().join("agent").join(format!("{id}.json")).exists(), "its owner record is removed");
    assert!(agent.log_text().contains("half-made"), "{}", agent.log_text());
}

/// `--check` validates without starting; SIGHUP reloads the file, and a
/// broken file keeps the configuration in force.
#[test]
fn the_configuration_is_checked_and_reloaded() {
    let a = TestCgroup::new();
    let b = TestCgroup::new();
    let sbx = Sbx::new();
    let dir = TempDir::new("agentcfg");
    let cfg = dir.path().join("agent.toml");
    fs::write(&cfg, format!("cgroup_roots = [\"{}\"]\n", a.arg())).expect("write");
    let cfg_arg = cfg.display().to_string();
    let out = sbx.ok(&["agent", "--check", "--config", &cfg_arg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"), "{}", sbx_tests::describe(&out));
    fs::write(&cfg, "cgroup_root = [\"/x\"]\n").expect("write");
    let out = sbx.fails(&["agent", "--check", "--config", &cfg_arg]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&cfg_arg), "{}", sbx_tests::describe(&out));
    let out = sbx.fails(&["agent", "--check", "--config", &cfg_arg, "--cgroup-root", "/etc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "{}", sbx_tests::describe(&out));
    let out = sbx.fails(&["agent", "--check", "--config", "/nonexistent/agent.toml", "--cgroup-root", "/etc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"), "{}", sbx_tests::describe(&out));
    let missing = dir.path().join("none.toml").display().to_string();
    fs::write(&missing, "").expect("write");
    let out = sbx.fails(&["agent", "--check", "--config", &missing]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no managed cgroup subtree"),
        "{}",
        sbx_tests::describe(&out)
    );
    let out = sbx.fails(&["agent", "--check", "--config", &missing, "--cgroup-root", "/etc"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cgroup v2 directory"),
        "{}",
        sbx_tests::describe(&out)
    );

    let agent = Agent::start(&sbx, &[], &format!("cgroup_roots = [\"{}\"]\n", a.arg()), &[]);
    let attach = |cg: String| {
        agent.call(&json!({"v": 1, "op": "attach", "cgroup": cg, "create": true, "policy": {"profile": "offline"}}))
    };
    assert_eq!(code(&attach(format!("{}/x", b.arg()))), "not_managed");
    agent.write_config(&format!("cgroup_roots = [\"{}\", \"{}\"]\n", a.arg(), b.arg()));
    agent.hup();
    let reloaded = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        agent.log_text().contains("reloaded")
    });
    assert!(reloaded, "{}", agent.log_text());
    ok(&attach(format!("{}/x", b.arg())));
    agent.write_config("cgroup_roots = 7\n");
    agent.hup();
    let kept = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        agent.log_text().contains("keeping the previous configuration")
    });
    assert!(kept, "{}", agent.log_text());
    ok(&attach(format!("{}/y", b.arg())));
    for cg in ["x", "y"] {
        ok(&agent.call(&json!({"v": 1, "op": "detach", "cgroup": format!("{}/{cg}", b.arg()), "remove": true})));
    }
}

/// `sbx-user` as `user` (root when `None`) with `args`.
fn cli_as(sbx: &Sbx, user: Option<&TestUser>, args: &[&str]) -> std::process::Output {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg("--reuid").arg(u.uid.to_string()).arg("--regid").arg(u.gid.to_string());
            c.args(["--init-groups", "--"]).arg(sbx_tests::sbx_user_bin());
            c
        }
        None => Command::new(sbx_tests::sbx_user_bin()),
    };
    cmd.env("SBX_STATE_DIR", sbx.state_dir()).args(args).stdin(std::process::Stdio::null());
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// The CLI through the agent: a member of the agent's group, not root,
/// creates, updates, reports and removes a sandbox with the same commands
/// and output as root's direct path.
#[test]
fn the_cli_goes_through_the_agent_for_a_member_of_its_group() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    net.serve_tcp(8081);
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let group = TestGroup::new();
    let member = TestUser::new(&[&group]);
    let agent = Agent::start(&sbx, &[root.path()], "", &["--group", &group.name]);
    let sock = agent.socket_arg();
    let job = root.path().join("cli");
    let job_arg = job.display().to_string();
    let allow = format!("{}:8080", net.ns_v4);

    // Without the agent, the member cannot attach at all.
    let out = cli_as(&sbx, Some(&member), &["attach", "--create", "--cgroup", &job_arg, "--allow", &allow]);
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));

    let out = cli_as(
        &sbx,
        Some(&member),
        &["--agent-socket", &sock, "attach", "--create", "--cgroup", &job_arg, "--allow", &allow],
    );
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("attached to {job_arg} (cgroup id ")), "{stdout}");
    assert!(stdout.contains(&format!("allow {allow}")), "the policy summary: {stdout}");
    let inside = probe!().in_cgroup(&job).in_netns(net.name());
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8080), "ok");
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8081), "err EPERM");

    // SBX_AGENT_SOCKET names it as well as the flag.
    let mut cmd = Command::new("setpriv");
    cmd.arg("--reuid").arg(member.uid.to_string()).arg("--regid").arg(member.gid.to_string());
    cmd.args(["--init-groups", "--"]).arg(sbx_tests::sbx_user_bin());
    cmd.env("SBX_AGENT_SOCKET", &sock).args([
        "update",
        "--cgroup",
        &job_arg,
        "--allow",
        &format!("{}:8081", net.ns_v4),
    ]);
    let out = cmd.output().expect("running sbx-user update");
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("updated policy of {job_arg}")));
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8081), "ok");
    assert_eq!(inside.connect(Tcp, net.ns_v4, 8080), "err EPERM");

    let out = cli_as(&sbx, Some(&member), &["--agent-socket", &sock, "status", "--json"]);
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v[0]["cgroup"], job_arg, "{v}");
    assert_eq!(v[0]["missing_hooks"], json!([]), "{v}");
    assert_eq!(v[0]["creator_uid"], member.uid);

    // The member may not aim the CLI at a cgroup outside the agent's subtree.
    let other = TestCgroup::new();
    let out = cli_as(
        &sbx,
        Some(&member),
        &["--agent-socket", &sock, "attach", "--cgroup", other.arg(), "--profile", "offline"],
    );
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert_eq!(other.prog_counts(), sbx_tests::per_hook(0));

    // Its sandbox's events, through the agent (which follows them: there
    // is no backlog to drain).
    let out = cli_as(&sbx, Some(&member), &["--agent-socket", &sock, "events", "--cgroup", &job_arg]);
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--follow"), "{}", sbx_tests::describe(&out));
    let mut follow = Command::new("setpriv");
    follow.arg("--reuid").arg(member.uid.to_string()).arg("--regid").arg(member.gid.to_string());
    follow.args(["--init-groups", "--"]).arg(sbx_tests::sbx_user_bin());
    follow.args(["--agent-socket", &sock, "events", "--follow", "--json", "--cgroup", &job_arg]);
    let mut follower = sbx_tests::Background::spawn("events --follow", &mut follow);
    let denied = net.ns_v4b;
    let poker = {
        let inside = inside.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                let _ = inside.connect(Tcp, denied, 8080);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let event: Value = serde_json::from_str(&follower.read_line()).expect("an event line");
    assert_eq!(event["verdict"], "denied", "{event}");
    assert_eq!(event["destination"], format!("{denied}:8080"), "{event}");
    drop(follower);
    poker.join().expect("poker");

    let out = cli_as(&sbx, Some(&member), &["--agent-socket", &sock, "detach", "--remove", "--cgroup", &job_arg]);
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    assert!(!job.exists());
}

/// A socket the CLI is pointed at must be served by root and must answer in
/// time; otherwise the CLI fails (125) and does nothing, even as root,
/// where the direct path would have worked.
#[test]
fn the_cli_does_not_trust_a_fake_or_silent_agent() {
    let cg = TestCgroup::new();
    let sbx = Sbx::new();
    let user = TestUser::new(&[]);
    let dir = TempDir::new("fake-agent");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    // Says yes to everything, as a fail-open client would want to hear.
    let server = r#"
import os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.bind(path); os.chmod(path, 0o777); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    if mode == "yes":
        try:
            c.recv(65536)
            c.sendall(b'{"v":1,"ok":true,"cgroup":"x","cgroup_id":1}\n')
        except OSError:
            pass
        c.close()
    else:
        conns = globals().setdefault("held", []); conns.append(c)
"#;
    let start = |mode: &str, as_user: Option<&TestUser>| {
        let path = dir.path().join(format!("{mode}.sock"));
        let mut cmd = match as_user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg("--reuid").arg(u.uid.to_string()).arg("--regid").arg(u.gid.to_string());
                c.args(["--init-groups", "--", "/usr/bin/python3"]);
                c
            }
            None => Command::new("/usr/bin/python3"),
        };
        cmd.args(["-c", server]).arg(&path).arg(mode);
        let mut bg = sbx_tests::Background::spawn(mode, &mut cmd);
        assert_eq!(bg.read_line().trim(), "ready");
        (bg, path.display().to_string())
    };
    let attach = ["attach", "--cgroup", cg.arg(), "--profile", "offline"];

    let (_fake, fake) = start("yes", Some(&user));
    let mut cmd = sbx.cmd();
    cmd.env("SBX_AGENT_SOCKET", &fake).args(attach);
    let out = cmd.output().expect("sbx-user");
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not root"), "{}", sbx_tests::describe(&out));
    assert_eq!(cg.prog_counts(), sbx_tests::per_hook(0), "nothing attached");

    let (_silent, silent) = start("silent", None);
    let t = Instant::now();
    let out = sbx.output(&[&["--agent-socket", silent.as_str(), "--agent-timeout", "1"][..], &attach[..]].concat());
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer within 1 s"),
        "{}",
        sbx_tests::describe(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "gave up after {:?}", t.elapsed());
    assert_eq!(cg.prog_counts(), sbx_tests::per_hook(0), "nothing attached");

    let nothing = dir.path().join("nothing.sock").display().to_string();
    let out = sbx.output(&[&["--agent-socket", nothing.as_str()][..], &attach[..]].concat());
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to the sbx agent"),
        "{}",
        sbx_tests::describe(&out)
    );
    assert_eq!(cg.prog_counts(), sbx_tests::per_hook(0), "no quiet fallback to the direct path");
}

/// `run` through the agent: the agent makes the sandbox below its root and
/// hands over the cgroup's fd; the command runs as this process's child,
/// enforced from its first instruction, keeps running while the agent
/// restarts, and its exit status comes back; the sandbox is removed.
#[test]
fn run_through_the_agent_survives_an_agent_restart() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let mut agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let py = r"
import errno, socket, sys, time
print(open('/proc/self/cgroup').read().strip().split('::')[-1], flush=True)
end = time.time() + 3
while time.time() < end:
    for name, host in (('allowed', sys.argv[1]), ('denied', sys.argv[2])):
        s = socket.socket(); s.settimeout(2)
        try:
            s.connect((host, 8080)); r = 'ok'
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
        s.close()
        print(name, r, flush=True)
    time.sleep(0.01)
sys.exit(7)
";
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", net.name()])
        .arg(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "run", "--dns", "host"])
        .args(["--allow", &format!("{}:8080", net.ns_v4), "--"])
        .args(["/usr/bin/python3", "-c", py, &net.ns_v4.to_string(), &net.ns_v4b.to_string()])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null());
    let runner = std::thread::spawn(move || cmd.output().expect("running sbx-user run"));
    std::thread::sleep(Duration::from_millis(800));
    let during = fs::read_dir(root.path())
        .expect("the agent's root")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .count();
    agent.restart();
    let out = runner.join().expect("runner thread");
    assert_eq!(out.status.code(), Some(7), "the command's status: {}", sbx_tests::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let cgroup = lines.next().unwrap_or_default();
    let root_name = root.path().file_name().expect("a name").to_string_lossy().into_owned();
    assert!(cgroup.contains(&format!("{root_name}/run-")), "the command runs in the agent's cgroup: {cgroup}");
    let (mut allowed, mut denied) = (0, 0);
    for line in lines {
        match line {
            "allowed ok" => allowed += 1,
            "denied EPERM" => denied += 1,
            other => panic!("during the restart: {other}\n{text}"),
        }
    }
    assert!(allowed > 10 && denied > 10, "{allowed} allowed, {denied} denied: {}", sbx_tests::describe(&out));
    assert_eq!(during, 1, "the sandbox lives below the agent's root while the command runs");
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("the agent's root")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("run-"))
        .collect();
    assert!(left.is_empty(), "the sandbox is removed after the command: {left:?}");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
}

/// Events the subscriber test makes.
const N: usize = 900;

/// Subscribes to events and prints each line; stops 2 s after the last
/// event. With a flag file, waits for it before reading anything (a
/// subscriber that stops reading).
const PY_SUBSCRIBER: &str = r#"
import json, os, socket, sys, time
path, request, flag = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.sendall(request.encode() + b"\n")
f = s.makefile("rb")
reply = json.loads(f.readline())
assert reply["ok"], reply
print("ready", flush=True)
if flag != "-":
    deadline = time.time() + 60
    while not os.path.exists(flag) and time.time() < deadline:
        time.sleep(0.05)
s.settimeout(2)
try:
    for line in f:
        sys.stdout.write(line.decode()); sys.stdout.flush()
except (socket.timeout, TimeoutError):
    pass
"#;

/// Two subscribers both get every event; a third that stops reading loses
/// events, counted in its stream, and holds up neither the others nor the
/// agent.
#[test]
fn event_subscribers_each_get_every_event_and_a_slow_one_counts_its_drops() {
    let net = TestNet::new(&probe!());
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "[limits]\nevent_queue = 64\n", &[]);
    ok(&agent.call(&json!({"v": 1, "op": "attach", "cgroup": "ev", "create": true, "policy": {"profile": "offline"}})));
    let dir = TempDir::new("subscribers");
    let flag = dir.path().join("read-now");
    let subscriber = |request: Value, flag: &str| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", PY_SUBSCRIBER]).arg(agent.socket()).arg(request.to_string()).arg(flag);
        let mut bg = sbx_tests::Background::spawn("subscriber", &mut cmd);
        assert_eq!(bg.read_line().trim(), "ready");
        bg
    };
    // Their output is read as it comes (a full pipe would stall them).
    let reading = |bg: sbx_tests::Background| std::thread::spawn(move || bg.wait_output());
    let a = reading(subscriber(json!({"v": 1, "op": "events", "cgroups": ["ev"]}), "-"));
    let b = reading(subscriber(json!({"v": 1, "op": "events"}), "-"));
    let stuck = reading(subscriber(json!({"v": 1, "op": "events"}), flag.to_str().expect("UTF-8")));

    // 900 denied connects from inside, paced so that neither the kernel's
    // event rate limit (1000/s, burst 1000) nor the sandbox's 16 KiB ring
    // drops any: every loss below is the agent's, per subscriber.
    let py = format!(
        "import socket, time\nfor _ in range({N}):\n    s = socket.socket()\n    try: s.connect(('{}', 8080))\n    except OSError: pass\n    s.close(); time.sleep(0.001)\n",
        net.ns_v4b
    );
    let place = Place { cgroup: Some(root.path().join("ev")), netns: Some(net.name().to_owned()) };
    let t = Instant::now();
    let out = place.output(Command::new("python3").args(["-c", &py]));
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    assert!(t.elapsed() < Duration::from_secs(20), "the connects took {:?}", t.elapsed());

    let lines = |t: std::thread::JoinHandle<Vec<u8>>| -> Vec<Value> {
        let out = t.join().expect("reader thread");
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let counters = agent.call(&json!({"v": 1, "op": "status", "cgroup": "ev"}))["counters"].clone();
    for (name, got) in [("filtered", lines(a)), ("all", lines(b))] {
        assert_eq!(got.len(), N, "subscriber {name} got {} of {N} events; counters {counters}", got.len());
        assert!(got.iter().all(|e| e["dropped"] == 0 && e["event"]["verdict"] == "denied"), "{name}: {:?}", got.last());
        assert!(got.iter().all(|e| e["event"]["sandbox"].as_str().is_some_and(|s| s.ends_with("/ev"))));
    }
    // It reads again; one more event carries its final count of drops.
    fs::write(&flag, "").expect("flag");
    std::thread::sleep(Duration::from_millis(500));
    let one = py.replace(&format!("range({N})"), "range(1)");
    assert!(place.output(Command::new("python3").args(["-c", &one])).status.success());
    let got = lines(stuck);
    let dropped = got.last().and_then(|e| e["dropped"].as_u64()).expect("a dropped count");
    assert!(dropped > 0, "the stuck subscriber lost nothing of {N}: {} lines", got.len());
    assert_eq!(got.len() as u64 + dropped, N as u64 + 1, "what it got and what it was told it lost add up");
    ok(&agent.call(&json!({"v": 1, "op": "detach", "cgroup": "ev", "remove": true})));
}

/// Prints the uid and cgroup it runs with, then connects to an allowed
/// and a denied host of the test network.
const PY_WHO_AND_CONNECT: &str = r"
import errno, os, socket, sys
print(os.getuid(), open('/proc/self/cgroup').read().strip().split('::')[-1], flush=True)
for name, host in (('allowed', sys.argv[1]), ('denied', sys.argv[2])):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, 8080)); r = 'ok'
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(name, r, flush=True)
";

/// `run` through the agent for a member of its group who is not root: the
/// agent cannot hand it a cgroup it may write, so it moves the member's own
/// child (by the pidfd the client sends with `enter`) while the child waits
/// before exec. The command runs as the member, held by the policy from
/// its first instruction; `--user` of anyone else is refused.
#[test]
fn a_member_runs_commands_through_the_agent_as_itself_held_by_the_policy() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    let (root, sbx, _group, member, agent) = member_fixture();
    let run_as_member = |flags: &[&str], command: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", net.name(), "setpriv", "--reuid", &member.uid.to_string()])
            .args(["--regid", &member.gid.to_string(), "--init-groups", "--"])
            .arg(sbx_tests::sbx_user_bin())
            .args(["--agent-socket", &agent.socket_arg(), "run", "--dns", "host"])
            .args(["--allow", &format!("{}:8080", net.ns_v4)])
            .args(flags)
            .arg("--")
            .args(command)
            .env("SBX_STATE_DIR", sbx.state_dir())
            .stdin(std::process::Stdio::null());
        cmd.output().expect("running sbx-user run as the member")
    };
    let (v4, v4b) = (net.ns_v4.to_string(), net.ns_v4b.to_string());
    let out = run_as_member(&[], &["/usr/bin/python3", "-c", PY_WHO_AND_CONNECT, &v4, &v4b]);
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let root_name = root.path().file_name().expect("a name").to_string_lossy().into_owned();
    let (uid, cgroup) = lines.first().and_then(|l| l.split_once(' ')).expect("the uid line");
    assert_eq!(uid, member.uid.to_string(), "the command runs as the member: {text}");
    assert!(cgroup.contains(&format!("{root_name}/run-")), "in the agent's sandbox: {text}");
    assert_eq!(&lines[1..], ["allowed ok", "denied EPERM"], "{}", sbx_tests::describe(&out));

    // As anyone else: refused before any sandbox is made.
    for user in ["0", "0:0", &format!("{}", member.uid + 1)] {
        let out = run_as_member(&["--user", user], &["/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "--user {user}: {}", sbx_tests::describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("runs commands as itself only"),
            "{}",
            sbx_tests::describe(&out)
        );
    }
    let left: Vec<_> = fs::read_dir(root.path()).expect("the agent's root").flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with("run-")), "sandboxes left: {left:?}");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
}

/// A foreign client's `enter` requests: the agent moves only the client's
/// own child that has executed nothing since the fork and is not inside a
/// sandbox already; a request without a pidfd, a pidfd of another process
/// or of a child that ran a program, and a child inside a sandbox (leaving
/// it would be an escape) are refused and leave the sandbox empty.
#[test]
fn enter_moves_only_the_clients_own_unsandboxed_child() {
    let (root, _sbx, _group, member, agent) = member_fixture();
    let py = r#"
import json, os, socket, subprocess, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rb")
def call(req, fd=None):
    line = (json.dumps(req) + "\n").encode()
    if fd is None:
        s.sendall(line)
    else:
        socket.send_fds(s, [line], [fd])
    r = json.loads(f.readline()); print(json.dumps(r), flush=True); return r
cg = call({"v": 1, "op": "run", "policy": {"default": "allow", "dns": "host"}})["cgroup"]
call({"v": 1, "op": "enter", "cgroup": cg})
call({"v": 1, "op": "enter", "cgroup": cg}, os.pidfd_open(os.getppid()))
p = subprocess.Popen(["sleep", "30"])
call({"v": 1, "op": "enter", "cgroup": cg}, os.pidfd_open(p.pid))
p.kill(); p.wait()
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.read(r, 1); os._exit(0)
call({"v": 1, "op": "enter", "cgroup": cg}, os.pidfd_open(child))
print(json.dumps({"populated": open(os.path.join(cg, "cgroup.events")).read().split()[1]}), flush=True)
os.write(w, b"x"); os.waitpid(child, 0)
call({"v": 1, "op": "detach", "cgroup": cg, "remove": True})
"#;
    let client = |place: &Place| -> Vec<Value> {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &member.uid.to_string(), "--regid", &member.gid.to_string(), "--init-groups", "--"])
            .args(["/usr/bin/python3", "-c", py])
            .arg(agent.socket());
        let out = place.output(&mut cmd);
        assert!(out.status.success(), "{}", sbx_tests::describe(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
    };
    // Outside any sandbox: its forked child enters.
    let r = client(&Place { cgroup: None, netns: None });
    assert_eq!(r[0]["enter"], "pidfd", "no cgroup fd for a member: {:?}", r[0]);
    assert!(r[1]["error"]["message"].as_str().is_some_and(|m| m.contains("no file descriptor")), "{:?}", r[1]);
    assert!(r[2]["error"]["message"].as_str().is_some_and(|m| m.contains("not a child")), "{:?}", r[2]);
    assert!(r[3]["error"]["message"].as_str().is_some_and(|m| m.contains("executed")), "{:?}", r[3]);
    ok(&r[4]);
    assert_eq!(r[5]["populated"], "1", "the child is in the sandbox");
    ok(&r[6]);

    // Inside a sandbox: its child may not move to another.
    ok(&agent.call(&json!({"v": 1, "op": "attach", "cgroup": "held", "create": true, "policy": {"default": "deny"}})));
    let r = client(&Place { cgroup: Some(root.path().join("held")), netns: None });
    assert!(r[4]["error"]["message"].as_str().is_some_and(|m| m.contains("inside an sbx sandbox")), "{:?}", r[4]);
    assert_eq!(r[5]["populated"], "0", "nothing entered: {r:?}");
    ok(&r[6]);
    ok(&agent.call(&json!({"v": 1, "op": "detach", "cgroup": "held", "remove": true})));
}

/// `run -vv` through the agent: root's command is traced (the agent sets
/// the trace flag in the slot, the runner reads the program set's trace
/// buffer); a member may not trace (the buffer holds every traced
/// sandbox's lines).
#[test]
fn run_vv_through_the_agent_traces_for_root_only() {
    let (_root, sbx, _group, member, agent) = member_fixture();
    let connect = "import socket\nfor p in (8080, 8081):\n    s = socket.socket()\n    try: s.connect(('127.0.0.1', p))\n    except OSError: pass\n";
    let out = Command::new(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "-vv", "run", "--dns", "host", "--loopback", "8080"])
        .args(["--", "python3", "-c", connect])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sbx-user -vv run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    assert!(
        err.contains("sbx trace: hook=connect4 dest=[::ffff:127.0.0.1]:8080 allowed"),
        "{}",
        sbx_tests::describe(&out)
    );
    assert!(
        err.contains("sbx trace: hook=connect4 dest=[::ffff:127.0.0.1]:8081 denied"),
        "{}",
        sbx_tests::describe(&out)
    );
    let out = sbx_as(&member, &agent, &sbx)
        .args(["-vv", "run", "--dns", "host", "--", "/bin/true"])
        .output()
        .expect("sbx-user -vv run as the member");
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only root may trace"), "{}", sbx_tests::describe(&out));
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
}

/// `dns = "pinned"` through the agent: root's runner starts its DNS stub
/// first and names it in `run` (`dns_stub`); the agent's policy lets the
/// sandbox reach that stub and nothing else on port 53, so pinned names
/// resolve to their pins and other names fail at once. A member (no mount
/// namespace for the resolver files) is refused with the way out.
#[test]
fn run_through_the_agent_serves_pinned_names_from_the_runners_stub() {
    let net = TestNet::new(&probe!());
    net.serve_tcp(8080);
    let (_root, sbx, _group, member, agent) = member_fixture();
    let pinned = sbx_tests::HostsEntry::new(std::net::IpAddr::V4(net.ns_v4));
    let name = pinned.name().to_owned();
    let script = format!(
        "getent hosts {name}; echo pinned $?; getent hosts other.example; echo other $?; \
         python3 -c 'import socket; socket.create_connection((\"{name}\", 8080), 2); print(\"connected\")'"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", net.name()])
        .arg(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "run", "--allow", &format!("{name}:8080"), "--"])
        .args(["sh", "-c", &script])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running sbx-user run");
    assert!(out.status.success(), "{}", sbx_tests::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert_eq!(
        lines.first().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![net.ns_v4.to_string().as_str(), name.as_str()]),
        "{text}"
    );
    assert_eq!(&lines[1..], ["pinned 0", "other 2", "connected"], "{}", sbx_tests::describe(&out));

    let out = sbx_as(&member, &agent, &sbx)
        .args(["run", "--allow", &format!("{name}:8080"), "--", "/bin/true"])
        .output()
        .expect("running sbx-user run as the member");
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dns host"), "{}", sbx_tests::describe(&out));
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
}

/// `run` asks the agent for its sandbox first and prepares the command's
/// start while the agent makes it: a start that then fails (here
/// `--keep-fd` of a descriptor that is not open) runs nothing, and the
/// sandbox the agent made meanwhile is removed, cgroup and record.
#[test]
fn a_run_refused_while_the_agent_makes_its_sandbox_leaves_nothing() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let marker = sbx.state_dir().join("ran");
    let out = Command::new(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "run", "--dns", "host", "--keep-fd", "977", "--"])
        .args(["touch"])
        .arg(&marker)
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sbx-user run");
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--keep-fd 977: no such open file descriptor"),
        "{}",
        sbx_tests::describe(&out)
    );
    assert!(!marker.exists(), "the command ran");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
    let left: Vec<_> = std::fs::read_dir(root.path())
        .expect("the agent's root")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "cgroups left below the agent's root: {left:?}");
}

/// A foreign client of a `staged` run: root gets the cgroup and its fd in
/// a first reply, before any policy is attached, and creates its child in
/// the cgroup meanwhile; the second reply says the policy holds, and only
/// then does the child go on (its connect is refused by the policy). When
/// the attach fails instead (a policy over its `max_rules`), the second
/// reply is the error, the child waiting in the cgroup has been killed (or
/// found it gone) and the cgroup is gone: nothing is left to detach.
#[test]
fn a_staged_run_replies_with_the_cgroup_then_the_attach() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let py = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"v": 1, "id": 7, "op": "run", "staged": True, "policy": json.loads(sys.argv[2])}) + "\n").encode())
buf, fds = b"", []
while b"\n" not in buf:
    data, got, _, _ = socket.recv_fds(s, 4096, 1)
    if not data:
        break
    buf, fds = buf + data, fds + got
line, buf = buf.split(b"\n", 1)
first = json.loads(line)
print(json.dumps({"first": first, "fds": len(fds)}), flush=True)
if not first.get("ok"):
    sys.exit(0)
cg = first["cgroup"]
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    try:
        procs = os.open("cgroup.procs", os.O_WRONLY, dir_fd=fds[0])
        os.write(procs, b"0")
        os.close(procs)
    except OSError:
        os._exit(2)
    if os.read(r, 1) != b"x":
        os._exit(3)
    t = socket.socket()
    try:
        t.connect(("127.0.0.1", int(sys.argv[3])))
        os._exit(0)
    except OSError as e:
        os._exit(100 + e.errno if e.errno < 100 else 99)
os.close(r)
while b"\n" not in buf:
    more = s.recv(4096)
    if not more:
        break
    buf += more
second = json.loads(buf.split(b"\n", 1)[0])
print(json.dumps({"second": second}), flush=True)
if second.get("ok"):
    os.write(w, b"x")
os.close(w)
_, status = os.waitpid(child, 0)
print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                  "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                  "cgroup_left": os.path.exists(cg)}), flush=True)
if second.get("ok"):
    s.sendall((json.dumps({"v": 1, "op": "detach", "cgroup": cg, "remove": True}) + "\n").encode())
    print(s.makefile("rb").readline().decode().strip(), flush=True)
"#;
    // A loopback port nothing listens on: refused by the kernel (111)
    // unless the policy denies it first (EPERM).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let client = |policy: &Value| -> Vec<Value> {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", py])
            .arg(agent.socket())
            .arg(policy.to_string())
            .arg(port.to_string())
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", sbx_tests::describe(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
    };

    let r = client(&json!({"default": "deny", "loopback": "none", "dns": "host"}));
    let first = ok(&r[0]["first"]);
    assert_eq!(first["id"], 7, "{first}");
    assert_eq!(first["stage"], "made", "{first}");
    assert_eq!(r[0]["fds"], 1, "root's first reply carries the cgroup's fd: {r:?}");
    assert!(first.get("generation").is_none(), "the first reply comes before the attach: {first}");
    let second = ok(&r[1]["second"]);
    assert_eq!((second["id"].clone(), second["stage"].clone()), (json!(7), json!("attached")), "{second}");
    assert!(second["generation"].as_u64().is_some(), "{second}");
    assert_eq!(r[2]["exit"], 101, "the child let on after the attach is held (EPERM): {r:?}");
    ok(&r[3]);

    let many: Vec<String> = (0..12).map(|i| format!("198.18.{}.0/24", 2 * i)).collect();
    let r = client(&json!({"default": "deny", "dns": "host", "max_rules": 16, "allow": many}));
    assert_eq!(ok(&r[0]["first"])["stage"], "made", "{r:?}");
    let second = &r[1]["second"];
    assert_eq!(code(second), "failed", "{second}");
    assert!(second["error"]["message"].as_str().is_some_and(|m| m.contains("max-rules")), "{second}");
    assert_eq!(second["id"], 7, "{second}");
    // The child never went on: killed in the cgroup, or, when the agent
    // was faster, it found the cgroup removed before it could enter.
    assert!(
        r[2]["signal"] == libc::SIGKILL || r[2]["exit"] == 2,
        "the child waiting for the attach was killed or never entered: {r:?}"
    );
    assert_eq!(r[2]["cgroup_left"], false, "{r:?}");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
    assert!(root.children().iter().all(|c| !c.to_string_lossy().contains("/run-")), "{:?}", root.children());
}

/// `run` through the agent whose policy the agent cannot attach (over its
/// `--max-rules`): the command's process, made in the cgroup meanwhile,
/// never runs the command; the agent's refusal is the error, and nothing
/// is left (no cleanup of a sandbox the agent already removed).
#[test]
fn a_run_whose_policy_the_agent_cannot_attach_runs_nothing() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let dir = TempDir::new_in(std::path::Path::new("/var/tmp"), "staged");
    let marker = dir.path().join("ran");
    let many: Vec<String> = (0..12).map(|i| format!("198.18.{}.0/24", 2 * i)).collect();
    let out = Command::new(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "run", "--dns", "host", "--max-rules", "16"])
        .args(["--allow", &many.join(","), "--fs-write"])
        .arg(dir.path())
        .args(["--", "touch"])
        .arg(&marker)
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sbx-user run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{}", sbx_tests::describe(&out));
    assert!(err.contains("raise --max-rules"), "{}", sbx_tests::describe(&out));
    assert!(!err.contains("cleaning up"), "{}", sbx_tests::describe(&out));
    assert!(!marker.exists(), "the command ran although its policy could not be put in place");
    assert_eq!(ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"], json!([]));
    assert!(root.children().iter().all(|c| !c.to_string_lossy().contains("/run-")), "{:?}", root.children());
}

/// A `run` whose client is gone before the agent could say the policy
/// holds (before the first reply of a staged run, after it, or before the
/// only reply of one that is not): that client never let a command on, so
/// the agent removes the sandbox again instead of leaving it attached.
/// The client stops reading (`shutdown(SHUT_RD)`) at that point, so the
/// agent's reply fails at once with `EPIPE`; the policy of the middle case
/// is large enough that its attach outlasts the client's shutdown.
#[test]
fn a_run_whose_client_leaves_before_the_attach_is_removed() {
    let root = TestCgroup::new();
    let sbx = Sbx::new();
    let agent = Agent::start(&sbx, &[root.path()], "", &[]);
    let py = r#"
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
mode = sys.argv[2]
policy = {"dns": "host"}
if mode == "second":
    policy["allow"] = ["198.18.%d.%d:443" % (i // 250, i % 250) for i in range(5000)]
if mode != "second":
    s.shutdown(socket.SHUT_RD)
s.sendall((json.dumps({"v": 1, "op": "run", "staged": mode != "only", "policy": policy}) + "\n").encode())
if mode == "second":
    data = b""
    while b"\n" not in data:
        data += socket.recv_fds(s, 4096, 1)[0]
    s.shutdown(socket.SHUT_RD)
    print(data.split(b"\n")[0].decode(), flush=True)
time.sleep(0.5)
"#;
    for (mode, says) in [
        ("first", "the first reply to its run could not be sent"),
        ("second", "the reply to its run could not be sent"),
        ("only", "the reply to its run could not be sent"),
    ] {
        let before = agent.log_text().matches(says).count();
        let out =
            Command::new("/usr/bin/python3").args(["-c", py]).arg(agent.socket()).arg(mode).output().expect("python3");
        assert!(out.status.success(), "{}", sbx_tests::describe(&out));
        if mode == "second" {
            let first: Value = serde_json::from_slice(&out.stdout).expect("the first reply");
            assert_eq!(ok(&first)["stage"], "made", "{first}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sandboxes = ok(&agent.call(&json!({"v": 1, "op": "list"})))["sandboxes"].clone();
            let cgroups = root.children().iter().filter(|c| c.to_string_lossy().contains("/run-")).count();
            if sandboxes == json!([]) && cgroups == 0 && agent.log_text().matches(says).count() > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: left {sandboxes} and {cgroups} cgroups; the agent's log:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
