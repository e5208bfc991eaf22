//! HOSTILE.md "Input / DoS" (IN-01 … IN-04) in one place; IN-05 is `contract.rs`. Each case
//! asserts the exact status and error code and that `/health` still answers.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, Options, TestServer, assert_error, bearer, signup};
use crate::on_both_backends;

on_both_backends!(
    in_01_hostile_json_is_a_quick_bad_request,
    in_01_duplicate_keys_are_seen_by_rules_as_stored,
    in_03_batches_and_method_overrides_do_not_bypass_limits,
    in_04_errors_logs_and_caches_leak_nothing,
);

async fn in_01_hostile_json_is_a_quick_bad_request(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    // 10,000-deep nesting: the parser's recursion limit answers, quickly (over a raw socket:
    // the server may answer before it has read the whole body).
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let started = Instant::now();
    for path in ["/v1/db/c", "/v1/db/batch", "/v1/db/c/query"] {
        let response = raw_post(&s, path, deep.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(response.contains("bad_request"), "{path}: {response}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A 10 MB string field is over the body limit: refused from Content-Length before the
    // body is read (sent as headers only: the server answers and closes without reading,
    // so a client still writing the body could see a broken pipe instead of the 413).
    let (status, response) = s
        .raw("POST /v1/db/c HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 10485770\r\n")
        .await;
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    // A lone surrogate, invalid UTF-8 and 1e400 anywhere in a document.
    for body in [
        &b"{\"a\":{\"b\":[\"\\udc00\"]}}"[..],
        &b"{\"a\":\"\xc3\x28\"}"[..],
        &b"{\"a\":[1,2,-1e400]}"[..],
    ] {
        let response = raw_post(&s, "/v1/db/c", body).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("bad_request"), "{response}");
    }
    let (_, page) = s.svc_get("/v1/db/c?count=true").await;
    assert_eq!(page["count"], 0, "nothing was written");
    s.assert_healthy().await;
}

/// POSTs `body` with the service key over a raw connection, ignoring write errors, and
/// returns what the server answered.
async fn raw_post(s: &TestServer, path: &str, body: &[u8]) -> String {
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::helpers::SERVICE_KEY,
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"a":1,"a":2}`: serde_json keeps the last value; the rule must see the value that is
/// stored, never a different one.
async fn in_01_duplicate_keys_are_seen_by_rules_as_stored(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "c",
        json!({"rules": {"create": "auth != null && new.a == 1", "get": "true", "list": "true"}}),
    )
    .await;
    let user = bearer(&signup(&s, "dup@example.com").await);
    let post = |body: &'static str| {
        s.req(Method::POST, "/v1/db/c")
            .header("authorization", &user)
            .header("content-type", "application/json")
            .body(body)
    };
    // The rule sees the last `a` (2) and denies; nothing is stored.
    let r = s.send(post(r#"{"a":1,"a":2}"#)).await;
    assert_error(&r, 403, "forbidden");
    // The rule sees the last `a` (1) and allows; 1 is what is stored.
    let (status, doc) = s.send(post(r#"{"a":2,"a":1}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    assert_eq!(doc["a"], 1);
    let (_, page) = s.svc_get("/v1/db/c").await;
    let stored: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["a"])
        .collect();
    assert_eq!(stored, [&json!(1)]);
    s.assert_healthy().await;
}

async fn in_03_batches_and_method_overrides_do_not_bypass_limits(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    // 10k operations in one batch: over the 500 limit, nothing applied.
    let ops: Vec<Value> = (0..10_000)
        .map(|i| json!({"op": "create", "collection": "c", "data": {"i": i}}))
        .collect();
    let r = s
        .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
        .await;
    assert_error(&r, 400, "bad_request");
    let (_, page) = s.svc_get("/v1/db/c?count=true").await;
    assert_eq!(page["count"], 0);
    // Operations name collections, not paths: `..` or a URL is just a bad name.
    for collection in ["../c", "http://evil.example/c", "/c"] {
        let r = s
            .svc_json(
                Method::POST,
                "/v1/db/batch",
                json!({"ops": [{"op": "create", "collection": collection, "data": {}}]}),
            )
            .await;
        assert!(
            r.0 == StatusCode::BAD_REQUEST || r.0 == StatusCode::NOT_FOUND,
            "{collection}: {r:?}"
        );
    }
    // X-HTTP-Method-Override is ignored: a GET stays a GET, the document stays.
    let doc = s.create("c", json!({"_id": "keep", "v": 1})).await;
    assert_eq!(doc["_id"], "keep");
    for header in [
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ] {
        let (status, body) = s
            .send(s.svc(Method::GET, "/v1/db/c/keep").header(header, "DELETE"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = s
            .send(
                s.svc(Method::POST, "/v1/db/c")
                    .header(header, "DELETE")
                    .json(&json!({"_id": "new"})),
            )
            .await;
        assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT);
    }
    let (status, _) = s.svc_get("/v1/db/c/keep").await;
    assert_eq!(status, StatusCode::OK);
    s.assert_healthy().await;
}

/// Strings that must never reach a client or a log.
const LEAKS: &[&str] = &[
    "SELECT ",
    "sqlite",
    "SQLITE",
    "postgres",
    "sqlx",
    "panicked at",
    "RUST_BACKTRACE",
    "src/",
    "/root/",
    "/home/",
    ".rs:",
];

async fn in_04_errors_logs_and_caches_leak_nothing(backend: Backend) {
    let s = Options::new(backend)
        .env("FERROBASE_LOG", "debug")
        .start()
        .await;
    s.collection(
        "c",
        json!({"rules": {"get": "auth != null", "create": "auth != null"}}),
    )
    .await;
    let session = signup(&s, "hygiene@example.com").await;
    let user = bearer(&session);
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let mut bodies = Vec::new();
    // Malformed input on every kind of route.
    let hostile: &[(Method, &str, &str)] = &[
        (Method::POST, "/v1/db/c", "{\"a\":"),
        (
            Method::POST,
            "/v1/db/c/query",
            r#"{"where": {"a": {"$regex": "("}}}"#,
        ),
        (
            Method::POST,
            "/v1/db/c/query",
            r#"{"where": {"a'; DROP TABLE x; --": 1}}"#,
        ),
        (
            Method::POST,
            "/v1/db/c/query",
            r#"{"sort": "a,,b", "cursor": "%%%"}"#,
        ),
        (
            Method::GET,
            "/v1/db/c?where=%7B%22a%22%3A%7B%22%24gt%22%3A%5B%5D%7D%7D",
            "",
        ),
        (Method::GET, "/v1/db/c?sort=-&limit=-1&cursor=zz", ""),
        (Method::PATCH, "/v1/db/c/x", r#"{"$inc": {"a": "x"}}"#),
        (Method::GET, "/v1/db/%00/x", ""),
        (Method::GET, "/v1/db/c/%2e%2e%2f%2e%2e", ""),
        (Method::POST, "/v1/auth/login", r#"{"email": 1}"#),
        (
            Method::POST,
            "/v1/auth/refresh",
            r#"{"refresh_token": "fbr_' OR 1=1 --"}"#,
        ),
        (
            Method::POST,
            "/v1/admin/collections",
            r#"{"name": "x", "rules": {"get": "doc.("}}"#,
        ),
        (Method::PUT, "/v1/storage/nope/..%2f..%2fetc%2fpasswd", "x"),
        (Method::POST, "/v1/functions/..%2f..%2fetc", "{}"),
        (Method::GET, "/v1/functions/invocations/'%20OR%201=1", ""),
    ];
    for (method, path, body) in hostile {
        for auth in [None, Some(user.clone())] {
            let mut request = s
                .req(method.clone(), path)
                .header("content-type", "application/json")
                .body(*body);
            if let Some(a) = &auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(status.is_client_error(), "{method} {path}: {status} {text}");
            bodies.push(format!("{method} {path}: {text}"));
        }
    }
    for body in &bodies {
        for leak in LEAKS {
            assert!(!body.contains(leak), "`{leak}` in a response: {body}");
        }
    }
    // User data is not cached by browsers or proxies.
    let doc = s
        .send(
            s.req(Method::POST, "/v1/db/c")
                .header("authorization", &user)
                .json(&json!({"secret": 1})),
        )
        .await;
    assert_eq!(doc.0, StatusCode::CREATED);
    let response = s
        .req(
            Method::GET,
            &format!("/v1/db/c/{}", doc.1["_id"].as_str().unwrap()),
        )
        .header("authorization", &user)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "private, no-store");
    let response = s
        .req(Method::GET, "/v1/auth/user")
        .header("authorization", &user)
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    // CORS: a wildcard origin never comes with credentials.
    let response = s
        .req(Method::OPTIONS, "/v1/db/c")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    let wildcard = headers
        .get("access-control-allow-origin")
        .is_some_and(|v| v == "*");
    let credentials = headers
        .get("access-control-allow-credentials")
        .is_some_and(|v| v == "true");
    assert!(!(wildcard && credentials), "{headers:?}");
    // The log (at debug) names no token, refresh token or password.
    let (status, _) = s
        .send(
            s.req(Method::POST, "/v1/auth/login").json(
                &json!({"email": "hygiene@example.com", "password": "correct horse battery"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.assert_healthy().await;
    let log = std::fs::read_to_string(s.log_path()).unwrap_or_default();
    assert!(log.contains("request"), "the debug log has request lines");
    let token = user.trim_start_matches("Bearer ");
    for secret in [
        token,
        refresh.as_str(),
        "correct horse battery",
        crate::helpers::SERVICE_KEY,
    ] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
}

/// IN-02: a client trickling its headers is cut off by the header-read timeout, idle
/// keep-alive connections do not pile up past `limits.max_connections`, and new clients are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_02_slow_and_idle_connections_are_bounded() {
    let s = Options::new(Backend::Sqlite)
        .config("[limits]\nheader_read_timeout = \"1s\"\nmax_connections = 64\n")
        .start()
        .await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    // Slowloris: one header byte every 300 ms.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let closed = async {
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the slow client was cut off after {:?}",
        started.elapsed()
    );
    // 150 idle connections against a cap of 64 (the rest wait in the listen backlog): new
    // requests are still served, as idle ones close after the header-read timeout.
    let mut idle = Vec::new();
    for _ in 0..150 {
        let connect = tokio::net::TcpStream::connect(&addr);
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            idle.push(c);
        }
    }
    assert!(idle.len() > 64, "only {} connections opened", idle.len());
    let started = Instant::now();
    let fresh = reqwest::Client::new();
    let response = tokio::time::timeout(
        Duration::from_secs(15),
        fresh.get(format!("{}/health", s.url)).send(),
    )
    .await
    .expect("a new request is served while idle connections are held")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(idle);
    s.assert_healthy().await;
}

/// RT-05 (and every HTTP route): a 1 MB request header, or 10 000 headers, on a plain
/// request and on a WebSocket upgrade, is refused within a second with `431`, and the
/// server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_are_refused_quickly() {
    let s = TestServer::start(Backend::Sqlite).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let big = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (path, extra) in [("/health", ""), ("/v1/realtime", upgrade)] {
        for bomb in [&big, &many] {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}{bomb}\r\n");
            // The server may answer and close before it has read everything.
            let _ = stream.write_all(request.as_bytes()).await;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with("HTTP/1.1 431"),
                "{path} with {} header bytes: {}",
                bomb.len(),
                text.lines().next().unwrap_or("(nothing)")
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused after {:?}",
                started.elapsed()
            );
            s.assert_healthy().await;
        }
    }
}

/// A stored document whose data is not a JSON object (the database file edited by hand)
/// answers a clean 500 on every read path that meets it — never a page of broken JSON,
/// never a leak of its content, never a panic — and the other documents still read by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_document_is_an_internal_error_not_broken_json() {
    use sqlx::Connection;
    let s = TestServer::start(Backend::Sqlite).await;
    s.collection(
        "notes",
        json!({"rules": {"get": "true", "list": "true", "create": "true"}}),
    )
    .await;
    s.create("notes", json!({"_id": "good", "n": 1})).await;
    s.create("notes", json!({"_id": "bad", "n": 2})).await;
    let url = format!("sqlite://{}", s.data_dir().join("data.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let table: i64 = sqlx::query_scalar("SELECT id FROM fb_collections WHERE name = 'notes'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let damaged = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE fb_docs_{table} SET data = '{{\"n\": \"secret\"' WHERE id = 'bad'"
    )))
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(damaged.rows_affected(), 1);
    db.close().await.unwrap();

    for (method, path, body) in [
        (Method::GET, "/v1/db/notes/bad", None),
        (Method::GET, "/v1/db/notes", None),
        (Method::POST, "/v1/db/notes/query", Some(json!({}))),
    ] {
        let mut req = s.req(method.clone(), path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer = s.send(req).await;
        assert_error(&answer, 500, "internal");
        assert!(
            !answer.1.to_string().contains("secret"),
            "{path}: {}",
            answer.1
        );
    }
    // The intact document still reads by id. A filter on a data field fails cleanly too:
    // SQLite's JSON functions refuse the malformed text when the scan reaches it.
    let (status, good) = s.send(s.req(Method::GET, "/v1/db/notes/good")).await;
    assert_eq!((status, good["n"].clone()), (StatusCode::OK, json!(1)));
    let filtered = s
        .send(s.req(Method::GET, "/v1/db/notes?where=%7B%22n%22%3A1%7D"))
        .await;
    assert_error(&filtered, 500, "internal");
    s.assert_healthy().await;
}
