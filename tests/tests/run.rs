//! `sbx-user run`: a fresh sandbox cgroup for one command.
//!
//! Every run uses `--cgroup-parent <test cgroup>` (except the test of the
//! default parent), so what it leaves behind is visible and cleaned up.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sbx_tests::{bpffs, cgroup2_mount, describe, probe, Fixture, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use serde_json as _;

/// `sbx-user run --cgroup-parent CG POLICY... -- CMD...`.
fn run(sbx: &Sbx, parent: &TestCgroup, policy: &[&str], command: &[&str]) -> Output {
    let mut cmd = run_cmd(sbx, parent, policy, command);
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_cmd(sbx: &Sbx, parent: &TestCgroup, policy: &[&str], command: &[&str]) -> Command {
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent", parent.arg()]).args(policy).arg("--").args(command);
    cmd
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shell code printing the sandbox cgroup's path and id, and whether its
/// pins and record exist, from inside the sandbox.
const SELF_REPORT: &str = r#"cg="$MNT$(grep '^0::' /proc/self/cgroup | cut -d: -f3-)"
id=$(stat -c %i "$cg")
echo "$cg"
echo "$id"
test -d "$BPFFS/sbx/$id" && echo pins
test -f "$SBX_STATE_DIR/$id.json" && echo record"#;

fn self_report_env(cmd: &mut Command) {
    cmd.env("MNT", cgroup2_mount()).env("BPFFS", bpffs());
}

/// The parent must hold no sandbox cgroup, and the sandbox's pins and
/// record must be gone.
fn assert_cleaned_up(sbx: &Sbx, parent: &TestCgroup, id: Option<u64>) {
    assert_eq!(parent.children(), Vec::<std::path::PathBuf>::new(), "run left its cgroup behind");
    assert!(sbx.records().is_empty(), "run left records: {:?}", sbx.records());
    if let Some(id) = id {
        assert!(!Sbx::has_pins(id), "run left pins for cgroup id {id}");
    }
}

#[test]
fn run_passes_exit_status_stdout_and_stdin() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let out = run(&sbx, &cg, &[], &["sh", "-c", "echo hello; echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(stdout(&out), "hello\n", "stdout is the command's alone");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(run(&sbx, &cg, &[], &["true"]).status.code(), Some(0));

    let mut cmd = run_cmd(&sbx, &cg, &[], &["sh", "-c", "tr a-z A-Z; exit 0"]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawning sbx-user run");
    child.stdin.take().expect("piped").write_all(b"through stdin\n").expect("writing stdin");
    let out = child.wait_with_output().expect("waiting");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "THROUGH STDIN\n");
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_cleans_up_its_cgroup_pins_and_record() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let mut cmd = run_cmd(&sbx, &cg, &["--default", "deny"], &["sh", "-c", SELF_REPORT]);
    self_report_env(&mut cmd);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{}", describe(&out));
    let (path, id) = (Path::new(lines[0]), lines[1].parse::<u64>().expect("an inode number"));
    assert_eq!(path.parent(), Some(cg.path()), "the sandbox cgroup is under --cgroup-parent");
    assert_eq!(&lines[2..], ["pins", "record"], "pinned and recorded while running");
    assert!(!path.exists(), "{} still exists", path.display());
    assert_cleaned_up(&sbx, &cg, Some(id));
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n_and_cleans_up() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    for (sig, code) in [("KILL", 137), ("TERM", 143), ("SEGV", 139)] {
        let out = run(&sbx, &cg, &[], &["sh", "-c", &format!("kill -{sig} $$")]);
        assert_eq!(out.status.code(), Some(code), "SIG{sig}: {}", describe(&out));
        assert_cleaned_up(&sbx, &cg, None);
    }
}

#[test]
fn run_forwards_sigterm_to_the_command_and_cleans_up() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let mut cmd = run_cmd(&sbx, &cg, &[], &["sleep", "100"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
    let pid = i32::try_from(child.id()).expect("pid");
    // Wait until the command is inside its sandbox cgroup.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cg
        .children()
        .iter()
        .any(|c| std::fs::read_to_string(c.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()))
    {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("waiting for sbx-user run");
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_kills_a_grandchild_that_outlives_the_command() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // The subshell forks `sleep` and exits; `sleep` is a grandchild,
    // reparented away from the command, with no pipe to us.
    let script = "( sleep 1000 </dev/null >/dev/null 2>&1 & echo $! ); exit 3";
    let started = Instant::now();
    let out = run(&sbx, &cg, &[], &["sh", "-c", script]);
    assert!(started.elapsed() < Duration::from_secs(10), "run waited for the grandchild");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let pid: u32 = stdout(&out).trim().parse().expect("the grandchild's pid");
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for its new parent to reap it.
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ") && s.contains("(sleep)")) {
        assert!(Instant::now() < deadline, "grandchild {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_enforces_the_policy_on_the_command_and_its_children() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let p = fx.probe.arg();
    let script = format!(
        "{p} connect tcp {a} 8080; {p} connect tcp {a} 8081; {p} fork-connect tcp {b} 8080; \
         {p} connect-thread tcp {v6} 8080; {p} sendto {b} 9999; {p} connect tcp {a} 8081 & wait",
        a = n.ns_v4,
        b = n.ns_v4b,
        v6 = n.ns_v6
    );
    let out = run(&fx.sbx, &fx.cg, &["--allow", &format!("tcp://{}:8080", n.ns_v4)], &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "ok\nerr EPERM\nerr EPERM\nerr EPERM\nerr EPERM\nerr EPERM\n", "{}", describe(&out));
    assert_cleaned_up(&fx.sbx, &fx.cg, None);
}

#[test]
fn nc_and_python_inside_run_get_eperm() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let policy = ["--allow", &format!("{}:8080", n.ns_v4)];
    let a = n.ns_v4.to_string();
    let b = n.ns_v4b.to_string();

    let out = run(&fx.sbx, &fx.cg, &policy, &["nc", "-z", "-w", "3", &a, "8080"]);
    assert_eq!(out.status.code(), Some(0), "nc to the allowed host: {}", describe(&out));
    let out = run(&fx.sbx, &fx.cg, &policy, &["nc", "-v", "-z", "-w", "3", &b, "8080"]);
    assert_eq!(out.status.code(), Some(1), "nc to a denied host: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{}", describe(&out));

    let py = r#"
import errno, socket, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
a, b, v6 = sys.argv[1:4]
print(attempt(lambda: socket.create_connection((a, 8080), 3).close()))
print(attempt(lambda: socket.create_connection((b, 8080), 3).close()))
print(attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"x", (v6, 53))))
print(attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).bind(("0.0.0.0", 8080))))
"#;
    let v6 = n.ns_v6.to_string();
    let out = run(&fx.sbx, &fx.cg, &policy, &["python3", "-c", py, &a, &b, &v6]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "ok\nEPERM\nEPERM\nEPERM\n", "{}", describe(&out));
    assert_cleaned_up(&fx.sbx, &fx.cg, None);
}

#[test]
fn run_uses_sbx_under_the_cgroup2_mount_by_default() {
    let sbx = Sbx::new();
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--", "sh", "-c", SELF_REPORT]);
    self_report_env(&mut cmd);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let path = Path::new(text.lines().next().expect("a path"));
    assert_eq!(path.parent(), Some(cgroup2_mount().join("sbx").as_path()), "{text}");
    assert!(path.file_name().is_some_and(|f| f.to_string_lossy().starts_with("run-")), "{text}");
    assert!(!path.exists(), "{} was left behind", path.display());
    let id: u64 = text.lines().nth(1).expect("an id").parse().expect("an inode number");
    assert!(!Sbx::has_pins(id));
    assert!(sbx.records().is_empty());
}

#[test]
fn run_setup_failures_have_their_exit_codes_and_leave_nothing() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let err = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = run(&sbx, &cg, &["--deny", "example.com"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("deny rules cannot name hosts"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    let out = run(&sbx, &cg, &[], &["/nonexistent/sbx-test-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(err(&out).contains("/nonexistent/sbx-test-command"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    // Not under /tmp: the command sees a private one.
    let dir = TempDir::new_in(Path::new("/var/tmp"), "run");
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    let out = run(&sbx, &cg, &[], &[not_exec.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    // A --cgroup-parent outside the cgroup2 hierarchy.
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent"]).arg(dir.path()).args(["--", "true"]);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("is not a cgroup v2 directory"), "{}", describe(&out));
    assert!(sbx.records().is_empty());
}
