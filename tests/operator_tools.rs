//! The operator tools of issue 12 besides the spool tools: `send-test` against a running forwarder (`--dev`, its
//! read-back log shows what reached Kafka), and `check` against tansu brokers, no broker, and a damaged spool.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::forwarder::{log_field, log_message, run_to_exit};
use common::tencent::{APP_ID, TOKEN};
use common::{Broker, Forwarder};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC: &str = "im.group.send-msg-exception";
const DEAD_LETTERS: &str = "im.group.send-msg-exception.dead-letter";

/// Runs `send-test --url <forwarder> --sdk-app-id APP_ID` with `extra`; exit success and output.
fn send_test(fwd: &Forwarder, extra: &[&str]) -> (bool, String) {
    let url = fwd.url("/");
    let mut args = vec!["send-test", "--url", url.as_str(), "--sdk-app-id", APP_ID];
    args.extend_from_slice(extra);
    let (status, output) = run_to_exit(&args, &[], EXIT_TIMEOUT);
    (status.success(), output)
}

/// The events the `--dev` forwarder read back from Kafka so far, waiting up to 15 s for `count` of them.
fn read_back(fwd: &Forwarder, count: usize) -> Vec<Value> {
    let events = || -> Vec<Value> {
        fwd.output
            .json_lines()
            .iter()
            .filter(|l| log_message(l) == Some("event read back from Kafka"))
            .filter_map(|l| log_field(l, "value").and_then(Value::as_str).and_then(|v| serde_json::from_str(v).ok()))
            .collect()
    };
    common::poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let found = events();
        (found.len() >= count).then_some(())
    });
    events()
}

#[test]
fn send_test_signed_from_a_token_file_is_answered_ok_and_the_event_reaches_kafka() {
    let fwd = Forwarder::start(&["--dev", "--sdk-app-id", APP_ID, "--callback-token", TOKEN]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    let token_path = token_file.to_str().expect("UTF-8 path");
    let (ok, output) =
        send_test(&fwd, &["--token-file", token_path, "--error-code", "80001", "--group-id", "@TGS#send-test"]);
    assert!(ok, "send-test should exit 0; output:\n{output}");
    assert!(output.contains(r#"1/1: 200 {"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#), "{output}");
    assert!(!output.contains(TOKEN), "the token must not be printed:\n{output}");
    let events = read_back(&fwd, 1);
    assert_eq!(events.len(), 1, "one event read back; forwarder output:\n{}", fwd.output.all_text());
    let event = &events[0];
    assert_eq!(event["group_id"], "@TGS#send-test", "{event}");
    assert_eq!(event["error_code"], 80001, "{event}");
    assert_eq!(event["error_category"], "content_moderated", "{event}");
    assert_eq!(event["sdk_app_id"], APP_ID.parse::<u64>().unwrap(), "{event}");
    assert_eq!(event["client_ip"], "10.0.0.1", "{event}");
    let sent_ms = event["event_time_ms"].as_i64().expect("event_time_ms");
    assert!((common::tencent::now_ms() - sent_ms).abs() < 60_000, "EventTime is fresh: {event}");
}

#[test]
fn send_test_with_a_wrong_token_exits_non_zero_and_prints_the_401() {
    let fwd = Forwarder::start(&["--dev", "--sdk-app-id", APP_ID, "--callback-token", TOKEN]);
    let (ok, output) = send_test(&fwd, &["--token", "not-the-secret-token"]);
    assert!(!ok, "send-test with a wrong token should fail; output:\n{output}");
    assert!(output.contains("1/1: 401 {"), "the 401 answer is printed:\n{output}");
    assert!(output.contains("FAIL: 0 of 1"), "{output}");
    assert!(!output.contains("not-the-secret-token"), "the token must not be printed:\n{output}");
    let (ok, output) = send_test(&fwd, &[]);
    assert!(!ok && output.contains("1/1: 401 {"), "unsigned, to a forwarder with a token:\n{output}");
    // No forwarder listening: no answer, a failure, no hang.
    let (status, output) = run_to_exit(
        &["send-test", "--url", &format!("http://127.0.0.1:{}/", common::free_port()), "--sdk-app-id", APP_ID],
        &[],
        EXIT_TIMEOUT,
    );
    assert!(!status.success() && output.contains("1/1: no answer"), "{output}");
    let (status, output) =
        run_to_exit(&["send-test", "--url", "https://example.com/", "--sdk-app-id", APP_ID], &[], EXIT_TIMEOUT);
    assert!(!status.success() && output.contains("http://"), "https is refused, naming http://:\n{output}");
    assert!(read_back(&fwd, 0).is_empty(), "nothing published; forwarder output:\n{}", fwd.output.all_text());
    // --help shows no token from the environment.
    for (tool, variable) in [("send-test", "IMCF_SEND_TEST_TOKEN"), ("check", "IMCF_CALLBACK_TOKEN")] {
        let (status, output) = run_to_exit(&[tool, "--help"], &[(variable, "not-the-secret-token")], EXIT_TIMEOUT);
        assert!(status.success() && !output.contains("not-the-secret-token"), "{tool} --help:\n{output}");
    }
}

#[test]
fn send_test_count_3_sends_3_distinct_events() {
    let fwd = Forwarder::start(&["--dev", "--sdk-app-id", APP_ID]);
    let (ok, output) = send_test(&fwd, &["--count", "3"]);
    assert!(ok, "send-test --count 3 should exit 0; output:\n{output}");
    for index in 1..=3 {
        assert!(output.contains(&format!("{index}/3: 200 ")), "answer {index}:\n{output}");
    }
    assert!(output.contains("ok: 3 of 3"), "{output}");
    let events = read_back(&fwd, 3);
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "3 distinct events read back: {events:?}");
    for event in &events {
        assert_eq!(event["error_code"], 10023, "the default ErrorCode: {event}");
        assert_eq!(event["group_id"], "@TGS#2J4SZEAEL", "{event}");
    }
}

/// Runs `check` with `args`; exit success, output, and how long it took.
fn check(args: &[&str]) -> (bool, String, Duration) {
    let mut argv = vec!["check"];
    argv.extend_from_slice(args);
    let started = Instant::now();
    let (status, output) = run_to_exit(&argv, &[], EXIT_TIMEOUT);
    (status.success(), output, started.elapsed())
}

/// The output lines that start with `FAIL`.
fn failures(output: &str) -> Vec<&str> {
    output.lines().filter(|l| l.contains("] FAIL ")).collect()
}

#[test]
fn check_passes_against_a_broker_with_the_topics_and_writes_nothing() {
    let broker = Broker::with_topics(&[TOPIC, DEAD_LETTERS]);
    let spool = tempfile::tempdir().expect("spool tempdir");
    let spool_dir = spool.path().join("spool"); // missing: can be created
    let spool_path = spool_dir.to_str().expect("UTF-8 path");
    let (ok, output, _) = check(&[
        "--kafka-brokers",
        &broker.addr,
        "--sdk-app-id",
        APP_ID,
        "--callback-token",
        TOKEN,
        "--spool-dir",
        spool_path,
        "--durability",
        "disk",
    ]);
    assert!(ok, "check should pass; output:\n{output}");
    assert!(failures(&output).is_empty(), "{output}");
    for expected in [
        "ok configuration: app(s) 1400000000 (1 token(s))",
        "ok kafka properties: valid",
        &format!("ok kafka {}: answered, 1 broker(s)", broker.addr),
        &format!("ok topic {TOPIC}: 1 partition(s), leaders: 0: broker"),
        &format!("ok topic {DEAD_LETTERS}: 1 partition(s), leaders: 0: broker"),
        "ok spool directory",
        "ok spool writable",
        "ok spool free space",
        "ok spool segments",
    ] {
        assert!(output.contains(expected), "no line with {expected:?}:\n{output}");
    }
    assert!(!output.contains(TOKEN), "the token must not be printed:\n{output}");
    assert!(!spool_dir.exists(), "the spool directory created for the check is removed again");
    broker.assert_no_records(TOPIC, Duration::from_millis(500));
    broker.assert_no_records(DEAD_LETTERS, Duration::from_millis(500));
}

#[test]
fn check_names_a_missing_dead_letter_topic_and_does_not_create_it() {
    // librdkafka's mock cluster creates a topic when a client asks for it by name and allows creation (as Apache
    // Kafka does by default; tansu never does): only a check that turns creation off leaves the topic missing.
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("event topic");
    let bootstrap = cluster.bootstrap_servers();
    for run in ["first", "second"] {
        let (ok, output, _) = check(&["--kafka-brokers", &bootstrap, "--sdk-app-id", APP_ID, "--allow-unsigned"]);
        assert!(!ok, "{run} run: check should fail; output:\n{output}");
        assert!(output.contains(&format!("ok topic {TOPIC}: 1 partition(s)")), "{run} run:\n{output}");
        let failed = failures(&output);
        assert_eq!(failed.len(), 1, "{run} run: one failure:\n{output}");
        assert!(
            failed[0].contains(&format!("FAIL topic {DEAD_LETTERS}: does not exist")),
            "{run} run: the failure names the dead-letter topic:\n{output}"
        );
    }
}

#[test]
fn check_fails_within_the_timeout_without_a_broker_and_on_a_bad_configuration() {
    let (ok, output, took) =
        check(&["--kafka-brokers", "127.0.0.1:9", "--timeout", "2", "--sdk-app-id", APP_ID, "--allow-unsigned"]);
    assert!(!ok, "check without a broker should fail; output:\n{output}");
    // Room for a loaded machine, and still short of the 10 s an ignored --timeout (its default) would take.
    assert!(took < Duration::from_secs(8), "check took {took:?} with --timeout 2:\n{output}");
    assert!(output.contains("FAIL kafka 127.0.0.1:9: "), "{output}");
    assert!(output.contains(&format!("FAIL topic {DEAD_LETTERS}: not checked")), "{output}");
    let (ok, output, _) = check(&["--dev", "--sdk-app-id", APP_ID, "--topic", "not a topic"]);
    assert!(!ok && output.contains("FAIL configuration: --topic"), "{output}");
    let (ok, output, _) = check(&["--dev", "--sdk-app-id", APP_ID, "-X", "no.such.property=1"]);
    assert!(!ok && output.contains("FAIL kafka properties: "), "{output}");
}

#[test]
fn check_fails_on_a_damaged_spool() {
    let spool = tempfile::tempdir().expect("spool tempdir");
    let spool_path = spool.path().to_str().expect("UTF-8 path");
    let (ok, output, _) = check(&["--dev", "--sdk-app-id", APP_ID, "--spool-dir", spool_path]);
    assert!(ok, "an empty spool passes:\n{output}");
    let segment = spool.path().join("segment-0000000000000001.spool");
    std::fs::write(&segment, b"this is no spool frame, just bytes where frames should be").expect("write");
    let (ok, output, _) = check(&["--dev", "--sdk-app-id", APP_ID, "--spool-dir", spool_path]);
    assert!(!ok, "a damaged spool fails the check:\n{output}");
    let failed = failures(&output);
    assert_eq!(failed.len(), 1, "one failure:\n{output}");
    assert!(
        failed[0].contains("FAIL spool segments") && failed[0].contains("segment-0000000000000001.spool"),
        "the failure names the segment:\n{output}"
    );
    assert!(output.contains("ok spool writable"), "{output}");
    let left: Vec<_> = std::fs::read_dir(spool.path()).expect("read_dir").map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("segment-0000000000000001.spool")], "only the segment is left");
}
