// The toolchain the eBPF programs are built and tested with, written once.
//
// `include!`d by `sbx-user/build.rs` (which builds the programs and refuses
// any other compiler) and by `xtask` (`cargo xtask setup` installs and
// reports it). aya-ebpf 0.2.1 and bpf-linker 0.13 depend on unstable
// language features and on the LLVM the nightly ships, so "whatever nightly
// rustup installs today" is not a build input anyone can reproduce: the pin
// is the exact rustc commit, checked on every build.
//
// Updating the pin: install the new nightly, set the constants below from
// `rustc +nightly -vV`, rebuild bpf-linker (`cargo xtask setup`) and run the
// whole `cargo xtask test`; the programs must still pass the verifier.

/// rustc release the programs are built with.
pub(crate) const RUSTC_RELEASE: &str = "1.97.0-nightly";
/// Its commit (`rustc -vV`: `commit-hash`). This is the pin.
pub(crate) const RUSTC_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";
/// Its commit date (`rustc -vV`: `commit-date`).
pub(crate) const RUSTC_COMMIT_DATE: &str = "2026-05-19";
/// The LLVM that nightly ships (`rustc -vV`: `LLVM version`); bpf-linker is
/// built against this very libLLVM.
pub(crate) const LLVM_VERSION: &str = "22.1.4";
/// bpf-linker release.
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";

/// rustup toolchain names tried, in order, for the pinned compiler: the
/// name the build machines have it under (plain `nightly`), then the dated
/// channel that carries this commit (nightly builds are dated the day after
/// their commit). The first one installed whose commit is the pin is used.
/// `SBX_EBPF_TOOLCHAIN` names the one toolchain to use instead; it too must
/// be the pinned compiler.
pub(crate) const CHANNELS: [&str; 2] = ["nightly", "nightly-2026-05-20"];
/// Environment variable naming the rustup toolchain to use instead of
/// [`CHANNELS`].
pub(crate) const CHANNEL_ENV: &str = "SBX_EBPF_TOOLCHAIN";

/// The pinned compiler, as `rustc -vV` prints its first line.
#[must_use]
#[allow(dead_code, reason = "each includer uses a different part of this file")]
pub(crate) fn pinned_rustc() -> String {
    format!("rustc {RUSTC_RELEASE} ({} {RUSTC_COMMIT_DATE})", &RUSTC_COMMIT[..9])
}

/// Checks `rustc -vV` output against the pin; the error says what differs.
#[allow(dead_code, reason = "each includer uses a different part of this file")]
pub(crate) fn check_rustc(channel: &str, verbose_version: &str) -> Result<(), String> {
    let field = |name: &str| {
        verbose_version.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map_or("?", str::trim)
    };
    let (commit, llvm) = (field("commit-hash"), field("LLVM version"));
    if commit != RUSTC_COMMIT {
        return Err(format!(
            "rustup toolchain `{channel}` is {}, but the eBPF programs are pinned to {} with LLVM {LLVM_VERSION} \
             (sbx-ebpf/toolchain.rs); another nightly may not build aya-ebpf or may emit code the verifier rejects",
            verbose_version.lines().next().unwrap_or("?"),
            pinned_rustc()
        ));
    }
    if llvm != LLVM_VERSION {
        return Err(format!(
            "rustup toolchain `{channel}` has the pinned commit but LLVM {llvm}, not {LLVM_VERSION}"
        ));
    }
    Ok(())
}

/// Checks `bpf-linker --version` output against the pin.
#[allow(dead_code, reason = "each includer uses a different part of this file")]
pub(crate) fn check_linker(version: &str) -> Result<(), String> {
    if version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) {
        Ok(())
    } else {
        Err(format!(
            "bpf-linker is `{}`, but the eBPF programs are pinned to bpf-linker {BPF_LINKER_VERSION}",
            version.trim()
        ))
    }
}

/// `SBX_EBPF_TOOLCHAIN` if set, else the first of [`CHANNELS`], whose
/// `rustc -vV` (from `version_of`, `None` when not installed) matches the
/// pin; or why none does.
#[allow(dead_code, reason = "each includer uses a different part of this file")]
pub(crate) fn find_channel(
    env_channel: Option<&str>,
    version_of: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    let mut tried = Vec::new();
    let candidates: &[&str] = match &env_channel {
        Some(c) => std::slice::from_ref(c),
        None => &CHANNELS,
    };
    for &channel in candidates {
        match version_of(channel) {
            None => tried.push(format!("`{channel}`: not installed")),
            Some(vv) => match check_rustc(channel, &vv) {
                Ok(()) => return Ok((channel.to_owned(), vv)),
                Err(e) => tried.push(e),
            },
        }
    }
    Err(format!(
        "no rustup toolchain is the pinned {} (LLVM {LLVM_VERSION}):\n  {}\n\
         Hint: {}",
        pinned_rustc(),
        tried.join("\n  "),
        match env_channel {
            Some(c) => format!("{CHANNEL_ENV}={c} must name a toolchain with commit {RUSTC_COMMIT}; unset it to use {}", CHANNELS.join(" or ")),
            None => format!("`cargo xtask setup` installs {} (or set {CHANNEL_ENV} to a toolchain with commit {RUSTC_COMMIT})", CHANNELS[1]),
        }
    ))
}
