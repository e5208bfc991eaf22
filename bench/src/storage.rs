//! `fbbench storage`: object storage throughput on local disk and on S3 (an `s3s-fs` server
//! on loopback), and the server's peak memory while a 1 GB body streams in.
//!
//! ```text
//! fbbench storage --bin target/release/ferrobase --s3s-fs ~/.cargo/bin/s3s-fs
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{DocsArgs, KEY, Server};

#[derive(clap::Args, Clone)]
pub struct StorageArgs {
    #[arg(long, default_value = "target/release/ferrobase")]
    bin: String,
    /// The s3s-fs binary; without it only local disk is measured.
    #[arg(long)]
    s3s_fs: Option<String>,
    /// Seconds per small-object scenario.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients for small objects.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Size of the large streamed upload, in MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: usize,
}

struct S3 {
    child: tokio::process::Child,
    _root: tempfile::TempDir,
    endpoint: String,
}

async fn start_s3(bin: &str) -> anyhow::Result<S3> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("fb-bench"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = tokio::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "bench-secret-key"])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting s3s-fs")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "s3s-fs did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(S3 {
        child,
        _root: root,
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn put(client: &reqwest::Client, url: &str, body: reqwest::Body) -> anyhow::Result<()> {
    let response = client.put(url).bearer_auth(KEY).body(body).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "upload: {}",
        response.status()
    );
    Ok(())
}

async fn get_len(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let mut response = client.get(url).bearer_auth(KEY).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "download: {}",
        response.status()
    );
    let mut total = 0;
    while let Some(chunk) = response.chunk().await? {
        total += chunk.len() as u64;
    }
    Ok(total)
}

/// Small objects: `concurrency` clients uploading (then downloading) 4 KiB objects.
async fn small_ops(server: &Server, args: &StorageArgs, download: bool) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let (client, done, base) = (client.clone(), done.clone(), server.url.clone());
        tasks.push(tokio::spawn(async move {
            let body = vec![7u8; 4096];
            let mut i = 0u64;
            while Instant::now() < deadline {
                let url = format!("{base}/v1/storage/bench/small/{worker}/{}", i % 200);
                let ok = if download {
                    get_len(&client, &url).await.is_ok()
                } else {
                    put(&client, &url, body.clone().into()).await.is_ok()
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Uploads then downloads `count` objects of `size` bytes, `parallel` at a time.
async fn big_ops(
    server: &Server,
    size: usize,
    count: usize,
    parallel: usize,
) -> anyhow::Result<(f64, f64)> {
    let client = reqwest::Client::new();
    let body = bytes::Bytes::from(vec![42u8; size]);
    let started = Instant::now();
    for batch in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let mut tasks = Vec::new();
        for &i in batch {
            let (client, body, url) = (
                client.clone(),
                body.clone(),
                format!("{}/v1/storage/bench/big/{size}/{i}", server.url),
            );
            tasks.push(tokio::spawn(async move {
                put(&client, &url, body.into()).await
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let up = mbps((size * count) as u64, started.elapsed());
    let started = Instant::now();
    let mut total = 0;
    for batch in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let mut tasks = Vec::new();
        for &i in batch {
            let (client, url) = (
                client.clone(),
                format!("{}/v1/storage/bench/big/{size}/{i}", server.url),
            );
            tasks.push(tokio::spawn(async move { get_len(&client, &url).await }));
        }
        for t in tasks {
            total += t.await??;
        }
    }
    anyhow::ensure!(total == (size * count) as u64, "short download");
    Ok((up, mbps(total, started.elapsed())))
}

/// Streams `mib` MiB in 1 MiB chunks while sampling the server's RSS; returns the peak
/// growth in MiB and the throughput.
async fn big_stream(server: &Server, mib: usize) -> anyhow::Result<(f64, f64)> {
    let baseline = server.rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.pid);
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(crate::proc_rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let chunks = (0..mib).map(|_| Ok::<_, std::io::Error>(vec![1u8; 1 << 20]));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let started = Instant::now();
    put(
        &reqwest::Client::new(),
        &format!("{}/v1/storage/bench/huge", server.url),
        body,
    )
    .await?;
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline) as f64 / 1024.0;
    Ok((grew, mbps((mib << 20) as u64, elapsed)))
}

pub async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    println!(
        "| store | 4 KiB PUT ops/s | 4 KiB GET ops/s | 1 MiB up MB/s | 1 MiB down MB/s | 100 MiB up MB/s | 100 MiB down MB/s | {} MiB streamed up MB/s | peak RSS growth MiB |",
        args.big_mib
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut stores = vec!["local disk"];
    if args.s3s_fs.is_some() {
        stores.push("S3 (s3s-fs)");
    }
    for store in stores {
        let mut s3 = None;
        let mut env = Vec::new();
        if store.starts_with("S3")
            && let Some(bin) = &args.s3s_fs
        {
            let server = start_s3(bin).await?;
            env = vec![
                ("FERROBASE_S3_BUCKET".to_owned(), "fb-bench".to_owned()),
                ("FERROBASE_S3_ENDPOINT".to_owned(), server.endpoint.clone()),
                ("FERROBASE_S3_PATH_STYLE".to_owned(), "true".to_owned()),
                ("AWS_ACCESS_KEY_ID".to_owned(), "bench".to_owned()),
                (
                    "AWS_SECRET_ACCESS_KEY".to_owned(),
                    "bench-secret-key".to_owned(),
                ),
            ];
            s3 = Some(server);
        }
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
            config: "[buckets.bench]\n".to_owned(),
            env,
        };
        let server = Server::start(&docs).await?;
        let put_ops = small_ops(&server, &args, false).await?;
        let get_ops = small_ops(&server, &args, true).await?;
        let (up1, down1) = big_ops(&server, 1 << 20, 64, 4).await?;
        let (up100, down100) = big_ops(&server, 100 << 20, 3, 1).await?;
        let (grew, streamed) = big_stream(&server, args.big_mib).await?;
        println!(
            "| {store} | {put_ops:.0} | {get_ops:.0} | {up1:.0} | {down1:.0} | {up100:.0} | {down100:.0} | {streamed:.0} | {grew:.1} |"
        );
        server.stop().await;
        if let Some(mut s3) = s3 {
            let _ = s3.child.start_kill();
        }
    }
    Ok(())
}
