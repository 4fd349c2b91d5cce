//! `cargo xtask setup`: the pinned eBPF toolchain (`sbx-ebpf/toolchain.rs`).
//!
//! Finds the rustup toolchain that is the pinned nightly (installing the
//! dated channel if none is), adds its `rust-src`, and builds bpf-linker
//! against that nightly's own libLLVM. It says what it uses, and fails with
//! what differs when the compiler or linker is not the pinned one: the same
//! check `sbx-user/build.rs` makes before every eBPF build.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{check, output};

mod pin {
    include!("../../sbx-ebpf/toolchain.rs");
}

/// What the eBPF build uses, once checked.
#[derive(Debug)]
pub(crate) struct Toolchain {
    /// rustup's name for the pinned nightly.
    pub(crate) channel: String,
    /// Its `rustc -vV` first line.
    pub(crate) rustc: String,
    /// The libLLVM bpf-linker loads.
    pub(crate) llvm: PathBuf,
    /// `bpf-linker --version`.
    pub(crate) linker: String,
}

impl std::fmt::Display for Toolchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { channel, rustc, llvm, linker } = self;
        write!(
            f,
            "eBPF toolchain (pinned in sbx-ebpf/toolchain.rs): `{channel}` = {rustc}, LLVM {}; {linker} linked against {}",
            pin::LLVM_VERSION,
            llvm.display()
        )
    }
}

fn rustc_vv(channel: &str) -> Option<String> {
    output(Command::new("rustup").args(["run", channel, "rustc", "-vV"]))
}

/// The pinned channel, installing the dated one when no installed
/// toolchain is the pinned compiler.
fn channel() -> Result<(String, String)> {
    let env_channel = env::var(pin::CHANNEL_ENV).ok();
    match pin::find_channel(env_channel.as_deref(), &rustc_vv) {
        Ok(found) => return Ok(found),
        Err(why) => {
            // Install the toolchain that should be the pin if it is missing
            // (never replace one that is installed: that would change what
            // other builds on the machine use).
            let dated = env_channel.as_deref().unwrap_or(pin::CHANNELS[1]);
            if rustc_vv(dated).is_some() {
                bail!("{why}");
            }
            eprintln!("xtask: installing the pinned nightly as `{dated}` ({})", pin::pinned_rustc());
            check(
                Command::new("rustup")
                    .args(["toolchain", "install", dated, "--profile", "minimal", "--component", "rust-src"])
                    .status()?,
                &format!("rustup toolchain install {dated}"),
            )?;
        }
    }
    pin::find_channel(env_channel.as_deref(), &rustc_vv).map_err(|e| anyhow!("{e}"))
}

/// Installs what is missing and checks all of it; see the module docs.
pub(crate) fn setup() -> Result<Toolchain> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup is not installed; sbx needs it for the pinned nightly toolchain ({})\nHint: install rustup from https://rustup.rs", pin::pinned_rustc());
    }
    let (channel, vv) = channel()?;
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", &channel, "--installed"]))
        .unwrap_or_default();
    if !installed.lines().any(|c| c.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to {channel}");
        check(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &channel]).status()?,
            "rustup component add rust-src",
        )?;
    }
    let llvm = pinned_libllvm(&channel)?;
    let linker_ok = |llvm: &Path| {
        let version = output(Command::new("bpf-linker").arg("--version"))?;
        (pin::check_linker(&version).is_ok() && linker_llvm().as_deref() == Some(llvm)).then_some(version)
    };
    let linker = if let Some(v) = linker_ok(&llvm) {
        v
    } else {
        install_bpf_linker(&llvm)?;
        linker_ok(&llvm).ok_or_else(|| {
                let found = output(Command::new("bpf-linker").arg("--version")).unwrap_or_else(|| "missing".into());
                anyhow!(
                    "bpf-linker is `{}` with LLVM {}, not bpf-linker {} with {}; is another bpf-linker earlier on PATH than ~/.cargo/bin?",
                    found.trim(),
                    linker_llvm().map_or_else(|| "unknown".into(), |p| p.display().to_string()),
                    pin::BPF_LINKER_VERSION,
                    llvm.display()
                )
            })?
    };
    let rustc = vv.lines().next().unwrap_or_default().to_owned();
    Ok(Toolchain { channel, rustc, llvm, linker: linker.trim().to_owned() })
}

/// The libLLVM shipped with the pinned toolchain.
fn pinned_libllvm(channel: &str) -> Result<PathBuf> {
    let sysroot = output(Command::new("rustup").args(["run", channel, "rustc", "--print", "sysroot"]))
        .with_context(|| format!("`rustup run {channel} rustc --print sysroot` failed"))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("libLLVM.so.")
                || (n.starts_with("libLLVM-") && Path::new(n).extension().is_some_and(|e| e == "so"))
        })
        .with_context(|| format!("no libLLVM in {}; the nightly toolchain ships one", libdir.display()))?;
    let path = libdir.join(llvm);
    fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` or `libLLVM-22-rust-...so`: 22.
fn llvm_major(file_name: &str) -> Option<String> {
    let major: String = file_name
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!major.is_empty()).then_some(major)
}

/// Where the libLLVM links bpf-linker loads live (outside target/: the
/// installed linker keeps an rpath to this directory).
fn llvm_prefix(major: &str) -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/sbx").join(format!("llvm-{major}")))
}

/// The libLLVM the installed bpf-linker loads, as `ldd` resolves it.
fn linker_llvm() -> Option<PathBuf> {
    let linker = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    let ldd = output(Command::new("ldd").arg(linker.trim()))?;
    let path = ldd.lines().find(|l| l.trim_start().starts_with("libLLVM"))?.split("=>").nth(1)?.split(" (").next()?;
    fs::canonicalize(path.trim()).ok()
}

/// Builds bpf-linker against `llvm`, the pinned nightly's own libLLVM, so
/// the LLVM that links the programs matches the one rustc emitted bitcode
/// for.
fn install_bpf_linker(llvm: &Path) -> Result<()> {
    let name = llvm.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let major = llvm_major(&name).with_context(|| format!("cannot tell the LLVM version of {name}"))?;
    let prefix = llvm_prefix(&major)?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link_name in ["libLLVM.so", name.as_str()] {
        let link = lib.join(link_name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let version = pin::BPF_LINKER_VERSION;
    eprintln!("xtask: building bpf-linker {version} against {} (about 2 minutes)", llvm.display());
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{version}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn the_pinned_compiler_passes_and_any_other_is_named_in_the_error() {
        assert_eq!(pin::pinned_rustc(), PINNED.lines().next().unwrap());
        pin::check_rustc("nightly", PINNED).unwrap();
        let newer =
            PINNED.replace("e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a", "0123456789").replace("e50aa6fba", "012345678");
        let err = pin::check_rustc("nightly", &newer).unwrap_err();
        assert!(err.contains("012345678") && err.contains(&pin::pinned_rustc()), "{err}");
        let other_llvm = PINNED.replace("22.1.4", "23.0.0");
        assert!(pin::check_rustc("nightly", &other_llvm).unwrap_err().contains("LLVM 23.0.0"));
    }

    #[test]
    fn the_first_matching_channel_wins_and_none_matching_lists_each() {
        let newer = PINNED.replace("e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a", "ffff");
        let machines = |c: &str| match c {
            "nightly" => Some(newer.clone()),
            "nightly-2026-05-20" => Some(PINNED.to_owned()),
            _ => None,
        };
        assert_eq!(pin::find_channel(None, &machines).unwrap().0, "nightly-2026-05-20");
        let err = pin::find_channel(None, &|c| (c == "nightly").then(|| newer.clone())).unwrap_err();
        assert!(err.contains("is rustc 1.97.0-nightly (e50aa6fba") || err.contains("`nightly` is"), "{err}");
        assert!(err.contains("`nightly-2026-05-20`: not installed"), "{err}");
        assert!(err.contains(pin::RUSTC_COMMIT) && err.contains("cargo xtask setup"), "{err}");
        // An explicit toolchain is the only one tried.
        assert_eq!(pin::find_channel(Some("mine"), &|_| Some(PINNED.to_owned())).unwrap().0, "mine");
        let err = pin::find_channel(Some("mine"), &|c| (c == "mine").then(|| newer.clone())).unwrap_err();
        assert!(err.contains("`mine` is") && err.contains("SBX_EBPF_TOOLCHAIN=mine must name"), "{err}");
    }

    #[test]
    fn linker_versions_and_llvm_file_names() {
        pin::check_linker("bpf-linker 0.13.0\n").unwrap();
        assert!(pin::check_linker("bpf-linker 0.14.1").unwrap_err().contains("pinned to bpf-linker 0.13.0"));
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").as_deref(), Some("22"));
        assert_eq!(llvm_major("libLLVM-19-rust-1.85.0-nightly.so").as_deref(), Some("19"));
        assert_eq!(llvm_major("libLLVM.so"), None);
    }
}
