//! Metrics: the fixed catalogue of everything this service counts, on a private Prometheus registry.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rdkafka::Statistics;

use crate::callback::{ErrorCategory, COMMAND_LABELS, ERROR_CODE_LABELS};

/// Every value of the `outcome` label of `imcf_callbacks_total`; all are exported from the start at 0.
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "routed",
    "ignored",
    "replayed",
    "before_refused",
    "unrouted",
    "not_found",
    "method_not_allowed",
    "source_not_allowed",
    "body_too_large",
    "head_too_large",
    "body_read_failed",
    "body_timeout",
    "unsupported_content_type",
    "repeated_parameter",
    "missing_sdk_app_id",
    "unknown_sdk_app_id",
    "missing_sign",
    "bad_sign",
    "stale_request_time",
    "invalid_json",
    "duplicate_field",
    "missing_field",
    "invalid_field",
    "missing_command",
    "command_mismatch",
    "unavailable",
    "spool_full",
];

/// Every value of the `reason` label of `imcf_spooled_total`.
pub const SPOOL_REASONS: &[&str] = &["write_ahead", "queue_full", "produce_failed", "delivery_failed", "shutdown"];

/// Every value of the `reason` label of `imcf_replay_deferred_total`.
pub const REPLAY_DEFER_REASONS: &[&str] = &["topic_unavailable", "produce_error", "producer_fatal", "read_error"];

/// Every value of the `result` label of `imcf_config_reloads_total`.
pub const RELOAD_RESULTS: &[&str] = &["ok", "failed"];

/// Every value of the `reason` label of `imcf_kafka_ready` (a state set: exactly one is 1).
pub const KAFKA_READY_REASONS: &[&str] =
    &["ok", "no_metadata_yet", "metadata_failed", "metadata_stale", "topic_missing"];

const ACK_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];
const DELIVERY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The service's metrics; cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    callbacks: IntCounterVec,
    accepted: IntCounter,
    ignored: IntCounter,
    exceptions: Vec<IntCounter>,
    exceptions_by_code: IntCounterVec,
    routed: IntCounterVec,
    unrouted: IntCounterVec,
    /// Records handed to the dead-letter topic.
    pub dead_letters: IntCounter,
    /// Delivery reports that confirmed a record.
    pub kafka_delivered: IntCounter,
    /// Delivery reports that gave up on a record.
    pub kafka_delivery_failures: IntCounter,
    /// Records handed to the producer and not yet reported on.
    pub kafka_queue_events: IntGauge,
    /// Time from request arrival to answer.
    pub ack_duration: Histogram,
    /// Time from hand-over to the producer to the delivery report.
    pub delivery_duration: Histogram,
    /// 1 while /readyz answers 200.
    pub ready: IntGauge,
    /// Unix time of the last successful metadata request.
    pub metadata_last_success: IntGauge,
    /// Accepted events dropped for good (no spool, or the spool failed).
    pub events_lost: IntCounter,
    /// Records in the spool not yet acknowledged by Kafka.
    pub spool_events: IntGauge,
    /// Bytes of spool segments on disk.
    pub spool_bytes: IntGauge,
    /// `--spool-max-bytes` (0 without a spool).
    pub spool_max_bytes: IntGauge,
    spooled: IntCounterVec,
    /// Spooled records handed to the producer again.
    pub replayed: IntCounter,
    /// Damaged spool regions moved to quarantine.
    pub spool_quarantined: IntCounter,
    /// Time of one group-commit fsync.
    pub spool_fsync_duration: Histogram,
    /// Producers rebuilt after a fatal error.
    pub producer_restarts: IntCounter,
    replay_deferred: IntCounterVec,
    config_reloads: IntCounterVec,
    /// Unix time the apps and tokens were last loaded successfully (at start, then by each reload).
    pub config_last_reload_success: IntGauge,
    kafka_up: IntGauge,
    kafka_ready: IntGaugeVec,
    kafka_topics_missing: IntGauge,
    stats: KafkaStatsMetrics,
}

struct KafkaStatsMetrics {
    queue_messages: IntGauge,
    queue_bytes: IntGauge,
    broker_rtt: prometheus::GaugeVec,
    broker_up: IntGaugeVec,
    broker_errors: IntCounterVec,
    broker_retries: IntCounterVec,
    broker_timeouts: IntCounterVec,
    // librdkafka reports cumulative totals; the counters advance by the difference.
    last_totals: Mutex<HashMap<(String, &'static str), u64>>,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

/// A [`counter_vec`] whose series for every value of its bounded label exist from the start (at 0), so that
/// rates and alerts see them before the first event.
fn counter_vec_of(registry: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let metric = counter_vec(registry, name, help, label);
    for value in values {
        metric.with_label_values(&[value]);
    }
    metric
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Metrics {
    /// Builds the catalogue on a fresh private registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let callbacks =
            counter_vec_of(&registry, "imcf_callbacks_total", "Callbacks received, by outcome.", "outcome", OUTCOMES);
        let by_category = counter_vec(
            &registry,
            "imcf_exceptions_total",
            "Accepted exception events, by error category.",
            "category",
        );
        let exceptions =
            ErrorCategory::ALL.iter().map(|category| by_category.with_label_values(&[category.as_str()])).collect();
        let exceptions_by_code = counter_vec_of(
            &registry,
            "imcf_exceptions_by_code_total",
            "Accepted exception events, by Tencent ErrorCode (documented codes, else \"other\").",
            "error_code",
            &ERROR_CODE_LABELS,
        );
        let routed = counter_vec_of(
            &registry,
            "imcf_routed_callbacks_total",
            "Callbacks of other commands published through a --route, by command (known names, else \"other\").",
            "command",
            &COMMAND_LABELS,
        );
        let unrouted = counter_vec_of(
            &registry,
            "imcf_unrouted_callbacks_total",
            "Authentic callbacks of commands without a route, by command (known names, else \"other\").",
            "command",
            &COMMAND_LABELS,
        );
        let build_info = IntGaugeVec::new(Opts::new("imcf_build_info", "Build information; always 1."), &["version"])
            .expect("valid metric");
        registry.register(Box::new(build_info.clone())).expect("unique metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");

        let stats = KafkaStatsMetrics::new(&registry);
        let spooled = counter_vec_of(
            &registry,
            "imcf_spooled_total",
            "Records written to the disk spool, by reason.",
            "reason",
            SPOOL_REASONS,
        );
        let replay_deferred = counter_vec_of(
            &registry,
            "imcf_replay_deferred_total",
            "Times the replayer left a spooled record for later, by reason (it stays in the spool).",
            "reason",
            REPLAY_DEFER_REASONS,
        );
        let kafka_ready = IntGaugeVec::new(
            Opts::new(
                "imcf_kafka_ready",
                "Kafka as the metadata watcher sees it: 1 for the current reason, 0 for the others. Readiness does not follow it.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(kafka_ready.clone())).expect("unique metric");
        for reason in KAFKA_READY_REASONS {
            kafka_ready.with_label_values(&[reason]);
        }
        let config_reloads = counter_vec_of(
            &registry,
            "imcf_config_reloads_total",
            "Reloads of --apps-file and --callback-token-file (on change or SIGHUP), by result.",
            "result",
            RELOAD_RESULTS,
        );
        let config_last_reload_success = gauge(
            &registry,
            "imcf_config_last_reload_success_timestamp_seconds",
            "Unix time the apps and tokens were last loaded successfully (at start, then on reload).",
        );
        config_last_reload_success.set(unix_now());
        Metrics {
            accepted: callbacks.with_label_values(&["accepted"]),
            ignored: callbacks.with_label_values(&["ignored"]),
            callbacks,
            exceptions,
            exceptions_by_code,
            routed,
            unrouted,
            dead_letters: counter(&registry, "imcf_dead_letters_total", "Records handed to the dead-letter topic."),
            kafka_delivered: counter(&registry, "imcf_kafka_delivered_total", "Records Kafka acknowledged."),
            kafka_delivery_failures: counter(
                &registry,
                "imcf_kafka_delivery_failures_total",
                "Records whose delivery failed for good.",
            ),
            kafka_queue_events: gauge(
                &registry,
                "imcf_kafka_queue_events",
                "Records accepted and not yet acknowledged by Kafka.",
            ),
            ack_duration: histogram(
                &registry,
                "imcf_ack_duration_seconds",
                "Time from request arrival to the answer.",
                ACK_BUCKETS,
            ),
            delivery_duration: histogram(
                &registry,
                "imcf_delivery_duration_seconds",
                "Time from hand-over to the producer to Kafka's delivery report.",
                DELIVERY_BUCKETS,
            ),
            ready: gauge(&registry, "imcf_ready", "1 while the service reports ready."),
            metadata_last_success: gauge(
                &registry,
                "imcf_kafka_metadata_last_success_timestamp_seconds",
                "Unix time of the last successful Kafka metadata request.",
            ),
            events_lost: counter(
                &registry,
                "imcf_events_lost_total",
                "Accepted events dropped for good: Kafka refused them and no spool could keep them.",
            ),
            spool_events: gauge(
                &registry,
                "imcf_spool_events",
                "Records in the disk spool not yet acknowledged by Kafka.",
            ),
            spool_bytes: gauge(&registry, "imcf_spool_bytes", "Bytes of disk spool segments."),
            spool_max_bytes: gauge(
                &registry,
                "imcf_spool_max_bytes",
                "Most bytes the disk spool may take (0: no spool).",
            ),
            spooled,
            replayed: counter(&registry, "imcf_replayed_total", "Spooled records handed to the producer again."),
            spool_quarantined: counter(
                &registry,
                "imcf_spool_quarantined_total",
                "Damaged spool regions (bad checksum) moved to the quarantine folder.",
            ),
            spool_fsync_duration: histogram(
                &registry,
                "imcf_spool_fsync_duration_seconds",
                "Time of one spool fsync (one group commit).",
                ACK_BUCKETS,
            ),
            producer_restarts: counter(
                &registry,
                "imcf_kafka_producer_restarts_total",
                "Kafka producers rebuilt after a fatal error (what they held went back to the spool).",
            ),
            replay_deferred,
            config_reloads,
            config_last_reload_success,
            kafka_up: gauge(
                &registry,
                "imcf_kafka_up",
                "1 while the last Kafka metadata request succeeded less than 15 s ago.",
            ),
            kafka_ready,
            kafka_topics_missing: gauge(
                &registry,
                "imcf_kafka_topics_missing",
                "Configured topics that do not exist or are not visible to this service.",
            ),
            stats,
            registry,
        }
    }

    /// Counts one spooled record the replayer left for later (`reason` from [`REPLAY_DEFER_REASONS`]).
    pub fn replay_deferred(&self, reason: &'static str) {
        self.replay_deferred.with_label_values(&[reason]).inc();
    }

    /// Counts one reload of the apps and tokens; a successful one also sets the last-success time.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
        if ok {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// Sets Kafka's exported state: `up`, the current `reason` (from [`KAFKA_READY_REASONS`]), missing topics.
    pub fn kafka_state(&self, up: bool, reason: &'static str, topics_missing: i64) {
        self.kafka_up.set(i64::from(up));
        for candidate in KAFKA_READY_REASONS {
            self.kafka_ready.with_label_values(&[candidate]).set(i64::from(*candidate == reason));
        }
        self.kafka_topics_missing.set(topics_missing);
    }

    /// The `imcf_callbacks_total` series of a refusal `outcome` (not `accepted` or `ignored`, which have their own).
    pub fn outcome_counter(&self, outcome: &'static str) -> IntCounter {
        self.callbacks.with_label_values(&[outcome])
    }

    /// Counts one answered callback under its outcome label.
    pub fn callback(&self, outcome: &'static str) {
        match outcome {
            "accepted" => self.accepted.inc(),
            "ignored" => self.ignored.inc(),
            other => self.callbacks.with_label_values(&[other]).inc(),
        }
    }

    /// Counts one accepted exception event.
    pub fn exception(&self, category: ErrorCategory, error_code_label: &'static str) {
        if let Some(index) = ErrorCategory::ALL.iter().position(|c| *c == category) {
            self.exceptions[index].inc();
        }
        self.exceptions_by_code.with_label_values(&[error_code_label]).inc();
    }

    /// Counts one record written to the spool for `reason` (one of [`SPOOL_REASONS`]).
    pub fn spooled(&self, reason: &'static str) {
        self.spooled.with_label_values(&[reason]).inc();
    }

    /// Counts one callback published through a route (`command` is a bounded label).
    pub fn routed(&self, command: &'static str) {
        self.routed.with_label_values(&[command]).inc();
    }

    /// Counts one authentic callback of a command without a route (`command` is a bounded label).
    pub fn unrouted(&self, command: &'static str) {
        self.unrouted.with_label_values(&[command]).inc();
    }

    /// Records spooled so far for `reason`.
    pub fn spooled_count(&self, reason: &'static str) -> u64 {
        self.spooled.with_label_values(&[reason]).get()
    }

    /// Folds one librdkafka statistics report into the gauges and counters.
    pub fn kafka_statistics(&self, statistics: &Statistics) {
        self.stats.update(statistics);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding into memory cannot fail");
        buffer
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KafkaStatsMetrics {
    fn new(registry: &Registry) -> Self {
        let broker_rtt = prometheus::GaugeVec::new(
            Opts::new(
                "imcf_kafka_broker_rtt_seconds",
                "Broker round-trip time from librdkafka statistics, at the percentile named (p50, p99).",
            ),
            // Not `quantile`: Prometheus reserves that label for summaries (promtool check metrics).
            &["broker", "percentile"],
        )
        .expect("valid metric");
        registry.register(Box::new(broker_rtt.clone())).expect("unique metric");
        let broker_up = IntGaugeVec::new(
            Opts::new("imcf_kafka_broker_up", "1 when librdkafka's connection to the broker is up."),
            &["broker"],
        )
        .expect("valid metric");
        registry.register(Box::new(broker_up.clone())).expect("unique metric");
        KafkaStatsMetrics {
            queue_messages: gauge(
                registry,
                "imcf_kafka_producer_queue_messages",
                "Messages in librdkafka's producer queue.",
            ),
            queue_bytes: gauge(
                registry,
                "imcf_kafka_producer_queue_bytes",
                "Bytes of messages in librdkafka's producer queue.",
            ),
            broker_rtt,
            broker_up,
            broker_errors: counter_vec(
                registry,
                "imcf_kafka_broker_request_errors_total",
                "Transmit and receive errors, per broker.",
                "broker",
            ),
            broker_retries: counter_vec(
                registry,
                "imcf_kafka_broker_request_retries_total",
                "Requests retried, per broker.",
                "broker",
            ),
            broker_timeouts: counter_vec(
                registry,
                "imcf_kafka_broker_request_timeouts_total",
                "Requests that timed out, per broker.",
                "broker",
            ),
            last_totals: Mutex::new(HashMap::new()),
        }
    }

    fn update(&self, statistics: &Statistics) {
        self.queue_messages.set(statistics.msg_cnt as i64);
        self.queue_bytes.set(statistics.msg_size as i64);
        let mut last_totals = self.last_totals.lock().expect("stats lock");
        for broker in statistics.brokers.values() {
            // The bootstrap pseudo-brokers have no node id and would add unbounded labels.
            if broker.nodeid < 0 {
                continue;
            }
            let name = broker.name.as_str();
            self.broker_up.with_label_values(&[name]).set(i64::from(broker.state == "UP"));
            if let Some(rtt) = &broker.rtt {
                self.broker_rtt.with_label_values(&[name, "p50"]).set(rtt.p50 as f64 / 1e6);
                self.broker_rtt.with_label_values(&[name, "p99"]).set(rtt.p99 as f64 / 1e6);
            }
            let totals = [
                (&self.broker_errors, "errors", broker.txerrs + broker.rxerrs),
                (&self.broker_retries, "retries", broker.txretries),
                (&self.broker_timeouts, "timeouts", broker.req_timeouts),
            ];
            for (counter, kind, total) in totals {
                let last = last_totals.entry((name.to_owned(), kind)).or_insert(0);
                counter.with_label_values(&[name]).inc_by(total.saturating_sub(*last));
                *last = total.max(*last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metrics: &Metrics, needle: &str) -> Option<f64> {
        let text = String::from_utf8(metrics.render()).unwrap();
        text.lines()
            .find(|line| line.starts_with(needle) && line[needle.len()..].starts_with(' '))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
    }

    #[test]
    fn catalogue_is_exported_at_zero() {
        let metrics = Metrics::new();
        for outcome in OUTCOMES {
            assert_eq!(sample(&metrics, &format!("imcf_callbacks_total{{outcome=\"{outcome}\"}}")), Some(0.0));
        }
        assert_eq!(sample(&metrics, "imcf_exceptions_total{category=\"content_moderated\"}"), Some(0.0));
        assert_eq!(sample(&metrics, "imcf_exceptions_by_code_total{error_code=\"other\"}"), Some(0.0));
        assert_eq!(sample(&metrics, "imcf_kafka_queue_events"), Some(0.0));
        assert_eq!(sample(&metrics, "imcf_ack_duration_seconds_count"), Some(0.0));
    }

    #[test]
    fn counts_land_under_their_labels() {
        let metrics = Metrics::new();
        metrics.callback("accepted");
        metrics.callback("bad_sign");
        metrics.callback("bad_sign");
        metrics.exception(ErrorCategory::from_code(10023), "10023");
        assert_eq!(sample(&metrics, "imcf_callbacks_total{outcome=\"accepted\"}"), Some(1.0));
        assert_eq!(sample(&metrics, "imcf_callbacks_total{outcome=\"bad_sign\"}"), Some(2.0));
        assert_eq!(sample(&metrics, "imcf_exceptions_total{category=\"rate_limited\"}"), Some(1.0));
        assert_eq!(sample(&metrics, "imcf_exceptions_by_code_total{error_code=\"10023\"}"), Some(1.0));
    }

    #[test]
    fn librdkafka_statistics_become_bounded_metrics() {
        let json = r#"{"name":"p","client_id":"c","type":"producer","ts":1,"time":1,"age":1,"replyq":0,
            "msg_cnt":7,"msg_size":700,"msg_max":100000,"msg_size_max":1,"simple_cnt":0,"metadata_cache_cnt":1,
            "tx":1,"tx_bytes":1,"rx":1,"rx_bytes":1,"txmsgs":1,"txmsg_bytes":1,"rxmsgs":0,"rxmsg_bytes":0,
            "brokers":{
              "127.0.0.1:9092/bootstrap":{"name":"127.0.0.1:9092/bootstrap","nodeid":-1,"nodename":"127.0.0.1:9092","source":"configured","state":"UP","stateage":1,"outbuf_cnt":0,"outbuf_msg_cnt":0,"waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":1,"txbytes":1,"txerrs":9,"txretries":0,"txidle":0,"req_timeouts":0,"rx":1,"rxbytes":1,"rxerrs":0,"rxcorriderrs":0,"rxpartial":0,"rxidle":0,"zbuf_grow":0,"buf_grow":0,"wakeups":0,"connects":1,"disconnects":0,"req":{},"toppars":{}},
              "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","nodeid":1,"nodename":"127.0.0.1:9092","source":"learned","state":"UP","stateage":1,"outbuf_cnt":0,"outbuf_msg_cnt":0,"waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":1,"txbytes":1,"txerrs":2,"txretries":3,"txidle":0,"req_timeouts":1,"rx":1,"rxbytes":1,"rxerrs":1,"rxcorriderrs":0,"rxpartial":0,"rxidle":0,"zbuf_grow":0,"buf_grow":0,"wakeups":0,"connects":1,"disconnects":0,"req":{},"toppars":{},
                "rtt":{"min":100,"max":9000,"avg":1000,"sum":1,"cnt":1,"stddev":0,"hdrsize":1,"p50":1500,"p75":1,"p90":1,"p95":1,"p99":8000,"p99_99":1,"outofrange":0}}},
            "topics":{}}"#;
        let statistics: Statistics = serde_json::from_str(json).expect("librdkafka statistics JSON");
        let metrics = Metrics::new();
        metrics.kafka_statistics(&statistics);
        metrics.kafka_statistics(&statistics);
        assert_eq!(sample(&metrics, "imcf_kafka_producer_queue_messages"), Some(7.0));
        assert_eq!(sample(&metrics, "imcf_kafka_producer_queue_bytes"), Some(700.0));
        let broker = "broker=\"127.0.0.1:9092/1\"";
        assert_eq!(sample(&metrics, &format!("imcf_kafka_broker_up{{{broker}}}")), Some(1.0));
        assert_eq!(
            sample(&metrics, &format!("imcf_kafka_broker_rtt_seconds{{{broker},percentile=\"p99\"}}")),
            Some(0.008)
        );
        // Reported twice, counted once: the counters follow librdkafka's cumulative totals.
        assert_eq!(sample(&metrics, &format!("imcf_kafka_broker_request_errors_total{{{broker}}}")), Some(3.0));
        assert_eq!(sample(&metrics, &format!("imcf_kafka_broker_request_retries_total{{{broker}}}")), Some(3.0));
        assert!(!String::from_utf8(metrics.render()).unwrap().contains("bootstrap"));
    }
}
