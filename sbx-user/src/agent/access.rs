//! Who is on the other end of a connection, and what they may do.
//!
//! Checked on every connection from the kernel's own record of the peer
//! (`SO_PEERCRED` for the uid, gid and pid at connect time,
//! `SO_PEERGROUPS` for its supplementary groups), never from anything the
//! client says. Only root and members of the configured group get in; a
//! member acts only on the sandboxes it created, so the group is not
//! root-equivalent.

use std::{io, os::fd::AsRawFd};

/// The peer of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its pid at connect time.
    pub pid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// Whether the caller is root (uid 0).
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller belongs to group `gid`.
    #[must_use]
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the caller may use the agent at all.
    pub fn admit(&self, group: Option<&(String, u32)>) -> Result<(), String> {
        if self.is_root() || group.is_some_and(|(_, gid)| self.in_group(*gid)) {
            return Ok(());
        }
        Err(match group {
            Some((name, _)) => {
                format!("uid {} may not use the sbx agent: only root and members of group {name} may", self.uid)
            }
            None => format!("uid {} may not use the sbx agent: only root may (no group is configured)", self.uid),
        })
    }

    /// Whether the caller may act on a sandbox created by `creator` (root's
    /// when the agent did not create it).
    #[must_use]
    pub fn may_act_on(&self, creator: u32) -> bool {
        self.is_root() || self.uid == creator
    }
}

/// The peer of a connected UNIX socket.
pub fn peer(sock: &impl AsRawFd) -> io::Result<Caller> {
    let fd = sock.as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = socklen::<libc::ucred>();
    // SAFETY: `cred` is a writable ucred and `len` its size.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Caller { uid: cred.uid, gid: cred.gid, pid: u32::try_from(cred.pid).unwrap_or(0), groups: peer_groups(fd)? })
}

/// `SO_PEERGROUPS`: the peer's supplementary groups, growing the buffer on
/// `ERANGE` (the kernel then says how much it needs).
fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len =
            libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>()).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &raw mut len)
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 1 << 16 {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("small struct")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller { uid, gid, pid: 1, groups: groups.to_vec() }
    }

    #[test]
    fn root_and_group_members_are_admitted() {
        let g = ("sbx".to_owned(), 990);
        assert!(caller(0, 0, &[]).admit(None).is_ok());
        assert!(caller(1000, 1000, &[990]).admit(Some(&g)).is_ok());
        assert!(caller(1000, 990, &[]).admit(Some(&g)).is_ok());
        let no = caller(1000, 1000, &[4, 27]).admit(Some(&g)).expect_err("not a member");
        assert!(no.contains("members of group sbx"), "{no}");
        assert!(caller(1000, 990, &[]).admit(None).is_err());
    }

    #[test]
    fn members_act_only_on_their_own_sandboxes() {
        assert!(caller(0, 0, &[]).may_act_on(1000));
        assert!(caller(1000, 1000, &[]).may_act_on(1000));
        assert!(!caller(1000, 1000, &[]).may_act_on(1001));
        assert!(!caller(1000, 1000, &[]).may_act_on(0));
    }

    #[test]
    fn reads_its_own_credentials_from_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let me = peer(&a).expect("SO_PEERCRED");
        // SAFETY: getuid and getpid have no preconditions.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        assert_eq!((me.uid, me.pid), (uid, u32::try_from(pid).expect("positive")));
    }
}
