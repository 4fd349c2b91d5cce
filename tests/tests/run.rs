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
use sbx_user as _;

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
    let out = sbx.run_output(&cg, &[], &["sh", "-c", "echo hello; echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(stdout(&out), "hello\n", "stdout is the command's alone");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(sbx.run_output(&cg, &[], &["true"]).status.code(), Some(0));

    let mut cmd = sbx.run_cmd(&cg, &[], &["sh", "-c", "tr a-z A-Z; exit 0"]);
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
    let mut cmd = sbx.run_cmd(&cg, &["--default", "deny"], &["sh", "-c", SELF_REPORT]);
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

/// Makes `clone3` fail with `ENOSYS` for `cmd` (a seccomp filter, as
/// container runtimes install where the kernel's clone3 is too new for
/// them to inspect), so it runs as on a kernel before 5.3.
fn without_clone3(cmd: &mut Command) {
    // clone3 is 435 on x86_64 and aarch64.
    refuse_syscall(cmd, 435);
}

/// Has system call `nr` fail with `ENOSYS` in the process `cmd` starts
/// (and its children), as on a kernel without it.
fn refuse_syscall(cmd: &mut Command, nr: u32) {
    use std::os::unix::process::CommandExt as _;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS.unsigned_abs();
    let op = |code: u32| u16::try_from(code).expect("classic BPF opcodes fit 16 bits");
    let stmt = |code: u32, k: u32| libc::sock_filter { code: op(code), jt: 0, jf: 0, k };
    let program = [
        // A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter { code: op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K), jt: 0, jf: 1, k: nr },
        stmt(libc::BPF_RET | libc::BPF_K, enosys),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl and seccomp(2) between fork and exec with a program
    // on the stack of the closure, which outlives the call.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog { len: 4, filter: program.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &raw const prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn without_clone3_the_command_moves_itself_into_its_cgroup_and_says_so() {
    // The fallback of a kernel that cannot create the command inside its
    // cgroup: the child writes cgroup.procs before anything else, and the
    // policy holds from its first instruction as with clone3.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let mut cmd = sbx.run_cmd(&cg, &["--default", "deny"], &["sh", "-c", SELF_REPORT]);
    self_report_env(&mut cmd);
    without_clone3(&mut cmd);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{}", describe(&out));
    assert_eq!(Path::new(lines[0]).parent(), Some(cg.path()), "in the sandbox cgroup: {}", describe(&out));
    assert_eq!(&lines[2..], ["pins", "record"], "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clone3(CLONE_INTO_CGROUP) is unavailable"), "the fallback is reported: {stderr}");
    let id = lines[1].parse::<u64>().expect("an inode number");
    assert_cleaned_up(&sbx, &cg, Some(id));
    // Refused by the policy from inside, as always.
    let mut cmd = sbx.run_cmd(&cg, &["--default", "deny"], &["bash", "-c", "exec 3<>/dev/tcp/10.0.0.1/80"]);
    without_clone3(&mut cmd);
    let out = cmd.output().expect("running sbx-user run");
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n_and_cleans_up() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    for (sig, code) in [("KILL", 137), ("TERM", 143), ("SEGV", 139)] {
        let out = sbx.run_output(&cg, &[], &["sh", "-c", &format!("kill -{sig} $$")]);
        assert_eq!(out.status.code(), Some(code), "SIG{sig}: {}", describe(&out));
        assert_cleaned_up(&sbx, &cg, None);
    }
}

#[test]
fn run_forwards_sigterm_to_the_command_and_cleans_up() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let mut cmd = sbx.run_cmd(&cg, &[], &["sleep", "100"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
    let pid = i32::try_from(child.id()).expect("pid");
    wait_started(&cg);
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
    let out = sbx.run_output(&cg, &[], &["sh", "-c", script]);
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
    let out = fx.sbx.run_output(&fx.cg, &["--allow", &format!("tcp://{}:8080", n.ns_v4)], &["sh", "-c", &script]);
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

    let out = fx.sbx.run_output(&fx.cg, &policy, &["nc", "-z", "-w", "3", &a, "8080"]);
    assert_eq!(out.status.code(), Some(0), "nc to the allowed host: {}", describe(&out));
    let out = fx.sbx.run_output(&fx.cg, &policy, &["nc", "-v", "-z", "-w", "3", &b, "8080"]);
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
    let out = fx.sbx.run_output(&fx.cg, &policy, &["python3", "-c", py, &a, &b, &v6]);
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

    let out = sbx.run_output(&cg, &["--deny", "example.com"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("deny rules cannot name hosts"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    let out = sbx.run_output(&cg, &[], &["/nonexistent/sbx-test-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(err(&out).contains("/nonexistent/sbx-test-command"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    // Not under /tmp: the command sees a private one.
    let dir = TempDir::new_in(Path::new("/var/tmp"), "run");
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    let out = sbx.run_output(&cg, &[], &[not_exec.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    // A policy that fails where it is put in place, after the command's
    // process was made (it waits at its gate meanwhile): that process
    // never runs the command, and nothing is left.
    let marker = dir.path().join("ran");
    let many: Vec<String> = (0..12).map(|i| format!("198.18.{}.0/24", 2 * i)).collect();
    let out = sbx.run_output(
        &cg,
        &["--max-rules", "16", "--allow", &many.join(","), "--fs-write", dir.path().to_str().expect("UTF-8")],
        &["sh", "-c", &format!("touch {}", marker.display())],
    );
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("raise --max-rules"), "{}", describe(&out));
    assert!(!marker.exists(), "the command ran although its policy could not be put in place");
    assert_cleaned_up(&sbx, &cg, None);

    // --keep-fd of a descriptor sbx-user did not inherit (3 is the first
    // one it opens itself, when the test starts it with 0-2 only): refused,
    // never one of sbx's own handed to the command.
    let out = sbx.run_output(&cg, &["--keep-fd", "3"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("--keep-fd 3:"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);

    // A --cgroup-parent outside the cgroup2 hierarchy.
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent"]).arg(dir.path()).args(["--", "true"]);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(err(&out).contains("is not a cgroup v2 directory"), "{}", describe(&out));
    assert!(sbx.records().is_empty());
}

/// A filesystem rule that leads into another mount namespace
/// (`/proc/PID/root/...`) names no file this process can name: refused,
/// not turned into a rule for the host's file at the same path (which is
/// what `realpath` answers).
#[test]
fn a_filesystem_rule_through_another_mount_namespace_is_refused() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "mntns");
    let inner = dir.path().join("ns");
    std::fs::create_dir(&inner).expect("mkdir");
    std::fs::write(inner.join("f"), "host\n").expect("write");
    // A process of its own mount namespace, with a tmpfs over `inner`.
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!("mount -t tmpfs sbx-test {0} && echo ns > {0}/f && exec sleep 60", inner.display()))
        .spawn()
        .expect("running unshare");
    let through = std::path::PathBuf::from(format!("/proc/{}/root{}", holder.id(), inner.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(through.join("f")).map_or(true, |t| t.trim() != "ns") {
        if Instant::now() > deadline {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("the other mount namespace's tmpfs did not appear at {}", through.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = sbx.run_output(&cg, &["--fs-write", through.to_str().expect("UTF-8")], &["true"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no path from this process's root names the file it leads to"), "{}", describe(&out));
    assert!(!err.contains("must name existing paths"), "the path exists: {}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

/// Waits until a command runs inside a sandbox cgroup under `parent`: a
/// process there has executed something other than `sbx-user` (the
/// command's process is in the cgroup from its clone, before the policy
/// is in place and the command executed; the first `run` on a host also
/// loads the program set meanwhile).
fn wait_started(parent: &TestCgroup) {
    let sbx = std::fs::canonicalize(sbx_tests::sbx_user_bin()).expect("the sbx-user binary");
    let deadline = Instant::now() + Duration::from_secs(10);
    let started = || {
        parent.children().iter().any(|c| {
            std::fs::read_to_string(c.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != sbx))
        })
    };
    while !started() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_survives_a_closed_stderr_and_cleans_up() {
    // `sbx-user run -vv --log-denials ... 2>&1 | head -1`: sbx's stderr is
    // closed while the command runs and sbx still has denials to print.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let script = "sleep 0.3; for i in 1 2 3 4 5; do \
                  python3 -c 'import socket; s=socket.socket(); s.settimeout(1)\ntry: s.connect((\"127.0.0.2\", 9))\nexcept OSError: pass'; \
                  done; echo finished";
    let mut cmd = sbx.run_cmd(&cg, &["-vv", "--log-denials", "--loopback", "none"], &["sh", "-c", script]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
    drop(child.stderr.take());
    let out = child.wait_with_output().expect("waiting for sbx-user run");
    assert_eq!(out.status.code(), Some(0), "sbx must not die of its own output: {}", describe(&out));
    assert_eq!(stdout(&out), "finished\n", "the command ran to its end: {}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_forwards_sigint_sigterm_and_sighup_with_and_without_the_logger() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    for logger in [false, true] {
        for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGTERM, "TERM"), (libc::SIGHUP, "HUP")] {
            let policy: &[&str] = if logger { &["--log-denials"] } else { &[] };
            let script = format!("trap 'echo got {name}; exit 9' {name}; echo ready; while :; do sleep 0.05; done");
            let mut cmd = sbx.run_cmd(&cg, policy, &["sh", "-c", &script]);
            let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
            let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).expect("reading");
            assert_eq!(line, "ready\n");
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
            line.clear();
            std::io::BufRead::read_line(&mut out, &mut line).expect("reading");
            let status = child.wait().expect("waiting for sbx-user run");
            assert_eq!(line, format!("got {name}\n"), "SIG{name} (logger {logger}) reached the command once");
            assert_eq!(status.code(), Some(9), "SIG{name} (logger {logger}): sbx-user must not die of it");
            assert_cleaned_up(&sbx, &cg, None);
        }
    }
}

#[test]
fn a_signal_during_setup_stops_the_run_before_the_command_and_cleans_up() {
    // A large policy keeps sbx busy attaching; SIGTERM then must end the
    // run without starting the command, and nothing may be left.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("run");
    let marker = dir.path().join("started");
    let rules: Vec<String> = (0..60_000u32).map(|i| format!("\"10.{}.{}.0/24\"", i / 256 % 256, i % 256)).collect();
    let rules = rules.join(",");
    let policy = dir.path().join("big.toml");
    std::fs::write(&policy, format!("[network]\nallow = [{rules}]\n")).expect("write policy");
    let script = format!("touch {}", marker.display());
    let mut cmd = sbx.run_cmd(&cg, &["--policy", policy.to_str().expect("UTF-8")], &["sh", "-c", &script]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
    let pid = i32::try_from(child.id()).expect("pid");
    // Wait until the sandbox cgroup exists (setup is under way).
    let deadline = Instant::now() + Duration::from_secs(20);
    while cg.children().is_empty() {
        assert!(Instant::now() < deadline, "run never created its cgroup");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("waiting for sbx-user run");
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert!(!marker.exists(), "the command started after SIGTERM");
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn ctrl_c_at_a_terminal_reaches_the_command_once() {
    // Under a real pty sbx-user and the command share the terminal's
    // foreground process group: ^C goes to both from the kernel, and sbx
    // must not forward a second one.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // The command takes SIGINT with sigwaitinfo, so it sees each delivery
    // (a forwarded copy that comes after the terminal's is not merged into
    // it) and who sent it.
    let child_py = "import os, signal, time\n\
                    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n\
                    print('ready', flush=True)\n\
                    got = [signal.sigwaitinfo([signal.SIGINT])]\n\
                    end = time.time() + 1\n\
                    while time.time() < end:\n    \
                    i = signal.sigtimedwait([signal.SIGINT], 0.05)\n    \
                    if i: got.append(i)\n\
                    print('sigints=%d from=%s' % (len(got), [(i.si_code, i.si_pid) for i in got]), flush=True)\n";
    let driver = r#"
import os, pty, sys, time
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
buf = b""
def read_until(token, timeout):
    global buf
    end = time.time() + timeout
    while token not in buf and time.time() < end:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
read_until(b"ready", 20)
os.write(fd, b"\x03")
read_until(b"sigints=", 20)
read_until(b"\n", 5)
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode(errors="replace"))
print("exit=%d" % os.waitstatus_to_exitcode(status))
"#;
    let bin = sbx_tests::sbx_user_bin();
    let out = Command::new("python3")
        .args(["-c", driver])
        .arg(&bin)
        .args(["run", "--cgroup-parent", cg.arg(), "--", "python3", "-c", child_py])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .stdin(Stdio::null())
        .output()
        .expect("running the pty driver");
    let text = stdout(&out);
    assert!(text.contains("sigints=1"), "one ^C, one SIGINT: {}", describe(&out));
    assert!(text.contains("exit=0"), "{}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn status_reports_and_detach_removes_what_a_killed_run_left() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let mut cmd = sbx.run_cmd(&cg, &[], &["sleep", "100"]);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawning sbx-user run");
    wait_started(&cg);
    // SIGKILL cannot be forwarded or handled: the run's teardown never happens.
    child.kill().expect("killing sbx-user run");
    child.wait().expect("reaping");
    let left = cg.children();
    assert_eq!(left.len(), 1, "the killed run left its cgroup: {left:?}");
    let out = sbx.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entry = v.as_array().expect("array").iter().find(|e| e["cgroup"] == left[0].to_str().expect("UTF-8")).cloned();
    let entry = entry.unwrap_or_else(|| panic!("status lists the leftover: {v:#}"));
    let problem = entry["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("has exited"), "status names the dead owner: {entry:#}");
    let run_dirs = || {
        let prefix = format!("sbx-run-{}-", child.id());
        std::fs::read_dir("/var/tmp")
            .expect("reading /var/tmp")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };
    assert_eq!(run_dirs(), 1, "the killed run left its private HOME and /tmp");
    // `gc` leaves them, however old: the sandbox is still recorded, and
    // what the run started may still use them (`sleep` here).
    let prefix = format!("/var/tmp/sbx-run-{}-*", child.id());
    let aged = Command::new("sh").args(["-c", &format!("touch -d '2 minutes ago' {prefix}")]).status();
    assert!(aged.is_ok_and(|s| s.success()), "touch -d");
    let gc = sbx.ok(&["gc", "--json"]);
    assert!(!stdout(&gc).contains(&format!("sbx-run-{}-", child.id())), "{}", describe(&gc));
    assert_eq!(run_dirs(), 1, "gc kept the recorded run's HOME and /tmp: {}", describe(&gc));
    let out = sbx.ok(&["detach", "--cgroup", left[0].to_str().expect("UTF-8")]);
    assert!(stdout(&out).contains("left behind"), "{}", describe(&out));
    assert!(stdout(&out).contains("its private HOME and /tmp"), "{}", describe(&out));
    assert_eq!(run_dirs(), 0, "detach removes them: {}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn a_command_under_the_hosts_tmp_still_runs_in_the_private_tmp() {
    // The command gets a private /tmp; a tool that lives under the host's
    // /tmp (a CI checkout, an unpacked release) must still be found.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = std::path::PathBuf::from(format!("/tmp/sbx-test-cmd-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    let tool = dir.join("bin/say");
    std::fs::copy("/bin/echo", &tool).expect("copying echo");
    let out = sbx.run_output(&cg, &[], &[tool.to_str().expect("UTF-8"), "from", "tmp"]);
    // A script run from a checkout under /tmp calls a tool elsewhere in it.
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    let script = format!("{} via sh", tool.display());
    let mut cmd = sbx.run_cmd(&cg, &[], &["sh", "-c", &script]);
    let via_sh = cmd.current_dir(dir.join("src")).output().expect("running sbx-user run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "from tmp\n");
    assert_eq!(stdout(&via_sh), "via sh\n", "{}", describe(&via_sh));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn the_start_up_proof_is_silent_and_the_command_runs_after_it() {
    // run proves in the child that the hooks fire in the new cgroup (a
    // connect the programs must refuse) before exec; the proof is kept out
    // of events.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let out = sbx.run_output(&cg, &["--log-denials", "--default", "allow"], &["echo", "ran"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "ran\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sbx: "), "no event for the proof: {}", describe(&out));
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn run_vv_traces_the_programs_decisions_for_its_sandbox_only() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let connect = "import socket\nfor p in (8080, 8081):\n    s = socket.socket()\n    try: s.connect(('127.0.0.1', p))\n    except OSError: pass\n";
    // Another sandbox, without -vv, busy at the same time.
    let mut quiet = sbx.run_cmd(&cg, &["--loopback", "9000"], &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do python3 -c \"import socket\ntry: socket.create_connection(('127.0.0.1', 9001), 1)\nexcept OSError: pass\"; done"]);
    let quiet = quiet.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("the quiet run");
    let mut cmd = sbx.cmd();
    cmd.args(["-vv", "run", "--cgroup-parent", cg.arg(), "--loopback", "8080", "--", "python3", "-c", connect]);
    let out = cmd.output().expect("sbx-user -vv run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sbx trace: hook=connect4 dest=[::ffff:127.0.0.1]:8080 allowed"), "{}", describe(&out));
    assert!(err.contains("sbx trace: hook=connect4 dest=[::ffff:127.0.0.1]:8081 denied"), "{}", describe(&out));
    assert!(!err.contains(":9001"), "only its own sandbox's decisions: {}", describe(&out));
    let quiet = quiet.wait_with_output().expect("the quiet run");
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("sbx trace"), "no trace without -vv");
    assert_cleaned_up(&sbx, &cg, None);
}

#[test]
fn a_state_directory_made_by_this_run_is_read_only_for_the_command() {
    // The first `run` after boot finds no /run/sbx: it makes it before the
    // command's mounts are prepared, so the command (here root, in a
    // working directory Landlock lets it write) cannot plant records.
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "fresh-state");
    let state = dir.path().join("state");
    let planted = state.join("planted.json");
    let mut cmd = sbx.cmd();
    cmd.env("SBX_STATE_DIR", &state)
        .current_dir(dir.path())
        .args(["run", "--cgroup-parent", cg.arg(), "--user", "0", "--", "sh", "-c"])
        .arg(format!("touch {}", planted.display()));
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(1), "touch must fail: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{}", describe(&out));
    assert!(!planted.exists(), "the command wrote into sbx's state directory");
    assert_eq!(std::fs::read_dir(&state).expect("the state directory").count(), 0, "run left a record");
    assert_eq!(cg.children(), Vec::<std::path::PathBuf>::new(), "run left its cgroup behind");
}

#[test]
fn run_started_with_sigchld_ignored_reports_the_commands_status() {
    // An ignored SIGCHLD survives exec; the kernel would reap the command
    // by itself, and its status would be lost. Also where no pidfd can be
    // had (a kernel before 5.3, a container's seccomp profile), the wait
    // must end.
    use std::os::unix::process::CommandExt as _;
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let ignore = |cmd: &mut Command| {
        // SAFETY: signal(2) between fork and exec, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                Ok(())
            });
        }
    };
    let mut cmd = sbx.run_cmd(&cg, &[], &["sh", "-c", "exit 3"]);
    ignore(&mut cmd);
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));

    // pidfd_open is 434 on x86_64 and aarch64.
    let mut cmd = sbx.run_cmd(&cg, &[], &["sh", "-c", "sleep 0.1; exit 4"]);
    refuse_syscall(&mut cmd, 434);
    ignore(&mut cmd);
    let started = Instant::now();
    let out = cmd.output().expect("running sbx-user run without pidfd_open");
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(20), "the wait did not end");
    assert_cleaned_up(&sbx, &cg, None);
}

/// A `run` killed during its teardown (after its cgroup and record went)
/// leaves its private HOME and /tmp, which nothing else names: `gc`
/// removes such a directory once no process has its pid and it is a
/// minute old, and leaves a young one, a live run's, and any directory
/// not made as `run` makes them.
#[test]
fn gc_removes_the_private_home_and_tmp_of_a_killed_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let sbx = Sbx::new();
    let mut gone = Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().expect("wait");
    let live = std::process::id();
    let make = |name: String, mode: u32, age: &str| {
        let dir = Path::new("/var/tmp").join(name);
        std::fs::create_dir_all(dir.join("home")).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let touched = Command::new("touch").args(["-d", age]).arg(&dir).status().expect("touch");
        assert!(touched.success());
        dir
    };
    let abandoned = make(format!("sbx-run-{dead}-11"), 0o711, "2 minutes ago");
    let young = make(format!("sbx-run-{dead}-22"), 0o711, "now");
    let running = make(format!("sbx-run-{live}-33"), 0o711, "2 minutes ago");
    let not_ours = make(format!("sbx-run-{dead}-44"), 0o755, "2 minutes ago");
    let out = sbx.ok(&["gc", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc --json");
    let listed = v["workspaces"].to_string();
    assert!(listed.contains(&abandoned.display().to_string()), "{v}");
    assert!(!abandoned.exists(), "gc removed {}", abandoned.display());
    for kept in [&young, &running, &not_ours] {
        assert!(kept.exists() && !listed.contains(&kept.display().to_string()), "{} kept: {v}", kept.display());
        std::fs::remove_dir_all(kept).expect("cleanup");
    }
}
