//! Makes cargo rebuild the programs when bpf-linker changes, since the
//! linker's LLVM decides the code the verifier sees.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
