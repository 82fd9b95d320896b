//! The status page at `/`, driven by a real browser (Debian's headless
//! Chromium) against `berth run` on a real testbed: one app with two
//! destinations on two hosts, one unit stopped by hand. The rendered DOM must
//! show every host of every app instance with the drifted unit as drifted,
//! and the screenshot must show it too (drift red and in-sync green pixels).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::testbed;
use support::{Fleet, KAMAL_COMMON};

struct Berth(Child);

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    support::http_get(&format!("127.0.0.1:{port}"), path, None).ok()
}

fn chromium() -> PathBuf {
    let p = PathBuf::from(std::env::var("BERTH_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        p.exists(),
        "{} missing: scripts/install-deps.sh installs Debian's chromium",
        p.display()
    );
    p
}

/// Headless Chromium with the flags this closed network needs; `args` add
/// the action (`--dump-dom`, `--screenshot=…`).
fn browse(url: &str, profile: &Path, args: &[String]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
            // Let the page's fetch of /api/v1/apps finish before the dump.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(app, host, unit, state)` of every unit chip in the rendered DOM.
fn chips(dom: &str) -> Vec<(String, String, String, String)> {
    let attr = |tag: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        tag.find(&key)
            .map(|i| {
                let rest = &tag[i + key.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .unwrap_or_default()
    };
    dom.match_indices("<span class=\"chip ")
        .map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap()];
            (
                attr(tag, "data-app"),
                attr(tag, "data-host"),
                attr(tag, "data-unit"),
                attr(tag, "data-state"),
            )
        })
        .filter(|c| !c.0.is_empty())
        .collect()
}

/// Pixels of the screenshot close to `rgb`.
fn pixels_like(png_file: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_file).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| (0..3).all(|c| p[c].abs_diff(rgb[c]) <= 8))
        .count()
}

#[test]
fn the_status_page_shows_every_host_of_every_app_and_a_drifted_unit_as_drifted() {
    let fleet = Fleet::up(2);
    let [h1, h2] = [fleet.addrs()[0].clone(), fleet.addrs()[1].clone()];
    let common = KAMAL_COMMON
        .replace("{registry}", &fleet.tb.registry())
        .replace("{key}", &fleet.tb.ssh_key().to_string_lossy());
    let project = fleet.project(
        &format!(
            "service: demo\nimage: demo\nreadiness_delay: 0\nx-berth:\n  version: v1\n{common}"
        ),
        "",
    );
    let p = project.path();
    // With destinations, Kamal reads `.kamal/secrets-common` and `.kamal/secrets.<dest>`.
    std::fs::write(
        p.join(".kamal/secrets-common"),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    )
    .unwrap();
    // berth's own files live outside the watched project directory.
    let work = tempfile::tempdir().unwrap();
    for (dest, host) in [("staging", &h1), ("production", &h2)] {
        std::fs::write(
            p.join(format!("config/deploy.{dest}.yml")),
            format!("servers:\n  web:\n    hosts: [{host}]\n    proxy: false\n"),
        )
        .unwrap();
    }
    // Production reports hand-made drift instead of reverting it.
    std::fs::write(
        p.join("berth.yml"),
        "apps:\n  demo:\n    destinations: [staging, production]\n    policy:\n      self_heal: false\n",
    )
    .unwrap();

    let port = free_port();
    let log = work.path().join("berth.log");
    let _berth = Berth(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["run", "--dir"])
            .arg(p)
            .arg("--checkout")
            .arg(work.path().join("checkout"))
            .arg("--known-hosts")
            .arg(fleet.tb.known_hosts())
            .args(["--interval", "1s", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let apps = || get(port, "/api/v1/apps").unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let deployed = testbed::poll(deadline, "both destinations deployed", || {
        let a = apps();
        a.matches("\"in_sync\":true").count() == 2
    });
    assert!(
        deployed.is_ok(),
        "{}\n{}",
        apps(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A hand-made drift on production's host.
    fleet
        .host(1)
        .docker_ok(&["stop", "demo-web-production-v1"])
        .unwrap();
    testbed::poll(
        Instant::now() + Duration::from_secs(30),
        "drift reported",
        || apps().contains("\"state\":\"drifted\""),
    )
    .unwrap();

    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = browse(&url, profile.path(), &["--dump-dom".into()]);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "page never loaded:\n{dom}"
    );
    let mut seen = chips(&dom);
    seen.sort();
    seen.dedup();
    let chip = |app: &str, host: &str, state: &str| {
        (
            app.to_string(),
            host.to_string(),
            "web".to_string(),
            state.to_string(),
        )
    };
    assert_eq!(
        seen,
        vec![
            chip("demo/production", &h2, "drifted"),
            chip("demo/staging", &h1, "in_sync"),
        ],
        "{dom}"
    );
    // Every host is a column; the summary and the drifted plan are shown.
    for h in [&h1, &h2] {
        assert!(
            dom.contains(&format!("<th>{h}</th>")),
            "{h} missing:\n{dom}"
        );
    }
    assert!(dom.contains("1 of 2 apps in sync"), "{dom}");
    assert!(
        dom.contains("demo-web-production-v1"),
        "plan missing:\n{dom}"
    );
    assert!(dom.contains("Sync now"), "{dom}");

    // What a person sees: the drift red and the in-sync green are on screen.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
    );
    let red = pixels_like(&shot, [0xcf, 0x22, 0x2e]);
    let green = pixels_like(&shot, [0x1a, 0x7f, 0x37]);
    // A unit chip is ~1,500 pixels of solid colour; an app's outlined
    // state badge alone stays well under the bar.
    assert!(
        red > 800,
        "no drifted unit on screen ({red} red pixels): {}",
        shot.display()
    );
    assert!(
        green > 800,
        "no in-sync unit on screen ({green} green pixels): {}",
        shot.display()
    );

    drop(_berth);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
