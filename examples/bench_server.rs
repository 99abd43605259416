//! Load generator for `contextfs serve`.
//!
//! ```text
//! cargo run --release --example bench_server -- URL ADMIN_TOKEN [CONCURRENCY] [DURATION_S]
//!     [--checkouts N] [--mode full|blobs|commits] [--project NAME]
//! ```
//!
//! It creates a fresh project and a read-write token for it, then runs
//! CONCURRENCY workers for DURATION_S seconds (default 10). Worker `i` loops:
//! build a unique 4 KiB Markdown document, `PUT .../blobs/{hash}`, then
//! `POST .../commit` of `bench/w{i}.md` based on the version the previous
//! commit returned (`null` the first time). Every commit must come back
//! `clean` with the next version number. Afterwards it times N (default 2000)
//! sequential checkouts (`GET .../files/bench/w0.md`) at concurrency 1.
//!
//! `--mode blobs` only uploads (no commits); `--mode commits` uploads two
//! documents per worker first and then only commits, alternating between them,
//! so each phase's cost can be measured on its own.
//!
//! Every measurement ends in one machine-readable line starting with `BENCH `
//! (space-separated key=value pairs). Any non-2xx response, unexpected
//! status or version number aborts the run with a non-zero exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use contextfs::api::{
    Access, BlobReceipt, CommitRequest, CreateProjectRequest, CreateTokenRequest, CreatedToken, ProjectInfo,
    VersionInfo, VersionStatus,
};
use contextfs::model::{BlobHash, WsPath};
use reqwest::{Client, Response, StatusCode};

const DOC_BYTES: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Full,
    Blobs,
    Commits,
}

struct Args {
    url: String,
    admin_token: String,
    concurrency: usize,
    duration: Duration,
    checkouts: usize,
    mode: Mode,
    project: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_server URL ADMIN_TOKEN [CONCURRENCY=1] [DURATION_S=10] [--checkouts N=2000] \
         [--mode full|blobs|commits] [--project NAME]"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let mut checkouts = 2000;
    let mut mode = Mode::Full;
    let mut project = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => usage(),
            "--checkouts" => checkouts = it.next().context("--checkouts needs a number")?.parse()?,
            "--project" => project = Some(it.next().context("--project needs a name")?),
            "--mode" => {
                mode = match it.next().as_deref() {
                    Some("full") => Mode::Full,
                    Some("blobs") => Mode::Blobs,
                    Some("commits") => Mode::Commits,
                    other => bail!("--mode must be full, blobs or commits, not {other:?}"),
                }
            }
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(arg),
        }
    }
    if positional.len() < 2 || positional.len() > 4 {
        usage();
    }
    let concurrency: usize = positional.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let secs: f64 = positional.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10.0);
    if concurrency == 0 || secs <= 0.0 {
        bail!("concurrency and duration must be positive");
    }
    Ok(Args {
        url: positional[0].trim_end_matches('/').to_string(),
        admin_token: positional[1].clone(),
        concurrency,
        duration: Duration::from_secs_f64(secs),
        checkouts,
        mode,
        project,
    })
}

/// Fails loudly on anything but a 2xx, with the server's error body.
async fn check(resp: Response, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(anyhow!("{what}: HTTP {status}: {body}"))
}

/// A unique, exactly 4 KiB Markdown document.
fn document(worker: usize, seq: u64, nonce: u64) -> Vec<u8> {
    let mut doc = format!(
        "# Benchmark notes, worker {worker}, revision {seq}\n\n\
         Nonce `{nonce:016x}`. This document is rewritten on every commit.\n\n## Findings\n\n"
    );
    let mut item = 0;
    while doc.len() < DOC_BYTES {
        item += 1;
        doc.push_str(&format!(
            "- Item {item} of revision {seq}: the quick brown fox jumps over the lazy dog ({worker}/{nonce:x}).\n"
        ));
    }
    doc.truncate(DOC_BYTES - 1);
    doc.push('\n');
    doc.into_bytes()
}

struct Ctx {
    http: Client,
    base: String,
    auth: String,
}

impl Ctx {
    async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobHash> {
        let hash = BlobHash::of(&bytes);
        let resp = self
            .http
            .put(format!("{}/blobs/{hash}", self.base))
            .header("authorization", &self.auth)
            .body(bytes)
            .send()
            .await
            .context("PUT blob")?;
        let receipt: BlobReceipt = check(resp, "PUT blob").await?.json().await?;
        if receipt.hash != hash || receipt.size != DOC_BYTES as u64 {
            bail!("PUT blob: receipt {receipt:?} does not match {hash}");
        }
        Ok(hash)
    }

    async fn commit(&self, path: &WsPath, base: Option<i64>, hash: BlobHash, worker: usize) -> Result<VersionInfo> {
        // Built from JSON so that optional fields added to the wire type later
        // keep their defaults and this example keeps compiling.
        let req: CommitRequest = serde_json::from_value(serde_json::json!({
            "path": path,
            "base_version": base,
            "hash": hash,
            "agent_id": format!("bench-w{worker}"),
        }))?;
        let resp = self
            .http
            .post(format!("{}/commit", self.base))
            .header("authorization", &self.auth)
            .json(&req)
            .send()
            .await
            .context("POST commit")?;
        let info: VersionInfo = check(resp, "POST commit").await?.json().await?;
        let expected = base.unwrap_or(0) + 1;
        if info.status != VersionStatus::Clean || info.version != expected {
            bail!("POST commit of {path}: expected a clean version {expected}, got {info:?}");
        }
        Ok(info)
    }
}

#[derive(Default)]
struct WorkerStats {
    ops: u64,
    put: Vec<f64>,
    commit: Vec<f64>,
}

async fn worker(ctx: Arc<Ctx>, i: usize, mode: Mode, start: Instant, deadline: Instant) -> Result<WorkerStats> {
    let path = WsPath::parse(&format!("bench/w{i}.md"))?;
    let mut stats = WorkerStats::default();
    let mut head: Option<i64> = None;
    let mut seq = 0u64;
    let nonce = start.elapsed().as_nanos() as u64 ^ ((i as u64) << 48) ^ rand::random::<u64>();
    // For --mode commits: two pre-uploaded documents to alternate between.
    let mut pair = Vec::new();
    if mode == Mode::Commits {
        for k in 0..2 {
            pair.push(ctx.put_blob(document(i, k, nonce)).await?);
        }
    }
    while Instant::now() < deadline {
        seq += 1;
        let hash = if mode == Mode::Commits {
            pair[(seq % 2) as usize].clone()
        } else {
            let t = Instant::now();
            let hash = ctx.put_blob(document(i, seq, nonce)).await?;
            stats.put.push(t.elapsed().as_secs_f64() * 1e3);
            hash
        };
        if mode != Mode::Blobs {
            let t = Instant::now();
            let info = ctx.commit(&path, head, hash, i).await?;
            stats.commit.push(t.elapsed().as_secs_f64() * 1e3);
            head = Some(info.version);
        }
        stats.ops += 1;
    }
    Ok(stats)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return String::new();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        " {name}_mean_ms={mean:.3} {name}_p50_ms={:.3} {name}_p99_ms={:.3}",
        percentile(&v, 50.0),
        percentile(&v, 99.0)
    )
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bench_server: FAILED: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let http = Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1) * 2)
        .build()?;
    let api = format!("{}/api/v1", args.url);
    let admin = format!("Bearer {}", args.admin_token);

    let name = args.project.clone().unwrap_or_else(|| {
        format!(
            "bench-{}-{:06x}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            rand::random::<u32>() & 0xff_ffff
        )
    });
    let resp = http
        .post(format!("{api}/projects"))
        .header("authorization", &admin)
        .json(&CreateProjectRequest { name: name.clone() })
        .send()
        .await
        .context("create project (is the server running?)")?;
    let project: ProjectInfo = check(resp, "create project").await?.json().await?;
    let resp = http
        .post(format!("{api}/projects/{}/tokens", project.name))
        .header("authorization", &admin)
        .json(&CreateTokenRequest {
            access: Access::ReadWrite,
            label: Some("bench_server".into()),
        })
        .send()
        .await?;
    let token: CreatedToken = check(resp, "create token").await?.json().await?;
    let ctx = Arc::new(Ctx {
        http,
        base: format!("{api}/projects/{}", project.name),
        auth: format!("Bearer {}", token.token),
    });
    eprintln!(
        "bench_server: project {}, {} workers, {:.1} s, mode {:?}",
        project.name,
        args.concurrency,
        args.duration.as_secs_f64(),
        args.mode
    );

    // ----- write phase -----
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut handles = Vec::new();
    for i in 0..args.concurrency {
        handles.push(tokio::spawn(worker(ctx.clone(), i, args.mode, start, deadline)));
    }
    let mut ops = 0;
    let (mut put, mut commit) = (Vec::new(), Vec::new());
    let mut failure = None;
    for h in handles {
        match h.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(s) => {
                ops += s.ops;
                put.extend(s.put);
                commit.extend(s.commit);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        return Err(e.context("a worker failed"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (label, unit) = match args.mode {
        Mode::Blobs => ("blob_put", "puts"),
        _ => ("commit", "commits"),
    };
    println!(
        "BENCH name={label} mode={} concurrency={} duration_s={elapsed:.3} {unit}={ops} {unit}_per_s={:.1}{}{}",
        format!("{:?}", args.mode).to_lowercase(),
        args.concurrency,
        ops as f64 / elapsed,
        summary("put", put),
        summary("commit", commit),
    );

    // ----- checkout latency -----
    if args.checkouts > 0 && args.mode != Mode::Blobs {
        let url = format!("{}/files/bench/w0.md", ctx.base);
        let mut lat = Vec::with_capacity(args.checkouts);
        let t0 = Instant::now();
        for _ in 0..args.checkouts {
            let t = Instant::now();
            let resp = ctx.http.get(&url).header("authorization", &ctx.auth).send().await?;
            let resp = check(resp, "GET file").await?;
            if resp.status() != StatusCode::OK {
                bail!("GET file: unexpected {}", resp.status());
            }
            let body = resp.bytes().await?;
            if body.len() != DOC_BYTES {
                bail!("GET file: got {} bytes, expected {DOC_BYTES}", body.len());
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = t0.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "BENCH name=checkout concurrency=1 n={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} per_s={:.1}",
            args.checkouts,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN),
            args.checkouts as f64 / total
        );
    }
    Ok(())
}
