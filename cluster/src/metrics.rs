//! Prometheus metrics over HTTP: the coordinator and each executor serve `/metrics` (the
//! process's default registry, in the text format) on their `--metrics-listen` address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Binds `listen` (so a taken port fails the start) and serves `/metrics` there in the
/// background until `stop` is cancelled; with `token_file`, only to scrapers that send the
/// bearer token it holds.
pub async fn serve(
    listen: SocketAddr,
    token_file: Option<PathBuf>,
    stop: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics port {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(Arc::new(token_file));
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

/// Whether a scrape carries the token of `token_file`, read at each scrape so a rotated
/// Secret takes effect at once. Hashes are compared, so the time taken tells nothing about
/// the token.
fn authorized(token_file: &Path, headers: &HeaderMap) -> bool {
    let Ok(expected) = std::fs::read_to_string(token_file) else {
        tracing::warn!(file = %token_file.display(), "cannot read the metrics token file");
        return false;
    };
    let sent = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    Sha256::digest(sent.trim().as_bytes()) == Sha256::digest(expected.trim().as_bytes())
}

async fn render(State(token_file): State<Arc<Option<PathBuf>>>, headers: HeaderMap) -> Response {
    if let Some(file) = token_file.as_ref()
        && !authorized(file, &headers)
    {
        let challenge = [(WWW_AUTHENTICATE, "Bearer")];
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_string())], body).into_response()
}
