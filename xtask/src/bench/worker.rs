//! The protocol with `sbx-bench-worker`: the sockets the parent holds for
//! it, its command lines, and the check of its output.

use std::{
    collections::BTreeMap,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    context::Ctx,
    percall::{Config, Kind},
    protocol::{in_bench_net, FD_LISTENER, FD_UDP_ALLOWED, FD_UDP_DENIED, SPREAD_PORTS},
    runner::{high_priority, in_cgroups, procs_fd, timed_output},
};

/// The sockets the per-call benchmarks call, on loopback or on the test
/// host in the benchmark's network namespace, held by this process for
/// the whole section so their ports stay what the policies expect.
pub(super) struct Net {
    /// Where they are bound: 127.0.0.1 or the test host.
    pub(super) addr: Ipv4Addr,
    pub(super) listener: OwnedFd,
    pub(super) udp: OwnedFd,
    pub(super) udp_denied: OwnedFd,
    _refused: OwnedFd,
    _denied: OwnedFd,
    _spread: Vec<OwnedFd>,
    pub(super) tcp_port: u16,
    pub(super) refused_port: u16,
    /// [`SPREAD_PORTS`] more bound, non-listening ports the policy allows.
    pub(super) spread_ports: Vec<u16>,
    pub(super) denied_port: u16,
    pub(super) udp_port: u16,
    pub(super) denied_udp_port: u16,
}

/// A socket bound to `addr:port` (0: the kernel picks), moved to a
/// descriptor of at least 100 so it cannot collide with the numbers the
/// worker expects (3, 4, 5) when the child dup2s them there.
pub(super) fn bound(ty: libc::c_int, addr: Ipv4Addr, port: u16) -> io::Result<(OwnedFd, u16)> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut sa = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("fits"),
        // Network byte order.
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("fits");
    // SAFETY: `sa` is a valid sockaddr_in of length `len`.
    if unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&sa).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getsockname writes at most `len` bytes into `sa`.
    if unsafe { libc::getsockname(fd.as_raw_fd(), std::ptr::from_mut(&mut sa).cast(), &raw mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh descriptor we own.
    Ok((unsafe { OwnedFd::from_raw_fd(high) }, u16::from_be(sa.sin_port)))
}

/// Binds the first free port of `addr` in 7000..=9999 (inside the allowed
/// range).
pub(super) fn bound_allowed(ty: libc::c_int, addr: Ipv4Addr) -> Result<(OwnedFd, u16)> {
    for port in 7000..=9999 {
        if let Ok(b) = bound(ty, addr, port) {
            return Ok(b);
        }
    }
    bail!("no free port in 7000-9999 on {addr}")
}

/// Binds a port of `addr` above the allowed range.
pub(super) fn bound_denied(ty: libc::c_int, addr: Ipv4Addr) -> Result<(OwnedFd, u16)> {
    let (fd, port) = bound(ty, addr, 0).with_context(|| format!("binding an ephemeral port on {addr}"))?;
    if port > 9999 {
        return Ok((fd, port));
    }
    for port in 40_000..=50_000 {
        if let Ok(b) = bound(ty, addr, port) {
            return Ok(b);
        }
    }
    bail!("no free port above 9999 on {addr}")
}

impl Net {
    /// Binds the sockets on `addr`; for the test host, call it from a
    /// thread inside its namespace ([`super::netns::TestHost::inside`]).
    pub(super) fn new(addr: Ipv4Addr) -> Result<Self> {
        let (listener, tcp_port) = bound_allowed(libc::SOCK_STREAM, addr)?;
        // SAFETY: listen(2) on a bound TCP socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), 1024) } != 0 {
            return Err(io::Error::last_os_error()).context("listen on the benchmark port");
        }
        let (refused, refused_port) = bound_allowed(libc::SOCK_STREAM, addr)?;
        let (spread, spread_ports): (Vec<_>, Vec<_>) = (0..SPREAD_PORTS)
            .map(|_| bound_allowed(libc::SOCK_STREAM, addr))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let (udp, udp_port) = bound_allowed(libc::SOCK_DGRAM, addr)?;
        let (denied, denied_port) = bound_denied(libc::SOCK_STREAM, addr)?;
        let (udp_denied, denied_udp_port) = bound_denied(libc::SOCK_DGRAM, addr)?;
        Ok(Self {
            addr,
            listener,
            udp,
            udp_denied,
            _refused: refused,
            _denied: denied,
            _spread: spread,
            tcp_port,
            refused_port,
            spread_ports,
            denied_port,
            udp_port,
            denied_udp_port,
        })
    }
}

/// One worker run in `cfg`'s cgroup: ns per call for each of `ops` (all
/// when empty), after checking every call had the expected outcome.
pub(super) fn percall_once(
    ctx: &Ctx,
    net: &Net,
    cfg: &Config,
    iters: (u32, u32),
    ops: &[&str],
) -> Result<BTreeMap<String, (f64, f64)>> {
    if !(net.addr.is_loopback() || in_bench_net(net.addr)) {
        bail!("refusing to aim the worker at {}: neither loopback nor the benchmark's 198.18.0.0/15", net.addr);
    }
    let mut cmd = Command::new(&ctx.worker);
    cmd.arg("percall");
    if !net.addr.is_loopback() {
        cmd.args(["--addr", &net.addr.to_string()]);
    }
    cmd.args(["--tcp-port", &net.tcp_port.to_string()])
        .args(["--refused-port", &net.refused_port.to_string()])
        .args(["--spread-ports", &ports_list(&net.spread_ports)])
        .args(["--denied-port", &net.denied_port.to_string()])
        .args(["--udp-port", &net.udp_port.to_string()])
        .args(["--denied-udp-port", &net.denied_udp_port.to_string()])
        .args(["--tcp-iters", &iters.0.to_string()])
        .args(["--fast-iters", &iters.1.to_string()]);
    if !ops.is_empty() {
        cmd.args(["--ops", &ops.join(",")]);
    }
    if let Some(cpu) = ctx.cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    if matches!(cfg.kind, Kind::Landlock) {
        // The listener and the closed ports (so the ECONNREFUSED rows are
        // measurable); the denied port is not in the ruleset.
        let mut allowed = vec![net.tcp_port, net.refused_port];
        allowed.extend(&net.spread_ports);
        cmd.args(["--landlock-connect", &ports_list(&allowed)]);
    }
    let procs = procs_fd(&cfg.cg)?;
    in_cgroups(
        &mut cmd,
        vec![procs.as_raw_fd()],
        vec![
            (net.listener.as_raw_fd(), FD_LISTENER),
            (net.udp.as_raw_fd(), FD_UDP_ALLOWED),
            (net.udp_denied.as_raw_fd(), FD_UDP_DENIED),
        ],
    );
    high_priority(&mut cmd);
    let (_, stdout) = timed_output(&mut cmd, &format!("the worker in {}", cfg.name), None)?;
    drop(procs);
    let v: Value = serde_json::from_str(stdout.trim()).context("parsing the worker's output")?;
    let mut out = BTreeMap::new();
    for (op, r) in v["ops"].as_object().into_iter().flatten() {
        let want = cfg.expected(op);
        let outcomes = r["outcomes"].as_object().cloned().unwrap_or_default();
        if outcomes.len() != 1 || !outcomes.contains_key(want) {
            bail!(
                "{}: {op}: expected every call to give {want}, got {}; the policy is not doing what the benchmark assumes",
                cfg.name,
                Value::Object(outcomes)
            );
        }
        out.insert(
            op.clone(),
            (r["ns_per_op"].as_f64().unwrap_or(f64::NAN), r["cpu_ns_per_op"].as_f64().unwrap_or(f64::NAN)),
        );
    }
    Ok(out)
}

/// `ports` as the worker's comma lists take them.
fn ports_list(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// `paced`: `count` denied connects to loopback `port` from inside `cg`,
/// 20 ms apart; returns the `CLOCK_MONOTONIC` stamp taken just before
/// each.
pub(super) fn paced(ctx: &Ctx, cg: &Path, port: u16, count: u32) -> Result<Vec<u64>> {
    let mut cmd = Command::new(&ctx.worker);
    cmd.args(["paced", "--port", &port.to_string(), "--count", &count.to_string(), "--interval-ms", "20"]);
    let procs = procs_fd(cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (_, out) = timed_output(&mut cmd, "the paced worker", None)?;
    drop(procs);
    let v: Value = serde_json::from_str(out.trim()).context("parsing the paced worker's output")?;
    Ok(v["t_ns"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect())
}

/// A flood of `n` denied connects to loopback `port` from inside `cg`, as
/// fast as one CPU makes them (after a tenth as many to warm up); returns
/// the wall time of the whole worker and its result for the operation,
/// after checking every call failed with EPERM.
pub(super) fn flood(ctx: &Ctx, cg: &Path, port: u16, n: u32) -> Result<(Duration, Value)> {
    let mut cmd = Command::new(&ctx.worker);
    cmd.args(["percall", "--ops", "denied_connect", "--tcp-port", "1", "--refused-port", "1", "--udp-port", "1"])
        .args(["--denied-udp-port", "1", "--tcp-iters", "0"])
        .args(["--denied-port", &port.to_string(), "--fast-iters", &n.to_string()]);
    if let Some(cpu) = ctx.cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    let procs = procs_fd(cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (took, out) = timed_output(&mut cmd, "the flood worker", None)?;
    drop(procs);
    let mut v: Value = serde_json::from_str(out.trim()).context("parsing the flood worker's output")?;
    let r = v["ops"]["denied_connect"].take();
    if r["outcomes"].as_object().is_none_or(|o| o.len() != 1 || !o.contains_key("EPERM")) {
        bail!("flood: expected every connect to fail with EPERM, got {}", r["outcomes"]);
    }
    Ok((took, r))
}

/// `hop`: one worker that starts in `start_cg` and visits every cgroup of
/// `list` (lines of `PATH OWN_PORT NEIGHBOUR_PORT`), checking that its own
/// port on `addr` is not refused by policy and its neighbour's is. Returns
/// its wall time and its report (`checked`, `failures`).
pub(super) fn hop(ctx: &Ctx, start_cg: &Path, list: &Path, addr: Ipv4Addr) -> Result<(Duration, Value)> {
    let mut cmd = Command::new(&ctx.worker);
    cmd.arg("hop").arg("--list").arg(list).arg("--addr").arg(addr.to_string());
    let procs = procs_fd(start_cg)?;
    in_cgroups(&mut cmd, vec![procs.as_raw_fd()], Vec::new());
    let (took, stdout) = timed_output(&mut cmd, "the enforcement check", None)?;
    drop(procs);
    let v: Value = serde_json::from_str(stdout.trim()).context("parsing the enforcement check")?;
    Ok((took, v))
}
