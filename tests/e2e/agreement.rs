//! Property test: for random documents, filters and sorts, the server's SQL (SQLite and
//! Postgres) returns exactly the documents, in exactly the order, that the query language's
//! in-memory semantics (`ferrobase::query`) give. Realtime and rules evaluate filters in
//! memory, so the two must never disagree.

use std::borrow::Cow;

use ferrobase::query::{Filter, JsonDoc, compare, parse_sort};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestServer};
use crate::on_both_backends;

on_both_backends!(sql_and_in_memory_matching_agree);

const DOCS: usize = 80;
const QUERIES: usize = 400;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, 1.0, 2.5, -1.5]).prop_map(Value::from),
        prop::sample::select(vec!["", "a", "ab", "b", "B", "é", "a b", "1"]).prop_map(Value::from),
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
            if let Some(a) = a {
                m.insert("a".into(), a);
            }
            if let Some(b) = b {
                m.insert("b".into(), b);
            }
            if let Some(o) = o {
                m.insert("o".into(), o);
            }
            m
        })
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "o", "o.x", "_id", "_version", "_owner"])
}

fn atom() -> impl Strategy<Value = Value> {
    (
        path(),
        0usize..11,
        value(),
        prop::collection::vec(scalar(), 0..3),
    )
        .prop_map(|(p, op, v, list)| {
            let cond = match op {
                0 => v,
                1 => json!({ "$ne": v }),
                2 => json!({ "$gt": if v.is_string() || v.is_number() { v } else { json!(1) } }),
                3 => json!({ "$lte": if v.is_string() || v.is_number() { v } else { json!("b") } }),
                4 => json!({ "$in": list }),
                5 => json!({ "$nin": list }),
                6 => json!({ "$exists": v.as_bool().unwrap_or(true) }),
                7 => json!({ "$contains": v }),
                8 => json!({ "$startsWith": v.as_str().unwrap_or("a") }),
                9 => {
                    let types = ["null", "boolean", "number", "string", "array", "object"];
                    json!({ "$type": types[list.len() * 2 + usize::from(v.is_string())] })
                }
                _ => json!({ "$size": v.as_u64().unwrap_or(1) % 3 }),
            };
            json!({ p: cond })
        })
}

fn filter() -> impl Strategy<Value = Value> {
    atom().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "$and": v })),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "$or": v })),
            inner.prop_map(|f| json!({ "$not": f })),
        ]
    })
}

fn sort() -> impl Strategy<Value = String> {
    prop::collection::vec((path(), any::<bool>()), 0..3).prop_map(|keys| {
        let mut seen = Vec::new();
        for (p, desc) in keys {
            if !seen.iter().any(|(q, _): &(&str, bool)| *q == p) {
                seen.push((p, desc));
            }
        }
        seen.iter()
            .map(|(p, desc)| format!("{}{p}", if *desc { "-" } else { "" }))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn as_doc(stored: &Value) -> JsonDoc<'static> {
    let mut system = Map::new();
    let mut data = Map::new();
    for (k, v) in stored.as_object().unwrap() {
        if k.starts_with('_') {
            system.insert(k.clone(), v.clone());
        } else {
            data.insert(k.clone(), v.clone());
        }
    }
    JsonDoc {
        system: Cow::Owned(system),
        data: Cow::Owned(data),
    }
}

async fn sql_and_in_memory_matching_agree(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.collection(
        "r",
        json!({"indexes": [{"fields": ["a"]}, {"fields": ["b", "-a"]}]}),
    )
    .await;
    // Deterministic: a failure reproduces on the next run.
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
            if i % 3 == 0 {
                data.insert("_owner".into(), json!(format!("u{}", i % 2)));
            }
            json!({"op": "create", "collection": "r", "id": format!("r{i:03}"), "data": data})
        })
        .collect();
    let (status, out) = s
        .svc_json(Method::POST, "/v1/db/batch", json!({ "ops": ops }))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let stored: Vec<Value> = out["results"].as_array().unwrap().clone();
    let memory: Vec<JsonDoc<'static>> = stored.iter().map(as_doc).collect();

    for _ in 0..QUERIES {
        let where_ = filter().new_tree(&mut runner).unwrap().current();
        let sort_spec = sort().new_tree(&mut runner).unwrap().current();
        let parsed = Filter::parse(&where_).unwrap();
        let keys = parse_sort(Some(&sort_spec)).unwrap();
        let mut expected: Vec<&JsonDoc<'static>> =
            memory.iter().filter(|d| parsed.matches(*d)).collect();
        expected.sort_by(|a, b| compare(&keys, *a, *b));
        let expected_ids: Vec<String> = expected
            .iter()
            .map(|d| d.system["_id"].as_str().unwrap().to_owned())
            .collect();

        let (status, page) = s
            .svc_json(
                Method::POST,
                "/v1/db/r/query",
                json!({"where": where_, "sort": sort_spec, "limit": 1000, "fields": ["_id"], "count": true}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "where {where_}: {page}");
        let got: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, expected_ids, "where {where_} sort {sort_spec}");
        assert_eq!(
            page["count"].as_u64().unwrap() as usize,
            expected_ids.len(),
            "count, where {where_}"
        );
    }
}
