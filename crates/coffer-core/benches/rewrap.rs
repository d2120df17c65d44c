//! Rewrap throughput: N values under term 1, one rotation, the rewrap job timed to the end.
//!
//!   cargo bench -p coffer-core --bench rewrap -- [N]              (SQLite in a temp dir)
//!   COFFER_BENCH_PG=postgres://… cargo bench -p coffer-core --bench rewrap -- [N]
//!   COFFER_BENCH_BATCH=20000 …                                      (values per batch)
//!
//! Values are written through the service (16 concurrent writers), so every one is a real
//! envelope-encrypted value in its own parameter version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_core::audit::Cx;
use std::time::Instant;

use coffer_core::{Coffer, CoreConfig, SetParam};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(1_000_000, |a| a.parse().expect("N"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CoreConfig::default();
    if let Ok(b) = std::env::var("COFFER_BENCH_BATCH") {
        cfg.rewrap_batch = b.parse().expect("COFFER_BENCH_BATCH");
    }
    let (coffer, backend) = match std::env::var("COFFER_BENCH_PG") {
        Ok(url) => (
            Coffer::new(
                coffer_store::Storage::open(&coffer_store::Location::Postgres {
                    url,
                    migrate: true,
                })
                .await
                .unwrap(),
                cfg,
            )
            .unwrap(),
            "postgresql",
        ),
        Err(_) => (
            coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), cfg)
                .await
                .unwrap(),
            "sqlite",
        ),
    };
    let boot = coffer
        .start_dev(&dir.path().join("root.key"))
        .await
        .unwrap()
        .expect("a fresh database");
    let p = coffer
        .identity()
        .login(
            &Cx::default(),
            &boot.username,
            boot.password.expose_secret(),
            None,
            "bench",
        )
        .await
        .unwrap()
        .session()
        .unwrap()
        .principal;
    coffer
        .projects()
        .create_project(&Cx::default(), &p, "bench")
        .await
        .unwrap();

    let t = Instant::now();
    let writers = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (c, p) = (coffer.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(writers) {
                let name = format!("V{i}");
                c.params()
                    .set_param(
                        &Cx::default(),
                        &p,
                        "bench",
                        "default",
                        SetParam {
                            name: &name,
                            value: b"0123456789abcdef0123456789abcdef",
                            secret: Some(true),
                        },
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("{backend}: wrote {n} values in {:.1?}", t.elapsed());

    coffer
        .keys()
        .rotate_org_key(p.org_id, "bench")
        .await
        .unwrap();
    let t = Instant::now();
    let moved = coffer.keys().run_key_maintenance().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(moved as usize, n);
    println!(
        "{backend}: rewrapped {moved} values in {secs:.2} s = {:.0} records/s",
        moved as f64 / secs
    );
}
