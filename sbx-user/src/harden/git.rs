//! The working directory's `.git` under `run`: the command may stage and
//! commit, but nothing it leaves in `.git` makes git outside the sandbox
//! run code.
//!
//! # Why
//! git runs what its repository tells it to, on the user's next `git
//! status` or on every shell prompt that shows the branch: hooks,
//! `core.fsmonitor`, `core.pager`, filters and diff drivers from the
//! config, `exec` lines of a rebase in progress. The repository can say so
//! from many places: `hooks/` and `config`, and also a `commondir` file
//! (which makes another directory's config and hooks the repository's),
//! `worktrees/*/` and `modules/*/` (the git directories of linked
//! worktrees and submodules), `rebase-merge/`, or a whole new `.git` put
//! where the old one was renamed away. Read-only mounts of `hooks` and
//! `config` alone leave the rest.
//!
//! # How
//! In the command's mount namespace `.git` is an overlay: the real
//! directory below, a per-run directory above. What git writes to the
//! object store, the refs and the reflogs ([`DIRECT`]) goes straight
//! through (bind mounts of the real directories over the overlay's), so
//! commits made inside are objects and refs of the real repository at
//! once. Everything else the command writes in `.git` lands in the per-run
//! directory, which git outside the sandbox never reads. When the command
//! has ended, [`GitOverlay::settle`] copies back the plain state files
//! git needs ([`KEPT`]: the index, `HEAD`, `COMMIT_EDITMSG`,
//! `packed-refs`, merge state) and reports whatever else the command
//! wrote there, which is dropped. `.git` being a mount point, it cannot be
//! renamed or removed; `hooks` and `config` are also mounted read-only on
//! top, so a write there fails at once instead of being dropped later.
//!
//! Where the overlay cannot be mounted (the per-run directory on a
//! filesystem overlayfs cannot write to, such as another overlay), `.git`
//! is read-only for the command, with a warning: commits inside then fail,
//! nothing is planted.
//!
//! While the command runs, git outside sees its new commits and refs but
//! the index and `HEAD` of before, until they are copied back.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

/// Directories of `.git` the command writes straight to: the object store,
/// refs, reflogs, Git LFS objects and recorded conflict resolutions. Data
/// that git reads, never runs.
pub const DIRECT: [&str; 5] = ["objects", "refs", "logs", "lfs", "rr-cache"];

/// Files at the top of `.git` copied back after the run: the index and the
/// state of HEAD, a commit, merge, cherry-pick or revert. Plain data (a
/// `HEAD` must also read as a ref or an object id).
pub const KEPT: [&str; 14] = [
    "index",
    "HEAD",
    "ORIG_HEAD",
    "FETCH_HEAD",
    "COMMIT_EDITMSG",
    "packed-refs",
    "shallow",
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "AUTO_MERGE",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "REBASE_HEAD",
];

/// The overlay of one run's working directory's `.git`.
#[derive(Debug)]
pub struct GitOverlay {
    /// The real `.git`.
    dot_git: PathBuf,
    /// Where the real `.git` is also mounted in the child, as the
    /// overlay's lower layer (detached once the overlay is up).
    real: PathBuf,
    /// The per-run upper layer.
    upper: PathBuf,
    /// overlayfs's work directory.
    work: PathBuf,
    /// Which of [`DIRECT`] the repository has.
    direct: Vec<&'static str>,
}

impl GitOverlay {
    /// The overlay for `cwd`'s `.git`, with its directories made under
    /// `base` (the per-run directory), or `None` when `cwd` has no `.git`
    /// directory (not a checkout, or a worktree or submodule whose `.git`
    /// is a file naming a git directory elsewhere).
    ///
    /// # Errors
    /// When the directories cannot be made.
    pub fn prepare(cwd: &Path, base: &Path) -> io::Result<Option<Self>> {
        let dot_git = cwd.join(".git");
        let meta = match fs::symlink_metadata(&dot_git) {
            Ok(m) if m.is_dir() => m,
            _ => return Ok(None),
        };
        let dir = base.join("git");
        let made = |p: &Path| fs::DirBuilder::new().mode(0o700).create(p);
        made(&dir)?;
        let (real, upper, work) = (dir.join("real"), dir.join("upper"), dir.join("work"));
        for p in [&real, &upper, &work] {
            made(p)?;
        }
        // The overlay's root takes its owner and mode from the upper
        // layer's: the checkout's own, so git sees its repository as before
        // (ownership: `safe.directory`) and the identity may create files.
        std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid()))?;
        fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o1777))?;
        // A repository without a commit has no reflogs yet; git makes the
        // directory at the first commit, which must land in the real one.
        let logs = dot_git.join("logs");
        if fs::symlink_metadata(&logs).is_err() {
            fs::DirBuilder::new().mode(meta.mode() & 0o777).create(&logs)?;
            std::os::unix::fs::chown(&logs, Some(meta.uid()), Some(meta.gid()))?;
        }
        let direct =
            DIRECT.into_iter().filter(|d| fs::symlink_metadata(dot_git.join(d)).is_ok_and(|m| m.is_dir())).collect();
        Ok(Some(Self { dot_git, real, upper, work, direct }))
    }

    /// The real `.git`.
    #[must_use]
    pub fn dot_git(&self) -> &Path {
        &self.dot_git
    }

    /// Copies back the files of [`KEPT`] the command wrote (or removes
    /// those it removed), once it has ended; returns what else it wrote at
    /// the top of `.git`, which is dropped (for a warning), with a reason
    /// where a kept file could not be copied.
    #[must_use = "the caller reports what was dropped"]
    pub fn settle(&self) -> Vec<String> {
        let mut dropped = Vec::new();
        let Ok(entries) = fs::read_dir(&self.upper) else { return dropped };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            let kept = KEPT.contains(&name.as_str());
            if kept && meta.file_type().is_char_device() && meta.rdev() == 0 {
                // overlayfs's whiteout: the command removed the file.
                match fs::remove_file(self.dot_git.join(&name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => dropped.push(format!("{name} (removing it: {e})")),
                }
                continue;
            }
            if kept && meta.is_file() {
                if name == "HEAD" && !fs::read(&path).is_ok_and(|h| valid_head(&h)) {
                    dropped.push("HEAD (neither a ref nor an object id)".to_owned());
                    continue;
                }
                if let Err(e) = copy_in(&path, &self.dot_git.join(&name), &meta) {
                    dropped.push(format!("{name} (copying it back: {e})"));
                }
                continue;
            }
            // The overlay's own copy of a directory mounted over: empty.
            if DIRECT.contains(&name.as_str()) && fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none()) {
                continue;
            }
            dropped.push(name);
        }
        dropped.sort();
        dropped
    }
}

/// Whether `head` is what git writes to `HEAD`: a symbolic ref under
/// `refs/` or a full object id.
fn valid_head(head: &[u8]) -> bool {
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    if let Some(r) = head.strip_prefix(b"ref: refs/") {
        return !r.is_empty()
            && r.iter().all(|&c| c.is_ascii_alphanumeric() || b"/._-".contains(&c))
            && !r.windows(2).any(|w| w == b".." || w == b"//");
    }
    matches!(head.len(), 40 | 64) && head.iter().all(u8::is_ascii_hexdigit)
}

/// Replaces `to` with a copy of the regular file `from` (owner and
/// permission bits kept, never set-ID), through a new file beside `to`.
fn copy_in(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut src = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(from)?;
    let name = to.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = to.with_file_name(format!(".sbx-{name}-{}", std::process::id()));
    let result = (|| {
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        std::os::unix::fs::fchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
        fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The child's side of a [`GitOverlay`], prepared as C strings.
#[derive(Debug)]
pub struct GitMounts {
    dot_git: CString,
    real: CString,
    options: CString,
    /// (real directory, the same directory in the overlay).
    direct: Vec<(CString, CString)>,
}

impl GitMounts {
    /// # Errors
    /// A path with a NUL byte.
    pub fn new(g: &GitOverlay) -> io::Result<Self> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        let options =
            format!("lowerdir={},upperdir={},workdir={}", g.real.display(), g.upper.display(), g.work.display());
        Ok(Self {
            dot_git: c(&g.dot_git)?,
            real: c(&g.real)?,
            options: CString::new(options).map_err(io::Error::other)?,
            direct: g
                .direct
                .iter()
                .map(|d| Ok((c(&g.real.join(d))?, c(&g.dot_git.join(d))?)))
                .collect::<io::Result<_>>()?,
        })
    }

    /// Mounts the overlay over `.git` in the child's (private) mount
    /// namespace, or, when overlayfs refuses, makes `.git` read-only and
    /// says so on stderr. Async-signal-safe: system calls on prepared data.
    ///
    /// # Errors
    /// A mount that fails otherwise: the child must not run.
    pub fn mount(&self) -> io::Result<()> {
        let bind = |from: &CString, to: &CString| {
            // SAFETY: mount(2) with NUL-terminated paths that outlive the call.
            check(unsafe {
                libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            })
        };
        bind(&self.dot_git, &self.real)?;
        // SAFETY: as above; the options string is NUL-terminated.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                self.dot_git.as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            // SAFETY: reading errno right after the failed call.
            let errno = unsafe { *libc::__errno_location() };
            warn_read_only(errno);
            bind(&self.dot_git, &self.dot_git)?;
            // SAFETY: a remount of the bind mount just made, read-only.
            return check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    self.dot_git.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                )
            });
        }
        for (from, to) in &self.direct {
            bind(from, to)?;
        }
        // The lower layer stays the overlay's, but leaves the namespace:
        // the command cannot reach the real `.git` by that path.
        // SAFETY: umount2(2) of the mount made above.
        check(unsafe { libc::umount2(self.real.as_ptr(), libc::MNT_DETACH) })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes the read-only fallback's warning to stderr. Async-signal-safe:
/// one write(2) of a stack buffer.
fn warn_read_only(errno: i32) {
    let mut buf = [0u8; 160];
    let head = b"sbx-user: warning: .git is read-only in the sandbox (commits there fail): its overlay could not be mounted, errno ";
    let mut n = head.len();
    buf[..n].copy_from_slice(head);
    let mut digits = [0u8; 10];
    let (mut v, mut d) = (errno.unsigned_abs(), 0);
    loop {
        digits[d] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        d += 1;
        v /= 10;
        if v == 0 || d == digits.len() {
            break;
        }
    }
    for &c in digits[..d].iter().rev() {
        buf[n] = c;
        n += 1;
    }
    buf[n] = b'\n';
    n += 1;
    // SAFETY: write(2) of an initialised stack buffer to stderr.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_a_ref_or_an_object_id() {
        assert!(valid_head(b"ref: refs/heads/main\n"));
        assert!(valid_head(b"ref: refs/heads/feature/x-1.2_y"));
        assert!(valid_head(b"0123456789abcdef0123456789abcdef01234567\n"));
        assert!(!valid_head(b"ref: refs/../../etc/passwd\n"));
        assert!(!valid_head(b"ref: /etc/passwd\n"));
        assert!(!valid_head(b"ref: refs/\n"));
        assert!(!valid_head(b"0123\n"));
        assert!(!valid_head(b"[core]\n\tfsmonitor = evil\n"));
    }

    #[test]
    fn kept_files_come_back_and_anything_else_is_reported() {
        let dir = std::env::temp_dir().join(format!("sbx-git-settle-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cwd, base) = (dir.join("proj"), dir.join("run"));
        fs::create_dir_all(cwd.join(".git/refs")).unwrap();
        fs::create_dir_all(&base).unwrap();
        fs::write(cwd.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::write(cwd.join(".git/MERGE_HEAD"), "x\n").unwrap();
        let g = GitOverlay::prepare(&cwd, &base).unwrap().expect("a .git directory");
        assert_eq!(g.direct, ["refs", "logs"], "a repository without reflogs gets the directory for them");
        // What the command's writes through the overlay would leave.
        fs::write(g.upper.join("index"), "DIRC").unwrap();
        fs::write(g.upper.join("HEAD"), "ref: refs/heads/work\n").unwrap();
        fs::write(g.upper.join("commondir"), "/tmp/evil\n").unwrap();
        fs::create_dir(g.upper.join("rebase-merge")).unwrap();
        fs::create_dir(g.upper.join("refs")).unwrap();
        let whiteout = CString::new(g.upper.join("MERGE_HEAD").as_os_str().as_bytes()).unwrap();
        // SAFETY: mknod(2) of a character device 0:0 (root only), as
        // overlayfs marks a removed file.
        let made = unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0;
        assert_eq!(g.settle(), ["commondir", "rebase-merge"]);
        assert_eq!(fs::read_to_string(cwd.join(".git/index")).unwrap(), "DIRC");
        assert_eq!(fs::read_to_string(cwd.join(".git/HEAD")).unwrap(), "ref: refs/heads/work\n");
        assert!(!cwd.join(".git/commondir").exists());
        assert_eq!(!cwd.join(".git/MERGE_HEAD").exists(), made, "a whiteout removes the file");
        fs::write(g.upper.join("HEAD"), "[core]\n").unwrap();
        assert_eq!(g.settle().iter().filter(|d| d.starts_with("HEAD")).count(), 1, "a HEAD that is not one");
        assert_eq!(fs::read_to_string(cwd.join(".git/HEAD")).unwrap(), "ref: refs/heads/work\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
