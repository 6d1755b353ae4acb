//! The HTTP edge: the accept loop both listeners share (connection limits, idle timeouts, draining), the
//! callback endpoint and the admin endpoints.

mod admin;
mod answer;
mod callback;
mod replay;
mod source;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use admin::AdminEdge;
pub use callback::{CallbackEdge, EdgeError, EdgeSettings, Topics};
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
    /// Also speak HTTP/2 (h2c prior knowledge); HTTP/1.1 only otherwise.
    pub http2: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            http2: false,
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
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    if limits.http2 {
        builder.http2().timer(TokioTimer::new());
    } else {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_connections));
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
        let _ = stream.set_nodelay(true);
        tokio::spawn(drive_connection(
            builder.clone(),
            stream,
            peer,
            handler.clone(),
            limits.keep_alive_timeout,
            stopping.clone(),
            permit,
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

/// When the connection last finished a request, and how many it is serving now.
struct Activity {
    opened: Instant,
    last_nanos: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_nanos.store(self.opened.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    fn idle_deadline(&self, keep_alive: Duration) -> Instant {
        self.opened + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed)) + keep_alive
    }
}

async fn drive_connection<H, Fut>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    keep_alive: Duration,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let activity =
        Arc::new(Activity { opened: Instant::now(), last_nanos: AtomicU64::new(0), in_flight: AtomicUsize::new(0) });
    let tracker = activity.clone();
    let service = service_fn(move |request| {
        tracker.in_flight.fetch_add(1, Ordering::Relaxed);
        let response = handler(request, peer);
        let tracker = tracker.clone();
        async move {
            let response = response.await;
            tracker.touch();
            tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let idle_deadline = if activity.in_flight.load(Ordering::Relaxed) > 0 {
            // A request is being served: its own timeouts apply; look again later.
            Instant::now() + keep_alive
        } else {
            activity.idle_deadline(keep_alive)
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(idle_deadline), if !closing => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= activity.idle_deadline(keep_alive) {
                    debug!(%peer, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
