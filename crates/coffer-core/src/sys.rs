//! Initialisation, unsealing and sealing.

use coffer_crypto::RootKey;
use coffer_crypto::shamir;
use coffer_crypto::token::{self, BearerToken};
use coffer_seal::{AutoUnseal, SealKind, SubmitError, SubmitOutcome};
use coffer_store::{MembershipRow, SealConfigRow, StoreError, UserRow};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::clock::now_ms;
use crate::{Coffer, CoreError, Role};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub seal_type: Option<&'static str>,
    pub shares: u8,
    pub threshold: u8,
    pub progress: usize,
    pub version: &'static str,
}

/// The first account, created at initialisation. Its password is shown exactly once.
#[derive(Debug)]
pub struct Bootstrap {
    pub org_name: String,
    pub username: String,
    pub password: BearerToken,
}

#[derive(Debug)]
pub struct InitResult {
    /// Shamir shares of the root key in text form; shown once, never stored.
    pub shares: Vec<Zeroizing<String>>,
    pub threshold: u8,
    pub bootstrap: Bootstrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsealOutcome {
    Progress {
        have: usize,
        threshold: u8,
    },
    Unsealed,
    /// A full quorum was submitted but it does not rebuild the root key; progress reset.
    WrongShares,
}

const BOOTSTRAP_ORG: &str = "default";
const BOOTSTRAP_USER: &str = "admin";

impl Coffer {
    pub async fn seal_status(&self) -> Result<SealStatus, CoreError> {
        let cfg = self.store().seal_config().await?;
        Ok(SealStatus {
            initialized: cfg.is_some(),
            sealed: self.inner.keyring.is_sealed(),
            seal_type: cfg
                .as_ref()
                .and_then(|c| SealKind::parse(&c.kind))
                .map(SealKind::as_str),
            shares: cfg.as_ref().map_or(0, |c| c.shares),
            threshold: cfg.as_ref().map_or(0, |c| c.threshold),
            progress: self.inner.keyring.progress(),
            version: VERSION,
        })
    }

    /// Initialise with a Shamir seal. The server stays sealed afterwards.
    pub async fn init_shamir(&self, shares: u8, threshold: u8) -> Result<InitResult, CoreError> {
        if !(2..=255).contains(&threshold) || threshold > shares {
            return Err(CoreError::invalid(
                "threshold",
                "must be between 2 and the number of shares",
            ));
        }
        let root = RootKey::generate();
        let parts = shamir::split(&root, shares, threshold)
            .map_err(|_| CoreError::invalid("shares", "at most 255"))?;
        self.claim_init(SealKind::Shamir, shares, threshold, &root)
            .await?;
        let bootstrap = self.create_bootstrap(&root).await?;
        Ok(InitResult {
            shares: parts.iter().map(|p| p.to_text()).collect(),
            threshold,
            bootstrap,
        })
    }

    async fn claim_init(
        &self,
        kind: SealKind,
        shares: u8,
        threshold: u8,
        root: &RootKey,
    ) -> Result<(), CoreError> {
        let cfg = SealConfigRow {
            kind: kind.as_str().to_owned(),
            shares,
            threshold,
            root_check: root
                .check_value()
                .map_err(|_| CoreError::Internal("root check"))?,
            created_at: now_ms(),
        };
        match self.store().init_seal_config(&cfg).await {
            Err(StoreError::Conflict) => Err(CoreError::AlreadyInitialized),
            other => Ok(other?),
        }
    }

    async fn create_bootstrap(&self, root: &RootKey) -> Result<Bootstrap, CoreError> {
        let (org, key) = crate::orgs::new_org(root, BOOTSTRAP_ORG)?;
        self.insert_org(&org, &key).await?;
        let now = now_ms();
        let password = token::generate_password();
        let user = UserRow {
            id: Uuid::new_v4(),
            username: BOOTSTRAP_USER.to_owned(),
            password_hash: crate::auth::hash_password(password.expose_secret().to_owned()).await?,
            created_at: now,
            email: None,
            mfa_enabled: false,
        };
        self.store().create_user(&user).await?;
        self.store()
            .add_membership(&MembershipRow {
                user_id: user.id,
                org_id: org.id,
                role: Role::Owner.as_str().to_owned(),
                created_at: now,
            })
            .await?;
        Ok(Bootstrap {
            org_name: org.name,
            username: user.username,
            password,
        })
    }

    /// The seal configuration, which must be a Shamir seal.
    pub(crate) async fn shamir_config(&self) -> Result<SealConfigRow, CoreError> {
        let cfg = self
            .store()
            .seal_config()
            .await?
            .ok_or(CoreError::NotInitialized)?;
        if SealKind::parse(&cfg.kind) != Some(SealKind::Shamir) {
            return Err(CoreError::WrongSealType);
        }
        Ok(cfg)
    }

    /// Submit one Shamir share.
    pub async fn unseal(&self, share: &str) -> Result<UnsealOutcome, CoreError> {
        let cfg = self.shamir_config().await?;
        let threshold = usize::from(cfg.threshold);
        let outcome = self
            .inner
            .keyring
            .with_progress(|p| p.submit(share, threshold, &cfg.root_check))?;
        match outcome {
            Ok(SubmitOutcome::Pending { have }) => Ok(UnsealOutcome::Progress {
                have,
                threshold: cfg.threshold,
            }),
            Ok(SubmitOutcome::Unsealed(root)) => {
                self.inner.keyring.unseal(root)?;
                self.ensure_audit_key().await?;
                tracing::info!("server unsealed");
                Ok(UnsealOutcome::Unsealed)
            }
            Ok(SubmitOutcome::WrongShares) => {
                tracing::warn!(
                    "unseal attempt with a quorum that does not rebuild the root key; progress reset"
                );
                Ok(UnsealOutcome::WrongShares)
            }
            Err(SubmitError::Duplicate) => Err(CoreError::DuplicateShare),
            Err(_) => Err(CoreError::MalformedShare),
        }
    }

    /// Forget submitted shares without unsealing.
    pub fn reset_unseal(&self) -> Result<(), CoreError> {
        self.inner.keyring.with_progress(|p| p.reset())
    }

    /// Wipe the root key and all tenant keys from memory.
    pub fn seal(&self) -> Result<(), CoreError> {
        self.inner.keyring.seal()?;
        self.inner.sessions.clear();
        tracing::info!("server sealed");
        Ok(())
    }

    /// Dev mode: initialise on first start with the key file as the seal, and unseal from it
    /// on every start. Returns the bootstrap account when it was just created.
    pub async fn start_with_auto_unseal(
        &self,
        seal: &dyn AutoUnseal,
    ) -> Result<Option<Bootstrap>, CoreError> {
        let root = seal
            .root_key()
            .map_err(|_| CoreError::Internal("the seal could not produce the root key"))?;
        let bootstrap = match self.store().seal_config().await? {
            None => {
                self.claim_init(seal.kind(), 0, 0, &root).await?;
                Some(self.create_bootstrap(&root).await?)
            }
            Some(cfg) => {
                if SealKind::parse(&cfg.kind) != Some(seal.kind()) {
                    return Err(CoreError::WrongSealType);
                }
                if !root.matches(&cfg.root_check) {
                    return Err(CoreError::Integrity);
                }
                None
            }
        };
        self.inner.keyring.unseal(root)?;
        self.ensure_audit_key().await?;
        Ok(bootstrap)
    }
}

impl Coffer {
    /// Open (or create) the embedded SQLite database.
    pub async fn open_sqlite(
        path: &std::path::Path,
        config: crate::CoreConfig,
    ) -> Result<Coffer, CoreError> {
        Self::open_sqlite_with(path, config, crate::audit::AuditSinks::default()).await
    }

    /// Like [`Coffer::open_sqlite`], with audit copies to a file and/or stdout.
    pub async fn open_sqlite_with(
        path: &std::path::Path,
        config: crate::CoreConfig,
        sinks: crate::audit::AuditSinks,
    ) -> Result<Coffer, CoreError> {
        let store = coffer_store::sqlite::SqliteStore::open(path).await?;
        Coffer::with_sinks(std::sync::Arc::new(store), config, sinks)
    }

    /// Connect to PostgreSQL (`postgres://…`). With `migrate` pending migrations are applied
    /// (the role must own the schema); without, the schema must already be current.
    pub async fn open_postgres(
        url: &str,
        config: crate::CoreConfig,
        sinks: crate::audit::AuditSinks,
        migrate: bool,
    ) -> Result<Coffer, CoreError> {
        use coffer_store::postgres::{PgStore, Schema};
        let schema = if migrate {
            Schema::Migrate
        } else {
            Schema::Verify
        };
        let store = PgStore::connect_with(url, schema)
            .await
            .map_err(|e| match e {
                coffer_store::StoreError::SchemaOutdated { .. } => {
                    tracing::error!(error = %e, "database schema out of date");
                    CoreError::Internal("the database schema is out of date: run `coffer migrate`")
                }
                other => other.into(),
            })?;
        Coffer::with_sinks(std::sync::Arc::new(store), config, sinks)
    }

    /// Apply pending PostgreSQL migrations as the schema owner (`coffer migrate`).
    pub async fn migrate_postgres(url: &str) -> Result<(), CoreError> {
        Ok(coffer_store::postgres::migrate(url).await?)
    }

    /// Dev mode: use (creating on first start) the root key file at `key_path`.
    pub async fn start_dev(
        &self,
        key_path: &std::path::Path,
    ) -> Result<Option<Bootstrap>, CoreError> {
        let (seal, created) = coffer_seal::DevKeyFile::open_or_create(key_path).map_err(|e| {
            tracing::error!(error = %e, "dev key file");
            CoreError::Internal("the dev root key file could not be used")
        })?;
        if created {
            tracing::warn!(path = %key_path.display(), "created a DEV root key file: anyone who can read it can read every secret");
        }
        self.start_with_auto_unseal(&seal).await
    }

    /// A production start must not reuse a data directory initialised in dev mode.
    pub async fn check_production_start(&self) -> Result<(), CoreError> {
        match self.store().seal_config().await? {
            Some(cfg) if SealKind::parse(&cfg.kind) != Some(SealKind::Shamir) => {
                Err(CoreError::WrongSealType)
            }
            _ => Ok(()),
        }
    }
}
