//! `apply::scripts`: the constant `sh` scripts apply runs on hosts
//! (`scripts/*.sh`, checked by `shellcheck` in CI), the typed arguments
//! each one reads and the exit codes it names.
//!
//! A script never changes per call: every config value reaches it as a
//! positional argument quoted by [`crate::shell`], built by one `argv`
//! method per script so the order is written down once, beside the
//! `$1…$n` it fills. Secrets never go in arguments (visible in `ps`): they
//! go on stdin.

use crate::desired::ProxyRoute;

/// Shared helpers (`api`, `apipost`), prepended to the scripts that use them.
macro_rules! with_api {
    ($file:literal) => {
        concat!(include_str!("scripts/api.sh"), include_str!($file))
    };
}

pub const WRITE_FILE: &str = include_str!("scripts/write_file.sh");
pub const AUDIT: &str = include_str!("scripts/audit.sh");
pub const LOCK: &str = include_str!("scripts/lock.sh");
pub const LOCK_DETAILS: &str = include_str!("scripts/lock_details.sh");
pub const PROXY_BOOT_CONFIG: &str = include_str!("scripts/proxy_boot_config.sh");
pub const PREP: &str = with_api!("scripts/prep.sh");
pub const BOOT: &str = with_api!("scripts/boot.sh");
pub const FINISH: &str = with_api!("scripts/finish.sh");

/// `sh -c <script> <$0> <args…>`.
pub fn sh(script: &str, name: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), name.into()];
    argv.extend(args);
    argv
}

/// [`PREP`]'s arguments: per host, the `kamal` network, the registry login
/// (skipped when a pull succeeds without it) and, where the app boots, the
/// pull with Kamal's check of the image's `service` label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrepArgs {
    /// `$1` registry server; empty: no login.
    pub server: String,
    /// `$2` registry user (the password is stdin).
    pub user: String,
    /// `$3` the image to pull; empty: the app does not boot here.
    pub image: String,
    /// `$4` the `service` label the image must carry.
    pub service: String,
    /// `$5` the audit log.
    pub log: String,
    /// `$6` the audit line for the pull.
    pub line: String,
    /// `$7` `repository@sha256:…` to pull instead of the tag and tag as
    /// `$3` (`x-berth.image_digest`); empty: pull the tag.
    pub pinned: String,
}

impl PrepArgs {
    pub fn argv(&self) -> Vec<String> {
        sh(
            PREP,
            "berth-prep",
            [
                &self.server,
                &self.user,
                &self.image,
                &self.service,
                &self.log,
                &self.line,
                &self.pinned,
            ]
            .map(Clone::clone),
        )
    }
}

/// How [`PREP`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepExit {
    Ok,
    /// 10: the `kamal` network could not be created.
    Network,
    /// 11: `docker login` failed.
    Login,
    /// 12: the pull failed.
    Pull,
    /// 13: the image's `service` label is another service's.
    Label,
    /// 14: the image tagged for the version is not the pinned digest.
    Digest,
    /// Anything else (a signal, a shell error).
    Other,
}

impl PrepExit {
    pub fn from_code(code: Option<i32>) -> PrepExit {
        match code {
            Some(0) => PrepExit::Ok,
            Some(10) => PrepExit::Network,
            Some(11) => PrepExit::Login,
            Some(12) => PrepExit::Pull,
            Some(13) => PrepExit::Label,
            Some(14) => PrepExit::Digest,
            _ => PrepExit::Other,
        }
    }
}

/// `kamal-proxy deploy` as [`BOOT`] runs it once the new container's id is
/// known: `docker exec kamal-proxy kamal-proxy deploy <service>
/// --target=<id>:<port> <flags…>`, the same argv as
/// [`ProxyRoute::deploy_argv`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyDeploy {
    pub service: String,
    pub port: String,
    pub flags: Vec<String>,
}

impl From<&ProxyRoute> for ProxyDeploy {
    fn from(r: &ProxyRoute) -> ProxyDeploy {
        ProxyDeploy {
            service: r.service.clone(),
            port: r.app_port.clone(),
            flags: r.deploy_flags.clone(),
        }
    }
}

/// [`BOOT`]'s arguments: one app container's boot in one round trip: env
/// file (stdin, 0600), a clashing same-name container renamed, audit,
/// `docker run` (or `docker start` of the existing container), health
/// (`kamal-proxy deploy`, or the container's state within the timeout),
/// then the old container stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootArgs {
    /// `$1` the env file to write (its contents are stdin).
    pub env_file: String,
    /// `$2` the container.
    pub name: String,
    /// `$3` rename a same-name container to this first; empty: none.
    pub renamed: String,
    /// `$4` the audit log.
    pub log: String,
    /// `$5` the audit line for the boot.
    pub booted_line: String,
    /// `$6` the audit line for the rename.
    pub renamed_line: String,
    /// `$7` seconds to wait for health without the proxy.
    pub timeout_secs: u64,
    /// `$8` seconds a running container must stay up (`readiness_delay`).
    pub delay_secs: u64,
    /// `$9` the `docker run` command, one shell string (`shell::join`) the
    /// script evaluates back into the same words; `None`: `docker start`
    /// the existing container.
    pub run: Option<String>,
    /// `$10` the container to stop once healthy; empty: none.
    pub old: String,
    /// `$11` `docker stop -t` seconds; `None`: docker's default.
    pub stop_timeout: Option<u64>,
    /// `$12…`: service, port and flags of `kamal-proxy deploy`; absent: the
    /// role has no proxy.
    pub proxy: Option<ProxyDeploy>,
}

impl BootArgs {
    pub fn argv(&self) -> Vec<String> {
        let mut args = vec![
            self.env_file.clone(),
            self.name.clone(),
            self.renamed.clone(),
            self.log.clone(),
            self.booted_line.clone(),
            self.renamed_line.clone(),
            self.timeout_secs.to_string(),
            self.delay_secs.to_string(),
            self.run.clone().unwrap_or_default(),
            self.old.clone(),
            self.stop_timeout.map(|t| t.to_string()).unwrap_or_default(),
        ];
        if let Some(p) = &self.proxy {
            args.push(p.service.clone());
            args.push(p.port.clone());
            args.extend(p.flags.iter().cloned());
        }
        sh(BOOT, "berth-boot", args)
    }
}

/// How [`BOOT`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootExit {
    /// Healthy, and the old container stopped.
    Ok,
    /// 20: the env file could not be written.
    EnvFile,
    /// 21: the same-name container could not be renamed.
    Rename,
    /// 22: `docker run` / `docker start` failed.
    Run,
    /// 23: `kamal-proxy deploy` refused the new container (unhealthy); it
    /// is left running for berth to stop.
    ProxyDeploy,
    /// 24: not running/healthy within the timeout; left for berth to stop.
    NotReady,
    Other,
}

impl BootExit {
    pub fn from_code(code: Option<i32>) -> BootExit {
        match code {
            Some(0) => BootExit::Ok,
            Some(20) => BootExit::EnvFile,
            Some(21) => BootExit::Rename,
            Some(22) => BootExit::Run,
            Some(23) => BootExit::ProxyDeploy,
            Some(24) => BootExit::NotReady,
            _ => BootExit::Other,
        }
    }
}

/// [`FINISH`]'s arguments: after the app booted on a host: audit, tag
/// `latest`, prune stopped containers beyond `retain_containers`, then the
/// images none of the remaining containers use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FinishArgs {
    /// `$1` the audit log.
    pub log: String,
    /// `$2` the audit line for the tag.
    pub tagged_line: String,
    /// `$3` the image booted.
    pub image: String,
    /// `$4` `<repository>:latest`.
    pub latest: String,
    /// `$5` stopped containers kept.
    pub retain: u32,
    /// `$6` the `service` label.
    pub service: String,
    /// `$7` the audit line for the prune.
    pub pruned_line: String,
}

impl FinishArgs {
    pub fn argv(&self) -> Vec<String> {
        sh(
            FINISH,
            "berth-finish",
            [
                self.log.clone(),
                self.tagged_line.clone(),
                self.image.clone(),
                self.latest.clone(),
                self.retain.to_string(),
                self.service.clone(),
                self.pruned_line.clone(),
            ],
        )
    }
}

/// How [`FINISH`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishExit {
    Ok,
    /// 30: tagging `latest` failed.
    Tag,
    Other,
}

impl FinishExit {
    pub fn from_code(code: Option<i32>) -> FinishExit {
        match code {
            Some(0) => FinishExit::Ok,
            Some(30) => FinishExit::Tag,
            _ => FinishExit::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names a script gives its positional arguments, in order, from
    /// the `name=$n` assignments on its first lines.
    fn names(script: &str, first: &str) -> Vec<String> {
        script
            .lines()
            .skip_while(|l| !l.starts_with(first))
            .take_while(|l| l.contains("=$"))
            .flat_map(|l| l.split("; "))
            .filter_map(|a| a.split_once("=$"))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// A field added to a struct but not to its script (or the reverse)
    /// shows up here; the names are the ones the fields' docs give.
    #[test]
    fn each_script_reads_the_arguments_its_struct_writes() {
        let cases = [
            (
                names(PREP, "server="),
                PrepArgs::default().argv(),
                &[
                    "server", "user", "image", "service", "log", "line", "pinned",
                ][..],
            ),
            (
                names(BOOT, "f="),
                BootArgs::default().argv(),
                &[
                    "f",
                    "name",
                    "renamed",
                    "log",
                    "booted",
                    "renamedline",
                    "timeout",
                    "delay",
                    "run",
                    "old",
                    "stop_t",
                ][..],
            ),
            (
                names(FINISH, "log="),
                FinishArgs::default().argv(),
                &[
                    "log", "line", "image", "latest", "retain", "service", "pruned",
                ][..],
            ),
        ];
        for (read, argv, expected) in cases {
            assert_eq!(read, expected);
            // `sh -c <script> <$0>`, then one word per name.
            assert_eq!(argv.len() - 4, read.len(), "{read:?}");
        }
    }
}
