//! Signatures over the audit chains, so that nobody without the root key can rewrite them:
//! the signing key (Ed25519, its seed wrapped by the root key), checkpoints kept for good,
//! and each chain's latest *signed head*, replaced as the chain grows.
//!
//! Every node remembers the head of each chain it appended to ([`KnownHeads`]) and signs
//! those heads within `audit.sign_interval` (1 s by default) — what it wrote, never what the
//! database says, which an attacker with write access could have changed. Verification
//! checks the chain against the checkpoints and the signed head (online and in an export,
//! with the public key only), and online also against the heads this node remembers, which
//! covers the events written since the last signature.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use coffer_crypto::audit::{AuditSigningKey, checkpoint_message};
use coffer_store::{AuditKeyRow, CheckpointRow, StoreError};
use uuid::Uuid;

use super::AuditLog;
use super::Checkpoint;
use crate::CoreError;
use crate::clock::now_ms;

/// Chains this node remembers at most (their newest heads); beyond, a chain is covered by
/// its signed head alone.
const MAX_KNOWN: usize = 100_000;
/// Heads signed per round at most: a node writing to more chains than this per interval
/// signs the rest in the next rounds.
const MAX_SIGNED_PER_ROUND: usize = 2_000;

/// The newest (seq, hash) this node appended to each chain, and whether it is signed yet.
#[derive(Debug, Default)]
pub(crate) struct KnownHeads(Mutex<HashMap<Uuid, Known>>);

#[derive(Debug, Clone, Copy)]
struct Known {
    seq: u64,
    hash: [u8; 32],
    signed: bool,
}

impl KnownHeads {
    // The map is plain data: a panic elsewhere cannot leave it half-written.
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, Known>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// This node appended (seq, hash) to `org`'s chain (nil: the system chain).
    pub(crate) fn note(&self, org: Uuid, (seq, hash): (u64, [u8; 32])) {
        self.with(|m| {
            let full = m.len() >= MAX_KNOWN;
            match m.get_mut(&org) {
                Some(k) if k.seq >= seq => {}
                Some(k) => {
                    *k = Known {
                        seq,
                        hash,
                        signed: false,
                    }
                }
                None if full => {}
                None => {
                    m.insert(
                        org,
                        Known {
                            seq,
                            hash,
                            signed: false,
                        },
                    );
                }
            }
        });
    }

    /// The newest head this node wrote to `org`'s chain.
    pub(crate) fn get(&self, org: Uuid) -> Option<(u64, [u8; 32])> {
        self.with(|m| m.get(&org).map(|k| (k.seq, k.hash)))
    }

    fn unsigned(&self, max: usize) -> Vec<(Uuid, u64, [u8; 32])> {
        self.with(|m| {
            m.iter()
                .filter(|(_, k)| !k.signed)
                .take(max)
                .map(|(org, k)| (*org, k.seq, k.hash))
                .collect()
        })
    }

    fn mark_signed(&self, org: Uuid, seq: u64) {
        self.with(|m| {
            if let Some(k) = m.get_mut(&org)
                && k.seq == seq
            {
                k.signed = true;
            }
        });
    }
}

impl AuditLog {
    /// The audit signing key, unwrapped with the root key (unsealed only).
    async fn audit_signing_key(&self) -> Result<AuditSigningKey, CoreError> {
        let key_row = self
            .audit
            .audit_key()
            .await?
            .ok_or(CoreError::Internal("no audit signing key"))?;
        self.k.keyring.with_root(|root| {
            AuditSigningKey::unwrap(root, &key_row.wrapped_key).map_err(|_| CoreError::Integrity)
        })
    }

    /// Sign the heads this node wrote since its last round and keep each as its chain's
    /// signed head (every node, every `audit.sign_interval`). Returns how many it signed.
    pub async fn sign_heads(&self) -> Result<usize, CoreError> {
        if self.k.keyring.is_sealed() {
            return Ok(0);
        }
        let heads = self.k.known_heads.unsigned(MAX_SIGNED_PER_ROUND);
        if heads.is_empty() {
            return Ok(0);
        }
        let key = self.audit_signing_key().await?;
        let created_at = now_ms();
        let rows: Vec<CheckpointRow> = heads
            .iter()
            .map(|&(org_id, seq, hash)| CheckpointRow {
                org_id,
                seq,
                hash,
                created_at,
                signature: key
                    .sign(&checkpoint_message(org_id, seq, &hash, created_at))
                    .to_vec(),
            })
            .collect();
        self.audit.store_signed_heads(&rows).await?;
        for &(org, seq, _) in &heads {
            self.k.known_heads.mark_signed(org, seq);
        }
        Ok(rows.len())
    }

    /// An organisation's checkpoints with its signed head (a checkpoint too), in order.
    pub(crate) async fn signed_points(
        &self,
        org_id: Uuid,
    ) -> Result<Vec<CheckpointRow>, CoreError> {
        let mut points = self.audit.checkpoints(org_id).await?;
        if let Some(h) = self.audit.signed_head(org_id).await?
            && points.iter().all(|c| c.seq != h.seq)
        {
            points.push(h);
            points.sort_by_key(|c| c.seq);
        }
        Ok(points)
    }

    /// Make sure the checkpoint signing key exists (called once unsealed).
    pub(crate) async fn ensure_audit_key(&self) -> Result<(), CoreError> {
        let _root = self.k.root_stable().await;
        if self.audit.audit_key().await?.is_some() {
            return Ok(());
        }
        let key = AuditSigningKey::generate().map_err(|_| CoreError::Internal("audit key"))?;
        let wrapped = self.k.keyring.with_root(|root| {
            key.wrap(root)
                .map_err(|_| CoreError::Internal("wrap audit key"))
        })?;
        let row = AuditKeyRow {
            public_key: key.public_key().to_vec(),
            wrapped_key: wrapped,
            created_at: now_ms(),
        };
        match self.audit.init_audit_key(&row).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The public key that verifies checkpoints (hex), once initialised.
    pub async fn audit_public_key(&self) -> Result<Option<String>, CoreError> {
        Ok(self
            .audit
            .audit_key()
            .await?
            .map(|k| hex::encode(k.public_key)))
    }

    /// Keep an organisation's chain's newest signed head (nil: the system chain) for good as
    /// a checkpoint, after signing what this node wrote. Returns the newest checkpoint, new
    /// or existing; None before anything of the chain was signed.
    pub async fn checkpoint(&self, org_id: Uuid) -> Result<Option<Checkpoint>, CoreError> {
        self.k.ensure_unsealed()?;
        // A checkpoint keeps a signed head for good: signed by the node that wrote it, from
        // what it wrote, never re-signed from the database's word.
        self.sign_heads().await?;
        let Some(head) = self.audit.signed_head(org_id).await? else {
            return Ok(None);
        };
        if let Some(last) = self.audit.checkpoints(org_id).await?.last()
            && last.seq >= head.seq
        {
            return Ok(Some(last.into()));
        }
        match self.audit.insert_checkpoint(&head).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(Some((&head).into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Checkpoint every chain that grew since its last checkpoint (background job).
    pub async fn checkpoint_all(&self) -> Result<usize, CoreError> {
        let orgs = self.audit.orgs_needing_checkpoint().await?;
        for org in &orgs {
            self.checkpoint(*org).await?;
        }
        Ok(orgs.len())
    }
}
