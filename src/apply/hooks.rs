//! Kamal's hooks, run locally from the config's `hooks_path` with Kamal's
//! `KAMAL_*` environment: `pre-deploy` (a failure aborts before any host is
//! touched), `pre-app-boot` / `post-app-boot` around each batch of hosts, and
//! `post-deploy` (with `KAMAL_RUNTIME`).

use std::path::{Path, PathBuf};

use crate::desired::Desired;

#[derive(Clone, Debug)]
pub struct Hooks {
    /// `<project root>/<hooks_path>`.
    pub dir: PathBuf,
    /// Where hooks run (the project root, as `kamal` would).
    pub cwd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("hook {name} failed: {message}")]
pub struct HookError {
    pub name: String,
    pub message: String,
}

impl Hooks {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Run hook `name` if it exists. `hosts` is the comma-joined host list.
    pub async fn run(
        &self,
        name: &str,
        desired: &Desired,
        hosts: &[String],
        extra: &[(&str, String)],
    ) -> Result<bool, HookError> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(false);
        }
        let out = tokio::process::Command::new(&path)
            .current_dir(&self.cwd)
            .envs(env(desired, hosts))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .output()
            .await
            .map_err(|e| HookError {
                name: name.into(),
                message: format!("cannot run {}: {e}", path.display()),
            })?;
        if !out.status.success() {
            let mut message = format!("{} exited with {}", display(&path), out.status);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                message.push_str(&format!(": {}", stderr.trim()));
            }
            return Err(HookError {
                name: name.into(),
                message,
            });
        }
        Ok(true)
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Kamal's hook environment (`Kamal::Tags` plus the command details).
pub fn env(desired: &Desired, hosts: &[String]) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "KAMAL_RECORDED_AT".to_string(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        ("KAMAL_PERFORMER".into(), "berth".into()),
        ("KAMAL_VERSION".into(), desired.version.clone()),
        (
            "KAMAL_SERVICE_VERSION".into(),
            format!(
                "{}@{}",
                desired.service,
                desired.version.chars().take(7).collect::<String>()
            ),
        ),
        ("KAMAL_SERVICE".into(), desired.service.clone()),
        ("KAMAL_HOSTS".into(), hosts.join(",")),
        ("KAMAL_LOCK".into(), "true".into()),
        ("KAMAL_COMMAND".into(), "deploy".into()),
    ];
    if let Some(d) = &desired.destination {
        v.push(("KAMAL_DESTINATION".into(), d.clone()));
    }
    v
}
