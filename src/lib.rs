//! im-callback-forwarder: Tencent Cloud IM exception callbacks in, normalized events out to Kafka.
//!
//! A byte enters at [`http::CallbackEdge`], is checked and normalized by the pure functions of
//! [`callback`], and leaves through [`sink::KafkaSink`]. [`App`] wires them together from a
//! [`config::Config`]; [`cli`] holds the command line (serving, and the operator tools), and `main.rs` only
//! dispatches.

pub mod callback;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod seam;
pub mod sink;
pub mod spool;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::callback::AppRegistry;
use crate::config::{Config, KafkaTarget};
use crate::http::{AdminEdge, CallbackEdge};
use crate::http::{ConnectionLimits, EdgeSettings, Topics};
use crate::metrics::Metrics;
use crate::sink::{EmbeddedKafka, KafkaSink, ReadBackLogger, SinkError, SinkSettings};
use crate::spool::{Spool, SpoolError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The producer rejected its configuration (e.g. an unknown `-X` property).
    #[error(transparent)]
    Kafka(#[from] SinkError),
    /// The spool directory could not be opened or recovered.
    #[error("--spool-dir: {0}")]
    Spool(#[from] SpoolError),
    /// The embedded cluster of `--dev` could not start.
    #[error("embedded Kafka (--dev) failed to start: {0}")]
    Embedded(#[source] rdkafka::error::KafkaError),
    /// A bound listener could not be shared with the start-up endpoints.
    #[error("--admin-listen: {0}")]
    Listener(#[source] std::io::Error),
}

/// Checks what can be checked of `config` before any listener is bound (today: every `-X` property), and
/// warns about every app that accepts unsigned callbacks.
pub fn validate(config: &Config) -> Result<(), StartError> {
    sink::validate_properties(&config.kafka_properties)?;
    for sdk_app_id in config.unsigned_apps() {
        warn!(
            sdk_app_id,
            "app accepts unsigned callbacks: no callback token, so anyone who can reach the listener{} and knows the SdkAppid can post them",
            if config.source.is_open() { "" } else { " from --allow-cidr" }
        );
    }
    Ok(())
}

/// Runs the service on bound listeners until `shutdown` resolves. The admin listener answers at once, while
/// [`App::build`] recovers the spool (`/healthz` 200, `/readyz` 503 "recovering spool"), so that a large spool
/// is not mistaken for a hung process; callbacks wait in the listen backlog until the spool is recovered.
pub async fn run(
    config: Config,
    callback: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport, StartError> {
    let admin = admin.into_std().map_err(StartError::Listener)?;
    let starting = admin.try_clone().and_then(TcpListener::from_std).map_err(StartError::Listener)?;
    let admin = TcpListener::from_std(admin).map_err(StartError::Listener)?;
    let (started, started_rx) = tokio::sync::oneshot::channel::<()>();
    let starting_task = tokio::spawn(http::serve(
        "admin",
        starting,
        |request, _peer| async move { http::starting_answer(request.uri().path()) },
        ConnectionLimits { max_connections: 64, ..ConnectionLimits::default() },
        async move {
            let _ = started_rx.await;
        },
        Duration::from_millis(200),
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut building = tokio::task::spawn_blocking(move || App::build(config));
    let (app, stopping) = tokio::select! {
        built = &mut building => (built.expect("start-up task panicked"), false),
        () = &mut shutdown => {
            // The spool is recovered first, so that the shutdown report counts what it holds.
            info!("shutdown requested while starting: stopping once the spool is recovered");
            (building.await.expect("start-up task panicked"), true)
        }
    };
    let _ = started.send(());
    let _ = starting_task.await;
    let app = app?;
    Ok(if stopping {
        app.serve(callback, admin, std::future::ready(())).await
    } else {
        app.serve(callback, admin, shutdown).await
    })
}

/// What shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records accepted but not acknowledged by Kafka when the flush deadline passed.
    pub undelivered: usize,
    /// Of those, records kept in the spool for the next start.
    pub spooled: u64,
}

/// A configured service, ready to serve on bound listeners.
pub struct App {
    config: Config,
    metrics: Arc<Metrics>,
    sink: Arc<KafkaSink>,
    // Dropped after the sink is flushed: the embedded cluster must outlive the producer.
    read_back: Option<ReadBackLogger>,
    embedded: Option<EmbeddedKafka>,
}

impl App {
    /// Creates metrics and the Kafka producer; fails on a configuration librdkafka rejects.
    pub fn build(config: Config) -> Result<App, StartError> {
        seam::configure_from_env();
        let metrics = Arc::new(Metrics::new());
        let mut topics: Vec<&str> = [config.topic.as_str(), config.dead_letter_topic.as_str()]
            .into_iter()
            .chain(config.routes.topics())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let embedded = match &config.kafka {
            KafkaTarget::Brokers(_) => None,
            KafkaTarget::Embedded => Some(EmbeddedKafka::start(&topics).map_err(StartError::Embedded)?),
        };
        let bootstrap_servers = match (&config.kafka, &embedded) {
            (KafkaTarget::Brokers(brokers), _) => brokers.clone(),
            (KafkaTarget::Embedded, Some(cluster)) => cluster.bootstrap_servers().to_owned(),
            (KafkaTarget::Embedded, None) => unreachable!("embedded cluster started above"),
        };
        let spool = match &config.spool {
            Some(spool_config) => Some(Spool::open(spool_config.clone(), metrics.clone())?),
            None => None,
        };
        let sink = KafkaSink::start(
            SinkSettings {
                bootstrap_servers: &bootstrap_servers,
                overrides: &config.kafka_properties,
                topics: topics.iter().map(|topic| topic.to_string()).collect(),
                durability: config.durability,
                spool,
            },
            metrics.clone(),
        )?;
        let read_back = match &embedded {
            Some(cluster) => {
                info!(bootstrap_servers = cluster.bootstrap_servers(), "embedded Kafka started (--dev)");
                Some(ReadBackLogger::start(cluster.bootstrap_servers(), &topics).map_err(StartError::Embedded)?)
            }
            None => None,
        };
        Ok(App { config, metrics, sink, read_back, embedded })
    }

    /// Serves callbacks and admin endpoints until `shutdown` resolves, then drains connections and
    /// flushes Kafka within the configured shutdown timeout.
    pub async fn serve(
        self,
        callback: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> ShutdownReport {
        let App { config, metrics, sink, read_back, embedded } = self;
        let settings = EdgeSettings {
            apps: arc_swap::ArcSwap::from_pointee(AppRegistry::new(config.apps.clone(), config.max_clock_skew)),
            callback_path: config.callback_path.clone(),
            source: config.source.clone(),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            topics: Topics { events: config.topic.clone(), dead_letter: config.dead_letter_topic.clone() },
            routes: config.routes.clone(),
            routing: config.routing,
        };
        let edge = Arc::new(CallbackEdge::new(settings, sink.clone(), metrics.clone()));
        let reloader =
            reload::Reloader::new(config.app_sources.clone(), config.max_clock_skew, edge.clone(), metrics.clone());
        let reload_task = reload::spawn(Arc::new(reloader), reload::POLL_INTERVAL);
        let admin_edge = Arc::new(AdminEdge::new(metrics, sink.clone()));

        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_handler = admin_edge.clone();
        let admin_task = tokio::spawn(http::serve(
            "admin",
            admin,
            move |request, _peer| admin_handler.clone().handle(request),
            ConnectionLimits { max_connections: 64, ..ConnectionLimits::default() },
            async move {
                let _ = admin_stopped.await;
            },
            Duration::from_secs(1),
        ));

        let deadline = std::sync::OnceLock::new();
        let callback_handler = edge.clone();
        http::serve(
            "callback",
            callback,
            move |request, peer| callback_handler.clone().handle(request, peer),
            ConnectionLimits {
                dropped_at_accept: Some(edge.outcome_counter("source_not_allowed")),
                head_too_large: Some(edge.outcome_counter("head_too_large")),
                ..config.limits.clone()
            },
            async {
                shutdown.await;
                let _ = deadline.set(Instant::now() + config.shutdown_timeout);
                admin_edge.begin_shutdown();
                info!("shutdown requested: not ready, draining connections");
            },
            // At most half the budget goes to draining so that the flush always gets the rest.
            config.shutdown_timeout / 2,
        )
        .await;
        reload_task.abort();
        let _ = reload_task.await;
        edge.close();

        let deadline = deadline.get().copied().unwrap_or_else(|| Instant::now() + config.shutdown_timeout);
        let flushing = sink.clone();
        let flushed =
            tokio::task::spawn_blocking(move || flushing.shutdown(deadline)).await.expect("flush task panicked");
        let _ = stop_admin.send(());
        let _ = admin_task.await;
        // librdkafka clients before the embedded cluster they talk to.
        drop((edge, admin_edge, sink));
        drop(read_back);
        drop(embedded);
        ShutdownReport { undelivered: flushed.undelivered, spooled: flushed.spooled }
    }
}
