//! Event subscriptions: one reader per sandbox, many subscribers.
//!
//! A ring buffer has one consumer position, so the agent is the one reader
//! of each sandbox's ring and fans its events out. Each ring is watched
//! with tokio's `AsyncFd` (the kernel wakes its epoll on every submit), not
//! a timer. Each subscriber has a bounded queue; when it is full the event
//! is dropped for that subscriber alone and counted, and every event line
//! carries the subscriber's running count of drops (`"dropped"`), so a
//! subscriber that cannot keep up knows what it missed and never slows the
//! reader or the other subscribers. Only the sandboxes some subscriber
//! asked for are read, so an agent without subscribers maps no ring. The
//! set is rescanned every second (a sandbox attached by the CLI directly
//! below a managed root is picked up too), after every change the agent
//! makes and whenever a subscriber comes or goes.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use serde_json::{json, Value};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    events::{view, EventReader},
    loader,
    state::{Paths, Record},
};

/// One subscriber's end of the hub.
#[derive(Debug)]
pub struct Subscription {
    /// The event lines, in order.
    pub rx: mpsc::Receiver<Value>,
    /// Its number, for [`Hub::unsubscribe_id`].
    pub id: u64,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    /// Sandboxes (cgroup ids) it asked for; `None`: all it may see.
    filter: Option<HashSet<u64>>,
    /// Its uid, or `None` for root (sees every sandbox).
    uid: Option<u32>,
    tx: mpsc::Sender<Value>,
    dropped: Arc<AtomicU64>,
    /// `CLOCK_MONOTONIC` at subscription, in ns: a ring watched only from
    /// now on may hold older events, which are not this subscriber's.
    since_ns: u64,
}

/// The subscribers and the sandboxes being watched.
#[derive(Debug, Default)]
pub struct Hub {
    subscribers: Mutex<Vec<Subscriber>>,
    watched: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    /// Sandboxes seen to be outside the managed roots (not looked at again).
    outside: Mutex<HashSet<u64>>,
    next: AtomicU64,
}

impl Hub {
    /// Adds a subscriber with a queue of `capacity` events.
    pub fn subscribe(&self, filter: Option<HashSet<u64>>, uid: Option<u32>, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let sub = Subscriber { id, filter, uid, tx, dropped: Arc::new(AtomicU64::new(0)), since_ns: monotonic_ns() };
        lock(&self.subscribers).push(sub);
        Subscription { rx, id }
    }

    /// Removes a subscriber.
    pub fn unsubscribe_id(&self, id: u64) {
        lock(&self.subscribers).retain(|s| s.id != id);
    }

    /// Hands one event of sandbox `id` (created by `creator`) to every
    /// subscriber that asked for it, never waiting for one.
    fn publish(&self, id: u64, creator: u32, ts_ns: u64, event: &Value) {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| !s.tx.is_closed());
        for s in subs.iter() {
            if s.filter.as_ref().is_some_and(|f| !f.contains(&id))
                || s.uid.is_some_and(|u| u != creator)
                || ts_ns < s.since_ns
            {
                continue;
            }
            let line =
                json!({ "v": super::protocol::VERSION, "event": event, "dropped": s.dropped.load(Ordering::Relaxed) });
            if s.tx.try_send(line).is_err() {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts watching the sandboxes that are pinned and not watched yet,
    /// and stops watching those that are gone (their ring may be handed to
    /// the next sandbox, whose events are not theirs to take).
    ///
    /// Only sandboxes below the agent's managed roots (`managed` says which
    /// cgroup paths are) are read: the others' rings belong to whoever reads
    /// them directly (`sbx-user events`, `run --log-denials`), and a second
    /// consumer would take their events away.
    pub fn rescan(self: &Arc<Self>, paths: &Paths, managed: &dyn Fn(&std::path::Path) -> bool) {
        // Only what some subscriber asked for: a watched ring costs its
        // mapping (tens of KiB) and takes the events from other readers.
        // The pin directory is listed only for a subscriber of every
        // sandbox: with thousands of sandboxes, a listing after every
        // change would cost more than the change.
        let mut pinned: HashSet<u64> = {
            let subs = lock(&self.subscribers);
            if subs.iter().any(|s| s.filter.is_none()) {
                loader::pinned_sandboxes(paths).into_iter().collect()
            } else {
                subs.iter()
                    .filter_map(|s| s.filter.as_ref())
                    .flatten()
                    .copied()
                    .filter(|&id| paths.pin_dir(id).exists())
                    .collect()
            }
        };
        let mut outside = lock(&self.outside);
        outside.retain(|id| pinned.contains(id));
        pinned.retain(|id| !outside.contains(id));
        let mut watched = lock(&self.watched);
        watched.retain(|id, task| {
            let keep = pinned.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for id in pinned {
            if watched.contains_key(&id) {
                continue;
            }
            // No record yet (being made): looked at again next time.
            let Some(record) = Record::load(paths, id).ok().flatten() else { continue };
            if !managed(&record.cgroup) {
                outside.insert(id);
                continue;
            }
            let Ok(reader) = EventReader::open(&paths.pin_dir(id)) else { continue };
            let hub = Arc::clone(self);
            let paths = paths.clone();
            let task = tokio::spawn(async move { watch(hub, paths, id, reader).await });
            watched.insert(id, task.abort_handle());
        }
    }
}

/// `CLOCK_MONOTONIC` now, in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn watch(hub: Arc<Hub>, paths: Paths, id: u64, reader: EventReader) {
    // SAFETY: the reader owns its ring buffer's fd for its whole life and
    // `as_raw_fd` always returns that one; the AsyncFd owns the reader.
    let registered = unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) };
    let Ok(mut fd) = registered else {
        log::warn!("cannot watch the events of sandbox {id}");
        return;
    };
    let creator = super::ops::creator_of(&paths, id);
    let mut record = Record::load(&paths, id).ok().flatten();
    loop {
        let Ok(mut ready) = fd.readable_mut().await else { return };
        // Cleared before draining: an event submitted from here on wakes
        // the next `readable`.
        ready.clear_ready();
        let events = ready.get_inner_mut().drain();
        for e in events {
            if record.as_ref().is_none_or(|r| r.generation != e.generation) {
                record = Record::load(&paths, id).ok().flatten();
            }
            let name = record.as_ref().map_or_else(|| format!("cgroup id {id}"), |r| r.cgroup.display().to_string());
            let v = view(&e, &name, record.as_ref());
            let mut value = serde_json::to_value(&v).unwrap_or(Value::Null);
            value["sandbox_id"] = json!(id);
            hub.publish(id, creator, e.ts_ns, &value);
        }
    }
}
