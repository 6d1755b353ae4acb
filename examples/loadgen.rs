//! Load generator for the benchmark (bench/run.sh): realistic, signed `Group.CallbackSendMsgException`
//! callbacks over persistent HTTP/1.1 connections, in two modes.
//!
//! * closed loop (`--rate 0`, the default): every connection sends its next request as soon as the previous
//!   answer arrived: peak throughput.
//! * open loop (`--rate R`): requests are scheduled at R per second whatever the server does; a free
//!   connection takes the next slot. Latency is measured from the slot's *intended* send time whenever the
//!   request went out late because every connection was still waiting for an answer (no coordinated
//!   omission); when a connection was free, it is measured from the actual write, so tokio's 1 ms timer
//!   granularity (the generator's artefact, not the server's) is not charged to the server.
//!
//! Bodies: a pool of pre-generated templates spread over many groups (a few hot live-stream AVChatRooms
//! over their 40 msg/s limit, and thousands of ordinary groups), every error category of the shared doc §7,
//! and MsgBody element types of §6 (text, custom, image, face, sound, location, multi-element, ~10 KB
//! oversize texts). Per request the generator fills in a unique `Random` and the current `EventTime`, so
//! every body, and therefore every `event_id`, is distinct, and signs the query (`Sign` = hex sha256(token
//! + RequestTime), recomputed once per second per connection, as its value only changes then).
//!
//! The client is a minimal HTTP/1.1 writer/reader over tokio's TcpStream (TCP_NODELAY, no pipelining),
//! because the crate's hyper has no client feature and a minimal client leaves the most CPU to the server.
//! Only loopback targets are accepted; every run is bounded by `--duration` and `--max-requests`.
//!
//! Prints a human summary on stderr and one JSON object on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECT_FAILURES: u64 = 200;

#[derive(Parser, Debug, Clone)]
#[command(about = "Signed Tencent IM exception callbacks against a loopback server, closed or open loop")]
struct Opts {
    /// Server address (loopback only).
    #[arg(long)]
    target: SocketAddr,
    /// Callback path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Persistent connections.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (same mode and rate).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Requests per second (open loop); 0 = closed loop.
    #[arg(long, short = 'r', default_value_t = 0.0)]
    rate: f64,
    /// Hard bound on requests sent (warm-up included).
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// SdkAppid in the query.
    #[arg(long, default_value_t = 1_400_000_000)]
    sdk_app_id: u64,
    /// Callback token: when set, Sign and RequestTime are added.
    #[arg(long)]
    token: Option<String>,
    /// Distinct groups.
    #[arg(long, default_value_t = 5000)]
    groups: usize,
    /// Pre-generated body templates.
    #[arg(long, default_value_t = 4096)]
    templates: usize,
    /// Seed of the body mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Name of this run in the JSON output.
    #[arg(long, default_value = "run")]
    label: String,
    /// Print one complete example request on stderr and exit.
    #[arg(long)]
    print_example: bool,
}

// ---------------------------------------------------------------------------------------------------------
// Body mix

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn weighted<'a, T>(&mut self, items: &'a [(u32, T)]) -> &'a T {
        let total: u64 = items.iter().map(|(w, _)| u64::from(*w)).sum();
        let mut x = self.below(total);
        for (w, item) in items {
            if x < u64::from(*w) {
                return item;
            }
            x -= u64::from(*w);
        }
        &items[items.len() - 1].1
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// (weight per mille, code, ErrorInfo) across every category of the shared doc §7, plus unknown codes.
const GENERAL_CODES: &[(u32, (i64, &str))] = &[
    (300, (10023, "msg count exceeds limit,please retry later")),
    (40, (10006, "operation frequency limit")),
    (15, (60007, "REST API request frequency limit")),
    (5, (60018, "app request frequency limit")),
    (140, (80001, "the message contains sensitive words")),
    (40, (80004, "the image contains sensitive content")),
    (25, (80002, "the packet exceeds the length limit")),
    (10, (93000, "JSON data exceeds 8 KB")),
    (90, (10017, "the sender is muted in this group")),
    (60, (10007, "insufficient permission: not a group member")),
    (50, (10010, "the group does not exist or has been disbanded")),
    (10, (10015, "invalid group ID")),
    (5, (11000, "community groups are not enabled")),
    (15, (10004, "invalid parameter")),
    (5, (10053, "more than 30 @ mentions")),
    (5, (10019, "UserID does not exist")),
    (40, (10016, "the app's before-send callback refused the message")),
    (25, (80003, "the app's before-send callback failed or timed out")),
    (20, (10120, "custom refusal by the app's before-send callback")),
    (15, (10002, "internal server error, please retry")),
    (10, (90992, "internal server error")),
    (10, (99999, "undocumented error")),
    (5, (70001, "another undocumented error")),
];

const GROUP_TYPES: &[(u32, &str)] = &[
    (30, "Public"),
    (15, "Work"),
    (5, "Private"),
    (10, "Meeting"),
    (3, "ChatRoom"),
    (25, "AVChatRoom"),
    (2, "BChatRoom"),
    (10, "Community"),
];

const PLATFORMS: &[(u32, &str)] = &[
    (30, "Android"),
    (25, "iOS"),
    (5, "IOS"),
    (10, "Web"),
    (15, "RESTAPI"),
    (5, "Windows"),
    (4, "Mac"),
    (1, "macOS"),
    (3, "iPad"),
    (2, "Unknown"),
];

const TEXTS: &[&str] = &[
    "red packet",
    "666666",
    "主播好厉害！",
    "hello everyone 👋",
    "Buy now: limited offer at https://shop.example.com/p/123?ref=live",
    "送出了 嘉年华 x1",
    "He said \"see you tomorrow\" and left",
    "lol",
    "Can anyone help me with the homework due on Friday? I have been stuck on question 3 for two hours.",
    "今天的直播太精彩了，感谢大家的支持，我们下周同一时间再见！",
    "🎉🎉🎉",
    "ok",
    "line one\nline two\ttabbed",
    "Meeting moved to 15:30, room B2",
];

struct Group {
    id: String,
    kind: &'static str,
}

fn group_id(rng: &mut Rng, community: bool) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id = String::from(if community { "@TGS#_" } else { "@TGS#" });
    let len = if community { 11 } else { 9 };
    for _ in 0..len {
        id.push(ALPHABET[rng.below(32) as usize] as char);
    }
    id
}

fn groups(rng: &mut Rng, count: usize) -> (Vec<Group>, Vec<Group>) {
    // A few live-stream rooms over their rate limit produce most of a burst.
    let hot = (0..20).map(|_| Group { id: group_id(rng, false), kind: "AVChatRoom" }).collect();
    let all = (0..count)
        .map(|_| {
            let kind = *rng.weighted(GROUP_TYPES);
            Group { id: group_id(rng, kind == "Community"), kind }
        })
        .collect();
    (hot, all)
}

fn user(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("user_{}", rng.below(2_000_000)),
        1 => format!("{:x}", rng.next() & 0xffff_ffff_ffff),
        _ => format!("{}", 13_000_000_000 + rng.below(999_999_999)),
    }
}

fn uuid(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next(), rng.next())
}

fn msg_element(rng: &mut Rng, oversize: bool) -> String {
    if oversize {
        // A message over the 8 KB / 12 KB limits: the cause of 80002 and 93000.
        let mut text = String::new();
        while text.len() < 9000 + rng.below(3000) as usize {
            text.push_str(rng.pick::<&str>(TEXTS));
            text.push(' ');
        }
        return format!(r#"{{"MsgType":"TIMTextElem","MsgContent":{{"Text":{}}}}}"#, json_str(&text));
    }
    let kinds: &[(u32, u8)] = &[(60, b't'), (15, b'c'), (10, b'i'), (7, b'f'), (4, b's'), (2, b'l'), (2, b'v')];
    match rng.weighted(kinds) {
        b't' => format!(r#"{{"MsgType":"TIMTextElem","MsgContent":{{"Text":{}}}}}"#, json_str(rng.pick::<&str>(TEXTS))),
        b'c' => {
            let data = format!(
                r#"{{"type":"gift","giftId":{},"count":{},"anchor":"{}","combo":{}}}"#,
                rng.below(500),
                1 + rng.below(99),
                user(rng),
                rng.chance(0.5)
            );
            format!(
                r#"{{"MsgType":"TIMCustomElem","MsgContent":{{"Data":{},"Desc":"gift","Ext":"live","Sound":""}}}}"#,
                json_str(&data)
            )
        }
        b'i' => {
            let uuid = uuid(rng);
            let (w, h) = (480 + rng.below(3000), 480 + rng.below(3000));
            let infos: Vec<String> = [(1u64, 1u64), (2, 4), (3, 10)]
                .iter()
                .map(|(ty, div)| {
                    format!(
                        r#"{{"Type":{ty},"Size":{},"Width":{},"Height":{},"URL":"https://cos.example.com/img/{uuid}_{ty}.jpg"}}"#,
                        (w * h / 3) / div,
                        w / div,
                        h / div
                    )
                })
                .collect();
            format!(
                r#"{{"MsgType":"TIMImageElem","MsgContent":{{"UUID":"{uuid}","ImageFormat":{},"ImageInfoArray":[{}]}}}}"#,
                rng.pick(&[1, 2, 3, 255]),
                infos.join(",")
            )
        }
        b'f' => format!(
            r#"{{"MsgType":"TIMFaceElem","MsgContent":{{"Index":{},"Data":"face_{}"}}}}"#,
            rng.below(200),
            rng.below(200)
        ),
        b's' => format!(
            r#"{{"MsgType":"TIMSoundElem","MsgContent":{{"Url":"https://cos.example.com/snd/{0}.m4a","UUID":"{0}","Size":{1},"Second":{2},"Download_Flag":2}}}}"#,
            uuid(rng),
            2000 + rng.below(60_000),
            1 + rng.below(59)
        ),
        b'l' => format!(
            r#"{{"MsgType":"TIMLocationElem","MsgContent":{{"Desc":"Shenzhen, Nanshan","Latitude":22.{},"Longitude":113.{}}}}}"#,
            rng.below(999_999),
            rng.below(999_999)
        ),
        _ => format!(
            r#"{{"MsgType":"TIMVideoFileElem","MsgContent":{{"VideoUrl":"https://cos.example.com/v/{0}.mp4","VideoUUID":"{0}","VideoSize":{1},"VideoSecond":{2},"VideoFormat":"mp4","VideoDownloadFlag":2,"ThumbUrl":"https://cos.example.com/v/{0}.jpg","ThumbUUID":"{0}_t","ThumbSize":{3},"ThumbWidth":360,"ThumbHeight":640,"ThumbFormat":"JPG","ThumbDownloadFlag":2}}}}"#,
            uuid(rng),
            100_000 + rng.below(9_000_000),
            1 + rng.below(120),
            5000 + rng.below(50_000)
        ),
    }
}

/// One callback with two holes: `Random` and `EventTime`, filled per request.
struct Template {
    /// Query string without Sign/RequestTime, starting with `?`.
    query: String,
    /// Body up to and including `"Random":`.
    head: Vec<u8>,
    /// From after Random up to and including `"EventTime":` (and its opening quote when sent as a string).
    mid: Vec<u8>,
    /// The rest of the body.
    tail: Vec<u8>,
}

fn templates(opts: &Opts) -> Vec<Template> {
    let mut rng = Rng(opts.seed);
    let (hot, all) = groups(&mut rng, opts.groups.max(1));
    (0..opts.templates.max(1))
        .map(|_| {
            let burst = rng.chance(0.5);
            let group = if burst { rng.pick(&hot) } else { rng.pick(&all) };
            let (code, info) = if burst && rng.chance(0.85) {
                (10023, "msg count exceeds limit,please retry later")
            } else {
                *rng.weighted(GENERAL_CODES)
            };
            let oversize = code == 80002 || code == 93000;
            let elements = if oversize {
                1
            } else if rng.chance(0.05) {
                2 + rng.below(2)
            } else {
                1
            };
            let msg_body: Vec<String> = (0..elements).map(|i| msg_element(&mut rng, oversize && i == 0)).collect();
            let from = user(&mut rng);
            let operator = if rng.chance(0.9) { from.clone() } else { "administrator".to_owned() };
            let online_only = if group.kind == "AVChatRoom" { 0 } else { u64::from(rng.chance(0.1)) };

            let mut head = format!(
                r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"{}","Type":"{}","From_Account":{},"Operator_Account":{},"Random":"#,
                group.id,
                group.kind,
                json_str(&from),
                json_str(&operator)
            );
            if rng.chance(0.02) {
                // Some SDKs leave the sender out.
                head = head.replace(&format!(r#""From_Account":{},"#, json_str(&from)), "");
            }
            let mut mid = String::new();
            if rng.chance(0.95) {
                mid.push_str(&format!(r#","OnlineOnlyFlag":{online_only}"#));
            }
            mid.push_str(&format!(r#","MsgBody":[{}]"#, msg_body.join(",")));
            match rng.below(10) {
                0..=4 => mid.push_str(&format!(
                    r#","CloudCustomData":{}"#,
                    json_str(&format!(
                        r#"{{"level":{},"badge":"vip{}","trace":"{:x}"}}"#,
                        rng.below(60),
                        rng.below(9),
                        rng.next()
                    ))
                )),
                5 => mid.push_str(r#","CloudCustomData":"""#),
                _ => {}
            }
            mid.push_str(&format!(r#","ErrorCode":{code},"ErrorInfo":{}"#, json_str(info)));
            let quoted = rng.chance(0.5); // the international doc sends EventTime as a string
            mid.push_str(r#","EventTime":"#);
            let mut tail = String::new();
            if quoted {
                mid.push('"');
                tail.push('"');
            }
            if group.kind == "Community" && rng.chance(0.5) {
                tail.push_str(&format!(r#","TopicId":"{}@TOPIC#_{}""#, group.id, rng.below(1000)));
            }
            if rng.chance(0.2) {
                tail.push_str(&format!(r#","MsgSeq":{},"MsgTime":{}"#, rng.below(10_000_000), 1_700_000_000 + rng.below(1_000_000)));
            }
            tail.push('}');

            let platform = *rng.weighted(PLATFORMS);
            let client_ip = format!("203.0.113.{}", rng.below(254) + 1);
            let query = format!(
                "?SdkAppid={}&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP={client_ip}&OptPlatform={platform}",
                opts.sdk_app_id
            );
            Template { query, head: head.into_bytes(), mid: mid.into_bytes(), tail: tail.into_bytes() }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// HTTP/1.1 client

struct Shared {
    opts: Opts,
    templates: Vec<Template>,
    host: String,
    /// Load starts.
    t0: Instant,
    /// Measuring starts (end of warm-up).
    measure_from: Instant,
    /// Load ends.
    end: Instant,
    /// Next open-loop slot / requests issued.
    next: AtomicU64,
    random_base: u32,
}

#[derive(Default)]
struct Stats {
    /// Latencies of measured requests, nanoseconds.
    latencies: Vec<u64>,
    /// Open loop: how late the timer woke for on-time slots (nanoseconds, measured slots only).
    timer_late: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    measured: u64,
    sent: u64,
    bad_ack: u64,
    errors: u64,
    connects: u64,
    backlogged: u64,
    bytes_sent: u64,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: vec![0; 16 * 1024], filled: 0 })
    }

    /// Writes `request`, reads one response: (status, body is the exact OK ack, server wants to close).
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool, bool)> {
        self.stream.write_all(request).await?;
        let header_end = loop {
            if let Some(pos) = find(&self.buf[..self.filled], b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = &self.buf[..header_end];
        let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let mut content_length = None;
        let mut close = false;
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok());
                } else if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close") {
                    close = true;
                }
            }
        }
        let length = content_length.ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
        while self.filled < header_end + length {
            self.fill().await?;
        }
        let ok_ack = status == 200 && &self.buf[header_end..header_end + length] == OK_BODY;
        let consumed = header_end + length;
        self.buf.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
        Ok((status, ok_ack, close))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(std::io::Error::other("response too large"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.filled += n;
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Builds request number `n` from `template` into `out`.
fn build_request(
    shared: &Shared,
    template: &Template,
    n: u64,
    sign: Option<&(u64, String)>,
    body: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let random = shared.random_base.wrapping_add(n as u32);
    body.clear();
    body.extend_from_slice(&template.head);
    let _ = write!(body, "{random}");
    body.extend_from_slice(&template.mid);
    let _ = write!(body, "{}", now.as_millis());
    body.extend_from_slice(&template.tail);

    out.clear();
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(shared.opts.path.as_bytes());
    out.extend_from_slice(template.query.as_bytes());
    if let Some((request_time, sign)) = sign {
        let _ = write!(out, "&Sign={sign}&RequestTime={request_time}");
    }
    let _ = write!(
        out,
        " HTTP/1.1\r\nHost: {}\r\nUser-Agent: imcf-loadgen\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        shared.host,
        body.len()
    );
    out.extend_from_slice(body);
}

fn current_sign(token: Option<&str>, cache: &mut Option<(u64, String)>) {
    let Some(token) = token else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if cache.as_ref().is_none_or(|(t, _)| *t != now) {
        let sign = hex::encode(Sha256::new().chain_update(token.as_bytes()).chain_update(now.to_string()).finalize());
        *cache = Some((now, sign));
    }
}

async fn connection(shared: Arc<Shared>, id: usize) -> Stats {
    let opts = &shared.opts;
    let open_loop = opts.rate > 0.0;
    let mut stats = Stats::default();
    let mut rng = Rng(opts.seed ^ (id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xABCD);
    let mut sign = None;
    let (mut body, mut request) = (Vec::with_capacity(16 * 1024), Vec::with_capacity(16 * 1024));
    let mut conn: Option<Conn> = None;
    let mut connect_failures = 0u64;
    let slot_nanos = if open_loop { 1e9 / opts.rate } else { 0.0 };

    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.max_requests {
            break;
        }
        // When the request should go out, and whether it could not because every connection was busy.
        let (intended, fetched_late) = if open_loop {
            let intended = shared.t0 + Duration::from_nanos((n as f64 * slot_nanos) as u64);
            if intended >= shared.end {
                break;
            }
            let now = Instant::now();
            if intended > now {
                tokio::time::sleep_until(intended.into()).await;
            }
            (intended, now > intended)
        } else {
            let now = Instant::now();
            if now >= shared.end {
                break;
            }
            (now, false)
        };

        if conn.is_none() {
            match Conn::connect(opts.target).await {
                Ok(c) => {
                    stats.connects += 1;
                    conn = Some(c);
                }
                Err(err) => {
                    stats.errors += 1;
                    connect_failures += 1;
                    if connect_failures >= MAX_CONNECT_FAILURES {
                        eprintln!("connection {id}: giving up after {connect_failures} failed connects: {err}");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        current_sign(opts.token.as_deref(), &mut sign);
        let template = rng.pick(&shared.templates);
        build_request(&shared, template, n, sign.as_ref(), &mut body, &mut request);

        let sent_at = Instant::now();
        let c = conn.as_mut().expect("connected above");
        let result = tokio::time::timeout(EXCHANGE_TIMEOUT, c.exchange(&request)).await;
        let done = Instant::now();
        stats.sent += 1;
        stats.bytes_sent += request.len() as u64;
        match result {
            Ok(Ok((status, ok_ack, close))) => {
                if close {
                    conn = None;
                }
                let measured = if open_loop {
                    intended >= shared.measure_from
                } else {
                    sent_at >= shared.measure_from && done <= shared.end
                };
                if measured {
                    stats.measured += 1;
                    *stats.statuses.entry(status).or_default() += 1;
                    if status == 200 && !ok_ack {
                        stats.bad_ack += 1;
                    }
                    let from = if fetched_late {
                        stats.backlogged += 1;
                        intended
                    } else {
                        if open_loop {
                            stats.timer_late.push(sent_at.saturating_duration_since(intended).as_nanos() as u64);
                        }
                        sent_at
                    };
                    stats.latencies.push(done.saturating_duration_since(from).as_nanos() as u64);
                }
            }
            Ok(Err(_)) | Err(_) => {
                stats.errors += 1;
                conn = None;
            }
        }
    }
    stats
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() {
    let opts = Opts::parse();
    if !opts.target.ip().is_loopback() {
        eprintln!("--target must be a loopback address (127.0.0.0/8 or ::1), got {}", opts.target);
        std::process::exit(2);
    }
    if opts.connections == 0 || opts.duration <= 0.0 || opts.duration > 3600.0 || opts.warmup < 0.0 {
        eprintln!("--connections must be >= 1, --duration in (0, 3600], --warmup >= 0");
        std::process::exit(2);
    }
    let templates = templates(&opts);
    let random_base = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let host = opts.target.to_string();
    let mut shared = Shared {
        opts: opts.clone(),
        templates,
        host,
        t0: Instant::now(),
        measure_from: Instant::now(),
        end: Instant::now(),
        next: AtomicU64::new(0),
        random_base,
    };

    if opts.print_example {
        let mut sign = None;
        current_sign(opts.token.as_deref(), &mut sign);
        let (mut body, mut request) = (Vec::new(), Vec::new());
        build_request(&shared, &shared.templates[0], 0, sign.as_ref(), &mut body, &mut request);
        let sizes: Vec<usize> =
            shared.templates.iter().map(|t| t.head.len() + t.mid.len() + t.tail.len() + 23).collect();
        eprintln!("{}", String::from_utf8_lossy(&request));
        eprintln!(
            "\n{} templates, body bytes: mean {}, max {}",
            sizes.len(),
            sizes.iter().sum::<usize>() / sizes.len(),
            sizes.iter().max().unwrap_or(&0)
        );
        return;
    }

    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build()
    }
    .expect("tokio runtime");

    let cpu_before = cpu_seconds();
    let t0 = Instant::now();
    shared.t0 = t0;
    shared.measure_from = t0 + Duration::from_secs_f64(opts.warmup);
    shared.end = shared.measure_from + Duration::from_secs_f64(opts.duration);
    let shared = Arc::new(shared);
    let all: Vec<Stats> = runtime.block_on(async {
        let tasks: Vec<_> = (0..opts.connections).map(|id| tokio::spawn(connection(shared.clone(), id))).collect();
        let mut all = Vec::with_capacity(tasks.len());
        for task in tasks {
            all.push(task.await.expect("connection task"));
        }
        all
    });
    let finished = Instant::now();
    let cpu = cpu_seconds() - cpu_before;

    let mut total = Stats::default();
    for s in all {
        total.latencies.extend(s.latencies);
        total.timer_late.extend(s.timer_late);
        for (k, v) in s.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        total.measured += s.measured;
        total.sent += s.sent;
        total.bad_ack += s.bad_ack;
        total.errors += s.errors;
        total.connects += s.connects;
        total.backlogged += s.backlogged;
        total.bytes_sent += s.bytes_sent;
    }
    total.latencies.sort_unstable();
    total.timer_late.sort_unstable();
    // The measured window: warm-up end to load end (or to the last answer if max-requests ended it early).
    let window_end = if finished < shared.end { finished } else { shared.end };
    let window = window_end.saturating_duration_since(shared.measure_from).as_secs_f64().max(1e-9);
    let ok = total.statuses.get(&200).copied().unwrap_or(0);
    let non_ok = total.measured - ok;
    let lat = &total.latencies;
    let mean = if lat.is_empty() { f64::NAN } else { lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e6 };
    let result = serde_json::json!({
        "label": opts.label,
        "mode": if opts.rate > 0.0 { "open" } else { "closed" },
        "target": opts.target.to_string(),
        "connections": opts.connections,
        "rate": opts.rate,
        "window_s": window,
        "sent_total": total.sent,
        "measured": total.measured,
        "ok": ok,
        "non_ok": non_ok,
        "bad_ack": total.bad_ack,
        "errors": total.errors,
        "connects": total.connects,
        "statuses": total.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "throughput": total.measured as f64 / window,
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "p999_ms": percentile(lat, 0.999),
        "max_ms": percentile(lat, 1.0),
        "mean_ms": mean,
        "backlogged": total.backlogged,
        "timer_late_p99_ms": percentile(&total.timer_late, 0.99),
        "bytes_sent": total.bytes_sent,
        "mean_request_bytes": total.bytes_sent.checked_div(total.sent).unwrap_or(0),
        "loadgen_cpu_s": cpu,
    });
    eprintln!(
        "{} [{} {}c{}]: {:.0} req/s over {:.1} s, ok {} non-ok {} errors {} | p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms | generator cpu {:.1} s",
        opts.label,
        if opts.rate > 0.0 { "open" } else { "closed" },
        opts.connections,
        if opts.rate > 0.0 { format!(" @{}/s", opts.rate) } else { String::new() },
        total.measured as f64 / window,
        window,
        ok,
        non_ok,
        total.errors,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
        percentile(lat, 1.0),
        cpu
    );
    println!("{result}");
}
