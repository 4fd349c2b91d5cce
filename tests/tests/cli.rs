//! The command line itself, through the real binary: exit statuses (`run`
//! passes the command's through and uses 125 for its own and usage errors;
//! the others exit 0, 1 for a negative verdict, 125 for errors), the
//! forgotten `--`, and what `status` says without root.

use std::{os::unix::process::CommandExt as _, process::Output};

use sbx_tests::{describe, Sbx, TempDir, TestCgroup};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_forgotten_separator_says_where_the_command_goes_and_exits_125() {
    let sbx = Sbx::new();
    let parent = TestCgroup::new();
    let dir = TempDir::new("cli");
    let marker = dir.path().join("ran");
    let marker = marker.to_str().expect("UTF-8");
    let out = sbx.output(&["run", "--cgroup-parent", parent.arg(), "--profile", "offline", "touch", marker]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("put the command after --"), "{err}");
    // The corrected command line, ready to copy.
    let fixed = format!("run --cgroup-parent {} --profile offline -- touch {marker}", parent.arg());
    assert!(err.contains(&fixed), "the corrected line `{fixed}` is not shown: {err}");
    assert!(!std::path::Path::new(marker).exists(), "the command must not have run");
    assert!(parent.children().is_empty(), "nothing may be set up: {:?}", parent.children());

    // An option value equal to the command's name is not mistaken for it.
    let out = sbx.output(&["run", "--profile", "offline", "--allow", "echo", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(stderr(&out).contains("--allow echo -- echo hi"), "{}", describe(&out));

    // Arguments a shell would need quoted come back quoted.
    let out = sbx.output(&["run", "--profile", "offline", "sh", "-c", "echo 'a b'"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(stderr(&out).contains(r"-- sh -c 'echo '\''a b'\'''"), "{}", describe(&out));

    // No command at all.
    let out = sbx.output(&["run", "--profile", "offline"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(stderr(&out).contains("put the command after --"), "{}", describe(&out));
}

#[test]
fn usage_errors_exit_125_in_every_subcommand_and_help_exits_0() {
    let sbx = Sbx::new();
    for args in [
        &["run", "--no-such-option", "--", "true"][..],
        &["run", "--max-rules", "3", "--", "true"],
        &["status", "--no-such-option"],
        &["check", "--max-rules", "many"],
        &["verify"],
        &["attach", "--cgroup"],
        &["no-such-subcommand"],
        &[],
    ] {
        let out = sbx.output(args);
        assert_eq!(out.status.code(), Some(125), "sbx-user {args:?}: {}", describe(&out));
        assert!(!stderr(&out).is_empty(), "sbx-user {args:?} says why: {}", describe(&out));
    }
    for args in [&["--help"][..], &["run", "--help"], &["verify", "--help"], &["check", "--help"]] {
        let out = sbx.ok(args);
        assert!(stdout(&out).contains("EXIT STATUS"), "sbx-user {args:?} documents exit statuses: {}", describe(&out));
        assert!(stdout(&out).contains("125"), "{}", describe(&out));
    }
    let out = sbx.ok(&["--version"]);
    assert!(stdout(&out).starts_with("sbx-user "), "{}", describe(&out));
}

#[test]
fn check_exits_1_for_an_invalid_policy_and_125_when_it_cannot_read_one() {
    let sbx = Sbx::new();
    sbx.ok(&["check", "--profile", "agent"]);
    let out = sbx.says_no(&["check", "--allow", "not-an-address"]);
    assert!(stderr(&out).contains("not-an-address"), "{}", describe(&out));
    let out = sbx.says_no(&["check", "--json", "--allow", "10.0.0.0/8:99999"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(v["valid"], false, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("99999")), "{v}");
    let dir = TempDir::new("cli");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[network]\ndefault = \"maybe\"\n").expect("write");
    let out = sbx.says_no(&["check", "--policy", bad.to_str().expect("UTF-8")]);
    assert!(stderr(&out).contains("bad.toml:2"), "{}", describe(&out));
    let missing = dir.path().join("missing.toml");
    let out = sbx.fails(&["check", "--policy", missing.to_str().expect("UTF-8")]);
    assert!(stderr(&out).contains("cannot read policy file"), "{}", describe(&out));
}

#[test]
fn verify_exits_0_when_enforcing_1_when_not_and_125_on_errors() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    sbx.says_no(&["verify", "--cgroup", cg.arg()]);
    sbx.attach(&cg, &["--profile", "offline"]);
    sbx.ok(&["verify", "--cgroup", cg.arg()]);
    sbx.ok(&["status", "--cgroup", cg.arg()]);
    sbx.detach(&cg);
    let out = sbx.says_no(&["verify", "--cgroup", cg.arg()]);
    assert!(stderr(&out).contains("not fully enforced"), "{}", describe(&out));
    let gone = cg.path().join("no-such-cgroup");
    let out = sbx.fails(&["verify".as_ref(), "--cgroup".as_ref(), gone.as_os_str()]);
    assert!(!stderr(&out).is_empty(), "{}", describe(&out));
    // Errors of the other subcommands are sbx's own: 125, never 1.
    sbx.fails(&["detach", "--cgroup", cg.arg()]);
    sbx.fails(&["status", "--cgroup", cg.arg()]);
    sbx.fails(&["attach", "--cgroup", cg.arg(), "--allow", "not-an-address"]);
}

#[test]
fn run_passes_the_commands_status_through_even_when_it_is_1_2_or_125() {
    let sbx = Sbx::new();
    let parent = TestCgroup::new();
    for code in [0, 1, 2, 3, 124, 125, 126, 127, 200] {
        let script = format!("exit {code}");
        let out =
            sbx.output(&["run", "--cgroup-parent", parent.arg(), "--profile", "offline", "--", "sh", "-c", &script]);
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    }
    let out = sbx.output(&["run", "--cgroup-parent", parent.arg(), "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{}", describe(&out));
}

#[test]
fn status_without_root_says_what_reading_needs_and_exits_125() {
    let sbx = Sbx::new();
    for sub in ["status", "events"] {
        let mut cmd = sbx.cmd();
        cmd.arg(sub).uid(65534).gid(65534);
        let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
        let err = stderr(&out);
        assert!(err.contains("loads nothing"), "{sub} must say it loads nothing: {err}");
        assert!(!err.contains("load and attach"), "{sub} must not claim to load programs: {err}");
        assert!(err.contains("CAP_BPF") && err.contains("bpffs"), "{err}");
        assert!(err.contains("Hint: run it with sudo"), "{err}");
    }
    let mut cmd = sbx.cmd();
    cmd.arg("status").uid(65534).gid(65534);
    let err = stderr(&cmd.output().expect("status"));
    assert!(err.contains("CAP_NET_ADMIN") && err.contains("BPF_PROG_QUERY"), "{err}");
}
