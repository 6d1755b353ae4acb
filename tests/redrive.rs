//! `redrive` (issue 12) against tansu with both topics created: a dead letter whose body is valid today (as if an
//! older version had refused it) is published as the record a live callback of the same body gets; the forwarder's
//! own dead letter of a still-invalid body is reported as still failing; a second run publishes nothing; `--dry-run`
//! publishes nothing. Records are counted by event_id, never by offsets.

mod common;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

use common::forwarder::run_to_exit;
use common::kafka::Record;
use common::tencent::{self, APP_ID, EXCEPTION};
use common::{Broker, Forwarder};

const TOPIC: &str = "im.group.send-msg-exception";
const DEAD_LETTERS: &str = "im.group.send-msg-exception.dead-letter";
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a read goes on past its marker (redrive's records are in Kafka before it exits: no more is needed).
const MARKER_GRACE: Duration = Duration::from_millis(500);
const RECEIVED_AT: &str = "2026-01-02T03:04:05.678Z";

fn body(group: &str) -> String {
    format!(
        concat!(
            "{{\"CallbackCommand\":\"{}\",\"GroupId\":\"{}\",\"Type\":\"Public\",\"From_Account\":\"jared\",",
            "\"Operator_Account\":\"admin\",\"Random\":7,\"MsgBody\":[],\"ErrorCode\":10023,",
            "\"ErrorInfo\":\"msg count exceeds limit\",\"EventTime\":\"1670574414123\"}}"
        ),
        EXCEPTION, group
    )
}

/// Appends a dead letter with the headers the forwarder writes, as if an older version had refused `body`.
fn produce_dead_letter(broker: &Broker, app_id: &str, body: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer");
    let event_id = tencent::event_id(app_id, body);
    let query = tencent::query(app_id, EXCEPTION, None) + "&RequestTime=1600000000";
    let headers: [(&str, &str); 8] = [
        ("event_id", &event_id),
        ("sdk_app_id", app_id),
        ("reason", "an older parser refused this body"),
        ("reason_code", "invalid_field"),
        ("query", &query),
        ("received_at", RECEIVED_AT),
        ("content-type", "application/json"),
        ("callback_command", EXCEPTION),
    ];
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_bytes()) }));
    producer
        .send(BaseRecord::to(DEAD_LETTERS).key(event_id.as_bytes()).payload(body).headers(headers))
        .map_err(|(e, _)| e)
        .expect("send dead letter");
    producer.flush(Duration::from_secs(15)).expect("dead letter delivered");
}

fn redrive(broker: &Broker, extra: &[&str]) -> String {
    let mut args = vec!["redrive", "--kafka-brokers", broker.addr.as_str(), "--sdk-app-id", APP_ID, "--allow-unsigned"];
    args.extend_from_slice(extra);
    let (status, output) = run_to_exit(&args, &[], EXIT_TIMEOUT);
    assert!(status.success(), "redrive {extra:?} should exit 0; output:\n{output}");
    output
}

fn with_id<'r>(records: &'r [Record], event_id: &str) -> Vec<&'r Record> {
    records.iter().filter(|r| r.header("event_id").as_deref() == Some(event_id)).collect()
}

#[test]
fn redrive_publishes_what_passes_today_as_a_live_callback_once_and_reports_what_still_fails() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTERS]);
    let fwd = Forwarder::for_broker(&broker, &["--allow-unsigned"]);
    let valid = body("@TGS#redrive");
    let valid_id = tencent::event_id(APP_ID, valid.as_bytes());
    let invalid = br#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"#;
    let invalid_id = tencent::event_id(APP_ID, invalid);
    let query = tencent::query(APP_ID, EXCEPTION, None);
    // The same body live (for comparison), and a body the forwarder dead-letters today.
    assert_eq!(fwd.post(&query, valid.as_bytes()).status, 200);
    assert_eq!(fwd.post(&query, invalid).status, 400);
    assert_eq!(broker.consume(DEAD_LETTERS, 1, CONSUME_TIMEOUT).len(), 1, "the forwarder's dead letter");
    // The live event in Kafka before anything is counted by a marker read (below).
    assert_eq!(with_id(&broker.consume(TOPIC, 1, CONSUME_TIMEOUT), &valid_id).len(), 1, "the live event");
    // The valid body as an older version's dead letter, and one of an app not configured here.
    produce_dead_letter(&broker, APP_ID, valid.as_bytes());
    produce_dead_letter(&broker, "1400000999", body("@TGS#other-app").as_bytes());

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("redriven.ids");
    let state_arg = state.to_str().expect("UTF-8 path");

    // --dry-run first: prints what it would do, publishes nothing, writes no state.
    let output = redrive(&broker, &["--dry-run"]);
    assert!(output.contains("would redrive 1, still failing 1, skipped 1"), "{output}");
    assert!(output.contains("would redrive 0/"), "{output}");
    assert!(!state.exists(), "a dry run writes no state file");
    // redrive waits for each record's delivery before it exits: whatever it published comes before a marker.
    let records = broker.records_until_marker(TOPIC, MARKER_GRACE);
    assert_eq!(with_id(&records, &valid_id).len(), 1, "only the live event after --dry-run: {records:?}");

    let output = redrive(&broker, &["--state-file", state_arg]);
    assert!(output.contains("read 3 dead letter(s): redriven 1, still failing 1, skipped 1"), "{output}");
    assert!(output.contains(&format!("event {valid_id} -> {TOPIC}")), "{output}");
    assert!(output.contains("still failing, invalid_json: 1"), "{output}");
    assert!(output.contains("skipped, not for a configured app: 1"), "{output}");
    assert_eq!(std::fs::read_to_string(&state).expect("state file"), format!("{valid_id}\n"));

    let records = broker.records_until_marker(TOPIC, MARKER_GRACE);
    let copies = with_id(&records, &valid_id);
    assert_eq!(copies.len(), 2, "the live event and the redriven one: {records:?}");
    assert!(with_id(&records, &invalid_id).is_empty(), "the invalid body is not published");
    let (live, redriven) = (copies[0], copies[1]);
    assert_eq!(redriven.key, live.key, "same key");
    assert_eq!(redriven.key_str(), "@TGS#redrive");
    assert_eq!(redriven.headers, live.headers, "same headers, same order");
    let mut live_json = live.json();
    let mut redriven_json = redriven.json();
    assert_eq!(
        tencent::parse_rfc3339_ms(redriven_json["received_at"].as_str().expect("received_at")),
        tencent::parse_rfc3339_ms(RECEIVED_AT),
        "received_at is the dead letter's: {redriven_json}"
    );
    live_json["received_at"] = Value::Null;
    redriven_json["received_at"] = Value::Null;
    assert_eq!(redriven_json, live_json, "the same event but for received_at");

    // Again: nothing new; the redriven id is skipped.
    let output = redrive(&broker, &["--state-file", state_arg]);
    assert!(output.contains("redriven 0, still failing 1, skipped 2"), "{output}");
    assert!(output.contains("skipped, already redriven: 1"), "{output}");
    let records = broker.records_until_marker(TOPIC, MARKER_GRACE);
    assert_eq!(with_id(&records, &valid_id).len(), 2, "nothing published twice: {records:?}");
    assert_eq!(std::fs::read_to_string(&state).expect("state file"), format!("{valid_id}\n"));
}

#[test]
fn redrive_needs_a_state_file_unless_dry_run_and_honours_from_and_limit() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTERS]);
    let (status, output) = run_to_exit(
        &["redrive", "--kafka-brokers", broker.addr.as_str(), "--sdk-app-id", APP_ID, "--allow-unsigned"],
        &[],
        EXIT_TIMEOUT,
    );
    assert!(!status.success() && output.contains("--state-file"), "{output}");
    for group in ["@TGS#a", "@TGS#b", "@TGS#c"] {
        produce_dead_letter(&broker, APP_ID, body(group).as_bytes());
    }
    let output = redrive(&broker, &["--dry-run", "--from", "1", "--limit", "1"]);
    assert!(output.contains("read 1 dead letter(s): would redrive 1"), "{output}");
    assert!(output.contains("would redrive 0/1:"), "{output}");
    let output = redrive(&broker, &["--dry-run", "--to", "2"]);
    assert!(output.contains("read 2 dead letter(s): would redrive 2"), "{output}");
    broker.assert_no_records(TOPIC, Duration::from_millis(500));
}
