//! `coffer bench --soak-minutes N --rate R`: a long mixed load at a steady rate — secret
//! reads (4 in 5), writes (1 in 5) over 16 connections, and two password logins a second —
//! printing one JSON line per minute (requests, errors, p99 per kind). The soak script
//! (`scripts/soak.sh`) samples the server's memory and open files beside it and reports the
//! slopes. Logins need `COFFER_SOAK_PASSWORD` (and `COFFER_SOAK_USER`, default `admin`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::bench::{percentile, readers};
use crate::cli::Global;
use crate::session;

const WORKERS: usize = 16;
const LOGINS_PER_SECOND: u64 = 2;

#[derive(Default)]
struct Window {
    reads: Vec<u32>,
    writes: Vec<u32>,
    logins: Vec<u32>,
    errors: usize,
}

#[derive(Serialize)]
struct Minute {
    minute: u64,
    requests_per_second: f64,
    reads: usize,
    writes: usize,
    logins: usize,
    errors: usize,
    read_p99_ms: f64,
    write_p99_ms: f64,
    login_p99_ms: f64,
}

fn note(w: &Mutex<Window>, f: impl FnOnce(&mut Window)) {
    f(&mut w.lock().unwrap_or_else(PoisonError::into_inner));
}

fn micros(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Wait for this worker's next slot; a worker more than a second behind starts afresh
/// instead of bursting to catch up.
async fn pace(next: &mut Instant, every: Duration) {
    let now = Instant::now();
    if *next > now {
        tokio::time::sleep_until((*next).into()).await;
    } else if now - *next > Duration::from_secs(1) {
        *next = now;
    }
    *next += every;
}

pub async fn run(g: &Global, minutes: u64, rate: u64) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    let mut suffix = [0u8; 4];
    coffer_core::random_bytes(&mut suffix);
    let project = format!("soak-{}", hex::encode(suffix));
    client
        .create_project(&project)
        .await
        .context("create the soak project")?;
    let value = "x".repeat(64);
    client
        .set_param(&project, "default", "BENCH_SECRET", &value, Some(true))
        .await?;
    let login = std::env::var("COFFER_SOAK_PASSWORD").ok().map(|pw| {
        let user = std::env::var("COFFER_SOAK_USER").unwrap_or_else(|_| "admin".into());
        (user, pw)
    });
    eprintln!(
        "soak on project {project}: {minutes} min at {rate} req/s, {}",
        if login.is_some() {
            "with logins"
        } else {
            "without logins (set COFFER_SOAK_PASSWORD)"
        }
    );
    let window = Arc::new(Mutex::new(Window::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(minutes.max(1) * 60);
    let every = Duration::from_secs_f64(WORKERS as f64 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for (worker, mut reader) in readers(&client, &project, WORKERS)
        .await?
        .into_iter()
        .enumerate()
    {
        let (c, p, v, w) = (
            client.clone(),
            project.clone(),
            value.clone(),
            window.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now();
            let mut i = 0u64;
            while Instant::now() < deadline {
                pace(&mut next, every).await;
                let t = Instant::now();
                if i % 5 == 4 {
                    let ok = c
                        .set_param(
                            &p,
                            "default",
                            &format!("S{worker}_{}", i % 64),
                            &v,
                            Some(true),
                        )
                        .await
                        .is_ok();
                    note(&w, |w| {
                        if ok {
                            w.writes.push(micros(t))
                        } else {
                            w.errors += 1
                        }
                    });
                } else {
                    let ok = reader
                        .get()
                        .await
                        .is_ok_and(|r| r.value.as_deref() == Some(v.as_str()));
                    note(&w, |w| {
                        if ok {
                            w.reads.push(micros(t))
                        } else {
                            w.errors += 1
                        }
                    });
                }
                i += 1;
            }
        }));
    }
    if let Some((user, pw)) = login {
        let (c, w) = (client.clone(), window.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now();
            let every = Duration::from_millis(1000 / LOGINS_PER_SECOND);
            while Instant::now() < deadline {
                pace(&mut next, every).await;
                let t = Instant::now();
                let ok = c.login(&user, &pw).await.is_ok();
                note(&w, |w| {
                    if ok {
                        w.logins.push(micros(t))
                    } else {
                        w.errors += 1
                    }
                });
            }
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    for minute in 1..=minutes.max(1) {
        tick.tick().await;
        let mut done = std::mem::take(&mut *window.lock().unwrap_or_else(PoisonError::into_inner));
        for v in [&mut done.reads, &mut done.writes, &mut done.logins] {
            v.sort_unstable();
        }
        let total = done.reads.len() + done.writes.len() + done.logins.len();
        println!(
            "{}",
            serde_json::to_string(&Minute {
                minute,
                requests_per_second: total as f64 / 60.0,
                reads: done.reads.len(),
                writes: done.writes.len(),
                logins: done.logins.len(),
                errors: done.errors,
                read_p99_ms: percentile(&done.reads, 0.99),
                write_p99_ms: percentile(&done.writes, 0.99),
                login_p99_ms: percentile(&done.logins, 0.99),
            })?
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
