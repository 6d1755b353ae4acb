//! Soak benchmark (issue 3; driven by bench/soak.sh): signed exception callbacks at a fixed rate for a fixed
//! time against a release forwarder, while the tansu broker under it is killed and restarted every few
//! seconds. Reports accepted (answered 200 OK) against delivered (distinct accepted event ids read back from
//! Kafka) against duplicates, and the forwarder's peak RSS (VmHWM).
//!
//! It starts both processes itself, on 127.0.0.1 only, and kills them (by pid) when it ends. tansu's memory
//! storage is wiped by a restart, so a continuous consumer reads the topic, and each bounce is taken at a
//! checkpoint: the forwarder is frozen (SIGSTOP), a marker record is appended, the consumer reads up to it
//! (everything Kafka acknowledged so far is then counted), the broker is killed (SIGKILL) and the forwarder
//! thawed (SIGCONT); the broker comes back on the same port after `--down-secs`. The freeze lasts about a
//! second, during which callbacks wait in the kernel's backlog.
//!
//! ```text
//! cargo run --release --example soak -- --forwarder target/release/im-callback-forwarder --tansu PATH \
//!     --out /tmp/soak --duration-secs 120 --rate 1000 --bounce-every-secs 30
//! ```
//! Prints a human summary on stderr and one JSON object on stdout.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOPIC: &str = "im.group.send-msg-exception";
const DEAD_LETTER_TOPIC: &str = "im.group.send-msg-exception.dead-letter";
const SDK_APP_ID: &str = "1400000000";
const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

#[derive(Parser, Debug)]
#[command(about = "Fixed-rate signed callbacks with the broker bounced periodically; accepted vs delivered")]
struct Opts {
    /// The forwarder binary (a release build).
    #[arg(long)]
    forwarder: PathBuf,
    /// The tansu binary (with the memory storage engine).
    #[arg(long)]
    tansu: PathBuf,
    /// Folder for logs and the spool.
    #[arg(long)]
    out: PathBuf,
    /// Seconds of load.
    #[arg(long, default_value_t = 300)]
    duration_secs: u64,
    /// Callbacks per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds between broker bounces (0: never).
    #[arg(long, default_value_t = 30)]
    bounce_every_secs: u64,
    /// Seconds the broker stays down at each bounce.
    #[arg(long, default_value_t = 2)]
    down_secs: u64,
    /// Sender threads (each a keep-alive connection).
    #[arg(long, default_value_t = 32)]
    senders: u32,
    /// Callback token (Sign check on).
    #[arg(long, default_value = "soak-callback-token")]
    token: String,
    /// Extra forwarder flags, whitespace-separated (e.g. "--durability disk").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    forwarder_args: String,
    /// Seconds to wait, after the load, for every accepted event to be read back.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
}

/// Logs a line on stderr with the seconds since start.
fn log(start: Instant, message: &str) {
    eprintln!("[soak {:7.1}s] {message}", start.elapsed().as_secs_f64());
}

/// Lowercase hex SHA-256.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range (10000 up): while the broker is down, a port
/// of that range could become the local end of some outgoing connection, and the broker could not bind it
/// again.
fn broker_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(32768).max(10_100);
    let seed = std::process::id() as u64 * 7919 + now_ms();
    (0..200)
        .map(|attempt| 10_000 + ((seed + attempt * 7_877) % u64::from(low - 10_000)) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Sends `signal` to `pid` (a child of ours).
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the pid of a child process we started and have not reaped.
    unsafe { libc::kill(pid as i32, signal) };
}

// ---------------------------------------------------------------------------------------------------------
// tansu

/// tansu on a fixed port, restartable; killed on drop.
struct Broker {
    bin: PathBuf,
    out: PathBuf,
    port: u16,
    addr: String,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    /// Starts the broker, waits for its port and creates both topics (1 partition: the marker orders them).
    fn start(&mut self) {
        self.starts += 1;
        let log = File::create(self.out.join(format!("tansu-{}.log", self.starts))).expect("tansu log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--cluster-id", "imcf-soak"])
            .current_dir(&self.out)
            .env_remove("CLUSTER_ID")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {} within 30 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().expect("admin client");
        let topics: Vec<NewTopic> =
            [TOPIC, DEAD_LETTER_TOPIC].iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        for result in runtime.block_on(admin.create_topics(&topics, &options)).expect("create topics") {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => panic!("creating {topic}: {code:?}"),
            }
        }
    }

    /// SIGKILL: the memory storage is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------------------
// the forwarder

/// The forwarder process; killed on drop if still running.
struct Forwarder {
    child: Child,
    callback_addr: String,
    admin_addr: String,
    log_path: PathBuf,
}

impl Forwarder {
    /// Starts it with JSON logs into `out/forwarder.log` and reads its addresses from the "listening" line.
    fn start(opts: &Opts, broker: &str) -> Forwarder {
        let log_path = opts.out.join("forwarder.log");
        let log = File::create(&log_path).expect("forwarder log");
        let spool = opts.out.join("spool");
        let mut cmd = Command::new(&opts.forwarder);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--kafka-brokers", broker, "--sdk-app-id", SDK_APP_ID, "--callback-token", &opts.token])
            .args(["--spool-dir", spool.to_str().expect("UTF-8 path")])
            // Statistics for the metrics; quick reconnects after each bounce.
            .args(["-X", "statistics.interval.ms=1000", "-X", "reconnect.backoff.max.ms=1000"])
            // A restarted tansu 0.6 has forgotten every producer id and refuses the idempotent producer's
            // records (UNKNOWN_PRODUCER_ID) for every epoch librdkafka bumps to: nothing would be delivered
            // after the first bounce. Kafka keeps producer state across restarts.
            .args(["-X", "enable.idempotence=false"])
            .args(opts.forwarder_args.split_whitespace())
            .env("IMCF_LOG", "warn,im_callback_forwarder=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("IMCF_") && key != "IMCF_LOG" {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("start the forwarder");
        // Owned from here on: dropped (and so killed) if the wait below panics.
        let mut fwd = Forwarder { child, callback_addr: String::new(), admin_addr: String::new(), log_path };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listening = std::fs::read_to_string(&fwd.log_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["fields"]["message"] == "listening");
            if let Some(v) = listening {
                let field = |name: &str| v["fields"][name].as_str().expect("address").to_string();
                fwd.callback_addr = field("callback_addr");
                fwd.admin_addr = field("admin_addr");
                return fwd;
            }
            assert!(Instant::now() < deadline, "the forwarder did not log \"listening\" within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// /metrics as `name{labels}` -> value.
    fn metrics(&self) -> HashMap<String, f64> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        let text = agent
            .get(&format!("http://{}/metrics", self.admin_addr))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    /// Peak resident set size (VmHWM), KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the "shutdown complete" line if any.
    fn stop(&mut self) -> Option<Value> {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let file = File::open(&self.log_path).ok()?;
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v["fields"]["message"] == "shutdown complete")
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// senders

/// What the senders saw.
#[derive(Default)]
struct Sent {
    /// Event ids answered 200 OK.
    accepted: HashSet<String>,
    /// Requests sent.
    requests: u64,
    /// Answers other than 200 OK, by status.
    refused: HashMap<u16, u64>,
    /// Requests without an answer.
    transport_errors: u64,
    /// Slowest answer.
    max_latency: Duration,
}

/// How one sender thread paces itself.
struct Schedule {
    /// Its callbacks per second.
    rate: f64,
    /// Its offset within one interval, as a fraction (spreads the threads).
    phase: f64,
    /// First slot.
    start: Instant,
    /// No slot at or after this.
    until: Instant,
}

/// One sender thread: callbacks on a fixed schedule (late requests go out at once, so the total stays
/// rate x duration).
fn sender(id: u32, url: String, token: String, schedule: Schedule, sent: Arc<Mutex<Sent>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let interval = Duration::from_secs_f64(1.0 / schedule.rate);
    let until = schedule.until;
    let mut next = schedule.start + interval.mul_f64(schedule.phase);
    let mut local = Sent::default();
    let mut n: u64 = 0;
    while next < until {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += interval;
        n += 1;
        let body = format!(
            concat!(
                r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#soak{group}","Type":"Public","#,
                r#""From_Account":"user{id}","Random":{n},"ErrorCode":10023,"ErrorInfo":"msg count exceeds limit","#,
                r#""EventTime":{ms},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"soak {id}/{n}"}}}}]}}"#
            ),
            group = n % 50,
            id = id,
            n = n,
            ms = now_ms(),
        );
        let request_time = (now_ms() / 1000).to_string();
        let sign = sha256_hex(format!("{token}{request_time}").as_bytes());
        let query = format!(
            "SdkAppid={SDK_APP_ID}&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP=10.0.0.1\
             &OptPlatform=iOS&Sign={sign}&RequestTime={request_time}"
        );
        let began = Instant::now();
        local.requests += 1;
        let answer = agent
            .post(&format!("{url}/?{query}"))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .and_then(|mut r| r.body_mut().read_to_vec().map(|b| (r.status().as_u16(), b)));
        local.max_latency = local.max_latency.max(began.elapsed());
        match answer {
            Ok((200, bytes)) if bytes == OK_BODY => {
                local.accepted.insert(sha256_hex(format!("{SDK_APP_ID}\n{body}").as_bytes()));
            }
            Ok((status, _)) => *local.refused.entry(status).or_default() += 1,
            Err(_) => local.transport_errors += 1,
        }
    }
    let mut all = sent.lock().expect("sent lock");
    all.accepted.extend(local.accepted);
    all.requests += local.requests;
    for (status, count) in local.refused {
        *all.refused.entry(status).or_default() += count;
    }
    all.transport_errors += local.transport_errors;
    all.max_latency = all.max_latency.max(local.max_latency);
}

// ---------------------------------------------------------------------------------------------------------
// the consumer

/// Event ids read back, shared with the consumer thread.
#[derive(Default)]
struct Seen {
    /// event_id -> records.
    counts: HashMap<String, u32>,
    /// Records read.
    records: u64,
}

/// Reads the topic of the broker's current incarnation from its beginning; starts over on the next one.
/// `generation` is even while the broker is down (nothing is read) and odd while it is up.
fn consumer(addr: String, generation: Arc<AtomicU64>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    while !stop.load(Ordering::SeqCst) {
        let current = generation.load(Ordering::SeqCst);
        if current % 2 == 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", format!("imcf-soak-{current}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).expect("partition");
        consumer.assign(&tpl).expect("assign");
        while !stop.load(Ordering::SeqCst) && generation.load(Ordering::SeqCst) == current {
            let mut batch = Vec::new();
            while let Some(Ok(m)) = consumer.poll(Duration::from_millis(if batch.is_empty() { 100 } else { 0 })) {
                let id = m.headers().and_then(|h| h.iter().find(|h| h.key == "event_id").and_then(|h| h.value));
                batch.push(id.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default());
                if batch.len() >= 5000 {
                    break;
                }
            }
            let mut seen = seen.lock().expect("seen lock");
            seen.records += batch.len() as u64;
            for id in batch {
                *seen.counts.entry(id).or_default() += 1;
            }
        }
    }
}

/// Freezes the forwarder, appends a marker and waits until the consumer read it; then kills the broker and
/// thaws the forwarder. Returns how long the forwarder was frozen.
fn bounce_down(fwd: &Forwarder, broker: &mut Broker, generation: &AtomicU64, seen: &Mutex<Seen>) -> Duration {
    let frozen = Instant::now();
    signal(fwd.child.id(), libc::SIGSTOP);
    let marker = format!("marker-{}", now_ms());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("marker producer");
    let headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some(marker.as_bytes()) });
    let record = BaseRecord::<[u8], [u8]>::to(TOPIC).partition(0).payload(b"marker").headers(headers);
    let sent = producer.send(record).is_ok() && producer.flush(Duration::from_secs(10)).is_ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent && !seen.lock().expect("seen lock").counts.contains_key(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !sent || !seen.lock().expect("seen lock").counts.contains_key(&marker) {
        eprintln!(
            "[soak] WARNING: marker not read back; records acknowledged just before this bounce may be miscounted"
        );
    }
    generation.fetch_add(1, Ordering::SeqCst);
    broker.kill();
    signal(fwd.child.id(), libc::SIGCONT);
    frozen.elapsed()
}

fn main() {
    let opts = Opts::parse();
    assert!(opts.duration_secs > 0 && opts.duration_secs <= 3600, "--duration-secs must be in 1..=3600");
    assert!(opts.rate > 0 && opts.rate <= 20_000, "--rate must be in 1..=20000");
    assert!(opts.senders > 0 && opts.senders <= 256, "--senders must be in 1..=256");
    std::fs::create_dir_all(&opts.out).expect("--out folder");
    let start = Instant::now();

    let port = broker_port();
    let mut broker = Broker {
        bin: opts.tansu.clone(),
        out: opts.out.clone(),
        port,
        addr: format!("127.0.0.1:{port}"),
        child: None,
        starts: 0,
    };
    broker.start();
    let generation = Arc::new(AtomicU64::new(1));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let consumer_thread = {
        let (addr, generation, stop, seen) =
            (broker.addr.clone(), generation.clone(), stop_consumer.clone(), seen.clone());
        std::thread::spawn(move || consumer(addr, generation, stop, seen))
    };
    let mut fwd = Forwarder::start(&opts, &broker.addr);
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    while fwd.metrics().get("imcf_ready") != Some(&1.0) {
        assert!(Instant::now() < ready_deadline, "the forwarder was not ready within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    log(
        start,
        &format!(
            "tansu on {}, forwarder on {} (pid {}); {} /s for {} s, bounce every {} s for {} s",
            broker.addr,
            fwd.callback_addr,
            fwd.child.id(),
            opts.rate,
            opts.duration_secs,
            opts.bounce_every_secs,
            opts.down_secs
        ),
    );

    let load_start = Instant::now();
    let until = load_start + Duration::from_secs(opts.duration_secs);
    let sent = Arc::new(Mutex::new(Sent::default()));
    let senders: Vec<JoinHandle<()>> = (0..opts.senders)
        .map(|id| {
            let (url, token, sent) = (format!("http://{}", fwd.callback_addr), opts.token.clone(), sent.clone());
            let schedule = Schedule {
                rate: f64::from(opts.rate) / f64::from(opts.senders),
                phase: f64::from(id) / f64::from(opts.senders),
                start: load_start,
                until,
            };
            std::thread::spawn(move || sender(id, url, token, schedule, sent))
        })
        .collect();

    let mut bounces = Vec::new();
    let mut next_bounce =
        (opts.bounce_every_secs > 0).then(|| load_start + Duration::from_secs(opts.bounce_every_secs));
    while Instant::now() < until {
        if let Some(at) = next_bounce.filter(|at| Instant::now() >= *at) {
            let frozen = bounce_down(&fwd, &mut broker, &generation, &seen);
            std::thread::sleep(Duration::from_secs(opts.down_secs));
            broker.start();
            generation.fetch_add(1, Ordering::SeqCst);
            log(
                start,
                &format!(
                    "bounce {}: forwarder frozen {frozen:.2?}, broker down {} s",
                    bounces.len() + 1,
                    opts.down_secs
                ),
            );
            bounces.push(frozen.as_secs_f64());
            next_bounce = Some(at + Duration::from_secs(opts.bounce_every_secs));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let sent = std::mem::take(&mut *sent.lock().expect("sent lock"));
    log(start, &format!("load done: {} requests, {} accepted", sent.requests, sent.accepted.len()));

    // Settle: every accepted event read back, or the forwarder idle and nothing new for a while.
    let settle_deadline = Instant::now() + Duration::from_secs(opts.settle_secs);
    loop {
        let missing = {
            let seen = seen.lock().expect("seen lock");
            sent.accepted.iter().filter(|id| !seen.counts.contains_key(*id)).count()
        };
        if missing == 0 || Instant::now() >= settle_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let metrics = fwd.metrics();
    let peak_rss_kib = fwd.peak_rss_kib();
    let shutdown = fwd.stop();
    stop_consumer.store(true, Ordering::SeqCst);
    let _ = consumer_thread.join();
    broker.kill();

    let seen = seen.lock().expect("seen lock");
    let delivered = sent.accepted.iter().filter(|id| seen.counts.contains_key(*id)).count();
    let duplicates: u64 =
        sent.accepted.iter().filter_map(|id| seen.counts.get(id)).map(|n| u64::from(n.saturating_sub(1))).sum();
    let unacknowledged_read =
        seen.counts.keys().filter(|id| !id.starts_with("marker-") && !sent.accepted.contains(*id)).count();
    let metric = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
    let summary = json!({
        "duration_secs": opts.duration_secs,
        "rate": opts.rate,
        "bounce_every_secs": opts.bounce_every_secs,
        "down_secs": opts.down_secs,
        "forwarder_args": opts.forwarder_args,
        "bounces": bounces.len(),
        "freeze_secs_max": bounces.iter().copied().fold(0.0, f64::max),
        "requests": sent.requests,
        "accepted": sent.accepted.len(),
        "refused_by_status": sent.refused,
        "transport_errors": sent.transport_errors,
        "max_ack_latency_ms": sent.max_latency.as_millis() as u64,
        "delivered": delivered,
        "missing": sent.accepted.len() - delivered,
        "duplicates": duplicates,
        "records_read": seen.records,
        "read_but_not_acknowledged": unacknowledged_read,
        "peak_rss_mib": peak_rss_kib as f64 / 1024.0,
        "metrics": {
            "kafka_delivered_total": metric("imcf_kafka_delivered_total"),
            "kafka_delivery_failures_total": metric("imcf_kafka_delivery_failures_total"),
            "spooled_delivery_failed": metric("imcf_spooled_total{reason=\"delivery_failed\"}"),
            "spooled_queue_full": metric("imcf_spooled_total{reason=\"queue_full\"}"),
            "spooled_write_ahead": metric("imcf_spooled_total{reason=\"write_ahead\"}"),
            "replayed_total": metric("imcf_replayed_total"),
            "events_lost_total": metric("imcf_events_lost_total"),
            "spool_events_at_end": metric("imcf_spool_events"),
            "queue_events_at_end": metric("imcf_kafka_queue_events"),
        },
        "shutdown": shutdown.map(|v| v["fields"].clone()),
    });
    eprintln!(
        "soak: {} s at {}/s, {} bounces: requests {}, accepted {}, delivered {} (missing {}), duplicates {}, \
         peak RSS {:.1} MiB",
        opts.duration_secs,
        opts.rate,
        bounces.len(),
        sent.requests,
        sent.accepted.len(),
        delivered,
        sent.accepted.len() - delivered,
        duplicates,
        peak_rss_kib as f64 / 1024.0
    );
    println!("{summary}");
    if delivered < sent.accepted.len() {
        std::process::exit(1);
    }
}
