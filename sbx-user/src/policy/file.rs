//! Policy files (TOML), with file and line in every error.

use super::{
    fs_path, invalid, merge_ranges, parse_action, parse_dns, parse_loopback_str, parse_nat64_list, parse_ports,
    parse_proxy, parse_rule, unix_path, Action, Bind, Deserialize, Layer, Loopback, Mode, Origin, Path, PolicyError,
    PortRange, RuleContext, Spanned, Unix, UnixPath,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    network: Option<RawNetwork>,
    filesystem: Option<RawFilesystem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilesystem {
    #[serde(default)]
    read: Vec<Spanned<String>>,
    #[serde(default)]
    write: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
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
    nat64: Option<Vec<Spanned<String>>>,
    unix: Option<Spanned<toml::Value>>,
    dns: Option<Spanned<String>>,
}

/// Byte offsets of the line starts of a text, for line numbers in O(log n):
/// a policy may hold a million rules, one per line.
pub(super) struct Lines(Vec<usize>);

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

/// The `[filesystem]` table of a policy file into `layer`.
pub(super) fn parse_filesystem(
    fs: RawFilesystem,
    layer: &mut Layer,
    at: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Result<(), PolicyError> {
    let RawFilesystem { read, write } = fs;
    for (list, out) in [(read, &mut layer.fs_read), (write, &mut layer.fs_write)] {
        for item in list {
            out.push(fs_path(item.get_ref(), &at(item.span()))?);
        }
    }
    Ok(())
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
    let source: std::sync::Arc<str> = name.into();
    let at = |span: std::ops::Range<usize>| Origin { source: source.clone(), line: Some(lines.of(span.start)) };
    if let Some(fs) = raw.filesystem {
        parse_filesystem(fs, &mut layer, &at)?;
    }
    if let Some(net) = raw.network {
        parse_network(net, &mut layer, &at)?;
    }
    Ok(layer)
}

/// The `[network]` table of a policy file into `layer`.
fn parse_network(
    net: RawNetwork,
    layer: &mut Layer,
    at: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Result<(), PolicyError> {
    let RawNetwork { default, loopback, proxy, allow, deny, bind, mode, proxy_mode, unix, nat64, dns } = net;
    if let Some(u) = unix {
        let origin = at(u.span());
        layer.unix = Some((unix_setting(u.get_ref(), &origin)?, origin));
    }
    layer.dns = dns.map(|d| parse_dns(d.get_ref(), &at(d.span()))).transpose()?;
    if let Some(list) = nat64 {
        layer.nat64 = Some(parse_nat64_list(&list, &at)?);
    }
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
    layer.rules.reserve(allow.len() + deny.len());
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
    Ok(())
}

/// `unix = "any" | "none" | [paths]` from a policy file.
pub(super) fn unix_setting(value: &toml::Value, origin: &Origin) -> Result<Unix, PolicyError> {
    Ok(match value {
        toml::Value::String(s) if s == "any" => Unix::Any,
        toml::Value::String(s) if s == "none" => Unix::None,
        toml::Value::Array(items) => {
            let mut list: Vec<UnixPath> = Vec::new();
            for item in items {
                let toml::Value::String(s) = item else {
                    return Err(invalid(
                        origin,
                        &item.to_string(),
                        "unix socket paths are strings such as \"/run/postgresql/.s.PGSQL.5432\"",
                    ));
                };
                let p = unix_path(s, origin)?;
                if !list.iter().any(|q| q.path == p.path) {
                    list.push(p);
                }
            }
            Unix::Paths(list)
        }
        other => {
            return Err(invalid(
                origin,
                &other.to_string(),
                "unix is \"any\", \"none\" or a list of socket paths such as [\"/run/postgresql/.s.PGSQL.5432\"]",
            ))
        }
    })
}

pub(super) fn port_list(items: &[toml::Value], origin: &Origin) -> Result<Vec<PortRange>, PolicyError> {
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
