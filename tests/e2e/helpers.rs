//! The test harness: spawn the real `ferrobase` binary on a free loopback port with a fresh
//! data folder (and, for Postgres, a fresh database), and talk to it over HTTP.
//!
//! - `TEST_LOG=1` shows the server's log; otherwise it is kept in the data folder and
//!   printed only when the server fails to start.
//! - Postgres: `FERROBASE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//!   names a server where databases may be created. When it is unreachable the Postgres
//!   variant of a test is skipped — unless `FERROBASE_REQUIRE_POSTGRES=1`, which makes it fail
//!   (CI sets it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SERVICE_KEY: &str = "test-service-key-0123456789";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Postgres if it is reachable; `None` (skip) otherwise, unless Postgres is required.
    pub fn postgres() -> Option<Backend> {
        if postgres_available() {
            Some(Backend::Postgres)
        } else if std::env::var("FERROBASE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!(
                "FERROBASE_REQUIRE_POSTGRES=1 but Postgres is unreachable at {}",
                admin_url()
            );
        } else {
            eprintln!("skipped: Postgres is unreachable at {}", admin_url());
            None
        }
    }
}

/// Defines `mod name { sqlite(), postgres() }` running `name(backend)` on each backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(backend) = $crate::helpers::Backend::postgres() {
                        super::$name(backend).await
                    }
                }
            }
        )*
    };
}

fn admin_url() -> String {
    std::env::var("FERROBASE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn postgres_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        run_blocking(async {
            use sqlx::Connection;
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::PgConnection::connect(&admin_url()),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
        })
    })
}

/// Runs a future on a fresh runtime in another thread (usable from `Drop` and sync code).
fn run_blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
    .join()
    .expect("helper thread panicked")
}

/// reqwest's TLS (unused here, but built) needs a process-wide crypto provider.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A fresh Postgres database, dropped (with its connections) when this is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let name = format!("fb_test_{}", random_suffix());
        let admin = admin_url();
        let create = format!("CREATE DATABASE {name}");
        run_blocking({
            let admin = admin.clone();
            async move {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to Postgres");
                conn.execute(sqlx::AssertSqlSafe(create))
                    .await
                    .expect("create test database");
            }
        });
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = admin_url();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        run_blocking(async move {
            use sqlx::{Connection, Executor};
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = conn.execute(sqlx::AssertSqlSafe(drop)).await;
            }
        });
    }
}

fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// How to start a server.
#[derive(Clone)]
pub struct Options {
    pub backend: Backend,
    /// `ferrobase.toml` contents.
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    /// Pass `--service-key` (otherwise the server generates one).
    pub service_key: bool,
    /// Prepend generous auth rate limits (tests about rate limits turn this off).
    pub lenient_limits: bool,
    /// Files written to the server's `functions/` folder before it starts.
    pub functions: Vec<(String, String)>,
}

/// Generous rate limits: many tests sign up many users from one address.
const LENIENT_LIMITS: &str = r#"
[auth.rate_limits.login]
per_ip = 100000
per_account = 100000
[auth.rate_limits.signup]
per_ip = 100000
[auth.rate_limits.anonymous]
per_ip = 100000
[auth.rate_limits.refresh]
per_ip = 100000
[auth.rate_limits.reset]
per_ip = 100000
per_account = 100000
[auth.rate_limits.wechat]
per_ip = 100000
"#;

impl Options {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            config: None,
            env: vec![("FERROBASE_SESSION_CHECK_INTERVAL".into(), "0s".into())],
            service_key: true,
            lenient_limits: true,
            functions: Vec::new(),
        }
    }

    /// Puts a file in the server's `functions/` folder.
    pub fn function_file(mut self, path: &str, source: &str) -> Self {
        self.functions.push((path.to_owned(), source.to_owned()));
        self
    }

    /// Keeps the default (or the test's own) rate limits.
    pub fn strict_limits(mut self) -> Self {
        self.lenient_limits = false;
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub async fn start(self) -> TestServer {
        TestServer::start_with(self).await
    }
}

/// A running server and what it needs: its data folder, its database.
pub struct TestServer {
    pub url: String,
    pub backend: Backend,
    pub client: reqwest::Client,
    /// What the server printed on stdout up to and including its listening line.
    pub stdout: Vec<String>,
    child: Option<Child>,
    options: Options,
    dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Options::new(backend).start().await
    }

    async fn start_with(options: Options) -> TestServer {
        install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = (options.backend == Backend::Postgres).then(PgDatabase::create);
        let mut server = TestServer {
            url: String::new(),
            backend: options.backend,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            stdout: Vec::new(),
            child: None,
            options,
            dir,
            pg,
        };
        let mut config = String::new();
        if server.options.lenient_limits {
            config.push_str(LENIENT_LIMITS);
        }
        if let Some(own) = &server.options.config {
            config.push_str(own);
        }
        std::fs::write(server.dir.path().join("ferrobase.toml"), config).expect("write config");
        for (path, source) in &server.options.functions {
            let file = server.functions_dir().join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("functions folder");
            std::fs::write(file, source).expect("write function");
        }
        server.spawn().await;
        server
    }

    /// Sends a raw HTTP/1.1 request (request line and headers, without the final blank line
    /// and without Host/Authorization, which are added) and returns (status, raw response).
    /// For paths an HTTP client library would normalise.
    pub async fn raw(&self, head: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let request = format!(
            "{head}Host: {addr}\r\nAuthorization: Bearer {SERVICE_KEY}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The `functions/` folder the server loads (relative to its working folder).
    pub fn functions_dir(&self) -> PathBuf {
        self.dir.path().join("functions")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `ferrobase admin create EMAIL --password PASSWORD` against this server's database.
    pub async fn create_admin(&self, email: &str, password: &str) -> std::process::Output {
        self.command(&["admin", "create", email, "--password", password])
            .output()
            .await
            .expect("run ferrobase admin create")
    }

    /// The command that runs `ferrobase <args>` against this server's data and database.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrobase"));
        // The server's configuration comes only from this harness.
        for (k, _) in std::env::vars() {
            if k.starts_with("FERROBASE_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("FERROBASE_DATA_DIR", self.data_dir())
            .env(
                "FERROBASE_LOG",
                if std::env::var("TEST_LOG").is_ok() {
                    "info,ferrobase=debug"
                } else {
                    "warn"
                },
            )
            .env("FERROBASE_DB_MAX_CONNECTIONS", "4");
        if let Some(pg) = &self.pg {
            cmd.env("FERROBASE_DATABASE_URL", &pg.url);
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn spawn(&mut self) {
        let mut args = vec!["serve", "--http", "127.0.0.1:0"];
        if self.options.service_key {
            args.extend(["--service-key", SERVICE_KEY]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = self.command(&args);
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        if std::env::var("TEST_LOG").is_ok() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::from(log));
        }
        let mut child = cmd.spawn().expect("spawn ferrobase");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut printed = Vec::new();
        let url = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let found = line
                        .strip_prefix("ferrobase listening on ")
                        .map(str::to_owned);
                    printed.push(line);
                    if let Some(url) = found {
                        break url;
                    }
                }
                other => {
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    panic!("ferrobase did not start ({other:?}); stdout: {printed:?}; log:\n{log}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = url;
        self.stdout = printed;
        self.child = Some(child);
    }

    /// Starts a second node on this server's Postgres database (its own data folder).
    pub async fn another_node(&self) -> TestServer {
        let pg = self.pg.as_ref().expect("a second node needs Postgres");
        let mut options = self.options.clone();
        options.backend = Backend::Sqlite; // owns no database; the URL comes from env
        options
            .env
            .push(("FERROBASE_DATABASE_URL".into(), pg.url.clone()));
        let mut node = TestServer::start_with(options).await;
        node.backend = Backend::Postgres;
        node
    }

    /// The server's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("server running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL: no graceful shutdown, no flushing.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same data folder and database.
    pub async fn restart(&mut self) {
        self.kill9().await;
        self.spawn().await;
    }

    /// SIGTERM, then wait for the process to exit; returns its exit success.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }

    // ---- requests ----

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    /// A request with the service key.
    pub fn svc(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path).bearer_auth(SERVICE_KEY)
    }

    /// Sends and returns (status, JSON body or Null).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request failed");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn svc_json(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.svc(method, path).json(&body)).await
    }

    pub async fn svc_get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.svc(Method::GET, path)).await
    }

    /// Declares a collection (as the service), asserting success.
    pub async fn collection(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({ "name": name });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let (status, value) = self
            .svc_json(Method::POST, "/v1/admin/collections", body)
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create collection {name}: {value}"
        );
        value
    }

    /// Creates a document as the service, asserting success.
    pub async fn create(&self, collection: &str, doc: Value) -> Value {
        let (status, value) = self
            .svc_json(Method::POST, &format!("/v1/db/{collection}"), doc)
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create in {collection}: {value}"
        );
        value
    }

    /// Asserts the server still answers `/health` (after a hostile request).
    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.req(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn assert_healthy(&self) {
        let (status, _) = self.send(self.req(Method::GET, "/health")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the server stopped answering /health"
        );
    }
}

/// Asserts status and error code of an error response.
#[track_caller]
pub fn assert_error(actual: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(
        actual.0.as_u16(),
        status,
        "expected {status} {code}, got {} {}",
        actual.0,
        actual.1
    );
    assert_eq!(
        actual.1["error"]["code"], code,
        "expected code {code}, got {}",
        actual.1
    );
    assert!(
        actual.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        actual.1
    );
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counter `name{labels}` in the Prometheus text, or 0.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Serves `router` on a free loopback port in this process (stub WeChat, OAuth providers…).
pub async fn stub_server(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stub");
    let addr = listener.local_addr().expect("stub addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Signs up `email` and returns the session.
pub async fn signup(s: &TestServer, email: &str) -> Value {
    let (status, body) = s
        .send(
            s.req(Method::POST, "/v1/auth/signup")
                .json(&json!({"email": email, "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "signup {email}: {body}");
    body
}

/// `Authorization: Bearer <access token of session>`.
pub fn bearer(session: &Value) -> String {
    format!(
        "Bearer {}",
        session["access_token"].as_str().expect("access token")
    )
}

/// The newest outbox mail to `to`, and the token in it (the line after the blank line).
pub async fn mailed_token(s: &TestServer, to: &str, subject_contains: &str) -> Option<String> {
    let (_, mails) = s.svc_get("/v1/admin/mail").await;
    let mail = mails
        .as_array()?
        .iter()
        .find(|m| {
            m["to"] == to
                && m["subject"]
                    .as_str()
                    .is_some_and(|t| t.contains(subject_contains))
        })?
        .clone();
    let text = mail["text"].as_str()?.to_owned();
    text.lines()
        .map(str::trim)
        .find(|l| l.len() >= 40 && !l.contains(' '))
        .map(str::to_owned)
}

/// The S3 bucket storage tests use, on [`S3Server`].
pub const S3_BUCKET: &str = "fb-blobs";
const S3_ACCESS_KEY: &str = "fbtest";
const S3_SECRET_KEY: &str = "fbtest-secret-key-0123";

/// A real S3 protocol server on loopback (`s3s-fs`, installed by `.ci/run`) with one
/// bucket, in a fresh folder.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    _child: Child,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let bin = std::env::var("FERROBASE_S3S_FS").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            let installed = PathBuf::from(home).join(".cargo/bin/s3s-fs");
            if installed.exists() {
                installed.to_string_lossy().into_owned()
            } else {
                "s3s-fs".to_owned()
            }
        });
        let root = tempfile::tempdir().expect("s3 root");
        std::fs::create_dir_all(root.path().join(S3_BUCKET)).expect("bucket folder");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{bin}` ({e}); install it with \
                     `cargo install s3s-fs --version 0.14.1 --features binary --locked`"
                )
            });
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        S3Server {
            endpoint,
            root,
            _child: child,
        }
    }

    /// `options` with the server storing blobs here.
    pub fn configure(&self, options: Options) -> Options {
        options
            .env("FERROBASE_S3_BUCKET", S3_BUCKET)
            .env("FERROBASE_S3_ENDPOINT", &self.endpoint)
            .env("FERROBASE_S3_PATH_STYLE", "true")
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    }

    /// The blob files the S3 server holds.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.path().join(S3_BUCKET).join("blobs")
    }
}
