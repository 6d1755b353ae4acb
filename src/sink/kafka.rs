//! The producer: hands records to librdkafka (through the spool in disk mode), turns delivery reports into
//! metrics, acks and re-spooling, re-publishes spooled records, and watches cluster metadata for readiness.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::spool::{frame, RecordRef, Spool, SpoolError, SpoolReader};

/// How often readiness asks the cluster for metadata.
const METADATA_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How old the last successful metadata answer may be while ready.
const METADATA_MAX_AGE_SECS: i64 = 15;
/// In memory mode, new callbacks are refused once the spool has less free space than this (or a quarter of the
/// spool, if smaller), so that the records already in the producer queue can still be spooled if Kafka fails them.
pub const MEMORY_MODE_HEADROOM_BYTES: u64 = 64 * 1024 * 1024;
/// In disk mode, readiness fails once the spool has less free space than this (or a sixteenth of the spool).
const DISK_MODE_HEADROOM_BYTES: u64 = 1024 * 1024;

/// Producer properties applied before the user's `-X` overrides.
pub const DEFAULT_PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("client.id", "im-callback-forwarder"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    // Measured (BENCHMARKS.md): 20 ms costs 10 % less CPU per callback than 5 ms at 5,000/s; the ack never waits for it.
    ("linger.ms", "20"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("message.timeout.ms", "300000"),
    ("statistics.interval.ms", "5000"),
];

/// When an accepted callback is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once in librdkafka's queue; the spool (if any) catches what Kafka fails.
    Memory,
    /// Acknowledged once fsynced to the spool.
    Disk,
}

/// Why a record could not be accepted; the callback is then refused, not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// librdkafka's queue is at `queue.buffering.max.messages` or `.kbytes` and no spool takes the overflow.
    #[error("the Kafka producer queue is full, try again later")]
    QueueFull,
    /// The spool has no room left for what we would have to keep.
    #[error("the disk spool is full, try again later")]
    SpoolFull,
    /// The spool could not write the record.
    #[error("the disk spool failed: {0}")]
    Spool(#[source] SpoolError),
    /// Any other refusal from librdkafka (e.g. a record over `message.max.bytes`).
    #[error("the Kafka producer refused the event: {0}")]
    Produce(RDKafkaErrorCode),
    /// The producer configuration is invalid (startup only).
    #[error("invalid Kafka producer configuration: {0}")]
    Config(#[source] KafkaError),
}

impl From<SpoolError> for SinkError {
    fn from(err: SpoolError) -> Self {
        match err {
            SpoolError::Full => SinkError::SpoolFull,
            other => SinkError::Spool(other),
        }
    }
}

impl SinkError {
    /// HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        503
    }
    /// ErrorCode of the Tencent-format refusal.
    pub fn error_code(&self) -> u32 {
        match self {
            SinkError::SpoolFull => 50301,
            _ => 50300,
        }
    }
    /// `outcome` label in `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            SinkError::SpoolFull => "spool_full",
            _ => "unavailable",
        }
    }
}

/// Carried through librdkafka with each record, back to its delivery report.
struct Inflight {
    handed_over: Instant,
    spooled: Option<RecordRef>,
}

/// Receives librdkafka's callbacks on the producer's polling thread.
struct SinkContext {
    metrics: Arc<Metrics>,
    spool: Option<Arc<Spool>>,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.kafka_statistics(&statistics);
    }
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers()?.iter().find(|h| h.key == name)?.value
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Inflight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Box<Inflight>) {
        let metrics = &self.metrics;
        metrics.kafka_queue_events.dec();
        match result {
            Ok(message) => {
                metrics.kafka_delivered.inc();
                metrics.delivery_duration.observe(inflight.handed_over.elapsed().as_secs_f64());
                if let (Some(place), Some(spool)) = (inflight.spooled, &self.spool) {
                    spool.ack(place);
                }
                debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "delivered"
                );
            }
            Err((err, message)) => {
                metrics.kafka_delivery_failures.inc();
                let event_id = String::from_utf8_lossy(header(message, "event_id").unwrap_or_default()).into_owned();
                let purged = matches!(
                    err.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                );
                let reason = if purged { "shutdown" } else { "delivery_failed" };
                match (inflight.spooled, &self.spool) {
                    (Some(place), Some(spool)) => {
                        // Already on disk: only queue it again.
                        spool.requeue(place);
                        warn!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed; record stays in the spool for replay");
                    }
                    (None, Some(spool)) => match respool(spool, message) {
                        Ok(()) => {
                            metrics.spooled(reason);
                            warn!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed; record spooled for replay");
                        }
                        Err(spool_err) => {
                            metrics.events_lost.inc();
                            error!(%event_id, topic = message.topic(), error = %err, spool_error = %spool_err, "Kafka delivery failed and the spool refused the record; event lost");
                        }
                    },
                    (_, None) => {
                        metrics.events_lost.inc();
                        error!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed and no spool is configured; event lost");
                    }
                }
            }
        }
    }
}

fn respool(spool: &Spool, message: &BorrowedMessage<'_>) -> Result<(), SpoolError> {
    let headers: Vec<(&str, &[u8])> = message
        .headers()
        .map(|headers| headers.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
        .unwrap_or_default();
    let frame = frame::encode(
        message.topic(),
        message.key().unwrap_or_default(),
        message.payload().unwrap_or_default(),
        headers.into_iter(),
    )?;
    spool.append_for_replay(frame)
}

/// Cluster reachability as last seen by the metadata watcher.
#[derive(Debug, Default)]
pub struct SinkHealth {
    last_success_unix: AtomicI64,
    problem: Mutex<Option<String>>,
}

impl SinkHealth {
    /// `Ok` when metadata was fetched recently and every topic exists; else why not.
    pub fn check(&self) -> Result<(), String> {
        if let Some(problem) = self.problem.lock().expect("health lock").clone() {
            return Err(problem);
        }
        let last_success = self.last_success_unix.load(Ordering::Relaxed);
        if last_success == 0 {
            return Err("no Kafka metadata request has succeeded yet".into());
        }
        let age = unix_now() - last_success;
        if age > METADATA_MAX_AGE_SECS {
            return Err(format!("no Kafka metadata for {age} s"));
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// One record to publish, borrowed from the request.
pub struct Outgoing<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Record key.
    pub key: &'a [u8],
    /// Record value.
    pub payload: &'a [u8],
    /// Record headers.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Settings of the sink.
pub struct SinkSettings<'a> {
    /// `bootstrap.servers`.
    pub bootstrap_servers: &'a str,
    /// User `-X` properties.
    pub overrides: &'a [(String, String)],
    /// Topics whose existence readiness checks.
    pub topics: Vec<String>,
    /// When a callback counts as safe.
    pub durability: Durability,
    /// The disk spool, if configured (required for disk durability).
    pub spool: Option<Arc<Spool>>,
}

/// What the sink left behind at shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushReport {
    /// Records not acknowledged by Kafka when the deadline passed.
    pub undelivered: usize,
    /// Of those, records kept in the spool for the next start.
    pub spooled: u64,
}

/// Publishes records to Kafka; shared by every request.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    topics: Vec<String>,
    durability: Durability,
    spool: Option<Arc<Spool>>,
    metrics: Arc<Metrics>,
    health: SinkHealth,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl KafkaSink {
    /// Creates the producer (validating every property) and starts the metadata watcher and, with a spool,
    /// the replayer.
    pub fn start(settings: SinkSettings<'_>, metrics: Arc<Metrics>) -> Result<Arc<Self>, SinkError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", settings.bootstrap_servers);
        for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
            config.set(*key, *value);
        }
        for (key, value) in settings.overrides {
            config.set(key, value);
        }
        let context = SinkContext { metrics: metrics.clone(), spool: settings.spool.clone() };
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(context).map_err(SinkError::Config)?;
        let sink = Arc::new(KafkaSink {
            producer,
            topics: settings.topics,
            durability: settings.durability,
            spool: settings.spool,
            metrics,
            health: SinkHealth::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = vec![spawn_named("kafka-metadata", Arc::downgrade(&sink), KafkaSink::watch_metadata)];
        if sink.spool.is_some() {
            threads.push(spawn_named("spool-replay", Arc::downgrade(&sink), KafkaSink::replay));
        }
        *sink.threads.lock().expect("threads lock") = threads;
        Ok(sink)
    }

    fn watch_metadata(sink: Weak<KafkaSink>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match sink.upgrade() {
                Some(sink) => sink.refresh_metadata(),
                None => return,
            }
            let until = Instant::now() + METADATA_POLL_INTERVAL;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn refresh_metadata(&self) {
        let problem = match self.producer.client().fetch_metadata(None, METADATA_POLL_INTERVAL) {
            Ok(metadata) => {
                let now = unix_now();
                self.health.last_success_unix.store(now, Ordering::Relaxed);
                self.metrics.metadata_last_success.set(now);
                self.topics
                    .iter()
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

    /// Re-publishes spooled records, oldest first, while Kafka is reachable.
    fn replay(sink: Weak<KafkaSink>, stop: Arc<AtomicBool>) {
        let Some(spool) = sink.upgrade().and_then(|s| s.spool.clone()) else { return };
        let mut reader = SpoolReader::new(spool.dir());
        while !stop.load(Ordering::Relaxed) {
            let Some(place) = spool.next_to_replay(Duration::from_millis(100)) else { continue };
            let Some(sink) = sink.upgrade() else { return };
            if sink.health.check().is_err() {
                spool.unget(place);
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            let record = match reader.read(place) {
                Ok(record) => record,
                Err(err) => {
                    sink.metrics.events_lost.inc();
                    error!(error = %err, "spooled record unreadable; event lost");
                    spool.ack(place);
                    continue;
                }
            };
            let headers: Vec<(&str, &[u8])> = record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let outgoing =
                Outgoing { topic: &record.topic, key: &record.key, payload: &record.value, headers: &headers };
            loop {
                match sink.send(&outgoing, Some(place)) {
                    Ok(()) => {
                        sink.metrics.replayed.inc();
                        break;
                    }
                    Err(SinkError::QueueFull) if !stop.load(Ordering::Relaxed) => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(SinkError::QueueFull) => {
                        spool.unget(place);
                        break;
                    }
                    Err(err) => {
                        // A record librdkafka will never take (e.g. over message.max.bytes after a config change).
                        sink.metrics.events_lost.inc();
                        error!(error = %err, topic = record.topic, "spooled record refused by the producer; event lost");
                        spool.ack(place);
                        break;
                    }
                }
            }
        }
    }

    /// `Ok` when Kafka is reachable, the topics exist and the spool has room; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.health.check()?;
        if let Some(spool) = &self.spool {
            if !spool.has_headroom(self.headroom(spool)) {
                return Err("the disk spool is full".into());
            }
        }
        Ok(())
    }

    /// Free spool space below which the instance is full: in memory mode, room for what is in the producer queue.
    fn headroom(&self, spool: &Spool) -> u64 {
        match self.durability {
            Durability::Memory => MEMORY_MODE_HEADROOM_BYTES.min(spool.max_bytes() / 4),
            Durability::Disk => DISK_MODE_HEADROOM_BYTES.min(spool.max_bytes() / 16),
        }
    }

    /// Takes responsibility for one record: after `Ok`, it reaches Kafka at least once (within the guarantee
    /// of the durability mode); after `Err`, the callback must be refused.
    pub async fn accept(&self, record: Outgoing<'_>) -> Result<(), SinkError> {
        match (&self.spool, self.durability) {
            (Some(spool), Durability::Disk) => {
                let frame = frame::encode(record.topic, record.key, record.payload, record.headers.iter().copied())
                    .map_err(SpoolError::from)?;
                let place = spool.append(frame)?.await.map_err(|_| SpoolError::Closed)??;
                self.metrics.spooled("write_ahead");
                match self.send(&record, Some(place)) {
                    Ok(()) => Ok(()),
                    Err(SinkError::QueueFull) => {
                        spool.requeue(place);
                        Ok(())
                    }
                    Err(err) => {
                        spool.ack(place);
                        Err(err)
                    }
                }
            }
            (Some(spool), Durability::Memory) => {
                if !spool.has_headroom(self.headroom(spool)) {
                    return Err(SinkError::SpoolFull);
                }
                match self.send(&record, None) {
                    Err(SinkError::QueueFull) => {
                        let frame =
                            frame::encode(record.topic, record.key, record.payload, record.headers.iter().copied())
                                .map_err(SpoolError::from)?;
                        spool.append_for_replay(frame)?;
                        self.metrics.spooled("queue_full");
                        Ok(())
                    }
                    other => other,
                }
            }
            (None, _) => self.send(&record, None),
        }
    }

    fn send(&self, record: &Outgoing<'_>, spooled: Option<RecordRef>) -> Result<(), SinkError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in record.headers {
            headers = headers.insert(Header { key: name, value: Some(*value) });
        }
        let inflight = Box::new(Inflight { handed_over: Instant::now(), spooled });
        let base =
            BaseRecord::with_opaque_to(record.topic, inflight).key(record.key).payload(record.payload).headers(headers);
        // Counted before the send: the delivery report may arrive on the polling thread before `send` returns.
        self.metrics.kafka_queue_events.inc();
        match self.producer.send(base) {
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

    /// Stops replaying, waits up to `timeout` for every queued record to be reported on, spools what is left
    /// (memory mode with a spool), and closes the spool.
    pub fn shutdown(&self, timeout: Duration) -> FlushReport {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.lock().expect("threads lock").drain(..) {
            let _ = thread.join();
        }
        if let Err(err) = self.producer.flush(timeout) {
            warn!(error = %err, "Kafka flush did not complete before the shutdown deadline");
        }
        let undelivered = self.producer.in_flight_count().max(0) as usize;
        let mut report = FlushReport { undelivered, spooled: 0 };
        if let Some(spool) = &self.spool {
            match self.durability {
                // Every undelivered record is already on disk and is replayed on the next start.
                Durability::Disk => report.spooled = undelivered as u64,
                Durability::Memory if undelivered > 0 => {
                    let before = self.metrics.spooled_count("shutdown");
                    // Purged records come back as failed deliveries, which the context writes to the spool.
                    self.producer.purge(PurgeConfig::default().queue().inflight());
                    let _ = self.producer.flush(Duration::from_secs(5));
                    report.spooled = self.metrics.spooled_count("shutdown") - before;
                }
                Durability::Memory => {}
            }
            spool.close();
            info!(backlog = spool.replay_backlog(), "spool closed");
        }
        report
    }
}

fn spawn_named(name: &str, sink: Weak<KafkaSink>, body: fn(Weak<KafkaSink>, Arc<AtomicBool>)) -> JoinHandle<()> {
    let stop = sink.upgrade().map(|s| s.stop.clone()).unwrap_or_default();
    thread::Builder::new().name(name.into()).spawn(move || body(sink, stop)).expect("spawn sink thread")
}
