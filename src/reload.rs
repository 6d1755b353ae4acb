//! Live reload of the accepted apps and tokens: `--apps-file` and `--callback-token-file` are read again on SIGHUP
//! and when their content changes (polled, which also sees a Kubernetes Secret update: the kubelet swaps the
//! `..data` symlink of the mounted directory). A file that does not parse, or leaves an app without a token the
//! running configuration would refuse, keeps the running apps and tokens; the log says why, never a token. The
//! registry is swapped atomically, so in-flight requests are never refused because of a reload.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::callback::AppRegistry;
use crate::config::AppSources;
use crate::http::CallbackEdge;
use crate::metrics::Metrics;

/// How often the files are compared with what was last seen.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the apps and tokens again and hands them to the callback edge.
pub struct Reloader {
    sources: AppSources,
    max_clock_skew: Duration,
    edge: Arc<CallbackEdge>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader of `sources` into `edge`.
    pub fn new(sources: AppSources, max_clock_skew: Duration, edge: Arc<CallbackEdge>, metrics: Arc<Metrics>) -> Self {
        Reloader { sources, max_clock_skew, edge, metrics }
    }

    /// Reads the files again (blocking); on success the edge checks the next requests against the new apps and
    /// tokens, on failure the running ones stay. Returns whether it succeeded.
    pub fn reload(&self, trigger: &'static str) -> bool {
        match self.sources.reload_apps() {
            Ok(apps) => {
                let count = apps.len();
                self.edge.replace_apps(AppRegistry::new(apps, self.max_clock_skew));
                self.metrics.config_reload(true);
                info!(trigger, apps = count, "apps and tokens reloaded");
                true
            }
            Err(err) => {
                self.metrics.config_reload(false);
                // ConfigError names the flag, file and line, never a token.
                warn!(trigger, reason = %err, "reload failed: keeping the running apps and tokens");
                false
            }
        }
    }
}

/// Reloads on SIGHUP, and when a watched file's content changes (checked every `interval`), until the task is
/// aborted. The SIGHUP handler is installed before this returns, so that a SIGHUP from then on never ends the
/// process. Call it within a tokio runtime.
pub fn spawn(reloader: Arc<Reloader>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            warn!(error = %err, "cannot handle SIGHUP: apps and tokens reload only when their files change");
            None
        }
    };
    tokio::spawn(watch(reloader, interval, hangup))
}

async fn watch(reloader: Arc<Reloader>, interval: Duration, mut hangup: Option<tokio::signal::unix::Signal>) {
    let watched = reloader.sources.files().next().is_some();
    // What the running apps were read from: a change since, even while the spool was being recovered, reloads.
    let mut last = reloader.sources.loaded_snapshot().to_vec();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = tick.tick(), if watched => "file_changed",
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => "sighup",
            else => return,
        };
        let current = reloader.clone();
        let seen = std::mem::take(&mut last);
        let checked = tokio::task::spawn_blocking(move || {
            let now = current.sources.snapshot();
            if trigger == "sighup" || now != seen {
                current.reload(trigger);
            }
            now
        })
        .await;
        match checked {
            Ok(now) => last = now,
            Err(_) => return,
        }
    }
}
