//! Entry point: parse flags, set up logging, bind the listeners, run until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use im_callback_forwarder::config::{Args, Config, LogFormat};
use im_callback_forwarder::App;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::try_from(Args::parse())?;
    init_logging(config.log_format);
    for sdk_app_id in config.unsigned_apps() {
        warn!(
            sdk_app_id,
            "app accepts unsigned callbacks: no callback token, so anyone who can reach the listener{} and knows the SdkAppid can post them",
            if config.source.is_open() { "" } else { " from --allow-cidr" }
        );
    }
    let (listen, admin_listen) = (config.listen, config.admin_listen);
    let app = App::build(config)?;
    let callback = TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}"))?;
    let admin = TcpListener::bind(admin_listen).await.with_context(|| format!("--admin-listen {admin_listen}"))?;
    info!(
        callback_addr = %callback.local_addr()?,
        admin_addr = %admin.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let report = app.serve(callback, admin, shutdown_signal()).await;
    info!(undelivered = report.undelivered, spooled = report.spooled, "shutdown complete");
    Ok(())
}
