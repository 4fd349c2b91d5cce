//! The socket, the connections and the signals, on a single-threaded
//! tokio runtime. Each connection is its own task, so a client that stalls
//! (sends half a line, stops reading its replies) holds only its own task,
//! until a timeout drops it. Kernel work runs on the blocking pool; the
//! requests that change sandboxes take one lock in turn (the loader holds a
//! host-wide lock as well, shared with the CLI), and a request whose client
//! has vanished still runs to its end, so no sandbox is left half-made by a
//! client going away (a `run` whose client cannot be told that its policy
//! holds is then removed again: see `serve_run`).

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use serde_json::json;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};

use super::{
    access::{self, Caller},
    config::{self, Config},
    ops::{self, Context, OpError},
    protocol::{self, ErrorCode, Request, VERSION},
    roots::Roots,
    AgentError, Options,
};
use crate::state::Paths;

/// The configuration in force and the roots it names, swapped whole by a
/// reload.
#[derive(Debug)]
struct Live {
    config: Config,
    roots: Roots,
}

#[derive(Debug)]
struct Shared {
    live: RwLock<Arc<Live>>,
    paths: Paths,
    opts: Options,
    /// Serialises the requests that change sandboxes.
    changes: tokio::sync::Mutex<()>,
    connections: AtomicUsize,
    /// Event subscriptions.
    hub: Arc<super::events::Hub>,
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Brings the event readers in line with the sandboxes below the roots.
    fn rescan(&self) {
        let live = self.live();
        self.hub.rescan(&self.paths, &|p| live.roots.contains(p));
    }
}

/// Loads and checks the configuration and opens the roots.
fn load(opts: &Options) -> Result<Live, AgentError> {
    let file = config::load_file(&opts.config, opts.config_explicit)?;
    let config = config::resolve(file, &opts.overrides)?;
    let roots = Roots::open(&config.cgroup_roots)?;
    Ok(Live { config, roots })
}

/// `--check`: the configuration as the agent would run with it.
pub fn check(opts: &Options) -> Result<String, AgentError> {
    let live = load(opts)?;
    let Config { cgroup_roots: _, group, limits } = &live.config;
    let roots: Vec<String> = live.roots.paths().map(|p| p.display().to_string()).collect();
    Ok(format!(
        "configuration is valid\n  cgroup roots: {}\n  access: root{}\n  socket: {}\n  limits: {limits:?}",
        roots.join(", "),
        group.as_ref().map(|(n, g)| format!(" and members of group {n} (gid {g})")).unwrap_or_default(),
        opts.socket.display()
    ))
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn serve(opts: Options, paths: Paths) -> Result<(), AgentError> {
    let live = load(&opts)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(8)
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(main_loop(opts, paths, live))
}

async fn main_loop(opts: Options, paths: Paths, live: Live) -> Result<(), AgentError> {
    let cleaned = {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || ops::recover(&paths)).await.unwrap_or_default()
    };
    for c in cleaned {
        log::warn!("cleaned up the half-made sandbox {c} of an earlier agent that stopped while creating it");
    }
    let listener = bind(&opts.socket, live.config.group.as_ref().map(|g| g.1))?;
    let bound = std::fs::metadata(&opts.socket).map(|m| m.ino()).ok();
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Runtime)?;
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
    log::info!(
        "serving {} for cgroups below {}",
        opts.socket.display(),
        live.roots.paths().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let shared = Arc::new(Shared {
        live: RwLock::new(Arc::new(live)),
        paths,
        opts,
        changes: tokio::sync::Mutex::new(()),
        connections: AtomicUsize::new(0),
        hub: Arc::new(super::events::Hub::default()),
    });
    let rescanning = Arc::clone(&shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            rescanning.rescan();
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move { connection(&shared, stream).await });
                }
                // EMFILE and the like: back off instead of spinning.
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = hup.recv() => reload(&shared),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Let a change in progress finish; the sandboxes stay pinned.
    let _done = shared.changes.lock().await;
    let sock = &shared.opts.socket;
    if std::fs::metadata(sock).map(|m| m.ino()).ok() == bound {
        let _ = std::fs::remove_file(sock);
    }
    log::info!("stopped; every sandbox stays enforced");
    Ok(())
}

/// SIGHUP: reads the configuration again; a bad one is logged and the old
/// one kept.
fn reload(shared: &Shared) {
    match load(&shared.opts) {
        Ok(live) => {
            if let Err(e) = set_socket_access(&shared.opts.socket, live.config.group.as_ref().map(|g| g.1)) {
                log::error!("reloading: {e}; keeping the previous configuration");
                return;
            }
            log::info!("reloaded {}", shared.opts.config.display());
            *shared.live.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
        }
        Err(e) => log::error!("reloading: {e}; keeping the previous configuration"),
    }
}

/// Creates the socket: refuses to start if another agent answers on it,
/// replaces a stale one, and gives it the mode of the access rule (0660
/// root:GROUP with a group, else 0600) before anyone can connect.
fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, AgentError> {
    let err = |action: &'static str| {
        let path = path.to_owned();
        move |source| AgentError::Socket { action, path, source }
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err("creating the directory of"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(err("setting the mode of the directory of"))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(AgentError::Running(path.to_owned())),
            Err(_) => std::fs::remove_file(path).map_err(err("removing the stale socket"))?,
        },
        Ok(_) => return Err(err("replacing")(io::Error::other("it exists and is not a socket"))),
        Err(_) => {}
    }
    // SAFETY: umask has no preconditions; the socket is created with mode
    // 0600 at most, then opened up to the group below.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let std_listener = bound.map_err(err("binding"))?;
    set_socket_access(path, group)?;
    std_listener.set_nonblocking(true).map_err(err("configuring"))?;
    UnixListener::from_std(std_listener).map_err(err("configuring"))
}

fn set_socket_access(path: &Path, group: Option<u32>) -> Result<(), AgentError> {
    let err = |action: &'static str| {
        let path = path.to_owned();
        move |source| AgentError::Socket { action, path, source }
    };
    std::os::unix::fs::chown(path, Some(0), Some(group.unwrap_or(0))).map_err(err("changing the owner of"))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err("setting the mode of"))
}

/// What reading one request line gave.
enum Line {
    /// A whole line (without its newline).
    Full(Vec<u8>),
    /// Longer than the limit; the connection cannot be resynchronised.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Reads up to a newline, never buffering more than `max` bytes.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            // EOF; a final line without a newline still counts.
            return Ok(if line.is_empty() { Line::Eof } else { Line::Full(line) });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            line.pop();
            return Ok(Line::Full(line));
        }
    }
}

/// An `events` request: the error reply if it is refused, else `None`
/// once the subscriber has gone (the connection then ends).
async fn subscribe(
    shared: &Shared,
    live: &Live,
    caller: &Caller,
    env: protocol::Envelope,
    reader: &mut BufReader<FdReader>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> Option<Vec<u8>> {
    let Request::Events { cgroups } = &env.request else { unreachable!("called for events") };
    let ctx = Context { config: &live.config, roots: &live.roots, paths: &shared.paths };
    let filter = match ops::event_filter(&ctx, caller, cgroups.as_deref()) {
        Ok(f) => f,
        Err(OpError { code, message }) => return Some(protocol::error_reply(env.id.as_ref(), code, &message)),
    };
    // The kernel's share of the queue is bounded too: a subscriber that
    // stops reading holds 64 KiB there.
    set_send_buffer(wr, 64 * 1024);
    let uid = (!caller.is_root()).then_some(caller.uid);
    let sub = shared.hub.subscribe(filter, uid, live.config.limits.event_queue);
    shared.rescan();
    log::info!("uid {} pid {}: events: subscribed", caller.uid, caller.pid);
    let ok = protocol::ok_reply(env.id.as_ref(), json!({ "subscribed": true }));
    let limit = Duration::from_secs(live.config.limits.write_timeout_secs);
    if let Ok(Ok(())) = send(wr, limit, ok).await {
        stream_events(reader, wr, sub.rx).await;
    }
    shared.hub.unsubscribe_id(sub.id);
    shared.rescan();
    None
}

/// Writes a subscriber's event lines until it goes away. A subscriber that
/// stops reading blocks only this task; its queue then fills and the hub
/// counts what it drops.
async fn stream_events(
    reader: &mut BufReader<FdReader>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<serde_json::Value>,
) {
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(v) = line else { return };
                let mut bytes = serde_json::to_vec(&v).expect("JSON values serialise");
                bytes.push(b'\n');
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            input = reader.fill_buf() => {
                // Anything it sends now is ignored; EOF ends the stream.
                let n = input.map_or(0, <[u8]>::len);
                if n == 0 {
                    return;
                }
                reader.consume(n);
            }
        }
    }
}

fn set_send_buffer(wr: &tokio::net::unix::OwnedWriteHalf, bytes: i32) {
    use std::os::fd::AsRawFd as _;
    let stream: &UnixStream = wr.as_ref();
    // SAFETY: setsockopt on an open socket with an int option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const bytes).cast(),
            libc::socklen_t::try_from(size_of::<i32>()).expect("4"),
        );
    }
}

/// Writes one reply, giving up after `limit`.
async fn send(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    limit: Duration,
    bytes: Vec<u8>,
) -> Result<io::Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, wr.write_all(&bytes)).await
}

/// Decrements the connection count when a connection ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(shared: &Shared, stream: UnixStream) {
    let live = shared.live();
    let limits = live.config.limits.clone();
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let (rd, mut wr) = stream.into_split();
    let _slot = Slot(&shared.connections);
    let n = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let caller = match access::peer(wr.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot read the credentials of a client: {e}");
            return;
        }
    };
    if let Err(why) = caller.admit(live.config.group.as_ref()) {
        log::warn!("refused uid {} pid {}: {why}", caller.uid, caller.pid);
        let _ = send(&mut wr, write_timeout, protocol::error_reply(None, ErrorCode::Denied, &why)).await;
        return;
    }
    if n > limits.max_connections {
        let msg = format!(
            "the agent serves {} connections at most (limits.max_connections); try again",
            limits.max_connections
        );
        let _ = send(&mut wr, write_timeout, protocol::error_reply(None, ErrorCode::Limit, &msg)).await;
        return;
    }
    drop(live);
    let passed = Arc::new(std::sync::Mutex::new(None));
    let mut reader = BufReader::with_capacity(64 * 1024, FdReader { inner: rd, fd: Arc::clone(&passed) });
    loop {
        let live = shared.live();
        let max = live.config.limits.max_request_bytes;
        let idle = Duration::from_secs(live.config.limits.idle_timeout_secs);
        let request = match tokio::time::timeout(idle, read_line(&mut reader, max)).await {
            Ok(Ok(Line::Full(bytes))) => bytes,
            Ok(Ok(Line::TooLong)) => {
                let msg =
                    format!("request longer than {max} bytes (limits.max_request_bytes); the connection is closed");
                let _ = send(&mut wr, write_timeout, protocol::error_reply(None, ErrorCode::TooLarge, &msg)).await;
                return;
            }
            Ok(Ok(Line::Eof) | Err(_)) => return,
            Err(_) => {
                log::debug!("dropping uid {} pid {}: idle for {idle:?}", caller.uid, caller.pid);
                return;
            }
        };
        if request.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match handle(shared, live, &caller, (&request, &passed), &mut reader, &mut wr, write_timeout).await
        {
            Next::Reply(reply) => reply,
            Next::Sent => continue,
            Next::End => return,
        };
        let sent = send(&mut wr, write_timeout, reply).await;
        if !matches!(sent, Ok(Ok(()))) {
            log::warn!(
                "dropping uid {} pid {}: it did not read its reply within {write_timeout:?}",
                caller.uid,
                caller.pid
            );
            return;
        }
    }
}
/// What to do after a request.
enum Next {
    /// Send this reply.
    Reply(Vec<u8>),
    /// The reply went out already (with a file descriptor).
    Sent,
    /// End the connection.
    End,
}

/// Answers one request line.
async fn handle(
    shared: &Shared,
    live: Arc<Live>,
    caller: &Caller,
    (request, passed): (&[u8], &std::sync::Mutex<Option<std::os::fd::OwnedFd>>),
    reader: &mut BufReader<FdReader>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    write_timeout: Duration,
) -> Next {
    // The access rule of the configuration in force now, which a reload
    // may have narrowed since the connection was accepted.
    Next::Reply(if let Err(why) = caller.admit(live.config.group.as_ref()) {
        protocol::error_reply(None, ErrorCode::Denied, &why)
    } else {
        match protocol::decode(request) {
            Err(e) => protocol::error_reply(None, e.code(), &e.to_string()),
            Ok(env) if matches!(env.request, Request::Events { .. }) => {
                match subscribe(shared, &live, caller, env, reader, wr).await {
                    Some(refusal) => refusal,
                    None => return Next::End,
                }
            }
            Ok(env) if matches!(env.request, Request::Run { .. }) => {
                return serve_run(shared, live, caller, env, wr, write_timeout).await;
            }
            Ok(env) => {
                let op = env.request.op();
                let id = env.id;
                // The descriptor sent with the request (`enter` only).
                let fd = matches!(env.request, Request::Enter { .. })
                    .then(|| passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
                    .flatten();
                match dispatch(shared, live, caller, env.request, fd).await {
                    Ok(v) => {
                        log::info!("uid {} pid {}: {op}: ok", caller.uid, caller.pid);
                        protocol::ok_reply(id.as_ref(), v)
                    }
                    Err(OpError { code, message }) => {
                        log::info!("uid {} pid {}: {op}: {message}", caller.uid, caller.pid);
                        protocol::error_reply(id.as_ref(), code, &message)
                    }
                }
            }
        }
    })
}

/// A `run` request ([`Request::Run`]). `staged`: the first reply as soon
/// as the cgroup exists (with its directory's fd, for root), so the client
/// creates its child in it while the policy is attached; the second once
/// the policy holds, or the error after which the sandbox is gone.
/// Otherwise one reply, after the attach. The changes lock is held from
/// the cgroup to the attach. A sandbox whose client cannot be told that
/// its policy holds is removed again: that client never let its command
/// on, and nobody else would remove it.
async fn serve_run(
    shared: &Shared,
    live: Arc<Live>,
    caller: &Caller,
    env: protocol::Envelope,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    write_timeout: Duration,
) -> Next {
    let Request::Run { policy, trace, dns_stub, staged } = env.request else {
        unreachable!("serve_run serves run requests")
    };
    let id = env.id;
    let (uid, pid) = (caller.uid, caller.pid);
    let turn = shared.changes.lock().await;
    let asker = caller.clone();
    let made = on_pool(shared, Arc::clone(&live), move |ctx| ops::run_make(ctx, &asker, &policy, trace, dns_stub));
    let (made, mut v, mut fd) = match made.await {
        Ok(m) => m,
        Err(OpError { code, message }) => {
            log::info!("uid {uid} pid {pid}: run: {message}");
            return Next::Reply(protocol::error_reply(id.as_ref(), code, &message));
        }
    };
    if staged {
        // The first reply takes what `run_make` said; the second says only
        // that the policy holds (with the attach's fields, below).
        let mut first = std::mem::replace(&mut v, json!({ "stage": "attached" }));
        first["stage"] = json!("made");
        if !send_reply(wr, write_timeout, protocol::ok_reply(id.as_ref(), first), fd.take()).await {
            log::warn!(
                "dropping uid {uid} pid {pid}: the first reply to its run could not be sent; the sandbox is removed"
            );
            // Dropped unattached: killed and removed (on the pool: it waits
            // for the cgroup to empty).
            let _ = on_pool(shared, Arc::clone(&live), move |_| {
                drop(made);
                Ok(())
            })
            .await;
            shared.rescan();
            return Next::End;
        }
    }
    let attached = on_pool(shared, Arc::clone(&live), move |ctx| made.attach(ctx)).await;
    shared.rescan();
    drop(turn);
    let (more, undo) = match attached {
        Ok(a) => a,
        Err(OpError { code, message }) => {
            log::info!("uid {uid} pid {pid}: run: {message}");
            return Next::Reply(protocol::error_reply(id.as_ref(), code, &message));
        }
    };
    if let (serde_json::Value::Object(all), serde_json::Value::Object(more)) = (&mut v, more) {
        all.extend(more);
    }
    if send_reply(wr, write_timeout, protocol::ok_reply(id.as_ref(), v), fd).await {
        log::info!("uid {uid} pid {pid}: run: ok");
        return Next::Sent;
    }
    log::warn!("dropping uid {uid} pid {pid}: the reply to its run could not be sent; the sandbox is removed");
    let _turn = shared.changes.lock().await;
    let asker = caller.clone();
    if let Err(e) = on_pool(shared, live, move |ctx| undo.remove(ctx, &asker)).await {
        log::warn!("removing the sandbox of uid {uid} pid {pid}: {}", e.message);
    }
    shared.rescan();
    Next::End
}

/// Sends a reply line, with `fd` if there is one, within `limit`; whether
/// it went out whole.
async fn send_reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    limit: Duration,
    reply: Vec<u8>,
    fd: Option<std::os::fd::OwnedFd>,
) -> bool {
    let sent = match &fd {
        Some(fd) => tokio::time::timeout(limit, send_with_fd(wr, &reply, fd)).await,
        None => send(wr, limit, reply).await,
    };
    matches!(sent, Ok(Ok(())))
}

/// Sends `reply` with `fd` as `SCM_RIGHTS` on its first bytes, then the
/// rest of it if the first `sendmsg` took only part.
async fn send_with_fd(
    wr: &tokio::net::unix::OwnedWriteHalf,
    reply: &[u8],
    fd: &std::os::fd::OwnedFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let stream: &UnixStream = wr.as_ref();
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            super::fdpass::send_with_fd(stream.as_raw_fd(), reply, fd.as_raw_fd())
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    };
    let mut rest = &reply[sent..];
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The read half of a connection, read with `recvmsg`: a descriptor that
/// comes with the bytes (`SCM_RIGHTS`) is kept in `fd` for the request it
/// came with (the latest replaces and closes an earlier one not taken).
struct FdReader {
    inner: tokio::net::unix::OwnedReadHalf,
    fd: Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>,
}

impl tokio::io::AsyncRead for FdReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::os::fd::AsRawFd as _;
        let this = self.get_mut();
        let stream: &UnixStream = this.inner.as_ref();
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                super::fdpass::recv_with_fd(stream.as_raw_fd(), buf.initialize_unfilled())
            });
            match got {
                Ok((n, fd)) => {
                    if let Some(fd) = fd {
                        *this.fd.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fd);
                    }
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

async fn dispatch(
    shared: &Shared,
    live: Arc<Live>,
    caller: &Caller,
    request: Request,
    fd: Option<std::os::fd::OwnedFd>,
) -> Result<serde_json::Value, OpError> {
    if let Request::Hello {} = request {
        return Ok(json!({
                "agent": format!("sbx-user {}", env!("CARGO_PKG_VERSION")),
                "protocol": VERSION,
                "uid": caller.uid,
                "gid": caller.gid,
                "pid": caller.pid,
                "root": caller.is_root(),
                "cgroup_roots": live.roots.paths().collect::<Vec<_>>(),
                "bpffs": shared.paths.bpffs,
                "state_dir": shared.paths.state_dir,
        }));
    }
    let changes = matches!(
        request,
        Request::Attach { .. } | Request::Update { .. } | Request::Detach { .. } | Request::Enter { .. }
    );
    let _turn = if changes { Some(shared.changes.lock().await) } else { None };
    let caller = caller.clone();
    let work = move |ctx: &Context<'_>| match &request {
        Request::Hello {} | Request::Events { .. } => unreachable!("answered before"),
        Request::Attach { cgroup, create, replace, policy } => {
            ops::attach(ctx, &caller, cgroup, *create, *replace, policy)
        }
        Request::Update { cgroup, policy } => ops::update(ctx, &caller, cgroup, policy),
        Request::Detach { cgroup, remove } => ops::detach(ctx, &caller, cgroup, *remove),
        Request::Run { .. } => unreachable!("served by serve_run"),
        Request::Enter { cgroup } => ops::enter(ctx, &caller, cgroup, fd),
        Request::List {} => ops::list(ctx, &caller),
        Request::Status { cgroup } => ops::status(ctx, &caller, cgroup),
    };
    let outcome = on_pool(shared, live, work).await;
    if changes {
        shared.rescan();
    }
    outcome
}

/// Runs `work` on tokio's blocking pool with the context of `live`.
async fn on_pool<T: Send + 'static>(
    shared: &Shared,
    live: Arc<Live>,
    work: impl FnOnce(&Context<'_>) -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    let paths = shared.paths.clone();
    tokio::task::spawn_blocking(move || work(&Context { config: &live.config, roots: &live.roots, paths: &paths }))
        .await
        .unwrap_or_else(|e| Err(OpError { code: ErrorCode::Failed, message: format!("internal error: {e}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, max).await.expect("in memory") {
                Line::Full(l) => out.push(String::from_utf8_lossy(&l).into_owned()),
                Line::TooLong => {
                    out.push("<too long>".into());
                    return out;
                }
                Line::Eof => return out,
            }
        }
    }

    #[test]
    fn reads_lines_within_the_limit() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            assert_eq!(lines(b"ab\ncdef\n\ng", 10).await, ["ab", "cdef", "", "g"]);
            assert_eq!(lines(b"0123456789\n", 11).await, ["0123456789"]);
            assert_eq!(lines(b"0123456789\n", 10).await, ["<too long>"]);
            assert_eq!(lines(b"ok\n0123456789abcdef", 10).await, ["ok", "<too long>"]);
        });
    }
}
