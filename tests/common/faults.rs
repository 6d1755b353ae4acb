//! Fault-injection helpers for tests/faults.rs: a tansu broker that can be killed and restarted on the same
//! port, a forwarder process that can be frozen, thawed and killed with any signal, background callback
//! senders that remember which event ids were acknowledged, a consumer that collects event ids, and a reader
//! of the spool's on-disk frames (for the corruption test).
//!
//! Tansu's `memory://` storage does not survive a restart. So that "every acknowledged event reached Kafka"
//! can still be checked across one, [`checkpoint_and_kill`] freezes the forwarder (SIGSTOP: from then on it
//! can neither produce nor learn of a delivery), appends a marker record, reads the topic up to the marker
//! (so everything Kafka had acknowledged to the forwarder is read), kills the broker and thaws the forwarder.
//! The union of what is read before and after the restart must then hold every acknowledged event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;
use serde_json::Value;

use super::forwarder::{self, Output};
use super::kafka;
use super::metrics::{self, Metrics};
use super::tencent::{self, APP_ID, EXCEPTION};

/// The event topic of every fault test.
pub const TOPIC: &str = "im.group.send-msg-exception";
/// Its dead-letter topic (must exist for readiness).
pub const DEAD_LETTER_TOPIC: &str = "im.group.send-msg-exception.dead-letter";

/// Producer settings that keep the fault tests fast: quick reconnects and retries, frequent statistics.
pub const FAST_KAFKA: &[&str] = &[
    "-X",
    "reconnect.backoff.ms=50",
    "-X",
    "reconnect.backoff.max.ms=500",
    "-X",
    "retry.backoff.ms=50",
    "-X",
    "retry.backoff.max.ms=500",
    "-X",
    "topic.metadata.refresh.interval.ms=1000",
    "-X",
    "statistics.interval.ms=500",
];

/// For a forwarder whose broker is restarted: tansu 0.6 keeps producer ids in its (memory) storage and
/// answers UNKNOWN_PRODUCER_ID to the forwarder's idempotent producer after a restart, for every epoch that
/// librdkafka bumps to, so nothing would be delivered again. (Kafka keeps producer state across restarts, and
/// accepts sequence 0 from an unknown producer id.) The idempotent producer is therefore turned off where
/// tansu is restarted; acks=all and the forwarder's own retries are unchanged.
pub const NO_IDEMPOTENCE: &[&str] = &["-X", "enable.idempotence=false"];

// ---------------------------------------------------------------------------------------------------------
// tansu

/// A tansu broker with in-memory storage on a port fixed for its whole life, so that it can be killed and
/// started again where the forwarder expects it. Killed on drop.
pub struct Tansu {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: usize,
}

/// A free port below the kernel's ephemeral range, for a broker that is down for a while (or restarted).
///
/// A port from the ephemeral range (what binding port 0 gives) can be taken, while the broker is down, as
/// the local end of any outgoing connection of the busy test process (Linux even lets a connection to a
/// closed local port connect to itself); the broker then fails to bind it ("Address already in use").
pub fn broker_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low: u16 = range.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(32768);
    if ephemeral_low <= 11_000 {
        return super::free_port();
    }
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    // Spread over the range by pid, time and a counter, so that parallel tests rarely try the same port.
    let seed =
        std::process::id() as usize * 7919 + tencent::now_ms() as usize + SEQ.fetch_add(1, Ordering::Relaxed) * 104_729;
    let span = usize::from(ephemeral_low - 10_000);
    for attempt in 0..200 {
        let port = 10_000 + ((seed + attempt * 7_877) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    super::free_port()
}

impl Tansu {
    /// Picks a free port but starts nothing: the broker is "down" until [`Tansu::start`].
    pub fn reserve() -> Tansu {
        let port = broker_port();
        Tansu {
            port,
            addr: format!("127.0.0.1:{port}"),
            child: None,
            dir: tempfile::tempdir().expect("tempdir for tansu"),
            starts: 0,
        }
    }

    /// A running broker with both topics (1 partition each).
    pub fn with_topics() -> Tansu {
        let mut tansu = Tansu::reserve();
        tansu.start_with_topics();
        tansu
    }

    /// Starts the broker on its port and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "tansu on {} is already running", self.port);
        let bin = super::broker::tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // The port of a broker killed a moment ago may still be held briefly: retry a few times.
        for attempt in 0..5 {
            self.starts += 1;
            let log_path = self.log_path();
            let log = File::create(&log_path).expect("tansu log file");
            let mut child =
                super::spawn_owned(super::broker::tansu_command(&bin, &url, "imcf-faults", self.dir.path(), log))
                    .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "tansu exited with {status} on port {} (attempt {attempt}): {}",
                        self.port,
                        self.log_tail(10)
                    );
                    break;
                }
                if TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("tansu did not accept connections on {} within 20 s: {}", self.port, self.log_tail(20));
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("could not start tansu on port {}", self.port);
    }

    /// Starts the broker and creates both topics.
    pub fn start_with_topics(&mut self) {
        self.start();
        self.create_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    }

    /// Kills the broker (SIGKILL): its memory storage is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates topics (1 partition, replication 1; existing ones are fine) and waits until metadata lists them.
    pub fn create_topics(&self, topics: &[&str]) {
        super::broker::create_topics(&self.addr, topics);
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("tansu-{}.log", self.starts))
    }

    /// The last `n` lines of the current (or last) run's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- tansu on port {} (run {}, last lines) ---\n{}", self.port, self.starts, self.log_tail(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// librdkafka's mock cluster

/// A mock cluster of `brokers` brokers, in this process but on real TCP ports, with both topics (1 partition,
/// replicated on every broker).
pub fn mock_cluster(brokers: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(brokers).expect("mock cluster");
    // librdkafka 2.12.1's mock broker dereferences the partition leader when it answers a Produce v10+ request
    // with NOT_LEADER_FOR_PARTITION, and crashes (SIGSEGV, in this process) when the partition has no leader.
    // Produce v9 skips that code (it only adds the CurrentLeader tag of KIP-951).
    cluster.apiversion(RDKafkaApiKey::Produce, Some(0), Some(9)).expect("cap Produce at v9");
    for topic in [TOPIC, DEAD_LETTER_TOPIC] {
        cluster.create_topic(topic, 1, brokers).expect("mock topic");
    }
    cluster
}

// ---------------------------------------------------------------------------------------------------------
// the forwarder process

/// The forwarder binary, started like the harness's `Forwarder` (port 0, JSON logs), but with its pid at hand
/// for SIGSTOP, SIGCONT and SIGKILL. Killed on drop.
pub struct Proc {
    child: Child,
    /// Bound callback listener, "IP:PORT".
    pub callback_addr: String,
    /// Bound admin listener, "IP:PORT".
    pub admin_addr: String,
    /// Every output line.
    pub output: Arc<Output>,
    exit: Option<ExitStatus>,
    /// A name for messages ("first forwarder", ...).
    pub label: String,
}

impl Proc {
    /// Starts the forwarder for app [`APP_ID`] on `bootstrap` with `extra` flags; waits for "listening".
    pub fn start(label: &str, bootstrap: &str, extra: &[&str]) -> Proc {
        Proc::start_with_env(label, bootstrap, extra, &[])
    }

    /// [`Proc::start`] with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(label: &str, bootstrap: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        Proc::start_command(forwarder::command(), label, bootstrap, extra, envs)
    }

    /// [`Proc::start`] under `strace` ([`forwarder::traced_command`]), writing its syncs and writes to `trace`.
    pub fn start_traced(label: &str, bootstrap: &str, extra: &[&str], trace: &std::path::Path) -> Proc {
        Proc::start_command(forwarder::traced_command(trace), label, bootstrap, extra, &[])
    }

    fn start_command(mut cmd: Command, label: &str, bootstrap: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--kafka-brokers", bootstrap, "--sdk-app-id", APP_ID, "--allow-unsigned"])
            .args(extra)
            .envs(envs.iter().copied());
        let forwarder::Listening { child, output, callback_addr, admin_addr } =
            forwarder::spawn_listening(cmd, &format!("{label}, flags {extra:?}"));
        Proc { callback_addr, admin_addr, child, output, exit: None, label: label.to_string() }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) {
        assert!(self.exit.is_none(), "{}: signal {signal} after the process was reaped", self.label);
        // SAFETY: kill(2) on the pid of our own child, not yet reaped (`exit` is None while it may run).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "{}: kill({signal}) failed", self.label);
    }

    /// The URL of an exception callback (unsigned: the fault tests configure no token).
    pub fn callback_url(&self) -> String {
        format!("http://{}/?{}", self.callback_addr, tencent::query(APP_ID, EXCEPTION, None))
    }

    /// One scrape of /metrics.
    pub fn scrape(&self) -> Metrics {
        metrics::scrape(&self.admin_addr)
    }

    /// GET /readyz: (status, text); (0, error) when it does not answer.
    pub fn readyz(&self) -> (u16, String) {
        match super::http::try_get(&format!("http://{}/readyz", self.admin_addr)) {
            Ok(reply) => (reply.status, reply.text()),
            Err(err) => (0, err.to_string()),
        }
    }

    /// Polls /readyz until 200; panics with the last answer after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let mut last = (0, String::new());
        let ok = super::poll_until(timeout, Duration::from_millis(100), || {
            last = self.readyz();
            (last.0 == 200).then_some(())
        });
        assert!(ok.is_some(), "{}: /readyz not 200 within {timeout:?}: {last:?}", self.label);
    }

    /// Waits for the process to exit (kills it and panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        forwarder::wait_exit(&mut self.child, &mut self.exit, &self.output, &self.label, timeout)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    /// The first JSON log line whose message is `message`, waiting up to `timeout`.
    pub fn wait_log(&self, message: &str, timeout: Duration) -> Option<Value> {
        self.output.wait_log(message, timeout)
    }

    /// Scrapes until every accepted record is settled: nothing in the producer queue and nothing left in the
    /// spool (or `timeout`); returns the last scrape.
    pub fn wait_drained(&self, timeout: Duration) -> Metrics {
        let mut last = Metrics::default();
        super::poll_until(timeout, Duration::from_millis(200), || {
            last = metrics::try_scrape(&self.admin_addr)?;
            let queue = last.get("imcf_kafka_queue_events").unwrap_or(f64::NAN);
            let spool = last.get("imcf_spool_events").unwrap_or(0.0);
            (queue == 0.0 && spool == 0.0).then_some(())
        });
        last
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = self.output.all_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} (last output lines) ---\n{}",
                self.label,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// The sum of every series of `name` (e.g. a counter over all broker labels); 0 when absent.
pub fn sum_series(metrics: &Metrics, name: &str) -> f64 {
    metrics.series(name).iter().map(|(_, v)| v).sum()
}

/// One labelled value, `name{label="value"}`; 0 when absent.
pub fn labelled(metrics: &Metrics, name: &str, label: &str, value: &str) -> f64 {
    metrics.get(&format!("{name}{{{label}=\"{value}\"}}")).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------------------
// callbacks

/// What the callbacks sent so far were answered.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Event ids answered 200 with the OK body: the forwarder took responsibility for these.
    pub acked: BTreeSet<String>,
    /// Refusals by (HTTP status, ErrorCode).
    pub refused: BTreeMap<(u16, i64), usize>,
    /// Requests without an answer (connection refused or reset, timeout).
    pub transport_errors: usize,
    /// Requests sent.
    pub sent: usize,
}

impl Tally {
    /// Adds another tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.acked.extend(other.acked);
        for (key, n) in other.refused {
            *self.refused.entry(key).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.sent += other.sent;
    }

    /// Refusals with this ErrorCode.
    pub fn refused_with(&self, code: i64) -> usize {
        self.refused.iter().filter(|((_, c), _)| *c == code).map(|(_, n)| n).sum()
    }

    /// Panics unless every refusal is one of `allowed` (HTTP status, ErrorCode) and every request was answered.
    pub fn assert_refusals_only(&self, case: &str, allowed: &[(u16, i64)]) {
        let other: Vec<_> = self.refused.iter().filter(|(key, _)| !allowed.contains(key)).collect();
        assert!(other.is_empty(), "{case}: refusals other than {allowed:?}: {other:?}");
        assert_eq!(self.transport_errors, 0, "{case}: requests without an answer");
    }
}

/// A unique exception callback body: `tag` and `n` make it (and its event id) distinct; `pad` bytes of text
/// make it bigger.
pub fn callback_body(tag: &str, n: usize, pad: usize) -> String {
    format!(
        concat!(
            r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#{tag}{group}","Type":"Public","#,
            r#""From_Account":"user{n}","Random":{n},"ErrorCode":10023,"ErrorInfo":"msg count exceeds limit","#,
            r#""EventTime":{time},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{text}"}}}}]}}"#
        ),
        tag = tag,
        group = n % 7,
        n = n,
        time = tencent::now_ms(),
        text = "x".repeat(pad),
    )
}

/// A keep-alive client whose requests give up after `timeout` (a frozen forwarder must not hang a test).
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// A client for single posts (10 s timeout).
pub fn test_agent() -> ureq::Agent {
    agent(Duration::from_secs(10))
}

/// POSTs one callback; records the answer in `tally`. Returns the HTTP status (0: no answer).
pub fn post_callback(agent: &ureq::Agent, url: &str, body: &str, tally: &mut Tally) -> u16 {
    tally.sent += 1;
    let answer = agent.post(url).header("Content-Type", "application/json").send(body.as_bytes()).and_then(|mut r| {
        let status = r.status().as_u16();
        r.body_mut().read_to_vec().map(|b| (status, b))
    });
    match answer {
        Ok((200, bytes)) if bytes == tencent::OK_BODY => {
            tally.acked.insert(tencent::event_id(APP_ID, body.as_bytes()));
            200
        }
        Ok((status, bytes)) => {
            let code = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["ErrorCode"].as_i64()).unwrap_or(-1);
            *tally.refused.entry((status, code)).or_default() += 1;
            status
        }
        Err(_) => {
            tally.transport_errors += 1;
            0
        }
    }
}

/// Sends `count` callbacks one after the other; stops early after `stop_after_refusals` refusals.
pub fn send_callbacks(url: &str, tag: &str, count: usize, pad: usize, stop_after_refusals: usize) -> Tally {
    let agent = agent(Duration::from_secs(10));
    let mut tally = Tally::default();
    for n in 0..count {
        post_callback(&agent, url, &callback_body(tag, n, pad), &mut tally);
        if tally.refused.values().sum::<usize>() >= stop_after_refusals {
            break;
        }
    }
    tally
}

/// Background senders: `threads` threads, each posting about `per_second` callbacks a second (one at a
/// time, paced) until stopped, or until `limit` requests in all.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    handles: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts the senders against `url`.
    pub fn start(url: &str, tag: &str, threads: usize, per_second: u32, limit: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(AtomicUsize::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (url, tag) = (url.to_string(), format!("{tag}t{t}n"));
                let (stop, answered, issued) = (stop.clone(), answered.clone(), issued.clone());
                let refused = refused.clone();
                std::thread::spawn(move || {
                    // Long enough for a request to outlive a freeze (checkpoint_and_kill stops the forwarder for
                    // seconds, more on a loaded machine): the tests count unanswered requests as failures.
                    let agent = agent(Duration::from_secs(60));
                    let mut tally = Tally::default();
                    let interval = Duration::from_secs(1) / per_second.max(1);
                    let mut next = Instant::now();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && issued.fetch_add(1, Ordering::SeqCst) < limit {
                        if post_callback(&agent, &url, &callback_body(&tag, n, 200), &mut tally) == 200 {
                            answered.fetch_add(1, Ordering::SeqCst);
                        } else {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        n += 1;
                        next += interval;
                        let now = Instant::now();
                        match next.checked_duration_since(now) {
                            Some(wait) => std::thread::sleep(wait),
                            // Behind schedule (a stall): carry on from now instead of bursting.
                            None => next = now,
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, answered, refused, handles }
    }

    /// Callbacks acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits until `more` further callbacks were acknowledged; panics after `timeout`: a service that stops
    /// taking callbacks during a fault must fail the test, not pass it with nothing acknowledged to lose.
    pub fn wait_acked(&self, more: usize, timeout: Duration) {
        let start = self.acked_count();
        let target = start + more;
        let reached =
            super::poll_until(timeout, Duration::from_millis(20), || (self.acked_count() >= target).then_some(()));
        assert!(
            reached.is_some(),
            "the forwarder stopped acknowledging callbacks: {} of {more} more within {timeout:?} (refused or \
             unanswered: {} requests so far)",
            self.acked_count() - start,
            self.refused.load(Ordering::SeqCst),
        );
    }

    /// Stops the senders and merges their tallies.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for handle in self.handles {
            tally.merge(handle.join().expect("sender thread"));
        }
        tally
    }
}

// ---------------------------------------------------------------------------------------------------------
// reading the topic back

/// Event ids read from a topic, with how often each was seen.
#[derive(Debug, Default, Clone)]
pub struct Consumed {
    /// event_id header -> records carrying it.
    pub counts: HashMap<String, usize>,
    /// Records read.
    pub records: usize,
}

impl Consumed {
    /// Adds another read to this one (e.g. before and after a broker restart).
    pub fn merge(&mut self, other: &Consumed) {
        for (id, n) in &other.counts {
            *self.counts.entry(id.clone()).or_default() += n;
        }
        self.records += other.records;
    }

    /// The acknowledged ids not read, sorted.
    pub fn missing<'a>(&self, acked: &'a BTreeSet<String>) -> Vec<&'a String> {
        acked.iter().filter(|id| !self.counts.contains_key(*id)).collect()
    }
}

/// Reads `topic` from the beginning until `done` holds for what was read (then `grace` more, to see
/// duplicates and strays), or until `timeout`.
pub fn consume_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    grace: Duration,
    mut done: impl FnMut(&Consumed) -> bool,
) -> Consumed {
    let deadline = Instant::now() + timeout;
    let (consumer, _) = kafka::consumer_from_start(bootstrap, topic, timeout);
    let mut consumed = Consumed::default();
    let mut done_at: Option<Instant> = None;
    while Instant::now() < deadline && done_at.is_none_or(|at| at.elapsed() < grace) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            consumed.records += 1;
            let id = m
                .headers()
                .and_then(|hs| hs.iter().find(|h| h.key == "event_id").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            *consumed.counts.entry(id).or_default() += 1;
        }
        if done_at.is_none() && done(&consumed) {
            done_at = Some(Instant::now());
        }
    }
    consumed
}

/// Reads `topic` until every id of `acked` is found (or `timeout`).
pub fn consume_acked(bootstrap: &str, acked: &BTreeSet<String>, timeout: Duration) -> Consumed {
    consume_until(bootstrap, TOPIC, timeout, Duration::from_millis(500), |c| {
        c.counts.len() >= acked.len() && acked.iter().all(|id| c.counts.contains_key(id))
    })
}

/// Freezes `fwd` (SIGSTOP), appends a marker to the single partition of [`TOPIC`], reads the topic up to the
/// marker and for a second past it, kills the broker and thaws `fwd` (SIGCONT). Returns what was read: every
/// record Kafka could have acknowledged to the forwarder before the broker died.
pub fn checkpoint_and_kill(fwd: &Proc, broker: &mut Tansu) -> Consumed {
    fwd.signal(libc::SIGSTOP);
    // A produce request already on the wire when the forwarder froze can still be appended, even after the
    // marker (the broker serves connections concurrently): give it time, and read on past the marker.
    std::thread::sleep(Duration::from_millis(300));
    let marker = kafka::produce_marker(&broker.addr, TOPIC);
    let (_, partitions) = kafka::consumer_from_start(&broker.addr, TOPIC, Duration::from_secs(10));
    assert_eq!(partitions, 1, "the marker proves order only on a single partition");
    let mut before = consume_until(&broker.addr, TOPIC, Duration::from_secs(20), Duration::from_secs(1), |c| {
        c.counts.contains_key(&marker)
    });
    assert!(before.counts.remove(&marker).is_some(), "marker not read back within 20 s");
    before.records -= 1;
    broker.kill();
    fwd.signal(libc::SIGCONT);
    before
}

// ---------------------------------------------------------------------------------------------------------
// spool files

/// One frame found in a spool segment.
#[derive(Debug, Clone)]
pub struct SpoolFrame {
    /// Byte offset of the frame in its segment.
    pub offset: usize,
    /// Frame length (header and payload).
    pub len: usize,
    /// Its `event_id` header.
    pub event_id: String,
}

/// Bytes before a frame's payload: magic, payload length, CRC-32 (src/spool/frame.rs).
pub const FRAME_HEADER_LEN: usize = 12;

/// Parses every frame of a segment, following the documented format; panics on anything else (the test
/// damages files only after reading them).
pub fn read_spool_frames(path: &Path) -> Vec<SpoolFrame> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut frames = Vec::new();
    let mut at = 0;
    while at < data.len() {
        assert_eq!(&data[at..at + 4], b"IMCF", "{}: no frame magic at {at}", path.display());
        let payload_len = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let mut p = Cursor(&data[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + payload_len]);
        p.field(2); // topic
        p.field(4); // key
        p.field(4); // value
        let count = u16::from_le_bytes(p.take(2).try_into().expect("2 bytes"));
        let mut event_id = String::new();
        for _ in 0..count {
            let name = p.field(2).to_vec();
            let value = p.field(4);
            if name == b"event_id" {
                event_id = String::from_utf8_lossy(value).into_owned();
            }
        }
        frames.push(SpoolFrame { offset: at, len: FRAME_HEADER_LEN + payload_len, event_id });
        at += FRAME_HEADER_LEN + payload_len;
    }
    frames
}

/// Reads length-prefixed fields of a frame payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    /// A field with a little-endian length prefix of `width` (2 or 4) bytes.
    fn field(&mut self, width: usize) -> &'a [u8] {
        let len = match width {
            2 => u16::from_le_bytes(self.take(2).try_into().expect("2 bytes")) as usize,
            _ => u32::from_le_bytes(self.take(4).try_into().expect("4 bytes")) as usize,
        };
        self.take(len)
    }
}

/// The spool's segment files, oldest first.
pub fn spool_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("segment-") && n.ends_with(".spool"))
        })
        .collect();
    segments.sort();
    segments
}
