//! Black-box tests of the hardened edge (issue 4): hostile and malformed input, slow and idle clients,
//! connection limits, per-app tokens and rotation, replays, the clock-skew window, the source allowlist,
//! routing of other commands and HTTP/2. Everything is observed from outside: bytes on the wire,
//! records in the topics, numbers in /metrics, lines in the log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::conn::{self, Closed};
use common::http::{self, Reply};
use common::kafka::Record;
use common::metrics::{self, Metrics};
use common::tencent::{
    event_id, format_rfc3339_ms, now_ms, now_secs, parse_rfc3339_ms, query, sign, sign_params_at, top_level_keys,
    APP_ID, DOC_SAMPLE, EXCEPTION, OK_BODY, TOKEN,
};
use common::{Broker, Checks, Forwarder};

const TOPIC: &str = "im.group.send-msg-exception";
const DEAD_LETTER_TOPIC: &str = "im.group.send-msg-exception.dead-letter";
const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);
const SCHEMA_CALLBACK: &str = "tencent.im.callback/v1";

/// A broker with both default topics and a forwarder on it with `extra` flags.
fn setup(extra: &[&str]) -> (Broker, Forwarder) {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let forwarder = Forwarder::for_broker(&broker, extra);
    (broker, forwarder)
}

/// Records a failure unless `reply` is the exact accepted answer.
fn check_ok(checks: &mut Checks, case: &str, reply: &Reply) {
    checks.eq(&format!("{case}: answer"), (reply.status, reply.text()), (200, String::from_utf8_lossy(OK_BODY).into()));
}

/// Records a failure unless `reply` is `status` with `{"ActionStatus":"FAIL","ErrorCode":code,..}` and an
/// ErrorInfo naming each of `names`.
fn check_refusal(checks: &mut Checks, case: &str, reply: &Reply, status: u16, code: i64, names: &[&str]) {
    checks.eq(&format!("{case}: HTTP status"), reply.status, status);
    let Some(body) = reply.json() else {
        checks.check(false, || format!("{case}: answer is not JSON: {:?}", reply.text()));
        return;
    };
    let keys: BTreeSet<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    checks.eq(&format!("{case}: answer fields"), keys, BTreeSet::from(["ActionStatus", "ErrorCode", "ErrorInfo"]));
    checks.eq(&format!("{case}: ActionStatus"), body["ActionStatus"].as_str(), Some("FAIL"));
    checks.eq(&format!("{case}: ErrorCode"), body["ErrorCode"].as_i64(), Some(code));
    let info = body["ErrorInfo"].as_str().unwrap_or_default();
    checks.check(!info.is_empty(), || format!("{case}: empty ErrorInfo"));
    for name in names {
        checks.check(info.contains(name), || format!("{case}: ErrorInfo {info:?} does not name {name:?}"));
    }
}

/// POST through a raw socket (Connection: close) with an exact Content-Type (or none), `extra` header
/// lines and a Content-Length.
fn raw_post(fwd: &Forwarder, path_query: &str, content_type: Option<&str>, extra: &str, body: &[u8]) -> Reply {
    let ct = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path_query} HTTP/1.1\r\nHost: {}\r\n{ct}{extra}Content-Length: {}\r\n",
        fwd.callback_addr,
        body.len()
    );
    http::raw_request(&fwd.callback_addr, &head, body)
}

/// An exception callback body for `group`, with `more` (`,"Field":value...`) appended to its fields.
fn exception_body(group: &str, more: &str) -> Vec<u8> {
    format!(r#"{{"CallbackCommand":"{EXCEPTION}","GroupId":"{group}","Type":"Public","ErrorCode":10023{more}}}"#)
        .into_bytes()
}

/// The value of `imcf_callbacks_total{outcome}` (0 when not printed).
fn outcome(m: &Metrics, outcome: &str) -> f64 {
    m.get(&format!("imcf_callbacks_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
}

/// Records a failure for every `imcf_callbacks_total` series that differs from `expected` (absent = 0).
fn check_outcomes(checks: &mut Checks, m: &Metrics, expected: &BTreeMap<&str, u32>) {
    for (name, n) in expected {
        checks.eq(&format!("imcf_callbacks_total{{outcome=\"{name}\"}}"), outcome(m, name), f64::from(*n));
    }
    for (key, value) in m.series("imcf_callbacks_total") {
        let listed = expected.keys().any(|o| key == format!("imcf_callbacks_total{{outcome=\"{o}\"}}"));
        checks.check(listed || value == 0.0, || format!("{key} = {value}, expected 0"));
    }
}

/// Event ids of `records`, by their `event_id` header, with how often each occurs.
fn id_counts(records: &[Record]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.header("event_id").unwrap_or_default()).or_default() += 1;
    }
    counts
}

/// Checks the process still serves: /healthz answers 200 "ok; kafka: ..." and a fresh valid callback (group
/// `@TGS#probe-{n}`) is accepted. Returns the probe's event id.
fn check_healthy(checks: &mut Checks, fwd: &Forwarder, after: &str, n: usize) -> String {
    let health = http::try_get(&fwd.admin_url("/healthz"));
    checks.check(health.as_ref().is_ok_and(|r| r.status == 200 && r.text().starts_with("ok; kafka: ")), || {
        format!("after {after}: /healthz answered {health:?}")
    });
    let body = exception_body(&format!("@TGS#probe-{n}"), "");
    let reply =
        raw_post(fwd, &format!("/?{}", query(APP_ID, EXCEPTION, Some(TOKEN))), Some("application/json"), "", &body);
    check_ok(checks, &format!("valid callback after {after}"), &reply);
    event_id(APP_ID, &body)
}

/// Sends a POST whose body (10 MB, or a never-ending chunked stream) is written from another thread,
/// and reads the answer while the body is still being written. Returns the answer (or what went
/// wrong) and how long it took from the end of the head.
fn post_while_writing(
    fwd: &Forwarder,
    path_query: &str,
    framing: &str,
    body: BodyFeed,
) -> (Result<Reply, String>, Duration) {
    let addr = &fwd.callback_addr;
    let mut stream = conn::connect(addr, Duration::from_secs(6));
    stream.write_all(conn::post_head(addr, path_query, framing).as_bytes()).expect("write head");
    let started = Instant::now();
    let writer = match body {
        BodyFeed::Bytes(data) => conn::write_in_background(&stream, data),
        BodyFeed::Drip => conn::drip_chunks(&stream, Duration::from_millis(100), started + Duration::from_secs(6)),
    };
    let reply = http::read_reply(&mut stream);
    let took = started.elapsed();
    // Unblocks the writer thread if the server stopped reading without closing.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    (reply, took)
}

/// How [`post_while_writing`] feeds the body.
enum BodyFeed {
    /// These bytes, as fast as the server takes them.
    Bytes(Vec<u8>),
    /// One-byte chunks every 100 ms, never the last chunk.
    Drip,
}

/// `data` in chunked transfer coding (64 KiB chunks and the last chunk).
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 16);
    for piece in data.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The raw text of top-level field `name` in the JSON object `json` (exactly as it appears).
fn raw_field(json: &[u8], name: &str) -> Option<String> {
    let map: BTreeMap<String, Box<serde_json::value::RawValue>> = serde_json::from_slice(json).ok()?;
    map.get(name).map(|v| v.get().to_string())
}

#[test]
fn harness_h2_status_decoding() {
    // Indexed 200, literal 401 plain, literal 503 Huffman-coded (RFC 7541 appendix B).
    assert_eq!(conn::hpack_status(&[0x88]), Some(200));
    assert_eq!(conn::hpack_status(&[0x08, 0x03, b'4', b'0', b'1']), Some(401));
    assert_eq!(conn::hpack_status(&[0x48, 0x83, 0x6c, 0x0c, 0xff]), Some(503));
    assert_eq!(conn::hpack_status(&[0x18, 0x82, 0x68, 0x01]), Some(401));
}

/// One malformed or hostile request of the bad-input suite.
struct Bad {
    name: &'static str,
    query: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: i64,
    outcome: &'static str,
    names: &'static [&'static str],
    dead_lettered: bool,
}

const INVALID_JSON: (u16, i64, &str) = (400, 40010, "invalid_json");
const DUPLICATE_FIELD: (u16, i64, &str) = (400, 40011, "duplicate_field");
const INVALID_FIELD: (u16, i64, &str) = (400, 40013, "invalid_field");
const BAD_SIGN: (u16, i64, &str) = (401, 40102, "bad_sign");

#[test]
fn bad_inputs_get_their_answer_publish_nothing_and_leave_the_process_healthy() {
    let (broker, fwd) = setup(&["--callback-token", TOKEN, "--body-read-timeout", "1"]);
    let mut checks = Checks::default();
    let q = || query(APP_ID, EXCEPTION, Some(TOKEN));
    let unsigned = format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json&ClientIP=10.0.0.1");
    let signed_with = |sign_value: &str| format!("{unsigned}&Sign={sign_value}&RequestTime={}", now_secs());
    let doc = DOC_SAMPLE.as_bytes().to_vec();
    let bad = |name, query: String, body: Vec<u8>, (status, code, outcome), names, dead_lettered| Bad {
        name,
        query,
        content_type: Some("application/json"),
        body,
        status,
        code,
        outcome,
        names,
        dead_lettered,
    };
    let nested = |open: &str, close: &str| format!(r#","Deep":{}1{}"#, open.repeat(10_000), close.repeat(10_000));
    let cases = vec![
        bad(
            "arrays nested 10,000 deep",
            q(),
            exception_body("@TGS#deep-a", &nested("[", "]")),
            INVALID_JSON,
            &[],
            true,
        ),
        bad(
            "objects nested 10,000 deep",
            q(),
            exception_body("@TGS#deep-o", &nested(r#"{"a":"#, "}")),
            INVALID_JSON,
            &[],
            true,
        ),
        bad(
            "ErrorCode 2^64",
            q(),
            exception_body("@TGS#n1", "").replace_code("18446744073709551616"),
            INVALID_FIELD,
            &["ErrorCode"],
            true,
        ),
        bad(
            "ErrorCode -2^63-1",
            q(),
            exception_body("@TGS#n2", "").replace_code("-9223372036854775809"),
            INVALID_FIELD,
            &["ErrorCode"],
            true,
        ),
        bad(
            "ErrorCode 10^30 as a string",
            q(),
            exception_body("@TGS#n3", "").replace_code(r#""1000000000000000000000000000000""#),
            INVALID_FIELD,
            &["ErrorCode"],
            true,
        ),
        bad(
            "Random 2^64",
            q(),
            exception_body("@TGS#n4", r#","Random":18446744073709551616"#),
            INVALID_FIELD,
            &["Random"],
            true,
        ),
        bad(
            "EventTime 10^30",
            q(),
            exception_body("@TGS#n5", r#","EventTime":1000000000000000000000000000000"#),
            INVALID_FIELD,
            &["EventTime"],
            true,
        ),
        bad(
            "invalid UTF-8 in GroupId",
            q(),
            exception_body("@TGS#\u{7f}", "").replace_byte(0x7f, &[0xff, 0xfe]),
            INVALID_JSON,
            &[],
            true,
        ),
        bad(
            "invalid UTF-8 in an unknown field",
            q(),
            exception_body("@TGS#u2", ",\"Note\":\"\u{7f}\"").replace_byte(0x7f, &[0xc3, 0x28]),
            INVALID_JSON,
            &[],
            true,
        ),
        bad(
            "ErrorCode twice",
            q(),
            exception_body("@TGS#d1", r#","ErrorCode":80001"#),
            DUPLICATE_FIELD,
            &["ErrorCode"],
            true,
        ),
        bad(
            "an unknown field twice",
            q(),
            exception_body("@TGS#d2", r#","Extra":1,"Extra":2"#),
            DUPLICATE_FIELD,
            &["Extra"],
            true,
        ),
        bad(
            "a raw NUL byte in a string",
            q(),
            exception_body("@TGS#\u{7f}nul", "").replace_byte(0x7f, &[0]),
            INVALID_JSON,
            &[],
            true,
        ),
        bad(
            "a raw NUL byte between tokens",
            q(),
            exception_body("@TGS#nul2", ",\u{7f}\"X\":1").replace_byte(0x7f, &[0]),
            INVALID_JSON,
            &[],
            true,
        ),
        Bad {
            content_type: Some("application/xml"),
            ..bad(
                "contenttype=xml",
                q().replace("contenttype=json", "contenttype=xml"),
                b"<xml><GroupId>g</GroupId></xml>".to_vec(),
                (415, 41500, "unsupported_content_type"),
                &["contenttype"],
                true,
            )
        },
        bad(
            "SdkAppid twice",
            format!("{}&SdkAppid={APP_ID}", q()),
            doc.clone(),
            (400, 40002, "repeated_parameter"),
            &["SdkAppid"],
            false,
        ),
        bad(
            "SdkAppid empty",
            q().replace(&format!("SdkAppid={APP_ID}"), "SdkAppid="),
            doc.clone(),
            (403, 40301, "missing_sdk_app_id"),
            &["SdkAppid"],
            false,
        ),
        bad("Sign of 63 hex digits", signed_with(&"a".repeat(63)), doc.clone(), BAD_SIGN, &["Sign"], false),
        bad(
            "Sign of 65 hex digits",
            signed_with(&format!("{}0", sign(TOKEN, &now_secs().to_string()))),
            doc.clone(),
            BAD_SIGN,
            &["Sign"],
            false,
        ),
        bad(
            "Sign of 128 hex digits",
            signed_with(&sign(TOKEN, &now_secs().to_string()).repeat(2)),
            doc.clone(),
            BAD_SIGN,
            &["Sign"],
            false,
        ),
        bad("empty Sign", signed_with(""), doc.clone(), (401, 40101, "missing_sign"), &["Sign"], false),
    ];

    let mut outcomes: BTreeMap<&str, u32> = BTreeMap::new();
    let mut accepted_ids = BTreeSet::new();
    let mut probes = 0;
    for c in &cases {
        let reply = raw_post(&fwd, &format!("/?{}", c.query), c.content_type, "", &c.body);
        check_refusal(&mut checks, c.name, &reply, c.status, c.code, c.names);
        *outcomes.entry(c.outcome).or_default() += 1;
        probes += 1;
        accepted_ids.insert(check_healthy(&mut checks, &fwd, c.name, probes));
    }

    // The admin endpoints are not on the callback listener.
    for path in ["/metrics", "/healthz"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", fwd.callback_addr);
        let reply = http::raw_request(&fwd.callback_addr, &head, b"");
        check_refusal(&mut checks, &format!("GET {path} on the callback listener"), &reply, 404, 40400, &[]);
        *outcomes.entry("not_found").or_default() += 1;
    }

    // Accepted by design: NUL escaped in strings, huge numbers in unknown fields (kept verbatim), any
    // Content-Type header (only the contenttype parameter is checked), a Sign in uppercase hex.
    let nul_body = exception_body("@TGS#nul-escaped", r#","From_Account":"a\u0000b","Note":"x\u0000y""#);
    let big_body = exception_body(
        "@TGS#big-unknown",
        // Beyond i64/u64 but within f64 (beyond f64, `1e400`, is refused: see values_no_consumer_can_hold_...).
        r#","Big":123456789012345678901234567890,"Neg":-99999999999999999999,"Exp":1e300"#,
    );
    let xml_header_body = exception_body("@TGS#xml-header", "");
    let no_header_body = exception_body("@TGS#no-header", "");
    let upper_body = exception_body("@TGS#upper-sign", "");
    let rt = now_secs().to_string();
    let upper_query = format!("{unsigned}&Sign={}&RequestTime={rt}", sign(TOKEN, &rt).to_uppercase());
    let accepted: [(&str, String, Option<&str>, &[u8]); 5] = [
        ("\\u0000 inside strings", q(), Some("application/json"), &nul_body),
        ("numbers beyond i64/u64 in unknown fields", q(), Some("application/json"), &big_body),
        ("Content-Type text/xml with a JSON body", q(), Some("text/xml"), &xml_header_body),
        ("no Content-Type header", q(), None, &no_header_body),
        ("uppercase hex Sign", upper_query, Some("application/json"), &upper_body),
    ];
    for (name, query, content_type, body) in &accepted {
        let reply = raw_post(&fwd, &format!("/?{query}"), *content_type, "", body);
        check_ok(&mut checks, name, &reply);
        accepted_ids.insert(event_id(APP_ID, body));
        *outcomes.entry("accepted").or_default() += 1;
        probes += 1;
        accepted_ids.insert(check_healthy(&mut checks, &fwd, name, probes));
    }

    // 10 MB bodies: refused with 413 at once, whether announced by Content-Length or chunked.
    let ten_mb = vec![b' '; 10 * 1024 * 1024];
    for (name, framing, data) in [
        ("10 MB body with Content-Length", format!("Content-Length: {}\r\n", ten_mb.len()), ten_mb.clone()),
        ("10 MB chunked body", "Transfer-Encoding: chunked\r\n".to_string(), chunked(&ten_mb)),
    ] {
        let (reply, took) = post_while_writing(&fwd, &format!("/?{}", q()), &framing, BodyFeed::Bytes(data));
        match reply {
            Ok(reply) => check_refusal(&mut checks, name, &reply, 413, 41300, &[]),
            Err(e) => checks.check(false, || format!("{name}: no answer: {e}")),
        }
        checks.check(took < Duration::from_secs(5), || format!("{name}: answered after {took:?}, expected < 5 s"));
        eprintln!("{name}: answered after {took:?}");
        *outcomes.entry("body_too_large").or_default() += 1;
        probes += 1;
        accepted_ids.insert(check_healthy(&mut checks, &fwd, name, probes));
    }

    // A chunked body that never ends: 408 once --body-read-timeout (1 s) has passed.
    let name = "a chunked body that never ends";
    let (reply, took) =
        post_while_writing(&fwd, &format!("/?{}", q()), "Transfer-Encoding: chunked\r\n", BodyFeed::Drip);
    match reply {
        Ok(reply) => check_refusal(&mut checks, name, &reply, 408, 40800, &[]),
        Err(e) => checks.check(false, || format!("{name}: no answer: {e}")),
    }
    // The drip goes on for 6 s: an answer within 5 s came while the body was still arriving (the default
    // --body-read-timeout would wait 10 s).
    checks.check(took >= Duration::from_millis(900) && took < Duration::from_secs(5), || {
        format!("{name}: answered after {took:?}, expected 1 to 5 s")
    });
    eprintln!("{name}: answered after {took:?}");
    *outcomes.entry("body_timeout").or_default() += 1;
    probes += 1;
    accepted_ids.insert(check_healthy(&mut checks, &fwd, name, probes));
    *outcomes.entry("accepted").or_default() += probes as u32;

    let dead: Vec<&Bad> = cases.iter().filter(|c| c.dead_lettered).collect();
    let m = metrics::scrape_until(&fwd.admin_addr, "imcf_kafka_delivered_total", Duration::from_secs(15), |v| {
        v >= (accepted_ids.len() + dead.len()) as f64
    });
    check_outcomes(&mut checks, &m, &outcomes);
    checks.eq("imcf_dead_letters_total", m.get("imcf_dead_letters_total"), Some(dead.len() as f64));

    // The event topic holds exactly the accepted callbacks, once each.
    let events = broker.consume(TOPIC, accepted_ids.len(), CONSUME_TIMEOUT);
    let expected: BTreeMap<String, usize> = accepted_ids.iter().map(|id| (id.clone(), 1)).collect();
    checks.eq("event ids in the event topic", id_counts(&events), expected);
    let by_id: BTreeMap<String, &Record> =
        events.iter().map(|r| (r.header("event_id").unwrap_or_default(), r)).collect();
    if let Some(r) = by_id.get(&event_id(APP_ID, &nul_body)) {
        let event = r.json();
        checks.eq("\\u0000: from_account", event["from_account"].as_str(), Some("a\u{0}b"));
        let extra = raw_field(r.value_bytes(), "extra").unwrap_or_default();
        checks.eq("\\u0000: extra.Note verbatim", raw_field(extra.as_bytes(), "Note"), Some(r#""x\u0000y""#.into()));
    }
    if let Some(r) = by_id.get(&event_id(APP_ID, &big_body)) {
        let extra = raw_field(r.value_bytes(), "extra").unwrap_or_default();
        for (field, text) in
            [("Big", "123456789012345678901234567890"), ("Neg", "-99999999999999999999"), ("Exp", "1e300")]
        {
            checks.eq(
                &format!("big numbers: extra.{field} verbatim"),
                raw_field(extra.as_bytes(), field),
                Some(text.into()),
            );
        }
    }

    // The dead-letter topic holds the raw bytes of the authentic but unusable bodies, once each.
    let dead_letters = broker.consume(DEAD_LETTER_TOPIC, dead.len(), CONSUME_TIMEOUT);
    let expected: BTreeMap<String, usize> = dead.iter().map(|c| (event_id(APP_ID, &c.body), 1)).collect();
    checks.eq("event ids in the dead-letter topic", id_counts(&dead_letters), expected);
    for c in &dead {
        let id = event_id(APP_ID, &c.body);
        if let Some(r) = dead_letters.iter().find(|r| r.header("event_id").as_deref() == Some(id.as_str())) {
            checks.check(r.value.as_deref() == Some(c.body.as_slice()), || {
                format!("{}: dead letter is not the raw body", c.name)
            });
            checks.eq(&format!("{}: reason_code", c.name), r.header("reason_code").as_deref(), Some(c.outcome));
        }
    }
    checks.finish();
}

/// Small byte-level edits of test bodies.
trait BodyEdit {
    /// Replaces `"ErrorCode":10023` with `"ErrorCode":{code}`.
    fn replace_code(self, code: &str) -> Vec<u8>;
    /// Replaces every byte `marker` with `with`.
    fn replace_byte(self, marker: u8, with: &[u8]) -> Vec<u8>;
}

impl BodyEdit for Vec<u8> {
    fn replace_code(self, code: &str) -> Vec<u8> {
        String::from_utf8(self)
            .expect("UTF-8 body")
            .replace(r#""ErrorCode":10023"#, &format!(r#""ErrorCode":{code}"#))
            .into_bytes()
    }

    fn replace_byte(self, marker: u8, with: &[u8]) -> Vec<u8> {
        self.into_iter().flat_map(|b| if b == marker { with.to_vec() } else { vec![b] }).collect()
    }
}

/// `/?{query}` of an unsigned exception callback of app APP_ID.
fn unsigned_path() -> String {
    format!("/?{}", query(APP_ID, EXCEPTION, None))
}

#[test]
fn slow_loris_clients_are_cut_off_and_do_not_hold_the_service() {
    let (_broker, fwd) = setup(&["--header-read-timeout", "1", "--max-connections", "4"]);
    let addr = fwd.callback_addr.clone();
    let started = Instant::now();
    // Short of the default 10 s header timeout: were --header-read-timeout ignored, no slow connection would
    // be cut off before the slow clients stop.
    let until = started + Duration::from_secs(8);
    // A request line and headers that never end, one byte every 300 ms, from as many clients as the
    // service serves at once; each reconnects when it is cut off.
    let prefix = format!("POST {} HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}", unsigned_path(), "s".repeat(100));
    let slow: Vec<_> = (0..4)
        .map(|_| conn::slow_loris(&addr, prefix.clone().into_bytes(), Duration::from_millis(300), until))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let mut checks = Checks::default();
    // Served while the slow clients hold every slot, and again later while they keep reconnecting.
    for (i, at) in [Duration::from_millis(300), Duration::from_millis(2500)].into_iter().enumerate() {
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let sent = Instant::now();
        let reply = raw_post(
            &fwd,
            &unsigned_path(),
            Some("application/json"),
            "",
            &exception_body(&format!("@TGS#normal-{i}"), ""),
        );
        let took = sent.elapsed();
        check_ok(&mut checks, &format!("normal client {i}"), &reply);
        checks.check(took < Duration::from_secs(6), || {
            format!("normal client {i} served after {took:?}, expected < 6 s")
        });
    }

    let conns: Vec<Vec<conn::SlowConn>> = slow.into_iter().map(|t| t.join().expect("slow client thread")).collect();
    for (i, client) in conns.iter().enumerate() {
        // The first connection of each was accepted at once: cut off by the 1 s header timeout.
        let first = &client[0];
        checks.check(
            first.lifetime.is_some_and(|d| d >= Duration::from_millis(800) && d <= Duration::from_secs(6)),
            || {
                format!(
                    "slow client {i}: first connection lived {:?} (sent {} bytes), expected 1 to 6 s",
                    first.lifetime, first.sent
                )
            },
        );
        checks.check(client.len() >= 2, || format!("slow client {i}: never reconnected: {client:?}"));
        for c in client.iter().filter(|c| c.lifetime.is_some()) {
            checks.check(c.sent < prefix.len(), || format!("slow client {i}: sent the whole prefix: {c:?}"));
        }
    }
    eprintln!(
        "slow-loris connections: {:?}",
        conns.iter().map(|c| c.iter().map(|c| c.lifetime).collect::<Vec<_>>()).collect::<Vec<_>>()
    );
    checks.finish();
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_keep_alive_timeout() {
    let (_broker, fwd) = setup(&["--keep-alive-timeout", "1"]);
    let addr = fwd.callback_addr.clone();
    let mut checks = Checks::default();
    let mut stream = conn::connect(&addr, Duration::from_secs(5));
    // Two requests on one connection: it is kept alive between them.
    for i in 0..2 {
        match conn::keep_alive_post(&mut stream, &addr, &unsigned_path(), &exception_body(&format!("@TGS#ka-{i}"), ""))
        {
            Ok(reply) => check_ok(&mut checks, &format!("request {i} on one connection"), &reply),
            Err(e) => checks.check(false, || format!("request {i} on one connection: {e}")),
        }
    }
    // Bounds far below the default keep-alive timeout (75 s), roomy for a loaded machine.
    let Closed { after, received } = conn::wait_closed(&mut stream, Duration::from_secs(10));
    checks.check(after.is_some_and(|d| d >= Duration::from_millis(700) && d <= Duration::from_secs(8)), || {
        format!("idle connection closed after {after:?}, expected about 1 s (at most 8 s)")
    });
    checks.eq("bytes sent on the idle connection", received, Vec::new());
    checks.finish();
}

#[test]
fn keep_alive_timeout_longer_than_the_header_timeout_keeps_idle_connections_open() {
    // README: headers must arrive within --header-read-timeout; idle keep-alive connections close after
    // --keep-alive-timeout. An idle connection between requests is not a slow request.
    let (_broker, fwd) = setup(&["--header-read-timeout", "1", "--keep-alive-timeout", "3"]);
    let addr = fwd.callback_addr.clone();
    let mut stream = conn::connect(&addr, Duration::from_secs(5));
    let reply = conn::keep_alive_post(&mut stream, &addr, &unsigned_path(), &exception_body("@TGS#ka-long", ""));
    assert_eq!(reply.map(|r| r.status), Ok(200), "first request");
    let started = Instant::now();
    let Closed { after, .. } = conn::wait_closed(&mut stream, Duration::from_millis(2000));
    assert_eq!(after, None, "idle connection closed {after:?} after its request, before the 3 s keep-alive timeout");
    let Closed { after, .. } = conn::wait_closed(&mut stream, Duration::from_secs(3));
    assert!(after.is_some(), "idle connection still open {:?} after its request", started.elapsed());
}

#[test]
fn max_connections_makes_further_clients_wait_until_a_slot_frees() {
    let (_broker, fwd) =
        setup(&["--max-connections", "2", "--keep-alive-timeout", "30", "--header-read-timeout", "30"]);
    let addr = fwd.callback_addr.clone();
    let mut checks = Checks::default();
    // Two connections, idle but open after one request each, take both slots.
    let mut idle: Vec<_> = (0..2)
        .map(|i| {
            let mut stream = conn::connect(&addr, Duration::from_secs(5));
            let reply = conn::keep_alive_post(
                &mut stream,
                &addr,
                &unsigned_path(),
                &exception_body(&format!("@TGS#slot-{i}"), ""),
            );
            checks.eq(&format!("idle connection {i}: first request"), reply.map(|r| r.status), Ok(200));
            stream
        })
        .collect();

    let mut third = conn::connect(&addr, Duration::from_millis(1500));
    let body = exception_body("@TGS#third", "");
    let framing = format!("Content-Length: {}\r\nConnection: close\r\n", body.len());
    let mut request = conn::post_head(&addr, &unsigned_path(), &framing).into_bytes();
    request.extend_from_slice(&body);
    third.write_all(&request).expect("third client: write");
    let waited = http::read_reply(&mut third);
    checks.check(waited.is_err(), || format!("third client served while both slots are taken: {waited:?}"));
    // The admin listener has its own limits.
    checks.eq("/healthz meanwhile", http::try_get(&fwd.admin_url("/healthz")).map(|r| r.status).ok(), Some(200));

    let freed = Instant::now();
    drop(idle.remove(0));
    // Far below the 30 s keep-alive and header timeouts that would free a slot otherwise.
    third.set_read_timeout(Some(Duration::from_secs(6))).expect("read timeout");
    match http::read_reply(&mut third) {
        Ok(reply) => check_ok(&mut checks, "third client, once a slot is free", &reply),
        Err(e) => checks.check(false, || format!("third client not served within 6 s of a slot freeing: {e}")),
    }
    let took = freed.elapsed();
    checks.check(took < Duration::from_secs(5), || format!("third client served {took:?} after a slot freed"));
    drop(idle);
    checks.finish();
}

/// `/?{query}` of a `command` callback from `app`, signed with `token` when given.
fn path_for(app: &str, command: &str, token: Option<&str>) -> String {
    format!("/?{}", query(app, command, token))
}

#[test]
fn per_app_tokens_rotation_and_token_files_never_show_the_tokens() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let dir = tempfile::tempdir().expect("tempdir");
    let apps_file = dir.path().join("apps");
    std::fs::write(
        &apps_file,
        "# app:token, one a line\n1400000010:secret-file-10  \n\n   # 1400000012:secret-commented-12\n1400000011\n",
    )
    .expect("write apps file");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "secret-global-old\nsecret-global-new\n").expect("write token file");
    // The most verbose log level: tokens must not appear at any level.
    let trace = [("IMCF_LOG", "trace")];
    let by_flag = Forwarder::start_with_env(
        &[
            "--kafka-brokers",
            broker.addr.as_str(),
            "--app",
            "1400000001:secret-app-a",
            "--app",
            "1400000002:secret-app-b",
            "--app",
            "1400000003:secret-rot-old",
            "--app",
            "1400000003:secret-rot-new",
        ],
        &trace,
    );
    let by_file = Forwarder::start_with_env(
        &[
            "--kafka-brokers",
            broker.addr.as_str(),
            "--apps-file",
            apps_file.to_str().unwrap(),
            "--callback-token-file",
            token_file.to_str().unwrap(),
        ],
        &[trace[0], ("IMCF_APP", "1400000004:secret-env-d,1400000005")],
    );

    // (forwarder, app, token the callback is signed with, expected answer: None = OK, else (status, code))
    type Case<'a> = (&'a Forwarder, &'a str, Option<&'a str>, Option<(u16, i64)>);
    let cases: [Case; 19] = [
        (&by_flag, "1400000001", Some("secret-app-a"), None),
        (&by_flag, "1400000001", Some("secret-app-b"), Some((401, 40102))),
        (&by_flag, "1400000001", None, Some((401, 40101))),
        (&by_flag, "1400000002", Some("secret-app-b"), None),
        (&by_flag, "1400000002", Some("secret-app-a"), Some((401, 40102))),
        (&by_flag, "1400000003", Some("secret-rot-old"), None),
        (&by_flag, "1400000003", Some("secret-rot-new"), None),
        (&by_flag, "1400000003", Some("secret-app-a"), Some((401, 40102))),
        (&by_flag, "1400000010", Some("secret-file-10"), Some((403, 40302))),
        (&by_file, "1400000010", Some("secret-file-10"), None),
        (&by_file, "1400000010", Some("secret-global-old"), Some((401, 40102))),
        (&by_file, "1400000011", Some("secret-global-old"), None),
        (&by_file, "1400000011", Some("secret-global-new"), None),
        (&by_file, "1400000011", Some("secret-file-10"), Some((401, 40102))),
        (&by_file, "1400000012", Some("secret-commented-12"), Some((403, 40302))),
        (&by_file, "1400000004", Some("secret-env-d"), None),
        (&by_file, "1400000004", Some("secret-global-new"), Some((401, 40102))),
        (&by_file, "1400000005", Some("secret-global-new"), None),
        (&by_file, "1400000005", None, Some((401, 40101))),
    ];
    let mut checks = Checks::default();
    let mut accepted = BTreeSet::new();
    for (i, (fwd, app, token, expected)) in cases.iter().enumerate() {
        let case = format!("app {app} signed with {token:?}");
        let body = exception_body(&format!("@TGS#tokens-{i}"), "");
        let reply = raw_post(fwd, &path_for(app, EXCEPTION, *token), Some("application/json"), "", &body);
        match expected {
            None => {
                check_ok(&mut checks, &case, &reply);
                accepted.insert(event_id(app, &body));
            }
            Some((status, code)) => check_refusal(&mut checks, &case, &reply, *status, *code, &[]),
        }
    }
    // The very events that were accepted, not merely as many: a refused one published in place of an accepted
    // one must fail.
    let events = broker.consume(TOPIC, accepted.len(), CONSUME_TIMEOUT);
    let published: BTreeSet<String> = events.iter().filter_map(|r| r.header("event_id")).collect();
    checks.eq("event ids published", published, accepted);

    let secrets = [
        "secret-app-a",
        "secret-app-b",
        "secret-rot-old",
        "secret-rot-new",
        "secret-file-10",
        "secret-commented-12",
        "secret-global-old",
        "secret-global-new",
        "secret-env-d",
    ];
    for (name, fwd) in [("--app", &by_flag), ("--apps-file", &by_file)] {
        let logs = fwd.output.all_text();
        let scraped = metrics::scrape(&fwd.admin_addr).text;
        // Refusals are logged at debug level, with their reason: the log level took effect.
        checks.check(logs.contains("callback refused"), || format!("{name}: no \"callback refused\" debug line"));
        for secret in secrets {
            checks.check(!logs.contains(secret), || format!("{name}: token {secret} in the log"));
            checks.check(!scraped.contains(secret), || format!("{name}: token {secret} in /metrics"));
        }
    }
    checks.finish();
}

#[test]
fn a_token_file_holds_the_token_verbatim() {
    // The token file is documented as "the token", a second line for rotation: a '#' is part of it.
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok#en\n").expect("write token file");
    let fwd = Forwarder::for_broker(&broker, &["--callback-token-file", token_file.to_str().unwrap()]);
    let reply = fwd.post(&query(APP_ID, EXCEPTION, Some("tok#en")), DOC_SAMPLE.as_bytes());
    let mut checks = Checks::default();
    check_ok(&mut checks, "Sign made with the token tok#en", &reply);
    checks.finish();
}

#[test]
fn configuration_errors_do_not_print_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps_file = dir.path().join("apps");
    // A typo: '=' instead of ':'.
    std::fs::write(&apps_file, "1400000010=secret-typo-apps-file\n").expect("write apps file");
    let long_token = format!("1:secret-{}", "x".repeat(130));
    let mut checks = Checks::default();
    for (case, args) in [
        ("--apps-file entry with '='", vec!["--dev", "--apps-file", apps_file.to_str().unwrap()]),
        ("--app entry with '='", vec!["--dev", "--app", "1400000010=secret-typo-flag"]),
        ("--app with a non-numeric id", vec!["--dev", "--app", "app-one:secret-typo-id"]),
        ("--app token over 128 characters", vec!["--dev", "--app", long_token.as_str()]),
    ] {
        let (status, output) = common::forwarder::run_to_exit(&args, &[], Duration::from_secs(10));
        checks.check(!status.success(), || format!("{case}: exited with {status}"));
        checks.check(!output.contains("secret-"), || format!("{case}: the token is printed: {output}"));
    }
    checks.finish();
}

#[test]
fn replays_are_answered_ok_and_published_once_and_the_clock_skew_is_enforced() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let unsigned_app = "1400000007";
    let fwd = Forwarder::for_broker(
        &broker,
        &["--app", &format!("{APP_ID}:{TOKEN}"), "--app", unsigned_app, "--max-clock-skew", "5"],
    );
    let mut checks = Checks::default();
    let base =
        format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS");
    let body = DOC_SAMPLE.as_bytes();
    let rt = now_secs().to_string();
    let first = format!("/?{base}{}", sign_params_at(TOKEN, &rt));
    check_ok(&mut checks, "first", &raw_post(&fwd, &first, Some("application/json"), "", body));
    check_ok(&mut checks, "exact replay", &raw_post(&fwd, &first, Some("application/json"), "", body));
    // Other query parameters are not part of the replay key: still the same callback.
    let other_ip = first.replace("ClientIP=10.0.0.1", "ClientIP=10.9.9.9");
    check_ok(
        &mut checks,
        "replay with another ClientIP",
        &raw_post(&fwd, &other_ip, Some("application/json"), "", body),
    );
    // Re-signed with another RequestTime, as a retry would be: published again, same event_id.
    // One second before the first RequestTime, so that it differs even if the clock ticked meanwhile.
    let earlier = (rt.parse::<i64>().expect("RequestTime") - 1).to_string();
    let resent = format!("/?{base}{}", sign_params_at(TOKEN, &earlier));
    check_ok(&mut checks, "re-signed", &raw_post(&fwd, &resent, Some("application/json"), "", body));
    // An unsigned app: the same body twice is a replay.
    let unsigned_body = exception_body("@TGS#unsigned-replay", "");
    for i in 0..2 {
        let reply =
            raw_post(&fwd, &path_for(unsigned_app, EXCEPTION, None), Some("application/json"), "", &unsigned_body);
        check_ok(&mut checks, &format!("unsigned app, post {i}"), &reply);
    }
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("replayed after the exact replays", outcome(&m, "replayed"), 3.0);
    checks.eq("accepted after the exact replays", outcome(&m, "accepted"), 3.0);

    // --max-clock-skew 5.
    for (case, offset, ok) in
        [("RequestTime 10 s old", -10, false), ("RequestTime 10 s ahead", 10, false), ("RequestTime 3 s old", -3, true)]
    {
        let body = exception_body(&format!("@TGS#skew{offset}"), "");
        let path = format!("/?{base}{}", sign_params_at(TOKEN, &(now_secs() + offset).to_string()));
        let reply = raw_post(&fwd, &path, Some("application/json"), "", &body);
        if ok {
            check_ok(&mut checks, case, &reply);
        } else {
            check_refusal(&mut checks, case, &reply, 401, 40103, &["RequestTime"]);
        }
    }

    let events = broker.consume(TOPIC, 4, CONSUME_TIMEOUT);
    let counts = id_counts(&events);
    checks.eq("records of the doc sample (first and re-signed)", counts.get(&event_id(APP_ID, body)).copied(), Some(2));
    checks.eq(
        "records of the unsigned app's body",
        counts.get(&event_id(unsigned_app, &unsigned_body)).copied(),
        Some(1),
    );
    checks.eq("records in all", events.len(), 4);
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("stale_request_time", outcome(&m, "stale_request_time"), 2.0);
    checks.finish();
}

#[test]
fn a_replay_with_the_sign_in_uppercase_is_still_a_replay() {
    // Either hex case verifies, so the case of the Sign does not make another callback.
    let (broker, fwd) = setup(&["--callback-token", TOKEN]);
    let base = format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json");
    let rt = now_secs().to_string();
    let lower = format!("/?{base}&Sign={}&RequestTime={rt}", sign(TOKEN, &rt));
    let upper = format!("/?{base}&Sign={}&RequestTime={rt}", sign(TOKEN, &rt).to_uppercase());
    let mut checks = Checks::default();
    check_ok(
        &mut checks,
        "lowercase Sign",
        &raw_post(&fwd, &lower, Some("application/json"), "", DOC_SAMPLE.as_bytes()),
    );
    check_ok(
        &mut checks,
        "the same, Sign in uppercase",
        &raw_post(&fwd, &upper, Some("application/json"), "", DOC_SAMPLE.as_bytes()),
    );
    // Both posts were answered, so whatever they handed to the producer is counted in its queue: once that is
    // empty (and a record delivered), a marker appended now comes after every record they made.
    let drained = common::poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let m = metrics::try_scrape(&fwd.admin_addr)?;
        let delivered = m.get("imcf_kafka_delivered_total").unwrap_or(0.0);
        (delivered >= 1.0 && m.get("imcf_kafka_queue_events") == Some(0.0)).then_some(())
    });
    checks.check(drained.is_some(), || "nothing delivered, or the producer queue not empty, within 20 s".into());
    let events = broker.records_until_marker(TOPIC, Duration::from_millis(500));
    checks.eq("records", events.len(), 1);
    checks.eq("replayed", outcome(&metrics::scrape(&fwd.admin_addr), "replayed"), 1.0);
    checks.finish();
}

#[test]
fn the_source_allowlist_believes_x_forwarded_for_only_from_trusted_proxies() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let direct = Forwarder::for_broker(&broker, &["--callback-token", TOKEN, "--allow-cidr", "10.0.0.0/8"]);
    let proxied = Forwarder::for_broker(
        &broker,
        &["--callback-token", TOKEN, "--allow-cidr", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1/32"],
    );
    let mut checks = Checks::default();
    let mut n = 0;
    let mut post = |fwd: &Forwarder, token: &str, xff: &[&str]| {
        n += 1;
        let headers: String = xff.iter().map(|v| format!("X-Forwarded-For: {v}\r\n")).collect();
        let body = exception_body(&format!("@TGS#source-{n}"), "");
        let reply = raw_post(fwd, &path_for(APP_ID, EXCEPTION, Some(token)), Some("application/json"), &headers, &body);
        (reply, event_id(APP_ID, &body))
    };
    let denied = |checks: &mut Checks, case: &str, reply: &Reply| check_refusal(checks, case, reply, 403, 40303, &[]);

    // Without a trusted proxy, a peer outside the allowlist is closed at accept: no answer, whatever it sends.
    for (case, token, xff) in [
        ("127.0.0.1 outside 10.0.0.0/8", TOKEN, ""),
        ("X-Forwarded-For 10.1.2.3 from an untrusted peer", TOKEN, "X-Forwarded-For: 10.1.2.3\r\n"),
        ("a wrong Sign from outside (source checked first)", "wrong-token", ""),
    ] {
        let addr = &direct.callback_addr;
        let body = exception_body("@TGS#source-direct", "");
        let head = format!("Content-Length: {}\r\n{xff}", body.len());
        let mut stream = conn::connect(addr, Duration::from_secs(5));
        let mut request = conn::post_head(addr, &path_for(APP_ID, EXCEPTION, Some(token)), &head).into_bytes();
        request.extend_from_slice(&body);
        let _ = stream.write_all(&request);
        let closed = conn::wait_closed(&mut stream, Duration::from_secs(3));
        checks.check(closed.after.is_some() && closed.received.is_empty(), || format!("{case}: answered {closed:?}"));
    }

    let mut accepted = BTreeSet::new();
    let (r, id) = post(&proxied, TOKEN, &["10.1.2.3"]);
    check_ok(&mut checks, "X-Forwarded-For 10.1.2.3 from a trusted proxy", &r);
    accepted.insert(id);
    let (r, id) = post(&proxied, TOKEN, &["192.0.2.1, 10.1.2.3"]);
    check_ok(&mut checks, "X-Forwarded-For 192.0.2.1, 10.1.2.3 (right-most is the client)", &r);
    accepted.insert(id);
    let (r, _) = post(&proxied, TOKEN, &["10.1.2.3, 192.0.2.1"]);
    denied(&mut checks, "X-Forwarded-For 10.1.2.3, 192.0.2.1 (a forged left entry)", &r);
    let (r, _) = post(&proxied, TOKEN, &["10.1.2.3", "192.0.2.1"]);
    denied(&mut checks, "two X-Forwarded-For lines, the last outside", &r);
    let (r, _) = post(&proxied, TOKEN, &[]);
    denied(&mut checks, "a trusted proxy without X-Forwarded-For", &r);
    let (r, _) = post(&proxied, TOKEN, &["not-an-address"]);
    denied(&mut checks, "X-Forwarded-For garbage", &r);

    let m = metrics::scrape(&direct.admin_addr);
    checks.eq("direct: source_not_allowed", outcome(&m, "source_not_allowed"), 3.0);
    let m = metrics::scrape(&proxied.admin_addr);
    checks.eq("proxied: source_not_allowed", outcome(&m, "source_not_allowed"), 4.0);
    checks.eq("proxied: accepted", outcome(&m, "accepted"), 2.0);
    let events = broker.consume(TOPIC, accepted.len(), CONSUME_TIMEOUT);
    checks.eq("event ids published", id_counts(&events).into_keys().collect::<BTreeSet<_>>(), accepted);
    checks.eq("imcf_dead_letters_total", m.get("imcf_dead_letters_total"), Some(0.0));
    checks.finish();
}

/// The envelope's fields, in the order of schemas/tencent.im.callback.v1.schema.json.
const ENVELOPE_FIELDS: [&str; 12] = [
    "schema",
    "event_id",
    "sdk_app_id",
    "callback_command",
    "received_at",
    "client_ip",
    "opt_platform",
    "group_id",
    "from_account",
    "event_time_ms",
    "event_time",
    "body",
];

/// A test fixture's bytes.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Checks one envelope record: key, headers, field order, every field, `body` byte for byte (the
/// request body without the whitespace around it). `lifted` holds group_id, from_account,
/// event_time_ms and event_time; `sent` brackets the request in Unix ms.
fn check_envelope(
    checks: &mut Checks,
    case: &str,
    record: &Record,
    body: &[u8],
    lifted: Value,
    key: &str,
    sent: (i64, i64),
) {
    let id = event_id(APP_ID, body);
    let command =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| v["CallbackCommand"].as_str().map(str::to_string));
    let command = command.unwrap_or_default();
    checks.eq(&format!("{case}: key"), record.key.as_deref(), Some(key.as_bytes()));
    for (name, value) in [
        ("event_id", id.as_str()),
        ("sdk_app_id", APP_ID),
        ("callback_command", command.as_str()),
        ("schema", SCHEMA_CALLBACK),
        ("content-type", "application/json"),
    ] {
        checks.eq(&format!("{case}: header {name}"), record.header(name).as_deref(), Some(value));
    }
    checks.eq(
        &format!("{case}: header names"),
        record.header_names().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["event_id", "sdk_app_id", "callback_command", "schema", "content-type"]),
    );
    checks.eq(
        &format!("{case}: field order"),
        top_level_keys(record.value_bytes()),
        ENVELOPE_FIELDS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let envelope = record.json();
    let received = envelope["received_at"].as_str().and_then(parse_rfc3339_ms);
    checks.check(received.is_some_and(|ms| ms >= sent.0 - 2000 && ms <= sent.1 + 2000), || {
        format!(
            "{case}: received_at {} not between {} and {}",
            envelope["received_at"],
            format_rfc3339_ms(sent.0),
            format_rfc3339_ms(sent.1)
        )
    });
    let mut expected = json!({
        "schema": SCHEMA_CALLBACK,
        "event_id": id,
        "sdk_app_id": APP_ID.parse::<u64>().unwrap(),
        "callback_command": command,
        "client_ip": "10.0.0.1",
        "opt_platform": "iOS",
    });
    for (k, v) in lifted.as_object().expect("lifted fields") {
        expected[k] = v.clone();
    }
    for field in ENVELOPE_FIELDS.iter().filter(|f| !["received_at", "body"].contains(f)) {
        checks.eq(&format!("{case}: {field}"), envelope.get(*field), expected.get(*field));
    }
    let trimmed = String::from_utf8_lossy(body).trim().to_string();
    checks.eq(&format!("{case}: body verbatim"), raw_field(record.value_bytes(), "body"), Some(trimmed));
}

/// Checks the FAIL answer of a refused before-callback: HTTP 200, ErrorCode 1.
fn check_before_refused(checks: &mut Checks, case: &str, reply: &Reply) {
    check_refusal(checks, case, reply, 200, 1, &[]);
}

#[test]
fn routed_commands_are_published_as_envelopes_and_the_others_are_answered_by_policy() {
    let routed_topic = "im.group.callbacks";
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC, routed_topic]);
    let routes = ["--route", "Group.*=im.group.callbacks", "--route", "State.StateChange=im.group.callbacks"];
    let lenient = Forwarder::for_broker(&broker, &[&["--callback-token", TOKEN][..], &routes].concat());
    let strict = Forwarder::for_broker(
        &broker,
        &[&["--callback-token", TOKEN, "--unrouted", "reject", "--refuse-before-callbacks"][..], &routes].concat(),
    );
    let mut checks = Checks::default();
    let post = |fwd: &Forwarder, body: &[u8]| -> Reply {
        let command =
            serde_json::from_slice::<Value>(body).expect("JSON body")["CallbackCommand"].as_str().unwrap().to_string();
        raw_post(fwd, &path_for(APP_ID, &command, Some(TOKEN)), Some("application/json"), "", body)
    };

    // Around the body: whitespace, which the envelope's `body` leaves out (the event_id keeps it).
    let after_send = [b"  \n".as_slice(), &fixture("group_after_send_msg.json"), b"\n "].concat();
    let recall = br#"{"CallbackCommand":"Group.CallbackAfterRecallMsg","GroupId":"@TGS#recall","Type":"Public","Operator_Account":"admin","MsgSeqList":[{"MsgSeq":1}],"MsgTime":"1670574414","Num":1.50,"Esc":"\u00e9"}"#.to_vec();
    let state = fixture("state_change.json");
    let before_group = fixture("group_before_send_msg.json");
    let new_group_command =
        br#"{"CallbackCommand":"Group.CallbackAfterSomethingNew","GroupId":"@TGS#new","From_Account":"u1"}"#.to_vec();
    let c2c_after = fixture("c2c_after_send_msg.json");
    let c2c_before =
        br#"{"CallbackCommand":"C2C.CallbackBeforeSendMsg","From_Account":"a","To_Account":"b","MsgBody":[]}"#.to_vec();
    let unknown = br#"{"CallbackCommand":"Foo.CallbackWhatever","X":1}"#.to_vec();

    let before = now_ms();
    for (case, body) in [
        ("Group.CallbackAfterSendMsg", &after_send),
        ("Group.CallbackAfterRecallMsg", &recall),
        ("State.StateChange", &state),
        ("Group.CallbackBeforeSendMsg (routed, allowed)", &before_group),
        ("an unknown Group command", &new_group_command),
        ("C2C.CallbackAfterSendMsg (unrouted)", &c2c_after),
        ("C2C.CallbackBeforeSendMsg (unrouted, allowed)", &c2c_before),
        ("an unknown command", &unknown),
    ] {
        check_ok(&mut checks, &format!("default policy: {case}"), &post(&lenient, body));
    }
    let after = now_ms();

    // --unrouted reject --refuse-before-callbacks; other bodies, so that their records are told apart.
    let after_send_2 = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#strict","From_Account":"u2","MsgTime":1670574414}"#.to_vec();
    let before_group_2 =
        br#"{"CallbackCommand":"Group.CallbackBeforeSendMsg","GroupId":"@TGS#strict-before","From_Account":"u3"}"#
            .to_vec();
    check_ok(&mut checks, "strict: Group.CallbackAfterSendMsg", &post(&strict, &after_send_2));
    check_before_refused(&mut checks, "strict: Group.CallbackBeforeSendMsg (routed)", &post(&strict, &before_group_2));
    check_before_refused(&mut checks, "strict: C2C.CallbackBeforeSendMsg (unrouted)", &post(&strict, &c2c_before));
    check_refusal(&mut checks, "strict: C2C.CallbackAfterSendMsg", &post(&strict, &c2c_after), 404, 40401, &[]);
    check_refusal(&mut checks, "strict: an unknown command", &post(&strict, &unknown), 404, 40401, &[]);

    let m = metrics::scrape(&lenient.admin_addr);
    check_outcomes(&mut checks, &m, &BTreeMap::from([("routed", 5), ("ignored", 3)]));
    let labelled = |m: &Metrics, name: &str| -> BTreeMap<String, f64> {
        m.series(name).into_iter().filter(|(_, v)| *v != 0.0).map(|(k, v)| (k.to_string(), v)).collect()
    };
    let series = |name: &str, commands: &[&str]| -> BTreeMap<String, f64> {
        commands.iter().map(|c| (format!("{name}{{command=\"{c}\"}}"), 1.0)).collect()
    };
    checks.eq(
        "default policy: imcf_routed_callbacks_total",
        labelled(&m, "imcf_routed_callbacks_total"),
        series(
            "imcf_routed_callbacks_total",
            &[
                "Group.CallbackAfterSendMsg",
                "Group.CallbackAfterRecallMsg",
                "State.StateChange",
                "Group.CallbackBeforeSendMsg",
                "other",
            ],
        ),
    );
    checks.eq(
        "default policy: imcf_unrouted_callbacks_total",
        labelled(&m, "imcf_unrouted_callbacks_total"),
        series("imcf_unrouted_callbacks_total", &["C2C.CallbackAfterSendMsg", "C2C.CallbackBeforeSendMsg", "other"]),
    );
    let m = metrics::scrape(&strict.admin_addr);
    check_outcomes(&mut checks, &m, &BTreeMap::from([("routed", 1), ("before_refused", 2), ("unrouted", 2)]));
    checks.eq(
        "strict: imcf_unrouted_callbacks_total",
        labelled(&m, "imcf_unrouted_callbacks_total"),
        series("imcf_unrouted_callbacks_total", &["C2C.CallbackAfterSendMsg", "C2C.CallbackBeforeSendMsg", "other"]),
    );

    // Published: the default policy's 5 routed callbacks, the strict one's routed callback and its
    // routed (and refused) before-callback.
    let records = broker.consume(routed_topic, 7, CONSUME_TIMEOUT);
    let published: BTreeMap<String, usize> = id_counts(&records);
    let expected: BTreeMap<String, usize> =
        [&after_send, &recall, &state, &before_group, &new_group_command, &after_send_2, &before_group_2]
            .iter()
            .map(|b| (event_id(APP_ID, b), 1))
            .collect();
    checks.eq("event ids in the routed topic", published, expected);
    let find = |body: &[u8]| {
        let id = event_id(APP_ID, body);
        records.iter().find(|r| r.header("event_id").as_deref() == Some(id.as_str()))
    };
    let sent = (before, after);
    let cases = [
        (
            "Group.CallbackAfterSendMsg",
            &after_send,
            json!({"group_id": "@TGS#2J4SZEAEL", "from_account": "jared", "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z"}),
            "@TGS#2J4SZEAEL".to_string(),
        ),
        (
            "Group.CallbackAfterRecallMsg (MsgTime in seconds, as a string)",
            &recall,
            json!({"group_id": "@TGS#recall", "from_account": null, "event_time_ms": 1_670_574_414_000u64, "event_time": "2022-12-09T08:26:54.000Z"}),
            "@TGS#recall".to_string(),
        ),
        (
            "State.StateChange (no group, no sender: keyed by event id)",
            &state,
            json!({"group_id": null, "from_account": null, "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z"}),
            event_id(APP_ID, &state),
        ),
        (
            "Group.CallbackBeforeSendMsg (EventTime as a string)",
            &before_group,
            json!({"group_id": "@TGS#_@TGS#cQVLVHIM62CJ", "from_account": "jared", "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z"}),
            "@TGS#_@TGS#cQVLVHIM62CJ".to_string(),
        ),
    ];
    for (case, body, lifted, key) in cases {
        match find(body) {
            Some(record) => check_envelope(&mut checks, case, record, body, lifted, &key, sent),
            None => checks.check(false, || format!("{case}: no record")),
        }
    }
    broker.assert_no_records(TOPIC, Duration::from_secs(1));
    broker.assert_no_records(DEAD_LETTER_TOPIC, Duration::from_millis(500));
    checks.finish();
}

#[test]
fn http2_is_served_only_with_the_http2_flag() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let h1_only = Forwarder::for_broker(&broker, &[]);
    let with_h2 = Forwarder::for_broker(&broker, &["--http2"]);
    let mut checks = Checks::default();
    let mut published = BTreeSet::new();

    // Without --http2: the h2c preface is not HTTP/1.1; the connection is closed without an answer, at once
    // (3 s allows for a loaded machine; the header timeout, 10 s by default, would be later).
    let mut stream = conn::connect(&h1_only.callback_addr, Duration::from_secs(2));
    stream.write_all(conn::H2_PREFACE).expect("write preface");
    let closed = conn::wait_closed(&mut stream, Duration::from_secs(5));
    checks.check(closed.after.is_some_and(|d| d < Duration::from_secs(3)), || {
        format!("h2c preface without --http2: {closed:?}")
    });
    checks.eq(
        "bytes answered to the h2c preface",
        String::from_utf8_lossy(&closed.received).into_owned(),
        String::new(),
    );
    let body = exception_body("@TGS#h2-refused", "");
    let h2 = conn::h2c_post(&h1_only.callback_addr, &unsigned_path(), &body, Duration::from_secs(2));
    checks.check(h2.is_err(), || format!("an HTTP/2 request without --http2 was answered: {h2:?}"));
    let body = exception_body("@TGS#h1-on-h1", "");
    check_ok(
        &mut checks,
        "HTTP/1.1 without --http2",
        &raw_post(&h1_only, &unsigned_path(), Some("application/json"), "", &body),
    );
    published.insert(event_id(APP_ID, &body));

    // With --http2: both protocols.
    let body = exception_body("@TGS#h2-on-h2", "");
    match conn::h2c_post(&with_h2.callback_addr, &unsigned_path(), &body, Duration::from_secs(5)) {
        Ok(reply) => {
            checks.eq("HTTP/2 callback: answer", (reply.status, reply.body), (200, OK_BODY.to_vec()));
            published.insert(event_id(APP_ID, &body));
        }
        Err(e) => checks.check(false, || format!("HTTP/2 callback with --http2: {e}")),
    }
    match conn::h2c_post(
        &with_h2.callback_addr,
        &path_for("1400000099", EXCEPTION, None),
        &body,
        Duration::from_secs(5),
    ) {
        Ok(reply) => {
            let reply = Reply { status: reply.status, content_type: None, body: reply.body };
            check_refusal(&mut checks, "HTTP/2 callback of an unknown app", &reply, 403, 40302, &["SdkAppid"]);
        }
        Err(e) => checks.check(false, || format!("HTTP/2 callback of an unknown app: {e}")),
    }
    let body = exception_body("@TGS#h1-on-h2", "");
    check_ok(
        &mut checks,
        "HTTP/1.1 with --http2",
        &raw_post(&with_h2, &unsigned_path(), Some("application/json"), "", &body),
    );
    published.insert(event_id(APP_ID, &body));

    let events = broker.consume(TOPIC, published.len(), CONSUME_TIMEOUT);
    checks.eq("event ids published", id_counts(&events).into_keys().collect::<BTreeSet<_>>(), published);
    checks.finish();
}

#[test]
fn with_http2_a_silent_client_is_cut_off_by_the_header_read_timeout() {
    // With --http2 the protocol is sniffed before HTTP/1's header timer starts; a client that sends
    // nothing, or half the h2c preface, must not hold a slot for the whole keep-alive timeout.
    let (_broker, fwd) = setup(&["--http2", "--header-read-timeout", "1", "--keep-alive-timeout", "6"]);
    let mut silent = conn::connect(&fwd.callback_addr, Duration::from_secs(1));
    let mut half_preface = conn::connect(&fwd.callback_addr, Duration::from_secs(1));
    half_preface.write_all(&conn::H2_PREFACE[..16]).expect("write half the preface");
    // 5 s: room for a loaded machine, and still short of the 6 s keep-alive timeout that would close them too.
    let started = Instant::now();
    let silent_closed = conn::wait_closed(&mut silent, Duration::from_secs(5)).after.map(|_| started.elapsed());
    let half_closed = conn::wait_closed(&mut half_preface, Duration::from_secs(5).saturating_sub(started.elapsed()))
        .after
        .map(|_| started.elapsed());
    let mut checks = Checks::default();
    checks.check(silent_closed.is_some(), || "a silent connection is still open after 5 s".into());
    checks
        .check(half_closed.is_some(), || "a connection that sent half the h2c preface is still open after 5 s".into());
    checks.finish();
}

/// A forwarder on librdkafka's embedded cluster (`--dev`) for app [`APP_ID`], with `extra` flags.
fn dev(extra: &[&str]) -> Forwarder {
    let mut args = vec!["--dev", "--sdk-app-id", APP_ID];
    args.extend_from_slice(extra);
    Forwarder::start(&args)
}

#[test]
fn x_forwarded_for_is_walked_from_the_right_and_an_entry_that_does_not_parse_is_refused() {
    let fwd = dev(&["--callback-token", TOKEN, "--allow-cidr", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1/32"]);
    let mut checks = Checks::default();
    let mut n = 0;
    let mut post = |xff: &[&str]| {
        n += 1;
        let headers: String = xff.iter().map(|v| format!("X-Forwarded-For: {v}\r\n")).collect();
        let body = exception_body(&format!("@TGS#xff-{n}"), "");
        raw_post(&fwd, &path_for(APP_ID, EXCEPTION, Some(TOKEN)), Some("application/json"), &headers, &body)
    };
    let mut refused = 0;
    for (case, xff) in [
        ("an allowed entry, then garbage", &["10.1.2.3, x"][..]),
        ("an allowed entry and a trailing comma", &["10.1.2.3,"]),
        ("an allowed entry and an empty entry", &["10.1.2.3, , 127.0.0.1"]),
        ("an ip:port entry", &["10.1.2.3:8080"]),
        ("an allowed entry, then an ip:port entry", &["10.1.2.3, 10.1.2.4:443"]),
        ("two header lines, the last garbage", &["10.1.2.3", "x"]),
        ("two header lines, the last empty", &["10.1.2.3", ""]),
        ("a bracketed IPv6 entry", &["[::1]"]),
        ("only trusted proxies", &["127.0.0.1"]),
    ] {
        check_refusal(&mut checks, case, &post(xff), 403, 40303, &[]);
        refused += 1;
    }
    for (case, xff) in [
        ("the client behind two trusted proxies", &["10.1.2.3, 127.0.0.1, 127.0.0.1"][..]),
        ("garbage left of the client is the client's own business", &["x, 10.1.2.3"]),
        ("two header lines count as one list", &["192.0.2.1", "10.1.2.3, 127.0.0.1"]),
    ] {
        check_ok(&mut checks, case, &post(xff));
    }
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("source_not_allowed", outcome(&m, "source_not_allowed"), f64::from(refused));
    checks.eq("accepted", outcome(&m, "accepted"), 3.0);
    checks.finish();
}

#[test]
fn an_unsigned_apps_replay_key_is_the_body_alone() {
    // An unsigned app's Sign and RequestTime are not verified: they must not make the same body a new callback.
    let fwd = dev(&[]);
    let mut checks = Checks::default();
    let body = exception_body("@TGS#unsigned-rt", "");
    let base = query(APP_ID, EXCEPTION, None);
    for (case, extra) in [
        ("no Sign", String::new()),
        ("RequestTime=1", format!("&Sign={}&RequestTime=1", "a".repeat(64))),
        ("RequestTime=2", format!("&Sign={}&RequestTime=2", "b".repeat(64))),
    ] {
        check_ok(&mut checks, case, &raw_post(&fwd, &format!("/?{base}{extra}"), Some("application/json"), "", &body));
    }
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("accepted", outcome(&m, "accepted"), 1.0);
    checks.eq("replayed", outcome(&m, "replayed"), 2.0);
    checks.finish();
}

#[test]
fn a_refused_before_callback_stays_refused_when_its_publish_fails() {
    // A dead broker and a producer queue of one record: the first callback fills it, the next publish fails.
    let fwd = Forwarder::start(&[
        "--kafka-brokers",
        "127.0.0.1:1",
        "--sdk-app-id",
        APP_ID,
        "--callback-token",
        TOKEN,
        "--refuse-before-callbacks",
        "--route",
        "Group.*=im.group.callbacks",
        "-X",
        "queue.buffering.max.messages=1",
    ]);
    let mut checks = Checks::default();
    let filler = exception_body("@TGS#filler", "");
    check_ok(
        &mut checks,
        "the callback that fills the queue",
        &raw_post(&fwd, &path_for(APP_ID, EXCEPTION, Some(TOKEN)), Some("application/json"), "", &filler),
    );
    let before =
        br#"{"CallbackCommand":"Group.CallbackBeforeSendMsg","GroupId":"@TGS#before-full","From_Account":"u"}"#;
    let path = path_for(APP_ID, "Group.CallbackBeforeSendMsg", Some(TOKEN));
    let reply = raw_post(&fwd, &path, Some("application/json"), "", before);
    check_before_refused(&mut checks, "routed before-callback, publish failed", &reply);
    // An after-callback whose publish fails is still not acknowledged.
    let after = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#after-full","From_Account":"u"}"#;
    let path = path_for(APP_ID, "Group.CallbackAfterSendMsg", Some(TOKEN));
    check_refusal(
        &mut checks,
        "routed after-callback, publish failed",
        &raw_post(&fwd, &path, None, "", after),
        503,
        50300,
        &[],
    );
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("before_refused", outcome(&m, "before_refused"), 1.0);
    checks.eq("unavailable", outcome(&m, "unavailable"), 1.0);
    checks.eq("the lost record of the refused before-callback", m.get("imcf_events_lost_total"), Some(1.0));
    checks.finish();
}

/// Sends `request` on `stream` and reads one answer.
fn send_and_read(stream: &mut std::net::TcpStream, request: &[u8]) -> Result<Reply, String> {
    stream.write_all(request).map_err(|e| format!("write: {e}"))?;
    http::read_reply(stream)
}

#[test]
fn refusals_close_the_connection_and_accepted_callbacks_keep_it() {
    let fwd = dev(&["--callback-token", TOKEN]);
    let addr = fwd.callback_addr.clone();
    let mut checks = Checks::default();
    let body = exception_body("@TGS#keep", "");
    let ok_path = path_for(APP_ID, EXCEPTION, Some(TOKEN));
    let post = |path: &str| {
        let mut request = conn::post_head(&addr, path, &format!("Content-Length: {}\r\n", body.len())).into_bytes();
        request.extend_from_slice(&body);
        request
    };
    for (case, request, status) in [
        ("404", post("/elsewhere"), 404),
        ("405", format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(), 405),
        ("403", post(&path_for("1400009999", EXCEPTION, None)), 403),
        ("401", post(&path_for(APP_ID, EXCEPTION, Some("wrong-token"))), 401),
    ] {
        let mut stream = conn::connect(&addr, Duration::from_secs(5));
        let reply = send_and_read(&mut stream, &request);
        checks.eq(&format!("{case}: status"), reply.as_ref().map(|r| r.status).ok(), Some(status));
        let closed = conn::wait_closed(&mut stream, Duration::from_secs(2));
        checks.check(closed.after.is_some(), || format!("{case}: the connection stays open after the refusal"));
    }
    let mut stream = conn::connect(&addr, Duration::from_secs(5));
    for i in 0..2 {
        let reply = send_and_read(&mut stream, &post(&ok_path));
        checks.eq(&format!("accepted #{i} on one connection"), reply.map(|r| r.status).ok(), Some(200));
    }
    checks.finish();
}

#[test]
fn an_oversized_request_head_gets_431() {
    let fwd = dev(&["--callback-token", TOKEN]);
    let addr = &fwd.callback_addr;
    // hyper checks its buffer limit (64 KiB) between reads, so a head is refused somewhere between 64 and 128 KiB.
    let big = format!("X-Padding: {}\r\n", "a".repeat(160 * 1024));
    let head = format!("POST / HTTP/1.1\r\nHost: {addr}\r\n{big}Content-Length: 2\r\n\r\n{{}}");
    let mut stream = conn::connect(addr, Duration::from_secs(5));
    let reply = send_and_read(&mut stream, head.as_bytes());
    assert_eq!(reply.as_ref().map(|r| r.status).ok(), Some(431), "{reply:?}");
    let counted = metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_callbacks_total{outcome=\"head_too_large\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    assert_eq!(counted.get("imcf_callbacks_total{outcome=\"head_too_large\"}"), Some(1.0), "the 431 is counted");
}

#[test]
fn connections_per_ip_are_capped_and_disallowed_peers_are_dropped_at_accept() {
    let fwd = dev(&["--callback-token", TOKEN, "--max-connections-per-ip", "2"]);
    let addr = fwd.callback_addr.clone();
    let mut checks = Checks::default();
    let body = exception_body("@TGS#per-ip", "");
    let mut held: Vec<_> = (0..2).map(|_| conn::connect(&addr, Duration::from_secs(5))).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = conn::connect(&addr, Duration::from_secs(5));
    let closed = conn::wait_closed(&mut third, Duration::from_secs(2));
    checks.check(closed.after.is_some() && closed.received.is_empty(), || {
        format!("a third connection from one address is served: {closed:?}")
    });
    let reply = conn::keep_alive_post(&mut held[0], &addr, &path_for(APP_ID, EXCEPTION, Some(TOKEN)), &body);
    checks.eq("a held connection still serves", reply.map(|r| r.status).ok(), Some(200));
    // The admin listener has its own room.
    checks.eq("/healthz", http::try_get(&fwd.admin_url("/healthz")).map(|r| r.status).ok(), Some(200));
    drop(held);

    // A trusted proxy carries every client's connections: it is exempt.
    let proxied = dev(&["--callback-token", TOKEN, "--max-connections-per-ip", "2", "--trusted-proxy", "127.0.0.1/32"]);
    let mut held: Vec<_> = (0..3).map(|_| conn::connect(&proxied.callback_addr, Duration::from_secs(5))).collect();
    let reply =
        conn::keep_alive_post(&mut held[2], &proxied.callback_addr, &path_for(APP_ID, EXCEPTION, Some(TOKEN)), &body);
    checks.eq("a trusted proxy's third connection", reply.map(|r| r.status).ok(), Some(200));
    drop(held);

    // --allow-cidr without --trusted-proxy: a peer outside the allowlist is dropped without an answer.
    let fenced = dev(&["--callback-token", TOKEN, "--allow-cidr", "10.0.0.0/8"]);
    let mut stream = conn::connect(&fenced.callback_addr, Duration::from_secs(5));
    let closed = conn::wait_closed(&mut stream, Duration::from_secs(2));
    checks.check(closed.after.is_some() && closed.received.is_empty(), || {
        format!("a peer outside --allow-cidr is not dropped at accept: {closed:?}")
    });
    let m = metrics::scrape(&fenced.admin_addr);
    checks.eq("peers dropped at accept are counted", outcome(&m, "source_not_allowed"), 1.0);
    checks.finish();
}

#[test]
fn values_no_consumer_can_hold_are_refused_and_dead_lettered() {
    let fwd = dev(&["--callback-token", TOKEN]);
    let mut checks = Checks::default();
    let path = path_for(APP_ID, EXCEPTION, Some(TOKEN));
    let mut n = 0;
    for (case, more, (status, code, outcome_name)) in [
        (
            "a lone surrogate in MsgBody",
            r#","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"\ud800"}}]"#,
            INVALID_JSON,
        ),
        ("a lone trailing surrogate in an extra field", r#","Extra":"a\udc00b""#, INVALID_JSON),
        ("a number out of f64 range", r#","Extra":1e400"#, INVALID_JSON),
        ("a 400-digit integer", &format!(r#","Extra":{}"#, "9".repeat(400)), INVALID_JSON),
        (
            "a nested duplicate key",
            r#","MsgBody":[{"MsgType":"TIMTextElem","MsgType":"TIMFaceElem"}]"#,
            DUPLICATE_FIELD,
        ),
    ] {
        n += 1;
        let body = exception_body(&format!("@TGS#unusable-{n}"), more);
        let reply = raw_post(&fwd, &path, Some("application/json"), "", &body);
        check_refusal(&mut checks, case, &reply, status, code, &[]);
        checks.eq(&format!("{case}: outcome"), outcome(&metrics::scrape(&fwd.admin_addr), outcome_name) > 0.0, true);
    }
    // A surrogate pair and large but representable numbers are fine.
    let body =
        exception_body("@TGS#usable", r#","Extra":"\ud83d\ude00","Big":1e300,"Long":123456789012345678901234567890"#);
    check_ok(
        &mut checks,
        "a surrogate pair and big numbers",
        &raw_post(&fwd, &path, Some("application/json"), "", &body),
    );
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("dead letters", m.get("imcf_dead_letters_total"), Some(f64::from(n)));
    checks.finish();
}

/// The README's per-connection worst case (Security, "Memory"): 160 KiB plus twice `--max-body-bytes`.
const CONNECTION_BUDGET_BYTES: u64 = 160 * 1024 + 2 * 65_536;

#[test]
fn memory_stays_within_the_per_connection_budget_under_hostile_clients() {
    const N: usize = 256;
    let fwd = dev(&[
        "--callback-token",
        TOKEN,
        "--max-connections",
        "512",
        "--max-connections-per-ip",
        "512",
        "--header-read-timeout",
        "60",
        "--body-read-timeout",
        "60",
    ]);
    let addr = fwd.callback_addr.clone();
    let path = path_for(APP_ID, EXCEPTION, Some(TOKEN));
    // Lazily allocated parts exist after one callback.
    let warm = raw_post(&fwd, &path, Some("application/json"), "", &exception_body("@TGS#warm", ""));
    assert_eq!(warm.status, 200, "{warm:?}");
    let before = fwd.rss_bytes();

    // Half send a 390 KiB request head and stop there (hyper's default buffer would hold all of it); half
    // announce a chunked body and send all but one byte of a 64 KiB body in 1-byte chunks, then stop. Each is
    // held open, as a hostile client would. A write the server cut short (431, close) is fine.
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let mut stream = conn::connect(&addr, Duration::from_secs(10));
        let request = if i % 2 == 0 {
            format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}", "a".repeat(390 * 1024)).into_bytes()
        } else {
            let mut r =
                format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            for _ in 0..65_535 {
                r.extend_from_slice(b"1\r\na\r\n");
            }
            r
        };
        let _ = stream.write_all(&request);
        held.push(stream);
    }
    // The server reads what was sent within a moment; the peak over a few seconds is what counts.
    let mut peak = before;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(fwd.rss_bytes());
    }
    let growth = peak.saturating_sub(before);
    let budget = N as u64 * CONNECTION_BUDGET_BYTES;
    eprintln!(
        "RSS {:.1} MiB before, {:.1} MiB peak with {N} hostile connections: {:.0} KiB each (budget {} KiB each)",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        growth as f64 / 1024.0 / N as f64,
        CONNECTION_BUDGET_BYTES / 1024
    );
    let mut checks = Checks::default();
    checks.check(growth <= budget, || {
        format!("RSS grew {growth} bytes with {N} hostile connections, over the budget of {budget}")
    });
    // And the instance still serves.
    let reply = raw_post(&fwd, &path, Some("application/json"), "", &exception_body("@TGS#after-hostile", ""));
    checks.eq("a callback after the hostile clients", reply.status, 200);
    checks.finish();
    drop(held);
}

#[test]
fn accept_errors_back_off_and_the_listener_recovers() {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::forwarder::command();
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--dev"])
        .args(["--sdk-app-id", APP_ID, "--callback-token", TOKEN])
        .args(["--max-connections", "1000", "--max-connections-per-ip", "1000"]);
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 96, rlim_max: 96 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let common::forwarder::Listening { mut child, output, callback_addr, .. } =
        common::forwarder::spawn_listening(cmd, "a forwarder with 96 file descriptors");
    let accept_failures = || output.all_text().lines().filter(|l| l.contains("accept failed")).count();
    // More connections than descriptors: accept(2) fails with EMFILE while they are held.
    let held: Vec<_> = (0..150).filter_map(|_| std::net::TcpStream::connect(&callback_addr).ok()).collect();
    let failing = common::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        (accept_failures() > 0).then_some(())
    });
    let first = accept_failures();
    std::thread::sleep(Duration::from_secs(1));
    let per_second = accept_failures() - first;
    drop(held);
    // Served again once descriptors are free.
    let path = path_for(APP_ID, EXCEPTION, Some(TOKEN));
    let served = common::poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let mut stream = std::net::TcpStream::connect(&callback_addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let body = exception_body("@TGS#after-emfile", "");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {callback_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        send_and_read(&mut stream, &request).ok().filter(|r| r.status == 200)
    });
    let _ = child.kill();
    let _ = child.wait();
    let mut checks = Checks::default();
    checks.check(failing.is_some(), || "accept(2) never failed with 150 connections and 96 descriptors".into());
    // A 50 ms back-off logs at most 20 a second; a loop without one logs thousands.
    checks.check(per_second <= 40, || format!("{per_second} accept failures logged in one second"));
    checks.check(served.is_some(), || "no callback served after the connections were closed".into());
    checks.finish();
}

#[test]
fn a_request_still_arriving_at_the_drain_timeout_does_not_hold_up_the_shutdown() {
    let mut fwd = dev(&["--callback-token", TOKEN, "--shutdown-timeout", "4", "--body-read-timeout", "60"]);
    let addr = fwd.callback_addr.clone();
    let path = path_for(APP_ID, EXCEPTION, Some(TOKEN));
    // A body that never finishes: the request is in flight when SIGTERM comes, and stays so.
    let mut stream = conn::connect(&addr, Duration::from_secs(30));
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n{{\"GroupId\":");
    stream.write_all(head.as_bytes()).expect("partial request");
    // A callback answered on another connection, after that one was opened: the server was serving before SIGTERM.
    let probe = raw_post(&fwd, &path, Some("application/json"), "", &exception_body("@TGS#drain-probe", ""));
    assert_eq!(probe.status, 200, "{probe:?}");
    fwd.sigterm();
    let status = fwd.wait_exit(Duration::from_secs(20));
    let mut checks = Checks::default();
    checks.eq("exit status", status.code(), Some(0));
    let drain_timeout = fwd.wait_log("connections still open after the drain timeout", Duration::from_secs(5));
    checks.check(drain_timeout.is_some(), || "no log line for the drain timeout".into());
    let done = fwd.wait_log("shutdown complete", Duration::from_secs(5));
    checks.check(done.is_some(), || "no shutdown complete line".into());
    let closed = conn::wait_closed(&mut stream, Duration::from_secs(5));
    checks.check(closed.after.is_some(), || format!("the unfinished request's connection stayed open: {closed:?}"));
    checks.finish();
}
