//! Rules: `[tcp://|udp://]TARGET[:PORTS]`, their targets, ports and
//! normalisation.

use super::{
    invalid, Action, IpAddr, IpNet, Ipv4Addr, Ipv4Net, Ipv6Net, Origin, PolicyError, PortRange, Protocols, Rule,
    Spanned,
};

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

/// Ranges that are not the public Internet: RFC 1918, shared address space
/// (RFC 6598), link-local, the benchmarking range (RFC 2544, where test
/// networks live), unique local and link-local IPv6.
pub(super) const PRIVATE_NETS: [&str; 8] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "198.18.0.0/15",
    "fc00::/7",
    "fe80::/10",
];
pub(super) const METADATA_NETS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];
pub(super) const ANY_NETS: [&str; 2] = ["0.0.0.0/0", "::/0"];
/// The `loopback` token: every loopback address of both families.
pub(super) const LOOPBACK_NETS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

pub(super) fn nets(list: &[&str]) -> Vec<IpNet> {
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
pub(super) fn split_target_ports(s: &str) -> Result<(&str, Option<&str>), String> {
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

pub(super) fn parse_port(s: &str) -> Result<u16, String> {
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

/// The networks of a token (`any`, `private`, `metadata`, `loopback`, in
/// any case), if `s` is one.
fn token_nets(s: &str) -> Option<&'static [&'static str]> {
    let tokens: [(&str, &'static [&'static str]); 4] =
        [("any", &ANY_NETS), ("private", &PRIVATE_NETS), ("metadata", &METADATA_NETS), ("loopback", &LOOPBACK_NETS)];
    tokens.into_iter().find(|(name, _)| s.eq_ignore_ascii_case(name)).map(|(_, nets)| nets)
}

pub(super) fn parse_target(target: &str, ctx: RuleContext) -> Result<Vec<IpNet>, String> {
    if target.is_empty() {
        return Ok(nets(&ANY_NETS));
    }
    if let Some(list) = token_nets(target) {
        return Ok(nets(list));
    }
    let net = if let Ok(ip) = target.parse::<IpAddr>() {
        IpNet::from(ip)
    } else if let Ok(net) = target.parse::<IpNet>() {
        net
    } else if target.contains('/') {
        return Err(format!("`{target}` is not a valid CIDR (IPv4 prefixes are /0-/32, IPv6 /0-/128)"));
    } else {
        return Err(format!(
            "`{target}` is not an IP address, CIDR, or one of the tokens any, private, metadata, loopback"
        ));
    };
    let net = normalise(net)?;
    if ctx == RuleContext::Destination && is_unspecified_net(&net) {
        return Err(unspecified_message(&net));
    }
    Ok(vec![net])
}

pub(super) fn is_token(s: &str) -> bool {
    token_nets(s).is_some()
}

/// Why a destination rule may not name an unspecified address.
pub(super) fn unspecified_message(net: &IpNet) -> String {
    let (alias, rule) = match net {
        IpNet::V4(_) => ("127.0.0.1", "127.0.0.1:5432"),
        IpNet::V6(_) => ("::1", "[::1]:5432"),
    };
    format!(
        "{} as a destination is the local host: the kernel connects it to {alias}, so a rule for {alias} decides it too; write that (e.g. `{rule}`), or use `loopback` (`--loopback`)",
        net.addr()
    )
}

pub(super) fn looks_like_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && s.chars().any(|c| c.is_ascii_alphabetic())
}

/// The `nat64` list: at most [`sbx_common::addr::MAX_NAT64_PREFIXES`]
/// prefixes, each valid.
pub(super) fn parse_nat64_list(
    list: &[Spanned<String>],
    at: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Result<Vec<Ipv6Net>, PolicyError> {
    let max = sbx_common::addr::MAX_NAT64_PREFIXES;
    if let Some(extra) = list.get(max) {
        return Err(invalid(&at(extra.span()), extra.get_ref(), format!("at most {max} NAT64 prefixes")));
    }
    list.iter()
        .map(|item| parse_nat64(item.get_ref()).map_err(|m| invalid(&at(item.span()), item.get_ref(), m)))
        .collect()
}

/// A NAT64 network-specific prefix: an RFC 6052 length (32, 40, 48, 56,
/// 64 or 96), no host bits, and bits 64 to 71 (the "u" octet) zero.
pub(super) fn parse_nat64(s: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = s.parse().map_err(|_| "not an IPv6 prefix (like 64:ff9b:1::/48)".to_owned())?;
    if ![32, 40, 48, 56, 64, 96].contains(&net.prefix_len()) {
        return Err("a NAT64 prefix is /32, /40, /48, /56, /64 or /96 (RFC 6052)".into());
    }
    if net.addr() != net.network() {
        return Err(format!("has host bits set; the prefix is {}", net.trunc()));
    }
    if net.network().octets()[8] != 0 {
        return Err("bits 64 to 71 of a NAT64 prefix must be zero (RFC 6052 2.2)".into());
    }
    Ok(net)
}

/// Clears host bits and turns IPv4-mapped IPv6 into IPv4. Rules may name
/// IPv6 ranges that embed IPv4 addresses (NAT64, 6to4, Teredo): such a
/// rule decides for the addresses of its range when it is at least as
/// specific as the form's prefix (see `sbx_common::addr`).
pub(super) fn normalise(net: IpNet) -> Result<IpNet, String> {
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
    if len == 128 {
        let no_nsp = [sbx_common::addr::Nat64Prefix::default(); sbx_common::addr::MAX_NAT64_PREFIXES];
        if sbx_common::addr::embedded(&v6.addr().octets(), &no_nsp).is_some_and(|e| e.is_local()) {
            return Err(
                "this IPv6 form embeds a local IPv4 address (127.0.0.0/8 or 0.0.0.0/8): it leaves the host to reach it, \
                 so it is always refused; loopback access is set by `loopback`"
                    .to_owned(),
            );
        }
    }
    Ok(net)
}

/// Whether `net` lies inside the loopback space (`127.0.0.0/8` or
/// `::1`): a rule on such a network refines the `loopback` setting, and
/// it is the only kind of rule that applies to loopback destinations.
#[must_use]
pub fn is_loopback_net(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.addr().is_loopback(),
        IpNet::V6(n) => n.prefix_len() == 128 && n.addr().is_loopback(),
    }
}

/// Whether `net` is exactly an unspecified address (`0.0.0.0`, `::`),
/// which as a destination is an alias of `127.0.0.1` or `::1`.
pub(super) fn is_unspecified_net(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len() && net.addr().is_unspecified()
}
