//! The test host of the non-loopback per-call modes: a network namespace
//! the benchmark creates, joined to ours by a veth pair, so every call
//! leaves through a real interface (and the egress path sees it) instead
//! of loopback.
//!
//! Addresses: one /30 of 198.18.0.0/15 (RFC 2544's benchmarking range)
//! per benchmark process, picked from its pid, our side `.1`, the
//! namespace `.2`. Both ends get fixed MAC addresses and permanent
//! neighbour entries, so no ARP exchange lands inside a timed loop. The
//! namespace has no default route: nothing sent there can go further.
//!
//! The "host" is the benchmark process itself: it creates the listening
//! and bound sockets from a thread that joined the namespace (a socket
//! belongs to the namespace it was created in, whatever the thread does
//! next), and hands them to the worker as it does for loopback.
//!
//! The namespace and the veth pair are deleted when [`TestHost`] drops, and
//! by the teardown on error and Ctrl-C (they are registered there first).

use std::{
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{context::TEARDOWN, protocol::BENCH_NET};

/// A network namespace with a veth pair to ours.
pub(super) struct TestHost {
    /// Name under `/run/netns`.
    pub(super) name: String,
    /// Our end of the veth pair (deleting it deletes both).
    pub(super) host_if: String,
    /// Our side's address.
    pub(super) local: Ipv4Addr,
    /// The namespace's address: where the calls go.
    pub(super) addr: Ipv4Addr,
}

/// The /30 of [`BENCH_NET`] for process `pid`: `(ours, theirs)`.
pub(super) fn addresses(pid: u32) -> (Ipv4Addr, Ipv4Addr) {
    let slots = 1u32 << (32 - u32::from(BENCH_NET.1) - 2);
    let base = u32::from(BENCH_NET.0) + (pid % slots) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes a namespace and a veth pair; what is already gone is fine.
pub(super) fn delete(name: &str, host_if: &str) {
    for args in [["link", "del", host_if], ["netns", "del", name]] {
        let _ = Command::new("ip").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

impl TestHost {
    /// Creates the namespace and the veth pair for this process.
    pub(super) fn new() -> Result<Self> {
        let pid = std::process::id();
        let (local, addr) = addresses(pid);
        let host = Self {
            name: format!("sbx-bench-{pid}"),
            // IFNAMSIZ is 16: "sbxb" + at most 7 digits + one letter.
            host_if: format!("sbxb{}h", pid % 10_000_000),
            local,
            addr,
        };
        let ns_if = format!("sbxb{}n", pid % 10_000_000);
        // Registered before anything exists, so teardown deletes whatever
        // part was made if this fails half-way.
        if let Some(t) = TEARDOWN.get() {
            if let Ok(mut v) = t.netns.lock() {
                v.push((host.name.clone(), host.host_if.clone()));
            }
        }
        // Leftovers of a crashed run that had our pid.
        delete(&host.name, &host.host_if);
        host.build(&ns_if).with_context(|| {
            format!("creating the benchmark's test network (namespace {}, {} and {})", host.name, local, addr)
        })?;
        Ok(host)
    }

    fn build(&self, ns_if: &str) -> Result<()> {
        let (name, hif) = (self.name.as_str(), self.host_if.as_str());
        // Locally administered unicast MACs, unique per /30.
        let o = self.local.octets();
        let mac = |last: u8| format!("02:62:{:02x}:{:02x}:{:02x}:{last:02x}", o[1], o[2], o[3]);
        let (hmac, nmac) = (mac(1), mac(2));
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", hif, "address", &hmac, "type", "veth", "peer", "name", ns_if, "address", &nmac, "netns",
            name,
        ])?;
        ip(&["addr", "add", &format!("{}/30", self.local), "dev", hif])?;
        ip(&["link", "set", hif, "up"])?;
        ip(&["-n", name, "addr", "add", &format!("{}/30", self.addr), "dev", ns_if])?;
        ip(&["-n", name, "link", "set", ns_if, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&["neigh", "replace", &self.addr.to_string(), "lladdr", &nmac, "dev", hif, "nud", "permanent"])?;
        ip(&[
            "-n",
            name,
            "neigh",
            "replace",
            &self.local.to_string(),
            "lladdr",
            &hmac,
            "dev",
            ns_if,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    /// Runs `f` on a thread that joined the namespace: sockets it creates
    /// belong to the namespace.
    pub(super) fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let ns = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns(2) on a namespace descriptor we hold; it moves
            // only this thread, which ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("joining the benchmark's network namespace");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the benchmark's network namespace panicked"))?
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        delete(&self.name, &self.host_if);
        if let Some(t) = TEARDOWN.get() {
            if let Ok(mut v) = t.netns.lock() {
                v.retain(|(n, _)| n != &self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::protocol::in_bench_net;

    #[test]
    fn addresses_stay_in_the_benchmark_range() {
        for pid in [0, 1, 2, 4_194_303, 32_767, 32_768, 65_535, u32::MAX] {
            let (a, b) = addresses(pid);
            assert!(in_bench_net(a) && in_bench_net(b), "{pid}: {a} {b}");
            // Same /30, host part 1 and 2.
            assert_eq!(u32::from(a) & !3, u32::from(b) & !3);
            assert_eq!((u32::from(a) & 3, u32::from(b) & 3), (1, 2));
        }
        assert!(!in_bench_net(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!in_bench_net(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(in_bench_net(Ipv4Addr::new(198, 19, 255, 254)));
    }
}
