//! Request-scoped middleware: request ids, metrics and the access log.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The id of the current request (also the `X-Request-Id` response header).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

const HEADER: &str = "x-request-id";

/// Keeps a well-formed client `X-Request-Id` (for tracing across services), otherwise makes
/// one; every response carries it.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(crate::util::id::new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// Counts requests by route and status, times them, and logs each at debug level.
///
/// Every label comes from a bounded set: the route table's patterns (or `unmatched`), the
/// standard methods (any other is `OTHER`: a client choosing the method must not be able
/// to mint new time series, each a permanent set of histogram buckets) and the status.
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = super::extract::method_name(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    with_request_metrics(method, route, status, |requests, duration| {
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    });
    tracing::debug!(
        http.method = method,
        http.route = route,
        http.status = status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The request counter and duration histogram of (method, route, status), from a
/// per-thread cache of their handles: building the labelled keys and looking them up in
/// the recorder's registry on every request cost ~6 % of a GET's instructions (callgrind).
fn with_request_metrics(
    method: &'static str,
    route: &str,
    status: u16,
    f: impl FnOnce(&metrics::Counter, &metrics::Histogram),
) {
    type Handles =
        HashMap<(&'static str, u16), HashMap<Box<str>, (metrics::Counter, metrics::Histogram)>>;
    thread_local! {
        static HANDLES: RefCell<Handles> = RefCell::default();
    }
    HANDLES.with_borrow_mut(|handles| {
        let by_route = handles.entry((method, status)).or_default();
        if !by_route.contains_key(route) {
            let made = (
                metrics::counter!(
                    "ferrobase_http_requests_total",
                    "method" => method,
                    "route" => route.to_owned(),
                    "status" => status.to_string()
                ),
                metrics::histogram!(
                    "ferrobase_http_request_duration_seconds",
                    "method" => method,
                    "route" => route.to_owned()
                ),
            );
            by_route.insert(route.into(), made);
        }
        if let Some((requests, duration)) = by_route.get(route) {
            f(requests, duration);
        }
    });
}

/// Refuses a request whose `Content-Length` exceeds `limit` before reading any of its body
/// (a chunked body is counted while it is read, by axum's `DefaultBodyLimit`).
pub async fn content_length_limit(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return super::error::ApiError::payload_too_large("the request body is too large")
            .into_response();
    }
    next.run(req).await
}
