//! `berth-testbed`: bring a local fleet up and down by hand (the demo and
//! debugging); tests use the same `berth_testbed` library through fixtures.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_testbed::{self as testbed, images};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-testbed",
    about = "A local fleet of real hosts: netns + sshd + dockerd, a registry, a Git repo"
)]
struct Cli {
    /// Testbed slot (subnet `10.210.<slot>.0/24`); tests use slots from 1 up.
    #[arg(long, global = true, default_value_t = 0)]
    slot: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up N hosts (idempotent; anything else in the slot is torn down first).
    Up {
        #[arg(default_value_t = 3)]
        hosts: usize,
    },
    /// Tear down everything in the slot.
    Down,
    /// Show whether each part answers; exit 1 if any does not.
    Status,
    /// Build the test images (in process) and push them to the registry.
    Images {
        /// The static kamal-proxy stand-in binary to package as basecamp/kamal-proxy.
        #[arg(long)]
        proxy_binary: Option<PathBuf>,
    },
    /// Print shell exports describing the testbed (registry, hosts, ssh files).
    Env,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-testbed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, testbed::TestbedError> {
    match cli.command {
        Cmd::Up { hosts } => {
            let t = std::time::Instant::now();
            let tb = testbed::up(cli.slot, hosts)?;
            println!(
                "testbed slot {} up: {} hosts in {:.1}s",
                tb.slot,
                tb.hosts.len(),
                t.elapsed().as_secs_f64()
            );
            for h in &tb.hosts {
                println!("  {} {}", h.name, h.addr);
            }
            println!("  registry {}", tb.registry());
        }
        Cmd::Down => {
            testbed::down(cli.slot)?;
            let left = testbed::leftovers(cli.slot);
            if !left.is_empty() {
                for l in left {
                    eprintln!("left behind: {l}");
                }
                return Ok(ExitCode::FAILURE);
            }
            println!("testbed slot {} down", cli.slot);
        }
        Cmd::Status => {
            let tb = testbed::Testbed::attach(cli.slot)?;
            let mut ok = true;
            for (part, up) in tb.status() {
                ok &= up;
                println!("{} {part}", if up { "up  " } else { "DOWN" });
            }
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Images { proxy_binary } => {
            let tb = testbed::Testbed::attach(cli.slot)?;
            let set = images::ImageSet {
                proxy_binary: proxy_binary.as_deref(),
            };
            for image in images::push(&tb, &set)? {
                println!("pushed {image}");
            }
        }
        Cmd::Env => {
            let tb = testbed::Testbed::attach(cli.slot)?;
            let hosts: Vec<String> = tb.hosts.iter().map(|h| h.addr.to_string()).collect();
            println!("export BERTH_TESTBED_REGISTRY={}", tb.registry());
            println!("export BERTH_TESTBED_HOSTS='{}'", hosts.join(" "));
            println!("export BERTH_TESTBED_SSH_KEY={}", tb.ssh_key().display());
            println!(
                "export BERTH_TESTBED_KNOWN_HOSTS={}",
                tb.known_hosts().display()
            );
            println!("export BERTH_TESTBED_GIT={}", tb.git_file_url());
        }
    }
    Ok(ExitCode::SUCCESS)
}
