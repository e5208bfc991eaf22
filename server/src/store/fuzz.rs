//! Property-based fuzzing of every parser that takes client input: the query language
//! (`where`, `sort`, cursors) and its SQL compilation for both dialects, the update
//! operators, the rule compiler and evaluator, object keys and realtime frames. The
//! property is the same everywhere: any input gives a value or an error, never a panic; and
//! what is accepted keeps its invariants (compiled SQL binds every value as a parameter,
//! object keys never escape their bucket).
//!
//! CI runs the default number of cases per property (`PROPTEST_CASES`, 256); run longer
//! locally with `PROPTEST_CASES=100000 cargo test -p ferrobase fuzz`. Failing cases are
//! saved under `server/proptest-regressions/` and replayed first on every run: commit them.
//! Interesting inputs found by hand live in the `SEEDS` lists below.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::query::{Cursor, Field, Filter, JsonDoc, parse_sort};
use crate::store::query::{Binder, keyset_sql, order_sql, select_count, select_page};
use crate::store::{DocQuery, postgres, sqlite};

/// Names that reach interesting code: operators, system fields, paths, odd text.
const KEYS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$contains",
    "$startsWith",
    "$size",
    "$type",
    "$not",
    "$and",
    "$or",
    "$each",
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$push",
    "$addToSet",
    "$pull",
    "$",
    "_id",
    "_owner",
    "_created_at",
    "_updated_at",
    "_version",
    "a",
    "a.b",
    "a..b",
    ".a",
    "a.",
    "a.0",
    "0",
    "",
    "é",
    "a'b",
    "a\"b",
    "a;DROP TABLE x",
    "a\u{0}b",
    "a/b",
    "__proto__",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_owned),
        any::<String>(),
        "[a-z$._0-9'\" ]{0,12}",
        "x{250,300}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-3i64..4).prop_map(Value::from),
        text().prop_map(Value::String),
    ]
}

/// Arbitrary JSON biased towards the query and update languages' shapes.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((text(), json_value()), 0..6).prop_map(|e| e.into_iter().collect())
}

/// Compiles a filter, sort and keyset for both dialects; checks that no client text reached
/// the SQL except through parameters.
fn compile_everywhere(filter: &Filter, sort: &[crate::query::SortKey], after: Option<&[Value]>) {
    let query = DocQuery {
        filter,
        sort,
        after,
        offset: 0,
        limit: 51,
    };
    let dialects: [&dyn crate::store::query::Dialect; 2] = [&sqlite::Dialect, &postgres::Dialect];
    for d in dialects {
        let (sql, _) = select_page(d, "t", "data", &query);
        let (count, _) = select_count(d, "t", filter);
        for text in [&sql, &count] {
            assert!(!text.contains("DROP TABLE"), "client text in SQL: {text}");
            assert!(!text.contains('\0'), "NUL in SQL: {text}");
        }
        let _ = order_sql(d, sort);
        if let Some(after) = after {
            let mut b = Binder::new(d.numbered());
            let _ = keyset_sql(d, sort, after, &mut b);
        }
    }
}

/// A document whose system fields and data both come from `doc`.
fn json_doc(doc: &Map<String, Value>) -> JsonDoc<'_> {
    JsonDoc {
        system: std::borrow::Cow::Borrowed(doc),
        data: std::borrow::Cow::Borrowed(doc),
    }
}

const FILTER_SEEDS: &[&str] = &[
    r#"{"$and": []}"#,
    r#"{"$or": [{"$and": [{"a": {"$in": []}}]}]}"#,
    r#"{"a": {"$not": {"$not": {"$type": "string"}}}}"#,
    r#"{"_owner": {"$in": [null, "x", 1]}}"#,
    r#"{"_version": {"$gt": 1e308}}"#,
    r#"{"a.b.c.d.e.f.g": {"$size": -1}}"#,
    r#"{"a": {"$startsWith": "%_\\"}}"#,
    r#"{"a": {"$contains": {"b": [1, {"c": null}]}}}"#,
];

#[test]
fn filter_seeds_parse_or_fail_cleanly() {
    for seed in FILTER_SEEDS {
        let value: Value = serde_json::from_str(seed).unwrap_or(Value::Null);
        if let Ok(filter) = Filter::parse(&value) {
            compile_everywhere(&filter, &[], None);
        }
    }
}

proptest! {
    /// Any JSON as `where`: parses or errs; what parses compiles on both dialects and
    /// evaluates in memory against any document.
    #[test]
    fn any_where_parses_compiles_and_matches(filter in json_value(), doc in object()) {
        if let Ok(filter) = Filter::parse(&filter) {
            compile_everywhere(&filter, &[], None);
            let _ = filter.matches(&json_doc(&doc));
        }
    }

    /// Well-formed-looking filters (an object of field → operator object) reach deeper.
    #[test]
    fn operator_filters_parse_compile_and_match(
        field in text(),
        op in prop::sample::select(KEYS),
        arg in json_value(),
        doc in object(),
    ) {
        let filter = json!({ field: { op: arg } });
        if let Ok(filter) = Filter::parse(&filter) {
            compile_everywhere(&filter, &[], None);
            let _ = filter.matches(&json_doc(&doc));
        }
    }

    /// Any `sort` text and any cursor text.
    #[test]
    fn any_sort_and_cursor(spec in text(), cursor in any::<String>(), after in prop::collection::vec(scalar(), 0..4)) {
        if let Ok(sort) = parse_sort(Some(&spec)) {
            let _ = Cursor::decode(&cursor, &sort);
            let after = (after.len() == sort.len()).then_some(after);
            compile_everywhere(&Filter::and(Vec::new()), &sort, after.as_deref());
        }
        let _ = Field::parse(&spec);
    }

    /// Any PATCH body applied to any document: a new document or an error, and the input
    /// document is never changed.
    #[test]
    fn any_update_applies_or_fails(body in json_value(), doc in object()) {
        if let Ok(update) = crate::documents::update::Update::parse(body) {
            let before = doc.clone();
            let _ = update.apply(&doc);
            prop_assert_eq!(before, doc);
        }
    }

    /// Operator-shaped updates (`{"$op": {field: arg}}`) reach the appliers.
    #[test]
    fn operator_updates_apply_or_fail(
        op in prop::sample::select(KEYS),
        field in text(),
        arg in json_value(),
        doc in object(),
    ) {
        if let Ok(update) = crate::documents::update::Update::parse(json!({ op: { field: arg } })) {
            let _ = update.apply(&doc);
        }
    }

    /// Any rule text compiles or errs (with a position, not a panic); what compiles
    /// evaluates against any document and caller, and a list rule turns into a filter.
    #[test]
    fn any_rule_compiles_and_evaluates(source in rule_text(), doc in object(), auth in json_value()) {
        use crate::rules::{Rule, Scope, Vars};
        for scope in [Scope::Document, Scope::Bucket, Scope::Channel] {
            if let Ok(rule) = Rule::compile(&source, scope) {
                let vars = Vars {
                    auth: auth.clone(),
                    doc: Some(Value::Object(doc.clone())),
                    new: Some(Value::Object(doc.clone())),
                    object: Some(Value::Object(doc.clone())),
                    channel: Some(json!({"name": "c"})),
                    ..Vars::default()
                };
                let _ = rule.evaluate(&vars);
            }
        }
        if let Ok(rule) = Rule::compile_list(&source) {
            let filter = rule.filter(&Vars { auth, ..Vars::default() });
            compile_everywhere(&filter, &[], None);
        }
    }

    /// Object keys: whatever is accepted stays inside the bucket.
    #[test]
    fn any_object_key_is_safe_or_refused(key in object_key_text()) {
        if let Ok(parsed) = crate::storage::ObjectKey::parse(&key) {
            let k = parsed.as_str();
            prop_assert!(!k.is_empty() && !k.starts_with('/') && !k.contains('\\') && !k.contains('\0'));
            prop_assert!(k.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."), "{}", k);
            let _ = parsed.file_name();
        }
        let _ = crate::storage::key::check_prefix(&key);
    }

    /// Realtime frames: any text, and JSON frames of any shape with a known `type`.
    #[test]
    fn any_realtime_frame_parses_or_errs(text in any::<String>(), kind in prop::sample::select(FRAME_TYPES), body in object()) {
        let _ = serde_json::from_str::<crate::realtime::protocol::ClientMsg>(&text);
        let mut frame = body;
        frame.insert("type".into(), json!(kind));
        let _ = serde_json::from_value::<crate::realtime::protocol::ClientMsg>(Value::Object(frame));
    }
}

const FRAME_TYPES: &[&str] = &[
    "auth",
    "subscribe",
    "unsubscribe",
    "join",
    "leave",
    "broadcast",
    "ping",
    "pong",
    "",
];

/// Rule-like text: fragments of CEL glued together, plus arbitrary strings.
fn rule_text() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "auth",
        "auth.id",
        "doc",
        "doc._owner",
        "new.title",
        "request.time",
        "object.size",
        "channel.name",
        "==",
        "!=",
        "&&",
        "||",
        "!",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ".",
        ",",
        "size()",
        "in",
        "true",
        "false",
        "null",
        "1",
        "-9223372036854775808",
        "1e400",
        "'a'",
        "\"",
        "has(doc.a)",
        "doc.a.b.c",
        "int('x')",
        "timestamp('bad')",
        "duration('1h')",
        "exists(x, x > 1)",
        "map(x, x)",
        "matches('(')",
        "?",
        ":",
        "+",
        "/",
        "0",
        "%",
    ]);
    prop_oneof![
        prop::collection::vec(fragment, 0..12).prop_map(|parts| parts.join(" ")),
        any::<String>(),
    ]
}

/// Key-like text: path segments including traversal and odd characters.
fn object_key_text() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "a", "..", ".", "", "b.txt", "%2e%2e", "\\", "C:", "\u{0}", "é", "a b", "~", "con",
        "\u{202e}", "?", "#",
    ]);
    prop_oneof![
        prop::collection::vec(segment, 0..6).prop_map(|s| s.join("/")),
        any::<String>(),
        "[a-z/.]{0,8}x{1000,1100}",
    ]
}
