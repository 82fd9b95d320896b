//! Serving the router to the network: HTTP/1.1 over hyper with the limits a
//! listener anyone can reach needs (`axum::serve` has none of them).
//!
//! - **Header read** ([`HEADER_READ_TIMEOUT`]): hyper closes a connection whose
//!   request head is not complete this long after it started waiting for one
//!   (at accept, and again after each response: it also bounds the keep-alive
//!   wait between requests). Slowloris clients are cut here.
//! - **Idle** ([`IDLE_TIMEOUT`]): a connection on which no byte moved either
//!   way for this long is closed, whatever state it is in (a stalled request
//!   body, a client that stopped reading its response).
//! - **Request** ([`REQUEST_TIMEOUT`]): a handler, body read included, that
//!   takes longer answers 408 and the connection closes (bodies trickled a
//!   byte at a time). berth's handlers answer in milliseconds.
//! - **Cap** ([`MAX_CONNECTIONS`]): at the cap, a new connection sheds the
//!   connection that has been quiet the longest with no handler running; only
//!   if every connection is inside a handler is the new one refused. So idle
//!   connections, however many, never lock out `/healthz` or the API: the
//!   newest connection gets in. The cap also keeps sockets well below the fd
//!   limit, which the controller's SSH and Git connections share: a shed
//!   connection's socket closes in its own task, and while
//!   [`MAX_CLOSING`] of them are still open the accept loop waits, so a
//!   burst never holds more than the cap plus that many.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A real client sends its request head in one packet; 10 s allows a slow
/// link, and a keep-alive client reconnecting after 10 s quiet costs nothing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Nothing legitimate stalls a connection for 30 s; a Prometheus scrape or a
/// webhook delivery moves bytes continuously.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies are capped at 1 MiB and handlers only read state or set a flag.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Far above what scrapers, browsers and forges open at once, and at most
/// half of the usual 1,024 fds (see [`cap_for_fd_limit`]).
pub const MAX_CONNECTIONS: usize = 512;
/// Shed connections whose sockets may still be open: beyond this, accepting
/// waits for their tasks to close them.
pub const MAX_CLOSING: usize = 32;

/// Connections the kernel completes before berth accepts them. A burst
/// beyond the backlog has its SYNs dropped, and each such client waits a 1 s
/// retransmit; tokio's `bind` uses 128 (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// A listener on `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `bind`: a restarted berth rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the new soft limit
/// (`None`: unlimited). The soft default of 1,024 only protects programs
/// using `select(2)`; berth uses epoll, and its sockets, SSH masters and Git
/// fetches share the limit.
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The connection cap under an fd limit: at most half of it, so the
/// controller's own fds never run out because of HTTP clients.
pub fn cap_for_fd_limit(cap: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(n) => cap.min(usize::try_from(n / 2).unwrap_or(usize::MAX)).max(1),
        None => cap.max(1),
    }
}

/// Serve `app` on `listener` until `stop` turns true. Then no connection is
/// accepted any more; open ones finish the request in progress and close
/// (hyper's graceful shutdown) in their own tasks.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::default());
    loop {
        let accepted = tokio::select! {
            r = async {
                registry.closing_below(MAX_CLOSING).await;
                listener.accept().await
            } => r,
            // A dropped sender means stop as well.
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE and the like: an idle connection gives its fd back;
                // the pause keeps the loop from spinning on a persistent error.
                tracing::warn!(error = %e, "accept failed");
                registry.shed_one();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(conn) = registry.admit(limits.max_connections) else {
            tracing::debug!("connection refused: every connection is in a handler");
            continue;
        };
        tokio::spawn(connection(
            stream,
            app.clone(),
            conn,
            registry.clone(),
            limits,
            stop.clone(),
        ));
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    stream: TcpStream,
    app: Router,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    // Declared first, so dropped last: after the socket, also on a panic.
    let _registered = Registered {
        registry,
        conn: conn.clone(),
    };
    // Responses are written whole; no reason to wait for ACKs (Nagle).
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let router = TowerToHyperService::new(app);
    let in_handler = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = Busy::enter(&in_handler);
        let call = hyper::service::Service::call(&router, req);
        async move {
            let _busy = busy;
            match tokio::time::timeout(limits.request_timeout, call).await {
                Ok(r) => r,
                Err(_) => Ok::<Response, Infallible>(
                    (
                        StatusCode::REQUEST_TIMEOUT,
                        [(header::CONNECTION, "close")],
                        "request took too long\n",
                    )
                        .into_response(),
                ),
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);
    let mut draining = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection closed");
                }
                break;
            }
            _ = conn.shed.notified() => {
                tracing::debug!("idle connection shed at the connection cap");
                break;
            }
            _ = tokio::time::sleep_until(conn.last_io() + limits.idle_timeout) => {
                // Bytes may have moved since the deadline was computed.
                if conn.last_io().elapsed() >= limits.idle_timeout {
                    tracing::debug!("idle connection closed");
                    break;
                }
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                http.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// A connection's place in the registry, given up when its task ends.
struct Registered {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(&self.conn);
    }
}

/// What the accept loop knows of a live connection.
struct Conn {
    id: u64,
    epoch: Instant,
    /// Milliseconds after `epoch` a byte last moved.
    last_io_ms: AtomicU64,
    /// Handlers running (hyper's HTTP/1 runs one at a time).
    busy: AtomicUsize,
    /// Close now: the cap needs the slot.
    shed: Notify,
    /// Shed, and counted in [`Registry::closing`] until its socket closes
    /// (set and read under the registry's lock).
    was_shed: AtomicBool,
}

impl Conn {
    fn last_io(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }
}

struct Busy(Arc<Conn>);

impl Busy {
    fn enter(c: &Arc<Conn>) -> Busy {
        c.busy.fetch_add(1, Ordering::Relaxed);
        Busy(c.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// When the cap was last reported (ms after `epoch`), to log it once a minute.
    warned_ms: AtomicU64,
    /// Shed connections whose sockets are not closed yet.
    closing: AtomicUsize,
    /// A shed connection's socket closed.
    closed: Notify,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::default(),
            warned_ms: AtomicU64::new(u64::MAX),
            closing: AtomicUsize::new(0),
            closed: Notify::new(),
        }
    }
}

impl Registry {
    /// A slot for a new connection, shedding the quietest idle one at the
    /// cap; `None` if every connection is inside a handler.
    fn admit(&self, cap: usize) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() >= cap {
            self.warn_at_cap(cap);
            if !self.shed_quietest(&mut conns) {
                return None;
            }
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            last_io_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            shed: Notify::new(),
            was_shed: Default::default(),
        });
        conn.touch();
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn shed_one(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        self.shed_quietest(&mut conns)
    }

    fn shed_quietest(&self, conns: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let victim = conns
            .values()
            .filter(|c| c.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|c| c.last_io_ms.load(Ordering::Relaxed))
            .map(|c| c.id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.was_shed.store(true, Ordering::Relaxed);
                self.closing.fetch_add(1, Ordering::AcqRel);
                // A stored permit: the task sees it even if not waiting yet.
                c.shed.notify_one();
                true
            }
            None => false,
        }
    }

    /// `conn`'s task has ended and its socket is closed.
    fn remove(&self, conn: &Conn) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.remove(&conn.id);
        if conn.was_shed.load(Ordering::Relaxed) {
            drop(conns);
            self.closing.fetch_sub(1, Ordering::AcqRel);
            self.closed.notify_waiters();
        }
    }

    /// Until fewer than `max` shed connections are still closing.
    async fn closing_below(&self, max: usize) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check: a close in between still wakes it.
            closed.as_mut().enable();
            if self.closing.load(Ordering::Acquire) < max {
                return;
            }
            closed.await;
        }
    }

    fn warn_at_cap(&self, cap: usize) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.warned_ms.load(Ordering::Relaxed);
        if last == u64::MAX || now.saturating_sub(last) >= 60_000 {
            self.warned_ms.store(now, Ordering::Relaxed);
            tracing::warn!(
                cap,
                "HTTP connection cap reached: shedding idle connections"
            );
        }
    }
}

/// The socket, noting when bytes move (for the idle timeout and for choosing
/// whom to shed).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.conn.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.conn.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
