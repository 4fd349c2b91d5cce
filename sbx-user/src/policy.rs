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
//! (`:25`), or one of the tokens `any`, `private`, `metadata`, `loopback`. PORTS is `*`,
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
    /// A file path, `--allow`-style flag name, or `profile NAME`: shared
    /// by every rule of one file (a file of 100,000 rules names it once).
    pub source: std::sync::Arc<str>,
    /// 1-based line in `source`, when it is a file.
    pub line: Option<usize>,
}

impl Origin {
    fn flag(name: &str) -> Self {
        Self { source: name.into(), line: None }
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

/// How the sandbox's names resolve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dns {
    /// The host's resolvers, judged like any other destination (a resolver
    /// on loopback is reachable where `loopback` allows it). What records
    /// from before this setting mean.
    #[default]
    Host,
    /// Only the names of pinned allow rules resolve, to their pinned
    /// addresses; every other name fails at once. Loopback port 53 is
    /// refused (TCP and UDP) except `stub`, where `run` answers; an
    /// explicit loopback rule may still open a resolver.
    Pinned {
        /// The loopback address `run`'s DNS stub listens on (port 53),
        /// set by `run` for its sandbox; `None` elsewhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stub: Option<Ipv4Addr>,
    },
}

/// The port DNS is served on (and the only one `resolv.conf` can name).
pub const DNS_PORT: u16 = 53;

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

/// One host socket path a `unix` list names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixPath {
    /// The absolute path as written (resolved when `run` starts).
    pub path: PathBuf,
    /// Where it was written.
    pub origin: Origin,
}

/// Which pathname UNIX sockets of the host the sandbox may connect to.
/// Sockets the sandbox binds itself are always reachable from inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unix {
    /// Every socket its identity may open (what a policy that does not
    /// say gets, for compatibility).
    #[default]
    Any,
    /// None: only the sockets the sandbox made itself.
    None,
    /// Only these sockets (and the sandbox's own).
    Paths(Vec<UnixPath>),
}

impl Unix {
    /// Whether this restricts anything.
    #[must_use]
    pub fn restricts(&self) -> bool {
        !matches!(self, Self::Any)
    }
}

impl fmt::Display for Unix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any (every host socket the identity may open)"),
            Self::None => f.write_str("none (only sockets the command binds itself)"),
            Self::Paths(p) => {
                let list: Vec<String> = p.iter().map(|p| p.path.display().to_string()).collect();
                write!(f, "{} (and sockets the command binds itself)", list.join(", "))
            }
        }
    }
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
    /// NAT64 network-specific prefixes (RFC 6052) of the network the
    /// sandbox is on: addresses under them are judged as the IPv4 address
    /// they embed, like the well-known prefix `64:ff9b::/96`. At most
    /// [`sbx_common::addr::MAX_NAT64_PREFIXES`].
    #[serde(default)]
    pub nat64: Vec<Ipv6Net>,
    /// Pathname UNIX sockets the sandbox may connect to.
    #[serde(default)]
    pub unix: Unix,
    /// Where `unix` was set; `None` when nothing said (then it is
    /// [`Unix::Any`]). A profile's origin reads `profile NAME:LINE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_origin: Option<Origin>,
    /// Name resolution.
    #[serde(default)]
    pub dns: Dns,
}

impl Policy {
    /// Whether the `unix` setting is the user's own (a policy file or a
    /// flag) rather than a profile's default: what the user asked for
    /// refuses where it cannot be enforced, a profile's default warns.
    #[must_use]
    pub fn unix_explicit(&self) -> bool {
        self.unix.restricts() && self.unix_origin.as_ref().is_some_and(|o| !o.source.starts_with("profile "))
    }

    /// Sets `unix` to any; returns the setting it replaced if that one
    /// restricted anything.
    pub fn drop_unix(&mut self) -> Option<Unix> {
        if !self.unix.restricts() {
            return None;
        }
        self.unix_origin = None;
        Some(std::mem::replace(&mut self.unix, Unix::Any))
    }

    /// For a cgroup sbx attaches but does not start (`attach`, `update`,
    /// the OCI hook, the host agent): nothing there judges pathname UNIX
    /// sockets. A setting the user wrote is refused (`Err`, the policy
    /// unchanged); a profile's default is dropped (recorded as unix = any)
    /// and returned, for the caller to warn about.
    pub fn unix_for_cgroup(&mut self) -> Result<Option<Unix>, &Unix> {
        if self.unix_explicit() {
            return Err(&self.unix);
        }
        Ok(self.drop_unix())
    }
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

mod file;
mod layers;
mod profiles;
mod rules;

pub use file::*;
pub use layers::*;
pub use profiles::*;
pub use rules::*;

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
        b.into_policy(&system_resolve, flags.allow_unresolved)
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
        b.into_policy(&system_resolve, flags.allow_unresolved)
    }

    /// A short human summary, one line per setting.
    #[must_use]
    pub fn summary(&self) -> Vec<String> {
        self.summary_with(usize::MAX)
    }

    /// As [`Self::summary`], with at most `max_rules` rule lines and then
    /// one line counting the rest (a summary of 100,000 rules formats 20).
    #[must_use]
    pub fn summary_with(&self, max_rules: usize) -> Vec<String> {
        let Self { default, loopback, proxy, rules, bind, mode, filesystem, redirect, unix, unix_origin, nat64, dns } =
            self;
        let mut out = vec![format!("default: {default}")];
        if !nat64.is_empty() {
            let list: Vec<String> = nat64.iter().map(ToString::to_string).collect();
            out.push(format!("NAT64 prefixes (judged as the IPv4 they embed): {}", list.join(", ")));
        }
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
        for r in rules.iter().take(max_rules) {
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
        if rules.len() > max_rules {
            out.push(format!("... and {} more rules", rules.len() - max_rules));
        }
        out.push(match dns {
            Dns::Host => "dns: host (the host's resolvers, judged like any destination)".to_owned(),
            Dns::Pinned { stub: None } => {
                "dns: pinned (only pinned names resolve; loopback port 53 refused)".to_owned()
            }
            Dns::Pinned { stub: Some(a) } => {
                format!("dns: pinned (only pinned names resolve, answered by sbx on {a}:{DNS_PORT})")
            }
        });
        out.push(format!(
            "bind: {}",
            match bind {
                Bind::Loopback => "loopback (unspecified address with port 0 only)".to_owned(),
                Bind::Any => "any".to_owned(),
                Bind::Rules(r) => r.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(", "),
            }
        ));
        // Only when something said: a policy that does not gets "any"
        // for compatibility, and its summary stays as it was.
        if unix_origin.is_some() {
            out.push(format!("unix sockets: {unix}"));
        }
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
