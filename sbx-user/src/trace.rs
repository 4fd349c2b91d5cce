//! `-vv` tracing of one sandbox's decisions, from the programs' aya-log
//! records.
//!
//! One aya-log ring buffer serves every sandbox of the program set, and
//! aya-log's level is fixed when the programs load; so the programs log
//! only for sandboxes whose slot has `FLAG_DEBUG` (set by `run -vv`), each
//! line naming its sandbox, and this reader prints the lines of its own
//! sandbox. A reader of one sandbox consumes the others' lines: two
//! concurrent `run -vv` share the buffer.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use sbx_common::HOOK_NAMES;

use crate::{progset::ProgramSet, state::Paths};

/// Prints one sandbox's trace lines from a thread.
pub struct Tracer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Passes on the records of one sandbox.
struct SandboxLogger {
    prefix: String,
}

impl log::Log for SandboxLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let Some(rest) = text.strip_prefix(&self.prefix) else {
            return;
        };
        crate::diag::line(format_args!("sbx trace: {}", readable(rest)));
    }

    fn flush(&self) {}
}

/// `hook=N ... verdict=V` with names for the numbers.
fn readable(rest: &str) -> String {
    rest.split(' ')
        .map(|field| match field.split_once('=') {
            Some(("hook", n)) => {
                format!("hook={}", n.parse::<usize>().ok().and_then(|i| HOOK_NAMES.get(i)).copied().unwrap_or(n))
            }
            Some(("verdict", "1")) => "allowed".to_owned(),
            Some(("verdict", "0")) => "denied".to_owned(),
            Some(("verdict", _)) => "error (rejected)".to_owned(),
            _ => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Tracer {
    /// Starts reading the program set's aya-log buffer for sandbox `id`.
    pub fn start(id: u64, paths: &Paths) -> Result<Self, String> {
        let pin_dir = paths.pin_dir(id);
        let set = crate::loader::open_holder(paths, &pin_dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the sandbox is not held by a program set".to_owned())?;
        let prog = prog_id_of(&set)?;
        let logger = SandboxLogger { prefix: format!("sandbox={id} ") };
        let mut reader = aya_log::EbpfLogger::init_from_id_with_logger(prog, logger).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || loop {
            let done = flag.load(Ordering::Acquire);
            reader.flush();
            if done {
                return;
            }
            let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&raw mut pfd, 1, 100) };
        });
        Ok(Self { stop, thread })
    }

    /// Prints what is left and stops.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// The id of a program of the set that uses the aya-log buffer.
fn prog_id_of(set: &ProgramSet) -> Result<u32, String> {
    set.prog_ids().first().copied().filter(|&id| id != 0).ok_or_else(|| "no program id".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_lines_read_with_names() {
        assert_eq!(
            super::readable("hook=0 dest=[::ffff:198.18.0.2]:80 verdict=0"),
            "hook=connect4 dest=[::ffff:198.18.0.2]:80 denied"
        );
        assert_eq!(super::readable("hook=3 dest=[fd00::1]:53 verdict=1"), "hook=sendmsg6 dest=[fd00::1]:53 allowed");
    }
}
