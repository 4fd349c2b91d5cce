//! Entry points and maps. Compiled only for the BPF target.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, map, sock_ops},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext},
    EbpfContext as _,
};
use sbx_common::{
    counter_index, Config, Event, OrigDst, PortTable, RateState, TrieAddr, TrieValue, COUNTER_EVENTS_DROPPED,
    EVENT_AUDIT, EVENT_DENIED, EVENT_PORT_SOURCE_ROUTE, EVENT_REDIRECTED, FLAG_AUDIT, FLAG_REDIRECT, IPPROTO_TCP,
    IPPROTO_UDP, MAX_SEGMENTS, NUM_COUNTERS, VERDICT_ALLOW, VERDICT_DENY,
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

/// Sandbox settings (audit flag, policy generation, event rate). Written by
/// `sbx-user` before attach; read by every program.
#[map(name = "SBX_CONFIG")]
static SBX_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Deny events for `sbx-user events`/`run --log-denials`. Written by every
/// program (rate-limited); read by `sbx-user`. Size set at load time.
#[map(name = "SBX_EVENTS")]
static SBX_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Allowed/denied counts per hook and dropped events, per CPU. Written by
/// every program; summed by `sbx-user status`.
#[map(name = "SBX_COUNTERS")]
static SBX_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// Token buckets of the event rate limiter, per CPU. Programs only.
#[map(name = "SBX_RATE")]
static SBX_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);

/// Original destinations of redirected connects, by socket cookie. Written
/// by connect4/6 when they redirect; read by `sbx_sockops`.
#[map(name = "SBX_REDIRECTED")]
static SBX_REDIRECTED: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(4096, 0);

/// Original destinations by the client's local port, for the proxy.
/// Written by `sbx_sockops`; read by proxies and `sbx-user orig-dst`.
#[map(name = "SBX_ORIGDST")]
static SBX_ORIGDST: LruHashMap<u32, OrigDst> = LruHashMap::with_max_entries(4096, 0);

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: the SYN is about to be sent, the local
/// port is chosen.
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// Moves the original destination of a redirected connection from its
/// socket cookie (all the connect hook knows) to its local port (what the
/// proxy sees as the peer port).
#[sock_ops]
fn sbx_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: the helper takes the context pointer.
        let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: a map value pointer valid for this program run.
        if let Some(orig) = unsafe { SBX_REDIRECTED.get(&cookie) } {
            let orig = *orig;
            let _ = SBX_ORIGDST.insert(&ctx.local_port(), &orig, 0);
            let _ = SBX_REDIRECTED.remove(&cookie);
        }
    }
    1
}

/// Hook numbers, as in `sbx_common::HOOK_NAMES`.
const HOOK_CONNECT4: u32 = 0;
const HOOK_CONNECT6: u32 = 1;
const HOOK_SENDMSG4: u32 = 2;
const HOOK_SENDMSG6: u32 = 3;
const HOOK_BIND4: u32 = 4;
const HOOK_BIND6: u32 = 5;
const HOOK_SOCK_CREATE: u32 = 6;
const HOOK_SETSOCKOPT: u32 = 7;
const HOOK_EGRESS: u32 = 8;

/// Whether the caller's context can name a task (not the egress hook,
/// which may run in softirq context).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Current,
    Unknown,
}

/// Counts a decision and, for a denial, reports it. Returns whether the
/// call may proceed: an allow, or a denial in audit mode.
#[inline(always)]
fn settle(allowed: bool, hook: u32, protocol: u32, addr: &TrieAddr, port: u32, task: Task, redirecting: bool) -> bool {
    bump(counter_index(hook, u32::from(!allowed)));
    if allowed {
        return true;
    }
    let (audit, generation) = match SBX_CONFIG.get(0) {
        Some(c) => (c.flags & FLAG_AUDIT != 0, c.generation),
        None => (false, 0),
    };
    let verdict = if audit {
        EVENT_AUDIT
    } else if redirecting {
        EVENT_REDIRECTED
    } else {
        EVENT_DENIED
    };
    if take_token() {
        if let Some(mut entry) = SBX_EVENTS.reserve::<Event>(0) {
            // SAFETY: the helpers have no preconditions here.
            let (ts_ns, pid_tgid, cgroup_id, comm) = unsafe {
                let now = bpf_ktime_get_ns();
                if task == Task::Current {
                    (
                        now,
                        bpf_get_current_pid_tgid(),
                        bpf_get_current_cgroup_id(),
                        bpf_get_current_comm().unwrap_or([0; 16]),
                    )
                } else {
                    (now, 0, 0, [0u8; 16])
                }
            };
            #[expect(clippy::cast_possible_truncation, reason = "pid_tgid packs two u32s")]
            entry.write(Event {
                ts_ns,
                cgroup_id,
                pid: (pid_tgid >> 32) as u32,
                tid: pid_tgid as u32,
                comm: comm.map(|c| c as u8),
                hook,
                protocol,
                addr: *addr,
                port,
                verdict,
                generation,
                _pad: 0,
            });
            entry.submit(0);
        } else {
            bump(COUNTER_EVENTS_DROPPED);
        }
    } else {
        bump(COUNTER_EVENTS_DROPPED);
    }
    audit
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = SBX_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs on this CPU do not run
        // concurrently with each other for the same slot.
        unsafe { *c += 1 };
    }
}

/// One event costs this many tokens; the bucket holds `burst * SCALE`.
const SCALE: u64 = 1_000_000_000;

/// Per-CPU token bucket: refills `events_per_sec` per second up to
/// `events_burst`, so a flood of denials cannot flood the host.
#[inline(always)]
fn take_token() -> bool {
    let (rate, burst) = match SBX_CONFIG.get(0) {
        Some(c) => (u64::from(c.events_per_sec), u64::from(c.events_burst)),
        None => return false,
    };
    let Some(state) = SBX_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without preconditions; `state` is this CPU's slot.
    unsafe {
        let now = bpf_ktime_get_ns();
        let elapsed = now.saturating_sub((*state).last_ns);
        let cap = burst * SCALE;
        // elapsed (ns) * rate (events/s) = tokens scaled by 10^9.
        let refill = if elapsed >= SCALE { cap } else { elapsed * rate };
        let tokens = (*state).tokens.saturating_add(refill).min(cap);
        (*state).last_ns = now;
        if tokens >= SCALE {
            (*state).tokens = tokens - SCALE;
            true
        } else {
            (*state).tokens = tokens;
            false
        }
    }
}

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
    let target = redirect_target(&ctx, false);
    if judge4(&ctx, Direction::Dest, HOOK_CONNECT4, target.is_some())
        || target.is_some_and(|t| redirect(&ctx, &t, false))
    {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(connect6)]
fn sbx_connect6(ctx: SockAddrContext) -> i32 {
    let target = redirect_target(&ctx, true);
    if judge6(&ctx, Direction::Dest, HOOK_CONNECT6, target.is_some())
        || target.is_some_and(|t| redirect(&ctx, &t, true))
    {
        PASS
    } else {
        REJECT
    }
}

/// Where a denied connect would be redirected, if transparent proxy mode
/// applies to it: TCP, to a non-local destination, and (for an IPv4
/// socket) an IPv4 proxy. `(proxy address, proxy port, original address)`.
#[inline(always)]
fn redirect_target(ctx: &SockAddrContext, v6: bool) -> Option<([u8; 16], u32, TrieAddr)> {
    let cfg = SBX_CONFIG.get(0)?;
    if cfg.flags & FLAG_REDIRECT == 0 {
        return None;
    }
    let sa = ctx.sock_addr;
    if protocol(sa) != IPPROTO_TCP {
        return None;
    }
    let orig = if v6 { user_ip6(sa) } else { mapped(user_ip4(sa)) };
    let is_v4 = orig[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let local = (is_v4 && (orig[12] == 127 || orig[12] == 0))
        || orig == [0; 16]
        || orig == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let proxy_is_v4 = cfg.proxy_addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if local || (!v6 && !proxy_is_v4) {
        return None;
    }
    Some((cfg.proxy_addr, cfg.proxy_port, orig))
}

/// Rewrites a denied connect to the proxy and records its original
/// destination under the socket cookie. Returns whether it redirected.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, target: &([u8; 16], u32, TrieAddr), v6: bool) -> bool {
    let (proxy, proxy_port, orig) = *target;
    let sa = ctx.sock_addr;
    // SAFETY: the helper takes the context pointer.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    let value = OrigDst { addr: orig, port: u32::from(port(sa)) };
    if SBX_REDIRECTED.insert(&cookie, &value, 0).is_err() {
        return false;
    }
    #[expect(clippy::cast_possible_truncation, reason = "ports are 16-bit")]
    let net_port = u32::from((proxy_port as u16).to_be());
    // SAFETY: writing the destination fields a connect hook may rewrite;
    // the verifier checks the accesses are 4-byte stores.
    unsafe {
        if v6 {
            let mut i = 0;
            while i < 4 {
                let w = u32::from_ne_bytes([proxy[i * 4], proxy[i * 4 + 1], proxy[i * 4 + 2], proxy[i * 4 + 3]]);
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[i]), w);
                i += 1;
            }
        } else {
            let w = u32::from_ne_bytes([proxy[12], proxy[13], proxy[14], proxy[15]]);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip4), w);
        }
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_port), net_port);
    }
    true
}

#[cgroup_sock_addr(sendmsg4)]
fn sbx_sendmsg4(ctx: SockAddrContext) -> i32 {
    if judge4(&ctx, Direction::Dest, HOOK_SENDMSG4, false) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(sendmsg6)]
fn sbx_sendmsg6(ctx: SockAddrContext) -> i32 {
    if judge6(&ctx, Direction::Dest, HOOK_SENDMSG6, false) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(bind4)]
fn sbx_bind4(ctx: SockAddrContext) -> i32 {
    if judge4(&ctx, Direction::Bind, HOOK_BIND4, false) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(bind6)]
fn sbx_bind6(ctx: SockAddrContext) -> i32 {
    if judge6(&ctx, Direction::Bind, HOOK_BIND6, false) {
        PASS
    } else {
        REJECT
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
    let (ty, proto) =
        unsafe { (ctx_u32(core::ptr::addr_of!((*sk).type_)), ctx_u32(core::ptr::addr_of!((*sk).protocol))) };
    let allowed = matches!((ty, proto), (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP));
    if settle(allowed, HOOK_SOCK_CREATE, proto, &[0; 16], ty, Task::Current, false) {
        PASS
    } else {
        REJECT
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
    let refused = matches!((level, name), (SOL_IP, IP_OPTIONS) | (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR));
    #[expect(clippy::cast_sign_loss, reason = "reported as raw numbers")]
    let (level, name) = (level as u32, name as u32);
    if settle(!refused, HOOK_SETSOCKOPT, level, &[0; 16], name, Task::Current, false) {
        PASS
    } else {
        REJECT
    }
}

/// `ETH_P_IP` and `ETH_P_IPV6` as `__sk_buff.protocol` holds them (network
/// byte order in a u32).
const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
const IPPROTO_ESP: u32 = 50;
const IPPROTO_AH: u32 = 51;
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
    if egress(&ctx) {
        PASS
    } else {
        REJECT
    }
}

#[inline(always)]
fn egress(ctx: &SkBuffContext) -> bool {
    // Ordered for the common case: most packets are TCP segments after the
    // SYN, which need the header length, protocol and flags only.
    // SAFETY: reading a field of the context.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    let v6 = if proto == ETH_P_IP_BE {
        false
    } else if proto == ETH_P_IPV6_BE {
        true
    } else {
        return true;
    };
    let Ok((l4, off)) = (if v6 { l4_v6(ctx) } else { l4_v4(ctx) }) else {
        return conclude(Err(()), HOOK_EGRESS, 0, &[0; 16], 0, Task::Unknown);
    };
    let l4 = u32::from(l4);
    let dest = |ctx: &SkBuffContext| if v6 { dest_v6(ctx) } else { dest_v4(ctx) };
    let Some(off) = off else {
        // Source routing: refused whatever the destination.
        let addr = dest(ctx).unwrap_or([0; 16]);
        return conclude(Ok(false), HOOK_EGRESS, l4, &addr, EVENT_PORT_SOURCE_ROUTE, Task::Unknown);
    };
    if l4 == IPPROTO_TCP {
        match ctx.load::<u8>(off + 13) {
            Ok(flags) if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN => return true,
            Ok(_) => {}
            Err(_) => return conclude(Err(()), HOOK_EGRESS, l4, &[0; 16], 0, Task::Unknown),
        }
    } else if l4 != IPPROTO_UDP {
        // sock_create lets no socket of another protocol be made, but a
        // process that held one before `attach` still could. The kernel's
        // own ICMP and NDP replies carry no sandbox socket and never reach
        // this hook. IPsec (ESP, AH) wraps traffic the hooks already judged.
        if l4 == IPPROTO_ESP || l4 == IPPROTO_AH {
            return true;
        }
        let addr = dest(ctx).unwrap_or([0; 16]);
        return conclude(Ok(false), HOOK_EGRESS, l4, &addr, 0, Task::Unknown);
    }
    // In audit mode the connect and sendmsg hooks have already reported
    // every would-be denial; judging the same packets again here would
    // report each twice.
    if SBX_CONFIG.get(0).is_some_and(|c| c.flags & FLAG_AUDIT != 0) {
        return true;
    }
    let (Ok(addr), Ok(port)) = (dest(ctx), ctx.load::<u16>(off + 2).map(u16::from_be)) else {
        return conclude(Err(()), HOOK_EGRESS, l4, &[0; 16], 0, Task::Unknown);
    };
    conclude(decide(&addr, port, l4, Direction::Dest), HOOK_EGRESS, l4, &addr, u32::from(port), Task::Unknown)
}

/// L4 protocol and offset of an IPv4 packet; `None` offset when the header
/// carries options, which may route the packet elsewhere.
#[inline(always)]
fn l4_v4(ctx: &SkBuffContext) -> Result<(u8, Option<usize>), ()> {
    let vihl: u8 = ctx.load(0).map_err(|_| ())?;
    let l4: u8 = ctx.load(9).map_err(|_| ())?;
    Ok((l4, (vihl & 0x0f == 5).then_some(20)))
}

/// As [`l4_v4`] for IPv6: hop-by-hop and destination options headers are
/// skipped (at most four); `None` when a routing header is present or the
/// chain is deeper than any real sender uses.
#[inline(always)]
fn l4_v6(ctx: &SkBuffContext) -> Result<(u8, Option<usize>), ()> {
    let mut next: u8 = ctx.load(6).map_err(|_| ())?;
    let mut off = 40usize;
    let mut i = 0;
    while i < 4 {
        if next == NEXTHDR_ROUTING {
            return Ok((next, None));
        }
        if next != NEXTHDR_HOP && next != NEXTHDR_DEST {
            return Ok((next, Some(off)));
        }
        let hdr: [u8; 2] = ctx.load(off).map_err(|_| ())?;
        next = hdr[0];
        off += (usize::from(hdr[1]) + 1) * 8;
        i += 1;
    }
    Ok((next, None))
}

/// The destination of an IPv4 packet, as the trie keys it.
#[inline(always)]
fn dest_v4(ctx: &SkBuffContext) -> Result<TrieAddr, ()> {
    // Fixed-size loads: `load_bytes` clamps its length to the packet,
    // which the verifier rejects ("R4 invalid zero-sized read").
    let v4: [u8; 4] = ctx.load(16).map_err(|_| ())?;
    Ok(mapped(v4))
}

/// The destination of an IPv6 packet, embedded IPv4 forms as IPv4.
#[inline(always)]
fn dest_v6(ctx: &SkBuffContext) -> Result<TrieAddr, ()> {
    let addr: [u8; 16] = ctx.load(24).map_err(|_| ())?;
    Ok(embedded_v4(&addr).map_or(addr, mapped))
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

/// `user_ip4` as address octets. The field is in network byte order, so
/// its in-memory bytes are the octets in order.
#[inline(always)]
fn user_ip4(sa: *const bpf_sock_addr) -> [u8; 4] {
    // SAFETY: as in `port`.
    ctx_u32(unsafe { core::ptr::addr_of!((*sa).user_ip4) }).to_ne_bytes()
}

/// `user_ip6` as address bytes, read word by word (see [`ctx_u32`]).
#[inline(always)]
fn user_ip6(sa: *const bpf_sock_addr) -> TrieAddr {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: as in `port`; `i < 4` keeps the offset inside `user_ip6`.
        let word = ctx_u32(unsafe { core::ptr::addr_of!((*sa).user_ip6[i]) }).to_ne_bytes();
        addr[i * 4..i * 4 + 4].copy_from_slice(&word);
        i += 1;
    }
    addr
}

#[inline(always)]
fn protocol(sa: *const bpf_sock_addr) -> u32 {
    // SAFETY: as in `port`.
    ctx_u32(unsafe { core::ptr::addr_of!((*sa).protocol) })
}

#[inline(always)]
fn judge4(ctx: &SockAddrContext, dir: Direction, hook: u32, redirecting: bool) -> bool {
    let sa = ctx.sock_addr.cast_const();
    let addr = mapped(user_ip4(sa));
    let (port, proto) = (port(sa), protocol(sa));
    conclude_r(decide(&addr, port, proto, dir), hook, proto, &addr, u32::from(port), Task::Current, redirecting)
}

#[inline(always)]
fn judge6(ctx: &SockAddrContext, dir: Direction, hook: u32, redirecting: bool) -> bool {
    let sa = ctx.sock_addr.cast_const();
    let mut addr = user_ip6(sa);
    let (port, proto) = (port(sa), protocol(sa));
    let verdict = match embedded_v4(&addr) {
        // A NAT64/6to4 form of a local address leaves the host; it is
        // not loopback, and it is nothing a policy can name. Refuse it.
        Some(v4) if v4[0] == 127 || v4[0] == 0 => Ok(false),
        Some(v4) => {
            addr = mapped(v4);
            decide(&addr, port, proto, dir)
        }
        None => decide(&addr, port, proto, dir),
    };
    conclude_r(verdict, hook, proto, &addr, u32::from(port), Task::Current, redirecting)
}

/// Turns a decision into the program's answer, counting and reporting it.
/// An internal error rejects, in audit mode too.
#[inline(always)]
fn conclude(verdict: Result<bool, ()>, hook: u32, proto: u32, addr: &TrieAddr, port: u32, task: Task) -> bool {
    conclude_r(verdict, hook, proto, addr, port, task, false)
}

/// As [`conclude`]; `redirecting` marks a denial the caller will turn into
/// a redirect to the proxy.
#[inline(always)]
fn conclude_r(
    verdict: Result<bool, ()>,
    hook: u32,
    proto: u32,
    addr: &TrieAddr,
    port: u32,
    task: Task,
    redirecting: bool,
) -> bool {
    match verdict {
        Ok(allowed) => settle(allowed, hook, proto, addr, port, task, redirecting),
        Err(()) => {
            settle(false, hook, proto, addr, port, task, false);
            false
        }
    }
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
    if a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4..12] == [0u8; 8] {
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
