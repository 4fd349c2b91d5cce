//! The `sbx-user` command: parse arguments, dispatch to [`sbx_user::cli`].
//! Exit statuses are documented in [`sbx_user::cli`]: `run` passes the
//! command's through; the others exit 0, 1 for a negative verdict, and 125
//! for sbx's own errors and usage errors.
#![allow(
    unused_crate_dependencies,
    reason = "the binary shares the library's dependency list; only the library uses most of it"
)]

use std::io::{IsTerminal as _, Write as _};

use sbx_user::cli::{self, Command};

/// `memcpy` and `memmove` for the musl build: `rep movsb`, which CPUs
/// with fast short string moves (FSRM, ERMS) run at the speed of glibc's
/// vector copies, where musl's `rep movsq` with a byte tail is several
/// times slower on the short copies Rust makes by the million (loading
/// 100,000 rules: 25% of the time in `memcpy`).
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
mod mem {
    /// `n` bytes from `src` to `dest`, the lowest address first.
    ///
    /// # Safety
    /// `n` bytes readable at `src` and writable at `dest`; where they
    /// overlap, `dest` is below `src`.
    #[inline]
    unsafe fn forward(dest: *mut u8, src: *const u8, n: usize) {
        // SAFETY: the caller's; the direction flag is clear (the ABI's
        // rule at every call).
        unsafe {
            std::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// # Safety
    /// As C's `memcpy`.
    #[unsafe(no_mangle)]
    pub(super) unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's, as for memcpy: no overlap.
        unsafe { forward(dest, src, n) };
        dest
    }

    /// # Safety
    /// As C's `memmove`.
    #[unsafe(no_mangle)]
    pub(super) unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // Not through `memcpy`, which the compiler may assume does not
        // overlap and expand itself.
        if (dest as usize).wrapping_sub(src as usize) >= n {
            // SAFETY: a forward copy never overwrites what it has still to
            // read when `dest` is below `src` or past its end.
            unsafe { forward(dest, src, n) };
            return dest;
        }
        // SAFETY: backwards, from the last byte (`n` > 0 here), with the
        // direction flag set for the copy and cleared again (the ABI's rule).
        unsafe {
            std::arch::asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
        dest
    }
}

#[cfg(all(test, target_env = "musl", target_arch = "x86_64"))]
mod tests {
    /// `into` with `n` bytes of `from` at `src` copied to `dst`, one
    /// volatile byte at a time (nothing the compiler could turn into a call
    /// of the functions under test); `from` is read as it was, as if
    /// through a separate buffer.
    fn oracle(from: &[u8], src: usize, into: &[u8], dst: usize, n: usize) -> Vec<u8> {
        let mut out = into.to_vec();
        for i in 0..n {
            // SAFETY: `dst + i` is inside `out`.
            unsafe {
                std::ptr::write_volatile(
                    out.as_mut_ptr().add(dst + i),
                    std::ptr::read_volatile(&raw const from[src + i]),
                );
            }
        }
        out
    }

    /// Every length up to 300 and a few large ones, at every offset in a
    /// word, forwards and backwards over an overlap, against a byte loop.
    #[test]
    fn memcpy_and_memmove_copy_what_a_byte_loop_copies() {
        let pattern: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
        for n in (0..300).chain([4095, 4096, 65_536]) {
            for off in 0..8 {
                let mut dst = vec![0u8; n + 16];
                // SAFETY: both buffers hold `n` bytes from their offsets.
                unsafe { super::mem::memcpy(dst.as_mut_ptr().add(off), pattern.as_ptr().add(off), n) };
                assert_eq!(dst, oracle(&pattern, off, &vec![0u8; n + 16], off, n), "memcpy {n} at {off}");
                for shift in [1usize, 3, 8, 17] {
                    let orig = pattern[..n + 40].to_vec();
                    let mut buf = orig.clone();
                    // SAFETY: `buf` holds `off + shift + n` bytes.
                    unsafe { super::mem::memmove(buf.as_mut_ptr().add(off + shift), buf.as_ptr().add(off), n) };
                    assert_eq!(buf, oracle(&orig, off, &orig, off + shift, n), "memmove {n} up by {shift} at {off}");
                    let mut buf = orig.clone();
                    // SAFETY: as above.
                    unsafe { super::mem::memmove(buf.as_mut_ptr().add(off), buf.as_ptr().add(off + shift), n) };
                    assert_eq!(buf, oracle(&orig, off + shift, &orig, off, n), "memmove {n} down by {shift} at {off}");
                }
            }
        }
    }
}

/// The musl build's allocator (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    // Like other command-line tools, end quietly when stdout is a closed
    // pipe (`sbx-user status | head`) instead of panicking on the write.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The internal probe `verify` runs inside a sandbox cgroup.
    if argv.get(1).is_some_and(|a| a == "__probe") {
        let probe_args: Vec<String> = argv[2..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
        std::process::exit(sbx_user::verify::probe_main(&probe_args));
    }
    let cli = match cli::parse(&argv) {
        Ok(cli) => cli,
        Err(status) => std::process::exit(status),
    };
    let level = match cli.global.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    // Progress lines only on a terminal, and not under -v, whose log lines
    // already say what is going on.
    sbx_user::progress::enable(std::io::stderr().is_terminal() && cli.global.verbose == 0);
    let mut logger = env_logger::Builder::new();
    logger.filter_level(level).format_timestamp(None);
    if sbx_user::progress::enabled() {
        // A warning must not be appended to a progress line.
        logger.format(|buf, record| {
            sbx_user::progress::clear();
            writeln!(buf, "[{:<5} {}] {}", record.level(), record.target(), record.args())
        });
    }
    logger.init();
    let result = match &cli.command {
        Command::Agent(a) => cli::agent::run(a, &cli.global),
        Command::Attach(a) => cli::attach::run(a, &cli.global),
        Command::Detach(a) => cli::detach::run(a, &cli.global),
        Command::Update(a) => cli::via_agent::update_command(a, &cli.global),
        Command::Events(a) => cli::via_agent::events_command(a, &cli.global),
        Command::Verify(a) => cli::verify::run(a, &cli.global),
        Command::OrigDst(a) => cli::origdst::run(a, &cli.global),
        Command::Status(a) => cli::via_agent::status_command(a, &cli.global),
        Command::Gc(a) => cli::gc::run(a, &cli.global),
        Command::Migrate(a) => cli::update::migrate(a, &cli.global),
        Command::Check(a) => cli::check::run(a),
        Command::OciHook(a) => cli::oci_hook::run(a, &cli.global),
        Command::Completions(a) => cli::generate::completions(a),
        Command::Man(a) => cli::generate::man(a),
        Command::Profiles(a) => {
            cli::profiles::run(a);
            Ok(())
        }
        Command::Run(a) => std::process::exit(cli::run::run(a, &cli.global)),
    };
    if let Err(e) = result {
        eprintln!("sbx-user: error: {}", cli::error_text(&e));
        std::process::exit(cli::exit_status(&e));
    }
}
