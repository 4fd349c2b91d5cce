//! Fixtures for sbx's privileged integration tests.
//!
//! The tests in `tests/*.rs` attach the real programs with the real
//! `sbx-user` binary to real cgroup v2 directories, run real clients
//! (the `sbx-probe` binary of this crate, curl, nc, python) inside them and
//! assert the exact errno each socket call returns.
//!
//! # What they need
//! Root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`), a cgroup2 mount (found in
//! `/proc/self/mountinfo`), bpffs, `ip` from iproute2, and the `sbx-user`
//! binary: `$SBX_USER_BIN`, else `$CARGO_TARGET_DIR/debug/sbx-user`, else
//! `<workspace>/target/debug/sbx-user`. Without them the tests **fail**;
//! they never skip, so a CI run without privileges cannot pass by accident.
//!
//! The tests by theme: `attach.rs` (attach, detach, status, replace,
//! failures that must change nothing), `run.rs` (exit status, stdio,
//! signals, cleanup), `addresses.rs` (IPv4, IPv6, IPv4-mapped, NAT64,
//! 6to4, TCP and UDP, bind, loopback, precedence), `proxy.rs` (curl through
//! tinyproxy), `hardening.rs` (socket creation, source routing, audit),
//! `agent.rs` (the host agent through its socket: access, protocol,
//! restarts), `operating.rs` (deny events, counters, audit mode, `verify`, `update`
//! under load, pinned domains), `escapes.rs` (what a command inside `run`
//! might try to get around the policy).
//!
//! # Kernel
//! sbx needs cgroup `sock_addr` programs with BPF links (Linux 5.7 or
//! later); the tests were written against 6.18.
//!
//! # Network safety
//! Traffic only ever goes to loopback or to a network namespace a test
//! creates itself ([`TestNet`]). Probes whose destination would leave the
//! machine if enforcement were broken (multicast, broadcast, NAT64, 6to4)
//! run *inside* that namespace, which has no default route, so nothing can
//! escape even then.
//!
//! # Isolation and cleanup
//! Every fixture has a unique name (pid plus a counter) and a guard that
//! undoes it in `Drop`, so the tests run in parallel threads and clean up
//! after a panic: [`TestCgroup`] (kills its processes, removes sbx pins left
//! on it, removes the directory), [`TestNet`] (kills its servers, deletes
//! the veth pair and the namespace), [`Sbx`] (a private state directory),
//! [`Background`] (kills a process by pid), [`HostsEntry`] (removes its
//! line from `/etc/hosts`).

mod agent;
mod cgroup;
mod hosts;
mod net;
mod probe;
mod sbx;
mod util;

pub use agent::{Agent, TestGroup, TestUser, PY_CLIENT};
pub use cgroup::{all_hooks, cgroup2_mount, hooks, per_hook, prog_counts, HookCounts, TestCgroup};
pub use hosts::HostsEntry;
pub use net::{Packet, Receiver, Sniffer, TestNet};
pub use probe::{Place, Probe, Proto};
pub use sbx::{bpffs, describe, sbx_user_bin, Sbx};
pub use util::{free_port, wait_tcp, Background, TempDir};

/// Panics unless the tests run as root. These tests must fail loudly
/// rather than skip when they lack privileges.
///
/// # Panics
/// When the effective uid is not 0.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "sbx's integration tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to attach \
         cgroup programs and create network namespaces; running as euid {euid}. Run them with \
         sudo (e.g. `sudo -E cargo test -p sbx-tests`). They fail rather than skip on purpose."
    );
}

/// A process-wide unique number, for names of fixtures.
pub(crate) fn next_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A [`Probe`] for the `sbx-probe` binary of this crate. Expands in the
/// integration test, where cargo defines `CARGO_BIN_EXE_sbx-probe`.
#[macro_export]
macro_rules! probe {
    () => {
        $crate::Probe::new(env!("CARGO_BIN_EXE_sbx-probe"))
    };
}

/// The usual set-up of one test: a [`TestNet`] with a server, a
/// [`TestCgroup`] and an [`Sbx`] to attach to it.
#[derive(Debug)]
pub struct Fixture {
    /// `sbx-user` with this test's state directory.
    pub sbx: Sbx,
    /// The cgroup under test.
    pub cg: TestCgroup,
    /// The test network.
    pub net: TestNet,
    /// The probe, in the test's own cgroup and namespace.
    pub probe: Probe,
}

impl Fixture {
    /// Creates the network, the cgroup and a state directory. Use
    /// `Fixture::new(probe!())`.
    #[must_use]
    pub fn new(probe: Probe) -> Self {
        require_root();
        let net = TestNet::new(&probe);
        Self { sbx: Sbx::new(), cg: TestCgroup::new(), net, probe }
    }

    /// `sbx-user attach --cgroup CG POLICY...`, which must succeed.
    pub fn attach(&self, policy: &[&str]) {
        let _ = self.sbx.attach(&self.cg, policy);
    }

    /// The probe inside the sandbox cgroup, in the host's namespace.
    #[must_use]
    pub fn inside(&self) -> Probe {
        self.probe.in_cgroup(self.cg.path())
    }

    /// The probe inside the sandbox cgroup and inside the test namespace
    /// (which has no route off the machine).
    #[must_use]
    pub fn inside_ns(&self) -> Probe {
        self.inside().in_netns(self.net.name())
    }

    /// The probe outside the sandbox, in the host's namespace.
    #[must_use]
    pub fn outside(&self) -> Probe {
        self.probe.clone()
    }
}
