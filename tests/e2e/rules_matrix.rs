//! The decision matrix (HOSTILE RULE-01/02): five fixture collections × six principals × six
//! operations, checked against the table in `rule_matrix.txt`, through the REST routes and
//! again through `/v1/db/batch` — both must give the table.
//!
//! Principals: `anon` (no token), `A` and `B` (users; A is an editor), `ro` (a user with the
//! role `viewer`), `admin` (a console admin's token), `svc` (the service key).
//! Cells: `ok`, `403`, `404`, or for `list`/`count` the number of documents seen (of two: one
//! owned by A, one by B). Writes target A's document.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, SERVICE_KEY, TestServer, signup};
use crate::on_both_backends;

on_both_backends!(the_decision_matrix_holds_on_every_path);

const EXPECTED: &str = include_str!("rule_matrix.txt");

const OWNER: &str = "auth != null && doc._owner == auth.id";
const EDITOR: &str = "auth != null && auth.role == 'editor'";

fn fixtures() -> Vec<(&'static str, Value)> {
    vec![
        ("public", json!({"list": "true", "get": "true"})),
        (
            "owner",
            json!({"list": OWNER, "get": OWNER, "create": "auth != null", "update": OWNER, "delete": OWNER}),
        ),
        (
            "role",
            json!({"list": "auth != null", "get": "auth != null", "create": EDITOR, "update": EDITOR, "delete": EDITOR}),
        ),
        (
            "guarded",
            json!({
                "list": "true", "get": "true",
                "create": "auth != null && new.title.size() <= 10",
                "update": "auth != null && new.title.size() <= 10 && new.title != doc.title",
            }),
        ),
        ("norule", json!({})),
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Rest,
    Batch,
}

struct Principals {
    names: Vec<&'static str>,
    headers: Vec<Option<String>>,
    a: String,
    b: String,
}

async fn principals(s: &TestServer) -> Principals {
    let a = signup(s, "a@example.com").await;
    let b = signup(s, "b@example.com").await;
    let ro = signup(s, "ro@example.com").await;
    let id = |v: &Value| v["user"]["id"].as_str().unwrap().to_owned();
    for (user, role) in [(&a, "editor"), (&ro, "viewer")] {
        let (status, body) = s
            .svc_json(
                Method::PATCH,
                &format!("/v1/admin/users/{}", id(user)),
                json!({ "role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let out = s
        .create_admin("root@example.com", "admin password here")
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, admin) = s
        .send(
            s.req(Method::POST, "/v1/admin/login")
                .json(&json!({"email": "root@example.com", "password": "admin password here"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{admin}");
    let token = |v: &Value| Some(format!("Bearer {}", v["access_token"].as_str().unwrap()));
    Principals {
        names: vec!["anon", "A", "B", "ro", "admin", "svc"],
        headers: vec![
            None,
            token(&a),
            token(&b),
            token(&ro),
            token(&admin),
            Some(format!("Bearer {SERVICE_KEY}")),
        ],
        a: id(&a),
        b: id(&b),
    }
}

fn outcome(status: StatusCode) -> String {
    if status.is_success() {
        "ok".into()
    } else {
        status.as_u16().to_string()
    }
}

/// Puts the fixture back: A's document `da` and B's `db`, as the service; no `dn`.
async fn reset(s: &TestServer, coll: &str, p: &Principals) {
    let _ = s
        .send(s.svc(Method::DELETE, &format!("/v1/db/{coll}/dn")))
        .await;
    for (id, owner) in [("da", &p.a), ("db", &p.b)] {
        let (status, body) = s
            .svc_json(
                Method::PUT,
                &format!("/v1/db/{coll}/{id}?upsert=true"),
                json!({"title": id, "_owner": owner}),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let (status, page) = s.svc_get(&format!("/v1/db/{coll}?count=true")).await;
    assert_eq!(page["count"], 2, "{status} {page}");
}

async fn row(
    s: &TestServer,
    coll: &str,
    auth: &Option<String>,
    path: Path,
    p: &Principals,
) -> Vec<String> {
    let with = |r: RequestBuilder| match auth {
        Some(h) => r.header("authorization", h),
        None => r,
    };
    let mut cells = Vec::new();
    let (status, _) = s
        .send(with(s.req(Method::GET, &format!("/v1/db/{coll}/da"))))
        .await;
    cells.push(outcome(status));
    let (status, page) = s
        .send(with(s.req(Method::GET, &format!("/v1/db/{coll}?limit=10"))))
        .await;
    cells.push(match status {
        StatusCode::OK => page["items"].as_array().unwrap().len().to_string(),
        other => outcome(other),
    });
    let (status, page) = s
        .send(
            with(s.req(Method::POST, &format!("/v1/db/{coll}/query")))
                .json(&json!({"limit": 0, "count": true})),
        )
        .await;
    cells.push(match status {
        StatusCode::OK => page["count"].to_string(),
        other => outcome(other),
    });
    let writes = [
        (
            Method::POST,
            format!("/v1/db/{coll}"),
            json!({"op": "create", "collection": coll, "id": "dn", "data": {"title": "new"}}),
            json!({"_id": "dn", "title": "new"}),
        ),
        (
            Method::PATCH,
            format!("/v1/db/{coll}/da"),
            json!({"op": "update", "collection": coll, "id": "da", "data": {"title": "changed"}}),
            json!({"title": "changed"}),
        ),
        (
            Method::DELETE,
            format!("/v1/db/{coll}/da"),
            json!({"op": "delete", "collection": coll, "id": "da"}),
            Value::Null,
        ),
    ];
    for (method, url, op, body) in writes {
        let status = match path {
            Path::Rest => {
                let r = with(s.req(method.clone(), &url));
                let r = if body.is_null() { r } else { r.json(&body) };
                s.send(r).await.0
            }
            Path::Batch => {
                s.send(with(s.req(Method::POST, "/v1/db/batch")).json(&json!({ "ops": [op] })))
                    .await
                    .0
            }
        };
        cells.push(outcome(status));
        // Every write starts from the same state.
        reset(s, coll, p).await;
    }
    cells
}

async fn the_decision_matrix_holds_on_every_path(backend: Backend) {
    let s = TestServer::start(backend).await;
    let p = principals(&s).await;
    for (name, rules) in fixtures() {
        s.collection(name, json!({ "rules": rules })).await;
        reset(&s, name, &p).await;
    }
    for path in [Path::Rest, Path::Batch] {
        let mut table = String::from("# fixture principal get list count create update delete\n");
        for (coll, _) in fixtures() {
            for (who, auth) in p.names.iter().zip(&p.headers) {
                let cells = row(&s, coll, auth, path, &p).await;
                table.push_str(&format!("{coll} {who} {}\n", cells.join(" ")));
            }
        }
        let normalize = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect()
        };
        if normalize(&table) != normalize(EXPECTED) {
            let which = if path == Path::Rest { "REST" } else { "batch" };
            panic!("the {which} decision matrix differs from rule_matrix.txt; got:\n{table}");
        }
    }
}
