//! `sbx-bench-worker`: the process `cargo xtask bench` starts inside a
//! cgroup to time socket calls from there.
//!
//! The parent moves it into the cgroup between fork and exec, so every
//! socket it makes belongs to that cgroup (the kernel records a socket's
//! cgroup when the socket is created, and runs the cgroup's `sock_addr`
//! programs for it). It contacts loopback, or with `percall --addr` the
//! test host in the benchmark's own network namespace (198.18.0.0/15);
//! it refuses any other address.
//!
//! - `percall`: tight loops of one socket operation each, reporting ns per
//!   operation and the outcome of every call (`ok` or the errno name). The
//!   parent passes a listening TCP socket as fd 3 and two bound UDP sockets
//!   as fds 4 and 5 (the allowed and the denied UDP port) so it need not
//!   bind anything itself: bind is a hook too.
//! - `hop`: for a list of cgroups, move into each and check that its own
//!   port (on loopback or the test host) is not refused by policy and its
//!   neighbour's is refused with EPERM.
//! - `paced`: denied connects at a steady pace, each stamped with
//!   `CLOCK_MONOTONIC` just before the call, for event latency.
//! - `spawn`: runs a list of commands one after another, timing each. The
//!   parent places this process in the cgroups the commands must run in
//!   (a memory cgroup that counts what `sbx-user attach` creates) once;
//!   its children are born there, so no command pays for a migration
//!   between cgroups (which waits for an RCU grace period).
//!
//! Output is one JSON object on stdout.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _},
    net::Ipv4Addr,
    os::fd::RawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

// The bench draws its charts with plotters; the worker shares the
// package's dependencies but draws nothing.
use plotters as _;

#[path = "../bench/protocol.rs"]
mod protocol;

use protocol::{FD_LISTENER, FD_UDP_ALLOWED, FD_UDP_DENIED, SPREAD_PORTS};

/// UDP sends between two drains of the receiving socket. Small enough that
/// the receive buffer never overflows (a drop is cheaper than a delivery
/// and would flatter the baseline), large enough that the clock reads
/// around each batch cost nothing per send.
const UDP_BATCH: u32 = 64;

#[derive(Parser)]
#[command(name = "sbx-bench-worker", about = "Timing worker for `cargo xtask bench`; not for direct use")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time each per-call operation.
    Percall(PercallArgs),
    /// Check the policy of each cgroup in a list.
    Hop(HopArgs),
    /// Connects at a steady pace, stamped.
    Paced(PacedArgs),
    /// Runs commands one after another, timing each.
    Spawn(SpawnArgs),
}

#[derive(clap::Args)]
struct SpawnArgs {
    /// File with one command per line, its words separated by tabs.
    #[arg(long)]
    list: PathBuf,
}

#[derive(clap::Args)]
struct PacedArgs {
    /// Loopback port to connect to.
    #[arg(long)]
    port: u16,
    /// Number of connects.
    #[arg(long)]
    count: u32,
    /// Pause between connects, in milliseconds.
    #[arg(long)]
    interval_ms: u64,
}

#[derive(clap::Args)]
struct PercallArgs {
    /// Where the ports below are: 127.0.0.1, or the test host in the
    /// benchmark's network namespace (an address in 198.18.0.0/15).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST, value_parser = bench_addr)]
    addr: Ipv4Addr,
    /// Port of the listener on fd 3.
    #[arg(long)]
    tcp_port: u16,
    /// A bound, non-listening TCP port the policy allows: connect gets
    /// ECONNREFUSED.
    #[arg(long)]
    refused_port: u16,
    /// More bound, non-listening TCP ports the policy allows, connected to
    /// in turn by `refused_spread`.
    #[arg(long, value_delimiter = ',')]
    spread_ports: Vec<u16>,
    /// A bound, non-listening TCP port the policy denies.
    #[arg(long)]
    denied_port: u16,
    /// Port of the UDP socket on fd 4 (allowed).
    #[arg(long)]
    udp_port: u16,
    /// Port of the UDP socket on fd 5 (denied).
    #[arg(long)]
    denied_udp_port: u16,
    /// Iterations of the connect+accept+close cycle.
    #[arg(long)]
    tcp_iters: u32,
    /// Iterations of each of the other operations.
    #[arg(long)]
    fast_iters: u32,
    /// Apply a Landlock ruleset (ABI 4) that handles TCP connect and allows
    /// only these ports, before timing anything.
    #[arg(long, value_delimiter = ',')]
    landlock_connect: Vec<u16>,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Operations to run (default: all).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
}

#[derive(clap::Args)]
struct HopArgs {
    /// File with one line per cgroup: `PATH OWN_PORT NEIGHBOUR_PORT`.
    #[arg(long)]
    list: PathBuf,
    /// Where the ports are: 127.0.0.1, or the test host in the benchmark's
    /// network namespace (an address in 198.18.0.0/15).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST, value_parser = bench_addr)]
    addr: Ipv4Addr,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Percall(a) => percall(&a),
        Cmd::Hop(a) => hop(&a),
        Cmd::Paced(a) => paced(&a),
        Cmd::Spawn(a) => spawn(&a),
    }
}

/// Runs every command of the list in turn (stdout discarded, stderr kept
/// for the error), printing the wall time of each in ns; stops at the
/// first that fails.
fn spawn(a: &SpawnArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.list).with_context(|| format!("reading {}", a.list.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let mut ns = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let mut words = line.split('\t');
        let program = words.next().context("an empty command")?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(words)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let start = Instant::now();
        let out = cmd.output().with_context(|| format!("running {}", line.replace('\t', " ")))?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "command {} of {} failed ({}): {}: {}",
                i + 1,
                lines.len(),
                out.status,
                line.replace('\t', " "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        ns.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        if lines.len() >= 1000 && (i + 1) % 1000 == 0 {
            eprintln!("bench: {} of {} done", i + 1, lines.len());
        }
    }
    println!("{}", json!({ "ns": ns }));
    Ok(())
}

/// The outcome of one call: `ok` or the errno's name.
fn outcome(rc: libc::c_int) -> &'static str {
    if rc >= 0 {
        return "ok";
    }
    match io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMFILE => "EMFILE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "other",
    }
}

/// Parses `--addr`: loopback or the benchmark's range, nothing else, so a
/// mistake can never aim the timing loops at a real host.
fn bench_addr(s: &str) -> Result<Ipv4Addr, String> {
    let a: Ipv4Addr = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if a.is_loopback() || protocol::in_bench_net(a) {
        Ok(a)
    } else {
        Err(format!("{a} is neither loopback nor in the benchmark's 198.18.0.0/15"))
    }
}

/// `addr:port`.
fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits"),
        // Network byte order.
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    }
}

/// `127.0.0.1:port`.
fn loopback(port: u16) -> libc::sockaddr_in {
    sockaddr(Ipv4Addr::LOCALHOST, port)
}

const SOCKADDR_IN_LEN: libc::socklen_t = {
    #[expect(clippy::cast_possible_truncation, reason = "sockaddr_in is 16 bytes")]
    let n = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    n
};

fn socket(ty: libc::c_int) -> Result<RawFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(2)");
    }
    Ok(fd)
}

fn connect(fd: RawFd, addr: &libc::sockaddr_in) -> libc::c_int {
    // SAFETY: `addr` is a valid sockaddr_in of the length given.
    unsafe { libc::connect(fd, std::ptr::from_ref(addr).cast(), SOCKADDR_IN_LEN) }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this process owns.
    unsafe { libc::close(fd) };
}

/// Counts of outcomes.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, u64>);

impl Tally {
    fn add(&mut self, o: &'static str) {
        *self.0.entry(o).or_default() += 1;
    }
}

/// Runs `op` `iters` times after a warm-up of a tenth as many, and returns
/// the timed part's duration and the outcomes of the timed calls.
fn timed(iters: u32, mut op: impl FnMut(&mut Tally) -> Result<()>) -> Result<(Clock, Tally)> {
    let mut warm = Tally::default();
    for _ in 0..iters / 10 {
        op(&mut warm)?;
    }
    let mut tally = Tally::default();
    let start = Clock::now();
    for _ in 0..iters {
        op(&mut tally)?;
    }
    Ok((start.elapsed(), tally))
}

/// Wall-clock and on-CPU time. The CPU time of this thread
/// (`CLOCK_THREAD_CPUTIME_ID`, the scheduler's precise runtime, which on
/// this path includes the loopback softirq work done in our context)
/// leaves out the time other processes held the CPU, so it is far less
/// noisy on a shared machine.
#[derive(Clone, Copy, Default)]
struct Clock {
    wall: Duration,
    cpu: Duration,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
        let cpu = Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0));
        Self { wall: START.get_or_init(Instant::now).elapsed(), cpu }
    }

    fn elapsed(self) -> Self {
        let now = Self::now();
        Self { wall: now.wall.saturating_sub(self.wall), cpu: now.cpu.saturating_sub(self.cpu) }
    }

    fn add(&mut self, other: Self) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

/// Origin of [`Clock::wall`].
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// socket, `SO_LINGER` 0, connect, accept, close both. The zero linger makes
/// close send a reset, so no `TIME_WAIT` sockets pile up and exhaust the
/// ephemeral ports over hundreds of thousands of cycles.
fn tcp_cycle(addr: &libc::sockaddr_in, tally: &mut Tally) -> Result<()> {
    let fd = socket(libc::SOCK_STREAM)?;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a valid option value of the length given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("fits"),
        );
    }
    let rc = connect(fd, addr);
    let o = outcome(rc);
    tally.add(o);
    if rc == 0 {
        // SAFETY: accept4 on the inherited listener; no address wanted.
        let a = unsafe { libc::accept4(FD_LISTENER, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if a < 0 {
            close(fd);
            return Err(io::Error::last_os_error()).context("accept4 on the benchmark listener");
        }
        close(fd);
        close(a);
    } else {
        close(fd);
    }
    Ok(())
}

/// socket, connect (expected to fail), close.
fn failing_connect(addr: &libc::sockaddr_in, tally: &mut Tally) -> Result<()> {
    let fd = socket(libc::SOCK_STREAM)?;
    let rc = connect(fd, addr);
    tally.add(outcome(rc));
    close(fd);
    if rc == 0 {
        bail!(
            "connect to a port nobody listens on succeeded; is something else bound to port {}?",
            u16::from_be(addr.sin_port)
        );
    }
    Ok(())
}

/// Empties a non-blocking read of `fd` until it would block.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a local buffer of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return;
        }
    }
}

/// `iters` one-byte sendto calls on one unconnected socket, timed in
/// batches; the receiver `rx` is drained between batches, untimed.
fn udp_sends(iters: u32, addr: &libc::sockaddr_in, rx: RawFd) -> Result<(Clock, Tally)> {
    let fd = socket(libc::SOCK_DGRAM)?;
    let send = |tally: &mut Tally| {
        // SAFETY: one byte from a static buffer to a valid address.
        let rc =
            unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, std::ptr::from_ref(addr).cast(), SOCKADDR_IN_LEN) };
        #[expect(clippy::cast_possible_truncation, reason = "sendto returns 1 or -1 here")]
        tally.add(outcome(rc as libc::c_int));
    };
    let mut warm = Tally::default();
    for _ in 0..(iters / 10).min(UDP_BATCH) {
        send(&mut warm);
    }
    drain(rx);
    let mut tally = Tally::default();
    let mut total = Clock::default();
    let mut left = iters;
    while left > 0 {
        let n = left.min(UDP_BATCH);
        let start = Clock::now();
        for _ in 0..n {
            send(&mut tally);
        }
        total.add(start.elapsed());
        drain(rx);
        left -= n;
    }
    close(fd);
    Ok((total, tally))
}

fn landlock_restrict(ports: &[u16]) -> Result<String> {
    use landlock::{
        AccessNet, CompatLevel, Compatible as _, NetPort, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _,
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::ConnectTcp)
        .context("Landlock cannot handle TCP connect here (needs ABI 4, Linux 6.7)")?
        .create()
        .context("creating the Landlock ruleset")?;
    for &p in ports {
        ruleset = ruleset.add_rule(NetPort::new(p, AccessNet::ConnectTcp)).context("adding a Landlock port rule")?;
    }
    let status = ruleset.restrict_self().context("enforcing the Landlock ruleset")?;
    Ok(format!("{:?}", status.ruleset))
}

fn pin_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

fn percall(a: &PercallArgs) -> Result<()> {
    if let Some(cpu) = a.cpu {
        pin_cpu(cpu)?;
    }
    let landlock = if a.landlock_connect.is_empty() { None } else { Some(landlock_restrict(&a.landlock_connect)?) };
    let want = |op: &str| a.ops.is_empty() || a.ops.iter().any(|o| o == op);
    let mut ops = serde_json::Map::new();
    let mut record = |name: &str, iters: u32, (d, tally): (Clock, Tally)| {
        #[expect(clippy::cast_precision_loss, reason = "durations and counts are far below 2^52")]
        let per_op = |t: Duration| t.as_nanos() as f64 / f64::from(iters.max(1));
        let (ns, cpu_ns) = (per_op(d.wall), per_op(d.cpu));
        let outcomes: serde_json::Map<String, Value> =
            tally.0.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        ops.insert(
            name.to_owned(),
            json!({ "ns_per_op": ns, "cpu_ns_per_op": cpu_ns, "iters": iters, "outcomes": outcomes }),
        );
    };
    if want("tcp_cycle") {
        let addr = sockaddr(a.addr, a.tcp_port);
        record("tcp_cycle", a.tcp_iters, timed(a.tcp_iters, |t| tcp_cycle(&addr, t))?);
    }
    if want("refused") {
        let addr = sockaddr(a.addr, a.refused_port);
        record("refused", a.fast_iters, timed(a.fast_iters, |t| failing_connect(&addr, t))?);
    }
    if want("refused_spread") && !a.spread_ports.is_empty() {
        if a.spread_ports.len() != SPREAD_PORTS {
            bail!("--spread-ports: {} ports given, the benchmark's protocol says {SPREAD_PORTS}", a.spread_ports.len());
        }
        let addrs: Vec<libc::sockaddr_in> = a.spread_ports.iter().map(|&p| sockaddr(a.addr, p)).collect();
        let mut next = addrs.iter().cycle();
        record(
            "refused_spread",
            a.fast_iters,
            timed(a.fast_iters, |t| failing_connect(next.next().expect("a cycle of a non-empty list"), t))?,
        );
    }
    if want("denied_connect") {
        let addr = sockaddr(a.addr, a.denied_port);
        record("denied_connect", a.fast_iters, timed(a.fast_iters, |t| failing_connect(&addr, t))?);
    }
    if want("udp_sendto") {
        let addr = sockaddr(a.addr, a.udp_port);
        record("udp_sendto", a.fast_iters, udp_sends(a.fast_iters, &addr, FD_UDP_ALLOWED)?);
    }
    if want("denied_sendto") {
        let addr = sockaddr(a.addr, a.denied_udp_port);
        record("denied_sendto", a.fast_iters, udp_sends(a.fast_iters, &addr, FD_UDP_DENIED)?);
    }
    println!("{}", json!({ "landlock": landlock, "ops": ops }));
    Ok(())
}

/// Moves this process into the cgroup whose `cgroup.procs` is `procs`.
fn enter(procs: &str) -> Result<()> {
    std::fs::write(procs, "0").with_context(|| format!("writing 0 to {procs}"))
}

/// One connect from a fresh socket (created after the move, so it belongs
/// to the current cgroup).
fn probe(addr: Ipv4Addr, port: u16) -> Result<&'static str> {
    let fd = socket(libc::SOCK_STREAM)?;
    let rc = connect(fd, &sockaddr(addr, port));
    let o = outcome(rc);
    close(fd);
    Ok(o)
}

fn hop(a: &HopArgs) -> Result<()> {
    let file = std::fs::File::open(&a.list).with_context(|| format!("opening {}", a.list.display()))?;
    let mut checked = 0u32;
    let mut failures = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line?;
        let mut f = line.split_whitespace();
        let (Some(cg), Some(own), Some(other)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (own, other): (u16, u16) = (own.parse()?, other.parse()?);
        enter(&format!("{cg}/cgroup.procs"))?;
        let own_o = probe(a.addr, own)?;
        let other_o = probe(a.addr, other)?;
        checked += 1;
        // Its own port must not be refused by policy (no listener there, so
        // ECONNREFUSED; a listener would make it `ok`); the neighbour's must.
        if own_o == "EPERM" || other_o != "EPERM" {
            failures.push(
                json!({ "cgroup": cg, "own_port": own, "own": own_o, "neighbour_port": other, "neighbour": other_o }),
            );
        }
    }
    println!("{}", json!({ "checked": checked, "failures": failures }));
    Ok(())
}

/// `CLOCK_MONOTONIC` in ns (what `bpf_ktime_get_ns` and the parent's
/// arrival stamps use).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn paced(a: &PacedArgs) -> Result<()> {
    let addr = loopback(a.port);
    let mut stamps = Vec::with_capacity(a.count as usize);
    let mut tally = Tally::default();
    for _ in 0..a.count {
        let fd = socket(libc::SOCK_STREAM)?;
        stamps.push(monotonic_ns());
        tally.add(outcome(connect(fd, &addr)));
        close(fd);
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
    let outcomes: serde_json::Map<String, Value> = tally.0.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
    println!("{}", json!({ "t_ns": stamps, "outcomes": outcomes }));
    Ok(())
}
