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
