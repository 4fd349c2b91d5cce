//! The policy model: parse TOML files, profiles and command-line flags into a
//! typed, validated [`Policy`].
//!
//! All validation and every user-facing message about policy input lives
//! here. A [`PolicyError`] names where the bad value came from (file and
//! line, or the flag), the value itself, and what is wrong with it, so a
//! policy is rejected before anything touches the kernel.
//!
//! # Rule syntax
//! `[tcp://|udp://]TARGET[:PORTS]` where TARGET is an IPv4 or IPv6 address,
//! a CIDR (`[v6/len]` in brackets when ports follow), empty for any host
//! (`:25`), or one of the tokens `any`, `private`, `metadata`. PORTS is `*`,
//! `N`, `N-M`, or a comma list of those. No protocol means TCP and UDP.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// What happens to traffic no rule matches, and what a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Reject with `EPERM`.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// The transport protocols a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Protocols {
    /// The rule applies to TCP.
    pub tcp: bool,
    /// The rule applies to UDP.
    pub udp: bool,
}

impl Protocols {
    /// TCP and UDP.
    pub const BOTH: Self = Self { tcp: true, udp: true };
    /// TCP only.
    pub const TCP: Self = Self { tcp: true, udp: false };
    /// UDP only.
    pub const UDP: Self = Self { tcp: false, udp: true };
}

/// An inclusive port range, host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port, inclusive.
    pub hi: u16,
}

impl PortRange {
    /// Every port, 0 to 65535.
    pub const ALL: Self = Self { lo: 0, hi: u16::MAX };

    /// A single port.
    #[must_use]
    pub const fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Where a piece of policy came from, for error messages and `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// A file path, `--allow`-style flag name, or `profile NAME`.
    pub source: String,
    /// 1-based line in `source`, when it is a file.
    pub line: Option<usize>,
}

impl Origin {
    fn flag(name: &str) -> Self {
        Self { source: name.to_owned(), line: None }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.source),
            None => f.write_str(&self.source),
        }
    }
}

/// One allow or deny rule, as written and as understood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The rule's text exactly as the user wrote it.
    pub text: String,
    /// Where it was written.
    pub origin: Origin,
    /// Allow or deny.
    pub action: Action,
    /// Protocols it covers.
    pub protocols: Protocols,
    /// Networks it covers, normalised (host bits cleared, IPv4-mapped IPv6
    /// turned into IPv4). A token such as `private` expands to several.
    pub nets: Vec<IpNet>,
    /// Ports it covers, sorted and merged.
    pub ports: Vec<PortRange>,
    /// For a pinned-domain rule: the host name. `nets` then holds the
    /// addresses it resolved to when the policy was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Which loopback ports the sandbox may reach (127.0.0.0/8, `::1`, and the
/// unspecified addresses, which also reach the local host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loopback {
    /// Every port.
    Any,
    /// None at all.
    None,
    /// Only these ports.
    Ports(Vec<PortRange>),
}

/// Where the sandbox may bind (and so listen).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bind {
    /// Loopback addresses on any port; the unspecified address with port 0.
    Loopback,
    /// Anywhere.
    Any,
    /// Only the addresses and ports these allow rules name.
    Rules(Vec<Rule>),
}

/// Enforce or only report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what the policy denies.
    #[default]
    Enforce,
    /// Refuse nothing; report every call enforce mode would refuse.
    Audit,
}

/// Landlock filesystem rules for `run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsPolicy {
    /// Canonical paths readable and executable.
    pub read: Vec<PathBuf>,
    /// Canonical paths readable, writable, creatable, removable.
    pub write: Vec<PathBuf>,
}

/// A complete, validated egress policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Verdict when no rule matches (always deny in proxy-only mode).
    pub default: Action,
    /// Loopback reachability, decided before the rules.
    pub loopback: Loopback,
    /// The proxy of proxy-only mode.
    pub proxy: Option<SocketAddr>,
    /// Allow and deny rules, in the order given. Order does not matter for
    /// the verdict (see [`crate::compile`]); it is kept for display.
    pub rules: Vec<Rule>,
    /// Bind policy.
    pub bind: Bind,
    /// Enforce or audit.
    #[serde(default)]
    pub mode: Mode,
    /// Filesystem rules (`run` only); `None` when none were given.
    #[serde(default)]
    pub filesystem: Option<FsPolicy>,
    /// Transparent proxy mode: denied TCP connects to non-local
    /// destinations are rewritten to the proxy instead of refused.
    #[serde(default)]
    pub redirect: bool,
}

/// A policy input problem, with where it was and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A value is invalid.
    #[error("{origin}: `{value}`: {message}")]
    Invalid {
        /// File and line, or flag.
        origin: Origin,
        /// The offending value as written.
        value: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The TOML itself does not parse, or has an unknown key.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The policy file.
        path: String,
        /// 1-based line of the problem.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The policy file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Settings that each parse but contradict one another.
    #[error("{0}")]
    Conflict(String),
}

fn invalid(origin: &Origin, value: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { origin: origin.clone(), value: value.to_owned(), message: message.into() }
}

/// Where a rule is used: destination rules and bind rules accept different
/// targets (bind rules may name loopback addresses; destination rules leave
/// loopback to the `loopback` setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleContext {
    /// `allow`/`deny` destination rules.
    Destination,
    /// `bind` rules.
    Bind,
}

const PRIVATE_NETS: [&str; 7] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"];
const METADATA_NETS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];
const ANY_NETS: [&str; 2] = ["0.0.0.0/0", "::/0"];

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("built-in network literal")).collect()
}

/// Parses one rule (`[tcp://|udp://]TARGET[:PORTS]`).
pub fn parse_rule(text: &str, action: Action, origin: &Origin, ctx: RuleContext) -> Result<Rule, PolicyError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid(origin, text, "empty rule"));
    }
    let (protocols, rest) = if let Some((scheme, rest)) = trimmed.split_once("://") {
        let protocols = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Protocols::TCP,
            "udp" => Protocols::UDP,
            other => {
                return Err(invalid(
                    origin,
                    text,
                    format!("unknown protocol `{other}://`; use `tcp://`, `udp://`, or no prefix for both"),
                ))
            }
        };
        if rest.is_empty() {
            return Err(invalid(origin, text, format!("nothing after `{scheme}://`; write a target such as `{scheme}://any`, `{scheme}://:53` or `{scheme}://10.0.0.0/8:443`")));
        }
        (protocols, rest)
    } else {
        (Protocols::BOTH, trimmed)
    };
    let (target, ports) = split_target_ports(rest).map_err(|m| invalid(origin, text, m))?;
    let ports = match ports {
        None => vec![PortRange::ALL],
        Some(p) => parse_ports(p).map_err(|m| invalid(origin, text, m))?,
    };
    if looks_like_hostname(target) && !is_token(target) {
        return match (ctx, action) {
            (RuleContext::Destination, Action::Allow) => Ok(Rule {
                text: trimmed.to_owned(),
                origin: origin.clone(),
                action,
                protocols,
                nets: Vec::new(),
                ports,
                host: Some(target.to_ascii_lowercase()),
            }),
            (RuleContext::Destination, Action::Deny) => Err(invalid(
                origin,
                text,
                format!("deny rules cannot name hosts: `{target}` can resolve to other addresses tomorrow, so a deny list by name fails open; deny its addresses or CIDRs instead"),
            )),
            (RuleContext::Bind, _) => Err(invalid(origin, text, format!("bind rules take addresses, not host names (`{target}`)"))),
        };
    }
    let nets = parse_target(target, ctx).map_err(|m| invalid(origin, text, m))?;
    Ok(Rule { text: trimmed.to_owned(), origin: origin.clone(), action, protocols, nets, ports, host: None })
}

/// Splits `TARGET[:PORTS]`, honouring `[v6]:ports` and bare IPv6.
fn split_target_ports(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (target, after) =
            inner.split_once(']').ok_or_else(|| "missing `]` after a bracketed IPv6 target".to_owned())?;
        return match after {
            "" => Ok((target, None)),
            _ => match after.strip_prefix(':') {
                Some(ports) => Ok((target, Some(ports))),
                None => Err(format!("unexpected `{after}` after `]`; write `[ADDR]:PORTS`")),
            },
        };
    }
    match s.matches(':').count() {
        1 => {
            let (target, ports) = s.split_once(':').expect("one colon");
            Ok((target, Some(ports)))
        }
        // No colon: no ports. Two or more: bare IPv6 (`2001:db8::1`,
        // `fd00::/8`), which cannot carry ports.
        _ => Ok((s, None)),
    }
}

/// Parses `*`, `N`, `N-M` and comma lists into sorted, merged ranges.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    if s.trim().is_empty() {
        return Err("empty port list after `:`; give ports such as `443`, `8000-8100`, `80,443` or `*`".into());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part == "*" {
            out.push(PortRange::ALL);
            continue;
        }
        let range = match part.split_once('-') {
            Some((lo, hi)) => {
                let lo = parse_port(lo)?;
                let hi = parse_port(hi)?;
                if lo > hi {
                    return Err(format!("port range `{part}` runs backwards; write `{hi}-{lo}`"));
                }
                PortRange { lo, hi }
            }
            None => PortRange::single(parse_port(part)?),
        };
        out.push(range);
    }
    Ok(merge_ranges(out))
}

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    s.parse::<u16>().ok().filter(|_| digits).ok_or_else(|| {
        if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
            format!("port `{s}` is out of range (0-65535)")
        } else {
            format!("`{s}` is not a port number; ports are `N`, `N-M`, comma lists or `*`")
        }
    })
}

/// Sorts ranges and merges overlapping or adjacent ones.
#[must_use]
pub fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort_unstable();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
            _ => out.push(r),
        }
    }
    out
}

fn parse_target(target: &str, ctx: RuleContext) -> Result<Vec<IpNet>, String> {
    let lower = target.to_ascii_lowercase();
    match lower.as_str() {
        "" | "any" => return Ok(nets(&ANY_NETS)),
        "private" => return Ok(nets(&PRIVATE_NETS)),
        "metadata" => return Ok(nets(&METADATA_NETS)),
        _ => {}
    }
    let net = if let Ok(ip) = target.parse::<IpAddr>() {
        IpNet::from(ip)
    } else if let Ok(net) = target.parse::<IpNet>() {
        net
    } else if target.contains('/') {
        return Err(format!("`{target}` is not a valid CIDR (IPv4 prefixes are /0-/32, IPv6 /0-/128)"));
    } else {
        return Err(format!("`{target}` is not an IP address, CIDR, or one of the tokens any, private, metadata"));
    };
    let net = normalise(net)?;
    if ctx == RuleContext::Destination && reaches_local_host(&net) {
        return Err(
            "this names a loopback or unspecified address; loopback access is set by `loopback` (`--loopback`), e.g. loopback = [5432]".into(),
        );
    }
    Ok(vec![net])
}

fn is_token(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "any" | "private" | "metadata")
}

fn looks_like_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && s.chars().any(|c| c.is_ascii_alphabetic())
}

/// Clears host bits, turns IPv4-mapped IPv6 into IPv4, and refuses the
/// IPv6 ranges whose reach sbx decides by an embedded IPv4 address.
fn normalise(net: IpNet) -> Result<IpNet, String> {
    let net = net.trunc();
    let IpNet::V6(v6) = net else { return Ok(net) };
    let bits = u128::from(v6.addr());
    let len = v6.prefix_len();
    if len >= 96 && bits >> 32 == 0xffff {
        #[expect(clippy::cast_possible_truncation, reason = "low 32 bits are the IPv4 address")]
        let v4 = Ipv4Addr::from(bits as u32);
        let v4 = Ipv4Net::new(v4, len - 96).expect("96..=128 minus 96 is a valid IPv4 length");
        return Ok(IpNet::V4(v4));
    }
    let nat64: Ipv6Net = "64:ff9b::/96".parse().expect("literal");
    let six_to_four: Ipv6Net = "2002::/16".parse().expect("literal");
    for (space, name) in [(nat64, "NAT64"), (six_to_four, "6to4")] {
        if space.contains(&v6) {
            return Err(format!(
                "{name} addresses ({space}) are judged by the IPv4 address they embed; write the IPv4 rule instead"
            ));
        }
    }
    Ok(net)
}

/// Whether every address of `net` reaches the local host (loopback or
/// unspecified).
fn reaches_local_host(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            n.prefix_len() >= 8 && n.addr().is_loopback() || (n.prefix_len() == 32 && n.addr().is_unspecified())
        }
        IpNet::V6(n) => n.prefix_len() == 128 && (n.addr().is_loopback() || n.addr().is_unspecified()),
    }
}

// ---------------------------------------------------------------------------
// Layered input: profile, then file, then flags.

/// Settings from one layer (a profile, a file, or the flags). `None` means
/// "this layer does not say"; rules add up across layers.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    default: Option<(Action, Origin)>,
    loopback: Option<Loopback>,
    proxy: Option<(SocketAddr, Origin)>,
    rules: Vec<Rule>,
    bind: Option<Bind>,
    mode: Option<Mode>,
    fs_read: Vec<PathBuf>,
    fs_write: Vec<PathBuf>,
    redirect: Option<(bool, Origin)>,
}

/// Builds a [`Policy`] from layers applied in order; later layers override
/// earlier settings and add rules.
#[derive(Clone, Debug, Default)]
pub struct PolicyBuilder {
    merged: Layer,
}

impl PolicyBuilder {
    /// An empty builder: default deny, loopback any, bind loopback.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a layer on top of what is there.
    pub fn apply(&mut self, layer: Layer) -> &mut Self {
        let Layer { default, loopback, proxy, rules, bind, mode, fs_read, fs_write, redirect } = layer;
        let m = &mut self.merged;
        if redirect.is_some() {
            m.redirect = redirect;
        }
        if mode.is_some() {
            m.mode = mode;
        }
        m.fs_read.extend(fs_read);
        m.fs_write.extend(fs_write);
        if default.is_some() {
            m.default = default;
        }
        if loopback.is_some() {
            m.loopback = loopback;
        }
        if proxy.is_some() {
            m.proxy = proxy;
        }
        m.rules.extend(rules);
        if bind.is_some() {
            m.bind = bind;
        }
        self
    }

    /// Checks the merged settings against each other and produces the
    /// policy, resolving pinned-domain rules with the system resolver.
    pub fn build(&self) -> Result<Policy, PolicyError> {
        self.build_with(&system_resolve, false)
    }

    /// As [`Self::build`], with a given resolver. With `allow_unresolved`,
    /// a name that does not resolve is kept with no addresses (it matches
    /// nothing) instead of failing.
    pub fn build_with(
        &self,
        resolve: &dyn Fn(&str) -> std::io::Result<Vec<IpAddr>>,
        allow_unresolved: bool,
    ) -> Result<Policy, PolicyError> {
        let Layer { default, loopback, proxy, rules, bind, mode, fs_read, fs_write, redirect } = self.merged.clone();
        let mut rules = rules;
        let names = rules.iter().filter(|r| r.host.is_some()).count();
        for rule in crate::progress::track("resolving host names", names, rules.iter_mut().filter(|r| r.host.is_some()))
        {
            pin_host(rule, resolve, allow_unresolved)?;
        }
        let bind = bind.unwrap_or(Bind::Loopback);
        let mode = mode.unwrap_or_default();
        let filesystem = (!fs_read.is_empty() || !fs_write.is_empty())
            .then(|| FsPolicy { read: dedup(fs_read), write: dedup(fs_write) });
        let Some((proxy_addr, proxy_origin)) = proxy else {
            if let Some((true, origin)) = redirect {
                return Err(PolicyError::Conflict(format!(
                    "{origin}: proxy redirect needs a proxy; set proxy = \"ADDR:PORT\" (--proxy)"
                )));
            }
            return Ok(Policy {
                redirect: false,
                default: default.map_or(Action::Deny, |(a, _)| a),
                loopback: loopback.unwrap_or(Loopback::Any),
                proxy: None,
                rules,
                bind,
                mode,
                filesystem,
            });
        };
        if let Some((Action::Allow, origin)) = &default {
            return Err(PolicyError::Conflict(format!(
                "{origin}: default = \"allow\" contradicts proxy-only mode ({proxy_origin}: proxy = {proxy_addr}), which denies everything the rules do not allow; drop one of them"
            )));
        }
        let loopback = if proxy_addr.ip().is_loopback() {
            let port = PortRange::single(proxy_addr.port());
            match loopback {
                None => Loopback::Ports(vec![port]),
                Some(Loopback::Any) => Loopback::Any,
                Some(Loopback::None) => {
                    return Err(PolicyError::Conflict(format!(
                        "loopback = \"none\" would block the proxy on {proxy_addr} ({proxy_origin}); allow its port, e.g. loopback = [{}]",
                        proxy_addr.port()
                    )))
                }
                Some(Loopback::Ports(mut ports)) => {
                    ports.push(port);
                    Loopback::Ports(merge_ranges(ports))
                }
            }
        } else {
            let net = IpNet::from(proxy_addr.ip());
            rules.push(Rule {
                text: format!("tcp://{proxy_addr}"),
                origin: proxy_origin,
                action: Action::Allow,
                protocols: Protocols::TCP,
                nets: vec![normalise(net).map_err(PolicyError::Conflict)?],
                ports: vec![PortRange::single(proxy_addr.port())],
                host: None,
            });
            loopback.unwrap_or(Loopback::None)
        };
        let redirect = redirect.is_some_and(|(r, _)| r);
        Ok(Policy { default: Action::Deny, loopback, proxy: Some(proxy_addr), rules, bind, mode, filesystem, redirect })
    }
}

/// Resolves a name with getaddrinfo (the system resolver, /etc/hosts first).
fn system_resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs as _;
    Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Resolves a pinned-domain rule once; its addresses are fixed from then
/// on, so a later DNS answer cannot widen what the sandbox reaches.
fn pin_host(
    rule: &mut Rule,
    resolve: &dyn Fn(&str) -> std::io::Result<Vec<IpAddr>>,
    allow_unresolved: bool,
) -> Result<(), PolicyError> {
    let host = rule.host.clone().expect("caller filters");
    let addrs = match resolve(&host) {
        Ok(a) if !a.is_empty() => a,
        result => {
            let why = result.err().map_or_else(|| "no addresses".to_owned(), |e| e.to_string());
            if allow_unresolved {
                log::warn!(
                    "{}: `{}`: {host} does not resolve ({why}); the rule matches nothing",
                    rule.origin,
                    rule.text
                );
                return Ok(());
            }
            return Err(invalid(
                &rule.origin,
                &rule.text,
                format!("{host} does not resolve ({why}); fix the name, or pass --allow-unresolved to keep the rule matching nothing"),
            ));
        }
    };
    let mut nets = Vec::new();
    for ip in addrs {
        let net = normalise(IpNet::from(ip))
            .map_err(|m| invalid(&rule.origin, &rule.text, format!("{host} resolves to {ip}: {m}")))?;
        if reaches_local_host(&net) {
            return Err(invalid(
                &rule.origin,
                &rule.text,
                format!("{host} resolves to {ip}, a local address; loopback access is set by `loopback`"),
            ));
        }
        nets.push(net);
    }
    nets.sort_unstable();
    nets.dedup();
    rule.nets = nets;
    Ok(())
}

fn dedup(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    paths
}

/// Canonicalises a filesystem rule path, which must exist.
fn fs_path(raw: &str, origin: &Origin) -> Result<PathBuf, PolicyError> {
    if raw.trim().is_empty() {
        return Err(invalid(origin, raw, "empty path"));
    }
    std::fs::canonicalize(raw)
        .map_err(|e| invalid(origin, raw, format!("{e}; filesystem rules must name existing paths")))
}

/// Command-line policy flags, already split into their raw values.
#[derive(Clone, Debug, Default)]
pub struct FlagInput {
    /// `--allow`, each possibly a comma-free rule or several separated by
    /// commas outside port lists (see [`split_rule_list`]).
    pub allow: Vec<String>,
    /// `--deny`.
    pub deny: Vec<String>,
    /// `--default`.
    pub default: Option<String>,
    /// `--loopback`.
    pub loopback: Option<String>,
    /// `--proxy`.
    pub proxy: Option<String>,
    /// `--bind`.
    pub bind: Option<String>,
    /// `--audit`.
    pub audit: bool,
    /// `--fs-read`.
    pub fs_read: Vec<String>,
    /// `--fs-write`.
    pub fs_write: Vec<String>,
    /// `--allow-unresolved`.
    pub allow_unresolved: bool,
    /// `--proxy-redirect`.
    pub proxy_redirect: bool,
}

/// Splits a flag value holding several rules separated by commas.
///
/// A comma starts a new rule only when what follows does not look like a
/// port (`10.0.0.1:80,443` is one rule with two ports;
/// `10.0.0.1:80,10.0.0.2` is two rules).
#[must_use]
pub fn split_rule_list(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in s.split(',') {
        let p = piece.trim();
        let is_port = !p.is_empty()
            && (p == "*" || p.chars().all(|c| c.is_ascii_digit() || c == '-'))
            && out.last().is_some_and(|prev| prev_has_ports(prev));
        match out.last_mut() {
            Some(prev) if is_port => {
                prev.push(',');
                prev.push_str(p);
            }
            _ => out.push(p.to_owned()),
        }
    }
    out
}

fn prev_has_ports(rule: &str) -> bool {
    let rest = rule.split_once("://").map_or(rule, |(_, r)| r);
    matches!(split_target_ports(rest), Ok((_, Some(_))))
}

impl FlagInput {
    /// Parses the flags into a layer.
    pub fn to_layer(&self) -> Result<Layer, PolicyError> {
        let mut layer = Layer::default();
        for (flag, values, action) in [("--allow", &self.allow, Action::Allow), ("--deny", &self.deny, Action::Deny)] {
            let origin = Origin::flag(flag);
            for value in values {
                for rule in split_rule_list(value) {
                    layer.rules.push(parse_rule(&rule, action, &origin, RuleContext::Destination)?);
                }
            }
        }
        if let Some(d) = &self.default {
            let origin = Origin::flag("--default");
            layer.default = Some((parse_action(d, &origin)?, origin));
        }
        if let Some(l) = &self.loopback {
            layer.loopback = Some(parse_loopback_str(l, &Origin::flag("--loopback"))?);
        }
        if let Some(p) = &self.proxy {
            let origin = Origin::flag("--proxy");
            layer.proxy = Some((parse_proxy(p, &origin)?, origin));
        }
        if self.audit {
            layer.mode = Some(Mode::Audit);
        }
        if self.proxy_redirect {
            layer.redirect = Some((true, Origin::flag("--proxy-redirect")));
        }
        for (flag, values, out) in
            [("--fs-read", &self.fs_read, &mut layer.fs_read), ("--fs-write", &self.fs_write, &mut layer.fs_write)]
        {
            let origin = Origin::flag(flag);
            for v in values {
                out.push(fs_path(v, &origin)?);
            }
        }
        if let Some(b) = &self.bind {
            let origin = Origin::flag("--bind");
            layer.bind = Some(match b.trim() {
                "loopback" => Bind::Loopback,
                "any" => Bind::Any,
                list => Bind::Rules(
                    split_rule_list(list)
                        .iter()
                        .map(|r| parse_rule(r, Action::Allow, &origin, RuleContext::Bind))
                        .collect::<Result<_, _>>()?,
                ),
            });
        }
        Ok(layer)
    }
}

fn parse_action(s: &str, origin: &Origin) -> Result<Action, PolicyError> {
    match s.trim() {
        "deny" => Ok(Action::Deny),
        "allow" => Ok(Action::Allow),
        _ => Err(invalid(origin, s, "default must be \"deny\" or \"allow\"")),
    }
}

fn parse_loopback_str(s: &str, origin: &Origin) -> Result<Loopback, PolicyError> {
    match s.trim() {
        "any" => Ok(Loopback::Any),
        "none" => Ok(Loopback::None),
        ports => parse_ports(ports)
            .map(Loopback::Ports)
            .map_err(|m| invalid(origin, s, format!("{m}; loopback is \"any\", \"none\" or a port list"))),
    }
}

fn parse_proxy(s: &str, origin: &Origin) -> Result<SocketAddr, PolicyError> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        invalid(origin, s, "proxy must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:3128 or [::1]:3128")
    })?;
    if addr.port() == 0 {
        return Err(invalid(origin, s, "proxy port 0 cannot be connected to"));
    }
    if addr.ip().is_unspecified() {
        return Err(invalid(origin, s, "the proxy address must be a real address, not 0.0.0.0 or ::"));
    }
    // A v4-mapped proxy address is an IPv4 proxy.
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

// ---------------------------------------------------------------------------
// TOML files.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    network: Option<RawNetwork>,
    filesystem: Option<RawFilesystem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    #[serde(default)]
    read: Vec<Spanned<String>>,
    #[serde(default)]
    write: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    default: Option<Spanned<String>>,
    loopback: Option<Spanned<toml::Value>>,
    proxy: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    bind: Option<Spanned<toml::Value>>,
    mode: Option<Spanned<String>>,
    proxy_mode: Option<Spanned<String>>,
}

/// Byte offsets of the line starts of a text, for line numbers in O(log n):
/// a policy may hold a million rules, one per line.
struct Lines(Vec<usize>);

impl Lines {
    fn new(src: &str) -> Self {
        Self(std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// 1-based line of byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// Reads and parses a policy file.
pub fn load_file(path: &Path) -> Result<Layer, PolicyError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: name.clone(), source })?;
    parse_toml(&src, &name)
}

/// Parses policy TOML text; `name` is used in error messages.
pub fn parse_toml(src: &str, name: &str) -> Result<Layer, PolicyError> {
    let raw: RawFile = toml::from_str(src).map_err(|e| PolicyError::Syntax {
        path: name.to_owned(),
        line: e.span().map_or(1, |s| Lines::new(src).of(s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let mut layer = Layer::default();
    let lines = Lines::new(src);
    let at = |span: std::ops::Range<usize>| Origin { source: name.to_owned(), line: Some(lines.of(span.start)) };
    if let Some(fs) = raw.filesystem {
        let RawFilesystem { read, write } = fs;
        for (list, out) in [(read, &mut layer.fs_read), (write, &mut layer.fs_write)] {
            for item in list {
                out.push(fs_path(item.get_ref(), &at(item.span()))?);
            }
        }
    }
    let Some(net) = raw.network else {
        return Ok(layer);
    };
    let RawNetwork { default, loopback, proxy, allow, deny, bind, mode, proxy_mode } = net;
    if let Some(m) = proxy_mode {
        let origin = at(m.span());
        let on = match m.get_ref().as_str() {
            "redirect" => true,
            "deny" => false,
            other => {
                return Err(invalid(
                    &origin,
                    other,
                    "proxy_mode must be \"deny\" (refuse direct connects) or \"redirect\" (send them to the proxy)",
                ))
            }
        };
        layer.redirect = Some((on, origin));
    }
    if let Some(m) = mode {
        layer.mode = Some(match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => return Err(invalid(&at(m.span()), other, "mode must be \"enforce\" or \"audit\"")),
        });
    }
    if let Some(d) = default {
        let origin = at(d.span());
        layer.default = Some((parse_action(d.get_ref(), &origin)?, origin));
    }
    if let Some(l) = loopback {
        let origin = at(l.span());
        layer.loopback = Some(match l.get_ref() {
            toml::Value::String(s) if s == "any" || s == "none" => parse_loopback_str(s, &origin)?,
            toml::Value::Array(items) => Loopback::Ports(port_list(items, &origin)?),
            other => {
                return Err(invalid(
                    &origin,
                    &other.to_string(),
                    "loopback is \"any\", \"none\" or a list of ports such as [3128, \"8000-8100\"]",
                ))
            }
        });
    }
    if let Some(p) = proxy {
        let origin = at(p.span());
        layer.proxy = Some((parse_proxy(p.get_ref(), &origin)?, origin));
    }
    for (list, action) in [(allow, Action::Allow), (deny, Action::Deny)] {
        for item in list {
            let origin = at(item.span());
            layer.rules.push(parse_rule(item.get_ref(), action, &origin, RuleContext::Destination)?);
        }
    }
    if let Some(b) = bind {
        let origin = at(b.span());
        layer.bind = Some(match b.get_ref() {
            toml::Value::String(s) if s == "loopback" => Bind::Loopback,
            toml::Value::String(s) if s == "any" => Bind::Any,
            toml::Value::Array(items) => Bind::Rules(
                items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => parse_rule(s, Action::Allow, &origin, RuleContext::Bind),
                        other => Err(invalid(
                            &origin,
                            &other.to_string(),
                            "bind rules are strings such as \"127.0.0.1:8080\"",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(invalid(
                    &origin,
                    &other.to_string(),
                    "bind is \"loopback\", \"any\" or a list of rules such as [\"0.0.0.0:8080\"]",
                ))
            }
        });
    }
    Ok(layer)
}

fn port_list(items: &[toml::Value], origin: &Origin) -> Result<Vec<PortRange>, PolicyError> {
    let mut out = Vec::new();
    for item in items {
        let text = match item {
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::String(s) => s.clone(),
            other => return Err(invalid(origin, &other.to_string(), "ports are numbers or \"N-M\" strings")),
        };
        out.extend(parse_ports(&text).map_err(|m| invalid(origin, &text, m))?);
    }
    Ok(merge_ranges(out))
}

// ---------------------------------------------------------------------------
// Built-in profiles.

/// A named, built-in policy.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Name given to `--profile`.
    pub name: &'static str,
    /// One-line description.
    pub summary: &'static str,
    /// The policy, in the file format.
    pub toml: &'static str,
}

/// Every built-in profile.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "agent",
        summary: "AI coding agent: only the HTTP proxy on 127.0.0.1:3128 and any loopback port; private networks and cloud metadata denied",
        toml: r#"[network]
proxy = "127.0.0.1:3128"
loopback = "any"
deny = ["private", "metadata"]
"#,
    },
    Profile {
        name: "offline",
        summary: "No network at all beyond loopback",
        toml: r#"[network]
default = "deny"
loopback = "any"
"#,
    },
    Profile {
        name: "open",
        summary: "Everything allowed except private networks and cloud metadata (default-allow egress)",
        toml: r#"[network]
default = "allow"
loopback = "any"
deny = ["private", "metadata"]
"#,
    },
];

/// Looks a profile up by name.
pub fn profile(name: &str) -> Result<Layer, PolicyError> {
    let p = PROFILES.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<_> = PROFILES.iter().map(|p| p.name).collect();
        invalid(
            &Origin::flag("--profile"),
            name,
            format!("no such profile; built-in profiles are: {} (see `sbx-user profiles`)", names.join(", ")),
        )
    })?;
    parse_toml(p.toml, &format!("profile {}", p.name))
}

impl Policy {
    /// Builds a policy from an optional profile, an optional file and flags.
    pub fn from_sources(
        profile_name: Option<&str>,
        file: Option<&Path>,
        flags: &FlagInput,
    ) -> Result<Self, PolicyError> {
        let mut b = PolicyBuilder::new();
        if let Some(p) = profile_name {
            b.apply(profile(p)?);
        }
        if let Some(f) = file {
            b.apply(load_file(f)?);
        }
        b.apply(flags.to_layer()?);
        b.build_with(&system_resolve, flags.allow_unresolved)
    }

    /// As [`Self::from_sources`], with the policy file's text (and the
    /// name its errors use) instead of its path: the host agent receives
    /// the text from its client.
    pub fn from_text_sources(
        profile_name: Option<&str>,
        file: Option<(&str, &str)>,
        flags: &FlagInput,
    ) -> Result<Self, PolicyError> {
        let mut b = PolicyBuilder::new();
        if let Some(p) = profile_name {
            b.apply(profile(p)?);
        }
        if let Some((text, name)) = file {
            b.apply(parse_toml(text, name)?);
        }
        b.apply(flags.to_layer()?);
        b.build_with(&system_resolve, flags.allow_unresolved)
    }

    /// A short human summary, one line per setting.
    #[must_use]
    pub fn summary(&self) -> Vec<String> {
        let Self { default, loopback, proxy, rules, bind, mode, filesystem, redirect } = self;
        let mut out = vec![format!("default: {default}")];
        if *mode == Mode::Audit {
            out.push("mode: AUDIT (nothing is blocked; would-be denials are reported)".to_owned());
        }
        out.push(format!(
            "loopback: {}",
            match loopback {
                Loopback::Any => "any port".to_owned(),
                Loopback::None => "none".to_owned(),
                Loopback::Ports(p) => ports_text(p),
            }
        ));
        if let Some(p) = proxy {
            let how = if *redirect { "direct TCP connects are redirected to it" } else { "proxy-only mode" };
            out.push(format!("proxy: {p} ({how})"));
        }
        for r in rules {
            match &r.host {
                Some(host) if r.nets.is_empty() => {
                    out.push(format!("{} {} ({host} unresolved: matches nothing)", r.action, r.text));
                }
                Some(host) => out.push(format!(
                    "{} {} ({host} pinned to {})",
                    r.action,
                    r.text,
                    r.nets.iter().map(|n| n.addr().to_string()).collect::<Vec<_>>().join(", ")
                )),
                None => out.push(format!("{} {}", r.action, r.text)),
            }
        }
        out.push(format!(
            "bind: {}",
            match bind {
                Bind::Loopback => "loopback (unspecified address with port 0 only)".to_owned(),
                Bind::Any => "any".to_owned(),
                Bind::Rules(r) => r.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(", "),
            }
        ));
        if let Some(fs) = filesystem {
            let list = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            out.push(format!("filesystem read: {}", list(&fs.read)));
            out.push(format!("filesystem write: {}", list(&fs.write)));
        }
        out
    }
}

/// `80,443,8000-8100`.
#[must_use]
pub fn ports_text(ports: &[PortRange]) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The `::ffff:0:0/96` network IPv4 lives in inside the trie.
#[must_use]
pub fn v4_mapped_space() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("literal")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod line_tests {
    use super::Lines;

    /// The obvious definition, to check the index against.
    fn line_of(src: &str, offset: usize) -> usize {
        src[..offset.min(src.len())].bytes().filter(|&b| b == b'\n').count() + 1
    }

    #[test]
    fn line_index_agrees_with_counting() {
        let src = "a\nbb\n\nccc\n";
        let lines = Lines::new(src);
        for offset in 0..src.len() {
            assert_eq!(lines.of(offset), line_of(src, offset), "offset {offset}");
        }
    }
}
