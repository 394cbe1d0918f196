//! Prometheus metrics over HTTP: the coordinator and each executor serve `/metrics` (the
//! process's default registry, in the text format) on their `--metrics-listen` address.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;

/// Binds `listen` (so a taken port fails the start) and serves `/metrics` there in the
/// background until `stop` is cancelled.
pub async fn serve(listen: SocketAddr, stop: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics port {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    let app = Router::new().route("/metrics", get(render));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}

async fn render() -> ([(axum::http::HeaderName, String); 1], Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_string())], body)
}
