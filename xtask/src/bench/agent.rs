//! Section 6, agent: issue 9's targets for `sbx-user agent`.
//!
//! - Sandboxes created and attached per second through the agent (one
//!   client, one request after the other, the small policy), against
//!   `sbx-user attach` processes started one after the other (the direct
//!   path's rate), in the same rounds; and the same for removal.
//! - `sbx-user run -- /bin/true` through the agent, the direct `run` and
//!   plain `/bin/true`, interleaved.
//! - Many sandboxes held by one agent: its resident memory before and
//!   after, and the latency from a denied connect inside a few of them to
//!   the event line on a subscriber's connection.
//!
//! The agent serves a socket in the benchmark's work directory, manages a
//! cgroup below the benchmark's own, and uses the benchmark's bpffs and
//! state directory (`SBX_BPFFS`, `SBX_STATE_DIR`): the host's default
//! socket, records and pins are never touched. It is stopped (SIGTERM, by
//! pid) when the section ends or fails.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    context::{check_interrupted, mount_tmpfs, rmdir_retry, Ctx},
    lifecycle::which_true,
    report::{Table, Target},
    runner::{interleaved, timed_quiet},
    sbx::{self, monotonic_ns, EventFollower},
    stats::{dur_ms, f, mib, ms, thousands, x, Stat},
    worker, Plan,
};

/// What the section measured.
pub(super) struct AgentBench {
    /// Sandboxes per round in the rate measurement through the agent.
    pub(super) batch: u32,
    /// Sandboxes per round for the CLI's rate.
    pub(super) cli_batch: u32,
    /// Per round, sandboxes per second; the agent's state directory is the
    /// benchmark's (on the checkout's filesystem).
    pub(super) create_rate: Vec<f64>,
    pub(super) remove_rate: Vec<f64>,
    /// The same with the agent's state directory on a tmpfs, as
    /// `/run/sbx` is under the systemd unit (`RuntimeDirectory=`).
    pub(super) create_rate_tmpfs: Vec<f64>,
    pub(super) remove_rate_tmpfs: Vec<f64>,
    pub(super) cli_attach_rate: Vec<f64>,
    pub(super) cli_detach_rate: Vec<f64>,
    /// Wall times in ms.
    pub(super) bin_true: Vec<f64>,
    pub(super) run_direct: Vec<f64>,
    pub(super) run_agent: Vec<f64>,
    /// Sandboxes held at once.
    pub(super) held: u32,
    /// Creating them, one request after the other, and removing them.
    pub(super) held_create_s: f64,
    pub(super) held_remove_s: f64,
    /// The agent's `VmRSS`, KiB: started, holding them, holding them with
    /// a subscriber.
    pub(super) rss_start_kib: f64,
    pub(super) rss_held_kib: f64,
    pub(super) rss_subscribed_kib: f64,
    /// Sandboxes the latency was measured in, and the samples (ms).
    pub(super) latency_sandboxes: u32,
    pub(super) latency_ms: Vec<f64>,
    /// The baseline: the same denials in a sandbox attached directly
    /// beside them, read by `sbx-user events --follow` (ms).
    pub(super) direct_latency_ms: Vec<f64>,
    /// The filesystem of the state directory (the records are files).
    pub(super) state_fs: String,
}

impl AgentBench {
    pub(super) fn json(&self) -> Value {
        let s = |v: &Vec<f64>| json!({ "samples": v, "stat": Stat::of(v).map(Stat::json) });
        json!({
            "batch": self.batch,
            "cli_batch": self.cli_batch,
            "create_attach_per_s": s(&self.create_rate),
            "detach_remove_per_s": s(&self.remove_rate),
            "create_attach_per_s_state_on_tmpfs": s(&self.create_rate_tmpfs),
            "detach_remove_per_s_state_on_tmpfs": s(&self.remove_rate_tmpfs),
            "cli_attach_per_s": s(&self.cli_attach_rate),
            "cli_detach_per_s": s(&self.cli_detach_rate),
            "bin_true_ms": s(&self.bin_true),
            "run_bin_true_direct_ms": s(&self.run_direct),
            "run_bin_true_agent_ms": s(&self.run_agent),
            "held": self.held,
            "held_create_s": self.held_create_s,
            "held_remove_s": self.held_remove_s,
            "rss_kib": { "started": self.rss_start_kib, "holding": self.rss_held_kib, "holding_with_subscriber": self.rss_subscribed_kib },
            "latency_sandboxes": self.latency_sandboxes,
            "deny_to_subscriber_ms": s(&self.latency_ms),
            "deny_to_direct_follower_ms": s(&self.direct_latency_ms),
            "state_dir_fs": self.state_fs,
        })
    }
}

/// A running `sbx-user agent`, stopped by pid when dropped.
struct AgentProc {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl AgentProc {
    /// Starts an agent managing `root`, with its files in `<work>/<name>`
    /// and its records in `state` (the benchmark's state directory if
    /// `None`).
    fn start(ctx: &Ctx, root: &Path, name: &str, state: Option<&Path>) -> Result<Self> {
        check_interrupted()?;
        let dir = ctx.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (socket, config, log) = (dir.join("agent.sock"), dir.join("agent.toml"), dir.join("agent.log"));
        std::fs::write(&config, "").with_context(|| format!("writing {}", config.display()))?;
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = ctx.sbx_cmd();
        cmd.arg("agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--cgroup-root")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("dup of the agent log")?)
            .stderr(out);
        if let Some(state) = state {
            cmd.env("SBX_STATE_DIR", state);
        }
        let child = cmd.spawn().context("starting sbx-user agent")?;
        let agent = Self { child, socket, log };
        let start = Instant::now();
        while UnixStream::connect(&agent.socket).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the agent does not answer on {} after 10 s; its log:\n{}",
                    agent.socket.display(),
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn rss_kib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(f64::NAN, f)
    }

    fn connect(&self) -> Result<Conn> {
        let s =
            UnixStream::connect(&self.socket).with_context(|| format!("connecting to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).context("socket timeout")?;
        Ok(Conn { reader: BufReader::new(s.try_clone().context("dup of the socket")?), writer: s })
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(i32::MAX), libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client connection: a request line, its reply line.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn call(&mut self, request: &Value) -> Result<Value> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).context("sending a request to the agent")?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply).context("reading the agent's reply")?;
        let v: Value = serde_json::from_str(&reply).with_context(|| format!("the agent's reply {reply:?}"))?;
        if v["ok"] != json!(true) {
            bail!("the agent refused {request}: {}", v["error"]);
        }
        Ok(v)
    }
}

/// The small policy as the protocol carries it (the flags of
/// [`sbx::SMALL_POLICY`]).
fn small_policy_json() -> Value {
    let mut allow = Vec::new();
    let mut loopback = None;
    for pair in sbx::SMALL_POLICY.chunks(2) {
        match pair[0] {
            "--allow" => allow.push(pair[1]),
            "--loopback" => loopback = Some(pair[1]),
            other => unreachable!("flag {other} of the small policy"),
        }
    }
    json!({ "allow": allow, "loopback": loopback })
}

fn attach_req(name: &str) -> Value {
    json!({ "v": 1, "op": "attach", "cgroup": name, "create": true, "policy": small_policy_json() })
}

fn remove_req(name: &str) -> Value {
    json!({ "v": 1, "op": "detach", "cgroup": name, "remove": true })
}

/// Creates (and attaches) each of `names`, then removes each; returns the
/// two rates per second.
fn agent_batch(conn: &mut Conn, names: &[String]) -> Result<(f64, f64)> {
    check_interrupted()?;
    let start = Instant::now();
    for n in names {
        conn.call(&attach_req(n))?;
    }
    let made = start.elapsed();
    let start = Instant::now();
    for n in names {
        conn.call(&remove_req(n))?;
    }
    let n = f(names.len() as u64);
    Ok((n / made.as_secs_f64(), n / start.elapsed().as_secs_f64()))
}

/// `sbx-user attach` of each of `cgroups`, then `detach` of each, each a
/// process; returns the two rates per second.
fn cli_batch(ctx: &Ctx, cgroups: &[PathBuf]) -> Result<(f64, f64)> {
    let small = sbx::small_policy();
    let start = Instant::now();
    for cg in cgroups {
        ctx.attach(cg, &small, None, None)?;
    }
    let made = start.elapsed();
    let start = Instant::now();
    for cg in cgroups {
        ctx.detach(cg)?;
    }
    let n = f(cgroups.len() as u64);
    Ok((n / made.as_secs_f64(), n / start.elapsed().as_secs_f64()))
}

/// The flags both `run`s get: the small policy, and the host's resolver
/// (neither starts a DNS stub).
fn run_flags() -> Vec<String> {
    let mut f = sbx::small_policy();
    f.extend(["--dns".to_owned(), "host".to_owned()]);
    f
}

fn run_via_agent(ctx: &Ctx, agent: &AgentProc, program: &Path) -> Result<Duration> {
    let mut c = ctx.sbx_cmd();
    c.arg("run").arg("--agent-socket").arg(&agent.socket).args(run_flags()).arg("--").arg(program);
    timed_quiet(&mut c, "sbx-user run --agent-socket ... -- /bin/true", None)
}

/// What a subscriber saw: `(sandbox id, arrival ns)` per line.
type Arrivals = Arc<Mutex<Vec<(u64, u64)>>>;

/// Subscribes to the events of `names` on a connection of its own and
/// stamps each line as it arrives, on a thread.
fn subscribe(agent: &AgentProc, names: &[String]) -> Result<(Arrivals, UnixStream)> {
    let mut conn = agent.connect()?;
    conn.call(&json!({ "v": 1, "op": "events", "cgroups": names }))?;
    let seen: Arrivals = Arc::default();
    let sink = Arc::clone(&seen);
    let stop = conn.writer.try_clone().context("dup of the subscriber socket")?;
    let mut reader = conn.reader;
    reader.get_ref().set_read_timeout(None).context("socket timeout")?;
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let t = monotonic_ns();
            let id = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["event"]["sandbox_id"].as_u64());
            if let (Some(id), Ok(mut v)) = (id, sink.lock()) {
                v.push((id, t));
            }
            line.clear();
        }
    });
    Ok((seen, stop))
}

pub(super) fn agent(ctx: &Ctx, plan: &Plan) -> Result<AgentBench> {
    let root = ctx.mkcg("agent")?;
    let tmpfs_root = ctx.mkcg("agent-tmpfs")?;
    let cli_root = ctx.mkcg("agent-cli")?;
    let parent = ctx.mkcg("agent-run")?;
    let truth = which_true()?;
    let quick = plan.rounds < 7;
    let (batch, cli_n) = if quick { (50, 10) } else { (200, 40) };
    let proc = AgentProc::start(ctx, &root, "agent", None)?;
    let rss_start_kib = proc.rss_kib();
    let tmpfs_state = ctx.work.join("agent-tmpfs-state");
    mount_tmpfs(&tmpfs_state)?;
    let on_tmpfs = AgentProc::start(ctx, &tmpfs_root, "agent-tmpfs", Some(&tmpfs_state))?;
    let mut conn = proc.connect()?;
    let mut conn_tmpfs = on_tmpfs.connect()?;
    // The program set is loaded and the first policy indices have their
    // maps before the first timed round.
    let warm: Vec<String> = (0..batch).map(|i| format!("warm-{i}")).collect();
    agent_batch(&mut conn, &warm)?;
    agent_batch(&mut conn_tmpfs, &warm)?;
    let cli_cgs: Vec<PathBuf> = (0..cli_n).map(|i| cli_root.join(format!("c{i}"))).collect();
    for cg in &cli_cgs {
        std::fs::create_dir_all(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    }
    let mut b = AgentBench {
        batch,
        cli_batch: cli_n,
        create_rate: vec![],
        remove_rate: vec![],
        create_rate_tmpfs: vec![],
        remove_rate_tmpfs: vec![],
        cli_attach_rate: vec![],
        cli_detach_rate: vec![],
        bin_true: vec![],
        run_direct: vec![],
        run_agent: vec![],
        held: plan.sandboxes,
        held_create_s: 0.0,
        held_remove_s: 0.0,
        rss_start_kib,
        rss_held_kib: 0.0,
        rss_subscribed_kib: 0.0,
        latency_sandboxes: 0,
        latency_ms: vec![],
        direct_latency_ms: vec![],
        state_fs: fs_type(&ctx.state_dir),
    };
    for round in 0..plan.lifecycle_rounds {
        eprintln!("bench: agent: round {}/{}", round + 1, plan.lifecycle_rounds);
        for which in interleaved(6, round) {
            let names: Vec<String> = (0..batch).map(|i| format!("r{round}-{i}")).collect();
            match which {
                0 => {
                    let (c, r) = agent_batch(&mut conn, &names)?;
                    b.create_rate.push(c);
                    b.remove_rate.push(r);
                }
                5 => {
                    let (c, r) = agent_batch(&mut conn_tmpfs, &names)?;
                    b.create_rate_tmpfs.push(c);
                    b.remove_rate_tmpfs.push(r);
                }
                1 => {
                    let (c, r) = cli_batch(ctx, &cli_cgs)?;
                    b.cli_attach_rate.push(c);
                    b.cli_detach_rate.push(r);
                }
                2 => {
                    for _ in 0..plan.lifecycle_reps {
                        let mut c = Command::new(&truth);
                        b.bin_true.push(dur_ms(timed_quiet(&mut c, "/bin/true", None)?));
                    }
                }
                3 => {
                    for _ in 0..plan.lifecycle_reps {
                        b.run_direct.push(dur_ms(sbx::run(ctx, &parent, &run_flags(), &truth)?));
                    }
                }
                _ => {
                    for _ in 0..plan.lifecycle_reps {
                        b.run_agent.push(dur_ms(run_via_agent(ctx, &on_tmpfs, &truth)?));
                    }
                }
            }
        }
    }
    for cg in &cli_cgs {
        rmdir_retry(cg);
    }
    held(ctx, &proc, &root, &mut conn, plan, &mut b)?;
    drop((conn, conn_tmpfs));
    drop((proc, on_tmpfs));
    rmdir_retry(&tmpfs_root);
    rmdir_retry(&cli_root);
    rmdir_retry(&parent);
    rmdir_retry(&root);
    Ok(b)
}

/// `plan.sandboxes` sandboxes held at once: the agent's memory, and the
/// deny-to-subscriber latency in a few of them spread over the range.
fn held(ctx: &Ctx, proc: &AgentProc, root: &Path, conn: &mut Conn, plan: &Plan, b: &mut AgentBench) -> Result<()> {
    let n = plan.sandboxes;
    let names: Vec<String> = (0..n).map(|i| format!("held-{i}")).collect();
    let mut ids = Vec::with_capacity(names.len());
    let start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        if i % 1000 == 999 {
            check_interrupted()?;
            eprintln!("bench: agent: {} of {n} sandboxes held", i + 1);
        }
        let v = conn.call(&attach_req(name))?;
        ids.push(v["cgroup_id"].as_u64().context("the attach reply lacks cgroup_id")?);
    }
    b.held_create_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    b.rss_held_kib = proc.rss_kib();
    let samples: Vec<usize> = {
        let k = n.min(10) as usize;
        (0..k).map(|i| i * names.len() / k).collect()
    };
    let watched: Vec<String> = samples.iter().map(|&i| names[i].clone()).collect();
    let (arrivals, subscriber) = subscribe(proc, &watched)?;
    // The agent's readers of these rings start with its next rescan.
    std::thread::sleep(Duration::from_millis(1500));
    let (_denied, port) = worker::bound_denied(libc::SOCK_STREAM, Ipv4Addr::LOCALHOST)?;
    let per = if plan.rounds >= 7 { 20 } else { 5 };
    let mut sent: Vec<(u64, Vec<u64>)> = Vec::new();
    for &i in &samples {
        let cg = root.join(&names[i]);
        sent.push((ids[i], worker::paced(ctx, &cg, port, per)?));
    }
    std::thread::sleep(Duration::from_millis(500));
    b.rss_subscribed_kib = proc.rss_kib();
    let got = arrivals.lock().map_or_else(|_| Vec::new(), |v| v.clone());
    let _ = subscriber.shutdown(std::net::Shutdown::Both);
    for (id, stamps) in &sent {
        let arrived: Vec<u64> = got.iter().filter(|(i, _)| i == id).map(|(_, t)| *t).collect();
        if arrived.len() != stamps.len() {
            bail!(
                "{} denied connects in sandbox {id} gave {} events on the subscriber's connection; expected one each",
                stamps.len(),
                arrived.len()
            );
        }
        b.latency_ms.extend(stamps.iter().zip(&arrived).map(|(s, a)| f(a.saturating_sub(*s)) / 1e6));
    }
    b.latency_sandboxes = u32::try_from(samples.len()).unwrap_or(u32::MAX);
    b.direct_latency_ms = direct_latency(ctx, port, per * 2)?;
    let start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        if i % 1000 == 999 {
            check_interrupted()?;
        }
        conn.call(&remove_req(name))?;
    }
    b.held_remove_s = start.elapsed().as_secs_f64();
    Ok(())
}

/// The baseline for the agent's event latency: `count` denied connects in
/// a sandbox attached directly (not through the agent), read by
/// `sbx-user events --follow`, in the same state as the agent's.
fn direct_latency(ctx: &Ctx, port: u16, count: u32) -> Result<Vec<f64>> {
    let cg = ctx.mkcg("agent-direct")?;
    ctx.attach(&cg, &sbx::small_policy(), None, None)?;
    let reader = EventFollower::start(ctx, &cg)?;
    let sent = worker::paced(ctx, &cg, port, count)?;
    reader.settle(Duration::from_millis(500), Duration::from_secs(5));
    let arrivals = reader.arrivals();
    drop(reader);
    ctx.detach(&cg)?;
    rmdir_retry(&cg);
    if arrivals.len() != sent.len() {
        bail!(
            "{} denied connects gave {} events to the direct follower; expected one each",
            sent.len(),
            arrivals.len()
        );
    }
    Ok(sent.iter().zip(&arrivals).map(|(s, a)| f(a.saturating_sub(*s)) / 1e6).collect())
}

/// The filesystem type of `dir` (from /proc/self/mountinfo: the longest
/// mount point above it).
fn fs_type(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = PathBuf::from(super::context::unescape_mount(left.split_whitespace().nth(4)?));
            dir.starts_with(&point).then(|| (point, right.split_whitespace().next().unwrap_or("?").to_owned()))
        })
        .max_by_key(|(p, _)| p.as_os_str().len())
        .map_or_else(|| "unknown".to_owned(), |(_, t)| t)
}

pub(super) fn agent_table(a: &AgentBench, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 6. Host agent\n\n{} rounds, six kinds rotated per round: {} sandboxes created and attached through an agent \
         (`attach` with `create`, small policy, one client sending one request after the other), then removed (`detach` \
         with `remove`), by two agents: one with its state directory (its records are files) on the benchmark's ({}), one \
         on a tmpfs, as `/run/sbx` is under the systemd unit; {} `sbx-user attach` processes one after the other on \
         existing cgroups, then `detach`; {} each of `/bin/true`, `sbx-user run -- /bin/true` (direct) and the same \
         through the agent on tmpfs (`--agent-socket`; both with `--dns host`, so that neither starts a DNS stub). \
         Then {} sandboxes held by the first agent.\n",
        plan.lifecycle_rounds,
        a.batch,
        a.state_fs,
        a.cli_batch,
        plan.lifecycle_reps,
        thousands(f(u64::from(a.held)))
    );
    let mut t = Table::new(&["figure", "median", "min / max", "vs baseline (median)"]);
    rate_rows(&mut t, a);
    let base = Stat::of(&a.bin_true);
    let direct = Stat::of(&a.run_direct);
    for (label, v, vs) in [
        ("`/bin/true`", &a.bin_true, None),
        ("`sbx-user run -- /bin/true`, direct", &a.run_direct, base),
        ("`sbx-user run -- /bin/true` through the agent", &a.run_agent, direct),
    ] {
        let Some(st) = Stat::of(v) else { continue };
        t.row(vec![
            label.into(),
            ms(st.median),
            format!("min {}", ms(st.min)),
            vs.map_or(String::new(), |b| format!("{:+.2} ms ({})", st.median - b.median, x(st.median / b.median))),
        ]);
    }
    t.row(vec![
        format!("{} sandboxes held: created one after the other", thousands(f(u64::from(a.held)))),
        format!("{:.1} s ({:.0}/s)", a.held_create_s, f(u64::from(a.held)) / a.held_create_s),
        String::new(),
        format!("removed in {:.1} s", a.held_remove_s),
    ]);
    t.row(vec![
        "agent resident memory (VmRSS)".into(),
        mib(a.rss_held_kib * 1024.0),
        format!("{} at start", mib(a.rss_start_kib * 1024.0)),
        format!("{} with a subscriber to {}", mib(a.rss_subscribed_kib * 1024.0), a.latency_sandboxes),
    ]);
    let direct = Stat::of(&a.direct_latency_ms);
    if let Some(l) = Stat::of(&a.latency_ms) {
        t.row(vec![
            format!(
                "deny to event line on a subscriber's connection ({} sandboxes of the held ones)",
                a.latency_sandboxes
            ),
            format!("{:.3} ms", l.median),
            format!("min {:.3} ms / max {:.3} ms", l.min, a.latency_ms.iter().copied().fold(0.0, f64::max)),
            direct.map_or(format!("{} events", a.latency_ms.len()), |d| {
                format!("{} events; {} of the direct follower", a.latency_ms.len(), x(l.median / d.median))
            }),
        ]);
    }
    if let Some(d) = direct {
        t.row(vec![
            "deny to event line, `sbx-user events --follow` on a sandbox attached directly beside them".into(),
            format!("{:.3} ms", d.median),
            format!("min {:.3} ms / max {:.3} ms", d.min, a.direct_latency_ms.iter().copied().fold(0.0, f64::max)),
            format!("{} events", a.direct_latency_ms.len()),
        ]);
    }
    let _ = writeln!(s, "{t}");
    s
}

/// The rows of the create and remove rates, against the CLI's processes.
fn rate_rows(t: &mut Table, a: &AgentBench) {
    let rate = |v: &[f64]| Stat::of(v).map(|s| (s.median, v.iter().copied().fold(0.0, f64::max)));
    let vs = |m: f64, cli: &[f64], what: &str| {
        rate(cli).map_or("n/a".into(), |(c, _)| format!("{} of `sbx-user {what}` processes ({c:.0}/s)", x(m / c)))
    };
    for (label, v, cli, what) in [
        (
            "created + attached through the agent, state on tmpfs, per s".to_owned(),
            &a.create_rate_tmpfs,
            &a.cli_attach_rate,
            "attach",
        ),
        (
            "detached + removed through the agent, state on tmpfs, per s".to_owned(),
            &a.remove_rate_tmpfs,
            &a.cli_detach_rate,
            "detach",
        ),
        (
            format!("created + attached through the agent, state on {}, per s", a.state_fs),
            &a.create_rate,
            &a.cli_attach_rate,
            "attach",
        ),
        (
            format!("detached + removed through the agent, state on {}, per s", a.state_fs),
            &a.remove_rate,
            &a.cli_detach_rate,
            "detach",
        ),
    ] {
        if let Some((m, hi)) = rate(v) {
            t.row(vec![label, format!("{m:.0}"), format!("max {hi:.0}"), vs(m, cli, what)]);
        }
    }
}

/// Issue 9's targets.
pub(super) fn agent_targets(a: &AgentBench, out: &mut Vec<Target>) {
    let rate = Stat::of(&a.create_rate_tmpfs);
    let disk = Stat::of(&a.create_rate);
    out.push(Target {
        what: "sandboxes created and attached per second through the agent, small policy",
        goal: ">= 500 per s".into(),
        figure: rate.map_or("not measured".into(), |r| {
            format!(
                "median {:.0} per s (min {:.0}) with its state on tmpfs (/run/sbx under the unit); {} with it on {}",
                r.median,
                r.min,
                disk.map_or("n/a".into(), |d| format!("{:.0} per s", d.median)),
                a.state_fs
            )
        }),
        met: rate.map(|r| r.median >= 500.0),
    });
    let run = Stat::of(&a.run_agent).zip(Stat::of(&a.run_direct));
    out.push(Target {
        what: "`run -- /bin/true` through the agent vs the direct path",
        goal: "within 1 ms".into(),
        figure: run.map_or("not measured".into(), |(g, d)| {
            format!("{:+.2} ms (median {} vs {})", g.median - d.median, ms(g.median), ms(d.median))
        }),
        met: run.map(|(g, d)| g.median - d.median <= 1.0),
    });
    out.push(Target {
        what: "agent resident memory holding the sandboxes",
        goal: format!("< 64 MiB ({} sandboxes)", thousands(f(u64::from(a.held)))),
        figure: format!(
            "{} ({} with a subscriber to {} of them)",
            mib(a.rss_held_kib * 1024.0),
            mib(a.rss_subscribed_kib * 1024.0),
            a.latency_sandboxes
        ),
        met: Some(a.rss_held_kib.max(a.rss_subscribed_kib) < 64.0 * 1024.0),
    });
    let lat = Stat::of(&a.latency_ms);
    out.push(Target {
        what: "deny to subscriber through the agent, median",
        goal: format!("< 1 ms ({} sandboxes held)", thousands(f(u64::from(a.held)))),
        figure: lat.map_or("not measured".into(), |l| {
            format!(
                "{:.3} ms (min {:.3}; a direct follower: {})",
                l.median,
                l.min,
                Stat::of(&a.direct_latency_ms).map_or("n/a".into(), |d| format!("{:.3} ms", d.median))
            )
        }),
        met: lat.map(|l| l.median < 1.0),
    });
}
