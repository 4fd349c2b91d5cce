//! The managed cgroup subtrees, and resolving a client's cgroup name
//! strictly below one of them.
//!
//! A name is absolute (it must start with a managed root, compared by
//! path components) or relative to the first root. The part below the root
//! is opened with `openat2(root_fd, rel, RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so
//! neither `..`, nor a symlink, nor a mount can lead out of the root: the
//! kernel refuses the walk (`EXDEV`, `ELOOP`). The directory found is then
//! checked to be cgroup v2 and named by the kernel's own path for the fd.
//! The managed roots themselves belong to root, so a client cannot rename
//! what was resolved before the agent uses it.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

use crate::cgroup::{Cgroup, CgroupError};

/// A cgroup name that does not resolve below a managed root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Outside every managed subtree.
    #[error("{name} is not below a cgroup subtree this agent manages ({roots})")]
    NotManaged {
        /// The name given.
        name: String,
        /// The managed roots.
        roots: String,
    },
    /// No such cgroup.
    #[error("no cgroup {name} below {root}")]
    NotFound {
        /// The name given.
        name: String,
        /// The root it was looked up in.
        root: PathBuf,
    },
    /// A new cgroup's name is not a plain name.
    #[error("cannot create cgroup {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The cgroup to create exists.
    #[error("cgroup {0} exists already; attach to it without \"create\" (root only) or pick another name")]
    Exists(PathBuf),
    /// Any other failure of the kernel.
    #[error("{action} {name}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// A managed root is not usable.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// A managed root: its canonical path and an `O_PATH` fd of it.
#[derive(Debug)]
struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

/// The managed subtrees, opened.
#[derive(Debug)]
pub struct Roots {
    roots: Vec<Root>,
}

/// A cgroup resolved below a root.
#[derive(Debug)]
pub struct Resolved {
    /// The cgroup, with the path the kernel gives for the fd.
    pub cgroup: Cgroup,
    /// The managed root it is below.
    pub root: PathBuf,
    /// The cgroup directory, opened `O_RDONLY | O_DIRECTORY` (usable for
    /// `openat` of its files and as `CLONE_INTO_CGROUP`'s fd).
    pub fd: OwnedFd,
}

impl Roots {
    /// Opens and checks every root: each must be a cgroup v2 directory.
    pub fn open(paths: &[PathBuf]) -> Result<Self, ResolveError> {
        let mut roots = Vec::new();
        for p in paths {
            let cg = Cgroup::open(p)?;
            let fd = open_path(libc::AT_FDCWD, &cg.path, 0).map_err(|source| ResolveError::Io {
                action: "opening managed cgroup root",
                name: cg.path.display().to_string(),
                source,
            })?;
            roots.push(Root { path: cg.path, fd });
        }
        Ok(Self { roots })
    }

    /// The canonical paths of the roots.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|r| r.path.as_path())
    }

    /// Whether `path` (canonical) lies strictly below a root.
    #[must_use]
    pub fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.strip_prefix(&r.path).is_ok_and(|rel| !rel.as_os_str().is_empty()))
    }

    fn not_managed(&self, name: &str) -> ResolveError {
        let roots: Vec<String> = self.paths().map(|p| p.display().to_string()).collect();
        ResolveError::NotManaged { name: name.to_owned(), roots: roots.join(", ") }
    }

    /// Which root `name` is under, and the rest of it.
    fn split<'a>(&'a self, name: &'a str) -> Result<(&'a Root, &'a Path), ResolveError> {
        let p = Path::new(name);
        let found = if p.is_absolute() {
            self.roots.iter().find_map(|r| p.strip_prefix(&r.path).ok().map(|rel| (r, rel)))
        } else {
            self.roots.first().map(|r| (r, p))
        };
        let (root, rel) = found.ok_or_else(|| self.not_managed(name))?;
        // The root itself holds the agent's whole subtree, not one sandbox.
        if rel.components().all(|c| c == Component::CurDir) {
            return Err(self.not_managed(name));
        }
        Ok((root, rel))
    }

    /// Resolves an existing cgroup.
    pub fn resolve(&self, name: &str) -> Result<Resolved, ResolveError> {
        let (root, rel) = self.split(name)?;
        let fd = beneath(&root.fd, rel).map_err(|e| self.walk_error(name, root, e))?;
        self.checked(name, root, fd)
    }

    /// Creates a cgroup (its parent must exist) and resolves it.
    pub fn create(&self, name: &str) -> Result<Resolved, ResolveError> {
        let (root, rel) = self.split(name)?;
        let bad = |reason| ResolveError::BadName { name: name.to_owned(), reason };
        let Some(Component::Normal(leaf)) = rel.components().next_back() else {
            return Err(bad("the last component must be a plain name"));
        };
        let leaf_bytes = leaf.as_bytes();
        if leaf_bytes.len() > 200 || leaf_bytes.iter().any(u8::is_ascii_control) || leaf_bytes.starts_with(b"cgroup.") {
            return Err(bad("names are at most 200 bytes, without control characters, not starting with \"cgroup.\""));
        }
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = if parent_rel.as_os_str().is_empty() {
            root.fd.try_clone().map_err(|source| ResolveError::Io {
                action: "opening",
                name: name.to_owned(),
                source,
            })?
        } else {
            beneath(&root.fd, parent_rel).map_err(|e| self.walk_error(name, root, e))?
        };
        let c = CString::new(leaf_bytes).map_err(|_| bad("contains a NUL byte"))?;
        // SAFETY: `parent` is an open directory fd and `c` a C string.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Err(ResolveError::Exists(root.path.join(rel)));
            }
            return Err(ResolveError::Io { action: "creating cgroup", name: name.to_owned(), source: e });
        }
        let fd = beneath(&parent, Path::new(leaf)).map_err(|e| self.walk_error(name, root, e))?;
        self.checked(name, root, fd)
    }

    fn walk_error(&self, name: &str, root: &Root, e: io::Error) -> ResolveError {
        match e.raw_os_error() {
            // EXDEV: `..` or a mount leads out; ELOOP: a symlink.
            Some(libc::EXDEV | libc::ELOOP) => self.not_managed(name),
            Some(libc::ENOENT | libc::ENOTDIR) => {
                ResolveError::NotFound { name: name.to_owned(), root: root.path.clone() }
            }
            _ => ResolveError::Io { action: "resolving cgroup", name: name.to_owned(), source: e },
        }
    }

    /// The kernel's path for `fd`, checked to be below `root` and a cgroup
    /// v2 directory with the same inode.
    fn checked(&self, name: &str, root: &Root, fd: OwnedFd) -> Result<Resolved, ResolveError> {
        let io = |source| ResolveError::Io { action: "resolving cgroup", name: name.to_owned(), source };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io)?;
        if !self.contains(&path) {
            return Err(self.not_managed(name));
        }
        let cgroup = Cgroup::open(&path)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `fd` is open and `st` a writable stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(io(io::Error::last_os_error()));
        }
        // SAFETY: fstat returned 0 and filled `st`.
        let ino = unsafe { st.assume_init() }.st_ino;
        if ino != cgroup.id {
            return Err(io(io::Error::other("the cgroup was replaced while it was being resolved")));
        }
        Ok(Resolved { cgroup, root: root.path.clone(), fd })
    }
}

/// `openat2(dir, rel, O_RDONLY | O_DIRECTORY)` confined below `dir`.
fn beneath(dir: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let flags = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    open_dir(dir.as_raw_fd(), rel, libc::O_RDONLY, flags)
}

fn open_path(dir: i32, path: &Path, resolve: u64) -> io::Result<OwnedFd> {
    open_dir(dir, path, libc::O_PATH, resolve)
}

fn open_dir(dir: i32, path: &Path, mode: i32, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain data; all-zero is valid and means "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(mode | libc::O_DIRECTORY | libc::O_CLOEXEC).expect("open flags are positive");
    how.resolve = resolve;
    // SAFETY: openat2 with a valid dirfd (or AT_FDCWD), a C string and an
    // open_how of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_openat2, dir, c.as_ptr(), &raw const how, size_of::<libc::open_how>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("openat2 returned an fd out of range"))?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
