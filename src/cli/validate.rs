//! `berth validate`: load and check a config; exit 0 valid, 1 invalid.

use super::{ConfigArgs, Output, process_env};
use crate::config::{self, LoadError, LoadOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let opts = LoadOptions {
        config_file: &args.config.config_file,
        destination: args.config.destination.as_deref(),
        env: &process_env,
    };
    match config::load(&opts) {
        Ok(cfg) => {
            match args.output {
                Output::Text => super::out(&format!(
                    "{}: valid ({} role(s), {} accessory(ies), {} host(s))\n",
                    args.config.config_file.display(),
                    cfg.roles.len(),
                    cfg.accessories.len(),
                    cfg.all_hosts().len()
                )),
                Output::Json => super::out(&format!(
                    "{}\n",
                    serde_json::json!({"valid": true, "errors": [], "roles": cfg.roles.len(), "hosts": cfg.all_hosts().len()})
                )),
            }
            Ok(0)
        }
        Err(e @ LoadError::Io { .. }) => Err(e.into()),
        Err(LoadError::Invalid(errors)) => {
            match args.output {
                Output::Text => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s)", errors.len());
                }
                Output::Json => {
                    let list: Vec<_> = errors
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "file": e.mark.file.display().to_string(),
                                "line": e.mark.line,
                                "column": e.mark.col,
                                "key": e.path,
                                "message": e.message,
                            })
                        })
                        .collect();
                    super::out(&format!(
                        "{}\n",
                        serde_json::json!({"valid": false, "errors": list})
                    ));
                }
            }
            Ok(1)
        }
    }
}
