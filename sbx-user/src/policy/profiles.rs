//! The built-in profiles.

use super::{invalid, parse_toml, Layer, Origin, PolicyError};

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
        summary: "AI coding agent: only the HTTP proxy on 127.0.0.1:3128 and any loopback port; private networks, cloud metadata and host UNIX sockets denied",
        toml: r#"[network]
proxy = "127.0.0.1:3128"
loopback = "any"
deny = ["private", "metadata"]
unix = "none"
"#,
    },
    Profile {
        name: "offline",
        summary: "No network at all beyond loopback; no host UNIX sockets",
        toml: r#"[network]
default = "deny"
loopback = "any"
unix = "none"
"#,
    },
    Profile {
        name: "open",
        summary: "Everything allowed except private networks and cloud metadata (default-allow egress)",
        toml: r#"[network]
default = "allow"
loopback = "any"
deny = ["private", "metadata"]
unix = "any"
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
