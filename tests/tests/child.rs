//! What the command of `sbx-user run` is given: its standard descriptors,
//! resource limits, netlink, identity, environment, HOME, /tmp and the
//! default filesystem rules. Each through the real binary.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{
            net::{UnixListener, UnixStream},
            process::CommandExt as _,
        },
    },
    process::{Command, Output, Stdio},
    time::Duration,
};

use sbx_tests::{describe, probe, Fixture, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use serde_json as _;

fn run_cmd(sbx: &Sbx, parent: &TestCgroup, options: &[&str], command: &[&str]) -> Command {
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent", parent.arg()]).args(options).arg("--").args(command);
    cmd
}

/// Runs `cmd` with descriptor `fd` of `sbx-user` itself replaced by `with`.
fn output_with_fd(cmd: &mut Command, fd: RawFd, with: RawFd) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: dup2 between fork and exec, on a descriptor that stays open
    // in the parent until `output` returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(with, fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sockets_on_stdio_are_refused_unless_opted_in() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let dir = TempDir::new("stdio");
    let script = ["sh", "-c", "echo ran; head -c 6"];

    // stdin connected, outside the sandbox, to the host the policy denies:
    // the command would read from it and write to it.
    let conn = TcpStream::connect((n.ns_v4, 8080)).expect("connecting outside the sandbox");
    let out = output_with_fd(&mut run_cmd(&fx.sbx, &fx.cg, &["--default", "deny"], &script), 0, conn.as_raw_fd());
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(stderr(&out).contains("stdin (fd 0) is an AF_INET socket"), "{}", describe(&out));
    assert!(stderr(&out).contains("--allow-stdio-sockets"), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "the command ran: {}", describe(&out));
    assert_eq!(fx.cg.children(), Vec::<std::path::PathBuf>::new(), "nothing attached is left");

    // A listening TCP socket on stdout, an unconnected UDP/IPv6 socket on
    // stdin, a listening AF_UNIX socket on stdin: refused the same way.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listening on loopback");
    let udp6 = std::net::UdpSocket::bind("[::1]:0").expect("a UDP/IPv6 socket");
    let unix_path = dir.path().join("listening.sock");
    let unix = UnixListener::bind(&unix_path).expect("a listening AF_UNIX socket");
    for (fd, sock, want) in [
        (1, listener.as_raw_fd(), "stdout (fd 1) is a listening AF_INET socket"),
        (0, udp6.as_raw_fd(), "stdin (fd 0) is an AF_INET6 socket"),
        (0, unix.as_raw_fd(), "stdin (fd 0) is a listening AF_UNIX socket"),
    ] {
        let out = output_with_fd(&mut run_cmd(&fx.sbx, &fx.cg, &[], &script), fd, sock);
        assert_eq!(out.status.code(), Some(125), "{want}: {}", describe(&out));
        assert!(stderr(&out).contains(want), "{}", describe(&out));
        if fd != 1 {
            assert!(out.stdout.is_empty(), "the command ran: {}", describe(&out));
        }
    }

    // A connected AF_UNIX socket (journald style) on stderr is allowed.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let out =
        output_with_fd(&mut run_cmd(&fx.sbx, &fx.cg, &[], &["sh", "-c", "echo to-journal >&2"]), 2, theirs.as_raw_fd());
    drop(theirs);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    ours.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = String::new();
    (&ours).read_to_string(&mut got).expect("reading the other end");
    assert_eq!(got, "to-journal\n");

    // The opt-in hands the socket over, and shows why it is not the
    // default: the command talks to the denied host through it.
    let out = output_with_fd(
        &mut run_cmd(&fx.sbx, &fx.cg, &["--default", "deny", "--allow-stdio-sockets"], &script),
        0,
        conn.as_raw_fd(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\nhello\n", "{}", describe(&out));
}

#[test]
fn netlink_is_route_only_and_the_core_limit_is_a_hard_one_byte() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let py = r#"
import errno, resource, socket
def attempt(f):
    try:
        f().close()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
for name, proto in [("route", 0), ("sock_diag", 4), ("audit", 9), ("uevent", 15), ("netfilter", 12)]:
    print(name, attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)))
print("core", *resource.getrlimit(resource.RLIMIT_CORE))
for limits in [(0, 0), (0, 1), (resource.RLIM_INFINITY, resource.RLIM_INFINITY)]:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, limits)
        print("set", "ok", *resource.getrlimit(resource.RLIMIT_CORE))
    except OSError as e:
        print("set", errno.errorcode[e.errno])
try:
    resource.prlimit(0, resource.RLIMIT_CORE, (0, 0))
    print("prlimit ok")
except OSError as e:
    print("prlimit", errno.errorcode[e.errno])
print("core", *resource.getrlimit(resource.RLIMIT_CORE))
"#;
    let want = "route ok\nsock_diag EPROTONOSUPPORT\naudit EPROTONOSUPPORT\nuevent EPROTONOSUPPORT\n\
                netfilter EPROTONOSUPPORT\ncore 1 1\nset ok 1 1\nset ok 1 1\nset ok 1 1\nprlimit EPERM\ncore 1 1\n";
    for user in ["65534", "0"] {
        let out = run_cmd(&sbx, &cg, &["--user", user], &["python3", "-c", py]).output().expect("running sbx-user run");
        assert_eq!(out.status.code(), Some(0), "--user {user}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "--user {user}: {}", describe(&out));
    }
    // Outside the sandbox the same calls work, so the refusals are sbx's.
    let out = Command::new("python3").args(["-c", py]).output().expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("route ok\nsock_diag ok\n"), "{}", describe(&out));
    // `ip` still reads addresses and routes over NETLINK_ROUTE.
    let out = run_cmd(&sbx, &cg, &[], &["ip", "-o", "addr", "show", "lo"]).output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"), "{}", describe(&out));
}
