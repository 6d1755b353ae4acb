//! Counts the records of a Kafka topic by consuming them (bench/run.sh): every partition is assigned from
//! `Offset::Beginning` and read until no record arrived for `--idle-ms` (and at least `--expect` records
//! were seen, when given) or until `--timeout-secs`. Offsets and high watermarks are never used for the
//! count: some Kafka-compatible brokers (tansu 0.6) report them wrongly under load.
//!
//! ```text
//! cargo run --release --example count_topic -- --brokers 127.0.0.1:9092 --topic im.group.send-msg-exception
//! ```
//! Prints one JSON object on stdout: records, distinct `event_id` headers, records without one, records whose
//! payload is not a schema v1 event, per-partition counts and payload bytes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
struct Opts {
    /// bootstrap.servers (loopback).
    #[arg(long)]
    brokers: String,
    /// Topic to count.
    #[arg(long)]
    topic: String,
    /// Stop after this long without a record.
    #[arg(long, default_value_t = 5000)]
    idle_ms: u64,
    /// Keep reading (up to --timeout-secs) until at least this many records arrived.
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Hard bound on the whole count.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Check that every payload is a JSON object with the v1 `schema` (costs a JSON parse per record).
    #[arg(long)]
    check_payload: bool,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", "imcf-bench-count")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&opts.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == opts.topic)
        .ok_or_else(|| anyhow::anyhow!("topic {} not in metadata", opts.topic))?;
    if let Some(err) = topic.error() {
        anyhow::bail!("topic {}: {:?}", opts.topic, err);
    }
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment.add_partition_offset(&opts.topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.timeout_secs);
    let idle = Duration::from_millis(opts.idle_ms);
    let mut last_record = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut without_event_id = 0u64;
    let mut bad_payload = 0u64;
    let mut errors = 0u64;
    let mut event_ids: HashSet<[u8; 32]> = HashSet::new();
    let mut unparsable_ids = 0u64;
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let timed_out = loop {
        let now = Instant::now();
        if now >= deadline {
            break true;
        }
        if now.duration_since(last_record) >= idle && records >= opts.expect {
            break false;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                records += 1;
                *per_partition.entry(message.partition()).or_default() += 1;
                let payload = message.payload().unwrap_or_default();
                bytes += payload.len() as u64;
                let event_id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == "event_id").and_then(|h| h.value));
                match event_id {
                    Some(value) => {
                        let mut id = [0u8; 32];
                        if hex::decode_to_slice(value, &mut id).is_ok() {
                            event_ids.insert(id);
                        } else {
                            unparsable_ids += 1;
                        }
                    }
                    None => without_event_id += 1,
                }
                if opts.check_payload {
                    let ok = serde_json::from_slice::<serde_json::Value>(payload).ok().is_some_and(|v| {
                        v.get("schema").and_then(|s| s.as_str()) == Some("tencent.im.group.send_msg_exception/v1")
                    });
                    if !ok {
                        bad_payload += 1;
                    }
                }
            }
            Some(Err(err)) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("consumer error: {err}");
                }
            }
            None => {}
        }
    };
    let result = serde_json::json!({
        "topic": opts.topic,
        "records": records,
        "distinct_event_ids": event_ids.len(),
        "without_event_id": without_event_id,
        "unparsable_event_ids": unparsable_ids,
        "bad_payload": if opts.check_payload { Some(bad_payload) } else { None },
        "payload_bytes": bytes,
        "per_partition": per_partition.iter().map(|(p, n)| (p.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "consumer_errors": errors,
        "timed_out": timed_out,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{result}");
    Ok(())
}
