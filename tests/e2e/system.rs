//! Health, readiness, metrics, request ids, the OpenAPI document, configuration, the
//! service key, migrations and change-log retention.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestServer, assert_error, eventually};
use crate::on_both_backends;

on_both_backends!(
    health_ready_metrics_and_request_ids,
    collections_in_the_config_file_are_applied_idempotently,
    the_service_key_is_generated_once_and_kept,
    the_migrate_command_applies_migrations,
    the_change_log_is_pruned_after_its_retention,
    sigterm_stops_the_server_cleanly,
);

async fn health_ready_metrics_and_request_ids(backend: Backend) {
    let s = TestServer::start(backend).await;
    let response = s.req(Method::GET, "/health").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 20);
    assert_eq!(response.headers()["cache-control"], "private, no-store");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let (status, ready) = s.send(s.req(Method::GET, "/ready")).await;
    assert_eq!(status, StatusCode::OK);
    let expected = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(ready["database"], expected);

    let echoed = s
        .req(Method::GET, "/health")
        .header("x-request-id", "client-trace.42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "client-trace.42");
    let replaced = s
        .req(Method::GET, "/health")
        .header("x-request-id", "bad id")
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "bad id");
    let error = s.req(Method::GET, "/v1/db/x").send().await.unwrap();
    assert!(
        error.headers().contains_key("x-request-id"),
        "errors carry a request id too"
    );

    s.collection("c", json!({})).await;
    s.create("c", json!({})).await;
    // A method the client makes up is counted as OTHER: each label value is a permanent
    // set of series, so clients must not be able to mint them.
    for made_up in ["FROBNICATE", "FROBNICATE2"] {
        let method = Method::from_bytes(made_up.as_bytes()).unwrap();
        let response = s.req(method, "/health").send().await.unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = s.metrics().await;
    assert!(!metrics.contains("FROBNICATE"), "{metrics}");
    assert!(
        metrics.contains(
            r#"ferrobase_http_requests_total{method="OTHER",route="/health",status="405"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ferrobase_http_requests_total{method="POST",route="/v1/db/{collection}",status="201"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("ferrobase_http_request_duration_seconds_bucket"));
    assert!(metrics.contains(r#"ferrobase_db_pool_connections{pool="read",state="open"}"#));
    assert!(metrics.contains("ferrobase_writer_batch_size"));
}

/// Every route the server has, as `METHOD path`. A route added without OpenAPI wiring, or
/// an OpenAPI entry without a route, fails this test.
const ROUTES: &[&str] = &[
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /v1/openapi.json",
    "POST /v1/db/{collection}",
    "GET /v1/db/{collection}",
    "POST /v1/db/{collection}/query",
    "GET /v1/db/{collection}/{id}",
    "PATCH /v1/db/{collection}/{id}",
    "PUT /v1/db/{collection}/{id}",
    "DELETE /v1/db/{collection}/{id}",
    "DELETE /v1/storage/{bucket}/{key}",
    "POST /v1/db/batch",
    "POST /v1/admin/collections",
    "GET /v1/admin/collections",
    "GET /v1/admin/collections/{name}",
    "PATCH /v1/admin/collections/{name}",
    "DELETE /v1/admin/collections/{name}",
    "POST /v1/admin/collections/{name}/explain",
    "GET /v1/admin/changes",
    "POST /v1/auth/signup",
    "POST /v1/auth/login",
    "POST /v1/auth/anonymous",
    "POST /v1/auth/refresh",
    "POST /v1/auth/logout",
    "GET /v1/auth/user",
    "PATCH /v1/auth/user",
    "POST /v1/auth/link",
    "POST /v1/auth/verify/request",
    "POST /v1/auth/verify",
    "POST /v1/auth/reset/request",
    "POST /v1/auth/reset",
    "POST /v1/auth/wechat",
    "GET /v1/auth/oauth/{provider}",
    "GET /v1/auth/oauth/{provider}/callback",
    "GET /.well-known/jwks.json",
    "POST /v1/admin/login",
    "POST /v1/admin/rules/test",
    "GET /v1/realtime",
    "POST /v1/functions/{name}",
    "POST /v1/functions/{name}/async",
    "GET /v1/functions/invocations/{id}",
    "POST /v1/admin/functions/versions",
    "GET /v1/admin/functions/versions",
    "GET /v1/admin/functions/aliases",
    "PUT /v1/admin/functions/aliases/{alias}",
    "GET /v1/admin/functions/dead-letters",
    "POST /v1/admin/functions/dead-letters/{id}/replay",
    "GET /v1/admin/functions/logs",
    "POST /v1/admin/buckets",
    "GET /v1/admin/buckets",
    "GET /v1/admin/buckets/{name}",
    "PATCH /v1/admin/buckets/{name}",
    "DELETE /v1/admin/buckets/{name}",
    "PUT /v1/storage/{bucket}/{key}",
    "GET /v1/storage/{bucket}/{key}",
    "GET /v1/storage/{bucket}",
    "POST /v1/storage/{bucket}",
    "POST /v1/storage/{bucket}/sign",
    "GET /v1/admin/users",
    "GET /v1/admin/users/{id}",
    "PATCH /v1/admin/users/{id}",
    "DELETE /v1/admin/users/{id}",
    "POST /v1/admin/users/{id}/revoke-sessions",
    "GET /v1/admin/mail",
];

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (status, doc) = s.send(s.req(Method::GET, "/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete", "head"].contains(&method.as_str()) {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let expected: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        documented, expected,
        "documented routes differ from the route table"
    );
    // Each documented route is served: the router never answers "no such route".
    for route in ROUTES {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{collection}", "nope")
            .replace("{name}", "nope")
            .replace("{provider}", "nope")
            .replace("{alias}", "nope")
            .replace("{id}", "x1");
        let (status, body) = s
            .send(s.svc(method.parse().unwrap(), &path).json(&json!({})))
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{route}");
        assert_ne!(body["error"]["message"], "no such route", "{route}");
    }
}

async fn collections_in_the_config_file_are_applied_idempotently(backend: Backend) {
    let config = r#"
        [collections.todos]
        indexes = [{ fields = ["done"] }]
        schema = { type = "object", required = ["title"] }
    "#;
    let mut s = Options::new(backend).config(config).start().await;
    let (status, coll) = s.svc_get("/v1/admin/collections/todos").await;
    assert_eq!(status, StatusCode::OK, "{coll}");
    assert_eq!(coll["version"], 1);
    assert_eq!(coll["schema"]["required"], json!(["title"]));
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/todos", json!({})).await,
        400,
        "validation_failed",
    );
    s.create("todos", json!({"_id": "t1", "title": "kept"}))
        .await;

    s.restart().await;
    let (_, coll) = s.svc_get("/v1/admin/collections/todos").await;
    assert_eq!(
        coll["version"], 1,
        "an unchanged declaration is not re-applied"
    );
    let (_, doc) = s.svc_get("/v1/db/todos/t1").await;
    assert_eq!(doc["title"], "kept");

    let changed = r#"
        [collections.todos]
        indexes = [{ fields = ["done"] }, { fields = ["title"], unique = true }]
        [collections.notes]
    "#;
    std::fs::write(
        s.data_dir().parent().unwrap().join("ferrobase.toml"),
        changed,
    )
    .unwrap();
    s.restart().await;
    let (_, coll) = s.svc_get("/v1/admin/collections/todos").await;
    assert_eq!(coll["version"], 2);
    assert_eq!(coll["indexes"].as_array().unwrap().len(), 2);
    assert_eq!(coll["schema"], Value::Null);
    let (status, _) = s.svc_get("/v1/admin/collections/notes").await;
    assert_eq!(status, StatusCode::OK);

    // A bad file stops the server with a message naming the problem.
    std::fs::write(
        s.data_dir().parent().unwrap().join("ferrobase.toml"),
        "htp = 1\n",
    )
    .unwrap();
    s.kill9().await;
    let output = s
        .command(&["serve", "--http", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("htp"), "{stderr}");
}

async fn the_service_key_is_generated_once_and_kept(backend: Backend) {
    let mut options = Options::new(backend);
    options.service_key = false;
    let mut s = options.start().await;
    let announced = s.stdout.join("\n");
    assert!(announced.contains("generated a service key"), "{announced}");
    let file = s.data_dir().join("service_key");
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(key.starts_with("fbsk_") && key.len() > 40);
    assert!(announced.contains(&key));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let ok = s
        .send(
            s.req(Method::GET, "/v1/admin/collections")
                .bearer_auth(&key),
        )
        .await;
    assert_eq!(ok.0, StatusCode::OK);
    s.restart().await;
    assert!(
        !s.stdout.join("\n").contains("generated"),
        "printed only once"
    );
    let ok = s
        .send(
            s.req(Method::GET, "/v1/admin/collections")
                .header("x-ferrobase-key", &key),
        )
        .await;
    assert_eq!(ok.0, StatusCode::OK, "the key survives a restart");
    let bad = s
        .send(
            s.req(Method::GET, "/v1/admin/collections")
                .bearer_auth(format!("{key}x")),
        )
        .await;
    assert_error(&bad, 401, "unauthenticated");
}

async fn the_migrate_command_applies_migrations(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    s.kill9().await;
    let output = s.command(&["migrate"]).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("migrations applied"), "{stdout}");
}

async fn the_change_log_is_pruned_after_its_retention(backend: Backend) {
    let config = "[changes]\nretention = \"1s\"\nprune_interval = \"200ms\"\n";
    let s = Options::new(backend).config(config).start().await;
    s.collection("c", json!({})).await;
    for i in 0..5 {
        s.create("c", json!({ "i": i })).await;
    }
    let (_, log) = s.svc_get("/v1/admin/changes").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 5);
    let last = log["last_seq"].clone();
    eventually(Duration::from_secs(10), || async {
        let (_, log) = s.svc_get("/v1/admin/changes").await;
        let items = log["items"].as_array().unwrap().clone();
        // The newest row is kept so the log always knows its position.
        (items.len() == 1 && items[0]["seq"] == last).then_some(())
    })
    .await;
    let (_, log) = s.svc_get("/v1/admin/changes").await;
    assert_eq!(log["last_seq"], last);
}

async fn sigterm_stops_the_server_cleanly(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    s.create("c", json!({"_id": "x"})).await;
    assert!(s.terminate().await, "SIGTERM should exit with success");
    s.restart().await;
    let (status, _) = s.svc_get("/v1/db/c/x").await;
    assert_eq!(status, StatusCode::OK);
}
