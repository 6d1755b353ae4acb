//! The throughput ceiling for the forwarder: a bare hyper server with the forwarder's connection settings
//! (src/http/mod.rs: hyper-util's auto builder limited to HTTP/1.1, keep-alive, TCP_NODELAY, TokioTimer with
//! a 10 s header read timeout, tokio's default multi-thread runtime) that reads each request body and
//! answers Tencent's fixed acknowledgement, with no parsing, no signature check, no metrics and no Kafka.
//! Whatever the forwarder does beyond this is its cost, including its own connection bookkeeping (the
//! connection-count semaphore and the idle-connection reaper of `drive_connection`), left out here.
//!
//! ```text
//! cargo run --release --example ceiling -- [--listen 127.0.0.1:0] [--exit-after SECS]
//! ```
//! Prints `ceiling listening on IP:PORT` (the bound address) on stdout, then serves until SIGTERM/SIGINT or
//! `--exit-after` seconds (default 3600), so a forgotten instance does not live forever.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Same as the forwarder's `HEADER_READ_TIMEOUT`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Same as the forwarder's default `--max-body-bytes`: the body is read the way the forwarder reads it.
const MAX_BODY_BYTES: usize = 65536;
/// The acknowledgement Tencent expects, byte for byte (the forwarder's `OK_BODY`).
const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body: every real server must take it off the connection before the next request.
    let read = Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    if read.is_err() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn usage() -> ! {
    eprintln!("usage: ceiling [--listen IP:PORT] [--exit-after SECS]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid default");
    let mut exit_after = Duration::from_secs(3600);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--exit-after" => {
                exit_after = Duration::from_secs(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()))
            }
            _ => usage(),
        }
    }

    let listener = TcpListener::bind(listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ceiling listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let builder = std::sync::Arc::new(builder.http1_only());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = tokio::time::sleep(exit_after);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _ = builder.serve_connection(TokioIo::new(stream), service_fn(answer)).await;
                });
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = &mut deadline => break,
        }
    }
    Ok(())
}
