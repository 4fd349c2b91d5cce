//! Developer tasks for sbx: `cargo xtask <task>`.
//!
//! - `setup`: install what building the eBPF programs needs (the nightly
//!   toolchain's rust-src, and bpf-linker built against the nightly's own
//!   libLLVM), and with `--test-deps` the tools the tests drive. Idempotent.
//! - `build-ebpf`: build the eBPF object on its own, for bpftool or shipping.
//! - `sbx -- ARGS`: build sbx-user (release) and run it with ARGS.
//! - `test`: unit tests, then the privileged tests against the real kernel.
//! - `bench`: the benchmark suite (see BENCHMARKS.md).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "xtask", about = "sbx developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly rust-src component and bpf-linker (idempotent).
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
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup { test_deps } => {
            setup()?;
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
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => test(&args),
        Task::Bench(args) => {
            setup()?;
            bench::run(&args)
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

const BPF_LINKER_VERSION: &str = "0.13.0";

fn setup() -> Result<()> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup is not installed; sbx needs it to fetch the nightly toolchain's rust-src\nHint: install rustup from https://rustup.rs");
    }
    let has_nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| l.lines().any(|t| t.starts_with("nightly")));
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain");
        check(
            Command::new("rustup")
                .args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"])
                .status()?,
            "rustup toolchain install nightly",
        )?;
    }
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .unwrap_or_default();
    if !installed.lines().any(|c| c.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        check(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]).status()?,
            "rustup component add rust-src",
        )?;
    }
    let linker_ok = output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if linker_ok {
        return Ok(());
    }
    install_bpf_linker()
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM, so the
/// LLVM that links the programs matches the one rustc emitted bitcode for.
fn install_bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed; is the nightly toolchain installed?")?;
    let libdir = Path::new(&sysroot).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("libLLVM.so.")
                || (n.starts_with("libLLVM-") && Path::new(n).extension().is_some_and(|e| e == "so"))
        })
        .with_context(|| format!("no libLLVM in {}; the nightly toolchain ships one", libdir.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly or libLLVM-22-rust-...so
    let major: String = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {llvm}");
    }
    // Outside target/: the installed linker keeps an rpath to this dir.
    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/sbx").join(format!("llvm-{major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let target = libdir.join(&llvm);
    for name in ["libLLVM.so".to_owned(), llvm.clone()] {
        let link = lib.join(&name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about 2 minutes)", target.display());
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    check(status, "cargo install bpf-linker")?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

const TEST_TOOLS: [(&str, &str); 6] = [
    ("curl", "curl"),
    ("tinyproxy", "tinyproxy"),
    ("nc", "netcat-openbsd"),
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("bpftool", "bpftool"),
];

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TEST_TOOLS
        .into_iter()
        .filter(|(bin, _)| output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none())
        .collect()
}

fn test_deps_install() -> Result<()> {
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
    setup()?;
    let status = Command::new("cargo")
        .args([
            "+nightly",
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
        .context("running cargo +nightly")?;
    check(status, "building sbx-ebpf")?;
    let obj = workspace().join("target/bpfel-unknown-none/release/sbx");
    println!("{}", obj.display());
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u == "0")
}

fn test(extra: &[OsString]) -> Result<()> {
    if !is_root() {
        bail!("the test suite attaches BPF programs to real cgroups and creates network namespaces; it needs root\nHint: sudo -E cargo xtask test");
    }
    setup()?;
    test_deps_install()?;
    eprintln!("xtask: unit tests");
    cargo(&["test", "-p", "sbx-common", "-p", "sbx-user", "-p", "xtask"])?;
    eprintln!("xtask: privileged tests against the running kernel");
    cargo(&["build", "-p", "sbx-user"])?;
    let bin = target_dir().join("debug/sbx-user");
    let out = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "-p", "sbx-tests", "--"])
        .args(extra)
        .current_dir(workspace())
        .env("SBX_USER_BIN", &bin)
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
