//! Hostile auth cases (HOSTILE.md AUTH-01..05): forged and malformed tokens, claim attacks
//! signed with the real key, expiry, brute force and rate limits, enumeration parity.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestServer, assert_error, bearer, metric, signup};
use crate::on_both_backends;

on_both_backends!(
    forged_and_malformed_tokens_are_refused,
    claims_are_checked_even_with_a_valid_signature,
    brute_force_is_rate_limited_per_account_and_address,
    concurrent_guesses_cannot_pass_the_account_limit,
);

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn status_with(s: &TestServer, token: &str) -> (StatusCode, Value) {
    s.send(
        s.req(Method::GET, "/v1/auth/user")
            .header("authorization", format!("Bearer {token}")),
    )
    .await
}

async fn forged_and_malformed_tokens_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "victim@example.com").await;
    let real = session["access_token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = real.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();

    // A loopback canary: nothing may connect to it (no jku/x5u fetching).
    let canary = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let canary_url = format!("http://{}", canary.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while canary.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let with_header = |h: Value| format!("{}.{}.{}", b64(&h), parts[1], parts[2]);
    let mut forged = vec![
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            parts[1]
        ),
        format!("{}.{}.", b64(&json!({"alg": "None"})), parts[1]),
        format!("{}.{}.", b64(&json!({"alg": "nOnE", "kid": kid})), parts[1]),
        format!(
            "{}.{}.{}",
            b64(&json!({"typ": "JWT", "kid": kid})),
            parts[1],
            parts[2]
        ),
        // A valid signature over another payload.
        format!("{}.{}.{}", parts[0], b64(&admin_claims), parts[2]),
        format!("{real}.x"),
        format!("{real}.x.y"),
        "a.b".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        with_header(json!({"alg": "EdDSA", "kid": "../../dev/null"})),
        with_header(json!({"alg": "EdDSA", "kid": "' OR '1'='1"})),
        with_header(json!({"alg": "EdDSA", "kid": "k".repeat(10_000)})),
        with_header(json!({"alg": "EdDSA", "kid": kid, "jku": format!("{canary_url}/jwks")})),
        with_header(json!({"alg": "EdDSA", "kid": kid, "x5u": format!("{canary_url}/cert")})),
        with_header(
            json!({"alg": "EdDSA", "kid": kid, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}),
        ),
        with_header(json!({"alg": "EdDSA", "kid": kid, "x5c": ["AAAA"]})),
        with_header(json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]})),
        with_header(json!({"alg": "RS256", "kid": kid})),
        with_header(json!({"alg": "PBES2-HS256+A128KW", "p2c": 2147483648u64, "kid": kid})),
        format!(
            "{}.{}.{}",
            STANDARD.encode("{\"alg\":\"EdDSA\"}"),
            parts[1],
            parts[2]
        ),
        "x".repeat(20_000),
        "{\"protected\":\"x\",\"payload\":\"y\",\"signature\":\"z\"}".to_owned(),
    ];
    // HS256 signed with the server's public key.
    let (_, jwks) = s.send(s.req(Method::GET, "/.well-known/jwks.json")).await;
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    forged.push(
        jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap(),
    );

    for token in &forged {
        let r = status_with(&s, token).await;
        assert_error(&r, 401, "unauthenticated");
        let r = s
            .send(
                s.req(Method::GET, "/v1/admin/collections")
                    .header("authorization", format!("Bearer {token}")),
            )
            .await;
        assert_eq!(
            r.0,
            StatusCode::UNAUTHORIZED,
            "admin API with a forged token: {}",
            r.1
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no key URL was fetched"
    );
    for header in [
        "Bearer",
        "Bearer ",
        "Token abc",
        "bearer  ",
        "Basic dXNlcjpwYXNz",
    ] {
        let r = s
            .send(
                s.req(Method::GET, "/v1/auth/user")
                    .header("authorization", header),
            )
            .await;
        assert_error(&r, 401, "unauthenticated");
    }
    // The real one still works: nothing above disturbed the server.
    assert_eq!(status_with(&s, &real).await.0, StatusCode::OK);
    s.assert_healthy().await;
}

/// Signs tokens with the server's own key (read from its database), to prove the claim
/// checks do not rest on the signature alone.
async fn claims_are_checked_even_with_a_valid_signature(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "claims@example.com").await;
    let seed_b64: String = match &s.pg {
        Some(pg) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = 'jwt_ed25519_seed'")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
        None => {
            use sqlx::Connection;
            let url = format!(
                "sqlite://{}?mode=ro",
                s.data_dir().join("data.db").display()
            );
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = 'jwt_ed25519_seed'")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    };
    let seed: [u8; 32] = STANDARD.decode(seed_b64).unwrap().try_into().unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let key = jsonwebtoken::EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes());
    let real = session["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(real.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let good: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(real.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let sign = |claims: &Value| jsonwebtoken::encode(&h, claims, &key).unwrap();
    // Sanity: a token we sign with the real claims is accepted.
    assert_eq!(status_with(&s, &sign(&good)).await.0, StatusCode::OK);
    let now = good["iat"].as_i64().unwrap();
    let variant = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        sign(&c)
    };
    let expired = variant(&|c| c["exp"] = json!(now - 3600));
    assert_error(&status_with(&s, &expired).await, 401, "token_expired");
    for (why, token) in [
        (
            "exp as a string",
            variant(&|c| c["exp"] = json!((now + 600).to_string())),
        ),
        (
            "exp as a huge float",
            variant(&|c| c["exp"] = json!(f64::MAX)),
        ),
        ("exp negative", variant(&|c| c["exp"] = json!(-1))),
        ("exp null", variant(&|c| c["exp"] = Value::Null)),
        (
            "exp missing",
            variant(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "nbf in the future",
            variant(&|c| c["nbf"] = json!(now + 3600)),
        ),
        (
            "foreign issuer",
            variant(&|c| c["iss"] = json!("someone-else")),
        ),
        (
            "missing issuer",
            variant(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        (
            "unknown session",
            variant(&|c| c["sid"] = json!("no-such-session")),
        ),
        (
            "another user's id",
            variant(&|c| c["sub"] = json!("someone")),
        ),
        (
            "admin flag on a user session",
            variant(&|c| c["adm"] = json!(true)),
        ),
    ] {
        let r = status_with(&s, &token).await;
        assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{why}: {}", r.1);
    }
    // The token of a deleted user stops working.
    let uid = session["user"]["id"].as_str().unwrap();
    s.send(s.svc(Method::DELETE, &format!("/v1/admin/users/{uid}")))
        .await;
    assert_error(&status_with(&s, &sign(&good)).await, 401, "unauthenticated");
    s.assert_healthy().await;
}

async fn brute_force_is_rate_limited_per_account_and_address(backend: Backend) {
    let config = r#"
        trusted_proxies = ["10.9.9.9"]
        [auth.rate_limits.login]
        per_ip = 1000
        per_account = 3
        window = "1h"
        [auth.rate_limits.signup]
        per_ip = 4
        window = "1h"
    "#;
    let s = Options::new(backend)
        .config(config)
        .strict_limits()
        .start()
        .await;
    signup(&s, "target@example.com").await;
    let attempt = |password: &str, forwarded: Option<&str>| {
        let mut r = s
            .req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": "target@example.com", "password": password}));
        if let Some(ip) = forwarded {
            r = r.header("x-forwarded-for", ip);
        }
        r
    };
    for _ in 0..3 {
        assert_error(
            &s.send(attempt("wrong password", None)).await,
            401,
            "invalid_credentials",
        );
    }
    let limited = attempt("wrong password", None).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Even the right password waits, and a spoofed X-Forwarded-For changes nothing.
    assert_error(
        &s.send(attempt("correct horse battery", None)).await,
        429,
        "rate_limited",
    );
    assert_error(
        &s.send(attempt("correct horse battery", Some("1.2.3.4")))
            .await,
        429,
        "rate_limited",
    );
    // Per address: signups from this address stop at the limit (one was used above).
    for i in 0..3 {
        let r = s
            .send(s.req(Method::POST, "/v1/auth/signup").json(
                &json!({"email": format!("s{i}@example.com"), "password": "correct horse battery"}),
            ))
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    }
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/signup")
                .header("x-forwarded-for", "5.6.7.8")
                .json(&json!({"email": "s9@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_error(&r, 429, "rate_limited");
    s.assert_healthy().await;
}

/// AUTH-01 and AUTH-02: stored hashes are argon2id with OWASP parameters and distinct salts;
/// a wrong password and an unknown account answer alike, in about the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashes_are_owasp_argon2id_and_logins_do_not_enumerate() {
    let s = TestServer::start(Backend::Sqlite).await;
    signup(&s, "one@example.com").await;
    signup(&s, "two@example.com").await;
    let url = format!(
        "sqlite://{}?mode=ro",
        s.data_dir().join("data.db").display()
    );
    let hashes: Vec<String> = {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT password_hash FROM fb_users ORDER BY email")
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    for hash in &hashes {
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let salt = hash.split('$').nth(4).unwrap();
        assert!(
            URL_SAFE_NO_PAD
                .decode(salt)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(salt))
                .unwrap()
                .len()
                >= 16
        );
    }
    assert_ne!(
        hashes[0].split('$').nth(4),
        hashes[1].split('$').nth(4),
        "salts differ"
    );

    let login = |email: &str| {
        s.req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": email, "password": "not the password"}))
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        let a = s.send(login("one@example.com")).await;
        known.push(t.elapsed());
        let t = Instant::now();
        let b = s.send(login("nobody@example.com")).await;
        unknown.push(t.elapsed());
        assert_eq!(a, b);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[7].as_secs_f64(), unknown[7].as_secs_f64());
    let diff = (k - u).abs() / k.max(u);
    assert!(
        diff < 0.25,
        "median login times differ by {:.0} % ({k:.3}s vs {u:.3}s)",
        diff * 100.0
    );
    let _ = bearer;
}

/// Access tokens expire: with a 1 s lifetime (and the 5 s leeway), a token is refused as
/// `token_expired` a few seconds later, and refreshing gives a working one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_tokens_say_so_and_refresh_fixes_it() {
    let s = Options::new(Backend::Sqlite)
        .env("FERROBASE_ACCESS_TOKEN_TTL", "1s")
        .start()
        .await;
    let session = signup(&s, "short@example.com").await;
    assert_eq!(session["expires_in"], 1);
    assert_eq!(
        status_with(&s, session["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(7_200)).await;
    assert_error(
        &status_with(&s, session["access_token"].as_str().unwrap()).await,
        401,
        "token_expired",
    );
    let (status, fresh) = s
        .send(
            s.req(Method::POST, "/v1/auth/refresh")
                .json(&json!({"refresh_token": session["refresh_token"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        status_with(&s, fresh["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );
}

/// AUTH-03, the Parse Server race: with the per-account limit at 5, fifty *concurrent* wrong
/// passwords get exactly five verifications (401) and 45 refusals (429) — an attempt is
/// counted before its slow hash check, not after. The same limit guards the current
/// password a signed-in user must give to change their password or email, and admin logins.
/// And a login flood stays within a memory bound.
async fn concurrent_guesses_cannot_pass_the_account_limit(backend: Backend) {
    let config = r#"
        [auth.rate_limits.login]
        per_ip = 10000
        per_account = 5
        window = "1h"
    "#;
    let s = Options::new(backend)
        .config(config)
        .strict_limits()
        .start()
        .await;
    signup(&s, "target@example.com").await;

    // A flood of 200 parallel logins (distinct unknown accounts, each a dummy hash check)
    // queues for the hashing threads instead of holding 200 argon2 work areas (19 MiB each).
    let before = s.rss_kib();
    let flooding = std::sync::atomic::AtomicBool::new(true);
    let flood = async {
        let logins = (0..200).map(|i| {
            s.send(s.req(Method::POST, "/v1/auth/login").json(
                &json!({"email": format!("nobody{i}@example.com"), "password": "some password"}),
            ))
        });
        let results = futures_util::future::join_all(logins).await;
        flooding.store(false, std::sync::atomic::Ordering::SeqCst);
        results
    };
    let watch = async {
        let mut peak = 0;
        while flooding.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(s.rss_kib());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    };
    let (results, peak) = tokio::join!(flood, watch);
    for r in &results {
        assert_error(r, 401, "invalid_credentials");
    }
    let grew_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 100,
        "RSS grew by {grew_mib} MiB during a login flood"
    );

    let tally = |results: Vec<(StatusCode, Value)>| {
        let (mut denied, mut limited) = (0, 0);
        for r in &results {
            match r.0 {
                StatusCode::UNAUTHORIZED => {
                    assert_error(r, 401, "invalid_credentials");
                    denied += 1;
                }
                _ => {
                    assert_error(r, 429, "rate_limited");
                    limited += 1;
                }
            }
        }
        (denied, limited)
    };

    let guesses =
        (0..50).map(|i| {
            s.send(s.req(Method::POST, "/v1/auth/login").json(
                &json!({"email": "target@example.com", "password": format!("guess number {i}")}),
            ))
        });
    let results = futures_util::future::join_all(guesses).await;
    assert_eq!(tally(results), (5, 45));
    assert_eq!(
        metric(&s.metrics().await, "ferrobase_auth_login_failures_total"),
        200 + 5
    );
    // Locked: even the right password waits for the window.
    assert_error(
        &s.send(
            s.req(Method::POST, "/v1/auth/login")
                .json(&json!({"email": "target@example.com", "password": "correct horse battery"})),
        )
        .await,
        429,
        "rate_limited",
    );

    // A stolen access token is no way around it: the current password is counted alike.
    let other = signup(&s, "other@example.com").await;
    let changes = (0..20).map(|i| {
        s.send(
            s.req(Method::PATCH, "/v1/auth/user")
                .header("authorization", bearer(&other))
                .json(&json!({"password": "a brand new password",
                    "current_password": format!("guess number {i}")})),
        )
    });
    let results = futures_util::future::join_all(changes).await;
    assert_eq!(tally(results), (5, 15));

    // And admin logins.
    let created = s
        .create_admin("root@example.com", "admin password here")
        .await;
    assert!(created.status.success());
    let guesses =
        (0..20).map(|i| {
            s.send(s.req(Method::POST, "/v1/admin/login").json(
                &json!({"email": "root@example.com", "password": format!("guess number {i}")}),
            ))
        });
    let results = futures_util::future::join_all(guesses).await;
    assert_eq!(tally(results), (5, 15));
    s.assert_healthy().await;
}
