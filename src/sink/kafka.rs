//! The producer: hands records to librdkafka (through the spool in disk mode), turns delivery reports into
//! metrics, acks and re-spooling, re-publishes spooled records, rebuilds the producer after a fatal error, and
//! watches each topic's metadata.
//!
//! Kafka's state never decides whether a callback is taken: Tencent does not retry, so keeping a callback (in
//! librdkafka's queue or the spool) is never worse than refusing it. It decides only when spooled records are
//! replayed, and it is exported for alerts ([`KafkaStatus`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::seam::{self, Fault};
use crate::spool::{frame, RecordRef, Spool, SpoolError, SpoolReader};

/// How often each topic's metadata is asked for while everything is fine.
const METADATA_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often while Kafka is unreachable or a topic is missing.
const METADATA_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
/// How old the last successful metadata answer may be for Kafka to count as up.
const METADATA_MAX_AGE: Duration = Duration::from_secs(15);
/// Readiness fails once the spool has less free space than this (or a sixteenth of the spool).
const SPOOL_READY_HEADROOM_BYTES: u64 = 1024 * 1024;

/// The room a spool of `max_bytes` must have left, in its limit and on its disk, for `/readyz` to pass:
/// [`SPOOL_READY_HEADROOM_BYTES`] or a sixteenth of the spool, whichever is less.
pub fn spool_ready_headroom(max_bytes: u64) -> u64 {
    SPOOL_READY_HEADROOM_BYTES.min(max_bytes / 16)
}
/// A replayed record that the producer refused is tried again after this long (doubling up to the maximum).
const REPLAY_RETRY_MIN: Duration = Duration::from_millis(500);
const REPLAY_RETRY_MAX: Duration = Duration::from_secs(30);

/// Producer properties applied before the user's `-X` overrides.
pub const DEFAULT_PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("client.id", "im-callback-forwarder"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    // The Java client's partitioner: a consumer joining our topic with one written by Java producers on GroupId
    // finds the same group on the same partition (librdkafka's default, consistent_random, hashes differently).
    ("partitioner", "murmur2_random"),
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
    /// Any other refusal from librdkafka (e.g. a record over `message.max.bytes`, a fatal producer error).
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

impl From<frame::TooLarge> for SinkError {
    fn from(err: frame::TooLarge) -> Self {
        SinkError::Spool(SpoolError::TooLarge(err))
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
    /// Where the record lies in the spool (disk mode, replay).
    spooled: Option<RecordRef>,
    /// Spool room reserved for it (memory mode with a spool), to re-spool it if Kafka fails it.
    reserved: u64,
}

/// What the producers' callbacks share with the sink; outlives any one producer.
struct ContextShared {
    metrics: Arc<Metrics>,
    spool: Option<Arc<Spool>>,
    /// The last send found the producer queue full and no delivery report has made room since.
    queue_full: AtomicBool,
    /// Set once shutdown began: purged records are then the end, not a restart.
    stopping: AtomicBool,
}

/// Receives librdkafka's callbacks on the producer's polling thread; one per producer.
struct SinkContext {
    shared: Arc<ContextShared>,
    /// A fatal error was raised on this producer: it must be rebuilt. Its own flag, not a shared one, so that
    /// a late error of a producer already replaced (or a send that loaded it before the swap) cannot make the
    /// supervisor replace its successor.
    fatal: AtomicBool,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        self.shared.metrics.kafka_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::SeqCst);
            error!(error = %error, reason, "Kafka producer: fatal error; the producer will be rebuilt");
        } else {
            // librdkafka's own log line says the same at its level.
            debug!(error = %error, reason, "Kafka client error");
        }
    }
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers()?.iter().find(|h| h.key == name)?.value
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Inflight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Box<Inflight>) {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        metrics.kafka_queue_events.dec();
        shared.queue_full.store(false, Ordering::Relaxed);
        match result {
            Ok(message) => {
                metrics.kafka_delivered.inc();
                metrics.delivery_duration.observe(inflight.handed_over.elapsed().as_secs_f64());
                if let Some(spool) = &shared.spool {
                    if let Some(place) = inflight.spooled {
                        spool.ack(place);
                    }
                    if inflight.reserved > 0 {
                        spool.release(inflight.reserved);
                    }
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
                let reason =
                    if purged && shared.stopping.load(Ordering::SeqCst) { "shutdown" } else { "delivery_failed" };
                match (inflight.spooled, &shared.spool) {
                    (Some(place), Some(spool)) => {
                        // Already on disk: only queue it again.
                        spool.requeue(place);
                        debug!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed; record stays in the spool for replay");
                    }
                    (None, Some(spool)) => match respool(spool, message, inflight.reserved) {
                        Ok(()) => {
                            metrics.spooled(reason);
                            debug!(%event_id, topic = message.topic(), error = %err, "Kafka delivery failed; record spooled for replay");
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

/// Writes a record Kafka failed to the spool, in the room reserved for it when it was accepted (if any).
fn respool(spool: &Spool, message: &BorrowedMessage<'_>, reserved: u64) -> Result<(), SpoolError> {
    let headers: Vec<(&str, &[u8])> = message
        .headers()
        .map(|headers| headers.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
        .unwrap_or_default();
    let frame = frame::encode(
        message.topic(),
        message.key().unwrap_or_default(),
        message.payload().unwrap_or_default(),
        headers.into_iter(),
    )
    .inspect_err(|_| spool.release(reserved))?;
    if reserved == frame.len() as u64 {
        spool.append_reserved(frame).inspect_err(|_| spool.release(reserved))
    } else {
        spool.release(reserved);
        spool.append_for_replay(frame)
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What the last metadata request said about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicStatus {
    /// Not asked about yet, or Kafka did not answer.
    Unknown,
    /// Exists with at least one partition.
    Exists,
    /// Missing, or not visible to us (the broker's error).
    Missing(String),
}

/// Kafka as the metadata watcher last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaStatus {
    /// Metadata is fresh and every configured topic exists.
    Ok,
    /// No metadata request has succeeded yet.
    NoMetadataYet,
    /// The last metadata request failed.
    MetadataFailed,
    /// The last success is older than 15 s (the watcher is stuck).
    MetadataStale,
    /// A configured topic does not exist or is not visible.
    TopicMissing,
}

impl KafkaStatus {
    /// Every status, in the order of the `reason` label of `imcf_kafka_ready`.
    pub const ALL: [KafkaStatus; 5] = [
        KafkaStatus::Ok,
        KafkaStatus::NoMetadataYet,
        KafkaStatus::MetadataFailed,
        KafkaStatus::MetadataStale,
        KafkaStatus::TopicMissing,
    ];

    /// The `reason` label of `imcf_kafka_ready`.
    pub fn label(self) -> &'static str {
        match self {
            KafkaStatus::Ok => "ok",
            KafkaStatus::NoMetadataYet => "no_metadata_yet",
            KafkaStatus::MetadataFailed => "metadata_failed",
            KafkaStatus::MetadataStale => "metadata_stale",
            KafkaStatus::TopicMissing => "topic_missing",
        }
    }
}

#[derive(Default)]
struct KafkaStateInner {
    last_success: Option<Instant>,
    last_error: Option<String>,
    /// Configured topics and topics met in the spool.
    topics: BTreeMap<String, TopicStatus>,
}

/// Publishes records to Kafka; shared by every request.
pub struct KafkaSink {
    producer: ArcSwap<ThreadedProducer<SinkContext>>,
    client_config: ClientConfig,
    shared: Arc<ContextShared>,
    configured_topics: Vec<String>,
    durability: Durability,
    spool: Option<Arc<Spool>>,
    metrics: Arc<Metrics>,
    kafka: Mutex<KafkaStateInner>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
    /// Topics whose metadata is watched (asked for by name, so that brokers creating topics on demand do).
    pub topics: Vec<String>,
    /// When a callback counts as safe.
    pub durability: Durability,
    /// The disk spool, if configured (required for disk durability).
    pub spool: Option<Arc<Spool>>,
}

/// What the sink left behind at shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushReport {
    /// Accepted records Kafka has not acknowledged: in the spool, or (without one) lost.
    pub undelivered: usize,
    /// Of those, records kept in the spool for the next start (the replay backlog included).
    pub spooled: u64,
}

/// Checks every producer property (names and values) as librdkafka would, without creating a client.
pub fn validate_properties(overrides: &[(String, String)]) -> Result<(), SinkError> {
    let mut config = ClientConfig::new();
    for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
        config.set(*key, *value);
    }
    for (key, value) in overrides {
        config.set(key, value);
    }
    config.create_native_config().map(drop).map_err(SinkError::Config)
}

impl KafkaSink {
    /// Creates the producer (validating every property) and starts the metadata watcher, the producer's
    /// supervisor and, with a spool, the replayer.
    pub fn start(settings: SinkSettings<'_>, metrics: Arc<Metrics>) -> Result<Arc<Self>, SinkError> {
        let mut client_config = ClientConfig::new();
        client_config.set("bootstrap.servers", settings.bootstrap_servers);
        for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
            client_config.set(*key, *value);
        }
        for (key, value) in settings.overrides {
            client_config.set(key, value);
        }
        let shared = Arc::new(ContextShared {
            metrics: metrics.clone(),
            spool: settings.spool.clone(),
            queue_full: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let producer = create_producer(&client_config, &shared)?;
        let topics = settings.topics.iter().map(|t| (t.clone(), TopicStatus::Unknown)).collect();
        let sink = Arc::new(KafkaSink {
            producer: ArcSwap::from_pointee(producer),
            client_config,
            shared,
            configured_topics: settings.topics,
            durability: settings.durability,
            spool: settings.spool,
            metrics,
            kafka: Mutex::new(KafkaStateInner { topics, ..KafkaStateInner::default() }),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        });
        sink.export_kafka_status();
        let mut threads = vec![
            spawn_named("kafka-metadata", Arc::downgrade(&sink), KafkaSink::watch_metadata),
            spawn_named("kafka-supervisor", Arc::downgrade(&sink), KafkaSink::supervise),
        ];
        if sink.spool.is_some() {
            threads.push(spawn_named("spool-replay", Arc::downgrade(&sink), KafkaSink::replay));
        }
        *sink.threads.lock().expect("threads lock") = threads;
        Ok(sink)
    }

    fn watch_metadata(sink: Weak<KafkaSink>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let interval = match sink.upgrade() {
                Some(sink) => sink.refresh_metadata(),
                None => return,
            };
            sleep_unless(&stop, interval);
        }
    }

    /// Asks for each watched topic by name; returns how long to wait before the next round.
    fn refresh_metadata(&self) -> Duration {
        let names: Vec<String> = self.kafka.lock().expect("kafka lock").topics.keys().cloned().collect();
        let producer = self.producer.load_full();
        let mut answers = Vec::with_capacity(names.len());
        let mut failure = None;
        for name in &names {
            if self.stop.load(Ordering::Relaxed) {
                return Duration::ZERO;
            }
            match producer.client().fetch_metadata(Some(name), METADATA_TIMEOUT) {
                Ok(metadata) => {
                    let status = match metadata.topics().iter().find(|t| t.name() == name.as_str()) {
                        Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => TopicStatus::Exists,
                        Some(topic) => TopicStatus::Missing(match topic.error() {
                            Some(err) => format!("{:?}", RDKafkaErrorCode::from(err)),
                            None => "no partitions".into(),
                        }),
                        None => TopicStatus::Missing("not in the metadata answer".into()),
                    };
                    answers.push((name.clone(), status));
                }
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
        }
        let all_exist = {
            let mut kafka = self.kafka.lock().expect("kafka lock");
            if !answers.is_empty() {
                kafka.last_success = Some(Instant::now());
                self.metrics.metadata_last_success.set(unix_now());
            }
            for (name, status) in answers {
                if kafka.topics.get(&name) != Some(&status) {
                    match &status {
                        TopicStatus::Exists => info!(topic = %name, "Kafka topic available"),
                        TopicStatus::Missing(why) => {
                            warn!(topic = %name, reason = %why, "Kafka topic missing; its records stay in the spool")
                        }
                        TopicStatus::Unknown => {}
                    }
                }
                kafka.topics.insert(name, status);
            }
            if failure.is_some() && kafka.last_error.is_none() {
                warn!(error = failure.as_deref().unwrap_or_default(), "Kafka metadata request failed");
            } else if failure.is_none() && kafka.last_error.is_some() {
                info!("Kafka metadata request succeeded again");
            }
            kafka.last_error = failure;
            kafka.last_error.is_none() && kafka.topics.values().all(|s| *s == TopicStatus::Exists)
        };
        self.export_kafka_status();
        if all_exist {
            METADATA_POLL_INTERVAL
        } else {
            METADATA_RETRY_INTERVAL
        }
    }

    /// Kafka's state with a line for humans.
    pub fn kafka_status(&self) -> (KafkaStatus, String) {
        let kafka = self.kafka.lock().expect("kafka lock");
        let missing = self.missing_topics(&kafka);
        match (kafka.last_success, &kafka.last_error) {
            (None, None) => (KafkaStatus::NoMetadataYet, "no Kafka metadata request has succeeded yet".into()),
            (_, Some(err)) => (KafkaStatus::MetadataFailed, format!("Kafka metadata request failed: {err}")),
            (Some(at), None) if at.elapsed() > METADATA_MAX_AGE => {
                (KafkaStatus::MetadataStale, format!("no Kafka metadata for {} s", at.elapsed().as_secs()))
            }
            _ if !missing.is_empty() => {
                (KafkaStatus::TopicMissing, format!("Kafka topic missing: {}", missing.join(", ")))
            }
            _ => (KafkaStatus::Ok, "Kafka reachable, every topic exists".into()),
        }
    }

    /// Sets `imcf_kafka_up`, `imcf_kafka_ready{reason}` and `imcf_kafka_topics_missing`.
    pub fn export_kafka_status(&self) {
        let (status, _) = self.kafka_status();
        let up =
            !matches!(status, KafkaStatus::NoMetadataYet | KafkaStatus::MetadataFailed | KafkaStatus::MetadataStale);
        let missing = self.missing_topics(&self.kafka.lock().expect("kafka lock")).len();
        self.metrics.kafka_state(up, status.label(), missing as i64);
    }

    /// The configured topics the last metadata said are missing or not visible.
    fn missing_topics<'a>(&'a self, kafka: &KafkaStateInner) -> Vec<&'a str> {
        self.configured_topics
            .iter()
            .filter(|t| matches!(kafka.topics.get(*t), Some(TopicStatus::Missing(_))))
            .map(String::as_str)
            .collect()
    }

    /// True when the topic's last metadata says it exists and Kafka answered recently; a topic not watched
    /// yet is added to the watch list.
    fn topic_ready(&self, topic: &str) -> bool {
        let mut kafka = self.kafka.lock().expect("kafka lock");
        let fresh = kafka.last_error.is_none() && kafka.last_success.is_some_and(|at| at.elapsed() <= METADATA_MAX_AGE);
        match kafka.topics.get(topic) {
            Some(status) => fresh && *status == TopicStatus::Exists,
            None => {
                // Bounded: spooled records name only topics some configuration of this service published to.
                if kafka.topics.len() < 256 {
                    kafka.topics.insert(topic.to_owned(), TopicStatus::Unknown);
                }
                false
            }
        }
    }

    /// Rebuilds the producer whenever librdkafka raises a fatal error (it then refuses every record).
    fn supervise(sink: Weak<KafkaSink>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let Some(sink) = sink.upgrade() else { return };
            if sink.fatal_raised() || sink.producer.load().client().fatal_error().is_some() {
                sink.restart_producer();
            }
            drop(sink);
            sleep_unless(&stop, Duration::from_millis(50));
        }
    }

    /// True once the current producer reported a fatal error (a replaced producer's errors do not count).
    fn fatal_raised(&self) -> bool {
        self.producer.load().context().fatal.load(Ordering::SeqCst)
    }

    fn restart_producer(&self) {
        let reason = self
            .producer
            .load()
            .client()
            .fatal_error()
            .map(|(code, text)| format!("{code:?}: {text}"))
            .unwrap_or_else(|| "fatal error".into());
        let fresh = match create_producer(&self.client_config, &self.shared) {
            Ok(producer) => producer,
            Err(err) => {
                error!(error = %err, "cannot create a new Kafka producer after a fatal error; retrying");
                sleep_unless(&self.stop, Duration::from_secs(1));
                return;
            }
        };
        let old = self.producer.swap(Arc::new(fresh));
        self.metrics.producer_restarts.inc();
        error!(%reason, "Kafka producer hit a fatal error: replaced by a new producer; what it held goes back to the spool");
        // What the old producer still holds comes back as failed delivery reports: re-queued or re-spooled.
        old.purge(PurgeConfig::default().queue().inflight());
        let _ = old.flush(Duration::from_secs(5));
        // Requests that loaded it a moment ago may still hold it: the last holder must not be a tokio worker.
        let until = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&old) > 1 && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        drop(old);
    }

    /// Re-publishes spooled records, oldest first. A record waits while its topic is unavailable (without
    /// holding up other topics), while the producer is being rebuilt, or after the producer refused it; it
    /// leaves the spool only when Kafka acknowledges it, or to quarantine when its bytes are proven damaged.
    fn replay(weak: Weak<KafkaSink>, stop: Arc<AtomicBool>) {
        let Some(spool) = weak.upgrade().and_then(|s| s.spool.clone()) else { return };
        let mut reader = SpoolReader::new(spool.dir());
        // Records whose topic is not available, by topic, in replay order.
        let mut waiting_topic: HashMap<String, VecDeque<RecordRef>> = HashMap::new();
        // Records to try again later, with their retry delay.
        let mut retry_later: Vec<(Instant, Duration, RecordRef)> = Vec::new();
        let mut delays: HashMap<RecordRef, Duration> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(sink) = weak.upgrade() else { return };
            // Topics that came back: their records go first again, in their order.
            waiting_topic.retain(|topic, places| {
                if !sink.topic_ready(topic) {
                    return true;
                }
                for place in places.drain(..).rev() {
                    spool.unget(place);
                }
                false
            });
            let now = Instant::now();
            retry_later.retain(|(due, delay, place)| {
                if *due > now {
                    return true;
                }
                delays.insert(*place, *delay);
                spool.requeue(*place);
                false
            });
            if sink.fatal_raised() {
                drop(sink);
                sleep_unless(&stop, Duration::from_millis(100));
                continue;
            }
            drop(sink);
            let Some(place) = spool.next_to_replay(Duration::from_millis(100)) else { continue };
            let Some(sink) = weak.upgrade() else {
                spool.unget(place);
                return;
            };
            let record = match reader.read(place) {
                Ok(record) => record,
                Err(SpoolError::Unreadable(segment, offset)) => {
                    error!(segment, offset, "spooled record is damaged; moved to quarantine");
                    spool.quarantine_unreadable(place);
                    continue;
                }
                Err(err) => {
                    sink.metrics.replay_deferred("read_error");
                    let delay = next_delay(delays.remove(&place));
                    warn!(error = %err, retry_in = ?delay, "spooled record could not be read; retrying later");
                    retry_later.push((Instant::now() + delay, delay, place));
                    continue;
                }
            };
            if !sink.topic_ready(&record.topic) {
                sink.metrics.replay_deferred("topic_unavailable");
                waiting_topic.entry(record.topic).or_default().push_back(place);
                continue;
            }
            let headers: Vec<(&str, &[u8])> = record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let outgoing =
                Outgoing { topic: &record.topic, key: &record.key, payload: &record.value, headers: &headers };
            loop {
                match sink.send(&outgoing, Some(place), 0) {
                    Ok(()) => {
                        sink.metrics.replayed.inc();
                        delays.remove(&place);
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
                        // Fatal (the supervisor rebuilds the producer), unknown topic, authorization, a record
                        // over message.max.bytes after a config change...: the record stays and is tried again.
                        let label = if matches!(err, SinkError::Produce(RDKafkaErrorCode::Fatal)) {
                            "producer_fatal"
                        } else {
                            "produce_error"
                        };
                        sink.metrics.replay_deferred(label);
                        let delay = next_delay(delays.remove(&place));
                        warn!(error = %err, topic = %record.topic, retry_in = ?delay, "spooled record refused by the producer; it stays in the spool");
                        retry_later.push((Instant::now() + delay, delay, place));
                        break;
                    }
                }
            }
        }
        // Back in the queue, so that the shutdown report counts them.
        for place in waiting_topic.into_values().flatten().chain(retry_later.into_iter().map(|(_, _, p)| p)) {
            spool.requeue(place);
        }
    }

    /// `Ok` while this instance can take a callback and keep it; else why not. Kafka's state plays no part.
    pub fn readiness(&self) -> Result<(), String> {
        match &self.spool {
            Some(spool) => {
                let headroom = spool_ready_headroom(spool.max_bytes());
                if !spool.has_headroom(headroom) {
                    return Err("the disk spool is full".into());
                }
                if let Ok(free) = spool.free_disk_bytes() {
                    if free < headroom {
                        return Err(format!("the disk under the spool is full ({free} bytes free)"));
                    }
                }
            }
            None => {
                if self.shared.queue_full.load(Ordering::Relaxed) {
                    return Err("the Kafka producer queue is full".into());
                }
            }
        }
        Ok(())
    }

    /// Takes responsibility for one record: after `Ok`, it reaches Kafka at least once (within the guarantee
    /// of the durability mode); after `Err`, the callback must be refused.
    pub async fn accept(&self, record: Outgoing<'_>) -> Result<(), SinkError> {
        match (&self.spool, self.durability) {
            (Some(spool), Durability::Disk) => {
                let frame = frame::encode(record.topic, record.key, record.payload, record.headers.iter().copied())?;
                let place = spool.append(frame)?.await?;
                self.metrics.spooled("write_ahead");
                if let Err(err) = self.send(&record, Some(place), 0) {
                    // On disk already: the replayer hands it over when the producer takes it.
                    debug!(error = %err, "producer refused a spooled record; left to the replayer");
                    spool.requeue(place);
                }
                Ok(())
            }
            (Some(spool), Durability::Memory) => {
                // Room for the record if Kafka fails it, taken now, so that it is there whatever comes after.
                let reserved =
                    frame::encoded_len(record.topic, record.key, record.payload, record.headers.iter().copied()) as u64;
                spool.reserve(reserved)?;
                let err = match self.send(&record, None, reserved) {
                    Ok(()) => return Ok(()),
                    Err(err) => err,
                };
                let frame = frame::encode(record.topic, record.key, record.payload, record.headers.iter().copied())
                    .inspect_err(|_| spool.release(reserved))?;
                spool.append_reserved(frame).inspect_err(|_| spool.release(reserved))?;
                self.metrics.spooled(if matches!(err, SinkError::QueueFull) { "queue_full" } else { "produce_failed" });
                Ok(())
            }
            (None, _) => self.send(&record, None, 0),
        }
    }

    fn send(&self, record: &Outgoing<'_>, spooled: Option<RecordRef>, reserved: u64) -> Result<(), SinkError> {
        let producer = self.producer.load();
        match seam::check("kafka.produce") {
            None => {}
            Some(Fault::Fatal) => raise_test_fatal(&producer),
            Some(_) => return Err(SinkError::Produce(RDKafkaErrorCode::Fail)),
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in record.headers {
            headers = headers.insert(Header { key: name, value: Some(*value) });
        }
        let inflight = Box::new(Inflight { handed_over: Instant::now(), spooled, reserved });
        let base =
            BaseRecord::with_opaque_to(record.topic, inflight).key(record.key).payload(record.payload).headers(headers);
        // Counted before the send: the delivery report may arrive on the polling thread before `send` returns.
        self.metrics.kafka_queue_events.inc();
        match producer.send(base) {
            Ok(()) => Ok(()),
            Err((err, _)) => {
                self.metrics.kafka_queue_events.dec();
                Err(match err.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) => {
                        self.shared.queue_full.store(true, Ordering::Relaxed);
                        SinkError::QueueFull
                    }
                    Some(RDKafkaErrorCode::Fatal) => {
                        // On the producer this send used: if it was replaced meanwhile, nothing more happens.
                        producer.context().fatal.store(true, Ordering::SeqCst);
                        SinkError::Produce(RDKafkaErrorCode::Fatal)
                    }
                    Some(code) => SinkError::Produce(code),
                    None => SinkError::Produce(RDKafkaErrorCode::Fail),
                })
            }
        }
    }

    /// Stops replaying, waits until `deadline` for every queued record to be reported on, spools what is left
    /// (memory mode with a spool), and closes the spool. Everything is bounded by the one deadline, except the
    /// purge of memory mode (at most 1 s more), without which the purged records would be lost.
    pub fn shutdown(&self, deadline: Instant) -> FlushReport {
        self.stop.store(true, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The metadata watcher may sit in a request for a few seconds: it is not waited for (it holds no record).
        for thread in self.threads.lock().expect("threads lock").drain(..) {
            if thread.thread().name() != Some("kafka-metadata") {
                let _ = thread.join();
            }
        }
        let producer = self.producer.load_full();
        if let Err(err) = producer.flush(deadline.saturating_duration_since(Instant::now())) {
            warn!(error = %err, "Kafka flush did not complete before the shutdown deadline");
        }
        let in_flight = producer.in_flight_count().max(0) as usize;
        let Some(spool) = &self.spool else {
            return FlushReport { undelivered: in_flight, spooled: 0 };
        };
        let lost_before = self.metrics.events_lost.get();
        if in_flight > 0 && self.durability == Durability::Memory {
            // Purged records come back as failed deliveries, which the context writes to the spool.
            producer.purge(PurgeConfig::default().queue().inflight());
            let _ = producer.flush(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
        }
        let backlog = spool.replay_backlog();
        let left = spool.close();
        let lost = self.metrics.events_lost.get() - lost_before;
        info!(left, backlog, "spool closed");
        FlushReport { undelivered: left as usize + lost as usize, spooled: left }
    }
}

/// Makes librdkafka raise a fatal error on this producer, as a broker's fatal idempotence error would.
fn raise_test_fatal(producer: &ThreadedProducer<SinkContext>) {
    let reason = c"injected at seam kafka.produce";
    // SAFETY: the client pointer is valid while `producer` is borrowed; the reason is a NUL-terminated string
    // that librdkafka copies.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

fn create_producer(
    config: &ClientConfig,
    shared: &Arc<ContextShared>,
) -> Result<ThreadedProducer<SinkContext>, SinkError> {
    config
        .create_with_context(SinkContext { shared: shared.clone(), fatal: AtomicBool::new(false) })
        .map_err(SinkError::Config)
}

fn next_delay(previous: Option<Duration>) -> Duration {
    previous.map_or(REPLAY_RETRY_MIN, |d| (d * 2).min(REPLAY_RETRY_MAX))
}

fn sleep_unless(stop: &AtomicBool, duration: Duration) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn spawn_named(name: &str, sink: Weak<KafkaSink>, body: fn(Weak<KafkaSink>, Arc<AtomicBool>)) -> JoinHandle<()> {
    let stop = sink.upgrade().map(|s| s.stop.clone()).unwrap_or_default();
    thread::Builder::new().name(name.into()).spawn(move || body(sink, stop)).expect("spawn sink thread")
}
