//! Running the `sbx-user` binary under test.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{util::TempDir, TestCgroup};

/// The `sbx-user` binary: `$SBX_USER_BIN`, else
/// `$CARGO_TARGET_DIR/debug/sbx-user`, else
/// `<workspace>/target/debug/sbx-user`.
///
/// # Panics
/// When the file does not exist, saying how to build it.
#[must_use]
pub fn sbx_user_bin() -> PathBuf {
    let path = if let Some(p) = std::env::var_os("SBX_USER_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("debug/sbx-user")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sbx-user")
    };
    assert!(
        path.is_file(),
        "sbx-user binary not found at {}; build it first (`cargo build -p sbx-user`) or point \
         SBX_USER_BIN at it",
        path.display()
    );
    path
}

/// The bpffs mount sbx-user pins in: `$SBX_BPFFS` or `/sys/fs/bpf`.
#[must_use]
pub fn bpffs() -> PathBuf {
    std::env::var_os("SBX_BPFFS").map_or_else(|| PathBuf::from("/sys/fs/bpf"), PathBuf::from)
}

/// One test's view of `sbx-user`: the binary plus a private state
/// directory (`SBX_STATE_DIR`), removed on drop.
#[derive(Debug)]
pub struct Sbx {
    bin: PathBuf,
    state: TempDir,
}

impl Sbx {
    /// A fresh state directory.
    ///
    /// # Panics
    /// When not root, or the binary is missing.
    #[must_use]
    pub fn new() -> Self {
        crate::require_root();
        // Under /run, as the default /run/sbx is: the command of `run`
        // sees a private /tmp, and some tests look at the record from
        // inside the sandbox.
        Self { bin: sbx_user_bin(), state: TempDir::new_in(Path::new("/run"), "state") }
    }

    /// The state directory the commands use.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The records currently in the state directory.
    #[must_use]
    pub fn records(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(self.state.path()).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// The member records (containers of pods held at the pod's cgroup).
    #[must_use]
    pub fn members(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state.path().join("members"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether sbx has a pin directory for cgroup `id`.
    #[must_use]
    pub fn has_pins(id: u64) -> bool {
        bpffs().join("sbx").join(id.to_string()).exists()
    }

    /// A `sbx-user` command with this test's state directory, stdin null.
    #[must_use]
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("SBX_STATE_DIR", self.state.path()).stdin(Stdio::null());
        c
    }

    /// Runs `sbx-user ARGS` and returns its output, whatever the status.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
    }

    /// Runs `sbx-user ARGS`, which must succeed.
    ///
    /// # Panics
    /// When it fails, with its output.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.output(args);
        assert!(out.status.success(), "sbx-user {} failed: {}", join(args), describe(&out));
        out
    }

    /// Runs `sbx-user ARGS`, which must fail with sbx's own error status,
    /// 125 (an error or a usage error, not a verdict).
    ///
    /// # Panics
    /// When it does not, with its output.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.output(args);
        assert_eq!(out.status.code(), Some(125), "sbx-user {} should fail with 125: {}", join(args), describe(&out));
        out
    }

    /// Runs `sbx-user ARGS`, which must exit 1: a negative verdict (`verify`
    /// finding a sandbox not enforcing, `check` an invalid policy).
    ///
    /// # Panics
    /// When it does not, with its output.
    pub fn says_no<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.output(args);
        assert_eq!(out.status.code(), Some(1), "sbx-user {} should exit 1 (a verdict): {}", join(args), describe(&out));
        out
    }

    /// `sbx-user run --cgroup-parent PARENT OPTIONS... -- COMMAND...`, not
    /// yet started.
    #[must_use]
    pub fn run_cmd(&self, parent: &TestCgroup, options: &[&str], command: &[&str]) -> Command {
        let mut cmd = self.cmd();
        cmd.args(["run", "--cgroup-parent", parent.arg()]).args(options).arg("--").args(command);
        cmd
    }

    /// [`Self::run_cmd`], run to the end: its output, whatever its status.
    ///
    /// # Panics
    /// When `sbx-user` cannot be started.
    #[must_use]
    pub fn run_output(&self, parent: &TestCgroup, options: &[&str], command: &[&str]) -> Output {
        let mut cmd = self.run_cmd(parent, options, command);
        cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// [`Self::run_cmd`], run to the end, which must exit 0.
    ///
    /// # Panics
    /// When it does not.
    #[must_use]
    pub fn run_ok(&self, parent: &TestCgroup, options: &[&str], command: &[&str]) -> Output {
        let out = self.run_output(parent, options, command);
        assert_eq!(out.status.code(), Some(0), "sbx-user run {options:?} -- {command:?}: {}", describe(&out));
        out
    }

    /// `sbx-user attach --cgroup CG POLICY...`, which must succeed.
    #[expect(clippy::must_use_candidate, reason = "called for its assertion; the output is optional")]
    pub fn attach(&self, cg: &TestCgroup, policy: &[&str]) -> Output {
        let mut args = vec!["attach", "--cgroup", cg.arg()];
        args.extend_from_slice(policy);
        self.ok(&args)
    }

    /// `sbx-user detach --cgroup CG`, which must succeed.
    #[expect(clippy::must_use_candidate, reason = "called for its assertion; the output is optional")]
    pub fn detach(&self, cg: &TestCgroup) -> Output {
        self.ok(&["detach", "--cgroup", cg.arg()])
    }

    /// The entry for `cg` in `sbx-user status --cgroup CG --json`.
    ///
    /// # Panics
    /// When status fails or has no single entry for the cgroup.
    #[must_use]
    pub fn status(&self, cg: &TestCgroup) -> serde_json::Value {
        let out = self.ok(&["status", "--cgroup", cg.arg(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", describe(&out)));
        let entries = v.as_array().unwrap_or_else(|| panic!("status --json is not an array: {v}"));
        let mine: Vec<_> = entries.iter().filter(|e| e["cgroup_id"] == cg.id()).collect();
        assert_eq!(mine.len(), 1, "expected one status entry for cgroup id {}: {v:#}", cg.id());
        mine[0].clone()
    }

    /// The pending events of `cg`, from `sbx-user events --cgroup CG
    /// --json` (which drains them), one JSON object per line.
    ///
    /// # Panics
    /// When the command fails or prints something else than JSON lines.
    #[must_use]
    pub fn events(&self, cg: &TestCgroup) -> Vec<serde_json::Value> {
        let out = self.ok(&["events", "--cgroup", cg.arg(), "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("events --json line {l:?} ({e}): {}", describe(&out)))
            })
            .collect()
    }
}

impl Default for Sbx {
    fn default() -> Self {
        Self::new()
    }
}

fn join<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Exit status, stdout and stderr of a finished command, for messages.
#[must_use]
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
