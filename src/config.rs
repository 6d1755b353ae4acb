//! Configuration: the command line and its environment variables, validated into [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::callback::{RouteError, RouteTable, RoutingPolicy, UnroutedPolicy};
use crate::http::{ConnectionLimits, SourcePolicy, SourcePolicyError};

pub use crate::sink::Durability;
pub use crate::spool::SpoolConfig;

/// Default Kafka topic for exception events.
pub const DEFAULT_TOPIC: &str = "im.group.send-msg-exception";

/// Largest accepted value of the flags in seconds: a day. Larger ones would overflow the deadlines computed from
/// them (`Instant + Duration`), and no sane configuration needs them.
pub const MAX_SECS: u64 = 86_400;

/// Command-line arguments; every flag can also be set from the environment variable shown in `--help`.
/// `Debug` shows no secret (tokens, `-X` values).
#[derive(Clone, Parser)]
#[command(name = "im-callback-forwarder", version, about, long_about = None)]
pub struct Args {
    /// Address of the callback listener (Tencent's callback URL points here).
    #[arg(long, env = "IMCF_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz, /readyz). Never expose it publicly.
    #[arg(long, env = "IMCF_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// SDKAppID of an app this service accepts, signed with --callback-token if set; repeatable (comma-separated in the env var).
    #[arg(long = "sdk-app-id", env = "IMCF_SDK_APP_ID", value_delimiter = ',', value_name = "ID")]
    pub sdk_app_ids: Vec<u64>,

    /// An app with its own token, ID[:TOKEN]; repeat an ID with a second token while rotating it (comma-separated in the env var).
    #[arg(long = "app", env = "IMCF_APP", value_delimiter = ',', hide_env_values = true, value_name = "ID[:TOKEN]")]
    pub apps: Vec<String>,

    /// File of apps, one ID[:TOKEN] per line ('#' starts a comment), e.g. a mounted Kubernetes Secret; reloaded
    /// when it changes and on SIGHUP.
    #[arg(long, env = "IMCF_APPS_FILE", value_name = "PATH")]
    pub apps_file: Option<std::path::PathBuf>,

    /// Callback authentication token from Tencent's console; when set, `Sign` and `RequestTime` are required.
    #[arg(long, env = "IMCF_CALLBACK_TOKEN", hide_env_values = true)]
    pub callback_token: Option<String>,

    /// File holding the callback token (a second line adds a second valid token, for rotation); reloaded when it
    /// changes and on SIGHUP.
    #[arg(long, env = "IMCF_CALLBACK_TOKEN_FILE", value_name = "PATH", conflicts_with = "callback_token")]
    pub callback_token_file: Option<std::path::PathBuf>,

    /// Accept callbacks only from these source networks (CIDR or address; repeatable; all when unset).
    #[arg(long = "allow-cidr", env = "IMCF_ALLOW_CIDR", value_delimiter = ',', value_name = "CIDR")]
    pub allow_cidrs: Vec<String>,

    /// Proxies (e.g. the ingress) whose X-Forwarded-For header names the real client (CIDR; repeatable).
    #[arg(long = "trusted-proxy", env = "IMCF_TRUSTED_PROXY", value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxies: Vec<String>,

    /// Publish another callback command to a topic, COMMAND=TOPIC; COMMAND may use '*' (e.g. Group.*=im.group); repeatable.
    #[arg(long = "route", env = "IMCF_ROUTE", value_delimiter = ',', value_name = "COMMAND=TOPIC")]
    pub routes: Vec<String>,

    /// Answer to callbacks of commands without a route: `ack` (OK, not published) or `reject` (404).
    #[arg(long, env = "IMCF_UNROUTED", default_value = "ack", value_name = "ack|reject")]
    pub unrouted: UnroutedPolicy,

    /// Refuse before-callbacks (commands with Before or Prev) instead of allowing the user's action.
    #[arg(long, env = "IMCF_REFUSE_BEFORE_CALLBACKS")]
    pub refuse_before_callbacks: bool,

    /// Start even though an app has no callback token and no --allow-cidr restricts the sources (anyone who knows
    /// the SdkAppid could then post its callbacks). Implied by --dev.
    #[arg(long, env = "IMCF_ALLOW_UNSIGNED", overrides_with = "allow_unsigned")]
    pub allow_unsigned: bool,

    /// Seconds a client may take to send the request headers.
    #[arg(long, env = "IMCF_HEADER_READ_TIMEOUT", default_value_t = 10, value_name = "SECS", value_parser = secs())]
    pub header_read_timeout: u64,

    /// Seconds a client may take to send the request body.
    #[arg(long, env = "IMCF_BODY_READ_TIMEOUT", default_value_t = 10, value_name = "SECS", value_parser = secs())]
    pub body_read_timeout: u64,

    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "IMCF_KEEP_ALIVE_TIMEOUT", default_value_t = 75, value_name = "SECS", value_parser = secs())]
    pub keep_alive_timeout: u64,

    /// Most callback connections served at once; further clients wait.
    #[arg(long, env = "IMCF_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Most callback connections from one client address at once; further ones are closed at accept.
    #[arg(long, env = "IMCF_MAX_CONNECTIONS_PER_IP", default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_ip: u64,

    /// Also accept HTTP/2 (cleartext, prior knowledge) on the callback listener.
    #[arg(long, env = "IMCF_HTTP2")]
    pub http2: bool,

    /// Largest allowed clock difference between `RequestTime` and now, in seconds.
    #[arg(long, env = "IMCF_MAX_CLOCK_SKEW", default_value_t = 60, value_name = "SECS", value_parser = secs())]
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
    /// Checked in [`Config::try_from`], not by clap, whose errors echo the value (it may be `sasl.password`).
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "IMCF_KAFKA_PROPERTY",
        value_delimiter = '\n',
        hide_env_values = true,
        value_name = "KEY=VALUE"
    )]
    pub kafka_properties: Vec<String>,

    /// Largest callback body accepted, in bytes.
    #[arg(long, env = "IMCF_MAX_BODY_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=512 * 1024))]
    pub max_body_bytes: u64,

    /// Seconds allowed, after SIGTERM, to finish requests and flush Kafka.
    #[arg(long, env = "IMCF_SHUTDOWN_TIMEOUT", default_value_t = 30, value_name = "SECS", value_parser = secs())]
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

/// Seconds between 0 and [`MAX_SECS`].
fn secs() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(..=MAX_SECS)
}

/// `KEY=VALUE` of the `position`-th `-X`; the error shows neither (the value may be a password).
fn parse_property(position: usize, raw: &str) -> Result<(String, String), ConfigError> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(ConfigError::KafkaProperty { position }),
    }
}

/// Redacted text for `Debug`.
const REDACTED: &str = "<redacted>";

/// `ID[:TOKEN]` entries with the token replaced.
fn redacted_apps(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| match entry.split_once(':') {
            Some((id, _)) => format!("{id}:{REDACTED}"),
            None => entry.clone(),
        })
        .collect()
}

/// `-X` entries with their values replaced.
fn redacted_properties<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    keys.map(|key| format!("{key}={REDACTED}")).collect()
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("sdk_app_ids", &self.sdk_app_ids)
            .field("apps", &redacted_apps(&self.apps))
            .field("apps_file", &self.apps_file)
            .field("callback_token", &self.callback_token.as_ref().map(|_| REDACTED))
            .field("callback_token_file", &self.callback_token_file)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("routes", &self.routes)
            .field("unrouted", &self.unrouted)
            .field("refuse_before_callbacks", &self.refuse_before_callbacks)
            .field("allow_unsigned", &self.allow_unsigned)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("http2", &self.http2)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("callback_path", &self.callback_path)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("topic", &self.topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field(
                "kafka_properties",
                &redacted_properties(self.kafka_properties.iter().map(|p| p.split_once('=').map_or("?", |(k, _)| k))),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("log_format", &self.log_format)
            .field("durability", &self.durability)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("dev", &self.dev)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let apps: Vec<String> =
            self.apps.iter().map(|(id, tokens)| format!("{id} ({} token(s))", tokens.len())).collect();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("apps", &apps)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("callback_path", &self.callback_path)
            .field("source", &self.source)
            .field("routes", &self.routes)
            .field("routing", &self.routing)
            .field("limits", &self.limits)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("kafka", &self.kafka)
            .field("topic", &self.topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("kafka_properties", &redacted_properties(self.kafka_properties.iter().map(|(k, _)| k.as_str())))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("log_format", &self.log_format)
            .field("durability", &self.durability)
            .field("spool", &self.spool)
            .finish()
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

/// Validated configuration the service runs with. `Debug` shows no secret (tokens, `-X` values).
#[derive(Clone)]
pub struct Config {
    /// Callback listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Accepted apps, each with the tokens that may sign for it (empty: no Sign check).
    pub apps: Vec<(u64, Vec<String>)>,
    /// Where `apps` came from, to read them again when the files change (live reload).
    pub app_sources: AppSources,
    /// Allowed `RequestTime` skew.
    pub max_clock_skew: Duration,
    /// Path of the callback endpoint.
    pub callback_path: String,
    /// Who may post callbacks.
    pub source: SourcePolicy,
    /// Routes of commands other than the exception callback.
    pub routes: RouteTable,
    /// How unrouted commands and before-callbacks are answered.
    pub routing: RoutingPolicy,
    /// Limits of callback connections.
    pub limits: ConnectionLimits,
    /// Time allowed to receive a body.
    pub body_read_timeout: Duration,
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

/// The flags and files the accepted apps and their tokens come from: [`AppSources::load_apps`] reads the files
/// again, so that a rotated token or a new app is taken without a restart. `Debug` shows no token.
#[derive(Clone)]
pub struct AppSources {
    sdk_app_ids: Vec<u64>,
    apps: Vec<String>,
    apps_file: Option<std::path::PathBuf>,
    callback_token: Option<String>,
    callback_token_file: Option<std::path::PathBuf>,
    /// Apps may accept unsigned callbacks (a source allowlist, `--allow-unsigned` or `--dev`).
    unsigned_allowed: bool,
    /// What the files held just before the running apps were read from them (not in `Debug`: tokens).
    loaded: Vec<Option<Vec<u8>>>,
}

impl std::fmt::Debug for AppSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSources")
            .field("sdk_app_ids", &self.sdk_app_ids)
            .field("apps", &redacted_apps(&self.apps))
            .field("apps_file", &self.apps_file)
            .field("callback_token", &self.callback_token.as_ref().map(|_| REDACTED))
            .field("callback_token_file", &self.callback_token_file)
            .field("unsigned_allowed", &self.unsigned_allowed)
            .finish()
    }
}

impl AppSources {
    /// The files read by [`AppSources::load_apps`] (`--apps-file`, `--callback-token-file`): those worth watching.
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        self.apps_file.iter().chain(self.callback_token_file.iter()).map(|path| path.as_path())
    }

    /// What the files hold now (`None`: unreadable), in the order of [`AppSources::files`]: compared with an
    /// earlier snapshot, it tells whether they changed.
    pub fn snapshot(&self) -> Vec<Option<Vec<u8>>> {
        self.files().map(|path| std::fs::read(path).ok()).collect()
    }

    /// The [`AppSources::snapshot`] taken just before the configuration was loaded: a change after it, even
    /// while the service was still starting, differs from it.
    pub fn loaded_snapshot(&self) -> &[Option<Vec<u8>>] {
        &self.loaded
    }

    /// Reads the apps and their tokens from the flags and files; errors name the flag, file and line, never a
    /// token. Apps without a token of their own are signed with the global token(s).
    pub fn load_apps(&self) -> Result<Vec<(u64, Vec<String>)>, ConfigError> {
        let global_tokens = match (&self.callback_token, &self.callback_token_file) {
            (Some(token), _) => vec![checked_token("--callback-token", token.clone())?],
            (None, Some(path)) => {
                let tokens = read_lines("--callback-token-file", path)?;
                if tokens.len() > 2 {
                    return Err(ConfigError::TooManyTokens(tokens.len()));
                }
                tokens
                    .into_iter()
                    .map(|(_, token)| checked_token("--callback-token-file", token))
                    .collect::<Result<_, _>>()?
            }
            (None, None) => Vec::new(),
        };
        let mut apps: Vec<(u64, Vec<String>)> = Vec::new();
        let mut add = |id: u64, token: Option<String>| {
            let index = apps.iter().position(|(known, _)| *known == id).unwrap_or_else(|| {
                apps.push((id, Vec::new()));
                apps.len() - 1
            });
            if let Some(token) = token {
                if !apps[index].1.contains(&token) {
                    apps[index].1.push(token);
                }
            }
        };
        for id in &self.sdk_app_ids {
            add(*id, None);
        }
        let file_entries = match &self.apps_file {
            Some(path) => read_lines("--apps-file", path)?,
            None => Vec::new(),
        };
        let entries = self
            .apps
            .iter()
            .enumerate()
            .map(|(index, entry)| ("--app", index + 1, entry.clone()))
            .chain(file_entries.into_iter().map(|(line, entry)| ("--apps-file", line, entry)));
        for (flag, position, entry) in entries {
            let (id, token) = match entry.split_once(':') {
                Some((id, token)) => (id, Some(checked_token(flag, token.to_owned())?)),
                None => (entry.as_str(), None),
            };
            let id = id.trim().parse::<u64>().map_err(|_| ConfigError::AppEntry { flag, position })?;
            add(id, token);
        }
        if apps.is_empty() {
            return Err(ConfigError::NoApp);
        }
        for (_, tokens) in &mut apps {
            if tokens.is_empty() {
                tokens.clone_from(&global_tokens);
            }
        }
        Ok(apps)
    }

    /// [`AppSources::load_apps`], also refusing apps left without a token when the running configuration does
    /// not allow unsigned callbacks (as the start does).
    pub fn reload_apps(&self) -> Result<Vec<(u64, Vec<String>)>, ConfigError> {
        let apps = self.load_apps()?;
        let unsigned: Vec<String> =
            apps.iter().filter(|(_, tokens)| tokens.is_empty()).map(|(id, _)| id.to_string()).collect();
        if !unsigned.is_empty() && !self.unsigned_allowed {
            return Err(ConfigError::Unsigned(unsigned.join(", ")));
        }
        Ok(apps)
    }
}

/// Size at which a spool segment is closed and a new one started.
const SPOOL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A configuration value that parses but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--callback-path` must be an absolute path.
    #[error("--callback-path must start with '/', got {0:?}")]
    CallbackPath(String),
    /// A token is longer than Tencent allows or empty.
    #[error("{0}: a callback token must be 1 to 128 characters")]
    CallbackToken(&'static str),
    /// No app to accept.
    #[error("no app configured: give --sdk-app-id, --app or --apps-file")]
    NoApp,
    /// An `--app` or apps-file entry that is not ID[:TOKEN]; the entry itself is not shown, it may hold a token.
    #[error("{flag}: entry {position} is not ID[:TOKEN] with a numeric SDKAppID")]
    AppEntry {
        /// Where the entry came from.
        flag: &'static str,
        /// 1-based position among that flag's entries (the line, for a file).
        position: usize,
    },
    /// A token file with more tokens than a rotation needs.
    #[error("--callback-token-file: holds {0} tokens; one, or two while rotating")]
    TooManyTokens(usize),
    /// A token or apps file cannot be read.
    #[error("{flag} {path}: {source}")]
    File {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source network does not parse.
    #[error(transparent)]
    Source(#[from] SourcePolicyError),
    /// A route does not parse or conflicts.
    #[error("--route: {0}")]
    Route(#[from] RouteError),
    /// A timeout of zero.
    #[error("{0} must be at least 1 second")]
    ZeroTimeout(&'static str),
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
    /// A `-X` entry that is not KEY=VALUE; the entry is not shown, it may hold a password.
    #[error("--kafka-property (-X): entry {position} is not KEY=VALUE (not shown: it may hold a secret)")]
    KafkaProperty {
        /// 1-based position among the `-X` entries (the line, in IMCF_KAFKA_PROPERTY).
        position: usize,
    },
    /// Apps anyone could post for: no token, no source allowlist, and no explicit consent.
    #[error(
        "app(s) {0} have no callback token and no --allow-cidr restricts the sources: anyone who knows the \
         SdkAppid could post their callbacks. Give a token (--callback-token, --callback-token-file, --app ID:TOKEN \
         or --apps-file), restrict the sources (--allow-cidr), or accept unsigned callbacks with --allow-unsigned \
         (IMCF_ALLOW_UNSIGNED=true)"
    )]
    Unsigned(String),
}

fn checked_token(flag: &'static str, token: String) -> Result<String, ConfigError> {
    let token = token.trim().to_owned();
    if token.is_empty() || token.chars().count() > 128 {
        return Err(ConfigError::CallbackToken(flag));
    }
    Ok(token)
}

/// Non-empty lines of a small configuration file with their line numbers; a line starting with `#` is a comment
/// (a `#` elsewhere belongs to the value: tokens may contain it).
fn read_lines(flag: &'static str, path: &std::path::Path) -> Result<Vec<(usize, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        flag,
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim().to_owned()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect())
}

fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Config {
    /// The apps that accept callbacks without a Sign.
    pub fn unsigned_apps(&self) -> impl Iterator<Item = u64> + '_ {
        self.apps.iter().filter(|(_, tokens)| tokens.is_empty()).map(|(id, _)| *id)
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        if !args.callback_path.starts_with('/') {
            return Err(ConfigError::CallbackPath(args.callback_path));
        }
        let app_sources = AppSources {
            sdk_app_ids: args.sdk_app_ids.clone(),
            apps: args.apps.clone(),
            apps_file: args.apps_file.clone(),
            callback_token: args.callback_token.clone(),
            callback_token_file: args.callback_token_file.clone(),
            unsigned_allowed: false,
            loaded: Vec::new(),
        };
        let app_sources = AppSources { loaded: app_sources.snapshot(), ..app_sources };
        let apps = app_sources.load_apps()?;
        for (flag, secs) in [
            ("--header-read-timeout", args.header_read_timeout),
            ("--body-read-timeout", args.body_read_timeout),
            ("--keep-alive-timeout", args.keep_alive_timeout),
        ] {
            if secs == 0 {
                return Err(ConfigError::ZeroTimeout(flag));
            }
        }
        let source = SourcePolicy::new(&args.allow_cidrs, &args.trusted_proxies)?;
        let routes = RouteTable::parse(args.routes.iter().map(String::as_str))?;
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
        let kafka_properties = args
            .kafka_properties
            .iter()
            .enumerate()
            .map(|(index, raw)| parse_property(index + 1, raw))
            .collect::<Result<Vec<_>, _>>()?;
        let unsigned: Vec<String> =
            apps.iter().filter(|(_, tokens)| tokens.is_empty()).map(|(id, _)| id.to_string()).collect();
        let unsigned_allowed = !source.is_open() || args.allow_unsigned || args.dev;
        if !unsigned.is_empty() && !unsigned_allowed {
            return Err(ConfigError::Unsigned(unsigned.join(", ")));
        }
        let app_sources = AppSources { unsigned_allowed, ..app_sources };
        let peer_allowlist = source.checks_peers_at_accept().then(|| source.clone());
        let proxies = source.has_trusted_proxies().then(|| source.clone());
        let kafka = match (args.dev, args.kafka_brokers) {
            (false, Some(brokers)) => KafkaTarget::Brokers(brokers),
            _ => KafkaTarget::Embedded,
        };
        Ok(Config {
            listen: args.listen,
            admin_listen: args.admin_listen,
            apps,
            app_sources,
            max_clock_skew: Duration::from_secs(args.max_clock_skew),
            callback_path: args.callback_path,
            source,
            routes,
            routing: RoutingPolicy { unrouted: args.unrouted, refuse_before_callbacks: args.refuse_before_callbacks },
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_secs(args.header_read_timeout),
                keep_alive_timeout: Duration::from_secs(args.keep_alive_timeout),
                max_connections: args.max_connections as usize,
                max_connections_per_ip: args.max_connections_per_ip as usize,
                http2: args.http2,
                peer_allowlist,
                proxies,
                dropped_at_accept: None,
                head_too_large: None,
            },
            body_read_timeout: Duration::from_secs(args.body_read_timeout),
            kafka,
            topic: args.topic,
            dead_letter_topic,
            kafka_properties,
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
        let config = parse(&["--sdk-app-id", "1400000000", "--kafka-brokers", "k:9092", "--allow-unsigned"]).unwrap();
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
        assert_eq!(config.limits.max_connections_per_ip, 256);
    }

    #[test]
    fn unsigned_apps_need_a_token_an_allowlist_or_consent() {
        let err = parse(&["--sdk-app-id", "1400000000", "--kafka-brokers", "k:9092"]).unwrap_err();
        for way_out in ["--callback-token", "--allow-cidr", "--allow-unsigned", "1400000000"] {
            assert!(err.contains(way_out), "{err}");
        }
        let err = parse(&["--app", "1:t", "--app", "2", "--kafka-brokers", "k"]).unwrap_err();
        assert!(err.contains('2') && !err.contains("1,"), "{err}");
        for extra in [
            &["--allow-unsigned", "--allow-unsigned"][..],
            &["--allow-cidr", "10.0.0.0/8"],
            &["--dev"],
            &["--callback-token", "t"],
        ] {
            let mut argv = vec!["--sdk-app-id", "1", "--kafka-brokers", "k"];
            argv.extend_from_slice(extra);
            let config = parse(&argv).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
            assert_eq!(config.unsigned_apps().count(), usize::from(extra[0] != "--callback-token"), "{extra:?}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let argv = [
            "im-callback-forwarder",
            "--dev",
            "--app",
            "1:secret-app-token",
            "--callback-token",
            "secret-global-token",
            "-X",
            "sasl.password=secret-password",
        ];
        let args = Args::try_parse_from(argv).unwrap();
        let debug = format!("{args:?}");
        assert!(!debug.contains("secret-") && debug.contains("sasl.password"), "{debug}");
        let config = Config::try_from(args).unwrap();
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("secret-") && debug.contains("sasl.password"), "{debug}");
        let err = parse(&["--dev", "--sdk-app-id", "1", "-X", "sasl.password:secret-password"]).unwrap_err();
        assert!(err.contains("--kafka-property") && !err.contains("secret-"), "{err}");
    }

    #[test]
    fn durations_are_bounded() {
        for flag in [
            "--max-clock-skew",
            "--header-read-timeout",
            "--keep-alive-timeout",
            "--body-read-timeout",
            "--shutdown-timeout",
        ] {
            let err = parse(&["--dev", "--sdk-app-id", "1", flag, "86401"]).unwrap_err();
            assert!(err.contains(flag), "{flag}: {err}");
            parse(&["--dev", "--sdk-app-id", "1", flag, "86400"]).unwrap_or_else(|e| panic!("{flag}: {e}"));
        }
    }

    #[test]
    fn disk_durability_needs_a_spool() {
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--durability", "disk"]).unwrap_err().contains("--spool-dir"));
        let config = parse(&["--sdk-app-id", "1", "--dev", "--durability", "disk", "--spool-dir", "/tmp/s"]).unwrap();
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
    fn app_sources_read_the_files_again_and_hide_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "secret-old\n").unwrap();
        let config = parse(&[
            "--sdk-app-id",
            "1",
            "--app",
            "2:secret-flag",
            "--callback-token-file",
            token_file.to_str().unwrap(),
            "--kafka-brokers",
            "k:9092",
        ])
        .unwrap();
        let sources = &config.app_sources;
        assert_eq!(sources.files().collect::<Vec<_>>(), vec![token_file.as_path()]);
        assert_eq!(sources.loaded_snapshot(), [Some(b"secret-old\n".to_vec())]);
        let debug = format!("{config:?} {sources:?}");
        assert!(!debug.contains("secret"), "{debug}");
        std::fs::write(&token_file, "secret-new\n").unwrap();
        assert_eq!(
            sources.reload_apps().unwrap(),
            vec![(1, vec!["secret-new".to_owned()]), (2, vec!["secret-flag".to_owned()])]
        );
        // A token file emptied: app 1 would accept unsigned callbacks, which this configuration did not allow.
        std::fs::write(&token_file, "# rotated away\n").unwrap();
        let err = sources.reload_apps().unwrap_err().to_string();
        assert!(err.contains("app(s) 1 have no callback token"), "{err}");
        std::fs::write(&token_file, "a\nb\nc\n").unwrap();
        assert!(matches!(sources.reload_apps(), Err(ConfigError::TooManyTokens(3))));
    }

    #[test]
    fn per_app_tokens_files_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "old\nne#w\n").unwrap();
        let apps_file = dir.path().join("apps");
        std::fs::write(&apps_file, "# app, token\n3:three\n4\n").unwrap();
        let config = parse(&[
            "--dev",
            "--sdk-app-id",
            "1",
            "--app",
            "2:two-a",
            "--app",
            "2:two-b",
            "--apps-file",
            apps_file.to_str().unwrap(),
            "--callback-token-file",
            token_file.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            config.apps,
            vec![
                (1, vec!["old".to_owned(), "ne#w".to_owned()]),
                (2, vec!["two-a".to_owned(), "two-b".to_owned()]),
                (3, vec!["three".to_owned()]),
                (4, vec!["old".to_owned(), "ne#w".to_owned()]),
            ]
        );
        for bad in ["x:secret", "1400=secret"] {
            let err = parse(&["--dev", "--app", bad]).unwrap_err();
            assert!(err.contains("--app") && !err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse(&["--kafka-brokers", "k"]).unwrap_err().contains("--sdk-app-id"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--route", "Group.*"]).unwrap_err().contains("--route"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--allow-cidr", "x"]).unwrap_err().contains("--allow-cidr"));
        assert!(parse(&["--sdk-app-id", "1", "--dev", "--app", "1:"]).unwrap_err().contains("--app"));
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
