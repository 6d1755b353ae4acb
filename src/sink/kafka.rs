//! The producer: hands events and dead letters to librdkafka, turns delivery reports into metrics and logs, and watches cluster metadata for readiness.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use tracing::{debug, error, warn};

use crate::metrics::Metrics;

/// How often readiness asks the cluster for metadata.
const METADATA_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How old the last successful metadata answer may be while ready.
const METADATA_MAX_AGE_SECS: i64 = 15;

/// Producer properties applied before the user's `-X` overrides.
pub const DEFAULT_PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("client.id", "im-callback-forwarder"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("message.timeout.ms", "300000"),
    ("statistics.interval.ms", "5000"),
];

/// Why a record could not be handed to the producer; the callback is then refused, not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// librdkafka's queue is at `queue.buffering.max.messages` or `.kbytes`.
    #[error("the Kafka producer queue is full, try again later")]
    QueueFull,
    /// Any other refusal from librdkafka (e.g. a record over `message.max.bytes`).
    #[error("the Kafka producer refused the event: {0}")]
    Produce(RDKafkaErrorCode),
    /// The producer configuration is invalid (startup only).
    #[error("invalid Kafka producer configuration: {0}")]
    Config(#[source] KafkaError),
}

impl SinkError {
    /// HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        503
    }
    /// ErrorCode of the Tencent-format refusal.
    pub fn error_code(&self) -> u32 {
        50300
    }
    /// `outcome` label in `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        "unavailable"
    }
}

/// Receives librdkafka's callbacks on the producer's polling thread.
struct SinkContext {
    metrics: Arc<Metrics>,
    started: Instant,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.kafka_statistics(&statistics);
    }
}

impl ProducerContext for SinkContext {
    // Nanoseconds since `started` when the record was handed over: no allocation per record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, handed_over_nanos: usize) {
        let metrics = &self.metrics;
        metrics.kafka_queue_events.dec();
        let elapsed = self.started.elapsed().saturating_sub(Duration::from_nanos(handed_over_nanos as u64));
        match result {
            Ok(message) => {
                metrics.kafka_delivered.inc();
                metrics.delivery_duration.observe(elapsed.as_secs_f64());
                debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "delivered"
                );
            }
            Err((err, message)) => {
                metrics.kafka_delivery_failures.inc();
                let event_id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == "event_id").and_then(|h| h.value))
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                error!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed; event lost");
            }
        }
    }
}

/// Cluster reachability as last seen by the metadata watcher.
#[derive(Debug, Default)]
pub struct SinkHealth {
    last_success_unix: AtomicI64,
    problem: Mutex<Option<String>>,
}

impl SinkHealth {
    /// `Ok` when metadata was fetched recently and both topics exist; else why not.
    pub fn check(&self) -> Result<(), String> {
        let age = unix_now() - self.last_success_unix.load(Ordering::Relaxed);
        if let Some(problem) = self.problem.lock().expect("health lock").clone() {
            return Err(problem);
        }
        if age > METADATA_MAX_AGE_SECS {
            return Err(format!("no Kafka metadata for {age} s"));
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Publishes records to Kafka; shared by every request.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    topic: String,
    dead_letter_topic: String,
    metrics: Arc<Metrics>,
    started: Instant,
    health: Arc<SinkHealth>,
    stop_watcher: Arc<AtomicBool>,
}

/// Headers of one record, borrowed from the request.
pub type RecordHeaders<'a> = &'a [(&'a str, &'a [u8])];

impl KafkaSink {
    /// Creates the producer (validating every property) and starts the metadata watcher.
    pub fn start(
        bootstrap_servers: &str,
        overrides: &[(String, String)],
        topic: String,
        dead_letter_topic: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SinkError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
            config.set(*key, *value);
        }
        for (key, value) in overrides {
            config.set(key, value);
        }
        let started = Instant::now();
        let context = SinkContext { metrics: metrics.clone(), started };
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(context).map_err(SinkError::Config)?;
        let sink = Arc::new(KafkaSink {
            producer,
            topic,
            dead_letter_topic,
            metrics,
            started,
            health: Arc::new(SinkHealth::default()),
            stop_watcher: Arc::new(AtomicBool::new(false)),
        });
        let watcher = Arc::downgrade(&sink);
        let stop = sink.stop_watcher.clone();
        thread::Builder::new()
            .name("kafka-metadata".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match watcher.upgrade() {
                        Some(sink) => sink.refresh_metadata(),
                        None => return,
                    }
                    let mut waited = Duration::ZERO;
                    while waited < METADATA_POLL_INTERVAL && !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(100));
                        waited += Duration::from_millis(100);
                    }
                }
            })
            .expect("spawn metadata thread");
        Ok(sink)
    }

    fn refresh_metadata(&self) {
        let problem = match self.producer.client().fetch_metadata(None, METADATA_POLL_INTERVAL) {
            Ok(metadata) => {
                let now = unix_now();
                self.health.last_success_unix.store(now, Ordering::Relaxed);
                self.metrics.metadata_last_success.set(now);
                [&self.topic, &self.dead_letter_topic]
                    .into_iter()
                    .find(|name| {
                        !metadata
                            .topics()
                            .iter()
                            .any(|t| t.name() == name.as_str() && t.error().is_none() && !t.partitions().is_empty())
                    })
                    .map(|missing| format!("Kafka topic {missing} does not exist"))
            }
            Err(err) => Some(format!("Kafka metadata request failed: {err}")),
        };
        if let Some(problem) = &problem {
            warn!(%problem, "Kafka not ready");
        }
        *self.health.problem.lock().expect("health lock") = problem;
    }

    /// Readiness as seen by the metadata watcher.
    pub fn health(&self) -> &SinkHealth {
        &self.health
    }

    /// Hands one normalized event to the producer.
    pub fn publish_event(&self, key: &str, payload: &[u8], headers: RecordHeaders<'_>) -> Result<(), SinkError> {
        self.send(&self.topic, key.as_bytes(), payload, headers)
    }

    /// Hands the raw bytes of an unusable callback to the dead-letter topic.
    pub fn publish_dead_letter(&self, key: &str, payload: &[u8], headers: RecordHeaders<'_>) -> Result<(), SinkError> {
        self.send(&self.dead_letter_topic, key.as_bytes(), payload, headers)?;
        self.metrics.dead_letters.inc();
        Ok(())
    }

    fn send(&self, topic: &str, key: &[u8], payload: &[u8], headers: RecordHeaders<'_>) -> Result<(), SinkError> {
        let mut owned_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned_headers = owned_headers.insert(Header { key: name, value: Some(*value) });
        }
        let handed_over = self.started.elapsed().as_nanos() as usize;
        let record = BaseRecord::with_opaque_to(topic, handed_over).key(key).payload(payload).headers(owned_headers);
        // Counted before the send: the delivery report may arrive on the polling thread before `send` returns.
        self.metrics.kafka_queue_events.inc();
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((err, _)) => {
                self.metrics.kafka_queue_events.dec();
                Err(match err.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) => SinkError::QueueFull,
                    Some(code) => SinkError::Produce(code),
                    None => SinkError::Produce(RDKafkaErrorCode::Fail),
                })
            }
        }
    }

    /// Waits up to `timeout` for every queued record to be reported on; returns how many were not.
    pub fn flush(&self, timeout: Duration) -> usize {
        self.stop_watcher.store(true, Ordering::Relaxed);
        if let Err(err) = self.producer.flush(timeout) {
            warn!(error = %err, "Kafka flush did not complete");
        }
        self.producer.in_flight_count().max(0) as usize
    }
}
