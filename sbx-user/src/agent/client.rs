//! Talking to an agent, as the CLI does: synchronous, with a bounded wait
//! for every reply, and only after checking that the socket's peer is
//! root. A socket named by `SBX_AGENT_SOCKET` that some other user made
//! could otherwise answer "attached" for a sandbox that does not exist.

use std::{
    io::{self, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value};

use super::protocol::{self, Reply, Request};

/// Connects, retrying while the agent's backlog is full, for at most
/// `timeout`: a blocking connect to an agent that accepts nothing would
/// wait for ever.
fn connect_within(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let err = |source| ClientError::Connect { path: path.to_owned(), source };
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long")));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX fits");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s.cast_signed();
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_un>()).expect("small");
        // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
        let rc = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        // EAGAIN: the listener's backlog is full; it may yet accept.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err(e));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ClientError::Timeout { path: path.to_owned(), secs: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.set_nonblocking(false).map_err(err)?;
    Ok(stream)
}

/// How long the CLI waits for the agent's reply to one request. Attaching
/// a policy of 100,000 rules takes a few seconds; a minute with no reply
/// means the agent is stuck.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace supports 1.85"
)]
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot connect to the sbx agent at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket's peer is not root: not an agent to trust.
    #[error("the process serving {path} runs as uid {uid}, not root: it is not an sbx agent to trust; nothing was done (unset SBX_AGENT_SOCKET or pass --agent-socket to the real agent)")]
    NotRoot {
        /// The socket.
        path: PathBuf,
        /// Its peer's uid.
        uid: u32,
    },
    /// No reply within the time limit.
    #[error("the sbx agent at {path} did not answer within {} s; it may be stuck (check `systemctl status sbx-agent`); nothing is known to have been done", .secs)]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The limit.
        secs: u64,
    },
    /// The connection broke.
    #[error("talking to the sbx agent at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The reply is not protocol version 1.
    #[error("the sbx agent at {path} sent a reply this sbx-user cannot read: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The agent refused or failed the request.
    #[error("{message}")]
    Agent {
        /// The error code.
        code: String,
        /// The agent's message.
        message: String,
    },
}

/// A connection to an agent.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    /// Bytes read past the last line taken.
    read: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// Connects and checks that the agent is root.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = connect_within(path, timeout)?;
        let io_err = |source| ClientError::Io { path: path.to_owned(), source };
        let peer = super::access::peer(&stream).map_err(io_err)?;
        if peer.uid != 0 {
            return Err(ClientError::NotRoot { path: path.to_owned(), uid: peer.uid });
        }
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        Ok(Self { path: path.to_owned(), stream, read: Vec::new(), timeout })
    }

    /// The socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and reads its reply.
    pub fn call(&mut self, request: &Request) -> Result<Map<String, Value>, ClientError> {
        let line = protocol::encode_request(request);
        self.stream.write_all(&line).map_err(|e| self.io(e))?;
        self.reply()
    }

    /// Sends one request without reading its reply: the caller does other
    /// work while the agent serves it, then reads the reply with
    /// [`Self::reply_with_fd`].
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let line = protocol::encode_request(request);
        self.stream.write_all(&line).map_err(|e| self.io(e))
    }

    /// Reads the next reply to the request [`Self::send`] sent (a staged
    /// `run` has two), and the file descriptor that came with its bytes
    /// (`SCM_RIGHTS` on its first byte), if any.
    pub fn reply_with_fd(&mut self) -> Result<(Map<String, Value>, Option<std::os::fd::OwnedFd>), ClientError> {
        let (line, fd) = self.line().map_err(|e| self.io(e))?;
        Ok((self.decode(&line)?, fd))
    }

    /// Sends one request with `fd` as `SCM_RIGHTS` on its first byte
    /// (request `enter`) and reads its reply.
    pub fn call_sending_fd(
        &mut self,
        request: &Request,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Map<String, Value>, ClientError> {
        use std::os::fd::AsRawFd as _;
        let line = protocol::encode_request(request);
        let sent =
            super::fdpass::send_with_fd(self.stream.as_raw_fd(), &line, fd.as_raw_fd()).map_err(|e| self.io(e))?;
        self.stream.write_all(&line[sent..]).map_err(|e| self.io(e))?;
        self.reply()
    }

    /// Reads the next reply line and decodes it; a descriptor sent with it
    /// is closed.
    fn reply(&mut self) -> Result<Map<String, Value>, ClientError> {
        let (line, _) = self.line().map_err(|e| self.io(e))?;
        self.decode(&line)
    }

    /// Reads one line (through its `\n`, or what came before the end of
    /// the stream), with `recvmsg`, and the first descriptor that came with
    /// the bytes read for it (any other is closed). The agent sends a
    /// descriptor only with the first reply on a connection, so no earlier
    /// line's bytes can come with it.
    fn line(&mut self) -> io::Result<(Vec<u8>, Option<std::os::fd::OwnedFd>)> {
        use std::os::fd::AsRawFd as _;
        let mut fd = None;
        loop {
            if let Some(end) = self.read.iter().position(|&b| b == b'\n') {
                let rest = self.read.split_off(end + 1);
                return Ok((std::mem::replace(&mut self.read, rest), fd));
            }
            let mut chunk = [0u8; 4096];
            let (n, got) = match super::fdpass::recv_with_fd(self.stream.as_raw_fd(), &mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Ok((std::mem::take(&mut self.read), fd));
            }
            fd = fd.or(got);
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Decodes a reply line.
    fn decode(&self, line: &[u8]) -> Result<Map<String, Value>, ClientError> {
        if line.is_empty() {
            return Err(self.io(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the connection")));
        }
        match protocol::decode_reply(line) {
            Ok(Reply::Ok(map)) => Ok(map),
            Ok(Reply::Err { code, message }) => Err(ClientError::Agent { code, message }),
            Err(e) => Err(ClientError::Protocol { path: self.path.clone(), message: e.to_string() }),
        }
    }

    /// Subscribes (request `events`) and calls `each` with every event line
    /// until the agent closes the connection or `each` says stop.
    pub fn follow_events(
        &mut self,
        cgroups: Option<Vec<String>>,
        mut each: impl FnMut(&Map<String, Value>) -> bool,
    ) -> Result<(), ClientError> {
        self.call(&Request::Events { cgroups })?;
        // Events come when they come: no reply timeout from here on.
        self.stream.set_read_timeout(None).map_err(|e| self.io(e))?;
        loop {
            let (line, _) = self.line().map_err(|e| self.io(e))?;
            if line.is_empty() {
                return Ok(());
            }
            // Event lines have no "ok": `{"v": 1, "event": {...}, "dropped": N}`.
            let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&line) else {
                return Err(ClientError::Protocol {
                    path: self.path.clone(),
                    message: "an event line is not a JSON object".into(),
                });
            };
            if !each(&m) {
                return Ok(());
            }
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            ClientError::Timeout { path: self.path.clone(), secs: self.timeout.as_secs() }
        } else {
            ClientError::Io { path: self.path.clone(), source }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use serde_json::json;

    use super::*;

    /// Two replies that arrive in one read are two lines (a staged `run`),
    /// and the descriptor sent with the first is the first's.
    #[test]
    fn replies_read_in_one_go_stay_apart_and_the_fd_goes_with_the_first() {
        let (ours, agent) = UnixStream::pair().expect("socketpair");
        let file = std::fs::File::open("/").expect("open /");
        let mut both = protocol::ok_reply(Some(&json!(1)), json!({ "stage": "made" }));
        both.extend(protocol::ok_reply(Some(&json!(1)), json!({ "stage": "attached" })));
        let sent = super::super::fdpass::send_with_fd(agent.as_raw_fd(), &both, file.as_raw_fd()).expect("send");
        (&agent).write_all(&both[sent..]).expect("send the rest");
        drop(agent);
        let mut client =
            Client { path: "test".into(), stream: ours, read: Vec::new(), timeout: Duration::from_secs(5) };
        let (first, fd) = client.reply_with_fd().expect("first reply");
        assert_eq!(first["stage"], "made");
        assert!(fd.is_some(), "the descriptor comes with the first reply");
        let (second, fd) = client.reply_with_fd().expect("second reply");
        assert_eq!(second["stage"], "attached");
        assert!(fd.is_none());
        assert!(matches!(client.reply(), Err(ClientError::Io { .. })), "then the end of the stream");
    }
}
