//! Containers: a real podman with runc runs containers from a busybox
//! rootfs each test builds, with `--hooks-dir` pointing at a copy of the
//! repository's `hooks.d` whose hook path is the `sbx-user` under test.
//! The containers' first act is a connect to the test host in a network
//! namespace the test made ([`TestNet`]); `--network host` puts them in the
//! host's namespace, which routes to it over the veth pair.
//!
//! podman needs `--runtime runc` here (crun refuses the hybrid cgroup
//! layout of these machines) and rlimits at or below the hard limits.
//! Without podman, runc or a static busybox the tests fail, saying so.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use sbx_tests::{
    bpffs, cgroup2_mount, describe, probe, require_root, sbx_user_bin, Agent, Background, Place, Sbx, TempDir,
    TestCgroup, TestNet,
};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;

/// The static busybox the rootfs is made of (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// Applets linked in the rootfs.
const APPLETS: &[&str] = &["sh", "nc", "echo", "sleep", "cat", "true"];
/// Port of the test host's TCP server.
const PORT: u16 = 8080;

fn need(tool: &str, package: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("running sh");
    assert!(
        out.status.success(),
        "`{tool}` is not installed: these tests drive a real container runtime; install it with \
         `apt-get install {package}` (`cargo xtask test --test-deps` does)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A busybox root filesystem in a temp dir.
fn rootfs() -> TempDir {
    let dir = TempDir::new("rootfs");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).expect("creating rootfs/bin");
    assert!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: `apt-get install busybox-static`");
    let file = Command::new("ldd").arg(BUSYBOX).output().expect("running ldd");
    assert!(
        !file.status.success() || String::from_utf8_lossy(&file.stdout).contains("not a dynamic"),
        "{BUSYBOX} is dynamically linked; the rootfs needs a static one (`apt-get install busybox-static`)"
    );
    fs::copy(BUSYBOX, bin.join("busybox")).expect("copying busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).expect("linking an applet");
    }
    for d in ["proc", "sys", "dev", "etc", "tmp", "run"] {
        fs::create_dir_all(dir.path().join(d)).expect("creating a rootfs directory");
    }
    dir
}

/// A podman set up for one test: a rootfs, a hooks dir holding the
/// repository's `hooks.d` files named in `hooks` (with the binary under
/// test and this test's state directory and configuration), and the
/// host configuration `config` of the hook.
struct Podman {
    bin: PathBuf,
    rootfs: TempDir,
    hooks: TempDir,
    etc: TempDir,
    names: std::cell::RefCell<Vec<String>>,
}

impl Podman {
    fn new(sbx: &Sbx, hooks: &[&str], config: &str) -> Self {
        require_root();
        let bin = need("podman", "podman");
        need("runc", "runc");
        let me = Self {
            bin,
            rootfs: rootfs(),
            hooks: TempDir::new("hooks"),
            etc: TempDir::new("etc"),
            names: std::cell::RefCell::new(Vec::new()),
        };
        let config_path = me.etc.path().join("oci-hook.toml");
        let policy_dir = me.etc.path().join("policies");
        fs::create_dir_all(&policy_dir).expect("creating the policy dir");
        fs::write(&config_path, format!("policy_dir = {:?}\n{config}", policy_dir.display().to_string()))
            .expect("writing the config");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks.d");
        for name in hooks {
            let src = repo.join(name);
            let text = fs::read_to_string(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
            let mut v: serde_json::Value = serde_json::from_str(&text).expect("hooks.d files are JSON");
            v["hook"]["path"] = sbx_user_bin().display().to_string().into();
            v["hook"]["env"] = serde_json::json!([
                format!("SBX_STATE_DIR={}", sbx.state_dir().display()),
                format!("SBX_BPFFS={}", bpffs().display()),
                format!("SBX_OCI_HOOK_CONFIG={}", config_path.display()),
            ]);
            fs::write(me.hooks.path().join(name), v.to_string()).expect("writing a hooks.d file");
        }
        me
    }

    fn policy_dir(&self) -> PathBuf {
        self.etc.path().join("policies")
    }

    fn name(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = format!("sbx-oci-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        self.names.borrow_mut().push(n.clone());
        n
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--runtime", "runc", "--hooks-dir"]).arg(self.hooks.path());
        c
    }

    /// `podman run` with `opts` before the rootfs and `argv` after it.
    fn run_args(&self, detach: bool, opts: &[&str], argv: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--name", &self.name(), "--network", "host"]);
        c.args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        c.arg(if detach { "-d" } else { "--rm" });
        c.args(opts).arg("--rootfs").arg(self.rootfs.path()).args(argv);
        c
    }

    /// Runs a container to its end and returns its output.
    fn run(&self, opts: &[&str], argv: &[&str]) -> Output {
        let mut c = self.run_args(false, opts, argv);
        c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
    }

    /// Starts a detached container and returns its id.
    fn start(&self, opts: &[&str], argv: &[&str]) -> String {
        let mut c = self.run_args(true, opts, argv);
        let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
        assert!(out.status.success(), "podman run -d: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn logs(&self, id: &str) -> String {
        let out = self.cmd().args(["logs", id]).output().expect("podman logs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn remove(&self, id: &str) {
        let out = self.cmd().args(["rm", "-f", "-t", "0", id]).output().expect("podman rm");
        assert!(out.status.success(), "podman rm {id}: {}", describe(&out));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in self.names.borrow().iter() {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", "--ignore", n]).output();
        }
    }
}

/// A test host listening on [`PORT`].
fn test_host() -> TestNet {
    let net = TestNet::new(&probe!());
    net.serve_tcp(PORT);
    net
}

/// The container command: its first act is the connect.
fn connect_argv(net: &TestNet) -> Vec<String> {
    vec!["/bin/nc".into(), "-w".into(), "3".into(), net.ns_v4.to_string(), PORT.to_string()]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_refused_connect(out: &Output) {
    assert!(
        !out.status.success() && text(out).contains("Operation not permitted"),
        "the container's connect should fail with EPERM: {}",
        describe(out)
    );
}

fn assert_connected(out: &Output) {
    assert!(out.status.success(), "the container should reach the test host: {}", describe(out));
}

/// The container never ran: the hook refused it, naming it, for `reason`.
fn assert_not_started(out: &Output, reason: &str) {
    let t = text(out);
    assert!(!out.status.success(), "the container should not start: {}", describe(out));
    assert!(!t.contains("RAN"), "the container's command ran: {t}");
    assert!(t.contains("sbx-user: error: container "), "the error should name the container: {t}");
    assert!(t.contains(reason), "the error should say {reason:?}: {t}");
}

/// Waits up to `secs` seconds for `done`, failing with `what()` if it
/// never is.
fn eventually(secs: u64, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until container `id` has printed `marker`.
fn wait_log(pm: &Podman, id: &str, marker: &str) {
    eventually(
        30,
        || pm.logs(id).contains(marker),
        || format!("container {id} never printed {marker}: {}", pm.logs(id)),
    );
}

/// The sandbox records (not the `members/` or `agent/` directories).
fn json_records(sbx: &Sbx) -> Vec<PathBuf> {
    sbx.records().into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")).collect()
}

#[test]
fn annotated_container_is_refused_from_its_first_connect_and_unannotated_connects() {
    let sbx = Sbx::new();
    let net = test_host();
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], "");
    let argv = connect_argv(&net);
    assert_refused_connect(&pm.run(&["--annotation", "sbx.io/profile=offline"], &strs(&argv)));
    assert_connected(&pm.run(&[], &strs(&argv)));
    // A policy the administrator placed in the policy directory, named by
    // the annotation: it denies the test host only.
    fs::write(
        pm.policy_dir().join("no-testnet.toml"),
        format!("[network]\ndefault = \"allow\"\ndeny = [\"{}/32\"]\n", net.ns_v4),
    )
    .expect("writing a policy");
    assert_refused_connect(&pm.run(&["--annotation", "sbx.io/policy=no-testnet"], &strs(&argv)));
    assert!(sbx.records().is_empty(), "records left behind: {:?}", sbx.records());
}

#[test]
fn bad_policy_names_keep_the_container_from_running() {
    let sbx = Sbx::new();
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], "");
    let echo = ["/bin/echo", "RAN"];
    for (ann, reason) in [
        ("sbx.io/policy=../../etc/passwd", "not a plain name"),
        ("sbx.io/policy=/etc/passwd", "not a plain name"),
        ("sbx.io/policy=missing", "no such policy"),
        ("sbx.io/profile=no-such-profile", "no-such-profile"),
    ] {
        assert_not_started(&pm.run(&["--annotation", ann], &echo), reason);
    }
    // A policy that restricts UNIX sockets, which only `run` enforces.
    fs::write(pm.policy_dir().join("unix.toml"), "[network]\ndefault = \"deny\"\nunix = \"none\"\n")
        .expect("writing a policy");
    assert_not_started(&pm.run(&["--annotation", "sbx.io/policy=unix"], &echo), "only `sbx-user run` enforces");
    // Two names at once, and the one the opt-in is about.
    assert_not_started(
        &pm.run(&["--annotation", "sbx.io/profile=offline", "--annotation", "sbx.io/policy=x"], &echo),
        "set one",
    );
    let ok = pm.run(&["--annotation", "sbx.io/profile=offline"], &echo);
    assert!(ok.status.success() && text(&ok).contains("RAN"), "a good name runs: {}", describe(&ok));
    assert!(sbx.records().is_empty(), "records left behind: {:?}", sbx.records());
}

#[test]
fn capabilities_that_get_around_sbx_are_refused_unless_the_host_allows_them() {
    let sbx = Sbx::new();
    let pm = Podman::new(
        &sbx,
        &["sbx-annotated.json"],
        "[[allow_capabilities]]\nprofile = \"open\"\ncapabilities = [\"NET_RAW\"]\n",
    );
    let echo = ["/bin/echo", "RAN"];
    assert_not_started(&pm.run(&["--cap-add", "NET_RAW", "--annotation", "sbx.io/profile=offline"], &echo), "NET_RAW");
    assert_not_started(&pm.run(&["--cap-add", "SYS_ADMIN", "--annotation", "sbx.io/profile=open"], &echo), "SYS_ADMIN");
    assert_not_started(&pm.run(&["--privileged", "--annotation", "sbx.io/profile=offline"], &echo), "NET_ADMIN");
    let ok = pm.run(&["--cap-add", "NET_RAW", "--annotation", "sbx.io/profile=open"], &echo);
    assert!(ok.status.success() && text(&ok).contains("RAN"), "allowed for `open`: {}", describe(&ok));
}

#[test]
fn the_host_default_holds_an_unannotated_container() {
    let sbx = Sbx::new();
    let net = test_host();
    let pm = Podman::new(&sbx, &["sbx-default.json"], "[default]\nprofile = \"offline\"\n");
    let argv = connect_argv(&net);
    assert_refused_connect(&pm.run(&[], &strs(&argv)));
    // It may neither opt out nor pick a looser profile: the host forbids it.
    assert_not_started(&pm.run(&["--annotation", "sbx.io/opt-out=true"], &["/bin/echo", "RAN"]), "forbids opting out");
    assert_not_started(&pm.run(&["--annotation", "sbx.io/profile=open"], &["/bin/echo", "RAN"]), "forbids choosing");
    assert!(sbx.records().is_empty(), "records left behind: {:?}", sbx.records());

    // The default hook file with no [default] configured holds every
    // container by refusing it, rather than letting it run unheld.
    let sbx2 = Sbx::new();
    let none = Podman::new(&sbx2, &["sbx-default.json"], "");
    assert_not_started(&none.run(&[], &["/bin/echo", "RAN"]), "sets no [default]");
}

#[test]
fn events_and_status_name_the_container_and_nothing_is_left_behind() {
    let sbx = Sbx::new();
    let net = test_host();
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], "");
    // Two connects: the second once the test creates /tmp/again in the
    // rootfs (a host directory), so that the JSON and the text form of
    // `events` each have an event to read (a stream has one position).
    let script = format!(
        "nc -w 3 {ip} {PORT} </dev/null; echo connect-done; while [ ! -e /tmp/again ]; do sleep 1; done; \
         nc -w 3 {ip} {PORT} </dev/null; echo second-done; exec sleep 60",
        ip = net.ns_v4
    );
    let k8s = [
        "--annotation",
        "io.kubernetes.pod.namespace=ci",
        "--annotation",
        "io.kubernetes.pod.name=job-7",
        "--annotation",
        "io.kubernetes.container.name=agent",
    ];
    let id = pm.start(&[&["--annotation", "sbx.io/profile=offline"][..], &k8s].concat(), &["/bin/sh", "-c", &script]);
    wait_log(&pm, &id, "connect-done");
    assert!(pm.logs(&id).contains("Operation not permitted"), "refused: {}", pm.logs(&id));

    let records = sbx.records();
    assert_eq!(records.len(), 1, "one record for the container: {records:?}");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&records[0]).expect("reading the record")).expect("record JSON");
    assert_eq!(record["container"]["id"], id.as_str(), "{record}");
    assert_eq!(record["by"], "oci-hook");
    let cgroup_id = record["cgroup_id"].as_u64().expect("a cgroup id");
    let cgroup = PathBuf::from(record["cgroup"].as_str().expect("a cgroup path"));
    assert!(cgroup.starts_with(cgroup2_mount()), "{} is under the cgroup2 mount", cgroup.display());
    assert!(cgroup.to_string_lossy().contains(&id), "podman's cgroup names the container: {}", cgroup.display());

    let events = sbx.ok(&["events", "--json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    let line = events
        .lines()
        .find(|l| l.contains(&net.ns_v4.to_string()))
        .unwrap_or_else(|| panic!("no deny event for the test host: {events}"));
    let named = format!("container {id} (pod ci/job-7 container agent)");
    assert!(line.contains(&named), "the event names the container and its pod: {line}");
    fs::write(pm.rootfs.path().join("tmp/again"), "").expect("signalling the container");
    wait_log(&pm, &id, "second-done");
    let text_events = sbx.ok(&["events"]);
    let text_events = String::from_utf8_lossy(&text_events.stdout);
    assert!(
        text_events.lines().any(|l| l.contains(&net.ns_v4.to_string()) && l.contains(&named)),
        "the text form names the container too: {text_events}"
    );
    let status = sbx.ok(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&named),
        "status names the container: {}",
        describe(&status)
    );

    pm.remove(&id);
    eventually(
        10,
        || sbx.records().is_empty() && !Sbx::has_pins(cgroup_id),
        || format!("left behind: records {:?}, pins {}", sbx.records(), Sbx::has_pins(cgroup_id)),
    );
    assert!(!cgroup.exists(), "the container's cgroup {} is still there", cgroup.display());
    // poststop is idempotent: running it again finds nothing to remove.
    let again = sbx
        .cmd()
        .args(["oci-hook", "poststop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            let state = format!(r#"{{"ociVersion":"1.0.2","id":"{id}","status":"stopped","bundle":"/nonexistent"}}"#);
            c.stdin.take().expect("piped").write_all(state.as_bytes())?;
            c.wait_with_output()
        })
        .expect("running oci-hook poststop");
    assert!(
        again.status.success() && text(&again).contains("nothing to remove"),
        "second poststop: {}",
        describe(&again)
    );
}

/// Runs `sbx-user oci-hook` by hand with `state` on stdin and the host
/// configuration `config`.
fn hook_by_hand(sbx: &Sbx, etc: &TempDir, config: &str, state: &str) -> Output {
    use std::io::Write as _;
    let path = etc.path().join("oci-hook.toml");
    fs::write(&path, config).expect("writing the config");
    let mut child = sbx
        .cmd()
        .arg("oci-hook")
        .env("SBX_OCI_HOOK_CONFIG", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running oci-hook");
    child.stdin.take().expect("piped").write_all(state.as_bytes()).expect("writing the state");
    child.wait_with_output().expect("waiting for oci-hook")
}

#[test]
fn a_process_not_alone_in_its_cgroup_is_refused() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    let etc = TempDir::new("etc");
    let place = Place { cgroup: Some(cg.path().to_owned()), netns: None };
    let first = Background::spawn_at("sleep", Command::new("sleep").arg("60"), &place);
    let _second = Background::spawn_at("sleep", Command::new("sleep").arg("60"), &place);
    fs::write(etc.path().join("config.json"), r#"{"ociVersion":"1.0.2","annotations":{"sbx.io/profile":"offline"}}"#)
        .expect("writing config.json");
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"lonely","status":"creating","pid":{},"bundle":"{}"}}"#,
        first.pid(),
        etc.path().display()
    );
    let out = hook_by_hand(&sbx, &etc, "", &state);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let t = text(&out);
    assert!(t.contains("container lonely") && t.contains("is not alone"), "{t}");
    assert!(!Sbx::has_pins(cg.id()) && sbx.records().is_empty(), "nothing may be attached");
    assert!(cg.prog_counts().values().all(|&n| n == 0), "no program on the cgroup: {:?}", cg.prog_counts());
}

#[test]
fn the_hook_fails_within_its_timeout() {
    let sbx = Sbx::new();
    let etc = TempDir::new("etc");
    let path = etc.path().join("oci-hook.toml");
    fs::write(&path, "timeout_secs = 1\n").expect("writing the config");
    // A runtime that never closes the hook's stdin.
    let mut child = sbx
        .cmd()
        .arg("oci-hook")
        .env("SBX_OCI_HOOK_CONFIG", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running oci-hook");
    let stdin = child.stdin.take();
    let start = Instant::now();
    let out = child.wait_with_output().expect("waiting for oci-hook");
    let took = start.elapsed();
    drop(stdin);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(text(&out).contains("did not finish within 1 s"), "{}", describe(&out));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_container_that_fails_after_the_hook_is_collected_at_the_next_start() {
    let sbx = Sbx::new();
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], "");
    let ann = ["--annotation", "sbx.io/profile=offline"];
    // The hook attaches, then runc cannot execute the command: podman
    // runs no poststop hook for a container that never started.
    let failed = pm.run(&ann, &["/bin/no-such-command"]);
    assert!(!failed.status.success(), "{}", describe(&failed));
    let left: Vec<u64> = sbx.records().iter().filter_map(|p| p.file_stem()?.to_str()?.parse().ok()).collect();
    assert_eq!(
        left.len(),
        1,
        "the failed container should have left its record (podman ran no poststop); if podman now runs one, \
         this test no longer covers the collection"
    );
    let ok = pm.run(&ann, &["/bin/echo", "RAN"]);
    assert!(ok.status.success() && text(&ok).contains("RAN"), "{}", describe(&ok));
    assert!(sbx.records().is_empty(), "records left behind: {:?}", sbx.records());
    for id in left {
        assert!(!Sbx::has_pins(id), "pins of the failed container's cgroup {id} are left");
    }
}

/// A podman pod whose infra container is made from an image that carries
/// `annotation` (podman 4.3 passes an image's annotations into the infra
/// container's spec; `pod create` has no `--annotation`), so that the
/// hook sees the pod's sandbox ask for a policy, as a Kubernetes sandbox
/// does with the pod's annotations.
struct Pod<'a> {
    pm: &'a Podman,
    name: String,
    image: String,
    conf: PathBuf,
}

impl<'a> Pod<'a> {
    fn create(pm: &'a Podman, annotation: &str) -> Self {
        let name = pm.name();
        let image = format!("localhost/{name}-infra:t");
        // The infra container takes its rlimits from containers.conf
        // (`pod create` has no --ulimit): the system file with the limits
        // these machines allow.
        let system = fs::read_to_string("/usr/share/containers/containers.conf").unwrap_or_default();
        let limits = "default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n";
        let conf_text = if system.contains("\n[containers]\n") {
            system.replacen("\n[containers]\n", &format!("\n[containers]\n{limits}"), 1)
        } else {
            format!("[containers]\n{limits}{system}")
        };
        let conf = pm.etc.path().join("containers.conf");
        fs::write(&conf, conf_text).expect("writing containers.conf");
        let ctx = pm.etc.path().join("infra");
        fs::create_dir_all(&ctx).expect("creating the build context");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(pm.rootfs.path())
            .arg("-cf")
            .arg(ctx.join("rootfs.tar"))
            .arg(".")
            .output()
            .expect("running tar");
        assert!(tar.status.success(), "tar of the rootfs: {}", describe(&tar));
        fs::write(ctx.join("Containerfile"), "FROM scratch\nADD rootfs.tar /\nENTRYPOINT [\"/bin/sleep\", \"600\"]\n")
            .expect("writing the Containerfile");
        let pod = Self { pm, name, image, conf };
        let build = pod.cmd().args(["build", "-q", "--annotation", annotation, "-t", &pod.image]).arg(&ctx).output();
        let build = build.expect("podman build");
        assert!(build.status.success(), "podman build of the infra image: {}", describe(&build));
        let out = pod
            .cmd()
            .args(["pod", "create", "--name", &pod.name, "--network", "host", "--infra-image", &pod.image])
            .output()
            .expect("podman pod create");
        assert!(out.status.success(), "podman pod create: {}", describe(&out));
        pod
    }

    fn cmd(&self) -> Command {
        let mut c = self.pm.cmd();
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// `podman run` of a container joining the pod.
    fn run(&self, detach: bool, opts: &[&str], argv: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(["run", "--pod", &self.name, "--name", &self.pm.name()]);
        c.arg(if detach { "-d" } else { "--rm" });
        c.args(opts).arg("--rootfs").arg(self.pm.rootfs.path()).args(argv);
        c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
    }

    /// The pod's infra container id and its cgroup's parent, the pod's cgroup.
    fn infra(&self) -> (String, PathBuf) {
        let out = self.cmd().args(["pod", "inspect", "--format", "{{.InfraContainerID}}", &self.name]).output();
        let id = String::from_utf8_lossy(&out.expect("podman pod inspect").stdout).trim().to_owned();
        let out = self.cmd().args(["inspect", "--format", "{{.State.Pid}}", &id]).output().expect("podman inspect");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the infra container's cgroup");
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line");
        let dir = cgroup2_mount().join(path.trim_start_matches('/'));
        (id, dir.parent().expect("a parent").to_owned())
    }

    fn remove(&self) {
        let out = self.cmd().args(["pod", "rm", "-f", "-t", "0", "--ignore", &self.name]).output();
        assert!(out.as_ref().is_ok_and(|o| o.status.success()), "podman pod rm: {out:?}");
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        // The pod's cgroup, to tidy what podman leaves of it (a test that
        // failed before its own `remove`).
        let out = self.cmd().args(["pod", "inspect", "--format", "{{.CgroupPath}}", &self.name]).output();
        let cgroup = out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).filter(|p| !p.is_empty());
        let _ = self.cmd().args(["pod", "rm", "-f", "-t", "0", "--ignore", &self.name]).output();
        let _ = self.cmd().args(["rmi", "-f", &self.image]).output();
        if let Some(p) = cgroup {
            remove_empty_cgroups(&cgroup2_mount().join(p.trim_start_matches('/')));
        }
    }
}

#[test]
fn a_pod_is_held_at_its_cgroup_from_its_sandbox_and_events_name_each_container() {
    let sbx = Sbx::new();
    let net = test_host();
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], "");
    let pod = Pod::create(&pm, "sbx.io/profile=offline");
    let argv = connect_argv(&net);
    // A container that names no policy joins the pod: the pod's policy
    // holds it from its first instruction, with no attach of its own.
    assert_refused_connect(&pod.run(false, &[], &strs(&argv)));
    let (infra, pod_cgroup) = pod.infra();
    let records = json_records(&sbx);
    assert_eq!(records.len(), 1, "{records:?}");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&records[0]).expect("reading the record")).expect("record JSON");
    assert_eq!(record["cgroup"], pod_cgroup.display().to_string(), "attached at the pod's cgroup: {record}");
    assert_eq!(record["container"]["id"], infra.as_str(), "{record}");
    assert_eq!(record["container"]["pod_policy"], "profile offline", "{record}");
    let pod_id = record["cgroup_id"].as_u64().expect("a cgroup id");
    assert!(sbx.members().is_empty(), "the container that ran is forgotten: {:?}", sbx.members());

    // One that stays, connecting again on a signal, so that its event is
    // read while it is known.
    let script = format!("nc -w 3 {ip} {PORT} </dev/null; echo connect-done; exec sleep 60", ip = net.ns_v4);
    let out = pod.run(true, &[], &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let member = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_log(&pm, &member, "connect-done");
    assert!(pm.logs(&member).contains("Operation not permitted"), "refused: {}", pm.logs(&member));
    assert_eq!(sbx.members().len(), 1, "the running container is recorded: {:?}", sbx.members());
    let events = sbx.ok(&["events", "--json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    let line = events
        .lines()
        .filter(|l| l.contains(&net.ns_v4.to_string()))
        .find(|l| l.contains(&member))
        .unwrap_or_else(|| panic!("no deny event naming container {member}: {events}"));
    let event: serde_json::Value = serde_json::from_str(line).expect("event JSON");
    assert_eq!(event["container"], format!("container {member}"), "{event}");
    assert!(event["sandbox"].as_str().is_some_and(|s| s.contains(&pod_cgroup.display().to_string())), "{event}");
    let status = String::from_utf8_lossy(&sbx.ok(&["status"]).stdout).into_owned();
    assert!(status.contains(&format!("pod sandbox {infra}")), "status names the pod's sandbox: {status}");
    assert!(status.contains(&format!("holds container {member}")), "and the pod's containers: {status}");

    // Its own, looser policy is a second layer: both must allow.
    assert_refused_connect(&pod.run(false, &["--annotation", "sbx.io/profile=open"], &strs(&argv)));
    // A capability that gets around sbx is refused in a held pod, even
    // with no policy of its own.
    assert_not_started(&pod.run(false, &["--cap-add", "NET_RAW"], &["/bin/echo", "RAN"]), "NET_RAW");

    pod.remove();
    eventually(
        10,
        || json_records(&sbx).is_empty() && sbx.members().is_empty() && !Sbx::has_pins(pod_id),
        || {
            format!(
                "left behind: records {:?}, members {:?}, pins {}",
                sbx.records(),
                sbx.members(),
                Sbx::has_pins(pod_id)
            )
        },
    );
    // podman 4.3 with the cgroupfs manager leaves the pod's (empty) cgroup
    // directories behind: not sbx's, but this test's to tidy.
    remove_empty_cgroups(&pod_cgroup);
    assert!(!pod_cgroup.exists(), "the pod's cgroup {} still holds something", pod_cgroup.display());

    // gc finds the record of a pod's container whose cgroup is gone (one a
    // lost poststop would leave).
    let members = sbx.state_dir().join("members");
    fs::create_dir_all(&members).expect("mkdir members");
    let gone = format!(
        r#"{{"cgroup":"{}/gone","cgroup_id":4242424242,"sandbox":{pod_id},"container":{{"id":"gone"}}}}"#,
        pod_cgroup.display()
    );
    fs::write(members.join("4242424242.json"), gone).expect("writing a member record");
    let gc: serde_json::Value =
        serde_json::from_slice(&sbx.ok(&["gc", "--dry-run", "--json"]).stdout).expect("gc JSON");
    assert_eq!(gc["members"], serde_json::json!([4_242_424_242_u64]), "{gc}");
}

/// Removes cgroup directory `dir` and the directories below it, deepest
/// first; a cgroup that still holds a process stays (rmdir refuses).
fn remove_empty_cgroups(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_cgroups(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The cgroup podman (cgroupfs manager) puts its containers under, made if
/// podman has not yet.
fn podman_cgroup_parent() -> PathBuf {
    let dir = cgroup2_mount().join("libpod_parent");
    fs::create_dir_all(&dir).expect("creating podman's cgroup parent");
    dir
}

#[test]
fn the_hook_attaches_through_a_running_agent_which_then_knows_the_container() {
    let sbx = Sbx::new();
    let net = test_host();
    let agent = Agent::start(&sbx, &[&podman_cgroup_parent()], "", &[]);
    let config = format!("agent = \"required\"\nagent_socket = {:?}\n", agent.socket_arg());
    let pm = Podman::new(&sbx, &["sbx-annotated.json"], &config);
    let script = format!("nc -w 3 {ip} {PORT} </dev/null; echo connect-done; exec sleep 60", ip = net.ns_v4);
    let id = pm.start(&["--annotation", "sbx.io/profile=offline"], &["/bin/sh", "-c", &script]);
    wait_log(&pm, &id, "connect-done");
    assert!(pm.logs(&id).contains("Operation not permitted"), "refused: {}", pm.logs(&id));
    // The agent lists it, and the record names the container.
    let list = agent.call(&serde_json::json!({"v": 1, "op": "list"}));
    let sandboxes = list["sandboxes"].as_array().cloned().unwrap_or_default();
    let mine: Vec<_> = sandboxes.iter().filter(|s| s["cgroup"].as_str().is_some_and(|c| c.contains(&id))).collect();
    assert_eq!(mine.len(), 1, "the agent knows the container's sandbox: {list}");
    assert_eq!(mine[0]["by"], "oci-hook", "{list}");
    let status = sbx.ok(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("container {id}")),
        "status names the container: {}",
        describe(&status)
    );
    // The agent made the attachment (a record alone would not say: the
    // hook and the agent share the state directory).
    assert!(agent.log_text().contains(": attach: ok"), "the agent attached: {}", agent.log_text());

    // runc removes a container's cgroup before poststop: the agent can no
    // longer name it, and the hook removes the pins and record itself
    // (the agent reads them on demand).
    pm.remove(&id);
    let listed = || agent.call(&serde_json::json!({"v": 1, "op": "list"}));
    eventually(
        10,
        || listed()["sandboxes"].as_array().is_some_and(Vec::is_empty) && json_records(&sbx).is_empty(),
        || format!("left behind: {}, records {:?}", listed(), sbx.records()),
    );

    // A pod through the agent: its cgroup outlives the sandbox, so the
    // sandbox's poststop asks the agent to detach it.
    let pod = Pod::create(&pm, "sbx.io/profile=offline");
    assert_refused_connect(&pod.run(false, &[], &strs(&connect_argv(&net))));
    assert_eq!(agent.log_text().matches(": attach: ok").count(), 2, "{}", agent.log_text());
    let (_, pod_cgroup) = pod.infra();
    pod.remove();
    assert!(agent.log_text().contains(": detach: ok"), "the agent detached the pod: {}", agent.log_text());
    assert!(json_records(&sbx).is_empty(), "{:?}", sbx.records());
    remove_empty_cgroups(&pod_cgroup);
}

#[test]
fn without_the_agent_it_needs_the_hook_fails_closed_naming_the_container() {
    let sbx = Sbx::new();
    let net = test_host();
    let argv = connect_argv(&net);
    let dir = TempDir::new("no-agent");
    let missing = dir.path().join("agent.sock").display().to_string();
    let echo = ["/bin/echo", "RAN"];
    let ann = ["--annotation", "sbx.io/profile=offline"];

    // Required and down: the container does not start.
    let required =
        Podman::new(&sbx, &["sbx-annotated.json"], &format!("agent = \"required\"\nagent_socket = {missing:?}\n"));
    assert_not_started(&required.run(&ann, &echo), "agent = \"required\"");
    // auto (the default) with nothing listening: the hook works alone.
    let auto = Podman::new(&sbx, &["sbx-annotated.json"], &format!("agent_socket = {missing:?}\n"));
    assert_refused_connect(&auto.run(&ann, &strs(&argv)));

    // An agent that does not manage the container's cgroup refuses it,
    // and the hook does not fall back to attaching alone.
    let elsewhere = TestCgroup::new();
    let agent = Agent::start(&sbx, &[elsewhere.path()], "", &[]);
    let unmanaged = Podman::new(&sbx, &["sbx-annotated.json"], &format!("agent_socket = {:?}\n", agent.socket_arg()));
    assert_not_started(&unmanaged.run(&ann, &echo), "add the runtime's cgroup parent");
    assert!(json_records(&sbx).is_empty(), "{:?}", sbx.records());
}
