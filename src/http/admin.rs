//! The admin endpoints: `/metrics`, `/healthz`, `/readyz`, on their own listener (and, in test builds with the
//! `failpoints` feature, `/failpoints/NAME` to configure the fault-injection seams).
//!
//! Readiness means "this instance can take a callback and keep it": it fails while shutting down and when the
//! spool (or, without one, the producer queue) is full, never because Kafka is unreachable. Tencent does not
//! retry a callback the ingress refuses, so a pod that leaves the Service during a Kafka outage loses what a
//! ready pod would have queued or spooled. Kafka's state is in the text of both probes and in `imcf_kafka_*`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::answer;
use crate::metrics::Metrics;
use crate::seam;
use crate::sink::KafkaSink;

/// State of the admin endpoints.
pub struct AdminEdge {
    metrics: Arc<Metrics>,
    sink: Arc<KafkaSink>,
    shutting_down: AtomicBool,
}

impl AdminEdge {
    /// Admin endpoints reporting on `sink` and `metrics`.
    pub fn new(metrics: Arc<Metrics>, sink: Arc<KafkaSink>) -> Self {
        AdminEdge { metrics, sink, shutting_down: AtomicBool::new(false) }
    }

    /// From now on `/readyz` answers 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.metrics.ready.set(0);
    }

    /// `Ok` when the service should receive traffic; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let readiness = if self.shutting_down.load(Ordering::SeqCst) {
            Err("shutting down".to_owned())
        } else {
            self.sink.readiness()
        };
        self.metrics.ready.set(i64::from(readiness.is_ok()));
        readiness
    }

    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        if let Some(name) = request.uri().path().strip_prefix("/failpoints/") {
            return configure_seam(name.to_owned(), request).await;
        }
        match request.uri().path() {
            "/metrics" => {
                let _ = self.readiness();
                self.sink.export_kafka_status();
                answer::text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            "/healthz" => {
                let (_, kafka) = self.sink.kafka_status();
                answer::text(StatusCode::OK, TEXT, format!("ok; kafka: {kafka}\n"))
            }
            "/readyz" => {
                let (_, kafka) = self.sink.kafka_status();
                match self.readiness() {
                    Ok(()) => answer::text(StatusCode::OK, TEXT, format!("ready; kafka: {kafka}\n")),
                    Err(reason) => answer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        format!("not ready: {reason}; kafka: {kafka}\n"),
                    ),
                }
            }
            _ => answer::text(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics, /healthz or /readyz\n"),
        }
    }
}

/// The admin endpoints' answer while the service starts (the spool is being recovered).
pub fn starting_answer(path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => answer::text(StatusCode::OK, TEXT, "ok; starting: recovering spool\n"),
        "/readyz" | "/metrics" => answer::text(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: recovering spool\n"),
        _ => answer::text(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

/// `PUT /failpoints/NAME` with an action as body sets a seam, `DELETE` clears it (test builds only).
async fn configure_seam(name: String, request: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    const TEXT: &str = "text/plain; charset=utf-8";
    let method = request.method().clone();
    let body = match http_body_util::Limited::new(request.into_body(), 4096).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer::text(StatusCode::BAD_REQUEST, TEXT, "unreadable body\n"),
    };
    let actions = String::from_utf8_lossy(&body).trim().to_owned();
    let result = match method {
        http::Method::PUT => seam::configure(&name, Some(&actions)),
        http::Method::DELETE => seam::configure(&name, None),
        _ => Err("PUT an action, or DELETE".into()),
    };
    match result {
        Ok(()) => answer::text(StatusCode::OK, TEXT, "ok\n"),
        Err(err) => answer::text(StatusCode::NOT_FOUND, TEXT, format!("{err}\n")),
    }
}
