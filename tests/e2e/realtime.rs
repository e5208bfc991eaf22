//! Realtime over a real WebSocket: every message type, rules per event, enter/leave,
//! resume without gaps, auth expiry, presence, fan-out, two nodes, slow consumers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{Backend, Options, TestServer, bearer, signup};
use crate::on_both_backends;

on_both_backends!(
    events_for_every_write_in_order,
    rules_decide_per_event_and_per_caller,
    where_and_doc_id_give_enter_and_leave,
    snapshots_obey_the_list_rule,
    resume_replays_the_gap_exactly,
    resume_outside_the_log_is_expired,
    expired_sign_in_suspends_and_resumes,
    channels_presence_and_broadcast,
    fan_out_to_a_thousand_subscribers,
    dead_peer_is_closed_with_4000,
    slow_consumer_is_closed_with_4008,
    hostile_frames_get_errors_and_limits_hold,
    shutdown_closes_sockets_with_1001,
    floods_are_rate_limited_and_connections_have_a_lifetime,
    interleaved_auth_and_subscribe_use_the_identity_in_effect,
);

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A realtime client.
pub struct Ws {
    stream: Stream,
}

const WAIT: Duration = Duration::from_secs(10);

impl Ws {
    pub async fn connect(s: &TestServer) -> Ws {
        let url = format!("{}/v1/realtime", s.url.replace("http://", "ws://"));
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Ws { stream }
    }

    /// Connects and signs in with `token` (expects `authed`).
    pub async fn signed_in(s: &TestServer, token: &str) -> Ws {
        let mut ws = Ws::connect(s).await;
        ws.send(json!({"type": "auth", "token": token})).await;
        let authed = ws.recv().await;
        assert_eq!(authed["type"], "authed", "{authed}");
        ws
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next JSON frame (pings are answered by the library and skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame within the timeout")
                .expect("the connection ended")
                .expect("websocket error");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Close(close) => panic!("closed: {close:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping `pong`s.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], ty, "expected a `{ty}` frame, got {frame}");
        frame
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, frame: Value) -> Value {
        let mut frame = frame;
        frame["type"] = json!("subscribe");
        self.send(frame).await;
        self.expect("subscribed").await
    }

    /// Asserts nothing arrives for `dur` (a ping round trip proves the socket is alive).
    pub async fn silent(&mut self, dur: Duration) {
        tokio::time::sleep(dur).await;
        self.send(json!({"type": "ping"})).await;
        let next = self.recv().await;
        assert_eq!(next["type"], "pong", "expected silence, got {next}");
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("the server did not close the connection"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

fn seq(frame: &Value) -> i64 {
    frame["seq"]
        .as_str()
        .expect("seq is a string")
        .parse()
        .unwrap()
}

async fn public_collection(s: &TestServer, name: &str) {
    s.collection(
        name,
        json!({"rules": {"get": "true", "list": "true", "create": "true", "update": "true", "delete": "true"}}),
    )
    .await;
}

async fn events_for_every_write_in_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    public_collection(&s, "todos").await;
    let mut ws = Ws::connect(&s).await;
    let subscribed = ws
        .subscribe(json!({"id": "s1", "collection": "todos"}))
        .await;
    assert_eq!(subscribed["id"], "s1");
    let start = seq(&subscribed);

    let doc = s.create("todos", json!({"title": "a"})).await;
    let id = doc["_id"].as_str().unwrap();
    let created = ws.expect("event").await;
    assert_eq!(created["id"], "s1");
    assert_eq!(created["op"], "create");
    assert_eq!(created["doc"]["title"], "a");
    assert_eq!(created["doc"]["_id"], id);
    assert!(seq(&created) > start);

    let (status, _) = s
        .svc_json(
            Method::PATCH,
            &format!("/v1/db/todos/{id}"),
            json!({"$set": {"title": "b"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let updated = ws.expect("event").await;
    assert_eq!(updated["op"], "update");
    assert_eq!(updated["doc"]["title"], "b");
    assert_eq!(updated["doc"]["_version"], 2);
    assert!(seq(&updated) > seq(&created));

    let (status, _) = s
        .send(s.svc(Method::DELETE, &format!("/v1/db/todos/{id}")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deleted = ws.expect("event").await;
    assert_eq!(deleted["op"], "delete");
    assert_eq!(deleted["doc"]["_id"], id);
    assert!(seq(&deleted) > seq(&updated));

    // A batch arrives as its operations, in order.
    let (status, body) = s
        .svc_json(
            Method::POST,
            "/v1/db/batch",
            json!({"ops": [
                {"op": "create", "collection": "todos", "id": "x1", "data": {"n": 1}},
                {"op": "create", "collection": "todos", "id": "x2", "data": {"n": 2}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = ws.expect("event").await;
    let second = ws.expect("event").await;
    assert_eq!(
        (first["doc"]["_id"].clone(), second["doc"]["_id"].clone()),
        (json!("x1"), json!("x2"))
    );
    assert!(seq(&second) > seq(&first));

    // Another collection's writes are not this subscription's.
    public_collection(&s, "other").await;
    s.create("other", json!({})).await;

    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;

    ws.send(json!({"type": "unsubscribe", "id": "s1"})).await;
    assert_eq!(ws.expect("unsubscribed").await["id"], "s1");
    s.create("todos", json!({"title": "after"})).await;
    ws.silent(Duration::from_millis(300)).await;
    ws.send(json!({"type": "unsubscribe", "id": "s1"})).await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
}

async fn rules_decide_per_event_and_per_caller(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "notes",
        json!({"rules": {
            "get": "doc.public == true || (auth != null && doc._owner == auth.id)",
            "list": "doc.public == true || (auth != null && doc._owner == auth.id)",
            "create": "auth != null",
            "update": "auth != null && doc._owner == auth.id",
        }}),
    )
    .await;
    s.collection("closed", json!({})).await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    let token = |session: &Value| session["access_token"].as_str().unwrap().to_owned();
    let mut a = Ws::signed_in(&s, &token(&alice)).await;
    let mut b = Ws::signed_in(&s, &token(&bob)).await;
    let mut anon = Ws::connect(&s).await;
    for ws in [&mut a, &mut b, &mut anon] {
        ws.subscribe(json!({"id": "n", "collection": "notes"}))
            .await;
    }

    // A collection without a get rule is closed to clients.
    anon.send(json!({"type": "subscribe", "id": "c", "collection": "closed"}))
        .await;
    let denied = anon.expect("error").await;
    assert_eq!(
        (denied["id"].clone(), denied["code"].clone()),
        (json!("c"), json!("forbidden"))
    );
    anon.send(json!({"type": "subscribe", "id": "c", "collection": "nope"}))
        .await;
    assert_eq!(anon.expect("error").await["code"], "collection_not_found");

    let write = |session: &Value, method: Method, path: &str, body: Value| {
        s.req(method, path)
            .header("authorization", bearer(session))
            .json(&body)
    };
    let (status, doc) = s
        .send(write(
            &alice,
            Method::POST,
            "/v1/db/notes",
            json!({"text": "secret", "public": false}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = doc["_id"].as_str().unwrap().to_owned();
    let mine = a.expect("event").await;
    assert_eq!(
        (mine["op"].clone(), mine["doc"]["text"].clone()),
        (json!("create"), json!("secret"))
    );

    // Published: the others see it enter.
    let path = format!("/v1/db/notes/{id}");
    let (status, _) = s
        .send(write(
            &alice,
            Method::PATCH,
            &path,
            json!({"$set": {"public": true}}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.expect("event").await["op"], "update");
    for ws in [&mut b, &mut anon] {
        let entered = ws.expect("event").await;
        assert_eq!(entered["op"], "enter");
        assert_eq!(entered["doc"]["text"], "secret");
    }

    // Unpublished: they see it leave, with nothing but its id.
    let (status, _) = s
        .send(write(
            &alice,
            Method::PATCH,
            &path,
            json!({"$set": {"public": false, "text": "hidden again"}}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.expect("event").await["op"], "update");
    for ws in [&mut b, &mut anon] {
        let left = ws.expect("event").await;
        assert_eq!(left["op"], "leave");
        assert_eq!(
            left["doc"],
            json!({"_id": id}),
            "a leave must not leak the new version"
        );
    }

    // Private writes of bob reach only bob.
    let (status, _) = s
        .send(write(
            &bob,
            Method::POST,
            "/v1/db/notes",
            json!({"text": "bob's", "public": false}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(b.expect("event").await["doc"]["text"], "bob's");
    a.silent(Duration::from_millis(300)).await;
    anon.silent(Duration::from_millis(10)).await;

    // A rule change applies to the next event, without resubscribing.
    let (status, body) = s
        .svc_json(
            Method::PATCH,
            "/v1/admin/collections/notes",
            json!({"rules": {"get": "true", "list": "true"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s
        .send(write(
            &alice,
            Method::PATCH,
            &path,
            json!({"$set": {"text": "now public by rule"}}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    for ws in [&mut a, &mut b, &mut anon] {
        let event = ws.expect("event").await;
        assert_eq!(event["doc"]["text"], "now public by rule", "{event}");
    }

    // A collection subscription is a live list: without a `list` rule it is refused, and a
    // `list` rule narrower than `get` narrows it; a one-document subscription needs `get`.
    s.collection("getonly", json!({"rules": {"get": "true"}}))
        .await;
    anon.send(json!({"type": "subscribe", "id": "g", "collection": "getonly"}))
        .await;
    assert_eq!(anon.expect("error").await["code"], "forbidden");
    anon.subscribe(json!({"id": "g1", "collection": "getonly", "doc_id": "one"}))
        .await;
    s.create("getonly", json!({"_id": "one"})).await;
    assert_eq!(anon.expect("event").await["id"], "g1");
    s.collection(
        "narrow",
        json!({"rules": {"get": "true", "list": "doc.public == true"}}),
    )
    .await;
    anon.subscribe(json!({"id": "n1", "collection": "narrow"}))
        .await;
    anon.subscribe(json!({"id": "n2", "collection": "narrow", "doc_id": "hidden"}))
        .await;
    s.create("narrow", json!({"_id": "hidden", "public": false}))
        .await;
    assert_eq!(anon.expect("event").await["id"], "n2");
    s.create("narrow", json!({"_id": "shown", "public": true}))
        .await;
    assert_eq!(anon.expect("event").await["id"], "n1");
    anon.silent(Duration::from_millis(200)).await;

    // A failed re-auth leaves the connection anonymous, not signed in as before: alice's
    // signed-in subscription is suspended and hears nothing.
    a.send(json!({"type": "auth", "token": "not.a.token"}))
        .await;
    assert_eq!(a.expect("error").await["code"], "unauthenticated");
    let (status, _) = s
        .send(write(
            &alice,
            Method::POST,
            "/v1/db/notes",
            json!({"text": "after the bad token", "public": false}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        anon.expect("event").await["doc"]["text"],
        "after the bad token"
    );
    a.silent(Duration::from_millis(300)).await;
}

async fn where_and_doc_id_give_enter_and_leave(backend: Backend) {
    let s = TestServer::start(backend).await;
    public_collection(&s, "tasks").await;
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(
        json!({"id": "open", "collection": "tasks", "where": {"status": "open", "n": {"$gte": 2}}}),
    )
    .await;
    ws.subscribe(json!({"id": "one", "collection": "tasks", "doc_id": "t1"}))
        .await;

    s.create("tasks", json!({"_id": "t1", "status": "closed", "n": 5}))
        .await;
    let only = ws.expect("event").await;
    assert_eq!(
        (only["id"].clone(), only["op"].clone()),
        (json!("one"), json!("create"))
    );

    let set =
        |fields: Value| s.svc_json(Method::PATCH, "/v1/db/tasks/t1", json!({ "$set": fields }));
    assert_eq!(set(json!({"status": "open"})).await.0, StatusCode::OK);
    let mut frames = [ws.expect("event").await, ws.expect("event").await];
    frames.sort_by_key(|f| f["id"].as_str().unwrap().to_owned());
    assert_eq!(frames[0]["id"], "one");
    assert_eq!(frames[0]["op"], "update");
    assert_eq!(frames[1]["id"], "open");
    assert_eq!(frames[1]["op"], "enter");
    assert_eq!(seq(&frames[0]), seq(&frames[1]), "one change, one seq");

    // Type-strict, like SQL: "2" is not a number >= 2.
    assert_eq!(set(json!({"n": "9"})).await.0, StatusCode::OK);
    let mut frames = [ws.expect("event").await, ws.expect("event").await];
    frames.sort_by_key(|f| f["id"].as_str().unwrap().to_owned());
    assert_eq!(frames[1]["op"], "leave");
    assert_eq!(
        frames[1]["doc"]["n"], "9",
        "still readable: the leave carries the new version"
    );

    // Neither subscription sees t2 created outside the filter.
    s.create("tasks", json!({"_id": "t2", "status": "closed", "n": 5}))
        .await;
    ws.silent(Duration::from_millis(300)).await;
}

async fn snapshots_obey_the_list_rule(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "posts",
        json!({"rules": {"get": "doc.published == true", "list": "doc.published == true"}}),
    )
    .await;
    for (i, published) in [true, false, true, true].into_iter().enumerate() {
        s.create(
            "posts",
            json!({"_id": format!("p{i}"), "published": published, "i": i}),
        )
        .await;
    }
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(
        json!({"id": "s", "collection": "posts", "snapshot": true, "where": {"i": {"$lt": 3}}}),
    )
    .await;
    let snapshot = ws.expect("snapshot").await;
    let mut ids: Vec<&str> = snapshot["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p0", "p2"]);
    ws.subscribe(json!({"id": "one", "collection": "posts", "snapshot": true, "doc_id": "p1"}))
        .await;
    assert_eq!(ws.expect("snapshot").await["items"], json!([]));
    // Live events follow the snapshot.
    s.create("posts", json!({"_id": "p9", "published": true, "i": 0}))
        .await;
    assert_eq!(ws.expect("event").await["doc"]["_id"], "p9");
}

async fn resume_replays_the_gap_exactly(backend: Backend) {
    let s = TestServer::start(backend).await;
    public_collection(&s, "log").await;
    public_collection(&s, "noise").await;
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(json!({"id": "s", "collection": "log", "where": {"keep": true}}))
        .await;
    s.create("log", json!({"_id": "a0", "keep": true})).await;
    let last_seen = seq(&ws.expect("event").await);
    ws.close().await;

    // While away: matching and non-matching writes, other collections, an update, a delete.
    for i in 1..=5 {
        s.create("log", json!({"_id": format!("a{i}"), "keep": i % 2 == 1}))
            .await;
        s.create("noise", json!({"i": i})).await;
    }
    s.svc_json(
        Method::PATCH,
        "/v1/db/log/a2",
        json!({"$set": {"keep": true}}),
    )
    .await;
    s.send(s.svc(Method::DELETE, "/v1/db/log/a1")).await;

    let mut ws = Ws::connect(&s).await;
    ws.subscribe(json!({"id": "s", "collection": "log", "where": {"keep": true}, "resume_from": last_seen.to_string()}))
        .await;
    // Five changes matched while away. (Not "until the `subscribed` seq": on Postgres that
    // is the node's change-feed position, which may trail a commit acknowledged a moment
    // ago; such a change then follows live, which is no gap.)
    let mut replayed = Vec::new();
    for _ in 0..5 {
        let event = ws.expect("event").await;
        replayed.push((
            event["op"].as_str().unwrap().to_owned(),
            event["doc"]["_id"].as_str().unwrap().to_owned(),
            seq(&event),
        ));
    }
    let ops: Vec<(&str, &str)> = replayed
        .iter()
        .map(|(o, d, _)| (o.as_str(), d.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("create", "a1"),
            ("create", "a3"),
            ("create", "a5"),
            ("enter", "a2"),
            ("delete", "a1")
        ]
    );
    assert!(
        replayed.windows(2).all(|w| w[0].2 < w[1].2),
        "seq order: {replayed:?}"
    );
    assert!(replayed[0].2 > last_seen, "no duplicate of what was seen");

    // Then live, with no duplicate of the replay.
    s.create("log", json!({"_id": "a6", "keep": true})).await;
    let live = ws.expect("event").await;
    assert_eq!(live["doc"]["_id"], "a6");
    assert!(seq(&live) > replayed.last().unwrap().2);

    // Writes racing with a long replay are neither lost, nor doubled, nor reordered.
    for chunk in 0..3 {
        let ops: Vec<Value> = (0..500)
            .map(|i| json!({"op": "create", "collection": "log", "id": format!("b{chunk}-{i}"), "data": {"keep": true}}))
            .collect();
        let (status, body) = s
            .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut ws2 = Ws::connect(&s).await;
    let writer = {
        let url = s.url.clone();
        let client = s.client.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let response = client
                    .post(format!("{url}/v1/db/log"))
                    .bearer_auth(crate::helpers::SERVICE_KEY)
                    .json(&json!({"_id": format!("r{i}"), "keep": true}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        })
    };
    ws2.subscribe(
        json!({"id": "s", "collection": "log", "where": {"keep": true}, "resume_from": last_seen}),
    )
    .await;
    writer.await.unwrap();
    let mut seen = Vec::new();
    let mut last = last_seen;
    while !seen.contains(&"r39".to_owned()) {
        let event = ws2.expect("event").await;
        assert!(
            seq(&event) > last,
            "out of order: {} after {last}",
            seq(&event)
        );
        last = seq(&event);
        seen.push(event["doc"]["_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.iter().filter(|id| id.starts_with('b')).count(), 1500);
    let races: Vec<&String> = seen.iter().filter(|id| id.starts_with('r')).collect();
    let expected: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    assert_eq!(
        races,
        expected.iter().collect::<Vec<_>>(),
        "every racing write once, in order"
    );
    ws2.silent(Duration::from_millis(200)).await;
}

async fn resume_outside_the_log_is_expired(backend: Backend) {
    let s = Options::new(backend)
        .config("[changes]\nretention = \"1s\"\nprune_interval = \"100ms\"\n")
        .start()
        .await;
    public_collection(&s, "old").await;
    s.create("old", json!({"n": 1})).await;
    s.create("old", json!({"n": 2})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.create("old", json!({"n": 3})).await;
    let mut ws = Ws::connect(&s).await;
    crate::helpers::eventually(Duration::from_secs(10), || async {
        let (_, changes) = s.svc_get("/v1/admin/changes?after=0").await;
        let items = changes["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 1).then_some(())
    })
    .await;
    ws.send(json!({"type": "subscribe", "id": "s", "collection": "old", "resume_from": 0}))
        .await;
    let expired = ws.expect("error").await;
    assert_eq!(
        (expired["id"].clone(), expired["code"].clone()),
        (json!("s"), json!("resume_expired"))
    );
    // A seq from the future (another database) is expired too.
    ws.send(
        json!({"type": "subscribe", "id": "s", "collection": "old", "resume_from": "999999999"}),
    )
    .await;
    assert_eq!(ws.expect("error").await["code"], "resume_expired");
    // The id is free again after a refused subscription.
    ws.subscribe(json!({"id": "s", "collection": "old"})).await;
}

async fn expired_sign_in_suspends_and_resumes(backend: Backend) {
    let s = Options::new(backend)
        .config("[auth]\naccess_token_ttl = \"2s\"\n")
        .start()
        .await;
    s.collection(
        "mine",
        json!({"rules": {
            "get": "auth != null && doc._owner == auth.id",
            "list": "auth != null && doc._owner == auth.id",
            "create": "auth != null",
        }}),
    )
    .await;
    let session = signup(&s, "expiring@example.com").await;
    let mut ws = Ws::signed_in(&s, session["access_token"].as_str().unwrap()).await;
    ws.subscribe(json!({"id": "m", "collection": "mine"})).await;
    let expired = ws.expect("error").await;
    assert_eq!(expired["code"], "auth_expired", "{expired}");

    // A fresh token from the refresh token; meanwhile a write happens.
    let (status, refreshed) = s
        .send(
            s.req(Method::POST, "/v1/auth/refresh")
                .json(&json!({"refresh_token": session["refresh_token"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let (status, doc) = s
        .send(
            s.req(Method::POST, "/v1/db/mine")
                .header("authorization", bearer(&refreshed))
                .json(&json!({"during": "suspension"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    ws.silent(Duration::from_millis(200)).await;

    // An expired token is refused as such.
    ws.send(json!({"type": "auth", "token": session["access_token"]}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "auth_expired");
    ws.send(json!({"type": "auth", "token": "not.a.token"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "unauthenticated");

    ws.send(json!({"type": "auth", "token": refreshed["access_token"]}))
        .await;
    ws.expect("authed").await;
    assert_eq!(ws.expect("subscribed").await["id"], "m");
    let missed = ws.expect("event").await;
    assert_eq!(
        missed["doc"]["during"], "suspension",
        "the suspended gap is replayed"
    );
}

async fn channels_presence_and_broadcast(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime.channels.rules]\njoin = \"auth != null\"\nbroadcast = \"!channel.name.startsWith('quiet:')\"\n")
        .start()
        .await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    let mut a = Ws::signed_in(&s, alice["access_token"].as_str().unwrap()).await;
    let mut b = Ws::signed_in(&s, bob["access_token"].as_str().unwrap()).await;
    let mut anon = Ws::connect(&s).await;

    anon.send(json!({"type": "join", "channel": "room:1"}))
        .await;
    let denied = anon.expect("error").await;
    assert_eq!(
        (denied["id"].clone(), denied["code"].clone()),
        (json!("room:1"), json!("forbidden"))
    );

    a.send(json!({"type": "join", "channel": "room:1", "presence": {"name": "alice"}}))
        .await;
    let state = a.expect("presence").await;
    assert_eq!(state["joins"].as_array().unwrap().len(), 1);
    assert_eq!(state["joins"][0]["presence"]["name"], "alice");
    assert_eq!(state["joins"][0]["user_id"], alice["user"]["id"]);

    b.send(json!({"type": "join", "channel": "room:1", "presence": {"name": "bob"}}))
        .await;
    let state = b.expect("presence").await;
    assert_eq!(state["joins"].as_array().unwrap().len(), 2, "{state}");
    let joined = a.expect("presence").await;
    assert_eq!(joined["joins"][0]["presence"]["name"], "bob");
    let bob_key = joined["joins"][0]["key"].clone();

    b.send(json!({"type": "broadcast", "channel": "room:1", "payload": {"cursor": [1, 2]}}))
        .await;
    let message = a.expect("broadcast").await;
    assert_eq!(message["payload"]["cursor"], json!([1, 2]));
    assert_eq!(message["from"]["presence"]["name"], "bob");
    b.silent(Duration::from_millis(200)).await; // not echoed to the sender

    anon.send(json!({"type": "broadcast", "channel": "room:1", "payload": 1}))
        .await;
    assert_eq!(anon.expect("error").await["code"], "not_joined");
    a.send(json!({"type": "join", "channel": "quiet:1"})).await;
    a.expect("presence").await;
    a.send(json!({"type": "broadcast", "channel": "quiet:1", "payload": 1}))
        .await;
    assert_eq!(a.expect("error").await["code"], "forbidden");
    let big = "x".repeat(7000);
    a.send(json!({"type": "broadcast", "channel": "room:1", "payload": big}))
        .await;
    assert_eq!(a.expect("error").await["code"], "payload_too_large");

    // A disconnect is a leave.
    b.close().await;
    let left = a.expect("presence").await;
    assert_eq!(left["leaves"][0]["key"], bob_key);
    a.send(json!({"type": "leave", "channel": "room:1"})).await;
    a.send(json!({"type": "leave", "channel": "room:1"})).await;
    assert_eq!(a.expect("error").await["code"], "not_joined");
}

async fn fan_out_to_a_thousand_subscribers(backend: Backend) {
    // Every test client is 127.0.0.1: lift the per-address cap above the 1 000 sockets.
    let s = Options::new(backend)
        .config("[realtime]\nmax_connections_per_ip = 5000\n")
        .start()
        .await;
    public_collection(&s, "feed").await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let mut ws = Ws::connect(&s).await;
        ws.subscribe(json!({"id": "s", "collection": "feed"})).await;
        clients.push(ws);
    }
    for n in 0..3 {
        s.create("feed", json!({"n": n})).await;
    }
    let mut delivered = 0;
    for ws in &mut clients {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = ws.expect("event").await;
            seen.push(event["doc"]["n"].as_i64().unwrap());
            delivered += 1;
        }
        assert_eq!(seen, [0, 1, 2]);
    }
    assert_eq!(delivered, 3000);
}

async fn dead_peer_is_closed_with_4000(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime]\nping_interval = \"200ms\"\n")
        .start()
        .await;
    public_collection(&s, "c").await;
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(json!({"id": "s", "collection": "c"})).await;
    // The client stops reading, so it answers no pings.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The server closes with 4000; the client may see the close frame or, having tried to
    // answer the queued pings on a socket the server already shut, a reset.
    let code = ws.close_code().await;
    assert!(matches!(code, Some(4000) | None), "{code:?}");
    let (_, metrics) = s.raw("GET /metrics HTTP/1.1\r\n").await;
    assert!(
        metrics.contains("ferrobase_realtime_connections 0"),
        "the server still counts the dead connection"
    );
    // A client that keeps reading (and so answers pings) stays connected.
    let mut alive = Ws::connect(&s).await;
    for _ in 0..8 {
        alive.send(json!({"type": "ping"})).await;
        alive.expect("pong").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn slow_consumer_is_closed_with_4008(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime]\nsend_queue = 8\n")
        .start()
        .await;
    public_collection(&s, "big").await;
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(json!({"id": "s", "collection": "big"})).await;
    // The client stops reading; each event is ~200 KB, so socket buffers fill, then the queue.
    let blob = "y".repeat(200_000);
    for _ in 0..80 {
        s.create("big", json!({"blob": blob})).await;
    }
    assert_eq!(ws.close_code().await, Some(4008));
    // The server is fine and a new connection works.
    let mut again = Ws::connect(&s).await;
    again.send(json!({"type": "ping"})).await;
    again.expect("pong").await;
}

async fn hostile_frames_get_errors_and_limits_hold(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime]\nmax_subscriptions = 3\nmax_frame = 4096\n")
        .start()
        .await;
    public_collection(&s, "c").await;
    let mut ws = Ws::connect(&s).await;
    for bad in [
        "not json",
        "[]",
        r#"{"type":"nope"}"#,
        r#"{"type":"subscribe","id":"x"}"#,
        r#"{"type":"subscribe","id":"x","collection":"c","where":{"$bogus":1}}"#,
        r#"{"type":"subscribe","id":"x","collection":"c","where":{"a.$b":1}}"#,
        r#"{"type":"subscribe","id":"x","collection":"c","doc_id":"../etc"}"#,
        r#"{"type":"subscribe","id":"","collection":"c"}"#,
        r#"{"type":"subscribe","id":"x","collection":"c","resume_from":"abc"}"#,
        r#"{"type":"join","channel":""}"#,
    ] {
        ws.send_text(bad).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], "bad_request", "{bad}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.stream
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(ws.expect("error").await["code"], "bad_request");
    for i in 0..3 {
        ws.subscribe(json!({"id": format!("s{i}"), "collection": "c"}))
            .await;
    }
    ws.send(json!({"type": "subscribe", "id": "s0", "collection": "c"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "conflict");
    ws.send(json!({"type": "subscribe", "id": "s9", "collection": "c"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "too_many_subscriptions");
    // Still alive and subscribed.
    s.create("c", json!({})).await;
    for _ in 0..3 {
        ws.expect("event").await;
    }
    // A frame over max_frame closes the connection with 1009; the server lives on.
    ws.send_text(&format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "z".repeat(8000)
    ))
    .await;
    assert_eq!(ws.close_code().await, Some(1009));
    // A non-WebSocket request is a clear error.
    let (status, body) = s.send(s.req(Method::GET, "/v1/realtime")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    s.assert_healthy().await;
}

async fn shutdown_closes_sockets_with_1001(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    public_collection(&s, "c").await;
    let mut ws = Ws::connect(&s).await;
    ws.subscribe(json!({"id": "s", "collection": "c"})).await;
    let (code, exited) = tokio::join!(ws.close_code(), s.terminate());
    assert_eq!(code, Some(u16::from(CloseCode::Away)));
    assert!(exited, "the server did not exit cleanly");
}

/// Two server processes on one Postgres database: changes, presence and broadcasts cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_events_presence_and_broadcasts() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let a = Options::new(backend)
        .config("[realtime]\nnode_heartbeat = \"200ms\"\n")
        .start()
        .await;
    public_collection(&a, "shared").await;
    let b = a.another_node().await;
    let mut on_b = Ws::connect(&b).await;
    on_b.subscribe(json!({"id": "s", "collection": "shared"}))
        .await;
    a.create("shared", json!({"from": "a"})).await;
    let event = on_b.expect("event").await;
    assert_eq!(event["doc"]["from"], "a");

    let user = signup(&a, "crossing@example.com").await;
    let token = user["access_token"].as_str().unwrap();
    let mut ua = Ws::signed_in(&a, token).await;
    let mut ub = Ws::signed_in(&b, token).await;
    ua.send(json!({"type": "join", "channel": "lobby", "presence": {"node": "a"}}))
        .await;
    ua.expect("presence").await;
    // Node B learns of A's member through the relay before B's client joins.
    let mut joined_with = Value::Null;
    for _ in 0..50 {
        ub.send(json!({"type": "join", "channel": "lobby", "presence": {"node": "b"}}))
            .await;
        let state = ub.expect("presence").await;
        if state["joins"].as_array().unwrap().len() == 2 {
            joined_with = state;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        joined_with["joins"].as_array().map(Vec::len),
        Some(2),
        "{joined_with}"
    );
    let seen_on_a = ua.expect("presence").await;
    assert_eq!(seen_on_a["joins"][0]["presence"]["node"], "b");

    ub.send(json!({"type": "broadcast", "channel": "lobby", "payload": "hi from b"}))
        .await;
    let message = ua.expect("broadcast").await;
    assert_eq!(message["payload"], "hi from b");

    ub.close().await;
    let left = ua.expect("presence").await;
    assert_eq!(left["leaves"][0]["presence"]["node"], "b");
}

/// One address may hold at most `realtime.max_connections_per_ip` sockets; a closed one
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let s = Options::new(Backend::Sqlite)
        .config("[realtime]\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let first = Ws::connect(&s).await;
    let _second = Ws::connect(&s).await;
    let url = format!("{}/v1/realtime", s.url.replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
        }
        other => panic!("a third connection was accepted: {:?}", other.map(|_| ())),
    }
    first.close().await;
    crate::helpers::eventually(Duration::from_secs(5), || {
        let url = url.clone();
        async move { tokio_tungstenite::connect_async(url).await.ok().map(|_| ()) }
    })
    .await;
}

/// HOSTILE RT-06: a client sending faster than `max_messages_per_second` gets `rate_limited`
/// errors, one that keeps flooding is closed with 1008, and every connection ends at
/// `max_connection_lifetime` with 4009.
async fn floods_are_rate_limited_and_connections_have_a_lifetime(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime]\nmax_messages_per_second = 20\n")
        .start()
        .await;
    public_collection(&s, "c").await;
    // A burst of twice the rate passes, the frames after it are refused (and dropped).
    let mut ws = Ws::connect(&s).await;
    for _ in 0..50 {
        ws.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..50 {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if frame["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(
        (40..=45).contains(&pongs),
        "{pongs} pongs, {limited} refused"
    );
    assert_eq!(pongs + limited, 50);
    // After a pause the client may send again; its subscriptions work as before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws.subscribe(json!({"id": "s", "collection": "c"})).await;
    s.create("c", json!({"n": 1})).await;
    assert_eq!(ws.expect("event").await["doc"]["n"], 1);

    // 10 000 subscribe/unsubscribe frames as fast as the socket takes them: closed with 1008.
    let mut flood = Ws::connect(&s).await;
    for i in 0..10_000 {
        let frame = if i % 2 == 0 {
            json!({"type": "subscribe", "id": "f", "collection": "c"})
        } else {
            json!({"type": "unsubscribe", "id": "f"})
        };
        if flood
            .stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flood.close_code().await, Some(1008));
    // The well-behaved connection is unaffected.
    s.create("c", json!({"n": 2})).await;
    assert_eq!(ws.expect("event").await["doc"]["n"], 2);
    s.assert_healthy().await;

    // Lifetime: closed with 4009 once it is reached, however busy the connection is.
    let s = Options::new(backend)
        .config("[realtime]\nmax_connection_lifetime = \"1s\"\n")
        .start()
        .await;
    let started = std::time::Instant::now();
    let mut ws = Ws::connect(&s).await;
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    assert_eq!(ws.close_code().await, Some(4009));
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
}

/// HOSTILE RT-06: at most `max_connections_per_user` sockets signed in as one user; the
/// extra sign-in is refused and the socket stays anonymous; a slot frees on sign-out or
/// close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped() {
    let s = Options::new(Backend::Sqlite)
        .config("[realtime]\nmax_connections_per_user = 2\n")
        .start()
        .await;
    let session = crate::helpers::signup(&s, "many@example.com").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let mut first = Ws::signed_in(&s, &token).await;
    let second = Ws::signed_in(&s, &token).await;
    let mut third = Ws::connect(&s).await;
    third.send(json!({"type": "auth", "token": token})).await;
    let refused = third.expect("error").await;
    assert_eq!(refused["code"], "too_many_connections", "{refused}");
    // Still connected, as anonymous.
    third.send(json!({"type": "ping"})).await;
    third.expect("pong").await;
    // Re-authenticating an already signed-in socket as the same user takes no new slot.
    first.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(
        first.expect("authed").await["user_id"],
        session["user"]["id"]
    );
    // Signing out frees a slot; so does closing.
    first.send(json!({"type": "auth", "token": ""})).await;
    first.expect("authed").await;
    third.send(json!({"type": "auth", "token": token})).await;
    third.expect("authed").await;
    let mut fourth = Ws::connect(&s).await;
    fourth.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(fourth.expect("error").await["code"], "too_many_connections");
    second.close().await;
    crate::helpers::eventually(Duration::from_secs(5), || {
        let s = &s;
        let token = token.clone();
        async move {
            let mut ws = Ws::connect(s).await;
            ws.send(json!({"type": "auth", "token": token})).await;
            let frame = ws.recv().await;
            (frame["type"] == "authed").then_some(())
        }
    })
    .await;
    s.assert_healthy().await;
}

/// RT-03: 100 `auth` and `subscribe` frames fired without waiting, alternating two users:
/// each subscription is checked against the identity in effect when it was processed, and
/// afterwards every subscription hears events as the connection's current identity.
async fn interleaved_auth_and_subscribe_use_the_identity_in_effect(backend: Backend) {
    let s = Options::new(backend)
        .config("[realtime]\nmax_messages_per_second = 1000\n")
        .start()
        .await;
    let alice = signup(&s, "alice@example.com").await;
    let bob = signup(&s, "bob@example.com").await;
    let a_id = alice["user"]["id"].as_str().unwrap().to_owned();
    let only_alice = format!("auth != null && auth.id == '{a_id}'");
    s.collection(
        "diary",
        json!({"rules": {"get": only_alice, "list": only_alice, "create": "auth != null"}}),
    )
    .await;
    let mut ws = Ws::connect(&s).await;
    for i in 0..25 {
        ws.send(json!({"type": "auth", "token": alice["access_token"]}))
            .await;
        ws.send(json!({"type": "subscribe", "id": format!("a{i}"), "collection": "diary"}))
            .await;
        ws.send(json!({"type": "auth", "token": bob["access_token"]}))
            .await;
        ws.send(json!({"type": "subscribe", "id": format!("b{i}"), "collection": "diary"}))
            .await;
    }
    for i in 0..25 {
        ws.expect("authed").await;
        assert_eq!(ws.expect("subscribed").await["id"], format!("a{i}"));
        ws.expect("authed").await;
        let denied = ws.expect("error").await;
        assert_eq!(
            (denied["id"].clone(), denied["code"].clone()),
            (json!(format!("b{i}")), json!("forbidden")),
            "{denied}"
        );
    }
    // Signed in as bob now: alice's subscriptions hear nothing of her diary.
    let write = || {
        s.req(Method::POST, "/v1/db/diary")
            .header("authorization", bearer(&alice))
            .json(&json!({"text": "dear diary"}))
    };
    assert_eq!(s.send(write()).await.0, StatusCode::CREATED);
    ws.silent(Duration::from_millis(300)).await;
    // As alice again, each of the 25 subscriptions hears the next entry.
    ws.send(json!({"type": "auth", "token": alice["access_token"]}))
        .await;
    ws.expect("authed").await;
    assert_eq!(s.send(write()).await.0, StatusCode::CREATED);
    let mut heard = std::collections::BTreeSet::new();
    for _ in 0..25 {
        let event = ws.expect("event").await;
        heard.insert(event["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(heard.len(), 25);
    ws.silent(Duration::from_millis(200)).await;
    s.assert_healthy().await;
}
