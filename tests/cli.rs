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
        &with_listen(
            &listen,
            &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID, "--allow-unsigned", "-X", "no.such.property=1"],
        ),
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

#[test]
fn an_unsigned_app_without_an_allowlist_refuses_to_start_unless_allowed() {
    // No token and no allowlist: anyone who knows the SdkAppid could post. Refused, naming the three ways out.
    let listen = listen_args();
    let output = refused(&with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID]), &[]);
    for way_out in ["--callback-token", "--allow-cidr", "--allow-unsigned"] {
        assert!(output.contains(way_out), "the refusal names {way_out}:\n{output}");
    }
    let listen = listen_args();
    let output = refused(&with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--app", APP_ID]), &[]);
    assert!(output.contains("--allow-unsigned"), "--app without a token is unsigned too:\n{output}");
    // Each way out starts; every unsigned app is warned about at start.
    for (case, args, envs, warned) in [
        ("--allow-unsigned", vec!["--allow-unsigned"], vec![], true),
        ("IMCF_ALLOW_UNSIGNED", vec![], vec![("IMCF_ALLOW_UNSIGNED", "true")], true),
        ("--allow-cidr", vec!["--allow-cidr", "10.0.0.0/8"], vec![], true),
        ("--dev", vec!["--dev"], vec![], true),
        ("--callback-token", vec!["--callback-token", "a-token"], vec![], false),
    ] {
        let mut cmd = common::forwarder::command();
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID])
            .args(&args)
            .envs(envs);
        let mut started = common::forwarder::spawn_listening(cmd, case);
        let warnings: Vec<Value> = started
            .output
            .json_lines()
            .into_iter()
            .filter(|l| l["level"] == "WARN" && l.to_string().contains("unsigned"))
            .collect();
        assert_eq!(!warnings.is_empty(), warned, "{case}: warning about the unsigned app: {warnings:?}");
        if warned {
            assert!(warnings[0].to_string().contains(APP_ID), "{case}: the warning names the app: {warnings:?}");
        }
        let _ = started.child.kill();
        let _ = started.child.wait();
    }
}

#[test]
fn the_404_answer_does_not_name_the_callback_path() {
    let fwd = Forwarder::start(&["--dev", "--sdk-app-id", APP_ID, "--callback-path", "/hidden-callback-path"]);
    let reply = fwd.post(&query(APP_ID, EXCEPTION, None), DOC_SAMPLE.as_bytes());
    assert_eq!(reply.status, 404, "{}", reply.text());
    let body = reply.json().unwrap_or_else(|| panic!("404 answer is not JSON: {}", reply.text()));
    assert_eq!((body["ActionStatus"].as_str(), body["ErrorCode"].as_i64()), (Some("FAIL"), Some(40400)), "{body}");
    assert_eq!(body["ErrorInfo"], "not found", "{body}");
    assert!(!reply.text().contains("hidden"), "the 404 answer shows the callback path: {}", reply.text());
}

#[test]
fn secrets_stay_out_of_help_and_error_messages() {
    const SECRET: &str = "hunter2-secret-value";
    // Environment values are not shown by --help.
    let property = format!("sasl.password={SECRET}");
    let (status, output) = run_to_exit(
        &["--help"],
        &[
            ("IMCF_KAFKA_PROPERTY", property.as_str()),
            ("IMCF_CALLBACK_TOKEN", SECRET),
            ("IMCF_APP", &format!("{APP_ID}:{SECRET}")),
        ],
        EXIT_TIMEOUT,
    );
    assert!(status.success(), "--help exited {status}:\n{output}");
    assert!(!output.contains(SECRET), "--help shows a secret:\n{output}");
    // A malformed -X line is not echoed: it may be a password typed with the wrong separator.
    for (case, args, envs) in [
        ("-X", vec!["-X".to_owned(), format!("sasl.password:{SECRET}")], vec![]),
        ("IMCF_KAFKA_PROPERTY", vec![], vec![("IMCF_KAFKA_PROPERTY", format!("acks=all\nsasl.password:{SECRET}"))]),
    ] {
        let listen = listen_args();
        let mut argv = with_listen(&listen, &["--kafka-brokers", "127.0.0.1:9", "--sdk-app-id", APP_ID]);
        argv.extend(args.iter().map(String::as_str));
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = refused(&argv, &envs);
        assert!(output.contains("--kafka-property") || output.contains("-X"), "{case}: names the flag:\n{output}");
        assert!(!output.contains(SECRET), "{case}: the malformed property is echoed:\n{output}");
    }
}

#[test]
fn huge_durations_are_refused_naming_the_flag_without_a_panic() {
    for flag in ["--max-clock-skew", "--header-read-timeout", "--keep-alive-timeout", "--body-read-timeout"] {
        let listen = listen_args();
        let args = with_listen(&listen, &["--dev", "--sdk-app-id", APP_ID, flag, "18446744073709551615"]);
        let (status, output) = run_to_exit(&args, &[], EXIT_TIMEOUT);
        assert!(!status.success(), "{flag}: exited {status}:\n{output}");
        assert!(!output.contains("panicked"), "{flag}: panicked:\n{output}");
        assert!(output.contains(flag), "{flag}: the error names the flag:\n{output}");
        assert!(!output.contains("\"listening\""), "{flag}: started listening:\n{output}");
    }
}
