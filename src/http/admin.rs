//! The admin endpoints: `/metrics`, `/healthz`, `/readyz`, on their own listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::answer;
use crate::metrics::Metrics;
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
        match request.uri().path() {
            "/metrics" => {
                let _ = self.readiness();
                answer::text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            "/healthz" => answer::text(StatusCode::OK, TEXT, "ok\n"),
            "/readyz" => match self.readiness() {
                Ok(()) => answer::text(StatusCode::OK, TEXT, "ready\n"),
                Err(reason) => answer::text(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {reason}\n")),
            },
            _ => answer::text(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics, /healthz or /readyz\n"),
        }
    }
}
