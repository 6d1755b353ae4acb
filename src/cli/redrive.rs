//! `im-callback-forwarder redrive --state-file PATH [--from N] [--to N] [--limit N] [--dry-run]`: with the flags and
//! environment of serving, reads the dead-letter topic, runs each raw body through today's parser and
//! normalization (with the query kept in its `query` header), and publishes those that now pass as the record a
//! live callback of the same body gets (same `event_id`, key, headers; `received_at` from the dead letter).
//!
//! `Sign` and `RequestTime` are not verified again: `Sign` was stripped before the record was stored and
//! `RequestTime` is old; the body was authenticated when it arrived. Only the `SdkAppid` must still be a
//! configured app. Each event_id redriven is appended to the state file (fsynced once Kafka acknowledged the
//! record), and ids already in it are skipped, so running it twice publishes nothing twice.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args as ClapArgs;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::callback::{self, AppRegistry, Disposition, RawQuery};
use crate::config::{Args, Config, ConfigError, KafkaTarget, MAX_SECS};
use crate::http::EventRecord;
use crate::sink::DEFAULT_PRODUCER_PROPERTIES;

/// `redrive` flags: those of serving, and its own.
#[derive(ClapArgs)]
pub struct RedriveArgs {
    /// The serving flags (and their IMCF_* environment variables).
    #[command(flatten)]
    pub serve: Args,
    /// File of the event_ids already redriven (append-only, one a line); required unless --dry-run.
    #[arg(long, value_name = "PATH", required_unless_present = "dry_run")]
    pub state_file: Option<PathBuf>,
    /// First offset read in each partition of the dead-letter topic (default: the earliest).
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    pub from: Option<i64>,
    /// Stop before this offset in each partition (default: the end of the topic when redrive starts).
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    pub to: Option<i64>,
    /// Read at most N dead letters in all.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print what would be redriven; publish nothing and write no state.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds Kafka may take for any one step (metadata, a fetch, a produce).
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub timeout: u64,
}

/// Why `redrive` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The serving configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// `--dev` has no dead letters to read.
    #[error("redrive needs --kafka-brokers: --dev's embedded cluster starts empty")]
    Embedded,
    /// The state file cannot be read or written.
    #[error("--state-file {}: {source}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A Kafka client could not be created or a request failed.
    #[error("kafka: {0}")]
    Kafka(#[source] Box<KafkaError>),
    /// No record arrived from a partition within `--timeout`.
    #[error("dead-letter topic {topic} partition {partition}: no record within {secs} s (at offset {offset})")]
    Stalled {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The next offset expected.
        offset: i64,
        /// The timeout.
        secs: u64,
    },
    /// A redriven record was not acknowledged; what was acknowledged before is in the state file.
    #[error("publishing {0}: {1}")]
    Publish(String, #[source] Box<KafkaError>),
    /// Standard output failed.
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
}

impl From<KafkaError> for RedriveError {
    fn from(err: KafkaError) -> Self {
        RedriveError::Kafka(Box::new(err))
    }
}

/// What became of one dead letter.
enum Outcome {
    /// Published (or, in a dry run, would be) to `topic`.
    Redriven { event_id: String, topic: String },
    /// Still refused today, with a grouping label and the reason.
    Failing { label: &'static str, reason: String },
    /// Not published, and not a failure.
    Skipped { why: &'static str },
}

/// The event_ids already redriven (the state file), and the file to append to.
struct State {
    path: PathBuf,
    done: HashSet<String>,
    file: Option<File>,
}

impl State {
    fn open(path: Option<PathBuf>, dry_run: bool) -> Result<State, RedriveError> {
        let Some(path) = path else {
            return Ok(State { path: PathBuf::new(), done: HashSet::new(), file: None });
        };
        let err = |source| RedriveError::State { path: path.clone(), source };
        let done = match fs::read_to_string(&path) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(err(e)),
        };
        let file =
            if dry_run { None } else { Some(OpenOptions::new().create(true).append(true).open(&path).map_err(err)?) };
        Ok(State { path, done, file })
    }

    fn record(&mut self, event_id: &str) -> Result<(), RedriveError> {
        self.done.insert(event_id.to_owned());
        if let Some(file) = &mut self.file {
            file.write_all(format!("{event_id}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|source| RedriveError::State { path: self.path.clone(), source })?;
        }
        Ok(())
    }
}

fn header<'m>(headers: Option<&'m rdkafka::message::BorrowedHeaders>, name: &str) -> Option<&'m [u8]> {
    headers?.iter().find(|h: &Header<'_, &[u8]>| h.key == name).and_then(|h| h.value)
}

/// The time the dead letter was received: its `received_at` header, else the record's timestamp, else now.
fn received_at(received: Option<&[u8]>, timestamp_ms: Option<i64>) -> SystemTime {
    received
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| humantime::parse_rfc3339_weak(v).ok())
        .or_else(|| timestamp_ms.and_then(|ms| u64::try_from(ms).ok()).map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
        .unwrap_or_else(SystemTime::now)
}

/// Everything one dead letter needs to be judged and, if it passes, published.
struct Judge<'c> {
    config: &'c Config,
    /// The configured apps, without tokens: authenticates SdkAppid only.
    apps: AppRegistry,
}

/// A dead letter that passes today, ready to publish.
struct Ready {
    event_id: String,
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl Judge<'_> {
    fn judge(
        &self,
        query: Option<&[u8]>,
        body: &[u8],
        received_at: SystemTime,
        done: &HashSet<String>,
    ) -> Result<Ready, Outcome> {
        let failing = |label, reason: String| Outcome::Failing { label, reason };
        let query = match query.map(std::str::from_utf8) {
            Some(Ok(query)) => query,
            Some(Err(_)) => return Err(failing("query_header", "the query header is not UTF-8".into())),
            None => return Err(failing("query_header", "the record has no query header".into())),
        };
        let raw = RawQuery::parse(query).map_err(|e| failing(e.outcome_label(), e.to_string()))?;
        let authenticated = match self.apps.authenticate(raw, 0) {
            Ok(authenticated) => authenticated,
            Err(_) => return Err(Outcome::Skipped { why: "not for a configured app" }),
        };
        if let Some(declared) = authenticated.content_type.as_deref() {
            if !declared.eq_ignore_ascii_case("json") {
                return Err(failing("unsupported_content_type", format!("query parameter contenttype={declared}")));
            }
        }
        let normalized = callback::normalize(&authenticated, body, received_at)
            .map_err(|e| failing(e.outcome_label(), e.to_string()))?;
        if done.contains(normalized.event_id()) {
            return Err(Outcome::Skipped { why: "already redriven" });
        }
        let topic = match callback::route(&self.config.routes, normalized.command(), self.config.routing) {
            Disposition::Exception => self.config.topic.as_str(),
            Disposition::Publish { topic, .. } => topic,
            Disposition::Skip { .. } => {
                return Err(Outcome::Skipped { why: "unrouted command (serving publishes nothing)" })
            }
        };
        let record = EventRecord::new(authenticated.sdk_app_id, &normalized);
        let headers = record.headers(&normalized).iter().map(|(k, v)| (*k, v.to_vec())).collect();
        Ok(Ready {
            event_id: normalized.event_id().to_owned(),
            topic: topic.to_owned(),
            key: record.key.as_bytes().to_vec(),
            payload: record.payload.clone(),
            headers,
        })
    }
}

/// Reads the dead letters, redrives those that pass, prints the counts. Exit 0 when it ran to the end.
pub fn run(args: RedriveArgs) -> Result<ExitCode, RedriveError> {
    let config = Config::try_from(args.serve)?;
    let KafkaTarget::Brokers(brokers) = &config.kafka else {
        return Err(RedriveError::Embedded);
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut state = State::open(args.state_file, args.dry_run)?;
    let judge = Judge {
        config: &config,
        apps: AppRegistry::new(config.apps.iter().map(|(id, _)| (*id, Vec::new())), config.max_clock_skew),
    };

    let mut consumer_config = ClientConfig::new();
    for (key, value) in &config.kafka_properties {
        consumer_config.set(key, value);
    }
    consumer_config
        .set("bootstrap.servers", brokers)
        .set("group.id", "im-callback-forwarder-redrive")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = consumer_config.create()?;
    let mut producer_config = ClientConfig::new();
    for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
        producer_config.set(*key, *value);
    }
    producer_config.set("linger.ms", "0");
    for (key, value) in &config.kafka_properties {
        producer_config.set(key, value);
    }
    producer_config.set("bootstrap.servers", brokers);
    let producer: Option<FutureProducer> = if args.dry_run { None } else { Some(producer_config.create()?) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RedriveError::Output)?;

    let topic = config.dead_letter_topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| {
            if let Some(err) = t.error() {
                return Err(KafkaError::MetadataFetch(err.into()));
            }
            Ok(t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        })
        .flatten()
        .collect();

    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut print = |line: String| writeln!(out, "{line}").map_err(RedriveError::Output);
    print(format!(
        "{}dead-letter topic {topic} ({} partition(s)) via {brokers}",
        if args.dry_run { "DRY RUN (nothing is published): " } else { "" },
        partitions.len()
    ))?;
    let (mut redriven, mut read) = (0u64, 0u64);
    let mut failing: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
    'partitions: for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let start = args.from.unwrap_or(low).max(low);
        let end = args.to.unwrap_or(high).min(high);
        if start >= end {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let mut next = start;
        let mut waiting_since = Instant::now();
        while next < end {
            if args.limit.is_some_and(|limit| read >= limit) {
                break 'partitions;
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                if waiting_since.elapsed() > timeout {
                    return Err(RedriveError::Stalled {
                        topic: topic.into(),
                        partition,
                        offset: next,
                        secs: args.timeout,
                    });
                }
                continue;
            };
            let message = message?;
            waiting_since = Instant::now();
            if message.partition() != partition || message.offset() < next {
                continue;
            }
            next = message.offset() + 1;
            if message.offset() >= end {
                break;
            }
            read += 1;
            let headers = message.headers();
            let at = received_at(header(headers, "received_at"), message.timestamp().to_millis());
            let judged = judge.judge(header(headers, "query"), message.payload().unwrap_or_default(), at, &state.done);
            let place = format!("{partition}/{}", message.offset());
            let outcome = match judged {
                Err(outcome) => outcome,
                Ok(ready) => {
                    if let Some(producer) = &producer {
                        let mut owned = OwnedHeaders::new_with_capacity(ready.headers.len());
                        for (key, value) in &ready.headers {
                            owned = owned.insert(Header { key, value: Some(value.as_slice()) });
                        }
                        let record = FutureRecord::to(&ready.topic)
                            .key(ready.key.as_slice())
                            .payload(ready.payload.as_slice())
                            .headers(owned);
                        runtime.block_on(producer.send(record, timeout)).map_err(|(err, _)| {
                            let what = format!("event {} to {}", ready.event_id, ready.topic);
                            RedriveError::Publish(what, Box::new(err))
                        })?;
                        state.record(&ready.event_id)?;
                    } else {
                        state.done.insert(ready.event_id.clone());
                    }
                    Outcome::Redriven { event_id: ready.event_id, topic: ready.topic }
                }
            };
            match outcome {
                Outcome::Redriven { event_id, topic } => {
                    redriven += 1;
                    let verb = if args.dry_run { "would redrive" } else { "redriven" };
                    print(format!("{verb} {place}: event {event_id} -> {topic}"))?;
                }
                Outcome::Failing { label, reason } => {
                    print(format!("still failing {place}: {label}: {reason}"))?;
                    failing.entry(label).or_insert((0, reason)).0 += 1;
                }
                Outcome::Skipped { why } => {
                    print(format!("skipped {place}: {why}"))?;
                    *skipped.entry(why).or_default() += 1;
                }
            }
        }
    }
    let total = |m: &BTreeMap<&str, u64>| m.values().sum::<u64>();
    let failing_total: u64 = failing.values().map(|(n, _)| n).sum();
    print(format!(
        "read {read} dead letter(s): {} {redriven}, still failing {failing_total}, skipped {}",
        if args.dry_run { "would redrive" } else { "redriven" },
        total(&skipped)
    ))?;
    for (label, (count, example)) in &failing {
        print(format!("  still failing, {label}: {count} (e.g. {example})"))?;
    }
    for (why, count) in &skipped {
        print(format!("  skipped, {why}: {count}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn config(extra: &[&str]) -> Config {
        let mut argv = vec!["imcf", "redrive", "--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", "1400000000"];
        argv.extend_from_slice(&["--callback-token", "a-secret-token", "--dry-run"]);
        argv.extend_from_slice(extra);
        let Some(Command::Redrive(args)) = Cli::try_parse_from(argv).expect("flags").command else {
            panic!("not redrive")
        };
        Config::try_from(args.serve).expect("config")
    }

    fn judged(config: &Config, query: &str, body: &str, done: &HashSet<String>) -> Result<Ready, Outcome> {
        let judge = Judge {
            config,
            apps: AppRegistry::new(config.apps.iter().map(|(id, _)| (*id, Vec::new())), config.max_clock_skew),
        };
        judge.judge(Some(query.as_bytes()), body.as_bytes(), UNIX_EPOCH, done)
    }

    #[test]
    fn sign_is_not_verified_again_but_the_app_must_be_configured_and_the_route_decides_the_topic() {
        let config = config(&["--route", "Group.CallbackAfterSendMsg=im.group.messages"]);
        let none = HashSet::new();
        let exception = crate::cli::send_test::sample_body(callback::EXCEPTION_COMMAND, "@TGS#1", 7, 10023, 1);
        let exception = exception.as_str();
        let query = "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException&RequestTime=1";
        let ready =
            judged(&config, query, exception, &none).unwrap_or_else(|_| panic!("unsigned, old: still redriven"));
        assert_eq!(ready.topic, config.topic);
        assert_eq!(ready.key, b"@TGS#1");
        let names: Vec<&str> = ready.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["event_id", "sdk_app_id", "callback_command", "schema", "content-type"]);
        let done: HashSet<String> = [ready.event_id.clone()].into();
        assert!(matches!(judged(&config, query, exception, &done), Err(Outcome::Skipped { why: "already redriven" })));
        let other_app = query.replace("1400000000", "1400000001");
        assert!(matches!(
            judged(&config, &other_app, exception, &none),
            Err(Outcome::Skipped { why: "not for a configured app" })
        ));
        let xml = format!("{query}&contenttype=xml");
        assert!(matches!(
            judged(&config, &xml, exception, &none),
            Err(Outcome::Failing { label: "unsupported_content_type", .. })
        ));
        let routed = r#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#2"}"#;
        let query = "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg";
        let ready = judged(&config, query, routed, &none).unwrap_or_else(|_| panic!("routed command"));
        assert_eq!(ready.topic, "im.group.messages");
        let unrouted = r#"{"CallbackCommand":"Group.CallbackAfterNewMemberJoin","GroupId":"@TGS#3"}"#;
        let query = "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterNewMemberJoin";
        assert!(matches!(judged(&config, query, unrouted, &none), Err(Outcome::Skipped { .. })));
    }

    #[test]
    fn received_at_comes_from_the_header_else_the_record_timestamp() {
        let header = b"2026-01-02T03:04:05.678Z";
        let at = received_at(Some(header), Some(5)).duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(at.as_millis(), 1_767_323_045_678);
        let at = received_at(Some(b"garbage"), Some(1_000)).duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(at.as_millis(), 1_000);
    }
}
