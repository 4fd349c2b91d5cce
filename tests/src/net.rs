//! A private network namespace joined to the host by a veth pair, with
//! servers inside it.

use std::{
    fs,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{
    probe::{Place, Probe},
    util::{must, wait_until, Background, TempDir},
};

/// Number of distinct test networks: the /24s of `198.18.0.0/16` (the
/// benchmarking range of RFC 2544, which no real network uses; the
/// benchmarks use `198.19.0.0/16`).
const SLOTS: u32 = 256;

/// Where test networks are claimed, so concurrent test processes never
/// use the same subnet or interface names.
const LOCK_DIR: &str = "/run/sbx-tests/nets";

/// A network namespace with a veth pair to the host.
///
/// Slot `k` (claimed with a lock file holding our pid) gives
/// `198.18.k.0/24` and `fd00:18:k::/64`: the host side is `.1`/`::1`, the
/// namespace side holds
/// `.2` and `.3` (`::2`, `::3`). The namespace has loopback up and no
/// default route, so nothing sent inside it can leave the machine.
#[derive(Debug)]
pub struct TestNet {
    name: String,
    host_if: String,
    lock: PathBuf,
    probe: Probe,
    dir: TempDir,
    servers: Mutex<Vec<Background>>,
    /// Host side IPv4 address.
    pub host_v4: Ipv4Addr,
    /// Namespace side IPv4 address.
    pub ns_v4: Ipv4Addr,
    /// Second namespace side IPv4 address.
    pub ns_v4b: Ipv4Addr,
    /// Host side IPv6 address.
    pub host_v6: Ipv6Addr,
    /// Namespace side IPv6 address.
    pub ns_v6: Ipv6Addr,
    /// Second namespace side IPv6 address.
    pub ns_v6b: Ipv6Addr,
}

impl TestNet {
    /// Claims a slot and creates the namespace and veth pair. `probe` is
    /// used to run servers inside.
    ///
    /// # Panics
    /// When not root or `ip` fails.
    #[must_use]
    pub fn new(probe: &Probe) -> Self {
        crate::require_root();
        let (slot, lock) = claim_slot();
        let b = slot % 256;
        let name = format!("sbxt-{slot}");
        let host_if = format!("sbxt{slot}h");
        let ns_if = format!("sbxt{slot}n");
        // Leftovers of a crashed process that held this slot.
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();

        let v4 = |h: u8| Ipv4Addr::new(198, 18, u8::try_from(b).expect("< 256"), h);
        // `b` written in decimal digits read as a hex group: unique per
        // slot and easy to recognise next to the IPv4 subnet.
        let v6 = |h: &str| -> Ipv6Addr { format!("fd00:18:{b}::{h}").parse().expect("valid IPv6") };
        let net = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            lock,
            probe: probe.clone(),
            dir: TempDir::new("net"),
            servers: Mutex::new(Vec::new()),
            host_v4: v4(1),
            ns_v4: v4(2),
            ns_v4b: v4(3),
            host_v6: v6("1"),
            ns_v6: v6("2"),
            ns_v6b: v6("3"),
        };
        // From here on, `net`'s Drop undoes whatever was made.
        let ip = |args: &[&str]| must(Command::new("ip").args(args));
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{}/24", net.host_v4), "dev", &host_if]);
        ip(&["-6", "addr", "add", &format!("{}/64", net.host_v6), "dev", &host_if, "nodad"]);
        ip(&["link", "set", &host_if, "up"]);
        for addr in [net.ns_v4, net.ns_v4b] {
            ip(&["-n", &name, "addr", "add", &format!("{addr}/24"), "dev", &ns_if]);
        }
        for addr in [net.ns_v6, net.ns_v6b] {
            ip(&["-n", &name, "-6", "addr", "add", &format!("{addr}/64"), "dev", &ns_if, "nodad"]);
        }
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        net
    }

    /// The namespace's name (under `/run/netns`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Place`] inside the namespace (and the test's own cgroup).
    #[must_use]
    pub fn place(&self) -> Place {
        Place { cgroup: None, netns: Some(self.name.clone()) }
    }

    /// Starts `cmd` inside the namespace; it is killed when `self` drops.
    /// Returns the file its stdout and stderr go to.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(&self, what: &str, cmd: &mut Command) -> PathBuf {
        let log = self.dir.path().join(format!("bg-{}.log", crate::next_id()));
        let bg = Background::spawn_logged(what, cmd, &self.place(), &log);
        self.servers.lock().expect("not poisoned").push(bg);
        log
    }

    /// Starts a TCP server on `[::]:port` (dual-stack) in the namespace. It
    /// accepts connections in a loop and closes them.
    pub fn serve_tcp(&self, port: u16) {
        self.serve("tcp", port, &self.dir.path().join(format!("tcp-{port}.log")));
    }

    /// Starts a UDP receiver on `[::]:port` (dual-stack) in the namespace,
    /// recording every datagram.
    #[must_use]
    pub fn udp_receiver(&self, port: u16) -> Receiver {
        let log = self.dir.path().join(format!("udp-{port}.log"));
        self.serve("udp", port, &log);
        Receiver { log, to: SocketAddr::new(IpAddr::V4(self.ns_v4), port) }
    }

    fn serve(&self, proto: &str, port: u16, log: &Path) {
        let what = format!("sbx-probe serve {proto} {port} in {}", self.name);
        let mut cmd = Command::new(self.probe.bin());
        cmd.args(["serve", proto, "::", &port.to_string(), log.to_str().expect("UTF-8 temp path")]);
        let mut bg = Background::spawn_at(&what, &mut cmd, &self.place());
        let line = bg.read_line();
        assert_eq!(line, format!("ready {port}"), "{what}");
        self.servers.lock().expect("not poisoned").push(bg);
    }

    /// Starts a packet sniffer in the namespace (`sbx-probe sniff`): it
    /// records every IP packet that arrives there, whatever its
    /// destination port or protocol, including packets no socket would
    /// accept (IP options, source routes, raw protocols).
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn sniffer(&self) -> Sniffer {
        let log = self.dir.path().join(format!("sniff-{}.log", crate::next_id()));
        let what = format!("sbx-probe sniff in {}", self.name);
        let mut cmd = Command::new(self.probe.bin());
        cmd.args(["sniff", log.to_str().expect("UTF-8 temp path")]);
        let mut bg = Background::spawn_at(&what, &mut cmd, &self.place());
        let line = bg.read_line();
        assert_eq!(line, "ready", "{what}");
        self.servers.lock().expect("not poisoned").push(bg);
        Sniffer { log, marker_to: self.ns_v4b, seen: std::cell::Cell::new(0) }
    }

    /// A directory for the test's files, removed with the network.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        match self.servers.lock() {
            Ok(mut s) => s.clear(),
            Err(mut p) => p.get_mut().clear(),
        }
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = fs::remove_file(&self.lock);
    }
}

/// Claims a free slot: creates `LOCK_DIR/<slot>` holding our pid, taking
/// over locks whose process is gone.
fn claim_slot() -> (u32, PathBuf) {
    fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("creating {LOCK_DIR}: {e}"));
    let start = (std::process::id().wrapping_mul(97) + crate::next_id() * 13) % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let path = Path::new(LOCK_DIR).join(slot.to_string());
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {
                fs::write(&path, std::process::id().to_string()).expect("writing the slot lock");
                return (slot, path);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&path).unwrap_or_default();
                let alive = owner.trim().parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                // An empty file is a lock being written right now.
                if !alive
                    && !owner.trim().is_empty()
                    && fs::remove_file(&path).is_ok()
                    && fs::OpenOptions::new().write(true).create_new(true).open(&path).is_ok()
                {
                    fs::write(&path, std::process::id().to_string()).expect("writing the slot lock");
                    return (slot, path);
                }
            }
            Err(e) => panic!("creating {}: {e}", path.display()),
        }
    }
    panic!("no free test network slot in {LOCK_DIR}");
}

/// A UDP receiver in a [`TestNet`]: what arrived, one line per datagram
/// (`PEER PAYLOAD`).
#[derive(Debug)]
pub struct Receiver {
    log: PathBuf,
    to: SocketAddr,
}

impl Receiver {
    /// The payloads received so far.
    #[must_use]
    pub fn payloads(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, p)| p.to_owned()))
            .collect()
    }

    /// Waits up to 5 s for `payload` to arrive.
    #[must_use]
    pub fn wait_for(&self, payload: &str) -> bool {
        wait_until(Duration::from_secs(5), || self.payloads().iter().any(|p| p == payload))
    }

    /// Sends a marker from the test process (outside any sandbox) and
    /// waits for it, so everything sent before has had its chance to
    /// arrive. Returns the payloads received before the marker.
    ///
    /// # Panics
    /// When the marker does not arrive.
    #[must_use]
    pub fn sync(&self) -> Vec<String> {
        let marker = format!("sync-{}", crate::next_id());
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding a UDP socket");
        sock.send_to(marker.as_bytes(), self.to).expect("sending the sync marker");
        assert!(self.wait_for(&marker), "sync marker to {} never arrived", self.to);
        self.payloads().into_iter().take_while(|p| *p != marker).collect()
    }
}

/// One packet a [`Sniffer`] saw arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (of the IP header, i.e. the next hop of a
    /// source-routed packet).
    pub dst: IpAddr,
    /// IPv4 protocol, or the IPv6 header's next header.
    pub proto: u8,
    /// Whether it carries IPv4 options or an IPv6 extension header.
    pub options: bool,
    /// TCP or UDP destination port, when that follows the fixed header.
    pub dport: Option<u16>,
}

/// What a packet sniffer in a [`TestNet`] recorded ([`TestNet::sniffer`]).
#[derive(Debug)]
pub struct Sniffer {
    log: PathBuf,
    marker_to: Ipv4Addr,
    /// Lines of the log already returned by [`Self::sync`].
    seen: std::cell::Cell<usize>,
}

impl Sniffer {
    /// Every packet recorded so far.
    ///
    /// # Panics
    /// When the log has a line it cannot parse.
    #[must_use]
    pub fn packets(&self) -> Vec<Packet> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        // Only whole lines: the sniffer may be writing the next one.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let bad = || -> ! { panic!("bad sniffer line {l:?}") };
                if f.len() != 6 {
                    bad();
                }
                Packet {
                    src: f[1].parse().unwrap_or_else(|_| bad()),
                    dst: f[2].parse().unwrap_or_else(|_| bad()),
                    proto: f[3].parse().unwrap_or_else(|_| bad()),
                    options: f[4] == "1",
                    dport: f[5].parse().ok(),
                }
            })
            .collect()
    }

    /// Sends a UDP marker from the test process (outside any sandbox) to
    /// the namespace's second address on a port of its own and waits for
    /// it, so everything sent before has had its chance to arrive (one
    /// veth, in order). Returns the packets that arrived since the
    /// previous sync, without the markers.
    ///
    /// # Panics
    /// When the marker does not arrive within 5 s.
    #[must_use]
    pub fn sync(&self) -> Vec<Packet> {
        let port = 40_000 + u16::try_from(crate::next_id() % 20_000).expect("< 20000");
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding a UDP socket");
        let is_marker = |p: &Packet| p.dst == IpAddr::V4(self.marker_to) && p.proto == 17 && p.dport == Some(port);
        sock.send_to(b"sbx-sniffer-sync", (self.marker_to, port)).expect("sending the sniffer marker");
        let arrived = wait_until(Duration::from_secs(5), || self.packets().iter().any(is_marker));
        assert!(arrived, "sniffer marker to {}:{port} never arrived", self.marker_to);
        let all = self.packets();
        let end = all.iter().position(is_marker).expect("seen above");
        let start = self.seen.replace(end + 1).min(end);
        all[start..end].to_vec()
    }
}
