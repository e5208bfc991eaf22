//! Property test: for random documents and random `list` rules of the compilable subset, the
//! documents the server lists (the rule lowered to SQL, on SQLite and Postgres) are exactly
//! those the rule, evaluated in memory by CEL against each document, allows — for an
//! anonymous caller and for a signed-in one.

use ferrobase::rules::{Rule, Vars};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestServer, bearer, signup};
use crate::on_both_backends;

on_both_backends!(sql_lowered_list_rules_agree_with_cel);

const DOCS: usize = 60;
const RULES: usize = 250;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..3).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, 1.0, -1.5]).prop_map(Value::from),
        prop::sample::select(vec!["", "a", "ab", "b", "B", "é"]).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => scalar().prop_map(|x| json!({ "x": x })),
    ]
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(value()),
    )
        .prop_map(|(a, b, o)| {
            let mut m = Map::new();
            for (k, v) in [("a", a), ("b", b), ("o", o)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m
        })
}

/// A CEL literal.
fn literal() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "null", "true", "false", "0", "1", "2", "-1", "1.0", "0.5", "-1.5", "''", "'a'", "'ab'",
        "'b'", "'B'", "'é'", "auth.id",
    ])
    .prop_map(str::to_owned)
}

fn field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "o", "o.x", "_id", "_owner", "_version"])
}

fn user_field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "o", "o.x"])
}

fn comparison() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="])
}

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (field(), comparison(), literal()).prop_map(|(f, op, v)| format!("doc.{f} {op} {v}")),
        1 => (literal(), comparison(), field()).prop_map(|(v, op, f)| format!("{v} {op} doc.{f}")),
        1 => (field(), prop::collection::vec(literal(), 0..3))
            .prop_map(|(f, list)| format!("doc.{f} in [{}]", list.join(", "))),
        1 => (literal(), user_field()).prop_map(|(v, f)| format!("{v} in doc.{f}")),
        1 => field().prop_map(|f| format!("has(doc.{f})")),
        1 => (field(), prop::sample::select(vec!["''", "'a'", "'b'"]))
            .prop_map(|(f, s)| format!("doc.{f}.startsWith({s})")),
        1 => (field(), prop::sample::select(vec!["''", "'a'", "'b'"]))
            .prop_map(|(f, s)| format!("doc.{f}.contains({s})")),
        1 => user_field().prop_map(|f| format!("doc.{f}")),
        1 => Just("doc._owner == auth.id".to_owned()),
        1 => prop::sample::select(vec!["auth != null", "auth == null", "true", "false"])
            .prop_map(str::to_owned),
    ]
}

fn rule() -> impl Strategy<Value = String> {
    atom().prop_recursive(3, 10, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("(auth != null ? {a} : {b})")),
        ]
    })
}

async fn sql_lowered_list_rules_agree_with_cel(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection("r", json!({"indexes": [{"fields": ["a"]}]}))
        .await;
    let session = signup(&s, "prop@example.com").await;
    let me = session["user"]["id"].as_str().unwrap().to_owned();
    let auth = json!({
        "id": me, "role": "user", "anonymous": false, "email": "prop@example.com",
        "email_verified": false, "claims": {},
    });

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let docs = prop::collection::vec(document(), DOCS)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let ops: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut data = d.clone();
            match i % 3 {
                0 => data.insert("_owner".into(), json!(me)),
                1 => data.insert("_owner".into(), json!("someone")),
                _ => None,
            };
            json!({"op": "create", "collection": "r", "id": format!("r{i:03}"), "data": data})
        })
        .collect();
    let (status, out) = s
        .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let stored: Vec<Value> = out["results"].as_array().unwrap().clone();

    // How many (rule, caller) pairs let through some but not all documents: the test means
    // little if rules mostly allow all or nothing.
    let mut partial = 0;
    for _ in 0..RULES {
        let source = rule().new_tree(&mut runner).unwrap().current();
        let (status, body) = s
            .svc_json(
                Method::PATCH,
                "/v1/admin/collections/r",
                json!({"rules": {"list": source}}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the rule {source} was refused: {body}"
        );
        let compiled = Rule::compile_list(&source).unwrap();
        for caller in [Value::Null, auth.clone()] {
            let expected: Vec<&str> = stored
                .iter()
                .filter(|doc| {
                    let vars = Vars {
                        auth: caller.clone(),
                        doc: Some((*doc).clone()),
                        ..Vars::default()
                    };
                    compiled.evaluate(&vars).allow
                })
                .map(|d| d["_id"].as_str().unwrap())
                .collect();
            let mut request = s.req(
                Method::GET,
                "/v1/db/r?limit=1000&count=true&sort=_id&fields=_id",
            );
            if !caller.is_null() {
                request = request.header("authorization", bearer(&session));
            }
            let (status, page) = s.send(request).await;
            assert_eq!(status, StatusCode::OK, "{source}: {page}");
            let got: Vec<&str> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["_id"].as_str().unwrap())
                .collect();
            assert_eq!(got, expected, "rule {source}, auth {caller}");
            if !expected.is_empty() && expected.len() < DOCS {
                partial += 1;
            }
            assert_eq!(
                page["count"].as_u64().unwrap() as usize,
                expected.len(),
                "count, rule {source}"
            );
        }
    }
    assert!(
        partial > RULES / 2,
        "only {partial} of {} evaluations were selective",
        RULES * 2
    );
}
