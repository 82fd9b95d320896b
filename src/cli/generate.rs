//! `berth completions SHELL` and `berth man [--dir DIR]`: shell completion
//! scripts (`clap_complete`) and roff man pages (`clap_mangen`), generated
//! from the same clap definition the parser uses, so they cannot drift from
//! the real flags.
//!
//! `berth man` prints `berth.1` on stdout; with `--dir DIR` it writes
//! `berth.1` and one page per subcommand (`berth-reconcile.1`, …) into DIR
//! (created if missing) and lists the files written. Output is rendered into
//! memory first, so a closed pipe (`berth man | head`) is an ordinary error,
//! never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

#[derive(clap::Args, Debug)]
#[command(after_help = "Install, for example:
  berth completions bash > /etc/bash_completion.d/berth
  berth completions zsh  > \"${fpath[1]}/_berth\"
  berth completions fish > ~/.config/fish/completions/berth.fish")]
pub struct CompletionsArgs {
    /// The shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write berth.1 and one page per subcommand (berth-reconcile.1, ...) into
    /// this directory (created if missing) instead of printing berth.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command tree the man pages describe: berth's own, without clap's
/// implicit `help` subcommand (as `clap_mangen::generate_to` does).
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Sets the subcommands' display names (`berth-reconcile`) and bin names.
    cmd.build();
    cmd
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    // With `help`: `berth help <TAB>` is a real command line.
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "berth", &mut buf);
    buf
}

/// One man page; every page's footer names berth and its version (clap
/// gives subcommands no version of their own).
fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).source(format!("berth {}", env!("CARGO_PKG_VERSION")))
}

/// The roff source of one man page.
fn render(man: &clap_mangen::Man) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    Ok(buf)
}

/// The roff source of `berth.1`.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    render(&page(man_command()))
}

/// Write `berth.1` and a page per (non-hidden) subcommand, recursively, into
/// `dir`; returns the files written, the top-level page first.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    write_tree(man_command(), dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let man = page(cmd);
    let path = dir.join(man.get_filename());
    std::fs::write(&path, render(&man)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in subcommands {
        write_tree(sub, dir, written)?;
    }
    Ok(())
}

fn stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<super::ExitStatus> {
    stdout(&completion_script(args.shell))?;
    Ok(super::ExitStatus::Success)
}

pub fn man(args: &ManArgs) -> anyhow::Result<super::ExitStatus> {
    match &args.dir {
        None => stdout(&man_page()?)?,
        Some(dir) => {
            let list: String = write_man_pages(dir)?
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            stdout(list.as_bytes())?;
        }
    }
    Ok(super::ExitStatus::Success)
}
