//! Serving: set up logging, bind the listeners, run until SIGTERM or SIGINT.

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::config::{Args, Config, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("IMCF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => info!(signal = "SIGTERM", "signal received"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "signal received"),
    }
}

/// Serves with the flags `args` until a signal, on a multi-threaded runtime.
pub fn serve(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the tokio runtime")?.block_on(
        async move {
            let config = Config::try_from(args)?;
            init_logging(config.log_format);
            crate::validate(&config)?;
            let (listen, admin_listen) = (config.listen, config.admin_listen);
            let callback = TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}"))?;
            let admin =
                TcpListener::bind(admin_listen).await.with_context(|| format!("--admin-listen {admin_listen}"))?;
            info!(
                callback_addr = %callback.local_addr()?,
                admin_addr = %admin.local_addr()?,
                version = env!("CARGO_PKG_VERSION"),
                "listening"
            );
            let report = crate::run(config, callback, admin, shutdown_signal()).await?;
            info!(undelivered = report.undelivered, spooled = report.spooled, "shutdown complete");
            Ok(())
        },
    )
}
