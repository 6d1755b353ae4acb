//! The forwarder binary under test: started on port 0 with JSON logs, its bound addresses
//! read back from the "listening" log line, every output line kept, killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::broker::Broker;
use super::http::{self, Reply};
use super::tencent;

/// Path of the binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_im-callback-forwarder");

/// Output lines of a child process, shared with its reader threads.
#[derive(Default)]
pub struct Output {
    /// (stream, line) in arrival order; stream is "stdout" or "stderr".
    lines: Mutex<Vec<(&'static str, String)>>,
    changed: Condvar,
    /// Pipes read to their end (changed under the `lines` lock, so that waiters on `changed` see it).
    closed: AtomicUsize,
}

impl Output {
    /// Waits up to `timeout` for a JSON log line on stdout whose message is `message`.
    pub fn wait_log(&self, message: &str, timeout: Duration) -> Option<Value> {
        let line = self.wait_line(
            timeout,
            |s, l| {
                s == "stdout" && serde_json::from_str::<Value>(l).ok().is_some_and(|v| log_message(&v) == Some(message))
            },
            || false,
        )?;
        serde_json::from_str(&line).ok()
    }

    /// Every line so far, stdout and stderr interleaved.
    pub fn all_text(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|(s, l)| format!("[{s}] {l}")).collect::<Vec<_>>().join("\n")
    }

    /// Every stdout line that parses as a JSON object.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(s, _)| *s == "stdout")
            .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits until some line satisfies `pred` (checked on every new line), up to `timeout`.
    /// `stop` is consulted between waits so that a dead process ends the wait early.
    pub fn wait_line(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str, &str) -> bool,
        mut stop: impl FnMut() -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut lines = self.lines.lock().unwrap();
        loop {
            while seen < lines.len() {
                let (s, l) = &lines[seen];
                if pred(s, l) {
                    return Some(l.clone());
                }
                seen += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            lines = self.changed.wait_timeout(lines, wait).unwrap().0;
            if seen == lines.len() {
                drop(lines);
                let stopped = stop();
                lines = self.lines.lock().unwrap();
                if stopped && seen == lines.len() {
                    return None;
                }
            }
        }
    }

    /// Waits up to `timeout` until `streams` pipes were read to their end; false if they were not.
    pub fn wait_closed(&self, streams: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        while self.closed.load(Ordering::SeqCst) < streams {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
        true
    }

    fn push(&self, stream: &'static str, line: String) {
        self.lines.lock().unwrap().push((stream, line));
        self.changed.notify_all();
    }

    fn close(&self) {
        let _lines = self.lines.lock().unwrap();
        self.closed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

/// Spawns a reader thread that appends every line of `pipe` to `output`.
pub fn read_lines(pipe: impl Read + Send + 'static, stream: &'static str, output: Arc<Output>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                    output.push(stream, line);
                }
            }
        }
        output.close();
    })
}

/// The forwarder's `Command` with a clean environment: no inherited IMCF_* variables. `IMCF_TEST_BIN` names
/// another binary to run the same tests against (e.g. an older build, to show that a new test fails there).
pub fn command() -> Command {
    clean(Command::new(forwarder_program()))
}

fn forwarder_program() -> std::ffi::OsString {
    std::env::var_os("IMCF_TEST_BIN").unwrap_or_else(|| BIN.into())
}

fn clean(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMCF_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// [`command`] under `strace`, which writes every `fdatasync` and `writev` of the forwarder's threads, in the
/// order they return, to `trace`: what a test cannot see otherwise (`kill -9` keeps the page cache), whether a
/// sync really happened before an answer.
pub fn traced_command(trace: &std::path::Path) -> Command {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "--seccomp-bpf", "-s", "64", "-e", "trace=fdatasync,writev", "-o"])
        .arg(trace)
        .arg("--")
        .arg(forwarder_program());
    clean(cmd)
}

/// The "message" of a tracing JSON log line (under "fields", or top level).
pub fn log_message(line: &Value) -> Option<&str> {
    line.get("fields").and_then(|f| f.get("message")).or_else(|| line.get("message")).and_then(Value::as_str)
}

/// A field of a tracing JSON log line (under "fields", or top level).
pub fn log_field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get("fields").and_then(|f| f.get(name)).or_else(|| line.get(name))
}

/// Waits for `child` to exit, up to `timeout` (then kills it and panics, naming it `label` and showing `output`).
/// The status is kept in `exit`, so that later calls return it at once.
pub fn wait_exit(
    child: &mut Child,
    exit: &mut Option<ExitStatus>,
    output: &Output,
    label: &str,
    timeout: Duration,
) -> ExitStatus {
    if let Some(status) = *exit {
        return status;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            *exit = Some(status);
            // What the process wrote last is read once both pipes are at their end: a log check right after
            // this must not race the reader threads (bounded, in case something else holds the pipes open).
            output.wait_closed(2, Duration::from_secs(5));
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label} did not exit within {timeout:?}; output:\n{}", output.all_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A forwarder process that logged its bound addresses.
pub struct Listening {
    /// The process.
    pub child: Child,
    /// Everything it printed so far, and from now on.
    pub output: Arc<Output>,
    /// Bound callback listener, "IP:PORT".
    pub callback_addr: String,
    /// Bound admin listener, "IP:PORT".
    pub admin_addr: String,
}

/// Spawns `cmd` (a [`command`] with `--log-format json`), collects its output, and waits up to 30 s for the
/// "listening" line; panics with `context` and the output if it exits or never logs it.
pub fn spawn_listening(cmd: Command, context: &str) -> Listening {
    let mut child = super::spawn_owned(cmd).unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let output = Arc::new(Output::default());
    read_lines(child.stdout.take().expect("stdout"), "stdout", output.clone());
    read_lines(child.stderr.take().expect("stderr"), "stderr", output.clone());
    let mut exited = None;
    let line = output.wait_line(
        Duration::from_secs(30),
        |stream, l| {
            stream == "stdout"
                && serde_json::from_str::<Value>(l).ok().is_some_and(|v| log_message(&v) == Some("listening"))
        },
        || {
            exited = child.try_wait().ok().flatten();
            exited.is_some()
        },
    );
    let Some(line) = line else {
        let _ = child.kill();
        let status = child.wait().ok();
        // Give the reader threads a moment to drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        panic!("no \"listening\" log line ({context}, exit {status:?}); output:\n{}", output.all_text());
    };
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    let addr = |name: &str| -> String {
        log_field(&v, name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("\"listening\" line has no string field {name}: {line}"))
            .to_string()
    };
    Listening { callback_addr: addr("callback_addr"), admin_addr: addr("admin_addr"), child, output }
}

/// A running forwarder.
pub struct Forwarder {
    child: Child,
    /// Bound callback listener, "IP:PORT".
    pub callback_addr: String,
    /// Bound admin listener, "IP:PORT".
    pub admin_addr: String,
    pub output: Arc<Output>,
    exit: Option<ExitStatus>,
}

impl Forwarder {
    /// Starts the binary with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json`
    /// followed by `args`, with extra environment `envs`, and waits for the "listening" line.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Forwarder {
        let mut cmd = command();
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"]).args(args);
        cmd.arg("--allow-unsigned"); // tests run unsigned apps on purpose (a flag given twice is fine)
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let Listening { child, output, callback_addr, admin_addr } = spawn_listening(cmd, &format!("args {args:?}"));
        Forwarder { callback_addr, admin_addr, child, output, exit: None }
    }

    /// Starts the binary with `args` (see [`Forwarder::start_with_env`]).
    pub fn start(args: &[&str]) -> Forwarder {
        Forwarder::start_with_env(args, &[])
    }

    /// Starts a forwarder on `broker` for app [`tencent::APP_ID`], with `extra` flags.
    pub fn for_broker(broker: &Broker, extra: &[&str]) -> Forwarder {
        let mut args = vec!["--kafka-brokers", broker.addr.as_str(), "--sdk-app-id", tencent::APP_ID];
        args.extend_from_slice(extra);
        Forwarder::start(&args)
    }

    /// The process's resident set size (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// `http://CALLBACK_ADDR{path_and_query}`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.callback_addr)
    }

    /// `http://ADMIN_ADDR{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// POSTs `body` (application/json) to `/?{query}` on the callback listener.
    pub fn post(&self, query: &str, body: &[u8]) -> Reply {
        http::post(&self.url(&format!("/?{query}")), body)
    }

    /// Polls /readyz until 200 (or `timeout`); returns the last answer.
    pub fn wait_ready(&self, timeout: Duration) -> Reply {
        let url = self.admin_url("/readyz");
        let mut last = None;
        let ok = super::poll_until(timeout, Duration::from_millis(100), || {
            let r = http::try_get(&url).ok()?;
            let ok = r.status == 200;
            last = Some(r);
            ok.then_some(())
        });
        let last = last.unwrap_or_else(|| panic!("GET {url} never answered"));
        assert!(ok.is_some(), "/readyz not 200 within {timeout:?}: {} {:?}", last.status, last.text());
        last
    }

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit, up to `timeout` (then kills it and panics).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.child, &mut self.exit, &self.output, "forwarder", timeout)
    }

    /// Waits up to `timeout` for a JSON log line whose message is `message`.
    pub fn wait_log(&self, message: &str, timeout: Duration) -> Option<Value> {
        self.output.wait_log(message, timeout)
    }

    /// Every JSON log line so far whose message is `message`.
    pub fn logs_with_message(&self, message: &str) -> Vec<Value> {
        self.output.json_lines().into_iter().filter(|v| log_message(v) == Some(message)).collect()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = self.output.all_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- forwarder {} (last output lines) ---\n{}",
                self.callback_addr,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Runs the binary with `args` and `envs` until it exits (at most `timeout`, else kills it
/// and panics); returns the exit status and all output (stdout and stderr).
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = super::spawn_owned(cmd).unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let output = Arc::new(Output::default());
    let out = read_lines(child.stdout.take().unwrap(), "stdout", output.clone());
    let err = read_lines(child.stderr.take().unwrap(), "stderr", output.clone());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out.join();
            let _ = err.join();
            panic!("{BIN} {args:?} still running after {timeout:?}; output:\n{}", output.all_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out.join();
    let _ = err.join();
    (status, output.all_text())
}
