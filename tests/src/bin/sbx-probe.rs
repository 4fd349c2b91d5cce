//! `sbx-probe`: one socket operation, reported as `ok` or `err ERRNO_NAME`.
//!
//! The integration tests start it inside a sandboxed cgroup and compare
//! the line it prints with the exact errno they expect. It exits 0 whatever
//! the outcome of the operation; a non-zero exit means the probe itself
//! was misused.
//!
//! ```text
//! sbx-probe connect tcp|udp ADDR PORT [PAYLOAD]   connect (UDP: then send PAYLOAD)
//! sbx-probe connect-thread tcp|udp ADDR PORT      the same from a spawned thread
//! sbx-probe fork-connect tcp|udp ADDR PORT        the same from a forked child
//! sbx-probe sendto ADDR PORT [PAYLOAD]            unconnected UDP sendto
//! sbx-probe connected-sendto ADDR PORT ADDR2 PORT2 PAYLOAD
//!                                                 connect UDP to the first, sendto the second
//! sbx-probe bind tcp|udp ADDR PORT                bind
//! sbx-probe unspec-connect tcp|udp ADDR PORT      connect with sa_family AF_UNSPEC but
//!                                                 ADDR:PORT in the rest of the sockaddr
//! sbx-probe unspec-bind ADDR PORT                 bind an AF_INET socket with AF_UNSPEC
//! sbx-probe socket inet|inet6 stream|dgram|raw|seqpacket PROTO
//!                                                 socket(2) with that protocol number
//! sbx-probe setsockopt ip-options|ipv6-rthdr      set a source route on a fresh UDP socket
//! sbx-probe serve tcp|udp ADDR PORT LOG           server: prints `ready PORT`, then logs
//!                                                 one line per connection or datagram
//! sbx-probe repeat tcp|udp ADDR PORT N            N connects (UDP: connect only, nothing
//!                                                 sent), each on a fresh socket; prints the
//!                                                 count of each outcome, `EPERM 20000`
//! sbx-probe alternate ADDR_A ADDR_B PORT STOPFILE UDP connects (nothing sent) to A, then B,
//!                                                 in a loop: prints `pid PID` first, then
//!                                                 `N RESULT_A RESULT_B` per iteration, and
//!                                                 `done N` once STOPFILE exists
//! sbx-probe sniff LOG                             every IP packet arriving in this network
//!                                                 namespace (AF_PACKET): prints `ready`, then
//!                                                 logs `v4|v6 SRC DST PROTO OPTS DPORT` lines
//! ```
//!
//! IPv6 addresses (including `::ffff:a.b.c.d`) use an `AF_INET6` socket with
//! `IPV6_V6ONLY` off, as dual-stack programs do; IPv4 addresses use
//! `AF_INET`. TCP connects time out after 3 s (`err ETIMEDOUT`).

// The probe shares the package's dependency list but needs only libc.
use sbx_tests as _;
use sbx_user as _;
use serde_json as _;

use std::{
    io::Write as _,
    mem::{size_of, zeroed},
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::exit,
};

const DEFAULT_PAYLOAD: &str = "sbx-probe";
const CONNECT_TIMEOUT_MS: libc::c_int = 3000;

/// The result of one operation: `Ok` or the errno.
type Res = Result<(), i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("E{e}"),
    };
    name.to_owned()
}

fn report(r: Res) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("err {}", errno_name(e)),
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("sbx-probe: {msg}\nsee the module documentation of tests/src/bin/sbx-probe.rs for usage");
    exit(2);
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

fn proto(s: &str) -> Proto {
    match s {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => usage(&format!("protocol must be tcp or udp, not {s:?}")),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| usage(&format!("not an IP address: {s:?}")))
}

fn port(s: &str) -> u16 {
    s.parse().unwrap_or_else(|_| usage(&format!("not a port: {s:?}")))
}

/// A socket address in the layout the kernel takes.
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn new(addr: IpAddr, port: u16) -> Self {
        // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            IpAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: sa_family(libc::AF_INET),
                    // Network byte order, as is the address below.
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // sockaddr_in.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: sa_family(libc::AF_INET6),
                    sin6_port: port.to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self { storage, len: socklen(len) }
    }

    /// Overwrites the address family, e.g. with `AF_UNSPEC`.
    fn set_family(&mut self, family: libc::c_int) {
        self.storage.ss_family = sa_family(family);
    }

    fn ptr(&self) -> *const libc::sockaddr {
        std::ptr::from_ref(&self.storage).cast()
    }
}

fn sa_family(f: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(f).expect("address families fit sa_family_t")
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).expect("small sizes fit socklen_t")
}

fn family(addr: IpAddr) -> libc::c_int {
    match addr {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Res {
    // SAFETY: `value` is a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, std::ptr::from_ref(&value).cast(), socklen(size_of::<libc::c_int>()))
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// A socket of the family `addr` needs; IPv6 sockets are dual-stack.
fn socket(family: libc::c_int, proto: Proto) -> Result<OwnedFd, i32> {
    let ty = match proto {
        Proto::Tcp => libc::SOCK_STREAM,
        Proto::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if family == libc::AF_INET6 {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    Ok(fd)
}

/// connect(2); for TCP non-blocking with a timeout.
fn connect_fd(fd: RawFd, sa: &SockAddr, proto: Proto) -> Res {
    if let Proto::Tcp = proto {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
    }
    // SAFETY: `sa` holds a valid address of length `sa.len`.
    if unsafe { libc::connect(fd, sa.ptr(), sa.len) } == 0 {
        return Ok(());
    }
    let e = errno();
    if e != libc::EINPROGRESS {
        return Err(e);
    }
    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&raw mut pfd, 1, CONNECT_TIMEOUT_MS) };
    if n == 0 {
        return Err(libc::ETIMEDOUT);
    }
    if n < 0 {
        return Err(errno());
    }
    let mut err: libc::c_int = 0;
    let mut len = socklen(size_of::<libc::c_int>());
    // SAFETY: `err` and `len` are live and sized as passed.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, std::ptr::from_mut(&mut err).cast(), &raw mut len)
    };
    match (rc, err) {
        (0, 0) => Ok(()),
        (0, e) => Err(e),
        _ => Err(errno()),
    }
}

fn send_fd(fd: RawFd, payload: &str) -> Res {
    // SAFETY: the payload buffer is live for the call.
    let n = unsafe { libc::send(fd, payload.as_ptr().cast(), payload.len(), 0) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn sendto_fd(fd: RawFd, sa: &SockAddr, payload: &str) -> Res {
    // SAFETY: the payload and address are live for the call.
    let n = unsafe { libc::sendto(fd, payload.as_ptr().cast(), payload.len(), 0, sa.ptr(), sa.len) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn connect(proto: Proto, addr: IpAddr, port: u16, payload: &str) -> Res {
    let fd = socket(family(addr), proto)?;
    connect_fd(fd.as_raw_fd(), &SockAddr::new(addr, port), proto)?;
    if let Proto::Udp = proto {
        send_fd(fd.as_raw_fd(), payload)?;
    }
    Ok(())
}

fn sendto(addr: IpAddr, port: u16, payload: &str) -> Res {
    let fd = socket(family(addr), Proto::Udp)?;
    sendto_fd(fd.as_raw_fd(), &SockAddr::new(addr, port), payload)
}

fn connected_sendto(first: (IpAddr, u16), second: (IpAddr, u16), payload: &str) -> Res {
    let fd = socket(family(first.0), Proto::Udp)?;
    connect_fd(fd.as_raw_fd(), &SockAddr::new(first.0, first.1), Proto::Udp)?;
    sendto_fd(fd.as_raw_fd(), &SockAddr::new(second.0, second.1), payload)
}

fn bind_fd(fd: RawFd, sa: &SockAddr) -> Res {
    // SAFETY: `sa` holds a valid address of length `sa.len`.
    if unsafe { libc::bind(fd, sa.ptr(), sa.len) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// A TCP connect from source address `src` (bound first, port 0).
fn connect_from(src: IpAddr, addr: IpAddr, port: u16) -> Res {
    let fd = socket(family(addr), Proto::Tcp)?;
    bind_fd(fd.as_raw_fd(), &SockAddr::new(src, 0))?;
    connect_fd(fd.as_raw_fd(), &SockAddr::new(addr, port), Proto::Tcp)
}

fn bind(proto: Proto, addr: IpAddr, port: u16) -> Res {
    let fd = socket(family(addr), proto)?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_fd(fd.as_raw_fd(), &SockAddr::new(addr, port))
}

fn unspec_bind(addr: IpAddr, port: u16) -> Res {
    let fd = socket(family(addr), Proto::Tcp)?;
    let mut sa = SockAddr::new(addr, port);
    sa.set_family(libc::AF_UNSPEC);
    bind_fd(fd.as_raw_fd(), &sa)
}

/// connect(2) with `AF_UNSPEC` and ADDR:PORT in the rest of the address.
/// The kernel treats it as a disconnect; prints `ok` when it returned 0
/// and left the socket unconnected, `connected` when it connected
/// somewhere, and for UDP `sent` when a send without address went out.
fn unspec_connect(proto: Proto, addr: IpAddr, port: u16) -> String {
    let fd = match socket(family(addr), proto) {
        Ok(fd) => fd,
        Err(e) => return report(Err(e)),
    };
    let mut sa = SockAddr::new(addr, port);
    sa.set_family(libc::AF_UNSPEC);
    // SAFETY: `sa` holds a valid address of length `sa.len`.
    if unsafe { libc::connect(fd.as_raw_fd(), sa.ptr(), sa.len) } != 0 {
        return report(Err(errno()));
    }
    // SAFETY: sockaddr_storage is plain data.
    let mut peer: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = socklen(size_of::<libc::sockaddr_storage>());
    // SAFETY: `peer` and `len` are live and sized as passed.
    if unsafe { libc::getpeername(fd.as_raw_fd(), std::ptr::from_mut(&mut peer).cast(), &raw mut len) } == 0 {
        return "connected".to_owned();
    }
    if let Proto::Udp = proto {
        match send_fd(fd.as_raw_fd(), DEFAULT_PAYLOAD) {
            Ok(()) => return "sent".to_owned(),
            Err(libc::EDESTADDRREQ | libc::ENOTCONN) => {}
            Err(e) => return format!("send {}", errno_name(e)),
        }
    }
    "ok".to_owned()
}

fn socket_raw(family: &str, ty: &str, proto: &str) -> Res {
    let family = match family {
        "inet" => libc::AF_INET,
        "inet6" => libc::AF_INET6,
        _ => usage("family must be inet or inet6"),
    };
    let ty = match ty {
        "stream" => libc::SOCK_STREAM,
        "dgram" => libc::SOCK_DGRAM,
        "raw" => libc::SOCK_RAW,
        "seqpacket" => libc::SOCK_SEQPACKET,
        _ => usage("type must be stream, dgram, raw or seqpacket"),
    };
    let proto: libc::c_int = proto.parse().unwrap_or_else(|_| usage("protocol must be a number"));
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a fresh descriptor we own; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Sets a source route: an IPv4 loose source route option (type 0x83,
/// length 7, pointer 4, one hop 127.0.0.1, then end of options), or an
/// IPv6 segment routing header (type 4) with one segment (`::1`).
fn set_source_route(which: &str) -> Res {
    let (family, level, name, value): (_, _, _, Vec<u8>) = match which {
        "ip-options" => (libc::AF_INET, libc::IPPROTO_IP, libc::IP_OPTIONS, vec![0x83, 7, 4, 127, 0, 0, 1, 0]),
        "ipv6-rthdr" => {
            // next header, hdr ext len (8-octet units after the first 8),
            // routing type 4, segments left 0, last entry 0, flags, tag,
            // then the one segment (RFC 8754).
            let mut v = vec![0, 2, 4, 0, 0, 0, 0, 0];
            v.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, v)
        }
        _ => usage("setsockopt takes ip-options or ipv6-rthdr"),
    };
    let fd = socket(family, Proto::Udp)?;
    // SAFETY: `value` is live and its length is passed.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), socklen(value.len())) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn fork_run(f: impl FnOnce() -> String) -> String {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: this program is single-threaded here, so the child may run
    // arbitrary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let out = f();
        // SAFETY: writing a live buffer to our pipe, then leaving without
        // running the parent's atexit handlers.
        unsafe {
            libc::write(fds[1], out.as_ptr().cast(), out.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is ours from here on.
    let mut r = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let mut out = String::new();
    std::io::Read::read_to_string(&mut r, &mut out).expect("reading from the child");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if out.is_empty() {
        format!("child died (status {status})")
    } else {
        out
    }
}

fn serve(proto: Proto, addr: IpAddr, port: u16, log: &str) -> ! {
    let fail = |what: &str, e: i32| -> ! {
        eprintln!("sbx-probe serve: {what}: {}", std::io::Error::from_raw_os_error(e));
        exit(1)
    };
    let fd = socket(family(addr), proto).unwrap_or_else(|e| fail("socket", e));
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap_or_else(|e| fail("SO_REUSEADDR", e));
    bind_fd(fd.as_raw_fd(), &SockAddr::new(addr, port)).unwrap_or_else(|e| fail("bind", e));
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| fail("opening the log", e.raw_os_error().unwrap_or(0)));
    match proto {
        Proto::Tcp => {
            // SAFETY: listen on a bound socket we own.
            if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
                fail("listen", errno());
            }
            let listener = std::net::TcpListener::from(fd);
            println!("ready {port}");
            let _ = std::io::stdout().flush();
            loop {
                if let Ok((mut conn, peer)) = listener.accept() {
                    let _ = writeln!(logf, "{peer} connected");
                    let _ = conn.write_all(b"hello\n");
                }
            }
        }
        Proto::Udp => {
            let sock = std::net::UdpSocket::from(fd);
            println!("ready {port}");
            let _ = std::io::stdout().flush();
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\n', " ");
                    let _ = writeln!(logf, "{peer} {text}");
                }
            }
        }
    }
}

/// connect(2) on a fresh socket, and for UDP nothing else.
fn connect_only(proto: Proto, addr: IpAddr, port: u16) -> Res {
    let fd = socket(family(addr), proto)?;
    connect_fd(fd.as_raw_fd(), &SockAddr::new(addr, port), proto)
}

fn outcome(r: Res) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => errno_name(e),
    }
}

fn repeat(proto: Proto, addr: IpAddr, port: u16, n: u32) -> String {
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..n {
        *counts.entry(outcome(connect_only(proto, addr, port))).or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" ")
}

/// The loop of `alternate`; each line is written with one write(2), so a
/// reader of the output file never sees half an iteration as complete.
fn alternate(proto: Proto, a: IpAddr, b: IpAddr, port: u16, stop: &str) -> String {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = out.flush();
    let mut n: u64 = 0;
    while !std::path::Path::new(stop).exists() {
        let ra = outcome(connect_only(proto, a, port));
        let rb = outcome(connect_only(proto, b, port));
        let _ = out.write_all(format!("{n} {ra} {rb}\n").as_bytes());
        let _ = out.flush();
        n += 1;
    }
    format!("done {n}")
}

/// Logs every IPv4 and IPv6 packet that arrives in this namespace (not
/// those sent from it): version, source, destination, protocol (IPv6: the
/// first next-header), whether it has IP options (IPv4 header longer than
/// 20 bytes; IPv6 any extension header), and the UDP or TCP destination
/// port if that is what follows the fixed header (else `-`).
fn sniff(log: &str) -> ! {
    let fail = |what: &str| -> ! {
        eprintln!("sbx-probe sniff: {what}: {}", std::io::Error::last_os_error());
        exit(1)
    };
    let all = i32::from(u16::try_from(libc::ETH_P_ALL).expect("16-bit").to_be());
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, all) };
    if fd < 0 {
        fail("socket(AF_PACKET)");
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap_or_else(|e| {
        eprintln!("sbx-probe sniff: opening {log}: {e}");
        exit(1)
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = socklen(size_of::<libc::sockaddr_ll>());
        // SAFETY: `buf`, `sll` and `len` are live and sized as passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut sll).cast(),
                &raw mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let p = &buf[..n];
        // sll_protocol is the EtherType in network byte order.
        let line = match u16::from_be(sll.sll_protocol) {
            0x0800 if p.len() >= 20 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let src = std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let dst = std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                let proto = p[9];
                let dport = match proto {
                    6 | 17 if p.len() >= ihl + 4 => u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]).to_string(),
                    _ => "-".to_owned(),
                };
                format!("v4 {src} {dst} {proto} {} {dport}", u8::from(ihl > 20))
            }
            0x86DD if p.len() >= 40 => {
                let addr = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&p[o..o + 16]);
                    std::net::Ipv6Addr::from(a)
                };
                let nh = p[6];
                let ext = matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140);
                let dport = match nh {
                    6 | 17 if p.len() >= 44 => u16::from_be_bytes([p[42], p[43]]).to_string(),
                    _ => "-".to_owned(),
                };
                format!("v6 {} {} {nh} {} {dport}", addr(8), addr(24), u8::from(ext))
            }
            _ => continue,
        };
        let _ = writeln!(logf, "{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = match a.as_slice() {
        ["connect", p, addr, pt] => report(connect(proto(p), ip(addr), port(pt), DEFAULT_PAYLOAD)),
        ["connect", p, addr, pt, payload] => report(connect(proto(p), ip(addr), port(pt), payload)),
        ["connect-thread", p, addr, pt] => {
            let (p, addr, pt) = (proto(p), ip(addr), port(pt));
            let h = std::thread::spawn(move || connect(p, addr, pt, DEFAULT_PAYLOAD));
            report(h.join().expect("the connect thread panicked"))
        }
        ["fork-connect", p, addr, pt] => {
            let (p, addr, pt) = (proto(p), ip(addr), port(pt));
            fork_run(|| report(connect(p, addr, pt, DEFAULT_PAYLOAD)))
        }
        ["sendto", addr, pt] => report(sendto(ip(addr), port(pt), DEFAULT_PAYLOAD)),
        ["sendto", addr, pt, payload] => report(sendto(ip(addr), port(pt), payload)),
        ["connected-sendto", a1, p1, a2, p2, payload] => {
            report(connected_sendto((ip(a1), port(p1)), (ip(a2), port(p2)), payload))
        }
        ["bind", p, addr, pt] => report(bind(proto(p), ip(addr), port(pt))),
        ["connect-from", src, addr, pt] => report(connect_from(ip(src), ip(addr), port(pt))),
        ["unspec-connect", p, addr, pt] => unspec_connect(proto(p), ip(addr), port(pt)),
        ["unspec-bind", addr, pt] => report(unspec_bind(ip(addr), port(pt))),
        ["socket", family, ty, proto] => report(socket_raw(family, ty, proto)),
        ["setsockopt", which] => report(set_source_route(which)),
        ["serve", p, addr, pt, log] => serve(proto(p), ip(addr), port(pt), log),
        ["repeat", p, addr, pt, n] => {
            repeat(proto(p), ip(addr), port(pt), n.parse().unwrap_or_else(|_| usage("N must be a number")))
        }
        ["alternate", a1, a2, pt, stop] => alternate(Proto::Udp, ip(a1), ip(a2), port(pt), stop),
        ["alternate", a1, a2, pt, stop, p] => alternate(proto(p), ip(a1), ip(a2), port(pt), stop),
        ["sniff", log] => sniff(log),
        _ => usage(&format!("bad arguments: {args:?}")),
    };
    println!("{out}");
}
