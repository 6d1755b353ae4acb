//! Harness for the black-box tests: a real tansu broker, the built forwarder binary,
//! HTTP helpers (ureq and raw TCP), a Kafka consumer, a Prometheus text parser and the
//! Tencent protocol helpers (Sign, samples, timestamps).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod broker;
pub mod conn;
pub mod faults;
pub mod forwarder;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod tencent;

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use broker::Broker;
pub use forwarder::Forwarder;

/// Starts `cmd` so that the child is killed when this test process dies, however it dies: a killed or timed-out
/// test binary would otherwise leave brokers and forwarders running. The kernel sends the parent-death signal
/// when the *thread* that forked the child exits, so every child is forked by one thread that lives as long as
/// the process (test threads end with their test, and a shared broker outlives the test that started it).
pub fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the child-spawner thread");
        Mutex::new(requests)
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the signal was asked for.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner.lock().expect("spawner lock").send((cmd, reply)).expect("the child-spawner thread is alive");
    answer.recv().expect("the child-spawner thread answers")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Calls `probe` every `every` until it returns `Some`, or `None` once `timeout` has passed.
pub fn poll_until<T>(timeout: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Collects named check failures so that one test run reports every mismatch at once.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// Records a failure unless `got == expected`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, case: &str, got: T, expected: T) {
        if got != expected {
            self.failures.push(format!("{case}: expected {expected:?}, got {got:?}"));
        }
    }

    /// Panics with every recorded failure, one per line.
    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!("{} check(s) failed:\n  - {}", self.failures.len(), self.failures.join("\n  - "));
        }
    }
}
