//! `run`'s DNS stub for `dns = "pinned"`: name resolution that matches the
//! policy and cannot be a channel.
//!
//! A name query is data: a resolver that forwards it (systemd-resolved on
//! 127.0.0.53, a LAN resolver) carries whatever the sandbox encodes in the
//! name to whoever serves the zone. So under `dns = "pinned"` the compiled
//! policy refuses loopback port 53 (see [`crate::compile`]) except one
//! per-run loopback address where this stub, running in the `sbx-user`
//! process outside the sandbox, answers over UDP and TCP:
//!
//! - the names of pinned allow rules (`allow = ["github.com:443"]`) with
//!   the addresses they were pinned to, `A` and `AAAA` (other types of a
//!   pinned name: an empty answer, so a client asking `A` and `AAAA` gets
//!   what exists);
//! - `localhost` and `*.localhost` with `127.0.0.1` and `::1` (RFC 6761);
//! - everything else with `NXDOMAIN` at once, and the refusal is reported
//!   (`run --log-denials`), naming the querying process where it can be
//!   found.
//!
//! The stub never sends a packet anywhere but back to the client: it has no
//! upstream. The command's mount namespace gets a `resolv.conf` naming the
//! stub, an `/etc/hosts` without the pinned names (the stub answers those),
//! and an `nsswitch.conf` whose `hosts` line is `files dns`, so glibc does
//! not go around the stub through nss-resolve, mDNS or nscd modules
//! ([`ResolverFiles`]).
//!
//! The wire format is parsed by hand ([`answer`]): one question, no
//! compression in it, at most 255 bytes of name; anything else gets
//! `FORMERR` or `NOTIMP`, and a packet that is not a query is dropped. A
//! query with an EDNS `OPT` record gets one back (payload size 1232); an
//! answer that does not fit a UDP reply is truncated (`TC`) so the client
//! asks again over TCP.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use crate::policy::{Action, Policy, DNS_PORT};

/// `A`.
pub const TYPE_A: u16 = 1;
/// `AAAA`.
pub const TYPE_AAAA: u16 = 28;
/// `ANY` (`*`).
pub const TYPE_ANY: u16 = 255;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;

/// Largest UDP reply without EDNS (RFC 1035).
pub const UDP_PLAIN_MAX: usize = 512;
/// Largest UDP reply with EDNS, whatever the client offers (the DNS flag
/// day 2020 size, which fits an IPv6 minimum MTU).
pub const UDP_EDNS_MAX: u16 = 1232;
/// Time-to-live of answers: pinned addresses do not change during a run.
const TTL: u32 = 300;

/// What the stub knows: the pinned names and their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Lowercase name without a trailing dot -> its pinned addresses
    /// (empty: pinned by a rule, but it did not resolve).
    pinned: HashMap<String, Vec<IpAddr>>,
}

impl Names {
    /// The pinned names of `policy`'s allow rules.
    #[must_use]
    pub fn of(policy: &Policy) -> Self {
        let mut pinned: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for rule in policy.rules.iter().filter(|r| r.action == Action::Allow) {
            let Some(host) = &rule.host else { continue };
            let addrs = pinned.entry(normal_name(host)).or_default();
            addrs.extend(rule.nets.iter().map(ipnet::IpNet::addr));
            addrs.sort_unstable();
            addrs.dedup();
        }
        Self { pinned }
    }

    /// Whether `name` (any case, with or without the trailing dot) is pinned.
    #[must_use]
    pub fn is_pinned(&self, name: &str) -> bool {
        self.pinned.contains_key(&normal_name(name))
    }
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name the stub refused, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The name asked for, lowercase, bytes outside `[a-z0-9_-]` as `\DDD`.
    pub name: String,
    /// The query type.
    pub qtype: u16,
    /// Why, for the user.
    pub reason: &'static str,
}

/// Why a name that is not pinned fails.
pub const NOT_PINNED: &str = "dns = \"pinned\": not the name of a pinned allow rule, so it does not resolve (allow it by name, e.g. `--allow NAME:443`, or use --dns host)";
/// Why a pinned name that did not resolve fails.
pub const UNRESOLVED: &str =
    "dns = \"pinned\": this name's allow rule did not resolve when the policy was applied (--allow-unresolved)";
/// Why a query of another class fails.
pub const NOT_IN: &str = "dns = \"pinned\": only class IN is answered";

/// The name of a query type, for reports.
#[must_use]
pub fn type_name(qtype: u16) -> String {
    match qtype {
        TYPE_A => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        TYPE_AAAA => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        TYPE_ANY => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

/// A question, as parsed.
struct Question<'a> {
    /// The question section as received (name, type, class), echoed back
    /// so that the client's letter case (0x20 randomisation) survives.
    raw: &'a [u8],
    name: String,
    qtype: u16,
    qclass: u16,
    /// The query carried an EDNS `OPT` record.
    edns: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses the question of `packet`, whose header is a query; the error is
/// the rcode of a reply without a question.
fn parse_question(packet: &[u8]) -> Result<Question<'_>, u16> {
    let formerr = RCODE_FORMERR;
    let counts = |i: usize| be16(packet, 4 + 2 * i).unwrap_or(0);
    if counts(0) != 1 || counts(1) != 0 || counts(2) != 0 {
        return Err(formerr);
    }
    let mut at = 12;
    let mut name = String::new();
    let mut wire_len = 1;
    loop {
        let len = usize::from(*packet.get(at).ok_or(RCODE_FORMERR)?);
        at += 1;
        if len == 0 {
            break;
        }
        // No compression pointers or extended labels in a question; a
        // label is at most 63 bytes and a name at most 255.
        if len > 63 {
            return Err(formerr);
        }
        wire_len += len + 1;
        let label = packet.get(at..at + len).ok_or(RCODE_FORMERR)?;
        if wire_len > 255 {
            return Err(formerr);
        }
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b.to_ascii_lowercase()));
            } else {
                let _ = write!(name, "\\{b:03}");
            }
        }
        at += len;
    }
    let qtype = be16(packet, at).ok_or(RCODE_FORMERR)?;
    let qclass = be16(packet, at + 2).ok_or(RCODE_FORMERR)?;
    let raw = &packet[12..at + 4];
    // An OPT pseudo-record first in the additional section: root name,
    // type 41. Anything else there is ignored.
    let edns = counts(3) >= 1 && packet.get(at + 4) == Some(&0) && be16(packet, at + 5) == Some(TYPE_OPT);
    Ok(Question { raw, name, qtype, qclass, edns })
}

/// What the stub says about one question.
enum Verdict {
    /// NOERROR with these addresses (possibly none: the name exists, the
    /// type does not).
    Addresses(Vec<IpAddr>),
    /// A negative answer, reported.
    Refused(u16, &'static str),
}

fn decide(names: &Names, q: &Question<'_>) -> Verdict {
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        return Verdict::Refused(RCODE_REFUSED, NOT_IN);
    }
    let localhost = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let addrs: &[IpAddr] = if q.name == "localhost" || q.name.ends_with(".localhost") {
        &localhost
    } else {
        match names.pinned.get(&q.name) {
            Some(a) if a.is_empty() => return Verdict::Refused(RCODE_NXDOMAIN, UNRESOLVED),
            Some(a) => a,
            None => return Verdict::Refused(RCODE_NXDOMAIN, NOT_PINNED),
        }
    };
    let wanted =
        |ip: &&IpAddr| matches!((q.qtype, ip), (TYPE_ANY, _) | (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_)));
    Verdict::Addresses(addrs.iter().filter(wanted).copied().collect())
}

/// The answer to `packet`, at most `max_len` bytes (a longer one is
/// truncated, with `TC` set), and the refusal to report if it is one.
/// `None`: no reply at all (not a query).
#[must_use]
pub fn answer(names: &Names, packet: &[u8], max_len: usize) -> Option<(Vec<u8>, Option<Refusal>)> {
    let id = be16(packet, 0)?;
    let flags = be16(packet, 2)?;
    if packet.len() < 12 || flags & 0x8000 != 0 {
        return None;
    }
    // QR, AA, RA; the client's RD; the opcode stays QUERY (0).
    let reply_flags = |rcode: u16| 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode;
    let header = |flags: u16, qd: u16, an: u16, ar: u16| {
        let mut out = Vec::with_capacity(UDP_PLAIN_MAX);
        for v in [id, flags, qd, an, 0, ar] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    };
    if (flags >> 11) & 0xf != 0 {
        return Some((header(reply_flags(RCODE_NOTIMP) | (flags & 0x7800), 0, 0, 0), None));
    }
    let q = match parse_question(packet) {
        Ok(q) => q,
        Err(rcode) => return Some((header(reply_flags(rcode), 0, 0, 0), None)),
    };
    let opt: &[u8] = if q.edns {
        // Root name, OPT, payload size, extended rcode and version 0,
        // no flags, no options.
        const SIZE: [u8; 2] = UDP_EDNS_MAX.to_be_bytes();
        &[0, 0, 41, SIZE[0], SIZE[1], 0, 0, 0, 0, 0, 0]
    } else {
        &[]
    };
    let ar = u16::from(q.edns);
    let (rcode, addrs, refusal) = match decide(names, &q) {
        Verdict::Addresses(a) => (0, a, None),
        Verdict::Refused(rcode, reason) => {
            (rcode, Vec::new(), Some(Refusal { name: display_name(&q.name), qtype: q.qtype, reason }))
        }
    };
    let mut records = Vec::new();
    for ip in &addrs {
        // The name is a pointer to the question's (offset 12).
        records.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        records.extend_from_slice(&rtype.to_be_bytes());
        records.extend_from_slice(&CLASS_IN.to_be_bytes());
        records.extend_from_slice(&TTL.to_be_bytes());
        records.extend_from_slice(&u16::try_from(data.len()).expect("4 or 16").to_be_bytes());
        records.extend_from_slice(&data);
    }
    let an = u16::try_from(addrs.len()).unwrap_or(u16::MAX);
    let full = 12 + q.raw.len() + records.len() + opt.len();
    let mut out = if full <= max_len {
        let mut out = header(reply_flags(rcode), 1, an, ar);
        out.extend_from_slice(q.raw);
        out.extend_from_slice(&records);
        out
    } else {
        let mut out = header(reply_flags(rcode) | 0x0200, 1, 0, ar);
        out.extend_from_slice(q.raw);
        out
    };
    out.extend_from_slice(opt);
    Some((out, refusal))
}

fn display_name(name: &str) -> String {
    if name.is_empty() {
        ".".to_owned()
    } else {
        name.to_owned()
    }
}

/// The UDP size limit for a reply to `packet`.
fn udp_limit(packet: &[u8]) -> usize {
    match parse_question(packet) {
        Ok(q) if q.edns => usize::from(UDP_EDNS_MAX),
        _ => UDP_PLAIN_MAX,
    }
}

// ---------------------------------------------------------------------------
// The files the command sees.

/// The generated resolver configuration of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverFiles {
    /// `/etc/resolv.conf`: the stub only, no search domains (each would
    /// turn one name into several queries).
    pub resolv_conf: String,
    /// `/etc/hosts`: the host's, without the pinned names.
    pub hosts: Option<String>,
    /// `/etc/nsswitch.conf`: the host's, with `hosts: files dns`.
    pub nsswitch: Option<String>,
}

impl ResolverFiles {
    /// The files for a stub on `stub`, from the host's `hosts` and
    /// `nsswitch` (each `None` when the host has none).
    #[must_use]
    pub fn new(stub: Ipv4Addr, names: &Names, hosts: Option<&str>, nsswitch: Option<&str>) -> Self {
        let resolv_conf = format!(
            "# sbx-user run (dns = \"pinned\"): only the names of pinned allow rules resolve,\n\
             # answered by sbx outside the sandbox; every other name fails at once.\n\
             nameserver {stub}\noptions timeout:2 attempts:2\n"
        );
        Self { resolv_conf, hosts: hosts.map(|h| hosts_without(h, names)), nsswitch: nsswitch.map(nsswitch_hosts) }
    }

    /// Writes the files into `dir` and returns `(file, path to mount it
    /// on)` for each target that exists on the host.
    pub fn write(&self, dir: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
        use std::os::unix::fs::PermissionsExt as _;
        let Self { resolv_conf, hosts, nsswitch } = self;
        let mut binds = Vec::new();
        for (name, text, target) in [
            ("resolv.conf", Some(resolv_conf), RESOLV_CONF),
            ("hosts", hosts.as_ref(), HOSTS),
            ("nsswitch.conf", nsswitch.as_ref(), NSSWITCH),
        ] {
            let Some(text) = text else { continue };
            // A target that does not exist (or a dangling link, such as a
            // resolv.conf pointing into a stopped systemd-resolved) cannot
            // be mounted over; without resolv.conf glibc asks 127.0.0.1:53,
            // which the policy refuses: names fail at once, pinned ones too.
            if !Path::new(target).exists() {
                log::info!("{target} does not exist: not replaced");
                continue;
            }
            let file = dir.join(name);
            std::fs::write(&file, text)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
            binds.push((file, PathBuf::from(target)));
        }
        Ok(binds)
    }
}

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The host's hosts file.
pub const HOSTS: &str = "/etc/hosts";
/// The host's name service switch configuration.
pub const NSSWITCH: &str = "/etc/nsswitch.conf";

/// `hosts` without the pinned names (a line left with no name goes).
#[must_use]
pub fn hosts_without(hosts: &str, names: &Names) -> String {
    let mut out =
        String::from("# sbx-user run: the host's /etc/hosts without the pinned names, which sbx's DNS stub answers.\n");
    for line in hosts.lines() {
        let (body, comment) = line.split_once('#').map_or((line, None), |(b, c)| (b, Some(c)));
        let mut fields = body.split_whitespace();
        let Some(addr) = fields.next() else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let all: Vec<&str> = fields.collect();
        let kept: Vec<&str> = all.iter().copied().filter(|n| !names.is_pinned(n)).collect();
        if kept.len() == all.len() {
            out.push_str(line);
        } else if kept.is_empty() {
            continue;
        } else {
            out.push_str(addr);
            out.push('\t');
            out.push_str(&kept.join(" "));
            if let Some(c) = comment {
                out.push_str(" #");
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

/// `nsswitch` with its `hosts` line replaced by `hosts: files dns` (or
/// one added): the other modules (`resolve`, `mdns*`, `myhostname`,
/// `nis`, ...) answer from outside the sandbox, some by asking the network.
#[must_use]
pub fn nsswitch_hosts(nsswitch: &str) -> String {
    // On a line of its own: glibc reads a `#` after the services as the
    // name of one more (libnss_#.so.2), and fails the lookup with EBUSY.
    const LINE: &str = "# sbx-user run (dns = \"pinned\"): /etc/hosts, then sbx's stub\nhosts:          files dns";
    let mut out = String::new();
    let mut replaced = false;
    for line in nsswitch.lines() {
        if line.trim_start().starts_with("hosts:") {
            if !replaced {
                out.push_str(LINE);
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(LINE);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// The server.

/// Reports a refusal: the refusal, the client's address, `tcp`, and how
/// many refusals the rate limit kept from being reported since the last
/// one that was.
pub type Report = Box<dyn Fn(&Refusal, SocketAddr, bool, u64) + Send + Sync>;

/// Called about once a second: new names when the policy changed (an
/// `update` of the sandbox re-pins its names), else `None`.
pub type Refresh = Box<dyn FnMut() -> Option<Names> + Send>;

/// Why the stub could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the DNS stub for dns = \"pinned\": {source}\nHint: sbx binds 127.53.X.Y port 53 (UDP and TCP) for each run; pass --dns host to use the host's resolvers instead, judged like any destination")]
pub struct StubError {
    /// The error of the last address tried.
    #[source]
    pub source: io::Error,
}

/// Most TCP connections served at once; more are closed at accept.
const MAX_TCP: usize = 32;
/// How long a TCP client may take between messages.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// A running stub; stops when [`Stub::stop`] is called or it is dropped.
pub struct Stub {
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The per-run stub addresses: `127.53.0.1` to `127.53.255.254`.
fn candidate(seed: u32, i: u32) -> Ipv4Addr {
    let n = (seed.wrapping_add(i.wrapping_mul(7919))) % 65534 + 1;
    let [_, _, hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(127, 53, hi, lo)
}

impl Stub {
    /// Binds UDP and TCP port 53 on a free address in `127.53.0.0/16`
    /// and starts answering from `names`; `report` gets each refusal, and
    /// `refresh` is asked for new names about once a second.
    pub fn start(names: Names, report: Report, refresh: Refresh) -> Result<Self, StubError> {
        let mut last = io::Error::other("no address tried");
        for i in 0..64 {
            let addr = candidate(std::process::id(), i);
            let udp = match UdpSocket::bind((addr, DNS_PORT)) {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let tcp = match TcpListener::bind((addr, DNS_PORT)) {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let map = |source| StubError { source };
            udp.set_nonblocking(true).map_err(map)?;
            tcp.set_nonblocking(true).map_err(map)?;
            let (wake, wake_rx) = UnixStream::pair().map_err(map)?;
            let stop = Arc::new(AtomicBool::new(false));
            let server = Server {
                names: Arc::new(RwLock::new(names)),
                report: Arc::new(report),
                stop: Arc::clone(&stop),
                tcp_active: Arc::new(AtomicUsize::new(0)),
                limiter: Arc::new(Mutex::new(Limiter::default())),
            };
            let thread = std::thread::Builder::new()
                .name("sbx-dns".into())
                .spawn(move || server.serve(&udp, &tcp, &wake_rx, refresh))
                .map_err(map)?;
            log::info!("DNS stub on {addr}:{DNS_PORT} (UDP and TCP)");
            return Ok(Self { addr, stop, wake, thread: Some(thread) });
        }
        Err(StubError { source: last })
    }

    /// The address it answers on (port 53).
    #[must_use]
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Stops answering and closes the sockets.
    pub fn stop(mut self) {
        self.halt();
    }

    /// Tells the serving thread to stop, without waiting for it (`stop`
    /// does): it ends while the caller goes on.
    pub fn stop_soon(&mut self) {
        if !self.stop.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write_all(b"x");
        }
    }

    fn halt(&mut self) {
        self.stop_soon();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Reports at most [`Limiter::PER_SECOND`] refusals a second, and the same
/// name once every two seconds (a client asks `A` and `AAAA`, then retries).
#[derive(Default)]
struct Limiter {
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
    recent: HashMap<String, Instant>,
}

impl Limiter {
    const PER_SECOND: u32 = 100;

    /// Whether to report `name` now, and how many were suppressed since the
    /// last report.
    fn admit(&mut self, name: &str, now: Instant) -> Option<u64> {
        if self.recent.get(name).is_some_and(|&t| now.duration_since(t) < Duration::from_secs(2)) {
            return None;
        }
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= Self::PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        if self.recent.len() >= 4096 {
            self.recent.clear();
        }
        self.recent.insert(name.to_owned(), now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct Server {
    names: Arc<RwLock<Names>>,
    report: Arc<Report>,
    stop: Arc<AtomicBool>,
    tcp_active: Arc<AtomicUsize>,
    limiter: Arc<Mutex<Limiter>>,
}

impl Server {
    fn names(&self) -> std::sync::RwLockReadGuard<'_, Names> {
        self.names.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn serve(&self, udp: &UdpSocket, tcp: &TcpListener, wake: &UnixStream, mut refresh: Refresh) {
        let mut buf = vec![0u8; 65_535];
        let mut refreshed = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            if refreshed.elapsed() >= Duration::from_secs(1) {
                refreshed = Instant::now();
                if let Some(names) = refresh() {
                    *self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner) = names;
                }
            }
            let mut fds = [udp.as_raw_fd(), tcp.as_raw_fd(), wake.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: poll on three initialised pollfds that outlive the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, 1000) };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::warn!("DNS stub: poll: {}", io::Error::last_os_error());
                return;
            }
            if fds[2].revents != 0 {
                return;
            }
            if fds[0].revents != 0 {
                while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let packet = &buf[..n];
                    let reply = answer(&self.names(), packet, udp_limit(packet));
                    if let Some((reply, refusal)) = reply {
                        if let Some(r) = &refusal {
                            self.refused(r, peer, false);
                        }
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            }
            if fds[1].revents != 0 {
                while let Ok((stream, peer)) = tcp.accept() {
                    if self.tcp_active.fetch_add(1, Ordering::AcqRel) >= MAX_TCP {
                        self.tcp_active.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let conn = Self {
                        names: Arc::clone(&self.names),
                        report: Arc::clone(&self.report),
                        stop: Arc::clone(&self.stop),
                        tcp_active: Arc::clone(&self.tcp_active),
                        limiter: Arc::clone(&self.limiter),
                    };
                    let spawned = std::thread::Builder::new().name("sbx-dns-tcp".into()).spawn(move || {
                        let _ = conn.serve_tcp(stream, peer);
                        conn.tcp_active.fetch_sub(1, Ordering::AcqRel);
                    });
                    if spawned.is_err() {
                        self.tcp_active.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
    }

    /// Messages with a two-byte length prefix (RFC 1035 4.2.2), until the
    /// client closes, goes idle, or the stub stops.
    fn serve_tcp(&self, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(TCP_IDLE))?;
        stream.set_write_timeout(Some(TCP_IDLE))?;
        let mut buf = vec![0u8; 65_535];
        while !self.stop.load(Ordering::Acquire) {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let len = usize::from(u16::from_be_bytes(len));
            stream.read_exact(&mut buf[..len])?;
            let reply = answer(&self.names(), &buf[..len], 65_535);
            let Some((reply, refusal)) = reply else { continue };
            if let Some(r) = &refusal {
                self.refused(r, peer, true);
            }
            let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
            stream.write_all(&n.to_be_bytes())?;
            stream.write_all(&reply)?;
        }
        Ok(())
    }

    fn refused(&self, r: &Refusal, peer: SocketAddr, tcp: bool) {
        log::info!("DNS stub: refused {} {} from {peer}: {}", r.name, type_name(r.qtype), r.reason);
        let admitted =
            self.limiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(&r.name, Instant::now());
        if let Some(suppressed) = admitted {
            (self.report)(r, peer, tcp, suppressed);
        }
    }
}

// ---------------------------------------------------------------------------
// Who asked.

/// The process in the sandbox (whose processes are listed in `procs`, a
/// `cgroup.procs` file) that owns the socket at `peer`, as `(pid, comm)`:
/// the socket's inode from `/proc/net/{udp,tcp}{,6}`, then the descriptor
/// naming it. `None` when it is gone or cannot be read.
#[must_use]
pub fn peer_process(peer: SocketAddr, tcp: bool, procs: &Path) -> Option<(u32, String)> {
    let inode = socket_inode(peer, tcp)?;
    let want = format!("socket:[{inode}]");
    let pids = std::fs::read_to_string(procs).ok()?;
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Some((pid, crate::diag::printable(comm.trim_end())));
            }
        }
    }
    None
}

fn socket_inode(peer: SocketAddr, tcp: bool) -> Option<u64> {
    let proto = if tcp { "tcp" } else { "udp" };
    for file in [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")] {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (f.get(1), f.get(9)) else { continue };
            let Some((_, port)) = local.rsplit_once(':') else { continue };
            if u16::from_str_radix(port, 16).ok() == Some(peer.port()) {
                if let Ok(i) = inode.parse::<u64>() {
                    if i != 0 {
                        return Some(i);
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
