//! Small guards: temporary directories and background processes.

use crate::probe::Place;
use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `sbx-test-<what>-<pid>-<n>` under `std::env::temp_dir()`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sbx-test-{what}-{}-{}", std::process::id(), crate::next_id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    /// As [`Self::new`], under `parent` instead of the system temp dir:
    /// the command of `sbx-user run` sees a private `/tmp`, so files it
    /// must find go elsewhere (e.g. `/var/tmp`).
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn new_in(parent: &Path, what: &str) -> Self {
        let path = parent.join(format!("sbx-test-{what}-{}-{}", std::process::id(), crate::next_id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A background process, killed (SIGKILL, by pid) and reaped on drop.
#[derive(Debug)]
pub struct Background {
    what: String,
    child: Child,
}

impl Background {
    /// Spawns `cmd` with stdout piped (for [`Self::read_line`]) and stderr
    /// inherited, so its complaints show up in the test output.
    ///
    /// # Panics
    /// When it cannot be spawned.
    #[must_use]
    pub fn spawn(what: &str, cmd: &mut Command) -> Self {
        Self::spawn_at(what, cmd, &Place::default())
    }

    /// As [`Self::spawn`], at `place`.
    ///
    /// # Panics
    /// When it cannot be spawned.
    #[must_use]
    pub fn spawn_at(what: &str, cmd: &mut Command, place: &Place) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let child = place.spawn(cmd);
        Self { what: what.to_owned(), child }
    }

    /// As [`Self::spawn`], with stdout and stderr going to the file `log`
    /// (for chatty servers); nothing to read with [`Self::read_line`].
    ///
    /// # Panics
    /// When the log cannot be created or the process spawned.
    #[must_use]
    pub fn spawn_logged(what: &str, cmd: &mut Command, place: &Place, log: &Path) -> Self {
        let f = fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let g = f.try_clone().expect("cloning a file descriptor");
        cmd.stdin(Stdio::null()).stdout(f).stderr(g);
        let child = place.spawn(cmd);
        Self { what: what.to_owned(), child }
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads one line of the process's stdout (blocking).
    ///
    /// # Panics
    /// When stdout ends first, which means the process died.
    pub fn read_line(&mut self) -> String {
        let out = self.child.stdout.take().expect("stdout is piped and read once");
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap_or_else(|e| panic!("reading from {}: {e}", self.what));
        if line.is_empty() {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            panic!("{} exited before reporting ready ({status}); see its stderr above", self.what);
        }
        // Keep the pipe open (closing it could SIGPIPE the process).
        self.child.stdout = Some(reader.into_inner());
        line.trim_end().to_owned()
    }
}

impl Background {
    /// Everything the process writes to stdout (after what
    /// [`Self::read_line`] took) until it exits.
    ///
    /// # Panics
    /// When stdout is not piped or cannot be read.
    #[must_use]
    pub fn wait_output(mut self) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        let mut pipe = self.child.stdout.take().expect("stdout is piped");
        pipe.read_to_end(&mut out).unwrap_or_else(|e| panic!("reading from {}: {e}", self.what));
        let _ = self.child.wait();
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that was free a moment ago (bind to port 0, read it,
/// close). Good enough for a server started right after.
///
/// # Panics
/// When no port can be had.
#[must_use]
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// Waits until a TCP connect from the test process to `addr` succeeds,
/// e.g. for a server that does not report readiness.
///
/// # Panics
/// After 10 s.
pub fn wait_tcp(addr: SocketAddr) {
    let up =
        wait_until(Duration::from_secs(10), || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok());
    assert!(up, "nothing listens on {addr} after 10 s");
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command that must succeed, e.g. `ip`.
///
/// # Panics
/// When it fails, with its stderr.
pub(crate) fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
}
