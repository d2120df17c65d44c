//! The audit log under `kill -9`: reads and denials whose events only reached the operating
//! system before their answer (`audit.read_sync = "batched"`, the default) must still be in
//! the log after the process dies, and so must every acknowledged write and its event.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::*;

/// Rounds in the default test run; `COFFER_CRASH_ROUNDS` asks for more
/// (`scripts/crash-scale.sh` runs 20 per backend and reports the figures).
const ROUNDS: usize = 10;
const WORKERS: usize = 4;

fn rounds() -> usize {
    std::env::var("COFFER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
}

/// What one worker saw answered before the server died.
#[derive(Default)]
struct Seen {
    /// Request ids of every request that got an HTTP answer, whatever its status.
    answered: Vec<String>,
    /// The last value whose write was acknowledged (2xx), by counter.
    last_write: Option<u64>,
    /// Writes acknowledged (2xx).
    acked: usize,
    reads: usize,
    writes: usize,
}

fn http_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .http1_only()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Reads (three of four requests) and writes of this worker's own parameter until the
/// server stops answering. Every request carries its own id, to be found in the log.
async fn load(http: reqwest::Client, url: String, token: String, round: usize, w: usize) -> Seen {
    let mut seen = Seen::default();
    // Values grow from round to round, so the newest acknowledged one is the largest.
    let base = round as u64 * 1_000_000;
    for i in 0u64.. {
        let id = format!("crash-{round}-{w}-{i}");
        let write = i % 4 == 0;
        let req = if write {
            http.put(&url)
                .json(&serde_json::json!({ "value": format!("{}", base + i), "secret": true }))
        } else {
            http.get(&url)
        };
        let Ok(res) = req
            .bearer_auth(&token)
            .header("x-request-id", &id)
            .send()
            .await
        else {
            break;
        };
        let ok = res.status().is_success();
        seen.answered.push(id);
        if write && ok {
            seen.acked += 1;
            seen.last_write = Some(base + i);
            seen.writes += 1;
        } else if ok {
            seen.reads += 1;
        }
    }
    seen
}

/// The request ids of every event in the organisation's exported log.
fn logged_request_ids(cli: &Cli, dir: &Path) -> HashSet<String> {
    let file = dir.join("export.ndjson");
    cli.ok(&["audit", "export", "-o", file.to_str().unwrap()]);
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "event")
        .filter_map(|l| {
            let body: Value = serde_json::from_str(l["body"].as_str()?).ok()?;
            Some(body["client_request_id"].as_str()?.to_owned())
        })
        .collect()
}

/// `kill -9` in the middle of a mixed read/write load, ten times on the same data: after
/// each restart every answered request has its event, the chain verifies, and every
/// acknowledged write is there.
#[test]
fn audit_events_survive_kill_9_under_mixed_load() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = start_server(&data, true, &[]);
    let password = srv.password.clone().unwrap();
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
    let o = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cli.ok(&["project", "create", "app"]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Per worker: the newest value any acknowledged write left, over all rounds.
    let mut acknowledged: BTreeMap<usize, u64> = BTreeMap::new();
    let (rounds, mut answered, mut acked) = (rounds(), 0, 0);
    let mut applied_unacked = HashSet::new();
    for round in 0..rounds {
        let http = http_client(&srv.ca);
        let token = rt
            .block_on(async {
                let pem = std::fs::read(&srv.ca).unwrap();
                coffer_client::Client::new(&srv.addr, Some(&pem))
                    .unwrap()
                    .login("admin", &password)
                    .await
            })
            .unwrap()
            .token
            .unwrap();
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let url = format!("{}/v1/projects/app/envs/default/params/CRASH_{w}", srv.addr);
                rt.spawn(load(http.clone(), url, token.clone(), round, w))
            })
            .collect();
        // A different moment in each round, so the kill meets the writer in different states.
        std::thread::sleep(Duration::from_millis(250 + 37 * round as u64 % 200));
        drop(srv); // SIGKILL
        let seen: Vec<Seen> = workers
            .into_iter()
            .map(|h| rt.block_on(h).unwrap())
            .collect();
        assert!(
            seen.iter().map(|s| s.reads).sum::<usize>() > 0
                && seen.iter().map(|s| s.writes).sum::<usize>() > 0,
            "round {round}: the load had not started when the server was killed"
        );

        srv = start_server_with(&data, true, &[], false);
        let cli = Cli::of(&srv, tmp.path().join("cfg"));
        let logged = logged_request_ids(&cli, tmp.path());
        for s in &seen {
            let missing: Vec<&String> = s
                .answered
                .iter()
                .filter(|id| !logged.contains(*id))
                .collect();
            assert!(
                missing.is_empty(),
                "round {round}: answered requests without an event after kill -9: {missing:?}"
            );
        }
        let verified = cli.ok(&["audit", "verify"]);
        assert!(verified.starts_with("OK:"), "round {round}: {verified}");
        for (w, s) in seen.iter().enumerate() {
            answered += s.answered.len();
            acked += s.acked;
            if let Some(i) = s.last_write {
                acknowledged.insert(w, i);
            }
        }
        for (w, i) in &acknowledged {
            // A write sent but not answered may also have been applied, never an older one.
            let v: u64 = cli
                .ok(&["param", "get", &format!("CRASH_{w}"), "-p", "app"])
                .trim()
                .parse()
                .unwrap();
            assert!(
                v >= *i,
                "round {round}: worker {w}'s acknowledged write {i} is lost (found {v})"
            );
            if v > *i {
                // Applied without an answer: then whole, with its event (all or nothing).
                let id = format!("crash-{}-{w}-{}", v / 1_000_000, v % 1_000_000);
                assert!(
                    logged.contains(&id),
                    "round {round}: write {id} was applied without its event"
                );
                applied_unacked.insert(id);
            }
        }
    }
    // The figures scripts/crash-scale.sh reports.
    eprintln!(
        "crash figures: {rounds} rounds of kill -9 in {:?}; {answered} answered requests, all with \
         their events; {acked} acknowledged writes, all present; {} unanswered \
         writes found applied, each with its event; audit verify OK after every round",
        started.elapsed(),
        applied_unacked.len()
    );
}
