//! Integration tests of the domain against a real database: SQLite in a temporary directory,
//! or with `COFFER_TEST_BACKEND=postgres` a fresh PostgreSQL database (scripts/test.sh runs
//! them both ways). Tests that read or copy the SQLite file use [`sqlite_fixture`].

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive;
mod atomic;
mod audit;
mod forgery;
mod fuzz_corpus;
mod identity;
mod keys;
mod oidc;
mod params;
mod properties;
mod seal;
mod storage;

use coffer_core::audit::Cx;
use coffer_core::{Coffer, CoreConfig, Principal, UnsealOutcome};

#[allow(missing_debug_implementations)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub coffer: Coffer,
    pub owner: Principal,
    pub shares: Vec<String>,
    /// The PostgreSQL database (None: SQLite in `dir`).
    pub pg: Option<String>,
}

impl Fixture {
    /// The SQLite file, for tests that look into it (made with [`sqlite_fixture`]).
    pub fn db_path(&self) -> std::path::PathBuf {
        assert!(
            self.pg.is_none(),
            "this test reads the SQLite file: make it with sqlite_fixture"
        );
        self.dir.path().join("coffer.db")
    }

    /// Another service on the same database (as another node, or after a restart): sealed.
    pub async fn open_again(&self, cfg: CoreConfig) -> Coffer {
        coffer_testkit::open_coffer_on(self.dir.path(), self.pg.as_deref(), cfg).await
    }

    /// A restart: the service goes away first (as after a crash), a new one opens the same
    /// database with `cfg` and is unsealed with two of the shares.
    pub async fn restart(self, cfg: CoreConfig) -> Fixture {
        let Fixture {
            dir,
            coffer: old,
            owner,
            shares,
            pg,
        } = self;
        // On SQLite the old service just goes (as in a crash); on PostgreSQL its background
        // connections would outlive it and keep the job leadership, so it closes.
        if pg.is_some() {
            old.close().await;
        }
        drop(old);
        let coffer = coffer_testkit::open_coffer_on(dir.path(), pg.as_deref(), cfg).await;
        coffer.unseal(&Cx::default(), &shares[1]).await.unwrap();
        coffer.unseal(&Cx::default(), &shares[2]).await.unwrap();
        Fixture {
            dir,
            coffer,
            owner,
            shares,
            pg,
        }
    }
}

/// An initialised, unsealed server with its bootstrap owner logged in.
pub async fn fixture() -> Fixture {
    fixture_with(CoreConfig::default()).await
}

/// Like [`fixture`], with chosen domain settings.
pub async fn fixture_with(cfg: CoreConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (coffer, pg) = coffer_testkit::open_coffer(dir.path(), cfg).await;
    initialised(dir, coffer, pg).await
}

/// [`fixture`] on SQLite whatever the test backend, for tests that read its file.
pub async fn sqlite_fixture() -> Fixture {
    sqlite_fixture_with(CoreConfig::default()).await
}

/// [`fixture_with`] on SQLite, like [`sqlite_fixture`].
pub async fn sqlite_fixture_with(cfg: CoreConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let coffer = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), cfg)
        .await
        .unwrap();
    initialised(dir, coffer, None).await
}

async fn initialised(dir: tempfile::TempDir, coffer: Coffer, pg: Option<String>) -> Fixture {
    let init = coffer.init(&Cx::default(), 3, 2).await.unwrap();
    let shares: Vec<String> = init.shares.iter().map(|s| s.to_string()).collect();
    assert!(matches!(
        coffer.unseal(&Cx::default(), &shares[0]).await.unwrap(),
        UnsealOutcome::Progress {
            have: 1,
            threshold: 2
        }
    ));
    assert_eq!(
        coffer.unseal(&Cx::default(), &shares[2]).await.unwrap(),
        UnsealOutcome::Unsealed
    );
    let login = coffer
        .identity()
        .login(
            &Cx::default(),
            &init.bootstrap.username,
            init.bootstrap.password.expose_secret(),
            None,
            "test",
        )
        .await
        .unwrap()
        .session()
        .unwrap();
    Fixture {
        dir,
        coffer,
        owner: login.principal,
        shares,
        pg,
    }
}
