//! What the runtime tells a hook: the OCI container state (on the hook's
//! stdin) and the parts of the bundle's `config.json` the hook reads, plus
//! the pure parsing of `/proc/<pid>/cgroup` and `/proc/self/mountinfo`.
//! No I/O here beyond reading the two files, so the parsing is unit-tested.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::state::Container;

/// The container state of the OCI runtime specification (`runtime.md`,
/// "State"), as a hook receives it on stdin.
#[derive(Clone, Debug, Deserialize)]
pub struct State {
    /// The container id.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    #[serde(default)]
    pub status: String,
    /// The container process (absent once it has stopped).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The bundle directory, holding `config.json`.
    pub bundle: PathBuf,
    /// The container's annotations (some runtimes leave them out).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of `config.json` the hook reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Config {
    /// Annotations, when the state lacks them.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The container process.
    #[serde(default)]
    pub process: Option<Process>,
}

/// `config.json` `process`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Process {
    /// Its capability sets.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// `config.json` `process.capabilities`: the five capability sets.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Capabilities {
    /// Bounding set: what the process (or a program it executes, setuid or
    /// with file capabilities) can ever hold.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// Effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// Permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// Inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// Ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// Capabilities that let a process get around cgroup socket hooks or sbx
/// itself. An OCI hook cannot take a capability away, so a container that
/// holds one of these in any set is refused (unless the host configuration
/// allows it for the profile). Each line says why.
pub const DANGEROUS_CAPABILITIES: &[(&str, &str)] = &[
    ("NET_RAW", "AF_PACKET and raw IP sockets send packets no connect() or sendmsg() hook sees"),
    ("NET_ADMIN", "routes, nftables, interfaces and tunnels: traffic can be steered around the policy"),
    ("SYS_ADMIN", "mounts (cgroupfs, bpffs), BPF, namespaces and moving processes between cgroups"),
    ("BPF", "loading and detaching BPF programs and changing sbx's maps"),
    ("PERFMON", "with BPF: tracing programs that read and write kernel and process memory"),
    ("SYS_PTRACE", "attaching to processes outside the sandbox (on the host PID namespace) to act for them"),
    ("SYS_MODULE", "loading kernel modules: the kernel itself"),
    ("SYS_RAWIO", "raw device and I/O port access (/dev/mem, iopl): the kernel's memory"),
    ("SYS_BOOT", "kexec_load: replacing the running kernel"),
    ("DAC_READ_SEARCH", "open_by_handle_at: opening host files (sbx's pins and records) from inside a mount namespace"),
];

/// The dangerous capabilities `caps` holds in any of its sets, sorted and
/// without the `CAP_` prefix, leaving out those in `allowed`.
#[must_use]
pub fn dangerous_held(caps: &Capabilities, allowed: &[String]) -> Vec<String> {
    let sets = [&caps.bounding, &caps.effective, &caps.permitted, &caps.inheritable, &caps.ambient];
    let mut held: Vec<String> = sets
        .iter()
        .flat_map(|s| s.iter())
        .map(|c| normalise_cap(c))
        .filter(|c| DANGEROUS_CAPABILITIES.iter().any(|(d, _)| d == c))
        .filter(|c| !allowed.iter().any(|a| normalise_cap(a) == *c))
        .collect();
    held.sort();
    held.dedup();
    held
}

/// `cap_net_raw`, `CAP_NET_RAW` and `NET_RAW` all as `NET_RAW`.
#[must_use]
pub fn normalise_cap(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map_or_else(|| up.clone(), str::to_owned)
}

/// The annotation that carries the Kubernetes pod namespace.
pub const K8S_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// containerd's annotation of the pod namespace (it sets no
/// [`K8S_POD_NAMESPACE`]).
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// The annotation that carries the Kubernetes pod name.
pub const K8S_POD_NAME: &str = "io.kubernetes.pod.name";
/// The annotation that carries the Kubernetes container name.
pub const K8S_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The container as the record names it: its id and, for Kubernetes, the
/// pod and container names the runtime passed (containerd and CRI-O both
/// set the `io.kubernetes.*` annotations; containerd also sets its own
/// `io.kubernetes.cri.*` ones, read when the first are absent).
#[must_use]
pub fn container_info(id: &str, annotations: &BTreeMap<String, String>) -> Container {
    let get =
        |keys: &[&str]| keys.iter().find_map(|k| annotations.get(*k).filter(|v| !v.is_empty()).map(|v| printable(v)));
    Container {
        id: printable(id),
        pod_namespace: get(&[K8S_POD_NAMESPACE, CRI_SANDBOX_NAMESPACE]),
        pod_name: get(&[K8S_POD_NAME, "io.kubernetes.cri.sandbox-name"]),
        container_name: get(&[K8S_CONTAINER_NAME, "io.kubernetes.cri.container-name"]),
        pod_policy: None,
    }
}

/// Longest name kept from an annotation (Kubernetes names are at most 253).
const MAX_LABEL: usize = 253;

/// `s` safe to print on a terminal ([`crate::diag::printable`]), cut at
/// [`MAX_LABEL`] characters. Whoever writes a container's annotations
/// chooses these names.
fn printable(s: &str) -> String {
    crate::diag::printable(&s.chars().take(MAX_LABEL).collect::<String>())
}

/// The cgroup v2 path of a process from the text of `/proc/<pid>/cgroup`:
/// the path of its `0::` line, or `None` when it has none (a v1-only host,
/// or a runtime that did not put it in the unified hierarchy).
#[must_use]
pub fn unified_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_owned())
}

/// The cgroup2 mount from mountinfo text: its mount point and the path
/// inside the hierarchy it shows (field 4, `/` unless a subtree is bind
/// mounted or a cgroup namespace is in play).
#[must_use]
pub fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let root = unescape(f.nth(3)?);
        let point = unescape(f.next()?);
        Some((PathBuf::from(point), root))
    })
}

/// The directory of cgroup v2 path `path` (as `/proc/<pid>/cgroup` shows
/// it) under a cgroup2 mount at `point` showing `root`; `None` when the
/// path is not under what the mount shows, or tries to leave it.
#[must_use]
pub fn cgroup_dir(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') || path.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    let rel = if root == "/" {
        path.trim_start_matches('/')
    } else {
        let rest = path.strip_prefix(root.trim_end_matches('/'))?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest.trim_start_matches('/')
    };
    Some(if rel.is_empty() { point.to_owned() } else { point.join(rel) })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        assert_eq!(cgroup2_mount(HYBRID), Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned())));
        assert_eq!(cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
        let ns = "41 31 0:38 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(ns), Some((PathBuf::from("/sys/fs/cgroup"), "/kubepods/pod1".to_owned())));
        let esc = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(esc).map(|m| m.0), Some(PathBuf::from("/mnt/cg two")));
    }

    #[test]
    fn reads_the_unified_line() {
        let text = "9:name=systemd:/libpod_parent/libpod-abc\n0::/libpod_parent/libpod-abc\n";
        assert_eq!(unified_path(text).as_deref(), Some("/libpod_parent/libpod-abc"));
        assert_eq!(unified_path("9:name=systemd:/x\n1:cpu:/x\n"), None);
        assert_eq!(unified_path("0::/\n").as_deref(), Some("/"));
    }

    #[test]
    fn joins_paths_to_the_mount() {
        let m = Path::new("/sys/fs/cgroup/unified");
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/a/b", Some("/sys/fs/cgroup/unified/a/b")),
            ("/", "/", Some("/sys/fs/cgroup/unified")),
            ("/k", "/k/pod/c", Some("/sys/fs/cgroup/unified/pod/c")),
            ("/k", "/k", Some("/sys/fs/cgroup/unified")),
            ("/k", "/kx/c", None),
            ("/k", "/other", None),
            ("/", "/a/../b", None),
            ("/", "relative", None),
        ];
        for &(root, path, want) in cases {
            assert_eq!(cgroup_dir(m, root, path), want.map(PathBuf::from), "root {root} path {path}");
        }
    }

    #[test]
    fn dangerous_capabilities_in_any_set() {
        let caps = Capabilities {
            bounding: vec!["CAP_CHOWN".into(), "CAP_NET_RAW".into()],
            effective: vec!["CAP_CHOWN".into()],
            ambient: vec!["cap_sys_admin".into()],
            ..Capabilities::default()
        };
        assert_eq!(dangerous_held(&caps, &[]), ["NET_RAW", "SYS_ADMIN"]);
        assert_eq!(dangerous_held(&caps, &["CAP_NET_RAW".into()]), ["SYS_ADMIN"]);
        let podman_default = Capabilities {
            bounding: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID"]
                .iter()
                .map(|c| format!("CAP_{c}"))
                .collect(),
            ..Capabilities::default()
        };
        assert!(dangerous_held(&podman_default, &[]).is_empty());
    }

    #[test]
    fn names_kubernetes_containers() {
        let mut a = BTreeMap::new();
        assert_eq!(container_info("abc", &a).to_string(), "container abc");
        a.insert(K8S_POD_NAMESPACE.to_owned(), "ci".to_owned());
        a.insert(K8S_POD_NAME.to_owned(), "job-1".to_owned());
        a.insert("io.kubernetes.cri.container-name".to_owned(), "agent".to_owned());
        assert_eq!(container_info("abc", &a).to_string(), "container abc (pod ci/job-1 container agent)");
        a.insert(K8S_POD_NAME.to_owned(), "x\u{1b}[2J\nforged".to_owned());
        assert_eq!(container_info("abc", &a).pod_name.as_deref(), Some("x?[2J?forged"));
        a.insert(K8S_POD_NAME.to_owned(), "p".repeat(1000));
        assert_eq!(container_info("abc", &a).pod_name.map(|p| p.len()), Some(253));
    }

    #[test]
    fn parses_a_runc_state() {
        let s: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"sbx.io/profile":"offline"}}"#,
        )
        .expect("valid state");
        assert_eq!((s.id.as_str(), s.pid, s.annotations.len()), ("c1", Some(42), 1));
        let s: State = serde_json::from_str(r#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b"}"#)
            .expect("valid state");
        assert_eq!(s.pid, None);
    }
}
