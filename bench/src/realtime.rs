//! `fbbench realtime`: fan-out of document changes to many realtime subscribers.
//!
//! For each subscriber count: open that many WebSocket connections, each with one
//! subscription to `feed` (get rule `true`); measure the server's memory per idle
//! connection; then create `--events` documents one at a time, spaced out, and measure for
//! each the delivery latency (create request sent → event received) at every subscriber:
//! per delivery, and per event to the *last* subscriber ("to all"). The create's own latency
//! is recorded too, to show it does not grow with the subscriber count. At 1k subscribers a
//! sustained phase creates documents as fast as `--writers` clients can and counts
//! deliveries per second.
//!
//! With `--pocketbase BIN` the same is run against PocketBase's SSE realtime
//! (`/api/realtime`), on the same machine, one after the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{DocsArgs, KEY, Server};

#[derive(clap::Args, Clone)]
pub struct RealtimeArgs {
    #[arg(long, default_value = "target/release/ferrobase")]
    pub bin: String,
    /// Subscriber counts to measure (comma list).
    #[arg(long, default_value = "1000,10000")]
    pub subscribers: String,
    /// Spaced-out events per subscriber count.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Seconds of the sustained phase (at 1000 subscribers; 0 skips it).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent writers in the sustained phase.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// The collection's `get` rule, evaluated per subscriber per event.
    #[arg(long, default_value = "true")]
    pub rule: String,
    /// Also run against PocketBase (path to its binary).
    #[arg(long)]
    pub pocketbase: Option<String>,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one subscriber saw: latency per spaced event `n`, and sustained deliveries.
#[derive(Default)]
struct Seen {
    latencies: Vec<(u64, u64)>,
    sustained: u64,
}

/// Reads the `t`/`n`/`phase` fields of a created record and records the delivery.
fn record(seen: &mut Seen, doc: &Value, delivered: &AtomicU64) {
    match doc["phase"].as_str() {
        Some("lat") => {
            let sent = doc["t"].as_u64().unwrap_or(0);
            let n = doc["n"].as_u64().unwrap_or(0);
            seen.latencies.push((n, unix_micros().saturating_sub(sent)));
        }
        Some("sus") => {
            seen.sustained += 1;
            delivered.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// A system under test: how to subscribe and how to create a record.
#[derive(Clone)]
pub enum Target {
    Ferrobase { url: String },
    PocketBase { url: String, token: String },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Ferrobase { .. } => "Ferrobase (WebSocket)",
            Target::PocketBase { .. } => "PocketBase 0.40.6 (SSE)",
        }
    }

    async fn create(&self, client: &reqwest::Client, body: Value) -> bool {
        let request = match self {
            Target::Ferrobase { url } => client
                .post(format!("{url}/v1/db/feed"))
                .bearer_auth(KEY)
                .json(&body),
            Target::PocketBase { url, token } => client
                .post(format!("{url}/api/collections/feed/records"))
                .header("authorization", token)
                .json(&body),
        };
        matches!(request.send().await, Ok(r) if r.status().is_success())
    }

    /// Starts one subscriber; resolves once it is subscribed.
    async fn subscribe(
        &self,
        client: &reqwest::Client,
        stop: watch::Receiver<bool>,
        delivered: Arc<AtomicU64>,
    ) -> anyhow::Result<tokio::task::JoinHandle<Seen>> {
        match self {
            Target::Ferrobase { url } => {
                let ws_url = format!("{}/v1/realtime", url.replace("http://", "ws://"));
                let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
                ws.send(Message::Text(
                    json!({"type": "subscribe", "id": "s", "collection": "feed"})
                        .to_string()
                        .into(),
                ))
                .await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"subscribed\"") => break,
                        Some(Ok(Message::Text(t))) => bail!("subscribe failed: {t}"),
                        Some(Ok(_)) => {}
                        _ => bail!("the connection ended while subscribing"),
                    }
                }
                Ok(tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut stop = stop;
                    loop {
                        tokio::select! {
                            frame = ws.next() => match frame {
                                Some(Ok(Message::Text(t))) => {
                                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                        record(&mut seen, &v["doc"], &delivered);
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                            _ = stop.changed() => break,
                        }
                    }
                    seen
                }))
            }
            Target::PocketBase { url, .. } => {
                let mut response = client.get(format!("{url}/api/realtime")).send().await?;
                let mut buffer = String::new();
                let client_id = loop {
                    let chunk = response.chunk().await?.context("SSE ended")?;
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    if let Some(id) =
                        sse_events(&mut buffer)
                            .into_iter()
                            .find_map(|(event, data)| {
                                (event == "PB_CONNECT")
                                    .then(|| serde_json::from_str::<Value>(&data).ok())
                                    .flatten()
                                    .and_then(|v| v["clientId"].as_str().map(str::to_owned))
                            })
                    {
                        break id;
                    }
                };
                let subscribed = client
                    .post(format!("{url}/api/realtime"))
                    .json(&json!({"clientId": client_id, "subscriptions": ["feed"]}))
                    .send()
                    .await?;
                if !subscribed.status().is_success() {
                    bail!("PocketBase subscribe: {}", subscribed.status());
                }
                Ok(tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut stop = stop;
                    loop {
                        tokio::select! {
                            chunk = response.chunk() => match chunk {
                                Ok(Some(chunk)) => {
                                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                                    for (event, data) in sse_events(&mut buffer) {
                                        if event == "feed"
                                            && let Ok(v) = serde_json::from_str::<Value>(&data)
                                        {
                                            record(&mut seen, &v["record"], &delivered);
                                        }
                                    }
                                }
                                _ => break,
                            },
                            _ = stop.changed() => break,
                        }
                    }
                    seen
                }))
            }
        }
    }
}

/// Complete SSE events (`event:` name, `data:`) taken off the front of `buffer`.
fn sse_events(buffer: &mut String) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        out.push((event, data));
    }
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// One subscriber count against one target: a Markdown row per measurement.
pub async fn measure(
    target: &Target,
    rss_kib: &dyn Fn() -> u64,
    cpu: &dyn Fn() -> Duration,
    subscribers: usize,
    args: &RealtimeArgs,
) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers + 64)
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let before = rss_kib();
    let mut tasks = Vec::with_capacity(subscribers);
    let connecting = Instant::now();
    for _ in 0..subscribers {
        tasks.push(
            target
                .subscribe(&client, stop_rx.clone(), delivered.clone())
                .await?,
        );
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / subscribers as f64;

    // Spaced events: latency to every subscriber, and the create's own latency.
    let gap = Duration::from_millis(20 * (subscribers as u64 / 1000).max(1));
    let mut create_us = Vec::new();
    for n in 0..args.events {
        let started = Instant::now();
        let ok = target
            .create(&client, json!({"t": unix_micros(), "n": n, "phase": "lat"}))
            .await;
        anyhow::ensure!(ok, "create failed");
        create_us.push(started.elapsed().as_micros() as u64);
        tokio::time::sleep(gap).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Sustained: as fast as the writers go, at 1000 subscribers.
    let mut sustained = None;
    if subscribers == 1000 && args.seconds > 0 {
        let created = Arc::new(AtomicU64::new(0));
        let cpu_before = cpu();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let mut writers = Vec::new();
        for _ in 0..args.writers {
            let target = target.clone();
            let client = client.clone();
            let created = created.clone();
            writers.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if target
                        .create(&client, json!({"t": unix_micros(), "phase": "sus"}))
                        .await
                    {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for w in writers {
            let _ = w.await;
        }
        let writes = created.load(Ordering::Relaxed);
        let expected = writes * subscribers as u64;
        // Wait (up to 60 s) for the deliveries to drain.
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let got = delivered.load(Ordering::Relaxed);
        let cpu_ms_per_event = (cpu() - cpu_before).as_secs_f64() * 1000.0 / writes.max(1) as f64;
        sustained = Some((writes, got, expected, elapsed, cpu_ms_per_event));
    }

    let _ = stop_tx.send(true);
    let mut per_delivery = Vec::new();
    let mut to_all = vec![0u64; args.events];
    let mut received = vec![0usize; args.events];
    for task in tasks {
        let seen = task.await.unwrap_or_default();
        for (n, us) in seen.latencies {
            if let Some(slot) = to_all.get_mut(n as usize) {
                *slot = (*slot).max(us);
                received[n as usize] += 1;
            }
            per_delivery.push(us);
        }
    }
    let complete = received.iter().filter(|r| **r == subscribers).count();
    per_delivery.sort_unstable();
    to_all.sort_unstable();
    create_us.sort_unstable();
    Ok(Measured {
        system: target.name(),
        subscribers,
        delivery_p50: pct(&per_delivery, 0.5),
        delivery_p99: pct(&per_delivery, 0.99),
        all_p50: pct(&to_all, 0.5),
        all_p99: pct(&to_all, 0.99),
        all_max: pct(&to_all, 1.0),
        create_p50: pct(&create_us, 0.5),
        complete,
        events: args.events,
        kib_per_conn: per_conn / 1024.0,
        connect_secs,
        sustained: sustained.map(|(writes, got, expected, elapsed, cpu_ms)| Sustained {
            writers: args.writers,
            created_per_s: writes as f64 / args.seconds as f64,
            delivered_per_s: got as f64 / elapsed,
            got,
            expected,
            elapsed,
            cpu_ms_per_event: cpu_ms,
        }),
    })
}

/// One subscriber count against one target (times in milliseconds).
pub struct Measured {
    pub system: &'static str,
    pub subscribers: usize,
    pub delivery_p50: f64,
    pub delivery_p99: f64,
    pub all_p50: f64,
    pub all_p99: f64,
    pub all_max: f64,
    pub create_p50: f64,
    pub complete: usize,
    pub events: usize,
    pub kib_per_conn: f64,
    pub connect_secs: f64,
    pub sustained: Option<Sustained>,
}

/// The sustained phase at 1000 subscribers.
pub struct Sustained {
    pub writers: usize,
    pub created_per_s: f64,
    pub delivered_per_s: f64,
    pub got: u64,
    pub expected: u64,
    pub elapsed: f64,
    pub cpu_ms_per_event: f64,
}

impl Measured {
    /// The latency row and, when there was a sustained phase, its row.
    fn rows(&self) -> (String, Option<String>) {
        let m = self;
        let latency = format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{} | {:.1} | {:.1} |",
            m.system,
            m.subscribers,
            m.delivery_p50,
            m.delivery_p99,
            m.all_p50,
            m.all_p99,
            m.all_max,
            m.create_p50,
            m.complete,
            m.events,
            m.kib_per_conn,
            m.connect_secs,
        );
        let sustained = m.sustained.as_ref().map(|s| {
            format!(
                "| {} sustained, {} writers | 1000 | {:.0} events/s created | {:.0} deliveries/s | {} of {} delivered in {:.1} s | {:.2} |",
                m.system,
                s.writers,
                s.created_per_s,
                s.delivered_per_s,
                s.got,
                s.expected,
                s.elapsed,
                s.cpu_ms_per_event,
            )
        });
        (latency, sustained)
    }
}

pub async fn realtime(args: RealtimeArgs) -> anyhow::Result<()> {
    let counts: Vec<usize> = args
        .subscribers
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--subscribers is a comma list of numbers")?;
    println!(
        "| system | subscribers | delivery p50 ms | delivery p99 ms | to all p50 ms | to all p99 ms | to all max ms | create p50 ms | events to all | server KiB/conn | connect s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut sustained_rows = Vec::new();
    for &count in &counts {
        let docs = DocsArgs {
            bin: args.bin.clone(),
            postgres: None,
            group_commit: true,
            concurrency: 1,
            seconds: 1,
            docs: 0,
            label: String::new(),
            scenarios: String::new(),
            hook: false,
            config: format!(
                "[realtime]\nsend_queue = 4096\nmax_connections_per_ip = 100000\n[collections.feed.rules]\nget = {}\nlist = \"true\"\n",
                serde_json::to_string(&args.rule)?
            ),
            env: Vec::new(),
        };
        let server = Server::start(&docs).await?;
        let target = Target::Ferrobase {
            url: server.url.clone(),
        };
        let (row, sustained) = measure(
            &target,
            &|| server.rss_kib(),
            &|| server.cpu(),
            count,
            &args,
        )
        .await?
        .rows();
        println!("{row}");
        if let Ok(r) = reqwest::get(format!("{}/metrics", server.url)).await
            && let Ok(text) = r.text().await
        {
            let metric = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let sum = metric("ferrobase_realtime_dispatch_seconds_sum");
            let batches = metric("ferrobase_realtime_dispatch_seconds_count");
            eprintln!(
                "ferrobase: {batches} dispatch batches, mean {:.2} ms",
                sum * 1000.0 / batches.max(1.0)
            );
        }
        sustained_rows.extend(sustained);
        server.stop().await;
        if let Some(pb) = &args.pocketbase {
            let (mut child, url, pid, _dir) = start_pocketbase(pb).await?;
            let token = pocketbase_setup(&url).await?;
            let target = Target::PocketBase { url, token };
            let rss = move || crate::proc_rss_kib(pid);
            let cpu = move || crate::proc_cpu(pid);
            let (row, sustained) = measure(&target, &rss, &cpu, count, &args).await?.rows();
            println!("{row}");
            sustained_rows.extend(sustained);
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    if !sustained_rows.is_empty() {
        println!(
            "\n| sustained | subscribers | created | delivered | complete | server CPU ms per event |"
        );
        println!("|---|---|---|---|---|---|");
        for row in sustained_rows {
            println!("{row}");
        }
    }
    Ok(())
}

pub async fn start_pocketbase(
    bin: &str,
) -> anyhow::Result<(tokio::process::Child, String, u32, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let status = tokio::process::Command::new(bin)
        .args([
            "superuser",
            "upsert",
            "bench@example.com",
            "bench-password-123",
        ])
        .arg(format!("--dir={}", dir.path().display()))
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "pocketbase superuser upsert failed");
    let child = tokio::process::Command::new(bin)
        .args(["serve", &format!("--http=127.0.0.1:{port}")])
        .arg(format!("--dir={}", dir.path().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("pid")?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/api/health")).await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "PocketBase did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, url, pid, dir))
}

/// Signs in as the superuser and creates the public `feed` collection; returns the token.
async fn pocketbase_setup(url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let auth: Value = client
        .post(format!(
            "{url}/api/collections/_superusers/auth-with-password"
        ))
        .json(&json!({"identity": "bench@example.com", "password": "bench-password-123"}))
        .send()
        .await?
        .json()
        .await?;
    let token = auth["token"]
        .as_str()
        .context("superuser token")?
        .to_owned();
    let created = client
        .post(format!("{url}/api/collections"))
        .header("authorization", &token)
        .json(&json!({
            "name": "feed",
            "type": "base",
            "listRule": "",
            "viewRule": "",
            "createRule": "",
            "fields": [
                {"name": "t", "type": "number"},
                {"name": "n", "type": "number"},
                {"name": "phase", "type": "text"},
            ],
        }))
        .send()
        .await?;
    if !created.status().is_success() {
        let text = created.text().await?;
        // A retried request may have created it already; check that it is ours.
        let existing = client
            .get(format!("{url}/api/collections/feed"))
            .header("authorization", &token)
            .send()
            .await?;
        if !existing.status().is_success() {
            bail!("creating the PocketBase collection: {text}");
        }
    }
    Ok(token)
}
