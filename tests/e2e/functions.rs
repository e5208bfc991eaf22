//! Cloud code over a real socket: callable functions, before/after triggers, the durable
//! queue (retries, dead letters, replay), cron, versions and gray release, logs, the
//! sandbox and resource bombs (HOSTILE FN-01…FN-09), hot reload, two nodes.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestServer, assert_error, eventually, metric};
use crate::on_both_backends;

on_both_backends!(
    callable_functions_answer_and_fail_cleanly,
    results_read_as_json_stringify_writes_them,
    triggers_fire_once_with_the_right_payload,
    async_invocations_retry_then_dead_letter_and_replay,
    cron_ticks_and_never_overlaps,
    versions_split_traffic_stickily_and_roll_back,
    storage_from_functions_keeps_the_bucket_rules,
    object_and_auth_triggers_fire_with_their_payload,
    writes_nobody_listens_to_cost_one_commit,
    after_triggers_apply_from_the_version_that_brings_them,
);

const APP: &str = r#"
import { fb } from "ferrobase";
import { shout } from "./lib/util.js";

fb.call("hello", (req, ctx) => ({ hello: req.data && req.data.name, auth: ctx.auth, shout: shout("x") }));
fb.call("boom", () => { throw new Error("secret detail /etc/x"); });
fb.call("teapot", () => { throw fb.error(418, "short and stout"); });
fb.call("env", (req, ctx) => ctx.env);
fb.call("other", (req, ctx) => ctx.env);
fb.call("sandbox", async () => ({
  types: [typeof require, typeof process, typeof std, typeof os, typeof Deno, typeof Bun, typeof fetch],
  globals: Object.keys(globalThis).sort(),
  imports: await Promise.all(["os", "std", "/etc/passwd", "./../x.js", "node:fs"].map((m) =>
    import(m).then(() => "loaded", (e) => "refused"))),
}));
fb.call("pollute", () => {
  const tries = [];
  for (const f of [
    () => { Object.prototype.isAdmin = true; },
    () => { JSON.parse = () => ({ admin: true }); },
    () => { globalThis.x = 1; },
    () => { Array.prototype.push = null; },
  ]) { try { f(); tries.push("changed"); } catch (e) { tries.push(e.name); } }
  class MyError extends Error { constructor(m) { super(m); this.name = "MyError"; } }
  const o = {}; o.toString = () => "mine";
  return { tries, custom: new MyError("m").name, own: String(o) };
});
fb.call("shape", (req) => ({
  keys: Object.keys(req.data),
  plain: [req.data, req.data.list[0]].map((o) => Object.getPrototypeOf(o) === Object.prototype),
  inherited: [req.data.isAdmin, req.data.list[0].isAdmin, ({}).isAdmin].map((v) => typeof v),
  types: [req.data.big, req.data.f, req.data.neg, req.data.s, req.data.t, req.data.list].map((v) => typeof v),
  array: Array.isArray(req.data.list),
  echo: req.data,
}));
fb.call("pristine", () => ({ isAdmin: ({}).isAdmin === undefined, parse: JSON.parse("1"), x: typeof x }));
fb.call("leftover", () => { Promise.resolve().then(() => { console.log("late job ran"); }); Promise.reject(new Error("nobody")); return 1; });
fb.call("asCaller", async (req, ctx) => ctx.db.collection("private").doc(req.data.id).get());
fb.call("asAdmin", async (req, ctx) => ctx.admin.db.collection("private").doc(req.data.id).get());
fb.call("query", async (req, ctx) => (await ctx.admin.db.collection("private").where({ n: { $gte: 1 } }).sort("n").limit(2).get()).items.map((d) => d.n));
fb.call("bridge", async (req, ctx) => {
  const db = ctx.admin.db.collection("private");
  const cyclic = {}; cyclic.self = cyclic;
  const throwing = new Proxy({}, { get() { throw new Error("trap"); }, ownKeys() { throw new Error("trap"); } });
  const getter = { get bad() { throw new Error("getter"); } };
  const out = [];
  for (const arg of [cyclic, throwing, getter, { ["__proto__"]: 1 }, { [Symbol("s")]: 1 }, 10n, NaN, -0, undefined, "x".repeat(9 << 20)]) {
    try { await db.add(arg); out.push("ok"); } catch (e) { out.push(e.name); }
  }
  return out;
});
"#;

const UTIL: &str = r#"export const shout = (s) => s.toUpperCase() + "!";"#;

async fn call(s: &TestServer, name: &str, body: Value) -> (StatusCode, Value) {
    s.send(
        s.req(Method::POST, &format!("/v1/functions/{name}"))
            .json(&body),
    )
    .await
}

async fn logs(s: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = s
        .svc_get(&format!("/v1/admin/functions/logs?{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

async fn callable_functions_answer_and_fail_cleanly(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", APP)
        .function_file("lib/util.js", UTIL)
        .config(
            r#"
[functions.env]
SHARED = "everyone"
[functions.handlers.env.env]
SECRET = "only-env"
"#,
        )
        .start()
        .await;
    // Result, request data, the verified caller (never a body field called `auth`).
    let session = crate::helpers::signup(&s, "fn@example.com").await;
    let (status, body) = s
        .send(
            s.req(Method::POST, "/v1/functions/hello")
                .header("authorization", crate::helpers::bearer(&session))
                .header("x-user-id", "someone-else")
                .json(&json!({"name": "bob", "auth": {"id": "forged"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["hello"], "bob");
    assert_eq!(body["result"]["shout"], "X!");
    assert_eq!(body["result"]["auth"]["id"], session["user"]["id"]);
    let (_, anon) = call(&s, "hello", json!({})).await;
    assert_eq!(anon["result"]["auth"], Value::Null);
    // Each invocation is counted by name and outcome, and timed.
    let metrics = s.metrics().await;
    for (series, expected) in [
        (
            r#"ferrobase_function_invocations_total{function="hello",outcome="ok"}"#,
            2,
        ),
        (
            r#"ferrobase_function_duration_seconds_count{function="hello"}"#,
            2,
        ),
        (
            r#"ferrobase_function_invocations_total{function="boom",outcome="error"}"#,
            0,
        ),
    ] {
        assert_eq!(metric(&metrics, series), expected, "{series}\n{metrics}");
    }
    let starts = metric(&metrics, r#"ferrobase_function_starts_total{start="warm"}"#)
        + metric(&metrics, r#"ferrobase_function_starts_total{start="cold"}"#);
    assert!(starts >= 2, "{metrics}");

    // fb.error keeps its status and message; any other throw is a generic 500.
    assert_error(&call(&s, "teapot", json!({})).await, 418, "function_error");
    let boom = call(&s, "boom", json!({})).await;
    assert_error(&boom, 500, "function_error");
    let text = boom.1.to_string();
    assert!(!text.contains("secret") && !text.contains("/etc"), "{text}");
    let metrics = s.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"ferrobase_function_invocations_total{function="boom",outcome="error"}"#
        ),
        1,
        "{metrics}"
    );
    let lines = eventually(Duration::from_secs(5), || async {
        let l = logs(&s, "function=boom").await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("secret detail")
    );
    assert_eq!(lines[0]["level"], "error");

    // Names that are not registered functions, prototype tricks included (FN-09).
    for name in [
        "constructor",
        "__proto__",
        "toString",
        "hasOwnProperty",
        "valueOf",
        "a.b",
        "%2e%2e",
        "nope",
    ] {
        let r = call(&s, name, json!({})).await;
        assert_eq!(r.0, StatusCode::NOT_FOUND, "{name}: {}", r.1);
    }

    // Secrets: shared ones everywhere, a handler's own only there (FN-06).
    let (_, env) = call(&s, "env", json!({})).await;
    assert_eq!(
        env["result"],
        json!({"SHARED": "everyone", "SECRET": "only-env"})
    );
    let (_, other) = call(&s, "other", json!({})).await;
    assert_eq!(other["result"], json!({"SHARED": "everyone"}));

    // No ambient authority (FN-05).
    let (status, sandbox) = call(&s, "sandbox", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{sandbox}");
    assert_eq!(sandbox["result"]["types"], json!(vec!["undefined"; 7]));
    assert_eq!(sandbox["result"]["imports"], json!(vec!["refused"; 5]));
    let allowed = ["console", "performance"];
    for key in sandbox["result"]["globals"].as_array().unwrap() {
        assert!(
            allowed.contains(&key.as_str().unwrap()),
            "unexpected global {key}"
        );
    }

    // Frozen intrinsics: nothing carries over to the next caller (FN-08), while ordinary
    // code that shadows inherited properties still works.
    let (_, polluted) = call(&s, "pollute", json!({})).await;
    assert_eq!(
        polluted["result"]["tries"],
        json!(vec!["TypeError"; 4]),
        "{polluted}"
    );
    assert_eq!(polluted["result"]["custom"], "MyError");
    assert_eq!(polluted["result"]["own"], "mine");
    // Arguments arrive as `JSON.parse` would make them: a `__proto__` key is an own key,
    // never a prototype (they are built natively, without the text).
    let data = json!({"__proto__": {"isAdmin": true}, "list": [{"__proto__": {"isAdmin": 1}}, null],
        "big": 9_007_199_254_740_993_u64, "f": 1.5, "neg": -3, "s": "é\u{0}\u{1F600}", "t": true});
    let (status, shape) = call(&s, "shape", data.clone()).await;
    assert_eq!(status, StatusCode::OK, "{shape}");
    let mut echoed = data.clone();
    echoed["big"] = json!(9_007_199_254_740_992_u64);
    assert_eq!(
        shape["result"],
        json!({
            "keys": ["__proto__", "big", "f", "list", "neg", "s", "t"],
            "plain": [true, true],
            "inherited": ["undefined", "undefined", "undefined"],
            "types": ["number", "number", "number", "string", "boolean", "object"],
            "array": true,
            "echo": echoed,
        })
    );
    let (_, pristine) = call(&s, "pristine", json!({})).await;
    assert_eq!(
        pristine["result"],
        json!({"isAdmin": true, "parse": 1, "x": "undefined"})
    );
    // Leftover jobs run within their own invocation; unhandled rejections are logged.
    let (_, left) = call(&s, "leftover", json!({})).await;
    assert_eq!(left["result"], 1);
    let lines = eventually(Duration::from_secs(5), || async {
        let l = logs(&s, "function=leftover").await;
        (l.len() >= 2).then_some(l)
    })
    .await;
    let text: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(text.iter().any(|t| t.contains("late job ran")), "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.contains("unhandled promise rejection")),
        "{text:?}"
    );

    // ctx.db runs as the caller (rules apply); ctx.admin.db bypasses them (FN-06).
    s.collection("private", json!({"rules": {"get": "auth != null && doc._owner == auth.id", "create": "auth != null"}}))
        .await;
    let doc = s.create("private", json!({"n": 1})).await;
    s.create("private", json!({"n": 2})).await;
    s.create("private", json!({"n": 3})).await;
    let id = doc["_id"].as_str().unwrap();
    let (_, denied) = call(&s, "asCaller", json!({"id": id})).await;
    assert_eq!(denied["result"], Value::Null, "{denied}");
    let (_, read) = call(&s, "asAdmin", json!({"id": id})).await;
    assert_eq!(read["result"]["n"], 1);
    let (_, page) = call(&s, "query", json!({})).await;
    assert_eq!(page["result"], json!([1, 2]));

    // Hostile arguments to host functions become JS exceptions (FN-07).
    let (status, bridge) = call(&s, "bridge", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{bridge}");
    // Each is refused with a JS error; a Symbol key is dropped by JSON (an empty document).
    assert_eq!(
        bridge["result"],
        json!([
            "TypeError",
            "TypeError",
            "TypeError",
            "FunctionError",
            "ok",
            "TypeError",
            "FunctionError",
            "FunctionError",
            "FunctionError",
            "RangeError"
        ])
    );
    s.assert_healthy().await;
}

const RESULTS: &str = r#"
import { fb } from "ferrobase";
// Each case's value, and the text JSON.stringify makes of it: the test checks the engine
// reads the value into the same JSON.
const cases = [
  () => ({ a: 1, b: [1, "x", null, true, false], c: { d: {} }, e: [] }),
  () => [NaN, Infinity, -Infinity, -0, 1.5, 0.25, 0.1, 123.456, 2 ** 53 + 2, 2 ** 63, 2 ** 63 + 4096, 2 ** 64, 1e21, 1e300,
    -(2 ** 63), -(2 ** 63) - 4096, 123456789012, -7, 2147483648, -2147483649],
  () => ({ u: undefined, f() {}, s: Symbol("s"), arr: [undefined, () => 1, Symbol("t")], [Symbol("k")]: 1 }),
  () => ({ d: new Date(0), m: new Map([[1, 2]]), set: new Set([1]), re: /x/g, err: new Error("e"),
    boxed: [new Number(3), new String("s"), new Boolean(false)], typed: new Uint8Array([1, 2]) }),
  () => ({ t: { toJSON(k) { return "key:" + k; } }, arr: Object.assign([1, 2], { toJSON: () => "arr" }),
    nested: [{ toJSON: (k) => k }], fn: Object.assign(() => 1, { toJSON: () => "fn" }), gone: { toJSON: () => undefined } }),
  () => { class P { constructor() { this.x = 1; } get y() { return 2; } }
    return { p: new P(), n: Object.create(null, { a: { value: 1, enumerable: true }, b: { value: 2, enumerable: false } }) }; },
  () => ({ proxy: new Proxy({ a: 1 }, {}), parr: new Proxy([1, 2], {}) }),
  () => JSON.parse('{"__proto__": {"x": 1}, "y": [{"__proto__": 2}], "2": "two", "1": "one"}'),
  () => { const a = [1]; a[4] = 2; a.extra = 1; return a; },
  () => "just a string",
  () => 42,
  () => null,
  () => ({ s: "é\u0000\n\"\\😀\u2028" }),
  () => ({ get g() { return "got"; }, v: 1 }),
];
fb.call("jsonish", (req) => {
  const v = cases[req.data.case]();
  return { value: v, text: JSON.stringify(v) };
});
fb.call("cases", () => cases.length);
fb.call("undef", () => undefined);
fb.call("later", async () => ({ at: new Date(0), list: [1, { n: 2 }] }));
// A getter runs once even when a sibling is handed to JSON.stringify.
fb.call("getterOnce", () => { let calls = 0; return { a: { get n() { return ++calls; } }, d: new Date(0) }; });
fb.call("getterRejects", () => ({ get x() { throw fb.error(418, "from a getter"); } }));
fb.call("bigint", () => ({ n: 10n }));
fb.call("cyclic", () => { const a = {}; a.self = a; return a; });
fb.call("deep", (req) => { let v = 1; for (let i = 0; i < req.data.n; i++) v = [v]; return v; });
fb.call("wide", () => Array(1e6).fill("x".repeat(100)));
"#;

async fn results_read_as_json_stringify_writes_them(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", RESULTS)
        .start()
        .await;
    let (status, count) = call(&s, "cases", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{count}");
    let count = count["result"].as_u64().unwrap();
    for case in 0..count {
        let (status, body) = call(&s, "jsonish", json!({"case": case})).await;
        assert_eq!(status, StatusCode::OK, "case {case}: {body}");
        let text = body["result"]["text"].as_str().unwrap();
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(body["result"]["value"], expected, "case {case}: {text}");
    }
    let (_, undef) = call(&s, "undef", json!({})).await;
    assert_eq!(undef, json!({"result": null}));
    let (_, later) = call(&s, "later", json!({})).await;
    assert_eq!(
        later["result"],
        json!({"at": "1970-01-01T00:00:00.000Z", "list": [1, {"n": 2}]})
    );
    let (_, once) = call(&s, "getterOnce", json!({})).await;
    assert_eq!(
        once["result"],
        json!({"a": {"n": 1}, "d": "1970-01-01T00:00:00.000Z"})
    );
    let rejected = call(&s, "getterRejects", json!({})).await;
    assert_error(&rejected, 418, "function_error");
    assert!(
        rejected.1.to_string().contains("from a getter"),
        "{}",
        rejected.1
    );
    for name in ["bigint", "cyclic"] {
        assert_error(&call(&s, name, json!({})).await, 500, "function_error");
    }
    let (status, deep) = call(&s, "deep", json!({"n": 100})).await;
    assert_eq!(status, StatusCode::OK, "{deep}");
    assert_error(
        &call(&s, "deep", json!({"n": 200})).await,
        500,
        "function_error",
    );
    // 100 MB of result against a 64 MiB function: refused, and the server carries on.
    assert_error(&call(&s, "wide", json!({})).await, 500, "function_error");
    let (status, _) = call(&s, "cases", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    s.assert_healthy().await;
}

const TRIGGERS: &str = r#"
import { fb } from "ferrobase";
fb.beforeCreate("todos", (e) => {
  if (e.data.title === "bad") throw fb.error(422, "no bad titles");
  e.data.title = String(e.data.title).trim();
  e.data.seen = { op: e.op, collection: e.collection, doc: e.doc, auth: e.auth && e.auth.id };
});
// Before-triggers may be async: `e.data` is read once the promise settles.
fb.beforeUpdate("todos", async (e) => {
  await null;
  if (e.data.title === "locked") throw fb.error(409, "locked");
  e.data.previous = e.doc.title;
});
fb.beforeDelete("todos", (e) => { if (e.doc.keep) throw fb.error(403, "keep me"); });
for (const kind of ["afterCreate", "afterUpdate", "afterDelete"]) {
  fb[kind]("todos", async (e, ctx) => {
    await ctx.admin.db.collection("audit").add({ kind, op: e.op, id: e.id, title: e.doc && e.doc.title,
      before: e.before && e.before.title, seq: e.seq, by: e.auth && e.auth.id });
  });
}
// A trigger that writes to its own collection stops at depth 3 (FN-09).
fb.afterCreate("loops", async (e, ctx) => { await ctx.admin.db.collection("loops").add({ n: (e.doc.n || 0) + 1 }); });
"#;

async fn writer_batches(s: &TestServer) -> u64 {
    metric(&s.metrics().await, "ferrobase_writer_batch_size_count")
}

/// The trigger pump reads every commit, but moves its stored cursor for changes no handler
/// listens to at most once a second: an app's writes do not each cost a second commit.
async fn writes_nobody_listens_to_cost_one_commit(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", TRIGGERS)
        .start()
        .await;
    for name in ["quiet", "todos", "audit"] {
        s.collection(name, json!({"rules": {"create": "true"}}))
            .await;
    }
    // Let the pump settle after the catalog writes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = writer_batches(&s).await;
    let started = Instant::now();
    for n in 0..40 {
        s.create("quiet", json!({ "n": n })).await;
    }
    let spent = started.elapsed().as_secs();
    let batches = writer_batches(&s).await - before;
    // One batch per create, plus the cursor stored about once a second.
    assert!(
        batches <= 40 + spent + 2,
        "{batches} writer batches for 40 sequential creates in {spent} s"
    );
    // A change a handler listens to still queues its trigger, once.
    let todo = s.create("todos", json!({"title": "t"})).await;
    let id = todo["_id"].as_str().unwrap().to_owned();
    let audit = eventually(Duration::from_secs(10), || async {
        let (_, page) = s.svc_get("/v1/db/audit?limit=10").await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, page) = s.svc_get("/v1/db/audit?limit=10").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(audit[0]["id"], id.as_str());
    s.assert_healthy().await;
}

const AUDIT_CREATES: &str = r#"
import { fb } from "ferrobase";
fb.beforeCreate("todos", (e) => { e.data.checked = true; });
fb.afterCreate("todos", async (e, ctx) => { await ctx.admin.db.collection("audit").add({ id: e.id }); });
"#;

async fn audited(s: &TestServer) -> Vec<String> {
    let (_, page) = s.svc_get("/v1/db/audit?limit=100").await;
    let mut ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// While no live version has an after-trigger, the pump skips the change log without
/// reading it; a version that brings one applies to the writes after it goes live, and
/// only to those, however often live switches between the two.
async fn after_triggers_apply_from_the_version_that_brings_them(backend: Backend) {
    let s = Options::new(backend)
        .function_file(
            "main.js",
            "import { fb } from 'ferrobase'; fb.beforeCreate('todos', (e) => { e.data.checked = true; });",
        )
        .start()
        .await;
    s.collection("todos", json!({"rules": {"create": "true"}}))
        .await;
    s.collection("audit", json!({})).await;
    let write_some = |n: usize| {
        let s = &s;
        async move {
            for i in 0..n {
                let doc = s.create("todos", json!({ "i": i })).await;
                assert_eq!(doc["checked"], true, "{doc}");
            }
        }
    };
    write_some(30).await;
    // Let the pump pass those writes (it skips them: nothing listens).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, deployed) = s
        .svc_json(
            Method::POST,
            "/v1/admin/functions/versions",
            json!({"files": {"main.js": AUDIT_CREATES}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    let first = s.create("todos", json!({"n": "first"})).await;
    let first = first["_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), || async {
        (!audited(&s).await.is_empty()).then_some(())
    })
    .await;

    // Back to a version without after-triggers: writes go unaudited.
    let (status, body) = s
        .svc_json(
            Method::PUT,
            "/v1/admin/functions/aliases/live",
            json!({"weights": {"1": 100}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    write_some(10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = s
        .svc_json(
            Method::PUT,
            "/v1/admin/functions/aliases/live",
            json!({"weights": {"2": 100}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = s.create("todos", json!({"n": "second"})).await;
    let second = second["_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), || async {
        (audited(&s).await.len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(audited(&s).await, expected);
    s.assert_healthy().await;
}

async fn triggers_fire_once_with_the_right_payload(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", TRIGGERS)
        .start()
        .await;
    s.collection("todos", json!({"rules": {"create": "true", "get": "true", "list": "true", "update": "true", "delete": "true"}}))
        .await;
    s.collection("audit", json!({})).await;
    s.collection("loops", json!({})).await;

    // before: modify, and see the operation.
    let created = s.create("todos", json!({"title": "  hi  "})).await;
    assert_eq!(created["title"], "hi");
    assert_eq!(created["seen"]["op"], "create");
    assert_eq!(created["seen"]["collection"], "todos");
    assert_eq!(created["seen"]["doc"], Value::Null);
    let id = created["_id"].as_str().unwrap().to_owned();
    // before: rejection writes nothing and fires nothing.
    let rejected = s
        .send(
            s.req(Method::POST, "/v1/db/todos")
                .json(&json!({"title": "bad"})),
        )
        .await;
    assert_error(&rejected, 422, "function_error");
    let (status, updated) = s
        .send(
            s.req(Method::PATCH, &format!("/v1/db/todos/{id}"))
                .json(&json!({"title": "there"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["previous"], "hi");
    let locked = s
        .send(
            s.req(Method::PATCH, &format!("/v1/db/todos/{id}"))
                .json(&json!({"title": "locked"})),
        )
        .await;
    assert_error(&locked, 409, "function_error");
    let kept = s.create("todos", json!({"title": "k", "keep": true})).await;
    let refused = s
        .send(s.req(
            Method::DELETE,
            &format!("/v1/db/todos/{}", kept["_id"].as_str().unwrap()),
        ))
        .await;
    assert_error(&refused, 403, "function_error");
    let (status, _) = s
        .send(s.req(Method::DELETE, &format!("/v1/db/todos/{id}")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // after: exactly one run per committed change, in order, with the committed docs.
    let audit = eventually(Duration::from_secs(10), || async {
        let (_, page) = s.svc_get("/v1/db/audit?sort=seq&limit=100").await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= 4).then_some(items)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, page) = s.svc_get("/v1/db/audit?sort=seq&limit=100").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4, "{page}");
    let kinds: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("afterCreate", id.as_str()),
            ("afterUpdate", id.as_str()),
            ("afterCreate", kept["_id"].as_str().unwrap()),
            ("afterDelete", id.as_str()),
        ]
    );
    assert_eq!(audit[1]["title"], "there");
    assert_eq!(audit[1]["before"], "hi");
    assert_eq!(audit[3]["title"], Value::Null);
    assert_eq!(audit[3]["before"], "there");

    // A self-triggering chain stops: the client's write plus three trigger levels.
    s.create("loops", json!({"n": 0})).await;
    eventually(Duration::from_secs(10), || async {
        let (_, page) = s.svc_get("/v1/db/loops?count=true").await;
        (page["count"] == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, page) = s.svc_get("/v1/db/loops?count=true").await;
    assert_eq!(page["count"], 4, "{page}");
}

const FLAKY: &str = r#"
import { fb } from "ferrobase";
// Fails on the first two attempts, then succeeds: attempts are counted in a document.
fb.call("flaky", async (req, ctx) => {
  const c = ctx.admin.db.collection("counters").doc(req.data.key);
  const n = ((await c.get()) || { n: 0 }).n + 1;
  await c.set({ n });
  if (n < 3) throw new Error("not yet");
  return { attempts: n };
});
fb.call("hopeless", async (req, ctx) => {
  const fixed = await ctx.admin.db.collection("counters").doc("fixed").get();
  if (!fixed) throw fb.error(503, "still broken");
  return "fixed";
});
"#;

async fn invocation(s: &TestServer, id: &str) -> Value {
    let (status, body) = s.svc_get(&format!("/v1/functions/invocations/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn settled(s: &TestServer, id: &str) -> Value {
    eventually(Duration::from_secs(20), || async {
        let v = invocation(s, id).await;
        matches!(v["status"].as_str(), Some("succeeded" | "dead")).then_some(v)
    })
    .await
}

async fn async_invocations_retry_then_dead_letter_and_replay(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", FLAKY)
        .config("[functions]\nretry_backoff = \"50ms\"\n")
        .start()
        .await;
    s.collection("counters", json!({})).await;
    let (status, queued) = s
        .send(
            s.req(Method::POST, "/v1/functions/flaky/async")
                .json(&json!({"key": "a"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let id = queued["invocation_id"].as_str().unwrap();
    let done = settled(&s, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["result"], json!({"attempts": 3}));

    let (_, queued) = s
        .send(s.req(Method::POST, "/v1/functions/hopeless/async"))
        .await;
    let id = queued["invocation_id"].as_str().unwrap().to_owned();
    let dead = settled(&s, &id).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3);
    assert!(dead["error"].as_str().unwrap().contains("still broken"));
    let (_, letters) = s.svc_get("/v1/admin/functions/dead-letters").await;
    assert!(
        letters["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id.as_str()),
        "{letters}"
    );
    // Fix the cause, replay: it runs again and succeeds.
    s.create("counters", json!({"_id": "fixed", "ok": true}))
        .await;
    let (status, _) = s
        .svc_json(
            Method::POST,
            &format!("/v1/admin/functions/dead-letters/{id}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let replayed = settled(&s, &id).await;
    assert_eq!(replayed["status"], "succeeded", "{replayed}");
    assert_eq!(replayed["result"], "fixed");
    // Replaying something that is not dead is a 404; others' invocations are hidden.
    let again = s
        .svc_json(
            Method::POST,
            &format!("/v1/admin/functions/dead-letters/{id}/replay"),
            json!({}),
        )
        .await;
    assert_error(&again, 404, "not_found");
    let hidden = s
        .send(s.req(Method::GET, &format!("/v1/functions/invocations/{id}")))
        .await;
    assert_error(&hidden, 404, "not_found");
    let unknown = s
        .send(s.req(Method::POST, "/v1/functions/nope/async"))
        .await;
    assert_error(&unknown, 404, "not_found");
}

const CRON: &str = r#"
import { fb } from "ferrobase";
// Every second; each run takes 1.5 s, so runs would overlap if ticks were not skipped.
fb.cron("tick", "* * * * * *", async (ctx) => {
  const started = Date.now();
  await ctx.admin.db.collection("ticks").add({ started });
  while (Date.now() - started < 1500) {}
  await ctx.admin.db.collection("ticks").add({ ended: Date.now() });
});
"#;

async fn cron_ticks_and_never_overlaps(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", CRON)
        .start()
        .await;
    s.collection("ticks", json!({})).await;
    eventually(Duration::from_secs(15), || async {
        let (_, page) = s
            .svc_get("/v1/db/ticks?where={\"started\":{\"$exists\":true}}&count=true")
            .await;
        (page["count"].as_u64().unwrap_or(0) >= 2).then_some(())
    })
    .await;
    // No run started before the previous one ended.
    let (_, page) = s.svc_get("/v1/db/ticks?sort=_created_at&limit=100").await;
    let mut running = false;
    for item in page["items"].as_array().unwrap() {
        if item.get("started").is_some() {
            assert!(!running, "two cron runs overlapped: {page}");
            running = true;
        } else {
            running = false;
        }
    }
}

async fn versions_split_traffic_stickily_and_roll_back(backend: Backend) {
    let s = Options::new(backend)
        .function_file(
            "main.js",
            "import { fb } from 'ferrobase'; fb.call('which', () => 'one');",
        )
        .start()
        .await;
    let (_, versions) = s.svc_get("/v1/admin/functions/versions").await;
    assert_eq!(versions["items"][0]["version"], 1, "{versions}");
    assert_eq!(versions["items"][0]["source"], "dir");
    // A broken bundle is refused and changes nothing.
    let broken = s
        .svc_json(
            Method::POST,
            "/v1/admin/functions/versions",
            json!({"files": {"main.js": "this is not javascript"}}),
        )
        .await;
    assert_error(&broken, 400, "validation_failed");
    let escape = s
        .svc_json(
            Method::POST,
            "/v1/admin/functions/versions",
            json!({"files": {"../main.js": "1"}}),
        )
        .await;
    assert_error(&escape, 400, "validation_failed");
    // Deploy without promoting: live stays on 1; an admin can try 2.
    let (status, deployed) = s
        .svc_json(
            Method::POST,
            "/v1/admin/functions/versions",
            json!({"files": {"main.js": "import { fb } from 'ferrobase'; fb.call('which', () => 'two');"}, "promote": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    assert_eq!(deployed["version"], 2);
    assert_eq!(call(&s, "which", json!({})).await.1["result"], "one");
    let (_, tried) = s
        .svc_json(Method::POST, "/v1/functions/which?version=2", json!({}))
        .await;
    assert_eq!(tried["result"], "two");
    let forbidden = s
        .send(
            s.req(Method::POST, "/v1/functions/which?version=2")
                .json(&json!({})),
        )
        .await;
    assert_error(&forbidden, 403, "forbidden");

    // Split 50/50: each caller sticks to one version; both versions serve someone.
    let (status, body) = s
        .svc_json(
            Method::PUT,
            "/v1/admin/functions/aliases/live",
            json!({"weights": {"1": 50, "2": 50}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (_, session) = s
            .send(s.req(Method::POST, "/v1/auth/anonymous").json(&json!({})))
            .await;
        let token = crate::helpers::bearer(&session);
        let mut answers = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (_, r) = s
                .send(
                    s.req(Method::POST, "/v1/functions/which")
                        .header("authorization", &token)
                        .json(&json!({})),
                )
                .await;
            answers.insert(r["result"].as_str().unwrap().to_owned());
        }
        assert_eq!(answers.len(), 1, "a caller moved between versions");
        seen.extend(answers);
    }
    assert_eq!(seen.len(), 2, "both versions should serve some callers");
    // Rollback: move the alias.
    s.svc_json(
        Method::PUT,
        "/v1/admin/functions/aliases/live",
        json!({"weights": {"1": 100}}),
    )
    .await;
    assert_eq!(call(&s, "which", json!({})).await.1["result"], "one");
    let bad = s
        .svc_json(
            Method::PUT,
            "/v1/admin/functions/aliases/live",
            json!({"weights": {"9": 100}}),
        )
        .await;
    assert_error(&bad, 400, "validation_failed");
}

const BOMBS: &str = r#"
import { fb } from "ferrobase";
fb.call("ok", () => "fine");
fb.call("spin", () => { for (;;) {} });
fb.call("flood", () => { (function f() { Promise.resolve().then(f); })(); return new Promise(() => {}); });
fb.call("hog", () => { const a = []; for (;;) a.push(new Array(1e5).fill(1)); });
fb.call("recurse", () => { function f() { return f(); } return f(); });
fb.call("deepjson", () => JSON.parse("[".repeat(1e5)));
fb.call("cycle", () => { const a = []; a.push(a); return "" + a; });
fb.call("repeat", () => "x".repeat(2 ** 28).length);
fb.call("join", () => new Array(2 ** 27).join("x").length);
fb.call("huge", () => (Array(1e9) + "").length);
fb.call("never", () => new Promise(() => {}));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_bombs_are_contained_and_the_server_carries_on() {
    let s = Options::new(Backend::Sqlite)
        .function_file("main.js", BOMBS)
        .config("[functions]\ntimeout = \"1s\"\nworkers = 2\n")
        .start()
        .await;
    let rss_before = s.rss_kib();
    // CPU: stopped at the deadline, and /health answers meanwhile (FN-01).
    let started = Instant::now();
    let spin = {
        let s_url = s.url.clone();
        let client = s.client.clone();
        tokio::spawn(async move {
            let r = client
                .post(format!("{s_url}/v1/functions/spin"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.assert_healthy().await;
    let (status, body) = spin.await.unwrap();
    assert_eq!(status.as_u16(), 504, "{body}");
    assert_eq!(body["error"]["code"], "function_timeout");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "spin took {took:?}");
    assert_eq!(call(&s, "ok", json!({})).await.1["result"], "fine");
    assert_error(&call(&s, "flood", json!({})).await, 504, "function_timeout");
    assert_eq!(call(&s, "ok", json!({})).await.1["result"], "fine");

    // Memory, stack and native bombs end as errors; the same workers go on (FN-02..04).
    for name in [
        "hog", "recurse", "deepjson", "cycle", "repeat", "join", "huge",
    ] {
        let started = Instant::now();
        let r = call(&s, name, json!({})).await;
        assert!(
            r.0 == StatusCode::INTERNAL_SERVER_ERROR || r.0 == StatusCode::GATEWAY_TIMEOUT,
            "{name}: {} {}",
            r.0,
            r.1
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            call(&s, "ok", json!({})).await.1["result"],
            "fine",
            "after {name}"
        );
    }
    // A promise that never settles is an error, not a hang.
    assert_error(&call(&s, "never", json!({})).await, 500, "function_error");
    // 30 more out-of-memory runs do not leak (FN-02: 100 in the hostile list; 30 keep the
    // suite quick and would show a per-run leak of a few hundred KiB).
    for _ in 0..30 {
        call(&s, "hog", json!({})).await;
    }
    let rss_after = s.rss_kib();
    assert!(
        rss_after < rss_before + 2 * 64 * 1024 + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    s.assert_healthy().await;
}

const MEMORY: &str = r#"
import { fb } from "ferrobase";
let kept = null;
const alloc = (mb) => new Uint8Array(mb << 20).length >> 20;
fb.call("plain", (req) => alloc(req.data.mb));
fb.call("big", (req) => alloc(req.data.mb));
fb.call("small", (req) => alloc(req.data.mb));
// Keeps its buffer in module state: the isolate stays above the usual limit afterwards.
fb.call("keep", (req) => { kept = new Uint8Array(req.data.mb << 20); return kept.length >> 20; });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_have_their_own_memory_limits() {
    let s = Options::new(Backend::Sqlite)
        .function_file("main.js", MEMORY)
        .config(
            r#"
[functions]
workers = 1
memory_mb = 64
[functions.handlers.big]
memory_mb = 200
[functions.handlers.keep]
memory_mb = 200
[functions.handlers.small]
memory_mb = 16
"#,
        )
        .start()
        .await;
    let ok = |mb: u32| json!({"result": mb});
    // The usual limit: 24 MiB fits, 100 MiB does not.
    assert_eq!(call(&s, "plain", json!({"mb": 24})).await.1, ok(24));
    assert_error(
        &call(&s, "plain", json!({"mb": 100})).await,
        500,
        "function_error",
    );
    // A handler with more memory may use it; one with less may not use the usual amount.
    assert_eq!(call(&s, "big", json!({"mb": 100})).await.1, ok(100));
    assert_error(
        &call(&s, "small", json!({"mb": 24})).await,
        500,
        "function_error",
    );
    // ... and the usual limit is back for the others, on the one engine thread.
    assert_eq!(call(&s, "plain", json!({"mb": 24})).await.1, ok(24));
    assert_error(
        &call(&s, "plain", json!({"mb": 100})).await,
        500,
        "function_error",
    );
    // An isolate left holding more than the usual limit is rebuilt, not reused.
    assert_eq!(call(&s, "keep", json!({"mb": 100})).await.1, ok(100));
    assert_eq!(call(&s, "plain", json!({"mb": 24})).await.1, ok(24));
    s.assert_healthy().await;
}

const FETCH: &str = r#"
import { fb } from "ferrobase";
fb.call("get", async (req) => {
  try {
    const r = await fetch(req.data.url);
    return { status: r.status, body: await r.text(), location: r.headers.location || null };
  } catch (e) {
    return { err: e.code || e.name };
  }
});
"#;

/// A loopback HTTP server answering `/ok` with "hello" and `/hop` with a redirect to
/// `redirect_to`; counts the connections it accepted.
async fn tiny_http(
    ip: &str,
    redirect_to: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let redirect_to = redirect_to.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let response = if head.starts_with("GET /hop ") {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {redirect_to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                        .to_owned()
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, hits)
}

/// HOSTILE ST-05 for function `fetch`: only allowlisted hosts, no redirects followed, and an
/// allowlisted name that resolves to a private address is refused after resolution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reaches_only_allowlisted_public_hosts() {
    use std::sync::atomic::Ordering;
    let (canary, canary_hits) = tiny_http("127.0.0.2", String::new()).await;
    let canary_url = format!("http://127.0.0.2:{canary}/");
    let (port, hits) = tiny_http("127.0.0.1", canary_url.clone()).await;
    let s = Options::new(Backend::Sqlite)
        .function_file("main.js", FETCH)
        .config(&format!(
            "[functions]\nfetch_allow = [\"127.0.0.1:{port}\", \"localhost\", \"*.localhost\"]\n"
        ))
        .start()
        .await;
    let get = |url: String| {
        let s = &s;
        async move {
            let (status, body) = call(s, "get", json!({ "url": url })).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["result"].clone()
        }
    };
    // An allowlisted IP literal works; a redirect is handed back, not followed.
    let ok = get(format!("http://127.0.0.1:{port}/ok")).await;
    assert_eq!(
        ok,
        json!({"status": 200, "body": "hello", "location": null})
    );
    let hop = get(format!("http://127.0.0.1:{port}/hop")).await;
    assert_eq!(hop["status"], 302, "{hop}");
    assert_eq!(hop["location"], canary_url.as_str());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Allowlisted names that resolve to loopback: refused after resolution.
    for url in [
        format!("http://localhost:{port}/ok"),
        format!("http://localhost:{canary}/"),
        format!("http://canary.localhost:{canary}/"),
    ] {
        let out = get(url.clone()).await;
        assert_eq!(out["err"], "bad_gateway", "{url}: {out}");
    }
    // Off the allowlist, in every spelling: refused before any connection.
    for url in [
        canary_url.clone(),
        format!("http://0x7f000002:{canary}/"),
        format!("http://2130706434:{canary}/"),
        format!("http://[::1]:{port}/"),
        format!("http://127.0.0.1:{canary}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "file:///etc/passwd".to_owned(),
        "gopher://127.0.0.1:70/".to_owned(),
    ] {
        let out = get(url.clone()).await;
        assert_eq!(out["err"], "forbidden", "{url}: {out}");
    }
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the canary was reached"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "a refused fetch connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_reloads_the_functions_folder() {
    let s = Options::new(Backend::Sqlite)
        .function_file(
            "main.js",
            "import { fb } from 'ferrobase'; fb.call('v', () => 1);",
        )
        .env("FERROBASE_DEV", "true")
        .start()
        .await;
    assert_eq!(call(&s, "v", json!({})).await.1["result"], 1);
    std::fs::write(
        s.functions_dir().join("main.js"),
        "import { fb } from 'ferrobase'; fb.call('v', () => 2);",
    )
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        (call(&s, "v", json!({})).await.1["result"] == 2).then_some(())
    })
    .await;
    let (_, versions) = s.svc_get("/v1/admin/functions/versions").await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
}

const SHARED: &str = r#"
import { fb } from "ferrobase";
fb.cron("beat", "* * * * * *", async (ctx, e) => {
  await ctx.admin.db.collection("beats").add({ tick: e.tick });
});
fb.call("work", async (req, ctx) => { await ctx.admin.db.collection("done").add({ n: req.data.n }); return req.data.n; });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_and_fire_cron_once_per_tick() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let a = Options::new(backend)
        .function_file("main.js", SHARED)
        .start()
        .await;
    a.collection("beats", json!({})).await;
    a.collection("done", json!({})).await;
    let b = a.another_node().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (status, body) = node
            .send(
                node.req(Method::POST, "/v1/functions/work/async")
                    .json(&json!({"n": n})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["invocation_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let v = settled(&a, id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["attempts"], 1);
    }
    let (_, page) = a.svc_get("/v1/db/done?count=true&limit=0").await;
    assert_eq!(page["count"], 20);
    // Let cron tick a few times on both nodes, then check each second ran once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, page) = a.svc_get("/v1/db/beats?limit=1000").await;
    let seconds: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tick"].as_str().unwrap().to_owned())
        .collect();
    assert!(seconds.len() >= 2, "{page}");
    let unique: std::collections::BTreeSet<_> = seconds.iter().collect();
    assert_eq!(unique.len(), seconds.len(), "a tick ran twice: {seconds:?}");
}

const FILES: &str = r#"
import { fb } from "ferrobase";
// `as`: "caller" (ctx.storage, bucket rules apply) or "admin" (ctx.admin.storage).
const bucket = (req, ctx) => (req.data.as === "admin" ? ctx.admin.storage : ctx.storage).bucket(req.data.bucket || "files");
const attempt = async (f) => { try { return { ok: await f() }; } catch (e) { return { err: e.code || e.name, status: e.status, message: e.message }; } };
fb.call("put", (req, ctx) => attempt(() => bucket(req, ctx).put(req.data.key, req.data.text, req.data.options)));
fb.call("putBytes", (req, ctx) => attempt(() => {
  const bytes = new Uint8Array(256);
  for (let i = 0; i < 256; i++) bytes[i] = 255 - i;
  return bucket(req, ctx).put(req.data.key, req.data.buffer ? bytes.buffer : bytes.subarray(1));
}));
fb.call("get", (req, ctx) => attempt(async () => {
  const o = await bucket(req, ctx).get(req.data.key);
  if (o === null) return null;
  const bytes = o.bytes();
  return { key: o.key, size: o.size, type: o.content_type, owner: o.owner, metadata: o.metadata, text: o.text(),
           bytes: Array.from(bytes.subarray(0, 4)), length: bytes.length, json: req.data.json ? o.json() : undefined };
}));
fb.call("head", (req, ctx) => attempt(() => bucket(req, ctx).head(req.data.key)));
fb.call("list", (req, ctx) => attempt(() => bucket(req, ctx).list(req.data.options)));
fb.call("del", (req, ctx) => attempt(() => bucket(req, ctx).delete(req.data.key)));
fb.call("sign", (req, ctx) => attempt(() => bucket(req, ctx).signUrl(req.data.key, req.data.options)));
fb.call("odd", (req, ctx) => Promise.all([
  { obj: 1 }, null, 12, new Uint8Array((4 << 20) + 1),
].map((body) => attempt(() => ctx.admin.storage.bucket("files").put("odd", body)))));
"#;

/// Calls `name` as `session` (None: anonymously) and returns the handler's `{ok}`/`{err}`.
async fn call_as(s: &TestServer, session: Option<&Value>, name: &str, data: Value) -> Value {
    let mut request = s
        .req(Method::POST, &format!("/v1/functions/{name}"))
        .json(&data);
    if let Some(session) = session {
        request = request.header("authorization", crate::helpers::bearer(session));
    }
    let (status, body) = s.send(request).await;
    assert_eq!(status, StatusCode::OK, "{name} {data}: {body}");
    body["result"].clone()
}

async fn storage_from_functions_keeps_the_bucket_rules(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", FILES)
        .start()
        .await;
    let (status, out) = s
        .svc_json(
            Method::POST,
            "/v1/admin/buckets",
            json!({"name": "files", "rules": {
                "read": "auth != null && object.owner == auth.id",
                "write": "auth != null && !object.key.startsWith('locked/')",
                "delete": "auth != null && object.owner == auth.id"},
                "content_types": ["text/*", "application/json", "application/octet-stream"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    let ann = crate::helpers::signup(&s, "ann@example.com").await;
    let bob = crate::helpers::signup(&s, "bob@example.com").await;
    let ann_id = ann["user"]["id"].as_str().unwrap().to_owned();

    // Written as the caller: the object is theirs; metadata and content type as given.
    let put = call_as(
        &s,
        Some(&ann),
        "put",
        json!({"key": "notes/a.json", "text": "{\"n\": 1}",
        "options": {"contentType": "application/json", "metadata": {"Kind": "note"}}}),
    )
    .await;
    assert_eq!(put["ok"]["owner"], ann_id.as_str(), "{put}");
    assert_eq!(put["ok"]["size"], 8);
    assert_eq!(put["ok"]["metadata"], json!({"kind": "note"}));
    // The HTTP API sees the same object and bytes.
    let response = s
        .req(Method::GET, "/v1/storage/files/notes/a.json")
        .header("authorization", crate::helpers::bearer(&ann))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), "{\"n\": 1}");

    // Read back as text, bytes and JSON; a string body defaults to UTF-8 text.
    let got = call_as(
        &s,
        Some(&ann),
        "get",
        json!({"key": "notes/a.json", "json": true}),
    )
    .await;
    assert_eq!(got["ok"]["text"], "{\"n\": 1}", "{got}");
    assert_eq!(got["ok"]["json"], json!({"n": 1}));
    assert_eq!(got["ok"]["bytes"], json!([123, 34, 110, 34]));
    let put = call_as(
        &s,
        Some(&ann),
        "put",
        json!({"key": "notes/ü.txt", "text": "grüße ✓"}),
    )
    .await;
    assert_eq!(
        put["ok"]["content_type"], "text/plain; charset=utf-8",
        "{put}"
    );
    assert_eq!(put["ok"]["size"], "grüße ✓".len());
    let got = call_as(&s, Some(&ann), "get", json!({"key": "notes/ü.txt"})).await;
    assert_eq!(got["ok"]["text"], "grüße ✓");

    // Bytes: every value 0..=255 survives, from a Uint8Array view or an ArrayBuffer.
    let put = call_as(
        &s,
        Some(&ann),
        "putBytes",
        json!({"key": "bin/all", "buffer": true}),
    )
    .await;
    assert_eq!(
        put["ok"]["content_type"], "application/octet-stream",
        "{put}"
    );
    let raw = s
        .req(Method::GET, "/v1/storage/files/bin/all")
        .header("authorization", crate::helpers::bearer(&ann))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(raw.to_vec(), (0..=255u8).rev().collect::<Vec<u8>>());
    call_as(&s, Some(&ann), "putBytes", json!({"key": "bin/view"})).await;
    let got = call_as(&s, Some(&ann), "get", json!({"key": "bin/view"})).await;
    assert_eq!(got["ok"]["length"], 255, "{got}");
    assert_eq!(got["ok"]["bytes"], json!([254, 253, 252, 251]));

    // Another user: the read rule hides ann's objects (null, as if missing), delete is denied,
    // the list shows only what they may read.
    let hidden = call_as(&s, Some(&bob), "get", json!({"key": "notes/a.json"})).await;
    assert_eq!(hidden, json!({"ok": null}));
    let denied = call_as(&s, Some(&bob), "del", json!({"key": "notes/a.json"})).await;
    assert_eq!(denied["err"], "forbidden", "{denied}");
    assert_eq!(denied["status"], 403);
    call_as(
        &s,
        Some(&bob),
        "put",
        json!({"key": "notes/b.txt", "text": "bob"}),
    )
    .await;
    let listed = call_as(
        &s,
        Some(&bob),
        "list",
        json!({"options": {"prefix": "notes/"}}),
    )
    .await;
    let keys: Vec<&str> = listed["ok"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["notes/b.txt"], "{listed}");
    // ... while the admin API bypasses the rules.
    let listed = call_as(
        &s,
        Some(&bob),
        "list",
        json!({"as": "admin", "options": {"prefix": "notes/", "limit": 2}}),
    )
    .await;
    assert_eq!(
        listed["ok"]["items"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    let cursor = listed["ok"]["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest = call_as(
        &s,
        Some(&bob),
        "list",
        json!({"as": "admin", "options": {"prefix": "notes/", "cursor": cursor}}),
    )
    .await;
    assert_eq!(rest["ok"]["items"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["ok"]["next_cursor"], Value::Null);
    let got = call_as(
        &s,
        Some(&bob),
        "get",
        json!({"as": "admin", "key": "notes/a.json"}),
    )
    .await;
    assert_eq!(got["ok"]["owner"], ann_id.as_str());

    // Anonymous callers have no write rule match; a denied write stores nothing.
    let anon = call_as(&s, None, "put", json!({"key": "anon.txt", "text": "x"})).await;
    assert_eq!(anon["err"], "forbidden", "{anon}");
    let locked = call_as(
        &s,
        Some(&ann),
        "put",
        json!({"key": "locked/x", "text": "x"}),
    )
    .await;
    assert_eq!(locked["err"], "forbidden", "{locked}");
    let head = call_as(
        &s,
        Some(&ann),
        "head",
        json!({"as": "admin", "key": "locked/x"}),
    )
    .await;
    assert_eq!(head, json!({"ok": null}));

    // Bad input: clear errors, nothing stored.
    for (data, code) in [
        (json!({"key": "../etc/passwd", "text": "x"}), "bad_request"),
        (json!({"key": "/abs", "text": "x"}), "bad_request"),
        (
            json!({"key": "ok.txt", "text": "x", "options": {"contentType": "nonsense"}}),
            "bad_request",
        ),
        (
            json!({"key": "ok.txt", "text": "x", "options": {"contentType": "image/png"}}),
            "unsupported_media_type",
        ),
        (
            json!({"key": "ok.txt", "text": "x", "options": {"metadata": {"n": 1}}}),
            "bad_request",
        ),
        (
            json!({"key": "ok.txt", "text": "x", "options": {"metadata": {"a b": "c"}}}),
            "bad_request",
        ),
        (
            json!({"key": "ok.txt", "text": "x", "bucket": "nope"}),
            "bucket_not_found",
        ),
    ] {
        let out = call_as(&s, Some(&ann), "put", data.clone()).await;
        assert_eq!(out["err"], code, "{data}: {out}");
    }
    let head = call_as(
        &s,
        Some(&ann),
        "head",
        json!({"as": "admin", "key": "ok.txt"}),
    )
    .await;
    assert_eq!(head, json!({"ok": null}));
    let odd = call_as(&s, None, "odd", json!({})).await;
    assert_eq!(
        odd.as_array()
            .unwrap()
            .iter()
            .map(|o| o["err"].clone())
            .collect::<Vec<_>>(),
        vec![
            json!("TypeError"),
            json!("TypeError"),
            json!("TypeError"),
            json!("RangeError")
        ],
        "{odd}"
    );

    // Signed URLs obey the caller's rules, and work without a token.
    let denied = call_as(&s, Some(&bob), "sign", json!({"key": "notes/a.json"})).await;
    assert_eq!(denied["err"], "not_found", "{denied}");
    let signed = call_as(
        &s,
        Some(&ann),
        "sign",
        json!({"key": "notes/a.json", "options": {"expiresIn": 60}}),
    )
    .await;
    assert_eq!(signed["ok"]["method"], "GET", "{signed}");
    let body = reqwest::get(signed["ok"]["url"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "{\"n\": 1}");
    let too_long = call_as(
        &s,
        Some(&ann),
        "sign",
        json!({"key": "notes/a.json", "options": {"expiresIn": 10_000_000}}),
    )
    .await;
    assert_eq!(too_long["err"], "bad_request", "{too_long}");

    // Delete: true once, then false (nothing there).
    let deleted = call_as(&s, Some(&ann), "del", json!({"key": "notes/a.json"})).await;
    assert_eq!(deleted, json!({"ok": true}));
    let again = call_as(&s, Some(&ann), "del", json!({"key": "notes/a.json"})).await;
    assert_eq!(again, json!({"ok": false}));
    let (status, _) = s
        .send(s.svc(Method::GET, "/v1/storage/files/notes/a.json"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.assert_healthy().await;
}

const OBJECT_TRIGGERS: &str = r#"
import { fb } from "ferrobase";
const record = (kind) => async (e, ctx) => {
  await ctx.admin.db.collection("seen").add({ kind, op: e.op, key: e.key || null, bucket: e.bucket || null,
    size: e.object ? e.object.size : null, before: e.before ? e.before.size : null, seq: e.seq,
    user: e.user ? (e.user.email || e.user.id) : null, by: e.auth && e.auth.id });
};
fb.afterUpload("pics", record("afterUpload"));
fb.afterObjectDelete("pics", record("afterObjectDelete"));
for (const event of ["signup", "login", "delete"]) fb.onAuth(event, record(event));
// An object written by a function sets off the bucket's trigger too.
fb.call("thumb", async (req, ctx) => ctx.admin.storage.bucket("pics").put("thumbs/1", "tiny"));
// A trigger that uploads into its own bucket stops at depth 3, like one on a collection.
fb.afterUpload("loop", async (e, ctx) => { await ctx.admin.storage.bucket("loop").put(`n${Number(e.key.slice(1)) + 1}`, "x"); });
"#;

async fn object_and_auth_triggers_fire_with_their_payload(backend: Backend) {
    let s = Options::new(backend)
        .function_file("main.js", OBJECT_TRIGGERS)
        .start()
        .await;
    s.collection("seen", json!({})).await;
    let (status, out) = s
        .svc_json(Method::POST, "/v1/admin/buckets", json!({"name": "pics", "rules": {"write": "auth != null", "read": "true", "delete": "auth != null"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    let ann = crate::helpers::signup(&s, "ann@example.com").await;
    let ann_id = ann["user"]["id"].as_str().unwrap().to_owned();
    let (status, body) = s
        .send(
            s.req(Method::POST, "/v1/auth/login")
                .json(&json!({"email": "ann@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let upload = |bytes: &'static [u8]| {
        s.req(Method::PUT, "/v1/storage/pics/a.png")
            .header("authorization", crate::helpers::bearer(&ann))
            .body(bytes)
    };
    assert_eq!(s.send(upload(b"12345")).await.0, StatusCode::CREATED);
    assert_eq!(s.send(upload(b"123")).await.0, StatusCode::OK);
    let (status, _) = s
        .send(
            s.req(Method::DELETE, "/v1/storage/pics/a.png")
                .header("authorization", crate::helpers::bearer(&ann)),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&s, "thumb", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .send(s.svc(Method::DELETE, &format!("/v1/admin/users/{ann_id}")))
        .await;
    assert!(status.is_success(), "{status}");

    let want = 7;
    let seen = eventually(Duration::from_secs(10), || async {
        let (_, page) = s.svc_get("/v1/db/seen?sort=seq&limit=100").await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= want).then_some(items)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, page) = s.svc_get("/v1/db/seen?count=true&limit=1").await;
    assert_eq!(page["count"], want, "exactly one run per event: {page}");
    let rows: Vec<Value> = seen
        .iter()
        .map(|e| {
            json!([
                e["kind"],
                e["key"],
                e["size"],
                e["before"],
                e["user"],
                e["by"]
            ])
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            json!(["signup", null, null, null, "ann@example.com", ann_id]),
            json!(["login", null, null, null, "ann@example.com", ann_id]),
            json!(["afterUpload", "a.png", 5, null, null, ann_id]),
            json!(["afterUpload", "a.png", 3, 5, null, ann_id]),
            json!(["afterObjectDelete", "a.png", null, 3, null, ann_id]),
            json!(["afterUpload", "thumbs/1", 4, null, null, null]),
            json!(["delete", null, null, null, ann_id, ann_id]),
        ],
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .all(|e| e["bucket"] == "pics" || e["key"].is_null())
    );

    // A self-triggering chain through a bucket stops: the client's upload plus three levels.
    let (status, out) = s
        .svc_json(Method::POST, "/v1/admin/buckets", json!({"name": "loop"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    let (status, _) = s
        .send(s.svc(Method::PUT, "/v1/storage/loop/n0").body("x"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let count = || async {
        let (_, page) = s.svc_get("/v1/storage/loop?limit=100").await;
        page["items"].as_array().map_or(0, Vec::len)
    };
    eventually(Duration::from_secs(10), || async {
        (count().await == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count().await, 4);
}
