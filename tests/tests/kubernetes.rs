//! The Kubernetes manifests in `deploy/kubernetes/`: they validate offline
//! against the Kubernetes schemas (`kubernetes-validate --strict`, a Python
//! package), the `DaemonSet` pod holds exactly the mounts and privileges
//! the hook and the agent need, and its installer, run for real in the
//! image built from `deploy/kubernetes/Containerfile` against temporary
//! "host" directories, installs the hook as the runtime will find it. There is no kubelet here: nothing
//! schedules the `DaemonSet`; the README section "Kubernetes" says what
//! that leaves out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use sbx_tests::{describe, require_root, TempDir};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The YAML documents of `file`, as JSON (`PyYAML`, which
/// kubernetes-validate depends on, does the parsing).
fn load(file: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(file)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "parsing {} (needs PyYAML: `pip install kubernetes-validate`): {}",
        file.display(),
        describe(&out)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

fn resources() -> Vec<PathBuf> {
    let k = load(&dir().join("kustomization.yaml")).remove(0);
    k["resources"].as_array().expect("resources").iter().map(|r| dir().join(r.as_str().expect("a path"))).collect()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let mut files = resources();
    // Every manifest in the directory is in the kustomization.
    let listed: BTreeSet<PathBuf> = files.iter().cloned().collect();
    for e in fs::read_dir(dir()).expect("reading deploy/kubernetes").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml") {
            assert!(listed.contains(&p), "{} is not in kustomization.yaml", p.display());
        }
    }
    files.push(dir().join("examples/pod-restricted.yaml"));
    for f in &files {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--no-warn"])
            .arg(f)
            .output()
            .expect("running kubernetes-validate");
        assert!(
            out.status.success(),
            "{} does not validate (kubernetes-validate is installed by `cargo xtask test`: pip install kubernetes-validate): {}",
            f.display(),
            describe(&out)
        );
    }
    // No RBAC: nothing in sbx talks to the API server.
    for f in &resources() {
        for doc in load(f) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            assert!(!kind.contains("Role"), "{}: sbx needs no RBAC, found a {kind}", f.display());
            if kind == "ServiceAccount" {
                assert_eq!(doc["automountServiceAccountToken"], false, "the account's token is not mounted");
            }
        }
    }
}

fn daemonset() -> Value {
    load(&dir().join("daemonset.yaml")).remove(0)
}

/// `name -> (mountPath, readOnly, mountPropagation)` of a container.
fn mounts(c: &Value) -> BTreeMap<String, (String, bool, String)> {
    c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_owned(),
                (
                    m["mountPath"].as_str().expect("mountPath").to_owned(),
                    m["readOnly"].as_bool().unwrap_or(false),
                    m["mountPropagation"].as_str().unwrap_or("None").to_owned(),
                ),
            )
        })
        .collect()
}

fn entry(path: &str, ro: bool, prop: &str) -> (String, bool, String) {
    (path.to_owned(), ro, prop.to_owned())
}

#[test]
fn the_daemonset_holds_exactly_what_the_hook_and_agent_need() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_eq!(pod[ns].as_bool(), Some(false), "{ns} must be false: {pod}");
    }
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "sbx-node");

    let volumes: BTreeMap<String, String> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            let name = v["name"].as_str().expect("name").to_owned();
            let src = v["hostPath"]["path"].as_str().map_or_else(
                || format!("configMap:{}", v["configMap"]["name"].as_str().unwrap_or("?")),
                |p| format!("host:{p}"),
            );
            (name, src)
        })
        .collect();
    let want: BTreeMap<String, String> = [
        ("cgroup", "host:/sys/fs/cgroup"),
        ("bpffs", "host:/sys/fs/bpf"),
        ("state", "host:/run/sbx"),
        ("hooks", "host:/usr/share/containers/oci/hooks.d"),
        ("opt", "host:/opt/sbx"),
        ("etc", "host:/etc/sbx"),
        ("config", "configMap:sbx-policies"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(volumes, want, "the pod's volumes");

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container, the agent");
    let agent = &containers[0];
    assert_eq!(agent["securityContext"], serde_json::json!({"privileged": true}), "the agent is privileged, only that");
    assert_eq!(agent["args"][0], "agent");
    let want: BTreeMap<String, (String, bool, String)> = [
        ("cgroup", entry("/sys/fs/cgroup", true, "HostToContainer")),
        ("bpffs", entry("/sys/fs/bpf", false, "Bidirectional")),
        ("state", entry("/run/sbx", false, "None")),
        ("config", entry("/etc/sbx", true, "None")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(mounts(agent), want, "the agent's mounts");

    let inits = pod["initContainers"].as_array().expect("initContainers");
    assert_eq!(inits.len(), 1, "one installer");
    let install = &inits[0];
    let sc = &install["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}), "the installer holds no capability");
    let want: BTreeMap<String, (String, bool, String)> = [
        ("config", entry("/config", true, "None")),
        ("hooks", entry("/host/hooks.d", false, "None")),
        ("opt", entry("/host/opt/sbx", false, "None")),
        ("etc", entry("/host/etc/sbx", false, "None")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(mounts(install), want, "the installer's mounts");
}

#[test]
fn the_example_pod_is_restricted_and_opts_in_by_annotation() {
    let pod = load(&dir().join("examples/pod-restricted.yaml")).remove(0);
    assert_eq!(pod["metadata"]["annotations"]["sbx.io/profile"], "agent");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    for c in pod["spec"]["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}), "zero capabilities");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
    }
}

/// An image built from `deploy/kubernetes/Containerfile`, removed on drop.
struct Image(String);

impl Image {
    fn build(context: &Path) -> Self {
        let tag = format!("localhost/sbx-test-{}:1", std::process::id());
        let out = Command::new("podman")
            .args(["build", "-q", "-t", &tag, "-f"])
            .arg(dir().join("Containerfile"))
            .arg(context)
            .output()
            .expect("running podman build (apt-get install podman)");
        assert!(out.status.success(), "podman build of deploy/kubernetes/Containerfile: {}", describe(&out));
        Self(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// Builds the image from the repository's Containerfile (with the binary
/// under test: a static build is what a cluster needs, the installer only
/// copies it), runs the `DaemonSet` installer command in it as the manifest
/// does (read-only root, no capabilities, the host directories and the
/// `ConfigMap` mounted where the manifest mounts them) and checks what it
/// leaves on the "host".
#[test]
fn the_installer_puts_the_hook_where_the_runtime_finds_it() {
    require_root();
    let ds = daemonset();
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    let argv: Vec<String> =
        init["command"].as_array().expect("command").iter().map(|a| a.as_str().expect("a string").to_owned()).collect();
    let configmap = load(&dir().join("configmap.yaml")).remove(0);
    let context = TempDir::new("k8s-image");
    let c = context.path();
    fs::copy("/bin/busybox", c.join("busybox")).expect("copying /bin/busybox (apt-get install busybox-static)");
    // The image holds the statically linked binary, as the Containerfile
    // asks (`cargo xtask dist` builds it; `cargo xtask test` passes it).
    let Some(bin) = std::env::var_os("SBX_STATIC_BIN").map(PathBuf::from) else {
        panic!("SBX_STATIC_BIN is not set: the image needs sbx-user-static (`cargo xtask dist`; `cargo xtask test` passes it)")
    };
    fs::copy(&bin, c.join("sbx-user")).expect("copying sbx-user-static");
    fs::create_dir_all(c.join("hooks.d")).expect("mkdir");
    let hooks_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks.d");
    for e in fs::read_dir(&hooks_src).expect("reading hooks.d").flatten() {
        fs::copy(e.path(), c.join("hooks.d").join(e.file_name())).expect("copying a hooks.d file");
    }
    let image = Image::build(c);
    // It runs in the image, which holds no shared library at all.
    let out = Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--network", "none"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--read-only", "--cap-drop", "ALL"])
        .args(["--entrypoint", "/usr/bin/sbx-user", &image.0, "check", "--profile", "offline"])
        .output()
        .expect("running podman");
    assert!(out.status.success(), "sbx-user check in the image: {}", describe(&out));
    // The ConfigMap's agent.toml passes the agent's own check (its
    // cgroup roots replaced by one that exists here).
    let agent_toml = TempDir::new("agent-toml");
    let agent_conf = agent_toml.path().join("agent.toml");
    fs::write(&agent_conf, configmap["data"]["agent.toml"].as_str().expect("agent.toml in the ConfigMap"))
        .expect("writing agent.toml");
    let roots = sbx_tests::TestCgroup::new();
    let out = Command::new(sbx_tests::sbx_user_bin())
        .args(["agent", "--check", "--cgroup-root", roots.arg(), "--config"])
        .arg(&agent_conf)
        .output()
        .expect("sbx-user agent --check");
    assert!(out.status.success(), "agent --check of the ConfigMap's agent.toml: {}", describe(&out));
    for with_default in [false, true] {
        let root = TempDir::new("k8s-host");
        let r = root.path();
        let config = r.join("config");
        fs::create_dir_all(&config).expect("mkdir");
        for (k, v) in configmap["data"].as_object().expect("data") {
            let mut v = v.as_str().expect("text").to_owned();
            if k == "oci-hook.toml" && with_default {
                v.push_str("[default]\nprofile = \"offline\"\n");
            }
            fs::write(config.join(k), v).expect("writing a ConfigMap key");
        }
        let host: Vec<PathBuf> = ["hooks", "opt", "etc"].iter().map(|d| r.join(d)).collect();
        for h in &host {
            fs::create_dir_all(h).expect("mkdir");
        }
        let vol = |src: &Path, dst: &str, ro: bool| format!("{}:{dst}{}", src.display(), if ro { ":ro" } else { "" });
        let out = Command::new("podman")
            .args(["--runtime", "runc", "run", "--rm", "--network", "none"])
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--read-only", "--cap-drop", "ALL"])
            .args(["-v", &vol(&config, "/config", true)])
            .args(["-v", &vol(&host[0], "/host/hooks.d", false)])
            .args(["-v", &vol(&host[1], "/host/opt/sbx", false)])
            .args(["-v", &vol(&host[2], "/host/etc/sbx", false)])
            .args(["--entrypoint", &argv[0], &image.0])
            .args(&argv[1..])
            .output()
            .expect("running podman (apt-get install podman runc)");
        assert!(out.status.success(), "the installer failed: {}", describe(&out));
        let installed = host[1].join("bin/sbx-user");
        assert_eq!(fs::read(&installed).ok(), fs::read(&bin).ok(), "the binary is installed at /opt/sbx/bin/sbx-user");
        assert!(host[2].join("policies/ci.toml").is_file(), "policy-ci.toml is installed as policies/ci.toml");
        assert!(host[2].join("oci-hook.toml").is_file(), "the configuration is installed");
        let hook: Value =
            serde_json::from_str(&fs::read_to_string(host[0].join("sbx-annotated.json")).expect("hooks.d file"))
                .expect("JSON");
        assert_eq!(hook["hook"]["path"], "/opt/sbx/bin/sbx-user", "the hook names the installed binary");
        assert_eq!(
            host[0].join("sbx-default.json").exists(),
            with_default,
            "the every-container hook is installed exactly when the configuration sets a [default]"
        );
        let leftovers: Vec<_> =
            host.iter().flat_map(|h| walk(h)).filter(|p| p.extension().is_some_and(|x| x == "new")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
