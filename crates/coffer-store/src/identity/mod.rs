//! Identity storage: users, access to organisations, and the mail outbox, one repository
//! each. The statements are written once and run on either backend through
//! [`crate::sql::Backend`]. Statements that must serialise (last-owner checks) lock the
//! organisation row with the backend's [`crate::sql::Backend::LOCK_ORG`], because SQLite has
//! no `FOR UPDATE` (its single writer connection serialises instead).

mod access;
mod mail;
mod users;

pub use access::AccessRepo;
pub(crate) use access::insert_membership;
pub use mail::MailRepo;
pub(crate) use users::insert_user;
pub use users::{CredentialChange, UserRepo};

use uuid::Uuid;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Exec, Stmt};

macro_rules! user_cols {
    () => {
        "id, username, password_hash, created_at, email, mfa_enabled"
    };
}
pub(crate) use user_cols;
macro_rules! session_cols {
    () => {
        "id, token_hash, user_id, org_id, stage, method, api_key_id, address, created_at, last_seen_at, expires_at"
    };
}
pub(crate) use session_cols;
macro_rules! key_cols {
    () => {
        "id, org_id, user_id, name, role, key_hash, prefix, read_only, projects, envs, created_at, expires_at, last_used_at, revoked_at"
    };
}
pub(crate) use key_cols;
macro_rules! invite_cols {
    () => {
        "id, org_id, email, role, token_hash, invited_by, created_at, expires_at, accepted_at"
    };
}
pub(crate) use invite_cols;

pub(crate) fn user_row<R: RowRead>(r: &R) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: uuid_col(r, "id")?,
        username: r.text("username")?,
        password_hash: r.text("password_hash")?,
        created_at: r.int("created_at")?,
        email: r.opt_text("email")?,
        mfa_enabled: r.flag("mfa_enabled")?,
    })
}

pub(crate) fn membership_row<R: RowRead>(r: &R) -> Result<MembershipRow, StoreError> {
    Ok(MembershipRow {
        user_id: uuid_col(r, "user_id")?,
        org_id: uuid_col(r, "org_id")?,
        role: r.text("role")?,
        created_at: r.int("created_at")?,
    })
}

fn opt_uuid<R: RowRead>(r: &R, c: &str) -> Result<Option<Uuid>, StoreError> {
    r.opt_bytes(c)?
        .map(|b| Uuid::from_slice(&b).map_err(|_| StoreError::Corrupt))
        .transpose()
}

pub(crate) fn session_row<R: RowRead>(r: &R) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: uuid_col(r, "id")?,
        token_hash: hash_col(r, "token_hash")?,
        user_id: uuid_col(r, "user_id")?,
        org_id: uuid_col(r, "org_id")?,
        stage: r.text("stage")?,
        method: r.text("method")?,
        api_key_id: opt_uuid(r, "api_key_id")?,
        address: r.text("address")?,
        created_at: r.int("created_at")?,
        last_seen_at: r.int("last_seen_at")?,
        expires_at: r.int("expires_at")?,
    })
}

fn names_col<R: RowRead>(r: &R, c: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&r.text(c)?).map_err(|_| StoreError::Corrupt)
}

pub(crate) fn names_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn api_key_row<R: RowRead>(r: &R) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        user_id: uuid_col(r, "user_id")?,
        name: r.text("name")?,
        role: r.text("role")?,
        key_hash: hash_col(r, "key_hash")?,
        prefix: r.text("prefix")?,
        read_only: r.flag("read_only")?,
        projects: names_col(r, "projects")?,
        envs: names_col(r, "envs")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

pub(crate) fn invitation_row<R: RowRead>(r: &R) -> Result<InvitationRow, StoreError> {
    Ok(InvitationRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        email: r.text("email")?,
        role: r.text("role")?,
        token_hash: hash_col(r, "token_hash")?,
        invited_by: uuid_col(r, "invited_by")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        accepted_at: r.opt_int("accepted_at")?,
    })
}

pub(crate) fn outbox_row<R: RowRead>(r: &R) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: uuid_col(r, "id")?,
        sealed: r.bytes("sealed")?,
        created_at: r.int("created_at")?,
        attempts: u32::try_from(r.int("attempts")?).map_err(|_| StoreError::Corrupt)?,
        next_attempt_at: r.int("next_attempt_at")?,
    })
}

/// Counts the organisation's Owners and whether `$2` is one of them.
const OWNERS_SQL: &str = "SELECT COUNT(*) AS owners, \
     COALESCE(SUM(CASE WHEN user_id = $2 THEN 1 ELSE 0 END), 0) AS me \
     FROM memberships WHERE org_id = $1 AND role = 'owner'";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether the user is the organisation's only Owner, inside the open transaction.
async fn sole_owner<E: Exec>(tx: &mut E, org: Uuid, user: Uuid) -> Result<bool, StoreError> {
    let row = Stmt::new(OWNERS_SQL)
        .bind(org)
        .bind(user)
        .fetch_one(tx)
        .await?;
    Ok(row.int("me")? > 0 && row.int("owners")? <= 1)
}
