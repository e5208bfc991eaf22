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
        let url = format!(
            "sqlite://{}?mode=ro",
            s.data_dir().join("data.db").display()
        );
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(check, "ok");
    }
}
