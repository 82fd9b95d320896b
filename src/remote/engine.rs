//! The Docker Engine API of a host, reached through the host's SSH connection:
//! a local unix socket forwarded (OpenSSH streamlocal) to the host's Docker
//! socket, and one keep-alive HTTP/1.1 connection on it, kept across cycles.
//! Requests are pipelined, so a batch of GETs costs one round trip and starts
//! no process on the host: no `curl`, no `docker` CLI, whose start-up is most
//! of what a shell observation costs the host.
//!
//! [`Connections::engine_snapshot`] lists and inspects a host's containers
//! and their images. It remembers what it found on each host and inspects
//! those containers in the same trip as the listing, so an unchanged host
//! costs one round trip; a changed one, two. Images are inspected once: an
//! image id is the digest of its configuration, so what it says never
//! changes.
//!
//! Request paths are built here, from validated ids only: nothing a host or a
//! config says reaches a request line unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use openssh::{ForwardType, Session};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{CALL_TIMEOUT, Connections, Duplex, RemoteError};

/// A connection to a host's Docker socket: an in-process SSH channel, or a
/// socket OpenSSH forwards.
type Conn = BufReader<Box<dyn Duplex>>;

/// Largest response body accepted: an inspect is a few KiB, a list of a
/// service's containers rarely more than a few hundred.
const MAX_BODY: usize = 64 << 20;

/// Failed batches in a row after which a host's Engine API is set aside
/// (forwarding refused by sshd, say, or the host down a while): observation
/// uses the shell probe alone, wasting no trip, and tries the Engine API
/// again after [`RETRY_AFTER`].
const GIVE_UP_AFTER: u32 = 3;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// One host's Engine API, as far as it is known.
pub(super) struct Engine {
    /// The Docker socket on the host (an absolute path).
    remote_socket: String,
    /// The forwarded socket on this machine (mode 0600, in this connection
    /// set's private directory).
    local_socket: PathBuf,
    /// The session the forward was made on: a reconnect loses it.
    forwarded_on: Option<Weak<Session>>,
    conn: Option<Conn>,
    failures: u32,
    /// Set aside until then (after [`GIVE_UP_AFTER`] failures).
    resting_until: Option<std::time::Instant>,
    /// Container ids found last time: inspected with the listing.
    last_containers: Vec<String>,
    /// The inspects of the images in use last time, by id.
    images: BTreeMap<String, Value>,
}

impl Engine {
    fn resting(&self) -> bool {
        self.resting_until
            .is_some_and(|t| std::time::Instant::now() < t)
    }
}

pub(super) type EngineSlot = Arc<tokio::sync::Mutex<Engine>>;

/// A host's containers as the Engine API shows them.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The list entries (`/containers/json`), for every list asked.
    pub listed: Vec<Value>,
    /// `/containers/{id}/json` for every listed container still there.
    pub containers: Vec<Value>,
    /// `/images/{id}/json` for their images.
    pub images: Vec<Value>,
    /// The bodies of the other paths asked (`None`: not 200), in order.
    pub others: Vec<Option<Vec<u8>>>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Connections {
    /// From now on, reach `host`'s Docker Engine at `remote_socket` (an
    /// absolute path on the host, as the shell probe found it) directly.
    pub fn engine_found(&self, host: &str, remote_socket: &str) {
        if !remote_socket.starts_with('/') || remote_socket.contains(['\n', '\r', '\0']) {
            return;
        }
        let mut map = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(host) {
            return;
        }
        let n = map.len();
        map.insert(
            host.to_string(),
            Arc::new(tokio::sync::Mutex::new(Engine {
                remote_socket: remote_socket.to_string(),
                local_socket: self.dir.join(format!("e{n}.sock")),
                forwarded_on: None,
                conn: None,
                failures: 0,
                resting_until: None,
                last_containers: Vec::new(),
                images: BTreeMap::new(),
            })),
        );
    }

    /// The probe found no unix Docker socket on `host`: observe it with the
    /// shell alone, for [`RETRY_AFTER`].
    pub fn engine_absent(&self, host: &str) {
        let mut map = self
            .engines_absent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(host.to_string(), std::time::Instant::now());
    }

    /// Whether `host`'s Engine API may be looked for (its socket is not
    /// known yet): not if the probe recently found none.
    pub fn may_find_engine(&self, host: &str) -> bool {
        let map = self
            .engines_absent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(host).is_none_or(|at| at.elapsed() >= RETRY_AFTER)
    }

    /// Whether `host`'s Engine API is known and not set aside.
    pub fn has_engine(&self, host: &str) -> bool {
        let map = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        map.get(host)
            .is_some_and(|e| e.try_lock().map_or(true, |e| !e.resting()))
    }

    /// Engine API batches sent so far (each one round trip).
    pub fn engine_batches(&self) -> u64 {
        self.engine_batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The containers that `lists` (Engine API list paths, built by the
    /// caller from constants and JSON-encoded filters) return, each
    /// inspected, with their images. `None`: no usable Engine API is known
    /// for the host, ask the shell instead. An error leaves the connection
    /// to be made again next time.
    pub async fn engine_snapshot(
        &self,
        host: &str,
        lists: &[String],
        others: &[String],
    ) -> Option<Result<Snapshot, RemoteError>> {
        let slot = {
            let map = self.engines.lock().unwrap_or_else(|p| p.into_inner());
            map.get(host)?.clone()
        };
        let mut engine = slot.lock().await;
        if engine.resting() {
            return None;
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            self.snapshot(host, &mut engine, lists, others),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_string()));
        self.phases.add(super::Phase::Engine, started.elapsed());
        Some(match result {
            Ok(s) => {
                engine.failures = 0;
                engine.resting_until = None;
                Ok(s)
            }
            Err(message) => {
                engine.failures += 1;
                if engine.failures >= GIVE_UP_AFTER {
                    engine.resting_until = Some(std::time::Instant::now() + RETRY_AFTER);
                }
                engine.conn = None;
                Err(RemoteError::Command {
                    host: host.to_string(),
                    command: "Docker Engine API".to_string(),
                    message,
                })
            }
        })
    }

    async fn snapshot(
        &self,
        host: &str,
        engine: &mut Engine,
        lists: &[String],
        others: &[String],
    ) -> Result<Snapshot, String> {
        let mut paths: Vec<String> = lists.to_vec();
        paths.extend(others.iter().cloned());
        paths.extend(engine.last_containers.iter().map(|id| container_path(id)));
        let mut answers = self.batch(host, engine, &paths).await?;
        let others: Vec<Option<Vec<u8>>> = answers
            .drain(lists.len()..(lists.len() + others.len()).min(answers.len()))
            .map(|r| (r.status == 200).then_some(r.body))
            .collect();
        paths.drain(lists.len()..lists.len() + others.len());

        let mut listed = Vec::new();
        for (path, r) in paths.iter().zip(&answers).take(lists.len()) {
            if r.status != 200 {
                return Err(format!("GET {path}: HTTP {}", r.status));
            }
            match serde_json::from_slice(&r.body) {
                Ok(Value::Array(entries)) => listed.extend(entries),
                _ => return Err(format!("GET {path}: not a JSON list")),
            }
        }
        // A container may be listed twice (it matches two lists).
        let mut ids = BTreeSet::new();
        let mut image_ids = BTreeSet::new();
        listed.retain(|c| {
            let id = c.get("Id").and_then(Value::as_str).unwrap_or_default();
            let fresh = valid_id(id) && ids.insert(id.to_string());
            if fresh
                && let Some(image) = c.get("ImageID").and_then(Value::as_str)
                && valid_id(image)
            {
                image_ids.insert(image.to_string());
            }
            fresh
        });

        let mut containers = Vec::new();
        // Inspected for the first time (the others are remembered).
        let mut images = Vec::new();
        let mut found: BTreeSet<String> = image_ids
            .iter()
            .filter(|id| engine.images.contains_key(*id))
            .cloned()
            .collect();
        for r in answers.iter().skip(lists.len()) {
            keep(
                r,
                &ids,
                &image_ids,
                &mut found,
                &mut containers,
                &mut images,
            );
        }
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains(*id))
            .map(|id| container_path(id))
            .chain(
                image_ids
                    .iter()
                    .filter(|id| !found.contains(*id))
                    .map(|id| image_path(id)),
            )
            .collect();
        if !missing.is_empty() {
            // Something changed since last time: a second trip for it. A
            // container gone in between (404) is simply not there.
            for r in self.batch(host, engine, &missing).await? {
                keep(
                    &r,
                    &ids,
                    &image_ids,
                    &mut found,
                    &mut containers,
                    &mut images,
                );
            }
        }
        engine.last_containers = ids.into_iter().collect();
        for image in images {
            if let Some(id) = image.get("Id").and_then(Value::as_str) {
                engine.images.insert(id.to_string(), image);
            }
        }
        engine.images.retain(|id, _| image_ids.contains(id));
        let images = engine.images.values().cloned().collect();
        Ok(Snapshot {
            listed,
            containers,
            images,
            others,
        })
    }

    /// GET every path on one connection, pipelined: one round trip. A kept
    /// connection the Engine closed in the meantime is made again once (GETs
    /// are safe to repeat).
    async fn batch(
        &self,
        host: &str,
        engine: &mut Engine,
        paths: &[String],
    ) -> Result<Vec<Response>, String> {
        self.engine_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = String::new();
        for p in paths {
            request.push_str(&format!("GET {p} HTTP/1.1\r\nHost: docker\r\n\r\n"));
        }
        let mut attempt = 0;
        loop {
            let reused = engine.conn.is_some();
            let conn = match engine.conn.take() {
                Some(c) => c,
                None => self.engine_connect(host, engine).await?,
            };
            match exchange(conn, request.as_bytes(), paths.len()).await {
                Ok((responses, conn)) => {
                    engine.conn = conn;
                    return Ok(responses);
                }
                Err(_) if reused && attempt == 0 => attempt += 1,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn engine_connect(&self, host: &str, engine: &mut Engine) -> Result<Conn, String> {
        if let Some(direct) = self.direct_session(host).await.map_err(|e| e.to_string())? {
            return Ok(BufReader::new(
                direct.unix_socket(&engine.remote_socket).await?,
            ));
        }
        let session = self.session(host).await.map_err(|e| e.to_string())?;
        let current = engine
            .forwarded_on
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|s| Arc::ptr_eq(&s, &session));
        if !current {
            // A socket left by an earlier master would refuse the new bind.
            let _ = std::fs::remove_file(&engine.local_socket);
            session
                .request_port_forward(
                    ForwardType::Local,
                    engine.local_socket.clone(),
                    PathBuf::from(&engine.remote_socket),
                )
                .await
                .map_err(|e| format!("cannot forward the Docker socket: {e}"))?;
            engine.forwarded_on = Some(Arc::downgrade(&session));
        }
        let stream = UnixStream::connect(&engine.local_socket)
            .await
            .map_err(|e| format!("{}: {e}", engine.local_socket.display()))?;
        Ok(BufReader::new(Box::new(stream)))
    }

    /// Follow `host`'s Docker events that match `filters` (Engine API
    /// filters, e.g. `{"type": ["container"]}`), calling `on_event` with
    /// each, until the stream ends, on a connection of its own. `None`: no
    /// usable Engine API is known for the host.
    pub async fn engine_events(
        &self,
        host: &str,
        filters: &Value,
        mut on_event: impl FnMut(&Value),
    ) -> Option<Result<(), RemoteError>> {
        let slot = {
            let map = self.engines.lock().unwrap_or_else(|p| p.into_inner());
            map.get(host)?.clone()
        };
        let conn = {
            let mut engine = slot.lock().await;
            if engine.resting() {
                return None;
            }
            self.engine_connect(host, &mut engine).await
        };
        let follow = async {
            let mut conn = conn?;
            let request = format!(
                "GET /events?filters={} HTTP/1.1\r\nHost: docker\r\n\r\n",
                percent_encode(&filters.to_string())
            );
            let io = |e: std::io::Error| e.to_string();
            conn.get_mut()
                .write_all(request.as_bytes())
                .await
                .map_err(io)?;
            let head = read_head(&mut conn).await.map_err(io)?;
            if head.status != 200 {
                return Err(format!("GET /events: HTTP {}", head.status));
            }
            // One JSON object per line; a chunk may end mid-line.
            let mut pending = Vec::new();
            loop {
                let piece = if head.chunked {
                    match read_chunk(&mut conn).await.map_err(io)? {
                        Some(chunk) => chunk,
                        None => return Ok(()),
                    }
                } else {
                    let mut buf = vec![0; 8192];
                    let n = conn.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    buf
                };
                pending.extend(piece);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                        on_event(&event);
                    }
                }
                if pending.len() > MAX_BODY {
                    return Err("over-long event".to_string());
                }
            }
        };
        Some(follow.await.map_err(|message| RemoteError::Command {
            host: host.to_string(),
            command: "Docker Engine API events".to_string(),
            message,
        }))
    }

    /// Remove this set's forwarded sockets (their masters are closing).
    pub(super) fn forget_engines(&self) {
        let map = std::mem::take(&mut *self.engines.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in map.into_values() {
            if let Ok(e) = slot.try_lock() {
                let _ = std::fs::remove_file(Path::new(&e.local_socket));
            }
        }
    }
}

/// Keep an inspect answer if it is one of the listed containers or their
/// images (an id remembered from last time may be gone, or not match now).
fn keep(
    r: &Response,
    ids: &BTreeSet<String>,
    image_ids: &BTreeSet<String>,
    found: &mut BTreeSet<String>,
    containers: &mut Vec<Value>,
    images: &mut Vec<Value>,
) {
    if r.status != 200 {
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&r.body) else {
        return;
    };
    let id = v.get("Id").and_then(Value::as_str).unwrap_or_default();
    if v.get("State").is_some() {
        if ids.contains(id) && found.insert(id.to_string()) {
            containers.push(v);
        }
    } else if image_ids.contains(id) && found.insert(id.to_string()) {
        images.push(v);
    }
}

/// A Docker object id: hex, or `sha256:` and hex. Nothing else reaches a
/// request line.
fn valid_id(id: &str) -> bool {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    !hex.is_empty() && hex.len() <= 128 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn container_path(id: &str) -> String {
    format!("/containers/{id}/json")
}

fn image_path(id: &str) -> String {
    format!("/images/{id}/json")
}

/// Write the pipelined requests and read `n` responses in order. The
/// connection comes back unless the Engine said it will close it.
async fn exchange(
    mut conn: Conn,
    request: &[u8],
    n: usize,
) -> std::io::Result<(Vec<Response>, Option<Conn>)> {
    conn.get_mut().write_all(request).await?;
    let mut responses = Vec::with_capacity(n);
    let mut open = true;
    for _ in 0..n {
        let (response, keep_alive) = read_response(&mut conn).await?;
        responses.push(response);
        open &= keep_alive;
    }
    Ok((responses, open.then_some(conn)))
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

async fn read_line(conn: &mut Conn) -> std::io::Result<String> {
    let mut line = String::new();
    // Bounded: a status line, a header or a chunk size is short.
    let n = (&mut *conn).take(8192).read_line(&mut line).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the Docker Engine closed the connection",
        ));
    }
    if !line.ends_with('\n') {
        return Err(bad("over-long line in an HTTP response"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// A response's status line and the headers berth needs.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

async fn read_head(conn: &mut Conn) -> std::io::Result<Head> {
    let status_line = read_line(conn).await?;
    let mut parts = status_line.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => {
            code.parse::<u16>().map_err(|_| bad("bad HTTP status"))?
        }
        _ => return Err(bad(format!("not an HTTP response: {status_line:?}"))),
    };
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        keep_alive: true,
    };
    loop {
        let line = read_line(conn).await?;
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad("bad Content-Length"))?,
                )
            }
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

/// The next chunk of a chunked body; `None` at its end.
async fn read_chunk(conn: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let size = read_line(conn).await?;
    let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        .map_err(|_| bad("bad chunk size"))?;
    if size == 0 {
        // Trailers, then the empty line.
        while !read_line(conn).await?.is_empty() {}
        return Ok(None);
    }
    if size > MAX_BODY {
        return Err(bad("response too large"));
    }
    let mut chunk = vec![0; size];
    conn.read_exact(&mut chunk).await?;
    read_line(conn).await?;
    Ok(Some(chunk))
}

/// One HTTP/1.1 response: status, body (by Content-Length or chunked), and
/// whether the connection stays open.
async fn read_response(conn: &mut Conn) -> std::io::Result<(Response, bool)> {
    let head = read_head(conn).await?;
    let mut keep_alive = head.keep_alive;
    let mut body = Vec::new();
    if head.chunked {
        while let Some(chunk) = read_chunk(conn).await? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(bad("response too large"));
            }
            body.extend(chunk);
        }
    } else if let Some(n) = head.length {
        if n > MAX_BODY {
            return Err(bad("response too large"));
        }
        body.resize(n, 0);
        conn.read_exact(&mut body).await?;
    } else if head.status != 204 && head.status != 304 {
        // Delimited by the connection's end.
        (&mut *conn)
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .await?;
        keep_alive = false;
    }
    Ok((
        Response {
            status: head.status,
            body,
        },
        keep_alive,
    ))
}

/// Everything but unreserved URL characters as `%XX` (a query value).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &'static [u8]) -> std::io::Result<Vec<(u16, String, bool)>> {
        let (a, mut b) = UnixStream::pair()?;
        tokio::spawn(async move {
            let _ = b.write_all(raw).await;
        });
        let mut conn: Conn = BufReader::new(Box::new(a));
        let mut out = Vec::new();
        for _ in 0..2 {
            let (r, keep) = read_response(&mut conn).await?;
            out.push((
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
                keep,
            ));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn reads_pipelined_responses_of_both_framings() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[{\"a\r\n3\r\n\":1\r\n2\r\n}]\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"message\":1}";
        let got = parse(raw).await.unwrap();
        assert_eq!(got[0], (200, "[{\"a\":1}]".to_string(), true));
        assert_eq!(got[1], (404, "{\"message\":1}".to_string(), false));
    }

    #[tokio::test]
    async fn a_cut_response_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\":1}";
        assert!(parse(raw).await.is_err());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
    }

    #[test]
    fn only_ids_reach_a_request_line() {
        assert!(valid_id("9284a76c35517028c6658acefc80226e"));
        assert!(valid_id("sha256:4bfb3dea694da07efc8f226c1c29ac5b"));
        for bad in [
            "",
            "sha256:",
            "abc/../x",
            "abc HTTP/1.1\r\n",
            "kamal-proxy",
            "abc?x=1",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
