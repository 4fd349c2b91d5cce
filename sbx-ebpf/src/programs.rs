//! Entry points and maps. Compiled only for the BPF target.
//!
//! One loaded copy of these programs serves every sandbox on the host.
//! Each program run starts by reading the [`Slot`] of the cgroup it is
//! attached to (cgroup storage follows the attach point, not the calling
//! task: a descendant cgroup, a socket whose task moved, and each layer of
//! nested sandboxes all get the right sandbox), then looks the decision up
//! in that slot's policy maps.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    btf_maps::{Array, ArrayOfMaps, LpmTrie, LruHashMap, RingBuf},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_local_storage, bpf_get_netns_cookie,
        bpf_ktime_get_ns,
    },
    macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, sock_ops},
    maps::lpm_trie::Key,
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext},
    EbpfContext as _,
};
use sbx_common::{
    addr::{self, mapped},
    counter_index, rule_key, Connects, Event, OrigDst, OrigKey, PortSegment, RecentVerdict, RuleKey, Slot, Stats,
    TrieAddr, TrieValue, CONNECTS_ENTRIES, COUNTER_EVENTS_DROPPED, DEFAULT_TCP, DEFAULT_UDP, EVENT_AUDIT, EVENT_DENIED,
    EVENT_PORT_SOURCE_ROUTE, EVENT_REDIRECTED, EVENT_SLOTS, FLAG_AUDIT, FLAG_REDIRECT, HOST_RULES, IPPROTO_TCP,
    IPPROTO_UDP, MAX_SEGMENTS, NUM_COUNTERS, POLICY_SLOTS, RECENT_CONNECTS, RECENT_V6, RECENT_VERDICTS, RULE_BIND,
    RULE_DEST, RULE_PREFIX, SEGMENTS, VERDICT_ALLOW, VERDICT_DENY,
};

/// `BPF_MAP_TYPE_CGROUP_STORAGE`.
const CGROUP_STORAGE: usize = 19;
/// `BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE`.
const PERCPU_CGROUP_STORAGE: usize = 21;

/// A cgroup storage map keyed by the cgroup id alone (`__u64`), which the
/// kernel shares between the programs of every attach type on one cgroup
/// (since Linux 5.9). aya-ebpf's `CgroupStorage` keys by
/// `bpf_cgroup_storage_key` (cgroup id and attach type), which would give
/// each hook a cell of its own; this BTF definition has the same layout as
/// aya-ebpf's with the narrower key. `TYPE` is the map type.
#[repr(C)]
struct SharedCgroupStorage<V, const TYPE: usize> {
    r#type: *const [i32; TYPE],
    key: *const u64,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; 0],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing
// dereferences them.
unsafe impl<V, const TYPE: usize> Sync for SharedCgroupStorage<V, TYPE> {}

impl<V, const TYPE: usize> SharedCgroupStorage<V, TYPE> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The attach point's cell (this CPU's, for the per-CPU type). The
    /// kernel allocates it when the program is linked to the cgroup, so the
    /// helper never fails for a linked program.
    #[inline(always)]
    fn get(&self) -> *mut V {
        // SAFETY: `self` is a map definition the loader relocated; the
        // flags argument must be zero.
        unsafe { bpf_get_local_storage(core::ptr::from_ref(self).cast_mut().cast(), 0) }.cast()
    }
}

/// Which sandbox, which policy. Written by `sbx-user` (one update per
/// attach or policy change); read first by every program.
#[btf_map(name = "SBX_SLOT")]
static SBX_SLOT: SharedCgroupStorage<Slot, CGROUP_STORAGE> = SharedCgroupStorage::new();

/// Per-CPU counters and event token bucket of each sandbox. Written by the
/// programs; summed by `sbx-user status`.
#[btf_map(name = "SBX_STATS")]
static SBX_STATS: SharedCgroupStorage<Stats, PERCPU_CGROUP_STORAGE> = SharedCgroupStorage::new();

/// Every policy of the host: destination entries (connect, sendmsg,
/// egress) and bind entries, keyed by policy index and kind
/// ([`sbx_common::rule_key`]). Written by `sbx-user` before the index is
/// put in a slot; read by the programs.
#[btf_map(name = "SBX_RULES")]
static SBX_RULES: LpmTrie<RuleKey, TrieValue, { HOST_RULES as usize }> = LpmTrie::new();

/// The host's port ranges; a [`TrieValue`] names a run of them.
#[btf_map(name = "SBX_SEGMENTS")]
static SBX_SEGMENTS: Array<PortSegment, { SEGMENTS as usize }> = Array::new();

/// What each policy index holds. `sbx-user` only (under the host lock); in
/// the object so that it is pinned with the set.
#[btf_map(name = "SBX_POLICIES")]
static SBX_POLICIES: Array<sbx_common::PolicyMeta, { POLICY_SLOTS as usize }> = Array::new();

/// Per-sandbox event ring buffers, by `Slot::events`. Created by
/// `sbx-user` for sandboxes whose events are read on their own.
#[btf_map(name = "SBX_EVENTS_OF")]
static SBX_EVENTS_OF: ArrayOfMaps<RingBuf<Event, 4096>, { EVENT_SLOTS as usize }> = ArrayOfMaps::new();

/// The host's event ring buffer: events of sandboxes without their own.
#[btf_map(name = "SBX_HOST_EVENTS")]
static SBX_HOST_EVENTS: RingBuf<Event, { 256 * 1024 }> = RingBuf::new();

/// Allocation bitmaps of policy and event indices. `sbx-user` only (under
/// the host lock); in the object so that it is pinned with the set.
#[btf_map(name = "SBX_POOL")]
static SBX_POOL: Array<sbx_common::Pool, 1> = Array::new();

/// Original destinations of redirected connects, by socket cookie. Written
/// by connect4/6 when they redirect; read by `sbx_sockops`.
#[btf_map(name = "SBX_REDIRECTED")]
static SBX_REDIRECTED: LruHashMap<u64, OrigDst, 16384> = LruHashMap::new();

/// Original destinations by network namespace and client port, for the
/// proxy. Written by `sbx_sockops`; read by proxies and `sbx-user orig-dst`.
#[btf_map(name = "SBX_ORIGDST")]
static SBX_ORIGDST: LruHashMap<OrigKey, OrigDst, 16384> = LruHashMap::new();

/// Records in this CPU's cell of the layer's [`Stats`] that the layer
/// allowed `addr`:`port` for the context's socket (see
/// `sbx_common::RECENT_VERDICTS`).
#[inline(always)]
fn remember(slot: &Slot, stats: *mut Stats, cookie: u64, hook: u32, kind: u32, addr: &TrieAddr, port: u16) {
    let entry = recent(slot, cookie, addr, u32::from(port), kind);
    record(stats, entry);
    if kind & !RECENT_V6 == IPPROTO_TCP && (hook == HOOK_CONNECT4 || hook == HOOK_CONNECT6) {
        record_connect(slot, entry);
    }
}

/// The sandboxes' connects, shared by the CPUs (`sbx_common::MAP_CONNECTS`).
/// Written and read by connect4/6 and the egress hook.
#[btf_map(name = "SBX_CONNECTS")]
static SBX_CONNECTS: LruHashMap<u64, Connects, { CONNECTS_ENTRIES as usize }> = LruHashMap::new();

/// An all-zero [`Connects`] to insert from; never written.
#[btf_map(name = "SBX_CONNECTS_ZERO")]
static SBX_CONNECTS_ZERO: Array<Connects, 1> = Array::new();

/// Puts a TCP connect's verdict in the sandbox's shared list, at a random
/// index (no atomic counter: two CPUs choosing one index at once only lose
/// an entry), the cookie cleared first and set last (see [`recalled_connect`]).
#[inline(always)]
fn record_connect(slot: &Slot, entry: RecentVerdict) {
    if entry.cookie == 0 {
        return;
    }
    let key = slot.cgroup_id;
    let all = match SBX_CONNECTS.get_ptr_mut(key) {
        Some(all) => all,
        None => {
            if let Some(zero) = SBX_CONNECTS_ZERO.get(0) {
                // BPF_NOEXIST: another CPU may have inserted it meanwhile.
                let _ = SBX_CONNECTS.insert(key, zero, 1);
            }
            let Some(all) = SBX_CONNECTS.get_ptr_mut(key) else { return };
            all
        }
    };
    // SAFETY: helper without preconditions.
    let at = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } as usize % RECENT_CONNECTS;
    // SAFETY: the attach point's cell, valid for this program run; `at` is
    // bounded by the array length.
    unsafe {
        let Some(cell) = (*all).recent.get_mut(at) else { return };
        let cell: *mut RecentVerdict = cell;
        write_entry(cell, &entry);
    }
}

/// The sandbox's shared record of a TCP connect of socket `cookie`. An entry
/// is taken only if its cookie reads the same before and after it is
/// copied: a writer on another CPU clears the cookie before it writes.
#[inline(always)]
fn recalled_connect(slot: &Slot, cookie: u64) -> Option<RecentVerdict> {
    if cookie == 0 {
        return None;
    }
    let all = SBX_CONNECTS.get_ptr(slot.cgroup_id)?;
    // SAFETY: as in `record_connect`: the sandbox's value, valid for this
    // program run.
    unsafe { find_entry(core::ptr::addr_of!((*all).recent), cookie) }
}

/// The entry of socket `cookie` among `entries` (see [`read_entry`]).
///
/// # Safety
/// `entries` is valid map memory for this program run.
#[inline(always)]
unsafe fn find_entry<const N: usize>(entries: *const [RecentVerdict; N], cookie: u64) -> Option<RecentVerdict> {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's contract; `i` is bounded by the length.
        if let Some(entry) = unsafe { read_entry(core::ptr::addr_of!((*entries)[i]), cookie) } {
            return Some(entry);
        }
        i += 1;
    }
    None
}

/// The entry saying this layer's current policy allowed `addr`:`port` for
/// the socket `cookie`.
#[inline(always)]
fn recent(slot: &Slot, cookie: u64, addr: &TrieAddr, port: u32, kind: u32) -> RecentVerdict {
    RecentVerdict { cookie, addr: *addr, port, policy: slot.policy, generation: slot.generation, kind }
}

/// The cookie of the socket for which this layer's current policy lately
/// allowed `addr`:`port`, judged as `kind`, on this CPU (see [`record`]):
/// a client that connects or sends to one server again and again (a
/// connection pool, a proxy, a resolver, QUIC) is then judged without a
/// trie lookup, whatever the policy's size. The entry was written only by
/// an allow of this very policy and generation (the slot read at the start
/// of this program run), for this address, port, protocol and address
/// family, which is all a destination's verdict depends on: it is that
/// decision. A denial is never kept, so denials are always judged (and
/// reported) in full.
#[inline(always)]
fn allowed_lately(slot: &Slot, stats: *mut Stats, addr: &TrieAddr, port: u16, kind: u32) -> Option<u64> {
    if stats.is_null() {
        return None;
    }
    let mut i = 0;
    while i < RECENT_VERDICTS {
        // SAFETY: as in `record`; `i` is bounded. Compared in place (a
        // copy per entry does not fit the stack of the connect hooks);
        // the cookie is read before and after, as in `read_entry`.
        unsafe {
            let cell = core::ptr::addr_of!((*stats).recent[i]);
            let cookie = core::ptr::read_volatile(core::ptr::addr_of!((*cell).cookie));
            if cookie != 0
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).port)) == u32::from(port)
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).policy)) == slot.policy
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).generation)) == slot.generation
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).kind)) == kind
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).addr)) == *addr
                && core::ptr::read_volatile(core::ptr::addr_of!((*cell).cookie)) == cookie
            {
                return Some(cookie);
            }
        }
        i += 1;
    }
    None
}

/// Puts `entry` in the cache of recent verdicts, over its socket's older
/// entry if it has one, else over the oldest. A program that interrupts
/// this one on the same CPU (the egress hook in softirq context) may read
/// or write the cell meanwhile: the index is taken before the entry is
/// written, and the cookie is cleared first and set last, so a reader sees
/// a whole entry or none, and a second writer takes the next index.
#[inline(always)]
fn record(stats: *mut Stats, entry: RecentVerdict) {
    if stats.is_null() || entry.cookie == 0 {
        return;
    }
    // SAFETY: `stats` is this CPU's cell of the attach point's per-CPU
    // storage, valid for this program run; every index is bounded.
    unsafe {
        let mut i = 0;
        let mut at = RECENT_VERDICTS;
        while i < RECENT_VERDICTS {
            if (*stats).recent[i].cookie == entry.cookie {
                at = i;
                break;
            }
            i += 1;
        }
        if at == RECENT_VERDICTS {
            let next = core::ptr::read_volatile(core::ptr::addr_of!((*stats).next));
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*stats).next), next.wrapping_add(1));
            at = next as usize % RECENT_VERDICTS;
        }
        if (*stats).recent[at] == entry {
            return;
        }
        let cell = core::ptr::addr_of_mut!((*stats).recent[at]);
        write_entry(cell, &entry);
    }
}

/// Writes `entry` over `cell`, the cookie cleared first and set last, so
/// that a reader ([`read_entry`]) sees the whole entry or none of it.
///
/// # Safety
/// `cell` is a valid entry of a map value for this program run.
#[inline(always)]
unsafe fn write_entry(cell: *mut RecentVerdict, entry: &RecentVerdict) {
    // SAFETY: the caller's contract; each field is a plain store.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).cookie), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).addr), entry.addr);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).port), entry.port);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).policy), entry.policy);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).generation), entry.generation);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).kind), entry.kind);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*cell).cookie), entry.cookie);
    }
}

/// `cell`'s entry if it is socket `cookie`'s: the cookie read before and
/// after the entry is copied, so a write in between (which clears it
/// first) is never taken for the entry.
///
/// # Safety
/// As for [`write_entry`].
#[inline(always)]
unsafe fn read_entry(cell: *const RecentVerdict, cookie: u64) -> Option<RecentVerdict> {
    // SAFETY: the caller's contract.
    unsafe {
        if core::ptr::read_volatile(core::ptr::addr_of!((*cell).cookie)) != cookie {
            return None;
        }
        let entry = core::ptr::read_volatile(cell);
        let again = core::ptr::read_volatile(core::ptr::addr_of!((*cell).cookie));
        (entry.cookie == cookie && again == cookie).then_some(entry)
    }
}

/// This CPU's recent verdict of the layer for the socket `cookie`.
#[inline(always)]
fn recalled(stats: *mut Stats, cookie: u64) -> Option<RecentVerdict> {
    if stats.is_null() || cookie == 0 {
        return None;
    }
    // SAFETY: as in `record`: this CPU's cell, valid for this program run.
    unsafe { find_entry(core::ptr::addr_of!((*stats).recent), cookie) }
}

/// The own destination of the socket of `ctx`'s packet (`cookie`: its
/// socket cookie, 0 without a socket), as (mapped address, host-order
/// port); port 0 for an unconnected socket or none.
#[inline(always)]
fn packet_peer(ctx: &SkBuffContext, cookie: u64) -> (TrieAddr, u32) {
    // SAFETY: reading the packet's socket field of the context.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if cookie == 0 || sk.is_null() {
        return ([0; 16], 0);
    }
    // SAFETY: helper on a socket pointer of the context.
    let full = unsafe { aya_ebpf::helpers::bpf_sk_fullsock(sk) };
    if full.is_null() {
        return ([0; 16], 0);
    }
    // SAFETY: a field of a full socket; the verifier checks the access.
    let family = ctx_u32(unsafe { core::ptr::addr_of!((*full).family) });
    let (dst, port) = sock_peer(full, family != AF_INET);
    (dst, u32::from(port))
}

/// The connected peer of a full socket `sk` (`v6`: read `dst_ip6`, which
/// holds an IPv4 peer of a dual-stack socket v4-mapped), as the trie keys
/// it, and its port in host order; `::`, 0 for an unconnected socket.
#[inline(always)]
fn sock_peer(sk: *mut aya_ebpf::bindings::bpf_sock, v6: bool) -> (TrieAddr, u16) {
    // SAFETY: fields of a full socket the caller null-checked.
    let port = u16::from_be(unsafe { (*sk).dst_port });
    let addr = if v6 {
        let mut w = [0u32; 4];
        sock_dst6(sk, &mut w);
        let (w0, w1, w2, w3) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
        [w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0], w3[1], w3[2], w3[3]]
    } else {
        // SAFETY: as above.
        mapped(ctx_u32(unsafe { core::ptr::addr_of!((*sk).dst_ip4) }).to_ne_bytes())
    };
    (addr, port)
}

/// `dst_ip6` of a full socket, one load per word at a constant offset. A
/// function of its own (not inlined): inlined into the egress hook, register
/// pressure made the compiler keep the field offset in a register and add
/// it to the socket pointer, which the verifier refuses ("R9 pointer
/// arithmetic on sock prohibited").
#[inline(never)]
fn sock_dst6(full: *mut aya_ebpf::bindings::bpf_sock, out: &mut [u32; 4]) {
    // SAFETY: four fields of a full socket the caller null-checked.
    unsafe {
        out[0] = ctx_u32(core::ptr::addr_of!((*full).dst_ip6[0]));
        out[1] = ctx_u32(core::ptr::addr_of!((*full).dst_ip6[1]));
        out[2] = ctx_u32(core::ptr::addr_of!((*full).dst_ip6[2]));
        out[3] = ctx_u32(core::ptr::addr_of!((*full).dst_ip6[3]));
    }
}

/// The connected peer of the context's socket (IPv4 mapped for an IPv4
/// socket, or a dual-stack one reaching IPv4), as the trie keys it, and its
/// port in host order. An unknown peer reads as `::`, port 0, which no
/// policy allows.
#[inline(always)]
fn connected_peer(ctx: &SockAddrContext, v6: bool) -> (TrieAddr, u16) {
    // SAFETY: the context's socket field; the verifier checks the access.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return ([0; 16], 0);
    }
    // The full socket of a sock_addr context.
    sock_peer(sk, v6)
}

/// `AF_INET` as `bpf_sock.family` holds it.
const AF_INET: u32 = 2;

/// The attach point's slot. Read in place, not copied (it does not fit the
/// stack beside an event): `update` never writes a slot in place, the
/// kernel swaps the cell's buffer and frees the old one after an RCU grace
/// period, so every field read through this one reference belongs to one
/// slot. `None` only if the kernel has no cell for the attach point, which
/// a linked program never sees; the callers reject.
#[inline(always)]
fn slot() -> Option<&'static Slot> {
    let p = SBX_SLOT.get();
    // SAFETY: a valid cell of `size_of::<Slot>()` bytes for this program
    // run, or null.
    unsafe { p.as_ref() }
}

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: the SYN is about to be sent, the local
/// port is chosen.
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// Moves the original destination of a redirected connection from its
/// socket cookie (all the connect hook knows) to its local port (what the
/// proxy sees as the peer port).
#[sock_ops]
fn sbx_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: the helpers take the context pointer.
        let (cookie, netns_cookie) =
            unsafe { (aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_netns_cookie(ctx.as_ptr())) };
        // SAFETY: a map value pointer valid for this program run.
        if let Some(orig) = unsafe { SBX_REDIRECTED.get(&cookie) } {
            let orig = *orig;
            let key = OrigKey { netns_cookie, port: ctx.local_port(), _pad: 0 };
            let _ = SBX_ORIGDST.insert(&key, &orig, 0);
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
/// The egress hook judging a SYN-ACK: a connection into the sandbox.
const HOOK_ACCEPT: u32 = 9;

/// Whether the caller's context can name a task (not the egress hook,
/// which may run in softirq context).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Current,
    Unknown,
}

/// Counts a decision and, for a denial, reports it. Returns whether the
/// call may proceed: an allow, or a denial in audit mode. `verdict` says
/// what happened: an internal error rejects and is reported as a denial
/// (never as an audit-mode "would be denied"), whatever the mode;
/// `redirected` says the denied connect was already sent to the proxy.
#[inline(always)]
fn settle(
    slot: &Slot,
    verdict: Result<bool, ()>,
    hook: u32,
    protocol: u32,
    addr: &TrieAddr,
    port: u32,
    task: Task,
    redirected: bool,
) -> bool {
    let allowed = verdict == Ok(true);
    if !allowed
        && hook == HOOK_CONNECT4
        && port == u32::from(sbx_common::PROOF_PORT)
        && *addr == mapped(sbx_common::SENTINEL)
    {
        // `run` proving the hooks fire in a new cgroup: refused, but not
        // reported or counted.
        return false;
    }
    let stats = SBX_STATS.get();
    bump(stats, counter_index(hook, u32::from(!allowed)));
    if allowed {
        return true;
    }
    let audit = verdict.is_ok() && slot.flags & FLAG_AUDIT != 0;
    let outcome = if audit {
        EVENT_AUDIT
    } else if redirected {
        EVENT_REDIRECTED
    } else {
        EVENT_DENIED
    };
    let denial = Denial { hook, protocol, port, outcome, addr: *addr };
    match task {
        Task::Current => report::<true>(slot, stats, &denial),
        Task::Unknown => report::<false>(slot, stats, &denial),
    }
    audit
}

/// What [`report`] reports: one denial (or audit-mode would-be denial).
struct Denial {
    hook: u32,
    protocol: u32,
    port: u32,
    outcome: u32,
    addr: TrieAddr,
}

/// Sends the event of a denial, within the sandbox's rate limit, to its
/// ring or the host's, written in place in the ring, counting what is
/// dropped. `TASK`: the context names the task (see [`Task`]); the egress
/// hook's copy calls no task helper.
///
/// A function of its own, not inlined: every call of `settle` carried a
/// copy of it, so the hot paths (allowed calls) were spread over far more
/// code than they run (the egress program was 28 KB of machine code).
#[inline(never)]
fn report<const TASK: bool>(slot: &Slot, stats: *mut Stats, d: &Denial) {
    if !take_token(slot, stats) {
        bump(stats, COUNTER_EVENTS_DROPPED);
        return;
    }
    let entry = match (slot.events, SBX_EVENTS_OF.get(slot.events)) {
        (0, _) | (_, None) => SBX_HOST_EVENTS.reserve(0),
        (_, Some(ring)) => ring.reserve(0),
    };
    let Some(mut entry) = entry else {
        bump(stats, COUNTER_EVENTS_DROPPED);
        return;
    };
    let e: *mut Event = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, `size_of::<Event>()` bytes, ours
    // until it is submitted; every field is written before that.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        if TASK {
            let pid_tgid = bpf_get_current_pid_tgid();
            #[expect(clippy::cast_possible_truncation, reason = "pid_tgid packs two u32s")]
            {
                (*e).pid = (pid_tgid >> 32) as u32;
                (*e).tid = pid_tgid as u32;
            }
            (*e).cgroup_id = bpf_get_current_cgroup_id();
            let comm = core::ptr::addr_of_mut!((*e).comm);
            if aya_ebpf::helpers::generated::bpf_get_current_comm(comm.cast(), 16) != 0 {
                (*e).comm = [0; 16];
            }
        } else {
            (*e).pid = 0;
            (*e).tid = 0;
            (*e).cgroup_id = 0;
            (*e).comm = [0; 16];
        }
        (*e).hook = d.hook;
        (*e).protocol = d.protocol;
        (*e).addr = d.addr;
        (*e).port = d.port;
        (*e).verdict = d.outcome;
        (*e).generation = slot.generation;
        (*e)._pad = 0;
        (*e).sandbox = slot.cgroup_id;
    }
    entry.submit(0);
}

/// An allowed call, counted in this CPU's cell `stats` the caller already
/// holds (what [`settle`] does for an allow, without fetching the cell
/// again).
#[inline(always)]
fn allow(stats: *mut Stats, hook: u32) -> bool {
    bump(stats, counter_index(hook, 0));
    true
}

#[inline(always)]
fn bump(stats: *mut Stats, index: u32) {
    if stats.is_null() || index >= NUM_COUNTERS {
        return;
    }
    // SAFETY: this CPU's cell of the attach point's per-CPU storage; the
    // index is bounded above.
    unsafe { (*stats).counters[index as usize] += 1 };
}

/// One event costs this many tokens; the bucket holds `burst * SCALE`.
const SCALE: u64 = 1_000_000_000;

/// Per-CPU token bucket of the sandbox: refills `events_per_sec` per
/// second up to `events_burst`, so a flood of denials cannot flood the host,
/// and one noisy sandbox cannot spend another's events.
#[inline(always)]
fn take_token(slot: &Slot, state: *mut Stats) -> bool {
    let (rate, burst) = (u64::from(slot.events_per_sec), u64::from(slot.events_burst));
    if state.is_null() {
        return false;
    }
    // SAFETY: helper without preconditions; `state` is this CPU's cell.
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Dest,
    Bind,
}

#[cgroup_sock_addr(connect4)]
fn sbx_connect4(ctx: SockAddrContext) -> i32 {
    let Some(slot) = slot() else { return REJECT };
    let target = redirect_target(slot, &ctx, false);
    if judge4(slot, &ctx, Direction::Dest, HOOK_CONNECT4, target) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(connect6)]
fn sbx_connect6(ctx: SockAddrContext) -> i32 {
    let Some(slot) = slot() else { return REJECT };
    let target = redirect_target(slot, &ctx, true);
    if judge6(slot, &ctx, Direction::Dest, HOOK_CONNECT6, target) {
        PASS
    } else {
        REJECT
    }
}

/// `(proxy address, proxy port, original address)` of a redirect.
type Redirect = ([u8; 16], u32, TrieAddr);

/// Sends a connect the policy denied to the proxy, if it is one that
/// transparent proxy mode redirects (not in audit mode, not on an internal
/// error). Returns whether it did: the event then says "proxied", and only
/// then (a redirect that fails is reported and refused as a denial).
#[inline(always)]
fn redirect_denied(
    slot: &Slot,
    ctx: &SockAddrContext,
    verdict: Result<bool, ()>,
    target: Option<Redirect>,
    v6: bool,
) -> bool {
    verdict == Ok(false) && slot.flags & FLAG_AUDIT == 0 && target.is_some_and(|t| redirect(ctx, &t, v6))
}

/// Where a denied connect would be redirected, if transparent proxy mode
/// applies to it: TCP, to a non-local destination, and (for an IPv4
/// socket) an IPv4 proxy. `(proxy address, proxy port, original address)`.
#[inline(always)]
fn redirect_target(cfg: &Slot, ctx: &SockAddrContext, v6: bool) -> Option<Redirect> {
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
fn redirect(ctx: &SockAddrContext, target: &Redirect, v6: bool) -> bool {
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
    if slot().is_some_and(|slot| judge4(slot, &ctx, Direction::Dest, HOOK_SENDMSG4, None)) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(sendmsg6)]
fn sbx_sendmsg6(ctx: SockAddrContext) -> i32 {
    if slot().is_some_and(|slot| judge6(slot, &ctx, Direction::Dest, HOOK_SENDMSG6, None)) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(bind4)]
fn sbx_bind4(ctx: SockAddrContext) -> i32 {
    if slot().is_some_and(|slot| judge4(slot, &ctx, Direction::Bind, HOOK_BIND4, None)) {
        PASS
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(bind6)]
fn sbx_bind6(ctx: SockAddrContext) -> i32 {
    if slot().is_some_and(|slot| judge6(slot, &ctx, Direction::Bind, HOOK_BIND6, None)) {
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
    let Some(slot) = slot() else { return REJECT };
    // A sandbox whose policy is not written yet denies everything.
    let allowed = slot.policy != 0 && matches!((ty, proto), (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP));
    if settle(slot, Ok(allowed), HOOK_SOCK_CREATE, proto, &[0; 16], ty, Task::Current, false) {
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

/// `IPV6_2292PKTOPTIONS`: a whole set of sticky options in one call, a
/// routing header among them.
const IPV6_2292PKTOPTIONS: i32 = 6;
/// The most of an option value a sockopt program is shown (a page).
const SOCKOPT_MAX_SEEN: i32 = 4096;

/// `setsockopt()`: refuses the options that make packets travel somewhere
/// other than the address the connect/sendmsg hooks judged: IPv4 options
/// (loose/strict source routing) and IPv6 routing headers, also inside
/// `IPV6_2292PKTOPTIONS`. Clearing IP options (`optlen` 0) is harmless and
/// allowed.
///
/// A value longer than a page is shown to the program cut to a page; left
/// so, the kernel fails the call with `EFAULT`. The program never changes a
/// value, so it sets `optlen` to 0, which the kernel documentation for
/// cgroup sockopt programs gives as "use the caller's value unchanged".
#[cgroup_sockopt(setsockopt)]
fn sbx_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: as in `sbx_sock_create`; the three fields are 4-byte ints.
    let (level, name, optlen) = unsafe { ((*so).level, (*so).optname, (*so).optlen) };
    let refused = match (level, name) {
        (SOL_IP, IP_OPTIONS) => optlen != 0,
        (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS) => true,
        _ => false,
    };
    if optlen > SOCKOPT_MAX_SEEN {
        // SAFETY: `optlen` is writable in a setsockopt program.
        unsafe { (*so).optlen = 0 };
    }
    #[expect(clippy::cast_sign_loss, reason = "reported as raw numbers")]
    let (level, name) = (level as u32, name as u32);
    if slot()
        .is_some_and(|slot| settle(slot, Ok(!refused), HOOK_SETSOCKOPT, level, &[0; 16], name, Task::Current, false))
    {
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
    let Some(slot) = slot() else { return false };
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
    let head = match plain_head(ctx, v6) {
        Some(head) => head,
        None => match read_head(slot, ctx, v6) {
            Ok(head) => head,
            Err(answer) => return answer,
        },
    };
    let (l4, addr, port) = (head.l4, head.addr, head.port);
    if l4 == IPPROTO_TCP {
        if head.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK {
            return accepted(slot, ctx, v6, head.off);
        }
        if head.flags & TCP_FLAG_SYN == 0 {
            return true;
        }
    }
    // In audit mode the connect and sendmsg hooks have already reported
    // every would-be denial; judging the same packets again here would
    // report each twice.
    if slot.flags & FLAG_AUDIT != 0 {
        return true;
    }
    // The hook that judged this socket's destination left its verdict on
    // this CPU: agree with it rather than judge the same destination
    // again. A TCP SYN keeps the verdict of its connect (an update between
    // the connect and its SYN does not drop the SYN); a UDP verdict holds
    // while the policy that made it is in force. The socket's own
    // destination counts as well as the header's, which netfilter's DNAT
    // may have rewritten.
    let stats = SBX_STATS.get();
    // SAFETY: the helper takes the context pointer; 0 without a socket.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    let port = u32::from(port);
    let seen = match recalled(stats, cookie) {
        None if l4 == IPPROTO_TCP => recalled_connect(slot, cookie),
        seen => seen,
    };
    // The socket's own destination is read only when the header does not
    // already agree with the record (the common case needs neither the
    // full-socket helper nor its fields).
    let mut trusted = None;
    if let Some(seen) = seen {
        let current = seen.policy == slot.policy && seen.generation == slot.generation;
        if l4 == IPPROTO_TCP || current {
            if seen.addr == addr && seen.port == port {
                return allow(stats, HOOK_EGRESS);
            }
            trusted = Some(seen);
        }
    }
    let (sock_dst, sock_port) = packet_peer(ctx, cookie);
    if let Some(seen) = trusted {
        if seen.addr == sock_dst && seen.port == sock_port {
            return allow(stats, HOOK_EGRESS);
        }
    }
    // Judged in full: a connected socket by its own destination, which is
    // what its connect hook judged (the header may be NAT's rewrite); an
    // unconnected one by the header. An allowed connected socket's verdict
    // is kept, so its next datagrams agree with it.
    let (judged, judged_port) = if sock_port != 0 { (sock_dst, sock_port) } else { (addr, port) };
    #[expect(clippy::cast_possible_truncation, reason = "ports are 16-bit")]
    let verdict = decide_v6(slot, &judged, judged_port as u16, l4, Direction::Dest);
    if verdict == Ok(true) && sock_port != 0 {
        record(stats, recent(slot, cookie, &judged, judged_port, l4 | RECENT_V6));
    }
    conclude(slot, verdict, HOOK_EGRESS, l4, &judged, judged_port, Task::Unknown)
}

/// The headers of an outgoing TCP or UDP packet that the egress hook
/// needs: protocol, offset of the L4 header, TCP flags (0 for UDP), and
/// destination address (as the trie keys it) and port.
struct Head {
    l4: u32,
    off: usize,
    flags: u8,
    addr: TrieAddr,
    port: u16,
}

/// [`Head`] read straight from the packet's linear part, without a helper
/// call, when the packet is TCP or UDP with a plain header (no IPv4
/// options, no IPv6 extension headers): the common case. `None` otherwise
/// (then [`read_head`] reads it).
#[inline(always)]
fn plain_head(ctx: &SkBuffContext, v6: bool) -> Option<Head> {
    let skb = ctx.skb.skb;
    // SAFETY: the context's packet bounds; the verifier makes them packet
    // pointers and checks every read against them.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let p = data as *const u8;
    // Constant offsets in each branch: the verifier checks a packet read
    // against the bound proven for that offset. TCP needs the flags (byte
    // 13 of its header), UDP its ports; both fit in 14 bytes.
    if v6 {
        if data + 40 + 14 > end {
            return None;
        }
        // SAFETY: within the bounds checked above.
        unsafe {
            let l4 = u32::from(*p.add(6));
            if l4 != IPPROTO_TCP && l4 != IPPROTO_UDP {
                return None;
            }
            let flags = if l4 == IPPROTO_TCP { *p.add(53) } else { 0 };
            let addr = core::ptr::read_unaligned(p.add(24).cast::<TrieAddr>());
            let port = u16::from_be_bytes([*p.add(42), *p.add(43)]);
            Some(Head { l4, off: 40, flags, addr, port })
        }
    } else {
        if data + 20 + 14 > end {
            return None;
        }
        // SAFETY: within the bounds checked above.
        unsafe {
            let l4 = u32::from(*p.add(9));
            if *p != 0x45 || (l4 != IPPROTO_TCP && l4 != IPPROTO_UDP) {
                return None;
            }
            let flags = if l4 == IPPROTO_TCP { *p.add(33) } else { 0 };
            let addr = mapped([*p.add(16), *p.add(17), *p.add(18), *p.add(19)]);
            let port = u16::from_be_bytes([*p.add(22), *p.add(23)]);
            Some(Head { l4, off: 20, flags, addr, port })
        }
    }
}

/// [`Head`] read with `bpf_skb_load_bytes`, for any packet: IPv6 options
/// headers are skipped. `Err` carries the hook's answer for a packet that
/// is not TCP or UDP, is source routed, or cannot be read.
#[inline(always)]
fn read_head(slot: &Slot, ctx: &SkBuffContext, v6: bool) -> Result<Head, bool> {
    let Ok((l4, off)) = (if v6 { l4_v6(ctx) } else { l4_v4(ctx) }) else {
        return Err(conclude(slot, Err(()), HOOK_EGRESS, 0, &[0; 16], 0, Task::Unknown));
    };
    let l4 = u32::from(l4);
    let dest = |ctx: &SkBuffContext| if v6 { dest_v6(ctx) } else { dest_v4(ctx) };
    let Some(off) = off else {
        // Source routing: refused whatever the destination.
        let addr = dest(ctx).unwrap_or([0; 16]);
        return Err(conclude(slot, Ok(false), HOOK_EGRESS, l4, &addr, EVENT_PORT_SOURCE_ROUTE, Task::Unknown));
    };
    if l4 != IPPROTO_TCP && l4 != IPPROTO_UDP {
        // sock_create lets no socket of another protocol be made, but a
        // process that held one before `attach` still could. The kernel's
        // own ICMP and NDP replies carry no sandbox socket and never reach
        // this hook. IPsec (ESP, AH) wraps traffic the hooks already judged.
        if l4 == IPPROTO_ESP || l4 == IPPROTO_AH {
            return Err(true);
        }
        let addr = dest(ctx).unwrap_or([0; 16]);
        return Err(conclude(slot, Ok(false), HOOK_EGRESS, l4, &addr, 0, Task::Unknown));
    }
    let flags = if l4 == IPPROTO_TCP { ctx.load::<u8>(off + 13).ok() } else { Some(0) };
    let (Some(flags), Ok(addr), Ok(port)) = (flags, dest(ctx), ctx.load::<u16>(off + 2).map(u16::from_be)) else {
        return Err(conclude(slot, Err(()), HOOK_EGRESS, l4, &[0; 16], 0, Task::Unknown));
    };
    Ok(Head { l4, off, flags, addr, port })
}

/// A SYN-ACK: a peer is completing a connection to a socket in the
/// sandbox (a listener made by bind, by listen without bind, or by accept).
/// Only the SYN a sandbox sends is judged by the connect hooks, so without
/// this a host the policy denies could connect in and get a two-way
/// channel. It may if `bind` allows the sandbox's local address and port,
/// and the destination policy lets the sandbox reach the peer on some TCP
/// port (the peer's own port is ephemeral); a loopback peer is governed by
/// the `loopback` setting against the sandbox's local port (a dev server's
/// loopback clients). Judged here, once per connection, not on every
/// received packet.
#[inline(always)]
fn accepted(slot: &Slot, ctx: &SkBuffContext, v6: bool, off: usize) -> bool {
    let local = if v6 { ctx.load::<[u8; 16]>(8).ok() } else { ctx.load::<[u8; 4]>(12).ok().map(mapped) };
    let peer = if v6 { ctx.load::<[u8; 16]>(24).ok() } else { ctx.load::<[u8; 4]>(16).ok().map(mapped) };
    let lport = ctx.load::<u16>(off).map(u16::from_be).ok();
    let (Some(local), Some(peer), Some(lport)) = (local, peer, lport) else {
        return conclude(slot, Err(()), HOOK_ACCEPT, IPPROTO_TCP, &[0; 16], 0, Task::Unknown);
    };
    let bound = decide(slot, &local, lport, IPPROTO_TCP, Direction::Bind);
    let verdict = match bound {
        Ok(true) => peer_reachable(slot, &peer, lport),
        other => other,
    };
    conclude(slot, verdict, HOOK_ACCEPT, IPPROTO_TCP, &peer, u32::from(lport), Task::Unknown)
}

/// Whether the sandbox could reach `peer` over TCP on some port (see
/// [`accepted`]); for a local-host peer, whether `loopback` allows the
/// sandbox's local port `lport`. Embedded IPv4 forms count as the IPv4
/// address they reach, and forms of local addresses are refused.
#[inline(always)]
fn peer_reachable(slot: &Slot, peer: &TrieAddr, lport: u16) -> Result<bool, ()> {
    let addr = match addr::embedded(peer, &slot.nat64) {
        Some(e) if e.is_local() => return Ok(false),
        Some(e) => mapped(e.v4),
        None => *peer,
    };
    let v = lookup(slot, &addr, Direction::Dest)?;
    let local_host = (addr::is_mapped(&addr) && addr::is_local_v4([addr[12], addr[13], addr[14], addr[15]]))
        || addr == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    if local_host {
        return Ok(lookup_port(&v, lport, IPPROTO_TCP)? == VERDICT_ALLOW);
    }
    any_port(&v)
}

/// Whether entry `v` allows any TCP port.
#[inline(always)]
fn any_port(v: &TrieValue) -> Result<bool, ()> {
    if v.defaults & DEFAULT_TCP != 0 {
        return Ok(true);
    }
    let len = usize::from(v.nsegs);
    let mut i = 0;
    while i < MAX_SEGMENTS {
        if i >= len {
            break;
        }
        if segment(v, i)?.tcp == VERDICT_ALLOW {
            return Ok(true);
        }
        i += 1;
    }
    Ok(false)
}

/// Port range `i` of entry `v`.
#[inline(always)]
fn segment(v: &TrieValue, i: usize) -> Result<&'static PortSegment, ()> {
    #[expect(clippy::cast_possible_truncation, reason = "i < MAX_SEGMENTS")]
    let at = v.segs.wrapping_add(i as u32);
    SBX_SEGMENTS.get(at).ok_or(())
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

/// The destination of an IPv6 packet, as the header carries it (embedded
/// IPv4 forms are judged by [`decide_v6`], as in the connect hooks).
#[inline(always)]
fn dest_v6(ctx: &SkBuffContext) -> Result<TrieAddr, ()> {
    ctx.load(24).map_err(|_| ())
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

/// `user_ip6` as address bytes: one load per word at a constant offset
/// (see [`ctx_u32`]), not a loop whose unrolling the verifier would depend
/// on (a loop's offset in a register is "dereference of modified ctx ptr").
#[inline(always)]
fn user_ip6(sa: *const bpf_sock_addr) -> TrieAddr {
    // SAFETY: as in `port`; four fields of `user_ip6`.
    let (w0, w1, w2, w3) = unsafe {
        (
            ctx_u32(core::ptr::addr_of!((*sa).user_ip6[0])).to_ne_bytes(),
            ctx_u32(core::ptr::addr_of!((*sa).user_ip6[1])).to_ne_bytes(),
            ctx_u32(core::ptr::addr_of!((*sa).user_ip6[2])).to_ne_bytes(),
            ctx_u32(core::ptr::addr_of!((*sa).user_ip6[3])).to_ne_bytes(),
        )
    };
    [w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0], w3[1], w3[2], w3[3]]
}

#[inline(always)]
fn protocol(sa: *const bpf_sock_addr) -> u32 {
    // SAFETY: as in `port`.
    ctx_u32(unsafe { core::ptr::addr_of!((*sa).protocol) })
}

#[inline(always)]
fn judge4(slot: &Slot, ctx: &SockAddrContext, dir: Direction, hook: u32, target: Option<Redirect>) -> bool {
    let sa = ctx.sock_addr.cast_const();
    let (mut addr, mut port) = (mapped(user_ip4(sa)), port(sa));
    if hook == HOOK_SENDMSG4 && port == 0 && addr == mapped([0; 4]) {
        // A sendmsg() without an address on a connected UDP socket that
        // carries control messages (IP_TOS, IP_PKTINFO, TTL...): the kernel
        // runs this hook with an all-zero address. The datagram goes to the
        // connected peer: judge that.
        (addr, port) = connected_peer(ctx, false);
    }
    judge(slot, ctx, dir, hook, target, (&addr, port), false)
}

/// What `judge4` and `judge6` share once they have the destination: the
/// verdict this policy lately gave the same destination (see
/// [`allowed_lately`]), or the policy's decision (`decide_v6` for an IPv6
/// socket: embedded IPv4 forms); an allow remembered for the egress hook
/// under this socket's cookie; then the redirect, the trace and the count
/// or event.
#[inline(always)]
fn judge(
    slot: &Slot,
    ctx: &SockAddrContext,
    dir: Direction,
    hook: u32,
    target: Option<Redirect>,
    (addr, port): (&TrieAddr, u16),
    v6: bool,
) -> bool {
    let proto = protocol(ctx.sock_addr);
    let kind = if v6 { proto | RECENT_V6 } else { proto };
    let stats = SBX_STATS.get();
    let lately = if dir == Direction::Dest { allowed_lately(slot, stats, addr, port, kind) } else { None };
    let verdict = if lately.is_some() {
        Ok(true)
    } else if v6 {
        decide_v6(slot, addr, port, proto, dir)
    } else {
        decide(slot, addr, port, proto, dir)
    };
    if verdict == Ok(true) && dir == Direction::Dest {
        // SAFETY: the helper takes the context pointer.
        let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
        // As the socket and the packet header will carry it, for the egress
        // hook: a connect always (its SYN, and the shared record), a
        // sendmsg unless the entry it agreed with is its own socket's.
        if lately != Some(cookie) || hook == HOOK_CONNECT4 || hook == HOOK_CONNECT6 {
            remember(slot, stats, cookie, hook, kind, addr, port);
        }
    }
    trace(ctx, slot, hook, addr, port, verdict);
    if verdict == Ok(true) {
        return allow(stats, hook);
    }
    let redirected = redirect_denied(slot, ctx, verdict, target, v6);
    settle(slot, verdict, hook, proto, addr, u32::from(port), Task::Current, redirected) || redirected
}

/// With the sandbox's debug flag (`run -vv`), one aya-log line per
/// decision, naming the sandbox so that its reader shows its own only. Off,
/// this is one test of a flag the slot read already brought in.
#[inline(always)]
fn trace<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    slot: &Slot,
    hook: u32,
    addr: &TrieAddr,
    port: u16,
    verdict: Result<bool, ()>,
) {
    if slot.flags & sbx_common::FLAG_DEBUG == 0 {
        return;
    }
    let outcome: u32 = match verdict {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(()) => 2,
    };
    aya_log_ebpf::debug!(
        ctx,
        "sandbox={} hook={} dest=[{:i}]:{} verdict={}",
        slot.cgroup_id,
        hook,
        *addr,
        port,
        outcome
    );
}

#[inline(always)]
fn judge6(slot: &Slot, ctx: &SockAddrContext, dir: Direction, hook: u32, target: Option<Redirect>) -> bool {
    let sa = ctx.sock_addr.cast_const();
    let (mut addr, mut port) = (user_ip6(sa), port(sa));
    if hook == HOOK_SENDMSG6 && port == 0 && addr == [0; 16] {
        // As in `judge4` (IPV6_TCLASS for ECN, hop limit, pktinfo...).
        (addr, port) = connected_peer(ctx, true);
    }
    judge(slot, ctx, dir, hook, target, (&addr, port), true)
}

/// Turns a decision of the egress hook into its answer, counting and
/// reporting it. An internal error rejects, in audit mode too.
#[inline(always)]
fn conclude(
    slot: &Slot,
    verdict: Result<bool, ()>,
    hook: u32,
    proto: u32,
    addr: &TrieAddr,
    port: u32,
    task: Task,
) -> bool {
    settle(slot, verdict, hook, proto, addr, port, task, false)
}

/// The trie entry for `addr`: the policy's longest matching prefix.
#[inline(always)]
fn lookup(slot: &Slot, addr: &TrieAddr, dir: Direction) -> Result<TrieValue, ()> {
    // Policy 0 is never allocated: a slot not yet written denies everything.
    if slot.policy == 0 {
        return Err(());
    }
    let kind = match dir {
        Direction::Dest => RULE_DEST,
        Direction::Bind => RULE_BIND,
    };
    let key = Key::new(RULE_PREFIX + 128, rule_key(slot.policy, kind, addr));
    SBX_RULES.get(&key).copied().ok_or(())
}

/// The verdict of entry `v` for `port` and `proto`.
#[inline(always)]
fn port_verdict(v: &TrieValue, port: u16, proto: u32) -> Result<bool, ()> {
    Ok(lookup_port(v, port, proto)? == VERDICT_ALLOW)
}

/// The decision for `addr` (IPv4 mapped, or plain IPv6).
#[inline(always)]
fn decide(slot: &Slot, addr: &TrieAddr, port: u16, proto: u32, dir: Direction) -> Result<bool, ()> {
    port_verdict(&lookup(slot, addr, dir)?, port, proto)
}

/// The decision for an IPv6 address, whatever form it has: an embedded
/// IPv4 form (see `sbx_common::addr`) is judged as the IPv4 address it
/// reaches (both, for Teredo), unless an explicit IPv6 rule at least as
/// specific as the form's prefix decides; a form of a local address is
/// refused. The one classification for every destination hook, the egress
/// backstop included; bind judges the address itself.
#[inline(always)]
fn decide_v6(slot: &Slot, addr: &TrieAddr, port: u16, proto: u32, dir: Direction) -> Result<bool, ()> {
    // A bind names a local address: what it would reach does not apply.
    let form = if dir == Direction::Dest { addr::embedded(addr, &slot.nat64) } else { None };
    let Some(e) = form else {
        return decide(slot, addr, port, proto, dir);
    };
    if e.is_local() {
        // It leaves the host to reach a local address: not loopback, and
        // nothing a policy can name, not even an explicit rule.
        return Ok(false);
    }
    if let Ok(v) = lookup(slot, addr, dir) {
        if v.explicit != 0 && u32::from(v.prefix_len) >= e.prefix_len {
            return port_verdict(&v, port, proto);
        }
    }
    let first = decide(slot, &addr::mapped(e.v4), port, proto, dir);
    match (first, e.second) {
        (Ok(true), Some(client)) => decide(slot, &addr::mapped(client), port, proto, dir),
        _ => first,
    }
}

#[inline(always)]
fn lookup_port(v: &TrieValue, port: u16, proto: u32) -> Result<u8, ()> {
    let mut tcp = if v.defaults & DEFAULT_TCP != 0 { VERDICT_ALLOW } else { VERDICT_DENY };
    let mut udp = if v.defaults & DEFAULT_UDP != 0 { VERDICT_ALLOW } else { VERDICT_DENY };
    let len = usize::from(v.nsegs);
    let mut i = 0;
    while i < MAX_SEGMENTS {
        if i >= len {
            break;
        }
        let seg = segment(v, i)?;
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
