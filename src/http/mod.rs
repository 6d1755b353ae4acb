//! The HTTP edge: the accept loop both listeners share, the callback endpoint and the admin endpoints.

mod admin;
mod answer;
mod callback;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use admin::AdminEdge;
pub use callback::{CallbackEdge, EdgeError, Topics};

/// How long a client may take to send the request line and headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on `listener` (called `name` in logs) with `handler` until `shutdown` resolves, then lets requests in flight
/// finish for at most `drain_timeout`.
pub async fn serve<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(listener = name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        debug!(%peer, error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(drain_timeout, graceful.shutdown()).await.is_err() {
        warn!(listener = name, open, "connections still open after the drain timeout");
    } else {
        info!(listener = name, open, "connections drained");
    }
}
