//! `sbx-user completions SHELL` and `sbx-user man`: shell completions and
//! manual pages generated from the clap definitions, so they can never
//! disagree with the parser. Hidden from `--help`; packages ship their
//! output (`cargo xtask dist`), and a user of the plain binary can run them.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use clap::Args;

// Arguments of `completions`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

// Arguments of `man`. (Not a doc comment: with `defer`, see `Command`, it would
// replace the subcommand's own about.)
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write sbx-user.1 and one sbx-user-SUBCOMMAND.1 per subcommand into
    /// this directory instead of printing sbx-user.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Prints the completion script.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "sbx-user", &mut out);
    std::io::stdout().write_all(&out).context("writing the completion script")
}

/// Prints or writes the manual pages.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let mut cmd = super::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = &args.out_dir else {
        return std::io::stdout().write_all(&page(&cmd)?).context("writing the manual page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for sub in std::iter::once(&cmd).chain(cmd.get_subcommands().filter(|s| !s.is_hide_set())) {
        let path = dir.join(format!("{}.1", sub.get_display_name().unwrap_or_else(|| sub.get_name())));
        std::fs::write(&path, page(sub)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One manual page. `clap_mangen` renders the sections clap knows; the
/// long help after the options (examples, the policy language, exit
/// statuses) is preformatted text with `HEADING:` lines, so it becomes one
/// section per heading, unfilled, instead of one reflowed "EXTRA" blob.
fn page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    use clap_mangen::roff::{roman, Roff};
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(extra) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        let mut roff = Roff::new();
        let mut open = false;
        for line in extra.to_string().lines() {
            if let Some((h, rest)) = heading(line) {
                if open {
                    roff.control("fi", []);
                }
                roff.control("SH", [h]).control("nf", []);
                if !rest.is_empty() {
                    roff.text([roman(rest)]);
                }
                open = true;
            } else if open {
                roff.text([roman(line)]);
            }
        }
        if open {
            roff.control("fi", []);
        }
        roff.to_writer(&mut out)?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// `EXIT STATUS:` or `PROXY-ONLY MODE (proxy = ADDR:PORT):` (a heading
/// alone), or `RULES: text` (a heading and the first line of its body).
fn heading(line: &str) -> Option<(&str, &str)> {
    let upper = |h: &str| {
        let words = h.split('(').next().unwrap_or_default().trim();
        words.len() >= 3 && words.chars().all(|c| c.is_ascii_uppercase() || c == ' ' || c == '-')
    };
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    if let Some(h) = line.strip_suffix(':').filter(|h| upper(h)) {
        return Some((h, ""));
    }
    line.split_once(": ").filter(|(h, _)| upper(h) && !h.contains('(')).map(|(h, rest)| (h, rest.trim_start()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn headings_of_the_long_help() {
        for (line, want) in [
            ("EXIT STATUS:", Some(("EXIT STATUS", ""))),
            ("PROXY-ONLY MODE (proxy = ADDR:PORT):", Some(("PROXY-ONLY MODE (proxy = ADDR:PORT)", ""))),
            ("RULES: [tcp://|udp://]TARGET[:PORTS]", Some(("RULES", "[tcp://|udp://]TARGET[:PORTS]"))),
            ("  TARGET  IPv4/IPv6 address:", None),
            ("Flags add rules to the file (--allow, --deny) or override:", None),
            ("  # Run a build:", None),
        ] {
            assert_eq!(super::heading(line), want, "{line}");
        }
    }

    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_every_visible_subcommand() {
        let visible: Vec<String> = super::super::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(visible.iter().any(|s| s == "run") && !visible.iter().any(|s| s == "man"), "{visible:?}");
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut super::super::command(), "sbx-user", &mut out);
            let script = String::from_utf8(out).expect("UTF-8");
            for sub in &visible {
                assert!(script.contains(sub.as_str()), "{shell} completions lack `{sub}`");
            }
            assert!(script.contains("log-denials") && script.contains("profile"), "{shell}");
        }
    }

    #[test]
    fn man_pages_cover_every_subcommand_and_the_exit_statuses() {
        let dir = std::env::temp_dir().join(format!("sbx-man-test-{}", std::process::id()));
        man(&ManArgs { out_dir: Some(dir.clone()) }).expect("man pages");
        let page = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let top = page("sbx-user.1");
        assert!(top.contains(".TH sbx-user 1"), "{top}");
        assert!(top.contains(".SH \"EXIT STATUS\"") && top.contains("125"), "{top}");
        assert!(top.contains(".SH EXAMPLES"), "{top}");
        let run = page("sbx-user-run.1");
        assert!(run.contains("log\\-denials") && run.contains("EXIT STATUS"), "{run}");
        assert!(run.contains(".SH PRECEDENCE") && !run.contains("EXTRA"), "{run}");
        for sub in ["attach", "detach", "update", "events", "verify", "orig-dst", "status", "profiles", "check"] {
            let _ = page(&format!("sbx-user-{sub}.1"));
        }
        assert!(!dir.join("sbx-user-man.1").exists() && !dir.join("sbx-user-help.1").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
