//! Compiles `sbx-ebpf` for the BPF target (nightly, `-Z build-std=core`,
//! bpf-linker) and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! The compiler and linker are pinned (`sbx-ebpf/toolchain.rs`): any other
//! nightly or bpf-linker is refused here, with what differs, instead of
//! producing programs nobody tested. `cargo xtask setup` installs them.
use std::process::Command;

use anyhow::{anyhow, Context as _};
// A build dependency only so cargo reruns this script when it changes.
use sbx_ebpf as _;

mod toolchain {
    include!("../sbx-ebpf/toolchain.rs");
}

#[path = "src/fnv.rs"]
mod fnv;

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={}", toolchain::CHANNEL_ENV);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("sbx-user has no parent directory"))?
        .join("sbx-ebpf");
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let channel = if skip {
        toolchain::CHANNELS[0].to_owned()
    } else {
        let env_channel = std::env::var(toolchain::CHANNEL_ENV).ok();
        let (channel, _) = toolchain::find_channel(env_channel.as_deref(), &|c| {
            output(Command::new("rustup").args(["run", c, "rustc", "-vV"]))
        })
        .map_err(|e| anyhow!("{e}"))?;
        let linker = output(Command::new("bpf-linker").arg("--version"))
            .context("bpf-linker does not run; `cargo xtask setup` builds it against the pinned nightly's LLVM")?;
        toolchain::check_linker(&linker).map_err(|e| anyhow!("{e}; `cargo xtask setup` installs the pinned one"))?;
        channel
    };
    let root = root.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "sbx-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&channel),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install the pinned nightly's rust-src component and bpf-linker")?;
    // The object's hash, for the program set id (`progset::set_id`).
    let out = std::env::var_os("OUT_DIR").context("cargo sets OUT_DIR for build scripts")?;
    let object = std::path::Path::new(&out).join("sbx");
    let bytes = std::fs::read(&object).with_context(|| format!("reading the eBPF object {}", object.display()))?;
    println!("cargo:rustc-env=SBX_OBJECT_FNV={:016x}", fnv::extend(fnv::OFFSET, &bytes));
    Ok(())
}
