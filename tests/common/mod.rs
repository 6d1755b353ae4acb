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

use std::net::TcpListener;
use std::time::{Duration, Instant};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use broker::Broker;
pub use forwarder::Forwarder;

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
