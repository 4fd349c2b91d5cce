//! sbx's own messages on stderr, written so that they can never take sbx
//! down.
//!
//! `eprintln!` panics when stderr is gone (`sbx-user run ... 2>&1 | head -1`
//! closes it under the running command), and a writer that formats piece by
//! piece interleaves with the command's own output. Every message here is
//! formatted first and written with one `write(2)`; a failed write (EPIPE,
//! a closed descriptor) means nobody reads sbx's stderr any more, so later
//! messages are dropped instead of retried. `run` ignores `SIGPIPE` for
//! itself, so such a write fails with `EPIPE` instead of killing sbx before
//! it has torn the sandbox down.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

/// Set once a write to stderr has failed.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `line` and a newline to stderr in one `write(2)`. Returns whether
/// it was written; after the first failure nothing more is attempted.
pub fn line(line: fmt::Arguments<'_>) -> bool {
    if CLOSED.load(Ordering::Relaxed) {
        return false;
    }
    let mut text = line.to_string();
    text.push('\n');
    if write_all(2, text.as_bytes()) {
        true
    } else {
        CLOSED.store(true, Ordering::Relaxed);
        false
    }
}

/// Whether sbx's stderr is known to be gone.
#[must_use]
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// One `write(2)` for the whole buffer in the normal case; a short write
/// (a pipe with less room than a message) continues where it stopped.
fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable buffer of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => return false,
            Ok(n) => buf = &buf[n..],
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// `sbx-user: warning: ...` on stderr, one write, never a panic.
#[macro_export]
macro_rules! warn_user {
    ($($arg:tt)*) => {
        $crate::diag::line(format_args!("sbx-user: warning: {}", format_args!($($arg)*)))
    };
}

/// `sbx-user: error: ...` on stderr, one write, never a panic.
#[macro_export]
macro_rules! error_user {
    ($($arg:tt)*) => {
        $crate::diag::line(format_args!("sbx-user: error: {}", format_args!($($arg)*)))
    };
}

/// Makes `SIGPIPE` ignored for this process, so that a closed stdout or
/// stderr turns into `EPIPE` on the write rather than death: `run` must
/// always reach its teardown. The command `run` starts gets the default
/// disposition back before `exec`.
pub fn ignore_sigpipe() {
    // SAFETY: setting a disposition; no handler function is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `s` safe to print on a terminal: control characters (escape sequences
/// that move the cursor, erase lines or set the title; newlines that would
/// forge a line of output) become `?`. For text a sandboxed process or a
/// container's author chooses: a process name, an annotation.
#[must_use]
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_stops_further_writes() {
        // A pipe whose read end is closed: the write fails with EPIPE.
        let mut fds = [0; 2];
        // SAFETY: a valid two-element array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: closing the read end we own.
        unsafe { libc::close(fds[0]) };
        ignore_sigpipe();
        assert!(!write_all(fds[1], b"x"));
        // SAFETY: closing the write end we own.
        unsafe { libc::close(fds[1]) };
    }

    #[test]
    fn control_characters_are_not_printed() {
        assert_eq!(printable("\u{1b}[1A\u{1b}[2K\u{1b}]0;x\u{7}ok\n"), "?[1A?[2K?]0;x?ok?");
        assert_eq!(printable("python3 é"), "python3 é");
    }
}
