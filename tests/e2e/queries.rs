//! The query language: every operator, type-strict comparisons, sorting across types, keyset
//! cursors under concurrent inserts, offset, projection, count, and bad queries — with the
//! same expected answers on SQLite and Postgres.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestServer, assert_error, metric};
use crate::on_both_backends;

on_both_backends!(
    every_operator_matches_type_strictly,
    sorting_orders_mixed_types_the_same_everywhere,
    cursors_page_stably_under_concurrent_inserts,
    offset_projection_and_count,
    bad_queries_are_rejected_quickly,
    declared_indexes_are_used_by_queries,
);

async fn fixture(s: &TestServer) {
    s.collection(
        "q",
        json!({"indexes": [{"fields": ["n"]}, {"fields": ["s", "-n"]}]}),
    )
    .await;
    for doc in [
        json!({"_id": "d01", "n": 1, "s": "apple", "b": true, "tags": ["a", "b"], "o": {"x": 1}}),
        json!({"_id": "d02", "n": 2.5, "s": "Banana", "b": false, "tags": ["b"], "o": {"x": 2}}),
        json!({"_id": "d03", "n": "3", "s": "cherry", "tags": [], "o": {"x": "1"}}),
        json!({"_id": "d04", "n": null, "s": "apple pie", "tags": ["a", 1], "o": {}}),
        json!({"_id": "d05", "s": "", "tags": "a,b"}),
        json!({"_id": "d06", "n": -5, "s": 5, "b": 1, "tags": [["a"]], "o": {"x": {"y": 1}}}),
        json!({"_id": "d07", "n": 10, "s": "date", "tags": [{"k": 1}], "o": null}),
        json!({"_id": "d08", "n": 1.0, "s": "éclair"}),
    ] {
        s.create("q", doc).await;
    }
}

async fn ids(s: &TestServer, filter: Value, sort: Option<&str>) -> Vec<String> {
    let mut body = json!({"where": filter, "limit": 100});
    if let Some(sort) = sort {
        body["sort"] = json!(sort);
    }
    let (status, page) = s
        .svc_json(Method::POST, "/v1/db/q/query", body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn every_operator_matches_type_strictly(backend: Backend) {
    let s = TestServer::start(backend).await;
    fixture(&s).await;
    let all = ["d01", "d02", "d03", "d04", "d05", "d06", "d07", "d08"];
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"n": 1}), vec!["d01", "d08"]),
        (json!({"n": "3"}), vec!["d03"]),
        (json!({"n": null}), vec!["d04", "d05"]),
        (json!({"n": {"$gt": 1}}), vec!["d02", "d07"]),
        (
            json!({"n": {"$gte": 1, "$lt": 10}}),
            vec!["d01", "d02", "d08"],
        ),
        (json!({"n": {"$lte": 1}}), vec!["d01", "d06", "d08"]),
        (json!({"s": {"$gt": "b"}}), vec!["d03", "d07", "d08"]),
        (json!({"s": {"$startsWith": "apple"}}), vec!["d01", "d04"]),
        (json!({"s": {"$contains": "an"}}), vec!["d02"]),
        (
            json!({"s": {"$contains": ""}}),
            vec!["d01", "d02", "d03", "d04", "d05", "d07", "d08"],
        ),
        (json!({"s": 5}), vec!["d06"]),
        (
            json!({"tags": {"$contains": "a"}}),
            vec!["d01", "d04", "d05"],
        ),
        (
            json!({"tags": {"$contains": "b"}}),
            vec!["d01", "d02", "d05"],
        ),
        (json!({"tags": {"$contains": 1}}), vec!["d04"]),
        (json!({"tags": {"$contains": ["a"]}}), vec!["d06"]),
        (json!({"tags": {"$contains": {"k": 1}}}), vec!["d07"]),
        (json!({"tags": {"$size": 2}}), vec!["d01", "d04"]),
        (json!({"tags": {"$size": 0}}), vec!["d03"]),
        (json!({"o.x": 1}), vec!["d01"]),
        (json!({"o.x.y": 1}), vec!["d06"]),
        (
            json!({"o.x": {"$exists": true}}),
            vec!["d01", "d02", "d03", "d06"],
        ),
        (json!({"o": null}), vec!["d05", "d07", "d08"]),
        (json!({"o": {}}), vec!["d04"]),
        (json!({"o": {"x": 2}}), vec!["d02"]),
        (json!({"b": true}), vec!["d01"]),
        (
            json!({"b": {"$ne": true}}),
            vec!["d02", "d03", "d04", "d05", "d06", "d07", "d08"],
        ),
        (
            json!({"n": {"$in": [1, "3", null]}}),
            vec!["d01", "d03", "d04", "d05", "d08"],
        ),
        (
            json!({"n": {"$nin": [1, "3", null]}}),
            vec!["d02", "d06", "d07"],
        ),
        (
            json!({"$or": [{"n": {"$lt": 0}}, {"s": ""}]}),
            vec!["d05", "d06"],
        ),
        (
            json!({"$not": {"tags": {"$contains": "a"}}}),
            vec!["d02", "d03", "d06", "d07", "d08"],
        ),
        (
            json!({"n": {"$not": {"$gt": 1}}}),
            vec!["d01", "d03", "d04", "d05", "d06", "d08"],
        ),
        (
            json!({"$and": [{"n": {"$gte": 0}}, {"n": {"$lte": 2}}]}),
            vec!["d01", "d08"],
        ),
        (json!({"n": {"$exists": false}}), vec!["d05"]),
        (json!({"s": {"$exists": false}}), vec![]),
        (json!({"_id": {"$in": ["d01", "d02"]}}), vec!["d01", "d02"]),
        (json!({"_id": {"$gte": "d07"}}), vec!["d07", "d08"]),
        (
            json!({"_id": {"$startsWith": "d0"}, "n": {"$gt": 2}}),
            vec!["d02", "d07"],
        ),
        (json!({"_version": 1}), all.to_vec()),
        (json!({"_version": "1"}), vec![]),
        (json!({"_owner": null}), all.to_vec()),
        (json!({}), all.to_vec()),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            ids(&s, filter.clone(), None).await,
            expected,
            "where {filter}"
        );
    }
    // The same filter through the query string.
    let (status, page) = s
        .svc_get("/v1/db/q?where=%7B%22n%22%3A%7B%22%24gt%22%3A1%7D%7D&sort=-n")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["d07", "d02"]);
}

async fn sorting_orders_mixed_types_the_same_everywhere(backend: Backend) {
    let s = TestServer::start(backend).await;
    fixture(&s).await;
    for (sort, expected) in [
        (
            "n",
            vec!["d04", "d05", "d06", "d01", "d08", "d02", "d07", "d03"],
        ),
        (
            "-n",
            vec!["d03", "d07", "d02", "d01", "d08", "d06", "d04", "d05"],
        ),
        (
            "s",
            vec!["d06", "d05", "d02", "d01", "d04", "d03", "d07", "d08"],
        ),
        (
            "b,-_id",
            vec!["d08", "d07", "d05", "d04", "d03", "d02", "d01", "d06"],
        ),
        (
            "tags",
            vec!["d08", "d05", "d01", "d04", "d02", "d06", "d03", "d07"],
        ),
        (
            "-_id",
            vec!["d08", "d07", "d06", "d05", "d04", "d03", "d02", "d01"],
        ),
    ] {
        assert_eq!(
            ids(&s, json!({}), Some(sort)).await,
            expected,
            "sort {sort}"
        );
        // Paging one row at a time through cursors gives the same order.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({"sort": sort, "limit": 1});
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let (status, page) = s.svc_json(Method::POST, "/v1/db/q/query", body).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for item in page["items"].as_array().unwrap() {
                seen.push(item["_id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(seen.len() <= 8, "cursor loop for {sort}: {seen:?}");
        }
        assert_eq!(seen, expected, "cursor paging, sort {sort}");
    }
}

async fn cursors_page_stably_under_concurrent_inserts(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("p", json!({"indexes": [{"fields": ["-score"]}]}))
        .await;
    let mut original = Vec::new();
    for i in 0..30 {
        let id = format!("p{i:02}");
        s.create("p", json!({"_id": id, "score": i % 5})).await;
        original.push(id);
    }
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 0;
    loop {
        let mut body = json!({"sort": "-score", "limit": 7});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = s.svc_json(Method::POST, "/v1/db/p/query", body).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push((
                item["score"].as_i64().unwrap(),
                item["_id"].as_str().unwrap().to_owned(),
            ));
        }
        // Between pages, insert documents before and after the current position.
        for score in [4, 2, 0] {
            s.create(
                "p",
                json!({"_id": format!("z{inserted:02}"), "score": score}),
            )
            .await;
            inserted += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no document twice: {ids:?}");
    for id in &original {
        assert!(ids.contains(&id), "{id} was skipped");
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen, sorted, "pages come in sort order");
}

async fn offset_projection_and_count(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("p", json!({})).await;
    for i in 0..12 {
        s.create("p", json!({"_id": format!("p{i:02}"), "n": i, "meta": {"even": i % 2 == 0, "label": format!("L{i}")}}))
            .await;
    }
    let (status, page) = s.svc_get("/v1/db/p?offset=5&limit=3").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["p05", "p06", "p07"]);
    assert!(page.get("count").is_none());

    let (_, page) = s
        .svc_json(
            Method::POST,
            "/v1/db/p/query",
            json!({"where": {"meta.even": true}, "fields": ["n", "meta.label"], "count": true, "limit": 2}),
        )
        .await;
    assert_eq!(page["count"], 6);
    assert_eq!(
        page["items"][0],
        json!({"_id": "p00", "n": 0, "meta": {"label": "L0"}})
    );
    assert!(page["next_cursor"].is_string());
    let (_, page) = s.svc_get("/v1/db/p?fields=n&limit=0&count=true").await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["count"], 12);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page) = s.svc_get("/v1/db/p?limit=12").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 12);
    assert_eq!(
        page["next_cursor"],
        Value::Null,
        "no next page when all rows fit"
    );
}

async fn bad_queries_are_rejected_quickly(backend: Backend) {
    let s = TestServer::start(backend).await;
    fixture(&s).await;
    let bad_get = [
        "/v1/db/q?limit=1001",
        "/v1/db/q?limit=-1",
        "/v1/db/q?limit=1e9",
        "/v1/db/q?offset=1000000000000",
        "/v1/db/q?cursor=garbage",
        "/v1/db/q?where=%7B",
        "/v1/db/q?where=%5B1%5D",
        "/v1/db/q?wher=%7B%7D",
        "/v1/db/q?limit=1&limit=2",
        "/v1/db/q?sort=a')%20OR%201%3D1--",
        "/v1/db/q?sort=n,n",
        "/v1/db/q?fields=$.x",
        "/v1/db/q?count=maybe",
    ];
    for path in bad_get {
        assert_error(&s.svc_get(path).await, 400, "bad_request");
    }
    let mut deep = json!({"n": 1});
    for _ in 0..40 {
        deep = json!({"$and": [deep]});
    }
    let many: Vec<i64> = (0..100_000).collect();
    let bad_bodies = [
        json!({"where": {"$where": "sleep(1)"}}),
        json!({"where": {"n": {"$regex": ".*"}}}),
        json!({"where": {"n": {"$gt": [1]}}}),
        json!({"where": {"n": {"$in": 5}}}),
        json!({"where": {"a') OR 1=1--": 1}}),
        json!({"where": {"a\"": 1}}),
        json!({"where": {"a\u{0}b": 1}}),
        json!({"where": {"'||(select 1)||'": 1}}),
        json!({"where": {"_secret": 1}}),
        json!({"where": {"n": {"$eq": 1, "x": 2}}}),
        json!({"where": {"n": {"$in": many}}}),
        json!({"where": deep}),
        json!({"where": 5}),
        json!({"sort": "-n", "limit": 1, "cursor": "eyJzIjoiMCIsInYiOltdfQ"}),
        json!({"limit": 1, "offset": 1, "cursor": "x"}),
        json!({"fields": [5]}),
        json!({"sortt": "n"}),
    ];
    for body in bad_bodies {
        let started = std::time::Instant::now();
        let sent = body.to_string().to_lowercase();
        let r = s.svc_json(Method::POST, "/v1/db/q/query", body).await;
        assert_error(&r, 400, "bad_request");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let text = r.1.to_string().to_lowercase();
        for leak in [
            "select",
            "sqlite",
            "json_extract",
            "jsonb",
            "panicked",
            "src/",
        ] {
            // Echoing the caller's own input back is fine; anything else is a leak.
            assert!(
                sent.contains(leak) || !text.contains(leak),
                "error leaks `{leak}`: {text}"
            );
        }
    }
    // Nesting far beyond any limit is refused while parsing, before any work.
    let bomb = format!(
        "{{\"where\":{}{{\"n\":1}}{}}}",
        "{\"$and\":[".repeat(5000),
        "]}".repeat(5000)
    );
    let r = s
        .send(
            s.svc(Method::POST, "/v1/db/q/query")
                .header("content-type", "application/json")
                .body(bomb),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    // A cursor of one sort cannot be used with another.
    let (_, page) = s
        .svc_json(
            Method::POST,
            "/v1/db/q/query",
            json!({"sort": "n", "limit": 2}),
        )
        .await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let r = s
        .svc_json(
            Method::POST,
            "/v1/db/q/query",
            json!({"sort": "-n", "cursor": cursor}),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    s.assert_healthy().await;
}

async fn declared_indexes_are_used_by_queries(backend: Backend) {
    let s = TestServer::start(backend).await;
    fixture(&s).await;
    for (body, index_field) in [
        (json!({"where": {"n": {"$gt": 1}}}), "n"),
        (json!({"where": {"s": "apple"}, "sort": "-n"}), "s"),
        (json!({"where": {"n": 5}, "sort": "n"}), "n"),
    ] {
        let mut body = body;
        body["discourage_seqscan"] = json!(true);
        let (status, plan) = s
            .svc_json(
                Method::POST,
                "/v1/admin/collections/q/explain",
                body.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{plan}");
        let text = plan["plan"].as_str().unwrap();
        assert!(
            plan["indexes_used"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["fields"][0].as_str().unwrap().trim_start_matches('-') == index_field),
            "{body} should use the index on {index_field}:\n{text}"
        );
    }
}

/// SQLite's hot reads run on the calling thread; a scan past the time budget is stopped
/// and read again through the pool, with the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_run_inline_and_long_scans_fall_back() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.collection("big", json!({})).await;
    for chunk in 0..40 {
        let ops: Vec<Value> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"op": "create", "collection": "big", "data": {"n": n, "text": format!("row {n} {}", "x".repeat(200))}})
            })
            .collect();
        let (status, body) = s
            .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let before = s.metrics().await;
    let doc = s.create("big", json!({"_id": "one", "n": -1})).await;
    let (status, got) = s.svc_get("/v1/db/big/one").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, doc);
    let after = s.metrics().await;
    assert!(
        metric(&after, "ferrobase_sqlite_inline_reads_total")
            > metric(&before, "ferrobase_sqlite_inline_reads_total"),
        "{after}"
    );
    // An unindexed count and a sort on a computed field over 20 000 documents: too long
    // for the calling thread, answered in full all the same.
    let (status, page) = s
        .svc_json(
            Method::POST,
            "/v1/db/big/query",
            json!({"where": {"text": {"$contains": "9 x"}}, "sort": "-text", "limit": 3, "count": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["count"], 2000, "{page}");
    assert_eq!(page["items"][0]["n"], 9999);
    let fallbacks = metric(
        &s.metrics().await,
        r#"ferrobase_sqlite_inline_fallbacks_total{reason="budget"}"#,
    );
    assert!(fallbacks >= 1, "no read ran past the budget");
    s.assert_healthy().await;
}
