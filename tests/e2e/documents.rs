//! Documents: create/read/update/replace/delete, operators, versions, batches, collections,
//! bad input — on SQLite and Postgres.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestServer, assert_error};
use crate::on_both_backends;

on_both_backends!(
    create_returns_the_stored_document_with_system_fields,
    a_proposed_id_is_kept_and_a_duplicate_is_a_conflict,
    reading_missing_or_malformed_ids,
    an_unknown_collection_is_collection_not_found,
    patch_merges_top_level_fields,
    update_operators_apply_atomically_under_concurrency,
    a_bad_update_is_rejected_and_changes_nothing,
    system_fields_and_reserved_names_are_refused,
    oversized_and_too_deep_documents_are_refused,
    put_replaces_and_upserts,
    delete_then_read_is_not_found,
    if_match_guards_every_write,
    batch_is_all_or_nothing,
    unique_indexes_conflict,
    json_schema_is_enforced,
    collections_can_be_declared_changed_and_deleted,
    every_write_appends_a_change_in_order,
    clients_without_rules_are_denied,
    malformed_bodies_are_bad_requests,
    concurrent_writes_in_one_group_commit_fail_independently,
);

async fn create_returns_the_stored_document_with_system_fields(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("todos", json!({})).await;
    let response = s
        .svc(Method::POST, "/v1/db/todos")
        .json(&json!({"title": "milk", "n": 1, "tags": ["a"], "nested": {"x": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let doc: Value = response.json().await.unwrap();
    let id = doc["_id"].as_str().unwrap();
    assert_eq!(id.len(), 20);
    assert_eq!(doc["_version"], 1);
    assert_eq!(doc["_owner"], Value::Null);
    assert_eq!(doc["_created_at"], doc["_updated_at"]);
    assert!(doc["_created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(doc["title"], "milk");
    assert_eq!(doc["nested"]["x"], true);

    let (status, read) = s.svc_get(&format!("/v1/db/todos/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, doc);
}

async fn a_proposed_id_is_kept_and_a_duplicate_is_a_conflict(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("todos", json!({})).await;
    let doc = s
        .create("todos", json!({"_id": "my-id_1", "title": "a"}))
        .await;
    assert_eq!(doc["_id"], "my-id_1");
    let again = s
        .svc_json(
            Method::POST,
            "/v1/db/todos",
            json!({"_id": "my-id_1", "title": "b"}),
        )
        .await;
    assert_error(&again, 409, "conflict");
    assert_eq!(again.1["error"]["details"]["fields"], json!(["_id"]));
    let (_, read) = s.svc_get("/v1/db/todos/my-id_1").await;
    assert_eq!(read["title"], "a", "the conflicting write changed nothing");
    for bad in ["", "../x", "role:admin", "*", "a b", "_x", "query"] {
        let r = s
            .svc_json(Method::POST, "/v1/db/todos", json!({"_id": bad}))
            .await;
        assert_error(&r, 400, "bad_request");
    }
    let r = s
        .svc_json(Method::POST, "/v1/db/todos", json!({"_id": 5}))
        .await;
    assert_error(&r, 400, "bad_request");
}

async fn reading_missing_or_malformed_ids(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("todos", json!({})).await;
    assert_error(&s.svc_get("/v1/db/todos/nope").await, 404, "not_found");
    assert_error(&s.svc_get("/v1/db/todos/a%20b").await, 400, "bad_request");
    // Sent raw: an HTTP client library would normalise the dots away.
    let (status, body) = s.raw("GET /v1/db/todos/%2e%2e HTTP/1.1\r\n").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.raw("GET /v1/db/todos/..%2f..%2fx HTTP/1.1\r\n").await;
    assert_eq!(status, 400, "{body}");
    s.assert_healthy().await;
}

async fn an_unknown_collection_is_collection_not_found(backend: Backend) {
    let s = TestServer::start(backend).await;
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/nope", json!({})).await,
        404,
        "collection_not_found",
    );
    assert_error(
        &s.svc_get("/v1/db/nope/x").await,
        404,
        "collection_not_found",
    );
    assert_error(&s.svc_get("/v1/db/nope").await, 404, "collection_not_found");
    assert_error(
        &s.svc_get("/v1/db/_users").await,
        404,
        "collection_not_found",
    );
    assert_error(
        &s.svc_json(Method::PATCH, "/v1/db/nope/x", json!({})).await,
        404,
        "collection_not_found",
    );
}

async fn patch_merges_top_level_fields(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"a": 1, "b": {"x": 1}})).await;
    let id = doc["_id"].as_str().unwrap();
    let (status, updated) = s
        .svc_json(
            Method::PATCH,
            &format!("/v1/db/c/{id}"),
            json!({"b": {"y": 2}, "c": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["a"], 1);
    assert_eq!(updated["b"], json!({"y": 2}));
    assert_eq!(updated["c"], Value::Null);
    assert_eq!(updated["_version"], 2);
    assert_eq!(updated["_created_at"], doc["_created_at"]);
    assert!(updated["_updated_at"].as_str() >= doc["_updated_at"].as_str());
}

async fn update_operators_apply_atomically_under_concurrency(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"n": 0, "tags": []})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = s
            .svc(Method::PATCH, &path)
            .json(&json!({"$inc": {"n": 1}, "$addToSet": {"tags": format!("t{}", i % 10)}}));
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let (_, read) = s.svc_get(&path).await;
    assert_eq!(read["n"], 40, "every $inc applied once: {read}");
    assert_eq!(read["tags"].as_array().unwrap().len(), 10);
    assert_eq!(read["_version"], 41);

    let (status, out) = s
        .svc_json(
            Method::PATCH,
            &path,
            json!({
                "$set": {"deep.a.b": "x"},
                "$unset": {"tags": ""},
                "$mul": {"n": 2},
                "$push": {"list": {"$each": [3, 1, 2]}},
                "$min": {"lo": 5},
                "$max": {"hi": 5}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["deep"], json!({"a": {"b": "x"}}));
    assert!(out.get("tags").is_none());
    assert_eq!(out["n"], 80);
    assert_eq!(out["list"], json!([3, 1, 2]));
    let (_, out) = s
        .svc_json(
            Method::PATCH,
            &path,
            json!({"$pull": {"list": {"$gte": 2}}, "$min": {"lo": 9}, "$max": {"hi": 9}}),
        )
        .await;
    assert_eq!(out["list"], json!([1]));
    assert_eq!(out["lo"], 5);
    assert_eq!(out["hi"], 9);
}

async fn a_bad_update_is_rejected_and_changes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"s": "text", "n": 1})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    for (update, code) in [
        (json!({"$inc": {"s": 1}}), "bad_request"),
        (json!({"$inc": {"n": "1"}}), "bad_request"),
        (json!({"$rename": {"n": "m"}}), "bad_request"),
        (json!({"$set": {"n": 2}, "x": 1}), "bad_request"),
        (json!({"$set": {"n": 2, "n.x": 1}}), "bad_request"),
        (json!({"$set": {"s.x": 1}}), "bad_request"),
        (json!({"$push": {"s": 1}}), "bad_request"),
        (json!({"$set": {"_owner": "me"}}), "validation_failed"),
        (json!({"$set": {"a.__proto__.b": 1}}), "validation_failed"),
        (json!({"_version": 9}), "validation_failed"),
        (json!([1, 2]), "bad_request"),
    ] {
        let r = s.svc_json(Method::PATCH, &path, update.clone()).await;
        assert_error(&r, 400, code);
    }
    let (_, read) = s.svc_get(&path).await;
    assert_eq!(read["_version"], 1, "nothing was written: {read}");
    assert_eq!(read["n"], 1);
}

async fn system_fields_and_reserved_names_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    for doc in [
        json!({"_version": 5}),
        json!({"_created_at": "x"}),
        json!({"_anything": 1}),
        json!({"__proto__": {"isAdmin": true}}),
        json!({"constructor": 1}),
        json!({"prototype": 1}),
        json!({"$where": "1"}),
        json!({"a.b": 1}),
        json!({"a": {"b": {"c": {"d": {"_bsontype": 1}}}}}),
        json!({"a": [{"$x": 1}]}),
        json!({"": 1}),
        json!({"a\u{0}b": 1}),
    ] {
        let r = s.svc_json(Method::POST, "/v1/db/c", doc.clone()).await;
        assert_error(&r, 400, "validation_failed");
    }
    let (_, page) = s.svc_get("/v1/db/c?count=true").await;
    assert_eq!(page["count"], 0, "nothing was written");
    // The service may set the owner (imports, seeding); it is stored as given.
    let doc = s.create("c", json!({"_owner": "user-1", "x": 1})).await;
    assert_eq!(doc["_owner"], "user-1");
    s.assert_healthy().await;
}

async fn oversized_and_too_deep_documents_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let big = "x".repeat(1024 * 1024 + 10);
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/c", json!({"big": big}))
            .await,
        413,
        "payload_too_large",
    );
    // Just under the body limit but over 1 MiB of data once escaped characters expand.
    let escaped = "\u{1}".repeat(180 * 1024);
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/c", json!({"e": escaped}))
            .await,
        413,
        "payload_too_large",
    );
    // The document object is level 1; 32 levels are allowed, 33 are not.
    let mut deep = json!(1);
    for _ in 0..32 {
        deep = json!({"a": deep});
    }
    assert_eq!(
        s.svc_json(Method::POST, "/v1/db/c", deep.clone()).await.0,
        StatusCode::CREATED
    );
    let deeper = json!({ "a": deep });
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/c", deeper).await,
        400,
        "validation_failed",
    );
    // Nesting beyond the JSON parser's limit is refused while parsing.
    let bomb = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = s
        .send(
            s.svc(Method::POST, "/v1/db/c")
                .header("content-type", "application/json")
                .body(bomb),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    // A document that grows past 1 MiB through an update is refused too.
    let doc = s.create("c", json!({"list": []})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    let chunk = "y".repeat(600 * 1024);
    let (status, _) = s
        .svc_json(Method::PATCH, &path, json!({"$push": {"list": chunk}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = s
        .svc_json(Method::PATCH, &path, json!({"$push": {"list": chunk}}))
        .await;
    assert_error(&r, 413, "payload_too_large");
    let (_, read) = s.svc_get(&path).await;
    assert_eq!(read["_version"], 2);
    s.assert_healthy().await;
}

async fn put_replaces_and_upserts(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    assert_error(
        &s.svc_json(Method::PUT, "/v1/db/c/p1", json!({"a": 1}))
            .await,
        404,
        "not_found",
    );
    let (status, created) = s
        .svc_json(
            Method::PUT,
            "/v1/db/c/p1?upsert=true",
            json!({"a": 1, "b": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["_id"], "p1");
    let (status, replaced) = s
        .svc_json(Method::PUT, "/v1/db/c/p1?upsert=true", json!({"c": 3}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["_version"], 2);
    assert_eq!(replaced["_created_at"], created["_created_at"]);
    assert!(
        replaced.get("a").is_none(),
        "replace drops old fields: {replaced}"
    );
    assert_eq!(replaced["c"], 3);
    let r = s
        .svc_json(Method::PUT, "/v1/db/c/p1", json!({"_id": "other"}))
        .await;
    assert_error(&r, 400, "bad_request");
    let (status, _) = s
        .svc_json(Method::PUT, "/v1/db/c/p1", json!({"_id": "p1", "d": 4}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &s.svc_json(Method::PUT, "/v1/db/c/p1?upsrt=true", json!({}))
            .await,
        400,
        "bad_request",
    );
}

async fn delete_then_read_is_not_found(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"a": 1})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    let response = s.svc(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(&s.svc_get(&path).await, 404, "not_found");
    assert_error(
        &s.send(s.svc(Method::DELETE, &path)).await,
        404,
        "not_found",
    );
}

async fn if_match_guards_every_write(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"a": 1})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    let stale = s
        .send(
            s.svc(Method::PATCH, &path)
                .header("if-match", "\"7\"")
                .json(&json!({"a": 2})),
        )
        .await;
    assert_error(&stale, 412, "version_mismatch");
    assert_eq!(stale.1["error"]["details"]["current_version"], 1);
    let (status, ok) = s
        .send(
            s.svc(Method::PATCH, &path)
                .header("if-match", "1")
                .json(&json!({"a": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    let stale = s
        .send(
            s.svc(Method::PUT, &path)
                .header("if-match", "1")
                .json(&json!({"a": 3})),
        )
        .await;
    assert_error(&stale, 412, "version_mismatch");
    let stale = s
        .send(s.svc(Method::DELETE, &path).header("if-match", "1"))
        .await;
    assert_error(&stale, 412, "version_mismatch");
    let garbage = s
        .send(s.svc(Method::DELETE, &path).header("if-match", "abc"))
        .await;
    assert_error(&garbage, 400, "bad_request");
    let (_, read) = s.svc_get(&path).await;
    assert_eq!(read["a"], 2);
    assert_eq!(read["_version"], 2);
    let missing = s
        .send(
            s.svc(Method::PATCH, "/v1/db/c/zzz")
                .header("if-match", "1")
                .json(&json!({})),
        )
        .await;
    assert_error(&missing, 412, "version_mismatch");
}

async fn batch_is_all_or_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("a", json!({})).await;
    s.collection("b", json!({})).await;
    s.create("a", json!({"_id": "keep", "n": 1})).await;
    let (status, out) = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [
                {"op": "create", "collection": "a", "id": "x1", "data": {"v": 1}},
                {"op": "update", "collection": "a", "id": "keep", "data": {"$inc": {"n": 1}}},
                {"op": "replace", "collection": "b", "id": "y1", "data": {"v": 2}, "upsert": true},
                {"op": "delete", "collection": "a", "id": "x1"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[1]["n"], 2);
    assert_eq!(results[3], json!({"_id": "x1", "deleted": true}));

    // One failing op (a duplicate id) rolls back all of them.
    let r = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [
                {"op": "update", "collection": "a", "id": "keep", "data": {"$inc": {"n": 100}}},
                {"op": "create", "collection": "b", "id": "new1", "data": {}},
                {"op": "create", "collection": "a", "id": "keep", "data": {}},
            ]}),
        )
        .await;
    assert_error(&r, 409, "conflict");
    assert_eq!(r.1["error"]["details"]["index"], 2);
    let (_, keep) = s.svc_get("/v1/db/a/keep").await;
    assert_eq!(keep["n"], 2, "the earlier update was rolled back");
    assert_error(&s.svc_get("/v1/db/b/new1").await, 404, "not_found");

    // Validation failures are found before anything runs.
    let r = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [{"op": "create", "collection": "a", "data": {"_x": 1}}]}),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
    let r = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [{"op": "upsert", "collection": "a"}]}),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    let r = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [{"op": "create", "collection": "nope", "data": {}}]}),
        )
        .await;
    assert_error(&r, 404, "collection_not_found");
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/batch", json!({"ops": []}))
            .await,
        400,
        "bad_request",
    );

    let ops: Vec<Value> = (0..500)
        .map(|i| json!({"op": "create", "collection": "b", "data": {"i": i}}))
        .collect();
    let (status, out) = s
        .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let ops: Vec<Value> = (0..501)
        .map(|i| json!({"op": "create", "collection": "b", "data": {"i": i}}))
        .collect();
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
            .await,
        400,
        "bad_request",
    );
    let (_, page) = s.svc_get("/v1/db/b?count=true&limit=0").await;
    assert_eq!(page["count"], 501, "y1 + 500");
}

async fn unique_indexes_conflict(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "users",
        json!({"indexes": [{"fields": ["email"], "unique": true}, {"fields": ["team", "-score"]}]}),
    )
    .await;
    s.create("users", json!({"email": "a@x", "team": 1, "score": 5}))
        .await;
    let dup = s
        .svc_json(Method::POST, "/v1/db/users", json!({"email": "a@x"}))
        .await;
    assert_error(&dup, 409, "conflict");
    assert_eq!(dup.1["error"]["details"]["fields"], json!(["email"]));
    // Missing or null values never conflict; different types are different values.
    s.create("users", json!({"team": 1})).await;
    s.create("users", json!({"team": 2})).await;
    s.create("users", json!({"email": null})).await;
    s.create("users", json!({"email": null})).await;
    s.create("users", json!({"email": 1})).await;
    s.create("users", json!({"email": "1"})).await;
    let dup = s
        .svc_json(Method::POST, "/v1/db/users", json!({"email": 1.0}))
        .await;
    assert_error(&dup, 409, "conflict");
    // An update into a taken value conflicts and changes nothing.
    let b = s.create("users", json!({"email": "b@x"})).await;
    let path = format!("/v1/db/users/{}", b["_id"].as_str().unwrap());
    assert_error(
        &s.svc_json(Method::PATCH, &path, json!({"email": "a@x"}))
            .await,
        409,
        "conflict",
    );
    // A new unique index over duplicated data is refused, and the old spec stays.
    s.create("users", json!({"team": 1, "nick": "n"})).await;
    s.create("users", json!({"team": 1, "nick": "n"})).await;
    let r = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/users",
            json!({"indexes": [{"fields": ["nick"], "unique": true}]}),
        )
        .await;
    assert_error(&r, 409, "conflict");
    let (_, coll) = s.svc_get("/v1/admin/collections/users").await;
    assert_eq!(coll["indexes"].as_array().unwrap().len(), 2);
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/users", json!({"email": "a@x"}))
            .await,
        409,
        "conflict",
    );
}

async fn json_schema_is_enforced(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "posts",
        json!({"schema": {"type": "object", "required": ["title"], "properties": {"title": {"type": "string", "maxLength": 5}}}}),
    )
    .await;
    let r = s
        .svc_json(Method::POST, "/v1/db/posts", json!({"title": 7}))
        .await;
    assert_error(&r, 400, "validation_failed");
    assert_eq!(r.1["error"]["details"]["errors"][0]["path"], "/title");
    assert_error(
        &s.svc_json(Method::POST, "/v1/db/posts", json!({})).await,
        400,
        "validation_failed",
    );
    let doc = s.create("posts", json!({"title": "ok"})).await;
    let path = format!("/v1/db/posts/{}", doc["_id"].as_str().unwrap());
    assert_error(
        &s.svc_json(Method::PATCH, &path, json!({"title": "too long"}))
            .await,
        400,
        "validation_failed",
    );
    assert_error(
        &s.svc_json(Method::PATCH, &path, json!({"$unset": {"title": ""}}))
            .await,
        400,
        "validation_failed",
    );
    let r = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/posts",
            json!({"schema": null}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(
        s.svc_json(Method::PATCH, &path, json!({"title": "longer now"}))
            .await
            .0,
        StatusCode::OK
    );
    let r = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/posts",
            json!({"schema": {"type": 5}}),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
    let r = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/posts",
            json!({"schema": {"$ref": "http://127.0.0.2:9/x"}}),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
}

async fn collections_can_be_declared_changed_and_deleted(backend: Backend) {
    let s = TestServer::start(backend).await;
    let created = s
        .collection("todos", json!({"indexes": [{"fields": ["done"]}]}))
        .await;
    assert_eq!(created["name"], "todos");
    assert_eq!(created["version"], 1);
    let dup = s
        .svc_json(
            Method::POST,
            "/v1/admin/collections",
            json!({"name": "todos"}),
        )
        .await;
    assert_error(&dup, 409, "conflict");
    for name in ["", "_users", "1abc", "a-b", "batch", "x y", "a;drop table"] {
        let r = s
            .svc_json(
                Method::POST,
                "/v1/admin/collections",
                json!({ "name": name }),
            )
            .await;
        assert_error(&r, 400, "validation_failed");
    }
    let r = s
        .svc_json(
            Method::POST,
            "/v1/admin/collections",
            json!({"name": "x", "indexs": []}),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    let r = s
        .svc_json(
            Method::POST,
            "/v1/admin/collections",
            json!({"name": "x", "indexes": [{"fields": ["a') --"]}]}),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
    let (status, list) = s.svc_get("/v1/admin/collections").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, changed) = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/todos",
            json!({"indexes": [{"fields": ["-score"]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["version"], 2);
    assert_eq!(
        changed["indexes"],
        json!([{"fields": ["-score"], "unique": false}])
    );
    s.create("todos", json!({"a": 1})).await;
    let response = s
        .svc(Method::DELETE, "/v1/admin/collections/todos")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        &s.svc_get("/v1/db/todos").await,
        404,
        "collection_not_found",
    );
    assert_error(
        &s.svc_get("/v1/admin/collections/todos").await,
        404,
        "collection_not_found",
    );
    // A new collection with the same name starts empty.
    s.collection("todos", json!({})).await;
    let (_, page) = s.svc_get("/v1/db/todos?count=true").await;
    assert_eq!(page["count"], 0);
}

async fn every_write_appends_a_change_in_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let (_, before) = s.svc_get("/v1/admin/changes").await;
    let start: i64 = before["last_seq"].as_str().unwrap().parse().unwrap();
    let doc = s.create("c", json!({"a": 1})).await;
    let id = doc["_id"].as_str().unwrap();
    let path = format!("/v1/db/c/{id}");
    s.svc_json(Method::PATCH, &path, json!({"a": 2})).await;
    s.send(s.svc(Method::DELETE, &path)).await;
    // A rejected write appends nothing.
    s.svc_json(Method::PATCH, &path, json!({"a": 3})).await;
    let (status, log) = s.svc_get(&format!("/v1/admin/changes?after={start}")).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let items = log["items"].as_array().unwrap();
    let ops: Vec<&str> = items.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "update", "delete"]);
    let seqs: Vec<i64> = items
        .iter()
        .map(|c| c["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(items[0]["before"], Value::Null);
    assert_eq!(items[0]["after"]["a"], 1);
    assert_eq!(items[1]["before"]["a"], 1);
    assert_eq!(items[1]["after"]["a"], 2);
    assert_eq!(items[2]["after"], Value::Null);
    assert!(
        items
            .iter()
            .all(|c| c["doc_id"] == id && c["collection"] == "c" && c["actor"] == "service")
    );
    assert_eq!(log["last_seq"].as_str().unwrap(), seqs[2].to_string());
}

async fn clients_without_rules_are_denied(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let doc = s.create("c", json!({"a": 1})).await;
    let path = format!("/v1/db/c/{}", doc["_id"].as_str().unwrap());
    let anon = |m: Method, p: &str| s.req(m, p);
    assert_error(&s.send(anon(Method::GET, &path)).await, 403, "forbidden");
    assert_error(
        &s.send(anon(Method::GET, "/v1/db/c/missing")).await,
        403,
        "forbidden",
    );
    assert_error(
        &s.send(anon(Method::GET, "/v1/db/c")).await,
        403,
        "forbidden",
    );
    assert_error(
        &s.send(anon(Method::POST, "/v1/db/c").json(&json!({})))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &s.send(anon(Method::PATCH, &path).json(&json!({"a": 2})))
            .await,
        403,
        "forbidden",
    );
    assert_error(&s.send(anon(Method::DELETE, &path)).await, 403, "forbidden");
    let batch = json!({"ops": [{"op": "delete", "collection": "c", "id": doc["_id"]}]});
    let r = s
        .send(anon(Method::POST, "/v1/db/batch").json(&batch))
        .await;
    assert_error(&r, 403, "forbidden");
    // Admin API: anonymous is 401; a wrong key is 401.
    assert_error(
        &s.send(anon(Method::GET, "/v1/admin/collections")).await,
        401,
        "unauthenticated",
    );
    let wrong = s
        .send(anon(Method::GET, "/v1/admin/collections").bearer_auth("nope"))
        .await;
    assert_error(&wrong, 401, "unauthenticated");
    let wrong = s
        .send(anon(Method::GET, "/v1/admin/collections").header("x-ferrobase-key", "nope"))
        .await;
    assert_error(&wrong, 401, "unauthenticated");
    let basic = s
        .send(anon(Method::GET, "/v1/db/c").header("authorization", "Basic abc"))
        .await;
    assert_error(&basic, 401, "unauthenticated");
    let (status, _) = s
        .send(
            anon(Method::GET, "/v1/admin/collections")
                .header("x-ferrobase-key", crate::helpers::SERVICE_KEY),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, read) = s.svc_get(&path).await;
    assert_eq!(read["_version"], 1, "nothing changed");
}

async fn malformed_bodies_are_bad_requests(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({})).await;
    let raw = |body: &'static str| {
        s.svc(Method::POST, "/v1/db/c")
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        "{",
        "",
        "[1,2]",
        "\"x\"",
        "{\"a\":1e400}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":1,}",
        "nul",
    ] {
        let r = s.send(raw(body)).await;
        assert_error(&r, 400, "bad_request");
    }
    let r = s
        .send(
            s.svc(Method::POST, "/v1/db/c")
                .header("content-type", "application/json")
                .body(vec![b'{', 0xff, b'}']),
        )
        .await;
    assert_error(&r, 400, "bad_request");
    let r = s
        .send(
            s.svc(Method::POST, "/v1/db/c")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_error(&r, 415, "unsupported_media_type");
    // No content type at all is accepted (curl -d without -H).
    let (status, _) = s
        .send(s.svc(Method::POST, "/v1/db/c").body("{\"a\":1}"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // A 100 MB body is refused from its Content-Length, before any of it is read.
    let (status, response) = s
        .raw("POST /v1/db/c HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n")
        .await;
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("payload_too_large"));
    assert_error(
        &s.send(s.svc(Method::GET, "/v1/nothing")).await,
        404,
        "not_found",
    );
    assert_error(
        &s.send(s.svc(Method::DELETE, "/v1/db/c")).await,
        405,
        "method_not_allowed",
    );
    s.assert_healthy().await;
}

async fn concurrent_writes_in_one_group_commit_fail_independently(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("c", json!({"indexes": [{"fields": ["k"], "unique": true}]}))
        .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        // Every third write reuses a key: exactly one of each group of equal keys wins.
        let key = if i % 3 == 0 {
            "shared".to_owned()
        } else {
            format!("k{i}")
        };
        let req = s.svc(Method::POST, "/v1/db/c").json(&json!({ "k": key }));
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    let mut created = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 41);
    assert_eq!(conflicts, 19);
    let (_, page) = s.svc_get("/v1/db/c?count=true&limit=0").await;
    assert_eq!(page["count"], 41);
}
