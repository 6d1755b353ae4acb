//! Reading topics back: a BaseConsumer assigned to every partition from the beginning.
//! Records are counted by consuming them, never from offsets (tansu's high watermarks
//! are not reliable under load).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// One consumed record, owned.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers in record order; a header may repeat or have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The key as UTF-8 (panics if absent or not UTF-8).
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().expect("record has no key")).expect("UTF-8 key")
    }

    /// The value bytes (panics if absent).
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().expect("record has no value")
    }

    /// The value parsed as JSON (panics if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.value_bytes()).unwrap_or_else(|e| {
            panic!("record value is not JSON ({e}): {}", String::from_utf8_lossy(self.value_bytes()))
        })
    }

    /// The first header named `name`, as UTF-8 (lossy); `None` if absent or valueless.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Header names in record order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

static CONSUMER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A consumer assigned to every partition of `topic` from the beginning; panics if the topic has no metadata
/// within `timeout`.
pub fn consumer_from_start(bootstrap: &str, topic: &str, timeout: Duration) -> (BaseConsumer, usize) {
    let group = format!("imcf-test-{}-{}", std::process::id(), CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let partitions = super::poll_until(timeout, Duration::from_millis(100), || {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(2)).ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        if t.error().is_some() || t.partitions().is_empty() {
            return None;
        }
        Some(t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
    })
    .unwrap_or_else(|| panic!("topic {topic} has no metadata on {bootstrap}"));
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    (consumer, partitions.len())
}

/// Reads `topic` from the beginning of every partition until `expected` records are in,
/// then for `grace` more (to catch extras); stops at `timeout` regardless.
pub fn consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration, grace: Duration) -> Vec<Record> {
    let started = Instant::now();
    let deadline = started + timeout;
    let (consumer, _) = consumer_from_start(bootstrap, topic, timeout);

    let mut records = Vec::new();
    let mut complete_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(t) = complete_at {
            if now >= t + grace {
                break;
            }
        }
        // Transient fetch errors are retried by librdkafka: only records matter here.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            records.push(owned(&m));
            if records.len() >= expected && complete_at.is_none() {
                complete_at = Some(Instant::now());
            }
        }
    }
    records
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Appends a marker record (header `event_id` = the returned value) to partition 0 of `topic`.
pub fn produce_marker(bootstrap: &str, topic: &str) -> String {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let marker = format!("marker-{}-{}", std::process::id(), CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed));
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("marker producer");
    let headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some(marker.as_bytes()) });
    producer
        .send(BaseRecord::<[u8], [u8]>::to(topic).partition(0).payload(b"marker").headers(headers))
        .map_err(|(e, _)| e)
        .expect("send marker");
    producer.flush(Duration::from_secs(15)).expect("marker delivered");
    marker
}

/// Reads `topic` (one partition) from the beginning until the record whose `event_id` header is `marker`,
/// then for `grace` more; returns every other record read. Panics if the marker does not arrive in `timeout`.
pub fn consume_until_marker(
    bootstrap: &str,
    topic: &str,
    marker: &str,
    timeout: Duration,
    grace: Duration,
) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let (consumer, partitions) = consumer_from_start(bootstrap, topic, timeout);
    assert_eq!(partitions, 1, "a marker proves a read complete only on a single partition");
    let mut records = Vec::new();
    let mut seen_at: Option<Instant> = None;
    while seen_at.is_none_or(|at| at.elapsed() < grace) {
        assert!(Instant::now() < deadline, "marker {marker} not read back from {topic} within {timeout:?}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let record = owned(&m);
            if record.header("event_id").as_deref() == Some(marker) {
                seen_at = Some(Instant::now());
            } else {
                records.push(record);
            }
        }
    }
    records
}
