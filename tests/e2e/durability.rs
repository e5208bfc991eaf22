//! Durability: a SIGKILL under concurrent writes never loses an acknowledged write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestServer};
use crate::on_both_backends;

on_both_backends!(acknowledged_writes_survive_sigkill);

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

async fn acknowledged_writes_survive_sigkill(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    s.collection("log", json!({})).await;
    s.create("log", json!({"_id": "counter", "n": 0})).await;
    let acked: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let mut acked_incs = 0u64;
    let mut attempted_incs = 0u64;

    for round in 0..ROUNDS {
        let url = s.url.clone();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = s.client.clone();
            let url = url.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let (mut incs_ok, mut incs_tried) = (0u64, 0u64);
                for n in 0.. {
                    let id = format!("r{round}w{w}n{n}");
                    let body = json!({"_id": id, "round": round, "writer": w, "n": n, "pad": "p".repeat(n % 300)});
                    let created = client
                        .post(format!("{url}/v1/db/log"))
                        .bearer_auth(crate::helpers::SERVICE_KEY)
                        .json(&body)
                        .send()
                        .await;
                    match created {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            acked.lock().unwrap().insert(id, body);
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server died
                    }
                    if n % 4 == 0 {
                        incs_tried += 1;
                        let inc = client
                            .patch(format!("{url}/v1/db/log/counter"))
                            .bearer_auth(crate::helpers::SERVICE_KEY)
                            .json(&json!({"$inc": {"n": 1}}))
                            .send()
                            .await;
                        match inc {
                            Ok(r) if r.status() == StatusCode::OK => incs_ok += 1,
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => break,
                        }
                    }
                }
                (incs_ok, incs_tried)
            }));
        }
        // Let the writers run, then kill the server at an arbitrary moment.
        tokio::time::sleep(Duration::from_millis(600 + 350 * round as u64)).await;
        s.kill9().await;
        for w in writers {
            let (ok, tried) = w.await.unwrap();
            acked_incs += ok;
            attempted_incs += tried;
        }
        s.restart().await;
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load should have written something: {}",
        acked.len()
    );
    // Every acknowledged document is there, byte for byte.
    let mut present = 0;
    let mut cursor: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    loop {
        let mut body = json!({"limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = s.svc_json(Method::POST, "/v1/db/log/query", body).await;
        assert_eq!(status, StatusCode::OK);
        for doc in page["items"].as_array().unwrap() {
            let id = doc["_id"].as_str().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "duplicate id {id}");
            if let Some(expected) = acked.get(&id) {
                for (k, v) in expected.as_object().unwrap() {
                    assert_eq!(&doc[k], v, "field {k} of {id}");
                }
                present += 1;
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(present, acked.len(), "every acknowledged write survived");
    // Increments: every acknowledged one applied; unacknowledged ones may or may not be.
    let (_, counter) = s.svc_get("/v1/db/log/counter").await;
    let n = counter["n"].as_u64().unwrap();
    assert!(
        n >= acked_incs && n <= attempted_incs,
        "counter {n}, acked {acked_incs}, tried {attempted_incs}"
    );

    if backend == Backend::Sqlite {
        s.kill9().await;
        assert_eq!(sqlite_integrity(&s).await, "ok");
    }
}

on_both_backends!(a_crash_under_mixed_load_keeps_every_promise);

/// The after-trigger and the async function write with a fixed id, so running twice (at
/// least once) leaves one document.
const CRASH_FUNCTIONS: &str = r#"import { fb } from "ferrobase";
fb.afterCreate("orders", async (e, ctx) => {
  await ctx.admin.db.collection("audit").doc(e.doc._id).set({ order: e.doc._id, n: e.doc.n });
});
fb.call("mark", async (req, ctx) => {
  await ctx.admin.db.collection("marks").doc(req.data.id).set({ ok: true });
  return { ok: true };
});
"#;

const KILLS: usize = 10;

/// What the clients saw acknowledged across all rounds.
#[derive(Default)]
struct Acked {
    orders: HashMap<String, Value>,
    objects: HashMap<String, Vec<u8>>,
    marks: Vec<String>,
    incs_ok: u64,
    incs_tried: u64,
}

/// HOSTILE DUR-01/03/04 under one load: documents (inserts and increments), uploads, async
/// function calls, after-triggers and realtime subscribers, SIGKILLed 10 times at arbitrary
/// moments. After the last restart: every acknowledged write and upload is there byte for
/// byte, every listed object has its blob, every order (acknowledged or not) got its
/// after-trigger run and every acknowledged async call ran (at least once, as documented),
/// and SQLite's integrity check passes.
async fn a_crash_under_mixed_load_keeps_every_promise(backend: Backend) {
    let mut s = crate::helpers::Options::new(backend)
        .config(
            "[functions]\ntimeout = \"2s\"\nasync_timeout = \"2s\"\nlease_grace = \"1s\"\nretry_backoff = \"200ms\"\nmax_attempts = 10\n",
        )
        .function_file("main.js", CRASH_FUNCTIONS)
        .start()
        .await;
    s.collection("orders", json!({"rules": {"get": "true", "list": "true"}}))
        .await;
    s.collection("audit", json!({})).await;
    s.collection("marks", json!({})).await;
    let (status, body) = s
        .svc_json(Method::POST, "/v1/admin/buckets", json!({"name": "crash"}))
        .await;
    assert!(status.is_success(), "{body}");
    s.create("orders", json!({"_id": "counter", "n": 0})).await;
    let acked: Arc<Mutex<Acked>> = Arc::default();

    for round in 0..KILLS {
        let url = s.url.clone();
        let mut load = Vec::new();
        // Documents: unique inserts, and increments of one counter.
        for w in 0..4 {
            let (client, url, acked) = (s.client.clone(), url.clone(), acked.clone());
            load.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("r{round}w{w}n{n}");
                    let body = json!({"_id": id, "n": n, "pad": "p".repeat(n % 200)});
                    let created = client
                        .post(format!("{url}/v1/db/orders"))
                        .bearer_auth(crate::helpers::SERVICE_KEY)
                        .json(&body)
                        .send()
                        .await;
                    match created {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            acked.lock().unwrap().orders.insert(id, body);
                        }
                        Ok(r) => panic!("create: unexpected status {}", r.status()),
                        Err(_) => break,
                    }
                    if n % 3 == 0 {
                        acked.lock().unwrap().incs_tried += 1;
                        let inc = client
                            .patch(format!("{url}/v1/db/orders/counter"))
                            .bearer_auth(crate::helpers::SERVICE_KEY)
                            .json(&json!({"$inc": {"n": 1}}))
                            .send()
                            .await;
                        match inc {
                            Ok(r) if r.status() == StatusCode::OK => {
                                acked.lock().unwrap().incs_ok += 1;
                            }
                            Ok(r) => panic!("increment: unexpected status {}", r.status()),
                            Err(_) => break,
                        }
                    }
                }
            }));
        }
        // Uploads of up to 300 KB, so a kill can land mid-body.
        for w in 0..2 {
            let (client, url, acked) = (s.client.clone(), url.clone(), acked.clone());
            load.push(tokio::spawn(async move {
                for n in 0usize.. {
                    let key = format!("r{round}/w{w}/{n}.bin");
                    let len = (n * 7919 + w * 104_729) % 300_000;
                    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
                    let put = client
                        .put(format!("{url}/v1/storage/crash/{key}"))
                        .bearer_auth(crate::helpers::SERVICE_KEY)
                        .body(bytes.clone())
                        .send()
                        .await;
                    match put {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().unwrap().objects.insert(key, bytes);
                        }
                        Ok(r) => panic!("upload: unexpected status {}", r.status()),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Async function calls.
        {
            let (client, url, acked) = (s.client.clone(), url.clone(), acked.clone());
            load.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("r{round}m{n}");
                    let queued = client
                        .post(format!("{url}/v1/functions/mark/async"))
                        .json(&json!({"id": id}))
                        .send()
                        .await;
                    match queued {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => {
                            acked.lock().unwrap().marks.push(id);
                        }
                        Ok(r) => panic!("async call: unexpected status {}", r.status()),
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        // Realtime subscribers receiving the order events until the server dies.
        for _ in 0..3 {
            let ws_url = format!("{}/v1/realtime", url.replace("http://", "ws://"));
            load.push(tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ws_url).await else {
                    return;
                };
                let subscribe = json!({"type": "subscribe", "id": "o", "collection": "orders"});
                let frame =
                    tokio_tungstenite::tungstenite::Message::Text(subscribe.to_string().into());
                if ws.send(frame).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = ws.next().await {}
            }));
        }
        // Kill at an arbitrary moment between 0.3 and 1.2 s into the round.
        let pause = 300 + (round as u64 * 397) % 900;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        s.kill9().await;
        for task in load {
            task.await.unwrap();
        }
        s.restart().await;
        s.assert_healthy().await;
    }

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.orders.len() > 100 && acked.objects.len() > 10 && acked.marks.len() > 10,
        "the load should have done something: {} orders, {} objects, {} async calls",
        acked.orders.len(),
        acked.objects.len(),
        acked.marks.len()
    );

    // Every acknowledged order, byte for byte; no duplicate ids.
    let orders = all_docs(&s, "orders").await;
    let mut ids = std::collections::HashSet::new();
    for doc in &orders {
        assert!(
            ids.insert(doc["_id"].as_str().unwrap().to_owned()),
            "duplicate {doc}"
        );
    }
    for (id, body) in &acked.orders {
        let doc = orders
            .iter()
            .find(|d| d["_id"] == *id)
            .unwrap_or_else(|| panic!("acknowledged order {id} is missing"));
        for (k, v) in body.as_object().unwrap() {
            assert_eq!(&doc[k], v, "field {k} of {id}");
        }
    }
    let (_, counter) = s.svc_get("/v1/db/orders/counter").await;
    let n = counter["n"].as_u64().unwrap();
    assert!(
        n >= acked.incs_ok && n <= acked.incs_tried,
        "counter {n}, acknowledged {}, tried {}",
        acked.incs_ok,
        acked.incs_tried
    );

    // Every acknowledged upload is byte-identical; every listed object has its whole blob.
    for (key, bytes) in &acked.objects {
        let response = s
            .svc(Method::GET, &format!("/v1/storage/crash/{key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        assert!(
            response.bytes().await.unwrap() == bytes[..],
            "{key} changed"
        );
    }
    let mut cursor: Option<String> = None;
    let mut listed = 0;
    loop {
        let mut url = "/v1/storage/crash?limit=1000".to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = s.svc_get(&url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for object in page["items"].as_array().unwrap() {
            let key = object["key"].as_str().unwrap();
            let response = s
                .svc(Method::GET, &format!("/v1/storage/crash/{key}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "listed {key} has no blob"
            );
            let body = response.bytes().await.unwrap();
            assert_eq!(
                Some(body.len() as u64),
                object["size"].as_u64(),
                "{key} is short"
            );
            listed += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(listed >= acked.objects.len());

    // At least once: every order that exists got its after-trigger, every acknowledged
    // async call ran (jobs a kill interrupted run again when their lease expires).
    let wanted: std::collections::HashSet<String> =
        ids.into_iter().filter(|id| id != "counter").collect();
    crate::helpers::eventually(Duration::from_secs(60), || {
        let s = &s;
        let wanted = &wanted;
        let marks = &acked.marks;
        async move {
            let audited: std::collections::HashSet<String> = all_docs(s, "audit")
                .await
                .iter()
                .map(|d| d["_id"].as_str().unwrap().to_owned())
                .collect();
            let missing_audit = wanted.difference(&audited).count();
            let ran: std::collections::HashSet<String> = all_docs(s, "marks")
                .await
                .iter()
                .map(|d| d["_id"].as_str().unwrap().to_owned())
                .collect();
            let missing_marks = marks.iter().filter(|m| !ran.contains(*m)).count();
            (missing_audit == 0 && missing_marks == 0).then_some(())
        }
    })
    .await;

    if backend == Backend::Sqlite {
        s.kill9().await;
        assert_eq!(sqlite_integrity(&s).await, "ok");
    }
}

/// Every document of a collection, through the paged query API.
async fn all_docs(s: &TestServer, collection: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = s
            .svc_json(Method::POST, &format!("/v1/db/{collection}/query"), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn sqlite_integrity(s: &TestServer) -> String {
    use sqlx::Connection;
    let url = format!(
        "sqlite://{}?mode=ro",
        s.data_dir().join("data.db").display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Text without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// HOSTILE DUR-02: the settings the durability promises rest on are logged at start and
/// are what they should be (WAL, `synchronous` FULL, foreign keys, a busy timeout, SQLite
/// ≥ 3.51.3); a damaged database file is refused — the server exits non-zero with a plain
/// message and leaves the file exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dur_02_settings_are_logged_and_a_damaged_database_is_refused() {
    let mut s = crate::helpers::Options::new(Backend::Sqlite)
        .env("FERROBASE_LOG", "info")
        .start()
        .await;
    s.collection("c", json!({})).await;
    s.create("c", json!({"kept": true})).await;
    let log = plain(&std::fs::read_to_string(s.log_path()).unwrap());
    let line = log
        .lines()
        .find(|l| l.contains("sqlite opened"))
        .unwrap_or_else(|| panic!("no settings line in the log:\n{log}"));
    for want in [
        "journal_mode=wal",
        "synchronous=\"full\"",
        "foreign_keys=true",
        "busy_timeout_ms=5000",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
    let version: Vec<u32> = line
        .split("sqlite.version=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(version >= vec![3, 51, 3], "SQLite {version:?}: {line}");
    assert!(s.terminate().await, "a clean stop");

    let db = s.data_dir().join("data.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..16].copy_from_slice(b"not a database!!");
    std::fs::write(&db, &bytes).unwrap();
    let run = s
        .command(&["serve", "--http", "127.0.0.1:0"])
        .env("FERROBASE_SERVICE_KEY", crate::helpers::SERVICE_KEY)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the server exits on a damaged database")
        .unwrap();
    assert!(!out.status.success());
    let stderr = plain(&String::from_utf8_lossy(&out.stderr));
    assert!(
        stderr.contains("is damaged or not a SQLite database"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the damaged file is left as it was"
    );
}
