//! `verify`: prove a sandbox is enforcing rather than trust that the attach
//! worked. Two kinds of check:
//!
//! 1. The kernel's own answer: for every hook, the program attached to the
//!    cgroup is an sbx program, and it is the one sbx's pinned link runs.
//! 2. Behaviour: a short-lived process inside the cgroup connects and sends
//!    to a target the policy must refuse (the sentinel
//!    [`VERIFY_SENTINEL`](crate::compile::VERIFY_SENTINEL), on loopback,
//!    with a real listener behind it) and to a loopback target the policy
//!    allows, and must see `EPERM` exactly where the policy says.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    process::Command,
};

use serde::Serialize;

use crate::{
    cgroup::Cgroup,
    compile::{Hook, VERIFY_SENTINEL},
    loader::{self, HOOKS},
    policy::{Loopback, Mode},
    state::{Paths, Record},
    sys,
};

/// One check and its outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub result: &'static str,
    /// What was seen.
    pub detail: String,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), result: if ok { "pass" } else { "fail" }, detail: detail.into() }
}

/// Runs every check against the sandbox at `cg`, whose record (if any)
/// says what its policy allows.
#[must_use]
pub fn verify(cg: &Cgroup, record: Option<&Record>, paths: &Paths) -> Vec<Check> {
    let policy = record.map(|r| &r.policy);
    let mut out = Vec::new();
    let pin_dir = paths.pin_dir(cg.id);
    match loader::query(cg) {
        Err(e) => out.push(check("kernel query", false, e.to_string())),
        Ok(attached) => {
            let redirect = policy.is_some_and(|p| p.redirect);
            for ((prog, ty, hook), (_, names)) in HOOKS.iter().zip(&attached) {
                if !loader::hooks_for(redirect).any(|h| h.1 == *ty) {
                    continue;
                }
                let pinned =
                    sys::obj_get(&pin_dir.join(format!("link_{prog}"))).and_then(|fd| sys::link_prog_id(fd.as_fd()));
                let ids = cg.dir_fd().ok().and_then(|d| {
                    let ty = HOOKS.iter().find(|h| h.2 == *hook).map(|h| h.1)?;
                    sys::prog_query(d.as_fd(), ty, 0).ok()
                });
                let ok = names.iter().any(|n| n == prog)
                    && matches!((&pinned, &ids), (Ok(id), Some(ids)) if ids.contains(id));
                let detail = format!(
                    "kernel reports {}; pinned link runs {}",
                    if names.is_empty() { "nothing".to_owned() } else { names.join(", ") },
                    pinned.as_ref().map_or_else(|e| format!("? ({e})"), |id| format!("program id {id}"))
                );
                out.push(check(format!("{hook} attached"), ok, detail));
            }
        }
    }
    // With every sandbox running the same programs, the links alone do not
    // say which policy holds: the slot the programs read must name this
    // sandbox and a written policy.
    let holder = loader::holder_of(paths, cg.id);
    let written = matches!(holder, loader::Holder::Set { policy: Some(p), .. } if p != 0);
    if let Some(stale) = record.and_then(|r| loader::stale_record(&holder, r.generation)) {
        out.push(check("record", false, stale));
    }
    out.push(match holder {
        loader::Holder::Legacy => check("policy", true, "its own programs and maps (an older sbx)"),
        h => check("policy slot", written, h.to_string()),
    });
    if let Some(p) = policy {
        if p.mode == Mode::Audit {
            out.push(check("mode", false, "the sandbox is in audit mode: denials are reported, not enforced"));
            return out;
        }
    }
    out.extend(probes(cg, record));
    out
}

fn probes(cg: &Cgroup, record: Option<&Record>) -> Vec<Check> {
    let policy = record.map(|r| &r.policy);
    let mut out = Vec::new();
    // A listener on the sentinel: without enforcement the probe would
    // connect; with it, the probe must get EPERM.
    let denied = match TcpListener::bind((VERIFY_SENTINEL, 0)) {
        Ok(l) => l,
        Err(e) => return vec![check("set up denied target", false, e.to_string())],
    };
    let dport = denied.local_addr().map_or(0, |a| a.port());
    let udp = UdpSocket::bind((VERIFY_SENTINEL, 0)).ok();
    let uport = udp.as_ref().and_then(|u| u.local_addr().ok()).map_or(dport, |a| a.port());
    let cases = [
        ("denied tcp connect (connect4)", format!("tcp {VERIFY_SENTINEL}:{dport}"), "EPERM"),
        ("denied v4-mapped connect (connect6)", format!("tcp6 [::ffff:{VERIFY_SENTINEL}]:{dport}"), "EPERM"),
        ("denied udp sendto (sendmsg4)", format!("udp {VERIFY_SENTINEL}:{uport}"), "EPERM"),
    ];
    for (name, target, want) in cases {
        let got = probe_in(cg, &target);
        out.push(match got {
            Ok(g) => check(name, g == want, format!("{target}: got {g}, want {want}")),
            Err(e) => check(name, false, format!("probe failed: {e}")),
        });
    }
    // An allowed loopback target, if the policy allows any loopback port
    // (loopback rules and dns = "pinned" may refuse some the setting allows).
    let provenance = record.and_then(Record::provenance);
    let allows = |port: u16| {
        provenance.is_none_or(|p| {
            p.decide(Hook::Destination, Ipv4Addr::LOCALHOST.into(), port, true).verdict == sbx_common::VERDICT_ALLOW
        })
    };
    let port_of = |l: &TcpListener| l.local_addr().map_or(0, |a: SocketAddr| a.port());
    let allowed = match policy.map(|p| &p.loopback) {
        None => None,
        Some(Loopback::None) => {
            out.push(Check {
                name: "allowed tcp connect".into(),
                result: "skip",
                detail: "the policy allows no loopback port".into(),
            });
            None
        }
        Some(Loopback::Any) => {
            (0..16).find_map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok().filter(|l| allows(port_of(l))))
        }
        Some(Loopback::Ports(ranges)) => ranges
            .iter()
            .flat_map(|r| r.lo..=r.hi)
            .filter(|&port| allows(port))
            .take(64)
            .find_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok()),
    };
    if let Some(l) = allowed {
        let port = port_of(&l);
        let target = format!("tcp 127.0.0.1:{port}");
        out.push(match probe_in(cg, &target) {
            Ok(g) => check("allowed tcp connect", g == "ok", format!("{target}: got {g}, want ok")),
            Err(e) => check("allowed tcp connect", false, format!("probe failed: {e}")),
        });
    }
    drop(denied);
    out
}

/// Runs `sbx-user __probe TARGET` inside the cgroup and returns its answer.
fn probe_in(cg: &Cgroup, target: &str) -> io::Result<String> {
    let exe = std::env::current_exe()?;
    let procs = std::fs::OpenOptions::new().write(true).open(cg.procs_path())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let mut cmd = Command::new(exe);
    cmd.arg("__probe").args(target.split(' '));
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The probe side: `__probe tcp|tcp6|udp ADDR:PORT`, prints `ok` or the
/// errno name. Runs inside the sandbox cgroup.
#[must_use]
pub fn probe_main(args: &[String]) -> i32 {
    use std::net::{TcpStream, ToSocketAddrs};
    let (Some(kind), Some(target)) = (args.first(), args.get(1)) else {
        eprintln!("usage: sbx-user __probe tcp|tcp6|udp ADDR:PORT");
        return 2;
    };
    let Some(addr) = target.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        eprintln!("bad address {target}");
        return 2;
    };
    let result = match kind.as_str() {
        "tcp" | "tcp6" => TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).map(drop),
        "udp" => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| s.send_to(b"sbx-verify", addr)).map(drop),
        _ => {
            eprintln!("unknown probe {kind}");
            return 2;
        }
    };
    match result {
        Ok(()) => println!("ok"),
        Err(e) => println!("{}", errno_name(e.raw_os_error().unwrap_or(0))),
    }
    0
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        n => format!("errno {n}"),
    }
}
