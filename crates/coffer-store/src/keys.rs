//! Key management: tenant key terms, the rewrap job's state, root-key rewraps and deleting
//! an organisation (crypto-shredding). Written once for both backends (see [`crate::sql`]).

use async_trait::async_trait;
use coffer_crypto::{Ciphertext, KeyTerm};
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Backend, Exec, Stmt, Tx, read_scoped};

/// Rows per multi-row UPDATE of a rewrap batch (4 parameters each, far below both limits).
pub(crate) const REWRAP_ROWS_PER_STATEMENT: usize = 256;

/// Tenant key terms, rewrapping, root key rotation and crypto-shredding.

#[async_trait]
pub trait KeyRepo: Send + Sync {
    /// Add `key` as the organisation's newest term and (re)start its rewrap job, in one
    /// transaction. Conflict unless `key.term` is exactly one above the current newest term,
    /// so two concurrent rotations cannot both succeed. The organisation's external key
    /// becomes the one that wraps `key` (none for a term wrapped by the root key), in the
    /// same transaction: attaching and detaching are rotations. [`StoreError::KeyInUse`]
    /// if another organisation uses that external key.
    async fn rotate_tenant_key(
        &self,
        key: &TenantKeyRow,
        reason: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<RotationRow, StoreError>;

    /// The latest rotation of an organisation, finished or not.
    async fn rotation(&self, org_id: Uuid) -> Result<Option<RotationRow>, StoreError>;

    /// How many stored values each term protects (each is one wrap under that term).
    async fn term_usage(&self, org_id: Uuid) -> Result<Vec<(KeyTerm, u64)>, StoreError>;

    /// The next values, in credential id order after `after`, still under a term below
    /// `target`.
    async fn rewrap_batch(
        &self,
        org_id: Uuid,
        target: KeyTerm,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<RewrapItem>, StoreError>;

    /// Store rewrapped values and advance the job's cursor, in one transaction (with
    /// `event`, which the last batch carries). A value whose term changed meanwhile is left
    /// alone. Returns how many values were replaced.
    async fn apply_rewrap(
        &self,
        org_id: Uuid,
        target: KeyTerm,
        items: &[Rewrapped],
        cursor: Option<Uuid>,
        finished_at: Option<i64>,
        event: Option<&ChangeEvent>,
    ) -> Result<u64, StoreError>;

    /// The terms below the newest that no stored value uses any more, provided the newest
    /// term was created at or before `successor_before`: what
    /// [`KeyRepo::destroy_retired_keys`] would delete now.
    async fn retired_terms(
        &self,
        org_id: Uuid,
        successor_before: i64,
    ) -> Result<Vec<KeyTerm>, StoreError>;

    /// Delete the retired `terms` (as [`KeyRepo::retired_terms`] found them), in one
    /// transaction with `event`. Conflict, with nothing deleted, if the terms retired at
    /// that moment are not exactly these.
    async fn destroy_retired_keys(
        &self,
        org_id: Uuid,
        successor_before: i64,
        terms: &[KeyTerm],
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    /// Everything sealed directly by the root key (or a key derived from it): every tenant
    /// key, the audit signing key, TOTP seeds and undelivered mail.
    async fn root_secrets(&self) -> Result<RootSecrets, StoreError>;

    /// Root key rotation or rekey: the new check value and share counts, and every secret
    /// of [`KeyRepo::root_secrets`] resealed, in one transaction. Each tenant key must name
    /// an existing (org, term) and each other row an existing one, else Conflict.
    async fn rotate_root(
        &self,
        r: &RootRotation,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    /// Delete an organisation. Its tenant keys go first, then its ciphertexts, then
    /// everything else it owns. Its audit chain stays. False if it did not exist.
    async fn delete_org(
        &self,
        org_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;
}

pub(crate) fn rotation_row<R: RowRead>(r: &R) -> Result<RotationRow, StoreError> {
    Ok(RotationRow {
        org_id: uuid_col(r, "org_id")?,
        target_term: term_col(r, "target_term")?,
        reason: r.text("reason")?,
        total: u64_col(r, "total")?,
        done: u64_col(r, "done")?,
        cursor: r
            .opt_bytes("cursor")?
            .map(|b| Uuid::from_slice(&b).map_err(|_| StoreError::Corrupt))
            .transpose()?,
        started_at: r.int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

/// The retired terms of organisation `$1` once its newest term was created at or before
/// `$2`: below the newest and used by no stored value.
const RETIRED: &str = "org_id = $1 \
     AND term < (SELECT MAX(k.term) FROM tenant_keys k WHERE k.org_id = $1) \
     AND (SELECT k.created_at FROM tenant_keys k WHERE k.org_id = $1 ORDER BY k.term DESC LIMIT 1) <= $2 \
     AND NOT EXISTS (SELECT 1 FROM param_versions pv JOIN credentials c ON c.id = pv.credential_id \
                     WHERE pv.org_id = $1 AND c.key_term = tenant_keys.term)";

fn terms_of<R: RowRead>(rows: Vec<R>) -> Result<Vec<KeyTerm>, StoreError> {
    rows.iter().map(|r| term_col(r, "term")).collect()
}

pub(crate) fn term_col<R: RowRead>(r: &R, col: &str) -> Result<KeyTerm, StoreError> {
    u32::try_from(r.int(col)?)
        .map(KeyTerm)
        .map_err(|_| StoreError::Corrupt)
}

pub(crate) fn rewrap_item<R: RowRead>(r: &R) -> Result<RewrapItem, StoreError> {
    Ok(RewrapItem {
        credential_id: uuid_col(r, "credential_id")?,
        param_id: uuid_col(r, "param_id")?,
        version: u64_col(r, "version")?,
        ciphertext: Ciphertext::from_stored_bytes(r.bytes("ciphertext")?)
            .map_err(|_| StoreError::Corrupt)?,
    })
}

pub(crate) fn tenant_key_row<R: RowRead>(r: &R) -> Result<TenantKeyRow, StoreError> {
    Ok(TenantKeyRow {
        org_id: uuid_col(r, "org_id")?,
        term: term_col(r, "term")?,
        wrapped: coffer_crypto::WrappedTenantKey::from_stored_bytes(r.bytes("wrapped")?),
        created_at: r.int("created_at")?,
    })
}

/// One multi-row UPDATE of a rewrap batch for `rows` values: `$1` is the target term, then
/// (credential id, new ciphertext, old term) per row as `CAST($n AS blob)` … in a VALUES
/// list. Only placeholders are generated; every value is bound.
pub fn rewrap_update_sql(rows: usize, blob: &str, int: &str) -> String {
    let values = (0..rows)
        .map(|k| {
            let n = 2 + 3 * k;
            format!(
                "(CAST(${} AS {blob}), CAST(${} AS {blob}), CAST(${} AS {int}))",
                n,
                n + 1,
                n + 2
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE credentials SET ciphertext = v.column2, key_term = CAST($1 AS {int}) \
         FROM (VALUES {values}) AS v \
         WHERE credentials.id = v.column1 AND credentials.key_term = v.column3"
    )
}

#[async_trait]
impl<B: Backend> KeyRepo for B {
    async fn rotate_tenant_key(
        &self,
        key: &TenantKeyRow,
        reason: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<RotationRow, StoreError> {
        let org = key.org_id;
        let mut tx = self.begin_bare().await?;
        self.ensure_root(&mut tx).await?;
        self.rescope(&mut tx, crate::Scope::Org(key.org_id)).await?;
        Stmt::new(Self::LOCK_ORG).bind(org).execute(&mut tx).await?;
        let newest: i64 =
            Stmt::new("SELECT COALESCE(MAX(term), 0) AS t FROM tenant_keys WHERE org_id = $1")
                .bind(org)
                .fetch_one(&mut tx)
                .await?
                .int("t")?;
        if i64::from(key.term.0) != newest + 1 {
            return Err(StoreError::Conflict);
        }
        // Another organisation's key (the unique index says so: under row-level
        // security this transaction cannot see other organisations).
        let external = key.wrapped.external_blob().map(|w| w.reference.to_owned());
        match Stmt::new("UPDATE orgs SET external_key = $2 WHERE id = $1")
            .bind(org)
            .bind(external.as_deref())
            .execute(&mut tx)
            .await
        {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::KeyInUse);
            }
            other => other?,
        };
        Stmt::new(
            "INSERT INTO tenant_keys (org_id, term, wrapped, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(org)
        .bind(i64::from(key.term.0))
        .bind(key.wrapped.as_bytes())
        .bind(key.created_at)
        .execute(&mut tx)
        .await?;
        let total: i64 = Stmt::new(
                "SELECT COUNT(*) AS n FROM param_versions pv JOIN credentials c ON c.id = pv.credential_id \
                 WHERE pv.org_id = $1 AND c.key_term < $2",
            )
            .bind(org)
            .bind(i64::from(key.term.0))
            .fetch_one(&mut tx)
            .await?
            .int("n")?;
        let finished = (total == 0).then_some(key.created_at);
        let row = Stmt::new(
            "INSERT INTO key_rotations (org_id, target_term, reason, total, done, cursor, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, 0, NULL, $5, $6) \
             ON CONFLICT (org_id) DO UPDATE SET target_term = excluded.target_term, reason = excluded.reason, \
             total = excluded.total, done = 0, cursor = NULL, started_at = excluded.started_at, \
             finished_at = excluded.finished_at \
             RETURNING org_id, target_term, reason, total, done, cursor, started_at, finished_at",
        )
        .bind(org)
        .bind(i64::from(key.term.0))
        .bind(reason)
        .bind(total)
        .bind(key.created_at)
        .bind(finished)
        .fetch_one(&mut tx)
        .await?;
        let out = crate::keys::rotation_row(&row)?;
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(out)
    }

    async fn rotation(&self, org_id: Uuid) -> Result<Option<RotationRow>, StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        let out = Stmt::new(
            "SELECT org_id, target_term, reason, total, done, cursor, started_at, finished_at \
             FROM key_rotations WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&mut tx)
        .await?
        .map(|r| crate::keys::rotation_row(&r))
        .transpose()?;
        tx.commit().await?;
        Ok(out)
    }

    async fn term_usage(&self, org_id: Uuid) -> Result<Vec<(KeyTerm, u64)>, StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        let out = Stmt::new(
            "SELECT c.key_term AS term, COUNT(*) AS n FROM param_versions pv \
             JOIN credentials c ON c.id = pv.credential_id WHERE pv.org_id = $1 \
             GROUP BY c.key_term ORDER BY c.key_term",
        )
        .bind(org_id)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|r| {
            Ok((
                crate::keys::term_col(r, "term")?,
                crate::rows::u64_col(r, "n")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(out)
    }

    async fn rewrap_batch(
        &self,
        org_id: Uuid,
        target: KeyTerm,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<RewrapItem>, StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        let hint = Self::REWRAP_WALK_HINT;
        if let Some(h) = hint {
            tx.execute_raw(h).await?;
        }
        let out = Stmt::new(
            "SELECT pv.credential_id, pv.param_id, pv.version, c.ciphertext FROM param_versions pv \
             JOIN credentials c ON c.id = pv.credential_id \
             WHERE pv.org_id = $1 AND pv.credential_id > $2 AND c.key_term < $3 \
             ORDER BY pv.credential_id LIMIT $4",
        )
        .bind(org_id)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(target.0))
        .bind(i64::from(limit))
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(crate::keys::rewrap_item)
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(out)
    }

    async fn apply_rewrap(
        &self,
        org_id: Uuid,
        target: KeyTerm,
        items: &[Rewrapped],
        cursor: Option<Uuid>,
        finished_at: Option<i64>,
        event: Option<&ChangeEvent>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        let mut replaced = 0u64;
        for chunk in items.chunks(crate::keys::REWRAP_ROWS_PER_STATEMENT) {
            let sql = crate::keys::rewrap_update_sql(chunk.len(), Self::BLOB, Self::INT);
            // Only placeholders are generated; every value is bound.
            let mut q = Stmt::generated(sql).bind(i64::from(target.0));
            for it in chunk {
                q = q
                    .bind(it.credential_id)
                    .bind(it.ciphertext.as_bytes())
                    .bind(i64::from(it.old_term.0));
            }
            replaced += q.execute(&mut tx).await?;
        }
        let moved = Stmt::new(
            "UPDATE key_rotations SET done = done + $3, cursor = $4, finished_at = $5 \
             WHERE org_id = $1 AND target_term = $2",
        )
        .bind(org_id)
        .bind(i64::from(target.0))
        .bind(i64::try_from(replaced).unwrap_or(i64::MAX))
        .bind(cursor)
        .bind(finished_at)
        .execute(&mut tx)
        .await?;
        // A newer rotation replaced this job: its values were still rewrapped to a
        // live term, but the newer job keeps its own progress.
        if moved != 1 {
            return Err(StoreError::Conflict);
        }
        crate::sql::commit_audited(self, tx, event).await?;
        self.key_material_changed();
        Ok(replaced)
    }

    async fn retired_terms(
        &self,
        org_id: Uuid,
        successor_before: i64,
    ) -> Result<Vec<KeyTerm>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            terms_of(
                Stmt::generated(format!(
                    "SELECT term FROM tenant_keys WHERE {RETIRED} ORDER BY term"
                ))
                .bind(org_id)
                .bind(successor_before)
                .fetch_all(&mut tx)
                .await?,
            )
        })
    }

    async fn destroy_retired_keys(
        &self,
        org_id: Uuid,
        successor_before: i64,
        terms: &[KeyTerm],
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        Stmt::new(Self::LOCK_ORG)
            .bind(org_id)
            .execute(&mut tx)
            .await?;
        let mut deleted = terms_of(
            Stmt::generated(format!(
                "DELETE FROM tenant_keys WHERE {RETIRED} RETURNING term"
            ))
            .bind(org_id)
            .bind(successor_before)
            .fetch_all(&mut tx)
            .await?,
        )?;
        deleted.sort_unstable();
        if deleted != terms {
            // Dropping the transaction rolls the deletion back.
            return Err(StoreError::Conflict);
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn root_secrets(&self) -> Result<RootSecrets, StoreError> {
        let mut tenant_keys = Vec::new();
        for org in crate::TenantRepo::org_ids(self).await? {
            tenant_keys.extend(crate::TenantRepo::tenant_keys(self, org).await?);
        }
        let audit_key = Stmt::new("SELECT wrapped_key FROM audit_keys WHERE id = 1")
            .fetch_optional(&mut self.writes())
            .await?
            .map(|r| RowRead::bytes(&r, "wrapped_key"))
            .transpose()?;
        let mfa = sealed_by_id(
            self,
            "SELECT id, mfa_secret FROM users WHERE mfa_secret IS NOT NULL",
            "mfa_secret",
        )
        .await?;
        let outbox = sealed_by_id(
            self,
            "SELECT id, sealed FROM outbox WHERE sent_at IS NULL",
            "sealed",
        )
        .await?;
        Ok(RootSecrets {
            tenant_keys,
            audit_key,
            mfa,
            outbox,
        })
    }

    async fn rotate_root(
        &self,
        r: &RootRotation,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        fn one(done: u64) -> Result<(), StoreError> {
            if done == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        }
        let mut tx = self.begin_bare().await?;
        // Only from the root key this rotation was computed for. Updating the seal row
        // also waits for, then holds back, every write of root-sealed material on any
        // node (they take a share lock on it): from here on the set below is final.
        one(Stmt::new("UPDATE seal_config SET root_check = $1, shares = $2, threshold = $3, sealed_root = $4 WHERE id = 1 AND root_check = $5")
            .bind(r.root_check.as_bytes())
            .bind(i64::from(r.shares))
            .bind(i64::from(r.threshold))
            .bind(r.sealed_root.as_deref())
            .bind(r.previous_check.as_bytes())
            .execute(&mut tx)
            .await?
            )?;
        // Each secret is replaced only where it is still the one that was resealed...
        for k in &r.secrets.tenant_keys {
            let old = r
                .previous
                .tenant_keys
                .iter()
                .find(|p| p.org_id == k.org_id && p.term == k.term)
                .ok_or(StoreError::Conflict)?;
            self.rescope(&mut tx, crate::Scope::Org(k.org_id)).await?;
            one(Stmt::new("UPDATE tenant_keys SET wrapped = $3 WHERE org_id = $1 AND term = $2 AND wrapped = $4")
                .bind(k.org_id)
                .bind(i64::from(k.term.0))
                .bind(k.wrapped.as_bytes())
                .bind(old.wrapped.as_bytes())
                .execute(&mut tx)
                .await?
                )?;
        }
        match (&r.secrets.audit_key, &r.previous.audit_key) {
            (Some(w), Some(old)) => one(Stmt::new(
                "UPDATE audit_keys SET wrapped_key = $1 WHERE id = 1 AND wrapped_key = $2",
            )
            .bind(w.as_slice())
            .bind(old.as_slice())
            .execute(&mut tx)
            .await?)?,
            (None, None) => {}
            _ => return Err(StoreError::Conflict),
        }
        let previous = |rows: &[(Uuid, Vec<u8>)], id: Uuid| {
            rows.iter()
                .find(|(i, _)| *i == id)
                .map(|(_, s)| s.clone())
                .ok_or(StoreError::Conflict)
        };
        for (id, sealed) in &r.secrets.mfa {
            one(
                Stmt::new("UPDATE users SET mfa_secret = $2 WHERE id = $1 AND mfa_secret = $3")
                    .bind(id)
                    .bind(sealed.as_slice())
                    .bind(previous(&r.previous.mfa, *id)?)
                    .execute(&mut tx)
                    .await?,
            )?;
        }
        for (id, sealed) in &r.secrets.outbox {
            one(
                Stmt::new("UPDATE outbox SET sealed = $2 WHERE id = $1 AND sealed = $3")
                    .bind(id)
                    .bind(sealed.as_slice())
                    .bind(previous(&r.previous.outbox, *id)?)
                    .execute(&mut tx)
                    .await?,
            )?;
        }
        // ...and nothing root-sealed exists that was not read: a key term, TOTP seed
        // or queued mail added since would be left under the old root and lost.
        let ids = crate::rows::ids;
        self.rescope(&mut tx, crate::Scope::System).await?;
        let mut orgs = ids(&Stmt::new("SELECT id FROM orgs").fetch_all(&mut tx).await?)?;
        orgs.sort_unstable();
        let mut had: Vec<Uuid> = r.previous.tenant_keys.iter().map(|k| k.org_id).collect();
        had.sort_unstable();
        had.dedup();
        if orgs != had {
            return Err(StoreError::Conflict);
        }
        for org in &orgs {
            self.rescope(&mut tx, crate::Scope::Org(*org)).await?;
            let mut terms: Vec<i64> = Stmt::new("SELECT term FROM tenant_keys WHERE org_id = $1")
                .bind(org)
                .fetch_all(&mut tx)
                .await?
                .iter()
                .map(|r| RowRead::int(r, "term"))
                .collect::<Result<_, _>>()?;
            terms.sort_unstable();
            let mut known: Vec<i64> = r
                .previous
                .tenant_keys
                .iter()
                .filter(|k| k.org_id == *org)
                .map(|k| i64::from(k.term.0))
                .collect();
            known.sort_unstable();
            if terms != known {
                return Err(StoreError::Conflict);
            }
        }
        let unknown = |now: Vec<Uuid>, had: &[(Uuid, Vec<u8>)]| {
            now.iter().any(|id| !had.iter().any(|(h, _)| h == id))
        };
        let mfa_now = ids(
            &Stmt::new("SELECT id FROM users WHERE mfa_secret IS NOT NULL")
                .fetch_all(&mut tx)
                .await?,
        )?;
        let mail_now = ids(&Stmt::new("SELECT id FROM outbox WHERE sent_at IS NULL")
            .fetch_all(&mut tx)
            .await?)?;
        let audit_now = Stmt::new("SELECT 1 FROM audit_keys WHERE id = 1")
            .fetch_optional(&mut tx)
            .await?
            .is_some();
        if unknown(mfa_now, &r.previous.mfa)
            || unknown(mail_now, &r.previous.outbox)
            || audit_now != r.previous.audit_key.is_some()
        {
            return Err(StoreError::Conflict);
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn delete_org(
        &self,
        org_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        let org = org_id;
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, crate::Scope::Org(org_id)).await?;
        let found = Stmt::new(Self::LOCK_ORG)
            .bind(org)
            .fetch_optional(&mut tx)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
        // Key material first: once these rows are gone nothing below can be read.
        Stmt::new("DELETE FROM tenant_keys WHERE org_id = $1")
            .bind(org)
            .execute(&mut tx)
            .await?;
        Stmt::new(
            "DELETE FROM credentials WHERE id IN (SELECT credential_id FROM param_versions \
             WHERE org_id = $1 AND credential_id IS NOT NULL)",
        )
        .bind(org)
        .execute(&mut tx)
        .await?;
        // Environments restrict deleting a parent before its children.
        Stmt::new("UPDATE environments SET parent_id = NULL WHERE org_id = $1")
            .bind(org)
            .execute(&mut tx)
            .await?;
        // The rest cascades from the organisation row: projects, environments,
        // parameters and their history, memberships, sessions, keys, invitations.
        Stmt::new("DELETE FROM orgs WHERE id = $1")
            .bind(org)
            .execute(&mut tx)
            .await?;
        crate::sql::commit_audited(self, tx, event).await?;
        self.key_material_changed();
        self.after_shredding().await?;
        Ok(true)
    }
}

/// (id, sealed bytes) of every row a root-sealed-material query (`id` and `col`) returns.
async fn sealed_by_id<B: Backend>(
    b: &B,
    sql: &'static str,
    col: &str,
) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
    Stmt::new(sql)
        .fetch_all(&mut b.writes())
        .await?
        .iter()
        .map(|r| Ok((uuid_col(r, "id")?, r.bytes(col)?)))
        .collect()
}
