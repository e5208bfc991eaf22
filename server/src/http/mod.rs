//! The HTTP surface: the one route table (which is also the OpenAPI source), extractors,
//! middleware and the error envelope. The only module that knows axum.

pub mod admin;
pub mod auth;
pub mod client_ip;
pub mod documents;
pub mod error;
pub mod extract;
pub mod functions;
pub mod listen;
pub mod middleware;
pub mod realtime;
pub mod storage;
pub mod system;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferrobase", description = "Backend-as-a-service in one binary."),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "system", description = "health, readiness, metrics"),
        (name = "auth", description = "users, sessions and sign-in"),
        (name = "documents", description = "the JSON document database"),
        (name = "admin", description = "administration (admins and the service key)"),
        (name = "storage", description = "buckets and objects"),
        (name = "functions", description = "cloud code: callable functions and queued invocations"),
        (name = "realtime", description = "subscriptions, presence and broadcast over WebSocket"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The route table and its OpenAPI document.
pub fn api(app: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let limits = &app.config.limits;
    let batch = OpenApiRouter::new()
        .routes(routes!(documents::batch))
        // Deploys carry whole bundles.
        .routes(routes!(functions::deploy_version, functions::list_versions))
        .layer(DefaultBodyLimit::max(limits.batch_body))
        .layer(axum::middleware::from_fn_with_state(
            limits.batch_body,
            middleware::content_length_limit,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::ready))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(
            documents::create_document,
            documents::list_documents
        ))
        .routes(routes!(documents::query_documents))
        .routes(routes!(
            documents::get_document,
            documents::update_document,
            documents::replace_document,
            documents::delete_document
        ))
        .routes(routes!(admin::create_collection, admin::list_collections))
        .routes(routes!(
            admin::get_collection,
            admin::update_collection,
            admin::delete_collection
        ))
        .routes(routes!(auth::signup))
        .routes(routes!(auth::login))
        .routes(routes!(auth::anonymous))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::get_user, auth::update_user))
        .routes(routes!(auth::link))
        .routes(routes!(auth::verify_request))
        .routes(routes!(auth::verify))
        .routes(routes!(auth::reset_request))
        .routes(routes!(auth::reset))
        .routes(routes!(auth::wechat))
        .routes(routes!(auth::oauth_start))
        .routes(routes!(auth::oauth_callback))
        .routes(routes!(auth::jwks))
        .routes(routes!(admin::admin_login))
        .routes(routes!(admin::list_users))
        .routes(routes!(
            admin::get_user,
            admin::update_user,
            admin::delete_user
        ))
        .routes(routes!(admin::revoke_user_sessions))
        .routes(routes!(admin::list_mail))
        .routes(routes!(admin::explain_query))
        .routes(routes!(admin::test_rule))
        .routes(routes!(admin::list_changes))
        .routes(routes!(realtime::realtime))
        .routes(routes!(storage::create_bucket, storage::list_buckets))
        .routes(routes!(
            storage::get_bucket,
            storage::update_bucket,
            storage::delete_bucket
        ))
        .routes(routes!(functions::call_function))
        .routes(routes!(functions::call_function_async))
        .routes(routes!(functions::get_invocation))
        .routes(routes!(functions::list_aliases))
        .routes(routes!(functions::put_alias))
        .routes(routes!(functions::list_dead_letters))
        .routes(routes!(functions::replay_dead_letter))
        .routes(routes!(functions::list_logs))
        .layer(DefaultBodyLimit::max(limits.json_body))
        .layer(axum::middleware::from_fn_with_state(
            limits.json_body,
            middleware::content_length_limit,
        ))
        .merge(batch)
        .split_for_parts()
}

/// The route table with the object routes (not expressible in utoipa's router, see
/// `storage::object_routes`) and their OpenAPI paths.
fn all_routes(app: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut openapi) = api(app);
    openapi.merge(storage::StorageDoc::openapi());
    (routes.merge(storage::object_routes()), openapi)
}

/// The complete HTTP service: the router, and around it the middleware every response
/// gets (request id, panic catching, CORS, security headers).
///
/// The outer middleware wraps the router as plain tower layers, not with `Router::layer`:
/// that wraps every route in one boxed service per layer, and axum clones each box on every
/// request (7 boxed clones per GET, the stack below each copied again, measured with
/// callgrind). Only `observe`, which needs the matched route, stays a router layer.
pub fn router(
    app: AppState,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    use axum::response::IntoResponse;
    let (routes, mut openapi) = all_routes(&app);
    openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    complete_contract(&mut openapi);
    let doc = system::OpenApiJson(Arc::new(
        serde_json::to_string(&openapi).unwrap_or_else(|_| "{}".to_owned()),
    ));
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(Any)
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::ETAG,
            header::RETRY_AFTER,
        ]);
    let routes = routes
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(app);
    tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn(middleware::request_id))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(cors)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        ))
        .layer(axum::Extension(doc))
        .map_response(IntoResponse::into_response)
        .service(routes)
}

/// What every operation shares, added to the document rather than repeated on each route:
/// any status an operation does not list is an error in the envelope of `ErrorBody` (the
/// middleware answers 400, 401, 405, 413, 415, 429, 500 and 503 on any route).
fn complete_contract(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = ResponseBuilder::new()
        .description("an error: `{error: {code, message, details}}`")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("default".to_owned())
                .or_insert_with(|| error.clone().into());
        }
    }
}

async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal("BUG: a request handler panicked").into_response()
}
