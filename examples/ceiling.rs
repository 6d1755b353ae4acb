//! The throughput ceiling for the forwarder: a bare hyper server with the forwarder's connection settings
//! (src/http/mod.rs: hyper-util's auto builder limited to HTTP/1.1, keep-alive, TCP_NODELAY, TokioTimer with
//! a 10 s header read timeout, tokio's default multi-thread runtime) that reads each request body and
//! answers Tencent's fixed acknowledgement, with no parsing, no signature check, no metrics and no Kafka.
//! Whatever the forwarder does beyond this is its cost, including its own connection bookkeeping (the
//! connection-count semaphore and the idle-connection reaper of `drive_connection`), left out here.
//!
//! With `--kafka BROKERS --topic TOPIC` it is the *Kafka floor* instead: the same server, which also hands
//! each body, as it came, to librdkafka with the forwarder's producer defaults (idempotent, acks=all, lz4,
//! linger 20 ms) before answering. No key, no headers, delivery reports ignored: the least any server that
//! publishes each callback to Kafka has to do, whatever it does about parsing and checking.
//!
//! ```text
//! cargo run --release --example ceiling -- [--listen 127.0.0.1:0] [--exit-after SECS] [--kafka BROKERS --topic T]
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
use im_callback_forwarder::sink::DEFAULT_PRODUCER_PROPERTIES;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use tokio::net::TcpListener;

/// Same as the forwarder's `HEADER_READ_TIMEOUT`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Same as the forwarder's default `--max-body-bytes`: the body is read the way the forwarder reads it.
const MAX_BODY_BYTES: usize = 65536;
/// The acknowledgement Tencent expects, byte for byte (the forwarder's `OK_BODY`).
const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

/// Where the Kafka floor publishes.
struct Publish {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

async fn answer(request: Request<Incoming>, publish: Option<&Publish>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body: every real server must take it off the connection before the next request.
    let read = Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    match (read, publish) {
        (Err(_), _) => *response.status_mut() = StatusCode::BAD_REQUEST,
        (Ok(body), Some(publish)) => {
            let body = body.to_bytes();
            if publish.producer.send(BaseRecord::<(), [u8]>::to(&publish.topic).payload(&body[..])).is_err() {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        (Ok(_), None) => {}
    }
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn usage() -> ! {
    eprintln!("usage: ceiling [--listen IP:PORT] [--exit-after SECS] [--kafka BROKERS --topic TOPIC]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid default");
    let mut exit_after = Duration::from_secs(3600);
    let (mut brokers, mut topic) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--exit-after" => {
                exit_after = Duration::from_secs(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()))
            }
            "--kafka" => brokers = Some(args.next().unwrap_or_else(|| usage())),
            "--topic" => topic = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let publish: Option<&'static Publish> = match (brokers, topic) {
        (Some(brokers), Some(topic)) => {
            let mut config = ClientConfig::new();
            for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
                config.set(*key, *value);
            }
            let producer = config.set("bootstrap.servers", brokers).create().map_err(std::io::Error::other)?;
            Some(Box::leak(Box::new(Publish { producer, topic })))
        }
        (None, None) => None,
        _ => usage(),
    };

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
                    let service = service_fn(move |request| answer(request, publish));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = &mut deadline => break,
        }
    }
    if let Some(publish) = publish {
        use rdkafka::producer::Producer;
        let _ = publish.producer.flush(Duration::from_secs(30));
    }
    Ok(())
}
