//! Ferrobase: a backend-as-a-service in one binary.
//!
//! [`serve`] is the seam both the binary and the tests use: build the application, serve
//! it on a listener the caller bound, stop gracefully when `shutdown` resolves.

pub mod app;
pub mod auth;
pub mod blobs;
pub mod changes;
pub mod config;
pub mod documents;
pub mod functions;
pub mod http;
pub mod query;
pub mod realtime;
pub mod rules;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod util;

use std::future::Future;

use anyhow::Context as _;

pub use config::Config;

/// Serves Ferrobase on `listener` until `shutdown` resolves, then finishes in-flight
/// requests and queued writes and closes the database.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let app = app::App::build(config, addr).await?;
    let router = http::router(app.clone());
    let stopping = app.clone();
    // WebSockets are not HTTP requests in flight: tell them to close as soon as the
    // shutdown begins (1001), so they do not hold the shutdown up.
    let shutdown = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    tracing::info!(%addr, backend = app.store.kind().name(), "ferrobase started");
    // One machine-readable line on stdout: operators and the test harness read it.
    println!("ferrobase listening on http://{addr}");
    let limits = http::listen::Limits {
        max_connections: app.config.limits.max_connections,
        header_read_timeout: app.config.limits.header_read_timeout,
    };
    let result = http::listen::serve(listener, router, limits, shutdown).await;
    app.shutdown().await;
    tracing::info!("ferrobase stopped");
    result.context("serving HTTP")
}
