//! `coffer bench`: authenticated single-parameter reads over HTTPS with keep-alive, and
//! durable writes, against a running server. Build with --release for meaningful numbers.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::cli::{BenchArgs, Global};
use crate::{output, session};

#[derive(Debug, Serialize)]
struct Measurement {
    kind: &'static str,
    connections: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

async fn measure<F, Fut>(kind: &'static str, conns: usize, dur: Duration, op: F) -> Measurement
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(conns);
    for worker in 0..conns {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(worker, i).await {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Measurement {
        kind,
        connections: conns,
        requests: all.len(),
        errors,
        seconds: secs,
        requests_per_second: all.len() as f64 / secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    let mut suffix = [0u8; 4];
    coffer_core::random_bytes(&mut suffix);
    let project = format!(
        "bench-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    client
        .create_project(&project)
        .await
        .context("create the benchmark project")?;
    let value = "x".repeat(64);
    client
        .set_param(&project, "default", "BENCH_SECRET", &value, Some(true))
        .await?;
    let dur = Duration::from_secs(a.duration.max(1));
    eprintln!(
        "benchmark project {project}; {}s per measurement",
        dur.as_secs()
    );

    // Warm up connections, caches and the server's key cache.
    let c = client.clone();
    let p = project.clone();
    measure("warmup", 4, Duration::from_secs(1), move |_, _| {
        let (c, p) = (c.clone(), p.clone());
        async move { c.get_param(&p, "default", "BENCH_SECRET").await.is_ok() }
    })
    .await;

    let mut results = Vec::new();
    for &conns in &a.connections {
        let c = client.clone();
        let p = project.clone();
        let m = measure("read", conns.max(1), dur, move |_, _| {
            let (c, p) = (c.clone(), p.clone());
            async move {
                c.get_param(&p, "default", "BENCH_SECRET")
                    .await
                    .is_ok_and(|r| r.value.is_some())
            }
        })
        .await;
        results.push(m);
    }
    if a.writers > 0 {
        let c = client.clone();
        let p = project.clone();
        let v = value.clone();
        let m = measure("write", a.writers, dur, move |worker, i| {
            let (c, p, v) = (c.clone(), p.clone(), v.clone());
            async move {
                c.set_param(
                    &p,
                    "default",
                    &format!("W{worker}_{}", i % 64),
                    &v,
                    Some(true),
                )
                .await
                .is_ok()
            }
        })
        .await;
        results.push(m);
    }
    if g.json {
        return output::json(&results);
    }
    output::table(
        &[
            "operation",
            "connections",
            "requests",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
        ],
        results
            .iter()
            .map(|m| {
                vec![
                    m.kind.to_owned(),
                    m.connections.to_string(),
                    m.requests.to_string(),
                    m.errors.to_string(),
                    format!("{:.0}", m.requests_per_second),
                    format!("{:.3}", m.p50_ms),
                    format!("{:.3}", m.p99_ms),
                ]
            })
            .collect(),
    );
    Ok(())
}
