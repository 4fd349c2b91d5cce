//! The files the command of `run` may write: a private per-run HOME and
//! /tmp, sbx's default filesystem rules, and the paths every process needs.
//!
//! # Why defaults
//! A command that can write its user's files can persist outside the
//! sandbox: `~/.bashrc`, `~/.profile`, `~/.config/autostart`, git hooks of
//! the user's other projects, `~/.ssh/authorized_keys` all run or take
//! effect later, outside any policy. So when the policy gives no
//! `[filesystem]` rules, `run` applies these (Landlock):
//!
//! - read and execute: everything the identity's permissions allow (`/`).
//!   Reads stay open on purpose: toolchains live in unpredictable places
//!   (`~/.cargo`, `~/.rustup`, `~/.pyenv`, `/opt`, a CI workspace), and a
//!   read list that misses one turns `cargo test` into `EACCES`. Keeping
//!   secrets unreadable takes explicit rules (or an identity that cannot
//!   read them), and the network policy decides where data can go.
//! - write: the working directory (a project checkout), a private `/tmp`,
//!   a private HOME, and [`IMPLICIT_WRITE`]. Not the working directory when
//!   it is `/` or contains the identity's (or the sudo caller's) home, as
//!   `sbx-user run` started from `~` would otherwise grant `~/.bashrc`;
//!   nor when it is inside a dot-directory of a home (`~/.config/...`).
//!   Every git repository in what the command may write is read-only for
//!   it (see [`git_dirs`]): git runs what its repository tells it to, at
//!   the user's next `git status` or shell prompt, outside the sandbox.
//!
//! # Private HOME and /tmp
//! Both live in one per-run directory under `/var/tmp` (disk-backed, like
//! the files a build puts there), made by root with mode 0711: `home`
//! (owned by the identity, 0700) and `tmp` (1777, bind-mounted over `/tmp`
//! in the command's mount namespace, so the host's temporary files are
//! hidden and nothing the command leaves there is seen outside). HOME is
//! the private one unless `--home PATH`. The directory is removed when the
//! value is dropped, after teardown has killed whatever was left in the
//! cgroup.
//!
//! # Implicit rules
//! With rules of the user's own, the paths every process needs are granted
//! too ([`IMPLICIT_WRITE`], [`IMPLICIT_READ`]), with the private HOME and
//! `/tmp`: the README's filesystem example must not break
//! `echo hi >/dev/null`. Landlock binds rules to inodes, so `/proc/self` cannot be
//! granted on its own; all of `/proc` is readable (what procfs itself lets
//! the identity read).

use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::landlock::FsRules;
use crate::{confine::Account, confine::Identity, policy::FsPolicy};

/// Devices and directories every process may read and write when
/// filesystem rules apply (those the host has; symbolic links resolved).
pub const IMPLICIT_WRITE: [&str; 7] =
    ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts", "/dev/ptmx", "/dev/shm"];

/// Paths every process may read when filesystem rules apply.
pub const IMPLICIT_READ: [&str; 3] = ["/dev/random", "/dev/urandom", "/proc"];

/// With `--git-writable`, the paths of the working directory's checkout
/// that stay read-only: the plainest ways to make git run code (hooks,
/// `core.fsmonitor`, `core.pager`), not the only ones.
pub const GIT_READ_ONLY: [&str; 2] = [".git/hooks", ".git/config"];

/// How deep below each writable directory [`git_dirs`] looks for
/// repositories (`repo/.git`, `group/repo/.git`), and how many directories
/// it reads at most: each costs about 8 µs of `run`'s start.
const GIT_SCAN_DEPTH: usize = 2;
const GIT_SCAN_DIRS: usize = 5_000;

/// Directories [`git_dirs`] does not descend into: dependency and build
/// trees, large and without repositories of the user's.
const GIT_SCAN_SKIP: [&str; 12] = [
    "node_modules",
    "target",
    ".venv",
    "venv",
    "vendor",
    "__pycache__",
    ".tox",
    ".cache",
    ".mypy_cache",
    ".pytest_cache",
    ".gradle",
    "build",
];

/// Where the per-run directory is made.
const BASE: &str = "/var/tmp";

/// Why the workspace could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// Creating or preparing the per-run directory failed.
    #[error("cannot make the private HOME and /tmp under {}: {source}\nHint: {BASE} must exist and be writable by root", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `--home` names a path that is not a directory.
    #[error("--home {}: {source}", path.display())]
    Home {
        /// The path as given.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The command's HOME, /tmp and filesystem rules for one run.
#[derive(Debug)]
pub struct Workspace {
    /// The per-run directory, removed on drop.
    base: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    /// Directories under the host's `/tmp` (working directory, command,
    /// granted paths) and where each appears in the private one.
    carried: Vec<(PathBuf, PathBuf)>,
    /// Paths under a granted directory mounted read-only for the command.
    read_only: Vec<PathBuf>,
    /// Directories made mount points (writable) so they cannot be renamed:
    /// those holding a read-only `.git`, up to the writable directory.
    pinned: Vec<PathBuf>,
    rules: FsRules,
    defaults: bool,
    notes: Vec<String>,
}

/// For the directories of `wanted` that lie under `/tmp` (not `/tmp`
/// itself), their top directory below `/tmp` (a checkout in `/tmp/ci` is
/// carried whole, so that its scripts find its build output), each once,
/// with its place inside `tmp`.
fn carry_under_tmp(wanted: &[PathBuf], tmp: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut under: Vec<PathBuf> = wanted
        .iter()
        .filter_map(|p| p.strip_prefix("/tmp").ok()?.components().next().map(|top| Path::new("/tmp").join(top)))
        .collect();
    under.sort();
    under.dedup();
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for p in under {
        if out.iter().any(|(host, _)| p.starts_with(host)) {
            continue;
        }
        let rel = p.strip_prefix("/tmp").expect("filtered").to_owned();
        out.push((p, tmp.join(rel)));
    }
    out
}

impl Workspace {
    /// Makes the private directories and computes the rules: the user's
    /// (`fs`) plus the implicit ones, or sbx's defaults when `fs` is
    /// `None`. `home` is `--home`.
    ///
    /// `command` is the program to run: when it is a path under the host's
    /// `/tmp`, its directory is carried into the private `/tmp` (as are the
    /// working directory and the paths of filesystem rules that lie there),
    /// so that a tool built or unpacked under `/tmp` still runs.
    pub fn prepare(
        fs: Option<&FsPolicy>,
        identity: Identity,
        home: Option<&Path>,
        command: Option<&Path>,
        git_writable: bool,
    ) -> Result<Self, WorkspaceError> {
        let home = home
            .map(|h| match crate::sys::canonicalize(h) {
                Ok(p) if p.is_dir() => Ok(p),
                Ok(_) => Err(WorkspaceError::Home { path: h.to_owned(), source: io::Error::other("not a directory") }),
                Err(source) => Err(WorkspaceError::Home { path: h.to_owned(), source }),
            })
            .transpose()?;
        let base = make_base()?;
        let made = (|| -> io::Result<(PathBuf, PathBuf)> {
            let tmp = base.join("tmp");
            std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
            let private_home = base.join("home");
            std::fs::DirBuilder::new().mode(0o700).create(&private_home)?;
            std::os::unix::fs::chown(&private_home, Some(identity.uid), Some(identity.gid))?;
            Ok((tmp, private_home))
        })();
        let (tmp, private_home) = match made {
            Ok(v) => v,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&base);
                return Err(WorkspaceError::Create { path: base, source });
            }
        };
        let home = home.unwrap_or(private_home);
        // A project, a tool or a granted path under the host's /tmp stays
        // where it was: each is bind-mounted to the same path inside the
        // private /tmp (one mount for nested ones).
        let mut wanted: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
        wanted.extend(command.filter(|c| c.components().count() > 1).and_then(|c| {
            let dir = crate::sys::canonicalize(c).ok()?.parent()?.to_path_buf();
            Some(dir)
        }));
        if let Some(FsPolicy { read, write }) = fs {
            wanted.extend(
                read.iter().chain(write).filter_map(|p| crate::sys::canonicalize(p).ok()).filter(|p| p.is_dir()),
            );
        }
        let carried = carry_under_tmp(&wanted, &tmp);
        for (_, inside) in &carried {
            if let Err(source) = std::fs::create_dir_all(inside) {
                let _ = std::fs::remove_dir_all(&base);
                return Err(WorkspaceError::Create { path: inside.clone(), source });
            }
        }
        let mut notes = Vec::new();
        let mut read_only = Vec::new();
        // The directories the command may write, where repositories are
        // looked for: the granted working directory first.
        let mut granted_cwd = None;
        let mut writable: Vec<PathBuf> = Vec::new();
        let mut rules = if let Some(FsPolicy { read, write }) = fs {
            writable = write.iter().filter_map(|w| crate::sys::canonicalize(w).ok()).filter(|w| w.is_dir()).collect();
            if let Ok(cwd) = std::env::current_dir() {
                if writable.iter().any(|w| cwd.starts_with(w)) {
                    granted_cwd = Some(cwd);
                }
            }
            FsRules { read: read.clone(), write: write.clone() }
        } else {
            let mut write = Vec::new();
            match std::env::current_dir() {
                Ok(cwd) => match cwd_blocker(&cwd, &protected_homes(identity)) {
                    None => {
                        granted_cwd = Some(cwd.clone());
                        write.push(cwd);
                    }
                    Some(why) => notes.push(format!(
                        "the working directory {} {why}; it stays read-only in the sandbox (run from a \
                         project directory, or grant paths with --fs-write)",
                        cwd.display()
                    )),
                },
                Err(e) => notes.push(format!("the working directory cannot be read ({e}); it stays read-only")),
            }
            FsRules { read: vec![PathBuf::from("/")], write }
        };
        add_existing(&mut rules.write, IMPLICIT_WRITE.iter().map(PathBuf::from));
        add_existing(&mut rules.read, IMPLICIT_READ.iter().map(PathBuf::from));
        add_existing(&mut rules.write, [tmp.clone(), home.clone()]);
        add_stdio_files(&mut rules);
        if let Some(cwd) = granted_cwd {
            if git_writable {
                read_only.extend(GIT_READ_ONLY.iter().map(|p| cwd.join(p)).filter(|p| p.exists()));
            } else {
                writable.insert(0, cwd);
            }
        }
        let mut pinned = Vec::new();
        if !git_writable {
            // `--fs-write /` gives back everything the identity may write.
            writable.retain(|w| w != Path::new("/"));
            let found = git_dirs(&writable);
            read_only.extend(found.read_only);
            pinned = found.pinned;
            notes.extend(found.notes);
        }
        read_only.sort();
        read_only.dedup();
        Ok(Self { base, home, tmp, carried, read_only, pinned, rules, defaults: fs.is_none(), notes })
    }

    /// The command's HOME.
    #[must_use]
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The directory mounted over `/tmp`.
    #[must_use]
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// The per-run directory itself (root's, mode 0711), for other
    /// per-run files such as the DNS stub's `resolv.conf`; removed with it.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// Directories under the host's `/tmp` (the working directory, the
    /// command's, granted paths) and where in the private `/tmp` each is
    /// bind-mounted.
    #[must_use]
    pub fn carried(&self) -> &[(PathBuf, PathBuf)] {
        &self.carried
    }

    /// Paths in the granted working directory that the command gets
    /// read-only (bind mounts in its mount namespace).
    #[must_use]
    pub fn read_only(&self) -> &[PathBuf] {
        &self.read_only
    }

    /// Directories the command gets as mount points (writable), so that it
    /// cannot rename them: those that hold a protected repository.
    #[must_use]
    pub fn pinned(&self) -> &[PathBuf] {
        &self.pinned
    }

    /// The filesystem rules to enforce, canonical.
    #[must_use]
    pub fn rules(&self) -> &FsRules {
        &self.rules
    }

    /// Whether [`Self::rules`] are sbx's defaults rather than the user's.
    #[must_use]
    pub fn defaults(&self) -> bool {
        self.defaults
    }

    /// Warnings for the user, one sentence each.
    #[must_use]
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("sbx-user: warning: removing the private HOME and /tmp {} failed: {e}", self.base.display());
            }
        }
    }
}

/// Removes the per-run directories a `sbx-user run` with process id `pid`
/// left behind when it was killed before its teardown (`detach` of its
/// leftovers calls this); returns what was removed. Nothing is removed
/// while any process has that pid: it may be a new run that reused it.
#[must_use = "the caller reports what was removed"]
pub fn remove_leftovers(pid: u32) -> Vec<PathBuf> {
    leftovers(|p, _| p == pid).into_iter().filter(|d| std::fs::remove_dir_all(d).is_ok()).collect()
}

/// The per-run directories of every `sbx-user run` that is gone (killed
/// before or during its teardown), at least [`ABANDONED_AGE`] old, for
/// `gc`: a directory that young may be a new run's whose pid a dead run
/// had (its process is looked up again, but the age closes the window).
/// Not those of the runs in `recorded`: a run killed before its teardown
/// leaves its sandbox recorded, and what it started may still run there
/// and use its HOME and /tmp, until `detach` kills it and removes both.
#[must_use]
pub fn abandoned(recorded: &[u32]) -> Vec<PathBuf> {
    leftovers(|pid, age| age >= ABANDONED_AGE && !recorded.contains(&pid))
}

/// How old a per-run directory of a gone run must be for [`abandoned`].
pub const ABANDONED_AGE: std::time::Duration = std::time::Duration::from_mins(1);

/// The per-run directories under [`BASE`] (`sbx-run-<pid>-<nanos>`, made
/// by root with mode 0711, as [`make_base`] makes them) whose pid no
/// process has, and that `keep` takes (by pid and age).
fn leftovers(keep: impl Fn(u32, std::time::Duration) -> bool) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(BASE) else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(run_dir_pid) else { continue };
        let Ok(meta) = e.metadata() else { continue };
        let made_by_run = meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o7777 == 0o711;
        let age = meta.modified().ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
        if made_by_run && keep(pid, age) && !Path::new("/proc").join(pid.to_string()).exists() {
            found.push(e.path());
        }
    }
    found
}

/// The pid in a per-run directory's name, `sbx-run-<pid>-<nanos>`.
fn run_dir_pid(name: &str) -> Option<u32> {
    let (pid, nanos) = name.strip_prefix("sbx-run-")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(nanos)).then(|| pid.parse().ok()).flatten()
}

/// Creates `/var/tmp/sbx-run-<pid>-<nanos>` (0711, root's). `mkdir` fails
/// on anything already there, symbolic links included, so another user of
/// the sticky `/var/tmp` cannot slip a directory of theirs in.
fn make_base() -> Result<PathBuf, WorkspaceError> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let base = Path::new(BASE).join(format!("sbx-run-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&base)
        .and_then(|()| std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)))
        .map_err(|source| WorkspaceError::Create { path: base.clone(), source })?;
    Ok(base)
}

/// The git repositories in the writable directories `roots` (each and up
/// to [`GIT_SCAN_DEPTH`] levels below it), as the paths the command gets
/// read-only, and notes for the user.
///
/// git runs what its repository tells it to, at the user's next `git
/// status` or on every shell prompt that shows the branch: hooks,
/// `core.fsmonitor`, `core.pager`, filter and diff drivers, `exec` lines of
/// a rebase in progress. A repository can say so from its config and
/// hooks, a `commondir` file, `worktrees/` or `modules/`, a `.git` file's
/// `gitdir:` line, or a new `.git` put where the old one was renamed away;
/// and git finds no repository in a `.git` made invalid (a removed `HEAD`,
/// an unreadable `objects`) and takes the directory above for a bare one.
/// So each `.git` is read-only whole, a directory or a file (a worktree's
/// or submodule's pointer), and, being a mount point, cannot be renamed
/// or removed. A `.git` that is a symbolic link cannot be held that way
/// (the link itself can be replaced): its directory is read-only instead.
fn git_dirs(roots: &[PathBuf]) -> GitFound {
    let mut out = GitFound::default();
    let mut read = 0;
    let mut queue: std::collections::VecDeque<(usize, PathBuf, usize)> =
        roots.iter().enumerate().map(|(r, d)| (r, d.clone(), 0)).collect();
    while let Some((root, dir, depth)) = queue.pop_front() {
        if read == GIT_SCAN_DIRS {
            out.notes.push(format!(
                "looked for git repositories in {GIT_SCAN_DIRS} directories of what the command may write, not all; a \
                 repository further down is writable, and git outside the sandbox would run what the command leaves \
                 in it"
            ));
            break;
        }
        read += 1;
        out.protect(&roots[root], &dir);
        if depth == GIT_SCAN_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == ".git" || GIT_SCAN_SKIP.iter().any(|s| name == *s) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back((root, entry.path(), depth + 1));
            }
        }
    }
    out.read_only.sort();
    out.read_only.dedup();
    out.pinned.sort();
    out.pinned.dedup();
    out
}

/// What [`git_dirs`] found.
#[derive(Debug, Default)]
struct GitFound {
    /// `.git` directories and files, and what their config makes git run
    /// from the work tree (`core.hooksPath`, `include.path`).
    read_only: Vec<PathBuf>,
    /// The directories from below a writable root down to each repository:
    /// mount points, so that a repository cannot be moved away whole and
    /// another put in its place.
    pinned: Vec<PathBuf>,
    notes: Vec<String>,
}

impl GitFound {
    /// Protects the repository whose work tree is `dir` (under the
    /// writable `root`), if there is one, and its submodules' checkouts
    /// wherever `.gitmodules` puts them.
    fn protect(&mut self, root: &Path, dir: &Path) {
        let dot_git = dir.join(".git");
        match std::fs::symlink_metadata(&dot_git) {
            Ok(m) if m.file_type().is_symlink() => {
                self.notes.push(format!(
                    "{} is a symbolic link, which the command could replace; {} stays read-only in the sandbox",
                    dot_git.display(),
                    dir.display()
                ));
                self.read_only.push(dir.to_owned());
            }
            Ok(m) => {
                self.read_only.push(dot_git.clone());
                self.pin_down_to(root, dir);
                if m.is_dir() {
                    self.read_only.extend(config_paths(dir, &dot_git.join("config")));
                }
                if let Ok(text) = std::fs::read_to_string(dir.join(".gitmodules")) {
                    for sub in submodule_paths(&text) {
                        let checkout = dir.join(sub);
                        if checkout.starts_with(dir) && checkout != dir {
                            self.protect(root, &checkout);
                        }
                    }
                }
            }
            Err(_) => {}
        }
    }

    /// Pins every directory below `root` down to `dir`. Not `root` itself:
    /// renaming it needs its parent, which is not writable unless it is a
    /// root of its own.
    fn pin_down_to(&mut self, root: &Path, dir: &Path) {
        let Ok(rel) = dir.strip_prefix(root) else { return };
        let mut at = root.to_owned();
        for part in rel.components() {
            at.push(part);
            self.pinned.push(at.clone());
        }
    }
}

/// The `path = ...` values of a `.gitmodules` file, relative, without `..`.
fn submodule_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim().eq_ignore_ascii_case("path")).then(|| PathBuf::from(value.trim().trim_matches('"')))
        })
        .filter(|p| p.is_relative() && p.components().all(|c| matches!(c, std::path::Component::Normal(_))))
        .collect()
}

/// Paths a repository's config makes git run or read as config from
/// outside `.git`: `core.hooksPath` (relative to the work tree `dir`) and
/// `include.path`/`includeIf.*.path` (relative to the config's directory),
/// those that exist. A line-based reading: enough for what `git config`
/// writes.
fn config_paths(dir: &Path, config: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(config) else { return Vec::new() };
    let base = config.parent().unwrap_or(dir);
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.split([']', ' ', '"', '.']).next().unwrap_or("").to_ascii_lowercase();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().trim_matches('"'));
        let path = match (section.as_str(), key.as_str()) {
            ("core", "hookspath") => dir.join(value),
            ("include" | "includeif", "path") => base.join(value),
            _ => continue,
        };
        if path.exists() {
            out.push(path);
        }
    }
    out
}

/// Homes the working directory must not contain to be granted: the
/// identity's and, under sudo, the caller's (canonical).
fn protected_homes(identity: Identity) -> Vec<PathBuf> {
    let mut uids = vec![identity.uid];
    if let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|v| v.parse::<u32>().ok()) {
        uids.push(uid);
    }
    let mut homes: Vec<PathBuf> = uids
        .into_iter()
        .filter_map(|u| Account::lookup(u).home)
        .map(|h| crate::sys::canonicalize(&h).unwrap_or(h))
        .collect();
    homes.dedup();
    homes
}

/// Why the working directory `cwd` may not be granted for writing, or
/// `None` when it may: it is `/`, or it is or contains one of `homes`.
#[must_use]
pub fn cwd_blocker(cwd: &Path, homes: &[PathBuf]) -> Option<String> {
    if cwd == Path::new("/") {
        return Some("is /".to_owned());
    }
    if cwd == Path::new("/tmp") {
        return Some("is /tmp, which the command sees as a private, empty one".to_owned());
    }
    if let Some(h) = homes.iter().find(|h| h.starts_with(cwd)) {
        return Some(if h == cwd {
            "is a home directory".to_owned()
        } else {
            format!("contains the home directory {}", h.display())
        });
    }
    homes.iter().find_map(|h| {
        let first = cwd.strip_prefix(h).ok()?.components().next()?;
        first
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b".")
            .then(|| format!("is inside {}, configuration that runs outside the sandbox", h.join(first).display()))
    })
}

/// Grants the regular files the command was handed as stdin (read) and
/// stdout/stderr (read and write): it holds them open already, and scripts
/// reopen them by name (`echo usage >/dev/stderr` opens
/// `/proc/self/fd/2`), which Landlock would otherwise refuse for a log file
/// outside the write rules. Only when the path still names the same file.
fn add_stdio_files(rules: &mut FsRules) {
    use std::os::unix::fs::MetadataExt as _;
    for fd in 0..3 {
        // SAFETY: fstat on a descriptor number into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable and outlives the call.
        if unsafe { libc::fstat(fd, &raw mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let Ok(path) = crate::sys::canonicalize(format!("/proc/self/fd/{fd}")) else { continue };
        let same = std::fs::metadata(&path).is_ok_and(|m| m.dev() == st.st_dev && m.ino() == st.st_ino);
        let list = if fd == 0 { &mut rules.read } else { &mut rules.write };
        if same && !list.contains(&path) {
            list.push(path);
        }
    }
}

/// Appends the canonical form of each path that exists, without
/// duplicates.
fn add_existing(to: &mut Vec<PathBuf>, paths: impl IntoIterator<Item = PathBuf>) {
    for p in paths {
        if let Ok(c) = crate::sys::canonicalize(&p) {
            if !to.contains(&c) {
                to.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_run_directories_name_their_pid() {
        assert_eq!(super::run_dir_pid("sbx-run-4242-1796284082522139280"), Some(4242));
        for other in ["sbx-run-4242", "sbx-run--1", "sbx-run-42x-1", "sbx-run-42-", "sbx-st", "sbx-run-42-1-2"] {
            assert_eq!(super::run_dir_pid(other), None, "{other}");
        }
    }

    #[test]
    fn every_repository_in_the_writable_directories_is_found() {
        let root = std::env::temp_dir().join(format!("sbx-git-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [".git/hooks", "a/.git", "a/b/c/.git", "a/b/c/d/.git", "node_modules/x/.git", "l"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("a/b/.git"), "gitdir: ../../.git/modules/b\n").unwrap();
        std::os::unix::fs::symlink(root.join("a/.git"), root.join("l/.git")).unwrap();
        std::fs::write(root.join(".git/config"), "[core]\n\thooksPath = .husky\n[include]\n\tpath = ../extra.cfg\n")
            .unwrap();
        std::fs::create_dir_all(root.join(".husky")).unwrap();
        std::fs::write(root.join("extra.cfg"), "").unwrap();
        std::fs::write(root.join(".gitmodules"), "[submodule \"dep\"]\n\tpath = node_modules/x\n\tpath = ../out\n")
            .unwrap();
        let GitFound { read_only: found, pinned, notes } = git_dirs(std::slice::from_ref(&root));
        assert_eq!(pinned, [root.join("a"), root.join("a/b"), root.join("node_modules"), root.join("node_modules/x")]);
        // The hooks and included config the repository's config names, and
        // a submodule's checkout even in a directory the walk skips.
        let mut want: Vec<PathBuf> =
            [".git", ".git/../extra.cfg", ".husky", "a/.git", "a/b/.git", "l", "node_modules/x/.git"]
                .iter()
                .map(|p| root.join(p))
                .collect();
        want.sort();
        // Two levels down at most (a/b/c is the third), never into
        // dependency trees; a symbolic link's directory instead of it.
        assert_eq!(found, want);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("is a symbolic link"), "{notes:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn only_the_outermost_directories_under_tmp_are_carried() {
        use std::path::PathBuf;
        let p = |s: &str| PathBuf::from(s);
        let got = super::carry_under_tmp(
            &[p("/tmp/ci/tests"), p("/tmp/ci/target/debug"), p("/tmp"), p("/work/x"), p("/tmp/ci/tests"), p("/tmpx")],
            &p("/run/base/tmp"),
        );
        assert_eq!(got, vec![(p("/tmp/ci"), p("/run/base/tmp/ci"))]);
        let two = super::carry_under_tmp(&[p("/tmp/a/b"), p("/tmp/c/d/e"), p("/tmp/a")], &p("/t"));
        assert_eq!(two, vec![(p("/tmp/a"), p("/t/a")), (p("/tmp/c"), p("/t/c"))]);
    }

    use super::*;

    #[test]
    fn the_working_directory_is_granted_unless_it_holds_a_home() {
        let homes = [PathBuf::from("/home/alice"), PathBuf::from("/root")];
        let case = |cwd: &str| cwd_blocker(Path::new(cwd), &homes);
        assert_eq!(case("/home/alice/src/proj"), None);
        assert_eq!(case("/home/bob"), None);
        assert_eq!(case("/work/ci"), None);
        assert_eq!(case("/"), Some("is /".to_owned()));
        assert_eq!(case("/home/alice"), Some("is a home directory".to_owned()));
        assert_eq!(case("/home"), Some("contains the home directory /home/alice".to_owned()));
        // A prefix of the name is not a parent.
        assert_eq!(case("/home/ali"), None);
        assert_eq!(
            case("/home/alice/.config/autostart"),
            Some("is inside /home/alice/.config, configuration that runs outside the sandbox".to_owned())
        );
        assert_eq!(case("/home/alice/src/.hidden-but-a-project"), None);
        assert_eq!(case("/tmp"), Some("is /tmp, which the command sees as a private, empty one".to_owned()));
    }

    #[test]
    fn defaults_and_implicit_rules() {
        // As root, for uid 0: the private dirs belong to root.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED defaults_and_implicit_rules: needs root to chown the private HOME");
            return;
        }
        let ws = Workspace::prepare(None, Identity { uid: 0, gid: 0 }, None, None, false).expect("prepare");
        assert!(ws.defaults());
        let rules = ws.rules();
        assert!(rules.read.contains(&PathBuf::from("/")), "{rules:?}");
        assert!(rules.read.contains(&PathBuf::from("/proc")), "{rules:?}");
        assert!(rules.write.contains(&PathBuf::from("/dev/null")), "{rules:?}");
        assert!(rules.write.contains(&ws.tmp().to_path_buf()) && rules.write.contains(&ws.home().to_path_buf()));
        let base = ws.base.clone();
        assert!(base.starts_with(BASE) && ws.home().starts_with(&base), "{ws:?}");
        drop(ws);
        assert!(!base.exists(), "the per-run directory is removed");

        let fs = FsPolicy { read: vec![PathBuf::from("/usr")], write: vec![] };
        let ws = Workspace::prepare(Some(&fs), Identity { uid: 0, gid: 0 }, Some(Path::new("/tmp")), None, false)
            .expect("prepare");
        assert!(!ws.defaults());
        assert_eq!(ws.home(), Path::new("/tmp"));
        assert_eq!(ws.rules().read[0], PathBuf::from("/usr"));
        assert!(!ws.rules().read.contains(&PathBuf::from("/")));
        assert!(ws.rules().write.contains(&PathBuf::from("/tmp")));
        assert!(Workspace::prepare(
            None,
            Identity { uid: 0, gid: 0 },
            Some(Path::new("/nonexistent-sbx")),
            None,
            false
        )
        .is_err());
    }
}
