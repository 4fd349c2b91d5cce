//! Upgrades: sandboxes attached by an sbx from before program sets (each
//! with its own programs and maps) and by one from before the host's shared
//! policy maps (a program set with three maps per policy) stay enforced
//! under this build, and `update` migrates them to this build's program set
//! with no moment of no enforcement. The old binaries are built from the
//! repository's history by `cargo xtask test` (`SBX_LEGACY_BIN`,
//! `SBX_PREVIOUS_BIN`).

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use sbx_tests::{bpffs, describe, probe, Agent, Background, Fixture, Probe, Proto::Tcp, Sbx};
use serde_json::json;
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;

/// The older `sbx-user` of `contract` that `var` names.
fn older_bin(var: &str, contract: u32) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_default();
    assert!(
        p.is_file(),
        "{var} does not name the sbx-user of contract {contract} ({}); `cargo xtask test` builds it from the \
         repository's history",
        p.display()
    );
    p
}

/// The contract-1 `sbx-user`: each sandbox with its own programs and maps.
fn legacy_bin() -> PathBuf {
    older_bin("SBX_LEGACY_BIN", 1)
}

/// The `sbx-user` of contract 5: a program set with per-policy maps.
fn previous_bin() -> PathBuf {
    older_bin("SBX_PREVIOUS_BIN", 5)
}

fn completed(log: &std::path::Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().skip(1).filter(|l| !l.starts_with("done ")).map(str::to_owned).collect()
}

fn wait_for(log: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while completed(log).len() < n {
        assert!(Instant::now() < deadline, "the connect loop stalled at {}", completed(log).len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_sandbox_of_an_older_sbx_stays_enforced_and_migrates_with_no_gap() {
    let legacy = legacy_bin();
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let allow = format!("{}:8080", n.ns_v4);
    let out = Command::new(&legacy)
        .args(["attach", "--cgroup", fx.cg.arg(), "--allow", &allow])
        .env("SBX_STATE_DIR", fx.sbx.state_dir())
        .output()
        .expect("running the old sbx-user");
    assert!(out.status.success(), "old attach: {}", describe(&out));
    let pins = bpffs().join("sbx").join(fx.cg.id().to_string());
    assert!(pins.join("map_SBX_CONFIG").exists(), "a sandbox of contract 1: its own maps are pinned");

    // This build sees it, reports what holds it, and it enforces.
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["held_by"], "legacy", "{e:#}");
    assert!(e["problem"].is_null(), "{e:#}");
    let events = fx.sbx.events(&fx.cg);
    assert!(events.iter().any(|v| v["destination"] == format!("{}:8080", n.ns_v4b)), "old events read: {events:?}");
    fx.sbx.ok(&["verify", "--cgroup", fx.cg.arg()]);

    migrate_with_no_gap(&fx, &p, &allow);
    assert!(!pins.join("map_SBX_CONFIG").exists(), "the old maps were unpinned");
    fx.sbx.detach(&fx.cg);
    assert!(!Sbx::has_pins(fx.cg.id()));
}

#[test]
fn a_sandbox_of_an_older_program_set_stays_enforced_and_migrates_with_no_gap() {
    let previous = previous_bin();
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let allow = format!("{}:8080", n.ns_v4);
    let old = |cg: &str| {
        let out = Command::new(&previous)
            .args(["attach", "--cgroup", cg, "--allow", &allow])
            .env("SBX_STATE_DIR", fx.sbx.state_dir())
            .output()
            .expect("running the contract-5 sbx-user");
        assert!(out.status.success(), "old attach: {}", describe(&out));
    };
    old(fx.cg.arg());
    let other = fx.cg.child("other");
    old(other.to_str().expect("UTF-8"));

    // This build reads the older set's slot and counters, names the set,
    // and the sandbox enforces.
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    let e = fx.sbx.status(&fx.cg);
    let old_set = e["held_by"]["set"]["id"].as_str().unwrap_or_else(|| panic!("held by a set: {e:#}")).to_owned();
    assert_eq!(e["held_by"]["set"]["current"], false, "{e:#}");
    assert!(e["held_by"]["set"]["policy"].as_u64().is_some_and(|p| p > 0), "its slot is read: {e:#}");
    fx.sbx.ok(&["verify", "--cgroup", fx.cg.arg()]);

    migrate_with_no_gap(&fx, &p, &allow);

    // The other one is detached by this build; then nothing uses the old
    // set, and gc removes it.
    let other_id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&other).expect("stat"));
    fx.sbx.ok(&["detach", "--cgroup", other.to_str().expect("UTF-8")]);
    assert!(!Sbx::has_pins(other_id));
    let set_dir = bpffs().join("sbx").join(format!("set-{old_set}"));
    assert!(set_dir.exists(), "the old set is still pinned");
    let out = fx.sbx.ok(&["gc"]);
    assert!(!set_dir.exists(), "gc removed the unused older set: {}", describe(&out));
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "the migrated sandbox is untouched");
    fx.sbx.detach(&fx.cg);
}

/// `update` migrates the fixture's sandbox to this build's program set
/// under a stream of connects (no gap), and it then enforces and verifies.
fn migrate_with_no_gap(fx: &Fixture, p: &Probe, allow: &str) {
    let n = &fx.net;
    no_gap_during(fx, p, || {
        let out = fx.sbx.ok(&["-v", "update", "--cgroup", fx.cg.arg(), "--allow", allow]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("migrated"), "{}", describe(&out));
    });
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["held_by"]["set"]["current"], true, "now held by this build's set: {e:#}");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    fx.sbx.ok(&["verify", "--cgroup", fx.cg.arg()]);
}

/// Runs `switch` under a stream of connects from `inside` to the allowed
/// and the denied test host (port 8080), and asserts that the denied host
/// never got through: no moment without enforcement. A moment where both
/// are refused (new programs before their slot is written) is allowed.
fn no_gap_during(fx: &Fixture, inside: &Probe, switch: impl FnOnce()) {
    let n = &fx.net;
    let log = n.dir().join("migrate.log");
    let stop = n.dir().join("migrate.stop");
    let mut cmd = Command::new(fx.probe.bin());
    cmd.args(["alternate", &n.ns_v4.to_string(), &n.ns_v4b.to_string(), "8080", stop.to_str().expect("UTF-8"), "tcp"]);
    let bg = Background::spawn_logged("sbx-probe alternate", &mut cmd, inside.place(), &log);
    wait_for(&log, 50);
    switch();
    let after = completed(&log).len();
    wait_for(&log, after + 50);
    fs::write(&stop, "").expect("stop file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log).unwrap_or_default().contains("\ndone ") {
        assert!(Instant::now() < deadline, "the loop did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(bg);
    for (i, l) in completed(&log).iter().enumerate() {
        let f: Vec<&str> = l.split(' ').collect();
        assert!(matches!(f[1..], ["ok" | "EPERM", "EPERM"]), "iteration {i}: {l:?}: the denied host got through");
    }
}

#[test]
fn the_agent_takes_over_a_sandbox_of_an_older_sbx_with_no_gap() {
    // An agent of this build starting on a host whose sandboxes an older
    // sbx made (here the contract-1 CLI, the older build CI has; an older
    // agent makes the same pins and records as its CLI) adopts them from
    // bpffs and the records, and moves one to its own program set on the
    // first update, enforcing throughout.
    let legacy = legacy_bin();
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let allow = format!("{}:8080", n.ns_v4);
    let job = fx.cg.child("job");
    let out = Command::new(&legacy)
        .args(["attach", "--cgroup", job.to_str().expect("UTF-8"), "--allow", &allow])
        .env("SBX_STATE_DIR", fx.sbx.state_dir())
        .output()
        .expect("running the old sbx-user");
    assert!(out.status.success(), "old attach: {}", describe(&out));
    let agent = Agent::start(&fx.sbx, &[fx.cg.path()], "", &[]);
    let r = agent.call(&json!({"v": 1, "op": "status", "cgroup": "job"}));
    assert_eq!(r["ok"], true, "the agent knows the older sandbox: {r}");
    let p = fx.probe.in_cgroup(&job);
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    no_gap_during(&fx, &p, || {
        let r = agent.call(&json!({"v": 1, "op": "update", "cgroup": "job", "policy": {"allow": [allow]}}));
        assert_eq!(r["ok"], true, "update through the agent: {r}");
    });
    let r = agent.call(&json!({"v": 1, "op": "status", "cgroup": "job"}));
    assert_eq!(r["ok"], true, "{r}");
    assert!(!r.to_string().contains("legacy"), "now held by this build's set: {r}");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    // Not made by the agent: it detaches the sandbox and leaves the cgroup.
    let r = agent.call(&json!({"v": 1, "op": "detach", "cgroup": "job"}));
    assert_eq!(r["ok"], true, "{r}");
    let job_id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&job).expect("stat"));
    assert!(!Sbx::has_pins(job_id) && job.exists());
}

#[test]
fn migrate_moves_every_sandbox_of_an_older_sbx_under_its_recorded_policy() {
    let legacy = legacy_bin();
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let out = Command::new(&legacy)
        .args(["attach", "--cgroup", fx.cg.arg(), "--allow", &format!("{}:8080", n.ns_v4)])
        .env("SBX_STATE_DIR", fx.sbx.state_dir())
        .output()
        .expect("running the old sbx-user");
    assert!(out.status.success(), "old attach: {}", describe(&out));
    let out = fx.sbx.ok(&["migrate", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("would migrate {}", fx.cg.arg())),
        "{}",
        describe(&out)
    );
    assert_eq!(fx.sbx.status(&fx.cg)["held_by"], "legacy", "a dry run moves nothing");
    let out = fx.sbx.ok(&["migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("migrated {}", fx.cg.arg())), "{}", describe(&out));
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["held_by"]["set"]["current"], true, "{e:#}");
    // The recorded policy holds, on the new programs.
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
    let out = fx.sbx.ok(&["migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to migrate"), "{}", describe(&out));
    fx.sbx.detach(&fx.cg);
}

/// A program set of another build can have larger elements than this one
/// knows (the `Stats` cell grew in contract 5): reading one into a buffer
/// sized for this build's layout must be refused, not overrun the buffer
/// (an `sbx-user status` aborted with `malloc(): invalid size` that way
/// while a newer build's set was pinned on this host).
#[test]
fn a_map_element_larger_than_the_buffer_is_refused() {
    use sbx_user::sys;
    use std::os::fd::AsFd as _;
    sbx_tests::require_root();
    let map = sys::map_create(sys::MapType::PerCpuArray, 4, 352, 1, 0, "sbx_t_size").expect("creating a per-CPU array");
    let key = 0u32.to_ne_bytes();
    // A cell of 216 bytes per CPU, as an older build sized it.
    let cpus = fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible CPUs");
    let last: usize = cpus.trim().rsplit(['-', ',']).next().and_then(|n| n.parse().ok()).expect("a CPU number");
    let mut small = vec![0u8; 216 * (last + 1)];
    let e = sys::map_lookup(map.as_fd(), &key, &mut small).expect_err("a short buffer is refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("another sbx build"), "{e}");
    assert!(sys::map_update(map.as_fd(), &key, &small, 0).is_err(), "an update from a short buffer is refused");
    let mut enough = vec![0u8; 352 * (last + 1)];
    sys::map_lookup(map.as_fd(), &key, &mut enough).expect("a buffer of the map's size is read");
    sys::map_update(map.as_fd(), &key, &enough, 0).expect("and written");
    assert!(sys::map_lookup(map.as_fd(), &[0u8; 2], &mut enough).is_err(), "a short key is refused");
}

/// `run` of this build through an agent of an older build, which predates
/// the `staged` run request (it refuses the field): `run` asks again for
/// the one reply the older agent gives, and the command runs held by the
/// policy; the sandbox is removed after.
#[test]
fn run_through_an_agent_older_than_staged_replies_asks_again() {
    let previous = previous_bin();
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let agent = Agent::start_bin(&previous, &fx.sbx, &[fx.cg.path()], "", &[]);
    let connect = format!(
        "import socket\nfor a in ('{}', '{}'):\n    s = socket.socket(); s.settimeout(5)\n    try:\n        \
         s.connect((a, 8080)); print('ok')\n    except OSError as e: print(e.errno)\n",
        n.ns_v4, n.ns_v4b
    );
    let out = Command::new(sbx_tests::sbx_user_bin())
        .args(["--agent-socket", &agent.socket_arg(), "-v", "run", "--dns", "host"])
        .args(["--allow", &format!("{}:8080", n.ns_v4), "--", "python3", "-c", &connect])
        .env("SBX_STATE_DIR", fx.sbx.state_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sbx-user run");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n1\n", "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("predates staged run replies"), "{}", describe(&out));
    let r = agent.call(&json!({"v": 1, "op": "list"}));
    assert_eq!(r["sandboxes"], json!([]), "{r}");
    assert!(fx.cg.children().iter().all(|c| !c.to_string_lossy().contains("/run-")), "{:?}", fx.cg.children());
}
