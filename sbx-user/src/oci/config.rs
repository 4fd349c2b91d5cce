//! The host administrator's configuration of the OCI hook
//! (`/etc/sbx/oci-hook.toml`) and the decision it makes with a
//! container's annotations: which policy, if any, holds the container.
//!
//! A container names a policy only by a plain name (`sbx.io/profile` for a
//! built-in profile, `sbx.io/policy` for a file the administrator placed in
//! [`HostConfig::policy_dir`]); it can never pass a path or policy text.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/sbx/oci-hook.toml";
/// Default directory of the policies `sbx.io/policy=NAME` names.
pub const DEFAULT_POLICY_DIR: &str = "/etc/sbx/policies";
/// Default bound on the whole hook, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// Annotation naming a built-in profile.
pub const ANN_PROFILE: &str = "sbx.io/profile";
/// Annotation naming a policy file in the policy directory.
pub const ANN_POLICY: &str = "sbx.io/policy";
/// Annotation asking to be left out of the host-wide default (`true`);
/// honoured only where the administrator allows it.
pub const ANN_OPT_OUT: &str = "sbx.io/opt-out";

/// Longest policy or profile name accepted.
const MAX_NAME: usize = 64;

/// `/etc/sbx/oci-hook.toml`.
///
/// ```toml
/// policy_dir = "/etc/sbx/policies"   # where sbx.io/policy=NAME is NAME.toml
/// timeout_secs = 10                  # the hook fails after this long
/// agent = "auto"                     # auto | required | off: attach through the host agent?
/// agent_socket = "/run/sbx/agent.sock"
///
/// [default]                          # a policy for containers that name none
/// profile = "offline"                # or: policy = "NAME"
/// namespaces = ["ci"]                # only pods in these namespaces (empty: all)
/// annotations = { "team" = "ml" }    # only containers carrying all of these
/// opt_out = false                    # may a container choose another policy or none?
///
/// [[allow_capabilities]]             # let containers under this profile keep these
/// profile = "open"                   # or: policy = "NAME"
/// capabilities = ["NET_RAW"]
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Directory of the policies `sbx.io/policy=NAME` names.
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    /// Bound on the hook's whole run, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The host-wide default, if any.
    #[serde(default)]
    pub default: Option<DefaultRule>,
    /// Per-profile exceptions to the capability refusal.
    #[serde(default)]
    pub allow_capabilities: Vec<CapOverride>,
    /// Whether the hook attaches through the host agent.
    #[serde(default)]
    pub agent: AgentMode,
    /// The agent's socket (default: `--agent-socket`/`SBX_AGENT_SOCKET`,
    /// else the agent's default socket).
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
}

/// `agent = ...`: how the hook uses the host agent (`sbx-user agent`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Through the agent when its socket answers; alone when nothing
    /// listens there (podman on a bare host). A socket that answers
    /// wrongly (not root, no reply) is an error, never a quiet fallback.
    #[default]
    Auto,
    /// Only through the agent: if it does not answer, the container is
    /// refused (for nodes where the agent must know every sandbox).
    Required,
    /// Never: the hook attaches on its own.
    Off,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            policy_dir: default_policy_dir(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            default: None,
            allow_capabilities: Vec::new(),
            agent: AgentMode::Auto,
            agent_socket: None,
        }
    }
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from(DEFAULT_POLICY_DIR)
}

const fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// The `[default]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultRule {
    /// A built-in profile.
    pub profile: Option<String>,
    /// A policy in the policy directory.
    pub policy: Option<String>,
    /// Only Kubernetes pods in these namespaces; empty for every container.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Only containers carrying all of these annotations (Kubernetes pod
    /// labels reach a runtime only as annotations the runtime passes).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Whether a container the default covers may choose another policy
    /// (`sbx.io/profile`, `sbx.io/policy`) or none (`sbx.io/opt-out=true`).
    #[serde(default)]
    pub opt_out: bool,
}

/// One `[[allow_capabilities]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapOverride {
    /// The profile this applies to.
    pub profile: Option<String>,
    /// The policy this applies to.
    pub policy: Option<String>,
    /// Capabilities a container under it may hold.
    pub capabilities: Vec<String>,
}

/// A policy a container is put under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// A built-in profile.
    Profile(String),
    /// `<policy_dir>/NAME.toml`.
    Policy(String),
}

impl Choice {
    /// Reads back what [`Choice`]'s `Display` wrote (`profile offline`).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once(' ')? {
            ("profile", n) => Some(Self::Profile(n.to_owned())),
            ("policy", n) => Some(Self::Policy(n.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Profile(n) => write!(f, "profile {n}"),
            Self::Policy(n) => write!(f, "policy {n}"),
        }
    }
}

/// What the hook does with a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: why.
    Untouched(&'static str),
    /// Put it under this policy; `by_default` when the host default chose.
    Apply {
        /// The policy.
        choice: Choice,
        /// Whether the host-wide default chose it (not an annotation).
        by_default: bool,
    },
}

/// A configuration or annotation problem. The hook refuses the container.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the hook configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The configuration is invalid.
    #[error("hook configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The container's annotations ask for something the host refuses.
    #[error("{0}")]
    Annotation(String),
}

impl HostConfig {
    /// Reads and checks `path`. A missing file is the empty configuration
    /// (no default) unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let cfg: Self = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if cfg.timeout_secs == 0 || cfg.timeout_secs > 300 {
            return Err(invalid(format!("timeout_secs = {}: must be 1 to 300", cfg.timeout_secs)));
        }
        if let Some(d) = &cfg.default {
            one_choice(d.profile.as_deref(), d.policy.as_deref()).map_err(|m| invalid(format!("[default]: {m}")))?;
        }
        for o in &cfg.allow_capabilities {
            one_choice(o.profile.as_deref(), o.policy.as_deref())
                .map_err(|m| invalid(format!("[[allow_capabilities]]: {m}")))?;
        }
        Ok(cfg)
    }

    /// Whether the default covers a container with these annotations.
    fn default_covers(&self, ann: &BTreeMap<String, String>) -> Option<&DefaultRule> {
        let d = self.default.as_ref()?;
        let ns = ann.get(super::spec::K8S_POD_NAMESPACE).or_else(|| ann.get(super::spec::CRI_SANDBOX_NAMESPACE));
        let ns_ok = d.namespaces.is_empty() || ns.is_some_and(|ns| d.namespaces.contains(ns));
        let ann_ok = d.annotations.iter().all(|(k, v)| ann.get(k) == Some(v));
        (ns_ok && ann_ok).then_some(d)
    }

    /// Decides what holds a container with annotations `ann`.
    pub fn decide(&self, ann: &BTreeMap<String, String>) -> Result<Decision, ConfigError> {
        let refuse = |m: String| Err(ConfigError::Annotation(m));
        let chosen = match (ann.get(ANN_PROFILE), ann.get(ANN_POLICY)) {
            (Some(_), Some(_)) => return refuse(format!("both {ANN_PROFILE} and {ANN_POLICY} are set; set one")),
            (Some(p), None) => Some(Choice::Profile(plain_name(ANN_PROFILE, p).map_err(ConfigError::Annotation)?)),
            (None, Some(p)) => Some(Choice::Policy(plain_name(ANN_POLICY, p).map_err(ConfigError::Annotation)?)),
            (None, None) => None,
        };
        let opt_out = match ann.get(ANN_OPT_OUT).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return refuse(format!("{ANN_OPT_OUT}={v:?}: must be \"true\" or \"false\"")),
        };
        if opt_out && chosen.is_some() {
            return refuse(format!("{ANN_OPT_OUT}=true contradicts the policy the container names"));
        }
        let Some(d) = self.default_covers(ann) else {
            return Ok(match chosen {
                Some(choice) => Decision::Apply { choice, by_default: false },
                None => Decision::Untouched("it names no sbx policy and no host default covers it"),
            });
        };
        let default = match (&d.profile, &d.policy) {
            (Some(p), _) => Choice::Profile(p.clone()),
            (None, Some(p)) => Choice::Policy(p.clone()),
            (None, None) => return refuse("the host default names neither a profile nor a policy".to_owned()),
        };
        match (chosen, opt_out) {
            (None, false) => Ok(Decision::Apply { choice: default, by_default: true }),
            (None, true) if d.opt_out => Ok(Decision::Untouched("it opted out of the host default, which allows it")),
            (None, true) => refuse(format!(
                "{ANN_OPT_OUT}=true: the host default ({default}) holds this container and forbids opting out"
            )),
            (Some(c), _) if c == default || d.opt_out => Ok(Decision::Apply { choice: c, by_default: false }),
            (Some(c), _) => refuse(format!(
                "the container asks for {c}, but the host default ({default}) holds it and forbids choosing another"
            )),
        }
    }

    /// Capabilities a container under `choice` may hold despite
    /// [`super::spec::DANGEROUS_CAPABILITIES`].
    #[must_use]
    pub fn allowed_capabilities(&self, choice: &Choice) -> Vec<String> {
        self.allow_capabilities
            .iter()
            .filter(|o| match choice {
                Choice::Profile(n) => o.profile.as_deref() == Some(n),
                Choice::Policy(n) => o.policy.as_deref() == Some(n),
            })
            .flat_map(|o| o.capabilities.iter().cloned())
            .collect()
    }

    /// The file of policy `name` (already checked to be a plain name).
    #[must_use]
    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.policy_dir.join(format!("{name}.toml"))
    }
}

/// Exactly one of a profile and a policy, each a plain name.
fn one_choice(profile: Option<&str>, policy: Option<&str>) -> Result<(), String> {
    match (profile, policy) {
        (Some(p), None) => plain_name("profile", p).map(drop),
        (None, Some(p)) => plain_name("policy", p).map(drop),
        _ => Err("set exactly one of `profile` and `policy`".to_owned()),
    }
}

/// `value` if it is a plain name: 1 to 64 ASCII letters, digits, `.`, `_`
/// and `-`, not starting with `.` or `-` (so never a path, `..`, an option
/// or policy text).
pub fn plain_name(what: &str, value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !value.starts_with(['.', '-']);
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{what}={value:?} is not a plain name (1-{MAX_NAME} letters, digits, '.', '_', '-', not starting with '.' or '-'); \
             containers name policies the host defines, never paths or policy text"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn cfg(text: &str) -> HostConfig {
        HostConfig::parse(text, Path::new("test.toml")).expect("valid config")
    }

    fn apply(c: &str) -> Decision {
        Decision::Apply { choice: Choice::Profile(c.to_owned()), by_default: false }
    }

    #[test]
    fn plain_names_only() {
        for good in ["offline", "ci-job_2", "a.b", "X"] {
            assert!(plain_name("p", good).is_ok(), "{good}");
        }
        for bad in ["", "..", ".hidden", "../etc/x", "/etc/sbx/x", "a/b", "-rf", "a b", "x\n", &"a".repeat(65)] {
            assert!(plain_name("p", bad).is_err(), "{bad:?}");
        }
        let e = HostConfig::default().decide(&ann(&[(ANN_POLICY, "../../etc/passwd")])).expect_err("refused");
        assert!(e.to_string().contains("not a plain name"), "{e}");
    }

    #[test]
    fn without_a_default_only_annotated_containers() {
        let c = HostConfig::default();
        assert!(matches!(c.decide(&ann(&[])), Ok(Decision::Untouched(_))));
        assert_eq!(c.decide(&ann(&[(ANN_PROFILE, "offline")])).expect("ok"), apply("offline"));
        assert_eq!(
            c.decide(&ann(&[(ANN_POLICY, "db")])).expect("ok"),
            Decision::Apply { choice: Choice::Policy("db".into()), by_default: false }
        );
        assert!(c.decide(&ann(&[(ANN_PROFILE, "a"), (ANN_POLICY, "b")])).is_err());
        assert!(c.decide(&ann(&[(ANN_OPT_OUT, "yes")])).is_err());
        assert_eq!(c.policy_path("db"), Path::new("/etc/sbx/policies/db.toml"));
    }

    #[test]
    fn the_default_holds_and_opting_out_is_the_hosts_to_allow() {
        let strict = cfg("[default]\nprofile = \"offline\"\n");
        let held = Decision::Apply { choice: Choice::Profile("offline".into()), by_default: true };
        assert_eq!(strict.decide(&ann(&[])).expect("ok"), held);
        assert!(strict.decide(&ann(&[(ANN_OPT_OUT, "true")])).is_err());
        assert!(strict.decide(&ann(&[(ANN_PROFILE, "open")])).is_err());
        assert_eq!(strict.decide(&ann(&[(ANN_PROFILE, "offline")])).expect("ok"), apply("offline"));

        let lax = cfg("[default]\nprofile = \"offline\"\nopt_out = true\n");
        assert!(matches!(lax.decide(&ann(&[(ANN_OPT_OUT, "true")])), Ok(Decision::Untouched(_))));
        assert_eq!(lax.decide(&ann(&[(ANN_PROFILE, "open")])).expect("ok"), apply("open"));
    }

    #[test]
    fn the_default_can_cover_namespaces_and_labels() {
        let c = cfg("[default]\npolicy = \"ci\"\nnamespaces = [\"ci\"]\nannotations = { team = \"ml\" }\n");
        let ci = [(super::super::spec::K8S_POD_NAMESPACE, "ci"), ("team", "ml")];
        assert!(matches!(c.decide(&ann(&ci)), Ok(Decision::Apply { by_default: true, .. })));
        assert!(matches!(c.decide(&ann(&ci[..1])), Ok(Decision::Untouched(_))));
        // containerd names the namespace only in its own annotation.
        let containerd = [(super::super::spec::CRI_SANDBOX_NAMESPACE, "ci"), ("team", "ml")];
        assert!(matches!(c.decide(&ann(&containerd)), Ok(Decision::Apply { by_default: true, .. })));
        assert!(matches!(
            c.decide(&ann(&[(super::super::spec::K8S_POD_NAMESPACE, "prod"), ("team", "ml")])),
            Ok(Decision::Untouched(_))
        ));
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in [
            "[default]\n",
            "[default]\nprofile = \"a\"\npolicy = \"b\"\n",
            "[default]\npolicy = \"../x\"\n",
            "timeout_secs = 0\n",
            "typo = 1\n",
            "[[allow_capabilities]]\ncapabilities = [\"NET_RAW\"]\n",
        ] {
            assert!(HostConfig::parse(bad, Path::new("t.toml")).is_err(), "{bad}");
        }
        for bad in ["agent = \"sometimes\"\n", "agent = true\n"] {
            assert!(HostConfig::parse(bad, Path::new("t.toml")).is_err(), "{bad}");
        }
        let c = cfg("agent = \"required\"\nagent_socket = \"/x.sock\"\n");
        assert_eq!((c.agent, c.agent_socket.as_deref()), (AgentMode::Required, Some(Path::new("/x.sock"))));
        assert_eq!(HostConfig::default().agent, AgentMode::Auto);
        for c in [Choice::Profile("offline".into()), Choice::Policy("ci-1".into())] {
            assert_eq!(Choice::parse(&c.to_string()), Some(c));
        }
        let c = cfg("[[allow_capabilities]]\nprofile = \"open\"\ncapabilities = [\"NET_RAW\"]\n");
        assert_eq!(c.allowed_capabilities(&Choice::Profile("open".into())), ["NET_RAW"]);
        assert!(c.allowed_capabilities(&Choice::Policy("open".into())).is_empty());
    }
}
