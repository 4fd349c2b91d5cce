//! Reading deny events and counters from a sandbox's pinned maps.
//!
//! Events come from the kernel through a BPF ring buffer, one per sandbox.
//! A ring buffer has a single consumer position: two readers of the same
//! sandbox (`events --follow` and `run --log-denials`) share its events
//! rather than each seeing all of them.

use std::{
    net::{IpAddr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use sbx_common::{
    counter_index, Event, COUNTER_EVENTS_DROPPED, EVENT_AUDIT, EVENT_PORT_SOURCE_ROUTE, HOOK_NAMES, MAP_COUNTERS,
    MAP_EVENTS, NUM_HOOKS,
};
use serde::Serialize;

use crate::{compile::Hook, explain, loader::pin_name_map, state::Record};

/// A map could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("reading {what} from {path}: {detail}")]
pub struct EventsError {
    what: &'static str,
    path: String,
    detail: String,
}

/// An open event stream of one sandbox.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// The pinned ring buffer, reopened for every drain (see [`Self::drain`]).
    path: std::path::PathBuf,
    /// The directory whose `flock` serialises the readers of this ring.
    lock: std::fs::File,
    /// The sandbox whose events these are (from the pin directory's name):
    /// a ring buffer reused from an earlier sandbox may still hold events
    /// of that one, which are skipped. 0 for the host stream (every event).
    sandbox: u64,
    /// Kernel id of the ring buffer map.
    id: u32,
    /// A descriptor of the same ring that stays open across the reopening
    /// drains: what [`Self::wait`] and an event loop (the agent's
    /// `AsyncFd`) wait on. Readiness belongs to the map, so any of its
    /// descriptors tells when events arrive.
    poll: std::os::fd::OwnedFd,
}

fn open_ring(path: &Path) -> Result<(RingBuf<MapData>, u32), EventsError> {
    let err = |detail: String| EventsError { what: "events", path: path.display().to_string(), detail };
    let data = MapData::from_pin(path).map_err(|e| err(e.to_string()))?;
    let id = data.info().map_err(|e| err(e.to_string()))?.id();
    let map = Map::from_map_data(data).map_err(|e| err(e.to_string()))?;
    Ok((RingBuf::try_from(map).map_err(|e| err(e.to_string()))?, id))
}

impl EventReader {
    /// Opens the ring buffer pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, EventsError> {
        let sandbox = pin_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0);
        Self::open_at(pin_dir, &pin_dir.join(pin_name_map(MAP_EVENTS)), sandbox)
    }

    /// Opens the host event stream of the program set in `set_dir`: the
    /// events of every sandbox without a buffer of its own.
    pub fn open_host(set_dir: &Path) -> Result<Self, EventsError> {
        Self::open_at(set_dir, &set_dir.join(pin_name_map(sbx_common::MAP_HOST_EVENTS)), 0)
    }

    fn open_at(dir: &Path, path: &Path, sandbox: u64) -> Result<Self, EventsError> {
        let (ring, id) = open_ring(path)?;
        let err =
            |e: std::io::Error| EventsError { what: "events", path: dir.display().to_string(), detail: e.to_string() };
        let lock = std::fs::File::open(dir).map_err(err)?;
        // SAFETY: the ring's fd is open for as long as `ring` lives, which
        // is longer than this borrow.
        let poll =
            unsafe { std::os::fd::BorrowedFd::borrow_raw(ring.as_raw_fd()) }.try_clone_to_owned().map_err(err)?;
        Ok(Self { ring, path: path.to_owned(), lock, sandbox, id, poll })
    }

    /// Kernel id of the ring buffer this reader reads.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes every event currently in the buffer.
    ///
    /// A ring buffer has one consumer position, in a page the kernel
    /// shares, and aya reads it once when a reader opens the ring. Two
    /// readers of one sandbox (`events --follow` beside `run --log-denials`)
    /// would each keep their own position, see every event twice and race
    /// on the shared one. So readers take turns: under an `flock` on the
    /// ring's directory, the ring is reopened (reading the current
    /// position), drained and released; each event goes to one reader.
    pub fn drain(&mut self) -> Vec<Event> {
        // SAFETY: flock(2) on a descriptor we own.
        let locked = unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_EX) } == 0;
        if let Ok((ring, _)) = open_ring(&self.path) {
            self.ring = ring;
        }
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            // A sandbox of contract 1 writes 80-byte events (no `sandbox`
            // field), which read as events with `sandbox` zero.
            if item.len() >= sbx_common::LEGACY_EVENT_LEN {
                let e: Event = crate::sys::from_bytes(&item);
                if self.sandbox == 0 || e.sandbox == 0 || e.sandbox == self.sandbox {
                    out.push(e);
                }
            }
        }
        if locked {
            // SAFETY: as above.
            unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_UN) };
        }
        out
    }

    /// Waits up to `timeout` for new events (poll on the ring buffer fd).
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self.poll.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, ms) };
    }
}

/// The ring buffer's fd, for an event loop to wait on (the host agent's
/// `AsyncFd`).
impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }
}

/// An event as shown to users (`--json` prints these fields).
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    /// Wall-clock time, RFC 3339 UTC.
    pub time: String,
    /// The sandbox cgroup path.
    pub sandbox: String,
    /// Cgroup id of the caller (0 from the egress hook).
    pub cgroup_id: u64,
    /// Process id (0 from the egress hook).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task name.
    pub comm: String,
    /// Hook name.
    pub hook: &'static str,
    /// `tcp`, `udp`, or a protocol number.
    pub protocol: String,
    /// Destination (local for bind) `addr:port`, or what the hook saw.
    pub destination: String,
    /// `denied`, `audit` (would have been denied) or `proxied`
    /// (redirected to the proxy).
    pub verdict: &'static str,
    /// The setting or rule that decided, as written.
    pub rule: String,
    /// The container the process is in, when an OCI hook recorded it (a
    /// container of a pod held at the pod's cgroup has no sandbox of its
    /// own, so `sandbox` names the pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Realtime minus monotonic now, to place `bpf_ktime_get_ns` on the wall clock.
fn monotonic_offset() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let mono = Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0));
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().saturating_sub(mono)
}

/// `since_epoch` as RFC 3339 UTC with milliseconds, as event times are shown.
#[must_use]
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Turns a raw event into what users see, naming the deciding rule when
/// the event's policy generation is the one `record` holds: one lookup in
/// the record's provenance (see [`crate::explain`]).
#[must_use]
pub fn view(e: &Event, sandbox: &str, record: Option<&Record>) -> EventView {
    let hook = HOOK_NAMES.get(e.hook as usize).copied().unwrap_or("?");
    let ip6 = Ipv6Addr::from(e.addr);
    let ip = ip6.to_ipv4_mapped().map_or(IpAddr::V6(ip6), IpAddr::V4);
    let tcp = e.protocol == sbx_common::IPPROTO_TCP;
    let protocol = match e.protocol {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        n => n.to_string(),
    };
    #[expect(clippy::cast_possible_truncation, reason = "ports are 16-bit")]
    let port = e.port as u16;
    let destination = match hook {
        "egress" if e.port == EVENT_PORT_SOURCE_ROUTE => format!("{ip} (source-routed)"),
        "sock_create" => format!("socket type {} protocol {}", e.port, e.protocol),
        "setsockopt" => format!("level {} option {}", e.protocol, e.port),
        "accept" => match ip {
            IpAddr::V4(v4) => format!("from {v4} to local port {port}"),
            IpAddr::V6(v6) => format!("from [{v6}] to local port {port}"),
        },
        _ => match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        },
    };
    let rule = match (hook, record) {
        ("sock_create", _) => "only TCP and UDP sockets may be created".to_owned(),
        ("setsockopt", _) => "source-routing options are refused".to_owned(),
        ("accept", _) => "an inbound connection needs `bind` to allow the local address and port, and the policy \
                          to reach the peer (loopback peers: `loopback` on the local port)"
            .to_owned(),
        ("egress", _) if e.port == EVENT_PORT_SOURCE_ROUTE => "IP options or routing header".to_owned(),
        (_, Some(r)) if r.generation != e.generation => "(policy changed since)".to_owned(),
        (_, Some(r)) => match r.provenance() {
            Some(prov) => {
                let trie = if matches!(hook, "bind4" | "bind6") { Hook::Bind } else { Hook::Destination };
                explain::explain(&r.policy, prov, trie, ip, port, tcp).to_string()
            }
            None => explain::Reason::Unknown.to_string(),
        },
        (_, None) => explain::Reason::Unknown.to_string(),
    };
    let comm_len = e.comm.iter().position(|&c| c == 0).unwrap_or(e.comm.len());
    EventView {
        time: rfc3339(monotonic_offset() + Duration::from_nanos(e.ts_ns)),
        sandbox: sandbox.to_owned(),
        cgroup_id: e.cgroup_id,
        pid: e.pid,
        tid: e.tid,
        // The sandboxed process names itself (prctl PR_SET_NAME): never
        // let it write escape sequences to the terminal of whoever reads
        // the events.
        comm: crate::diag::printable(&String::from_utf8_lossy(&e.comm[..comm_len])),
        hook,
        protocol,
        destination,
        verdict: match e.verdict {
            EVENT_AUDIT => "audit",
            sbx_common::EVENT_REDIRECTED => "proxied",
            _ => "denied",
        },
        rule,
        container: None,
    }
}

impl std::fmt::Display for EventView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:<6} {:>7}/{:<7} {:<15} {:<11} {:<4} {:<40} {}",
            self.time,
            self.verdict,
            self.pid,
            self.tid,
            self.comm,
            self.hook,
            self.protocol,
            self.destination,
            self.rule
        )
    }
}

/// Per-hook totals of one sandbox.
#[derive(Clone, Debug, Serialize)]
pub struct Counters {
    /// `(hook, allowed, denied)`.
    pub hooks: Vec<(&'static str, u64, u64)>,
    /// Events lost to the rate limit or a full ring buffer.
    pub events_dropped: u64,
}

/// The counters of the sandbox on cgroup `id`: from its program set's
/// per-CPU cgroup storage, or for a sandbox of contract 1 from its pinned
/// counter map.
pub fn sandbox_counters(paths: &crate::state::Paths, id: u64) -> Result<Counters, EventsError> {
    let pin_dir = paths.pin_dir(id);
    if crate::loader::is_legacy(&pin_dir) {
        return counters(&pin_dir);
    }
    let err = |detail: String| EventsError { what: "counters", path: pin_dir.display().to_string(), detail };
    let set = crate::loader::open_holder(paths, &pin_dir).map_err(|e| err(e.to_string()))?;
    let stats = set
        .as_ref()
        .map(|s| crate::loader::read_stats(s, id))
        .transpose()
        .map_err(|e| err(format!("reading the counters: {e}")))?
        .flatten()
        .ok_or_else(|| err("no counters: the sandbox's cgroup storage is gone".into()))?;
    let hooks = (0..NUM_HOOKS)
        .map(|h| {
            let get = |d| stats.counters[counter_index(h, d) as usize];
            (HOOK_NAMES[h as usize], get(0), get(1))
        })
        .collect();
    Ok(Counters { hooks, events_dropped: stats.counters[COUNTER_EVENTS_DROPPED as usize] })
}

/// Hooks of contract 1: those before "accept", with the dropped-events
/// counter right after them.
const LEGACY_HOOKS: u32 = 9;

/// Sums the per-CPU counters pinned in `pin_dir` (contract 1).
pub fn counters(pin_dir: &Path) -> Result<Counters, EventsError> {
    let path = pin_dir.join(pin_name_map(MAP_COUNTERS));
    let err = |detail: String| EventsError { what: "counters", path: path.display().to_string(), detail };
    let data = MapData::from_pin(&path).map_err(|e| err(e.to_string()))?;
    let map = Map::from_map_data(data).map_err(|e| err(e.to_string()))?;
    let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map).map_err(|e| err(e.to_string()))?;
    let sum = |i: u32| -> Result<u64, EventsError> { Ok(arr.get(&i, 0).map_err(|e| err(e.to_string()))?.iter().sum()) };
    let mut hooks = Vec::new();
    for h in 0..LEGACY_HOOKS {
        hooks.push((HOOK_NAMES[h as usize], sum(counter_index(h, 0))?, sum(counter_index(h, 1))?));
    }
    Ok(Counters { hooks, events_dropped: sum(LEGACY_HOOKS * 2)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_hours(498_744) + Duration::from_millis(5)), "2026-11-24T00:00:00.005Z");
    }
}
