//! Pods: which container is a pod's sandbox (infra) container, and whether
//! the directory above its cgroup is the pod's own. Pure functions of the
//! annotations and of cgroup directory names, unit-tested here; the hook
//! ([`super`]) reads the files and attaches.
//!
//! A pod's cgroup exists before any of its containers: the kubelet makes
//! it (`kubepods/<qos>/pod<uid>`, or `kubepods-<qos>-pod<uid>.slice` with
//! the systemd driver), podman makes it at `pod create`
//! (`libpod_parent/<pod-id>`, or `machine-libpod_pod_<pod-id>.slice`). The
//! sandbox container is the first process in it. Attaching the policy
//! there, when the sandbox starts, holds every container the runtime later
//! puts in the pod from its first instruction, with no per-container race.

use std::collections::BTreeMap;

/// containerd's annotation of the container kind (`sandbox`, `container`).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O's (and podman's, for containers that join a pod) annotation of
/// the container kind.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// containerd's annotation of the pod's uid (on the sandbox and each
/// container).
pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The pod uid annotation some runtimes set.
pub const K8S_POD_UID: &str = "io.kubernetes.pod.uid";
/// CRI-O's JSON of the pod's labels, which hold its uid.
pub const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
/// The annotation naming the manager of a podman container.
pub const CONTAINER_MANAGER: &str = "io.container.manager";

/// What part a container plays, from its annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A Kubernetes pod's sandbox, as its runtime (containerd or CRI-O)
    /// says.
    Sandbox(Runtime),
    /// A podman container with no container kind: a pod's infra container
    /// if the directory above its cgroup is a podman pod's (podman 4 marks
    /// the containers that join a pod, `io.kubernetes.cri-o.ContainerType
    /// = container`, and leaves the infra container unmarked), otherwise
    /// a container of its own.
    PodmanUnmarked,
    /// A container that joins a pod, or one outside any pod.
    Container,
}

/// Who made a pod sandbox, for checking its cgroup's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (CRI).
    Containerd,
    /// CRI-O.
    CriO,
    /// podman.
    Podman,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Containerd => "containerd",
            Self::CriO => "CRI-O",
            Self::Podman => "podman",
        })
    }
}

/// The container's role from its annotations.
#[must_use]
pub fn role(ann: &BTreeMap<String, String>) -> Role {
    match (ann.get(CRI_CONTAINER_TYPE).map(String::as_str), ann.get(CRIO_CONTAINER_TYPE).map(String::as_str)) {
        (Some("sandbox"), _) => Role::Sandbox(Runtime::Containerd),
        (_, Some("sandbox")) => Role::Sandbox(Runtime::CriO),
        (None, None) if ann.get(CONTAINER_MANAGER).is_some_and(|m| m == "libpod") => Role::PodmanUnmarked,
        _ => Role::Container,
    }
}

/// Whether `name` (the last component of the directory above a podman
/// container's cgroup) is a podman pod's cgroup: the pod id (64 hex
/// digits) with the cgroupfs manager, `machine-libpod_pod_<id>.slice`
/// with systemd's.
#[must_use]
pub fn is_podman_pod_dir(name: &str) -> bool {
    let id = name.strip_suffix(".slice").and_then(|n| n.rsplit_once("libpod_pod_")).map_or(name, |(_, id)| id);
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod's uid from the annotations, if one is there and looks like a
/// uid (hex digits and dashes).
#[must_use]
pub fn pod_uid(ann: &BTreeMap<String, String>) -> Option<String> {
    let labels = ann
        .get(CRIO_LABELS)
        .and_then(|l| serde_json::from_str::<BTreeMap<String, String>>(l).ok())
        .and_then(|l| l.get(K8S_POD_UID).cloned());
    let uid = ann.get(K8S_POD_UID).or_else(|| ann.get(CRI_SANDBOX_UID)).cloned().or(labels)?;
    let ok = (8..=64).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// Checks that `name`, the last component of the directory above the
/// sandbox container's cgroup, is the pod's cgroup, as the runtime names
/// it; `Err` says why not.
pub fn check_pod_dir(runtime: Runtime, name: &str, ann: &BTreeMap<String, String>) -> Result<(), String> {
    match runtime {
        Runtime::Podman if is_podman_pod_dir(name) => Ok(()),
        Runtime::Podman => Err(format!("{name:?} is not named as a podman pod's cgroup")),
        Runtime::Containerd | Runtime::CriO => {
            let Some(uid) = pod_uid(ann) else {
                return Err(format!(
                    "the {runtime} sandbox carries no pod uid ({K8S_POD_UID}, {CRI_SANDBOX_UID} or {CRIO_LABELS}) \
                     to check {name:?} against"
                ));
            };
            // The kubelet names it pod<uid>, or with the systemd driver
            // kubepods-<qos>-pod<uid with '_' for '-'>.slice.
            let systemd = uid.replace('-', "_");
            let ok = name == format!("pod{uid}")
                || name.strip_suffix(".slice").is_some_and(|n| n.ends_with(&format!("-pod{systemd}")));
            if ok {
                Ok(())
            } else {
                Err(format!("{name:?} is not the cgroup the kubelet makes for pod {uid}"))
            }
        }
    }
}

/// Whether a populated cgroup `name` beside the sandbox's own one may be in
/// the pod's cgroup when the sandbox starts: CRI-O's conmon for the sandbox
/// (`crio-conmon-<id>.scope`), named after the sandbox's id.
#[must_use]
pub fn is_sandbox_helper(name: &str, sandbox_id: &str) -> bool {
    sandbox_id.len() >= 12 && name.contains(sandbox_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const POD: &str = "aaeaaa0c180a95737da7f5bb7e7cb7df1d8026d887bf664f92dfb046ca4cb619";

    #[test]
    fn roles_from_the_annotations_runtimes_set() {
        assert_eq!(role(&ann(&[(CRI_CONTAINER_TYPE, "sandbox")])), Role::Sandbox(Runtime::Containerd));
        assert_eq!(role(&ann(&[(CRI_CONTAINER_TYPE, "container")])), Role::Container);
        assert_eq!(role(&ann(&[(CRIO_CONTAINER_TYPE, "sandbox")])), Role::Sandbox(Runtime::CriO));
        // podman 4.3, as seen here: the infra container has no kind, the
        // containers that join the pod say `container`.
        assert_eq!(role(&ann(&[(CONTAINER_MANAGER, "libpod")])), Role::PodmanUnmarked);
        assert_eq!(role(&ann(&[(CONTAINER_MANAGER, "libpod"), (CRIO_CONTAINER_TYPE, "container")])), Role::Container);
        assert_eq!(role(&ann(&[])), Role::Container);
    }

    #[test]
    fn podman_pod_directories() {
        assert!(is_podman_pod_dir(POD));
        assert!(is_podman_pod_dir(&format!("machine-libpod_pod_{POD}.slice")));
        for bad in ["libpod_parent", "machine.slice", &POD[1..], &POD.to_uppercase(), &format!("libpod-{POD}")] {
            assert!(!is_podman_pod_dir(bad), "{bad}");
        }
        assert!(check_pod_dir(Runtime::Podman, "libpod_parent", &ann(&[])).is_err());
    }

    #[test]
    fn kubernetes_pod_directories_carry_the_pod_uid() {
        let uid = "0f6c5d2e-1b2a-4c3d-9e8f-0123456789ab";
        let a = ann(&[(K8S_POD_UID, uid)]);
        assert!(check_pod_dir(Runtime::CriO, &format!("pod{uid}"), &a).is_ok());
        let systemd = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
        assert!(check_pod_dir(Runtime::CriO, &systemd, &a).is_ok());
        assert!(check_pod_dir(Runtime::Containerd, &systemd, &ann(&[(CRI_SANDBOX_UID, uid)])).is_ok());
        let labels = format!("{{\"io.kubernetes.pod.uid\":\"{uid}\",\"app\":\"x\"}}");
        assert!(check_pod_dir(Runtime::CriO, &format!("pod{uid}"), &ann(&[(CRIO_LABELS, &labels)])).is_ok());
        for bad in ["besteffort", "kubepods.slice", "pod0f6c5d2e", &format!("pod{uid}x")] {
            assert!(check_pod_dir(Runtime::CriO, bad, &a).is_err(), "{bad}");
        }
        let e = check_pod_dir(Runtime::Containerd, &format!("pod{uid}"), &ann(&[])).expect_err("no uid");
        assert!(e.contains("no pod uid"), "{e}");
        assert_eq!(pod_uid(&ann(&[(K8S_POD_UID, "../x")])), None);
    }

    #[test]
    fn conmon_beside_the_sandbox() {
        let id = "0b2d37ab35c586b2a01127488799face43506b3b5c47aca79054c2359f91c71d";
        assert!(is_sandbox_helper(&format!("crio-conmon-{id}.scope"), id));
        assert!(!is_sandbox_helper("crio-conmon-other.scope", id));
        assert!(!is_sandbox_helper("anything", ""));
    }
}
