//! Wire types of the organisation's keys: terms, rotations, and its own (external) key.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyTermDto {
    pub term: u32,
    pub created_at: i64,
    /// Stored values sealed under this term.
    pub values: u64,
    pub active: bool,
    /// `root`, or the organisation's own key (`awskms:…`, `pkcs11:…`) that wraps this term.
    pub wrapped_by: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyRotationDto {
    pub target_term: u32,
    /// `manual`, `age` or `usage`.
    pub reason: String,
    pub total: u64,
    pub done: u64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// The organisation's key terms and the progress of its latest rotation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyStatusDto {
    pub active_term: u32,
    /// The organisation's own key that wraps new terms, if one is attached.
    pub external_key: Option<String>,
    pub terms: Vec<KeyTermDto>,
    pub rotation: Option<KeyRotationDto>,
    pub rotate_after_days: u64,
    pub rotate_after_encryptions: u64,
}

impl From<coffer_core::KeyStatus> for KeyStatusDto {
    fn from(s: coffer_core::KeyStatus) -> Self {
        Self {
            active_term: s.active_term,
            external_key: s.external_key,
            terms: s
                .terms
                .into_iter()
                .map(|t| KeyTermDto {
                    term: t.term,
                    created_at: t.created_at,
                    values: t.values,
                    active: t.active,
                    wrapped_by: t.wrapped_by,
                })
                .collect(),
            rotation: s.rotation.map(|r| KeyRotationDto {
                target_term: r.target_term,
                reason: r.reason,
                total: r.total,
                done: r.done,
                started_at: r.started_at,
                finished_at: r.finished_at,
            }),
            rotate_after_days: s.rotate_after_days,
            rotate_after_encryptions: s.rotate_after_encryptions,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachKeyRequest {
    /// `awskms:<key id, ARN or alias>` or `pkcs11:<key label>`.
    #[schema(pattern = "^(awskms|pkcs11):[A-Za-z0-9_/:.-]{1,256}$")]
    pub key: String,
}
