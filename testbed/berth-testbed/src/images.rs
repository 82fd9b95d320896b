//! Test images, built `FROM scratch` with the static busybox (nothing can be
//! pulled here) and pushed to the testbed's registry. Each is a context
//! directory with a `Dockerfile` (under the `images/` of the first slot a
//! process builds them in), which `docker build` would build the same;
//! [`crate::build`] builds it here, once per process.
//!
//! - `demo:v1`..`v3`: serves `demo <version>` on `/`, `200` on `/up`, its
//!   environment on `/cgi-bin/env`; exits 0 on SIGTERM.
//! - `demo:unhealthy` (no `/up`), `demo:crash` (exits 1 at start),
//!   `demo:slow` (serves after 5 s).
//! - `kv:1`: an accessory-like service (busybox httpd over the `/data` volume).
//! - `basecamp/kamal-proxy:v0.9.2`: the kamal-proxy stand-in (testbed/kamal-proxy).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::Image;
use crate::{Result, Testbed, step};

/// Which images to build: the demo versions and failure modes always, the
/// proxy stand-in when its static binary is given.
pub struct ImageSet<'a> {
    pub proxy_binary: Option<&'a Path>,
}

/// The stand-in's repository and tag, as `kamal proxy boot_config set` takes
/// them (Kamal appends `/kamal-proxy` to the repository).
pub const PROXY_REPOSITORY: &str = "basecamp";
pub const PROXY_VERSION: &str = "v0.9.2";

const SERVE: &str = "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";

/// Push every image; returns the pushed references.
pub fn push(tb: &Testbed, set: &ImageSet<'_>) -> Result<Vec<String>> {
    let reg = tb.registry();
    let mut pushed = Vec::new();
    for (name, image) in built(tb, set)?.iter() {
        let (repository, tag) = name
            .split_once(':')
            .ok_or_else(|| step("image name", name))?;
        image.push(&reg, repository, tag)?;
        pushed.push(format!("{reg}/{name}"));
    }
    Ok(pushed)
}

/// The image set, built once per process and image set: the images are the
/// same bytes in every slot (deterministic layers), and writing their
/// contexts — a busybox and its few hundred applet symlinks per image — was
/// most of what the in-process build still cost each fleet test.
type Built = std::sync::Arc<Vec<(String, Image)>>;
static BUILT: std::sync::Mutex<Vec<(Option<PathBuf>, Built)>> = std::sync::Mutex::new(Vec::new());

/// Each image built from its context's `Dockerfile` in this process
/// ([`crate::build`]), not on a host's dockerd; the contexts are written
/// under the `images/` of the first slot that asks.
fn built(tb: &Testbed, set: &ImageSet<'_>) -> Result<Built> {
    let key = set.proxy_binary.map(Path::to_path_buf);
    // Held while building: a second test waits for the first one's images.
    let mut cache = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, images)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(images.clone());
    }
    let work = tb.base.join("images");
    let mut images = Vec::new();
    let mut build = |name: &str, ctx: PathBuf| -> Result<()> {
        images.push((name.to_string(), Image::build(&ctx)?));
        Ok(())
    };
    for v in ["v1", "v2", "v3"] {
        build(&format!("demo:{v}"), demo(&work, v, Variant::Healthy)?)?;
    }
    build(
        "demo:unhealthy",
        demo(&work, "unhealthy", Variant::NoHealth)?,
    )?;
    build("demo:crash", demo(&work, "crash", Variant::Crash)?)?;
    build("demo:slow", demo(&work, "slow", Variant::Slow)?)?;
    build("kv:1", kv(&work)?)?;
    if let Some(bin) = set.proxy_binary {
        build(
            &format!("{PROXY_REPOSITORY}/kamal-proxy:{PROXY_VERSION}"),
            proxy(&work, bin)?,
        )?;
    }
    let images: Built = std::sync::Arc::new(images);
    cache.push((key, images.clone()));
    Ok(images)
}

enum Variant {
    Healthy,
    NoHealth,
    Crash,
    Slow,
}

fn demo(work: &Path, version: &str, variant: Variant) -> Result<PathBuf> {
    let ctx = work.join(format!("demo-{version}"));
    let root = busybox_rootfs(&ctx)?;
    put(&root.join("www/index.html"), &format!("demo {version}\n"))?;
    if !matches!(variant, Variant::NoHealth) {
        put(&root.join("www/up"), "ok\n")?;
    }
    put(
        &root.join("www/cgi-bin/env"),
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv | sort\n",
    )?;
    chmod_x(&root.join("www/cgi-bin/env"))?;
    let cmd = match variant {
        Variant::Healthy | Variant::NoHealth => SERVE.to_string(),
        Variant::Crash => "echo 'demo crash: exiting at start' >&2; exit 1".to_string(),
        Variant::Slow => format!("trap 'exit 0' TERM; sleep 5 & wait; {SERVE}"),
    };
    dockerfile(&ctx, "demo", &cmd, "EXPOSE 80\n")?;
    Ok(ctx)
}

fn kv(work: &Path) -> Result<PathBuf> {
    let ctx = work.join("kv");
    busybox_rootfs(&ctx)?;
    dockerfile(
        &ctx,
        "kv",
        "trap 'exit 0' TERM; mkdir -p /data; date > /data/started; httpd -f -p 6379 -h /data & wait",
        "VOLUME /data\nEXPOSE 6379\n",
    )?;
    Ok(ctx)
}

fn proxy(work: &Path, bin: &Path) -> Result<PathBuf> {
    let ctx = work.join("kamal-proxy");
    fs::create_dir_all(&ctx).map_err(|e| step("proxy context", e))?;
    fs::copy(bin, ctx.join("kamal-proxy"))
        .map_err(|e| step(format!("copy {}", bin.display()), e))?;
    // The stand-in's own Dockerfile, so the image is what its README says.
    put(
        &ctx.join("Dockerfile"),
        include_str!("../../kamal-proxy/Dockerfile"),
    )?;
    Ok(ctx)
}

/// `<ctx>/rootfs` with `/bin/busybox` and a symlink per applet, so the image
/// needs no `RUN` step (builds are a single COPY: fast, no container run).
fn busybox_rootfs(ctx: &Path) -> Result<PathBuf> {
    let root = ctx.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).map_err(|e| step("rootfs", e))?;
    fs::create_dir_all(root.join("tmp")).map_err(|e| step("rootfs", e))?;
    fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| step("copy /bin/busybox", e))?;
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map_err(|e| step("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    Ok(root)
}

fn dockerfile(ctx: &Path, service: &str, cmd: &str, extra: &str) -> Result<()> {
    let cmd_json =
        serde_json::to_string(&["/bin/sh", "-c", cmd]).map_err(|e| step("dockerfile", e))?;
    put(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nLABEL service={service}\n{extra}CMD {cmd_json}\n"
        ),
    )
}

fn put(p: &Path, text: &str) -> Result<()> {
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir).map_err(|e| step(format!("create {}", dir.display()), e))?;
    }
    fs::write(p, text).map_err(|e| step(format!("write {}", p.display()), e))
}

fn chmod_x(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))
        .map_err(|e| step(format!("chmod {}", p.display()), e))
}
