//! Integration tests of the domain against a real SQLite database in a temporary directory.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod identity;
mod keys;
mod params;
mod seal;
mod storage;

use coffer_core::{Coffer, CoreConfig, Principal, UnsealOutcome};

#[allow(missing_debug_implementations)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub coffer: Coffer,
    pub owner: Principal,
    pub shares: Vec<String>,
}

impl Fixture {
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("coffer.db")
    }

    /// A restart: the service goes away first (as after a crash), a new one opens the same
    /// database with `cfg` and is unsealed with two of the shares.
    pub async fn restart(self, cfg: CoreConfig) -> Fixture {
        let path = self.db_path();
        let Fixture {
            dir,
            coffer,
            owner,
            shares,
        } = self;
        drop(coffer);
        let coffer = Coffer::open_sqlite(&path, cfg).await.unwrap();
        coffer.unseal(&shares[1]).await.unwrap();
        coffer.unseal(&shares[2]).await.unwrap();
        Fixture {
            dir,
            coffer,
            owner,
            shares,
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
    let coffer = Coffer::open_sqlite(&dir.path().join("coffer.db"), cfg)
        .await
        .unwrap();
    let init = coffer.init(3, 2).await.unwrap();
    let shares: Vec<String> = init.shares.iter().map(|s| s.to_string()).collect();
    assert!(matches!(
        coffer.unseal(&shares[0]).await.unwrap(),
        UnsealOutcome::Progress {
            have: 1,
            threshold: 2
        }
    ));
    assert_eq!(
        coffer.unseal(&shares[2]).await.unwrap(),
        UnsealOutcome::Unsealed
    );
    let login = coffer
        .login(
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
    }
}
