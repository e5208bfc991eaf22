//! Auth: sign-up and sign-in, sessions with rotating refresh tokens (grace window, reuse
//! detection), the current user, email flows, admins and the user admin API — on SQLite and
//! Postgres, through a real socket.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestServer, assert_error, bearer, mailed_token, signup};
use crate::on_both_backends;

on_both_backends!(
    signup_login_and_the_session_shape,
    access_tokens_verify_with_the_published_jwks,
    refresh_rotates_and_the_just_spent_token_returns_the_same_successor,
    reusing_a_spent_refresh_token_revokes_the_whole_session,
    concurrent_refreshes_of_one_token_agree,
    logout_ends_sessions,
    anonymous_users_link_an_email_keeping_id_and_data,
    users_change_their_data_password_and_email,
    email_verification_tokens_are_single_use,
    password_reset_answers_alike_and_revokes_sessions,
    bad_credentials_and_inputs_are_refused_without_leaking,
    admins_manage_users,
    auth_events_reach_the_change_log,
);

const PASSWORD: &str = "correct horse battery";

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

async fn refresh(s: &TestServer, token: &str) -> (StatusCode, Value) {
    s.send(
        s.req(Method::POST, "/v1/auth/refresh")
            .json(&json!({ "refresh_token": token })),
    )
    .await
}

async fn me(s: &TestServer, session: &Value) -> (StatusCode, Value) {
    s.send(
        s.req(Method::GET, "/v1/auth/user")
            .header("authorization", bearer(session)),
    )
    .await
}

async fn login(s: &TestServer, email: &str, password: &str) -> (StatusCode, Value) {
    s.send(
        s.req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

async fn signup_login_and_the_session_shape(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "  Alice@Example.com ").await;
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 900);
    let user = &session["user"];
    assert_eq!(user["email"], "alice@example.com", "emails are normalised");
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["anonymous"], false);
    assert_eq!(user["role"], "user");
    assert_eq!(user["data"], json!({}));
    let keys: Vec<&String> = user.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "anonymous",
            "created_at",
            "data",
            "email",
            "email_verified",
            "id",
            "role"
        ]
    );
    assert!(
        session["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("fbr_")
    );

    let token = session["access_token"].as_str().unwrap();
    let header = header_of(token);
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    let claims = claims_of(token);
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["role"], "user");
    assert_eq!(claims["anon"], false);
    assert_eq!(claims["iss"], "ferrobase");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["sid"].is_string());

    let (status, current) = me(&s, &session).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&current, user);

    let dup = s
        .send(
            s.req(Method::POST, "/v1/auth/signup")
                .json(&json!({"email": "ALICE@example.com", "password": PASSWORD})),
        )
        .await;
    assert_error(&dup, 409, "conflict");

    let (status, again) = login(&s, "alice@EXAMPLE.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user"]["id"], user["id"]);
    assert_ne!(
        claims_of(again["access_token"].as_str().unwrap())["sid"],
        claims["sid"],
        "a new session"
    );
}

async fn access_tokens_verify_with_the_published_jwks(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "jwks@example.com").await;
    let (status, jwks) = s.send(s.req(Method::GET, "/.well-known/jwks.json")).await;
    assert_eq!(status, StatusCode::OK);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let token = session["access_token"].as_str().unwrap();
    let kid = header_of(token)["kid"].as_str().unwrap().to_owned();
    let jwk = set.find(&kid).expect("the token's kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&["ferrobase"]);
    let data =
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies with the JWKS");
    assert_eq!(data.claims["sub"], session["user"]["id"]);
}

async fn refresh_rotates_and_the_just_spent_token_returns_the_same_successor(backend: Backend) {
    let mut s = Options::new(backend)
        .config("[auth]\nrefresh_reuse_grace = \"60s\"\n")
        .start()
        .await;
    let r0 = signup(&s, "rot@example.com").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, first) = refresh(&s, &r0).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r0, r1);
    assert_eq!(me(&s, &first).await.0, StatusCode::OK);
    // A retry after a lost response: the same successor.
    let (status, retry) = refresh(&s, &r0).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["refresh_token"], r1);
    // It survives a crash right after it was issued.
    s.kill9().await;
    s.restart().await;
    let (status, after_crash) = refresh(&s, &r0).await;
    assert_eq!(status, StatusCode::OK, "{after_crash}");
    assert_eq!(after_crash["refresh_token"], r1);
    // R1 rotates on; now R0 is the grandparent: reuse.
    let (status, second) = refresh(&s, &r1).await;
    assert_eq!(status, StatusCode::OK);
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    let reuse = refresh(&s, &r0).await;
    assert_error(&reuse, 401, "refresh_token_already_used");
    assert_error(&refresh(&s, &r2).await, 401, "invalid_refresh_token");
    for garbage in ["", "fbr_", "nope", &"fbr_x".repeat(100)] {
        assert_error(&refresh(&s, garbage).await, 401, "invalid_refresh_token");
    }
    let wrong_type = s
        .send(
            s.req(Method::POST, "/v1/auth/refresh")
                .json(&json!({"refresh_token": {"$ne": null}})),
        )
        .await;
    assert_error(&wrong_type, 400, "bad_request");
}

async fn reusing_a_spent_refresh_token_revokes_the_whole_session(backend: Backend) {
    let s = Options::new(backend)
        .config("[auth]\nrefresh_reuse_grace = \"0s\"\n")
        .start()
        .await;
    let session = signup(&s, "reuse@example.com").await;
    let r0 = session["refresh_token"].as_str().unwrap().to_owned();
    let (_, next) = refresh(&s, &r0).await;
    let r1 = next["refresh_token"].as_str().unwrap().to_owned();
    // Without a grace window, presenting R0 again is reuse: the family dies.
    assert_error(&refresh(&s, &r0).await, 401, "refresh_token_already_used");
    assert_error(&refresh(&s, &r1).await, 401, "invalid_refresh_token");
    assert_error(&me(&s, &next).await, 401, "unauthenticated");
    assert_error(&me(&s, &session).await, 401, "unauthenticated");
    // Other sessions of the user are untouched.
    let (status, other) = login(&s, "reuse@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me(&s, &other).await.0, StatusCode::OK);
}

async fn concurrent_refreshes_of_one_token_agree(backend: Backend) {
    let s = Options::new(backend)
        .config("[auth]\nrefresh_reuse_grace = \"30s\"\n")
        .start()
        .await;
    let r0 = signup(&s, "race@example.com").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let req = s
            .req(Method::POST, "/v1/auth/refresh")
            .json(&json!({ "refresh_token": r0 }));
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut successors = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        successors.insert(body["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(successors.len(), 1, "never two valid divergent tokens");
    let r1 = successors.into_iter().next().unwrap();
    assert_eq!(refresh(&s, &r1).await.0, StatusCode::OK);
}

async fn logout_ends_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = signup(&s, "out@example.com").await;
    let (_, b) = login(&s, "out@example.com", PASSWORD).await;
    let (_, c) = login(&s, "out@example.com", PASSWORD).await;
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/logout")
                .header("authorization", bearer(&a)),
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT, "{}", r.1);
    assert_error(&me(&s, &a).await, 401, "unauthenticated");
    assert_error(
        &refresh(&s, a["refresh_token"].as_str().unwrap()).await,
        401,
        "invalid_refresh_token",
    );
    assert_eq!(me(&s, &b).await.0, StatusCode::OK, "other sessions live on");
    // Logging out by refresh token alone (no access token).
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/logout")
                .json(&json!({"refresh_token": b["refresh_token"]})),
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT);
    assert_error(&me(&s, &b).await, 401, "unauthenticated");
    // All sessions.
    let (_, d) = login(&s, "out@example.com", PASSWORD).await;
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/logout")
                .header("authorization", bearer(&d))
                .json(&json!({"all": true})),
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT);
    assert_error(&me(&s, &c).await, 401, "unauthenticated");
    assert_error(&me(&s, &d).await, 401, "unauthenticated");
    let nobody = s.send(s.req(Method::POST, "/v1/auth/logout")).await;
    assert_error(&nobody, 401, "unauthenticated");
}

async fn anonymous_users_link_an_email_keeping_id_and_data(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, anon) = s.send(s.req(Method::POST, "/v1/auth/anonymous")).await;
    assert_eq!(status, StatusCode::CREATED, "{anon}");
    assert_eq!(anon["user"]["anonymous"], true);
    assert_eq!(anon["user"]["email"], Value::Null);
    assert_eq!(
        claims_of(anon["access_token"].as_str().unwrap())["anon"],
        true
    );
    let id = anon["user"]["id"].clone();
    let (status, _) = s
        .send(
            s.req(Method::PATCH, "/v1/auth/user")
                .header("authorization", bearer(&anon))
                .json(&json!({"data": {"score": 7}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    signup(&s, "taken@example.com").await;
    let taken = s
        .send(
            s.req(Method::POST, "/v1/auth/link")
                .header("authorization", bearer(&anon))
                .json(&json!({"email": "taken@example.com", "password": PASSWORD})),
        )
        .await;
    assert_error(&taken, 409, "conflict");
    let (status, linked) = s
        .send(
            s.req(Method::POST, "/v1/auth/link")
                .header("authorization", bearer(&anon))
                .json(&json!({"email": "me@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert_eq!(linked["user"]["id"], id, "same id");
    assert_eq!(linked["user"]["anonymous"], false);
    assert_eq!(linked["user"]["data"], json!({"score": 7}), "same data");
    assert_eq!(
        claims_of(linked["access_token"].as_str().unwrap())["anon"],
        false
    );
    let (status, _) = login(&s, "me@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let again = s
        .send(
            s.req(Method::POST, "/v1/auth/link")
                .header("authorization", bearer(&linked))
                .json(&json!({"email": "x@example.com", "password": PASSWORD})),
        )
        .await;
    assert_error(&again, 400, "bad_request");
}

async fn users_change_their_data_password_and_email(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = signup(&s, "change@example.com").await;
    let (_, other) = login(&s, "change@example.com", PASSWORD).await;
    let patch = |body: Value| {
        s.req(Method::PATCH, "/v1/auth/user")
            .header("authorization", bearer(&a))
            .json(&body)
    };
    // Fields the user does not own are refused, and change nothing.
    for forbidden in [
        json!({"role": "admin"}),
        json!({"email_verified": true}),
        json!({"password_hash": "x"}),
        json!({"id": "B"}),
        json!({"anonymous": false}),
        json!({"claims": {"admin": true}}),
    ] {
        assert_error(&s.send(patch(forbidden)).await, 400, "bad_request");
    }
    let (status, user) = s.send(patch(json!({"data": {"nick": "al"}}))).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["data"], json!({"nick": "al"}));
    assert_eq!(user["role"], "user");
    assert_error(
        &s.send(patch(json!({"data": {"_x": 1}}))).await,
        400,
        "validation_failed",
    );
    assert_error(
        &s.send(patch(json!({"password": "a new long password"})))
            .await,
        400,
        "validation_failed",
    );
    let wrong = s
        .send(patch(
            json!({"password": "a new long password", "current_password": "nope"}),
        ))
        .await;
    assert_error(&wrong, 401, "invalid_credentials");
    let (status, _) = s
        .send(patch(
            json!({"password": "a new long password", "current_password": PASSWORD}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me(&s, &a).await.0,
        StatusCode::OK,
        "the current session stays"
    );
    assert_error(&me(&s, &other).await, 401, "unauthenticated");
    assert_error(
        &refresh(&s, other["refresh_token"].as_str().unwrap()).await,
        401,
        "invalid_refresh_token",
    );
    assert_error(
        &login(&s, "change@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    assert_eq!(
        login(&s, "change@example.com", "a new long password")
            .await
            .0,
        StatusCode::OK
    );
    // A new email is unverified and gets a verification mail.
    let (status, user) = s
        .send(patch(
            json!({"email": "New@Example.com", "current_password": "a new long password"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["email"], "new@example.com");
    assert_eq!(user["email_verified"], false);
    assert!(
        mailed_token(&s, "new@example.com", "Confirm")
            .await
            .is_some()
    );
    signup(&s, "taken2@example.com").await;
    let taken = s
        .send(patch(
            json!({"email": "taken2@example.com", "current_password": "a new long password"}),
        ))
        .await;
    assert_error(&taken, 409, "conflict");
}

async fn email_verification_tokens_are_single_use(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "verify@example.com").await;
    let token = mailed_token(&s, "verify@example.com", "Confirm")
        .await
        .expect("signup mails a token");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let req = s
            .req(Method::POST, "/v1/auth/verify")
            .json(&json!({ "token": token }));
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_REQUEST => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one redemption succeeds");
    assert_eq!(me(&s, &session).await.1["email_verified"], true);
    for bad in [
        json!({"token": {"$ne": null}}),
        json!({"token": ["x"]}),
        json!({"token": 123}),
        json!({}),
    ] {
        assert_error(
            &s.send(s.req(Method::POST, "/v1/auth/verify").json(&bad))
                .await,
            400,
            "bad_request",
        );
    }
    for bad in ["", "nope", &"x".repeat(1_000_000)] {
        let r = s
            .send(
                s.req(Method::POST, "/v1/auth/verify")
                    .json(&json!({ "token": bad })),
            )
            .await;
        assert!(
            r.0 == StatusCode::BAD_REQUEST || r.0 == StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            r.1
        );
    }
    // Requesting again mails nothing new for a verified address, and answers alike.
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/verify/request")
                .header("authorization", bearer(&session)),
        )
        .await;
    assert_eq!(r.0, StatusCode::ACCEPTED);
    s.assert_healthy().await;
}

async fn password_reset_answers_alike_and_revokes_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "reset@example.com").await;
    let ask = |email: &str| {
        s.req(Method::POST, "/v1/auth/reset/request")
            .json(&json!({ "email": email }))
    };
    let known = s.send(ask("reset@example.com")).await;
    let unknown = s.send(ask("nobody@example.com")).await;
    assert_eq!(
        known, unknown,
        "the same answer whether or not the account exists"
    );
    assert_eq!(known.0, StatusCode::ACCEPTED);
    let token = crate::helpers::eventually(Duration::from_secs(10), || async {
        mailed_token(&s, "reset@example.com", "Reset").await
    })
    .await;
    let (_, mails) = s.svc_get("/v1/admin/mail").await;
    assert!(
        mails
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["to"] != "nobody@example.com")
    );
    let weak = s
        .send(
            s.req(Method::POST, "/v1/auth/reset")
                .json(&json!({"token": token, "password": "password"})),
        )
        .await;
    assert_error(&weak, 400, "validation_failed");
    // AUTH-08: twenty redemptions at once; exactly one resets.
    let redemptions = (0..20).map(|_| {
        s.send(
            s.req(Method::POST, "/v1/auth/reset")
                .json(&json!({"token": token, "password": "brand new secret words"})),
        )
    });
    let results = futures_util::future::join_all(redemptions).await;
    let done = results
        .iter()
        .filter(|r| r.0 == StatusCode::NO_CONTENT)
        .count();
    assert_eq!(done, 1, "{results:?}");
    for r in results.iter().filter(|r| r.0 != StatusCode::NO_CONTENT) {
        assert_error(r, 400, "invalid_token");
    }
    assert_error(&me(&s, &session).await, 401, "unauthenticated");
    assert_error(
        &refresh(&s, session["refresh_token"].as_str().unwrap()).await,
        401,
        "invalid_refresh_token",
    );
    assert_error(
        &login(&s, "reset@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    let (status, fresh) = login(&s, "reset@example.com", "brand new secret words").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fresh["user"]["email_verified"], true,
        "the reset link proved the address"
    );
    let again = s
        .send(
            s.req(Method::POST, "/v1/auth/reset")
                .json(&json!({"token": token, "password": "another new password"})),
        )
        .await;
    assert_error(&again, 400, "invalid_token");
    assert_error(&s.send(ask("not an email")).await, 400, "validation_failed");
}

async fn bad_credentials_and_inputs_are_refused_without_leaking(backend: Backend) {
    let s = TestServer::start(backend).await;
    signup(&s, "known@example.com").await;
    let wrong = login(&s, "known@example.com", "not the password").await;
    let unknown = login(&s, "unknown@example.com", "not the password").await;
    assert_error(&wrong, 401, "invalid_credentials");
    assert_eq!(
        wrong, unknown,
        "no difference between a wrong password and an unknown account"
    );
    for (email, password, field) in [
        ("not-an-email", PASSWORD, "email"),
        ("a@b", PASSWORD, "email"),
        ("weak@example.com", "short", "password"),
        ("weak@example.com", "password123", "password"),
        ("weak@example.com", "weak@example.com", "password"),
        ("weak@example.com", &"x".repeat(300), "password"),
    ] {
        let r = s
            .send(
                s.req(Method::POST, "/v1/auth/signup")
                    .json(&json!({"email": email, "password": password})),
            )
            .await;
        assert_error(&r, 400, "validation_failed");
        assert_eq!(r.1["error"]["details"]["field"], field);
    }
    for body in [
        json!({"email": 1, "password": PASSWORD}),
        json!({"email": "a@b.co"}),
        json!({"email": "a@b.co", "password": PASSWORD, "role": "admin"}),
    ] {
        assert_error(
            &s.send(s.req(Method::POST, "/v1/auth/signup").json(&body))
                .await,
            400,
            "bad_request",
        );
    }
    let r = s
        .send(
            s.req(Method::POST, "/v1/auth/signup")
                .json(&json!({"email": "d@example.com", "password": PASSWORD, "data": [1]})),
        )
        .await;
    assert_error(&r, 400, "validation_failed");
    let r = s
        .send(
            s.req(Method::GET, "/v1/auth/user")
                .header("authorization", "Bearer not.a.token"),
        )
        .await;
    assert_error(&r, 401, "unauthenticated");
    let r = s.send(s.req(Method::GET, "/v1/auth/user")).await;
    assert_error(&r, 401, "unauthenticated");
    s.assert_healthy().await;
}

async fn admins_manage_users(backend: Backend) {
    let s = TestServer::start(backend).await;
    let out = s
        .create_admin("Root@Example.com", "admin password here")
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dup = s
        .create_admin("root@example.com", "admin password here")
        .await;
    assert!(!dup.status.success());
    let wrong = s
        .send(
            s.req(Method::POST, "/v1/admin/login")
                .json(&json!({"email": "root@example.com", "password": "nope"})),
        )
        .await;
    assert_error(&wrong, 401, "invalid_credentials");
    let (status, admin) = s
        .send(
            s.req(Method::POST, "/v1/admin/login")
                .json(&json!({"email": "root@example.com", "password": "admin password here"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{admin}");
    assert_eq!(admin["admin"]["email"], "root@example.com");
    let as_admin = |m: Method, p: &str| s.req(m, p).header("authorization", bearer(&admin));

    let user = signup(&s, "managed@example.com").await;
    let uid = user["user"]["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        signup(&s, &format!("other{i}@example.com")).await;
    }
    // A user's token on the admin API is 403; no token is 401.
    let r = s
        .send(
            s.req(Method::GET, "/v1/admin/users")
                .header("authorization", bearer(&user)),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    assert_error(
        &s.send(s.req(Method::GET, "/v1/admin/users")).await,
        401,
        "unauthenticated",
    );

    let (status, page) = s
        .send(as_admin(Method::GET, "/v1/admin/users?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (_, rest) = s
        .send(as_admin(
            Method::GET,
            &format!(
                "/v1/admin/users?limit=10&cursor={}",
                page["next_cursor"].as_str().unwrap()
            ),
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, found) = s
        .send(as_admin(Method::GET, "/v1/admin/users?search=MANAGED"))
        .await;
    assert_eq!(found["items"][0]["id"], uid.as_str());
    assert!(found["items"][0].get("password_hash").is_none());

    // Role and claims appear in the next token, and to the server at once.
    let (status, patched) = s
        .send(
            as_admin(Method::PATCH, &format!("/v1/admin/users/{uid}"))
                .json(&json!({"role": "editor", "claims": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["role"], "editor");
    assert_eq!(patched["claims"], json!({"plan": "pro"}));
    let bad = s
        .send(
            as_admin(Method::PATCH, &format!("/v1/admin/users/{uid}"))
                .json(&json!({"role": "Bad Role"})),
        )
        .await;
    assert_error(&bad, 400, "validation_failed");
    let (_, refreshed) = refresh(&s, user["refresh_token"].as_str().unwrap()).await;
    let claims = claims_of(refreshed["access_token"].as_str().unwrap());
    assert_eq!(claims["role"], "editor");
    assert_eq!(claims["claims"], json!({"plan": "pro"}));

    // Disabled: no login, no refresh, no requests.
    let r = s
        .send(
            as_admin(Method::PATCH, &format!("/v1/admin/users/{uid}"))
                .json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK);
    assert_error(
        &login(&s, "managed@example.com", PASSWORD).await,
        403,
        "account_disabled",
    );
    assert_error(&me(&s, &refreshed).await, 401, "unauthenticated");
    assert_error(
        &refresh(&s, refreshed["refresh_token"].as_str().unwrap()).await,
        401,
        "invalid_refresh_token",
    );
    s.send(
        as_admin(Method::PATCH, &format!("/v1/admin/users/{uid}"))
            .json(&json!({"disabled": false})),
    )
    .await;
    let (_, back) = login(&s, "managed@example.com", PASSWORD).await;
    let (status, revoked) = s
        .send(as_admin(
            Method::POST,
            &format!("/v1/admin/users/{uid}/revoke-sessions"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["revoked"], 1);
    assert_error(&me(&s, &back).await, 401, "unauthenticated");

    // Deleted: gone, and so are its sessions.
    let (_, last) = login(&s, "managed@example.com", PASSWORD).await;
    assert_eq!(
        s.send(as_admin(Method::DELETE, &format!("/v1/admin/users/{uid}")))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(&me(&s, &last).await, 401, "unauthenticated");
    assert_error(
        &s.send(as_admin(Method::GET, &format!("/v1/admin/users/{uid}")))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &s.send(as_admin(Method::DELETE, &format!("/v1/admin/users/{uid}")))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &login(&s, "managed@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );

    // The admin token refreshes, and works on the rest of the admin API.
    let (status, admin2) = refresh(&s, admin["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{admin2}");
    let (status, _) = s
        .send(
            s.req(Method::GET, "/v1/admin/collections")
                .header("authorization", bearer(&admin2)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn auth_events_reach_the_change_log(backend: Backend) {
    let s = TestServer::start(backend).await;
    let session = signup(&s, "events@example.com").await;
    let uid = session["user"]["id"].clone();
    login(&s, "events@example.com", PASSWORD).await;
    s.send(s.svc(
        Method::DELETE,
        &format!("/v1/admin/users/{}", uid.as_str().unwrap()),
    ))
    .await;
    let (_, log) = s.svc_get("/v1/admin/changes").await;
    let events: Vec<(&str, &str)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["collection"] == "_auth" && c["doc_id"] == uid)
        .map(|c| (c["op"].as_str().unwrap(), c["actor"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        events.iter().map(|e| e.0).collect::<Vec<_>>(),
        ["signup", "login", "delete"]
    );
    let text = log.to_string();
    assert!(!text.contains("argon2"), "no password hashes in the log");
}
