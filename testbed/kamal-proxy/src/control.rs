//! The control protocol between `kamal-proxy <command>` and the running server,
//! over its unix socket: one request line of escaped, tab-separated args;
//! response lines "D <escaped text>", then "OK" or "ERR <escaped message>".

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::log::json_str;
use crate::state::Shared;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

pub(crate) fn encode_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| escape(f))
        .collect::<Vec<_>>()
        .join("\t")
}

pub(crate) fn decode_line(line: &str) -> Vec<String> {
    line.split('\t').map(unescape).collect()
}

pub(crate) fn handle_control(shared: &Shared, stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    Read::take(&mut reader, 1024 * 1024).read_line(&mut line)?;
    let args = decode_line(line.trim_end_matches(['\n', '\r']));
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("deploy") => shared.deploy(rest).map(|_| Vec::new()),
        Some("remove") => shared.remove(rest).map(|_| Vec::new()),
        Some("stop") => shared.stop(rest).map(|_| Vec::new()),
        Some("resume") => shared.resume(rest).map(|_| Vec::new()),
        Some("list") => shared.list(rest),
        Some(other) => Err(format!("unknown command {}", json_str(other))),
        None => Err("empty command".into()),
    };
    let mut out = BufWriter::new(stream);
    match result {
        Ok(lines) => {
            for l in lines {
                writeln!(out, "D {}", escape(&l))?;
            }
            writeln!(out, "OK")?;
        }
        Err(e) => writeln!(out, "ERR {}", escape(&e))?,
    }
    out.flush()
}

pub(crate) fn client_call(socket: &Path, args: &[String]) -> Result<Vec<String>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "unable to connect to kamal-proxy at {} ({e}); is `kamal-proxy run` running?",
            socket.display()
        )
    })?;
    let mut req = encode_line(args);
    req.push('\n');
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("unable to send command to kamal-proxy: {e}"))?;
    let reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| format!("error reading from kamal-proxy: {e}"))?;
        if let Some(d) = line.strip_prefix("D ") {
            lines.push(unescape(d));
        } else if line == "OK" {
            return Ok(lines);
        } else if let Some(e) = line.strip_prefix("ERR ") {
            return Err(unescape(e));
        }
    }
    Err("connection to kamal-proxy closed unexpectedly".into())
}
