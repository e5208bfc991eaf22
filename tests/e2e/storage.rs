//! Object storage over a real socket: uploads and downloads, ranges and validators, rules
//! on every path, signed URLs, hostile keys and bodies, crashes mid-upload, memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Backend, Options, S3Server, SERVICE_KEY, TestServer, assert_error, bearer, eventually, signup,
};
use crate::on_both_backends;

on_both_backends!(
    rules_on_every_object_path,
    hostile_keys_bodies_and_downloads,
    multipart_browser_upload,
    buckets_are_declared_and_validated,
);

/// Where blobs live in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blobs {
    Local,
    S3,
}

/// Runs a suite on SQLite and Postgres with local blobs, and on SQLite with S3 blobs.
macro_rules! on_every_blob_store {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_local() {
                    super::$name(Backend::Sqlite, Blobs::Local).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_local() {
                    if let Some(backend) = Backend::postgres() {
                        super::$name(backend, Blobs::Local).await
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_s3() {
                    super::$name(Backend::Sqlite, Blobs::S3).await
                }
            }
        )*
    };
}

on_every_blob_store!(
    upload_download_list_delete,
    signed_urls_work_until_tampered_or_expired,
    interrupted_and_crashed_uploads_leave_nothing,
    large_upload_streams_in_constant_memory,
    per_user_quota_holds_under_concurrent_uploads,
    a_crash_mid_delete_leaves_objects_whole_or_gone,
);

/// A server and, for S3, the S3 server behind it.
struct Fixture {
    s: TestServer,
    s3: Option<S3Server>,
}

impl Fixture {
    async fn start(backend: Backend, blobs: Blobs, config: &str) -> Fixture {
        let s3 = match blobs {
            Blobs::S3 => Some(S3Server::start().await),
            Blobs::Local => None,
        };
        let mut options = Options::new(backend).config(config);
        if let Some(s3) = &s3 {
            options = s3.configure(options);
        }
        Fixture {
            s: options.start().await,
            s3,
        }
    }

    fn blob_dir(&self) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.blob_dir(),
            None => self.s.data_dir().join("storage/blobs"),
        }
    }

    fn blob_count(&self) -> usize {
        files(&self.blob_dir()).len()
    }
}

async fn bucket(s: &TestServer, body: Value) {
    let (status, out) = s.svc_json(Method::POST, "/v1/admin/buckets", body).await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
}

async fn put(
    s: &TestServer,
    path: &str,
    bytes: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = s.svc(Method::PUT, path).body(bytes);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    s.send(request).await
}

async fn download(
    s: &TestServer,
    request: reqwest::RequestBuilder,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let _ = s;
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// Sends exactly `head` (request line and headers, without Host/Authorization/Connection)
/// and `body`; returns the status and the raw response.
async fn raw(s: &TestServer, head: &str, body: &[u8]) -> (u16, String) {
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut request = format!(
        "{head}Host: {addr}\r\nAuthorization: Bearer {SERVICE_KEY}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Every object of a listing (`path` with its query), following `next_cursor` page by page.
async fn list_all(s: &TestServer, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = path.to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = s.svc_get(&url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn blobs(s: &TestServer) -> Vec<PathBuf> {
    files(&s.data_dir().join("storage/blobs"))
}

async fn upload_download_list_delete(backend: Backend, store: Blobs) {
    let f = Fixture::start(backend, store, "").await;
    let s = &f.s;
    bucket(s, json!({"name": "docs"})).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (status, object) = put(
        s,
        "/v1/storage/docs/reports/2026/q1.bin",
        body.clone(),
        &[
            ("content-type", "application/x-report"),
            ("x-meta-author", "ada"),
            ("X-Meta-Year", "2026"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["size"], 100_000);
    assert_eq!(object["metadata"], json!({"author": "ada", "year": "2026"}));
    assert_eq!(object["content_type"], "application/x-report");
    assert_eq!(f.blob_count(), 1);

    let path = "/v1/storage/docs/reports/2026/q1.bin";
    let (status, headers, bytes) = download(s, s.svc(Method::GET, path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, body);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", object["etag"].as_str().unwrap()));
    assert_eq!(headers["content-length"], "100000");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"q1.bin\"")
    );

    let (status, headers, bytes) = download(s, s.svc(Method::HEAD, path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "100000");
    assert!(bytes.is_empty());

    let (status, headers, bytes) =
        download(s, s.svc(Method::GET, path).header("range", "bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 10-19/100000");
    assert_eq!(bytes, body[10..20]);
    let (status, _, bytes) =
        download(s, s.svc(Method::GET, path).header("range", "bytes=-5")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, body[99_995..]);
    let (status, headers, _) =
        download(s, s.svc(Method::GET, path).header("range", "bytes=100000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */100000");
    let (status, _, bytes) =
        download(s, s.svc(Method::GET, path).header("if-none-match", &etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(bytes.is_empty());

    // Replacing keeps one blob: the old bytes are gone after the commit.
    let (status, replaced) = put(s, path, b"short".to_vec(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["created_at"], object["created_at"]);
    assert_eq!(replaced["content_type"], "application/octet-stream");
    assert_eq!(f.blob_count(), 1);
    let (_, _, bytes) = download(s, s.svc(Method::GET, path)).await;
    assert_eq!(bytes, b"short");

    // Listing by prefix, paged by cursor, in key order.
    for name in ["a", "b", "c", "d"] {
        put(
            s,
            &format!("/v1/storage/docs/reports/2025/{name}"),
            name.as_bytes().to_vec(),
            &[],
        )
        .await;
    }
    put(s, "/v1/storage/docs/other", b"x".to_vec(), &[]).await;
    let keys: Vec<String> = list_all(s, "/v1/storage/docs?prefix=reports/&limit=2")
        .await
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "reports/2025/a",
            "reports/2025/b",
            "reports/2025/c",
            "reports/2025/d",
            "reports/2026/q1.bin"
        ]
    );

    let (status, _) = s.send(s.svc(Method::DELETE, path)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(&s.send(s.svc(Method::GET, path)).await, 404, "not_found");
    assert_error(&s.send(s.svc(Method::DELETE, path)).await, 404, "not_found");
    assert_eq!(f.blob_count(), 5);

    // Uploads and deletes are in the change log.
    let (_, changes) = s.svc_get("/v1/admin/changes?after=0&limit=1000").await;
    let ops: Vec<(String, String)> = changes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["doc_id"] == "reports/2026/q1.bin")
        .map(|c| {
            (
                c["collection"].as_str().unwrap().to_owned(),
                c["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ["upload", "upload", "delete"]
        .iter()
        .map(|op| ("storage/docs".to_owned(), (*op).to_owned()))
        .collect();
    assert_eq!(ops, expected);
}

async fn rules_on_every_object_path(backend: Backend) {
    let s = TestServer::start(backend).await;
    bucket(
        &s,
        json!({"name": "files", "rules": {
            "read": "object.owner == auth.id || object.metadata.public == 'yes'",
            "write": "auth != null && object.key.startsWith(auth.id + '/') && (object.size == null || object.size <= 100)",
            "delete": "auth != null && object.owner == auth.id",
        }}),
    )
    .await;
    bucket(&s, json!({"name": "locked"})).await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    let a_id = alice["user"]["id"].as_str().unwrap().to_owned();
    let as_user = |session: &Value, method: Method, path: &str| {
        s.req(method, path).header("authorization", bearer(session))
    };

    let private = format!("/v1/storage/files/{a_id}/secret.txt");
    let (status, object) = s
        .send(as_user(&alice, Method::PUT, &private).body("for alice"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["owner"], a_id.as_str());
    let public = format!("/v1/storage/files/{a_id}/open.txt");
    let (status, _) = s
        .send(
            as_user(&alice, Method::PUT, &public)
                .header("x-meta-public", "yes")
                .body("for all"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Writes outside one's folder, too large (declared or streamed), or anonymous: 403.
    assert_error(
        &s.send(as_user(&bob, Method::PUT, &private).body("mine now"))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &s.send(
            as_user(
                &alice,
                Method::PUT,
                &format!("/v1/storage/files/{a_id}/big"),
            )
            .body(vec![0u8; 200]),
        )
        .await,
        403,
        "forbidden",
    );
    let chunked =
        reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            vec![1u8; 150],
        )]));
    assert_error(
        &s.send(
            as_user(
                &alice,
                Method::PUT,
                &format!("/v1/storage/files/{a_id}/big"),
            )
            .body(chunked),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &s.send(s.req(Method::PUT, &private).body("anon")).await,
        403,
        "forbidden",
    );

    // Reads: the owner, and anyone for the public one; others get 404 on every read path.
    let (status, _, bytes) = download(&s, as_user(&alice, Method::GET, &private)).await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, &b"for alice"[..])
    );
    for request in [
        as_user(&bob, Method::GET, &private),
        as_user(&bob, Method::HEAD, &private),
        as_user(&bob, Method::GET, &private).header("range", "bytes=0-2"),
        s.req(Method::GET, &private),
    ] {
        let (status, _, bytes) = download(&s, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!String::from_utf8_lossy(&bytes).contains("for alice"));
    }
    let (status, _, bytes) = download(&s, s.req(Method::GET, &public)).await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, &b"for all"[..])
    );
    for (who, expected) in [
        (Some(&bob), vec!["open.txt"]),
        (None, vec!["open.txt"]),
        (Some(&alice), vec!["open.txt", "secret.txt"]),
    ] {
        let url = format!("/v1/storage/files?prefix={a_id}/");
        let request = match who {
            Some(session) => as_user(session, Method::GET, &url),
            None => s.req(Method::GET, &url),
        };
        let (status, page) = s.send(request).await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, expected);
    }

    // Deletes: not by bob, by alice.
    assert_error(
        &s.send(as_user(&bob, Method::DELETE, &public)).await,
        403,
        "forbidden",
    );
    let (status, _) = s.send(as_user(&alice, Method::DELETE, &public)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A bucket without rules is closed to clients, on every path.
    for (method, path) in [
        (Method::PUT, "/v1/storage/locked/x"),
        (Method::GET, "/v1/storage/locked/x"),
        (Method::DELETE, "/v1/storage/locked/x"),
        (Method::GET, "/v1/storage/locked"),
    ] {
        assert_error(
            &s.send(as_user(&alice, method, path).body("x")).await,
            403,
            "forbidden",
        );
    }
    assert_error(
        &s.send(
            as_user(&alice, Method::POST, "/v1/storage/locked/sign")
                .json(&json!({"key": "x", "method": "GET"})),
        )
        .await,
        403,
        "forbidden",
    );
}

async fn signed_urls_work_until_tampered_or_expired(backend: Backend, store: Blobs) {
    let f = Fixture::start(backend, store, "").await;
    let s = &f.s;
    bucket(s, json!({"name": "private", "rules": {"read": "auth != null && object.owner == auth.id", "write": "auth != null"}})).await;
    bucket(s, json!({"name": "other", "rules": {"read": "true"}})).await;
    let alice = signup(s, "alice@example.com").await;
    let bob = signup(s, "bob@example.com").await;
    let as_user = |session: &Value, method: Method, path: &str| {
        s.req(method, path).header("authorization", bearer(session))
    };
    let (status, _) = s
        .send(as_user(&alice, Method::PUT, "/v1/storage/private/report.pdf").body("pdf bytes"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    put(
        s,
        "/v1/storage/other/report.pdf",
        b"other bytes".to_vec(),
        &[],
    )
    .await;

    let sign = |session: &Value, body: Value| {
        s.send(as_user(session, Method::POST, "/v1/storage/private/sign").json(&body))
    };
    let (status, signed) = sign(
        &alice,
        json!({"key": "report.pdf", "method": "GET", "expires_in": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let url = signed["url"].as_str().unwrap().to_owned();
    let fetch = |url: String| async move {
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(
        fetch(url.clone()).await,
        (StatusCode::OK, "pdf bytes".to_owned())
    );
    // Extra query parameters (a cache buster) do not break a link.
    assert_eq!(
        fetch(format!("{url}&v=2")).await,
        (StatusCode::OK, "pdf bytes".to_owned())
    );

    // Tampering with any part fails.
    let expires = signed["expires_at"].as_i64().unwrap();
    let tampered = [
        url.replace("report.pdf", "report.PDF"),
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires + 1000),
        ),
        url.replace("/private/", "/other/"),
        url.replace("sig=", "sig=00"),
        url.replace("&signer=", "&signer=someone"),
    ];
    for bad in tampered {
        let (status, body) = fetch(bad.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}: {body}");
        assert!(body.contains("invalid_signature"), "{body}");
    }
    // A GET URL is not a PUT URL.
    let response = reqwest::Client::new()
        .put(&url)
        .body("overwrite")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Bob cannot sign what he cannot read; unknown methods and extra claims are refused.
    assert_error(
        &sign(&bob, json!({"key": "report.pdf", "method": "GET"})).await,
        404,
        "not_found",
    );
    assert_error(
        &sign(&alice, json!({"key": "report.pdf", "method": "DELETE"})).await,
        400,
        "bad_request",
    );
    assert_error(
        &sign(
            &alice,
            json!({"key": "report.pdf", "method": "GET", "role": "admin"}),
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &sign(&alice, json!({"key": "../x", "method": "GET"})).await,
        400,
        "bad_request",
    );

    // A signed PUT uploads without a token, owned by the signer.
    let (status, signed_put) = sign(
        &bob,
        json!({"key": "from-bob.txt", "method": "PUT", "expires_in": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed_put}");
    let response = reqwest::Client::new()
        .put(signed_put["url"].as_str().unwrap())
        .body("uploaded by link")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let object: Value = response.json().await.unwrap();
    assert_eq!(object["owner"], bob["user"]["id"]);

    // Expiry.
    let (_, short) = sign(
        &alice,
        json!({"key": "report.pdf", "method": "GET", "expires_in": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        fetch(short["url"].as_str().unwrap().to_owned()).await.0,
        StatusCode::FORBIDDEN
    );
}

async fn hostile_keys_bodies_and_downloads(backend: Backend) {
    let s = TestServer::start(backend).await;
    bucket(&s, json!({"name": "up", "max_size": 1000, "content_types": ["image/*", "text/plain", "text/html", "application/octet-stream"]})).await;
    let root = s.data_dir();
    // Everything but the database's own files and the log.
    let tree = || -> Vec<PathBuf> {
        files(root.parent().unwrap())
            .into_iter()
            .filter(|p| {
                let name = p.to_string_lossy();
                !name.contains("data.db") && !name.ends_with(".log")
            })
            .collect()
    };
    let before = tree();

    for key in [
        "..%2f..%2fx",
        "%2e%2e/x",
        "a/..%2F..%2Fx",
        "%2Fetc%2Fpasswd",
        "C:%5Cx",
        "%5C%5Csrv%5Cshare%5Cx",
        "a%00b",
        "a/./b",
        "..%E2%88%95x",
        "a%0d%0ab",
    ] {
        let (status, response) = raw(
            &s,
            &format!("PUT /v1/storage/up/{key} HTTP/1.1\r\nContent-Length: 1\r\n"),
            b"x",
        )
        .await;
        assert_eq!(status, 400, "{key}: {response}");
        assert!(response.contains("bad_request"), "{key}: {response}");
        let (status, _) = raw(&s, &format!("GET /v1/storage/up/{key} HTTP/1.1\r\n"), b"").await;
        assert_eq!(status, 400, "GET {key}");
    }
    let long = "k".repeat(4096);
    assert_error(
        &put(&s, &format!("/v1/storage/up/{long}"), b"x".to_vec(), &[]).await,
        400,
        "bad_request",
    );
    assert_error(
        &s.svc_get("/v1/storage/up?prefix=../").await,
        400,
        "bad_request",
    );
    assert_eq!(before, tree(), "no file was created anywhere");

    // Size: declared, and streamed without a length.
    assert_error(
        &put(&s, "/v1/storage/up/big", vec![0; 1001], &[]).await,
        413,
        "payload_too_large",
    );
    let mut chunked = Vec::new();
    for _ in 0..2 {
        chunked.extend_from_slice(b"3e8\r\n");
        chunked.extend_from_slice(&[7u8; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, response) = raw(
        &s,
        "PUT /v1/storage/up/big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
        &chunked,
    )
    .await;
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("payload_too_large"));
    assert_error(
        &put(
            &s,
            "/v1/storage/up/x.pdf",
            b"%PDF".to_vec(),
            &[("content-type", "application/pdf")],
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &put(&s, "/v1/storage/nope/x", b"x".to_vec(), &[]).await,
        404,
        "bucket_not_found",
    );
    assert!(blobs(&s).is_empty());
    assert!(files(&root.join("storage/tmp")).is_empty());

    // Serving safety: active content is never served as such.
    let html = b"<html><script>alert(1)</script></html>".to_vec();
    for (key, ct) in [
        ("page.html", "text/html; charset=utf-8"),
        ("x.png", "text/html"),
        ("pic.svg", "image/svg+xml"),
    ] {
        let (status, _) = put(
            &s,
            &format!("/v1/storage/up/{key}"),
            html.clone(),
            &[("content-type", ct)],
        )
        .await;
        assert!(status.is_success(), "{key}");
        let (_, headers, _) =
            download(&s, s.svc(Method::GET, &format!("/v1/storage/up/{key}"))).await;
        let served = headers["content-type"].to_str().unwrap();
        assert!(
            !served.contains("html") && !served.contains("svg"),
            "{key} served as {served}"
        );
        assert!(
            headers["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; sandbox"
        );
    }
    put(&s, "/v1/storage/up/noext", b"0123456789".to_vec(), &[]).await;
    for range in [
        "bytes=999999999-",
        "bytes=5-2",
        "bytes=-0",
        "bytes=a-b",
        &format!("bytes={}", vec!["0-1"; 1000].join(",")),
    ] {
        let (status, _, _) = download(
            &s,
            s.svc(Method::GET, "/v1/storage/up/noext")
                .header("range", range),
        )
        .await;
        assert!(!status.is_server_error(), "{range}: {status}");
    }
    let (status, response) = raw(
        &s,
        "PUT /v1/storage/up/a%0d%0aSet-Cookie:%20x=1.png HTTP/1.1\r\nContent-Length: 1\r\n",
        b"x",
    )
    .await;
    assert_eq!(status, 400, "{response}");
    let (status, _) = put(
        &s,
        "/v1/storage/up/quote\"name;.png",
        b"x".to_vec(),
        &[("content-type", "image/png")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, _) =
        download(&s, s.svc(Method::GET, "/v1/storage/up/quote%22name;.png")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-disposition"],
        "inline; filename=\"quote_name;.png\"; filename*=UTF-8''quote%22name%3B.png"
    );
    s.assert_healthy().await;
}

async fn multipart_browser_upload(backend: Backend) {
    let s = TestServer::start(backend).await;
    bucket(&s, json!({"name": "avatars", "rules": {"write": "auth != null", "read": "true"}, "content_types": ["image/*"]})).await;
    let alice = signup(&s, "alice@example.com").await;
    let boundary = "----ferrobase-test-boundary";
    let form = |key: Option<&str>, filename: &str, ct: &str, bytes: &[u8]| {
        let mut body = Vec::new();
        if let Some(key) = key {
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n{key}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    };
    let post = |body: Vec<u8>| {
        s.req(Method::POST, "/v1/storage/avatars")
            .header("authorization", bearer(&alice))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
    };
    let png = b"\x89PNG\r\n\x1a\nfake".to_vec();
    let (status, object) = s
        .send(post(form(
            Some("users/alice.png"),
            "me.png",
            "image/png",
            &png,
        )))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["key"], "users/alice.png");
    assert_eq!(object["content_type"], "image/png");
    let (status, object) = s
        .send(post(form(None, "named.png", "image/png", &png)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["key"], "named.png");
    let (_, _, bytes) = download(
        &s,
        s.req(Method::GET, "/v1/storage/avatars/users/alice.png"),
    )
    .await;
    assert_eq!(bytes, png);
    // Larger than axum's default 2 MB body limit: only the bucket's limit applies.
    let big = vec![9u8; 3 << 20];
    let (status, object) = s
        .send(post(form(Some("big.png"), "big.png", "image/png", &big)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["size"], 3 << 20);
    // The sign request itself stays small.
    let huge = json!({"key": "x".repeat(100_000), "method": "GET"});
    let response = s
        .send(
            s.req(Method::POST, "/v1/storage/avatars/sign")
                .header("authorization", bearer(&alice))
                .json(&huge),
        )
        .await;
    assert_eq!(response.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", response.1);
    assert_error(
        &s.send(post(form(Some("x.txt"), "x.txt", "text/plain", b"hi")))
            .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &s.send(post(form(Some("../x.png"), "x.png", "image/png", &png)))
            .await,
        400,
        "bad_request",
    );
    assert_error(&s.send(post(b"garbage".to_vec())).await, 400, "bad_request");
    assert_error(
        &s.send(
            s.req(Method::POST, "/v1/storage/avatars")
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(form(Some("a.png"), "a.png", "image/png", &png)),
        )
        .await,
        403,
        "forbidden",
    );
}

async fn interrupted_and_crashed_uploads_leave_nothing(backend: Backend, store: Blobs) {
    let mut f = Fixture::start(
        backend,
        store,
        "[storage]\nsweep_grace = \"1s\"\nsweep_interval = \"200ms\"\nbody_idle_timeout = \"1s\"\n",
    )
    .await;
    bucket(&f.s, json!({"name": "b"})).await;
    let addr = f.s.url.trim_start_matches("http://").to_owned();
    let partial = |key: &'static str, bytes: usize| {
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "PUT /v1/storage/b/{key} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {SERVICE_KEY}\r\nContent-Length: 100000000\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&vec![1u8; bytes]).await.unwrap();
            stream
        }
    };
    let temp_dir = f.s.data_dir().join("storage/tmp");
    // The client disconnects mid-body (within the first part, and after several parts on
    // S3): no object, no blob, no temp file.
    for (key, bytes) in [("gone", 100_000), ("gone-late", 20_000_000)] {
        let stream = partial(key, bytes).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
        eventually(Duration::from_secs(10), || async {
            files(&temp_dir).is_empty().then_some(())
        })
        .await;
        assert_error(
            &f.s.svc_get(&format!("/v1/storage/b/{key}")).await,
            404,
            "not_found",
        );
    }
    // A client that stalls mid-body with the connection open is answered and dropped.
    let mut stalled = partial("stalled", 100_000).await;
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "a stalled upload was kept waiting");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_error(
        &f.s.svc_get("/v1/storage/b/stalled").await,
        404,
        "not_found",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.blob_count(), 0);
    assert!(files(&temp_dir).is_empty());

    // SIGKILL mid-upload, then a restart: the half-written temp file is swept, no row.
    let mut stream = partial("crash", 100_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.s.kill9().await;
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink).await;
    f.s.restart().await;
    assert_error(&f.s.svc_get("/v1/storage/b/crash").await, 404, "not_found");
    // An orphan blob (bytes written, crash before the row): swept after the grace period.
    let orphan = match store {
        Blobs::Local => f.blob_dir().join("zz/zzzzzzzzzzzzzzzzzzzz"),
        Blobs::S3 => f.blob_dir().join("zzzzzzzzzzzzzzzzzzzz"),
    };
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();
    put(&f.s, "/v1/storage/b/kept", b"kept".to_vec(), &[]).await;
    eventually(Duration::from_secs(10), || async {
        (files(&temp_dir).is_empty() && !orphan.exists()).then_some(())
    })
    .await;
    let (status, _, bytes) = download(&f.s, f.s.svc(Method::GET, "/v1/storage/b/kept")).await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, &b"kept"[..]),
        "a live blob is never swept"
    );
}

/// HOSTILE DUR-03: SIGKILL while deletes and overwrites run, five times. After each
/// restart every object is whole or gone: an acknowledged delete stays deleted, an
/// acknowledged overwrite reads back its bytes, an operation the kill cut off left the old
/// or the new state (never a short or missing blob), untouched objects are intact, and
/// the listing names exactly the objects that read back. Once the sweeper has run, the
/// blob store holds exactly the listed objects' blobs and no temp file.
async fn a_crash_mid_delete_leaves_objects_whole_or_gone(backend: Backend, store: Blobs) {
    use futures_util::StreamExt;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    const KEYS: usize = 96;
    const WORKERS: usize = 4;
    let mut f = Fixture::start(
        backend,
        store,
        "[storage]\nsweep_grace = \"1s\"\nsweep_interval = \"200ms\"\n",
    )
    .await;
    bucket(&f.s, json!({"name": "d"})).await;
    // Generation 0 is the first upload, 1 the overwrite; `None` is deleted.
    let bytes = |key: &str, generation: u8| -> Vec<u8> {
        let seed = key
            .bytes()
            .fold(generation as usize, |a, b| a * 31 + b as usize);
        (0..40_000).map(|i| (i * 7 + seed) as u8).collect()
    };
    // What each key may read back as after the crash.
    let mut allowed: BTreeMap<String, BTreeSet<Option<u8>>> = BTreeMap::new();
    let (mut cut_off, mut acked_total) = (0, 0);
    for round in 0..5 {
        for i in 0..KEYS {
            let key = format!("r{round}/{i}");
            let (status, out) =
                put(&f.s, &format!("/v1/storage/d/{key}"), bytes(&key, 0), &[]).await;
            assert!(status.is_success(), "{out}");
        }
        // Per key: the state asked for, and whether the server acknowledged it.
        type Tried = BTreeMap<String, (Option<u8>, bool)>;
        let tried: Arc<Mutex<Tried>> = Arc::default();
        let mut load = Vec::new();
        for w in 0..WORKERS {
            let (client, url, tried) = (f.s.client.clone(), f.s.url.clone(), tried.clone());
            load.push(tokio::spawn(async move {
                for i in (w..KEYS).step_by(WORKERS) {
                    let key = format!("r{round}/{i}");
                    let target = if i % 2 == 0 { None } else { Some(1) };
                    tried.lock().unwrap().insert(key.clone(), (target, false));
                    let request = match target {
                        None => client.delete(format!("{url}/v1/storage/d/{key}")),
                        Some(g) => client
                            .put(format!("{url}/v1/storage/d/{key}"))
                            .body(bytes(&key, g)),
                    };
                    match request.bearer_auth(SERVICE_KEY).send().await {
                        Ok(r) if r.status().is_success() => {
                            tried.lock().unwrap().insert(key, (target, true));
                        }
                        Ok(r) => panic!("{key}: unexpected status {}", r.status()),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill once a round-dependent share of the work is acknowledged.
        let threshold = 10 + round * 15;
        eventually(Duration::from_secs(30), || async {
            let done = tried.lock().unwrap().values().filter(|(_, ok)| *ok).count();
            (done >= threshold).then_some(())
        })
        .await;
        f.s.kill9().await;
        for task in load {
            task.await.unwrap();
        }
        let tried = std::mem::take(&mut *tried.lock().unwrap());
        for i in 0..KEYS {
            let key = format!("r{round}/{i}");
            let states = match tried.get(&key) {
                None => BTreeSet::from([Some(0)]),
                Some((target, true)) => {
                    acked_total += 1;
                    BTreeSet::from([*target])
                }
                Some((target, false)) => {
                    cut_off += 1;
                    BTreeSet::from([Some(0), *target])
                }
            };
            allowed.insert(key, states);
        }
        f.s.restart().await;
        f.s.assert_healthy().await;
        // This round's objects are whole or gone, as allowed (earlier rounds' deletes are
        // checked by the final listing).
        let read: Vec<(String, StatusCode, Vec<u8>)> =
            futures_util::stream::iter((0..KEYS).map(|i| format!("r{round}/{i}")))
                .map(|key| {
                    let (s, request) =
                        (&f.s, f.s.svc(Method::GET, &format!("/v1/storage/d/{key}")));
                    async move {
                        let (status, _, body) = download(s, request).await;
                        (key, status, body)
                    }
                })
                .buffer_unordered(8)
                .collect()
                .await;
        for (key, status, body) in read {
            let found = match status {
                StatusCode::NOT_FOUND => None,
                StatusCode::OK => match (0..2u8).find(|g| body == bytes(&key, *g)) {
                    Some(g) => Some(g),
                    None => panic!("{key}: {} bytes that match no write", body.len()),
                },
                other => panic!("{key}: {other}"),
            };
            let states = allowed.get_mut(&key).unwrap();
            assert!(
                states.contains(&found),
                "{key}: read back {found:?}, allowed {states:?}"
            );
            *states = BTreeSet::from([found]);
        }
    }
    assert!(
        acked_total > 50 && cut_off > 0,
        "the kills should land mid-run: {acked_total} acknowledged, {cut_off} cut off"
    );
    // The listing names exactly the objects that read back.
    let mut listed = BTreeSet::new();
    for item in list_all(&f.s, "/v1/storage/d?limit=1000").await {
        assert_eq!(item["size"], 40_000, "{item}");
        listed.insert(item["key"].as_str().unwrap().to_owned());
    }
    let present: BTreeSet<String> = allowed
        .iter()
        .filter(|(_, states)| !states.contains(&None))
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(listed, present);
    // Blobs a kill orphaned (row gone, file kept) are swept after the grace period.
    let temp_dir = f.s.data_dir().join("storage/tmp");
    eventually(Duration::from_secs(15), || async {
        (f.blob_count() == present.len() && files(&temp_dir).is_empty()).then_some(())
    })
    .await;
}

async fn buckets_are_declared_and_validated(backend: Backend) {
    let s = Options::new(backend)
        .config("[buckets.avatars]\nmax_size = 1048576\ncontent_types = [\"image/*\"]\nrules.read = \"true\"\n")
        .start()
        .await;
    let (status, list) = s.svc_get("/v1/admin/buckets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["name"], "avatars");
    assert_eq!(list["items"][0]["rules"]["read"], "true");
    assert_error(
        &s.svc_json(
            Method::POST,
            "/v1/admin/buckets",
            json!({"name": "avatars"}),
        )
        .await,
        409,
        "conflict",
    );
    for bad in [
        json!({"name": "Bad Name"}),
        json!({"name": "b", "rules": {"read": "object.size >"}}),
        json!({"name": "b", "rules": {"read": "doc.x == 1"}}),
        json!({"name": "b", "rules": {"read": ""}}),
        json!({"name": "b", "rules": {"list": "true"}}),
        json!({"name": "b", "content_types": ["not a type"]}),
        json!({"name": "b", "max_size": 0}),
    ] {
        let response = s
            .svc_json(Method::POST, "/v1/admin/buckets", bad.clone())
            .await;
        assert_eq!(response.0, StatusCode::BAD_REQUEST, "{bad}: {}", response.1);
    }
    let (status, patched) = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/buckets/avatars",
            json!({"rules": {"read": "auth != null"}, "max_size": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["max_size"], 10);
    assert_error(
        &put(
            &s,
            "/v1/storage/avatars/a.png",
            vec![0; 11],
            &[("content-type", "image/png")],
        )
        .await,
        413,
        "payload_too_large",
    );
    let (status, _) = put(
        &s,
        "/v1/storage/avatars/a.png",
        vec![0; 10],
        &[("content-type", "image/png")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .send(s.svc(Method::DELETE, "/v1/admin/buckets/avatars"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &s.svc_get("/v1/storage/avatars/a.png").await,
        404,
        "bucket_not_found",
    );
    assert_error(
        &s.svc_get("/v1/admin/buckets/avatars").await,
        404,
        "bucket_not_found",
    );
    // A bucket deleted while an upload streams into it: the upload answers 404.
    bucket(&s, json!({"name": "doomed"})).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/storage/doomed/x HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {SERVICE_KEY}\r\nContent-Length: 20000\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[1u8; 10_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = s
        .send(s.svc(Method::DELETE, "/v1/admin/buckets/doomed"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    stream.write_all(&[1u8; 10_000]).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("bucket_not_found"), "{response}");

    // The object named `sign` is an object like any other.
    bucket(&s, json!({"name": "plain"})).await;
    let (status, _) = put(&s, "/v1/storage/plain/sign", b"signed?".to_vec(), &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, _, bytes) = download(&s, s.svc(Method::GET, "/v1/storage/plain/sign")).await;
    assert_eq!(bytes, b"signed?");
}

/// A 200 MB streamed upload does not raise the server's memory by more than a few MiB
/// (local disk), or than about two S3 parts (S3: one part is buffered, 8 MiB).
async fn large_upload_streams_in_constant_memory(backend: Backend, store: Blobs) {
    let f = Fixture::start(backend, store, "").await;
    let s = &f.s;
    bucket(s, json!({"name": "big"})).await;
    put(s, "/v1/storage/big/warmup", vec![0u8; 20 << 20], &[]).await;
    let before = s.rss_kib();
    const CHUNK: usize = 1 << 20;
    let chunks = (0..200).map(|i| Ok::<_, std::io::Error>(vec![(i % 256) as u8; CHUNK]));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, object) = s
        .send(s.svc(Method::PUT, "/v1/storage/big/200mb").body(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{object}");
    assert_eq!(object["size"], 200 * CHUNK);
    let grew_mib = s.rss_kib().saturating_sub(before) / 1024;
    let allowed = match store {
        Blobs::Local => 16,
        Blobs::S3 => 40,
    };
    assert!(
        grew_mib < allowed,
        "RSS grew by {grew_mib} MiB during a 200 MB upload"
    );
    // And it downloads whole, byte for byte.
    let response = s
        .svc(Method::GET, "/v1/storage/big/200mb")
        .send()
        .await
        .unwrap();
    let mut total = 0usize;
    let mut stream = response.bytes_stream();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (i, byte) in chunk.iter().enumerate() {
            let at = total + i;
            assert_eq!(*byte, ((at / CHUNK) % 256) as u8, "byte {at}");
        }
        total += chunk.len();
    }
    assert_eq!(total, 200 * CHUNK);
}

/// With `presign_downloads`, a download that passed the rules is redirected to a short-lived
/// presigned S3 URL, which serves the bytes with the same safe headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_presigned_downloads_redirect() {
    let s3 = S3Server::start().await;
    let s = s3
        .configure(Options::new(Backend::Sqlite))
        .env("FERROBASE_S3_PRESIGN_DOWNLOADS", "true")
        .start()
        .await;
    bucket(
        &s,
        json!({"name": "media", "rules": {"read": "object.key.startsWith('public/')"}}),
    )
    .await;
    put(
        &s,
        "/v1/storage/media/public/page.html",
        b"<b>hi</b>".to_vec(),
        &[("content-type", "text/html")],
    )
    .await;
    put(&s, "/v1/storage/media/private/x", b"secret".to_vec(), &[]).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("{}/v1/storage/media/public/page.html", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s3.endpoint), "{location}");
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.headers()["content-type"], "application/octet-stream");
    assert!(
        direct.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(direct.bytes().await.unwrap().as_ref(), b"<b>hi</b>");
    // Rules still decide: no redirect for what the caller may not read.
    let denied = no_redirects
        .get(format!("{}/v1/storage/media/private/x", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::NOT_FOUND);
}

/// HOSTILE ST-06: with `storage.user_quota`, twenty concurrent uploads by one user that
/// together exceed the quota store at most the quota; refusals are `413 quota_exceeded` and
/// leave no bytes; other users and the service key are not held to it.
async fn per_user_quota_holds_under_concurrent_uploads(backend: Backend, store: Blobs) {
    const QUOTA: usize = 100_000;
    const EACH: usize = 10_000;
    let f = Fixture::start(
        backend,
        store,
        &format!("[storage]\nuser_quota = {QUOTA}\n"),
    )
    .await;
    let s = &f.s;
    bucket(
        s,
        json!({"name": "q", "rules": {"read": "true", "write": "auth != null",
            "delete": "auth != null && object.owner == auth.id"}}),
    )
    .await;
    let alice = signup(s, "alice@example.com").await;
    let bob = signup(s, "bob@example.com").await;
    let as_user = |session: &Value, method: Method, path: &str| {
        s.req(method, path).header("authorization", bearer(session))
    };

    // Twenty at once, 200 000 bytes against a 100 000 byte quota; half of them chunked (no
    // Content-Length, so only the stream limit and the commit can refuse them).
    let uploads = (0..20).map(|i| {
        let path = format!("/v1/storage/q/alice/{i}");
        let request = as_user(&alice, Method::PUT, &path);
        let request = if i % 2 == 0 {
            request.body(vec![b'a'; EACH])
        } else {
            let chunks = (0..2).map(|_| Ok::<_, std::io::Error>(vec![b'a'; EACH / 2]));
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        };
        s.send(request)
    });
    let results = futures_util::future::join_all(uploads).await;
    let mut stored = 0;
    for (status, body) in &results {
        match *status {
            StatusCode::CREATED => stored += 1,
            _ => assert_error(&(*status, body.clone()), 413, "quota_exceeded"),
        }
    }
    assert!(stored >= 1, "some uploads fit: {results:?}");
    let (_, listed) = s.svc_get("/v1/storage/q?prefix=alice/&limit=100").await;
    let items = listed["items"].as_array().unwrap();
    let total: u64 = items.iter().map(|o| o["size"].as_u64().unwrap()).sum();
    assert_eq!(items.len(), stored, "{listed}");
    assert!(
        total <= QUOTA as u64,
        "{total} bytes stored over a {QUOTA} byte quota"
    );
    // Refused uploads left no bytes behind.
    eventually(Duration::from_secs(5), || async {
        (f.blob_count() == stored).then_some(())
    })
    .await;

    // Filled to the brim, then: a declared size is refused before the body, with the numbers.
    let fill = QUOTA - total as usize;
    if fill > 0 {
        let (status, body) = s
            .send(as_user(&alice, Method::PUT, "/v1/storage/q/alice/fill").body(vec![b'f'; fill]))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let refused = s
        .send(as_user(&alice, Method::PUT, "/v1/storage/q/alice/more").body("x"))
        .await;
    assert_error(&refused, 413, "quota_exceeded");
    assert_eq!(refused.1["error"]["details"]["quota"], QUOTA);
    assert_eq!(refused.1["error"]["details"]["used"], QUOTA);
    // A chunked one as soon as its bytes pass the room left.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(vec![b'c'; 4096]));
    let refused = s
        .send(
            as_user(&alice, Method::PUT, "/v1/storage/q/alice/chunked").body(
                reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
            ),
        )
        .await;
    assert_error(&refused, 413, "quota_exceeded");
    // And a browser form upload (no size known before the bytes), answered, not reset.
    let boundary = "----quota-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nalice/form\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend(vec![b'm'; 200_000]);
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let refused = s
        .send(
            as_user(&alice, Method::POST, "/v1/storage/q")
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(form),
        )
        .await;
    assert_error(&refused, 413, "quota_exceeded");
    // A refusal that leaves part of the body unread (here the client stops sending) says
    // `Connection: close`, so a keep-alive client does not reuse the connection.
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/storage/q/alice/partial HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Length: 3000000\r\n\r\n",
        bearer(&alice)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'p'; 100_000]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed while the body is still incomplete")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("quota_exceeded"), "{answer}");
    // Replacing an object counts its new size, not both.
    let first = &items[0];
    let (status, body) = s
        .send(
            as_user(
                &alice,
                Method::PUT,
                &format!("/v1/storage/q/{}", first["key"].as_str().unwrap()),
            )
            .body(vec![b'r'; first["size"].as_u64().unwrap() as usize]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A delete frees room.
    let (_, listed) = s.svc_get("/v1/storage/q?prefix=alice/&limit=100").await;
    let victim = listed["items"][0].clone();
    let response = as_user(
        &alice,
        Method::DELETE,
        &format!("/v1/storage/q/{}", victim["key"].as_str().unwrap()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let room = victim["size"].as_u64().unwrap() as usize;
    let (status, body) = s
        .send(as_user(&alice, Method::PUT, "/v1/storage/q/alice/again").body(vec![b'g'; room]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_error(
        &s.send(as_user(&alice, Method::PUT, "/v1/storage/q/alice/over").body("y"))
            .await,
        413,
        "quota_exceeded",
    );

    // Another user has a quota of their own; the service key has none.
    let (status, body) = s
        .send(as_user(&bob, Method::PUT, "/v1/storage/q/bob/big").body(vec![b'b'; QUOTA]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put(s, "/v1/storage/q/service/huge", vec![b's'; 3 * QUOTA], &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, listed) = s.svc_get("/v1/storage/q?prefix=alice/&limit=100").await;
    let total: u64 = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["size"].as_u64().unwrap())
        .sum();
    assert_eq!(total, QUOTA as u64, "{listed}");
    s.assert_healthy().await;
}
