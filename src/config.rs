//! Configuration: the command line and its environment variables, validated into [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use crate::sink::Durability;
pub use crate::spool::SpoolConfig;

/// Default Kafka topic for exception events.
pub const DEFAULT_TOPIC: &str = "im.group.send-msg-exception";

/// Command-line arguments; every flag can also be set from the environment variable shown in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(name = "im-callback-forwarder", version, about, long_about = None)]
pub struct Args {
    /// Address of the callback listener (Tencent's callback URL points here).
    #[arg(long, env = "IMCF_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz, /readyz). Never expose it publicly.
    #[arg(long, env = "IMCF_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// SDKAppID of an app this service accepts; repeat the flag (or comma-separate in the env var) for several.
    #[arg(long = "sdk-app-id", env = "IMCF_SDK_APP_ID", value_delimiter = ',', required = true)]
    pub sdk_app_ids: Vec<u64>,

    /// Callback authentication token from Tencent's console; when set, `Sign` and `RequestTime` are required.
    #[arg(long, env = "IMCF_CALLBACK_TOKEN", hide_env_values = true)]
    pub callback_token: Option<String>,

    /// Largest allowed clock difference between `RequestTime` and now, in seconds.
    #[arg(long, env = "IMCF_MAX_CLOCK_SKEW", default_value_t = 60, value_name = "SECS")]
    pub max_clock_skew: u64,

    /// HTTP path Tencent posts callbacks to.
    #[arg(long, env = "IMCF_CALLBACK_PATH", default_value = "/")]
    pub callback_path: String,

    /// Kafka bootstrap servers (comma-separated host:port list); required unless --dev.
    #[arg(long, env = "IMCF_KAFKA_BROKERS", required_unless_present = "dev")]
    pub kafka_brokers: Option<String>,

    /// Topic that receives normalized exception events.
    #[arg(long, env = "IMCF_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    /// Topic that receives the raw bytes of authentic but unusable callbacks [default: <topic>.dead-letter].
    #[arg(long, env = "IMCF_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// A librdkafka producer property KEY=VALUE, overriding our defaults (repeatable; newline-separated in the env var).
    #[arg(short = 'X', long = "kafka-property", env = "IMCF_KAFKA_PROPERTY", value_delimiter = '\n', value_parser = parse_property, value_name = "KEY=VALUE")]
    pub kafka_properties: Vec<(String, String)>,

    /// Largest callback body accepted, in bytes.
    #[arg(long, env = "IMCF_MAX_BODY_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=512 * 1024))]
    pub max_body_bytes: u64,

    /// Seconds allowed, after SIGTERM, to finish requests and flush Kafka.
    #[arg(long, env = "IMCF_SHUTDOWN_TIMEOUT", default_value_t = 30, value_name = "SECS")]
    pub shutdown_timeout: u64,

    /// Log output format.
    #[arg(long, env = "IMCF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// When a callback is acknowledged: `memory` once in the producer queue, `disk` once fsynced to the spool.
    #[arg(long, env = "IMCF_DURABILITY", value_enum, default_value_t = DurabilityArg::Memory)]
    pub durability: DurabilityArg,

    /// Directory of the disk spool that keeps what Kafka has not acknowledged; required by `--durability disk`.
    #[arg(long, env = "IMCF_SPOOL_DIR")]
    pub spool_dir: Option<std::path::PathBuf>,

    /// Most bytes the spool may take on disk; past it, callbacks are refused with 503.
    #[arg(long, env = "IMCF_SPOOL_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub spool_max_bytes: u64,

    /// Run with an embedded in-memory Kafka (librdkafka's mock cluster) and log every event read back.
    #[arg(long, env = "IMCF_DEV")]
    pub dev: bool,
}

/// `--durability` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge once the event is in librdkafka's queue.
    Memory,
    /// Acknowledge once the event is fsynced to the spool.
    Disk,
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// Where events are published.
#[derive(Debug, Clone)]
pub enum KafkaTarget {
    /// A real cluster reached through these bootstrap servers.
    Brokers(String),
    /// librdkafka's embedded mock cluster (`--dev`).
    Embedded,
}

/// Validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Callback listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Accepted apps, each with the tokens that may sign for it (empty: no Sign check).
    pub apps: Vec<(u64, Vec<String>)>,
    /// Allowed `RequestTime` skew.
    pub max_clock_skew: Duration,
    /// Path of the callback endpoint.
    pub callback_path: String,
    /// The Kafka cluster.
    pub kafka: KafkaTarget,
    /// Topic for exception events.
    pub topic: String,
    /// Topic for dead letters.
    pub dead_letter_topic: String,
    /// User librdkafka properties, applied over the defaults.
    pub kafka_properties: Vec<(String, String)>,
    /// Body size limit in bytes.
    pub max_body_bytes: u64,
    /// Time allowed for a graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// When a callback counts as safe.
    pub durability: Durability,
    /// The disk spool, if any.
    pub spool: Option<SpoolConfig>,
}

/// Size at which a spool segment is closed and a new one started.
const SPOOL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A configuration value that parses but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--callback-path` must be an absolute path.
    #[error("--callback-path must start with '/', got {0:?}")]
    CallbackPath(String),
    /// `--callback-token` is longer than Tencent allows or empty.
    #[error("--callback-token must be 1 to 128 characters")]
    CallbackToken,
    /// Topics must differ and be valid Kafka names.
    #[error("{flag}: invalid topic name {name:?} (1-249 characters of [a-zA-Z0-9._-])")]
    Topic {
        /// The flag holding the bad name.
        flag: &'static str,
        /// The bad name.
        name: String,
    },
    /// Dead letters must not land among events.
    #[error("--dead-letter-topic must differ from --topic")]
    SameTopics,
    /// Disk durability writes to the spool.
    #[error("--durability disk requires --spool-dir")]
    DiskWithoutSpool,
    /// `--shutdown-timeout` of zero leaves no time to flush.
    #[error("--shutdown-timeout must be at least 1 second")]
    ShutdownTimeout,
}

fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        if !args.callback_path.starts_with('/') {
            return Err(ConfigError::CallbackPath(args.callback_path));
        }
        if let Some(token) = &args.callback_token {
            if token.is_empty() || token.chars().count() > 128 {
                return Err(ConfigError::CallbackToken);
            }
        }
        let dead_letter_topic = args.dead_letter_topic.unwrap_or_else(|| format!("{}.dead-letter", args.topic));
        for (flag, name) in [("--topic", &args.topic), ("--dead-letter-topic", &dead_letter_topic)] {
            if !valid_topic(name) {
                return Err(ConfigError::Topic { flag, name: name.clone() });
            }
        }
        if dead_letter_topic == args.topic {
            return Err(ConfigError::SameTopics);
        }
        if args.shutdown_timeout == 0 {
            return Err(ConfigError::ShutdownTimeout);
        }
        if args.durability == DurabilityArg::Disk && args.spool_dir.is_none() {
            return Err(ConfigError::DiskWithoutSpool);
        }
        let tokens: Vec<String> = args.callback_token.into_iter().collect();
        let mut apps: Vec<(u64, Vec<String>)> = Vec::new();
        for id in args.sdk_app_ids {
            if !apps.iter().any(|(known, _)| *known == id) {
                apps.push((id, tokens.clone()));
            }
        }
        let kafka = match (args.dev, args.kafka_brokers) {
            (false, Some(brokers)) => KafkaTarget::Brokers(brokers),
            _ => KafkaTarget::Embedded,
        };
        Ok(Config {
            listen: args.listen,
            admin_listen: args.admin_listen,
            apps,
            max_clock_skew: Duration::from_secs(args.max_clock_skew),
            callback_path: args.callback_path,
            kafka,
            topic: args.topic,
            dead_letter_topic,
            kafka_properties: args.kafka_properties,
            max_body_bytes: args.max_body_bytes,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            log_format: args.log_format,
            durability: match args.durability {
                DurabilityArg::Memory => Durability::Memory,
                DurabilityArg::Disk => Durability::Disk,
            },
            spool: args.spool_dir.map(|dir| SpoolConfig {
                dir,
                max_bytes: args.spool_max_bytes,
                segment_bytes: SPOOL_SEGMENT_BYTES.min(args.spool_max_bytes / 4),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["im-callback-forwarder"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse(&["--sdk-app-id", "1400000000", "--kafka-brokers", "k:9092"]).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(config.topic, "im.group.send-msg-exception");
        assert_eq!(config.dead_letter_topic, "im.group.send-msg-exception.dead-letter");
        assert_eq!(config.callback_path, "/");
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.max_clock_skew, Duration::from_secs(60));
        assert_eq!(config.apps, vec![(1400000000, vec![])]);
        assert_eq!(config.durability, Durability::Memory);
        assert!(config.spool.is_none());
    }

    #[test]
    fn disk_durability_needs_a_spool() {
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--durability", "disk"]).unwrap_err().contains("--spool-dir"));
        let config =
            parse(&["--sdk-app-id", "1", "--dev", "--durability", "disk", "--spool-dir", "/tmp/s"]).unwrap();
        assert_eq!(config.spool.unwrap().max_bytes, 1 << 30);
    }

    #[test]
    fn token_applies_to_every_app_and_ids_deduplicate() {
        let config =
            parse(&["--sdk-app-id", "1", "--sdk-app-id", "2", "--sdk-app-id", "1", "--callback-token", "t", "--dev"])
                .unwrap();
        assert_eq!(config.apps, vec![(1, vec!["t".to_owned()]), (2, vec!["t".to_owned()])]);
        assert!(matches!(config.kafka, KafkaTarget::Embedded));
    }

    #[test]
    fn kafka_properties_keep_order_and_values_with_equals() {
        let config =
            parse(&["--sdk-app-id", "1", "--dev", "-X", "a.b=1", "--kafka-property", "sasl.jaas=x=y"]).unwrap();
        assert_eq!(config.kafka_properties, vec![("a.b".into(), "1".into()), ("sasl.jaas".into(), "x=y".into())]);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse(&["--kafka-brokers", "k"]).unwrap_err().contains("--sdk-app-id"));
        assert!(parse(&["--sdk-app-id", "1"]).unwrap_err().contains("--kafka-brokers"));
        assert!(parse(&["--sdk-app-id", "x", "--dev"]).unwrap_err().contains("--sdk-app-id"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "-X", "novalue"]).unwrap_err().contains("--kafka-property"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--callback-path", "x"])
            .unwrap_err()
            .contains("--callback-path"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--topic", "a b"]).unwrap_err().contains("--topic"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--dead-letter-topic", "im.group.send-msg-exception"])
            .unwrap_err()
            .contains("--dead-letter-topic"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--max-body-bytes", "0"])
            .unwrap_err()
            .contains("--max-body-bytes"));
    }
}
