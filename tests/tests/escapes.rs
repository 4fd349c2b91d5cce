//! What a command inside `sbx-user run` might try to get around its
//! policy, each attempted as a user would (python, shell tools, the probe)
//! under a policy that denies the test host `ns_v4` ("A"). Each escape
//! must fail, and where a listener can tell (a packet sniffer in the test
//! namespace), nothing may have reached A.

use std::{
    net::{IpAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Output},
};

use sbx_tests::{bpffs, cgroup2_mount, describe, probe, Fixture, Packet, Sbx, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;
use serde_json as _;

/// `NAME RESULT...` lines printed by a script, as (name, rest).
fn results(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_owned(), rest.to_owned())
        })
        .collect()
}

fn result<'a>(results: &'a [(String, String)], name: &str) -> &'a str {
    results
        .iter()
        .find_map(|(n, r)| (n == name).then_some(r.as_str()))
        .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
}

/// Python: `attempt(f)` runs `f` and returns `ok` or the errno name.
const PRELUDE: &str = r#"
import ctypes, errno, os, socket, struct, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// Packets that reached `a` (any protocol).
fn to(packets: &[Packet], a: IpAddr) -> Vec<&Packet> {
    packets.iter().filter(|p| p.dst == a).collect()
}

#[test]
fn raw_ping_sctp_and_udplite_sockets_cannot_be_made() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let sniffer = n.sniffer();
    let a = n.ns_v4.to_string();
    // If a socket were created anyway, it sends to A at once: an ICMP echo,
    // an SCTP INIT, a UDP-Lite datagram.
    let body = r#"
A = sys.argv[1]
def echo():
    def csum(b):
        s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        s = (s >> 16) + (s & 0xffff)
        return ~(s + (s >> 16)) & 0xffff
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x5b5b, 1) + b"sbx!"
    return struct.pack("!BBHHH", 8, 0, csum(hdr), 0x5b5b, 1) + b"sbx!"
def sctp(s):
    s.settimeout(2)
    s.connect((A, 8080))
cases = [
    ("raw", socket.SOCK_RAW, socket.IPPROTO_ICMP, lambda s: s.sendto(echo(), (A, 0))),
    ("ping", socket.SOCK_DGRAM, socket.IPPROTO_ICMP, lambda s: s.sendto(echo(), (A, 0))),
    ("sctp", socket.SOCK_STREAM, 132, sctp),
    ("sctp-seqpacket", socket.SOCK_SEQPACKET, 132, sctp),
    ("udplite", socket.SOCK_DGRAM, 136, lambda s: s.sendto(b"sbx-udplite", (A, 9999))),
]
for name, ty, proto, use in cases:
    try:
        s = socket.socket(socket.AF_INET, ty, proto)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)))
        continue
    print(name, "created", attempt(lambda: use(s)))
"#;
    let out = fx.sbx.run_ok(&fx.cg, &["--default", "deny"], &["python3", "-c", &script(body), &a]);
    let r = results(&out);
    let o = fx.outside();
    // (name, sbx-probe socket arguments for the same call outside).
    let cases = [
        ("raw", ["socket", "inet", "raw", "1"]),
        ("ping", ["socket", "inet", "dgram", "1"]),
        ("sctp", ["socket", "inet", "stream", "132"]),
        ("sctp-seqpacket", ["socket", "inet", "seqpacket", "132"]),
        ("udplite", ["socket", "inet", "dgram", "136"]),
    ];
    for (name, args) in cases {
        let inside = result(&r, name);
        assert!(!inside.starts_with("created"), "{name}: the sandbox made the socket: {}", describe(&out));
        match o.run(&args).as_str() {
            // Root outside gets it; inside, sbx's sock_create hook (and for
            // raw sockets the missing CAP_NET_RAW) refuse it.
            "ok" => assert_eq!(inside, "EPERM", "{name}: {}", describe(&out)),
            other => eprintln!(
                "note: {name} sockets are not available outside the sandbox either ({other}); inside: {inside}{}",
                if name == "ping" {
                    " (ping_sockets_are_refused_even_where_the_kernel_allows_them covers sbx)"
                } else {
                    ""
                }
            ),
        }
    }
    let arrived = sniffer.sync();
    assert_eq!(to(&arrived, n.ns_v4.into()), Vec::<&Packet>::new(), "packets reached the denied host");
}

#[test]
fn ping_sockets_are_refused_even_where_the_kernel_allows_them() {
    // The host's net.ipv4.ping_group_range may refuse ping sockets before
    // sbx is asked; in the test namespace, where it can be opened without
    // touching the host, only sbx stands in the way.
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let mut open = Command::new("sh");
    open.args(["-c", "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range"]);
    let out = n.place().output(&mut open);
    assert!(out.status.success(), "opening ping_group_range in {}: {}", n.name(), describe(&out));
    let o = fx.outside().in_netns(n.name());
    assert_eq!(o.run(&["socket", "inet", "dgram", "1"]), "ok", "ping socket outside the sandbox");
    // `sbx-user run` itself in the namespace: its command runs there.
    let body = r#"
print("ping", attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)))
print("ping6", attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)))
"#;
    let mut cmd = fx.sbx.run_cmd(&fx.cg, &["--default", "allow"], &["python3", "-c", &script(body)]);
    let out = n.place().output(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping EPERM\nping6 EPERM\n", "{}", describe(&out));
}

#[test]
fn source_routes_are_refused_and_a_source_routed_datagram_never_reaches_the_denied_host() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    let receiver = n.udp_receiver(9999);
    let sniffer = n.sniffer();
    let (a, b) = (n.ns_v4.to_string(), n.ns_v4b.to_string());
    // An IPv4 loose source route via A (type 0x83, length 7, pointer 4,
    // A, then end of options), set on the socket or passed with one
    // datagram (IP_RETOPTS = 7 as a control message) to the allowed B. The
    // kernel then sends the datagram to A first: its header's
    // destination is A, which the sendmsg hook never sees.
    let body = r#"
A, B, tag = sys.argv[1], sys.argv[2], sys.argv[3]
lsrr = bytes([0x83, 7, 4]) + socket.inet_aton(A) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ip-options", attempt(lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr)))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("retopts-cmsg", attempt(lambda: u.sendmsg([b"lsrr-" + tag.encode()], [(socket.IPPROTO_IP, 7, lsrr)], 0, (B, 9999))))
print("plain", attempt(lambda: u.sendto(b"plain-" + tag.encode(), (B, 9999))))
# An IPv6 segment routing header (type 4) with one segment.
rthdr = bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "::1")
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
print("ipv6-rthdr", attempt(lambda: s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, rthdr)))
"#;
    let body = script(body);

    // Outside the sandbox, as root: the source-routed datagram goes to A,
    // and the sniffer sees it there, so it can tell.
    let out = Command::new("python3").args(["-c", &body, &a, &b, "outside"]).output().expect("running python3");
    let r = results(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(result(&r, "ip-options"), "ok", "{}", describe(&out));
    assert_eq!(result(&r, "retopts-cmsg"), "ok", "{}", describe(&out));
    assert_eq!(result(&r, "ipv6-rthdr"), "ok", "{}", describe(&out));
    let arrived = sniffer.sync();
    let at_a = to(&arrived, n.ns_v4.into());
    assert!(
        at_a.iter().any(|p| p.options && p.proto == 17),
        "outside the sandbox the source-routed datagram should reach A: {arrived:?}"
    );

    // Inside `run`: the socket option is refused by sbx's setsockopt
    // hook, the control message by the kernel itself (user-supplied
    // source routes need CAP_NET_RAW, which `run` drops).
    let out = fx.sbx.run_ok(&fx.cg, &["--allow", &format!("udp://{b}:9999")], &["python3", "-c", &body, &a, &b, "run"]);
    let r = results(&out);
    for name in ["ip-options", "retopts-cmsg", "ipv6-rthdr"] {
        assert_eq!(result(&r, name), "EPERM", "{name}: {}", describe(&out));
    }
    assert_eq!(result(&r, "plain"), "ok", "{}", describe(&out));
    let arrived = sniffer.sync();
    assert_eq!(to(&arrived, n.ns_v4.into()), Vec::<&Packet>::new(), "packets reached the denied host");
    // (IPv6 multicast listener reports carry a hop-by-hop header; the
    // host sends those on its own.)
    assert!(arrived.iter().all(|p| !(p.options && p.dst.is_ipv4())), "IPv4 options got out: {arrived:?}");

    // A process that keeps CAP_NET_RAW (root in an attached cgroup) gets
    // the control message past the kernel and the sendmsg hook, which
    // only sees B; the egress backstop drops the datagram.
    fx.attach(&["--allow", &format!("udp://{b}:9999")]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &body, &a, &b, "attached"]);
    let out = fx.inside().place().output(&mut cmd);
    assert!(out.status.success(), "{}", describe(&out));
    let r = results(&out);
    for name in ["ip-options", "retopts-cmsg", "ipv6-rthdr"] {
        assert_eq!(result(&r, name), "EPERM", "{name}: {}", describe(&out));
    }
    assert_eq!(result(&r, "plain"), "ok", "{}", describe(&out));
    let arrived = sniffer.sync();
    assert_eq!(to(&arrived, n.ns_v4.into()), Vec::<&Packet>::new(), "packets reached the denied host");
    assert!(arrived.iter().all(|p| !(p.options && p.dst.is_ipv4())), "IPv4 options got out: {arrived:?}");
    let events = fx.sbx.events(&fx.cg);
    let egress: Vec<_> = events.iter().filter(|e| e["hook"] == "egress").collect();
    assert_eq!(egress.len(), 1, "one drop by the backstop: {events:#?}");
    assert_eq!(egress[0]["verdict"], "denied", "{events:#?}");
    assert_eq!(egress[0]["protocol"], "udp", "{events:#?}");
    // The header's destination is A, the first hop; the event says why.
    assert_eq!(egress[0]["destination"], format!("{a} (source-routed)"), "{events:#?}");
    assert_eq!(egress[0]["rule"], "IP options or routing header", "{events:#?}");

    let payloads = receiver.sync();
    for tag in ["run", "attached"] {
        assert!(payloads.contains(&format!("plain-{tag}")), "the plain datagram to B arrives: {payloads:?}");
        assert!(!payloads.contains(&format!("lsrr-{tag}")), "{payloads:?}");
    }
}

/// The `Name:\tvalue` fields of a `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map_or_else(|| panic!("no {name} in:\n{status}"), str::trim)
}

#[test]
fn the_command_has_no_capabilities_as_root_or_as_nobody() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // Without --user the command runs as nobody (SUDO_UID when run under
    // sudo); never root by default.
    let out = sbx.run_ok(&cg, &[], &["id", "-u"]);
    let default_uid = std::env::var("SUDO_UID").ok().filter(|u| u != "0").unwrap_or_else(|| "65534".into());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), default_uid, "{}", describe(&out));
    // `--user 0` keeps uid 0, with nothing a capability would give it.
    let out = sbx.run_ok(&cg, &["--user", "0"], &["cat", "/proc/self/status"]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(status_field(&status, "Uid").split_whitespace().collect::<Vec<_>>(), ["0"; 4], "{status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, cap), "0000000000000000", "{cap} as uid 0:\n{status}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
    assert_eq!(status_field(&status, "Seccomp"), "2", "a seccomp filter is installed:\n{status}");

    let out = sbx.run_ok(&cg, &["--user", "65534:65534"], &["sh", "-c", "id -u; id -g; id -G; cat /proc/self/status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("65534"), "{text}");
    assert_eq!(lines.next(), Some("65534"), "{text}");
    assert_eq!(lines.next(), Some("65534"), "no supplementary groups of root's: {text}");
    let status = lines.collect::<Vec<_>>().join("\n");
    assert_eq!(status_field(&status, "Uid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "{status}");
    assert_eq!(status_field(&status, "Gid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "{status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, cap), "0000000000000000", "{cap} as nobody:\n{status}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
}

#[test]
fn the_command_cannot_leave_its_cgroup_or_touch_the_pins_or_bpf() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let a = n.ns_v4.to_string();
    let body = r#"
mount, bpffs, A = sys.argv[1], sys.argv[2], sys.argv[3]
def own():
    return [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0][3:]
start = own()
me = mount + start
parent = os.path.dirname(me)
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
print("cgroup", start)
print("root-procs", attempt(lambda: write(mount + "/cgroup.procs", str(os.getpid()))))
print("parent-procs", attempt(lambda: write(parent + "/cgroup.procs", str(os.getpid()))))
print("mkdir-child", attempt(lambda: os.mkdir(me + "/escape")))
print("mkdir-sibling", attempt(lambda: os.mkdir(parent + "/escape")))
print("subtree-control", attempt(lambda: write(me + "/cgroup.subtree_control", "+pids")))
pins = "%s/sbx/%d" % (bpffs, os.stat(me).st_ino)
names = sorted(os.listdir(pins))
print("pins", len(names))
print("unlink-pins", " ".join(sorted(set(attempt(lambda: os.unlink(pins + "/" + p)) for p in names))))
print("rename-pin", attempt(lambda: os.rename(pins + "/" + names[0], pins + "/moved")))
print("create-in-pins", attempt(lambda: write(pins + "/new", "x")))
print("rmdir-pins", attempt(lambda: os.rmdir(pins)))
print("pins-after", len(os.listdir(pins)))
libc = ctypes.CDLL(None, use_errno=True)
def call(f):
    def g():
        if f() != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return g
# bpf(BPF_OBJ_GET = 7, attr, size): open a pinned link by path.
path = ctypes.create_string_buffer((pins + "/" + names[0]).encode())
attr = (ctypes.c_uint64 * 16)(ctypes.cast(path, ctypes.c_void_p).value)
nr_bpf = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
print("bpf", attempt(call(lambda: 0 if libc.syscall(nr_bpf, 7, attr, 128) >= 0 else -1)))
for name, flag in [("newcgroup", 0x02000000), ("newnet", 0x40000000), ("newuser", 0x10000000), ("newns", 0x00020000)]:
    print("unshare-" + name, attempt(call(lambda: libc.unshare(flag))))
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
print("setns", attempt(call(lambda: libc.setns(fd, 0))))
print("cgroup-after", own())
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
print("connect-a", attempt(lambda: s.connect((A, 8080))))
"#;
    let mount = cgroup2_mount();
    let bpffs = bpffs();
    let args = [mount.to_str().expect("UTF-8"), bpffs.to_str().expect("UTF-8"), a.as_str()];
    let mut command = vec!["python3", "-c"];
    let body = script(body);
    command.push(&body);
    command.extend(args);
    let out = fx.sbx.run_ok(&fx.cg, &["--default", "deny"], &command);
    let r = results(&out);
    let rel = fx.cg.path().strip_prefix(&mount).expect("the test cgroup is under the mount");
    let start = result(&r, "cgroup");
    assert_eq!(Path::new(start).parent(), Some(Path::new("/").join(rel).as_path()), "{}", describe(&out));
    for name in ["root-procs", "parent-procs", "mkdir-child", "mkdir-sibling", "subtree-control"] {
        assert_eq!(result(&r, name), "EROFS", "{name}: {}", describe(&out));
    }
    let pins: usize = result(&r, "pins").parse().expect("a count");
    assert!(pins >= 6, "the command can see its pins: {}", describe(&out));
    for name in ["unlink-pins", "rename-pin", "create-in-pins", "rmdir-pins"] {
        assert_eq!(result(&r, name), "EROFS", "{name}: {}", describe(&out));
    }
    assert_eq!(result(&r, "pins-after"), pins.to_string(), "{}", describe(&out));
    assert_eq!(result(&r, "bpf"), "EPERM", "{}", describe(&out));
    for name in ["unshare-newcgroup", "unshare-newnet", "unshare-newuser", "unshare-newns", "setns"] {
        assert_eq!(result(&r, name), "EPERM", "{name}: {}", describe(&out));
    }
    assert_eq!(result(&r, "cgroup-after"), start, "{}", describe(&out));
    assert_eq!(result(&r, "connect-a"), "EPERM", "still enforced after all that: {}", describe(&out));

    // The same with unshare(1), as a user would.
    let script = "for f in --cgroup -n -U -m; do unshare $f true 2>&1; echo \"$f $?\"; done";
    let out = fx.sbx.run_ok(&fx.cg, &["--default", "deny"], &["sh", "-c", script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for flag in ["--cgroup", "-n", "-U", "-m"] {
        assert!(text.contains(&format!("{flag} 1")), "unshare {flag} must fail: {text}");
    }
    assert_eq!(text.matches("Operation not permitted").count(), 4, "{text}");
}

#[test]
fn inherited_sockets_are_closed_unless_kept() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let a = n.ns_v4.to_string();
    // Uses descriptor 5, which the harness passes in: the server greets
    // every connection with "hello".
    let body = r#"
A = sys.argv[1]
def use():
    s = socket.socket(fileno=5)
    s.settimeout(3)
    data = s.recv(100)
    if data != b"hello\n":
        raise OSError(errno.EIO, repr(data))
print("fd5", attempt(use))
f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
f.settimeout(3)
print("fresh", attempt(lambda: f.connect((A, 8080))))
"#;
    let body = script(body);
    let run_with_fd5 = |keep: bool| {
        // Opened by the harness, outside the sandbox, to the host the
        // sandbox denies.
        let sock = TcpStream::connect((n.ns_v4, 8080)).expect("connecting outside the sandbox");
        let fd = sock.as_raw_fd();
        let policy: &[&str] = if keep { &["--keep-fd", "5"] } else { &[] };
        let mut cmd = fx.sbx.run_cmd(&fx.cg, policy, &["python3", "-c", &body, &a]);
        // SAFETY: dup2 between fork and exec, on a descriptor that is
        // open in the parent until `output` returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 5) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("running sbx-user run");
        drop(sock);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        results(&out)
    };
    let r = run_with_fd5(false);
    assert_eq!(result(&r, "fd5"), "EBADF", "the inherited socket is closed: {r:?}");
    assert_eq!(result(&r, "fresh"), "EPERM", "{r:?}");
    // Known limit: a socket connected outside the sandbox was judged
    // outside, when it was connected; `--keep-fd` hands it over on
    // purpose, and the hooks never see it again.
    let r = run_with_fd5(true);
    assert_eq!(result(&r, "fd5"), "ok", "a kept socket still talks to the denied host: {r:?}");
    assert_eq!(result(&r, "fresh"), "EPERM", "{r:?}");
}

#[test]
fn io_uring_cannot_be_set_up() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // io_uring_setup(8, &params): 425 on every architecture; params is
    // 120 bytes, zeroed.
    let body = r#"
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
def setup():
    fd = libc.syscall(425, 8, params)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    os.close(fd)
print("io_uring_setup", attempt(setup))
"#;
    let body = script(body);
    let outside = Command::new("python3").args(["-c", &body]).output().expect("running python3");
    let outside = String::from_utf8_lossy(&outside.stdout).trim().to_owned();
    let out = sbx.run_ok(&cg, &[], &["python3", "-c", &body]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "io_uring_setup EPERM\n", "{}", describe(&out));
    if outside != "io_uring_setup ok" {
        eprintln!("note: io_uring is not available outside the sandbox either ({outside})");
    }
}

#[test]
fn the_first_instruction_of_the_command_already_runs_in_the_sandbox() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let receiver = n.udp_receiver(9999);
    let sniffer = n.sniffer();
    let out = fx.sbx.run_ok(&fx.cg, &[], &["cat", "/proc/self/cgroup"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("0::")).unwrap_or_else(|| panic!("no cgroup2 line: {text}"));
    let rel = fx.cg.path().strip_prefix(cgroup2_mount()).expect("under the mount");
    let path = Path::new(&line[3..]);
    assert_eq!(path.parent(), Some(Path::new("/").join(rel).as_path()), "{text}");
    assert!(path.file_name().is_some_and(|f| f.to_string_lossy().starts_with("run-")), "{text}");

    // The probe is the command itself: its first system calls are the
    // connect and the send.
    let a = n.ns_v4.to_string();
    let p = fx.probe.arg();
    let out = fx.sbx.run_ok(&fx.cg, &["--default", "deny"], &[p, "connect", "tcp", &a, "8080"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "err EPERM\n", "{}", describe(&out));
    let out = fx.sbx.run_ok(&fx.cg, &["--default", "deny"], &[p, "sendto", &a, "9999", "first-instruction"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "err EPERM\n", "{}", describe(&out));
    assert_eq!(to(&sniffer.sync(), n.ns_v4.into()), Vec::<&Packet>::new(), "packets reached the denied host");
    assert_eq!(receiver.sync(), Vec::<String>::new());
}

#[test]
fn no_terminal_injection_ptrace_or_key_upcalls() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // TIOCSTI would push input into the caller's terminal, which its shell
    // runs outside the sandbox after sbx exits. Refused whatever fd 0 is
    // (without the filter a non-tty stdin would give ENOTTY instead).
    let script = r#"
import ctypes, errno, fcntl, os, termios
libc = ctypes.CDLL(None, use_errno=True)
def report(name, rc):
    print(name, "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()])
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x"); print("tiocsti ok")
except OSError as e:
    print("tiocsti", errno.errorcode[e.errno])
report("ptrace", libc.ptrace(16, os.getppid(), 0, 0))            # PTRACE_ATTACH
report("keyctl", libc.syscall(250, 0, 0, 0, 0, 0))                # keyctl(GET_KEYRING_ID)
report("request_key", libc.syscall(249, b"dns_resolver", b"example.test", None, 0))
report("process_vm_readv", libc.syscall(310, os.getppid(), None, 0, None, 0, 0))
"#;
    let out = sbx.run_ok(&cg, &["--user", "0"], &["python3", "-c", script]);
    let got = results(&out);
    for name in ["tiocsti", "ptrace", "keyctl", "request_key", "process_vm_readv"] {
        let r = got.iter().find(|(n, _)| n == name).map(|(_, r)| r.as_str());
        assert_eq!(r, Some("EPERM"), "{name}: {}", describe(&out));
    }
}
