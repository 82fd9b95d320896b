//! `kamal`: Kamal 2's on-host conventions, as code — the names, paths and
//! labels a fleet deployed by `kamal deploy` has, so berth adopts it and the
//! `kamal` CLI keeps working on a fleet berth manages (the "On-host
//! conventions" section of ARCHITECTURE.md). A leaf: pure functions of the
//! service, destination, role and version.

/// kamal-proxy's container name on every host (also its binary's name).
pub const PROXY_CONTAINER: &str = "kamal-proxy";
/// The Docker network Kamal puts every container on.
pub const NETWORK: &str = "kamal";

/// `<service>[-<destination>]`: names the env directory, lock and audit log.
pub fn service_and_destination(service: &str, destination: Option<&str>) -> String {
    match destination {
        Some(d) => format!("{service}-{d}"),
        None => service.to_string(),
    }
}

/// An app container: `<service>-<role>[-<destination>]-<version>`.
pub fn app_container(
    service: &str,
    role: &str,
    destination: Option<&str>,
    version: &str,
) -> String {
    match destination {
        Some(d) => format!("{service}-{role}-{d}-{version}"),
        None => format!("{service}-{role}-{version}"),
    }
}

/// Kamal's deploy lock directory, relative to the SSH user's home.
pub fn lock_dir(service: &str, destination: Option<&str>) -> String {
    format!(
        ".kamal/lock-{}",
        service_and_destination(service, destination)
    )
}

/// The audit log, relative to the SSH user's home.
pub fn audit_log(service: &str, destination: Option<&str>) -> String {
    format!(
        ".kamal/{}-audit.log",
        service_and_destination(service, destination)
    )
}

/// A role's secret env file, relative to the SSH user's home.
pub fn role_env_file(service: &str, destination: Option<&str>, role: &str) -> String {
    format!(
        ".kamal/apps/{}/env/roles/{role}.env",
        service_and_destination(service, destination)
    )
}

/// An accessory's secret env file, relative to the SSH user's home.
/// An accessory's container (and `service` label): `<service>-<name>`,
/// without the destination, as Kamal names it.
pub fn accessory_container(service: &str, accessory: &str) -> String {
    format!("{service}-{accessory}")
}

/// Where Kamal keeps an app's accessory env files: one per accessory it
/// booted on the host, which is how berth recognises a removed one.
pub fn accessory_env_dir(service: &str, destination: Option<&str>) -> String {
    format!(
        ".kamal/apps/{}/env/accessories",
        service_and_destination(service, destination)
    )
}

pub fn accessory_env_file(service: &str, destination: Option<&str>, accessory: &str) -> String {
    format!(
        ".kamal/apps/{}/env/accessories/{accessory}.env",
        service_and_destination(service, destination)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Kamal 2.11 wrote on the test hosts (see tests/golden).
    #[test]
    fn names_and_paths_are_kamals() {
        assert_eq!(app_container("demo", "web", None, "v1"), "demo-web-v1");
        assert_eq!(
            app_container("demo", "web", Some("staging"), "v1"),
            "demo-web-staging-v1"
        );
        assert_eq!(lock_dir("demo", None), ".kamal/lock-demo");
        assert_eq!(lock_dir("demo", Some("prod")), ".kamal/lock-demo-prod");
        assert_eq!(
            audit_log("demo", Some("prod")),
            ".kamal/demo-prod-audit.log"
        );
        assert_eq!(
            role_env_file("demo", None, "web"),
            ".kamal/apps/demo/env/roles/web.env"
        );
        assert_eq!(
            accessory_env_file("demo", Some("prod"), "db"),
            ".kamal/apps/demo-prod/env/accessories/db.env"
        );
    }
}
