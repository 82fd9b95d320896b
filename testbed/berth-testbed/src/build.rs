//! Test images built in this process and pushed over the registry's HTTP API
//! (the Docker Registry v2 protocol `docker push` speaks), with no daemon.
//!
//! Why: dockerd 20.10 re-executes its own 100 MB binary (chrootarchive) for
//! every layer it builds or commits, about 65 ms of CPU each. Building the
//! image set on a host's dockerd cost every fleet test about 5 s of CPU on a
//! two-core machine whose fleet tests are CPU-bound; here it is a few ms of
//! tar and gzip, and the hosts still pull real images from a real registry.
//!
//! The input is the image's own `Dockerfile`, so a human can still
//! `docker build` the same context. Only the `FROM scratch` subset the test
//! images use is understood — `COPY`, `ENV`, `LABEL`, `EXPOSE`, `VOLUME`,
//! `CMD` (exec form) — and anything else is an error, never ignored. Each
//! `COPY` is one layer, as `docker build` makes it. Layers are deterministic
//! (fixed mtime, owner root), so a digest names the same bytes on every run.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::{Result, step};

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_V1: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Every file's mtime in a layer (2026-01-01), for reproducible digests.
const MTIME: u64 = 1_767_225_600;

/// A built image: its config blob and its compressed layers, ready to push.
pub struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    /// Build the image `ctx/Dockerfile` describes from the files in `ctx`.
    pub fn build(ctx: &Path) -> Result<Image> {
        let file = ctx.join("Dockerfile");
        let text =
            fs::read_to_string(&file).map_err(|e| step(format!("read {}", file.display()), e))?;
        let mut env: Vec<String> = Vec::new();
        let mut labels = serde_json::Map::new();
        let mut exposed = serde_json::Map::new();
        let mut volumes = serde_json::Map::new();
        let mut cmd: Option<Vec<String>> = None;
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", file.display(), n + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word.to_ascii_uppercase().as_str() {
                "FROM" if rest == "scratch" && layers.is_empty() && env.is_empty() => {}
                "COPY" => {
                    let (src, dest) = rest
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| step(at(), "COPY wants a source and a destination"))?;
                    let mut tar = Tar::default();
                    tar.copy(&ctx.join(src.trim()), dest.trim())
                        .map_err(|e| step(format!("{}: COPY {rest}", at()), e))?;
                    let tar = tar.finish();
                    diff_ids.push(format!("sha256:{}", hex(&Sha256::digest(&tar))));
                    layers.push(gzip(&tar).map_err(|e| step(at(), e))?);
                }
                "ENV" => {
                    for pair in rest.split_whitespace() {
                        let (k, _) = pair
                            .split_once('=')
                            .ok_or_else(|| step(at(), "ENV wants KEY=value pairs"))?;
                        env.retain(|e| !e.starts_with(&format!("{k}=")));
                        env.push(pair.to_string());
                    }
                }
                "LABEL" => {
                    for pair in rest.split_whitespace() {
                        let (k, v) = pair
                            .split_once('=')
                            .ok_or_else(|| step(at(), "LABEL wants key=value pairs"))?;
                        labels.insert(k.to_string(), v.into());
                    }
                }
                "EXPOSE" => {
                    for port in rest.split_whitespace() {
                        let port = if port.contains('/') {
                            port.to_string()
                        } else {
                            format!("{port}/tcp")
                        };
                        exposed.insert(port, serde_json::json!({}));
                    }
                }
                "VOLUME" => {
                    for v in rest.split_whitespace() {
                        volumes.insert(v.to_string(), serde_json::json!({}));
                    }
                }
                "CMD" => {
                    cmd = Some(serde_json::from_str(rest).map_err(|e| {
                        step(at(), format!("CMD must be a JSON array of strings: {e}"))
                    })?);
                }
                _ => {
                    return Err(step(
                        at(),
                        format!("`{line}`: not in the FROM scratch subset this builder knows"),
                    ));
                }
            }
        }
        let config = serde_json::json!({
            "architecture": arch(),
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "Env": env,
                "Cmd": cmd,
                "Labels": labels,
                "ExposedPorts": exposed,
                "Volumes": volumes,
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        Ok(Image {
            config: serde_json::to_vec(&config).map_err(|e| step("image config", e))?,
            layers,
        })
    }

    /// Push as `registry/repository:tag` (no authentication: the testbed's
    /// registry has none). Blobs the repository has are not sent again.
    pub fn push(&self, registry: &str, repository: &str, tag: &str) -> Result<()> {
        let what = || format!("push {registry}/{repository}:{tag}");
        let blob = |data: &[u8]| -> Result<serde_json::Value> {
            let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
            let head = http(
                registry,
                "HEAD",
                &format!("/v2/{repository}/blobs/{digest}"),
                &[],
                &[],
            )
            .map_err(|e| step(what(), e))?;
            if head.status != 200 {
                let start = http(
                    registry,
                    "POST",
                    &format!("/v2/{repository}/blobs/uploads/"),
                    &[],
                    &[],
                )
                .map_err(|e| step(what(), e))?;
                let location = start
                    .header("location")
                    .filter(|_| start.status == 202)
                    .ok_or_else(|| step(what(), format!("upload not started: {}", start.status)))?;
                let path = location_path(location);
                let sep = if path.contains('?') { '&' } else { '?' };
                let put = http(
                    registry,
                    "PUT",
                    &format!("{path}{sep}digest={}", digest.replace(':', "%3A")),
                    &[("Content-Type", "application/octet-stream")],
                    data,
                )
                .map_err(|e| step(what(), e))?;
                if put.status != 201 {
                    return Err(step(what(), format!("blob upload: {}", put.status)));
                }
            }
            Ok(serde_json::json!({ "size": data.len(), "digest": digest }))
        };
        let mut config = blob(&self.config)?;
        config["mediaType"] = CONFIG_V1.into();
        let mut layers = Vec::new();
        for l in &self.layers {
            let mut d = blob(l)?;
            d["mediaType"] = LAYER_GZIP.into();
            layers.push(d);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": config,
            "layers": layers,
        });
        let body = serde_json::to_vec(&manifest).map_err(|e| step(what(), e))?;
        let put = http(
            registry,
            "PUT",
            &format!("/v2/{repository}/manifests/{tag}"),
            &[("Content-Type", MANIFEST_V2)],
            &body,
        )
        .map_err(|e| step(what(), e))?;
        if put.status != 201 {
            return Err(step(what(), format!("manifest: {}", put.status)));
        }
        Ok(())
    }
}

/// The image config's `architecture` for this machine (Go's GOARCH names).
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::with_capacity(data.len() / 2), Compression::fast());
    gz.write_all(data)?;
    gz.finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `Location` header's path and query (the registry may answer with an
/// absolute URL).
fn location_path(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

/// A ustar archive in memory: directories, regular files and symlinks, all
/// owned by root, as `COPY` writes them.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
    dirs: std::collections::BTreeSet<String>,
}

impl Tar {
    /// `COPY src dest`: a directory's contents into `dest` (as Docker's
    /// `COPY` does), or a file to `dest` (a `dest` ending in `/` keeps the
    /// file's name).
    fn copy(&mut self, src: &Path, dest: &str) -> std::io::Result<()> {
        let into_dir = dest.ends_with('/');
        let dest = dest.trim_start_matches('/').trim_end_matches('/');
        let meta = fs::symlink_metadata(src)?;
        if meta.is_dir() {
            if !dest.is_empty() {
                self.parents(&format!("{dest}/"));
            }
            self.tree(src, dest)
        } else {
            let name = if dest.is_empty() || into_dir {
                let dest = if dest.is_empty() {
                    String::new()
                } else {
                    format!("{dest}/")
                };
                let file = src.file_name().map(|f| f.to_string_lossy().into_owned());
                format!("{dest}{}", file.unwrap_or_default())
            } else {
                dest.to_string()
            };
            self.parents(&name);
            self.entry(&name, src, &meta)
        }
    }

    fn tree(&mut self, dir: &Path, prefix: &str) -> std::io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = fs::symlink_metadata(e.path())?;
            self.entry(&path, &e.path(), &meta)?;
            if meta.is_dir() {
                self.tree(&e.path(), &path)?;
            }
        }
        Ok(())
    }

    /// The directories above `path`, once each.
    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = path[..at + i].to_string();
            if self.dirs.insert(dir.clone()) {
                self.header(&format!("{dir}/"), 0o755, 0, b'5', "");
            }
            at += i + 1;
        }
    }

    fn entry(&mut self, name: &str, src: &Path, meta: &fs::Metadata) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(src)?;
            self.header(name, 0o777, 0, b'2', &target.to_string_lossy());
        } else if meta.is_dir() {
            if self.dirs.insert(name.to_string()) {
                self.header(&format!("{name}/"), mode, 0, b'5', "");
            }
        } else {
            let mut data = Vec::new();
            fs::File::open(src)?.read_to_end(&mut data)?;
            self.header(name, mode, data.len() as u64, b'0', "");
            self.out.extend_from_slice(&data);
            self.out.resize(self.out.len().next_multiple_of(512), 0);
        }
        Ok(())
    }

    /// One 512-byte ustar header. Names over 100 bytes use the prefix field.
    fn header(&mut self, name: &str, mode: u32, size: u64, kind: u8, link: &str) {
        let mut h = [0u8; 512];
        let (prefix, name) = if name.len() > 100 {
            let cut = name[..name.len().min(155)].rfind('/').unwrap_or(0);
            (&name[..cut], &name[cut + 1..])
        } else {
            ("", name)
        };
        let field = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
            let n = v.len().min(len);
            h[at..at + n].copy_from_slice(&v[..n]);
        };
        field(&mut h, 0, 100, name.as_bytes());
        field(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        field(&mut h, 108, 8, b"0000000\0");
        field(&mut h, 116, 8, b"0000000\0");
        field(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        field(&mut h, 136, 12, format!("{MTIME:011o}\0").as_bytes());
        h[156] = kind;
        field(&mut h, 157, 100, link.as_bytes());
        field(&mut h, 257, 8, b"ustar\x0000");
        field(&mut h, 265, 32, b"root");
        field(&mut h, 297, 32, b"root");
        field(&mut h, 345, 155, prefix.as_bytes());
        // The checksum is summed with its own field as spaces.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        field(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("{method} {path}: no HTTP status")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is one `tar` reads back: names, modes, symlinks, parents.
    #[test]
    fn layers_are_tar_archives_tar_can_list() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ctx = dir.join("ctx");
        fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
        fs::write(ctx.join("rootfs/bin/tool"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("tool", ctx.join("rootfs/bin/alias")).unwrap();
        fs::write(ctx.join("single"), "x").unwrap();
        let long = format!("rootfs/{}/f", "d".repeat(120));
        fs::create_dir_all(ctx.join(&long).parent().unwrap()).unwrap();
        fs::write(ctx.join(&long), "deep").unwrap();
        let mut tar = Tar::default();
        tar.copy(&ctx.join("rootfs"), "/").unwrap();
        tar.copy(&ctx.join("single"), "/usr/local/bin/single")
            .unwrap();
        let path = dir.join("layer.tar");
        fs::write(&path, tar.finish()).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("bin/alias -> tool"), "{list}");
        assert!(list.contains("root/root"), "{list}");
        for name in [
            "bin/",
            "bin/tool",
            "usr/",
            "usr/local/",
            "usr/local/bin/single",
        ] {
            assert!(
                list.lines().any(|l| l.ends_with(&format!(" {name}"))),
                "{name}: {list}"
            );
        }
        assert!(list.contains(&format!("{}/f", "d".repeat(120))), "{list}");
    }

    #[test]
    fn an_instruction_outside_the_subset_is_an_error_with_its_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("Dockerfile"), "FROM scratch\nRUN true\n").unwrap();
        let err = Image::build(dir).err().unwrap().to_string();
        assert!(
            err.contains("Dockerfile:2") && err.contains("RUN true"),
            "{err}"
        );
        fs::write(dir.join("Dockerfile"), "FROM debian\n").unwrap();
        assert!(Image::build(dir).is_err());
    }

    #[test]
    fn a_location_header_becomes_a_path() {
        assert_eq!(
            location_path("http://10.0.0.1:5000/v2/x/blobs/uploads/u?_state=s"),
            "/v2/x/blobs/uploads/u?_state=s"
        );
        assert_eq!(
            location_path("/v2/x/blobs/uploads/u"),
            "/v2/x/blobs/uploads/u"
        );
    }
}
