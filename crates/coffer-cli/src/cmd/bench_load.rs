//! `coffer bench-load`: many organisations and values written straight into a fresh database
//! (through the core, with real keys and envelopes, but without a server, HTTP or audit
//! events), then read by `coffer bench --targets` against a server on that database.

use coffer_core::audit::Cx;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_core::apikeys::NewApiKey;
use coffer_core::{Coffer, CoreConfig, Principal, Role, SetParam};

use crate::cli::BenchLoadArgs;
use crate::storage::StorageSettings;

/// The project every loaded organisation has (its `default` environment holds the values).
pub const PROJECT: &str = "scale";

/// The value stored as `P{value}` in organisation number `org` (64 bytes, so that the reads
/// match `coffer bench`'s own): the reader checks every answer against it.
pub fn value_of(org: usize, value: usize) -> String {
    format!("{:x<64}", format!("{org}-{value}-"))
}

pub async fn run(a: BenchLoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.orgs > 0 && a.values >= a.orgs,
        "--values must be at least --orgs (each organisation gets values / orgs)"
    );
    let per_org = a.values / a.orgs;
    let settings = StorageSettings {
        url: a
            .database_url
            .clone()
            .map(coffer_server::DatabaseUrl::new)
            .transpose()?,
        migrate: true,
        archive_url: None,
    };
    coffer_server::create_data_dir(&a.data_dir)?;
    let storage = crate::storage::open(&settings, &a.data_dir).await?;
    let coffer = Coffer::new(storage, CoreConfig::default())?;
    let boot = coffer
        .start_dev(&a.data_dir.join("dev-root.key"))
        .await?
        .context("bench-load needs a fresh database (this one was set up already)")?;
    let owner = coffer
        .identity()
        .login(
            &Cx::default(),
            &boot.username,
            boot.password.expose_secret(),
            None,
            "127.0.0.1",
        )
        .await?
        .session()?
        .principal;

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (coffer, owner, next, done) =
            (coffer.clone(), owner.clone(), next.clone(), done.clone());
        let orgs = a.orgs;
        workers.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            loop {
                let org = next.fetch_add(1, Ordering::Relaxed);
                if org >= orgs {
                    return Ok::<_, anyhow::Error>(keys);
                }
                keys.push((org, load_org(&coffer, &owner, org, per_org).await?));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 500 == 0 || n == orgs {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "{n}/{orgs} organisations, {} values, {:.0} values/s",
                        n * per_org,
                        (n * per_org) as f64 / secs
                    );
                }
            }
        }));
    }
    let mut keys = Vec::with_capacity(a.orgs);
    for w in workers {
        keys.extend(w.await.context("loader task")??);
    }
    keys.sort_unstable_by_key(|(org, _)| *org);

    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.out)
        .with_context(|| format!("create {}", a.out.display()))?;
    writeln!(out, "# coffer bench targets v1\t{PROJECT}\t{per_org}")?;
    for (org, (_, key)) in &keys {
        writeln!(out, "{org}\t{key}")?;
    }
    out.sync_all()?;
    if a.audit_events > 0 {
        let ids: Vec<uuid::Uuid> = keys.iter().map(|(_, (id, _))| *id).collect();
        append_read_events(&coffer, ids, a.audit_events, a.concurrency).await?;
    }
    coffer.close().await;
    eprintln!(
        "loaded {} organisations with {per_org} values each ({} values) in {:.1}s; targets in {}",
        a.orgs,
        a.orgs * per_org,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// One organisation: its project, `per_org` secrets and a read-only API key for the reader.
async fn load_org(
    coffer: &Coffer,
    owner: &Principal,
    org: usize,
    per_org: usize,
) -> anyhow::Result<(uuid::Uuid, String)> {
    let name = format!("scale-{org}");
    let org_id = coffer
        .identity()
        .create_org_as(&Cx::default(), owner, &name)
        .await?;
    // The loader holds the root key and the database: it acts as the organisation's Owner
    // directly rather than logging in once per organisation.
    let p = Principal {
        org_id,
        org_name: name,
        role: Role::Owner,
        ..owner.clone()
    };
    coffer
        .projects()
        .create_project(&Cx::default(), &p, PROJECT)
        .await?;
    for i in 0..per_org {
        let value = value_of(org, i);
        coffer
            .params()
            .set_param(
                &Cx::default(),
                &p,
                PROJECT,
                "default",
                SetParam {
                    name: &format!("P{i}"),
                    value: value.as_bytes(),
                    secret: Some(true),
                },
            )
            .await?;
    }
    let key = coffer
        .identity()
        .create_api_key(
            &Cx::default(),
            &p,
            NewApiKey {
                name: "scale-bench".into(),
                role: Role::Contributor,
                read_only: true,
                projects: vec![],
                envs: vec![],
                ttl: Duration::from_secs(30 * 86_400),
            },
        )
        .await?;
    Ok((org_id, key.key.expose_secret().to_owned()))
}

/// `n` events shaped as an API-key read of a secret records them (actor, target with ids,
/// source, user agent, request id, token HMAC), round robin over the organisations'
/// chains, then a checkpoint of every chain so that all of them can be archived.
async fn append_read_events(
    coffer: &Coffer,
    orgs: Vec<uuid::Uuid>,
    n: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    use coffer_core::audit::{AuditActor, AuditEvent};
    anyhow::ensure!(!orgs.is_empty(), "no organisations to audit");
    let list = Arc::new(orgs);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) * 4 {
        let (coffer, next, list) = (coffer.clone(), next.clone(), list.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let org = list[usize::try_from(i).unwrap_or(0) % list.len()];
                let mut ev = AuditEvent::now("param.get");
                ev.org_id = Some(org);
                ev.request_id = Some(uuid::Uuid::new_v4().to_string());
                ev.actor = AuditActor {
                    kind: "user".into(),
                    id: Some(org),
                    name: Some("reader".into()),
                    auth_method: Some("api_key".into()),
                };
                ev.source = Some("127.0.0.1".into());
                ev.user_agent = Some("coffer-bench/1".into());
                ev.target.project = Some(PROJECT.into());
                ev.target.env = Some("default".into());
                ev.target.name = Some(format!("P{}", i % 100));
                ev.hmac.insert("session".into(), "ab".repeat(32));
                coffer.audit().record(&ev).await?;
                if (i + 1) % 500_000 == 0 {
                    eprintln!(
                        "{} audit events, {:.0}/s",
                        i + 1,
                        (i + 1) as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for w in workers {
        w.await.context("audit task")??;
    }
    coffer.audit().checkpoint_all().await?;
    eprintln!(
        "appended {n} audit events in {:.1}s and checkpointed every chain",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
