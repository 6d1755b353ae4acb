//! The callback endpoint: where Tencent's bytes enter, are checked, and are handed to the Kafka sink.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::watch;
use tracing::{debug, error};

use super::answer;
use super::replay::{CaseFolded, ReplayCache, GENERATION_ENTRIES};
use super::source::SourcePolicy;
use crate::callback::{
    self, AppRegistry, AuthenticatedQuery, BodyError, Disposition, Normalized, RawQuery, RejectError, RouteRefusal,
    RouteTable, RoutingPolicy, SCHEMA_CALLBACK_V1, SCHEMA_V1,
};
use crate::metrics::Metrics;
use crate::sink::{KafkaSink, Outgoing, SinkError};

/// Why a callback was refused; each variant knows its HTTP status, Tencent ErrorCode and metric label.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The path is not the callback path (which the answer does not reveal).
    #[error("not found")]
    NotFound,
    /// Callbacks are POSTed.
    #[error("method {0} not allowed; callbacks are POSTed")]
    MethodNotAllowed(Method),
    /// The client address is outside `--allow-cidr`.
    #[error("source address not allowed")]
    SourceNotAllowed,
    /// The body exceeds `--max-body-bytes`.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client stopped sending or broke the body framing.
    #[error("the request body could not be read")]
    BodyRead,
    /// The body did not arrive within `--body-read-timeout`.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The `contenttype` parameter declares something other than JSON; the bytes were dead-lettered.
    #[error("{0} is not JSON; callbacks are application/json")]
    UnsupportedContentType(&'static str),
    /// The query failed validation (app, Sign).
    #[error(transparent)]
    Rejected(#[from] RejectError),
    /// The body of an authentic callback is unusable; its bytes went to the dead-letter topic.
    #[error(transparent)]
    InvalidBody(#[from] BodyError),
    /// The routing policy refuses the command.
    #[error(transparent)]
    Refused(#[from] RouteRefusal),
    /// The event could not be handed to Kafka, so it is not acknowledged.
    #[error(transparent)]
    Unavailable(#[from] SinkError),
    /// The service is shutting down and no longer hands events to Kafka.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// An identical callback arriving at the same time was refused; this copy is answered the same.
    #[error("an identical callback received at the same time could not be handed to Kafka, try again later")]
    FirstCopyRefused,
}

impl EdgeError {
    /// HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::NotFound => 404,
            EdgeError::MethodNotAllowed(_) => 405,
            EdgeError::SourceNotAllowed => 403,
            EdgeError::BodyTooLarge(_) => 413,
            EdgeError::BodyRead => 400,
            EdgeError::BodyTimeout(_) => 408,
            EdgeError::UnsupportedContentType(_) => 415,
            EdgeError::Rejected(err) => err.status(),
            EdgeError::InvalidBody(err) => err.status(),
            EdgeError::Refused(err) => err.status(),
            EdgeError::Unavailable(err) => err.status(),
            EdgeError::ShuttingDown | EdgeError::FirstCopyRefused => 503,
        }
    }

    /// ErrorCode of the Tencent-format refusal.
    pub fn error_code(&self) -> u32 {
        match self {
            EdgeError::NotFound => 40400,
            EdgeError::MethodNotAllowed(_) => 40500,
            EdgeError::SourceNotAllowed => 40303,
            EdgeError::BodyTooLarge(_) => 41300,
            EdgeError::BodyRead => 40001,
            EdgeError::BodyTimeout(_) => 40800,
            EdgeError::UnsupportedContentType(_) => 41500,
            EdgeError::Rejected(err) => err.error_code(),
            EdgeError::InvalidBody(err) => err.error_code(),
            EdgeError::Refused(err) => err.error_code(),
            EdgeError::Unavailable(err) => err.error_code(),
            EdgeError::ShuttingDown | EdgeError::FirstCopyRefused => 50300,
        }
    }

    /// Whether the connection is closed after this refusal: a client that is not (or not yet proven to be) Tencent
    /// does not keep a connection, and a body left unread cannot be skipped. Refusals of authentic callbacks
    /// (unusable bodies, 503s) keep Tencent's kept-alive connection.
    pub fn closes_connection(&self) -> bool {
        matches!(self.status(), 401 | 403 | 404 | 405 | 408 | 413)
    }

    /// `outcome` label in `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            EdgeError::NotFound => "not_found",
            EdgeError::MethodNotAllowed(_) => "method_not_allowed",
            EdgeError::SourceNotAllowed => "source_not_allowed",
            EdgeError::BodyTooLarge(_) => "body_too_large",
            EdgeError::BodyRead => "body_read_failed",
            EdgeError::BodyTimeout(_) => "body_timeout",
            EdgeError::UnsupportedContentType(_) => "unsupported_content_type",
            EdgeError::Rejected(err) => err.outcome_label(),
            EdgeError::InvalidBody(err) => err.outcome_label(),
            EdgeError::Refused(err) => err.outcome_label(),
            EdgeError::Unavailable(err) => err.outcome_label(),
            EdgeError::ShuttingDown | EdgeError::FirstCopyRefused => "unavailable",
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

/// Everything the callback endpoint checks requests against.
pub struct EdgeSettings {
    /// Accepted apps and their tokens; [`CallbackEdge::replace_apps`] swaps them atomically (live reload).
    pub apps: ArcSwap<AppRegistry>,
    /// Path of the endpoint.
    pub callback_path: String,
    /// Who may call.
    pub source: SourcePolicy,
    /// Body size limit.
    pub max_body_bytes: u64,
    /// Time allowed to receive a body.
    pub body_read_timeout: Duration,
    /// Exception and dead-letter topics.
    pub topics: Topics,
    /// Routes of other commands.
    pub routes: RouteTable,
    /// Answers to unrouted commands and before-callbacks.
    pub routing: RoutingPolicy,
}

/// Callbacks being made safe right now (waiting for their fsync, say), by fingerprint: an identical callback
/// that arrives meanwhile waits for the first copy's outcome instead of being answered "replayed" for an event
/// that may yet fail.
#[derive(Default)]
struct InFlight {
    // The channel to the waiting copies is made by the first duplicate: most callbacks never have one.
    pending: Mutex<nohash_hasher::IntMap<u64, Option<watch::Sender<Option<bool>>>>>,
}

/// What a request learns about its fingerprint.
enum Claim<'a> {
    /// The first copy: publish it, then settle the claim.
    First(Settle<'a>),
    /// Published before, within the replay window.
    Replayed,
    /// Another copy is being published: its outcome, when it comes.
    Wait(watch::Receiver<Option<bool>>),
}

/// The first copy's duty to tell waiting duplicates how it went; a request dropped before settling (the client
/// went away) counts as refused, so that a later copy is published rather than answered "replayed".
struct Settle<'a> {
    fingerprint: u64,
    edge: &'a CallbackEdge,
    settled: bool,
}

impl Settle<'_> {
    fn settle(mut self, accepted: bool) {
        self.finish(accepted);
    }

    fn finish(&mut self, accepted: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut pending = self.edge.in_flight.pending.lock().expect("in-flight lock");
        if !accepted {
            self.edge.replays.forget(self.fingerprint);
        }
        if let Some(Some(waiting)) = pending.remove(&self.fingerprint) {
            let _ = waiting.send(Some(accepted));
        }
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// State of the callback endpoint, shared by every connection.
pub struct CallbackEdge {
    settings: EdgeSettings,
    clock: AnchoredClock,
    replays: ReplayCache,
    in_flight: InFlight,
    sink: Arc<KafkaSink>,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
}

/// How long the replay cache must remember a callback: as long as its `RequestTime` can be accepted. With
/// whole seconds compared, a `RequestTime` is accepted during 2 × skew + 1 s of the acceptance clock, which runs at
/// the monotonic clock's pace ([`AnchoredClock`]), as the cache does; one more second is margin.
pub fn replay_retention(max_clock_skew: Duration) -> Duration {
    max_clock_skew.saturating_mul(2).saturating_add(Duration::from_secs(2))
}

/// The clock `RequestTime` is checked against: the wall clock read once at start, advanced by the monotonic
/// clock. A step of the wall clock after start (NTP, an operator) cannot reopen a `RequestTime`'s window beyond
/// what the replay cache remembers; NTP's rate corrections still apply, as they apply to the monotonic clock.
struct AnchoredClock {
    wall: Duration,
    started: Instant,
}

impl AnchoredClock {
    fn new() -> Self {
        AnchoredClock {
            wall: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
            started: Instant::now(),
        }
    }

    fn now_unix_secs(&self) -> i64 {
        (self.wall + self.started.elapsed()).as_secs() as i64
    }
}

/// The record a normalized callback is published as: its JSON, key and the 5 headers (`event_id`, `sdk_app_id`,
/// `callback_command`, `schema`, `content-type`). Shared by the endpoint and `redrive`, so that a redriven
/// event is the record a live callback of the same body would have been.
pub struct EventRecord<'n> {
    /// The event's JSON.
    pub payload: Vec<u8>,
    /// The record key: the group (exception events) or the envelope's key, else the event ID; never empty.
    pub key: &'n str,
    /// The `schema` header.
    pub schema: &'static str,
    // The decimal SdkAppid (at most 20 digits for a u64), kept inline: no allocation per record.
    sdk_app_id: [u8; 20],
    sdk_app_id_len: usize,
}

impl<'n> EventRecord<'n> {
    /// The record of `normalized`, a callback of `sdk_app_id`.
    pub fn new(sdk_app_id: u64, normalized: &'n Normalized<'_>) -> Self {
        let (payload, key, schema) = match normalized {
            Normalized::Exception(event) => (event.to_json(), event.group_id(), SCHEMA_V1),
            Normalized::Callback(envelope) => (envelope.to_json(), envelope.record_key(), SCHEMA_CALLBACK_V1),
        };
        // Never an empty key: partitioners treat it as "no key" and scatter the group's events.
        let key = if key.is_empty() { normalized.event_id() } else { key };
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(sdk_app_id).as_bytes();
        let mut inline = [0u8; 20];
        inline[..digits.len()].copy_from_slice(digits);
        EventRecord { payload, key, schema, sdk_app_id: inline, sdk_app_id_len: digits.len() }
    }

    /// The headers, in the order the endpoint writes them.
    pub fn headers<'h>(&'h self, normalized: &'h Normalized<'_>) -> [(&'static str, &'h [u8]); 5] {
        [
            ("event_id", normalized.event_id().as_bytes()),
            ("sdk_app_id", &self.sdk_app_id[..self.sdk_app_id_len]),
            ("callback_command", normalized.command().as_bytes()),
            ("schema", self.schema.as_bytes()),
            ("content-type", b"application/json"),
        ]
    }

    /// The record for `topic` with `headers` (from [`EventRecord::headers`]).
    pub fn outgoing<'o>(&'o self, topic: &'o str, headers: &'o [(&'o str, &'o [u8])]) -> Outgoing<'o> {
        Outgoing { topic, key: self.key.as_bytes(), payload: &self.payload, headers }
    }
}

/// How an accepted request is answered.
enum Accepted {
    Ok(&'static str),
    Refused(RouteRefusal),
}

impl CallbackEdge {
    /// An endpoint publishing through `sink`.
    pub fn new(settings: EdgeSettings, sink: Arc<KafkaSink>, metrics: Arc<Metrics>) -> Self {
        let retention = replay_retention(settings.apps.load().max_clock_skew());
        CallbackEdge {
            settings,
            clock: AnchoredClock::new(),
            replays: ReplayCache::new(retention, GENERATION_ENTRIES),
            in_flight: InFlight::default(),
            sink,
            metrics,
            closed: AtomicBool::new(false),
        }
    }

    /// Replaces the accepted apps and tokens (live reload): requests already past their Sign check are not
    /// affected, the next ones are checked against `apps`. The clock skew (and so the replay window) stays.
    pub fn replace_apps(&self, apps: AppRegistry) {
        self.settings.apps.store(Arc::new(apps));
    }

    /// The `imcf_callbacks_total` series of `outcome`, for refusals made before a request is read (at accept).
    pub fn outcome_counter(&self, outcome: &'static str) -> prometheus::IntCounter {
        self.metrics.outcome_counter(outcome)
    }

    /// Stops handing events to Kafka: requests that still arrive get 503 and are not acknowledged.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Answers one request and counts its outcome.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        // HTTP/2 has no Connection header (hyper would strip it); its connections end by their own limits.
        let http1 = request.version() <= http::Version::HTTP_11;
        let (outcome, response) = match self.process(request, peer).await {
            Ok(Accepted::Ok(outcome)) => (outcome, answer::ok()),
            Ok(Accepted::Refused(refusal)) => {
                (refusal.outcome_label(), answer::fail(refusal.status(), refusal.error_code(), &refusal.to_string()))
            }
            Err(err) => {
                debug!(outcome = err.outcome_label(), reason = %err, "callback refused");
                let mut response = answer::fail(err.status(), err.error_code(), &err.to_string());
                if http1 && err.closes_connection() {
                    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                (err.outcome_label(), response)
            }
        };
        self.metrics.callback(outcome);
        self.metrics.ack_duration.observe(arrived.elapsed().as_secs_f64());
        response
    }

    async fn process(&self, request: Request<Incoming>, peer: SocketAddr) -> Result<Accepted, EdgeError> {
        let settings = &self.settings;
        let (parts, body) = request.into_parts();
        if parts.uri.path() != settings.callback_path {
            return Err(EdgeError::NotFound);
        }
        if parts.method != Method::POST {
            return Err(EdgeError::MethodNotAllowed(parts.method));
        }
        if !settings.source.is_open()
            && !settings.source.client_ip(peer.ip(), &parts.headers).is_some_and(|ip| settings.source.allows(ip))
        {
            return Err(EdgeError::SourceNotAllowed);
        }
        let query = parts.uri.query().unwrap_or("");
        let received_at = SystemTime::now();
        let now_unix = self.clock.now_unix_secs();
        let raw_query = RawQuery::parse(query)?;
        let signature = self.replays.fingerprint((CaseFolded(raw_query.sign()), raw_query.request_time()));
        // One registry for the whole check: a reload meanwhile applies to the next request.
        let apps = settings.apps.load();
        let authenticated = apps.authenticate(raw_query, now_unix)?;
        // An unsigned app's Sign and RequestTime are not verified, so they do not make the same body another callback.
        let signature = if apps.requires_sign(authenticated.sdk_app_id) { signature } else { 0 };
        drop(apps);
        let body = self.read_body(&parts, body).await?;
        if let Some(declared) = self.non_json_declaration(&authenticated) {
            let err = EdgeError::UnsupportedContentType(declared);
            self.dead_letter(&parts, &authenticated, &body, received_at, &err).await;
            return Err(err);
        }
        let normalized = match callback::normalize(&authenticated, &body, received_at) {
            Ok(normalized) => normalized,
            Err(err) => {
                let err = EdgeError::InvalidBody(err);
                self.dead_letter(&parts, &authenticated, &body, received_at, &err).await;
                return Err(err);
            }
        };
        let disposition = callback::route(&settings.routes, normalized.command(), settings.routing);
        let answer = match disposition.refusal() {
            Some(refusal) => Accepted::Refused(refusal),
            None => Accepted::Ok(disposition.outcome_label()),
        };
        let topic = match (&disposition, &normalized) {
            (Disposition::Exception, _) => &settings.topics.events,
            (Disposition::Publish { topic, .. }, _) => *topic,
            (Disposition::Skip { .. }, _) => {
                self.metrics.unrouted(callback::command_label(normalized.command()));
                return Ok(answer);
            }
        };
        // The same callback posted again within the Sign window is answered as before but not published twice.
        let fingerprint = self.replays.fingerprint((normalized.event_id(), signature));
        let replayed = |answer: Accepted| match answer {
            Accepted::Ok(_) => Accepted::Ok("replayed"),
            refused => refused,
        };
        let claim = match self.claim(fingerprint) {
            Claim::First(claim) => claim,
            Claim::Replayed => return Ok(replayed(answer)),
            Claim::Wait(mut outcome) => {
                let accepted = match outcome.wait_for(Option::is_some).await {
                    Ok(settled) => settled.unwrap_or(false),
                    Err(_) => false,
                };
                return if accepted { Ok(replayed(answer)) } else { Err(EdgeError::FirstCopyRefused) };
            }
        };
        match self.publish(topic, &authenticated, &normalized).await {
            Ok(()) => {
                claim.settle(true);
                Ok(answer)
            }
            Err(err) => {
                claim.settle(false);
                match answer {
                    // A before-callback's refusal must hold whatever happened to its record: a 503 would let the
                    // user's action through. The record is lost (Tencent does not send the callback again).
                    Accepted::Refused(refusal) => {
                        self.metrics.events_lost.inc();
                        error!(event_id = normalized.event_id(), error = %err, "before-callback refused, but its record could not be handed to Kafka; record lost");
                        Ok(Accepted::Refused(refusal))
                    }
                    Accepted::Ok(_) => Err(err),
                }
            }
        }
    }

    fn claim(&self, fingerprint: u64) -> Claim<'_> {
        let mut pending = self.in_flight.pending.lock().expect("in-flight lock");
        if let Some(waiting) = pending.get_mut(&fingerprint) {
            return Claim::Wait(waiting.get_or_insert_with(|| watch::channel(None).0).subscribe());
        }
        if !self.replays.first_time(fingerprint) {
            return Claim::Replayed;
        }
        pending.insert(fingerprint, None);
        Claim::First(Settle { fingerprint, edge: self, settled: false })
    }

    async fn publish(
        &self,
        topic: &str,
        authenticated: &AuthenticatedQuery<'_>,
        normalized: &Normalized<'_>,
    ) -> Result<(), EdgeError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(EdgeError::ShuttingDown);
        }
        let record = EventRecord::new(authenticated.sdk_app_id, normalized);
        self.sink.accept(record.outgoing(topic, &record.headers(normalized))).await?;
        match normalized {
            Normalized::Exception(event) => {
                self.metrics.exception(event.category(), callback::error_code_label(event.error_code()))
            }
            Normalized::Callback(envelope) => self.metrics.routed(callback::command_label(envelope.callback_command())),
        }
        Ok(())
    }

    /// The declared type, when the `contenttype` parameter says the body is not JSON. The `Content-Type` header
    /// is not checked: Tencent documents only the parameter, and refusing on an undocumented header could turn
    /// every authentic callback away; a body that is not JSON is refused by the parser anyway.
    fn non_json_declaration(&self, authenticated: &AuthenticatedQuery<'_>) -> Option<&'static str> {
        match authenticated.content_type.as_deref() {
            Some(declared) if !declared.eq_ignore_ascii_case("json") => Some("query parameter contenttype"),
            _ => None,
        }
    }

    async fn read_body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, EdgeError> {
        let limit = self.settings.max_body_bytes;
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(EdgeError::BodyTooLarge(limit));
        }
        let timeout = self.settings.body_read_timeout;
        // One buffer, sized by Content-Length (at most the limit) and never grown past the limit: a body sent as
        // many tiny chunks must not be held as many small allocations.
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let capacity = declared.map_or(16 * 1024, |length| length as usize).min(limit);
        let read = async move {
            let mut body = body;
            let mut buffer = Vec::with_capacity(capacity);
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map_err(|_| EdgeError::BodyRead)?.into_data() else { continue };
                if data.len() > limit - buffer.len() {
                    return Err(EdgeError::BodyTooLarge(limit as u64));
                }
                if buffer.capacity() - buffer.len() < data.len() {
                    // Grow by doubling, but never past the limit.
                    let wanted = (buffer.len() + data.len()).max(buffer.capacity() * 2).min(limit);
                    buffer.reserve_exact(wanted - buffer.len());
                }
                buffer.extend_from_slice(&data);
            }
            Ok(Bytes::from(buffer))
        };
        match tokio::time::timeout(timeout, read).await {
            Err(_) => Err(EdgeError::BodyTimeout(timeout.as_secs())),
            Ok(result) => result,
        }
    }

    async fn dead_letter(
        &self,
        parts: &Parts,
        authenticated: &AuthenticatedQuery<'_>,
        body: &[u8],
        received_at: SystemTime,
        err: &EdgeError,
    ) {
        let event_id = callback::event_id(authenticated.sdk_app_id, body);
        let sdk_app_id = authenticated.sdk_app_id.to_string();
        let reason = err.to_string();
        let query = callback::without_sign(authenticated.raw);
        let received_at = humantime::format_rfc3339_millis(received_at).to_string();
        let content_type =
            parts.headers.get(CONTENT_TYPE).map(|value| value.as_bytes()).unwrap_or(b"application/octet-stream");
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("event_id", event_id.as_bytes()),
            ("sdk_app_id", sdk_app_id.as_bytes()),
            ("reason", reason.as_bytes()),
            ("reason_code", err.outcome_label().as_bytes()),
            ("query", query.as_bytes()),
            ("received_at", received_at.as_bytes()),
            ("content-type", content_type),
        ];
        if let Some(command) = &authenticated.callback_command {
            headers.push(("callback_command", command.as_bytes()));
        }
        let record = Outgoing {
            topic: &self.settings.topics.dead_letter,
            key: event_id.as_bytes(),
            payload: body,
            headers: &headers,
        };
        match self.sink.accept(record).await {
            Ok(()) => self.metrics.dead_letters.inc(),
            Err(sink_err) => {
                self.metrics.events_lost.inc();
                error!(%event_id, error = %sink_err, "dead letter could not be handed to Kafka; raw body lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_outlives_the_acceptance_window() {
        // A RequestTime T is accepted while the whole-second clock reads T - skew ..= T + skew: 2 x skew + 1 s.
        for skew in [0, 1, 5, 60, 86_400] {
            let skew = Duration::from_secs(skew);
            assert!(replay_retention(skew) >= skew * 2 + Duration::from_secs(2), "{skew:?}");
        }
    }

    #[test]
    fn the_acceptance_clock_follows_the_wall_clock_at_the_monotonic_pace() {
        let clock = AnchoredClock::new();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((clock.now_unix_secs() - wall).abs() <= 1);
        let mut last = clock.now_unix_secs();
        for _ in 0..1000 {
            let now = clock.now_unix_secs();
            assert!(now >= last);
            last = now;
        }
    }
}
