//! Initialisation, unsealing and sealing.

use coffer_crypto::RootKey;
use coffer_crypto::shamir;
use coffer_crypto::token::{self, BearerToken};
use coffer_seal::{Seal, SealKind, SubmitError, SubmitOutcome};
use coffer_store::{FirstOrg, MembershipRow, SealConfigRow, StoreError, UserRow};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{AuditTarget, Cx};
use crate::clock::now_ms;
use crate::{Coffer, CoreError, Role};
/// The audit actions of the seal and the root key.
pub mod action {
    use crate::audit::Action;
    pub const INIT: Action = Action::change("sys.init");
    pub const UNSEAL: Action = Action::change("sys.unseal");
    pub const SEAL: Action = Action::change("sys.seal");
    pub const REKEY: Action = Action::change("sys.rekey");
    pub const MIGRATE_SEAL: Action = Action::change("sys.migrate_seal");
}

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
    /// Shamir shares of the root key in text form; shown once, never stored. With a KMS or
    /// HSM seal they are recovery shares: needed for rekey and seal migration, not to unseal.
    pub shares: Vec<Zeroizing<String>>,
    pub threshold: u8,
    /// The server unsealed itself (KMS or HSM seal).
    pub unsealed: bool,
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
        let cfg = self.inner.seal.seal_config().await?;
        Ok(SealStatus {
            initialized: cfg.is_some(),
            sealed: self.k().keyring.is_sealed(),
            seal_type: cfg
                .as_ref()
                .and_then(|c| SealKind::parse(&c.kind))
                .map(SealKind::as_str),
            shares: cfg.as_ref().map_or(0, |c| c.shares),
            threshold: cfg.as_ref().map_or(0, |c| c.threshold),
            progress: self.k().keyring.progress(),
            version: VERSION,
        })
    }

    /// Initialise. With the Shamir seal (the default) the root key is split into `shares`
    /// and the server stays sealed until a quorum is submitted. With a KMS or HSM seal the
    /// root key is stored wrapped by the seal's key, the shares are recovery shares, and the
    /// server is unsealed at once.
    pub async fn init(&self, cx: &Cx, shares: u8, threshold: u8) -> Result<InitResult, CoreError> {
        let mut pending = self.k().begin(cx, action::INIT, AuditTarget::default());
        let r: Result<InitResult, CoreError> = async {
            // The server's state first, then the request's own rule.
            let seal = self.k().key_config()?.seal;
            if seal.kind() == SealKind::DevFile {
                return Err(CoreError::WrongSealType);
            }
            if self.inner.seal.seal_config().await?.is_some() {
                return Err(CoreError::AlreadyInitialized);
            }
            if !(2..=255).contains(&threshold) || threshold > shares {
                return Err(CoreError::invalid(
                    "threshold",
                    "must be between 2 and the number of shares",
                ));
            }
            let (root, sealed) = seal.new_root().await.map_err(seal_error)?;
            let parts = shamir::split(&root, shares, threshold)
                .map_err(|_| CoreError::invalid("shares", "at most 255"))?;
            // The seal configuration and the first account commit with `sys.init`.
            let event = pending.change_event()?;
            let bootstrap = self
                .initialise(seal.kind(), shares, threshold, &root, sealed, Some(event))
                .await?;
            let unsealed = seal.kind().is_auto();
            if unsealed {
                self.finish_unseal(root).await?;
                tracing::info!(seal = seal.kind().as_str(), "initialised and unsealed");
            }
            Ok(InitResult {
                shares: parts.iter().map(|p| p.to_text()).collect(),
                threshold,
                unsealed,
                bootstrap,
            })
        }
        .await;
        self.k().conclude(pending, r).await
    }

    /// Store the seal configuration for `root`, with the bootstrap organisation and its
    /// Owner, in one transaction (with `event`): an initialised server always has its first
    /// account. Returns that account's one-time password.
    async fn initialise(
        &self,
        kind: SealKind,
        shares: u8,
        threshold: u8,
        root: &RootKey,
        sealed_root: Option<Vec<u8>>,
        event: Option<&coffer_store::ChangeEvent>,
    ) -> Result<Bootstrap, CoreError> {
        let now = now_ms();
        let cfg = SealConfigRow {
            kind: kind.as_str().to_owned(),
            shares,
            threshold,
            root_check: root
                .check_value()
                .map_err(|_| CoreError::Internal("root check"))?,
            created_at: now,
            sealed_root,
        };
        let (org, key) = crate::orgs::new_org(root, BOOTSTRAP_ORG)?;
        let password = token::generate_password();
        let owner_account = UserRow {
            id: Uuid::new_v4(),
            username: BOOTSTRAP_USER.to_owned(),
            password_hash: crate::auth::hash_password(password.expose_secret().to_owned()).await?,
            created_at: now,
            email: None,
            mfa_enabled: false,
        };
        let first = FirstOrg {
            owner: MembershipRow {
                user_id: owner_account.id,
                org_id: org.id,
                role: Role::Owner.as_str().to_owned(),
                created_at: now,
            },
            org,
            key,
            owner_account,
        };
        match self
            .inner
            .seal
            .init_seal_config(&cfg, Some(&first), event)
            .await
        {
            Err(StoreError::Conflict) => return Err(CoreError::AlreadyInitialized),
            r => r?,
        }
        // What is sealed with this root key from now on is checked against it.
        self.k().cluster().set_root_guard(Some(cfg.root_check));
        Ok(Bootstrap {
            org_name: first.org.name,
            username: first.owner_account.username,
            password,
        })
    }

    /// The seal configuration, which must be a Shamir seal.
    pub(crate) async fn shamir_config(&self) -> Result<SealConfigRow, CoreError> {
        let cfg = self.seal_config().await?;
        if SealKind::parse(&cfg.kind) != Some(SealKind::Shamir) {
            return Err(CoreError::WrongSealType);
        }
        Ok(cfg)
    }

    pub(crate) async fn seal_config(&self) -> Result<SealConfigRow, CoreError> {
        self.inner
            .seal
            .seal_config()
            .await?
            .ok_or(CoreError::NotInitialized)
    }

    /// Submit one Shamir share.
    pub async fn unseal(&self, cx: &Cx, share: &str) -> Result<UnsealOutcome, CoreError> {
        let mut pending = self.k().begin(cx, action::UNSEAL, AuditTarget::default());
        let r: Result<UnsealOutcome, CoreError> = async {
            let cfg = self.shamir_config().await?;
            let threshold = usize::from(cfg.threshold);
            let outcome = self
                .k()
                .keyring
                .with_progress(|p| p.submit(share, threshold, &cfg.root_check))?;
            match outcome {
                Ok(SubmitOutcome::Pending { have }) => Ok(UnsealOutcome::Progress {
                    have,
                    threshold: cfg.threshold,
                }),
                Ok(SubmitOutcome::Unsealed(root)) => {
                    self.finish_unseal(root).await?;
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
        .await;
        if let Ok(UnsealOutcome::WrongShares) = r {
            // Answered as 400 by the edge: recorded as the failure it is.
            pending.failed(crate::ErrorCode::BadRequest);
        }
        self.k().conclude(pending, r).await
    }

    /// Forget submitted shares without unsealing.
    pub fn reset_unseal(&self) -> Result<(), CoreError> {
        self.k().keyring.with_progress(|p| p.reset())
    }

    /// Start using `root`: it must be the database's root key. Writes of root-sealed
    /// material are then guarded against a rekey on another node.
    async fn finish_unseal(&self, root: RootKey) -> Result<(), CoreError> {
        let cfg = self.seal_config().await?;
        if !root.matches(&cfg.root_check) {
            return Err(CoreError::Integrity);
        }
        self.k().cluster().set_root_guard(Some(cfg.root_check));
        self.k().keyring.unseal(root)?;
        self.audit().ensure_audit_key().await
    }

    /// Wipe the root key and all tenant keys from memory.
    /// Seal on an operator's request (audited; [`Coffer::seal`] is the mechanism).
    pub async fn seal_by(&self, cx: &Cx, p: &crate::Principal) -> Result<(), CoreError> {
        let pending = self
            .k()
            .begin_for(cx, p, action::SEAL, AuditTarget::default());
        let r = if p.role.can_operate() {
            self.seal()
        } else {
            Err(CoreError::Forbidden("only an Owner can seal the server"))
        };
        self.k().conclude(pending, r).await
    }

    /// Forget the shares submitted so far (audited as part of unsealing).
    pub async fn reset_unseal_by(&self, cx: &Cx) -> Result<(), CoreError> {
        let pending = self.k().begin(cx, action::UNSEAL, AuditTarget::default());
        let r = self.reset_unseal();
        self.k().conclude(pending, r).await
    }

    pub fn seal(&self) -> Result<(), CoreError> {
        self.k().cluster().set_root_guard(None);
        self.k().keyring.seal()?;
        self.identity().sessions.clear();
        tracing::info!("server sealed");
        Ok(())
    }

    /// Dev mode: initialise on first start with the key file as the seal, and unseal from it
    /// on every start. Returns the bootstrap account when it was just created.
    async fn start_dev_seal(&self, seal: &dyn Seal) -> Result<Option<Bootstrap>, CoreError> {
        let root = seal
            .auto_unseal(None)
            .await
            .map_err(seal_error)?
            .ok_or(CoreError::WrongSealType)?;
        let bootstrap = match self.inner.seal.seal_config().await? {
            None => Some(
                self.initialise(seal.kind(), 0, 0, &root, None, None)
                    .await?,
            ),
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
        self.finish_unseal(root).await?;
        Ok(bootstrap)
    }

    /// Production start with the configured seal. A KMS or HSM seal unseals the server
    /// here; a Shamir seal waits for shares. When the database was initialised with another
    /// seal, the server stays sealed until `coffer operator migrate-seal`.
    pub async fn start_sealed(&self) -> Result<StartState, CoreError> {
        let seal = self.k().key_config()?.seal;
        let Some(cfg) = self.inner.seal.seal_config().await? else {
            return Ok(StartState::Uninitialised);
        };
        let recorded = SealKind::parse(&cfg.kind).ok_or(CoreError::Integrity)?;
        if recorded == SealKind::DevFile {
            return Err(CoreError::WrongSealType);
        }
        if recorded != seal.kind() {
            tracing::warn!(
                recorded = recorded.as_str(),
                configured = seal.kind().as_str(),
                "the seal changed: run `coffer operator migrate-seal` with a quorum of the shares"
            );
            return Ok(StartState::MigrationPending);
        }
        let Some(root) = seal
            .auto_unseal(cfg.sealed_root.as_deref())
            .await
            .map_err(seal_error)?
        else {
            return Ok(StartState::AwaitingShares);
        };
        if !root.matches(&cfg.root_check) {
            tracing::error!("the seal produced a root key that does not match this database");
            return Err(CoreError::Integrity);
        }
        self.finish_unseal(root).await?;
        tracing::info!(seal = seal.kind().as_str(), "unsealed by the seal");
        Ok(StartState::Unsealed)
    }

    /// Move to the configured seal (`coffer operator migrate-seal`), authorised by a quorum
    /// of the current shares (unseal shares of a Shamir seal, recovery shares of a KMS or HSM
    /// seal). The root key does not change, so neither does any stored key or value, and the
    /// same shares stay valid: as recovery shares after a move to KMS/HSM, as unseal shares
    /// after a move to Shamir. The server is unsealed afterwards.
    pub async fn migrate_seal(&self, cx: &Cx, shares: &[String]) -> Result<(), CoreError> {
        let mut pending = self
            .k()
            .begin(cx, action::MIGRATE_SEAL, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            let seal = self.k().key_config()?.seal;
            let cfg = self.seal_config().await?;
            let recorded = SealKind::parse(&cfg.kind).ok_or(CoreError::Integrity)?;
            if recorded == SealKind::DevFile || seal.kind() == SealKind::DevFile {
                return Err(CoreError::WrongSealType);
            }
            if recorded == seal.kind() {
                return Err(CoreError::invalid(
                    "seal",
                    "the configured seal is already in use; change [seal] in the server configuration first",
                ));
            }
            let root = self.root_from_quorum(&cfg, shares)?;
            let sealed = seal.seal_root(&root).await.map_err(seal_error)?;
            self.inner
                .seal
                .migrate_seal(
                    seal.kind().as_str(),
                    sealed.as_deref(),
                    &cfg.root_check,
                    Some(pending.change_event()?),
                )
                .await?;
            if self.k().keyring.is_sealed() {
                self.finish_unseal(root).await?;
            }
            tracing::warn!(
                from = recorded.as_str(),
                to = seal.kind().as_str(),
                "seal migrated; restart other nodes with the new seal configuration"
            );
            Ok(())
        }
        .await;
        self.k().conclude(pending, r).await
    }

    /// Rebuild the root key from a quorum of its shares and check it against the database.
    pub(crate) fn root_from_quorum(
        &self,
        cfg: &SealConfigRow,
        shares: &[String],
    ) -> Result<RootKey, CoreError> {
        let parsed = shares
            .iter()
            .map(|s| shamir::Share::parse(s.trim()).map_err(|_| CoreError::MalformedShare))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<u8> = parsed.iter().map(shamir::Share::id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != parsed.len() {
            return Err(CoreError::DuplicateShare);
        }
        let quorum_err =
            || CoreError::invalid("shares", "they are not a quorum of the current shares");
        if cfg.threshold == 0 || parsed.len() < usize::from(cfg.threshold) {
            return Err(quorum_err());
        }
        let root = shamir::combine(&parsed).map_err(|_| quorum_err())?;
        if !root.matches(&cfg.root_check) {
            tracing::warn!("shares submitted that do not rebuild the root key");
            return Err(quorum_err());
        }
        Ok(root)
    }
}

/// What a production start found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartState {
    Uninitialised,
    /// Shamir seal: operators must submit shares.
    AwaitingShares,
    /// KMS or HSM seal: unsealed.
    Unsealed,
    /// The database was initialised with another seal than the configured one.
    MigrationPending,
}

pub(crate) fn seal_error(e: coffer_seal::SealError) -> CoreError {
    tracing::error!(error = %e, "seal");
    CoreError::Seal(e.to_string())
}

impl Coffer {
    /// Dev mode: use (creating on first start) the root key file at `key_path`.
    pub async fn start_dev(
        &self,
        key_path: &std::path::Path,
    ) -> Result<Option<Bootstrap>, CoreError> {
        // An initialised database needs the key it was initialised with: never make a new
        // one next to it.
        let initialised = match self.inner.seal.seal_config().await? {
            Some(cfg) if SealKind::parse(&cfg.kind) != Some(SealKind::DevFile) => {
                return Err(CoreError::WrongSealType);
            }
            Some(_) if !key_path.exists() => {
                return Err(CoreError::DevKeyMissing(key_path.display().to_string()));
            }
            found => found.is_some(),
        };
        let opened = if initialised {
            coffer_seal::DevKeyFile::open(key_path).map(|s| (s, false))
        } else {
            coffer_seal::DevKeyFile::open_or_create(key_path)
        };
        let (seal, created) = opened.map_err(|e| {
            tracing::error!(error = %e, "dev key file");
            CoreError::Internal("the dev root key file could not be used")
        })?;
        if created {
            tracing::warn!(path = %key_path.display(), "created a DEV root key file: anyone who can read it can read every secret");
        }
        self.start_dev_seal(&seal).await
    }
}
