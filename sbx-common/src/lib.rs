//! The kernel contract of sbx: every type that crosses the user/kernel boundary.
//!
//! The eBPF programs in `sbx-ebpf` and the loader in `sbx-user` both compile
//! this crate, so a layout change is seen by both sides at once. Every key and
//! value is `#[repr(C)]`, uses fixed-width integers and spells out its padding;
//! nothing here is a `bool` or a Rust enum, because the kernel side reads bytes
//! the loader wrote and an invalid bit pattern would be undefined behaviour.
//! Each layout is pinned by a compile-time size assertion.
//!
//! # How a verdict is found
//! Both IPv4 and IPv6 destinations are looked up by a 128-bit address: IPv4
//! `a.b.c.d` is stored as the IPv4-mapped IPv6 address `::ffff:a.b.c.d` with
//! its prefix length plus 96. The trie value ([`TrieValue`]) carries the
//! verdicts for ports outside every range and names a short run of port
//! ranges ([`PortSegment`]) in the host's segment array. The loader has
//! already resolved rule precedence, so the programs do one trie lookup and
//! a bounded scan of at most [`MAX_SEGMENTS`] array elements. The cost does
//! not depend on how many rules the policy has.
//!
//! # One program set for every sandbox
//! The programs are loaded once per host and program set and pinned; every
//! sandbox links the same programs to its cgroup. A program finds the
//! policy of the sandbox it runs for through cgroup storage bound to the
//! attach point ([`MAP_SLOT`], keyed by the cgroup id alone, so one cell is
//! shared by every hook of a sandbox): the [`Slot`] names the policy's
//! index. Every policy of the host lives in one LPM trie ([`MAP_RULES`]),
//! its keys prefixed by the policy index and the kind of entry
//! ([`rule_key`]), and in one array of port ranges ([`MAP_SEGMENTS`]), so a
//! sandbox adds entries, not maps. An all-zero slot (attached, policy not
//! yet written) denies everything. `update` writes a new slot in one map
//! update, which the kernel applies as one pointer swap: every hook moves
//! from the old policy to the new one at the same instant.
#![no_std]

pub mod addr;

/// Version of the contract between the programs and the loader. Part of
/// the program set's identity (with a hash of the object): a loader never
/// drives programs of another contract.
pub const CONTRACT_VERSION: u32 = 6;

/// Shared cgroup storage ([`Slot`]), one cell per sandbox cgroup.
pub const MAP_SLOT: &str = "SBX_SLOT";
/// Per-CPU cgroup storage ([`Stats`]): counters and the event rate limiter
/// of one sandbox.
pub const MAP_STATS: &str = "SBX_STATS";
/// The host's LPM trie of every policy's destination and bind entries,
/// keyed by [`rule_key`]: policy index, [`RULE_DEST`] or [`RULE_BIND`], then
/// the address.
pub const MAP_RULES: &str = "SBX_RULES";
/// The host's array of port ranges ([`PortSegment`]); a [`TrieValue`] names
/// a run of them. Each policy owns whole blocks of [`SEGMENT_BLOCK`].
pub const MAP_SEGMENTS: &str = "SBX_SEGMENTS";
/// What each policy index holds ([`PolicyMeta`]), by index; userspace only,
/// under the host lock.
pub const MAP_POLICIES: &str = "SBX_POLICIES";
/// Outer array of per-sandbox event ring buffers, by [`Slot::events`].
pub const MAP_EVENTS_OF: &str = "SBX_EVENTS_OF";
/// The host's event ring buffer, for sandboxes without one of their own.
pub const MAP_HOST_EVENTS: &str = "SBX_HOST_EVENTS";
/// Allocation state of policy and event indices ([`Pool`]); userspace only,
/// under the host lock.
pub const MAP_POOL: &str = "SBX_POOL";

/// Policy indices of the host. Index 0 is never used, so a zero slot names
/// no policy. An update holds two at once. Fits the 24 bits [`rule_key`]
/// gives it.
pub const POLICY_SLOTS: u32 = 32_768;
const _: () = assert!(POLICY_SLOTS <= 1 << 24);
/// Per-sandbox event ring buffer indices of the host; 0 means "the host
/// buffer".
pub const EVENT_SLOTS: u32 = 16_384;

/// Entries [`MAP_RULES`] holds for the whole host: at least twice the
/// largest policy (both of its tries full, during an update) and the
/// small policies of ten thousand sandboxes beside it. Nodes are allocated
/// as entries are added; the limit costs nothing until it is used.
pub const HOST_RULES: u32 = 1 << 24;

/// Port ranges in a block of [`MAP_SEGMENTS`], the unit a policy is given.
pub const SEGMENT_BLOCK: u32 = 16;
/// Blocks of [`MAP_SEGMENTS`].
pub const SEGMENT_BLOCKS: u32 = 65_536;
/// Port ranges [`MAP_SEGMENTS`] holds (8 bytes each, allocated when the
/// program set is loaded: 8 MiB).
pub const SEGMENTS: u32 = SEGMENT_BLOCK * SEGMENT_BLOCKS;
/// Port ranges one policy may hold: a quarter of the host's, so that an
/// update of the largest policy (old and new at once) leaves half of the
/// host's ranges to every other sandbox.
pub const MAX_POLICY_SEGMENTS: u32 = SEGMENTS / 4;

/// [`rule_key`] kind of a policy's first entry: its marker, at address `::`
/// with the full prefix length, which no lookup asks for. It is the first
/// key of the policy in the trie's key order (children with a 0 bit come
/// first, and the marker has nothing but 0 bits after the policy index), so
/// the loader finds every entry of one policy from it, without walking the
/// host's.
pub const RULE_MARK: u8 = 0;
/// [`rule_key`] kind of destination entries (connect, sendmsg, egress).
pub const RULE_DEST: u8 = 1;
/// [`rule_key`] kind of bind entries.
pub const RULE_BIND: u8 = 2;
/// Prefix bits of a [`RuleKey`] before the address: policy index and kind.
pub const RULE_PREFIX: u32 = 32;

/// Data part of a [`MAP_RULES`] key: `policy << 8 | kind` big-endian, then
/// the address.
pub type RuleKey = [u8; 20];

/// The [`MAP_RULES`] key data of `addr` in `policy`'s entries of `kind`.
#[expect(clippy::inline_always, reason = "called from the eBPF programs' lookups, as `addr`'s functions are")]
#[inline(always)]
#[must_use]
pub const fn rule_key(policy: u32, kind: u8, addr: &TrieAddr) -> RuleKey {
    let head = ((policy << 8) | kind as u32).to_be_bytes();
    let mut key = [0u8; 20];
    key[0] = head[0];
    key[1] = head[1];
    key[2] = head[2];
    key[3] = head[3];
    let mut i = 0;
    while i < 16 {
        key[4 + i] = addr[i];
        i += 1;
    }
    key
}

/// What a policy index holds, for the loader to free it ([`MAP_POLICIES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    /// Entries in [`MAP_RULES`], the marker included.
    pub entries: u32,
    /// First block of its port ranges in [`MAP_SEGMENTS`].
    pub first_block: u32,
    /// Blocks it owns (0: every entry's ports are uniform).
    pub blocks: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyMeta>() == 16);

/// What a sandbox's programs read first: which policy, which settings.
/// Written by `sbx-user` with one map update; read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The sandbox cgroup's id (the attach point), carried in events. Zero
    /// in a slot that was never written.
    pub cgroup_id: u64,
    /// The policy index (its entries in [`MAP_RULES`]); 0: none (deny all).
    pub policy: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Policy generation, copied into events.
    pub generation: u32,
    /// Index into [`MAP_EVENTS_OF`], or 0 for the host buffer.
    pub events: u32,
    /// Events each CPU may emit per second (token bucket refill rate).
    pub events_per_sec: u32,
    /// Token bucket size.
    pub events_burst: u32,
    /// Proxy address for [`FLAG_REDIRECT`], IPv4 mapped, network order.
    pub proxy_addr: [u8; 16],
    /// Proxy port, host byte order.
    pub proxy_port: u32,
    /// Zero.
    pub _pad: u32,
    /// The policy's NAT64 network-specific prefixes (unused entries zero).
    pub nat64: [addr::Nat64Prefix; addr::MAX_NAT64_PREFIXES],
}
const _: () = assert!(core::mem::size_of::<Slot>() == 56 + 20 * addr::MAX_NAT64_PREFIXES);

/// Per-CPU state of one sandbox ([`MAP_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// See [`counter_index`].
    pub counters: [u64; NUM_COUNTERS as usize],
    /// `bpf_ktime_get_ns` of the last refill of the event token bucket.
    pub last_ns: u64,
    /// Tokens left, scaled by 10^9.
    pub tokens: u64,
    /// Destinations the hooks allowed lately on this CPU (see
    /// [`RECENT_VERDICTS`]).
    pub recent: [RecentVerdict; RECENT_VERDICTS],
    /// Where the next entry of `recent` goes (modulo its length).
    pub next: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Stats>() == 8 * (NUM_COUNTERS as usize + 2) + 40 * RECENT_VERDICTS + 8);

/// Allocation state of the host's policy indices, event indices and
/// segment blocks. A policy that is freed is quarantined, not removed: a
/// program that read the old slot may still be reading its entries and
/// port ranges (a decision can take several lookups), so they stay as they
/// are until an RCU grace period that began after the free has passed;
/// then the loader deletes the entries and gives the index and blocks out
/// again. It waits for one when the quarantine holds [`QUARANTINE_POLICIES`]
/// policies or [`QUARANTINE_RULES`] entries, when nothing else is free, and
/// on `gc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    /// Bit `i` set: policy index `i` is in use (or quarantined).
    pub policies: [u64; POLICY_SLOTS as usize / 64],
    /// Bit `i` set: event ring index `i` is in use.
    pub events: [u64; EVENT_SLOTS as usize / 64],
    /// Bit `i` set: segment block `i` is in use (or quarantined).
    pub blocks: [u64; SEGMENT_BLOCKS as usize / 64],
    /// Bit `i` set: policy index `i` was freed, and is still taken in
    /// [`Pool::policies`], its entries in place, until a grace period has
    /// passed.
    pub quarantined_policies: [u64; POLICY_SLOTS as usize / 64],
    /// As [`Pool::quarantined_policies`], for segment blocks.
    pub quarantined_blocks: [u64; SEGMENT_BLOCKS as usize / 64],
    /// Entries of [`MAP_RULES`] that policies hold, quarantined ones too.
    pub rules: u64,
    /// Of [`Pool::rules`], the entries of quarantined policies.
    pub quarantined_rules: u64,
}
const _: () = assert!(
    core::mem::size_of::<Pool>()
        == (2 * POLICY_SLOTS as usize + EVENT_SLOTS as usize + 2 * SEGMENT_BLOCKS as usize) / 8 + 16
);

/// Quarantined policies at which the loader waits for a grace period and
/// removes them (see [`Pool`]).
pub const QUARANTINE_POLICIES: u32 = 64;
/// Quarantined entries at which the loader does the same.
pub const QUARANTINE_RULES: u64 = 65_536;

/// Key of [`MAP_ORIGDST`]: a client port is unique only within its network
/// namespace, so the namespace's cookie is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigKey {
    /// `SO_NETNS_COOKIE` of the client's (and so the proxy's) namespace.
    pub netns_cookie: u64,
    /// The client's local port, host byte order.
    pub port: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<OrigKey>() == 16);

/// Name of the destination trie (connect and sendmsg hooks).
pub const MAP_DEST: &str = "SBX_DEST";
/// Name of the bind trie (bind hooks).
pub const MAP_BIND: &str = "SBX_BIND";
/// Name of the port-table array shared by both tries.
pub const MAP_PORTS: &str = "SBX_PORTS";
/// Name of the one-entry [`Config`] array.
pub const MAP_CONFIG: &str = "SBX_CONFIG";
/// Name of the deny-event ring buffer ([`Event`] records).
pub const MAP_EVENTS: &str = "SBX_EVENTS";
/// Name of the per-CPU counter array (see [`counter_index`]).
pub const MAP_COUNTERS: &str = "SBX_COUNTERS";
/// Name of the per-CPU event rate limiter state.
pub const MAP_RATE: &str = "SBX_RATE";

/// Name of the map from socket cookie to original destination, for
/// connections the connect hooks redirected to the proxy.
pub const MAP_REDIRECTED: &str = "SBX_REDIRECTED";
/// Name of the map a proxy reads: [`OrigKey`] (network namespace cookie and
/// the client's local port) to the [`OrigDst`] it originally asked for.
/// (Before contract 2, keyed by the port alone.)
pub const MAP_ORIGDST: &str = "SBX_ORIGDST";

/// Every map of the program set, pinned with it.
pub const MAPS: [&str; 12] = [
    MAP_SLOT,
    MAP_STATS,
    MAP_CONNECTS,
    MAP_CONNECTS_ZERO,
    MAP_RULES,
    MAP_SEGMENTS,
    MAP_POLICIES,
    MAP_EVENTS_OF,
    MAP_HOST_EVENTS,
    MAP_POOL,
    MAP_REDIRECTED,
    MAP_ORIGDST,
];

/// Destinations a sandbox's connect and sendmsg hooks allowed lately, kept
/// per CPU in its [`Stats`] ([`Stats::recent`]): the egress backstop agrees
/// with the hook that judged a socket instead of judging the same
/// destination again (and instead of judging a header that netfilter's
/// DNAT already rewrote). The SYN of a connect and the datagram of a
/// sendmsg leave on the CPU whose hook just judged them, so a few entries
/// per CPU catch them; an entry that is gone (evicted, or another CPU's)
/// only means the backstop judges that packet in full. The connect and
/// sendmsg hooks also take an entry of the same policy for the same
/// destination, port and [`RecentVerdict::kind`] as their verdict, whatever
/// its socket: a client that connects to one server again and again (a
/// connection pool, a proxy, a database) is judged without a trie lookup,
/// so its cost does not grow with the policy. Per-socket storage
/// did this before, at about 0.75 µs per connect to create it and as much
/// again to free it; a host-wide LRU hash cost nearly as much (its entries
/// are cold when reused).
pub const RECENT_VERDICTS: usize = 4;

/// The TCP connects each sandbox's connect hooks allowed lately
/// ([`Connects`], by [`Slot::cgroup_id`]), shared by all CPUs: for the SYN
/// that leaves from another CPU than the one its hook ran on. `connect()`
/// can give up the CPU between the hook and the SYN (the local port search
/// yields), and the task may then move; judged in full, such a SYN would
/// meet the policy in force at that moment, and an `update` in between
/// would drop it (the connect then hangs until it times out). An LRU hash
/// the programs fill themselves (a program may use only one cgroup storage
/// map of each kind, and [`MAP_SLOT`] is that one); a sandbox whose entry
/// was evicted only loses this second chance.
pub const MAP_CONNECTS: &str = "SBX_CONNECTS";

/// Sandboxes [`MAP_CONNECTS`] holds at once.
pub const CONNECTS_ENTRIES: u32 = 16_384;

/// An all-zero [`Connects`], the value a program inserts into
/// [`MAP_CONNECTS`] for a sandbox that has none yet (a program's stack
/// cannot hold one beside everything else).
pub const MAP_CONNECTS_ZERO: &str = "SBX_CONNECTS_ZERO";

/// Entries of [`Connects`].
pub const RECENT_CONNECTS: usize = 8;

/// The value of [`MAP_CONNECTS`]: entries written at a random index, each
/// with its cookie cleared first and set last.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Connects {
    pub recent: [RecentVerdict; RECENT_CONNECTS],
}
const _: () = assert!(core::mem::size_of::<Connects>() == 40 * RECENT_CONNECTS);

/// A destination one sandbox layer allowed for one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentVerdict {
    /// `bpf_get_socket_cookie()`: unique per socket for the host's uptime,
    /// never reused; 0: an unused entry.
    pub cookie: u64,
    /// The destination as the caller gave it (IPv4 mapped into IPv6,
    /// network byte order), which is also how the socket records it.
    pub addr: [u8; 16],
    /// Its port, host byte order.
    pub port: u32,
    /// The policy index that allowed it ([`Slot::policy`]) and the
    /// sandbox's policy generation then ([`Slot::generation`]): a UDP
    /// verdict holds only while the policy that made it is in force. Both,
    /// because a freed index is reused; the generation grows with every
    /// policy a sandbox gets, and a re-attach zeroes the cell.
    pub policy: u32,
    pub generation: u32,
    /// How it was judged: the socket's protocol (`IPPROTO_TCP`/`_UDP`),
    /// plus [`RECENT_V6`] if as an IPv6 destination (embedded IPv4 forms
    /// classified). A connect or sendmsg to the same destination, judged
    /// the same way under the same policy, gets the same verdict.
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<RecentVerdict>() == 40);

/// [`RecentVerdict::kind`] bit: judged as an IPv6 destination.
pub const RECENT_V6: u32 = 1 << 8;

/// The per-sandbox maps of contract 1 (before program sets), which
/// sandboxes attached by an older sbx still have pinned beside their links.
pub const LEGACY_MAPS: [&str; 9] =
    [MAP_DEST, MAP_BIND, MAP_PORTS, MAP_CONFIG, MAP_EVENTS, MAP_COUNTERS, MAP_RATE, MAP_REDIRECTED, MAP_ORIGDST];

/// Hook numbers carried in [`Event::hook`] and used by [`counter_index`],
/// in [`PROGRAMS`] order.
pub const HOOK_NAMES: [&str; 10] =
    ["connect4", "connect6", "sendmsg4", "sendmsg6", "bind4", "bind6", "sock_create", "setsockopt", "egress", "accept"];
/// Number of hooks.
pub const NUM_HOOKS: u32 = 10;

/// Index in [`MAP_COUNTERS`] of the count of calls at `hook` that were
/// allowed (`denied == 0`) or denied (`denied == 1`, including audit-mode
/// would-be denials).
#[must_use]
pub const fn counter_index(hook: u32, denied: u32) -> u32 {
    hook * 2 + denied
}
/// Index in [`MAP_COUNTERS`] of events lost to the rate limit or a full
/// ring buffer.
pub const COUNTER_EVENTS_DROPPED: u32 = NUM_HOOKS * 2;
/// Number of entries in [`MAP_COUNTERS`].
pub const NUM_COUNTERS: u32 = NUM_HOOKS * 2 + 1;

/// [`Config::flags`] bit: audit mode. Nothing is blocked; every decision
/// enforce mode would have denied is reported as an event.
pub const FLAG_AUDIT: u32 = 1;

/// [`Config::flags`] bit: transparent proxy redirect. A TCP connect the
/// policy denies to a non-local destination is rewritten to the proxy.
pub const FLAG_REDIRECT: u32 = 2;

/// [`Slot::flags`] bit: trace each decision of this sandbox through
/// aya-log (`run -vv`). One buffer serves every sandbox and aya-log's level
/// is fixed when the programs load, so the switch is per sandbox, here.
pub const FLAG_DEBUG: u32 = 4;

/// Name of aya-log's ring buffer in the object, pinned with the set.
pub const MAP_AYA_LOGS: &str = "AYA_LOGS";

/// The original destination of a redirected connection ([`MAP_REDIRECTED`],
/// [`MAP_ORIGDST`] values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Address, IPv4 mapped into IPv6, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 20);

/// Sandbox-wide settings, the single entry of [`MAP_CONFIG`]. Written by
/// `sbx-user` before the programs are attached; read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Policy generation, copied into events so userspace can tell which
    /// policy decided.
    pub generation: u32,
    /// Events each CPU may emit per second (token bucket refill rate).
    pub events_per_sec: u32,
    /// Token bucket size: the burst a CPU may emit at once.
    pub events_burst: u32,
    /// Proxy address for [`FLAG_REDIRECT`], IPv4 mapped into IPv6, network
    /// byte order.
    pub proxy_addr: [u8; 16],
    /// Proxy port, host byte order.
    pub proxy_port: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 40);

/// Per-CPU token bucket of the event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RateState {
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
    /// Tokens left, scaled by 10^9 (one event costs 10^9).
    pub tokens: u64,
}
const _: () = assert!(core::mem::size_of::<RateState>() == 16);

/// [`Event::port`] of an egress event for a packet dropped because it
/// carried IPv4 options or an IPv6 routing header (source routing).
pub const EVENT_PORT_SOURCE_ROUTE: u32 = u32::MAX;

/// [`Event::verdict`]: the call was refused.
pub const EVENT_DENIED: u32 = 0;
/// [`Event::verdict`]: audit mode; enforce mode would have refused it.
pub const EVENT_AUDIT: u32 = 1;
/// [`Event::verdict`]: refused as a direct connect, sent to the proxy
/// instead (transparent proxy mode).
pub const EVENT_REDIRECTED: u32 = 2;

/// One denial (or audit-mode would-be denial), sent through
/// [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`).
    pub ts_ns: u64,
    /// Cgroup id of the caller (0 where the hook cannot tell).
    pub cgroup_id: u64,
    /// Thread group id (0 in the egress hook, which has no task).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task name, NUL-padded.
    pub comm: [u8; 16],
    /// Index into [`HOOK_NAMES`].
    pub hook: u32,
    /// IP protocol (6 TCP, 17 UDP), or the socket protocol at `sock_create`.
    pub protocol: u32,
    /// Destination (local, for bind) address, IPv4 mapped into IPv6,
    /// network byte order. For `sock_create`: zero. For setsockopt: zero.
    pub addr: [u8; 16],
    /// Port, host byte order. For `sock_create`: the socket type. For
    /// setsockopt: the option name.
    pub port: u32,
    /// [`EVENT_DENIED`], [`EVENT_AUDIT`] or [`EVENT_REDIRECTED`].
    pub verdict: u32,
    /// [`Config::generation`] when the decision was made.
    pub generation: u32,
    /// Zero.
    pub _pad: u32,
    /// The sandbox (attach point) cgroup id whose policy decided. Absent
    /// (zero) in events of contract 1, which were 80 bytes long.
    pub sandbox: u64,
}
const _: () = assert!(core::mem::size_of::<Event>() == 88);

/// Length of an [`Event`] of contract 1 (without `sandbox`).
pub const LEGACY_EVENT_LEN: usize = 80;

/// Program names, one per hook. The kernel keeps 15 bytes of a program name.
pub const PROG_CONNECT4: &str = "sbx_connect4";
/// See [`PROG_CONNECT4`].
pub const PROG_CONNECT6: &str = "sbx_connect6";
/// See [`PROG_CONNECT4`].
pub const PROG_SENDMSG4: &str = "sbx_sendmsg4";
/// See [`PROG_CONNECT4`].
pub const PROG_SENDMSG6: &str = "sbx_sendmsg6";
/// See [`PROG_CONNECT4`].
pub const PROG_BIND4: &str = "sbx_bind4";
/// See [`PROG_CONNECT4`].
pub const PROG_BIND6: &str = "sbx_bind6";

/// `cgroup/sock_create`: which sockets may be created at all.
pub const PROG_SOCK_CREATE: &str = "sbx_sock_create";
/// `cgroup/setsockopt`: refuses options that redirect packets.
pub const PROG_SETSOCKOPT: &str = "sbx_setsockopt";
/// `cgroup_skb/egress`: the backstop on the packets actually sent.
pub const PROG_EGRESS: &str = "sbx_egress";
/// `sockops`: records the original destination of redirected connections
/// under the client's local port once the kernel has chosen it.
pub const PROG_SOCKOPS: &str = "sbx_sockops";

/// Every program sbx attaches, in attach order.
pub const PROGRAMS: [&str; 10] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_BIND4,
    PROG_BIND6,
    PROG_SOCK_CREATE,
    PROG_SETSOCKOPT,
    PROG_EGRESS,
    PROG_SOCKOPS,
];

/// Verdict value: reject the call with `EPERM`. Zero, so that zeroed memory
/// (an unwritten table slot) denies.
pub const VERDICT_DENY: u8 = 0;
/// Verdict value: let the call proceed.
pub const VERDICT_ALLOW: u8 = 1;

/// Maximum number of port ranges in one [`PortTable`]. Bounds the scan in
/// the programs and the size of a table (8 + 8 * 32 = 264 bytes).
pub const MAX_SEGMENTS: usize = 32;

/// Data part of an LPM trie key ([`MAP_DEST`], [`MAP_BIND`]): an IPv6
/// address in network byte order. IPv4 is stored IPv4-mapped
/// (`::ffff:a.b.c.d`) with the prefix length raised by 96.
pub type TrieAddr = [u8; 16];

/// Value of [`MAP_RULES`]: how ports are judged for this prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrieValue {
    /// Index in [`MAP_SEGMENTS`] of the first of the entry's port ranges.
    pub segs: u32,
    /// The entry's own prefix length (an LPM lookup does not say which
    /// prefix matched): an explicit rule at least as long as an embedded
    /// form's prefix decides for that form.
    pub prefix_len: u8,
    /// 1 when a user rule names exactly this prefix (not only a default or
    /// a built-in entry).
    pub explicit: u8,
    /// Number of port ranges, at most [`MAX_SEGMENTS`].
    pub nsegs: u8,
    /// Verdicts for ports outside every range: [`DEFAULT_TCP`] and
    /// [`DEFAULT_UDP`] bits (set: allow).
    pub defaults: u8,
}
const _: () = assert!(core::mem::size_of::<TrieValue>() == 8);

impl TrieValue {
    /// An entry that allows nothing (the value of a policy's marker).
    #[must_use]
    pub const fn deny() -> Self {
        Self { segs: 0, prefix_len: 0, explicit: 0, nsegs: 0, defaults: 0 }
    }
}

/// [`TrieValue::defaults`] bit: TCP ports outside every range are allowed.
pub const DEFAULT_TCP: u8 = 1;
/// [`TrieValue::defaults`] bit: UDP ports outside every range are allowed.
pub const DEFAULT_UDP: u8 = 2;

/// One port range of a [`PortTable`] with its verdict per protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSegment {
    /// First port of the range, host byte order.
    pub lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub hi: u16,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`] for TCP.
    pub tcp: u8,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`] for UDP.
    pub udp: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PortSegment>() == 8);

/// A resolved port verdict table, the value of [`MAP_PORTS`].
///
/// `segments[..len]` are sorted by `lo` and disjoint; a port outside all of
/// them gets `default_tcp`/`default_udp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortTable {
    /// Number of valid entries in `segments`, at most [`MAX_SEGMENTS`].
    pub len: u32,
    /// Verdict for TCP ports outside every segment.
    pub default_tcp: u8,
    /// Verdict for UDP ports outside every segment.
    pub default_udp: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// Port ranges; entries past `len` are zero and never read.
    pub segments: [PortSegment; MAX_SEGMENTS],
}
const _: () = assert!(core::mem::size_of::<PortTable>() == 8 + 8 * MAX_SEGMENTS);

impl PortTable {
    /// A table with no segments that gives `tcp`/`udp` for every port.
    #[must_use]
    pub const fn uniform(tcp: u8, udp: u8) -> Self {
        Self {
            len: 0,
            default_tcp: tcp,
            default_udp: udp,
            _pad: [0; 2],
            segments: [PortSegment { lo: 0, hi: 0, tcp: 0, udp: 0, _pad: [0; 2] }; MAX_SEGMENTS],
        }
    }
}

/// A loopback address every policy denies on every port
/// (127.255.255.254), so that `verify` and `run` always have a local
/// target that must be refused.
pub const SENTINEL: [u8; 4] = [127, 255, 255, 254];
/// The port of `run`'s start-up proof: a connect to [`SENTINEL`] on this
/// port from inside the new cgroup must fail with `EPERM` before the
/// command is executed. Denials of it are kept out of events and counters.
pub const PROOF_PORT: u16 = 1;

/// IP protocol numbers the programs distinguish.
pub const IPPROTO_TCP: u32 = 6;
/// See [`IPPROTO_TCP`].
pub const IPPROTO_UDP: u32 = 17;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and arrays with explicit padding
    // fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::TrieValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Stats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pool {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PolicyMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSegment {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_keys_put_the_policy_then_the_kind_then_the_address() {
        let addr = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let k = rule_key(0x01_2345, RULE_BIND, &addr);
        assert_eq!(k[..4], [0x01, 0x23, 0x45, RULE_BIND]);
        assert_eq!(k[4..], addr);
        // A policy's marker sorts before every other key of the policy
        // (bitwise), and after every key of a smaller index.
        let mark = rule_key(7, RULE_MARK, &[0; 16]);
        assert!(mark < rule_key(7, RULE_DEST, &[0; 16]));
        assert!(mark < rule_key(7, RULE_MARK, &addr));
        assert!(mark > rule_key(6, RULE_BIND, &[0xff; 16]));
    }
}
