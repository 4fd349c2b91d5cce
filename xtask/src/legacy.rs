//! Older `sbx-user`s built from the repository's own history, for the
//! upgrade tests: sandboxes they attached must stay enforced under this
//! build and migrate to this build's program set. Two of them: contract 1
//! (each sandbox with its own programs and maps, before program sets) and
//! contract 5 (a program set with three maps per policy, before the host's
//! shared policy maps).

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The last commit of contract 1 on main.
pub(crate) const CONTRACT_1: &str = "8d2d8dcd00b9a622a6bfa3e0ca76d619f5b38937";

/// The last commit of contract 5 on main.
pub(crate) const CONTRACT_5: &str = "c5473f1b7f88ebd82c2847659ca1dbaeb4f09178";

/// The `sbx-user` of `commit`, built once per target directory.
pub(crate) fn binary(commit: &str) -> Result<PathBuf> {
    let dir = crate::target_dir().join("legacy");
    let bin = dir.join(format!("sbx-user-{}", &commit[..12]));
    if bin.is_file() {
        return Ok(bin);
    }
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!("xtask: building the sbx-user of {} for the upgrade tests (once)", &commit[..12]);
    // `git archive` of the commit: a plain tree, no worktree bookkeeping.
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(crate::workspace())
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let untar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&src)
        .stdin(archive.stdout.context("git archive's stdout")?)
        .status()
        .context("running tar")?;
    if !untar.success() {
        bail!(
            "extracting commit {commit} failed; the upgrade tests need the repository's history (a shallow clone \
             lacks it: git fetch --unshallow)"
        );
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "-p", "sbx-user"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .status()
        .context("building the legacy sbx-user")?;
    if !status.success() {
        bail!("building the sbx-user of {commit} failed ({status})");
    }
    fs::copy(dir.join("target/debug/sbx-user"), &bin).context("copying the legacy binary")?;
    let _ = fs::remove_dir_all(&src);
    Ok(bin)
}
