//! The command line itself, through the real binary: exit statuses (`run`
//! passes the command's through and uses 125 for its own and usage errors;
//! the others exit 0, 1 for a negative verdict, 125 for errors), the
//! forgotten `--`, and what `status` says without root.

use std::{os::unix::process::CommandExt as _, process::Output};

use sbx_tests::{describe, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;

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

    // No command at all, with or without the separator.
    for args in [&["run", "--profile", "offline"][..], &["run", "--profile", "offline", "--"]] {
        let out = sbx.output(args);
        assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
        assert!(stderr(&out).contains("put the command after --"), "{}", describe(&out));
        assert!(stderr(&out).contains("run --profile offline -- COMMAND"), "{}", describe(&out));
    }
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

/// A policy file of `n` distinct allow rules (no host names: nothing to
/// resolve), big enough that loading it takes longer than the progress delay.
fn big_policy(dir: &TempDir, n: u32) -> String {
    use std::fmt::Write as _;
    let mut toml = String::from("[network]\ndefault = \"deny\"\nallow = [\n");
    for i in 0..n {
        let _ = writeln!(toml, "\"11.{}.{}.{}:443\",", i >> 16, (i >> 8) & 255, i & 255);
    }
    toml.push_str("]\n");
    let path = dir.path().join(format!("{n}.toml"));
    std::fs::write(&path, toml).expect("write policy");
    path.to_str().expect("UTF-8").to_owned()
}

/// Runs `sh -c LINE` on a pseudo-terminal (util-linux `script`) and returns
/// what the terminal received.
fn on_a_terminal(line: &str) -> String {
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running script(1) for a pseudo-terminal: {e}"));
    assert!(out.status.success(), "{line}: {}", describe(&out));
    stdout(&out)
}

#[test]
fn long_loads_show_progress_on_a_terminal_and_nothing_on_a_pipe() {
    let sbx = Sbx::new();
    let dir = TempDir::new("cli");
    // Big enough to take longer than the progress delay in a debug build
    // (40,000 rules no longer do since compile got faster).
    let policy = big_policy(&dir, 200_000);
    let bin = sbx_tests::sbx_user_bin();
    let bin = bin.to_str().expect("UTF-8");

    // Not a terminal: stderr gets nothing at all.
    let out = sbx.ok(&["check", "--policy", &policy, "--max-rules", "400000"]);
    assert!(out.stderr.is_empty(), "progress on a pipe: {}", describe(&out));
    assert!(stdout(&out).contains("policy is valid"), "{}", describe(&out));

    // A terminal: a line redrawn in place, erased at the end.
    let seen = on_a_terminal(&format!("{bin} check --policy '{policy}' --max-rules 400000 >/dev/null"));
    assert!(seen.contains("\r\x1b[Ksbx-user: checking the policy"), "no progress line: {seen:?}");
    assert!(seen.ends_with("\r\x1b[K"), "the progress line must be erased at the end: {seen:?}");
    assert!(!seen.contains('\n'), "progress redraws one line, it does not scroll: {seen:?}");

    // -v: the log lines say what happens; no progress line among them.
    let seen = on_a_terminal(&format!("{bin} -v check --policy '{policy}' --max-rules 400000 >/dev/null"));
    assert!(!seen.contains("checking the policy"), "{seen:?}");

    // Attach counts the map entries it fills (enough of them that the
    // 100 ms redraws catch the count at least once).
    let policy = big_policy(&dir, 100_000);
    let cg = TestCgroup::new();
    let state = sbx.state_dir().to_str().expect("UTF-8");
    let seen = on_a_terminal(&format!(
        "SBX_STATE_DIR='{state}' {bin} attach --cgroup '{}' --policy '{policy}' --max-rules 400000 >/dev/null",
        cg.arg()
    ));
    assert!(seen.contains("sbx-user: loading the policy"), "{seen:?}");
    assert!(seen.contains("filling the policy maps ") && seen.contains("/100,013 ("), "no map-fill count: {seen:?}");
    assert!(seen.ends_with("\r\x1b[K"), "{seen:?}");
    sbx.detach(&cg);
}
