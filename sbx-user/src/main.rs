//! The `sbx-user` command: parse arguments, dispatch to [`sbx_user::cli`].
#![allow(
    unused_crate_dependencies,
    reason = "the binary shares the library's dependency list; only the library uses most of it"
)]

use clap::Parser as _;
use sbx_user::cli::{self, Cli, Command};

fn main() {
    // Like other command-line tools, end quietly when stdout is a closed
    // pipe (`sbx-user status | head`) instead of panicking on the write.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // The internal probe `verify` runs inside a sandbox cgroup.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__probe") {
        std::process::exit(sbx_user::verify::probe_main(&argv[2..]));
    }
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).format_timestamp(None).init();
    let result = match &cli.command {
        Command::Attach(a) => cli::attach::run(a, &cli.global),
        Command::Detach(a) => cli::detach::run(a, &cli.global),
        Command::Update(a) => cli::update::run(a, &cli.global),
        Command::Events(a) => cli::events::run(a, &cli.global),
        Command::Verify(a) => cli::verify::run(a, &cli.global),
        Command::OrigDst(a) => cli::origdst::run(a, &cli.global),
        Command::Status(a) => cli::status::run(a, &cli.global),
        Command::Check(a) => cli::check::run(a),
        Command::Profiles(a) => {
            cli::profiles::run(a);
            Ok(())
        }
        Command::Run(a) => std::process::exit(cli::run::run(a, &cli.global)),
    };
    if let Err(e) = result {
        eprintln!("sbx-user: error: {e:#}");
        std::process::exit(1);
    }
}
