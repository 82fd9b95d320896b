//! `cargo bench --bench validate`: time `config::load` (what `berth validate`
//! does) and `desired::render` on a 1,000-host, 20-role config, and print the
//! figures. Target from issue 2: validate < 100 ms.

use std::fmt::Write;
use std::time::{Duration, Instant};

use berth::config::secrets::{Secrets, SecretsOptions};
use berth::config::{self, LoadOptions};
use berth::desired::{self, RenderOptions};

fn big_config(hosts: usize, roles: usize) -> String {
    let mut y = String::from(
        "service: bench\nimage: bench/app\nregistry:\n  server: registry.example:5000\n  username: u\n  password: [REGISTRY_PASSWORD]\nbuilder:\n  arch: amd64\nenv:\n  clear:\n    RAILS_ENV: production\n  secret: [DB_PASSWORD]\nproxy:\n  host: bench.example.com\n  healthcheck: {path: /up, interval: 2}\nx-berth:\n  version: v1\nservers:\n",
    );
    let per_role = hosts / roles;
    for r in 0..roles {
        let name = if r == 0 {
            "web".to_string()
        } else {
            format!("role{r:02}")
        };
        let _ = writeln!(y, "  {name}:\n    hosts:");
        for h in 0..per_role {
            let n = r * per_role + h;
            let _ = writeln!(
                y,
                "      - 10.{}.{}.{}",
                n / 65536 % 256,
                n / 256 % 256,
                n % 256
            );
        }
        if r > 0 {
            let _ = writeln!(
                y,
                "    cmd: bin/worker --queue q{r}\n    options:\n      memory: 1g\n    env:\n      clear:\n        QUEUE: q{r}"
            );
        }
    }
    y
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("config"));
    let _ = std::fs::create_dir_all(dir.join(".kamal"));
    let file = dir.join("config/deploy.yml");
    let text = big_config(1000, 20);
    std::fs::write(&file, &text).expect("write config");
    std::fs::write(
        dir.join(".kamal/secrets"),
        "REGISTRY_PASSWORD=x\nDB_PASSWORD=secret\n",
    )
    .expect("write secrets");
    let env = |_: &str| None;
    let opts = LoadOptions {
        config_file: &file,
        destination: None,
        env: &env,
        files: &berth::checkout::Checkout::unconfined(),
    };

    let mut load_times = Vec::new();
    let mut render_times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let cfg = config::load(&opts).expect("valid");
        load_times.push(t.elapsed());
        let secrets = Secrets::load(
            &dir.join(".kamal/secrets"),
            &SecretsOptions {
                destination: None,
                commands: berth::config::secrets::Commands::Refuse,
                files: &berth::checkout::Checkout::unconfined(),
                age_keys: None,
                env: &env,
            },
        )
        .expect("secrets");
        let t = Instant::now();
        let d = desired::render(
            &cfg,
            &RenderOptions {
                version: "v1",
                secrets: &secrets,
                home: "/root",
            },
        )
        .expect("render");
        render_times.push(t.elapsed());
        assert_eq!(d.hosts.len(), 1000);
    }
    let load = median(load_times);
    let render = median(render_times);
    println!("config: 1000 hosts, 20 roles, {} bytes of YAML", text.len());
    println!(
        "validate (config::load) median of 21: {:.1} ms  [target < 100 ms: {}]",
        load.as_secs_f64() * 1e3,
        if load < Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "render (desired::render) median of 21: {:.1} ms",
        render.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
