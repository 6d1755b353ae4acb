//! Black-box tests of the live reload (issue 12): `--callback-token-file` and `--apps-file` are read again when
//! they change (a rename over the file, a Kubernetes Secret's `..data` symlink swap) and on SIGHUP; a file that
//! does not parse keeps the running apps and tokens. Observed from outside: answers, /metrics, the log.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::metrics;
use common::tencent::{query, APP_ID, EXCEPTION};
use common::{poll_until, Forwarder};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const RELOADS_OK: &str = "imcf_config_reloads_total{result=\"ok\"}";
const RELOADS_FAILED: &str = "imcf_config_reloads_total{result=\"failed\"}";
const LAST_SUCCESS: &str = "imcf_config_last_reload_success_timestamp_seconds";

/// The HTTP status of an exception callback of [`APP_ID`] signed with `token` (a new body each time, so that none
/// is answered as a replay).
fn status(fwd: &Forwarder, token: &str) -> u16 {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let body = format!(
        r#"{{"CallbackCommand":"{EXCEPTION}","GroupId":"@TGS#reload-{}-{n}","Type":"Public","ErrorCode":10023}}"#,
        std::process::id()
    );
    fwd.post(&query(APP_ID, EXCEPTION, Some(token)), body.as_bytes()).status
}

/// Waits until a callback signed with `token` is accepted.
fn wait_accepted(fwd: &Forwarder, token: &str, what: &str) {
    let accepted = poll_until(RELOAD_TIMEOUT, Duration::from_millis(100), || (status(fwd, token) == 200).then_some(()));
    assert!(accepted.is_some(), "{what}: a callback signed with the new token not accepted within {RELOAD_TIMEOUT:?}");
}

/// Writes `text` to `path` the way a Secret update or an editor does: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

fn start(args: &[&str]) -> Forwarder {
    let mut all = vec!["--dev"];
    all.extend_from_slice(args);
    let fwd = Forwarder::start(&all);
    fwd.wait_ready(Duration::from_secs(30));
    fwd
}

/// Checks that the log never shows any of `tokens`.
fn assert_no_token(fwd: &Forwarder, tokens: &[&str]) {
    let text = fwd.output.all_text();
    for token in tokens {
        assert!(!text.contains(token), "the log shows the token {token:?}:\n{text}");
    }
}

#[test]
fn token_file_replaced_by_rename_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "secret-rename-a\n").expect("write token file");
    let fwd = start(&["--sdk-app-id", APP_ID, "--callback-token-file", token_file.to_str().unwrap()]);
    let before = metrics::scrape(&fwd.admin_addr);
    assert_eq!(before.get(RELOADS_OK), Some(0.0), "reloads ok pre-initialised at 0");
    assert_eq!(before.get(RELOADS_FAILED), Some(0.0), "reloads failed pre-initialised at 0");
    assert!(before.get(LAST_SUCCESS).unwrap_or(0.0) > 0.0, "last success set by the start");

    assert_eq!(status(&fwd, "secret-rename-a"), 200, "token A before the reload");
    assert_eq!(status(&fwd, "secret-rename-b"), 401, "token B before the reload");
    replace_file(&token_file, "secret-rename-b\n");
    wait_accepted(&fwd, "secret-rename-b", "rename");
    assert_eq!(status(&fwd, "secret-rename-a"), 401, "token A after the reload");

    let after = metrics::scrape_until(&fwd.admin_addr, RELOADS_OK, RELOAD_TIMEOUT, |v| v >= 1.0);
    assert!(after.get(RELOADS_OK).unwrap_or(0.0) >= 1.0, "reloads ok: {:?}", after.series("imcf_config_reloads_total"));
    assert_eq!(after.get(RELOADS_FAILED), Some(0.0));
    let logged = fwd.output.wait_log("apps and tokens reloaded", RELOAD_TIMEOUT).expect("reload logged");
    assert_eq!(logged["fields"]["trigger"].as_str().or(logged["trigger"].as_str()), Some("file_changed"), "{logged}");
    assert_no_token(&fwd, &["secret-rename-a", "secret-rename-b"]);
}

#[test]
fn token_file_behind_a_swapped_data_symlink_is_reloaded() {
    // The layout of a mounted Kubernetes Secret: token -> ..data/token, ..data -> ..<timestamp>; an update
    // writes a new timestamped directory and renames a new ..data symlink over the old one.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write_version = |name: &str, token: &str| {
        std::fs::create_dir(root.join(name)).expect("version dir");
        std::fs::write(root.join(name).join("token"), format!("{token}\n")).expect("write token");
    };
    write_version("..2026_11_30_01", "secret-swap-a");
    std::os::unix::fs::symlink("..2026_11_30_01", root.join("..data")).expect("..data symlink");
    std::os::unix::fs::symlink("..data/token", root.join("token")).expect("token symlink");
    let token_file = root.join("token");
    let fwd = start(&["--sdk-app-id", APP_ID, "--callback-token-file", token_file.to_str().unwrap()]);
    assert_eq!(status(&fwd, "secret-swap-a"), 200, "token A before the swap");

    write_version("..2026_11_30_02", "secret-swap-b");
    std::os::unix::fs::symlink("..2026_11_30_02", root.join("..data_tmp")).expect("new ..data symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(root.join("..2026_11_30_01")).expect("remove the old version");
    wait_accepted(&fwd, "secret-swap-b", "symlink swap");
    assert_eq!(status(&fwd, "secret-swap-a"), 401, "token A after the swap");
    let after = metrics::scrape_until(&fwd.admin_addr, RELOADS_OK, RELOAD_TIMEOUT, |v| v >= 1.0);
    assert!(after.get(RELOADS_OK).unwrap_or(0.0) >= 1.0, "reloads ok: {:?}", after.series("imcf_config_reloads_total"));
    assert_eq!(after.get(RELOADS_FAILED), Some(0.0), "no failed reload during a swap");
    assert_no_token(&fwd, &["secret-swap-a", "secret-swap-b"]);
}

#[test]
fn sighup_reloads_the_apps_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps_file = dir.path().join("apps");
    std::fs::write(&apps_file, format!("{APP_ID}:secret-hup-a\n")).expect("write apps file");
    let fwd = start(&["--apps-file", apps_file.to_str().unwrap()]);
    assert_eq!(status(&fwd, "secret-hup-a"), 200, "token A before SIGHUP");
    let hangup = || {
        // SAFETY: kill(2) on the pid of our own, running child process.
        let rc = unsafe { libc::kill(fwd.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill(SIGHUP) failed");
    };

    // A SIGHUP reloads even when nothing changed, and does not end the process.
    hangup();
    let m = metrics::scrape_until(&fwd.admin_addr, RELOADS_OK, RELOAD_TIMEOUT, |v| v >= 1.0);
    assert_eq!(m.get(RELOADS_OK), Some(1.0), "one reload for one SIGHUP: {:?}", m.series("imcf_config_reloads_total"));
    let logged = fwd.output.wait_log("apps and tokens reloaded", RELOAD_TIMEOUT).expect("reload logged");
    assert_eq!(logged["fields"]["trigger"].as_str().or(logged["trigger"].as_str()), Some("sighup"), "{logged}");
    assert_eq!(status(&fwd, "secret-hup-a"), 200, "token A after a SIGHUP with no change");

    // A changed file, then SIGHUP: the new token is taken (by the SIGHUP, or the poll if it came first).
    // Renamed over, not written in place: a reload must never see a half-written file in this test.
    replace_file(&apps_file, &format!("{APP_ID}:secret-hup-b\n"));
    hangup();
    wait_accepted(&fwd, "secret-hup-b", "SIGHUP");
    assert_eq!(status(&fwd, "secret-hup-a"), 401, "token A after the reload");
    let m = metrics::scrape(&fwd.admin_addr);
    assert!(m.get(RELOADS_OK).unwrap_or(0.0) >= 2.0, "reloads ok: {:?}", m.series("imcf_config_reloads_total"));
    assert_eq!(m.get(RELOADS_FAILED), Some(0.0));
    assert_no_token(&fwd, &["secret-hup-a", "secret-hup-b"]);
}

#[test]
fn unparseable_apps_file_keeps_the_running_apps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps_file = dir.path().join("apps");
    std::fs::write(&apps_file, format!("{APP_ID}:secret-keep-a\n")).expect("write apps file");
    let fwd = start(&["--apps-file", apps_file.to_str().unwrap()]);
    assert_eq!(status(&fwd, "secret-keep-a"), 200, "token A before the broken file");
    let started = metrics::scrape(&fwd.admin_addr).get(LAST_SUCCESS).expect("last success");

    // Line 2 is not ID[:TOKEN].
    replace_file(&apps_file, &format!("# apps\n{APP_ID}x:secret-broken-b\n"));
    let m = metrics::scrape_until(&fwd.admin_addr, RELOADS_FAILED, RELOAD_TIMEOUT, |v| v >= 1.0);
    assert!(m.get(RELOADS_FAILED).unwrap_or(0.0) >= 1.0, "reloads: {:?}", m.series("imcf_config_reloads_total"));
    assert_eq!(m.get(RELOADS_OK), Some(0.0), "no successful reload of a broken file");
    assert_eq!(m.get(LAST_SUCCESS), Some(started), "the last success is still the start");
    let logged = fwd
        .output
        .wait_log("reload failed: keeping the running apps and tokens", RELOAD_TIMEOUT)
        .expect("failed reload logged");
    let reason = logged["fields"]["reason"].as_str().or(logged["reason"].as_str()).unwrap_or_default().to_owned();
    assert!(reason.contains("--apps-file") && reason.contains('2'), "the reason names the flag and line: {logged}");
    assert_eq!(status(&fwd, "secret-keep-a"), 200, "token A still accepted");
    assert_eq!(status(&fwd, "secret-broken-b"), 401, "the broken file's token not taken");

    // Fixed: taken at once.
    replace_file(&apps_file, &format!("{APP_ID}:secret-keep-c\n"));
    wait_accepted(&fwd, "secret-keep-c", "fixed file");
    assert_eq!(status(&fwd, "secret-keep-a"), 401, "token A after the fixed file");
    assert_no_token(&fwd, &["secret-keep-a", "secret-broken-b", "secret-keep-c"]);
}

#[test]
fn callbacks_during_reloads_are_never_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "secret-busy-a\n").expect("write token file");
    let fwd = start(&["--sdk-app-id", APP_ID, "--callback-token-file", token_file.to_str().unwrap()]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let refused = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let mut refused = Vec::new();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = status(&fwd, "secret-busy-a");
                sent += 1;
                if got != 200 {
                    refused.push(got);
                }
            }
            (sent, refused)
        });
        // Token A stays valid in every version of the file; each version is a reload (by the poll or a SIGHUP).
        for round in 0..8 {
            let text = if round % 2 == 0 { "secret-busy-b\nsecret-busy-a\n" } else { "secret-busy-a\nsecret-busy-b\n" };
            replace_file(&token_file, text);
            // SAFETY: kill(2) on the pid of our own, running child process.
            assert_eq!(unsafe { libc::kill(fwd.pid() as libc::pid_t, libc::SIGHUP) }, 0, "kill(SIGHUP)");
            std::thread::sleep(Duration::from_millis(300));
        }
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("sender thread")
    });
    let (sent, refused) = refused;
    assert!(sent > 0, "no callback sent");
    assert!(refused.is_empty(), "{} of {sent} callbacks refused during reloads: {refused:?}", refused.len());
    // At least one reload per two rounds even if a busy machine coalesced signals and polls.
    let m = metrics::scrape_until(&fwd.admin_addr, RELOADS_OK, RELOAD_TIMEOUT, |v| v >= 8.0);
    assert!(m.get(RELOADS_OK).unwrap_or(0.0) >= 4.0, "reloads: {:?}", m.series("imcf_config_reloads_total"));
    assert_eq!(m.get(RELOADS_FAILED), Some(0.0));
    assert_no_token(&fwd, &["secret-busy-a", "secret-busy-b"]);
}
