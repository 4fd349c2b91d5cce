//! Installing like a real tool: the Debian package `cargo xtask dist`
//! builds (`$SBX_DEB`; `cargo xtask test` builds it from the debug binary)
//! is installed with dpkg on this machine, the installed `sbx-user` runs a
//! sandboxed command, and the package is purged leaving none of its files.
//! Without the package the test fails: it never skips. So does the
//! statically linked `sbx-user-static` (`$SBX_STATIC_BIN`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use sbx_tests::{describe, probe, require_root, Fixture, Proto::Tcp, Sbx, TestCgroup, TestGroup};
// Dependencies of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;
use serde_json as _;

const PACKAGE: &str = "sbx";
const INSTALLED: &str = "/usr/bin/sbx-user";

fn deb() -> PathBuf {
    let Some(deb) = std::env::var_os("SBX_DEB").map(PathBuf::from) else {
        panic!("SBX_DEB is not set: build the package with `cargo xtask dist` and point SBX_DEB at the .deb (`cargo xtask test` does both)")
    };
    assert!(deb.is_file(), "SBX_DEB={} does not exist; `cargo xtask dist` builds it", deb.display());
    deb
}

/// Runs dpkg, waiting while another dpkg or apt holds its lock (other
/// test suites on the machine install their tools with apt).
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let out = Command::new("dpkg").args(args).output().unwrap_or_else(|e| panic!("running dpkg {args:?}: {e}"));
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Whether dpkg has the package installed (or half-installed).
fn installed() -> bool {
    Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", PACKAGE]).output().is_ok_and(|o| {
        o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty() && o.stdout != b"not-installed"
    })
}

/// Purges the package on drop, so a failed assertion leaves no package.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let out = dpkg(&["--purge", PACKAGE]);
            if !out.status.success() {
                eprintln!("warning: dpkg --purge {PACKAGE} failed: {}", describe(&out));
            }
        }
    }
}

#[test]
fn the_debian_package_installs_runs_a_sandbox_and_purges_cleanly() {
    require_root();
    let deb = deb();
    assert!(
        !installed(),
        "package `{PACKAGE}` is already installed on this machine; this test will not replace it (dpkg --purge {PACKAGE} first)"
    );
    assert!(
        !Path::new(INSTALLED).exists(),
        "{INSTALLED} exists but no `{PACKAGE}` package owns it; not overwriting it"
    );

    let _purge = Purge;
    let out = dpkg(&["--install", deb.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "dpkg --install: {}", describe(&out));
    let listed = dpkg(&["--listfiles", PACKAGE]);
    let files: Vec<PathBuf> =
        String::from_utf8_lossy(&listed.stdout).lines().map(PathBuf::from).filter(|p| p.is_file()).collect();
    for want in [
        INSTALLED,
        "/usr/share/man/man1/sbx-user.1.gz",
        "/usr/share/man/man1/sbx-user-run.1.gz",
        "/usr/share/bash-completion/completions/sbx-user",
        "/usr/share/zsh/vendor-completions/_sbx-user",
        "/usr/share/fish/vendor_completions.d/sbx-user.fish",
        "/usr/share/doc/sbx/copyright",
        "/usr/share/man/man1/sbx-user-agent.1.gz",
        "/usr/lib/systemd/system/sbx-agent.service",
        "/usr/share/doc/sbx/agent.toml.example",
    ] {
        assert!(files.iter().any(|f| f == Path::new(want)), "the package does not install {want}: {files:?}");
    }
    // The manual page is gzipped roff, the bash completion registers itself.
    let page = Command::new("gzip").args(["-dc", "/usr/share/man/man1/sbx-user-run.1.gz"]).output().expect("gzip");
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH sbx-user-run 1"), "{}", describe(&page));
    let complete = Command::new("bash")
        .args(["-c", "source /usr/share/bash-completion/completions/sbx-user && complete -p sbx-user"])
        .output()
        .expect("bash");
    assert!(
        complete.status.success() && String::from_utf8_lossy(&complete.stdout).contains("sbx-user"),
        "the bash completion does not load: {}",
        describe(&complete)
    );
    // The agent's unit is valid as systemd reads it (its ExecStart exists
    // now), and the example configuration passes the agent's own check.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "/usr/lib/systemd/system/sbx-agent.service"])
        .output()
        .expect("systemd-analyze");
    assert!(out.status.success() && out.stderr.is_empty(), "systemd-analyze verify: {}", describe(&out));
    let roots = TestCgroup::new();
    let out = Command::new(INSTALLED)
        .args(["agent", "--check", "--config", "/usr/share/doc/sbx/agent.toml.example", "--cgroup-root", roots.arg()])
        .output()
        .expect("sbx-user agent --check");
    assert!(out.status.success(), "agent --check of the example configuration: {}", describe(&out));
    // dpkg checks what it installed against the package's md5sums.
    let out = dpkg(&["--verify", PACKAGE]);
    assert!(out.status.success() && out.stdout.is_empty(), "dpkg --verify: {}", describe(&out));

    // The installed binary, not the one in target/, runs a sandbox.
    let sbx = Sbx::new();
    let parent = TestCgroup::new();
    let run = |command: &[&str]| {
        let mut cmd = Command::new(INSTALLED);
        cmd.env("SBX_STATE_DIR", sbx.state_dir())
            .args(["run", "--cgroup-parent", parent.arg(), "--profile", "offline", "--"])
            .args(command);
        cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    };
    let out = run(&["true"]);
    assert_eq!(out.status.code(), Some(0), "installed sbx-user run --profile offline -- true: {}", describe(&out));
    let out = run(&["false"]);
    assert_eq!(out.status.code(), Some(1), "the command's status passes through: {}", describe(&out));
    assert!(parent.children().is_empty(), "run left its cgroup behind: {:?}", parent.children());
    let version = Command::new(INSTALLED).arg("--version").output().expect("sbx-user --version");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sbx-user "), "{}", describe(&version));

    let out = dpkg(&["--purge", PACKAGE]);
    assert!(out.status.success(), "dpkg --purge: {}", describe(&out));
    assert!(!installed(), "`{PACKAGE}` is still known to dpkg after --purge");
    let left: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "files left after purge: {left:?}");
    assert!(!Path::new("/usr/share/doc/sbx").exists(), "/usr/share/doc/sbx left after purge");
}

/// The statically linked binary (`$SBX_STATIC_BIN`, `sbx-user-static` of
/// `cargo xtask dist`) that the Kubernetes `DaemonSet` copies onto nodes.
fn static_bin() -> PathBuf {
    let Some(bin) = std::env::var_os("SBX_STATIC_BIN").map(PathBuf::from) else {
        panic!("SBX_STATIC_BIN is not set: `cargo xtask dist` builds sbx-user-static (`cargo xtask test` builds and passes it)")
    };
    assert!(bin.is_file(), "SBX_STATIC_BIN={} does not exist", bin.display());
    bin
}

#[test]
fn the_static_binary_needs_no_shared_library_and_attaches() {
    let bin = static_bin();
    let file = Command::new("file").arg(&bin).output().expect("running file (apt-get install file)");
    let what = String::from_utf8_lossy(&file.stdout);
    assert!(what.contains("statically linked") || what.contains("static-pie linked"), "file says: {what}");
    let ldd = Command::new("ldd").arg(&bin).output().expect("running ldd");
    let says = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    assert!(says.contains("statically linked") || says.contains("not a dynamic executable"), "ldd says: {says}");

    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.env("SBX_STATE_DIR", fx.sbx.state_dir()).args(args);
        cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    };
    let out = run(&["check", "--profile", "offline"]);
    assert!(out.status.success(), "sbx-user-static check: {}", describe(&out));
    let out = run(&["attach", "--cgroup", fx.cg.arg(), "--allow", &format!("{}:8080", n.ns_v4)]);
    assert!(out.status.success(), "sbx-user-static attach: {}", describe(&out));
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM");
    // What the dynamically linked build reads, the static one reads too.
    let status = fx.sbx.status(&fx.cg);
    assert_eq!(status["cgroup"], fx.cg.arg(), "{status:#}");
    assert_eq!(status["by"], "attach", "{status:#}");
    let out = run(&["detach", "--cgroup", fx.cg.arg()]);
    assert!(out.status.success(), "sbx-user-static detach: {}", describe(&out));
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err ECONNREFUSED");

    // Group names resolve from /etc/group (glibc's built-in `files`
    // source; a static binary cannot load other NSS modules).
    let group = TestGroup::new();
    let roots = TestCgroup::new();
    let out = run(&["agent", "--check", "--cgroup-root", roots.arg(), "--group", &group.name]);
    assert!(out.status.success(), "agent --check --group {}: {}", group.name, describe(&out));
    let out = run(&["agent", "--check", "--cgroup-root", roots.arg(), "--group", "sbx-no-such-group"]);
    assert!(!out.status.success(), "an unknown group is refused: {}", describe(&out));
}

/// `/etc/nsswitch.conf` and `/var/lib/extrausers/`, as they were before a
/// test changed them, put back on drop.
struct NssFiles(Vec<(PathBuf, Option<Vec<u8>>)>);

impl NssFiles {
    fn save(paths: &[&str]) -> Self {
        Self(paths.iter().map(|p| (PathBuf::from(p), std::fs::read(p).ok())).collect())
    }
}

impl Drop for NssFiles {
    fn drop(&mut self) {
        for (path, was) in &self.0 {
            match was {
                Some(bytes) => drop(std::fs::write(path, bytes)),
                None => drop(std::fs::remove_file(path)),
            }
        }
    }
}

/// The statically linked binary never has glibc load an NSS module (one
/// built for another glibc could crash it): a user only an NSS module
/// knows (libnss-extrausers here, as LDAP or sssd would) is found through
/// the host's `getent`, and `run --user` gives the command its name, as
/// the dynamically linked build does through glibc. Group names likewise.
#[test]
fn the_static_binary_finds_users_and_groups_only_an_nss_module_knows() {
    let bin = static_bin();
    let uid = 64_000 + std::process::id() % 1000;
    let name = format!("sbxnss{}", std::process::id());
    let _restore = NssFiles::save(&["/etc/nsswitch.conf", "/var/lib/extrausers/passwd", "/var/lib/extrausers/group"]);
    std::fs::create_dir_all("/var/lib/extrausers").expect("mkdir /var/lib/extrausers");
    std::fs::write("/var/lib/extrausers/passwd", format!("{name}:x:{uid}:{uid}::/nonexistent:/bin/sh\n"))
        .expect("extrausers passwd");
    std::fs::write("/var/lib/extrausers/group", format!("{name}:x:{uid}:\n")).expect("extrausers group");
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").expect("nsswitch.conf");
    let with_module: String = nsswitch
        .lines()
        .map(|l| {
            if l.starts_with("passwd:") || l.starts_with("group:") {
                format!("{l} extrausers\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write("/etc/nsswitch.conf", with_module).expect("nsswitch.conf");
    let getent = Command::new("getent").args(["passwd", &name]).output().expect("getent");
    assert!(
        getent.status.success(),
        "the extrausers module does not answer (libnss-extrausers; `cargo xtask test` installs it): {}",
        describe(&getent)
    );
    assert!(!std::fs::read_to_string("/etc/passwd").expect("/etc/passwd").contains(&name));
    let sbx = Sbx::new();
    let user = format!("{uid}:{uid}");
    let linked_statically = |b: &Path| {
        let file = Command::new("file").arg(b).output().expect("running file");
        !String::from_utf8_lossy(&file.stdout).contains("dynamically linked")
    };
    let Some(dynamic) = std::env::var_os("SBX_DYNAMIC_BIN").map(PathBuf::from) else {
        panic!("SBX_DYNAMIC_BIN is not set: the dynamically linked sbx-user (`cargo xtask test` passes it)")
    };
    for b in [bin.clone(), dynamic] {
        let out = Command::new("strace")
            // sbx-user's main thread only: getent, its child, loads modules.
            .args(["-qq", "-e", "trace=openat", "-o", "/dev/stderr", "--"])
            .arg(&b)
            .args(["run", "--dns", "host", "--user", &user, "--", "/bin/sh", "-c", "echo $USER"])
            .env("SBX_STATE_DIR", sbx.state_dir())
            .current_dir("/var/tmp")
            .output()
            .expect("strace sbx-user run");
        assert!(out.status.success(), "{}: {}", b.display(), describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name, "{}: {}", b.display(), describe(&out));
        let opened_modules = String::from_utf8_lossy(&out.stderr).lines().any(|l| l.contains("libnss_"));
        assert_eq!(
            opened_modules,
            !linked_statically(&b),
            "{}: only a dynamically linked build loads NSS modules: {}",
            b.display(),
            describe(&out)
        );
    }
    let roots = TestCgroup::new();
    let out = Command::new(&bin)
        .args(["agent", "--check", "--cgroup-root", roots.arg(), "--group", &name])
        .env("SBX_STATE_DIR", sbx.state_dir())
        .output()
        .expect("sbx-user-static agent --check");
    assert!(out.status.success(), "agent --check --group {name}: {}", describe(&out));
}
