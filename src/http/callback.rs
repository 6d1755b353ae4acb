//! The callback endpoint: where Tencent's bytes enter, are checked, and are handed to the Kafka sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::Method;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::{debug, error};

use super::answer;
use crate::callback::{self, AppRegistry, BodyError, Classified, RawQuery, RejectError, SCHEMA_V1};
use crate::metrics::Metrics;
use crate::sink::{KafkaSink, Outgoing, SinkError};

/// Why a callback was refused; each variant knows its HTTP status, Tencent ErrorCode and metric label.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The path is not the callback path.
    #[error("no callback endpoint at this path; callbacks are POSTed to {0}")]
    NotFound(String),
    /// Callbacks are POSTed.
    #[error("method {0} not allowed; callbacks are POSTed")]
    MethodNotAllowed(Method),
    /// The body exceeds `--max-body-bytes`.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client stopped sending or broke the body framing.
    #[error("the request body could not be read")]
    BodyRead,
    /// The query failed validation (app, Sign).
    #[error(transparent)]
    Rejected(#[from] RejectError),
    /// The body of an authentic callback is unusable; its bytes went to the dead-letter topic.
    #[error(transparent)]
    InvalidBody(#[from] BodyError),
    /// The event could not be handed to Kafka, so it is not acknowledged.
    #[error(transparent)]
    Unavailable(#[from] SinkError),
    /// The service is shutting down and no longer hands events to Kafka.
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl EdgeError {
    /// HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::NotFound(_) => 404,
            EdgeError::MethodNotAllowed(_) => 405,
            EdgeError::BodyTooLarge(_) => 413,
            EdgeError::BodyRead => 400,
            EdgeError::Rejected(err) => err.status(),
            EdgeError::InvalidBody(err) => err.status(),
            EdgeError::Unavailable(err) => err.status(),
            EdgeError::ShuttingDown => 503,
        }
    }

    /// ErrorCode of the Tencent-format refusal.
    pub fn error_code(&self) -> u32 {
        match self {
            EdgeError::NotFound(_) => 40400,
            EdgeError::MethodNotAllowed(_) => 40500,
            EdgeError::BodyTooLarge(_) => 41300,
            EdgeError::BodyRead => 40001,
            EdgeError::Rejected(err) => err.error_code(),
            EdgeError::InvalidBody(err) => err.error_code(),
            EdgeError::Unavailable(err) => err.error_code(),
            EdgeError::ShuttingDown => 50300,
        }
    }

    /// `outcome` label in `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            EdgeError::NotFound(_) => "not_found",
            EdgeError::MethodNotAllowed(_) => "method_not_allowed",
            EdgeError::BodyTooLarge(_) => "body_too_large",
            EdgeError::BodyRead => "body_read_failed",
            EdgeError::Rejected(err) => err.outcome_label(),
            EdgeError::InvalidBody(err) => err.outcome_label(),
            EdgeError::Unavailable(err) => err.outcome_label(),
            EdgeError::ShuttingDown => "unavailable",
        }
    }
}

/// Where the callback endpoint publishes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Normalized exception events.
    pub events: String,
    /// Raw bytes of authentic but unusable callbacks.
    pub dead_letter: String,
}

/// State of the callback endpoint, shared by every connection.
pub struct CallbackEdge {
    apps: AppRegistry,
    topics: Topics,
    callback_path: String,
    max_body_bytes: u64,
    sink: Arc<KafkaSink>,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
}

impl CallbackEdge {
    /// An endpoint at `callback_path` accepting `apps`.
    pub fn new(
        apps: AppRegistry,
        callback_path: String,
        max_body_bytes: u64,
        topics: Topics,
        sink: Arc<KafkaSink>,
        metrics: Arc<Metrics>,
    ) -> Self {
        CallbackEdge { apps, topics, callback_path, max_body_bytes, sink, metrics, closed: AtomicBool::new(false) }
    }

    /// Stops handing events to Kafka: requests that still arrive get 503 and are not acknowledged.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Answers one request and counts its outcome.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        let (outcome, response) = match self.process(request).await {
            Ok(outcome) => (outcome, answer::ok()),
            Err(err) => {
                debug!(outcome = err.outcome_label(), reason = %err, "callback refused");
                (err.outcome_label(), answer::fail(err.status(), err.error_code(), &err.to_string()))
            }
        };
        self.metrics.callback(outcome);
        self.metrics.ack_duration.observe(arrived.elapsed().as_secs_f64());
        response
    }

    async fn process(&self, request: Request<Incoming>) -> Result<&'static str, EdgeError> {
        let (parts, body) = request.into_parts();
        if parts.uri.path() != self.callback_path {
            return Err(EdgeError::NotFound(self.callback_path.clone()));
        }
        if parts.method != Method::POST {
            return Err(EdgeError::MethodNotAllowed(parts.method));
        }
        let query = parts.uri.query().unwrap_or("");
        let received_at = SystemTime::now();
        let now_unix = received_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let authenticated = self.apps.authenticate(RawQuery::parse(query)?, now_unix)?;
        let body = self.read_body(&parts, body).await?;
        match callback::classify(&authenticated, &body, received_at) {
            Ok(Classified::Exception(event)) => {
                if self.closed.load(Ordering::SeqCst) {
                    return Err(EdgeError::ShuttingDown);
                }
                let json = event.to_json();
                let sdk_app_id = authenticated.sdk_app_id.to_string();
                let headers: [(&str, &[u8]); 5] = [
                    ("event_id", event.event_id().as_bytes()),
                    ("sdk_app_id", sdk_app_id.as_bytes()),
                    ("callback_command", callback::EXCEPTION_COMMAND.as_bytes()),
                    ("schema", SCHEMA_V1.as_bytes()),
                    ("content-type", b"application/json"),
                ];
                let record = Outgoing {
                    topic: &self.topics.events,
                    key: event.group_id().as_bytes(),
                    payload: &json,
                    headers: &headers,
                };
                self.sink.accept(record).await?;
                self.metrics.exception(event.category(), callback::error_code_label(event.error_code()));
                Ok("accepted")
            }
            Ok(Classified::Other { command }) => {
                debug!(%command, "callback command not published");
                Ok("ignored")
            }
            Err(err) => {
                self.dead_letter(&parts, &authenticated, &body, received_at, &err).await;
                Err(err.into())
            }
        }
    }

    async fn read_body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, EdgeError> {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes) {
            return Err(EdgeError::BodyTooLarge(self.max_body_bytes));
        }
        match Limited::new(body, self.max_body_bytes as usize).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<LengthLimitError>() => Err(EdgeError::BodyTooLarge(self.max_body_bytes)),
            Err(_) => Err(EdgeError::BodyRead),
        }
    }

    async fn dead_letter(
        &self,
        parts: &Parts,
        authenticated: &callback::AuthenticatedQuery<'_>,
        body: &[u8],
        received_at: SystemTime,
        err: &BodyError,
    ) {
        let event_id = callback::event_id(authenticated.sdk_app_id, body);
        let sdk_app_id = authenticated.sdk_app_id.to_string();
        let reason = err.to_string();
        let received_at = humantime::format_rfc3339_millis(received_at).to_string();
        let content_type =
            parts.headers.get(CONTENT_TYPE).map(|value| value.as_bytes()).unwrap_or(b"application/octet-stream");
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("event_id", event_id.as_bytes()),
            ("sdk_app_id", sdk_app_id.as_bytes()),
            ("reason", reason.as_bytes()),
            ("reason_code", err.outcome_label().as_bytes()),
            ("query", parts.uri.query().unwrap_or("").as_bytes()),
            ("received_at", received_at.as_bytes()),
            ("content-type", content_type),
        ];
        if let Some(command) = &authenticated.callback_command {
            headers.push(("callback_command", command.as_bytes()));
        }
        let record =
            Outgoing { topic: &self.topics.dead_letter, key: event_id.as_bytes(), payload: body, headers: &headers };
        match self.sink.accept(record).await {
            Ok(()) => self.metrics.dead_letters.inc(),
            Err(sink_err) => {
                self.metrics.events_lost.inc();
                error!(%event_id, error = %sink_err, "dead letter could not be handed to Kafka; raw body lost");
            }
        }
    }
}
