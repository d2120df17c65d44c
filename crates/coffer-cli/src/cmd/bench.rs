//! `coffer bench`: authenticated single-parameter reads over HTTPS with keep-alive, and
//! durable writes, against a running server. Build with --release for meaningful numbers.
//!
//! Reads go through lean connections of their own ([`coffer_client::ParamReader`], one per
//! worker) because the benchmark usually shares its machine with the server: the client's
//! own CPU is taken from the server being measured.

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

pub(super) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// Run `op` on `states.len()` concurrent workers, each with its own state (a connection,
/// or nothing), for `dur`; `op` hands the state back with whether the request succeeded.
async fn measure<S, F, Fut>(kind: &'static str, states: Vec<S>, dur: Duration, op: F) -> Measurement
where
    S: Send + 'static,
    F: Fn(S, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (S, bool)> + Send,
{
    let conns = states.len();
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(conns);
    for (worker, mut state) in states.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let (s, ok) = op(state, worker, i).await;
                state = s;
                if ok {
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

/// One connection per worker that reads the benchmark secret and checks its value.
pub(super) async fn readers(
    client: &coffer_client::Client,
    project: &str,
    n: usize,
) -> anyhow::Result<Vec<coffer_client::ParamReader>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            client
                .param_reader(project, "default", "BENCH_SECRET")
                .await
                .context("open a benchmark connection (needs the server's CA: COFFER_CACERT)")?,
        );
    }
    Ok(out)
}

/// Read with each reader until `dur` is over; a read counts only if it returned the value
/// written.
async fn measure_reads(
    readers: Vec<coffer_client::ParamReader>,
    dur: Duration,
    expected: &str,
    kind: &'static str,
) -> Measurement {
    let expected = std::sync::Arc::<str>::from(expected);
    measure(kind, readers, dur, move |mut r, _, _| {
        let expected = expected.clone();
        async move {
            let ok = r
                .get()
                .await
                .is_ok_and(|p| p.value.as_deref() == Some(&*expected));
            (r, ok)
        }
    })
    .await
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    if let Some(minutes) = a.soak_minutes {
        return super::soak::run(g, minutes, a.rate).await;
    }
    if let Some(path) = &a.targets {
        let results = scale_reads(g, &a, path).await?;
        return report(g, &results);
    }
    let client = session::authed(g)?;
    let mut suffix = [0u8; 4];
    coffer_core::random_bytes(&mut suffix);
    let project = format!("bench-{}", hex::encode(suffix));
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
    measure_reads(
        readers(&client, &project, 4).await?,
        Duration::from_secs(1),
        &value,
        "warmup",
    )
    .await;

    let mut results = Vec::new();
    for &conns in &a.connections {
        let readers = readers(&client, &project, conns.max(1)).await?;
        results.push(measure_reads(readers, dur, &value, "read").await);
    }
    if a.writers > 0 {
        let c = client.clone();
        let p = project.clone();
        let v = value.clone();
        let m = measure("write", vec![(); a.writers], dur, move |(), worker, i| {
            let (c, p, v) = (c.clone(), p.clone(), v.clone());
            async move {
                let ok = c
                    .set_param(
                        &p,
                        "default",
                        &format!("W{worker}_{}", i % 64),
                        &v,
                        Some(true),
                    )
                    .await
                    .is_ok();
                ((), ok)
            }
        })
        .await;
        results.push(m);
    }
    report(g, &results)
}

fn report(g: &Global, results: &[Measurement]) -> anyhow::Result<()> {
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

/// The organisations `coffer bench-load` made: its project, values per organisation, and
/// (organisation number, API key) pairs.
struct Targets {
    project: String,
    per_org: usize,
    keys: Vec<(usize, String)>,
}

fn read_targets(path: &std::path::Path) -> anyhow::Result<Targets> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default();
    let mut h = head.split('\t');
    anyhow::ensure!(
        h.next() == Some("# coffer bench targets v1"),
        "{} is not a targets file of `coffer bench-load`",
        path.display()
    );
    let project = h.next().context("targets: project")?.to_owned();
    let per_org: usize = h.next().context("targets: values")?.parse()?;
    let keys = lines
        .map(|l| {
            let (org, key) = l.split_once('\t').context("targets: line")?;
            Ok((org.parse()?, key.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!keys.is_empty() && per_org > 0, "targets: empty");
    Ok(Targets {
        project,
        per_org,
        keys,
    })
}

/// Reads of random values of random organisations, each with that organisation's API key:
/// what a node serving many tenants sees.
async fn scale_reads(
    g: &Global,
    a: &BenchArgs,
    path: &std::path::Path,
) -> anyhow::Result<Vec<Measurement>> {
    let t = std::sync::Arc::new(read_targets(path)?);
    let client = session::anonymous(g)?.with_token(t.keys[0].1.clone());
    let prefix: std::sync::Arc<str> = client.param_path(&t.project, "default", "P").into();
    eprintln!(
        "{} organisations x {} values; random reads",
        t.keys.len(),
        t.per_org
    );
    let dur = Duration::from_secs(a.duration.max(1));
    let mut results = Vec::new();
    for (kind, conns, dur) in std::iter::once(("warmup", 4, Duration::from_secs(1)))
        .chain(a.connections.iter().map(|&c| ("read", c.max(1), dur)))
    {
        let mut readers = Vec::with_capacity(conns);
        for _ in 0..conns {
            readers.push(
                client
                    .param_reader(&t.project, "default", "P0")
                    .await
                    .context("open a benchmark connection (needs COFFER_ADDR and COFFER_CACERT)")?,
            );
        }
        let (t, prefix) = (t.clone(), prefix.clone());
        let m = measure(kind, readers, dur, move |mut r, worker, i| {
            let (t, prefix) = (t.clone(), prefix.clone());
            async move {
                // A fixed pseudo-random walk per worker (splitmix64): the same sequence on
                // every run, uniform over organisations and values.
                let mut z = (worker as u64) << 40 ^ i;
                z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let (org, key) = &t.keys[(z % t.keys.len() as u64) as usize];
                let value = ((z >> 32) % t.per_org as u64) as usize;
                let expected = super::bench_load::value_of(*org, value);
                let ok = r
                    .get_at(&format!("{prefix}{value}"), key)
                    .await
                    .is_ok_and(|p| p.value.as_deref() == Some(expected.as_str()));
                (r, ok)
            }
        })
        .await;
        if kind != "warmup" {
            results.push(m);
        }
    }
    Ok(results)
}
