//! `sbx-user orig-dst`: the original destination of a redirected connection.

use std::{net::Ipv6Addr, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use sbx_common::{OrigDst, OrigKey, MAP_ORIGDST};

use super::GlobalArgs;
use crate::cgroup::Cgroup;

// Arguments of `orig-dst`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
#[command(after_long_help = "For proxies in transparent mode (proxy_mode = \"redirect\"): the kernel rewrote a \
sandboxed client's connect to the proxy. Given the client's source port (the peer port the proxy sees on the \
accepted connection), this prints the address the client asked for. A proxy can also read the pinned BPF hash \
map <bpffs>/sbx/set-<id>/map_SBX_ORIGDST directly (one map for the host): key 16 bytes = u64 network namespace \
cookie (getsockopt SO_NETNS_COOKIE on the proxy's own socket, host byte order) then u32 client port (host \
order) then 4 zero bytes; value 16 bytes IPv6 address (IPv4 as ::ffff:a.b.c.d, network order) then u32 port \
(host order). The namespace is part of the key because client ports of different network namespaces (pods) \
can be equal. Entries are evicted LRU.")]
pub struct OrigDstArgs {
    /// The sandbox cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// The client's local (source) port.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// Network namespace cookie of the client and proxy (default: this
    /// process's namespace).
    #[arg(long, value_name = "COOKIE")]
    pub netns_cookie: Option<u64>,
}

/// The `SO_NETNS_COOKIE` of this process's network namespace.
fn own_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).expect("8");
    // SAFETY: getsockopt(2) into a u64 with its length.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Looks the port up and prints `ADDR:PORT`.
pub fn run(args: &OrigDstArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("orig-dst")?;
    let paths = global.paths();
    let cg = Cgroup::open(&args.cgroup)?;
    let pin_dir = paths.pin_dir(cg.id);
    let set = crate::loader::open_holder(&paths, &pin_dir)?.with_context(|| {
        format!("sbx is not attached to {} by a program set (no pins in {})", cg.path.display(), pin_dir.display())
    })?;
    let netns_cookie = match args.netns_cookie {
        Some(c) => c,
        None => own_netns_cookie()
            .context("reading this process's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+)")?,
    };
    let key = OrigKey { netns_cookie, port: u32::from(args.port), _pad: 0 };
    let mut value = [0u8; std::mem::size_of::<OrigDst>()];
    crate::sys::map_lookup(set.map(MAP_ORIGDST), crate::sys::bytes_of(&key), &mut value)
        .with_context(|| format!("no redirected connection from local port {} in this network namespace", args.port))?;
    let orig: OrigDst = crate::sys::from_bytes(&value);
    let ip = Ipv6Addr::from(orig.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => println!("{v4}:{}", orig.port),
        None => println!("[{ip}]:{}", orig.port),
    }
    Ok(())
}
