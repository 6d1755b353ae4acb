//! Black-box tests of the command line: configuration errors and --dev mode.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::forwarder::{log_field, run_to_exit};
use common::tencent::{query, APP_ID, DOC_SAMPLE, EXCEPTION, OK_BODY};
use common::{http, Forwarder};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the binary with `args`, expects a non-zero exit before any "listening" line, and
/// returns its output.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let (status, output) = run_to_exit(args, envs, EXIT_TIMEOUT);
    assert!(!status.success(), "{args:?} should fail, exited {status}; output:\n{output}");
    assert!(
        !output.contains("\"listening\"") && !output.contains(" listening"),
        "{args:?} bound its listeners before failing; output:\n{output}"
    );
    output
}

/// Listener flags on ports nobody uses, so a wrongly started process cannot clash.
fn listen_args() -> Vec<String> {
    vec![
        "--listen".into(),
        format!("127.0.0.1:{}", common::free_port()),
        "--admin-listen".into(),
        format!("127.0.0.1:{}", common::free_port()),
    ]
}

fn with_listen<'a>(listen: &'a [String], args: &[&'a str]) -> Vec<&'a str> {
    listen.iter().map(String::as_str).chain(args.iter().copied()).collect()
}

#[test]
fn missing_sdk_app_id_is_refused_naming_the_flag() {
    let listen = listen_args();
    let output = refused(&with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9"]), &[]);
    assert!(output.contains("--sdk-app-id"), "output names --sdk-app-id:\n{output}");
}

#[test]
fn missing_kafka_brokers_without_dev_is_refused_naming_the_flag() {
    let listen = listen_args();
    let output = refused(&with_listen(&listen, &["--sdk-app-id", APP_ID]), &[]);
    assert!(output.contains("--kafka-brokers"), "output names --kafka-brokers:\n{output}");
}

#[test]
fn unknown_kafka_property_is_refused_naming_it() {
    let listen = listen_args();
    let output = refused(
        &with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID, "-X", "no.such.property=1"]),
        &[],
    );
    assert!(output.contains("no.such.property"), "output names the property:\n{output}");
}

#[test]
fn kafka_property_without_a_value_is_refused_naming_the_flag() {
    let listen = listen_args();
    let output =
        refused(&with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID, "-X", "acks"]), &[]);
    assert!(
        output.contains("--kafka-property") || output.contains("-X"),
        "output names -X/--kafka-property:\n{output}"
    );
}

#[test]
fn malformed_values_are_refused_naming_the_flag() {
    for (flag, value) in [("--log-format", "xml"), ("--max-body-bytes", "lots"), ("--shutdown-timeout", "soon")] {
        let listen = listen_args();
        let output = refused(
            &with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID, flag, value]),
            &[],
        );
        assert!(output.contains(flag), "output names {flag}:\n{output}");
    }
}

#[test]
fn dev_mode_runs_the_whole_path_without_a_broker() {
    let mut fwd = Forwarder::start(&["--dev", "--sdk-app-id", APP_ID]);
    let reply = fwd.post(&query(APP_ID, EXCEPTION, None), DOC_SAMPLE.as_bytes());
    assert_eq!((reply.status, reply.body.as_slice()), (200, OK_BODY), "doc sample in --dev: {}", reply.text());
    // The embedded cluster's bootstrap address and the event read back from it are logged.
    let started = fwd.logs_with_message("embedded Kafka started (--dev)");
    assert!(
        started
            .first()
            .and_then(|l| log_field(l, "bootstrap_servers"))
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "no \"embedded Kafka started (--dev)\" line with bootstrap_servers; output:\n{}",
        fwd.output.all_text()
    );
    let read_back = fwd
        .wait_log("event read back from Kafka", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no \"event read back from Kafka\" line; output:\n{}", fwd.output.all_text()));
    assert_eq!(log_field(&read_back, "key").and_then(Value::as_str), Some("@TGS#2J4SZEAEL"), "key in {read_back}");
    let event: Value = log_field(&read_back, "value")
        .and_then(Value::as_str)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_else(|| panic!("no event JSON in {read_back}"));
    assert_eq!(event["group_id"], "@TGS#2J4SZEAEL", "event read back: {event}");
    assert_eq!(event["error_category"], "rate_limited", "event read back: {event}");
    fwd.sigterm();
    let status = fwd.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let done = fwd
        .wait_log("shutdown complete", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no \"shutdown complete\" line:\n{}", fwd.output.all_text()));
    assert_eq!(log_field(&done, "undelivered").and_then(Value::as_u64), Some(0), "undelivered in {done}");
}

#[test]
fn configuration_comes_from_the_environment_too() {
    let second = "1400000001";
    let fwd = Forwarder::start_with_env(
        &[],
        &[("IMCF_DEV", "true"), ("IMCF_SDK_APP_ID", &format!("{APP_ID},{second}")), ("IMCF_CALLBACK_PATH", "/tencent")],
    );
    for app in [APP_ID, second] {
        let reply = http::post(&fwd.url(&format!("/tencent?{}", query(app, EXCEPTION, None))), DOC_SAMPLE.as_bytes());
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (200, OK_BODY),
            "app {app} from IMCF_SDK_APP_ID: {}",
            reply.text()
        );
    }
    let elsewhere = fwd.post(&query(APP_ID, EXCEPTION, None), DOC_SAMPLE.as_bytes());
    assert_eq!(elsewhere.status, 404, "POST / with IMCF_CALLBACK_PATH=/tencent");
}
