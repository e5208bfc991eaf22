//! Access rules over a real socket, on SQLite and Postgres: owner-only, public-read, roles and
//! claims, validation of `new`, immutable fields, anonymous callers, lists as filters (with
//! pagination and counts), batch and `$or` bypass attempts, rules changed at runtime (on
//! another node too), a concurrent debit, the playground and `ferrobase rules test`.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestServer, assert_error, bearer, eventually, signup};
use crate::on_both_backends;

on_both_backends!(
    owner_only_rules_filter_lists_and_guard_writes,
    public_read_roles_and_claims,
    field_validation_and_immutable_fields,
    anonymous_callers_and_request_variables,
    batches_check_every_op_and_apply_nothing_when_one_is_denied,
    rules_are_checked_when_saved,
    rules_changed_at_runtime_apply_to_the_next_request,
    a_rule_guards_a_concurrent_debit,
    the_playground_evaluates_rules,
);

const OWNER: &str = "auth != null && doc._owner == auth.id";

fn as_user(s: &TestServer, who: &Value, method: Method, path: &str) -> RequestBuilder {
    s.req(method, path).header("authorization", bearer(who))
}

fn user_id(session: &Value) -> String {
    session["user"]["id"].as_str().unwrap().to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    let mut ids: Vec<String> = page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn list(s: &TestServer, who: Option<&Value>, path: &str) -> Value {
    let request = match who {
        Some(who) => as_user(s, who, Method::GET, path),
        None => s.req(Method::GET, path),
    };
    let (status, page) = s.send(request).await;
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    page
}

async fn query(s: &TestServer, who: &Value, collection: &str, body: Value) -> Value {
    let (status, page) = s
        .send(as_user(s, who, Method::POST, &format!("/v1/db/{collection}/query")).json(&body))
        .await;
    assert_eq!(status, StatusCode::OK, "query {body}: {page}");
    page
}

async fn owner_only_rules_filter_lists_and_guard_writes(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "notes",
        json!({
            "rules": {"list": OWNER, "get": OWNER, "create": "auth != null", "update": OWNER, "delete": OWNER},
            "indexes": [{"fields": ["_owner", "-_created_at"]}],
        }),
    )
    .await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    let mut alice_docs = Vec::new();
    for i in 0..5 {
        let (status, doc) = s
            .send(as_user(&s, &alice, Method::POST, "/v1/db/notes").json(&json!({"n": i})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{doc}");
        assert_eq!(
            doc["_owner"],
            user_id(&alice).as_str(),
            "the server sets the owner"
        );
        alice_docs.push(doc["_id"].as_str().unwrap().to_owned());
    }
    let mut bob_docs = Vec::new();
    for i in 0..7 {
        let (status, doc) = s
            .send(as_user(&s, &bob, Method::POST, "/v1/db/notes").json(&json!({"n": i})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{doc}");
        bob_docs.push(doc["_id"].as_str().unwrap().to_owned());
    }
    bob_docs.sort();
    let alice_doc = alice_docs[0].clone();

    // Lists are filtered, counts too, and cursor pages stay inside the rule.
    let page = list(&s, Some(&bob), "/v1/db/notes?count=true").await;
    assert_eq!(ids(&page), bob_docs);
    assert_eq!(page["count"], 7);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"limit": 3, "sort": "n"});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let page = query(&s, &bob, "notes", body).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, bob_docs, "cursor pages hold exactly bob's documents");
    let page = list(&s, Some(&bob), "/v1/db/notes?offset=5&limit=5&sort=n").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);

    // A client's `where` cannot widen the rule: someone else's `_id`, `$or`, `$not`.
    for filter in [
        json!({"_id": alice_doc}),
        json!({"_owner": user_id(&alice)}),
        json!({"$or": [{"_owner": user_id(&alice)}, {"_id": {"$exists": true}}]}),
        json!({"$or": [{"_id": alice_doc}, {"n": {"$gte": 0}}]}),
        json!({"$not": {"_owner": user_id(&bob)}}),
    ] {
        let page = query(&s, &bob, "notes", json!({"where": filter, "count": true})).await;
        assert!(
            ids(&page).iter().all(|id| bob_docs.contains(id)),
            "{filter} leaked: {page}"
        );
        assert_eq!(page["count"], ids(&page).len(), "{filter}: {page}");
    }
    let page = query(
        &s,
        &bob,
        "notes",
        json!({"where": {"_id": alice_doc}, "count": true}),
    )
    .await;
    assert_eq!(
        page["count"], 0,
        "a count does not reveal that the id exists"
    );
    // Anonymous callers see nothing (the rule needs `auth`), but the list itself works.
    let page = list(&s, None, "/v1/db/notes?count=true").await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["count"], 0);

    // A denied read is indistinguishable from a missing document.
    let path = format!("/v1/db/notes/{alice_doc}");
    let denied = s.send(as_user(&s, &bob, Method::GET, &path)).await;
    let missing = s
        .send(as_user(&s, &bob, Method::GET, "/v1/db/notes/nosuchdoc"))
        .await;
    assert_error(&denied, 404, "not_found");
    assert_eq!(denied.1, missing.1);
    assert_error(&s.send(s.req(Method::GET, &path)).await, 404, "not_found");
    let (status, _) = s.send(as_user(&s, &alice, Method::GET, &path)).await;
    assert_eq!(status, StatusCode::OK);

    // Denied writes are 403 and change nothing.
    for request in [
        as_user(&s, &bob, Method::PATCH, &path).json(&json!({"n": 99})),
        as_user(&s, &bob, Method::PUT, &path).json(&json!({"n": 99})),
        as_user(&s, &bob, Method::DELETE, &path),
        s.req(Method::PATCH, &path).json(&json!({"n": 99})),
        s.req(Method::POST, "/v1/db/notes").json(&json!({"n": 1})),
    ] {
        assert_error(&s.send(request).await, 403, "forbidden");
    }
    let (_, stored) = s.svc_get(&path).await;
    assert_eq!(
        (stored["n"].clone(), stored["_version"].clone()),
        (json!(0), json!(1))
    );
    let (status, _) = s.send(as_user(&s, &alice, Method::DELETE, &path)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The owner rule does not turn the indexed query into a scan: the plan for bob's list
    // searches the declared `["_owner", "-_created_at"]` index by owner, which also gives
    // the order.
    let (status, plan) = s
        .svc_json(
            Method::POST,
            "/v1/admin/collections/notes/explain",
            json!({"sort": "-_created_at", "limit": 20, "discourage_seqscan": true,
                   "auth": {"id": user_id(&bob)}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let text = plan["plan"].as_str().unwrap();
    assert!(text.contains("owner"), "{text}");
    assert_eq!(
        plan["indexes_used"][0]["fields"],
        json!(["_owner", "-_created_at"]),
        "{plan}"
    );
    assert!(
        !text.contains("Seq Scan") && !text.contains("SCAN fb_docs"),
        "{text}"
    );
}

async fn public_read_roles_and_claims(backend: Backend) {
    let s = TestServer::start(backend).await;
    let read = "doc.public == true || (auth != null && auth.role == 'editor')";
    s.collection(
        "posts",
        json!({"rules": {
            "list": read,
            "get": read,
            "create": "auth != null && auth.role == 'editor'",
            "update": "auth != null && auth.claims.team == doc.team",
        }}),
    )
    .await;
    for (id, public, team) in [
        ("p1", json!(true), "red"),
        ("p2", json!(false), "red"),
        ("p3", json!("yes"), "blue"),
    ] {
        s.create("posts", json!({"_id": id, "public": public, "team": team}))
            .await;
    }
    s.create("posts", json!({"_id": "p4", "team": "blue"}))
        .await;

    assert_eq!(ids(&list(&s, None, "/v1/db/posts").await), ["p1"]);
    let (status, _) = s.send(s.req(Method::GET, "/v1/db/posts/p1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &s.send(s.req(Method::GET, "/v1/db/posts/p2")).await,
        404,
        "not_found",
    );

    let writer = signup(&s, "writer@example.com").await;
    assert_eq!(ids(&list(&s, Some(&writer), "/v1/db/posts").await), ["p1"]);
    let create =
        || as_user(&s, &writer, Method::POST, "/v1/db/posts").json(&json!({"team": "red"}));
    assert_error(&s.send(create()).await, 403, "forbidden");

    // An admin makes them an editor of team red. Rules see the user as stored, so the
    // change applies to their next request (within `auth.session_check_interval`).
    let (status, body) = s
        .svc_json(
            Method::PATCH,
            &format!("/v1/admin/users/{}", user_id(&writer)),
            json!({"role": "editor", "claims": {"team": "red"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let editor = writer;
    let (status, _) = s
        .send(
            as_user(&s, &editor, Method::POST, "/v1/db/posts")
                .json(&json!({"_id": "p5", "team": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        ids(&list(&s, Some(&editor), "/v1/db/posts").await),
        ["p1", "p2", "p3", "p4", "p5"]
    );
    // Claims: team red may update red posts only.
    let patch = |id: &str| {
        as_user(&s, &editor, Method::PATCH, &format!("/v1/db/posts/{id}"))
            .json(&json!({"seen": true}))
    };
    let (status, _) = s.send(patch("p2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(&s.send(patch("p3")).await, 403, "forbidden");
    assert_error(&s.send(patch("p4")).await, 403, "forbidden");
    // Still no delete rule: nobody but admins deletes.
    assert_error(
        &s.send(as_user(&s, &editor, Method::DELETE, "/v1/db/posts/p2"))
            .await,
        403,
        "forbidden",
    );
}

async fn field_validation_and_immutable_fields(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "articles",
        json!({"rules": {
            "create": "auth != null && new.title.size() <= 200 && new.slug.size() > 0",
            "update": "auth != null && doc._owner == auth.id && new.title.size() <= 200 && new.slug == doc.slug",
            "get": OWNER,
        }}),
    )
    .await;
    let u = signup(&s, "author@example.com").await;
    let other = signup(&s, "other@example.com").await;
    let post = |body: Value| as_user(&s, &u, Method::POST, "/v1/db/articles").json(&body);
    let (status, doc) = s
        .send(post(
            json!({"_id": "a1", "title": "t".repeat(200), "slug": "first"}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    assert_error(
        &s.send(post(json!({"title": "t".repeat(201), "slug": "x"})))
            .await,
        403,
        "forbidden",
    );
    // A missing field makes the rule fail, and a failing rule denies.
    assert_error(
        &s.send(post(json!({"title": "no slug"}))).await,
        403,
        "forbidden",
    );

    let path = "/v1/db/articles/a1";
    let patch = |body: Value| as_user(&s, &u, Method::PATCH, path).json(&body);
    for denied in [
        patch(json!({"$set": {"title": "t".repeat(201)}})),
        patch(json!({"slug": "renamed"})),
        patch(json!({"$unset": {"slug": ""}})),
        as_user(&s, &u, Method::PUT, path).json(&json!({"title": "t", "slug": "renamed"})),
        as_user(&s, &other, Method::PATCH, path).json(&json!({"title": "mine now"})),
    ] {
        assert_error(&s.send(denied).await, 403, "forbidden");
    }
    // Clients never set system fields, `_owner` included, whatever the rules say.
    for refused in [
        post(json!({"title": "x", "slug": "y", "_owner": user_id(&other)})),
        patch(json!({"_owner": user_id(&other)})),
        patch(json!({"$set": {"_owner": user_id(&other)}})),
        patch(json!({"$set": {"_version": 7}})),
        patch(json!({"$set": {"_created_at": "2000-01-01T00:00:00.000Z"}})),
        patch(json!({"$set": {"_id": "a2"}})),
        patch(json!({"$unset": {"_owner": ""}})),
        as_user(&s, &u, Method::PUT, path)
            .json(&json!({"title": "t", "slug": "first", "_owner": null})),
    ] {
        let (status, body) = s.send(refused).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (_, stored) = s.svc_get(path).await;
    assert_eq!(stored["_version"], 1, "nothing changed: {stored}");
    assert_eq!(stored["_owner"], user_id(&u).as_str());

    let (status, updated) = s.send(patch(json!({"$set": {"title": "better"}}))).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["_version"], 2);
    let (status, replaced) = s
        .send(as_user(&s, &u, Method::PUT, path).json(&json!({"title": "again", "slug": "first"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(
        replaced["_owner"],
        user_id(&u).as_str(),
        "a replace keeps the owner"
    );
}

async fn anonymous_callers_and_request_variables(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "guestbook",
        json!({"rules": {
            "create": "auth != null && !auth.anonymous",
            "list": "true",
            "get": "request.method == 'GET' && request.ip == '127.0.0.1' && request.time > timestamp(doc._created_at)",
            "update": "auth != null && auth.anonymous",
        }}),
    )
    .await;
    let body = json!({"_id": "g1", "text": "hi"});
    assert_error(
        &s.send(s.req(Method::POST, "/v1/db/guestbook").json(&body))
            .await,
        403,
        "forbidden",
    );
    let (status, guest) = s.send(s.req(Method::POST, "/v1/auth/anonymous")).await;
    assert_eq!(status, StatusCode::CREATED, "{guest}");
    assert_eq!(guest["user"]["anonymous"], true);
    assert_error(
        &s.send(as_user(&s, &guest, Method::POST, "/v1/db/guestbook").json(&body))
            .await,
        403,
        "forbidden",
    );
    let member = signup(&s, "member@example.com").await;
    let (status, _) = s
        .send(as_user(&s, &member, Method::POST, "/v1/db/guestbook").json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // `list: "true"` is public, for anonymous callers too.
    assert_eq!(ids(&list(&s, None, "/v1/db/guestbook").await), ["g1"]);
    // `request` carries method, address and time.
    let (status, _) = s.send(s.req(Method::GET, "/v1/db/guestbook/g1")).await;
    assert_eq!(status, StatusCode::OK);
    // Anonymous accounts are users with `auth.anonymous == true`.
    let (status, _) = s
        .send(as_user(&s, &guest, Method::PATCH, "/v1/db/guestbook/g1").json(&json!({"seen": 1})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &s.send(
            as_user(&s, &member, Method::PATCH, "/v1/db/guestbook/g1").json(&json!({"seen": 2})),
        )
        .await,
        403,
        "forbidden",
    );
}

async fn batches_check_every_op_and_apply_nothing_when_one_is_denied(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "items",
        json!({"rules": {"get": OWNER, "create": "auth != null", "update": OWNER, "delete": OWNER}}),
    )
    .await;
    s.collection("locked", json!({})).await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    s.create(
        "items",
        json!({"_id": "a1", "_owner": user_id(&alice), "n": 1}),
    )
    .await;
    s.create(
        "items",
        json!({"_id": "b1", "_owner": user_id(&bob), "n": 1}),
    )
    .await;
    let batch =
        |ops: Value| as_user(&s, &bob, Method::POST, "/v1/db/batch").json(&json!({ "ops": ops }));

    for (ops, index) in [
        (
            json!([
                {"op": "update", "collection": "items", "id": "b1", "data": {"$inc": {"n": 1}}},
                {"op": "update", "collection": "items", "id": "a1", "data": {"$inc": {"n": 1}}},
            ]),
            1,
        ),
        (
            json!([
                {"op": "create", "collection": "items", "id": "x1", "data": {}},
                {"op": "delete", "collection": "items", "id": "a1"},
            ]),
            1,
        ),
        (
            json!([
                {"op": "create", "collection": "items", "id": "x2", "data": {}},
                {"op": "replace", "collection": "items", "id": "a1", "data": {"n": 0}},
            ]),
            1,
        ),
        (
            json!([
                {"op": "update", "collection": "items", "id": "b1", "data": {"$inc": {"n": 1}}},
                {"op": "create", "collection": "locked", "id": "l1", "data": {}},
            ]),
            1,
        ),
    ] {
        let r = s.send(batch(ops.clone())).await;
        assert_error(&r, 403, "forbidden");
        assert_eq!(r.1["error"]["details"]["index"], index, "{ops}: {}", r.1);
    }
    for (id, n) in [("a1", 1), ("b1", 1)] {
        let (_, doc) = s.svc_get(&format!("/v1/db/items/{id}")).await;
        assert_eq!(doc["n"], n, "{id} unchanged");
    }
    for id in ["x1", "x2"] {
        assert_error(
            &s.svc_get(&format!("/v1/db/items/{id}")).await,
            404,
            "not_found",
        );
    }
    assert_error(&s.svc_get("/v1/db/locked/l1").await, 404, "not_found");

    let (status, out) = s
        .send(batch(json!([
            {"op": "create", "collection": "items", "id": "y1", "data": {}},
            {"op": "update", "collection": "items", "id": "b1", "data": {"$inc": {"n": 1}}},
            {"op": "delete", "collection": "items", "id": "y1"},
        ])))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["results"][1]["n"], 2);
}

async fn rules_are_checked_when_saved(backend: Backend) {
    let s = TestServer::start(backend).await;
    let refuse = |rules: Value, needle: &'static str| {
        let s = &s;
        async move {
            let r = s
                .svc_json(
                    Method::POST,
                    "/v1/admin/collections",
                    json!({"name": "c", "rules": rules}),
                )
                .await;
            assert_eq!(r.0, StatusCode::BAD_REQUEST, "{rules}: {}", r.1);
            let message = r.1["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains(needle), "{rules}: {message}");
        }
    };
    refuse(json!({"list": "auth.id =="}), "rules.list: syntax").await;
    refuse(
        json!({"get": "user.id == doc._owner"}),
        "unknown variable `user`",
    )
    .await;
    refuse(
        json!({"get": "auth.uid == doc._owner"}),
        "auth has no field `uid`",
    )
    .await;
    refuse(json!({"get": "auth.uid == doc._owner"}), "(at character 5)").await;
    refuse(json!({"update": "new.n + 1"}), "boolean").await;
    refuse(json!({"create": "auth.id > 3"}), "cannot compare").await;
    refuse(
        json!({"delete": "sha256(doc.x) == 'y'"}),
        "unknown function `sha256`",
    )
    .await;
    refuse(json!({"list": "doc.title.matches('^a')"}), "SQL").await;
    refuse(json!({"list": "doc.a == doc.b"}), "SQL").await;
    refuse(json!({"create": "   "}), "empty").await;
    refuse(json!({"lists": "true"}), "lists").await;
    refuse(json!({"get": 5}), "").await;
    refuse(json!({"get": "a".repeat(5000)}), "limited").await;
    assert_error(
        &s.svc_get("/v1/admin/collections/c").await,
        404,
        "collection_not_found",
    );

    let created = s
        .collection("c", json!({"rules": {"get": "true", "list": OWNER}}))
        .await;
    assert_eq!(created["rules"], json!({"get": "true", "list": OWNER}));
    let r = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/c",
            json!({"rules": {"get": "doc.x =="}}),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
    assert!(r.1["error"]["details"]["position"].is_number(), "{}", r.1);
    let (_, current) = s.svc_get("/v1/admin/collections/c").await;
    assert_eq!(
        current["rules"]["get"], "true",
        "a refused change changes nothing"
    );
    // A patch sets the rules it names and removes those given as null.
    let (status, patched) = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/c",
            json!({"rules": {"get": null, "delete": "auth != null"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        patched["rules"],
        json!({"list": OWNER, "delete": "auth != null"})
    );
}

async fn rules_changed_at_runtime_apply_to_the_next_request(backend: Backend) {
    let s = Options::new(backend)
        .config(
            r#"
[collections.notes]
rules.list = "doc.public == true"
rules.get = "doc.public == true"
"#,
        )
        .start()
        .await;
    s.create("notes", json!({"_id": "open", "public": true}))
        .await;
    s.create("notes", json!({"_id": "closed", "public": false}))
        .await;
    let u = signup(&s, "reader@example.com").await;
    assert_eq!(ids(&list(&s, Some(&u), "/v1/db/notes").await), ["open"]);

    let s = &s;
    let set_list = |rule: Value| async move {
        let (status, body) = s
            .svc_json(
                Method::PATCH,
                "/v1/admin/collections/notes",
                json!({"rules": {"list": rule}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    set_list(json!("true")).await;
    assert_eq!(
        ids(&list(s, Some(&u), "/v1/db/notes").await),
        ["closed", "open"]
    );
    set_list(json!("doc.public == false")).await;
    assert_eq!(ids(&list(s, Some(&u), "/v1/db/notes").await), ["closed"]);
    set_list(Value::Null).await;
    assert_error(
        &s.send(as_user(s, &u, Method::GET, "/v1/db/notes")).await,
        403,
        "forbidden",
    );

    // Every node: another node on the same Postgres picks the change up without a restart.
    if backend == Backend::Postgres {
        let other = s.another_node().await;
        let (status, _) = other
            .send(as_user(&other, &u, Method::GET, "/v1/db/notes/closed"))
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "the session works on both nodes"
        );
        let (status, body) = s
            .svc_json(
                Method::PATCH,
                "/v1/admin/collections/notes",
                json!({"rules": {"get": "true"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        eventually(Duration::from_secs(10), || async {
            let (status, _) = other
                .send(as_user(&other, &u, Method::GET, "/v1/db/notes/closed"))
                .await;
            (status == StatusCode::OK).then_some(())
        })
        .await;
    }
}

async fn a_rule_guards_a_concurrent_debit(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "wallets",
        json!({"rules": {"update": "auth != null && doc._owner == auth.id && new.balance >= 0"}}),
    )
    .await;
    let u = signup(&s, "spender@example.com").await;
    s.create(
        "wallets",
        json!({"_id": "w", "_owner": user_id(&u), "balance": 100}),
    )
    .await;
    // 50 concurrent debits of 10 from 100: the rule sees each one's true `doc`, inside the
    // write, so exactly 10 pass and the balance never goes below zero.
    let debits = (0..50).map(|_| {
        s.send(
            as_user(&s, &u, Method::PATCH, "/v1/db/wallets/w")
                .json(&json!({"$inc": {"balance": -10}})),
        )
    });
    let results = futures_util::future::join_all(debits).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let denied = results
        .iter()
        .filter(|r| r.0 == StatusCode::FORBIDDEN && r.1["error"]["code"] == "forbidden")
        .count();
    assert_eq!((ok, denied), (10, 40), "{results:?}");
    let (_, wallet) = s.svc_get("/v1/db/wallets/w").await;
    assert_eq!(wallet["balance"], 0);
    assert_eq!(wallet["_version"], 11);
}

async fn the_playground_evaluates_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("todos", json!({"rules": {"get": OWNER}}))
        .await;
    let test = |body: Value| s.svc_json(Method::POST, "/v1/admin/rules/test", body);

    let (status, out) = test(json!({
        "rule": OWNER, "auth": {"id": "u1"}, "doc": {"_owner": "u1"},
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["allow"], true);
    assert!(out["reason"].as_str().unwrap().contains("true"));
    let (_, out) = test(json!({"rule": OWNER, "auth": null, "doc": {"_owner": "u1"}})).await;
    assert_eq!(out["allow"], false);
    let (_, out) = test(json!({"rule": "doc.missing == 1", "doc": {}})).await;
    assert_eq!(out["allow"], false);
    assert!(out["reason"].as_str().unwrap().contains("failed"), "{out}");
    // `new`, claims, request overrides, an expectation.
    let (_, out) = test(json!({
        "rule": "new.title.size() <= 5 && auth.claims.team == 'red' && request.method == 'PATCH'",
        "auth": {"id": "u1", "claims": {"team": "red"}},
        "new": {"title": "short"},
        "request": {"method": "PATCH"},
        "expect": "allow",
    }))
    .await;
    assert_eq!(
        (out["allow"].clone(), out["passed"].clone()),
        (json!(true), json!(true)),
        "{out}"
    );
    // A collection's stored rule.
    let (_, out) = test(json!({
        "collection": "todos", "operation": "get", "auth": {"id": "u2"}, "doc": {"_owner": "u1"},
    }))
    .await;
    assert_eq!(out["allow"], false, "{out}");
    // Bad rules and inputs are 400s.
    assert_error(
        &test(json!({"rule": "auth.id =="})).await,
        400,
        "validation_failed",
    );
    assert_error(
        &test(json!({"rule": "doc.t.matches('x')", "operation": "list"})).await,
        400,
        "validation_failed",
    );
    assert_error(&test(json!({})).await, 400, "bad_request");
    assert_error(
        &test(json!({"collection": "todos", "operation": "delete"})).await,
        400,
        "bad_request",
    );
    assert_error(
        &test(json!({"collection": "nope", "operation": "get"})).await,
        400,
        "bad_request",
    );
    assert_error(
        &test(json!({"rule": "true", "auth": "u1"})).await,
        400,
        "bad_request",
    );
    // Admins only.
    let u = signup(&s, "curious@example.com").await;
    let r = s
        .send(as_user(&s, &u, Method::POST, "/v1/admin/rules/test").json(&json!({"rule": "true"})))
        .await;
    assert_error(&r, 403, "forbidden");
    let r = s
        .send(
            s.req(Method::POST, "/v1/admin/rules/test")
                .json(&json!({"rule": "true"})),
        )
        .await;
    assert_error(&r, 401, "unauthenticated");
}

/// `ferrobase rules test FILE` runs cases against the rules in `ferrobase.toml`.
#[tokio::test]
async fn rules_test_files_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ferrobase.toml"),
        r#"
[collections.todos]
rules.get = "auth != null && doc._owner == auth.id"
rules.list = "auth != null && doc._owner == auth.id"
"#,
    )
    .unwrap();
    let passing = r#"
[[case]]
name = "owners read their todos"
collection = "todos"
operation = "get"
auth = { id = "u1" }
doc = { _owner = "u1", title = "milk" }
expect = "allow"

[[case]]
name = "strangers do not"
collection = "todos"
operation = "get"
auth = { id = "u2" }
doc = { _owner = "u1" }
expect = "deny"

[[case]]
name = "anonymous callers do not"
collection = "todos"
operation = "list"
doc = { _owner = "u1" }
expect = "deny"

[[case]]
name = "an inline rule"
rule = "new.title.size() <= 3"
new = { title = "abc" }
expect = "allow"
"#;
    let failing = format!(
        "{passing}\n[[case]]\nname = \"wrong expectation\"\nrule = \"false\"\nexpect = \"allow\"\n"
    );
    let run = |cases: &str| {
        std::fs::write(dir.path().join("cases.toml"), cases).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_ferrobase"))
            .args(["rules", "test", "cases.toml", "--config", "ferrobase.toml"])
            .current_dir(dir.path())
            .env_remove("FERROBASE_DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = run(passing);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 of 4 rule tests passed"), "{stdout}");
    assert!(stdout.contains("strangers do not: ok"), "{stdout}");

    let out = run(&failing);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a failing case fails the command: {stdout}"
    );
    assert!(stdout.contains("wrong expectation: FAIL"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 5 rule tests failed"));

    let out = run("[[case]]\nrule = \"auth.id ==\"\nexpect = \"deny\"\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ERROR"));
}
