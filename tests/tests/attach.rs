//! `sbx-user attach`, `detach` and `status` on an existing cgroup.

use std::{fs, os::unix::fs::MetadataExt as _};

use sbx_tests::{describe, probe, Fixture, Proto::Tcp, Sbx, TempDir};
// A dependency of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sorted(v: &serde_json::Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|h| h.as_str().expect("hook names are strings").to_owned())
        .collect();
    s.sort();
    s
}

/// All six `sock_addr` hooks enforce (sbx may attach more hooks besides)
/// and none is missing.
fn assert_enforcing(e: &serde_json::Value) {
    let on = sorted(&e["enforcing_hooks"]);
    for hook in sbx_tests::all_hooks() {
        assert!(on.iter().any(|h| h == hook), "{hook} is not enforcing: {e:#}");
    }
    assert_eq!(sorted(&e["missing_hooks"]), Vec::<String>::new(), "{e:#}");
}

#[test]
fn attach_enforces_after_the_cli_has_exited() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    // `attach` is a separate process: by the time `output()` returns it
    // has exited, and only the pinned links hold the programs.
    let out = fx.sbx.attach(&fx.cg, &["--allow", &format!("{}:8080", n.ns_v4)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("attached to {}", fx.cg.arg())), "{}", describe(&out));
    assert_eq!(fx.cg.prog_counts(), sbx_tests::per_hook(1), "one program per hook on the cgroup");
    assert!(Sbx::has_pins(fx.cg.id()));
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "err EPERM");
    assert_eq!(fx.outside().connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
}

#[test]
fn detach_restores_access_and_removes_everything() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--default", "deny"]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(fx.sbx.records().len(), 1);

    let out = fx.sbx.detach(&fx.cg);
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached from"), "{}", describe(&out));
    assert_eq!(fx.cg.prog_counts(), sbx_tests::per_hook(0));
    assert!(!Sbx::has_pins(fx.cg.id()), "pins are removed");
    assert_eq!(fx.sbx.records(), Vec::<std::path::PathBuf>::new(), "the record is removed");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "ok");

    let out = fx.sbx.fails(&["status", "--cgroup", fx.cg.arg()]);
    assert!(stderr(&out).contains("sbx is not attached to"), "{}", describe(&out));
    let out = fx.sbx.fails(&["detach", "--cgroup", fx.cg.arg()]);
    assert!(stderr(&out).contains("sbx is not attached to"), "{}", describe(&out));
}

#[test]
fn status_json_shows_the_sandbox_and_all_six_hooks() {
    let fx = Fixture::new(probe!());
    let rule = format!("{}:8080", fx.net.ns_v4);
    fx.attach(&["--allow", &rule, "--loopback", "3128"]);
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["cgroup"], fx.cg.arg(), "{e:#}");
    assert_enforcing(&e);
    assert!(e["problem"].is_null(), "{e:#}");
    assert_eq!(e["by"], "attach", "{e:#}");
    assert_eq!(e["policy"]["default"], "deny", "{e:#}");
    assert_eq!(e["policy"]["rules"][0]["text"], rule.as_str(), "{e:#}");
    assert_eq!(e["policy"]["rules"][0]["action"], "allow", "{e:#}");

    // The same sandbox in the unfiltered listing, and in the text output.
    let out = fx.sbx.ok(&["status", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(all.as_array().expect("array").iter().any(|x| x["cgroup_id"] == fx.cg.id()), "{all:#}");
    let out = fx.sbx.ok(&["status", "--cgroup", fx.cg.arg()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{} (cgroup id {}): enforcing", fx.cg.arg(), fx.cg.id())), "{text}");
}

#[test]
fn second_attach_without_replace_fails_and_keeps_the_first() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let out = fx.sbx.fails(&["attach", "--cgroup", fx.cg.arg(), "--default", "allow"]);
    let err = stderr(&out);
    assert!(err.contains("already attached") && err.contains("--replace"), "{}", describe(&out));
    assert_eq!(fx.cg.prog_counts(), sbx_tests::per_hook(1), "still exactly one program per hook");
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "the first policy is still in force");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["default"], "deny", "{e:#}");
    assert!(e["problem"].is_null(), "{e:#}");
}

#[test]
fn replace_swaps_the_policy_in_place() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let (rule_a, rule_b) = (format!("{}:8080", n.ns_v4), format!("{}:8080", n.ns_v4b));
    fx.attach(&["--allow", &rule_a]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");

    let out = fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", &rule_b]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replaced policy on"), "{}", describe(&out));
    assert_eq!(fx.cg.prog_counts(), sbx_tests::per_hook(1), "replaced, not stacked");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["rules"][0]["text"], rule_b.as_str(), "{e:#}");
    assert_enforcing(&e);

    // A bad replacement policy leaves the current one in force.
    let out = fx.sbx.fails(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", "not-an-address"]);
    assert!(stderr(&out).contains("not-an-address"), "{}", describe(&out));
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");

    // --replace on a fresh cgroup just attaches.
    fx.sbx.detach(&fx.cg);
    fx.sbx.ok(&["attach", "--replace", "--cgroup", fx.cg.arg(), "--allow", &rule_a]);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
}

#[test]
fn attach_to_a_non_cgroup_path_fails_clearly_and_changes_nothing() {
    let sbx = Sbx::new();
    let dir = TempDir::new("not-a-cgroup");
    let file = dir.path().join("file");
    fs::write(&file, "").expect("writing a file");
    let missing = dir.path().join("missing");
    for (path, why) in
        [(dir.path().to_owned(), "not cgroup2"), (file.clone(), "not a directory"), (missing, "No such file")]
    {
        let out = sbx.fails(&[
            "attach".as_ref(),
            "--cgroup".as_ref(),
            path.as_os_str(),
            "--default".as_ref(),
            "deny".as_ref(),
        ]);
        let err = stderr(&out);
        assert!(err.contains("is not a cgroup v2 directory") && err.contains(why), "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
        if let Ok(m) = fs::metadata(&path) {
            assert!(!Sbx::has_pins(m.ino()), "no pins for {}", path.display());
        }
    }
    assert!(sbx.records().is_empty(), "no records: {:?}", sbx.records());
    // A file inside the cgroup2 hierarchy is not a cgroup either.
    let cg = sbx_tests::TestCgroup::new();
    let out = sbx.fails(&["attach".as_ref(), "--cgroup".as_ref(), cg.path().join("cgroup.procs").as_os_str()]);
    assert!(stderr(&out).contains("not a directory"), "{}", describe(&out));
    assert_eq!(cg.prog_counts(), sbx_tests::per_hook(0));
    assert!(sbx.records().is_empty());
}

#[test]
fn a_bad_policy_fails_before_anything_is_attached() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let dir = TempDir::new("policy");
    let unknown_key = dir.path().join("unknown-key.toml");
    fs::write(&unknown_key, "[network]\ndefault = \"deny\"\nallw = [\"10.0.0.1\"]\n").expect("write");
    let bad_rule = dir.path().join("bad-rule.toml");
    fs::write(&bad_rule, "[network]\n\nallow = [\"10.0.0.1:80\",\n  \"10.0.0.300\"]\n").expect("write");
    let cases: [(&[&str], &str); 9] = [
        (&["--deny", "example.com:443"], "deny rules cannot name hosts"),
        (&["--allow", "10.0.0.1:70000"], "out of range"),
        (&["--deny", "ftp://10.0.0.1"], "unknown protocol"),
        (&["--default", "maybe"], "default must be"),
        (&["--loopback", "sometimes"], "--loopback"),
        (&["--proxy", "127.0.0.1:3128", "--default", "allow"], "contradicts proxy-only mode"),
        (&["--profile", "nope"], "no such profile"),
        (&["--policy", unknown_key.to_str().expect("UTF-8")], "unknown-key.toml:3: unknown field `allw`"),
        (&["--policy", bad_rule.to_str().expect("UTF-8")], "bad-rule.toml:4"),
    ];
    for (policy, message) in cases {
        let mut args = vec!["attach", "--cgroup", fx.cg.arg()];
        args.extend_from_slice(policy);
        let out = fx.sbx.fails(&args);
        assert!(stderr(&out).contains(message), "{policy:?}: expected {message:?} in: {}", describe(&out));
        assert_eq!(fx.cg.prog_counts(), sbx_tests::per_hook(0), "{policy:?} attached something");
        assert!(!Sbx::has_pins(fx.cg.id()), "{policy:?} left pins");
        assert!(fx.sbx.records().is_empty(), "{policy:?} left a record");
    }
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok", "nothing is enforced");
}

#[test]
fn event_buffer_sizes_the_sandbox_ring_or_sends_its_events_to_the_host_stream() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let allow = format!("{}:8080", n.ns_v4);
    let pins = sbx_tests::bpffs().join("sbx").join(fx.cg.id().to_string());
    let ring = pins.join("map_SBX_EVENTS");

    // A size the kernel cannot make a ring buffer of is refused before
    // anything is attached.
    let out = fx.sbx.fails(&["attach", "--cgroup", fx.cg.arg(), "--event-buffer", "1000", "--allow", &allow]);
    assert!(stderr(&out).contains("1000 bytes") && stderr(&out).contains("power of two"), "{}", describe(&out));
    assert!(!Sbx::has_pins(fx.cg.id()), "nothing was attached");

    // 0: no ring of its own; the sandbox enforces all the same.
    fx.attach(&["--event-buffer", "0", "--allow", &allow]);
    assert!(pins.is_dir(), "pinned in {}", pins.display());
    assert!(!ring.exists(), "no ring buffer of its own with --event-buffer 0");
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    fx.sbx.ok(&["detach", "--cgroup", fx.cg.arg()]);

    // A size: a ring of exactly that size, which the sandbox's events reach.
    fx.attach(&["--event-buffer", "65536", "--allow", &allow]);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&ring)
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map show pinned {}: {}", ring.display(), describe(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
    assert_eq!(info["type"], "ringbuf", "{info}");
    assert_eq!(info["max_entries"], 65536, "{info}");
    let (pid, result) = fx.inside().run_pid(&["connect", "tcp", &n.ns_v4.to_string(), "8081"]);
    assert_eq!(result, "err EPERM");
    let events = fx.sbx.events(&fx.cg);
    assert!(events.iter().any(|e| e["pid"] == pid), "the denial reached the sandbox's ring: {events:#?}");
}

#[test]
fn an_update_killed_between_its_switch_and_its_record_is_reported_and_its_generation_never_reused() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    n.serve_tcp(8081);
    fx.attach(&["--allow", &format!("{}:8080", n.ns_v4)]);
    let gen_of = |e: &serde_json::Value| e["held_by"]["set"]["generation"].as_u64().expect("a generation");
    let first = gen_of(&fx.sbx.status(&fx.cg));
    // Killed at the rename that writes its record: the kernel runs the new
    // policy, the record still describes the old one.
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-o", "/dev/null", "-e", "trace=rename", "-e", "inject=rename:signal=SIGKILL"])
        .arg(sbx_tests::sbx_user_bin())
        .args(["update", "--cgroup", fx.cg.arg(), "--allow", &format!("{}:8081", n.ns_v4)])
        .env("SBX_STATE_DIR", fx.sbx.state_dir());
    let out = cmd.output().expect("running strace (cargo xtask setup --test-deps installs it)");
    assert!(!out.status.success(), "the update was killed: {}", describe(&out));
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8081), "ok", "the new policy holds");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(gen_of(&e), first + 1, "{e:#}");
    let problem = e["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("cut short"), "status says the record is stale: {e:#}");
    let out = fx.sbx.output(&["verify", "--cgroup", fx.cg.arg()]);
    assert!(!out.status.success(), "verify does not vouch for it: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut short"), "{}", describe(&out));
    // The half-written record it left: `gc` leaves it while it could
    // still be a save in progress, and removes it once it is a minute old.
    let partial = fx.sbx.state_dir().join(format!("{}.json.tmp", fx.cg.id()));
    assert!(partial.exists(), "the killed save left {}", partial.display());
    let gc = |sbx: &Sbx| -> serde_json::Value {
        serde_json::from_slice(&sbx.ok(&["gc", "--json"]).stdout).expect("gc --json")
    };
    assert!(!gc(&fx.sbx).to_string().contains(".json.tmp") && partial.exists(), "a fresh one stays");
    let aged = std::process::Command::new("touch").args(["-d", "2 minutes ago"]).arg(&partial).status();
    assert!(aged.is_ok_and(|s| s.success()), "touch -d");
    let v = gc(&fx.sbx);
    assert!(v["partial_records"].to_string().contains(".json.tmp"), "{v}");
    assert!(!partial.exists(), "gc removed the half-written record");
    // The next update gets a generation of its own, past the killed one's
    // (a verdict kept for the killed update's policy can never pass for
    // it), and the record and the kernel agree again.
    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--allow", &format!("{}:8080", n.ns_v4)]);
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(gen_of(&e), first + 2, "{e:#}");
    assert!(e["problem"].is_null(), "{e:#}");
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8081), "err EPERM");
    assert_eq!(fx.inside().connect(Tcp, n.ns_v4, 8080), "ok");
    fx.sbx.ok(&["verify", "--cgroup", fx.cg.arg()]);
}
