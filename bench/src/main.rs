//! `fbbench`: starts a Ferrobase server on a fresh data folder (or a fresh Postgres
//! database), drives it with a closed-loop load of `--concurrency` clients over loopback, and
//! prints a Markdown table: throughput, latency percentiles, and the server's own CPU time
//! per request (read from /proc, so a load generator sharing the cores does not hide it).
//!
//! ```text
//! fbbench docs --bin target/release/ferrobase --concurrency 32 --seconds 10
//! fbbench docs --bin target/release/ferrobase --group-commit false
//! fbbench docs --bin target/release/ferrobase --postgres postgres://postgres@127.0.0.1:5432/postgres
//! ```

mod compare;
mod realtime;
mod soak;
mod storage;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const KEY: &str = "bench-service-key-0123456789";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Document scenarios: create, get by id, filtered + sorted list with count.
    Docs(DocsArgs),
    /// Auth: login throughput, and an authenticated GET's latency idle vs during a login flood.
    Auth(DocsArgs),
    /// Access-token verification cost in-process (uncached vs cached), no server.
    Tokens,
    /// Lists under an owner-only rule vs the same lists with no rule, on `--docs` documents.
    Rules(DocsArgs),
    /// Rule evaluation cost in-process, no server.
    RuleEval,
    /// JS engine in-process, no server: cold start (new isolate + the demo functions
    /// folder), a warm call, and a fresh context per call for comparison.
    Engine,
    /// Realtime fan-out: delivery latency, sustained events, memory per connection.
    Realtime(realtime::RealtimeArgs),
    /// Object storage throughput (local disk and S3) and memory during a large upload.
    Storage(storage::StorageArgs),
    /// Ferrobase and PocketBase side by side: every scenario, alternating, several rounds;
    /// prints a table of medians and ratios.
    Compare(compare::CompareArgs),
    /// A long mixed load (documents, uploads, async functions, realtime) watching RSS,
    /// file descriptors and errors.
    Soak(soak::SoakArgs),
}

#[derive(clap::Args, Clone)]
struct DocsArgs {
    /// The ferrobase binary (build with `cargo build --release`).
    #[arg(long, default_value = "target/release/ferrobase")]
    bin: String,
    /// Run on Postgres: an admin URL where a scratch database may be created.
    #[arg(long)]
    postgres: Option<String>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    group_commit: bool,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Documents in the collection for the get/list scenarios.
    #[arg(long, default_value_t = 100_000)]
    docs: usize,
    /// Label for the table rows.
    #[arg(long, default_value = "")]
    label: String,
    /// Scenarios to run (comma list of create, get, list, call).
    #[arg(long, default_value = "create,get,list")]
    scenarios: String,
    /// Give the server a `beforeCreate("bench")` JS hook that changes a field (the cloud
    /// code overhead on writes).
    #[arg(long)]
    hook: bool,
    /// Extra `ferrobase.toml` contents for the server.
    #[arg(long, default_value = "")]
    config: String,
    /// Extra environment for the server (set by scenarios, not the command line).
    #[arg(skip)]
    env: Vec<(String, String)>,
}

impl DocsArgs {
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.split(',').any(|s| s.trim() == scenario)
    }
}

struct Server {
    url: String,
    pid: u32,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl Server {
    async fn start(args: &DocsArgs) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut cmd = tokio::process::Command::new(&args.bin);
        if !args.config.is_empty() {
            let path = dir.path().join("ferrobase.toml");
            std::fs::write(&path, &args.config)?;
            cmd.arg("serve").arg("--config").arg(&path);
        } else {
            cmd.arg("serve");
        }
        // Functions: a callable `echo` (the `call` scenario) and, with --hook, a trivial
        // before-create hook on the bench collection.
        let functions = dir.path().join("functions");
        std::fs::create_dir_all(&functions)?;
        let mut source = String::from(
            "import { fb } from 'ferrobase';\nfb.call('echo', (req) => ({ echo: req.data }));\n",
        );
        if args.hook {
            source.push_str(
                "fb.beforeCreate('bench', (e) => { e.data.title = String(e.data.title).toUpperCase(); });\n",
            );
        }
        std::fs::write(functions.join("main.js"), source)?;
        cmd.args(["--http", "127.0.0.1:0", "--service-key", KEY])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--functions-dir")
            .arg(&functions)
            .env("FERROBASE_LOG", "warn")
            .env("FERROBASE_GROUP_COMMIT", args.group_commit.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &args.env {
            cmd.env(k, v);
        }
        let mut pg = None;
        if let Some(admin) = &args.postgres {
            let name = format!("fb_bench_{}", std::process::id());
            psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )?;
            psql(admin, &format!("CREATE DATABASE {name}"))?;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
            cmd.env("FERROBASE_DATABASE_URL", format!("{base}/{name}"))
                .env("FERROBASE_DB_MAX_CONNECTIONS", "16");
            pg = Some((admin.clone(), name));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", args.bin))?;
        let pid = child.id().context("server pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let url = loop {
            match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(url) = line.strip_prefix("ferrobase listening on ") {
                        break url.to_owned();
                    }
                }
                _ => bail!("the server did not start"),
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            url,
            pid,
            child,
            _dir: dir,
            pg,
        })
    }

    /// User + system CPU time of the server process so far.
    fn cpu(&self) -> Duration {
        proc_cpu(self.pid)
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid)
    }

    async fn stop(mut self) {
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

/// Resident memory of a process, in KiB.
fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process so far.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based); 12 and 13 after the name.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("psql")
        .args([url, "-q", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .context("running psql")?;
    anyhow::ensure!(status.success(), "psql failed: {sql}");
    Ok(())
}

/// One measured scenario.
struct Outcome {
    name: String,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    cpu: Duration,
}

impl Outcome {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }

    fn row(&self, label: &str) -> String {
        let rps = self.requests as f64 / self.elapsed.as_secs_f64();
        let cpu_us = self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64;
        format!(
            "| {label}{} | {:.0} | {:.2} | {:.2} | {:.0} | {} |",
            self.name,
            rps,
            self.percentile(0.5),
            self.percentile(0.99),
            cpu_us,
            self.errors
        )
    }
}

/// A 200 response whose body was read completely.
async fn ok_body(response: reqwest::Result<reqwest::Response>) -> bool {
    match response {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    }
}

/// Runs `request(i)` from `--concurrency` clients for `--seconds`.
async fn run<F, Fut>(server: &Server, name: &str, args: &DocsArgs, request: F) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    load(server.pid, name, args.concurrency, args.seconds, request).await
}

/// Runs `request(i)` from `concurrency` clients for `seconds` against the process `pid`
/// (whose CPU time is charged to the requests).
async fn load<F, Fut>(pid: u32, name: &str, concurrency: usize, seconds: u64, request: F) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let cpu_before = proc_cpu(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let request = request.clone();
        let stop = stop.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if request(i).await {
                    latencies.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    let cpu = proc_cpu(pid).saturating_sub(cpu_before);
    latencies.sort_unstable();
    Outcome {
        name: name.to_owned(),
        requests: latencies.len() as u64,
        errors,
        elapsed,
        latencies_us: latencies,
        cpu,
    }
}

async fn docs(args: DocsArgs) -> anyhow::Result<()> {
    let server = Server::start(&args).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let base = server.url.clone();
    let idle_rss = server.rss_kib();
    let r = client
        .post(format!("{base}/v1/admin/collections"))
        .bearer_auth(KEY)
        .json(&json!({"name": "bench", "indexes": [{"fields": ["cat", "-n"]}]}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "create collection: {}",
        r.text().await?
    );

    let mut outcomes = Vec::new();
    let create = {
        let client = client.clone();
        let base = base.clone();
        move |i: u64| {
            let client = client.clone();
            let url = format!("{base}/v1/db/bench");
            async move {
                let body = json!({"title": format!("doc {i}"), "cat": i % 100, "n": (i * 7919) % 100_000, "done": false});
                matches!(client.post(url).bearer_auth(KEY).json(&body).send().await, Ok(r) if r.status() == 201)
            }
        }
    };
    if args.wants("create") {
        outcomes.push(run(&server, "create", &args, create).await);
    }
    let peak_rss = server.rss_kib();
    if args.wants("call") {
        let call = {
            let client = client.clone();
            let base = base.clone();
            move |i: u64| {
                let client = client.clone();
                let url = format!("{base}/v1/functions/echo");
                async move {
                    matches!(client.post(url).json(&json!({"i": i})).send().await, Ok(r) if r.status() == 200)
                }
            }
        };
        outcomes.push(run(&server, "call", &args, call).await);
    }

    // Top up to `--docs` documents for the read scenarios.
    let count = client
        .get(format!("{base}/v1/db/bench?limit=0&count=true"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json::<Value>()
        .await?["count"]
        .as_u64()
        .unwrap_or(0) as usize;
    let mut i = count;
    while i < args.docs {
        let ops: Vec<Value> = (i..(i + 500).min(args.docs))
            .map(|k| json!({"op": "create", "collection": "bench", "data": {"title": format!("seed {k}"), "cat": k % 100, "n": (k * 7919) % 100_000, "done": k % 2 == 0}}))
            .collect();
        let r = client
            .post(format!("{base}/v1/db/batch"))
            .bearer_auth(KEY)
            .json(&json!({ "ops": ops }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "seeding: {}", r.text().await?);
        i += 500;
    }
    // Ids to read: a sample across the collection.
    let page: Value = client
        .post(format!("{base}/v1/db/bench/query"))
        .bearer_auth(KEY)
        .json(&json!({"limit": 1000, "fields": ["_id"]}))
        .send()
        .await?
        .json()
        .await?;
    let ids: Arc<Vec<String>> = Arc::new(
        page["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["_id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    );
    anyhow::ensure!(!ids.is_empty(), "no ids to read");

    let get = {
        let client = client.clone();
        let base = base.clone();
        let ids = ids.clone();
        move |i: u64| {
            let client = client.clone();
            let url = format!("{base}/v1/db/bench/{}", ids[(i as usize * 7) % ids.len()]);
            async move { ok_body(client.get(url).bearer_auth(KEY).send().await).await }
        }
    };
    if args.wants("get") {
        outcomes.push(run(&server, "get by id", &args, get).await);
    }

    let list = {
        let client = client.clone();
        let base = base.clone();
        move |i: u64| {
            let client = client.clone();
            let filter = format!("%7B%22cat%22%3A{}%7D", i % 100);
            let url = format!("{base}/v1/db/bench?where={filter}&sort=-n&limit=50&count=true");
            async move { ok_body(client.get(url).bearer_auth(KEY).send().await).await }
        }
    };
    if args.wants("list") {
        eprintln!("fbbench: list phase starts (server pid {})", server.pid);
        outcomes.push(run(&server, "list 50 (filter+sort+count)", &args, list).await);
    }

    let backend = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "\n{backend}, group commit {}, {} clients, {} s per scenario, {} documents; idle RSS {} MiB, RSS after create {} MiB\n",
        if args.group_commit { "on" } else { "off" },
        args.concurrency,
        args.seconds,
        args.docs,
        idle_rss / 1024,
        peak_rss / 1024
    );
    println!("| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!("{}", o.row(&args.label));
    }
    server.stop().await;
    Ok(())
}

/// GET /v1/auth/user with a token, from `clients` clients, until `stop`.
async fn user_gets(
    client: reqwest::Client,
    url: String,
    token: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, token, stop) = (client.clone(), url.clone(), token.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if ok_body(client.get(&url).bearer_auth(&token).send().await).await {
                    latencies.push(t.elapsed().as_micros() as u64);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    all
}

/// Cold start and warm-call cost of the JS engine, in-process.
fn engine() -> anyhow::Result<()> {
    use ferrobase::functions::engine::{Bridge, HostError, Isolate, Level, Limits};
    use std::time::{Duration, Instant};
    struct Quiet;
    impl Bridge for Quiet {
        fn op(&mut self, _: &str, _: &str) -> Result<Value, HostError> {
            Ok(Value::Null)
        }
        fn log(&mut self, _: Level, _: String) {}
    }
    let files = ferrobase::functions::read_dir(std::path::Path::new("functions"))?
        .ok_or_else(|| anyhow::anyhow!("run from the repository root (needs functions/)"))?;
    let limits = Limits {
        memory: 64 << 20,
        stack: 1 << 20,
    };
    let far = || Instant::now() + Duration::from_secs(10);
    let mut cold = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let (isolate, _) =
            Isolate::load(&files, limits, false, far()).map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(t.elapsed().as_nanos() as u64);
        drop(isolate);
    }
    cold.sort_unstable();
    let (mut isolate, _) =
        Isolate::load(&files, limits, false, far()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let payload = serde_json::json!({"collection": "todos", "op": "create", "id": null,
        "data": {"title": "  Buy milk  "}, "doc": null});
    // What the server sends for a signed-in user.
    let meta = serde_json::json!({"function": "beforeCreate:todos", "invocation": "01JD5Z8Q0000000000000000AB",
        "auth": {"id": "01JD5Z8Q0000000000000000CD", "role": "user", "anonymous": false,
            "email": "ada@example.com", "email_verified": true, "claims": {}}, "env": {}});
    let mut warm = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        let out = isolate.invoke(
            "trigger",
            "beforeCreate:todos",
            &payload,
            &meta,
            Box::new(Quiet),
            far(),
            None,
        );
        warm.push(t.elapsed().as_nanos() as u64);
        anyhow::ensure!(
            matches!(out, ferrobase::functions::engine::Outcome::Ok(_)),
            "unexpected {out:?}"
        );
    }
    warm.sort_unstable();
    println!("JS engine (QuickJS via rquickjs), demo functions/ folder, in-process:");
    println!(
        "  cold start (new runtime + context + modules + lockdown): p50 {:.0} µs, p99 {:.0} µs ({} runs)",
        pct(&cold, 0.5),
        pct(&cold, 0.99),
        cold.len()
    );
    println!(
        "  warm beforeCreate invocation (objects in, dispatch, result read natively): p50 {:.1} µs, p99 {:.1} µs ({} runs)",
        pct(&warm, 0.5),
        pct(&warm, 0.99),
        warm.len()
    );
    Ok(())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

async fn auth(mut args: DocsArgs) -> anyhow::Result<()> {
    // Measure hashing, not the brute-force limit.
    args.config
        .push_str("\n[auth.rate_limits.login]\nper_ip = 100000000\nper_account = 100000000\n");
    let server = Server::start(&args).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let base = server.url.clone();
    let signup: Value = client
        .post(format!("{base}/v1/auth/signup"))
        .json(&json!({"email": "bench@example.com", "password": "correct horse battery"}))
        .send()
        .await?
        .json()
        .await?;
    let token = signup["access_token"]
        .as_str()
        .context("signup")?
        .to_owned();
    let user_url = format!("{base}/v1/auth/user");
    let seconds = Duration::from_secs(args.seconds);

    // Idle: 4 clients reading the current user.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(user_gets(
        client.clone(),
        user_url.clone(),
        token.clone(),
        4,
        stop.clone(),
    ));
    tokio::time::sleep(seconds).await;
    stop.store(true, Ordering::Relaxed);
    let idle = reader.await?;

    // Flood: `concurrency` clients logging in, while the 4 readers go on.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(user_gets(
        client.clone(),
        user_url.clone(),
        token.clone(),
        4,
        stop.clone(),
    ));
    let logins = {
        let client = client.clone();
        let url = format!("{base}/v1/auth/login");
        move |_: u64| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body =
                    json!({"email": "bench@example.com", "password": "correct horse battery"});
                matches!(client.post(url).json(&body).send().await, Ok(r) if r.status() == 200)
            }
        }
    };
    let rss_before = server.rss_kib();
    let flood = run(&server, "login", &args, logins).await;
    let rss_after = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let during = reader.await?;

    let backend = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "\n{backend}: login flood of {} clients for {} s; RSS {} -> {} MiB\n",
        args.concurrency,
        args.seconds,
        rss_before / 1024,
        rss_after / 1024
    );
    println!("| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("{}", flood.row(""));
    let rate = |v: &[u64]| v.len() as f64 / args.seconds as f64;
    println!(
        "| GET /v1/auth/user, idle (4 clients) | {:.0} | {:.2} | {:.2} | | |",
        rate(&idle),
        pct(&idle, 0.5),
        pct(&idle, 0.99)
    );
    println!(
        "| GET /v1/auth/user, during the flood | {:.0} | {:.2} | {:.2} | | |",
        rate(&during),
        pct(&during, 0.5),
        pct(&during, 0.99)
    );
    server.stop().await;
    Ok(())
}

/// Verifies access tokens in-process: the first check of a token, then repeated checks.
fn tokens() -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let public = signing.verifying_key().to_bytes();
    let keys = std::sync::Arc::new(ferrobase::auth::keys::Keys {
        encoding: jsonwebtoken::EncodingKey::from_ed_der(signing.to_pkcs8_der()?.as_bytes()),
        decoding: jsonwebtoken::DecodingKey::from_ed_der(&public),
        kid: "bench".into(),
        public_x: String::new(),
        refresh_secret: [0; 32],
    });
    let tokens =
        ferrobase::auth::tokens::Tokens::new(keys, "ferrobase".into(), Duration::from_secs(900));
    let n = 20_000;
    let issued: Vec<String> = (0..n)
        .map(|i| {
            tokens.issue(
                &format!("user{i}"),
                &format!("sid{i}"),
                "user",
                false,
                false,
                Default::default(),
            )
        })
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for token in &issued {
        tokens.verify(token).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let first = t.elapsed().as_nanos() as f64 / n as f64 / 1000.0;
    let t = Instant::now();
    for _ in 0..5 {
        for token in &issued {
            tokens.verify(token).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    let cached = t.elapsed().as_nanos() as f64 / (5 * n) as f64 / 1000.0;
    println!("| access token, first verification (EdDSA) | {first:.1} µs |");
    println!("| access token, cached | {cached:.2} µs |");
    Ok(())
}

/// Median nanoseconds per call of `f`, over `rounds` rounds of `n` calls.
fn median_ns(rounds: usize, n: usize, mut f: impl FnMut() -> bool) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut allowed = 0usize;
        for _ in 0..n {
            allowed += usize::from(std::hint::black_box(f()));
        }
        std::hint::black_box(allowed);
        samples.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// What one rule check costs in the server: building `auth`/`request`, converting the
/// document(s) to CEL values, evaluating; and instantiating a `list` rule's filter.
fn rule_eval() -> anyhow::Result<()> {
    use ferrobase::auth::{Caller, Principal, UserAuth};
    use ferrobase::documents::document::Document;
    use ferrobase::rules::{Rule, Scope, Vars};
    let caller = Caller {
        principal: Principal::User(UserAuth {
            id: "01m7yfrr5jakze143mme".into(),
            session_id: "s".into(),
            role: "user".into(),
            anonymous: false,
            email: Some("ada@example.com".into()),
            email_verified: true,
            claims: Default::default(),
        }),
        ip: Some([127, 0, 0, 1].into()),
        method: "GET",
        depth: 0,
    };
    let data = json!({
        "title": "buy milk and eggs", "done": false, "score": 42, "tags": ["home", "shopping"],
        "notes": "a paragraph of text ".repeat(10), "due": "2026-12-01", "priority": 2,
        "assignee": {"name": "Ada", "email": "ada@example.com"}, "public": false, "slug": "milk",
    });
    let doc = Document {
        id: "01m7yfrr5jakze143mmf".into(),
        owner: Some("01m7yfrr5jakze143mme".into()),
        created_at: "2026-11-21T00:00:00.000Z".into(),
        updated_at: "2026-11-21T00:00:00.000Z".into(),
        version: 3,
        data: data.as_object().cloned().unwrap_or_default(),
    };
    let owner = Rule::compile("auth != null && doc._owner == auth.id", Scope::Document)?;
    let update = Rule::compile(
        "auth != null && doc._owner == auth.id && new.title.size() <= 200 && new.slug == doc.slug",
        Scope::Document,
    )?;
    let list = Rule::compile_list("auth != null && doc._owner == auth.id")?;
    let (rounds, n) = (15, 20_000);
    let get = median_ns(rounds, n, || {
        let vars = Vars {
            doc: Some(owner.doc_value(&doc)),
            ..Vars::for_caller(&caller)
        };
        owner.evaluate(&vars).allow
    });
    let write = median_ns(rounds, n, || {
        let vars = Vars {
            doc: Some(update.doc_value(&doc)),
            new: Some(update.new_value(&doc)),
            ..Vars::for_caller(&caller)
        };
        update.evaluate(&vars).allow
    });
    let filter = median_ns(rounds, n, || {
        !matches!(
            list.filter(&Vars::for_caller(&caller)),
            ferrobase::query::Filter::False
        )
    });
    let vars_only = median_ns(rounds, n, || Vars::for_caller(&caller).auth.is_object());
    println!("| rule check (median of {rounds} × {n}) | µs per check |");
    println!("|---|---:|");
    println!(
        "| `auth`/`request` variables alone | {:.2} |",
        vars_only / 1000.0
    );
    println!(
        "| `get`, owner rule, 10-field document | {:.2} |",
        get / 1000.0
    );
    println!(
        "| `update`, owner + 2 field checks, `doc` and `new` | {:.2} |",
        write / 1000.0
    );
    println!("| `list`, owner rule → filter | {:.2} |", filter / 1000.0);
    Ok(())
}

/// Owner-only rule vs no rule: every client is one of 32 users owning 1/1000 of the
/// documents each (the other documents belong to 968 other owners).
async fn rules(mut args: DocsArgs) -> anyhow::Result<()> {
    args.config
        .push_str("\n[auth.rate_limits.signup]\nper_ip = 100000000\n");
    let server = Server::start(&args).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let base = server.url.clone();
    let owner = "auth != null && doc._owner == auth.id";
    let r = client
        .post(format!("{base}/v1/admin/collections"))
        .bearer_auth(KEY)
        .json(&json!({"name": "notes", "rules": {"list": owner, "get": owner}}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "create collection: {}",
        r.text().await?
    );
    let mut users = Vec::new();
    for i in 0..32 {
        let session: Value = client
            .post(format!("{base}/v1/auth/signup"))
            .json(
                &json!({"email": format!("u{i}@example.com"), "password": "correct horse battery"}),
            )
            .send()
            .await?
            .json()
            .await?;
        let id = session["user"]["id"].as_str().context("signup")?.to_owned();
        let token = session["access_token"]
            .as_str()
            .context("signup")?
            .to_owned();
        users.push((id, token));
    }
    let owners: Vec<String> = (0..1000)
        .map(|k| {
            users
                .get(k)
                .map(|u| u.0.clone())
                .unwrap_or_else(|| format!("other{k}"))
        })
        .collect();
    let mut i = 0;
    while i < args.docs {
        let ops: Vec<Value> = (i..(i + 500).min(args.docs))
            .map(|k| json!({"op": "create", "collection": "notes", "data": {
                "_owner": owners[(k * 7919) % owners.len()], "title": format!("note {k}"), "n": k % 977}}))
            .collect();
        let r = client
            .post(format!("{base}/v1/db/batch"))
            .bearer_auth(KEY)
            .json(&json!({ "ops": ops }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "seeding: {}", r.text().await?);
        i += 500;
    }
    let plan: Value = client
        .post(format!("{base}/v1/admin/collections/notes/explain"))
        .bearer_auth(KEY)
        .json(&json!({"sort": "-_created_at", "limit": 50, "auth": {"id": users[0].0}}))
        .send()
        .await?
        .json()
        .await?;
    let users = Arc::new(users);
    let path = "/v1/db/notes?limit=50&sort=-_created_at&count=true";
    let as_user = {
        let (client, base, users) = (client.clone(), base.clone(), users.clone());
        move |i: u64| {
            let client = client.clone();
            let (_, token) = &users[i as usize % users.len()];
            let request = client.get(format!("{base}{path}")).bearer_auth(token);
            async move { ok_body(request.send().await).await }
        }
    };
    let as_service = {
        let (client, base, users) = (client.clone(), base.clone(), users.clone());
        move |i: u64| {
            let client = client.clone();
            let (id, _) = &users[i as usize % users.len()];
            let filter = format!("%7B%22_owner%22%3A%22{id}%22%7D");
            let request = client
                .get(format!("{base}{path}&where={filter}"))
                .bearer_auth(KEY);
            async move { ok_body(request.send().await).await }
        }
    };
    let everything = {
        let (client, base) = (client.clone(), base.clone());
        move |_: u64| {
            let client = client.clone();
            let request = client.get(format!("{base}{path}")).bearer_auth(KEY);
            async move { ok_body(request.send().await).await }
        }
    };
    let mut outcomes = vec![
        run(
            &server,
            "list 50 + count, owner rule (user token)",
            &args,
            as_user,
        )
        .await,
        run(
            &server,
            "list 50 + count, no rule, `where _owner` (service key)",
            &args,
            as_service,
        )
        .await,
    ];
    // The same query by the same users under the rule `true`: what authentication costs,
    // apart from the rule.
    let r = client
        .patch(format!("{base}/v1/admin/collections/notes"))
        .bearer_auth(KEY)
        .json(&json!({"rules": {"list": "true"}}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "patch rule: {}", r.text().await?);
    let open = {
        let (client, base, users) = (client.clone(), base.clone(), users.clone());
        move |i: u64| {
            let client = client.clone();
            let (id, token) = &users[i as usize % users.len()];
            let filter = format!("%7B%22_owner%22%3A%22{id}%22%7D");
            let request = client
                .get(format!("{base}{path}&where={filter}"))
                .bearer_auth(token);
            async move { ok_body(request.send().await).await }
        }
    };
    outcomes.push(
        run(
            &server,
            "list 50 + count, rule `true`, `where _owner` (user token)",
            &args,
            open,
        )
        .await,
    );
    outcomes.push(
        run(
            &server,
            "list 50 + count, no rule, no filter (service key)",
            &args,
            everything,
        )
        .await,
    );
    let backend = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "\n{backend}, {} clients, {} s per scenario, {} documents, {} per user\n",
        args.concurrency,
        args.seconds,
        args.docs,
        args.docs / 1000
    );
    println!("| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!("{}", o.row(&args.label));
    }
    println!(
        "\nplan of the owner-rule list:\n```\n{}```",
        plan["plan"].as_str().unwrap_or("")
    );
    server.stop().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // When built with the server in one workspace, reqwest's rustls wants a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Docs(args) => docs(args).await,
            Command::Auth(args) => auth(args).await,
            Command::Tokens => tokens(),
            Command::Rules(args) => rules(args).await,
            Command::RuleEval => rule_eval(),
            Command::Engine => engine(),
            Command::Realtime(args) => realtime::realtime(args).await,
            Command::Storage(args) => storage::storage(args).await,
            Command::Compare(args) => compare::compare(args).await,
            Command::Soak(args) => soak::soak(args).await,
        }
    })
}
