//! Developer tasks for sbx: `cargo xtask <task>`.
//!
//! - `setup`: install what building the eBPF programs needs, pinned in
//!   `sbx-ebpf/toolchain.rs` (the nightly, its rust-src, and bpf-linker built
//!   against the nightly's own libLLVM), say which, and fail when they are
//!   not the pinned ones; with `--test-deps` also the tools the tests drive.
//!   Idempotent.
//! - `build-ebpf`: build the eBPF object on its own, for bpftool or shipping.
//! - `sbx -- ARGS`: build sbx-user (release) and run it with ARGS.
//! - `test`: unit tests, then the privileged tests against the real kernel
//!   (including installing the Debian package of the debug build).
//! - `dist`: the Debian package and tarball (binary, manual pages,
//!   completions) in `target/dist`.
//! - `bench`: the benchmark suite (see BENCHMARKS.md).

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod legacy;
mod toolchain;

#[derive(Parser)]
#[command(name = "xtask", about = "sbx developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check the pinned nightly (with rust-src) and bpf-linker;
    /// say which nightly, LLVM and bpf-linker the eBPF build uses.
    Setup {
        /// Also install the programs the tests use (curl, tinyproxy, nc,
        /// iproute2) with apt-get when they are missing.
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF object alone; prints its path.
    BuildEbpf,
    /// Build sbx-user in release mode and run it with the given arguments.
    Sbx {
        /// Arguments for sbx-user.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every test: unit tests, then privileged tests (needs root).
    Test {
        /// Extra arguments for the privileged test harness (e.g. a filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the benchmarks (needs root); writes a table and JSON.
    Bench(bench::BenchArgs),
    /// Build the Debian package and the tarball (binary, manual pages,
    /// completions) into target/dist.
    Dist(dist::DistArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup { test_deps } => {
            eprintln!("xtask: {}", setup()?);
            if test_deps {
                test_deps_install()?;
            }
            Ok(())
        }
        Task::BuildEbpf => build_ebpf(),
        Task::Sbx { args } => {
            setup()?;
            cargo(&["build", "--release", "-p", "sbx-user"])?;
            let bin = target_dir().join("release/sbx-user");
            let status =
                Command::new(&bin).args(args).status().with_context(|| format!("running {}", bin.display()))?;
            // As a shell reports it: 128+N when signal N killed sbx-user.
            std::process::exit(status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt as _;
                128 + status.signal().unwrap_or(0)
            }));
        }
        Task::Test { args } => test(&args),
        Task::Bench(args) => {
            setup()?;
            bench::run(&args)
        }
        Task::Dist(args) => {
            setup()?;
            let built = dist::run(&args)?;
            println!("{}", built.deb.display());
            if let Some(t) = built.tarball {
                println!("{}", t.display());
            }
            if let Some(s) = built.static_bin {
                println!("{}", s.display());
            }
            Ok(())
        }
    }
}

/// The workspace root.
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_owned()
}

fn check(status: ExitStatus, what: &str) -> Result<()> {
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Runs cargo in the workspace root.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(workspace())
        .status()
        .context("running cargo")?;
    check(status, &format!("cargo {}", args.join(" ")))
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn setup() -> Result<toolchain::Toolchain> {
    toolchain::setup()
}

/// Programs (or, with a `/`, files) the tests use, and their packages.
const TEST_TOOLS: [(&str, &str); 21] = [
    ("curl", "curl"),
    ("tinyproxy", "tinyproxy"),
    ("nc", "netcat-openbsd"),
    ("ip", "iproute2"),
    ("python3", "python3"),
    // Name resolution inside `run` (tests/tests/dns.rs).
    ("dig", "dnsutils"),
    ("node", "nodejs"),
    ("bpftool", "bpftool"),
    // The package the install test installs (`dist::package`).
    ("strip", "binutils"),
    ("dpkg-deb", "dpkg"),
    // A pseudo-terminal for the progress test.
    ("script", "bsdutils"),
    // DNAT in front of the egress backstop (the NAT test).
    ("nft", "nftables"),
    // A real container runtime for the OCI hook tests (tests/tests/oci.rs):
    // podman with runc (crun refuses this hybrid cgroup layout) and a static
    // busybox to build the containers' root filesystem from.
    ("podman", "podman"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    // The agent tests: clients of other uids, test users and groups, and
    // the install test's check of the systemd unit.
    ("setpriv", "util-linux"),
    ("useradd", "passwd"),
    ("systemd-analyze", "systemd"),
    // What the static binary's test asks whether it is static.
    ("file", "file"),
    // Kills an `sbx-user update` at an exact step (tests/tests/attach.rs).
    ("strace", "strace"),
    // An NSS module that knows users /etc/passwd does not, as LDAP would,
    // for the static binary's lookups (tests/tests/install.rs).
    ("/usr/lib/libnss_extrausers.so.2", "libnss-extrausers"),
];

/// Python packages the tests use, by import name and package name: the
/// Kubernetes manifests are validated offline (tests/tests/kubernetes.rs).
const TEST_PYTHON: [(&str, &str); 1] = [("kubernetes_validate", "kubernetes-validate")];

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TEST_TOOLS
        .into_iter()
        .filter(|(bin, _)| {
            let test = if bin.contains('/') { format!("test -e {bin}") } else { format!("command -v {bin}") };
            output(Command::new("sh").args(["-c", &test])).is_none()
        })
        .collect()
}

fn test_deps_install() -> Result<()> {
    for (module, package) in TEST_PYTHON {
        let have = |m: &str| {
            Command::new("python3").args(["-c", &format!("import {m}")]).output().is_ok_and(|o| o.status.success())
        };
        if !have(module) {
            eprintln!("xtask: installing the Python package {package} (pip)");
            check(Command::new("python3").args(["-m", "pip", "install", "-q", package]).status()?, "pip install")?;
            if !have(module) {
                bail!("python3 cannot import {module} after `pip install {package}`");
            }
        }
    }
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    eprintln!("xtask: installing test tools: {}", pkgs.join(" "));
    let sh = format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {0} || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {0})",
        pkgs.join(" ")
    );
    check(Command::new("sh").args(["-c", &sh]).status()?, "apt-get install")?;
    let still = missing_tools();
    if !still.is_empty() {
        bail!("still missing after install: {:?}", still.iter().map(|t| t.0).collect::<Vec<_>>());
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    let toolchain = setup()?;
    let status = Command::new("rustup")
        .args([
            "run",
            &toolchain.channel,
            "cargo",
            "build",
            "--package",
            "sbx-ebpf",
            "--bin",
            "sbx",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .current_dir(workspace())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .status()
        .with_context(|| format!("running cargo from {}", toolchain.channel))?;
    check(status, "building sbx-ebpf")?;
    let obj = workspace().join("target/bpfel-unknown-none/release/sbx");
    println!("{}", obj.display());
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u == "0")
}

/// The privileged tests run `sbx-user`, the probe and commands in the
/// checkout as unprivileged test users, who must be able to reach them: a
/// checkout below a private directory (`mktemp -d` makes one, mode 0700)
/// would fail those tests with EACCES. Each directory above the target
/// directory gets search permission for others (`o+x`: enter, not list),
/// and the change is said.
fn traversable_by_test_users() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for dir in target_dir().ancestors().skip(1).chain(workspace().ancestors()) {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("cannot make {} searchable by the test users (chmod o+x)", dir.display()))?;
            eprintln!(
                "xtask: made {} searchable by others (o+x): the tests run binaries in it as test users",
                dir.display()
            );
        }
    }
    Ok(())
}

fn test(extra: &[OsString]) -> Result<()> {
    if !is_root() {
        bail!("the test suite attaches BPF programs to real cgroups and creates network namespaces; it needs root\nHint: sudo -E cargo xtask test");
    }
    eprintln!("xtask: {}", setup()?);
    test_deps_install()?;
    traversable_by_test_users()?;
    eprintln!("xtask: unit tests");
    cargo(&["test", "-p", "sbx-common", "-p", "sbx-user", "-p", "xtask"])?;
    eprintln!("xtask: privileged tests against the running kernel");
    // The suite runs the binary `dist` ships, linked statically (musl;
    // debug, to share no time with an optimised build), whose own memcpy
    // and memmove are tested first; the dynamically linked one `cargo
    // build` makes is compared with it where they differ (the NSS lookups,
    // tests/tests/install.rs).
    let bin = dist::build_static(true)?;
    cargo(&["test", "-p", "sbx-user", "--bin", "sbx-user", "--target", &dist::musl_triple()])?;
    cargo(&["build", "-p", "sbx-user"])?;
    let dynamic = target_dir().join("debug/sbx-user");
    // tests/tests/install.rs installs this package with dpkg; the packaging
    // is the same code as `dist`.
    let deb = dist::package(&bin, &target_dir().join("dist-debug"), dist::Purpose::Test)?.deb;
    // tests/tests/upgrade.rs: sandboxes of an sbx from before program sets,
    // and of one from before the host's shared policy maps.
    let legacy = legacy::binary(legacy::CONTRACT_1)?;
    let previous = legacy::binary(legacy::CONTRACT_5)?;
    let out = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--no-fail-fast", "-p", "sbx-tests", "--"])
        .args(extra)
        .current_dir(workspace())
        .env("SBX_USER_BIN", &bin)
        .env("SBX_DEB", &deb)
        .env("SBX_LEGACY_BIN", &legacy)
        .env("SBX_PREVIOUS_BIN", &previous)
        .env("SBX_STATIC_BIN", &bin)
        .env("SBX_DYNAMIC_BIN", &dynamic)
        .env("SBX_REQUIRE_PRIVILEGED", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the privileged tests")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    check(out.status, "privileged tests")?;
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    if passed == 0 && extra.is_empty() {
        bail!("no privileged test ran: the suite must not pass without exercising the kernel");
    }
    eprintln!("xtask: {passed} privileged tests passed");
    Ok(())
}
