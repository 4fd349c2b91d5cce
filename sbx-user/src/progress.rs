//! Progress for work that takes seconds, on a terminal only: loading a
//! policy of a million rules (parse and compile, then filling the maps)
//! or resolving many pinned host names.
//!
//! One line on stderr, redrawn in place and erased when the work ends, and
//! only once the work has run for [`DELAY`]: quick commands show nothing.
//! Nothing at all unless the binary [`enable`]d it, which `sbx-user` does
//! only when stderr is a terminal and `-v` is not given; a pipe, a log
//! file or a library caller sees no byte of it.
//!
//! Two ways to show it:
//! - [`track`] wraps the loop over the items of a long step (map entries,
//!   host names) and counts them; it draws from the looping thread, so it
//!   works anywhere, including inside `run` before the command starts.
//! - [`Task`] covers a phase with no loop to count (parsing and compiling a
//!   policy): a thread redraws the elapsed time until the guard is dropped.
//!   The thread blocks every signal, so it never takes one meant for sbx,
//!   and it is joined on drop: no thread outlives the phase (a command
//!   must not be forked from a process with a thread that may hold the
//!   allocator's lock).

use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Work shorter than this shows nothing.
pub const DELAY: Duration = Duration::from_millis(400);
/// Shortest time between two redraws.
const REDRAW: Duration = Duration::from_millis(100);

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Items done in the current [`track`]ed step (atomic: bumped per item).
static DONE: AtomicU64 = AtomicU64::new(0);
static STATE: Mutex<State> = Mutex::new(State::new());

struct State {
    /// The [`Task`] in progress, if any.
    task: Option<&'static str>,
    /// The tracked step in progress, with its total.
    step: Option<(&'static str, u64)>,
    /// When the task or step began (for [`DELAY`] and the elapsed time).
    since: Option<Instant>,
    last_draw: Option<Instant>,
    /// What is on the screen, not drawn again.
    last_line: String,
    /// Whether a progress line is on the screen.
    drawn: bool,
    /// Whether a [`Task`] thread does the drawing.
    ticker: bool,
}

impl State {
    const fn new() -> Self {
        Self {
            task: None,
            step: None,
            since: None,
            last_draw: None,
            last_line: String::new(),
            drawn: false,
            ticker: false,
        }
    }

    fn line(&self, now: Instant, done: u64) -> Option<String> {
        let secs = now.duration_since(self.since?).as_secs_f64();
        let mut line = format!("sbx-user: {}", self.task.unwrap_or("working"));
        if let Some((step, total)) = self.step {
            let done = done.min(total);
            let pct = done * 100 / total.max(1);
            let _ = write!(line, ": {step} {}/{} ({pct}%)", thousands(done), thousands(total));
        }
        let _ = write!(line, " {secs:.0}s");
        Some(line)
    }

    /// Draws if the work has lasted [`DELAY`] and the last draw is old
    /// enough.
    fn draw(&mut self, now: Instant) {
        let due = self.since.is_some_and(|s| now.duration_since(s) >= DELAY)
            && self.last_draw.is_none_or(|t| now.duration_since(t) >= REDRAW);
        if let (true, Some(line)) = (due, self.line(now, DONE.load(Ordering::Relaxed))) {
            if self.drawn && line == self.last_line {
                return;
            }
            // One write per redraw; a failing stderr just stops the output.
            let _ = std::io::stderr().lock().write_all(format!("\r\x1b[K{line}").as_bytes());
            self.drawn = true;
            self.last_draw = Some(now);
            self.last_line = line;
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = std::io::stderr().lock().write_all(b"\r\x1b[K");
            self.drawn = false;
            self.last_line.clear();
        }
    }
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let (first, rest) = digits.split_at(head.min(digits.len()));
    let mut out = first.to_owned();
    for group in rest.as_bytes().chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    out
}

/// Turns progress output on or off for the whole process (off by default).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether progress is shown.
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Erases the progress line, if one is shown, so that other output (a log
/// line, a warning) starts on a clean line; the next redraw puts it back.
pub fn clear() {
    if enabled() {
        state().clear();
    }
}

/// Counts the items of `items` (`total` of them) as the step `label`.
/// Costs one relaxed atomic add per item when progress is off.
pub fn track<I: IntoIterator>(label: &'static str, total: usize, items: I) -> Tracked<I::IntoIter> {
    let on = enabled();
    if on {
        let mut s = state();
        s.step = Some((label, total as u64));
        if !s.ticker {
            s.since = Some(Instant::now());
        }
    }
    DONE.store(0, Ordering::Relaxed);
    Tracked { inner: items.into_iter(), on, total }
}

/// An iterator counted by [`track`].
#[derive(Debug)]
pub struct Tracked<I> {
    inner: I,
    on: bool,
    total: usize,
}

impl<I: Iterator> Iterator for Tracked<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        let done = DONE.fetch_add(1, Ordering::Relaxed);
        // Look at the clock every 256 items of a long step, every item of a
        // short one (host names take milliseconds each).
        if self.on && (self.total < 4096 || done.trailing_zeros() >= 8) {
            let mut s = state();
            if !s.ticker {
                s.draw(Instant::now());
            }
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        if self.on {
            let mut s = state();
            s.step = None;
            if !s.ticker {
                s.clear();
                s.since = None;
                s.last_draw = None;
            }
        }
    }
}

/// Milliseconds since `t`, for the `-v` lines that time a phase.
#[must_use]
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// A phase shown with its elapsed time (and any [`track`]ed step inside
/// it) until dropped. See the module docs for why the thread is safe.
#[derive(Debug)]
pub struct Task {
    ticker: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Task {
    /// Starts showing `label` (after [`DELAY`]), if progress is enabled.
    #[must_use]
    pub fn start(label: &'static str) -> Self {
        if !enabled() {
            return Self { ticker: None };
        }
        {
            let mut s = state();
            *s = State { task: Some(label), since: Some(Instant::now()), ticker: true, ..State::new() };
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = with_signals_blocked(|| {
            std::thread::Builder::new().name("sbx-progress".into()).spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REDRAW) {
                    state().draw(Instant::now());
                }
            })
        });
        if let Ok(handle) = spawned {
            Self { ticker: Some((stop, handle)) }
        } else {
            *state() = State::new();
            Self { ticker: None }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            let _ = stop.send(());
            let _ = handle.join();
            let mut s = state();
            s.clear();
            *s = State::new();
        }
    }
}

/// Runs `f` (which spawns a thread) with every signal blocked in the
/// calling thread, so the new thread starts with all of them blocked; the
/// caller's mask is restored afterwards.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigfillset and pthread_sigmask only write the local sets and
    // this thread's signal mask.
    let old = unsafe {
        let mut all = std::mem::zeroed::<libc::sigset_t>();
        let mut old = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
        old
    };
    let result = f();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        for (n, s) in [(0, "0"), (999, "999"), (1000, "1,000"), (1_000_013, "1,000,013"), (123_456, "123,456")] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn the_line_names_the_task_the_step_and_the_count() {
        let mut s = State::new();
        assert_eq!(s.line(Instant::now(), 0), None, "nothing before a task or step starts");
        s.task = Some("loading the policy");
        s.since = Some(Instant::now());
        assert_eq!(s.line(Instant::now(), 0).as_deref(), Some("sbx-user: loading the policy 0s"));
        s.step = Some(("filling the policy maps", 2_000_000));
        let line = s.line(Instant::now(), 500_000).unwrap();
        assert_eq!(line, "sbx-user: loading the policy: filling the policy maps 500,000/2,000,000 (25%) 0s");
    }

    #[test]
    fn disabled_progress_tracks_every_item_and_draws_nothing() {
        assert!(!enabled(), "off unless the binary turns it on");
        let items: Vec<u32> = track("counting", 10_000, 0..10_000).collect();
        assert_eq!(items.len(), 10_000);
        let task = Task::start("nothing");
        assert!(task.ticker.is_none());
        assert!(!state().drawn);
    }
}
