//! Temporary `/etc/hosts` names, for pinned-domain rules without DNS.
//!
//! A pinned-domain rule is resolved with the system resolver, which reads
//! `/etc/hosts` first (`hosts: files dns`). A name written there before
//! `sbx-user` runs is found in the file, so no DNS query is ever sent.
//! Names are unique (`sbx-test-<pid>-<n>.test`); every edit rewrites the
//! file to a temporary file next to it and renames it over the original
//! (readers see the old or the new file, never half of one), under a lock
//! so concurrent tests do not lose each other's lines, and touches only
//! the line of its own name.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::Path,
    sync::Mutex,
};

const HOSTS: &str = "/etc/hosts";
/// Serialises edits between test processes (and, with [`EDITS`], threads).
const LOCK_FILE: &str = "/run/sbx-tests/hosts.lock";
static EDITS: Mutex<()> = Mutex::new(());

/// A name in `/etc/hosts` pointing at one address; its line is removed on
/// drop.
#[derive(Debug)]
pub struct HostsEntry {
    name: String,
}

impl HostsEntry {
    /// Adds `<ip> sbx-test-<pid>-<n>.test`.
    ///
    /// # Panics
    /// When `/etc/hosts` cannot be rewritten.
    #[must_use]
    pub fn new(ip: IpAddr) -> Self {
        crate::require_root();
        let name = format!("sbx-test-{}-{}.test", std::process::id(), crate::next_id());
        let entry = Self { name };
        entry.point_at(ip);
        entry
    }

    /// The name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the name resolve to `ip` (only) from now on.
    ///
    /// # Panics
    /// When `/etc/hosts` cannot be rewritten.
    pub fn point_at(&self, ip: IpAddr) {
        let name = self.name.clone();
        edit(move |lines| {
            lines.retain(|l| !names_it(l, &name));
            lines.push(format!("{ip}\t{name}"));
        });
        let text = fs::read_to_string(HOSTS).expect("reading /etc/hosts");
        let mine: Vec<&str> = text.lines().filter(|l| names_it(l, &self.name)).collect();
        assert_eq!(mine, [format!("{ip}\t{}", self.name)], "/etc/hosts after the edit:\n{text}");
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort in Drop; a failure is reported, not a second panic.
        let removed = std::panic::catch_unwind(move || edit(move |lines| lines.retain(|l| !names_it(l, &name))));
        if removed.is_err() {
            eprintln!("warning: could not remove {} from {HOSTS}", self.name);
        }
    }
}

/// Whether a hosts line maps `name` (as its canonical name or an alias).
fn names_it(line: &str, name: &str) -> bool {
    let data = line.split('#').next().unwrap_or("");
    data.split_whitespace().skip(1).any(|n| n == name)
}

/// Rewrites `/etc/hosts` through `f`, atomically, under the locks.
fn edit(f: impl FnOnce(&mut Vec<String>)) {
    let _guard = EDITS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    fs::create_dir_all(Path::new(LOCK_FILE).parent().expect("has a parent")).expect("creating /run/sbx-tests");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("opening {LOCK_FILE}: {e}"));
    // SAFETY: flock(2) on a descriptor we own; released when it closes.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking {LOCK_FILE}: {}", std::io::Error::last_os_error());

    let text = fs::read_to_string(HOSTS).unwrap_or_else(|e| panic!("reading {HOSTS}: {e}"));
    let mode = fs::metadata(HOSTS).map_or(0o644, |m| m.permissions().mode());
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    let tmp = format!("{HOSTS}.sbx-test-{}-{}", std::process::id(), crate::next_id());
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        for l in &lines {
            writeln!(file, "{l}")?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, HOSTS)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        panic!("rewriting {HOSTS}: {e}");
    }
    drop(lock);
}
