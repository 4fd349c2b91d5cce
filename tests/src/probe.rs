//! Running programs inside a cgroup and/or network namespace, and the
//! `sbx-probe` client in particular.

use std::{
    fmt::Display,
    fs, io,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use crate::sbx::describe;

/// Where a spawned process starts: in which cgroup and which network
/// namespace. It moves itself there between fork and exec, so its first
/// instruction already runs there.
#[derive(Clone, Debug, Default)]
pub struct Place {
    /// Cgroup directory to enter (`cgroup.procs`).
    pub cgroup: Option<PathBuf>,
    /// Named network namespace to enter (`/run/netns/NAME`).
    pub netns: Option<String>,
}

impl Place {
    /// Spawns `cmd` here.
    ///
    /// # Panics
    /// When the cgroup or namespace cannot be opened or the spawn fails
    /// (including entering them in the child).
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let procs = self.cgroup.as_ref().map(|cg| {
            let p = cg.join("cgroup.procs");
            fs::OpenOptions::new().write(true).open(&p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
        });
        let netns = self.netns.as_ref().map(|name| {
            let p = Path::new("/run/netns").join(name);
            fs::File::open(&p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
        });
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe system calls (setns, write) on file
        // descriptors that stay open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(fd) = procs_fd {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?} in {self:?}: {e}"));
        drop((procs, netns));
        child
    }

    /// Runs `cmd` here to completion, stdin null, output captured.
    ///
    /// # Panics
    /// As [`Self::spawn`].
    pub fn output(&self, cmd: &mut Command) -> Output {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.spawn(cmd);
        child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
    }
}

/// Transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `SOCK_STREAM`.
    Tcp,
    /// `SOCK_DGRAM`.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as `sbx-probe` takes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The `sbx-probe` binary, to run at a [`Place`]. Each call prints `ok` or
/// `err ERRNO_NAME`; the methods return that line.
#[derive(Clone, Debug)]
pub struct Probe {
    bin: PathBuf,
    place: Place,
}

impl Probe {
    /// The probe at `bin`, in the test's own cgroup and namespace. Use the
    /// [`crate::probe!`] macro to get it.
    #[must_use]
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into(), place: Place::default() }
    }

    /// The binary.
    #[must_use]
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The binary as a string, for command lines.
    ///
    /// # Panics
    /// When the path is not UTF-8.
    #[must_use]
    pub fn arg(&self) -> &str {
        self.bin.to_str().expect("target paths are UTF-8")
    }

    /// The same probe, started in the cgroup at `cgroup`.
    #[must_use]
    pub fn in_cgroup(&self, cgroup: impl AsRef<Path>) -> Self {
        let mut p = self.clone();
        p.place.cgroup = Some(cgroup.as_ref().to_owned());
        p
    }

    /// The same probe, started in the network namespace `name`.
    #[must_use]
    pub fn in_netns(&self, name: &str) -> Self {
        let mut p = self.clone();
        p.place.netns = Some(name.to_owned());
        p
    }

    /// Where it runs.
    #[must_use]
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Runs `sbx-probe ARGS` and returns its one line of output.
    ///
    /// # Panics
    /// When the probe fails or prints something else than one line.
    #[must_use]
    pub fn run(&self, args: &[&str]) -> String {
        self.run_pid(args).1
    }

    /// As [`Self::run`], also returning the probe's pid (to find it in
    /// deny events).
    ///
    /// # Panics
    /// As [`Self::run`].
    #[must_use]
    pub fn run_pid(&self, args: &[&str]) -> (u32, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.place.spawn(&mut cmd);
        let pid = child.id();
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        assert!(
            out.status.success() && !text.is_empty() && !text.contains('\n'),
            "sbx-probe {} in {:?}: {}",
            args.join(" "),
            self.place,
            describe(&out)
        );
        (pid, text)
    }

    /// `connect PROTO ADDR PORT`: a connect (for UDP followed by one send
    /// of a marker payload, `sbx-probe`).
    pub fn connect(&self, proto: Proto, ip: impl Display, port: u16) -> String {
        self.run(&["connect", proto.as_str(), &ip.to_string(), &port.to_string()])
    }

    /// `connect PROTO ADDR PORT PAYLOAD`: as [`Self::connect`], sending
    /// `payload` on a connected UDP socket.
    pub fn connect_send(&self, ip: impl Display, port: u16, payload: &str) -> String {
        self.run(&["connect", "udp", &ip.to_string(), &port.to_string(), payload])
    }

    /// `connect-thread PROTO ADDR PORT`: the connect from a second thread.
    pub fn connect_thread(&self, proto: Proto, ip: impl Display, port: u16) -> String {
        self.run(&["connect-thread", proto.as_str(), &ip.to_string(), &port.to_string()])
    }

    /// `fork-connect PROTO ADDR PORT`: the connect from a forked child.
    pub fn fork_connect(&self, proto: Proto, ip: impl Display, port: u16) -> String {
        self.run(&["fork-connect", proto.as_str(), &ip.to_string(), &port.to_string()])
    }

    /// `sendto ADDR PORT PAYLOAD`: one datagram from an unconnected UDP
    /// socket (`AF_INET6` for IPv6 and IPv4-mapped addresses).
    pub fn sendto(&self, ip: impl Display, port: u16, payload: &str) -> String {
        self.run(&["sendto", &ip.to_string(), &port.to_string(), payload])
    }

    /// `bind PROTO ADDR PORT`.
    pub fn bind(&self, proto: Proto, ip: impl Display, port: u16) -> String {
        self.run(&["bind", proto.as_str(), &ip.to_string(), &port.to_string()])
    }
}
