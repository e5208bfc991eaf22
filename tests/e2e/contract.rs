//! Contract fuzzing (HOSTILE IN-05): schemathesis generates requests from
//! `/v1/openapi.json` (examples, boundary coverage, random fuzzing and stateful sequences
//! through the spec's links) as an anonymous client, as a signed-in user and with the
//! service key, and checks every response: no 5xx, status codes, content types, headers and
//! bodies as the spec says, no 2xx for what requires auth when sent without it.
//!
//! `scripts/test` installs schemathesis (PyPI) and sets `FERROBASE_SCHEMATHESIS`; the
//! number of cases per operation is bounded (`FERROBASE_CONTRACT_EXAMPLES`, default 15) so
//! CI stays short. Run it longer locally with a bigger number. Checks we do not run, and
//! why, are listed in `EXCLUDED`.

use std::process::Stdio;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, SERVICE_KEY, TestServer, bearer, signup};

/// schemathesis checks left out, with the reason.
const EXCLUDED: &[(&str, &str)] = &[
    // Sends a request the spec says is valid and expects a 2xx; random names for
    // collections, buckets and functions that do not exist rightly answer 404.
    ("positive_data_acceptance", "random resource names are 404"),
    // `/v1/storage/{bucket}/sign` and `/v1/storage/{bucket}/{key}` are one route (an
    // object may be named `sign`), so `Allow` lists the union of their methods; OpenAPI has
    // no way to say so.
    (
        "allow_header_conformance",
        "the sign and object paths share one route",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_contract_under_fuzzing() {
    let Some(st) = std::env::var_os("FERROBASE_SCHEMATHESIS") else {
        panic!(
            "FERROBASE_SCHEMATHESIS is not set: run the tests with scripts/test, which \
             installs schemathesis, or point it at a schemathesis executable"
        );
    };
    let examples = std::env::var("FERROBASE_CONTRACT_EXAMPLES").unwrap_or_else(|_| "15".into());
    let s = TestServer::start(Backend::Sqlite).await;
    // Something to find: an open collection with documents, a bucket, a function.
    s.collection(
        "todos",
        json!({"rules": {"list": "true", "get": "true", "create": "true", "update": "true", "delete": "true"}}),
    )
    .await;
    s.create("todos", json!({"_id": "t1", "title": "x"})).await;
    let (status, body) = s
        .svc_json(Method::POST, "/v1/admin/buckets", json!({"name": "files"}))
        .await;
    assert!(status.is_success(), "{body}");
    let session = signup(&s, "fuzz@example.com").await;
    let user = bearer(&session);

    let excluded: Vec<&str> = EXCLUDED.iter().map(|(check, _)| *check).collect();
    let mut failures = Vec::new();
    for (who, header) in [
        ("anonymous", None),
        ("user", Some(format!("Authorization: {user}"))),
        (
            "service key",
            Some(format!("Authorization: Bearer {SERVICE_KEY}")),
        ),
    ] {
        let report = tempfile::tempdir().unwrap();
        let mut cmd = tokio::process::Command::new(&st);
        cmd.arg("run")
            .arg(format!("{}/v1/openapi.json", s.url))
            .args(["--url", &s.url])
            .args(["--checks", "all"])
            .args(["--exclude-checks", &excluded.join(",")])
            .args(["--max-examples", &examples])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--workers", "2", "--request-timeout", "20", "--seed", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .arg("--report-dir")
            .arg(report.path())
            // schemathesis keeps state in `.schemathesis/` of its working folder.
            .current_dir(report.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(h) = &header {
            cmd.args(["--header", h]);
        }
        let out = cmd.output().await.expect("running schemathesis");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("--- as {who} ---\n{text}"));
        }
        s.assert_healthy().await;
    }
    assert!(
        failures.is_empty(),
        "schemathesis failed:\n{}",
        failures.join("\n")
    );
}
