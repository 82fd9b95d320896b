//! Name resolution of a `--target` (`host:port`): an IP literal, /etc/hosts,
//! the system resolver, then a DNS A query of its own to /etc/resolv.conf's
//! nameservers (Docker's embedded DNS answers container names and ids).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::log::json_str;

pub(crate) fn split_host_port(spec: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid target {}: expected host:port", json_str(spec));
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = spec.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn lookup_etc_hosts(name: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string("/etc/hosts").ok()?;
    let mut v6 = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.eq_ignore_ascii_case(name)) {
            if ip.is_ipv4() {
                return Some(ip);
            }
            v6.get_or_insert(ip);
        }
    }
    v6
}

fn skip_dns_name(r: &[u8], mut p: usize) -> Option<usize> {
    loop {
        let l = *r.get(p)?;
        if l == 0 {
            return Some(p + 1);
        }
        if l & 0xC0 == 0xC0 {
            return Some(p + 2);
        }
        p += 1 + l as usize;
    }
}

pub(crate) fn parse_dns_answer(r: &[u8]) -> Option<Ipv4Addr> {
    if r.len() < 12 || r[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([r[4], r[5]]);
    let an = u16::from_be_bytes([r[6], r[7]]);
    let mut p = 12;
    for _ in 0..qd {
        p = skip_dns_name(r, p)? + 4;
    }
    for _ in 0..an {
        p = skip_dns_name(r, p)?;
        let h = r.get(p..p + 10)?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        let class = u16::from_be_bytes([h[2], h[3]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        p += 10;
        let data = r.get(p..p + len)?;
        if typ == 1 && class == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        p += len;
    }
    None
}

pub(crate) fn dns_query(server: SocketAddr, name: &str) -> io::Result<Option<Ipv4Addr>> {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.connect(server)?;
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        & 0xffff) as u16;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Ok(None);
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    sock.send(&q)?;
    let mut buf = [0u8; 1500];
    for _ in 0..4 {
        let n = sock.recv(&mut buf)?;
        if n < 12 || buf[0..2] != id.to_be_bytes() {
            continue;
        }
        return Ok(parse_dns_answer(&buf[..n]));
    }
    Ok(None)
}

/// Minimal DNS A-record lookup over UDP against /etc/resolv.conf nameservers
/// (Docker's embedded DNS answers container names and IDs).
fn dns_lookup(name: &str) -> Result<IpAddr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in conf.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(ip) = w.next().and_then(|s| s.parse::<IpAddr>().ok()) {
                    servers.push(ip);
                }
            }
            Some("search") | Some("domain") => search.extend(w.map(String::from)),
            _ => {}
        }
    }
    if servers.is_empty() {
        servers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let mut names = vec![name.to_string()];
    if !name.contains('.') {
        names.extend(search.iter().map(|d| format!("{name}.{d}")));
    }
    for n in &names {
        for s in &servers {
            if let Ok(Some(ip)) = dns_query(SocketAddr::new(*s, 53), n) {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    Err(format!("could not resolve host {}", json_str(name)))
}

pub(crate) fn resolve_target(spec: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let (host, port) = split_host_port(spec)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(ip) = lookup_etc_hosts(&host) {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Ok(addrs) = (host.as_str(), port).to_socket_addrs() {
        let addrs: Vec<SocketAddr> = addrs.collect();
        if let Some(a) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
            return Ok(*a);
        }
    }
    dns_lookup(&host).map(|ip| SocketAddr::new(ip, port))
}
