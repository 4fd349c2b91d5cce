//! Users, groups and host names, looked up the same way by the dynamic
//! and the statically linked build.
//!
//! A dynamically linked `sbx-user` asks glibc (`getpwuid_r`,
//! `getgrnam_r`, `getaddrinfo`), which follows `/etc/nsswitch.conf` and
//! loads the NSS modules it names (LDAP, sssd, systemd-userdb, mDNS...).
//! The statically linked build (musl, as shipped) has no NSS, and a static
//! glibc would load the same modules with `dlopen`, which is only safe with
//! the very glibc it was linked with. So a static build never loads a
//! module: it reads `/etc/passwd` and `/etc/group` itself, and asks the
//! host's own `getent` (a dynamic program, with every module) for what
//! those files lack; for host names it uses its libc's own `files` and
//! `dns` resolver when `nsswitch.conf` names no other source, and `getent
//! ahosts` otherwise. A host without `getent` (an image built `FROM
//! scratch`) has the files only.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// This binary is linked statically (musl, or glibc with `+crt-static`).
pub const STATIC: bool = cfg!(target_feature = "crt-static");

/// Where the host's `getent` may be (never found by `$PATH`, which the
/// caller controls).
const GETENT: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];

/// An account: login name and home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passwd {
    /// `pw_name`.
    pub name: String,
    /// `pw_dir`, as written.
    pub dir: PathBuf,
}

/// The account of `uid`, if the password database has one.
#[must_use]
pub fn user_by_uid(uid: u32) -> Option<Passwd> {
    if STATIC {
        user_without_nss(uid)
    } else {
        getpwuid(uid)
    }
}

/// The static build's [`user_by_uid`]: `/etc/passwd`, then `getent`.
#[must_use]
pub fn user_without_nss(uid: u32) -> Option<Passwd> {
    // Only the line of that uid counts (from getent too).
    let of_uid = |text: &[u8]| text.split(|&b| b == b'\n').find_map(|l| passwd_line(l).filter(|(_, u, _)| *u == uid));
    std::fs::read("/etc/passwd")
        .ok()
        .and_then(|text| of_uid(&text))
        .or_else(|| getent("passwd", &uid.to_string()).and_then(|out| of_uid(&out)))
        .map(|(p, _, _)| p)
}

/// The gid of group `name`, if the group database has it.
#[must_use]
pub fn gid_by_name(name: &str) -> Option<u32> {
    if STATIC {
        gid_without_nss(name)
    } else {
        getgrnam(name)
    }
}

/// The static build's [`gid_by_name`]: `/etc/group`, then `getent`.
#[must_use]
pub fn gid_without_nss(name: &str) -> Option<u32> {
    // getent also takes a number for a gid: only the line of that name counts.
    let named = |text: &[u8]| {
        text.split(|&b| b == b'\n').find_map(|l| group_line(l).filter(|(n, _)| n.as_bytes() == name.as_bytes()))
    };
    std::fs::read("/etc/group")
        .ok()
        .and_then(|text| named(&text))
        .or_else(|| getent("group", name).and_then(|out| named(&out)))
        .map(|(_, gid)| gid)
}

/// The addresses of host `name` (the system's resolver: `/etc/hosts`
/// first, as configured).
///
/// # Errors
/// The name does not resolve.
pub fn resolve_host(name: &str) -> io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs as _;
    let built_in = !STATIC || std::fs::read_to_string("/etc/nsswitch.conf").map_or(true, |t| hosts_built_in(&t));
    if built_in {
        return Ok((name, 0).to_socket_addrs()?.map(|a| a.ip()).collect());
    }
    // A name getent would take for an option is not a host name.
    // getent ahosts asks with AI_ADDRCONFIG: a host with no IPv6 address of
    // its own gets only IPv4 answers (fewer addresses: fails closed).
    let found = (!name.starts_with('-')).then(|| getent("ahosts", name)).flatten();
    let addrs = found.as_deref().map(|out| ahosts(&String::from_utf8_lossy(out))).unwrap_or_default();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{name}: no address (getent ahosts)")));
    }
    Ok(addrs)
}

/// Whether the `hosts` line of `nsswitch` names only the sources a static
/// libc resolves by itself (`files`, `dns`); no line means glibc's
/// default (`files dns`).
#[must_use]
pub fn hosts_built_in(nsswitch: &str) -> bool {
    let line =
        nsswitch.lines().map(|l| l.split('#').next().unwrap_or_default().trim()).find_map(|l| l.strip_prefix("hosts:"));
    let Some(line) = line else { return true };
    let mut sources = Vec::new();
    let mut in_action = false;
    for word in line.split_whitespace() {
        // `[NOTFOUND=return]` and the like: actions, not sources.
        if word.starts_with('[') {
            in_action = true;
        }
        if !in_action {
            sources.push(word);
        }
        if word.ends_with(']') {
            in_action = false;
        }
    }
    sources.iter().all(|s| matches!(*s, "files" | "dns"))
}

/// One `/etc/passwd` line (bytes: a home directory need not be UTF-8):
/// the account, its uid and gid.
#[must_use]
pub fn passwd_line(line: &[u8]) -> Option<(Passwd, u32, u32)> {
    use std::os::unix::ffi::OsStrExt as _;
    let f = fields(line);
    let [name, _pw, uid, gid, _gecos, dir, _shell] = f.as_slice() else { return None };
    let name = account_name(name)?;
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir));
    Some((Passwd { name, dir }, number(uid)?, number(gid)?))
}

/// One `/etc/group` line: the group's name and gid.
#[must_use]
pub fn group_line(line: &[u8]) -> Option<(String, u32)> {
    let f = fields(line);
    let [name, _pw, gid, _members] = f.as_slice() else { return None };
    Some((account_name(name)?, number(gid)?))
}

/// A line's `:`-separated fields, without its line ending.
fn fields(line: &[u8]) -> Vec<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line).split(|&b| b == b':').collect()
}

/// A user or group name; not NIS's `+`/`-` entries or a comment.
fn account_name(name: &[u8]) -> Option<String> {
    (!name.is_empty() && !name.starts_with(b"+") && !name.starts_with(b"-") && !name.starts_with(b"#"))
        .then(|| String::from_utf8_lossy(name).into_owned())
}

/// A decimal uid or gid.
fn number(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// The addresses of `getent ahosts` output (`ADDR  STREAM name`, each
/// address once per socket type), in order, each once.
#[must_use]
pub fn ahosts(out: &str) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = Vec::new();
    for a in out.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()) {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    addrs
}

/// `getent DATABASE KEY`'s output, if it found the key.
fn getent(database: &str, key: &str) -> Option<Vec<u8>> {
    let bin = GETENT.iter().map(Path::new).find(|p| p.is_file())?;
    // An ignored SIGCHLD (inherited) would have the kernel reap getent
    // before it could be waited for: the default disposition meanwhile
    // (the policy is read before `run` starts any thread).
    // SAFETY: signal(2) with a valid signal and handler value.
    let was = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let out = Command::new(bin).args([database, "--", key]).stdin(Stdio::null()).stderr(Stdio::null()).output();
    if was == libc::SIG_IGN {
        // SAFETY: as above; the disposition it had.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    }
    let out = out.ok()?;
    out.status.success().then_some(out.stdout)
}

/// glibc's `getpwuid_r` (the dynamic build).
fn getpwuid(uid: u32) -> Option<Passwd> {
    use std::{ffi::CStr, os::unix::ffi::OsStrExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; all zeroes is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the
    // buffer's size; the strings it fills point into `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &raw mut pw, buf.as_mut_ptr().cast(), buf.len(), &raw mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir are NUL-terminated strings in
    // `buf`, which is alive here.
    let (name, dir) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
    Some(Passwd {
        name: name.to_string_lossy().into_owned(),
        dir: PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())),
    })
}

/// glibc's `getgrnam_r` (the dynamic build).
fn getgrnam(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::zeroed();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` is writable for
    // its length; getgrnam_r writes only into `grp` and `buf`.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), grp.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &raw mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getgrnam_r succeeded and `out` points at `grp`.
    Some(unsafe { grp.assume_init() }.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_and_group_lines() {
        use std::os::unix::ffi::OsStrExt as _;
        let (p, uid, gid) = passwd_line(b"alice:x:1000:100:Alice,,,:/home/alice:/bin/bash").expect("valid");
        assert_eq!((p.name.as_str(), p.dir.as_path(), uid, gid), ("alice", Path::new("/home/alice"), 1000, 100));
        // An LDAP account as `getent passwd` prints it: the same format.
        assert_eq!(passwd_line(b"bob:*:70001:70001::/nfs/bob:/bin/zsh\n").expect("valid").1, 70001);
        // A home that is not UTF-8 keeps its bytes.
        let (p, _, _) = passwd_line(b"eve:x:1001:1001::/home/\xe9ve:/bin/sh").expect("valid");
        assert_eq!(p.dir.as_os_str().as_bytes(), b"/home/\xe9ve");
        let bad: [&[u8]; 6] =
            [b"", b"alice:x:1000:100", b"alice:x:uid:100::/h:/s", b"+:::::::", b"+nis:x:1:1::/:/s", b":x:1:1::/:/s"];
        for line in bad {
            assert_eq!(passwd_line(line), None, "{line:?}");
        }
        assert_eq!(group_line(b"sbx:x:998:alice,bob"), Some(("sbx".to_owned(), 998)));
        assert_eq!(group_line(b"sbx:x:998:\r\n"), Some(("sbx".to_owned(), 998)));
        let bad: [&[u8]; 4] = [b"sbx:x:998", b"sbx:x:g:", b"+:::", b""];
        for line in bad {
            assert_eq!(group_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn only_files_and_dns_are_built_in() {
        assert!(hosts_built_in("passwd: files\nhosts:          files dns\n"));
        assert!(hosts_built_in("hosts: files [NOTFOUND=return] dns # comment mdns\n"));
        assert!(hosts_built_in("passwd: files systemd\n"), "no hosts line: glibc's default, files dns");
        assert!(hosts_built_in("#hosts: files mdns4\nhosts: dns\n"));
        assert!(!hosts_built_in("hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n"));
        assert!(!hosts_built_in("hosts: files resolve [!UNAVAIL=return] dns\n"));
    }

    #[test]
    fn reads_getent_ahosts_output() {
        let out = "198.18.0.7      STREAM db.test\n198.18.0.7      DGRAM  \n198.18.0.7      RAW    \nfd00::7         STREAM \n";
        assert_eq!(ahosts(out), ["198.18.0.7".parse::<IpAddr>().expect("ip"), "fd00::7".parse().expect("ip")]);
        assert!(ahosts("").is_empty());
    }

    #[test]
    fn glibc_and_the_static_builds_lookup_agree() {
        assert!(getpwuid(0).is_some(), "root has an entry");
        assert_eq!(user_without_nss(0), getpwuid(0));
        assert_eq!(gid_without_nss("root"), getgrnam("root"));
        // No entry anywhere: none from the files, none from getent.
        assert_eq!(user_without_nss(4_000_000_123), None);
        assert_eq!(gid_without_nss("no-such-group-sbx"), None);
        assert_eq!(gid_without_nss("--help"), None, "not an option to getent");
        // getent takes a number for a gid; a group named by a number is not it.
        assert_eq!(gid_without_nss("0"), None, "gid 0 is root's, not a group named 0");
    }
}
