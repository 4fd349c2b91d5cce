//! A running `sbx-user agent` on a private socket, and clients of it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    util::{wait_until, TempDir},
    Sbx,
};

/// The Python client the tests drive the protocol with, as a program in
/// another language would.
pub const PY_CLIENT: &str = include_str!("agent_client.py");

/// An agent serving `<private dir>/agent.sock`, never the default socket,
/// with this test's state directory. Dropping it stops it (SIGTERM, then
/// SIGKILL), so no test leaves an agent for the CLI of another test to find.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
    state: PathBuf,
    bin: PathBuf,
}

impl Agent {
    /// Starts an agent managing `roots` with configuration file text
    /// `config` and extra arguments, and waits until its socket answers.
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start(sbx: &Sbx, roots: &[&Path], config: &str, extra: &[&str]) -> Self {
        Self::start_bin(&crate::sbx_user_bin(), sbx, roots, config, extra)
    }

    /// [`Self::start`] with another `sbx-user` binary (an older build).
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start_bin(bin: &Path, sbx: &Sbx, roots: &[&Path], config: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new("agent");
        // Other users' clients must reach the socket; its own mode decides.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod of the agent's directory");
        fs::write(dir.path().join("agent.toml"), config).expect("writing agent.toml");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--socket".into(),
            dir.path().join("agent.sock").display().to_string(),
            "--config".into(),
            dir.path().join("agent.toml").display().to_string(),
        ];
        for r in roots {
            args.push("--cgroup-root".into());
            args.push(r.display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut agent = Self { child: None, dir, args, state: sbx.state_dir().to_owned(), bin: bin.to_owned() };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("agent log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .arg("-v")
            .env("SBX_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let sock = self.socket();
        let up = wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok() || child.try_wait().ok().flatten().is_some()
        });
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the agent exited with {status} at start; its log:\n{}", self.log_text());
        }
        assert!(up, "the agent's socket does not answer after 10 s; its log:\n{}", self.log_text());
        self.child = Some(child);
    }

    /// The socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The socket as an argument.
    #[must_use]
    pub fn socket_arg(&self) -> String {
        self.socket().display().to_string()
    }

    /// The agent's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the agent (and its earlier runs) logged.
    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Sends `signal` and waits for the agent to exit; returns its status
    /// (`None` when a signal killed it).
    ///
    /// # Panics
    /// When it does not exit within 10 s.
    pub fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), signal) };
        let exited = wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some());
        assert!(exited, "the agent did not exit within 10 s of signal {signal}");
        child.wait().expect("wait").code()
    }

    /// Starts the agent again with the same arguments.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_with(libc::SIGTERM);
        }
        self.spawn();
    }

    /// Sends SIGHUP.
    pub fn hup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(i32::try_from(self.pid()).expect("pid"), libc::SIGHUP) };
    }

    /// Rewrites the configuration file.
    pub fn write_config(&self, text: &str) {
        fs::write(self.dir.path().join("agent.toml"), text).expect("writing agent.toml");
    }

    /// Runs the Python client with `requests` (JSON texts), as `as_user`
    /// (with its supplementary groups) or root, and returns each reply.
    ///
    /// # Panics
    /// When the client fails or prints something else than JSON lines.
    #[must_use]
    pub fn py(&self, as_user: Option<&TestUser>, requests: &[String]) -> Vec<serde_json::Value> {
        let mut cmd = match as_user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg("--reuid").arg(user.uid.to_string()).arg("--regid").arg(user.gid.to_string());
                c.args(["--init-groups", "--"]);
                c.arg("/usr/bin/python3");
                c
            }
            None => Command::new("/usr/bin/python3"),
        };
        cmd.args(["-c", PY_CLIENT]).arg(self.socket()).args(requests).stdin(Stdio::null());
        let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(out.status.success(), "the Python client failed: {}", crate::describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("client line {l:?}: {e}")))
            .collect()
    }

    /// One request as root; returns the reply.
    #[must_use]
    pub fn call(&self, request: &serde_json::Value) -> serde_json::Value {
        self.py(None, &[request.to_string()]).remove(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(i32::try_from(child.id()).unwrap_or(i32::MAX), libc::SIGTERM) };
            if !wait_until(Duration::from_secs(5), || child.try_wait().ok().flatten().is_some()) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A user and a group made for one test with useradd/groupadd, removed on
/// drop.
#[derive(Debug)]
pub struct TestUser {
    /// User name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TestUser {
    /// Creates user `sbxu<pid><n>` with no home, in the supplementary
    /// `groups`.
    ///
    /// # Panics
    /// When useradd fails.
    #[must_use]
    pub fn new(groups: &[&TestGroup]) -> Self {
        let name = format!("sbxu{}x{}", std::process::id(), crate::next_id());
        let mut cmd = Command::new("useradd");
        cmd.args(["-M", "-N", "-s", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            cmd.arg("-G").arg(groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(","));
        }
        cmd.arg(&name);
        let out = cmd.output().expect("running useradd");
        assert!(out.status.success(), "useradd {name}: {}", crate::describe(&out));
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().expect("running id");
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
        };
        Self { uid: id("-u"), gid: id("-g"), name }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A group made with groupadd, removed on drop.
#[derive(Debug)]
pub struct TestGroup {
    /// Group name.
    pub name: String,
}

impl TestGroup {
    /// Creates group `sbxg<pid><n>`.
    ///
    /// # Panics
    /// When groupadd fails.
    #[must_use]
    pub fn new() -> Self {
        let name = format!("sbxg{}x{}", std::process::id(), crate::next_id());
        let out = Command::new("groupadd").arg(&name).output().expect("running groupadd");
        assert!(out.status.success(), "groupadd {name}: {}", crate::describe(&out));
        Self { name }
    }
}

impl Default for TestGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}
