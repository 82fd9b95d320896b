//! `apply::steps`: what one action does on one host — prep, accessory,
//! proxy, app boot/start/stop/route, orphan removal, finish — each a few
//! remote round trips at most, the scripts' arguments built by
//! [`super::scripts`].

use super::scripts::{
    BootArgs, BootExit, FinishArgs, FinishExit, PROXY_BOOT_CONFIG, PrepArgs, PrepExit, ProxyDeploy,
};
use super::{ApplyContext, ApplyError, Policy, audit_line_at, audit_log, strings, units};
use crate::desired::{AccessoryUnit, AppUnit, Desired, PROXY_CONTAINER};
use crate::plan::{Action, ActionKind, Change, Plan, Unit};

/// An image reference without its tag (`reg:5000/demo:v1` → `reg:5000/demo`).
fn repository(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

/// Network, login and, where the app boots (`boots`), the pull.
pub(super) async fn prep(ctx: &ApplyContext<'_>, h: &str, boots: bool) -> Result<(), ApplyError> {
    let image = if boots {
        ctx.desired.image.clone()
    } else {
        String::new()
    };
    if boots {
        ctx.say(h, &format!("pulling {image}"));
    }
    let (server, user, password) = match &ctx.registry {
        Some(r) => (
            r.server.clone(),
            r.username.clone(),
            r.password.expose().as_bytes().to_vec(),
        ),
        None => (String::new(), String::new(), Vec::new()),
    };
    let args = PrepArgs {
        server: server.clone(),
        user,
        image: image.clone(),
        service: ctx.desired.service.clone(),
        log: audit_log(ctx.desired),
        line: ctx.audit_line(
            None,
            &format!("Pulled image with version {}", ctx.desired.version),
        ),
        pinned: match (&ctx.desired.image_digest, boots) {
            (Some(d), true) => format!("{}@{d}", repository(&image)),
            _ => String::new(),
        },
    };
    let out = ctx.conns.run_with_stdin(h, &args.argv(), &password).await?;
    let message = out.stderr.trim().to_string();
    match PrepExit::from_code(out.status) {
        PrepExit::Ok => Ok(()),
        PrepExit::Pull | PrepExit::Label | PrepExit::Digest => Err(ApplyError::Pull {
            host: h.to_string(),
            image,
            message,
        }),
        PrepExit::Login => Err(ApplyError::Step {
            host: h.to_string(),
            what: format!("docker login {server}"),
            message,
        }),
        PrepExit::Network | PrepExit::Other => Err(ApplyError::Step {
            host: h.to_string(),
            what: "creating the kamal network".into(),
            message,
        }),
    }
}

/// Where the app booted: audit, `latest` tag, prune.
pub(super) async fn finish(ctx: &ApplyContext<'_>, h: &str) -> Result<(), ApplyError> {
    let image = &ctx.desired.image;
    let args = FinishArgs {
        log: audit_log(ctx.desired),
        tagged_line: ctx.audit_line(None, &format!("Tagging {image} as the latest image")),
        image: image.clone(),
        latest: format!(
            "{}:latest",
            image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r)
        ),
        retain: ctx.policy.retain_containers,
        service: ctx.desired.service.clone(),
        pruned_line: ctx.audit_line(None, "Pruned containers"),
    };
    let out = ctx.run(h, args.argv()).await?;
    match FinishExit::from_code(out.status) {
        FinishExit::Ok => Ok(()),
        // One message for both: the tag is the only step that can fail.
        FinishExit::Tag | FinishExit::Other => Err(ApplyError::Step {
            host: h.to_string(),
            what: "tagging and pruning".into(),
            message: out.stderr.trim().to_string(),
        }),
    }
}

pub(super) async fn accessory(ctx: &ApplyContext<'_>, a: &Action) -> Result<(), ApplyError> {
    let Unit::Accessory { name } = &a.unit else {
        return Ok(());
    };
    let Some(acc) =
        units(ctx.desired, &a.host).and_then(|u| u.accessories.iter().find(|x| x.name == *name))
    else {
        return Ok(());
    };
    let h = &a.host;
    match a.kind {
        ActionKind::Start => {
            ctx.say(h, &format!("starting accessory {}", acc.container_name));
            ctx.run_ok(
                h,
                "starting the accessory",
                strings(&["docker", "start", &acc.container_name]),
            )
            .await?;
        }
        ActionKind::WriteEnvFile => {
            ctx.say(h, &format!("rewriting {}", acc.env_file.path));
            ctx.write_env_file(h, &acc.env_file).await?;
        }
        _ => {
            if a.kind == ActionKind::Reboot {
                ctx.say(
                    h,
                    &format!(
                        "rebooting accessory {} (its spec changed)",
                        acc.container_name
                    ),
                );
                ctx.run(h, strings(&["docker", "stop", &acc.container_name]))
                    .await?;
                ctx.run_ok(
                    h,
                    "removing the accessory",
                    strings(&["docker", "rm", &acc.container_name]),
                )
                .await?;
            } else {
                ctx.say(h, &format!("booting accessory {}", acc.container_name));
            }
            boot_accessory(ctx, h, acc).await?;
            ctx.audit(h, None, &format!("Booted {} accessory", acc.name))
                .await?;
        }
    }
    Ok(())
}

async fn boot_accessory(
    ctx: &ApplyContext<'_>,
    h: &str,
    acc: &AccessoryUnit,
) -> Result<(), ApplyError> {
    for (dir, _mode) in &acc.directories {
        ctx.run_ok(
            h,
            "creating accessory directories",
            strings(&["mkdir", "-p", dir]),
        )
        .await?;
    }
    for file in &acc.files {
        // Read (and confined) when the desired state was loaded; checked
        // before the lock (`preflight`), so this cannot fail half-way.
        let Some(contents) = &file.contents else {
            return Err(ApplyError::Step {
                host: h.to_string(),
                what: format!("writing accessory file {}", file.local),
                message: "the file was not loaded".into(),
            });
        };
        ctx.write_file(
            h,
            &file.remote,
            file.mode.as_deref().unwrap_or("755"),
            contents,
        )
        .await?;
    }
    ctx.write_env_file(h, &acc.env_file).await?;
    ctx.run_ok(h, "running the accessory", acc.run_argv.clone())
        .await?;
    Ok(())
}

pub(super) async fn proxy(
    ctx: &ApplyContext<'_>,
    a: &Action,
    plan: &Plan,
) -> Result<(), ApplyError> {
    let h = &a.host;
    let Some(unit) = units(ctx.desired, h) else {
        return Ok(());
    };
    let Some(p) = &unit.proxy else { return Ok(()) };
    match a.kind {
        ActionKind::Start => {
            ctx.say(h, "starting kamal-proxy");
            ctx.run_ok(
                h,
                "starting kamal-proxy",
                strings(&["docker", "container", "start", PROXY_CONTAINER]),
            )
            .await?;
        }
        _ => {
            if a.kind == ActionKind::Reboot {
                // As `kamal proxy reboot`: the routes survive in the
                // kamal-proxy-config volume and are re-deployed below.
                ctx.say(h, "rebooting kamal-proxy (its boot options changed)");
                ctx.run(
                    h,
                    strings(&["docker", "container", "stop", PROXY_CONTAINER]),
                )
                .await?;
                ctx.run_ok(
                    h,
                    "removing kamal-proxy",
                    strings(&["docker", "container", "rm", PROXY_CONTAINER]),
                )
                .await?;
            }
            ctx.say(h, "booting kamal-proxy");
            if p.boot_config {
                ctx.run_ok(
                    h,
                    "booting kamal-proxy",
                    strings(&["sh", "-c", PROXY_BOOT_CONFIG]),
                )
                .await?;
            } else {
                ctx.run_ok(
                    h,
                    "creating directories",
                    strings(&["mkdir", "-p", ".kamal/proxy/apps-config"]),
                )
                .await?;
                ctx.run_ok(h, "booting kamal-proxy", p.run_argv.clone())
                    .await?;
            }
            // A new proxy knows no routes: route the apps that stay as they are.
            for app in &unit.apps {
                let touched = plan
                    .actions
                    .iter()
                    .any(|x| x.host == *h && x.container == app.container_name);
                if app.proxy.is_some() && !touched {
                    route(ctx, h, app).await?;
                }
            }
        }
    }
    Ok(())
}

/// Point the proxy at an existing, running app container.
async fn route(ctx: &ApplyContext<'_>, h: &str, app: &AppUnit) -> Result<(), ApplyError> {
    let Some(r) = &app.proxy else { return Ok(()) };
    let id = ctx
        .run_ok(
            h,
            "finding the container",
            strings(&["docker", "inspect", "-f", "{{.Id}}", &app.container_name]),
        )
        .await?;
    let id: String = id.trim().chars().take(12).collect();
    ctx.say(
        h,
        &format!("routing {} to {}", r.service, app.container_name),
    );
    ctx.run_ok(h, "kamal-proxy deploy", r.deploy_argv(&id))
        .await?;
    Ok(())
}

pub(super) async fn app(ctx: &ApplyContext<'_>, a: &Action) -> Result<(), ApplyError> {
    let Unit::App { role } = &a.unit else {
        return Ok(());
    };
    let h = a.host.as_str();
    let Some(app) = units(ctx.desired, h).and_then(|u| u.apps.iter().find(|x| x.role == *role))
    else {
        return Ok(());
    };
    match a.kind {
        ActionKind::WriteEnvFile => {
            ctx.say(h, &format!("{role}: rewriting {}", app.env_file.path));
            ctx.write_env_file(h, &app.env_file).await
        }
        ActionKind::Route => route(ctx, h, app).await,
        ActionKind::Stop => {
            stop(ctx, h, app, &a.container).await?;
            ctx.audit(
                h,
                Some(role),
                &format!("Stopped {} (a version left running)", a.container),
            )
            .await
        }
        ActionKind::Start => {
            let old = a.replaces.as_deref().filter(|o| *o != app.container_name);
            boot(ctx, h, app, old, true).await
        }
        ActionKind::Create | ActionKind::Replace => {
            boot(ctx, h, app, a.replaces.as_deref(), false).await
        }
        _ => Ok(()),
    }
}

/// What differs between two boots of one app: the time, the random
/// names, the container retired.
struct Occasion {
    /// The audit lines' timestamp.
    ts: String,
    /// `--hostname` (`<host[..51]>-<12 hex>`).
    hostname: String,
    /// A same-name container (same version, other spec) is renamed out of
    /// the way to this first, as Kamal does; empty: none.
    renamed: String,
    /// Keeps serving until the new one is healthy, then stopped; empty: none.
    old: String,
    /// `docker start` the existing container instead of `docker run`.
    start_existing: bool,
}

fn boot_args(desired: &Desired, policy: &Policy, app: &AppUnit, o: &Occasion) -> BootArgs {
    let role = Some(app.role.as_str());
    let audit = if o.start_existing {
        format!("Started app version {}", app.version)
    } else {
        format!("Booted app version {}", app.version)
    };
    BootArgs {
        env_file: app.env_file.path.clone(),
        name: app.container_name.clone(),
        renamed: o.renamed.clone(),
        log: audit_log(desired),
        booted_line: audit_line_at(&o.ts, role, &audit),
        renamed_line: audit_line_at(
            &o.ts,
            role,
            &format!("Renaming container {} to {}", app.version, o.renamed),
        ),
        timeout_secs: policy.deploy_timeout.as_secs(),
        delay_secs: policy.readiness_delay.as_secs(),
        run: (!o.start_existing).then(|| crate::shell::join(app.run_argv(Some(&o.hostname)))),
        old: o.old.clone(),
        stop_timeout: app.stop_timeout,
        proxy: app.proxy.as_ref().map(ProxyDeploy::from),
    }
}

/// Boot the desired container of `app` (one round trip, [`BootArgs`]).
async fn boot(
    ctx: &ApplyContext<'_>,
    h: &str,
    app: &AppUnit,
    replaces: Option<&str>,
    start_existing: bool,
) -> Result<(), ApplyError> {
    let role = app.role.as_str();
    let (renamed, old) = match replaces {
        Some(o) if o == app.container_name && !start_existing => {
            let renamed = format!(
                "{}_replaced_{}",
                app.container_name,
                crate::remote::random_hex(16)
            );
            ctx.say(
                h,
                &format!("{role}: renaming {} to {renamed}", app.container_name),
            );
            (renamed.clone(), renamed)
        }
        Some(o) => (String::new(), o.to_string()),
        None => (String::new(), String::new()),
    };
    let verb = if start_existing {
        "starting"
    } else {
        "booting"
    };
    ctx.say(h, &format!("{role}: {verb} {}", app.container_name));
    let occasion = Occasion {
        ts: super::now_rfc3339(),
        hostname: format!(
            "{}-{}",
            h.chars().take(51).collect::<String>().trim_end_matches('.'),
            crate::remote::random_hex(12)
        ),
        renamed,
        old,
        start_existing,
    };
    let args = boot_args(ctx.desired, &ctx.policy, app, &occasion);
    let out = ctx
        .conns
        .run_with_stdin(h, &args.argv(), app.env_file.contents.expose().as_bytes())
        .await?;
    match BootExit::from_code(out.status) {
        BootExit::Ok => {
            ctx.say(h, &format!("{role}: {} is healthy", app.container_name));
            if !args.old.is_empty() {
                ctx.say(h, &format!("{role}: stopped {}", args.old));
            }
            Ok(())
        }
        BootExit::ProxyDeploy => {
            let reason = format!("kamal-proxy: {}", out.stderr.trim());
            unhealthy(ctx, h, app, reason).await
        }
        BootExit::NotReady => unhealthy(ctx, h, app, out.stderr.trim().to_string()).await,
        BootExit::EnvFile | BootExit::Rename | BootExit::Run | BootExit::Other => {
            Err(ApplyError::Step {
                host: h.to_string(),
                what: format!("booting {}", app.container_name),
                message: out.stderr.trim().to_string(),
            })
        }
    }
}

/// The new container failed its health check: fetch its last log lines,
/// stop it (kept for inspection) and report.
async fn unhealthy(
    ctx: &ApplyContext<'_>,
    h: &str,
    app: &AppUnit,
    reason: String,
) -> Result<(), ApplyError> {
    let logs = ctx
        .run(
            h,
            strings(&["docker", "logs", "--tail", "10", &app.container_name]),
        )
        .await
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default();
    ctx.run(h, strings(&["docker", "stop", &app.container_name]))
        .await?;
    Err(ApplyError::Unhealthy {
        host: h.to_string(),
        role: app.role.clone(),
        container: app.container_name.clone(),
        reason,
        logs,
    })
}

async fn stop(ctx: &ApplyContext<'_>, h: &str, app: &AppUnit, old: &str) -> Result<(), ApplyError> {
    ctx.say(h, &format!("{}: stopping {old}", app.role));
    ctx.run(h, app.stop_argv(old)).await?;
    Ok(())
}

/// Remove an orphan container (only planned with `x-berth.prune`).
pub(super) async fn orphan(ctx: &ApplyContext<'_>, a: &Action) -> Result<(), ApplyError> {
    ctx.say(&a.host, &format!("removing orphan {}", a.container));
    ctx.run(&a.host, strings(&["docker", "stop", &a.container]))
        .await?;
    ctx.run_ok(
        &a.host,
        "removing an orphan",
        strings(&["docker", "rm", &a.container]),
    )
    .await?;
    // A removed accessory: its env file goes too (its data stays, as
    // `kamal accessory remove` would ask first).
    if let Some(Change::Orphan {
        env_file: Some(path),
        ..
    }) = a.reasons.first()
    {
        ctx.run_ok(
            &a.host,
            "removing the accessory's env file",
            strings(&["rm", "-f", "--", path]),
        )
        .await?;
    }
    ctx.audit(&a.host, None, &format!("Removed orphan {}", a.container))
        .await
}

#[cfg(test)]
mod tests {
    use super::super::UnknownHosts;
    use super::super::scripts::BOOT;
    use super::*;
    use crate::config::secrets::Secrets;
    use crate::remote::Connections;

    fn web(desired: &Desired) -> &AppUnit {
        desired
            .hosts
            .iter()
            .flat_map(|h| &h.apps)
            .find(|a| a.role == "web")
            .expect("a web role")
    }

    /// A config with every kind of proxy flag, and a role without a proxy.
    fn rich() -> (crate::config::Config, Desired) {
        let y = "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [10.9.0.1]\n  jobs:\n    hosts: [10.9.0.2]\n    cmd: bin/jobs\n    proxy: false\n\
                 proxy:\n  ssl: true\n  hosts: [a.example.test, b.example.test]\n  app_port: 8080\n  path_prefix: /app\n  healthcheck:\n    path: /up\n    interval: 2\n    timeout: 4\n\
                 \x20 buffering:\n    requests: true\n    responses: false\n    memory: 2000000\n    max_request_body: 40000000\n  response_timeout: 20\n  forward_headers: true\n\
                 \x20 logging:\n    request_headers: [X-Request-Id]\n    response_headers: [X-Runtime]\n\
                 deploy_timeout: 40\ndrain_timeout: 5\nreadiness_delay: 3\nregistry:\n  server: reg:5000\n  username: u\n  password: [PW]\nbuilder:\n  arch: amd64\n\
                 env:\n  secret: [DB_PASSWORD]\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("deploy.yml");
        std::fs::write(&file, y).expect("write");
        let env = |_: &str| None;
        let cfg = crate::config::load(&crate::config::LoadOptions {
            config_file: &file,
            destination: None,
            env: &env,
            files: &crate::checkout::Checkout::unconfined(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let secrets = Secrets::from_pairs([("PW", "x"), ("DB_PASSWORD", "s3cret")]);
        let desired = crate::desired::render(
            &cfg,
            &crate::desired::RenderOptions {
                version: "v2",
                secrets: &secrets,
                home: "/root",
            },
        )
        .expect("render");
        (cfg, desired)
    }

    /// The argv the positional code before `BootArgs` built, kept verbatim
    /// (`deploy_argv(...).skip(7)` included) to compare with.
    fn positional(desired: &Desired, policy: &Policy, app: &AppUnit, o: &Occasion) -> Vec<String> {
        let role = app.role.as_str();
        let audit = if o.start_existing {
            format!("Started app version {}", app.version)
        } else {
            format!("Booted app version {}", app.version)
        };
        let mut argv = strings(&["sh", "-c", BOOT, "berth-boot"]);
        argv.extend([
            app.env_file.path.clone(),
            app.container_name.clone(),
            o.renamed.clone(),
            audit_log(desired),
            audit_line_at(&o.ts, Some(role), &audit),
            audit_line_at(
                &o.ts,
                Some(role),
                &format!("Renaming container {} to {}", app.version, o.renamed),
            ),
            policy.deploy_timeout.as_secs().to_string(),
            policy.readiness_delay.as_secs().to_string(),
            if o.start_existing {
                String::new()
            } else {
                crate::shell::join(app.run_argv(Some(&o.hostname)))
            },
            o.old.clone(),
            if app.proxy.is_none() {
                policy.drain_timeout.to_string()
            } else {
                String::new()
            },
        ]);
        if let Some(r) = &app.proxy {
            let full = r.deploy_argv("ID");
            argv.push(r.service.clone());
            argv.push(r.app_port.clone());
            argv.extend(full.into_iter().skip(7));
        }
        argv
    }

    #[test]
    fn boot_args_compose_the_argv_the_positional_code_did() {
        let (cfg, desired) = rich();
        let policy = Policy::from_config(&cfg);
        let mut checked = 0;
        for host in &desired.hosts {
            for app in &host.apps {
                for (renamed, old, start_existing) in [
                    ("", "", false),
                    (
                        "demo-web-v2_replaced_0123456789abcdef",
                        "demo-web-v2_replaced_0123456789abcdef",
                        false,
                    ),
                    ("", "demo-web-v1", true),
                ] {
                    let o = Occasion {
                        ts: "2026-01-01T00:00:00Z".into(),
                        hostname: format!("{}-0123456789ab", host.host),
                        renamed: renamed.into(),
                        old: old.into(),
                        start_existing,
                    };
                    let args = boot_args(&desired, &policy, app, &o);
                    assert_eq!(
                        args.argv(),
                        positional(&desired, &policy, app, &o),
                        "{}",
                        app.role
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 6, "two apps, three occasions each");
        let route = web(&desired).proxy.as_ref().expect("web is proxied");
        assert!(
            route.deploy_flags.len() >= 15,
            "a rich route: {:?}",
            route.deploy_flags
        );
    }

    #[test]
    fn the_scripts_proxy_deploy_is_kamals_deploy_argv() {
        let (_, desired) = rich();
        let route = web(&desired).proxy.as_ref().expect("proxied");
        // boot.sh's line, with `$svc`, `$id`, `$port` and `$@` from `ProxyDeploy`.
        assert!(BOOT.contains(
            r#"docker exec kamal-proxy kamal-proxy deploy "$svc" "--target=$id:$port" "$@""#
        ));
        let p = ProxyDeploy::from(route);
        let mut composed = strings(&["docker", "exec", PROXY_CONTAINER, "kamal-proxy", "deploy"]);
        composed.push(p.service.clone());
        composed.push(format!("--target=0123456789ab:{}", p.port));
        composed.extend(p.flags);
        assert_eq!(composed, route.deploy_argv("0123456789ab"));
    }

    #[test]
    fn boot_exit_codes_name_the_failed_step() {
        assert_eq!(BootExit::from_code(Some(0)), BootExit::Ok);
        assert_eq!(BootExit::from_code(Some(23)), BootExit::ProxyDeploy);
        assert_eq!(BootExit::from_code(Some(24)), BootExit::NotReady);
        assert_eq!(BootExit::from_code(Some(22)), BootExit::Run);
        assert_eq!(BootExit::from_code(None), BootExit::Other);
        // Every code the script exits with is one `from_code` names.
        for code in 20..=24 {
            assert!(BOOT.contains(&format!("exit {code}")), "exit {code}");
            assert_ne!(BootExit::from_code(Some(code)), BootExit::Other);
        }
    }

    /// The reconcile rule refuses before the lock or any other remote
    /// command; the controller's applies to the hosts that answered.
    #[test]
    fn unknown_hosts_are_one_rule_checked_before_any_host_is_touched() {
        let (cfg, desired) = rich();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ssh = crate::remote::SshOptions::from_config(&cfg.ssh, None);
        ssh.control_dir = dir.path().to_path_buf();
        let conns = Connections::new(ssh);
        let progress = |_: &str| {};
        let ctx = ApplyContext::new(
            &cfg,
            &desired,
            &conns,
            None,
            &progress,
            None,
            UnknownHosts::Refuse,
        );
        let mut plan = crate::plan::plan(
            &desired,
            &crate::plan::observed_from_desired(&desired),
            &crate::plan::PlanOptions::default(),
        );
        plan.unknown_hosts
            .push(("10.9.0.3".into(), "unreachable".into()));
        plan.actions.push(Action {
            host: "10.9.0.1".into(),
            unit: Unit::App { role: "web".into() },
            container: "demo-web-v2".into(),
            kind: ActionKind::Route,
            replaces: None,
            reasons: Vec::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let err = runtime
            .block_on(super::super::apply(&ctx, &plan))
            .expect_err("refused");
        assert!(
            matches!(&err, ApplyError::UnknownHosts { hosts } if hosts == &["10.9.0.3"]),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "not applying while hosts are unknown");
        let err = runtime
            .block_on(super::super::release_stale_lock(&ctx, &plan))
            .expect_err("refused");
        assert!(matches!(err, ApplyError::UnknownHosts { .. }), "{err:?}");
        assert_eq!(conns.commands_run(), 0);

        assert!(UnknownHosts::ApplyToReachable.admit(&plan).is_ok());
        plan.unknown_hosts.clear();
        assert!(UnknownHosts::Refuse.admit(&plan).is_ok());
    }
}
