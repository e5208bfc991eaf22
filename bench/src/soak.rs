//! `fbbench soak`: a long mixed load against one Ferrobase (SQLite), watching for leaks.
//!
//! For `--minutes`: 8 clients creating documents as users (every 4th request a filtered
//! list instead), one client overwriting 200 objects of 64 KiB in turn, one client queueing
//! async function calls, one writer feeding `--subscribers` realtime subscribers. Every 10 s
//! it samples the server's RSS, open file descriptors and threads. The verdict compares the
//! end with the end of the first minute (warm-up): RSS growth, descriptors, errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::compare::start_ferrobase;
use crate::{KEY, proc_rss_kib};

#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    #[arg(long, default_value = "target/release/ferrobase")]
    bin: String,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
}

impl Counts {
    fn count(&self, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let running = start_ferrobase(&args.bin, None).await?;
    let api = running.api.clone();
    let pid = api.pid;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let r = client
        .post(format!("{}/v1/admin/buckets", api.url))
        .bearer_auth(KEY)
        .json(&json!({"name": "soak"}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "bucket: {}", r.text().await?);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();

    // Realtime subscribers (reconnecting is not expected: a drop counts as an error).
    let ws_url = format!("{}/v1/realtime", api.url.replace("http://", "ws://"));
    for _ in 0..args.subscribers {
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
        let subscribe = json!({"type": "subscribe", "id": "s", "collection": "feed"});
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        let (stop, counts) = (stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.contains("\"event\"") => {
                        counts.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(_) => {
                        counts.count(false);
                        return;
                    }
                }
            }
        }));
    }
    // Documents: creates and lists as users.
    for c in 0..8u64 {
        let (api, client, stop, counts) =
            (api.clone(), client.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let ok = if i % 4 == 3 {
                    api.list(&client, i).await
                } else {
                    api.create(&client, "bench", i).await
                };
                counts.count(ok);
                i += 8;
            }
        }));
    }
    // Uploads: 200 keys overwritten in turn (the bucket stays the same size).
    {
        let (url, client, stop, counts) = (
            api.url.clone(),
            client.clone(),
            stop.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = vec![7u8; 64 * 1024];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = client
                    .put(format!("{url}/v1/storage/soak/k{}", i % 200))
                    .bearer_auth(KEY)
                    .body(body.clone())
                    .send()
                    .await;
                counts.count(matches!(put, Ok(r) if r.status().is_success()));
                i += 1;
            }
        }));
    }
    // Async function calls, 20 per second.
    {
        let (url, client, stop, counts) = (
            api.url.clone(),
            client.clone(),
            stop.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(format!("{url}/v1/functions/echo/async"))
                    .json(&json!({"i": i}))
                    .send()
                    .await;
                counts.count(matches!(r, Ok(r) if r.status() == 202));
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // The realtime feed, 50 events per second.
    {
        let (url, client, stop, counts) = (
            api.url.clone(),
            client.clone(),
            stop.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(format!("{url}/v1/db/feed"))
                    .bearer_auth(KEY)
                    .json(&json!({"phase": "soak"}))
                    .send()
                    .await;
                counts.count(matches!(r, Ok(r) if r.status() == 201));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    println!(
        "| minute:second | RSS MiB | open fds | threads | requests ok | errors | realtime deliveries |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let end = Duration::from_secs(args.minutes * 60);
    let mut warm: Option<(u64, usize)> = None;
    let mut last = (0u64, 0usize);
    let mut peak = 0u64;
    while started.elapsed() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, fds) = (proc_rss_kib(pid), open_fds(pid));
        peak = peak.max(rss);
        let t = started.elapsed().as_secs();
        if t >= 60 && warm.is_none() {
            warm = Some((rss, fds));
        }
        last = (rss, fds);
        if t % 60 < 10 || started.elapsed() >= end {
            println!(
                "| {}:{:02} | {:.1} | {fds} | {} | {} | {} | {} |",
                t / 60,
                t % 60,
                rss as f64 / 1024.0,
                threads(pid),
                counts.ok.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed),
                counts.delivered.load(Ordering::Relaxed),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let (warm_rss, warm_fds) = warm.unwrap_or(last);
    let growth = 100.0 * (last.0 as f64 - warm_rss as f64) / warm_rss.max(1) as f64;
    println!(
        "\nRSS after warm-up (1 min) {:.1} MiB, at the end {:.1} MiB ({growth:+.1} %), peak {:.1} MiB; open fds {warm_fds} → {}; {} requests, {} errors; {} realtime deliveries",
        warm_rss as f64 / 1024.0,
        last.0 as f64 / 1024.0,
        peak as f64 / 1024.0,
        last.1,
        counts.ok.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.delivered.load(Ordering::Relaxed),
    );
    running.stop().await;
    Ok(())
}
