//! The HTTP edge: the accept loop both listeners share (connection limits, idle timeouts, draining), the
//! callback endpoint and the admin endpoints.

mod admin;
mod answer;
mod callback;
mod replay;
mod source;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use admin::{starting_answer, AdminEdge};
pub use callback::{CallbackEdge, EdgeError, EdgeSettings, EventRecord, Topics};
pub use source::{SourcePolicy, SourcePolicyError};

/// Limits every connection of a listener is held to.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's line and headers.
    pub header_read_timeout: Duration,
    /// How long a connection may sit idle between requests.
    pub keep_alive_timeout: Duration,
    /// Most connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections from one client address at once; further ones are closed as soon as they are accepted.
    pub max_connections_per_ip: usize,
    /// Also speak HTTP/2 (h2c prior knowledge); HTTP/1.1 only otherwise.
    pub http2: bool,
    /// When set, a peer this policy does not allow is closed as soon as it is accepted, without an answer (only
    /// meaningful when no trusted proxy speaks for other clients).
    pub peer_allowlist: Option<SourcePolicy>,
    /// When set, peers that are this policy's trusted proxies are exempt from `max_connections_per_ip`: an
    /// ingress carries every client's connections.
    pub proxies: Option<SourcePolicy>,
    /// Counts the peers closed at accept by `peer_allowlist` (`imcf_callbacks_total{outcome="source_not_allowed"}`).
    pub dropped_at_accept: Option<prometheus::IntCounter>,
    /// Counts the requests whose head hyper refused as too large with its own 431
    /// (`imcf_callbacks_total{outcome="head_too_large"}`).
    pub head_too_large: Option<prometheus::IntCounter>,
}

/// hyper's read buffer limit (`max_buf_size`): a request head that does not fit gets 431. hyper checks it between
/// reads, so a head is refused somewhere between this and twice this, and the buffer never holds more than twice
/// this. Tencent's heads are well under 1 KiB; a body is read through the buffer in pieces, never whole.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header lines in one request head; more get 431.
pub const MAX_HEADERS: usize = 64;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            http2: false,
            peer_allowlist: None,
            proxies: None,
            dropped_at_accept: None,
            head_too_large: None,
        }
    }
}

/// Serves `listener` with `handler` (called `name` in logs) until `shutdown` resolves, then asks every
/// connection to close after its current request and waits at most `drain_timeout` for them.
pub async fn serve<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header and idle timeouts are enforced per connection in `drive_connection`: hyper's own header timer also
    // runs while a kept-alive connection idles, which would cut idle connections at the header timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    if limits.http2 {
        builder.http2().timer(TokioTimer::new());
    } else {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_connections));
    let per_ip = Arc::new(PerIp { limit: limits.max_connections_per_ip.max(1), open: Mutex::new(HashMap::new()) });
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if limits.peer_allowlist.as_ref().is_some_and(|policy| !policy.allows(source::canonical(peer.ip()))) {
            debug!(listener = name, %peer, "peer outside --allow-cidr: closed at accept");
            if let Some(counter) = &limits.dropped_at_accept {
                counter.inc();
            }
            continue;
        }
        let exempt = limits.proxies.as_ref().is_some_and(|policy| policy.is_trusted_proxy(peer.ip()));
        let Some(slot) = per_ip.clone().enter(peer.ip(), exempt) else {
            debug!(listener = name, %peer, "too many connections from this address: closed at accept");
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(drive_connection(
            builder.clone(),
            stream,
            peer,
            handler.clone(),
            limits.clone(),
            stopping.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let open = max_connections - permits.available_permits();
    let drained = tokio::time::timeout(drain_timeout, permits.acquire_many(max_connections as u32)).await.is_ok();
    if drained {
        info!(listener = name, open, "connections drained");
    } else {
        warn!(listener = name, open, "connections still open after the drain timeout");
    }
}

/// Open connections per client address.
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// A slot for one more connection from `ip`, or `None` when it has `limit` open already (unless `exempt`).
    fn enter(self: Arc<Self>, ip: IpAddr, exempt: bool) -> Option<PerIpSlot> {
        let ip = source::canonical(ip);
        if exempt {
            return Some(PerIpSlot { per_ip: None, ip });
        }
        {
            let mut open = self.open.lock().expect("per-ip lock");
            let count = open.entry(ip).or_insert(0);
            if *count >= self.limit {
                return None;
            }
            *count += 1;
        }
        Some(PerIpSlot { per_ip: Some(self), ip })
    }
}

/// One open connection of an address; given back when dropped.
struct PerIpSlot {
    per_ip: Option<Arc<PerIp>>,
    ip: IpAddr,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let Some(per_ip) = &self.per_ip else { return };
        let mut open = per_ip.open.lock().expect("per-ip lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection is doing, shared by its I/O wrapper, its service and its driver.
struct Activity {
    opened: Instant,
    /// When the last response was handed over (nanoseconds since `opened`).
    last_response_nanos: AtomicU64,
    /// When the first byte of a request head arrived, plus one (0: no head under way).
    head_started_nanos: AtomicU64,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// Whether any request has started on this connection.
    served: AtomicBool,
}

impl Activity {
    fn at(&self, nanos: u64) -> Instant {
        self.opened + Duration::from_nanos(nanos)
    }

    fn since_opened(&self) -> u64 {
        self.opened.elapsed().as_nanos() as u64
    }

    /// When the connection must be closed if nothing changes: a request head must be complete within the header
    /// timeout from its first byte (or from the connection's opening), and an idle connection goes after the
    /// keep-alive timeout. `None` while a request is being served (its body and handler have their own limits).
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head_started = self.head_started_nanos.load(Ordering::Acquire);
        if head_started > 0 {
            return Some(self.at(head_started - 1) + limits.header_read_timeout);
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.opened + limits.header_read_timeout);
        }
        Some(self.at(self.last_response_nanos.load(Ordering::Acquire)) + limits.keep_alive_timeout)
    }
}

/// The socket, noting when the bytes of a new request head start arriving.
struct TrackedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let activity = &self.activity;
        if buf.filled().len() > before && activity.in_flight.load(Ordering::Acquire) == 0 {
            let now = activity.since_opened() + 1;
            let _ = activity.head_started_nanos.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn drive_connection<H, Fut>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    _permit: (OwnedSemaphorePermit, PerIpSlot),
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_response_nanos: AtomicU64::new(0),
        head_started_nanos: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        served: AtomicBool::new(false),
    });
    let tracker = activity.clone();
    let service = service_fn(move |request| {
        tracker.in_flight.fetch_add(1, Ordering::AcqRel);
        tracker.served.store(true, Ordering::Release);
        tracker.head_started_nanos.store(0, Ordering::Release);
        let response = handler(request, peer);
        let tracker = tracker.clone();
        async move {
            let response = response.await;
            tracker.last_response_nanos.store(tracker.since_opened(), Ordering::Release);
            tracker.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(response)
        }
    });
    let io = TrackedIo { stream, activity: activity.clone() };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    // The timer is only a lower bound of the real deadline, checked when it fires: re-arming it on every request
    // would cost a wake-up and two timer-wheel operations per request. Any deadline that starts later is at least
    // the shorter of the two timeouts away, so waking that often never closes a connection late. The 10 ms floor
    // keeps a zero timeout from making the driver spin.
    let recheck = limits.header_read_timeout.min(limits.keep_alive_timeout).max(Duration::from_millis(10));
    let timer = tokio::time::sleep_until(next_check(&activity, &limits, recheck));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    let too_large = err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse_too_large);
                    if let (true, Some(counter)) = (too_large, &limits.head_too_large) {
                        // hyper answered 431 itself, before any handler saw the request.
                        counter.inc();
                    }
                    debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = timer.as_mut() => {
                if activity.deadline(&limits).is_some_and(|deadline| Instant::now() >= deadline) {
                    // Dropping the connection closes the socket: a half-sent head would survive a graceful shutdown.
                    debug!(%peer, "closing a slow or idle connection");
                    return;
                }
                timer.as_mut().reset(next_check(&activity, &limits, recheck));
            }
        }
    }
}

/// When to look at the connection's deadline again: at the deadline itself, but no later than `recheck` from now.
fn next_check(activity: &Activity, limits: &ConnectionLimits, recheck: Duration) -> Instant {
    let soonest = Instant::now() + recheck;
    activity.deadline(limits).map_or(soonest, |deadline| deadline.min(soonest))
}
