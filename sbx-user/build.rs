//! Compiles `sbx-ebpf` for the BPF target (nightly, `-Z build-std=core`,
//! bpf-linker) and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.
use anyhow::{anyhow, Context as _};
// A build dependency only so cargo reruns this script when it changes.
use sbx_ebpf as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("sbx-user has no parent directory"))?
        .join("sbx-ebpf");
    let root = root.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "sbx-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")
}
