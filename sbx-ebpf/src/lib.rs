//! Build-time anchor for the sbx eBPF programs.
//!
//! The programs themselves are the `sbx` binary target (`src/main.rs`), built
//! for `bpfel-unknown-none` by `sbx-user`'s build script through aya-build.
//! This empty library exists so that `sbx-user` can name this crate as a
//! build dependency and be rebuilt when it changes.
#![no_std]

// The dependencies serve the binary target; name them so the lint that
// checks for unused crates sees them used.
use aya_ebpf as _;
use aya_log_ebpf as _;
use sbx_common as _;
