//! Pathname UNIX sockets under `sbx-user run` (`[network] unix`, `--unix`):
//! a host socket the policy does not list is refused however the command
//! spells its path, nothing reaches its listener, and sockets the command
//! binds itself (in its private /tmp or its working directory) keep working.
//! Each escape is tried as nobody and as `--user 0`.
//!
//! The host sockets are real listeners this test makes under `/run` (the
//! command's `/tmp` is a private one); the sockets real tools reach for
//! under `agent` are made at look-alike paths, and the real paths are
//! tried too where this host has them.

use std::{
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixDatagram, UnixListener},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sbx_tests::{describe, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;
// A dependency of the fixture crate this test file does not use directly.
use serde_json as _;

/// A listening host socket; counts what reached it.
struct HostSocket {
    path: PathBuf,
    stream: Option<UnixListener>,
    dgram: Option<UnixDatagram>,
}

impl HostSocket {
    /// A stream listener at `path` (mode 0666: only the policy stands in
    /// the way, not permissions).
    fn stream(path: &Path) -> Self {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let l = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        l.set_nonblocking(true).expect("nonblocking");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        Self { path: path.to_owned(), stream: Some(l), dgram: None }
    }

    /// A datagram socket at `path`, as journald's `/dev/log`.
    fn dgram(path: &Path) -> Self {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let d = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        d.set_nonblocking(true).expect("nonblocking");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        Self { path: path.to_owned(), stream: None, dgram: Some(d) }
    }

    /// Connections queued or datagrams received since the last call.
    fn arrived(&self) -> usize {
        let mut n = 0;
        if let Some(l) = &self.stream {
            while l.accept().is_ok() {
                n += 1;
            }
        }
        if let Some(d) = &self.dgram {
            let mut buf = [0u8; 512];
            while d.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

/// A directory under `/run` every identity can search (and, with `open`,
/// write).
fn run_dir(what: &str, open: bool) -> TempDir {
    let d = TempDir::new_in(Path::new("/run"), what);
    let mode = if open { 0o777 } else { 0o755 };
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// Python: `attempt(f)` is `ok`, `ok:DATA` or the errno name.
const PRELUDE: &str = r#"
import errno, os, socket, sys, threading, time
def attempt(f):
    try:
        r = f()
        return "ok" if r is None else "ok:" + str(r)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def conn(path, ty=socket.SOCK_STREAM):
    def f():
        s = socket.socket(socket.AF_UNIX, ty)
        s.settimeout(2)
        s.connect(path)
        s.close()
    return attempt(f)
"#;

fn sandbox(
    sbx: &Sbx,
    parent: &TestCgroup,
    user: &str,
    policy: &[&str],
    cwd: &Path,
    body: &str,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = sbx.cmd();
    cmd.args(["run", "--cgroup-parent", parent.arg(), "--user", user])
        .args(policy)
        .args(["--", "python3", "-c", &format!("{PRELUDE}{body}")])
        .current_dir(cwd)
        .envs(env.iter().copied());
    cmd
}

/// Runs the script, which must exit 0; its `NAME RESULT` lines.
fn results(cmd: &mut Command) -> Vec<(String, String)> {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (n, r) = l.split_once(' ').unwrap_or((l, ""));
            (n.to_owned(), r.to_owned())
        })
        .collect()
}

fn get<'a>(results: &'a [(String, String)], name: &str) -> &'a str {
    results
        .iter()
        .find_map(|(n, r)| (n == name).then_some(r.as_str()))
        .unwrap_or_else(|| panic!("no {name}: {results:?}"))
}

const IDENTITIES: [&str; 2] = ["65534", "0"];

#[test]
fn a_host_socket_is_refused_while_sockets_the_command_binds_work() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = run_dir("unix-host", false);
    let host = HostSocket::stream(&dir.path().join("db.sock"));
    let body = r#"
print("host", conn(sys.argv[1]))
for where in ("/tmp/own.sock", "own.sock"):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(where)
    srv.listen(4)
    def talk():
        c = socket.socket(socket.AF_UNIX)
        c.connect(where)
        a, _ = srv.accept()
        a.sendall(b"pong")
        return c.recv(4).decode()
    print("own-" + ("tmp" if where.startswith("/") else "cwd"), attempt(talk))
    # A second client, and a server that listens again after bind.
    srv.listen(8)
    print("again-" + ("tmp" if where.startswith("/") else "cwd"), conn(where))
    os.unlink(where)
# Datagram UNIX sockets cannot be made: sendto would reach any path.
print("dgram", attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)))
print("dgram-pair", attempt(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)))
print("stream-pair", attempt(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) and None))
"#;
    for user in IDENTITIES {
        let work = run_dir("unix-cwd", true);
        for policy in [&["--profile", "offline"][..], &["--unix", "none"], &["--profile", "agent"]] {
            let mut cmd = sandbox(&sbx, &cg, user, policy, work.path(), body, &[]);
            cmd.arg(host.arg());
            let r = results(&mut cmd);
            assert_eq!(get(&r, "host"), "EPERM", "user {user} {policy:?}: {r:?}");
            assert_eq!(host.arrived(), 0, "user {user} {policy:?}: the host listener saw a connection");
            for place in ["tmp", "cwd"] {
                assert_eq!(get(&r, &format!("own-{place}")), "ok:pong", "user {user} {policy:?}: {r:?}");
                assert_eq!(get(&r, &format!("again-{place}")), "ok", "user {user} {policy:?}: {r:?}");
            }
            assert_eq!(get(&r, "dgram"), "EPERM", "{r:?}");
            assert_eq!(get(&r, "dgram-pair"), "EPERM", "{r:?}");
            assert_eq!(get(&r, "stream-pair"), "ok", "{r:?}");
        }
        // Listed: reachable. Not saying (compatibility) and open: any.
        for policy in [&["--profile", "offline", "--unix", host.arg()][..], &[], &["--profile", "open"]] {
            let mut cmd = sandbox(&sbx, &cg, user, policy, work.path(), "print('host', conn(sys.argv[1]))", &[]);
            cmd.arg(host.arg());
            let r = results(&mut cmd);
            assert_eq!(get(&r, "host"), "ok", "user {user} {policy:?}: {r:?}");
            assert_eq!(host.arrived(), 1, "user {user} {policy:?}");
        }
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "the script is one piece, each escape a few lines")]
fn symlinks_relative_paths_dotdot_hard_links_proc_fds_and_renames_end_at_the_inode_judged() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = run_dir("unix-esc", false);
    let host = HostSocket::stream(&dir.path().join("host.sock"));
    let other = HostSocket::stream(&dir.path().join("other.sock"));
    // A hard link to the denied socket, made on the host.
    std::fs::hard_link(&host.path, dir.path().join("hard.sock")).expect("hard link");
    let d = dir.path().to_str().expect("utf-8");
    let name = dir.path().file_name().expect("name").to_str().expect("utf-8");
    let body = format!(
        r#"
d = "{d}"
os.symlink(d + "/host.sock", "/tmp/link.sock")
print("symlink", conn("/tmp/link.sock"))
print("dotdot", conn("/tmp/../" + d + "/host.sock"))
os.chdir(d)
print("relative", conn("host.sock"))
print("relative-dotdot", conn("../{name}/host.sock"))
print("hard-link", conn(d + "/hard.sock"))
fd = os.open(d + "/host.sock", os.O_PATH)
print("proc-self-fd", conn("/proc/self/fd/%d" % fd))
print("dev-fd", conn("/dev/fd/%d" % fd))
print("allowed-via-hard-link", conn(d + "/other.sock"))
os.chdir("/tmp")
# Rename race: /tmp/x flips between the command's own socket and a link to
# the host socket while other threads connect to it. Every connection
# must end at the own server (which answers "own").
srv = socket.socket(socket.AF_UNIX)
srv.bind("/tmp/own.sock")
srv.listen(128)
def serve():
    while True:
        a, _ = srv.accept()
        a.sendall(b"own")
        a.close()
threading.Thread(target=serve, daemon=True).start()
os.link("/tmp/own.sock", "/tmp/own-alias.sock")
os.symlink(d + "/host.sock", "/tmp/evil")
stop = time.time() + 1.5
seen = {{}}
def flip():
    while time.time() < stop:
        for src in ("/tmp/own-alias.sock", "/tmp/evil"):
            tmp = "/tmp/x.new"
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if src.endswith("evil"):
                os.symlink(d + "/host.sock", tmp)
            else:
                os.link(src, tmp)
            os.rename(tmp, "/tmp/x")
def hammer():
    while time.time() < stop:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect("/tmp/x")
            r = s.recv(3).decode() or "empty"
        except OSError as e:
            r = errno.errorcode.get(e.errno, "?")
        seen[r] = seen.get(r, 0) + 1
        s.close()
ts = [threading.Thread(target=flip)] + [threading.Thread(target=hammer) for _ in range(3)]
[t.start() for t in ts]
[t.join() for t in ts]
print("race", ",".join(sorted(k for k in seen if k not in ("own", "EPERM", "ENOENT"))) or "clean", seen.get("own", 0), seen.get("EPERM", 0))
# Descriptor race: one thread connects fd N to the host socket while
# another swaps N between an inet socket (which the supervisor lets the
# kernel connect) and a UNIX socket.
inet = socket.socket(socket.AF_INET)
unx = socket.socket(socket.AF_UNIX)
n = os.dup(inet.fileno())
stop = time.time() + 1.5
hits = []
def swap():
    while time.time() < stop:
        os.dup2(unx.fileno(), n)
        os.dup2(inet.fileno(), n)
def connect_n():
    addr = b"\x01\x00" + (d + "/host.sock").encode() + b"\x00"
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(addr, len(addr))
    while time.time() < stop:
        if libc.connect(n, buf, len(addr)) == 0:
            hits.append(1)
ts = [threading.Thread(target=swap), threading.Thread(target=connect_n)]
[t.start() for t in ts]
[t.join() for t in ts]
print("fd-race", len(hits))
"#
    );
    for user in IDENTITIES {
        let work = run_dir("unix-cwd", true);
        let mut cmd = sandbox(&sbx, &cg, user, &["--profile", "agent", "--unix", other.arg()], work.path(), &body, &[]);
        let r = results(&mut cmd);
        for name in ["symlink", "dotdot", "relative", "relative-dotdot", "hard-link", "proc-self-fd", "dev-fd"] {
            assert_eq!(get(&r, name), "EPERM", "user {user}: {name}: {r:?}");
        }
        assert_eq!(get(&r, "allowed-via-hard-link"), "ok", "user {user}: {r:?}");
        let race: Vec<&str> = get(&r, "race").split(' ').collect();
        assert_eq!(race[0], "clean", "user {user}: a connection ended somewhere else: {r:?}");
        assert!(
            race[1].parse::<u32>().expect("count") > 0,
            "user {user}: the race never reached the own server: {r:?}"
        );
        assert_eq!(get(&r, "fd-race"), "0", "user {user}: {r:?}");
        assert_eq!(host.arrived(), 0, "user {user}: the denied host socket saw a connection");
        assert_eq!(other.arrived(), 1, "user {user}");
    }
}

#[test]
fn the_host_sockets_tools_reach_for_are_refused_under_agent() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let root = run_dir("unix-tools", false);
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    // Look-alikes of the real ones, made by this test.
    let agent = HostSocket::stream(&at("/tmp/ssh-XXXX/agent.1234"));
    let log = HostSocket::dgram(&at("/dev/log"));
    let bus = HostSocket::stream(&at("/run/dbus/system_bus_socket"));
    let nscd = HostSocket::stream(&at("/run/nscd/socket"));
    let resolved = HostSocket::stream(&at("/run/systemd/resolve/io.systemd.Resolve"));
    let stream = [&agent, &bus, &nscd, &resolved];
    // The real paths, where this host has them (their daemons may not be
    // running: a refusal must be EPERM whatever is behind the path).
    let real: Vec<&str> = [
        "/dev/log",
        "/run/systemd/journal/dev-log",
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
        "/run/nscd/socket",
        "/run/systemd/resolve/io.systemd.Resolve",
        "/run/systemd/journal/stdout",
        "/run/docker.sock",
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .collect();
    let body = r#"
paths = sys.argv[1].split(",")
real = [p for p in sys.argv[2].split(",") if p]
print("ssh-agent", conn(os.environ["SSH_AUTH_SOCK"]))
for i, p in enumerate(paths):
    print("tool%d" % i, conn(p))
def syslog():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"<13>sbx test", sys.argv[3])
print("dev-log-dgram", attempt(syslog))
print("dev-log-stream", conn(sys.argv[3]))
for i, p in enumerate(real):
    r = conn(p)
    print("real%d" % i, r if r in ("EPERM", "ENOENT") else "reached:" + r)
"#;
    let stream_paths: Vec<&str> = stream.iter().map(|s| s.arg()).collect();
    for user in IDENTITIES {
        let work = run_dir("unix-cwd", true);
        let mut cmd =
            sandbox(&sbx, &cg, user, &["--profile", "agent"], work.path(), body, &[("SSH_AUTH_SOCK", agent.arg())]);
        cmd.args([stream_paths.join(","), real.join(","), log.arg().to_owned()]);
        let r = results(&mut cmd);
        assert_eq!(get(&r, "ssh-agent"), "EPERM", "user {user}: {r:?}");
        for (i, s) in stream.iter().enumerate() {
            assert_eq!(get(&r, &format!("tool{i}")), "EPERM", "user {user}: {}: {r:?}", s.arg());
        }
        assert_eq!(get(&r, "dev-log-dgram"), "EPERM", "user {user}: {r:?}");
        assert_eq!(get(&r, "dev-log-stream"), "EPERM", "user {user}: {r:?}");
        for (i, p) in real.iter().enumerate() {
            let got = get(&r, &format!("real{i}"));
            // ENOENT: a dangling symbolic link (/dev/log without journald).
            assert!(got == "EPERM" || got == "ENOENT", "user {user}: real {p}: {got}");
        }
        for s in stream.iter().copied().chain([&log]) {
            assert_eq!(s.arrived(), 0, "user {user}: {} saw a connection or datagram", s.arg());
        }
        // Listed, the ssh agent under the host's /tmp is reachable at its
        // path: it is bound into the private /tmp.
        let mut cmd = sandbox(
            &sbx,
            &cg,
            user,
            &["--profile", "agent", "--unix", agent.arg(), "--unix", bus.arg()],
            work.path(),
            "print('a', conn(sys.argv[1])); print('b', conn(sys.argv[2])); print('c', conn(sys.argv[3]))",
            &[],
        );
        cmd.args([agent.arg(), bus.arg(), nscd.arg()]);
        let r = results(&mut cmd);
        assert_eq!((get(&r, "a"), get(&r, "b"), get(&r, "c")), ("ok", "ok", "EPERM"), "user {user}: {r:?}");
        assert_eq!((agent.arrived(), bus.arrived(), nscd.arrived()), (1, 1, 0), "user {user}");
    }
}

#[test]
fn an_ssh_agent_socket_under_the_hosts_tmp_is_bound_into_the_private_tmp() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("unix-ssh");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = HostSocket::stream(&dir.path().join("agent.42"));
    let work = run_dir("unix-cwd", true);
    for user in IDENTITIES {
        let mut cmd = sandbox(
            &sbx,
            &cg,
            user,
            &["--profile", "agent", "--unix", agent.arg()],
            work.path(),
            "print('agent', conn(os.environ['SSH_AUTH_SOCK'])); print('tmp', sorted(os.listdir('/tmp')) == [os.environ['SSH_AUTH_SOCK'].split('/')[2]])",
            &[("SSH_AUTH_SOCK", agent.arg())],
        );
        let r = results(&mut cmd);
        assert_eq!(get(&r, "agent"), "ok", "user {user}: {r:?}");
        assert_eq!(get(&r, "tmp"), "True", "the private /tmp shows only the way to the socket: {r:?}");
        assert_eq!(agent.arrived(), 1);
    }
}

#[test]
fn the_mechanism_gone_fails_closed() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = run_dir("unix-gone", false);
    let host = HostSocket::stream(&dir.path().join("host.sock"));
    // The command kills the helper (same uid); afterwards no UNIX connect
    // or bind succeeds, own or listed, and inet still works.
    let body = r#"
srv = socket.socket(socket.AF_UNIX)
srv.bind("/tmp/own.sock")
srv.listen(4)
print("before", conn("/tmp/own.sock"))
killed = 0
for pid in os.listdir("/proc"):
    try:
        if pid.isdigit() and open("/proc/%s/comm" % pid).read().strip() == "sbx-unix":
            os.kill(int(pid), 9)
            killed += 1
    except OSError:
        pass
time.sleep(0.2)
print("killed", killed)
print("own", conn("/tmp/own.sock"))
print("listed", conn(sys.argv[1]))
print("bind", attempt(lambda: socket.socket(socket.AF_UNIX).bind("/tmp/b.sock")))
print("inet", attempt(lambda: socket.socket(socket.AF_INET).bind(("127.0.0.1", 0))))
"#;
    for user in IDENTITIES {
        let work = run_dir("unix-cwd", true);
        let mut cmd = sandbox(&sbx, &cg, user, &["--profile", "offline", "--unix", host.arg()], work.path(), body, &[]);
        cmd.arg(host.arg());
        let r = results(&mut cmd);
        assert_eq!(get(&r, "before"), "ok", "{r:?}");
        assert_eq!(get(&r, "killed"), "1", "{r:?}");
        for name in ["own", "listed", "bind"] {
            assert_eq!(get(&r, name), "ECONNREFUSED", "user {user}: {name}: {r:?}");
        }
        assert_eq!(get(&r, "inet"), "ok", "{r:?}");
        assert_eq!(host.arrived(), 0);
    }
}

#[test]
fn a_listed_socket_must_exist_and_attach_refuses_a_unix_setting() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = run_dir("unix-list", false);
    let missing = dir.path().join("missing.sock");
    let out =
        sbx.fails(&["run", "--cgroup-parent", cg.arg(), "--unix", missing.to_str().expect("utf-8"), "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--unix: unix socket") && err.contains("No such file"), "{err}");
    std::fs::write(dir.path().join("file"), "").expect("write");
    let out = sbx.fails(&[
        "run",
        "--cgroup-parent",
        cg.arg(),
        "--unix",
        &format!("{}/file", dir.path().display()),
        "--",
        "true",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"), "{}", describe(&out));

    let target = TestCgroup::new();
    for flags in [&["--unix", "none"][..], &["--unix", "/run/x.sock"]] {
        let mut args = vec!["attach", "--cgroup", target.arg()];
        args.extend_from_slice(flags);
        let out = sbx.fails(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`attach` cannot enforce unix") && err.contains("sbx-user run"), "{err}");
        assert!(!Sbx::has_pins(target.id()), "nothing may be attached");
    }
    // The agent profile's default is dropped with a warning, and recorded.
    let out = sbx.ok(&["attach", "--cgroup", target.arg(), "--profile", "agent"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("recorded as unix = any"), "{}", describe(&out));
    sbx.detach(&target);
}

#[test]
fn an_unconnected_or_datagram_unix_socket_on_stdin_is_refused_under_a_unix_policy() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    for (kind, make) in [
        ("datagram", UnixDatagram::unbound().map(std::os::fd::OwnedFd::from)),
        ("unconnected", Ok(unconnected_unix_stream())),
    ] {
        let fd = make.expect("socket");
        let mut cmd = sbx.cmd();
        cmd.args(["run", "--cgroup-parent", cg.arg(), "--profile", "offline", "--", "true"]).stdin(Stdio::from(fd));
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(125), "{kind}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("AF_UNIX"), "{kind}: {}", describe(&out));
    }
    // A connected stream socket (journald's stdout) stays allowed.
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let out = Command::new(sbx_tests::sbx_user_bin())
        .env("SBX_STATE_DIR", sbx.state_dir())
        .args(["run", "--cgroup-parent", cg.arg(), "--profile", "offline", "--", "true"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(a)))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// An unconnected `AF_UNIX` stream socket.
fn unconnected_unix_stream() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: socket(2); the descriptor is owned by the returned value.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: just created.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[test]
fn audit_mode_lets_a_host_socket_through_and_reports_it() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = run_dir("unix-audit", false);
    let host = HostSocket::stream(&dir.path().join("host.sock"));
    let work = run_dir("unix-cwd", true);
    let mut cmd = sandbox(
        &sbx,
        &cg,
        "65534",
        &["--profile", "offline", "--audit", "--log-denials"],
        work.path(),
        "print('host', conn(sys.argv[1]))",
        &[],
    );
    cmd.arg(host.arg());
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "host ok", "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unix connect audit") && err.contains(host.arg()), "{err}");
    assert_eq!(host.arrived(), 1);
}

#[test]
fn check_and_profiles_show_the_unix_setting() {
    let sbx = Sbx::new();
    let out = sbx.ok(&["profiles", "--show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (name, want) in [("agent", "none"), ("offline", "none"), ("open", "any")] {
        let block = text.split("\n\n").find(|b| b.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
        assert!(block.contains(&format!("unix = \"{want}\"")), "{name}: {block}");
    }
    let out = sbx.ok(&["check", "--profile", "agent", "--unix", "/run/x.sock"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("unix sockets: /run/x.sock (and sockets the command binds itself)"),
        "{}",
        describe(&out)
    );
    let out = sbx.says_no(&["check", "--unix", "x.sock"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--unix: `x.sock`: socket paths must be absolute"),
        "{}",
        describe(&out)
    );
}
