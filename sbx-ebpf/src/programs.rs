//! Entry points and maps. Compiled only for the BPF target.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, map},
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use sbx_common::{
    PortTable, TrieAddr, TrieValue, IPPROTO_TCP, IPPROTO_UDP, MAX_SEGMENTS, VERDICT_ALLOW,
    VERDICT_DENY,
};

/// Destination policy for connect and sendmsg. Written by `sbx-user` when it
/// attaches (and never again for that program instance); read by the
/// connect4/6 and sendmsg4/6 programs. Max entries are set at load time.
#[map(name = "SBX_DEST")]
static SBX_DEST: LpmTrie<TrieAddr, TrieValue> = LpmTrie::with_max_entries(1, 0);

/// Local-address policy for bind. Written by `sbx-user` at attach; read by
/// bind4/6.
#[map(name = "SBX_BIND")]
static SBX_BIND: LpmTrie<TrieAddr, TrieValue> = LpmTrie::with_max_entries(1, 0);

/// Port tables named by both tries. Written by `sbx-user` at attach; read by
/// every program.
#[map(name = "SBX_PORTS")]
static SBX_PORTS: Array<PortTable> = Array::with_max_entries(1, 0);

/// Return value that lets the call proceed. The entry points return only
/// these two constants: a verdict computed in a helper and returned through
/// memory fails verification with "At program exit the register R0 has
/// smin=0 smax=4294967295 should have been in [0, 1]".
const PASS: i32 = 1;
/// Return value that makes the call fail with `EPERM`.
const REJECT: i32 = 0;

/// Which trie judges the address.
#[derive(Clone, Copy)]
enum Direction {
    Dest,
    Bind,
}

#[cgroup_sock_addr(connect4)]
fn sbx_connect4(ctx: SockAddrContext) -> i32 {
    match judge4(&ctx, Direction::Dest) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[cgroup_sock_addr(connect6)]
fn sbx_connect6(ctx: SockAddrContext) -> i32 {
    match judge6(&ctx, Direction::Dest) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[cgroup_sock_addr(sendmsg4)]
fn sbx_sendmsg4(ctx: SockAddrContext) -> i32 {
    match judge4(&ctx, Direction::Dest) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[cgroup_sock_addr(sendmsg6)]
fn sbx_sendmsg6(ctx: SockAddrContext) -> i32 {
    match judge6(&ctx, Direction::Dest) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[cgroup_sock_addr(bind4)]
fn sbx_bind4(ctx: SockAddrContext) -> i32 {
    match judge4(&ctx, Direction::Bind) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[cgroup_sock_addr(bind6)]
fn sbx_bind6(ctx: SockAddrContext) -> i32 {
    match judge6(&ctx, Direction::Bind) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

/// `socket()` for AF_INET/AF_INET6: only TCP stream and UDP datagram
/// sockets may be created. Raw, ICMP ping, SCTP, UDP-Lite, MPTCP and any
/// other inet socket has no sock_addr hook to judge its traffic, so it is
/// refused at creation (`EPERM`). Other families never reach this hook;
/// the seccomp filter of `sbx-user run` handles them.
#[cgroup_sock(sock_create)]
fn sbx_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock.cast_const();
    // SAFETY: field addresses of the context; the verifier checks reads.
    let (ty, proto) = unsafe {
        (ctx_u32(core::ptr::addr_of!((*sk).type_)), ctx_u32(core::ptr::addr_of!((*sk).protocol)))
    };
    match (ty, proto) {
        (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP) => PASS,
        _ => REJECT,
    }
}

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOL_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const SOL_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_RTHDR: i32 = 57;

/// `setsockopt()`: refuses the options that make packets travel somewhere
/// other than the address the connect/sendmsg hooks judged: IPv4 options
/// (loose/strict source routing) and IPv6 routing headers.
#[cgroup_sockopt(setsockopt)]
fn sbx_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt.cast_const();
    // SAFETY: as in `sbx_sock_create`; both fields are 4-byte ints.
    let (level, name) = unsafe { ((*so).level, (*so).optname) };
    match (level, name) {
        (SOL_IP, IP_OPTIONS) | (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR) => REJECT,
        _ => PASS,
    }
}

/// `ETH_P_IP` and `ETH_P_IPV6` as `__sk_buff.protocol` holds them (network
/// byte order in a u32).
const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Egress backstop: every packet the sandbox's sockets send, judged on the
/// destination in its header. It drops IPv4 packets with options and IPv6
/// packets with a routing header (source routing, also when set through a
/// `sendmsg` control message the setsockopt hook never sees), and judges
/// TCP SYNs and UDP datagrams by their real destination with the same maps
/// as connect. Replies (SYN-ACK, established traffic) are not judged again.
#[cgroup_skb(egress)]
fn sbx_egress(ctx: SkBuffContext) -> i32 {
    match egress(&ctx) {
        Ok(true) => PASS,
        Ok(false) | Err(()) => REJECT,
    }
}

#[inline(always)]
fn egress(ctx: &SkBuffContext) -> Result<bool, ()> {
    // SAFETY: reading a field of the context.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    if proto == ETH_P_IP_BE {
        let vihl: u8 = ctx.load(0).map_err(|_| ())?;
        if vihl & 0x0f != 5 {
            return Ok(false);
        }
        let l4: u8 = ctx.load(9).map_err(|_| ())?;
        // Fixed-size loads: `load_bytes` clamps its length to the packet,
        // which the verifier rejects ("R4 invalid zero-sized read").
        let v4: [u8; 4] = ctx.load(16).map_err(|_| ())?;
        return judge_packet(ctx, &mapped(v4), l4, 20);
    }
    if proto == ETH_P_IPV6_BE {
        let mut next: u8 = ctx.load(6).map_err(|_| ())?;
        let addr: [u8; 16] = ctx.load(24).map_err(|_| ())?;
        let mut off = 40usize;
        let mut i = 0;
        while i < 4 {
            if next == NEXTHDR_ROUTING {
                return Ok(false);
            }
            if next != NEXTHDR_HOP && next != NEXTHDR_DEST {
                break;
            }
            let hdr: [u8; 2] = ctx.load(off).map_err(|_| ())?;
            next = hdr[0];
            off += (usize::from(hdr[1]) + 1) * 8;
            i += 1;
        }
        if next == NEXTHDR_ROUTING || next == NEXTHDR_HOP || next == NEXTHDR_DEST {
            return Ok(false);
        }
        let addr = embedded_v4(&addr).map_or(addr, mapped);
        return judge_packet(ctx, &addr, next, off);
    }
    Ok(true)
}

#[inline(always)]
fn judge_packet(ctx: &SkBuffContext, addr: &TrieAddr, l4: u8, off: usize) -> Result<bool, ()> {
    let l4 = u32::from(l4);
    if l4 != IPPROTO_TCP && l4 != IPPROTO_UDP {
        // ICMP errors and the like; sock_create allows no socket that
        // sends other protocols.
        return Ok(true);
    }
    let port: u16 = u16::from_be(ctx.load(off + 2).map_err(|_| ())?);
    if l4 == IPPROTO_TCP {
        let flags: u8 = ctx.load(off + 13).map_err(|_| ())?;
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
            return Ok(true);
        }
    }
    decide(addr, port, l4, Direction::Dest)
}

/// Reads a 4-byte field of `bpf_sock_addr`.
///
/// The verifier only accepts full 4-byte loads of `user_ip4`, `user_ip6[i]`
/// and `user_port` from the sock_addr context ("invalid bpf_context access
/// off=24 size=2" for a narrower read of `user_port`), so every field goes
/// through one volatile u32 load the compiler cannot split or widen.
#[inline(always)]
fn ctx_u32(field: *const u32) -> u32 {
    // SAFETY: `field` points into the kernel-provided context, which is
    // valid for the whole program run; the verifier checks the access.
    unsafe { core::ptr::read_volatile(field) }
}

/// Destination (or local, for bind) port in host byte order.
///
/// The kernel stores the port in network byte order in the low 16 bits of
/// the `user_port` u32 (`bpf_sock_addr` in include/uapi/linux/bpf.h).
#[inline(always)]
fn port(sa: *const bpf_sock_addr) -> u16 {
    // SAFETY: computing a field address of the context, no dereference.
    let raw = ctx_u32(unsafe { core::ptr::addr_of!((*sa).user_port) });
    #[expect(clippy::cast_possible_truncation, reason = "port is the low 16 bits")]
    u16::from_be(raw as u16)
}

#[inline(always)]
fn protocol(sa: *const bpf_sock_addr) -> u32 {
    // SAFETY: as in `port`.
    ctx_u32(unsafe { core::ptr::addr_of!((*sa).protocol) })
}

#[inline(always)]
fn judge4(ctx: &SockAddrContext, dir: Direction) -> Result<bool, ()> {
    let sa = ctx.sock_addr.cast_const();
    // SAFETY: as in `port`. `user_ip4` is in network byte order, so its
    // in-memory bytes are the address octets in order.
    let ip = ctx_u32(unsafe { core::ptr::addr_of!((*sa).user_ip4) }).to_ne_bytes();
    let addr = mapped(ip);
    decide(&addr, port(sa), protocol(sa), dir)
}

#[inline(always)]
fn judge6(ctx: &SockAddrContext, dir: Direction) -> Result<bool, ()> {
    let sa = ctx.sock_addr.cast_const();
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: as in `port`; `i < 4` keeps the offset inside `user_ip6`.
        let word = ctx_u32(unsafe { core::ptr::addr_of!((*sa).user_ip6[i]) }).to_ne_bytes();
        addr[i * 4..i * 4 + 4].copy_from_slice(&word);
        i += 1;
    }
    let addr = embedded_v4(&addr).map_or(addr, mapped);
    decide(&addr, port(sa), protocol(sa), dir)
}

/// `::ffff:a.b.c.d`, the trie's encoding of an IPv4 address.
#[inline(always)]
fn mapped(v4: [u8; 4]) -> TrieAddr {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address
/// reaches, if it is one.
#[inline(always)]
fn embedded_v4(a: &TrieAddr) -> Option<[u8; 4]> {
    if a[0] == 0x00
        && a[1] == 0x64
        && a[2] == 0xff
        && a[3] == 0x9b
        && a[4..12] == [0u8; 8]
    {
        return Some([a[12], a[13], a[14], a[15]]);
    }
    if a[0] == 0x20 && a[1] == 0x02 {
        return Some([a[2], a[3], a[4], a[5]]);
    }
    None
}

#[inline(always)]
fn decide(addr: &TrieAddr, port: u16, proto: u32, dir: Direction) -> Result<bool, ()> {
    let key = Key::new(128, *addr);
    let entry = match dir {
        Direction::Dest => SBX_DEST.get(&key),
        Direction::Bind => SBX_BIND.get(&key),
    }
    .ok_or(())?;
    let table = SBX_PORTS.get(entry.table).ok_or(())?;
    let verdict = lookup_port(table, port, proto)?;
    Ok(verdict == VERDICT_ALLOW)
}

#[inline(always)]
fn lookup_port(table: &PortTable, port: u16, proto: u32) -> Result<u8, ()> {
    let mut tcp = table.default_tcp;
    let mut udp = table.default_udp;
    let len = table.len as usize;
    let mut i = 0;
    while i < MAX_SEGMENTS {
        if i >= len {
            break;
        }
        let seg = table.segments.get(i).ok_or(())?;
        if port >= seg.lo && port <= seg.hi {
            tcp = seg.tcp;
            udp = seg.udp;
            break;
        }
        i += 1;
    }
    match proto {
        IPPROTO_TCP => Ok(tcp),
        IPPROTO_UDP => Ok(udp),
        _ => Ok(VERDICT_DENY),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// License section the kernel reads; GPL-compatible so GPL-only helpers stay
/// available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
