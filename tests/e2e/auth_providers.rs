//! Sign-in through WeChat and an OpenID Connect provider, each played by a stub server in
//! the test process (HOSTILE AUTH-09, AUTH-11).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, Options, TestServer, assert_error, bearer, signup, stub_server};
use crate::on_both_backends;

on_both_backends!(
    wechat_sign_in_finds_or_creates_the_user,
    oidc_sign_in_links_only_by_verified_email
);

// ---- WeChat ----

#[derive(Default)]
struct WeChatStub {
    calls: Mutex<Vec<HashMap<String, String>>>,
}

async fn jscode2session(
    State(stub): State<Arc<WeChatStub>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    stub.calls.lock().unwrap().push(q.clone());
    if q.get("appid").map(String::as_str) != Some("wx-app")
        || q.get("secret").map(String::as_str) != Some("wx-secret")
    {
        return axum::Json(json!({"errcode": 40013, "errmsg": "invalid appid"}));
    }
    axum::Json(match q.get("js_code").map(String::as_str) {
        Some("good-1") | Some("good-2") => {
            json!({"openid": "open-1", "session_key": "SECRET_SESSION_KEY", "unionid": "union-1"})
        }
        Some("good-3") => json!({"openid": "open-2", "session_key": "SECRET_SESSION_KEY"}),
        _ => json!({"errcode": 40163, "errmsg": "code been used"}),
    })
}

async fn wechat_sign_in_finds_or_creates_the_user(backend: Backend) {
    let stub = Arc::new(WeChatStub::default());
    let base = stub_server(
        axum::Router::new()
            .route("/sns/jscode2session", get(jscode2session))
            .with_state(stub.clone()),
    )
    .await;
    let s = Options::new(backend)
        .env("FERROBASE_WECHAT_APP_ID", "wx-app")
        .env("FERROBASE_WECHAT_APP_SECRET", "wx-secret")
        .env("FERROBASE_WECHAT_API_BASE", &base)
        .start()
        .await;
    let wechat = |code: &str| {
        s.req(Method::POST, "/v1/auth/wechat")
            .json(&json!({ "code": code }))
    };
    let (status, first) = s.send(wechat("good-1")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["user"]["email"], Value::Null);
    assert_eq!(first["user"]["anonymous"], false);
    assert!(
        !first.to_string().contains("SECRET_SESSION_KEY"),
        "session_key never reaches the client"
    );
    let call = stub.calls.lock().unwrap()[0].clone();
    assert_eq!(call["grant_type"], "authorization_code");
    assert_eq!(call["js_code"], "good-1");
    let (status, second) = s.send(wechat("good-2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        second["user"]["id"], first["user"]["id"],
        "the same openid is the same user"
    );
    let (_, other) = s.send(wechat("good-3")).await;
    assert_ne!(other["user"]["id"], first["user"]["id"]);
    assert_error(&s.send(wechat("used")).await, 401, "wechat_login_failed");
    // openid comes only from WeChat, never from the client.
    let injected = s
        .send(
            s.req(Method::POST, "/v1/auth/wechat")
                .json(&json!({"code": "good-3", "openid": "open-1"})),
        )
        .await;
    assert_error(&injected, 400, "bad_request");
    for bad in [
        json!({"code": ""}),
        json!({"code": "a b"}),
        json!({"code": 5}),
    ] {
        assert_eq!(
            s.send(s.req(Method::POST, "/v1/auth/wechat").json(&bad))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }
    let (status, _) = s
        .send(
            s.req(Method::GET, "/v1/auth/user")
                .header("authorization", bearer(&first)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = std::fs::read_to_string(s.log_path()).unwrap_or_default();
    assert!(
        !log.contains("SECRET_SESSION_KEY") && !log.contains("wx-secret"),
        "secrets stay out of the log"
    );

    let unconfigured = TestServer::start(backend).await;
    let r = unconfigured
        .send(
            unconfigured
                .req(Method::POST, "/v1/auth/wechat")
                .json(&json!({"code": "good-1"})),
        )
        .await;
    assert_error(&r, 403, "forbidden");
}

// ---- OpenID Connect ----

/// Who the stub provider says the next user is, and how it misbehaves.
#[derive(Clone, Default)]
struct Profile {
    sub: String,
    email: Option<String>,
    email_verified: bool,
    wrong_nonce: bool,
    wrong_audience: bool,
    alg_none: bool,
}

struct Grant {
    nonce: String,
    challenge: String,
    redirect_uri: String,
    profile: Profile,
}

struct OidcStub {
    url: Mutex<String>,
    key: jsonwebtoken::EncodingKey,
    x: String,
    next: Mutex<Profile>,
    grants: Mutex<HashMap<String, Grant>>,
}

async fn discovery(State(stub): State<Arc<OidcStub>>) -> axum::Json<Value> {
    let url = stub.url.lock().unwrap().clone();
    axum::Json(json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "jwks_uri": format!("{url}/jwks"),
    }))
}

async fn jwks(State(stub): State<Arc<OidcStub>>) -> axum::Json<Value> {
    axum::Json(
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": stub.x, "kid": "stub-key", "alg": "EdDSA", "use": "sig"}]}),
    )
}

async fn authorize(
    State(stub): State<Arc<OidcStub>>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "stub-client");
    assert_eq!(q["code_challenge_method"], "S256");
    let code = format!("code-{}", stub.grants.lock().unwrap().len());
    stub.grants.lock().unwrap().insert(
        code.clone(),
        Grant {
            nonce: q["nonce"].clone(),
            challenge: q["code_challenge"].clone(),
            redirect_uri: q["redirect_uri"].clone(),
            profile: stub.next.lock().unwrap().clone(),
        },
    );
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
}

async fn token(
    State(stub): State<Arc<OidcStub>>,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> axum::Json<Value> {
    let Some(grant) = stub.grants.lock().unwrap().remove(&f["code"]) else {
        return axum::Json(json!({"error": "invalid_grant"}));
    };
    let verifier_ok =
        URL_SAFE_NO_PAD.encode(Sha256::digest(f["code_verifier"].as_bytes())) == grant.challenge;
    if !verifier_ok
        || f["client_secret"] != "stub-secret"
        || f["redirect_uri"] != grant.redirect_uri
    {
        return axum::Json(json!({"error": "invalid_grant"}));
    }
    let url = stub.url.lock().unwrap().clone();
    let p = grant.profile;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": url,
        "aud": if p.wrong_audience { "another-client" } else { "stub-client" },
        "sub": p.sub,
        "email": p.email,
        "email_verified": p.email_verified,
        "nonce": if p.wrong_nonce { "not-the-nonce".to_owned() } else { grant.nonce },
        "iat": now,
        "exp": now + 300,
    });
    let id_token = if p.alg_none {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    } else {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("stub-key".into());
        jsonwebtoken::encode(&header, &claims, &stub.key).unwrap()
    };
    axum::Json(json!({"access_token": "stub-access", "token_type": "Bearer", "id_token": id_token}))
}

async fn oidc_stub() -> (Arc<OidcStub>, String) {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let stub = Arc::new(OidcStub {
        url: Mutex::new(String::new()),
        key: jsonwebtoken::EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        x: URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes()),
        next: Mutex::new(Profile::default()),
        grants: Mutex::new(HashMap::new()),
    });
    let router = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(stub.clone());
    let url = stub_server(router).await;
    *stub.url.lock().unwrap() = url.clone();
    (stub, url)
}

const APP: &str = "http://app.example/auth/callback";

/// Runs the browser's part of the flow; returns the final response (status, Location, body).
async fn browse(s: &TestServer, start: &str) -> (StatusCode, Option<String>, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = format!("{}{start}", s.url);
    loop {
        let r = client.get(&url).send().await.unwrap();
        let status = r.status();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        match location {
            Some(next) if status.is_redirection() && !next.starts_with(APP) => url = next,
            _ => {
                let body = r.json().await.unwrap_or(Value::Null);
                return (status, location, body);
            }
        }
    }
}

fn fragment_session(location: &str) -> Value {
    let fragment = location.split_once('#').unwrap().1;
    let pairs: HashMap<String, String> = url::form_urlencoded::parse(fragment.as_bytes())
        .into_owned()
        .collect();
    json!({"access_token": pairs["access_token"], "refresh_token": pairs["refresh_token"]})
}

async fn oidc_user(
    s: &TestServer,
    stub: &OidcStub,
    profile: Profile,
) -> Result<Value, (StatusCode, Value)> {
    *stub.next.lock().unwrap() = profile;
    let (status, location, body) =
        browse(s, &format!("/v1/auth/oauth/stub?redirect_to={APP}")).await;
    let Some(location) = location.filter(|_| status == StatusCode::FOUND) else {
        return Err((status, body));
    };
    assert!(
        location.starts_with(&format!("{APP}#access_token=")),
        "{location}"
    );
    let session = fragment_session(&location);
    let (status, user) = s
        .send(
            s.req(Method::GET, "/v1/auth/user")
                .header("authorization", bearer(&session)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    Ok(user)
}

async fn oidc_sign_in_links_only_by_verified_email(backend: Backend) {
    let (stub, issuer) = oidc_stub().await;
    let config = format!(
        "[auth]\nredirect_urls = [\"{APP}\"]\n[auth.oauth.stub]\nissuer = \"{issuer}\"\nclient_id = \"stub-client\"\nclient_secret = \"stub-secret\"\n"
    );
    let s = Options::new(backend).config(&config).start().await;
    let profile = |sub: &str, email: Option<&str>, verified: bool| Profile {
        sub: sub.into(),
        email: email.map(String::from),
        email_verified: verified,
        ..Profile::default()
    };

    // A new identity with a verified email: a new, verified account.
    let fresh = oidc_user(&s, &stub, profile("s1", Some("New@Example.com"), true))
        .await
        .unwrap();
    assert_eq!(fresh["email"], "new@example.com");
    assert_eq!(fresh["email_verified"], true);
    let again = oidc_user(&s, &stub, profile("s1", Some("new@example.com"), true))
        .await
        .unwrap();
    assert_eq!(
        again["id"], fresh["id"],
        "the same subject is the same user"
    );

    // A verified email of a verified account links to it.
    let owner = signup(&s, "owner@example.com").await;
    s.send(
        s.svc(
            Method::PATCH,
            &format!("/v1/admin/users/{}", owner["user"]["id"].as_str().unwrap()),
        )
        .json(&json!({"email_verified": true})),
    )
    .await;
    let linked = oidc_user(&s, &stub, profile("s2", Some("owner@example.com"), true))
        .await
        .unwrap();
    assert_eq!(linked["id"], owner["user"]["id"]);

    // An unverified provider email links nothing: a fresh account without an email.
    let plain = signup(&s, "plain@example.com").await;
    let separate = oidc_user(&s, &stub, profile("s3", Some("plain@example.com"), false))
        .await
        .unwrap();
    assert_ne!(separate["id"], plain["user"]["id"]);
    assert_eq!(separate["email"], Value::Null);
    let (status, _) = s
        .send(
            s.req(Method::POST, "/v1/auth/login")
                .json(&json!({"email": "plain@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the password account is untouched");

    // Pre-hijack: an attacker registered the victim's address (never verified). The victim
    // arrives with a provider-verified address: the account is theirs, the attacker's
    // password and session are gone.
    let attacker = signup(&s, "victim@example.com").await;
    let victim = oidc_user(&s, &stub, profile("s4", Some("victim@example.com"), true))
        .await
        .unwrap();
    assert_eq!(victim["id"], attacker["user"]["id"]);
    assert_eq!(victim["email_verified"], true);
    let (status, _) = s
        .send(
            s.req(Method::POST, "/v1/auth/login")
                .json(&json!({"email": "victim@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the attacker's password no longer works"
    );
    let (status, _) = s
        .send(
            s.req(Method::GET, "/v1/auth/user")
                .header("authorization", bearer(&attacker)),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the attacker's session ended"
    );

    // A misbehaving provider signs nobody in.
    for bad in [
        Profile {
            wrong_nonce: true,
            ..profile("s5", None, false)
        },
        Profile {
            wrong_audience: true,
            ..profile("s5", None, false)
        },
        Profile {
            alg_none: true,
            ..profile("s5", None, false)
        },
    ] {
        let (status, body) = oidc_user(&s, &stub, bad).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "oauth_failed");
    }

    // redirect_to must be listed exactly.
    for evil in [
        "https://app.example@evil.example/",
        "http://app.example.evil.example/auth/callback",
        "http://127.0.0.1/auth/callback",
        "http://app.example/auth/callback#frag",
        "http://app.example:8080/auth/callback",
        "http://app.example/auth/other",
    ] {
        let r = s
            .send(s.req(
                Method::GET,
                &format!(
                    "/v1/auth/oauth/stub?redirect_to={}",
                    url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
                ),
            ))
            .await;
        assert_error(&r, 400, "bad_request");
    }
    // state: missing, unknown, or replayed.
    let cb = |query: &str| {
        s.req(
            Method::GET,
            &format!("/v1/auth/oauth/stub/callback?{query}"),
        )
    };
    assert_error(&s.send(cb("code=x")).await, 400, "oauth_failed");
    assert_error(
        &s.send(cb("code=x&state=forged")).await,
        400,
        "oauth_failed",
    );
    *stub.next.lock().unwrap() = profile("s6", None, false);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let to_provider = client
        .get(format!("{}/v1/auth/oauth/stub", s.url))
        .send()
        .await
        .unwrap();
    let authorize = to_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let back = client.get(&authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    // AUTH-08: twenty redemptions of one state at once; exactly one signs in.
    let redemptions = (0..20).map(|_| async {
        let r = client.get(&callback).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
    });
    let results = futures_util::future::join_all(redemptions).await;
    let signed_in: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(signed_in.len(), 1, "a state works once: {results:?}");
    assert!(
        signed_in[0]["access_token"].is_string(),
        "no redirect_to: the session comes as JSON"
    );
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_error(&(*status, body.clone()), 400, "oauth_failed");
    }
    let replay = client.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_error(
        &s.send(s.req(Method::GET, "/v1/auth/oauth/nope")).await,
        404,
        "not_found",
    );
    s.assert_healthy().await;
}

// ---- GitHub-style OAuth (no ID token: user info + verified emails) ----

#[derive(Default)]
struct GitHubStub {
    codes: Mutex<HashMap<String, String>>,
}

async fn gh_authorize(
    State(stub): State<Arc<GitHubStub>>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let code = format!("gh-{}", stub.codes.lock().unwrap().len());
    stub.codes
        .lock()
        .unwrap()
        .insert(code.clone(), q["code_challenge"].clone());
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
}

async fn gh_token(
    State(stub): State<Arc<GitHubStub>>,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> axum::Json<Value> {
    let challenge = stub.codes.lock().unwrap().remove(&f["code"]);
    let ok =
        challenge == Some(URL_SAFE_NO_PAD.encode(Sha256::digest(f["code_verifier"].as_bytes())));
    axum::Json(if ok {
        json!({"access_token": "gh-access", "token_type": "bearer"})
    } else {
        json!({"error": "bad_verification_code"})
    })
}

async fn gh_user(headers: axum::http::HeaderMap) -> axum::Json<Value> {
    assert_eq!(headers["authorization"], "Bearer gh-access");
    axum::Json(json!({"id": 4242, "login": "octo", "email": "unverified-public@example.com"}))
}

async fn gh_emails() -> axum::Json<Value> {
    axum::Json(json!([
        {"email": "octo-secondary@example.com", "primary": false, "verified": true},
        {"email": "Octo@Example.com", "primary": true, "verified": true}
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_preset_uses_the_verified_primary_email() {
    let stub = Arc::new(GitHubStub::default());
    let router = axum::Router::new()
        .route("/login/oauth/authorize", get(gh_authorize))
        .route("/login/oauth/access_token", post(gh_token))
        .route("/user", get(gh_user))
        .route("/user/emails", get(gh_emails))
        .with_state(stub);
    let base = stub_server(router).await;
    let config = format!(
        "[auth]\nredirect_urls = [\"{APP}\"]\n[auth.oauth.gh]\npreset = \"github\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         authorize_url = \"{base}/login/oauth/authorize\"\ntoken_url = \"{base}/login/oauth/access_token\"\nuserinfo_url = \"{base}/user\"\n"
    );
    let s = Options::new(Backend::Sqlite).config(&config).start().await;
    let (status, location, body) =
        browse(&s, &format!("/v1/auth/oauth/gh?redirect_to={APP}")).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    let session = fragment_session(&location.unwrap());
    let (_, user) = s
        .send(
            s.req(Method::GET, "/v1/auth/user")
                .header("authorization", bearer(&session)),
        )
        .await;
    assert_eq!(
        user["email"], "octo@example.com",
        "the verified primary address, not the public one"
    );
    assert_eq!(user["email_verified"], true);
}

// ---- SMTP ----

/// A minimal SMTP server: accepts one message per connection, records DATA.
async fn smtp_stub() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 stub ESMTP\r\n").await;
                let mut data = String::new();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            store.lock().unwrap().push(std::mem::take(&mut data));
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let reply: &[u8] = match line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_uppercase()
                        .as_str()
                    {
                        "EHLO" => b"250-stub\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_through_smtp_when_configured() {
    let (port, received) = smtp_stub().await;
    let config = format!(
        "[auth.smtp]\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Ferrobase <no-reply@example.com>\"\ntls = \"none\"\n"
    );
    let s = Options::new(Backend::Sqlite).config(&config).start().await;
    signup(&s, "smtp@example.com").await;
    let message = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    assert!(message.contains("To: smtp@example.com"), "{message}");
    assert!(
        message.contains("Subject: Confirm your email address"),
        "{message}"
    );
    let (_, outbox) = s.svc_get("/v1/admin/mail").await;
    assert_eq!(outbox, json!([]), "with SMTP, nothing lands in the outbox");
}
