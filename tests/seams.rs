//! Fault injection at the spool's and the sink's own steps (issue 10), through the seams of `src/seam.rs`:
//! built only with the `failpoints` feature, which the test command turns on.
//!
//! Two walks over every seam: one makes the step fail for a while (the service must refuse only with 503,
//! keep acknowledging once the fault is gone, and deliver every acknowledged event), the other kills the
//! process at the step (SIGABRT, no flush: a crash); a second forwarder on the same spool then delivers every
//! acknowledged event. Then one test per promise the seams make checkable: the fsync comes before the answer,
//! a failed fsync refuses, a duplicate waits for its first copy, a record whose client left is delivered at
//! once, a fatal producer error rebuilds the producer and keeps the spool, refused replays stay in the spool.

mod common;
// tests/common/mod.rs re-exports the harness's `Forwarder`; these tests use `Proc`.
#[allow(unused_imports)]
use common::Forwarder as _;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::faults::{consume_acked, labelled, post_callback, Load, Proc, Tally, Tansu, FAST_KAFKA, TOPIC};
use common::metrics::Metrics;
use common::tencent::{self, APP_ID};
use common::Checks;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(40);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

/// Every seam of src/seam.rs (a test below fails if one is added there and not here).
const SEAMS: &[&str] = &[
    "spool.write",
    "spool.fsync",
    "spool.truncate",
    "spool.rotate",
    "spool.delete",
    "spool.prepare",
    "spool.rename",
    "spool.read",
    "kafka.produce",
];

/// The spool of most tests: 4 MiB (1 MiB segments), room for some 20 s of the walks' load (under 1 KB a record,
/// 200 a second), so that a broker lagging behind on a loaded machine does not fill it (503/50301).
const SPOOL_BYTES: &str = "4194304";
/// The spool of the rotation and deletion walks: 1 MiB, whose 256 KiB segments (full after about a second of the
/// tests' load, or started afresh at 64 KiB once delivered, at most once a second) rotate and are deleted about
/// once a second.
const SMALL_SPOOL_BYTES: &str = "1048576";

/// A disk-mode forwarder with a [`SPOOL_BYTES`] spool.
fn disk_flags(spool: &str) -> Vec<String> {
    spool_flags(spool, SPOOL_BYTES)
}

/// A disk-mode forwarder with a spool of `max_bytes`.
fn spool_flags(spool: &str, max_bytes: &str) -> Vec<String> {
    let mut flags: Vec<String> = FAST_KAFKA.iter().map(|s| s.to_string()).collect();
    flags.extend(
        [
            "--durability",
            "disk",
            "--spool-dir",
            spool,
            "--spool-max-bytes",
            max_bytes,
            "--shutdown-timeout",
            "2",
            "--allow-unsigned",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    flags
}

fn start(label: &str, broker: &str, flags: &[String]) -> Proc {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Proc::start(label, broker, &flags)
}

/// Sets (`Some`) or clears (`None`) a seam of a running forwarder.
fn seam(fwd: &Proc, name: &str, action: Option<&str>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("http://{}/failpoints/{name}", fwd.admin_addr);
    let answer = match action {
        Some(action) => agent.put(&url).send(action.as_bytes()),
        None => agent.delete(&url).call(),
    };
    let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
    // An abort can fire on another thread before the admin listener has written its 200: no answer is then the
    // seam working (the walk checks that the process died of a signal).
    let aborted_before_answering = status == 0 && action.is_some_and(|a| a.contains("abort"));
    if !aborted_before_answering {
        assert_eq!(status, 200, "{}: configuring seam {name} = {action:?}", fwd.label);
    }
}

fn spool_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("spool tempdir");
    let path = dir.path().to_str().expect("UTF-8 path").to_string();
    (dir, path)
}

fn assert_all_delivered(case: &str, tally: &Tally, broker: &str) {
    let consumed = consume_acked(broker, &tally.acked, CONSUME_TIMEOUT);
    let missing = consumed.missing(&tally.acked);
    eprintln!(
        "{case}: sent {}, acknowledged {}, refused {:?}, no answer {}; read {} records, {} missing",
        tally.sent,
        tally.acked.len(),
        tally.refused,
        tally.transport_errors,
        consumed.records,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{case}: {} of {} acknowledged events missing from {TOPIC}; first {:?}",
        missing.len(),
        tally.acked.len(),
        &missing[..missing.len().min(5)]
    );
}

fn check_drained(checks: &mut Checks, who: &str, metrics: &Metrics) {
    checks.eq(&format!("{who}: imcf_events_lost_total"), metrics.get("imcf_events_lost_total"), Some(0.0));
    checks.eq(&format!("{who}: imcf_spool_events after draining"), metrics.get("imcf_spool_events"), Some(0.0));
    checks.eq(
        &format!("{who}: imcf_kafka_queue_events after draining"),
        metrics.get("imcf_kafka_queue_events"),
        Some(0.0),
    );
}

/// The flags of a walk over `target`: the rotation and deletion seams are reached only with small segments.
fn walk_flags(target: &str, spool: &str) -> Vec<String> {
    match target {
        "spool.rotate" | "spool.delete" | "spool.prepare" => spool_flags(spool, SMALL_SPOOL_BYTES),
        _ => disk_flags(spool),
    }
}

/// The refusals a walk over `target` may see besides its seam's 503/50300: a full small spool (503/50301, a
/// documented answer) when the broker lags behind the load for a few seconds.
fn walk_refusals(target: &str) -> &'static [(u16, i64)] {
    match target {
        "spool.rotate" | "spool.delete" | "spool.prepare" => &[(503, 50300), (503, 50301)],
        _ => &[(503, 50300)],
    }
}

/// The seams to set so that `target` is reached by a running forwarder, with the action for `target` last.
fn arm(target: &str, action: &str) -> Vec<(&'static str, String)> {
    let mut armed = Vec::new();
    match target {
        // Reached only after a failed write.
        "spool.truncate" => armed.push(("spool.write", "return(short)".to_string())),
        // Reached only when a record is replayed: make the live hand-over fail so that records are.
        "spool.read" => armed.push(("kafka.produce", "5*return".to_string())),
        _ => {}
    }
    let name = SEAMS.iter().copied().find(|s| *s == target).expect("known seam");
    armed.push((name, action.to_string()));
    armed
}

#[test]
fn the_seam_list_matches_the_source() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/seam.rs")).expect("src/seam.rs");
    let start = source.find("pub const SEAMS").expect("SEAMS in src/seam.rs");
    let end = start + source[start..].find("];").expect("end of SEAMS");
    let listed: BTreeSet<&str> =
        source[start..end].lines().filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\",")).collect();
    assert_eq!(listed, SEAMS.iter().copied().collect::<BTreeSet<_>>());
}

/// A forwarder under load; `target` fails for a second and is then cleared. The service refuses only with
/// 503/50300 meanwhile (or 503/50301 where the spool is small, see [`walk_refusals`]), acknowledges again
/// afterwards, and delivers every acknowledged event.
fn walk_error(target: &str) {
    if target == "spool.rename" {
        return walk_rename_error();
    }
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &walk_flags(target, &spool));
    fwd.wait_ready(READY_TIMEOUT);
    let load = Load::start(&fwd.callback_url(), &format!("err-{target}"), 2, 100, 20_000);
    load.wait_acked(100, Duration::from_secs(20));
    let armed = arm(target, "return");
    for (name, action) in &armed {
        seam(&fwd, name, Some(action));
    }
    std::thread::sleep(Duration::from_secs(1));
    for (name, _) in &armed {
        seam(&fwd, name, None);
    }
    // The service must keep working once the fault is gone.
    load.wait_acked(100, Duration::from_secs(20));
    if target == "spool.prepare" {
        // A failed preparation refuses nothing: without this, the walk would pass had no spare been prepared.
        let failed = "spool: cannot prepare a preallocated segment; the next one grows instead";
        assert!(fwd.wait_log(failed, Duration::from_secs(5)).is_some(), "the seam was never reached: {failed:?}");
    }
    let tally = load.stop();
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered(&format!("seam {target} failing"), &tally, &broker.addr);
    tally.assert_refusals_only(&format!("seam {target} failing"), walk_refusals(target));
    let mut checks = Checks::default();
    check_drained(&mut checks, "forwarder", &metrics);
    checks.finish();
}

/// The repair of a damaged segment at start fails at its rename: the start fails, the segment is left as it
/// was, and the next start recovers every acknowledged record.
fn walk_rename_error() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let tally = crash_with_torn_tail(&broker, &spool);
    let mut cmd = common::forwarder::command();
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--kafka-brokers", &broker.addr, "--sdk-app-id", APP_ID])
        .args(disk_flags(&spool))
        .env("FAILPOINTS", "spool.rename=return");
    let output = output_within(cmd, Duration::from_secs(60));
    assert!(!output.status.success(), "a start whose spool repair failed must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--spool-dir"), "the failed start names the spool: {stderr}");

    let second = start("second forwarder", &broker.addr, &disk_flags(&spool));
    let metrics = second.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered("repair failing at its rename, then a start", &tally, &broker.addr);
    let mut checks = Checks::default();
    check_drained(&mut checks, "second forwarder", &metrics);
    checks.finish();
}

/// Runs a forwarder that must end on its own (here: at start, while repairing the spool), for at most `limit`;
/// one that is still running then did not meet what the test prepared (no torn segment to repair) and is killed.
fn output_within(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run the forwarder");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait for the forwarder").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap the forwarder");
            panic!(
                "the forwarder still ran after {limit:?}: it found nothing to repair at start?\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect the forwarder's output")
}

/// Sends callbacks to a forwarder until a short write that cannot be cut back kills it: the spool then ends
/// in a torn frame. Returns what was acknowledged.
fn crash_with_torn_tail(broker: &Tansu, spool: &str) -> Tally {
    let mut first = start("first forwarder", &broker.addr, &disk_flags(spool));
    first.wait_ready(READY_TIMEOUT);
    let load = Load::start(&first.callback_url(), "torn", 2, 100, 20_000);
    load.wait_acked(100, Duration::from_secs(20));
    seam(&first, "spool.write", Some("return(short)"));
    seam(&first, "spool.truncate", Some("return(abort)"));
    let status = first.wait_exit(Duration::from_secs(20));
    let tally = load.stop();
    assert_eq!(status.code(), None, "killed by a signal at the seam: {status:?}");
    tally
}

/// A forwarder under load is killed at `target`; a second one on the same spool delivers every acknowledged
/// event.
fn walk_kill(target: &str) {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let tally = if target == "spool.rename" {
        let tally = crash_with_torn_tail(&broker, &spool);
        // The next start dies while repairing the torn segment.
        let mut cmd = common::forwarder::command();
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--kafka-brokers", &broker.addr, "--sdk-app-id", APP_ID])
            .args(disk_flags(&spool))
            .env("FAILPOINTS", "spool.rename=return(abort)");
        let status = output_within(cmd, Duration::from_secs(60)).status;
        assert_eq!(status.code(), None, "killed at spool.rename: {status:?}");
        tally
    } else {
        let mut first = start("first forwarder", &broker.addr, &walk_flags(target, &spool));
        first.wait_ready(READY_TIMEOUT);
        let load = Load::start(&first.callback_url(), &format!("kill-{target}"), 2, 100, 20_000);
        load.wait_acked(100, Duration::from_secs(20));
        for (name, action) in arm(target, "return(abort)") {
            seam(&first, name, Some(&action));
        }
        let status = first.wait_exit(Duration::from_secs(30));
        let tally = load.stop();
        assert_eq!(status.code(), None, "killed by a signal at {target}: {status:?}");
        tally
    };
    let second = start("second forwarder", &broker.addr, &walk_flags(target, &spool));
    let metrics = second.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered(&format!("killed at {target}, then a restart"), &tally, &broker.addr);
    let mut checks = Checks::default();
    check_drained(&mut checks, "second forwarder", &metrics);
    checks.finish();
}

macro_rules! walk {
    ($($error:ident, $kill:ident => $seam:literal;)*) => {
        $(
            #[test]
            fn $error() {
                walk_error($seam);
            }
            #[test]
            fn $kill() {
                walk_kill($seam);
            }
        )*
        #[test]
        fn every_seam_is_walked() {
            let walked: BTreeSet<&str> = [$($seam),*].into_iter().collect();
            assert_eq!(walked, SEAMS.iter().copied().collect::<BTreeSet<_>>());
        }
    };
}

walk! {
    error_at_spool_write, kill_at_spool_write => "spool.write";
    error_at_spool_fsync, kill_at_spool_fsync => "spool.fsync";
    error_at_spool_truncate, kill_at_spool_truncate => "spool.truncate";
    error_at_spool_rotate, kill_at_spool_rotate => "spool.rotate";
    error_at_spool_delete, kill_at_spool_delete => "spool.delete";
    error_at_spool_prepare, kill_at_spool_prepare => "spool.prepare";
    error_at_spool_rename, kill_at_spool_rename => "spool.rename";
    error_at_spool_read, kill_at_spool_read => "spool.read";
    error_at_kafka_produce, kill_at_kafka_produce => "kafka.produce";
}

// ---------------------------------------------------------------------------------------------------------
// One promise each

/// POSTs one callback body with its own client timeout; the tally says how it was answered.
fn post(fwd: &Proc, body: &str, timeout: Duration) -> Tally {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
    let mut tally = Tally::default();
    post_callback(&agent, &fwd.callback_url(), body, &mut tally);
    tally
}

#[test]
fn the_answer_waits_for_the_fsync_and_a_failed_fsync_refuses() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &disk_flags(&spool));
    fwd.wait_ready(READY_TIMEOUT);

    seam(&fwd, "spool.fsync", Some("1*sleep(2000)"));
    let started = Instant::now();
    let slow = post(&fwd, &common::faults::callback_body("fsync-slow", 1, 100), Duration::from_secs(10));
    let waited = started.elapsed();

    seam(&fwd, "spool.fsync", Some("return"));
    let failed = post(&fwd, &common::faults::callback_body("fsync-fail", 2, 100), Duration::from_secs(10));
    seam(&fwd, "spool.fsync", None);
    let after = post(&fwd, &common::faults::callback_body("fsync-ok", 3, 100), Duration::from_secs(10));

    let mut checks = Checks::default();
    checks.eq("acknowledged while the fsync was slow", slow.acked.len(), 1);
    checks.check(waited >= Duration::from_millis(1900), || format!("answered {waited:?} into a 2 s fsync"));
    checks.eq("refused when the fsync failed", failed.refused.get(&(503, 50300)).copied(), Some(1));
    checks.eq("acknowledged once the fsync works", after.acked.len(), 1);
    checks.finish();
    let mut acked = slow;
    acked.merge(after);
    assert_all_delivered("fsync slow, failed, then fine", &acked, &broker.addr);
}

/// Watched from outside with `strace`: every OK answer of disk mode is written after an `fdatasync` of a segment
/// that returned since the previous answer, and the preallocated spare's zeros are synced too (callbacks sent one at a time, so each needs its own commit). Without the sync call
/// (or with the answer sent before it), the trace shows an answer with no sync before it.
#[test]
fn every_acknowledgement_follows_an_fdatasync_seen_by_strace() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let trace_dir = tempfile::tempdir().expect("temp dir");
    let trace = trace_dir.path().join("strace.txt");
    let flags = disk_flags(&spool);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut fwd = Proc::start_traced("traced forwarder", &broker.addr, &flags, &trace);
    // The child is strace; the forwarder is its child, which the harness's kill-on-exit does not reach: killed
    // here if the test fails before it stops the forwarder itself.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", fwd.pid())).expect("strace's child");
    let forwarder: i32 = children.split_whitespace().next().and_then(|pid| pid.parse().ok()).expect("a forwarder pid");
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the traced forwarder; once it has exited, strace has reaped it and this fails.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _guard = KillOnDrop(forwarder);
    fwd.wait_ready(READY_TIMEOUT);
    let mut acked = Tally::default();
    for i in 0..20 {
        acked.merge(post(&fwd, &common::faults::callback_body("traced", i, 100), Duration::from_secs(10)));
    }
    // Stopping the forwarder ends strace, which has then written everything.
    // SAFETY: kill(2) on the forwarder strace started for this test, still traced (so not reaped) by strace.
    assert_eq!(unsafe { libc::kill(forwarder, libc::SIGTERM) }, 0, "SIGTERM to the traced forwarder");
    fwd.wait_exit(Duration::from_secs(30));
    assert_eq!(acked.acked.len(), 20, "every callback acknowledged");

    let trace = std::fs::read_to_string(&trace).expect("read the strace output");
    let (mut syncs_since_answer, mut answers) = (0, 0);
    // Threads (strace -f prefixes each line with one) whose fdatasync of a segment strace had to split.
    // Threads (strace -f prefixes each line with one) whose fdatasync strace had to split, and of which file.
    let mut unfinished = std::collections::BTreeMap::new();
    let mut spare_synced = false;
    for line in trace.lines() {
        let thread = line.split_whitespace().next().unwrap_or_default().to_string();
        // strace -y names the file: a segment's sync, or the spare's (its zeros, made before it is used).
        let file = if !line.contains("fdatasync(") {
            None
        } else if line.contains("/segment-") {
            Some("segment")
        } else if line.contains("/spare-") {
            Some("spare")
        } else {
            None
        };
        if let (Some(file), true) = (file, line.contains("<unfinished")) {
            unfinished.insert(thread.clone(), file);
        }
        let resumed = if line.contains("<... fdatasync resumed>") { unfinished.remove(&thread) } else { None };
        // A sync that returned 0: in one line, or as the end of one strace had to split.
        let synced = if line.trim_end().ends_with("= 0") { file.or(resumed) } else { None };
        if synced == Some("spare") {
            spare_synced = true;
        } else if synced == Some("segment") {
            syncs_since_answer += 1;
        } else if line.contains("writev(") && line.contains(r#"ActionStatus\":\"OK"#) {
            answers += 1;
            assert!(syncs_since_answer > 0, "OK answer {answers} written with no fdatasync before it:\n{line}");
            syncs_since_answer = 0;
        }
    }
    assert!(spare_synced, "the spare segment's zeros were never synced (strace output:\n{trace})");
    assert_eq!(answers, 20, "the trace shows every OK answer (strace output:\n{trace})");
    assert_all_delivered("traced", &acked, &broker.addr);
}

/// Sends the same callback twice, the second while the first is held up in the spool writer (for 5 s, see the
/// caller); returns both tallies. The second comes 1.5 s after the first, time enough for the first to reach
/// the writer on a loaded machine, and is answered within its 10 s once the first copy is settled.
fn duplicate_during_first_copy(fwd: &Proc, body: &str) -> (Tally, Tally) {
    let (url_fwd, body_first) = (fwd.callback_url(), body.to_string());
    let first = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut tally = Tally::default();
        post_callback(&agent, &url_fwd, &body_first, &mut tally);
        tally
    });
    std::thread::sleep(Duration::from_millis(1500));
    let second = post(fwd, body, Duration::from_secs(10));
    (first.join().expect("first copy"), second)
}

#[test]
fn a_duplicate_waits_for_the_first_copy_and_answers_the_same() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &disk_flags(&spool));
    fwd.wait_ready(READY_TIMEOUT);

    // The first copy's write is held up 5 s, then its fsync fails.
    seam(&fwd, "spool.write", Some("1*sleep(5000)"));
    seam(&fwd, "spool.fsync", Some("1*return"));
    let refused_body = common::faults::callback_body("dup-refused", 1, 100);
    let (first, second) = duplicate_during_first_copy(&fwd, &refused_body);
    seam(&fwd, "spool.fsync", None);

    // Again, and this time the first copy is kept.
    seam(&fwd, "spool.write", Some("1*sleep(5000)"));
    let kept_body = common::faults::callback_body("dup-kept", 2, 100);
    let (kept_first, kept_second) = duplicate_during_first_copy(&fwd, &kept_body);
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);

    let mut checks = Checks::default();
    checks.eq("first copy, fsync failed", first.refused.get(&(503, 50300)).copied(), Some(1));
    checks.eq("duplicate of a refused first copy", second.refused.get(&(503, 50300)).copied(), Some(1));
    checks.eq("first copy, kept", kept_first.acked.len(), 1);
    checks.eq("duplicate of a kept first copy", kept_second.acked.len(), 1);
    checks.eq(
        "imcf_callbacks_total{outcome=\"replayed\"}",
        labelled(&metrics, "imcf_callbacks_total", "outcome", "replayed"),
        1.0,
    );
    checks.finish();
    let kept_id = tencent::event_id(APP_ID, kept_body.as_bytes());
    let consumed = consume_acked(&broker.addr, &[kept_id.clone()].into_iter().collect(), CONSUME_TIMEOUT);
    assert_eq!(consumed.counts.get(&kept_id), Some(&1), "the kept callback published once: {:?}", consumed.counts);
}

#[test]
fn a_record_whose_client_left_is_delivered_without_a_restart() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &disk_flags(&spool));
    fwd.wait_ready(READY_TIMEOUT);
    seam(&fwd, "spool.write", Some("1*sleep(1500)"));
    let body = common::faults::callback_body("client-left", 1, 100);
    let gone = post(&fwd, &body, Duration::from_millis(300));
    assert_eq!(gone.transport_errors, 1, "the client gave up before the answer: {gone:?}");
    let id = tencent::event_id(APP_ID, body.as_bytes());
    let consumed = consume_acked(&broker.addr, &[id.clone()].into_iter().collect(), Duration::from_secs(20));
    assert!(consumed.counts.contains_key(&id), "the written record was not handed to Kafka while the forwarder ran");
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    let mut checks = Checks::default();
    check_drained(&mut checks, "forwarder", &metrics);
    checks.finish();
}

/// A disk-mode forwarder with Kafka down long enough for its records to time out in the producer: they are
/// all in the replay queue when the broker comes up.
fn backlog(tag: &str, seams: &[(&str, &str)]) -> (Tansu, tempfile::TempDir, Proc, Tally) {
    let mut broker = Tansu::reserve();
    let (dir, spool) = spool_dir();
    let mut flags = disk_flags(&spool);
    flags.extend(["-X".to_string(), "message.timeout.ms=1000".to_string()]);
    let fwd = start("forwarder", &broker.addr, &flags);
    let tally = common::faults::send_callbacks(&fwd.callback_url(), tag, 200, 200, 1);
    assert_eq!(tally.acked.len(), 200, "{tally:?}");
    common::metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_kafka_delivery_failures_total",
        Duration::from_secs(15),
        |v| v >= 200.0,
    );
    for (name, action) in seams {
        seam(&fwd, name, Some(action));
    }
    broker.start_with_topics();
    (broker, dir, fwd, tally)
}

#[test]
fn a_fatal_producer_error_during_replay_rebuilds_the_producer_and_keeps_the_spool() {
    let (broker, _dir, fwd, tally) = backlog("fatal-replay", &[("kafka.produce", "1*return(fatal)")]);
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered("fatal producer error during replay", &tally, &broker.addr);
    let mut checks = Checks::default();
    checks.eq("imcf_kafka_producer_restarts_total", metrics.get("imcf_kafka_producer_restarts_total"), Some(1.0));
    check_drained(&mut checks, "forwarder", &metrics);
    checks.finish();
}

#[test]
fn a_fatal_producer_error_under_load_rebuilds_the_producer_and_keeps_taking_callbacks() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &disk_flags(&spool));
    fwd.wait_ready(READY_TIMEOUT);
    let load = Load::start(&fwd.callback_url(), "fatal-load", 2, 100, 20_000);
    load.wait_acked(100, Duration::from_secs(20));
    seam(&fwd, "kafka.produce", Some("1*return(fatal)"));
    common::metrics::scrape_until(
        &fwd.admin_addr,
        "imcf_kafka_producer_restarts_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    load.wait_acked(200, Duration::from_secs(20));
    let tally = load.stop();
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered("fatal producer error under load", &tally, &broker.addr);
    tally.assert_refusals_only("fatal producer error under load", &[]);
    let mut checks = Checks::default();
    checks.eq("imcf_kafka_producer_restarts_total", metrics.get("imcf_kafka_producer_restarts_total"), Some(1.0));
    check_drained(&mut checks, "forwarder", &metrics);
    checks.finish();
}

#[test]
fn replayed_records_the_producer_refuses_or_the_spool_cannot_read_stay_in_the_spool() {
    let (broker, _dir, fwd, tally) =
        backlog("refused-replay", &[("kafka.produce", "30*return"), ("spool.read", "10*return")]);
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    assert_all_delivered("replay refused by the producer and failing reads", &tally, &broker.addr);
    let mut checks = Checks::default();
    checks.check(labelled(&metrics, "imcf_replay_deferred_total", "reason", "produce_error") >= 1.0, || {
        format!("{:?}", metrics.series("imcf_replay_deferred_total"))
    });
    checks.check(labelled(&metrics, "imcf_replay_deferred_total", "reason", "read_error") >= 1.0, || {
        format!("{:?}", metrics.series("imcf_replay_deferred_total"))
    });
    check_drained(&mut checks, "forwarder", &metrics);
    checks.finish();
}

#[test]
fn the_admin_listener_answers_while_the_spool_is_recovered() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let tally = crash_with_torn_tail(&broker, &spool);
    // The repair of the torn segment takes 10 s more than it would: the probes below come well within that.
    let owned = disk_flags(&spool);
    let flags: Vec<&str> = owned.iter().map(String::as_str).collect();
    let second =
        Proc::start_with_env("second forwarder", &broker.addr, &flags, &[("FAILPOINTS", "spool.rename=sleep(10000)")]);
    let health = common::http::get(&format!("http://{}/healthz", second.admin_addr));
    let ready = second.readyz();
    second.wait_ready(READY_TIMEOUT + Duration::from_secs(10));
    let metrics = second.wait_drained(DRAIN_TIMEOUT);
    let mut checks = Checks::default();
    checks.check(health.status == 200, || format!("/healthz while recovering: {health:?}"));
    checks.check(ready.0 == 503 && ready.1.contains("recovering spool"), || {
        format!("/readyz while recovering: {ready:?}")
    });
    check_drained(&mut checks, "second forwarder", &metrics);
    checks.finish();
    assert_all_delivered("recovered after a slow repair", &tally, &broker.addr);
}

#[test]
fn a_refused_callback_posted_again_is_published_not_answered_replayed() {
    let broker = Tansu::with_topics();
    let (_spool, spool) = spool_dir();
    let fwd = start("forwarder", &broker.addr, &disk_flags(&spool));
    fwd.wait_ready(READY_TIMEOUT);
    seam(&fwd, "spool.fsync", Some("1*return"));
    let body = common::faults::callback_body("forget", 1, 100);
    let refused = post(&fwd, &body, Duration::from_secs(10));
    let again = post(&fwd, &body, Duration::from_secs(10));
    let metrics = fwd.wait_drained(DRAIN_TIMEOUT);
    let mut checks = Checks::default();
    checks.eq("first post refused", refused.refused.get(&(503, 50300)).copied(), Some(1));
    checks.eq("second post acknowledged", again.acked.len(), 1);
    checks.eq("answered as a new callback", labelled(&metrics, "imcf_callbacks_total", "outcome", "accepted"), 1.0);
    checks.eq("not as a replay", labelled(&metrics, "imcf_callbacks_total", "outcome", "replayed"), 0.0);
    checks.finish();
    assert_all_delivered("refused, then posted again", &again, &broker.addr);
}
