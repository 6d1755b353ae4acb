//! The operator tools (issue 12): `spool stat`, `spool verify` and `spool export` against the spool of a real
//! forwarder in disk mode whose Kafka is down, while it serves and after it stops; the spool directory's lock.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use common::faults::{send_callbacks, spool_segments, Proc, Tansu, FAST_KAFKA};
use common::forwarder::{command, run_to_exit};
// tests/common/mod.rs re-exports the harness's `Forwarder`; these tests use `Proc`.
#[allow(unused_imports)]
use common::Forwarder as _;

const CALLBACKS: usize = 30;

/// Runs `spool TOOL DIR`; stdout and stderr apart.
fn tool(name: &str, dir: &Path) -> Output {
    command().arg("spool").arg(name).arg(dir).output().unwrap_or_else(|e| panic!("spool {name}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `records:` count of `spool stat`.
fn stat_records(dir: &Path) -> u64 {
    let out = tool("stat", dir);
    assert!(out.status.success(), "stat: {out:?}");
    let stdout = text(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("records:").map(|n| n.trim().parse().expect("a count")))
        .unwrap_or_else(|| panic!("no records line:\n{stdout}"))
}

/// The `bytes:` figure of `spool stat`.
fn stat_bytes(dir: &Path) -> u64 {
    let stdout = text(&tool("stat", dir).stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("bytes:").map(|n| n.trim().parse().expect("a byte count")))
        .unwrap_or_else(|| panic!("no bytes line:\n{stdout}"))
}

/// The export lines.
fn export(dir: &Path) -> Vec<Value> {
    let out = tool("export", dir);
    assert!(out.status.success(), "export: {out:?}");
    text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn event_ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["headers"]["event_id"].as_str().expect("event_id header").to_string()).collect()
}

fn checks_on_a_healthy_spool(dir: &Path, acked: &BTreeSet<String>, when: &str) {
    assert_eq!(stat_records(dir), CALLBACKS as u64, "{when}: stat");
    let stat = text(&tool("stat", dir).stdout);
    eprintln!("{when}: spool stat:\n{stat}");
    assert!(stat.contains("topic:    im.group.send-msg-exception: 30"), "{when}: stat per topic:\n{stat}");
    assert!(stat.contains("oldest:") && stat.contains("newest:"), "{when}: stat times:\n{stat}");
    let lines = export(dir);
    let ids = event_ids(&lines);
    assert_eq!(ids.len(), CALLBACKS, "{when}: one export line per record");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), *acked, "{when}: exported ids = acknowledged ids");
    for line in &lines {
        assert_eq!(line["topic"], "im.group.send-msg-exception", "{when}: {line}");
        assert_eq!(line["value_encoding"], "utf-8", "{when}: {line}");
        let event: Value = serde_json::from_str(line["value"].as_str().expect("text value")).expect("event JSON");
        assert_eq!(event["event_id"], line["headers"]["event_id"], "{when}: {line}");
    }
    let verify = tool("verify", dir);
    assert!(verify.status.success(), "{when}: verify: {verify:?}");
    assert!(text(&verify.stdout).contains("ok: 30 frames"), "{when}: {verify:?}");
}

#[test]
fn spool_tools_read_a_live_and_a_stopped_spool_and_find_damage() {
    let broker = Tansu::reserve(); // nothing listens: Kafka is down, every record stays in the spool
    let spool = tempfile::tempdir().expect("spool tempdir");
    let dir = spool.path();
    let spool_path = dir.to_str().expect("UTF-8 path");
    let disk = ["--durability", "disk", "--spool-dir", spool_path, "--shutdown-timeout", "2"];
    let flags: Vec<&str> = FAST_KAFKA.iter().copied().chain(disk).collect();
    let mut fwd = Proc::start("forwarder", &broker.addr, &flags);
    let tally = send_callbacks(&fwd.callback_url(), "tools", CALLBACKS, 100, 1);
    assert_eq!(tally.acked.len(), CALLBACKS, "{tally:?}");

    // While it serves.
    checks_on_a_healthy_spool(dir, &tally.acked, "while serving");

    // A second forwarder on the same directory refuses to start, naming the first one's PID.
    let mut second = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--kafka-brokers", &broker.addr];
    second.extend(["--sdk-app-id", common::tencent::APP_ID, "--allow-unsigned"]);
    second.extend(disk);
    let (status, output) = run_to_exit(&second, &[], Duration::from_secs(30));
    assert!(!status.success(), "a second forwarder served from the same spool:\n{output}");
    let pid = format!("PID {}", fwd.pid());
    assert!(output.contains(&pid) && output.contains("in use"), "no {pid} in the refusal:\n{output}");
    let lock = std::fs::read_to_string(dir.join("LOCK")).expect("DIR/LOCK while serving");
    assert_eq!(lock.trim(), fwd.pid().to_string(), "DIR/LOCK holds the PID of the forwarder");

    fwd.signal(libc::SIGTERM);
    assert_eq!(fwd.wait_exit(Duration::from_secs(30)).code(), Some(0));

    // After it stopped.
    checks_on_a_healthy_spool(dir, &tally.acked, "after the stop");

    // The same frames in preallocated segments (zeros after the last frame, as the forwarder now writes them):
    // the zeros are room, not damage, and not counted as bytes.
    let bytes_before = stat_bytes(dir);
    for path in spool_segments(dir) {
        let mut data = std::fs::read(&path).unwrap();
        data.resize(data.len() + 65536, 0);
        std::fs::write(&path, &data).unwrap();
    }
    checks_on_a_healthy_spool(dir, &tally.acked, "with preallocated room");
    assert_eq!(stat_bytes(dir), bytes_before, "stat counts the written bytes, not the room");
    let verify = text(&tool("verify", dir).stdout);
    assert!(verify.contains("(+65536 preallocated)"), "verify shows the room apart:\n{verify}");

    // Damage one frame: verify names its segment and offset and exits non-zero; nothing is changed on disk.
    let lines = export(dir);
    let victim = &lines[lines.len() / 2];
    let (segment, offset) = (victim["segment"].as_u64().unwrap(), victim["offset"].as_u64().unwrap());
    let path = dir.join(format!("segment-{segment:016}.spool"));
    assert!(spool_segments(dir).contains(&path), "{path:?}");
    let mut data = std::fs::read(&path).unwrap();
    data[offset as usize + 20] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let verify = tool("verify", dir);
    let report = text(&verify.stdout);
    eprintln!("spool verify of the damaged spool:\n{report}");
    assert_eq!(verify.status.code(), Some(1), "verify of a damaged spool: {verify:?}");
    let name = format!("segment-{segment:016}.spool");
    assert!(
        report.lines().any(|l| l.starts_with(&name) && l.contains(&format!("at offset {offset} "))),
        "verify does not name {name} at offset {offset}:\n{report}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), data, "verify changed the segment");
    assert!(!dir.join("quarantine").exists(), "verify quarantined something");
    assert_eq!(stat_records(dir), CALLBACKS as u64 - 1, "the damaged record is not counted");
    let after = event_ids(&export(dir));
    assert_eq!(after.len(), CALLBACKS - 1);
    assert!(!after.contains(&victim["headers"]["event_id"].as_str().unwrap().to_string()));
}

#[test]
fn a_torn_tail_is_reported_not_repaired() {
    let spool = tempfile::tempdir().expect("spool tempdir");
    let dir = spool.path();
    let path = dir.join("segment-0000000000000001.spool");
    // A frame header whose payload never arrived: a write cut short.
    let mut data = b"IMCF".to_vec();
    data.extend_from_slice(&100u32.to_le_bytes());
    data.extend_from_slice(&[0; 4]);
    data.extend_from_slice(b"partial");
    std::fs::write(&path, &data).unwrap();
    let verify = tool("verify", dir);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let report = text(&verify.stdout);
    assert!(report.contains("segment-0000000000000001.spool: torn tail at offset 0 (19 bytes"), "{report}");
    assert_eq!(std::fs::read(&path).unwrap(), data, "verify changed the segment");
    assert_eq!(stat_records(dir), 0);
    assert!(export(dir).is_empty());
}

#[test]
fn tools_on_a_missing_directory_fail_with_its_name() {
    let spool = tempfile::tempdir().expect("tempdir");
    let missing = spool.path().join("nowhere");
    for name in ["stat", "verify", "export"] {
        let out = tool(name, &missing);
        assert!(!out.status.success(), "{name}: {out:?}");
        assert!(text(&out.stderr).contains("nowhere"), "{name}: {out:?}");
    }
    assert!(!missing.exists(), "a tool created the directory");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["spool", "--help"],
        &["spool", "stat", "--help"],
        &["spool", "verify", "--help"],
        &["spool", "export", "--help"],
    ] {
        let (status, output) = run_to_exit(args, &[], Duration::from_secs(10));
        assert!(status.success(), "{args:?} exited {status}:\n{output}");
        assert!(output.contains("Usage: im-callback-forwarder"), "{args:?}:\n{output}");
    }
    let (_, top) = run_to_exit(&["--help"], &[], Duration::from_secs(10));
    assert!(top.contains("--kafka-brokers") && top.contains("spool"), "top-level help:\n{top}");
    let (_, stat) = run_to_exit(&["spool", "stat", "--help"], &[], Duration::from_secs(10));
    assert!(stat.contains("<DIR>"), "{stat}");
}

#[test]
fn tools_run_in_a_serving_environment() {
    // In a pod every IMCF_* variable of the serving configuration is set; the tools must not mind them.
    let spool = tempfile::tempdir().expect("tempdir");
    let out = command()
        .args(["spool", "stat"])
        .arg(spool.path())
        .envs([
            ("IMCF_KAFKA_BROKERS", "127.0.0.1:9"),
            ("IMCF_SDK_APP_ID", "1"),
            ("IMCF_DURABILITY", "disk"),
            ("IMCF_SPOOL_DIR", spool.path().to_str().expect("UTF-8 path")),
        ])
        .output()
        .expect("spool stat");
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("records:  0"), "{out:?}");
    assert!(!spool.path().join("LOCK").exists(), "a tool took the lock");
}
