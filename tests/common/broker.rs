//! A tansu broker (in-memory storage) per test, on its own port, killed on drop.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::kafka::{self, Record};

/// Where tansu is looked for when neither TANSU_BIN nor PATH has it (scripts/test.sh installs it there).
const TANSU_CACHE_PATH: &str = "/root/.cache/imcf-tools/tansu-0.6.0-dynostore/bin/tansu";

/// A running tansu broker; the process is killed when this is dropped.
pub struct Broker {
    child: Child,
    /// Port the broker listens on (127.0.0.1).
    pub port: u16,
    /// `127.0.0.1:PORT`, for bootstrap.servers and --kafka-brokers.
    pub addr: String,
    dir: tempfile::TempDir,
}

/// Path to the tansu binary: env TANSU_BIN, else `tansu` on PATH, else the tools cache.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TANSU_BIN={} is not a file; run the README's test command (scripts/test.sh), which installs tansu",
            p.display()
        );
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let cached = PathBuf::from(TANSU_CACHE_PATH);
    assert!(
        cached.is_file(),
        "the tansu broker was not found (env TANSU_BIN, PATH, {TANSU_CACHE_PATH}): \
         run the README's test command (scripts/test.sh), which installs it"
    );
    cached
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Broker {
        let bin = tansu_bin();
        let mut last_error = String::new();
        // A port picked as free can be taken by a parallel test before tansu binds it: retry.
        for _ in 0..3 {
            let port = super::free_port();
            // Its own working directory, so that tansu's dotenv loading finds no stray .env file.
            let dir = tempfile::tempdir().expect("tempdir for tansu");
            let log = File::create(dir.path().join("tansu.log")).expect("tansu log file");
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = super::spawn_owned(tansu_command(&bin, &url, "imcf-test", dir.path(), log))
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = tail(&dir.path().join("tansu.log"), 20);
                    assert!(
                        !log.contains("FeatureNotEnabled"),
                        "{} was built without the storage feature memory:// needs; install it with \
                         `cargo install tansu --locked --version 0.6.0 --features dynostore` \
                         (the README's test command, scripts/test.sh, should do this):\n{log}",
                        bin.display()
                    );
                    last_error = format!("tansu exited with {status} on port {port}: {log}");
                    break;
                }
                if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
                    // A tansu that cannot open its storage may accept a connection before it exits.
                    std::thread::sleep(Duration::from_millis(100));
                    if child.try_wait().ok().flatten().is_some() {
                        continue;
                    }
                    return Broker { child, port, addr: format!("127.0.0.1:{port}"), dir };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("tansu did not accept connections on {port} within 20 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("could not start tansu: {last_error}");
    }

    /// Starts a broker and creates `topics` (1 partition each).
    pub fn with_topics(topics: &[&str]) -> Broker {
        let broker = Broker::start();
        broker.create_topics(topics);
        broker
    }

    /// Creates topics (1 partition, replication 1) and waits until the broker's metadata lists them.
    pub fn create_topics(&self, topics: &[&str]) {
        create_topics(&self.addr, topics);
    }

    /// Consumes `topic` from the beginning until `expected` records arrived (or `timeout`),
    /// then keeps reading for a short grace period so that extra records are seen too.
    pub fn consume(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        kafka::consume(&self.addr, topic, expected, timeout, Duration::from_millis(1500))
    }

    /// Every record of `topic` (one partition) appended before now: appends a marker and reads until the
    /// marker arrives (20 s at most), then for `wait` more; the marker itself is left out. Unlike
    /// [`Broker::consume`], the read ends neither before a fetch did nor after a fixed time: a writer that
    /// finished (a process that exited, a forwarder whose producer queue is empty) is read in full.
    pub fn records_until_marker(&self, topic: &str, wait: Duration) -> Vec<Record> {
        let marker = kafka::produce_marker(&self.addr, topic);
        kafka::consume_until_marker(&self.addr, topic, &marker, Duration::from_secs(20), wait)
    }

    /// Asserts that `topic` (one partition) holds no record: appends a marker and reads until the marker
    /// arrives, so that the read cannot end before a fetch did (`wait` is extra time after the marker for
    /// records still on their way; what the forwarder publishes later is not seen).
    pub fn assert_no_records(&self, topic: &str, wait: Duration) {
        let records = self.records_until_marker(topic, wait);
        assert!(
            records.is_empty(),
            "expected no record in {topic}, found {}: first {:?}",
            records.len(),
            records.first()
        );
    }

    /// Stops the broker now (for tests of an unreachable Kafka).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The broker's own log, last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.dir.path().join("tansu.log"), n)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tansu on port {} (last lines) ---\n{}", self.port, self.log_tail(30));
        }
    }
}

/// Last `n` lines of a text file (lossy), or a note when unreadable.
fn tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `tansu broker` with in-memory storage listening on `url`, run in `dir` (so that its dotenv loading finds no
/// stray .env file), with stdout and stderr to `log` and none of tansu's environment variables inherited.
pub fn tansu_command(bin: &Path, url: &str, cluster_id: &str, dir: &Path, log: File) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("broker")
        .args(["--listener-url", url])
        .args(["--advertised-listener-url", url])
        .args(["--storage-engine", "memory://tansu/"])
        .args(["--cluster-id", cluster_id])
        .current_dir(dir)
        .env_remove("CLUSTER_ID")
        .env_remove("STORAGE_ENGINE")
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    cmd
}

/// Creates topics with rdkafka's AdminClient (1 partition, replication 1; existing ones are fine) and waits
/// until the broker's metadata lists them.
pub fn create_topics(addr: &str, topics: &[&str]) {
    create_topics_with_partitions(addr, topics, 1);
}

/// [`create_topics`] with `partitions` partitions each.
pub fn create_topics_with_partitions(addr: &str, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", addr).create().expect("admin client");
    let new_topics: Vec<NewTopic> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let results = runtime.block_on(admin.create_topics(&new_topics, &options)).expect("create_topics request");
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("creating topic {topic}: {code:?}"),
        }
    }
    for topic in topics {
        let found = super::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(2)).ok()?;
            let t = md.topics().iter().find(|t| t.name() == *topic)?;
            (t.error().is_none() && !t.partitions().is_empty()).then_some(())
        });
        assert!(found.is_some(), "topic {topic} not in the broker's metadata 10 s after creation");
    }
}
