//! The status page at `/`, driven by a real browser (Debian's headless
//! Chromium through chromedriver) against `berth run` on a real testbed: one
//! app with two destinations on two hosts, one unit stopped by hand and
//! self-heal off. The page must show every host of every app instance with
//! the drifted unit as drifted, on screen too (drift red and in-sync green
//! pixels in a screenshot); its sync button must refuse a wrong token and,
//! with the right one, have berth revert the drift, which the page then shows.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testbed as testbed;
use support::{Fleet, KAMAL_COMMON, free_port};

const API_TOKEN: &str = "status-page-test-token";

struct Berth(Child);

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> Option<String> {
    support::http_get(&format!("127.0.0.1:{port}"), path, None).ok()
}

/// A WebDriver session of Debian's headless Chromium, through chromedriver
/// (plain HTTP with JSON; the W3C WebDriver protocol).
struct Browser {
    port: u16,
    session: String,
    // Dropped after `Browser::drop` ended the session.
    _driver: Driver,
}

fn http(port: u16, method: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    try_http(port, method, path, body)
        .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"))
}

/// One WebDriver request; an error instead of a panic (for `Drop`).
fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, Read, Write};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|x| e(&x))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|x| e(&x))?;
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|x| e(&x))?;
    // chromedriver keeps the connection open: read exactly Content-Length.
    let mut r = std::io::BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|x| e(&x))?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().map_err(|x| e(&x))?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|x| e(&x))?;
    let json = String::from_utf8_lossy(&body);
    serde_json::from_str(&json).map_err(|x| format!("{x}: {json}"))
}

/// chromedriver and every browser process it started (found by their
/// unique profile directory), killed on drop, whatever the test did.
struct Driver {
    child: Child,
    profile: tempfile::TempDir,
}

impl Driver {
    fn browser_pids(&self) -> Vec<String> {
        let out = Command::new("pgrep")
            .args(["-f", &self.profile.path().display().to_string()])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = testbed::poll(
            Instant::now() + Duration::from_secs(10),
            "browser gone",
            || {
                let pids = self.browser_pids();
                for p in &pids {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
                pids.is_empty()
            },
        );
    }
}

impl Browser {
    fn start() -> Browser {
        let bin = |var: &str, default: &str| {
            let p = PathBuf::from(std::env::var(var).unwrap_or(default.into()));
            assert!(
                p.exists(),
                "{} missing: scripts/install-deps.sh installs Debian's chromium and chromium-driver",
                p.display()
            );
            p
        };
        let chromium = bin("BERTH_CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let driver = Driver {
            child: Command::new(bin("BERTH_CHROMEDRIVER", "/usr/bin/chromedriver"))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
            profile: tempfile::tempdir().unwrap(),
        };
        testbed::poll(
            Instant::now() + Duration::from_secs(20),
            "chromedriver up",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .unwrap();
        // The flags this closed network needs (no background fetches).
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                     "--window-size=1400,900",
                     format!("--user-data-dir={}", driver.profile.path().display())]
        }}}});
        let created = http(port, "POST", "/session", &caps);
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser {
            _driver: driver,
            port,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self.try_call(method, path, &body);
        assert!(r["value"].get("error").is_none(), "{method} {path}: {r}");
        r["value"].clone()
    }

    /// The WebDriver answer, an error included.
    fn try_call(&self, method: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
        http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// Find `css` and act on it. The page redraws its cards every few
    /// seconds, so an element found just before a redraw is stale by the
    /// time it is acted on (WebDriver's "stale element reference"): find it
    /// again, as WebDriver clients do, a bounded number of times.
    fn on_element(&self, css: &str, action: &str, body: serde_json::Value) {
        for _ in 0..10 {
            let id = self.element(css);
            let r = self.try_call("POST", &format!("/element/{id}/{action}"), &body);
            match r["value"].get("error").and_then(|e| e.as_str()) {
                None => return,
                Some("stale element reference") => continue,
                Some(_) => panic!("{action} {css}: {r}"),
            }
        }
        panic!("{action} {css}: the element went stale 10 times in a row");
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    /// Run `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            serde_json::json!({ "script": script, "args": [] }),
        )
    }

    fn wait_for(&self, what: &str, script: &str) {
        testbed::poll(Instant::now() + Duration::from_secs(60), what, || {
            self.eval(script) == serde_json::json!(true)
        })
        .unwrap_or_else(|e| panic!("{e}; page: {}", self.eval("return document.body.innerText")));
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            serde_json::json!({ "using": "css selector", "value": css }),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "clear", serde_json::json!({}));
        self.on_element(css, "value", serde_json::json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        self.on_element(css, "click", serde_json::json!({}));
    }

    fn screenshot(&self, file: &Path) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", serde_json::json!({}));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(file, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium quits with its session; `Driver` makes sure of it.
        let _ = try_http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            &serde_json::json!({}),
        );
    }
}

/// The unit chips the page shows: `app host unit state` lines, sorted.
const CHIPS: &str = "return [...document.querySelectorAll('#grid .chip')].map(c => \
    [c.dataset.app, c.dataset.host, c.dataset.unit, c.dataset.state].join(' ')).sort()";

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
fn the_status_page_shows_every_host_of_every_app_a_drifted_unit_and_its_sync_button_heals_it() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
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
    let token_file = work.path().join("api-token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
    let _berth = Berth(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["run", "--dir"])
            .arg(p)
            .arg("--checkout")
            .arg(work.path().join("checkout"))
            .arg("--known-hosts")
            .arg(fleet.tb.known_hosts())
            .args(["--interval", "1s", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--api-token-file")
            .arg(&token_file)
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

    let browser = Browser::start();
    browser.open(&format!("http://127.0.0.1:{port}/"));
    browser.wait_for(
        "the page loaded the apps",
        "return document.body.dataset.loaded === 'true'",
    );
    let chip = |app: &str, host: &str, state: &str| format!("{app} {host} web {state}");
    assert_eq!(
        browser.eval(CHIPS),
        serde_json::json!([
            chip("demo/production", &h2, "drifted"),
            chip("demo/staging", &h1, "in_sync"),
        ])
    );
    let text = browser.eval("return document.body.innerText");
    let text = text.as_str().unwrap();
    // Every host is a column; the summary and the drifted unit's plan show.
    for h in [&h1, &h2] {
        assert!(
            browser.eval(&format!(
                "return [...document.querySelectorAll('#grid thead th')].some(th => th.textContent === '{h}')"
            )) == serde_json::json!(true),
            "{h} missing:\n{text}"
        );
    }
    assert!(text.contains("1 of 2 apps in sync"), "{text}");
    assert!(
        text.contains("app web demo-web-production-v1 (start)"),
        "plan missing:\n{text}"
    );

    // What a person sees: the drift red and the in-sync green are on screen.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    browser.screenshot(&shot);
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

    // The sync button needs the API token: refused without the right one ...
    let result =
        "return document.querySelector('.card[data-app=\"demo/production\"] .result').textContent";
    browser.type_into("#token", "wrong-token");
    browser.click(".card[data-app=\"demo/production\"] button");
    browser.wait_for(
        "refused",
        &format!("{result} === 'refused: give the API token'"),
    );
    assert!(
        apps().contains("\"state\":\"drifted\""),
        "nothing may change"
    );
    // ... and with it, a manual sync reverts the drift self-heal left alone.
    browser.type_into("#token", API_TOKEN);
    browser.click(".card[data-app=\"demo/production\"] button");
    browser.wait_for("accepted", &format!("{result} === 'sync requested'"));
    browser.wait_for(
        "the page shows the heal",
        "return [...document.querySelectorAll('#grid .chip')].every(c => c.dataset.state === 'in_sync')",
    );
    let running = fleet
        .host(1)
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Running}}",
            "demo-web-production-v1",
        ])
        .unwrap();
    assert_eq!(running.trim(), "true");

    // A broken berth.yml: the page says so, and both destinations stay.
    std::fs::write(
        p.join("berth.yml"),
        "apps:\n  demo:\n    destinations: staging\n",
    )
    .unwrap();
    browser.wait_for(
        "the index error shown",
        "return !!document.querySelector('#index [data-index=\"error\"]')",
    );
    let shown = browser.eval("return document.querySelector('#index').innerText");
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.contains("berth.yml is not in use")
            && shown.contains("berth.yml:3:19: apps.demo.destinations: should be a list"),
        "{shown}"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('.card').length"),
        serde_json::json!(2)
    );
    drop(browser);

    drop(_berth);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// The API of a `controller::Berth` (token `api-token`): status and body.
fn api_post(berth: &crate::controller::Berth, path: &str, body: &str) -> (u16, String) {
    let (code, text) = support::request(
        berth.port,
        "POST",
        path,
        &[("Authorization", "Bearer api-token".into())],
        body,
    );
    (code, text)
}

fn json_of(berth: &crate::controller::Berth, path: &str) -> serde_json::Value {
    let (_, text) = support::request(berth.port, "GET", path, &[], "");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

#[test]
fn history_a_suspension_and_a_parked_revision_survive_sigkill_the_page_shows_them_and_a_rollback_pins()
 {
    use crate::controller::{Berth, push_version, serves, wait, workspace};
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    push_version(&work, &fleet, "v1");
    let v1 = support::git(&work, &["rev-parse", "HEAD"]);
    let mut berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    wait(Duration::from_secs(30), "v1", || {
        serves(&fleet, "demo v1\n")
    });
    push_version(&work, &fleet, "v2");
    let v2 = support::git(&work, &["rev-parse", "HEAD"]);
    wait(Duration::from_secs(60), "v2", || {
        serves(&fleet, "demo v2\n")
    });
    // A version that never becomes healthy: its rollout fails, it is parked.
    push_version(&work, &fleet, "unhealthy");
    let bad = support::git(&work, &["rev-parse", "HEAD"]);
    wait(Duration::from_secs(60), "the failed rollout parked", || {
        json_of(&berth, "/api/v1/apps")["apps"][0]["failed"] == serde_json::json!(bad)
    });
    assert_eq!(api_post(&berth, "/api/v1/apps/demo/suspend", "").0, 202);

    // SIGKILL: nothing gets to say goodbye.
    berth.child.kill().unwrap();
    berth.child.wait().unwrap();
    drop(berth);
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    let app = json_of(&berth, "/api/v1/apps")["apps"][0].clone();
    assert_eq!(app["suspended"], serde_json::json!(true), "{app}");
    assert_eq!(app["failed"], serde_json::json!(bad), "{app}");
    assert_eq!(app["settled"], serde_json::json!(v2), "{app}");
    let history = json_of(&berth, "/api/v1/apps/demo/history?limit=50");
    let kinds: Vec<(String, String)> = history["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default().to_string(),
                c["revision"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (kind, rev) in [("deployed", &v1), ("deployed", &v2), ("failed", &bad)] {
        assert!(
            kinds.iter().any(|(k, r)| k == kind && r == rev),
            "no {kind} of {rev} in {kinds:?}"
        );
    }
    let deploy = history["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["revision"] == serde_json::json!(v2) && c["kind"] == "deployed")
        .cloned()
        .unwrap_or_default();
    assert!(
        deploy["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["container"] == "demo-web-v2")),
        "the v2 deploy's actions: {deploy}"
    );
    // The parked revision is not retried by the new process either.
    let seen = berth.reconciles("demo", "suspended") + berth.reconciles("demo", "drifted");
    wait(Duration::from_secs(30), "cycles after the restart", || {
        berth.reconciles("demo", "suspended") + berth.reconciles("demo", "drifted") >= seen + 2.0
    });
    assert!(serves(&fleet, "demo v2\n"));

    // What a person sees.
    let browser = Browser::start();
    browser.open(&format!("http://127.0.0.1:{}/", berth.port));
    browser.wait_for(
        "the page shows the history",
        "return document.querySelectorAll('[data-timeline=\"demo\"] li[data-kind=\"failed\"]').length >= 1 \
         && document.querySelectorAll('[data-timeline=\"demo\"] li[data-kind=\"deployed\"]').length >= 2",
    );
    let card = browser.eval("return document.querySelector('.card[data-app=\"demo\"]').innerText");
    let card = card.as_str().unwrap_or_default();
    assert!(card.contains("suspended"), "{card}");
    assert!(
        card.contains(&format!("{bad} (its rollout failed")),
        "the parked revision: {card}"
    );
    drop(browser);

    // Rollback: an unknown revision is refused; a deployed one is applied
    // and pins the app until a resume.
    assert_eq!(
        api_post(
            &berth,
            "/api/v1/apps/demo/rollback",
            "{\"revision\":\"0123456789ab\"}"
        )
        .0,
        404
    );
    assert_eq!(api_post(&berth, "/api/v1/apps/demo/rollback", "{}").0, 400);
    let (code, text) = api_post(
        &berth,
        "/api/v1/apps/demo/rollback",
        &format!("{{\"revision\":\"{}\"}}", &v1[..12]),
    );
    assert_eq!(code, 202, "{text}");
    wait(Duration::from_secs(60), "rolled back to v1", || {
        serves(&fleet, "demo v1\n")
    });
    let app = json_of(&berth, "/api/v1/apps")["apps"][0].clone();
    assert_eq!(app["pinned"], serde_json::json!(v1), "{app}");
    assert_eq!(app["suspended"], serde_json::json!(false), "{app}");
    assert_eq!(api_post(&berth, "/api/v1/apps/demo/resume", "").0, 202);
    wait(
        Duration::from_secs(30),
        "following the branch again",
        || json_of(&berth, "/api/v1/apps")["apps"][0]["pinned"].is_null(),
    );
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
