//! HTTP/1.1 proxying: request and response heads, bodies (Content-Length and
//! chunked, limits), forwarding a request to its route's target with the
//! X-Forwarded headers, the per-request log line, and the health check.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::log::{f_num, f_str, log_line};
use crate::resolve::split_host_port;
use crate::state::{Route, Shared, Target};

const MAX_HEAD: u64 = 64 * 1024;

pub(crate) struct Head {
    pub(crate) start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn is_chunked(&self) -> bool {
        self.all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .next_back()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
    }

    pub(crate) fn content_length(&self) -> Result<Option<u64>, ()> {
        match self.get("content-length") {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| ()),
        }
    }

    /// Header names listed in Connection plus the standard hop-by-hop headers.
    fn hop_by_hop(&self) -> Vec<String> {
        let mut hop: Vec<String> = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for v in self.all("connection") {
            hop.extend(v.split(',').map(|t| t.trim().to_lowercase()));
        }
        hop
    }
}

pub(crate) fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_line_limited<R: BufRead>(r: &mut R, limit: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    let n = Read::take(&mut *r, limit).read_until(b'\n', &mut v)?;
    if n == 0 || !v.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated line",
        ));
    }
    Ok(v)
}

/// Reads a request or response head. Ok(None) on a clean EOF before any byte.
pub(crate) fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut total: u64 = 0;
    let mut start: Option<String> = None;
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = Read::take(&mut *r, MAX_HEAD - total).read_until(b'\n', &mut line)?;
        if n == 0 {
            if total == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated head",
            ));
        }
        total += n as u64;
        if !line.ends_with(b"\n") {
            return Err(invalid("head too large or truncated"));
        }
        let s = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if start.is_none() {
            if !s.is_empty() {
                start = Some(s);
            }
            continue;
        }
        if s.is_empty() {
            break;
        }
        let (k, v) = s.split_once(':').ok_or_else(|| invalid("bad header"))?;
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(invalid("bad header name"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Some(Head {
        start: start.unwrap_or_default(),
        headers,
    }))
}

/// Copies from r to w, flushing after each read. `limit` None means until EOF.
pub(crate) fn pump<R: Read, W: Write>(r: &mut R, w: &mut W, limit: Option<u64>) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total: u64 = 0;
    loop {
        let want = match limit {
            Some(l) if total >= l => break,
            Some(l) => ((l - total) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        w.flush()?;
        total += n as u64;
    }
    if let Some(l) = limit
        && total < l
    {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body shorter than Content-Length",
        ));
    }
    Ok(total)
}

/// Copies one chunked body verbatim (including trailers) and returns the payload size.
fn copy_chunked<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let line = read_line_limited(r, 8192)?;
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_str = text.trim().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_str, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            loop {
                let t = read_line_limited(r, 8192)?;
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    w.flush()?;
                    return Ok(total);
                }
            }
        }
        pump(r, w, Some(size))?;
        total += size;
        let crlf = read_line_limited(r, 8)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(invalid("missing chunk terminator"));
        }
        w.write_all(&crlf)?;
        w.flush()?;
    }
}

fn simple_response<W: Write>(w: &mut W, status: u16, body: &str) -> io::Result<()> {
    let reason = reason_phrase(status);
    let body = format!("{body}\n");
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

pub(crate) fn strip_port(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.trim_end_matches('.').to_lowercase()
}

pub(crate) fn strip_prefix_from(target: &str, prefix: &str) -> String {
    let rest = target.get(prefix.len()..).unwrap_or("");
    if rest.is_empty() {
        "/".to_string()
    } else if rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_string()
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[derive(Default)]
struct RequestLog {
    method: String,
    host: String,
    path: String,
    status: u16,
    service: String,
    target: String,
    req_headers: Vec<(String, String)>,
    resp_headers: Vec<(String, String)>,
    resp_bytes: u64,
    error: Option<String>,
}

fn header_log_key(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.to_lowercase().replace('-', "_"))
}

pub(crate) fn handle_http(shared: &Shared, client: TcpStream) {
    let start = Instant::now();
    let peer = client.peer_addr().ok();
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = client.set_nodelay(true);
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(client);
    let mut log = RequestLog::default();
    match serve_request(shared, &mut reader, &mut writer, peer, &mut log) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            if log.error.is_none() {
                log.error = Some(e.to_string());
            }
        }
    }
    let _ = writer.flush();
    let client = writer.get_ref();
    let _ = client.shutdown(Shutdown::Write);
    // Drain what the client may still send so closing does not reset the
    // connection before it has read the response.
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = pump(
        &mut Read::take(&mut reader, 1024 * 1024),
        &mut io::sink(),
        None,
    );

    let mut fields = vec![
        f_str("host", &log.host),
        f_str("path", &log.path),
        f_str("method", &log.method),
        f_num("status", log.status),
        f_str("service", &log.service),
        f_str("target", &log.target),
        f_num("duration", start.elapsed().as_micros()),
        f_num("resp_content_length", log.resp_bytes),
        f_str(
            "client_addr",
            &peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        ),
    ];
    for (k, v) in log.req_headers.iter().chain(log.resp_headers.iter()) {
        fields.push(f_str(k, v));
    }
    if let Some(e) = &log.error {
        fields.push(f_str("error", e));
    }
    log_line("INFO", "Request", &fields);
}

/// Serves one request. Returns Ok(false) when the client closed without a request.
fn serve_request<R: BufRead, W: Write>(
    shared: &Shared,
    reader: &mut R,
    writer: &mut W,
    peer: Option<SocketAddr>,
    log: &mut RequestLog,
) -> io::Result<bool> {
    let head = match read_head(reader) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(false),
        Err(e) => {
            log.status = 400;
            log.error = Some(e.to_string());
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    let mut parts = head.start.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
        _ => {
            log.status = 400;
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    log.method = method.clone();
    log.path = target.clone();
    if !version.starts_with("HTTP/1.") {
        log.status = 505;
        simple_response(writer, 505, "HTTP Version Not Supported")?;
        return Ok(true);
    }
    // Absolute-form request targets are reduced to origin-form.
    let target = match target.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        },
        None => target,
    };
    let host_header = head.get("host").unwrap_or("").to_string();
    log.host = host_header.clone();
    let host = strip_port(&host_header);
    let path_only = target.split('?').next().unwrap_or("").to_string();

    let (service, opts, prefix, _guard) = match shared.route(&host, &path_only) {
        Route::NotFound => {
            log.status = 404;
            simple_response(writer, 404, "Not Found")?;
            return Ok(true);
        }
        Route::Paused { service, message } => {
            log.status = 503;
            log.service = service;
            simple_response(writer, 503, &message)?;
            return Ok(true);
        }
        Route::Forward {
            service,
            opts,
            prefix,
            guard,
        } => (service, opts, prefix, guard),
    };
    log.service = service;
    log.target = opts.target.clone();
    for h in &opts.log_request_headers {
        log.req_headers
            .push((header_log_key("req", h), head.all(h).join(",")));
    }

    let chunked = head.is_chunked();
    let content_length = match head.content_length() {
        Ok(cl) => cl,
        Err(()) => {
            log.status = 400;
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    if opts.max_request_body > 0 && content_length.is_some_and(|cl| cl > opts.max_request_body) {
        log.status = 413;
        simple_response(writer, 413, "Request Entity Too Large")?;
        return Ok(true);
    }
    let has_body = chunked || content_length.is_some_and(|cl| cl > 0);
    let expect_continue = head
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));

    let forward_path = match (&prefix, opts.strip_path_prefix) {
        (Some(p), true) => strip_prefix_from(&target, p),
        _ => target.clone(),
    };

    // Build the upstream request head.
    let hop = head.hop_by_hop();
    let client_ip = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let mut up = format!("{method} {forward_path} HTTP/1.1\r\n");
    let mut xff: Option<String> = None;
    let mut xfp: Option<String> = None;
    let mut xfh: Option<String> = None;
    for (k, v) in &head.headers {
        let lk = k.to_lowercase();
        if hop.contains(&lk) || lk == "expect" || (chunked && lk == "content-length") {
            continue;
        }
        match lk.as_str() {
            "x-forwarded-for" => {
                if opts.forward_headers {
                    xff = Some(match xff {
                        Some(prev) => format!("{prev}, {v}"),
                        None => v.clone(),
                    });
                }
                continue;
            }
            "x-forwarded-proto" => {
                if opts.forward_headers {
                    xfp = Some(v.clone());
                }
                continue;
            }
            "x-forwarded-host" => {
                if opts.forward_headers {
                    xfh = Some(v.clone());
                }
                continue;
            }
            _ => {}
        }
        up.push_str(&format!("{k}: {v}\r\n"));
    }
    let xff = match xff {
        Some(prev) if !client_ip.is_empty() => format!("{prev}, {client_ip}"),
        Some(prev) => prev,
        None => client_ip.clone(),
    };
    up.push_str(&format!("X-Forwarded-For: {xff}\r\n"));
    up.push_str(&format!(
        "X-Forwarded-Proto: {}\r\n",
        xfp.unwrap_or_else(|| "http".into())
    ));
    up.push_str(&format!(
        "X-Forwarded-Host: {}\r\n",
        xfh.unwrap_or_else(|| host_header.clone())
    ));
    up.push_str("Connection: close\r\n\r\n");

    let target_ref = &_guard.0;
    let upstream = match target_ref.connect(opts.target_timeout.min(Duration::from_secs(10))) {
        Ok(s) => s,
        Err(e) => {
            log.status = 502;
            log.error = Some(format!("connect to {}: {e}", target_ref.spec));
            simple_response(writer, 502, "Bad Gateway")?;
            return Ok(true);
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = upstream.set_read_timeout(Some(opts.target_timeout.max(Duration::from_millis(1))));
    let _ = upstream.set_write_timeout(Some(opts.target_timeout.max(Duration::from_millis(1))));
    let up_read = upstream.try_clone()?;
    let mut up_writer = BufWriter::new(upstream);

    let sent: io::Result<()> = (|| {
        up_writer.write_all(up.as_bytes())?;
        up_writer.flush()?;
        if has_body {
            if expect_continue {
                writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                writer.flush()?;
            }
            if chunked {
                copy_chunked(reader, &mut up_writer)?;
            } else if let Some(cl) = content_length {
                pump(reader, &mut up_writer, Some(cl))?;
            }
        }
        up_writer.flush()
    })();
    if let Err(e) = sent {
        log.status = 502;
        log.error = Some(format!("sending request: {e}"));
        simple_response(writer, 502, "Bad Gateway")?;
        return Ok(true);
    }

    let mut up_reader = BufReader::new(up_read);
    let resp = loop {
        match read_head(&mut up_reader) {
            Ok(Some(h)) => {
                let code: u16 = h
                    .start
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    continue; // discard interim responses
                }
                if code < 100 || !h.start.starts_with("HTTP/1.") {
                    log.status = 502;
                    log.error = Some("invalid response from target".into());
                    simple_response(writer, 502, "Bad Gateway")?;
                    return Ok(true);
                }
                break (h, code);
            }
            Ok(None) => {
                log.status = 502;
                log.error = Some("target closed connection without response".into());
                simple_response(writer, 502, "Bad Gateway")?;
                return Ok(true);
            }
            Err(e) => {
                let status = if is_timeout(&e) { 504 } else { 502 };
                log.status = status;
                log.error = Some(format!("reading response: {e}"));
                simple_response(writer, status, reason_phrase(status))?;
                return Ok(true);
            }
        }
    };
    let (rh, code) = resp;
    log.status = code;
    for h in &opts.log_response_headers {
        log.resp_headers
            .push((header_log_key("resp", h), rh.all(h).join(",")));
    }
    let resp_cl = rh.content_length().unwrap_or(None);
    if opts.buffer_responses
        && opts.max_response_body > 0
        && resp_cl.is_some_and(|cl| cl > opts.max_response_body)
    {
        log.status = 502;
        log.error = Some("response body too large".into());
        simple_response(writer, 502, "Bad Gateway")?;
        return Ok(true);
    }
    let reason = rh.start.splitn(3, ' ').nth(2).unwrap_or("");
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    let resp_hop = rh.hop_by_hop();
    let resp_chunked = rh.is_chunked();
    for (k, v) in &rh.headers {
        let lk = k.to_lowercase();
        if resp_hop.contains(&lk) && lk != "trailer" {
            continue;
        }
        if resp_chunked && lk == "content-length" {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    writer.write_all(out.as_bytes())?;
    writer.flush()?;
    let no_body = method.eq_ignore_ascii_case("HEAD") || code == 204 || code == 304;
    let copied = if no_body {
        Ok(0)
    } else if resp_chunked {
        copy_chunked(&mut up_reader, writer)
    } else if let Some(cl) = resp_cl {
        pump(&mut up_reader, writer, Some(cl))
    } else {
        pump(&mut up_reader, writer, None)
    };
    match copied {
        Ok(n) => log.resp_bytes = n,
        Err(e) => log.error = Some(format!("copying response: {e}")),
    }
    Ok(true)
}

/// One health check attempt: GET path on the target, returns the status code.
pub(crate) fn health_check(target: &Target, path: &str, timeout: Duration) -> Result<u16, String> {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut s = target.connect(timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let host = split_host_port(&target.spec)
        .map(|(h, _)| h)
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kamal-proxy\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let line = read_line_limited(&mut r, 8192).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&line);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("invalid health check response: {}", text.trim()))
}
