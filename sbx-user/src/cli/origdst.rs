//! `sbx-user orig-dst`: the original destination of a redirected connection.

use std::{net::Ipv6Addr, path::PathBuf};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use clap::Args;
use sbx_common::{OrigDst, MAP_ORIGDST};

use super::GlobalArgs;
use crate::{cgroup::Cgroup, loader::pin_name_map};

/// Arguments of `orig-dst`.
#[derive(Debug, Args)]
#[command(after_long_help = "For proxies in transparent mode (proxy_mode = \"redirect\"): the kernel rewrote a \
sandboxed client's connect to the proxy. Given the client's source port (the peer port the proxy sees on the \
accepted connection), this prints the address the client asked for. A proxy can also read the pinned BPF hash \
map <bpffs>/sbx/<cgroup-id>/map_SBX_ORIGDST directly: key u32 client port (host byte order), value 16 bytes \
IPv6 address (IPv4 as ::ffff:a.b.c.d, network order) then u32 port (host order). Entries are evicted LRU.")]
pub struct OrigDstArgs {
    /// The sandbox cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// The client's local (source) port.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
}

/// Looks the port up and prints `ADDR:PORT`.
pub fn run(args: &OrigDstArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    super::require_root("orig-dst")?;
    let cg = Cgroup::open(&args.cgroup)?;
    let path = global.paths().pin_dir(cg.id).join(pin_name_map(MAP_ORIGDST));
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {}; is sbx attached to {}?", path.display(), cg.path.display()))?;
    let map: HashMap<MapData, u32, OrigDst> = HashMap::try_from(Map::from_map_data(data)?)?;
    let orig = map
        .get(&u32::from(args.port), 0)
        .with_context(|| format!("no redirected connection from local port {} in {}", args.port, cg.path.display()))?;
    let ip = Ipv6Addr::from(orig.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => println!("{v4}:{}", orig.port),
        None => println!("[{ip}]:{}", orig.port),
    }
    Ok(())
}
