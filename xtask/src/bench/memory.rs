//! Kernel memory accounting: the memory cgroup charge of the process that
//! creates the maps and programs, and `Slab + VmallocUsed + Percpu` from
//! /proc/meminfo (bpftool's `bytes_memlock` is in [`super::bpftool`]).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::context::{find_mount, rmdir_retry};

/// A memory cgroup to run `sbx-user attach` in, so its kernel allocations
/// (the maps and programs it creates, which outlive it) are counted.
#[derive(Clone, Debug)]
pub(super) enum MemAcct {
    /// A cgroup v1 memory hierarchy: `memory.kmem.usage_in_bytes`.
    V1 { root: PathBuf },
    /// cgroup v2 with the memory controller delegated to our cgroup:
    /// `memory.stat` `kernel`.
    V2 { root: PathBuf },
}

impl MemAcct {
    pub(super) fn find(cgroup2: &Path, pid: u32) -> Option<Self> {
        let name = format!("sbx-bench-{pid}");
        if let Some(m) = find_mount(|t, opts| t == "cgroup" && opts.split(',').any(|o| o == "memory")) {
            if m.join("memory.kmem.usage_in_bytes").exists() {
                return Some(Self::V1 { root: m.join(name) });
            }
        }
        let delegated = fs::read_to_string(cgroup2.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"));
        delegated.then(|| Self::V2 { root: cgroup2.join(name).join("memcg") })
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::V1 { .. } => {
                "memory cgroup v1 charge (memory.kmem.usage_in_bytes of the attaching process's memcg)".into()
            }
            Self::V2 { .. } => "memory cgroup v2 charge (memory.stat `kernel` of the attaching process's memcg)".into(),
        }
    }

    pub(super) fn create_root(&self) -> Result<()> {
        match self {
            Self::V1 { root } => {
                fs::create_dir(root).with_context(|| format!("creating memory cgroup {}", root.display()))
            }
            Self::V2 { root } => {
                let parent = root.parent().expect("below our cgroup");
                fs::write(parent.join("cgroup.subtree_control"), "+memory")
                    .with_context(|| format!("enabling the memory controller in {}", parent.display()))?;
                fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
                fs::write(root.join("cgroup.subtree_control"), "+memory")
                    .with_context(|| format!("enabling the memory controller in {}", root.display()))
            }
        }
    }

    /// A fresh memory cgroup for one measurement.
    pub(super) fn child(&self, name: &str) -> Result<PathBuf> {
        let (Self::V1 { root } | Self::V2 { root }) = self;
        let p = root.join(name);
        fs::create_dir(&p).with_context(|| format!("creating memory cgroup {}", p.display()))?;
        Ok(p)
    }

    /// Removes the per-measurement memory cgroups made so far.
    pub(super) fn remove_children(&self) {
        let (Self::V1 { root } | Self::V2 { root }) = self;
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_retry(&e.path());
            }
        }
    }

    /// Kernel memory charged to `cg`, in bytes.
    pub(super) fn kernel_bytes(&self, cg: &Path) -> Result<u64> {
        match self {
            Self::V1 { .. } => {
                let p = cg.join("memory.kmem.usage_in_bytes");
                let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                s.trim().parse().with_context(|| format!("parsing {}", p.display()))
            }
            Self::V2 { .. } => {
                let p = cg.join("memory.stat");
                let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                let field =
                    |k: &str| s.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok());
                Ok(field("kernel").unwrap_or_else(|| {
                    ["slab", "percpu", "kernel_stack", "pagetables", "vmalloc"].iter().filter_map(|k| field(k)).sum()
                }))
            }
        }
    }
}

/// `Slab + VmallocUsed + Percpu` from /proc/meminfo, in bytes.
pub(super) fn meminfo_kernel() -> u64 {
    meminfo_sum(&["Slab", "VmallocUsed", "Percpu"])
}

/// `SUnreclaim + VmallocUsed + Percpu`: [`meminfo_kernel`] without the
/// reclaimable slab (dentry and inode caches), which other work on a
/// shared machine moves by megabytes a second.
pub(super) fn meminfo_unreclaimable() -> u64 {
    meminfo_sum(&["SUnreclaim", "VmallocUsed", "Percpu"])
}

fn meminfo_sum(keys: &[&str]) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            keys.contains(&k).then(|| v.split_whitespace().next()?.parse::<u64>().ok()).flatten()
        })
        .sum::<u64>()
        * 1024
}

/// Waits until the kernel's memory figure stops moving (frees after an RCU
/// grace period or from a workqueue land late), at most `max`.
pub(super) fn settle_meminfo(max: Duration) {
    let start = Instant::now();
    let mut last = meminfo_kernel();
    let mut quiet = 0;
    while start.elapsed() < max && quiet < 3 {
        std::thread::sleep(Duration::from_millis(300));
        let now = meminfo_kernel();
        if now.abs_diff(last) < 512 * 1024 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
}
