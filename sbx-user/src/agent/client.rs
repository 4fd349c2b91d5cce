//! Talking to an agent, as the CLI does: synchronous, with a bounded wait
//! for every reply, and only after checking that the socket's peer is
//! root. A socket named by `SBX_AGENT_SOCKET` that some other user made
//! could otherwise answer "attached" for a sandbox that does not exist.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value};

use super::protocol::{self, Reply, Request};

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
    reader: BufReader<UnixStream>,
    timeout: Duration,
}

impl Client {
    /// Connects and checks that the agent is root.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        let io_err = |source| ClientError::Io { path: path.to_owned(), source };
        let peer = super::access::peer(&stream).map_err(io_err)?;
        if peer.uid != 0 {
            return Err(ClientError::NotRoot { path: path.to_owned(), uid: peer.uid });
        }
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        Ok(Self { path: path.to_owned(), stream, reader, timeout })
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
        let mut reply = Vec::new();
        self.reader.read_until(b'\n', &mut reply).map_err(|e| self.io(e))?;
        if reply.is_empty() {
            return Err(self.io(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the connection")));
        }
        match protocol::decode_reply(&reply) {
            Ok(Reply::Ok(map)) => Ok(map),
            Ok(Reply::Err { code, message }) => Err(ClientError::Agent { code, message }),
            Err(e) => Err(ClientError::Protocol { path: self.path.clone(), message: e.to_string() }),
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
