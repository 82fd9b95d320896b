//! The command line: argument parsing, output and exit codes. Each
//! subcommand lives in its own file; the work is done by the library.
//!
//! Exit codes (documented in `--help` and README):
//! - 0: success (valid config / rendered / in sync)
//! - 1: error (invalid config, unreadable files, failed operation, bad usage)
//! - 2: changes pending (`reconcile --dry-run`)

mod generate;
mod history;
mod progress;
mod reconcile;
mod render;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "Exit codes:
  0  success: config valid, render printed, fleet in sync
  1  error: invalid config (file:line:col: key: message), unreadable input, failed operation,
     bad command-line usage
  2  changes pending (reconcile --dry-run)";

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "GitOps reconciliation for Kamal 2 deployments",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the config is and which destination: shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Kamal config file (a destination file `deploy.<dest>.yml` beside it is merged on top).
    #[arg(short = 'c', long = "config-file", default_value = "config/deploy.yml")]
    pub config_file: PathBuf,
    /// Destination (e.g. staging): merges `deploy.<dest>.yml` and reads `.kamal/secrets.<dest>`.
    #[arg(short = 'd', long)]
    pub destination: Option<String>,
    /// Allow `$(command)` substitution in `.kamal/secrets*` (runs the commands locally).
    #[arg(long)]
    pub allow_secret_commands: bool,
    /// Read files the config names outside the project directory (secrets_path,
    /// accessory files). By default every read stays inside it.
    #[arg(long, conflicts_with = "untrusted")]
    pub allow_outside_reads: bool,
    /// Treat the repository as hostile, as `berth run` does (a CI job on pull
    /// requests): nothing it names runs here — no `$(…)` secrets, hooks or
    /// ssh.proxy_command — and no read leaves the project directory.
    #[arg(long, conflicts_with = "allow_secret_commands")]
    pub untrusted: bool,
    /// Refuse a `$VAR` in `.kamal/secrets*` that the environment does not
    /// set (as `berth run` always does). Without it the value is empty, as
    /// in Kamal, with a warning naming file:line and the variable.
    #[arg(long)]
    pub strict_secrets: bool,
    /// The age key file that decrypts SOPS-encrypted `.kamal/secrets*`.
    #[arg(long, env = "SOPS_AGE_KEY_FILE")]
    pub age_key_file: Option<PathBuf>,
}

impl ConfigArgs {
    /// Where the config's files may be read from, and whether it is trusted.
    pub fn checkout(&self) -> anyhow::Result<crate::checkout::Checkout> {
        use crate::checkout::Checkout;
        let root = crate::config::project_root(&self.config_file);
        Ok(if self.allow_outside_reads {
            Checkout::unconfined()
        } else if self.untrusted {
            Checkout::untrusted(&root)?
        } else {
            Checkout::confined(&root)?
        })
    }

    /// The age keys of `--age-key-file`, if given.
    pub fn age_keys(&self) -> anyhow::Result<Option<crate::config::sops::AgeKeys>> {
        self.age_key_file
            .as_deref()
            .map(crate::config::sops::AgeKeys::load)
            .transpose()
            .map_err(anyhow::Error::msg)
    }

    pub fn secret_commands(&self) -> crate::config::secrets::Commands {
        use crate::config::secrets::Commands;
        if self.allow_secret_commands {
            Commands::Run
        } else {
            Commands::Refuse
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a Kamal config (and berth's `x-berth` block) without touching any host.
    #[command(after_help = EXIT_CODES)]
    Validate(validate::Args),
    /// Print, per host, the containers and commands Kamal would run for this config.
    #[command(after_help = EXIT_CODES)]
    Render(render::Args),
    /// Observe every host over SSH and plan what converges the fleet (`--dry-run`).
    #[command(after_help = EXIT_CODES)]
    Reconcile(reconcile::Args),
    /// Keep a fleet equal to a Git repo: poll, react to webhooks, converge, export metrics.
    Run(Box<run::Args>),
    /// What `berth run` did: cycles and drift episodes from its history database.
    History(history::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write one page per command into `--dir`.
    Man(generate::ManArgs),
}

/// How a command ended, as its exit code: the one place the codes are
/// defined (documented in `--help`, README and docs/exit-codes.md). An
/// `Err` from a command is [`ExitStatus::Failure`], printed by `main`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: valid, rendered, in sync, applied.
    Success,
    /// 1: an error — invalid config, unreachable host, failed apply, bad
    /// usage (clap's own 2 would read as "changes pending").
    Failure,
    /// 2: `reconcile --dry-run` found changes to make.
    ChangesPending,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::ChangesPending => 2,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        ExitCode::from(s.code())
    }
}

pub fn main() -> ExitCode {
    // clap exits 2 on a usage error; 2 means "changes pending" here, so a
    // typo in a CI job must not read as a plan.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitStatus::Failure
            } else {
                ExitStatus::Success
            }
            .into();
        }
    };
    // The one-shot commands log only when asked (`RUST_LOG`, to stderr);
    // `berth run` sets up its own (format, default level).
    if !matches!(cli.command, Command::Run(_)) && std::env::var_os("RUST_LOG").is_some() {
        run::init_logging(run::LogFormat::Text);
    }
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Render(args) => render::run(&args),
        Command::Reconcile(args) => reconcile::run(&args),
        Command::Run(args) => run::run(&args),
        Command::History(args) => history::run(&args),
        Command::Completions(args) => generate::completions(&args),
        Command::Man(args) => generate::man(&args),
    };
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {}", printable(&format!("{e:#}")));
            ExitStatus::Failure.into()
        }
    }
}

pub(crate) use crate::config::process_env;

/// A `--known-hosts` file that cannot be read would make every host fail
/// with "host key verification failed": say what is wrong instead.
pub(crate) fn check_known_hosts(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("--known-hosts {}: cannot read: {e}", path.display())),
        Ok(_) => anyhow::bail!("--known-hosts {}: not a regular file", path.display()),
        Err(e) => anyhow::bail!("--known-hosts {}: {e}", path.display()),
    }
}

/// Text from a repository made safe for a terminal: control characters
/// other than line breaks and tabs (an ESC starting a terminal escape
/// sequence, a carriage return rewriting a line) are shown as `\u{1b}`.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Write to stdout. A closed pipe (`berth render | head`) is the reader's
/// choice, not an error: no panic, and an apply in progress goes on.
pub(crate) fn out(text: &str) {
    use std::io::Write;
    let text = printable(text);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Warn (stderr) about each `$VAR` of the secrets that the environment did
/// not set: its value is empty, as in Kamal; `--strict-secrets` refuses.
pub(crate) fn warn_unset(secrets: &crate::config::secrets::Secrets) {
    for u in secrets.unset() {
        eprintln!(
            "{}",
            printable(&format!(
                "warning: {u}: its value is empty (--strict-secrets refuses this; berth run always does)"
            ))
        );
    }
}

/// Load a config (and its secrets) and render the desired state, as the
/// subcommands do (for benchmarks and embedding).
pub fn load_desired_for(
    config_file: &std::path::Path,
    destination: Option<&str>,
) -> anyhow::Result<(crate::config::Config, crate::desired::Desired)> {
    render::load_desired(
        &ConfigArgs {
            config_file: config_file.to_path_buf(),
            destination: destination.map(str::to_string),
            allow_secret_commands: false,
            allow_outside_reads: false,
            untrusted: false,
            strict_secrets: false,
            age_key_file: None,
        },
        None,
        None,
    )
}
