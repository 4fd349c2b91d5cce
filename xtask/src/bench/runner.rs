//! Spawning and timing the measured processes (in a cgroup, at high
//! priority, with a watchdog), and the interleaving of configurations
//! over rounds.

use std::{
    fs, io,
    os::{fd::RawFd, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::context::check_interrupted;

/// Opens a `cgroup.procs` for the child to write `0` to.
pub(super) fn procs_fd(cg: &Path) -> Result<fs::File> {
    let p = cg.join("cgroup.procs");
    fs::OpenOptions::new().write(true).open(&p).with_context(|| format!("opening {}", p.display()))
}

/// Makes the child join the cgroups of `procs` (writing `0` to each
/// `cgroup.procs`) between fork and exec, then place `fds` (source, target).
///
/// With nothing to do it registers nothing: a `pre_exec` hook makes std
/// spawn with fork(2) instead of `posix_spawn`, and fork copies the page
/// tables of this process, which would add to the timed commands.
pub(super) fn in_cgroups(cmd: &mut Command, procs: Vec<RawFd>, fds: Vec<(RawFd, RawFd)>) {
    if procs.is_empty() && fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on values it owns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(src, dst) in &fds {
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs the child at nice -20: on a shared machine the timing loop then
/// loses its CPU to other work far less often. It only runs for a second
/// or so at a time.
pub(super) fn high_priority(cmd: &mut Command) {
    // SAFETY: setpriority(2) between fork and exec on the child itself.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            Ok(())
        });
    }
}

/// Runs a command to completion; returns its wall time and stdout. With a
/// `limit`, a watchdog kills the child (by its pid) when it runs longer.
/// The wait itself is a plain blocking wait, so the timing is not
/// quantised by polling.
pub(super) fn timed_output(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<(Duration, String)> {
    cmd.stdout(Stdio::piped());
    timed(cmd, what, limit)
}

/// As [`timed_output`], with stdout discarded: `sbx-user` prints policy
/// summaries nobody here reads.
pub(super) fn timed_quiet(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<Duration> {
    cmd.stdout(Stdio::null());
    Ok(timed(cmd, what, limit)?.0)
}

pub(super) fn timed(cmd: &mut Command, what: &str, limit: Option<Duration>) -> Result<(Duration, String)> {
    check_interrupted()?;
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("running {what}"))?;
    let pid = i32::try_from(child.id()).expect("pids fit i32");
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = limit.map(|l| {
        std::thread::spawn(move || {
            let fired = wait.recv_timeout(l) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
            if fired {
                // SAFETY: kill(2) on our own child, not yet reaped (the
                // main thread reaps it only after this thread is told).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            fired
        })
    });
    let out = child.wait_with_output();
    let d = start.elapsed();
    let _ = done.send(());
    let killed = watchdog.is_some_and(|w| w.join().unwrap_or(false));
    let out = out.with_context(|| format!("running {what}"))?;
    if killed {
        bail!("{what} did not finish within {} s and was killed", limit.unwrap_or_default().as_secs());
    }
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((d, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The order of `k` configurations in round `round`: round `r` starts at
/// configuration `r`, so none always runs first (or always after the same
/// neighbour's warm caches).
pub(super) fn interleaved(k: usize, round: u32) -> impl Iterator<Item = usize> {
    (0..k).map(move |i| (i + round as usize) % k)
}
