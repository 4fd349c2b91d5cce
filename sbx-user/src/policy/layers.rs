//! Layered input: profile, then file, then flags, merged into a
//! [`Policy`](super::Policy) by [`PolicyBuilder`](super::PolicyBuilder).

use super::{
    invalid, is_loopback_net, is_unspecified_net, merge_ranges, normalise, parse_ports, parse_rule, split_target_ports,
    Action, Bind, Dns, FsPolicy, IpAddr, IpNet, Ipv6Net, Loopback, Mode, Origin, Path, PathBuf, Policy, PolicyError,
    PortRange, Protocols, Rule, RuleContext, SocketAddr, Unix, UnixPath, DNS_PORT,
};

/// Settings from one layer (a profile, a file, or the flags). `None` means
/// "this layer does not say"; rules add up across layers.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub(super) default: Option<(Action, Origin)>,
    pub(super) loopback: Option<Loopback>,
    pub(super) proxy: Option<(SocketAddr, Origin)>,
    pub(super) rules: Vec<Rule>,
    pub(super) bind: Option<Bind>,
    pub(super) mode: Option<Mode>,
    pub(super) fs_read: Vec<PathBuf>,
    pub(super) fs_write: Vec<PathBuf>,
    pub(super) redirect: Option<(bool, Origin)>,
    pub(super) nat64: Option<Vec<Ipv6Net>>,
    /// `unix` replaced by this layer.
    pub(super) unix: Option<(Unix, Origin)>,
    /// Socket paths this layer adds to the list (`--unix PATH`).
    pub(super) unix_add: Vec<UnixPath>,
    pub(super) dns: Option<Dns>,
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
        let Layer {
            default,
            loopback,
            proxy,
            rules,
            bind,
            mode,
            fs_read,
            fs_write,
            redirect,
            unix,
            unix_add,
            nat64,
            dns,
        } = layer;
        let m = &mut self.merged;
        if nat64.is_some() {
            m.nat64 = nat64;
        }
        if unix.is_some() {
            m.unix = unix;
        }
        if let Some(first) = unix_add.first() {
            let origin = first.origin.clone();
            let mut list = match m.unix.take() {
                Some((Unix::Paths(p), _)) => p,
                _ => Vec::new(),
            };
            for p in unix_add {
                if !list.iter().any(|q| q.path == p.path) {
                    list.push(p);
                }
            }
            m.unix = Some((Unix::Paths(list), origin));
        }
        if dns.is_some() {
            m.dns = dns;
        }
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
        if m.rules.is_empty() {
            // The common case (one file's 100,000 rules): no copy.
            m.rules = rules;
        } else {
            m.rules.extend(rules);
        }
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
        self.clone().into_policy(resolve, allow_unresolved)
    }

    /// As [`Self::build_with`], consuming the builder: the rules move into
    /// the policy instead of being copied (100,000 of them are 20 MB).
    #[expect(clippy::too_many_lines, reason = "one step per setting, in the order the precedence is documented")]
    pub fn into_policy(
        self,
        resolve: &dyn Fn(&str) -> std::io::Result<Vec<IpAddr>>,
        allow_unresolved: bool,
    ) -> Result<Policy, PolicyError> {
        let Layer {
            default,
            loopback,
            proxy,
            rules,
            bind,
            mode,
            fs_read,
            fs_write,
            redirect,
            unix,
            unix_add: _,
            nat64,
            dns,
        } = self.merged;
        let (unix, unix_origin) = unix.map_or((Unix::Any, None), |(u, o)| (u, Some(o)));
        let nat64 = nat64.unwrap_or_default();
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
            let default = default.map_or(Action::Deny, |(a, _)| a);
            return Ok(Policy {
                redirect: false,
                dns: dns.unwrap_or(dns_default(default)),
                default,
                loopback: loopback.unwrap_or(Loopback::Any),
                proxy: None,
                rules,
                bind,
                mode,
                filesystem,
                nat64,
                unix,
                unix_origin,
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
                origin: proxy_origin.clone(),
                action: Action::Allow,
                protocols: Protocols::TCP,
                nets: vec![normalise(net).map_err(PolicyError::Conflict)?],
                ports: vec![PortRange::single(proxy_addr.port())],
                host: None,
            });
            loopback.unwrap_or(Loopback::None)
        };
        if let Some(rule) = loopback_rule_denying(&rules, proxy_addr) {
            return Err(PolicyError::Conflict(format!(
                "{}: `deny {}` blocks the proxy on {proxy_addr} ({proxy_origin}); narrow the rule or allow tcp://{proxy_addr}",
                rule.origin, rule.text
            )));
        }
        let dns = dns.unwrap_or(dns_default(Action::Deny));
        if matches!(dns, Dns::Pinned { .. }) && proxy_addr.ip().is_loopback() && proxy_addr.port() == DNS_PORT {
            return Err(PolicyError::Conflict(format!(
                "the proxy on {proxy_addr} ({proxy_origin}) is on loopback port {DNS_PORT}, which dns = \"pinned\" keeps for sbx's DNS stub; move the proxy or set dns = \"host\" (--dns host)"
            )));
        }
        let redirect = redirect.is_some_and(|(r, _)| r);
        Ok(Policy {
            default: Action::Deny,
            loopback,
            proxy: Some(proxy_addr),
            rules,
            bind,
            mode,
            filesystem,
            redirect,
            nat64,
            unix,
            unix_origin,
            dns,
        })
    }
}

/// The `dns` setting a policy gets when it does not say: `pinned` where
/// the default denies (a name query would be a channel the policy never
/// allowed), `host` where it allows (resolvers are reachable anyway).
pub(super) fn dns_default(default: Action) -> Dns {
    match default {
        Action::Deny => Dns::Pinned { stub: None },
        Action::Allow => Dns::Host,
    }
}

pub(super) fn parse_dns(s: &str, origin: &Origin) -> Result<Dns, PolicyError> {
    match s.trim() {
        "pinned" => Ok(Dns::Pinned { stub: None }),
        "host" => Ok(Dns::Host),
        _ => Err(invalid(
            origin,
            s,
            "dns is \"pinned\" (only the names of pinned allow rules resolve, answered by sbx) or \"host\" (the host's resolvers, judged like any destination)",
        )),
    }
}

/// The deny rule that decides TCP to `addr`, a loopback address, if the
/// rule that decides it is a deny (longest loopback prefix, deny on a tie).
pub(super) fn loopback_rule_denying(rules: &[Rule], addr: SocketAddr) -> Option<&Rule> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let mut best: Option<(u8, &Rule)> = None;
    for r in
        rules.iter().filter(|r| r.protocols.tcp && r.ports.iter().any(|p| p.lo <= addr.port() && addr.port() <= p.hi))
    {
        for n in r.nets.iter().filter(|n| is_loopback_net(n) && n.contains(&addr.ip())) {
            let len = n.prefix_len();
            if best.is_none_or(|(l, b)| len > l || (len == l && r.action == Action::Deny && b.action == Action::Allow))
            {
                best = Some((len, r));
            }
        }
    }
    best.filter(|(_, r)| r.action == Action::Deny).map(|(_, r)| r)
}

/// Resolves a name with the system resolver, /etc/hosts first
/// ([`crate::names::resolve_host`]).
pub(super) fn system_resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    crate::names::resolve_host(host)
}

/// Resolves a pinned-domain rule once; its addresses are fixed from then
/// on, so a later DNS answer cannot widen what the sandbox reaches.
pub(super) fn pin_host(
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
        if is_unspecified_net(&net) {
            return Err(invalid(
                &rule.origin,
                &rule.text,
                format!("{host} resolves to {ip}, the unspecified address (a blocked name?), which reaches the local host; name the loopback address instead"),
            ));
        }
        nets.push(net);
    }
    nets.sort_unstable();
    nets.dedup();
    rule.nets = nets;
    Ok(())
}

pub(super) fn dedup(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    paths
}

/// Canonicalises a filesystem rule path, which must exist.
pub(super) fn fs_path(raw: &str, origin: &Origin) -> Result<PathBuf, PolicyError> {
    if raw.trim().is_empty() {
        return Err(invalid(origin, raw, "empty path"));
    }
    crate::sys::canonicalize(raw).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => format!("{e}; filesystem rules must name existing paths"),
            _ => e.to_string(),
        };
        invalid(origin, raw, why)
    })
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
    /// `--unix`: socket paths, or one of `any`, `none`.
    pub unix: Vec<String>,
    /// `--dns`.
    pub dns: Option<String>,
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

pub(super) fn prev_has_ports(rule: &str) -> bool {
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
        if let Some(d) = &self.dns {
            layer.dns = Some(parse_dns(d, &Origin::flag("--dns"))?);
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
        let origin = Origin::flag("--unix");
        for v in &self.unix {
            match v.trim() {
                word @ ("any" | "none") => {
                    if self.unix.len() > 1 {
                        return Err(invalid(
                            &origin,
                            v,
                            format!("--unix {word} cannot be combined with other --unix values; give either {word} or socket paths"),
                        ));
                    }
                    layer.unix = Some((if word == "any" { Unix::Any } else { Unix::None }, origin.clone()));
                }
                _ => layer.unix_add.push(unix_path(v, &origin)?),
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

pub(super) fn parse_action(s: &str, origin: &Origin) -> Result<Action, PolicyError> {
    match s.trim() {
        "deny" => Ok(Action::Deny),
        "allow" => Ok(Action::Allow),
        _ => Err(invalid(origin, s, "default must be \"deny\" or \"allow\"")),
    }
}

pub(super) fn parse_loopback_str(s: &str, origin: &Origin) -> Result<Loopback, PolicyError> {
    match s.trim() {
        "any" => Ok(Loopback::Any),
        "none" => Ok(Loopback::None),
        ports => parse_ports(ports)
            .map(Loopback::Ports)
            .map_err(|m| invalid(origin, s, format!("{m}; loopback is \"any\", \"none\" or a port list"))),
    }
}

pub(super) fn parse_proxy(s: &str, origin: &Origin) -> Result<SocketAddr, PolicyError> {
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

/// Validates one socket path of a `unix` list: absolute, no NUL, no `.` or
/// `..` components (a path means the socket it names when `run` starts;
/// spelling it through `..` is refused rather than guessed at).
pub(super) fn unix_path(raw: &str, origin: &Origin) -> Result<UnixPath, PolicyError> {
    let path = Path::new(raw);
    if raw.is_empty() {
        return Err(invalid(origin, raw, "empty socket path"));
    }
    if raw.contains('\0') {
        return Err(invalid(origin, raw, "a socket path cannot contain a NUL byte"));
    }
    if raw.starts_with('@') {
        return Err(invalid(
            origin,
            raw,
            "abstract sockets are not named by `unix`: Landlock keeps the sandbox from connecting to abstract sockets made outside it (Linux 6.12+)",
        ));
    }
    if !path.is_absolute() {
        return Err(invalid(
            origin,
            raw,
            "socket paths must be absolute (e.g. /run/postgresql/.s.PGSQL.5432, or \"$SSH_AUTH_SOCK\" expanded by the shell); \"any\" and \"none\" are the other values",
        ));
    }
    if raw.split('/').any(|c| c == "." || c == "..") {
        return Err(invalid(origin, raw, "write the socket path without `.` or `..` components"));
    }
    Ok(UnixPath { path: path.to_path_buf(), origin: origin.clone() })
}
