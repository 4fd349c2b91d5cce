//! The agent's wire protocol, version [`VERSION`]: one JSON object per
//! line (UTF-8, `\n`-terminated) in each direction over a UNIX stream
//! socket.
//!
//! Every request carries `"v": 1` and an `"op"`; it may carry an `"id"`
//! (any JSON value), which the reply echoes so that a client can pipeline.
//! Every reply carries `"v"`, `"ok"` and either the result fields or an
//! `"error": {"code": ..., "message": ...}`. Unknown fields are refused
//! rather than ignored: a misspelt `"polcy"` must not attach the default
//! policy. The decoder is a pure function of the line ([`decode`]), so it
//! is property-tested on arbitrary bytes without a socket.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this agent speaks.
pub const VERSION: u32 = 1;

/// Why a request line was not understood. Each maps to an error code of
/// the reply ([`DecodeError::code`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not UTF-8, not JSON, or not a JSON object.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// `"v"` is missing or names a version this agent does not speak.
    #[error("unsupported protocol version {0}; this agent speaks version 1 (send \"v\": 1)")]
    Version(String),
    /// The object is JSON but not a request of this version: an unknown
    /// `"op"`, a missing or unknown field, a value of the wrong type.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// The reply's error code.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::Malformed,
            Self::Version(_) => ErrorCode::Version,
            Self::Invalid(_) => ErrorCode::Invalid,
        }
    }
}

/// Where a sandbox's policy comes from, in the order the CLI applies
/// them: a built-in profile, then the text of a policy file (TOML, without
/// `[filesystem]`: Landlock restricts a process sbx starts, not a cgroup),
/// then the rules and settings of the CLI's flags of the same names.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySource {
    /// Built-in profile (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Policy file text (what `--policy FILE` would read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toml: Option<String>,
    /// A name for the text in error messages (the CLI sends the file's path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `--allow` values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// `--deny` values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// `--default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `--loopback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback: Option<String>,
    /// `--proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// `--bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `--audit`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// `--proxy-redirect`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proxy_redirect: bool,
    /// `--allow-unresolved`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_unresolved: bool,
    /// `--max-rules`: capacity of each policy trie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rules: Option<u32>,
    /// `--unix` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unix: Vec<String>,
    /// `--dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
}

impl PolicySource {
    /// The flags of this request, as the policy builder takes them: the
    /// one mapping of the flag fields, which the CLI uses too (its flags
    /// become a `PolicySource` first, see `PolicyArgs::source`). The
    /// filesystem flags have no field here (they are `run`'s own).
    #[must_use]
    pub fn flags(&self) -> crate::policy::FlagInput {
        let Self {
            profile: _,
            toml: _,
            name: _,
            allow,
            deny,
            default,
            loopback,
            proxy,
            bind,
            audit,
            proxy_redirect,
            allow_unresolved,
            max_rules: _,
            unix,
            dns,
        } = self;
        crate::policy::FlagInput {
            allow: allow.clone(),
            deny: deny.clone(),
            default: default.clone(),
            loopback: loopback.clone(),
            proxy: proxy.clone(),
            bind: bind.clone(),
            audit: *audit,
            fs_read: Vec::new(),
            fs_write: Vec::new(),
            allow_unresolved: *allow_unresolved,
            proxy_redirect: *proxy_redirect,
            unix: unix.clone(),
            dns: dns.clone(),
        }
    }
}

/// One request, by its `"op"`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who the agent is and who it thinks the caller is.
    Hello {},
    /// Put a cgroup under a policy (`sbx-user attach`). With `create`, the
    /// agent makes the cgroup first (its parent must exist) and the caller
    /// owns it; a caller that is not root may only attach to a cgroup it
    /// has the agent create.
    Attach {
        /// The cgroup: absolute, or relative to the first managed root.
        cgroup: String,
        /// Create the cgroup (it must not exist).
        #[serde(default)]
        create: bool,
        /// Replace the policy of an existing sandbox.
        #[serde(default)]
        replace: bool,
        /// The policy.
        #[serde(default)]
        policy: PolicySource,
    },
    /// Replace the policy of a sandbox (`sbx-user update`).
    Update {
        /// The cgroup.
        cgroup: String,
        /// The new policy.
        #[serde(default)]
        policy: PolicySource,
    },
    /// Take sbx off a cgroup (`sbx-user detach`); with `remove`, kill what
    /// runs in it and remove the cgroup too (only one the agent created).
    Detach {
        /// The cgroup.
        cgroup: String,
        /// Also remove the cgroup.
        #[serde(default)]
        remove: bool,
    },
    /// A fresh sandbox for a command the client starts itself (`sbx-user
    /// run` through the agent): the agent creates a cgroup `run-PID-N`
    /// below the first managed root, attaches the policy with the client's
    /// pid as the runner, and replies with the cgroup and, as `SCM_RIGHTS`
    /// ancillary data on the reply line, a file descriptor of the cgroup
    /// directory (`O_RDONLY | O_DIRECTORY`). The client opens
    /// `cgroup.procs` through it (`openat`) and writes `0` between fork and
    /// exec, or passes it to `clone3` as `CLONE_INTO_CGROUP`'s `cgroup`;
    /// when the command ends it sends `detach` with `remove`.
    ///
    /// For a client that is not root the reply carries no descriptor (it
    /// could not write `cgroup.procs` of a cgroup root owns) but
    /// `"enter": "pidfd"`: the client forks, the child waits before exec,
    /// and the client sends `enter` with the child's pidfd; the agent moves
    /// the child in.
    ///
    /// With `staged`, the agent replies twice: first, as soon as the cgroup
    /// exists and before any policy is attached, `"stage": "made"` with the
    /// cgroup (and the descriptor or `"enter"`, as above), so the client can
    /// create its child in the cgroup while the agent attaches; then, once
    /// the policy holds, `"stage": "attached"` with the generation and the
    /// summary. The child must not exec before the second reply. If the
    /// second is an error, the agent has killed what runs in the cgroup and
    /// removed it: the client has nothing to detach. An agent that predates
    /// `staged` refuses the field (`invalid`).
    Run {
        /// The network policy (`[filesystem]` is the client's to enforce).
        #[serde(default)]
        policy: PolicySource,
        /// Have the programs trace this sandbox's decisions into the
        /// program set's aya-log buffer (`run -vv`), which the client reads.
        /// Root only: the buffer holds every traced sandbox's lines.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trace: bool,
        /// Where the client's DNS stub answers (port 53, an address in
        /// `127.53.0.0/16`), for `dns = "pinned"`: the sandbox may reach it
        /// there, and no other loopback port 53.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_stub: Option<std::net::Ipv4Addr>,
        /// Two replies: the cgroup once made, then the attach's outcome.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        staged: bool,
    },
    /// Moves the client's child into the sandbox `run` made for the
    /// client. The request line carries, as `SCM_RIGHTS` ancillary data on
    /// its first byte, a pidfd of the child (`pidfd_open`). The agent moves
    /// it only if the sandbox is one this client's `run` made and holds no
    /// process yet, the child's parent is the client, all its uids are the
    /// client's, it has not executed anything since the fork (its
    /// executable is the client's), and it is not inside an sbx sandbox
    /// already (leaving one for a wider policy would be an escape). The
    /// child must not exec before the `ok` reply.
    Enter {
        /// The cgroup `run` replied with.
        cgroup: String,
    },
    /// Subscribe to the deny (and audit) events of the sandboxes named, or
    /// of every sandbox the caller may see. After the `ok` reply the
    /// connection carries only event lines, `{"v": 1, "event": {...},
    /// "dropped": N}`, where `N` counts the events this subscriber lost
    /// because it read too slowly; it takes no more requests.
    Events {
        /// Cgroups to follow; absent for all.
        #[serde(default)]
        cgroups: Option<Vec<String>>,
    },
    /// The sandboxes the caller may see: all for root, its own otherwise.
    List {},
    /// One sandbox in full: its record and what the kernel holds.
    Status {
        /// The cgroup.
        cgroup: String,
    },
}

impl Request {
    /// The `"op"` name, for logs.
    #[must_use]
    pub fn op(&self) -> &'static str {
        match self {
            Self::Hello {} => "hello",
            Self::Attach { .. } => "attach",
            Self::Update { .. } => "update",
            Self::Detach { .. } => "detach",
            Self::Run { .. } => "run",
            Self::Enter { .. } => "enter",
            Self::Events { .. } => "events",
            Self::List {} => "list",
            Self::Status { .. } => "status",
        }
    }
}

/// A decoded request line: its id, to echo, and the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The request's `"id"`, if it had one.
    pub id: Option<Value>,
    /// The request.
    pub request: Request,
}

/// The error codes of replies.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    Malformed,
    /// The line is longer than the agent's limit.
    TooLarge,
    /// Missing or unsupported `"v"`.
    Version,
    /// Not a valid request of this version.
    Invalid,
    /// The caller may not use the agent at all.
    Denied,
    /// The caller may use the agent, but not on this sandbox.
    NotOwner,
    /// The cgroup is not under a subtree the agent manages.
    NotManaged,
    /// No such cgroup, or no sandbox on it.
    NotFound,
    /// The policy does not parse or validate.
    Policy,
    /// A limit of the agent's configuration.
    Limit,
    /// The agent tried and failed; nothing was changed.
    Failed,
}

/// Decodes one request line (without or with its trailing `\n`).
pub fn decode(line: &[u8]) -> Result<Envelope, DecodeError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::Malformed(format!("not UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::Malformed("a request is a JSON object".into()));
    };
    let id = map.remove("id");
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(other) => return Err(DecodeError::Version(other.to_string())),
        None => return Err(DecodeError::Version("(none)".into())),
    }
    if !map.contains_key("op") {
        return Err(DecodeError::Invalid("missing \"op\"".into()));
    }
    let request = serde_json::from_value(Value::Object(map)).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(Envelope { id, request })
}

/// A successful reply with `fields` (a JSON object) as its result.
#[must_use]
pub fn ok_reply(id: Option<&Value>, fields: Value) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("v".into(), VERSION.into());
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("ok".into(), true.into());
    if let Value::Object(fields) = fields {
        map.extend(fields);
    }
    line(&Value::Object(map))
}

/// An error reply.
#[must_use]
pub fn error_reply(id: Option<&Value>, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("v".into(), VERSION.into());
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("ok".into(), false.into());
    map.insert("error".into(), serde_json::json!({ "code": code, "message": message }));
    line(&Value::Object(map))
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("JSON values serialise");
    out.push(b'\n');
    out
}

/// A reply as a client reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `"ok": true`, with every field of the reply.
    Ok(Map<String, Value>),
    /// `"ok": false`.
    Err {
        /// The error code (as sent, so that a newer agent's code still reads).
        code: String,
        /// The agent's message.
        message: String,
    },
}

/// Reads one reply line.
pub fn decode_reply(line: &[u8]) -> Result<Reply, DecodeError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(DecodeError::Malformed("a reply is a JSON object".into()));
    };
    match map.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        other => return Err(DecodeError::Version(other.map_or_else(|| "(none)".into(), ToString::to_string))),
    }
    match map.get("ok") {
        Some(Value::Bool(true)) => Ok(Reply::Ok(map)),
        Some(Value::Bool(false)) => {
            let err = map.get("error");
            let field = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
            Ok(Reply::Err { code: field("code"), message: field("message") })
        }
        _ => Err(DecodeError::Invalid("a reply without \"ok\"".into())),
    }
}

/// Encodes a request line, as a client sends it.
#[must_use]
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut v = serde_json::to_value(request).expect("requests serialise");
    if let Value::Object(map) = &mut v {
        map.insert("v".into(), VERSION.into());
    }
    line(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_requests_of_version_1() {
        let cases: &[(&str, Request)] = &[
            (r#"{"v":1,"op":"hello"}"#, Request::Hello {}),
            (r#"{"v":1,"op":"list"}"#, Request::List {}),
            (
                r#"{"v":1,"op":"attach","cgroup":"ci/a","create":true,"policy":{"profile":"offline","allow":["10.0.0.1:80"]}}"#,
                Request::Attach {
                    cgroup: "ci/a".into(),
                    create: true,
                    replace: false,
                    policy: PolicySource {
                        profile: Some("offline".into()),
                        allow: vec!["10.0.0.1:80".into()],
                        ..PolicySource::default()
                    },
                },
            ),
            (
                r#"{"v":1,"op":"detach","cgroup":"a","remove":true}"#,
                Request::Detach { cgroup: "a".into(), remove: true },
            ),
            (r#"{"v":1,"op":"status","cgroup":"a"}"#, Request::Status { cgroup: "a".into() }),
            // A client of the first version of `run` sends neither field.
            (
                r#"{"v":1,"op":"run","policy":{}}"#,
                Request::Run { policy: PolicySource::default(), trace: false, dns_stub: None, staged: false },
            ),
            (
                r#"{"v":1,"op":"run","trace":true,"dns_stub":"127.53.1.2"}"#,
                Request::Run {
                    policy: PolicySource::default(),
                    trace: true,
                    dns_stub: Some(std::net::Ipv4Addr::new(127, 53, 1, 2)),
                    staged: false,
                },
            ),
            (
                r#"{"v":1,"op":"run","staged":true}"#,
                Request::Run { policy: PolicySource::default(), trace: false, dns_stub: None, staged: true },
            ),
            (r#"{"v":1,"op":"enter","cgroup":"run-1-2"}"#, Request::Enter { cgroup: "run-1-2".into() }),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text.as_bytes()).map(|e| e.request).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn echoes_the_id() {
        let e = decode(br#"{"v":1,"id":[7,"x"],"op":"list"}"#).expect("valid");
        assert_eq!(e.id, Some(serde_json::json!([7, "x"])));
        let reply = ok_reply(e.id.as_ref(), serde_json::json!({"n": 1}));
        let back: Value = serde_json::from_slice(&reply).expect("JSON");
        assert_eq!(back, serde_json::json!({"v": 1, "id": [7, "x"], "ok": true, "n": 1}));
        assert!(reply.ends_with(b"}\n") && !reply[..reply.len() - 1].contains(&b'\n'), "one line");
    }

    #[test]
    fn refuses_what_is_not_a_request_of_this_version() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"", ErrorCode::Malformed),
            (b"{", ErrorCode::Malformed),
            (b"\xff\xfe", ErrorCode::Malformed),
            (b"[1,2]", ErrorCode::Malformed),
            (b"\"hello\"", ErrorCode::Malformed),
            (br#"{"op":"list"}"#, ErrorCode::Version),
            (br#"{"v":2,"op":"list"}"#, ErrorCode::Version),
            (br#"{"v":"1","op":"list"}"#, ErrorCode::Version),
            (br#"{"v":1}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"format_disk"}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"attach"}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"attach","cgroup":"a","polcy":{}}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"attach","cgroup":"a","policy":{"alow":["x"]}}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"attach","cgroup":5}"#, ErrorCode::Invalid),
            (br#"{"v":1,"op":"list","extra":1}"#, ErrorCode::Invalid),
        ];
        for (line, code) in cases {
            let got = decode(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(got.code(), *code, "{}: {got}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_request_encodes_to_what_decodes_back() {
        let policy = PolicySource { toml: Some("[network]\n".into()), max_rules: Some(64), ..PolicySource::default() };
        let r = Request::Update { cgroup: "x".into(), policy };
        assert_eq!(decode(&encode_request(&r)).map(|e| e.request), Ok(r));
    }

    #[test]
    fn replies_decode() {
        let ok = ok_reply(None, serde_json::json!({"cgroup_id": 5}));
        assert!(matches!(decode_reply(&ok), Ok(Reply::Ok(m)) if m["cgroup_id"] == 5));
        let err = error_reply(Some(&1.into()), ErrorCode::NotOwner, "no");
        assert_eq!(decode_reply(&err), Ok(Reply::Err { code: "not_owner".into(), message: "no".into() }));
    }
}
