//! Health, readiness, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::app::AppState;

/// The serialized OpenAPI document, shared with the handler.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// GET /health — the process is alive.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, description = "alive", body = Object)))]
pub async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// GET /ready — the database answers.
#[utoipa::path(get, path = "/ready", tag = "system",
    responses((status = 200, description = "ready", body = Object),
              (status = 503, description = "database unreachable", body = super::error::ErrorBody)))]
pub async fn ready(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    app.store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(axum::Json(
        json!({ "status": "ready", "database": app.store.kind().name() }),
    ))
}

/// GET /metrics — Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    for stat in app.store.pool_stats() {
        metrics::gauge!("ferrobase_db_pool_connections", "pool" => stat.pool, "state" => "open")
            .set(f64::from(stat.size));
        metrics::gauge!("ferrobase_db_pool_connections", "pool" => stat.pool, "state" => "idle")
            .set(f64::from(stat.idle));
    }
    metrics::gauge!("ferrobase_uptime_seconds").set(app.started.elapsed().as_secs_f64());
    // Rendering folds every histogram sample since the last pass (milliseconds under
    // load), so it runs off the async workers.
    let handle = app.metrics.clone();
    match tokio::task::spawn_blocking(move || handle.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::internal(format!("rendering metrics: {e}")).into_response(),
    }
}

/// GET /v1/openapi.json — this API, generated from the route table.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}
