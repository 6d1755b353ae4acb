//! Black-box tests: the built binary on port 0 against a real tansu broker, checked by
//! consuming the topics, scraping /metrics and reading the logs.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::http::{self, Reply};
use common::metrics;
use common::tencent::{
    self, event_id, format_rfc3339_ms, now_ms, now_secs, parse_rfc3339_ms, query, sign, sign_params, sign_params_at,
    top_level_keys, APP_ID, DOC_SAMPLE, EVENT_FIELDS, EXCEPTION, OK_BODY, SCHEMA, TOKEN,
};
use common::{Broker, Checks, Forwarder};

const TOPIC: &str = "im.group.send-msg-exception";
const DEAD_LETTER_TOPIC: &str = "im.group.send-msg-exception.dead-letter";
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
const NOTHING_WAIT: Duration = Duration::from_secs(3);

/// A broker with both default topics and a forwarder on it with `extra` flags.
fn setup(extra: &[&str]) -> (Broker, Forwarder) {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTER_TOPIC]);
    let forwarder = Forwarder::for_broker(&broker, extra);
    (broker, forwarder)
}

/// Records the forwarder handed to its producer: queued, delivered or failed (both topics).
fn handed_to_kafka(m: &metrics::Metrics) -> f64 {
    ["imcf_kafka_queue_events", "imcf_kafka_delivered_total", "imcf_kafka_delivery_failures_total"]
        .iter()
        .map(|k| m.get(k).unwrap_or(f64::NAN))
        .sum()
}

/// Asserts the exact accepted answer.
fn assert_ok(case: &str, reply: &Reply) {
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, std::str::from_utf8(OK_BODY).unwrap()),
        "{case}: accepted answer"
    );
    assert!(
        reply.content_type.as_deref().is_some_and(|ct| ct.starts_with("application/json")),
        "{case}: Content-Type {:?}",
        reply.content_type
    );
}

/// Checks a refusal: status, `{"ActionStatus":"FAIL","ErrorCode":code,"ErrorInfo":..}` with an
/// ErrorInfo containing every one of `names`. Returns the ErrorInfo (empty if unreadable).
fn check_refusal(checks: &mut Checks, case: &str, reply: &Reply, status: u16, code: i64, names: &[&str]) -> String {
    checks.eq(&format!("{case}: HTTP status"), reply.status, status);
    let Some(body) = reply.json() else {
        checks.check(false, || format!("{case}: answer is not JSON: {:?}", reply.text()));
        return String::new();
    };
    let keys: BTreeSet<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    checks.eq(&format!("{case}: answer fields"), keys, BTreeSet::from(["ActionStatus", "ErrorCode", "ErrorInfo"]));
    checks.eq(&format!("{case}: ActionStatus"), body["ActionStatus"].as_str(), Some("FAIL"));
    checks.eq(&format!("{case}: ErrorCode"), body["ErrorCode"].as_i64(), Some(code));
    let info = body["ErrorInfo"].as_str().unwrap_or_default().to_string();
    checks.check(!info.is_empty(), || format!("{case}: empty ErrorInfo"));
    for name in names {
        checks.check(info.contains(name), || format!("{case}: ErrorInfo {info:?} does not name {name:?}"));
    }
    info
}

/// POST through a raw socket with an exact Content-Type (or none) and Content-Length.
fn raw_post(fwd: &Forwarder, path_query: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let ct = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head =
        format!("POST {path_query} HTTP/1.1\r\nHost: {}\r\n{ct}Content-Length: {}\r\n", fwd.callback_addr, body.len());
    http::raw_request(&fwd.callback_addr, &head, body)
}

/// Asserts `received_at` is RFC 3339 UTC with milliseconds, within `[from - 2 s, to + 2 s]`.
fn check_timestamp(checks: &mut Checks, case: &str, value: Option<&str>, from: i64, to: i64) {
    let Some(text) = value else {
        checks.check(false, || format!("{case}: no timestamp"));
        return;
    };
    match parse_rfc3339_ms(text) {
        Some(ms) => checks.check(ms >= from - 2000 && ms <= to + 2000, || {
            format!("{case}: {text} is not near now ({} .. {})", format_rfc3339_ms(from), format_rfc3339_ms(to))
        }),
        None => checks.check(false, || format!("{case}: {text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ")),
    }
}

/// The event the SPEC derives from `body` sent by app APP_ID, `fields` giving the rest.
/// `received_at` is taken from `actual` (checked separately).
fn expected_event(body: &[u8], command: &str, fields: Value, actual: &Value) -> Value {
    let mut event = json!({
        "schema": SCHEMA,
        "event_id": event_id(APP_ID, body),
        "sdk_app_id": APP_ID.parse::<u64>().unwrap(),
        "callback_command": command,
        "received_at": actual["received_at"].clone(),
    });
    let obj = event.as_object_mut().unwrap();
    for (k, v) in fields.as_object().expect("fields object") {
        obj.insert(k.clone(), v.clone());
    }
    event
}

/// Checks one published record against the SPEC: key, headers, field order, every field.
fn check_event_record(
    checks: &mut Checks,
    case: &str,
    record: &common::kafka::Record,
    body: &[u8],
    fields: Value,
    sent: (i64, i64),
) {
    let id = event_id(APP_ID, body);
    let group_id = fields["group_id"].as_str().unwrap_or_default().to_string();
    let command = EXCEPTION;
    checks.eq(&format!("{case}: record key"), record.key.as_deref(), Some(group_id.as_bytes()));
    for (name, value) in [
        ("event_id", id.as_str()),
        ("sdk_app_id", APP_ID),
        ("callback_command", command),
        ("schema", SCHEMA),
        ("content-type", "application/json"),
    ] {
        checks.eq(&format!("{case}: header {name}"), record.header(name).as_deref(), Some(value));
    }
    let Ok(actual) = serde_json::from_slice::<Value>(record.value_bytes()) else {
        checks.check(false, || format!("{case}: value is not JSON: {}", String::from_utf8_lossy(record.value_bytes())));
        return;
    };
    checks.eq(
        &format!("{case}: event field order"),
        top_level_keys(record.value_bytes()),
        EVENT_FIELDS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    check_timestamp(checks, &format!("{case}: received_at"), actual["received_at"].as_str(), sent.0, sent.1);
    let expected = expected_event(body, command, fields, &actual);
    let all: BTreeSet<&String> = expected
        .as_object()
        .unwrap()
        .keys()
        .chain(actual.as_object().map(|o| o.keys()).into_iter().flatten())
        .collect();
    for key in all {
        checks.eq(&format!("{case}: event.{key}"), actual.get(key), expected.get(key));
    }
}

/// Indexes records by their `event_id` header (several records may share one).
fn by_event_id(records: &[common::kafka::Record]) -> HashMap<String, Vec<&common::kafka::Record>> {
    let mut map: HashMap<String, Vec<_>> = HashMap::new();
    for r in records {
        map.entry(r.header("event_id").unwrap_or_default()).or_default().push(r);
    }
    map
}

#[test]
fn harness_sign_matches_the_official_test_vector() {
    assert_eq!(sign("xxxxyyyy", "1669872112"), "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061");
    assert_eq!(format_rfc3339_ms(1_670_574_414_123), "2022-12-09T08:26:54.123Z");
    assert_eq!(parse_rfc3339_ms("2022-12-09T08:26:54.123Z"), Some(1_670_574_414_123));
    assert_eq!(parse_rfc3339_ms("2022-12-09T08:26:54Z"), None);
}

#[test]
fn doc_sample_is_published_as_a_normalized_event() {
    let (broker, fwd) = setup(&["--callback-token", TOKEN]);
    let before = now_ms();
    let reply = fwd.post(&query(APP_ID, EXCEPTION, Some(TOKEN)), DOC_SAMPLE.as_bytes());
    let after = now_ms();
    assert_ok("doc sample", &reply);

    let records = broker.consume(TOPIC, 1, CONSUME_TIMEOUT);
    assert_eq!(records.len(), 1, "records in {TOPIC}: {records:?}");
    let mut checks = Checks::default();
    check_event_record(
        &mut checks,
        "doc sample",
        &records[0],
        DOC_SAMPLE.as_bytes(),
        json!({
            "group_id": "@TGS#2J4SZEAEL",
            "group_type": "Public",
            "from_account": "jared",
            "operator_account": "admin",
            "random": 123456,
            "online_only": true,
            "msg_body": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "red packet"}}],
            "cloud_custom_data": "your cloud custom data",
            "error_code": 10023,
            "error_info": "msg count exceeds limit,please retry later",
            "error_category": "rate_limited",
            "event_time_ms": 1_670_574_414_123u64,
            "event_time": "2022-12-09T08:26:54.123Z",
            "client_ip": "10.0.0.1",
            "opt_platform": "iOS",
            "extra": {},
        }),
        (before, after),
    );
    checks.eq(
        "doc sample: header names",
        records[0].header_names().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["event_id", "sdk_app_id", "callback_command", "schema", "content-type"]),
    );
    checks.finish();
    broker.assert_no_records(DEAD_LETTER_TOPIC, Duration::from_secs(1));
}

/// One accepted variant: query, body and the event fields it must produce.
struct Variant {
    name: &'static str,
    query: String,
    body: Vec<u8>,
    fields: Value,
}

#[test]
fn variants_are_normalized_leniently() {
    // No --callback-token: Sign and RequestTime are not required, and ignored when present.
    let (broker, fwd) = setup(&[]);
    let base_query = query(APP_ID, EXCEPTION, None);
    let mut variants = vec![
        Variant {
            name: "numeric EventTime, numbers as strings",
            query: format!(
                "SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json&ClientIP=192.0.2.7&OptPlatform=Android"
            ),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#_community","Type":"Community","From_Account":"u1","Operator_Account":"u2","Random":"4294967295","OnlineOnlyFlag":"0","MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"d","Desc":"","Ext":"","Sound":""}},{"MsgType":"TIMFaceElem","MsgContent":{"Index":1,"Data":"x"}}],"ErrorCode":"80001","ErrorInfo":"sensitive","EventTime":1700000000000}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#_community", "group_type": "Community",
                "from_account": "u1", "operator_account": "u2",
                "random": 4_294_967_295u64, "online_only": false,
                "msg_body": [{"MsgType":"TIMCustomElem","MsgContent":{"Data":"d","Desc":"","Ext":"","Sound":""}},{"MsgType":"TIMFaceElem","MsgContent":{"Index":1,"Data":"x"}}],
                "cloud_custom_data": null, "error_code": 80001, "error_info": "sensitive",
                "error_category": "content_moderated",
                "event_time_ms": 1_700_000_000_000u64, "event_time": "2023-11-14T22:13:20.000Z",
                "client_ip": "192.0.2.7", "opt_platform": "Android", "extra": {},
            }),
        },
        Variant {
            name: "minimal body, query without ClientIP/OptPlatform",
            query: format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json"),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#min","Type":"Work","ErrorCode":10017}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#min", "group_type": "Work",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 10017, "error_info": null,
                "error_category": "sender_muted", "event_time_ms": null, "event_time": null,
                "client_ip": null, "opt_platform": null, "extra": {},
            }),
        },
        Variant {
            name: "explicit nulls, boolean OnlineOnlyFlag, unknown code",
            query: base_query.clone(),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#nulls","Type":"Meeting","From_Account":null,"Operator_Account":null,"Random":7,"OnlineOnlyFlag":true,"MsgBody":[],"CloudCustomData":null,"ErrorCode":99999,"ErrorInfo":null,"EventTime":"1670574414123"}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#nulls", "group_type": "Meeting",
                "from_account": null, "operator_account": null, "random": 7, "online_only": true,
                "msg_body": [], "cloud_custom_data": null, "error_code": 99999, "error_info": null,
                "error_category": "unknown",
                "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z",
                "client_ip": "10.0.0.1", "opt_platform": "iOS", "extra": {},
            }),
        },
        Variant {
            name: "unknown fields kept in extra",
            query: base_query.clone(),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#extra","Type":"AVChatRoom","MsgSeq":42,"ErrorCode":10150,"TopicId":"@TGS#_x@TOPIC#y","Nested":{"a":[1,"two",null,{"b":false}]},"MsgTime":1670574414}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#extra", "group_type": "AVChatRoom",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 10150, "error_info": null,
                "error_category": "blocked_by_callback", "event_time_ms": null, "event_time": null,
                "client_ip": "10.0.0.1", "opt_platform": "iOS",
                "extra": {"MsgSeq": 42, "TopicId": "@TGS#_x@TOPIC#y", "Nested": {"a": [1, "two", null, {"b": false}]}, "MsgTime": 1670574414},
            }),
        },
        Variant {
            name: "contenttype and OptPlatform in other cases, kept as sent",
            query: format!(
                "SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=JSON&ClientIP=2001:db8::1&OptPlatform=IOS"
            ),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#case","Type":"Private","ErrorCode":10010,"OnlineOnlyFlag":false}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#case", "group_type": "Private",
                "from_account": null, "operator_account": null, "random": null, "online_only": false,
                "msg_body": [], "cloud_custom_data": null, "error_code": 10010, "error_info": null,
                "error_category": "group_unavailable", "event_time_ms": null, "event_time": null,
                "client_ip": "2001:db8::1", "opt_platform": "IOS", "extra": {},
            }),
        },
        Variant {
            name: "CallbackCommand only in the query",
            query: base_query.clone(),
            body: br#"{"GroupId":"@TGS#qonly","Type":"Public","ErrorCode":80002}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#qonly", "group_type": "Public",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 80002, "error_info": null,
                "error_category": "message_too_large", "event_time_ms": null, "event_time": null,
                "client_ip": "10.0.0.1", "opt_platform": "iOS", "extra": {},
            }),
        },
        Variant {
            name: "CallbackCommand only in the body",
            query: format!("SdkAppid={APP_ID}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=Web"),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#bonly","Type":"Public","ErrorCode":10007}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#bonly", "group_type": "Public",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 10007, "error_info": null,
                "error_category": "permission_denied", "event_time_ms": null, "event_time": null,
                "client_ip": "10.0.0.1", "opt_platform": "Web", "extra": {},
            }),
        },
        Variant {
            name: "invalid_request code",
            query: base_query.clone(),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#inv","Type":"Public","ErrorCode":10003}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#inv", "group_type": "Public",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 10003, "error_info": null,
                "error_category": "invalid_request", "event_time_ms": null, "event_time": null,
                "client_ip": "10.0.0.1", "opt_platform": "iOS", "extra": {},
            }),
        },
        Variant {
            name: "internal_error code, stray Sign ignored without a token",
            query: format!("{base_query}&Sign=not-a-sign&RequestTime=1"),
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#internal","Type":"Public","ErrorCode":90992}"#.to_vec(),
            fields: json!({
                "group_id": "@TGS#internal", "group_type": "Public",
                "from_account": null, "operator_account": null, "random": null, "online_only": null,
                "msg_body": [], "cloud_custom_data": null, "error_code": 90992, "error_info": null,
                "error_category": "internal_error", "event_time_ms": null, "event_time": null,
                "client_ip": "10.0.0.1", "opt_platform": "iOS", "extra": {},
            }),
        },
    ];
    // A body of exactly --max-body-bytes (default 65536) is accepted.
    let head = r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#big","Type":"Public","ErrorCode":60011,"Pad":""#;
    let tail = r#""}"#;
    let pad = "p".repeat(65536 - head.len() - tail.len());
    let big = format!("{head}{pad}{tail}");
    assert_eq!(big.len(), 65536);
    variants.push(Variant {
        name: "body of exactly --max-body-bytes",
        query: base_query.clone(),
        body: big.into_bytes(),
        fields: json!({
            "group_id": "@TGS#big", "group_type": "Public",
            "from_account": null, "operator_account": null, "random": null, "online_only": null,
            "msg_body": [], "cloud_custom_data": null, "error_code": 60011, "error_info": null,
            "error_category": "rate_limited", "event_time_ms": null, "event_time": null,
            "client_ip": "10.0.0.1", "opt_platform": "iOS", "extra": {"Pad": pad},
        }),
    });

    let before = now_ms();
    for v in &variants {
        let reply = fwd.post(&v.query, &v.body);
        assert_ok(v.name, &reply);
    }
    let after = now_ms();

    let expected = variants.len();
    let records = broker.consume(TOPIC, expected, CONSUME_TIMEOUT);
    let mut checks = Checks::default();
    checks.eq(&format!("records in {TOPIC}"), records.len(), expected);
    let index = by_event_id(&records);
    for v in &variants {
        let id = event_id(APP_ID, &v.body);
        match index.get(&id).map(Vec::as_slice) {
            Some([record]) => {
                check_event_record(&mut checks, v.name, record, &v.body, v.fields.clone(), (before, after))
            }
            other => checks.check(false, || {
                format!("{}: expected one record with event_id {id}, found {}", v.name, other.map_or(0, <[_]>::len))
            }),
        }
    }
    checks.finish();
}

#[test]
fn a_resent_callback_keeps_its_event_id_and_an_exact_replay_publishes_once() {
    let (broker, fwd) = setup(&["--callback-token", TOKEN]);
    let unsigned =
        format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS");
    let first_time = now_secs();
    let first = format!("{unsigned}{}", sign_params_at(TOKEN, &first_time.to_string()));
    assert_ok("first", &fwd.post(&first, DOC_SAMPLE.as_bytes()));
    // The same Sign, RequestTime and body again: answered OK, not published twice (issue 4).
    assert_ok("exact replay", &fwd.post(&first, DOC_SAMPLE.as_bytes()));
    // The same body signed anew (as a retry would be): published again, with the same event_id.
    // Derived from the first RequestTime, not the clock: a second tick in between must not make them equal.
    let resent = format!("{unsigned}{}", sign_params_at(TOKEN, &(first_time - 1).to_string()));
    assert_ok("resent", &fwd.post(&resent, DOC_SAMPLE.as_bytes()));

    let records = broker.consume(TOPIC, 2, CONSUME_TIMEOUT);
    let id = event_id(APP_ID, DOC_SAMPLE.as_bytes());
    let mut checks = Checks::default();
    checks.eq("records", records.len(), 2);
    for (i, r) in records.iter().enumerate() {
        checks.eq(&format!("record {i}: header event_id"), r.header("event_id"), Some(id.clone()));
        checks.eq(
            &format!("record {i}: event.event_id"),
            r.json()["event_id"].as_str().map(str::to_string),
            Some(id.clone()),
        );
    }
    let m = metrics::scrape(&fwd.admin_addr);
    checks.eq("accepted", m.get("imcf_callbacks_total{outcome=\"accepted\"}"), Some(2.0));
    checks.eq("replayed", m.get("imcf_callbacks_total{outcome=\"replayed\"}"), Some(1.0));
    checks.finish();
}

#[test]
fn refusals_answer_the_spec_error_and_publish_nothing() {
    let second_app = "1400000001";
    let (broker, fwd) = setup(&[
        "--callback-token",
        TOKEN,
        "--callback-path",
        "/im/callback",
        "--max-body-bytes",
        "1024",
        "--sdk-app-id",
        second_app,
    ]);
    let mut checks = Checks::default();
    let mut outcomes: BTreeMap<&str, u32> = BTreeMap::new();
    let good = || query(APP_ID, EXCEPTION, Some(TOKEN));
    let unsigned = format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json");
    let body = DOC_SAMPLE.as_bytes();
    let agent = http::agent();
    let post =
        |path_query: &str, body: &[u8]| http::post_with(&agent, &fwd.url(path_query), body, Some("application/json"));

    // (case, outcome, reply, status, ErrorCode, names the ErrorInfo must contain)
    let mut run = |case: &str, outcome: &'static str, reply: Reply, status, code, names: &[&str]| {
        check_refusal(&mut checks, case, &reply, status, code, names);
        *outcomes.entry(outcome).or_default() += 1;
    };

    run("wrong path /", "not_found", post(&format!("/?{}", good()), body), 404, 40400, &[]);
    run("wrong path /im/callback/x", "not_found", post(&format!("/im/callback/x?{}", good()), body), 404, 40400, &[]);
    let get = |path_query: &str| {
        http::raw_request(
            &fwd.callback_addr,
            &format!("GET {path_query} HTTP/1.1\r\nHost: {}\r\n", fwd.callback_addr),
            b"",
        )
    };
    run("GET", "method_not_allowed", get(&format!("/im/callback?{}", good())), 405, 40500, &[]);
    let put = http::raw_request(
        &fwd.callback_addr,
        &format!(
            "PUT /im/callback?{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            good(),
            fwd.callback_addr,
            body.len()
        ),
        body,
    );
    run("PUT", "method_not_allowed", put, 405, 40500, &[]);
    run("GET on a wrong path (path first)", "not_found", get("/nope"), 404, 40400, &[]);
    let oversized = vec![b' '; 1025];
    run(
        "body 1 byte over --max-body-bytes (Content-Length)",
        "body_too_large",
        post(&format!("/im/callback?{}", good()), &oversized),
        413,
        41300,
        &[],
    );
    let chunk = "x".repeat(500);
    let chunked_body = format!("1f4\r\n{chunk}\r\n1f4\r\n{chunk}\r\n1f4\r\n{chunk}\r\n0\r\n\r\n");
    let chunked = http::raw_request(
        &fwd.callback_addr,
        &format!(
            "POST /im/callback?{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            good(),
            fwd.callback_addr
        ),
        chunked_body.as_bytes(),
    );
    run("chunked body over the limit (while reading)", "body_too_large", chunked, 413, 41300, &[]);
    let signed = sign_params(TOKEN);
    run(
        "SdkAppid twice",
        "repeated_parameter",
        post(&format!("/im/callback?{unsigned}&SdkAppid={APP_ID}{signed}"), body),
        400,
        40002,
        &["SdkAppid"],
    );
    run(
        "Sign twice",
        "repeated_parameter",
        post(&format!("/im/callback?{}{signed}", good()), body),
        400,
        40002,
        &["Sign"],
    );
    run(
        "CallbackCommand twice",
        "repeated_parameter",
        post(&format!("/im/callback?{}&CallbackCommand={EXCEPTION}", good()), body),
        400,
        40002,
        &["CallbackCommand"],
    );
    run(
        "unknown SdkAppid twice (repetition checked first)",
        "repeated_parameter",
        post(&format!("/im/callback?SdkAppid=1&SdkAppid=2&CallbackCommand={EXCEPTION}{signed}"), body),
        400,
        40002,
        &["SdkAppid"],
    );
    run(
        "no SdkAppid",
        "missing_sdk_app_id",
        post(&format!("/im/callback?CallbackCommand={EXCEPTION}&contenttype=json{signed}"), body),
        403,
        40301,
        &["SdkAppid"],
    );
    run(
        "empty SdkAppid",
        "missing_sdk_app_id",
        post(&format!("/im/callback?SdkAppid=&CallbackCommand={EXCEPTION}{signed}"), body),
        403,
        40301,
        &["SdkAppid"],
    );
    run(
        "unknown SdkAppid",
        "unknown_sdk_app_id",
        post(&format!("/im/callback?{}", query("1400000099", EXCEPTION, Some(TOKEN))), body),
        403,
        40302,
        &["SdkAppid"],
    );
    run(
        "SdkAppid not a number",
        "unknown_sdk_app_id",
        post(&format!("/im/callback?{}", query("abc", EXCEPTION, Some(TOKEN))), body),
        403,
        40302,
        &["SdkAppid"],
    );
    run(
        "unknown SdkAppid without Sign (app checked first)",
        "unknown_sdk_app_id",
        post(&format!("/im/callback?{}", query("1400000099", EXCEPTION, None)), body),
        403,
        40302,
        &["SdkAppid"],
    );
    let rt = now_secs().to_string();
    run(
        "no Sign",
        "missing_sign",
        post(&format!("/im/callback?{unsigned}&RequestTime={rt}"), body),
        401,
        40101,
        &["Sign"],
    );
    run(
        "no RequestTime",
        "missing_sign",
        post(&format!("/im/callback?{unsigned}&Sign={}", sign(TOKEN, &rt)), body),
        401,
        40101,
        &["RequestTime"],
    );
    run(
        "neither Sign nor RequestTime",
        "missing_sign",
        post(&format!("/im/callback?{unsigned}"), body),
        401,
        40101,
        &[],
    );
    run(
        "Sign of another token",
        "bad_sign",
        post(&format!("/im/callback?{unsigned}{}", sign_params("other-token")), body),
        401,
        40102,
        &["Sign"],
    );
    run(
        "second configured app, wrong Sign (app accepted, Sign refused)",
        "bad_sign",
        post(&format!("/im/callback?{}", query(second_app, EXCEPTION, Some("other-token"))), body),
        401,
        40102,
        &["Sign"],
    );
    run(
        "Sign not hex",
        "bad_sign",
        post(&format!("/im/callback?{unsigned}&Sign={}&RequestTime={rt}", "zz".repeat(32)), body),
        401,
        40102,
        &["Sign"],
    );
    run(
        "Sign too short",
        "bad_sign",
        post(&format!("/im/callback?{unsigned}&Sign=abc123&RequestTime={rt}"), body),
        401,
        40102,
        &["Sign"],
    );
    run(
        "RequestTime 90 s ago",
        "stale_request_time",
        post(&format!("/im/callback?{unsigned}{}", sign_params_at(TOKEN, &(now_secs() - 90).to_string())), body),
        401,
        40103,
        &["RequestTime"],
    );
    run(
        "RequestTime 90 s ahead",
        "stale_request_time",
        post(&format!("/im/callback?{unsigned}{}", sign_params_at(TOKEN, &(now_secs() + 90).to_string())), body),
        401,
        40103,
        &["RequestTime"],
    );
    run(
        "RequestTime not an integer",
        "stale_request_time",
        post(&format!("/im/callback?{unsigned}{}", sign_params_at(TOKEN, "soon")), body),
        401,
        40103,
        &["RequestTime"],
    );
    run(
        "wrong Sign and an oversized body (Sign checked before length)",
        "bad_sign",
        post(&format!("/im/callback?{unsigned}{}", sign_params("other-token")), &oversized),
        401,
        40102,
        &["Sign"],
    );

    // A client that stops sending mid-body: body_read_failed. The answer may not reach a
    // client that has closed its side, so the metric is the observable part.
    let aborted = http::aborted_post(&fwd.callback_addr, &format!("/im/callback?{}", good()), 500, &body[..100]);
    if let Some(reply) = &aborted {
        check_refusal(&mut checks, "aborted body", reply, 400, 40001, &[]);
    }
    outcomes.insert("body_read_failed", 1);

    let scraped = metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_callbacks_total{outcome=\"body_read_failed\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    for (outcome, count) in &outcomes {
        let key = format!("imcf_callbacks_total{{outcome=\"{outcome}\"}}");
        checks.eq(&key, scraped.get(&key), Some(f64::from(*count)));
    }
    for (key, value) in scraped.series("imcf_callbacks_total") {
        let counted = outcomes.keys().any(|o| key == format!("imcf_callbacks_total{{outcome=\"{o}\"}}"));
        checks.check(counted || value == 0.0, || format!("{key} = {value}, expected 0"));
    }
    checks.eq("imcf_dead_letters_total", scraped.get("imcf_dead_letters_total"), Some(0.0));
    checks.eq("records handed to Kafka", handed_to_kafka(&scraped), 0.0);
    checks.finish();

    broker.assert_no_records(TOPIC, NOTHING_WAIT);
    broker.assert_no_records(DEAD_LETTER_TOPIC, Duration::from_secs(1));
}

/// An authentic but unusable body: what is sent and what the SPEC answers.
struct Unusable {
    name: &'static str,
    outcome: &'static str,
    code: i64,
    names: &'static [&'static str],
    query: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

#[test]
fn unusable_bodies_are_refused_and_dead_lettered_raw() {
    // --topic without --dead-letter-topic: the dead-letter topic is "<topic>.dead-letter".
    let topic = "custom.exceptions";
    let dead_letter = "custom.exceptions.dead-letter";
    let broker = Broker::with_topics(&[topic, dead_letter]);
    let fwd = Forwarder::for_broker(&broker, &["--callback-token", TOKEN, "--topic", topic]);

    let q = || query(APP_ID, EXCEPTION, Some(TOKEN));
    let json_ct = Some("application/json");
    let deep = format!(
        r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#deep","Type":"Public","ErrorCode":1,"Deep":{}1{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let cases = vec![
        Unusable { name: "not JSON, no Content-Type", outcome: "invalid_json", code: 40010, names: &[], query: q(), content_type: None, body: b"this is not json".to_vec() },
        Unusable { name: "a JSON array", outcome: "invalid_json", code: 40010, names: &[], query: q(), content_type: json_ct, body: b"[1,2,3]".to_vec() },
        Unusable {
            name: "bad UTF-8", outcome: "invalid_json", code: 40010, names: &[], query: q(),
            content_type: Some("text/plain; charset=utf-8"),
            body: b"{\"CallbackCommand\":\"Group.CallbackSendMsgException\",\"GroupId\":\"\xff\xfe\",\"Type\":\"Public\",\"ErrorCode\":1}".to_vec(),
        },
        Unusable { name: "nested 1000 deep", outcome: "invalid_json", code: 40010, names: &[], query: q(), content_type: json_ct, body: deep.into_bytes() },
        Unusable {
            name: "GroupId twice", outcome: "duplicate_field", code: 40011, names: &["GroupId"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#a","GroupId":"@TGS#b","Type":"Public","ErrorCode":10023}"#.to_vec(),
        },
        Unusable {
            name: "no GroupId", outcome: "missing_field", code: 40012, names: &["GroupId"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","Type":"Public","ErrorCode":10023}"#.to_vec(),
        },
        Unusable {
            name: "Type null", outcome: "missing_field", code: 40012, names: &["Type"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#t","Type":null,"ErrorCode":10023}"#.to_vec(),
        },
        Unusable {
            name: "no ErrorCode", outcome: "missing_field", code: 40012, names: &["ErrorCode"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#e","Type":"Public"}"#.to_vec(),
        },
        Unusable {
            name: "GroupId a number", outcome: "invalid_field", code: 40013, names: &["GroupId"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":123,"Type":"Public","ErrorCode":10023}"#.to_vec(),
        },
        Unusable {
            name: "MsgBody a string", outcome: "invalid_field", code: 40013, names: &["MsgBody"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#m","Type":"Public","ErrorCode":10023,"MsgBody":"text"}"#.to_vec(),
        },
        Unusable {
            name: "EventTime not numeric", outcome: "invalid_field", code: 40013, names: &["EventTime"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#t2","Type":"Public","ErrorCode":10023,"EventTime":"yesterday"}"#.to_vec(),
        },
        Unusable {
            name: "OnlineOnlyFlag not 0/1/bool", outcome: "invalid_field", code: 40013, names: &["OnlineOnlyFlag"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#o","Type":"Public","ErrorCode":10023,"OnlineOnlyFlag":"maybe"}"#.to_vec(),
        },
        Unusable {
            name: "ErrorCode an object", outcome: "invalid_field", code: 40013, names: &["ErrorCode"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#c","Type":"Public","ErrorCode":{"x":1}}"#.to_vec(),
        },
        Unusable {
            name: "CallbackCommand nowhere", outcome: "missing_command", code: 40014, names: &["CallbackCommand"],
            query: format!("SdkAppid={APP_ID}&contenttype=json{}", sign_params(TOKEN)), content_type: json_ct,
            body: br#"{"GroupId":"@TGS#nocmd","Type":"Public","ErrorCode":10023}"#.to_vec(),
        },
        Unusable {
            name: "query and body CallbackCommand differ", outcome: "command_mismatch", code: 40015, names: &["CallbackCommand"], query: q(), content_type: json_ct,
            body: br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#mm","Type":"Public","ErrorCode":10023}"#.to_vec(),
        },
    ];

    let mut checks = Checks::default();
    let mut infos = Vec::new();
    let before = now_ms();
    for c in &cases {
        let reply = raw_post(&fwd, &format!("/?{}", c.query), c.content_type, &c.body);
        infos.push(check_refusal(&mut checks, c.name, &reply, 400, c.code, c.names));
    }
    let after = now_ms();

    let records = broker.consume(dead_letter, cases.len(), CONSUME_TIMEOUT);
    checks.eq("records in the dead-letter topic", records.len(), cases.len());
    let index = by_event_id(&records);
    for (c, info) in cases.iter().zip(&infos) {
        let id = event_id(APP_ID, &c.body);
        let record = match index.get(&id).map(Vec::as_slice) {
            Some([r]) => *r,
            other => {
                checks.check(false, || {
                    format!(
                        "{}: expected one dead letter with event_id {id}, found {}",
                        c.name,
                        other.map_or(0, <[_]>::len)
                    )
                });
                continue;
            }
        };
        let case = c.name;
        checks.eq(&format!("{case}: key"), record.key.as_deref(), Some(id.as_bytes()));
        checks.check(record.value.as_deref() == Some(c.body.as_slice()), || {
            format!("{case}: value is not the raw body: {:?}", record.value.as_deref().map(String::from_utf8_lossy))
        });
        checks.eq(&format!("{case}: header sdk_app_id"), record.header("sdk_app_id").as_deref(), Some(APP_ID));
        checks.eq(&format!("{case}: header reason"), record.header("reason").as_deref(), Some(info.as_str()));
        checks.eq(&format!("{case}: header reason_code"), record.header("reason_code").as_deref(), Some(c.outcome));
        // The Sign is a bearer credential: the query is kept without it.
        checks.eq(
            &format!("{case}: header query"),
            record.header("query").as_deref(),
            Some(without_sign(&c.query).as_str()),
        );
        checks.check(
            record.header("query").is_some_and(|q| c.query.contains("Sign=") && q.contains("RequestTime=")),
            || format!("{case}: the query header keeps the parameters other than Sign: {:?}", record.header("query")),
        );
        checks.eq(
            &format!("{case}: header content-type"),
            record.header("content-type").as_deref(),
            Some(c.content_type.unwrap_or("application/octet-stream")),
        );
        if c.outcome != "missing_command" && c.outcome != "command_mismatch" {
            checks.eq(
                &format!("{case}: header callback_command"),
                record.header("callback_command").as_deref(),
                Some(EXCEPTION),
            );
        }
        check_timestamp(
            &mut checks,
            &format!("{case}: header received_at"),
            record.header("received_at").as_deref(),
            before,
            after,
        );
    }

    let scraped = metrics::scrape_until(&fwd.admin_addr, "imcf_kafka_delivered_total", Duration::from_secs(20), |v| {
        v >= cases.len() as f64
    });
    checks.eq("imcf_dead_letters_total", scraped.get("imcf_dead_letters_total"), Some(cases.len() as f64));
    let mut per_outcome: BTreeMap<&str, f64> = BTreeMap::new();
    for c in &cases {
        *per_outcome.entry(c.outcome).or_default() += 1.0;
    }
    for (outcome, n) in per_outcome {
        let key = format!("imcf_callbacks_total{{outcome=\"{outcome}\"}}");
        checks.eq(&key, scraped.get(&key), Some(n));
    }
    checks.finish();
    broker.assert_no_records(topic, NOTHING_WAIT);
}

#[test]
fn other_commands_are_answered_ok_and_not_published() {
    let (broker, fwd) = setup(&["--callback-token", TOKEN]);
    let state = br#"{"CallbackCommand":"State.StateChange","EventTime":1670574414123,"Info":{"Action":"Login","To_Account":"u1","Reason":"Register"}}"#;
    assert_ok("State.StateChange", &fwd.post(&query(APP_ID, "State.StateChange", Some(TOKEN)), state));
    let after_send = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"@TGS#g","Type":"Public","From_Account":"a","MsgBody":[]}"#;
    assert_ok(
        "Group.CallbackAfterSendMsg",
        &fwd.post(&query(APP_ID, "Group.CallbackAfterSendMsg", Some(TOKEN)), after_send),
    );
    assert_ok(
        "C2C.CallbackAfterSendMsg, command only in the query",
        &fwd.post(&query(APP_ID, "C2C.CallbackAfterSendMsg", Some(TOKEN)), br#"{"From_Account":"a","To_Account":"b"}"#),
    );
    // Other commands are authenticated like any callback.
    let mut checks = Checks::default();
    let forged = fwd.post(&query(APP_ID, "State.StateChange", Some("other-token")), state);
    check_refusal(&mut checks, "State.StateChange with a wrong Sign", &forged, 401, 40102, &["Sign"]);

    let scraped = metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_callbacks_total{outcome=\"ignored\"}",
        Duration::from_secs(5),
        |v| v >= 3.0,
    );
    checks.eq("ignored", scraped.get("imcf_callbacks_total{outcome=\"ignored\"}"), Some(3.0));
    checks.eq("accepted", scraped.get("imcf_callbacks_total{outcome=\"accepted\"}").unwrap_or(0.0), 0.0);
    checks.eq("records handed to Kafka", handed_to_kafka(&scraped), 0.0);
    checks.finish();
    broker.assert_no_records(TOPIC, NOTHING_WAIT);
    broker.assert_no_records(DEAD_LETTER_TOPIC, Duration::from_secs(1));
}

/// The ten error categories of the SPEC.
const CATEGORIES: [&str; 10] = [
    "rate_limited",
    "content_moderated",
    "message_too_large",
    "sender_muted",
    "permission_denied",
    "group_unavailable",
    "invalid_request",
    "blocked_by_callback",
    "internal_error",
    "unknown",
];

#[test]
fn metrics_count_a_known_sequence() {
    let started = now_secs();
    let (broker, fwd) = setup(&["--callback-token", TOKEN, "-X", "statistics.interval.ms=500"]);
    fwd.wait_ready(Duration::from_secs(20));
    let unsigned =
        format!("SdkAppid={APP_ID}&CallbackCommand={EXCEPTION}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS");
    // 3 accepted, RequestTime now, 30 s ago and 30 s ahead (all within the 60 s window).
    assert_ok("accepted 1", &fwd.post(&format!("{unsigned}{}", sign_params(TOKEN)), DOC_SAMPLE.as_bytes()));
    assert_ok(
        "accepted 2",
        &fwd.post(
            &format!("{unsigned}{}", sign_params_at(TOKEN, &(now_secs() - 30).to_string())),
            br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#m2","Type":"Public","ErrorCode":80001}"#,
        ),
    );
    assert_ok(
        "accepted 3",
        &fwd.post(
            &format!("{unsigned}{}", sign_params_at(TOKEN, &(now_secs() + 30).to_string())),
            br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#m3","Type":"Public","ErrorCode":99999}"#,
        ),
    );
    assert_ok(
        "ignored",
        &fwd.post(
            &query(APP_ID, "State.StateChange", Some(TOKEN)),
            br#"{"CallbackCommand":"State.StateChange","Info":{}}"#,
        ),
    );
    let mut checks = Checks::default();
    for i in 0..2 {
        let r = fwd.post(&format!("{unsigned}{}", sign_params("wrong")), DOC_SAMPLE.as_bytes());
        check_refusal(&mut checks, &format!("bad sign {i}"), &r, 401, 40102, &["Sign"]);
    }
    let r = fwd.post(&format!("{unsigned}{}", sign_params(TOKEN)), b"{not json");
    check_refusal(&mut checks, "invalid json", &r, 400, 40010, &[]);

    // 3 events + 1 dead letter.
    let m = metrics::scrape_until(&fwd.admin_addr, "imcf_kafka_delivered_total", Duration::from_secs(20), |v| v >= 4.0);
    checks.eq("imcf_kafka_delivered_total", m.get("imcf_kafka_delivered_total"), Some(4.0));
    let m2 = metrics::scrape_until(&fwd.admin_addr, "imcf_kafka_queue_events", Duration::from_secs(10), |v| v == 0.0);
    checks.eq("imcf_kafka_queue_events", m2.get("imcf_kafka_queue_events"), Some(0.0));

    let expected_outcomes = [("accepted", 3.0), ("ignored", 1.0), ("bad_sign", 2.0), ("invalid_json", 1.0)];
    for (outcome, n) in expected_outcomes {
        let key = format!("imcf_callbacks_total{{outcome=\"{outcome}\"}}");
        checks.eq(&key, m.get(&key), Some(n));
    }
    for (key, value) in m.series("imcf_callbacks_total") {
        let listed = expected_outcomes.iter().any(|(o, _)| key == format!("imcf_callbacks_total{{outcome=\"{o}\"}}"));
        checks.check(listed || value == 0.0, || format!("{key} = {value}, expected 0"));
    }
    for category in CATEGORIES {
        let key = format!("imcf_exceptions_total{{category=\"{category}\"}}");
        let expected = match category {
            "rate_limited" | "content_moderated" | "unknown" => 1.0,
            _ => 0.0,
        };
        checks.eq(&key, m.get(&key), Some(expected));
    }
    for (code, n) in [("10023", 1.0), ("80001", 1.0), ("other", 1.0)] {
        let key = format!("imcf_exceptions_by_code_total{{error_code=\"{code}\"}}");
        checks.eq(&key, m.get(&key), Some(n));
    }
    checks.eq("imcf_dead_letters_total", m.get("imcf_dead_letters_total"), Some(1.0));
    checks.eq("imcf_kafka_delivery_failures_total", m.get("imcf_kafka_delivery_failures_total"), Some(0.0));
    checks.eq("imcf_ready", m.get("imcf_ready"), Some(1.0));
    checks.eq("imcf_build_info{version=\"0.1.0\"}", m.get("imcf_build_info{version=\"0.1.0\"}"), Some(1.0));
    let ack_count = m.get("imcf_ack_duration_seconds_count").unwrap_or(-1.0);
    checks.check(ack_count >= 3.0, || format!("imcf_ack_duration_seconds_count = {ack_count}, expected >= 3"));
    let delivery_count = m.get("imcf_delivery_duration_seconds_count").unwrap_or(-1.0);
    checks.check(delivery_count >= 3.0, || {
        format!("imcf_delivery_duration_seconds_count = {delivery_count}, expected >= 3")
    });
    let meta = m.get("imcf_kafka_metadata_last_success_timestamp_seconds").unwrap_or(-1.0);
    checks.check(meta >= (started - 5) as f64 && meta <= (now_secs() + 5) as f64, || {
        format!("imcf_kafka_metadata_last_success_timestamp_seconds = {meta}, expected about now")
    });
    for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
        checks.check(m.get(name).is_some(), || format!("{name} missing"));
    }

    // librdkafka statistics (every 500 ms here, set through -X).
    let broker_label = format!("broker=\"{}", broker.addr);
    let stats = common::poll_until(Duration::from_secs(10), Duration::from_millis(250), || {
        let m = metrics::scrape(&fwd.admin_addr);
        let up = m.series("imcf_kafka_broker_up").iter().any(|(k, v)| k.contains(&broker_label) && *v == 1.0);
        up.then_some(m)
    });
    match stats {
        Some(s) => {
            for name in ["imcf_kafka_producer_queue_messages", "imcf_kafka_producer_queue_bytes"] {
                checks.check(s.get(name).is_some(), || format!("{name} missing"));
            }
            for p in ["p50", "p99"] {
                let found = s
                    .series("imcf_kafka_broker_rtt_seconds")
                    .iter()
                    .any(|(k, _)| k.contains(&broker_label) && k.contains(&format!("percentile=\"{p}\"")));
                checks.check(found, || {
                    format!("imcf_kafka_broker_rtt_seconds{{percentile=\"{p}\"}} for {} missing", broker.addr)
                });
            }
            for name in [
                "imcf_kafka_broker_request_errors_total",
                "imcf_kafka_broker_request_retries_total",
                "imcf_kafka_broker_request_timeouts_total",
            ] {
                let found = s.series(name).iter().any(|(k, _)| k.contains(&broker_label));
                checks.check(found, || format!("{name} for {} missing", broker.addr));
            }
        }
        None => checks.check(false, || {
            format!(
                "no imcf_kafka_broker_up{{{broker_label}...\"}} = 1 within 10 s; series: {:?}",
                metrics::scrape(&fwd.admin_addr).series("imcf_kafka_broker_up")
            )
        }),
    }
    checks.finish();

    let records = broker.consume(TOPIC, 3, CONSUME_TIMEOUT);
    assert_eq!(records.len(), 3, "events in {TOPIC}");
    let dead = broker.consume(DEAD_LETTER_TOPIC, 1, CONSUME_TIMEOUT);
    assert_eq!(dead.len(), 1, "records in {DEAD_LETTER_TOPIC}");
}

#[test]
fn readiness_and_health_name_kafkas_state() {
    let (_broker, fwd) = setup(&[]);
    let ready = fwd.wait_ready(Duration::from_secs(20));
    let health = http::get(&fwd.admin_url("/healthz"));
    assert_eq!(health.status, 200, "/healthz: {health:?}");
    assert!(health.text().starts_with("ok; kafka: "), "/healthz names Kafka's state: {:?}", health.text());
    assert!(ready.text().starts_with("ready; kafka: "), "/readyz body: {:?}", ready.text());
    let m = metrics::scrape_until(&fwd.admin_addr, "imcf_kafka_ready{reason=\"ok\"}", Duration::from_secs(20), |v| {
        v == 1.0
    });
    let mut checks = Checks::default();
    checks.eq("imcf_ready", m.get("imcf_ready"), Some(1.0));
    checks.eq("imcf_kafka_up", m.get("imcf_kafka_up"), Some(1.0));
    checks.eq("imcf_kafka_topics_missing", m.get("imcf_kafka_topics_missing"), Some(0.0));
    let ready = http::get(&fwd.admin_url("/readyz"));
    checks.eq(
        "/readyz once Kafka is seen",
        ready.text().trim_end(),
        "ready; kafka: Kafka reachable, every topic exists",
    );
    // Admin endpoints are not served on the callback listener.
    let on_callback = http::get(&fwd.url("/healthz"));
    checks.check(on_callback.status != 200, || format!("/healthz on the callback listener: {on_callback:?}"));
    checks.finish();
}

#[test]
fn without_a_broker_the_instance_stays_ready_and_shows_kafka_down() {
    // Port 9 (discard): nothing listens there on a test machine, and no test's broker can take it.
    let fwd = Forwarder::start(&["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID]);
    let ready = fwd.wait_ready(Duration::from_secs(20));
    let down = metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_kafka_ready{reason=\"metadata_failed\"}",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    let reply = fwd.post(&query(APP_ID, EXCEPTION, None), DOC_SAMPLE.as_bytes());
    let later = http::get(&fwd.admin_url("/readyz"));
    let mut checks = Checks::default();
    checks.check(ready.text().starts_with("ready; kafka: "), || format!("/readyz: {:?}", ready.text()));
    checks.check(later.status == 200 && later.text().contains("metadata request failed"), || {
        format!("/readyz once a metadata request failed: {later:?}")
    });
    checks.eq("imcf_kafka_up", down.get("imcf_kafka_up"), Some(0.0));
    checks.eq("imcf_kafka_ready{reason=\"ok\"}", down.get("imcf_kafka_ready{reason=\"ok\"}"), Some(0.0));
    checks.eq("imcf_ready", down.get("imcf_ready"), Some(1.0));
    checks.eq("a callback is taken into the producer queue", reply.status, 200);
    checks.finish();
}

#[test]
fn a_missing_dead_letter_topic_is_shown_and_does_not_make_the_instance_unready() {
    // tansu 0.6 creates no topic on demand: the dead-letter topic stays missing.
    let broker = Broker::with_topics(&[TOPIC]);
    let fwd = Forwarder::for_broker(&broker, &[]);
    fwd.wait_ready(Duration::from_secs(20));
    let m = metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_kafka_ready{reason=\"topic_missing\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    let ready = http::get(&fwd.admin_url("/readyz"));
    let reply = fwd.post(&query(APP_ID, EXCEPTION, None), DOC_SAMPLE.as_bytes());
    let mut checks = Checks::default();
    checks.eq("imcf_kafka_topics_missing", m.get("imcf_kafka_topics_missing"), Some(1.0));
    checks.eq("imcf_kafka_up", m.get("imcf_kafka_up"), Some(1.0));
    checks.check(ready.status == 200 && ready.text().contains(DEAD_LETTER_TOPIC), || {
        format!("/readyz names the missing topic and stays 200: {ready:?}")
    });
    checks.eq("an exception callback is still published", reply.status, 200);
    checks.finish();
    assert_eq!(broker.consume(TOPIC, 1, CONSUME_TIMEOUT).len(), 1, "the event reached {TOPIC}");
}

#[test]
fn sigterm_during_load_delivers_every_acknowledged_event_and_refuses_the_rest() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const THREADS: usize = 4;
    let (broker, mut fwd) = setup(&[]);
    fwd.wait_ready(Duration::from_secs(20));
    let url = fwd.url(&format!("/?{}", query(APP_ID, EXCEPTION, None)));
    let acked = Arc::new(AtomicUsize::new(0));
    let signalled = Arc::new(AtomicBool::new(false));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, acked, signalled) = (url.clone(), acked.clone(), signalled.clone());
            std::thread::spawn(move || {
                // One agent per thread: one keep-alive connection each.
                let agent = http::agent();
                let mut ids = Vec::new();
                let mut other = Vec::new();
                for i in 0..5_000 {
                    let body = format!(
                        r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#load{t}","Type":"Public","Random":{i},"ErrorCode":10023,"EventTime":{}}}"#,
                        1_670_574_414_123u64 + i as u64
                    );
                    let sent_after_signal = signalled.load(Ordering::SeqCst);
                    match http::try_post_with(&agent, &url, body.as_bytes()) {
                        Ok(reply) if reply.status == 200 && reply.body.as_slice() == tencent::OK_BODY => {
                            ids.push(event_id(APP_ID, body.as_bytes()));
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // Refused once shutdown began: 503 with the Tencent-format body.
                        Ok(reply) if reply.status == 503 && reply.json().is_some_and(|v| v["ErrorCode"] == 50300) => {}
                        // The listener closed.
                        Err(_) if sent_after_signal || signalled.load(Ordering::SeqCst) => break,
                        answer => other.push(format!("request {i}: {answer:?}")),
                    }
                }
                (ids, other)
            })
        })
        .collect();
    let reached = common::poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
        (acked.load(Ordering::SeqCst) >= 400).then_some(())
    });
    assert!(reached.is_some(), "only {} callbacks acknowledged before SIGTERM", acked.load(Ordering::SeqCst));
    signalled.store(true, Ordering::SeqCst);
    fwd.sigterm();
    let status = fwd.wait_exit(Duration::from_secs(40));
    let mut sent = BTreeSet::new();
    let mut unexpected = Vec::new();
    for h in handles {
        let (ids, other) = h.join().expect("sender thread");
        sent.extend(ids);
        unexpected.extend(other);
    }
    assert!(unexpected.is_empty(), "answers other than OK, 503/50300 or a closed listener: {unexpected:?}");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let done = fwd
        .wait_log("shutdown complete", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no \"shutdown complete\" log line:\n{}", fwd.output.all_text()));
    assert_eq!(
        common::forwarder::log_field(&done, "undelivered").and_then(Value::as_u64),
        Some(0),
        "undelivered in {done}"
    );
    assert!(sent.len() < THREADS * 5_000, "the load was still running at SIGTERM");

    let records = broker.consume(TOPIC, sent.len(), Duration::from_secs(60));
    let got: BTreeSet<String> = records.iter().filter_map(|r| r.header("event_id")).collect();
    let missing = sent.difference(&got).count();
    assert_eq!(missing, 0, "{missing} acknowledged events missing from {TOPIC} ({} records read)", records.len());
}

#[test]
fn sigterm_turns_unready_and_reports_what_kafka_did_not_take() {
    let (mut broker, mut fwd) = setup(&["--shutdown-timeout", "3"]);
    fwd.wait_ready(Duration::from_secs(20));
    broker.kill();
    const N: u64 = 5;
    for i in 0..N {
        let body = format!(
            r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#gone","Type":"Public","Random":{i},"ErrorCode":10023}}"#
        );
        assert_ok("accepted while Kafka is gone", &fwd.post(&query(APP_ID, EXCEPTION, None), body.as_bytes()));
    }
    let signalled = Instant::now();
    fwd.sigterm();

    // During the flush (up to --shutdown-timeout), /readyz must not say ready, and new callbacks must not be
    // accepted. Each probe is kept with when its answer came, so that a loaded machine only delays the turn.
    let mut readyz: Vec<(Duration, u16)> = Vec::new();
    let mut late_callback = None;
    while signalled.elapsed() < Duration::from_millis(2500) {
        let status = http::try_get(&fwd.admin_url("/readyz")).map_or(0, |r| r.status);
        readyz.push((signalled.elapsed(), status));
        // Sent once the service said it is shutting down: from then on no callback may be taken.
        if late_callback.is_none() && status == 503 {
            late_callback = Some(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(2)))
                    .build()
                    .new_agent()
                    .post(&fwd.url(&format!("/?{}", query(APP_ID, EXCEPTION, None))))
                    .send(DOC_SAMPLE.as_bytes())
                    .map(|r| r.status().as_u16()),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = fwd.wait_exit(Duration::from_secs(15));
    let exit_after = signalled.elapsed();

    let mut checks = Checks::default();
    checks.eq("exit status", status.code(), Some(0));
    checks.check(exit_after < Duration::from_secs(10), || {
        format!("exit {exit_after:?} after SIGTERM with --shutdown-timeout 3")
    });
    let turned = readyz.iter().position(|(_, status)| *status != 200);
    checks.check(turned.is_some_and(|i| readyz[i].0 <= Duration::from_millis(1500)), || {
        format!("/readyz did not stop answering 200 within 1.5 s of SIGTERM: {readyz:?} (0 = no answer)")
    });
    checks.check(turned.is_none_or(|i| readyz[i..].iter().all(|(_, status)| *status != 200)), || {
        format!("/readyz answered 200 again after turning unready: {readyz:?} (0 = no answer)")
    });
    checks.check(readyz.iter().any(|(_, status)| *status == 503), || {
        format!("/readyz never answered 503 during the flush window: {readyz:?} (0 = no answer)")
    });
    // The callback listener is closed by then (a refused connection), or its open connections answer 503.
    checks.check(matches!(late_callback, Some(Ok(503) | Err(_))), || {
        format!("a callback after /readyz answered 503 was answered {late_callback:?}, expected refused or 503")
    });
    match fwd.wait_log("shutdown complete", Duration::from_secs(1)) {
        Some(done) => checks.eq(
            "undelivered",
            common::forwarder::log_field(&done, "undelivered").and_then(Value::as_u64),
            Some(N),
        ),
        None => checks.check(false, || "no \"shutdown complete\" log line".to_string()),
    }
    checks.finish();
}

/// `query` without its `Sign` parameter (the dead letter's `query` header).
fn without_sign(query: &str) -> String {
    query.split('&').filter(|pair| !pair.starts_with("Sign=")).collect::<Vec<_>>().join("&")
}

/// The Java client's `Utils.murmur2`, written from its source, as the oracle of the partition test.
fn java_murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = 0x9747_b28c_u32 as i32 ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = i32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= i32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition the Java producer's default partitioner picks for a keyed record.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn java_murmur2_matches_kafkas_own_known_answers() {
    // Kafka's UtilsTest.testMurmur2.
    let cases: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ];
    for (data, expected) in cases {
        assert_eq!(java_murmur2(data), expected, "murmur2({:?})", String::from_utf8_lossy(data));
    }
}

#[test]
fn group_ids_land_on_the_partitions_the_java_client_picks() {
    let broker = Broker::start();
    common::broker::create_topics_with_partitions(&broker.addr, &[TOPIC], 12);
    broker.create_topics(&[DEAD_LETTER_TOPIC]);
    let fwd = Forwarder::for_broker(&broker, &[]);
    fwd.wait_ready(Duration::from_secs(20));
    let groups: Vec<String> = (0..48).map(|i| format!("@TGS#java-{i}")).collect();
    for (i, group) in groups.iter().enumerate() {
        let body = format!(
            r#"{{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"{group}","Type":"Public","Random":{i},"ErrorCode":10023}}"#
        );
        assert_ok(group, &fwd.post(&query(APP_ID, EXCEPTION, None), body.as_bytes()));
    }
    let records = broker.consume(TOPIC, groups.len(), CONSUME_TIMEOUT);
    assert_eq!(records.len(), groups.len(), "records in {TOPIC}");
    let mut checks = Checks::default();
    let used: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    checks.check(used.len() > 6, || format!("48 groups on only {} of 12 partitions", used.len()));
    for record in &records {
        let key = record.key_str();
        checks.eq(&format!("partition of {key}"), record.partition, java_partition(key.as_bytes(), 12));
    }
    checks.finish();
}
