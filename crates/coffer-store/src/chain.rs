//! Audit chain bookkeeping shared by the backends' writers.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{NewAuditEvent, StoreError};

/// The end of each chain: (last sequence number, last hash), by organisation.
pub(crate) type Heads = HashMap<Uuid, (u64, [u8; 32])>;

/// (seq, prev_hash, hash) of one appended event.
pub(crate) type Link = (u64, [u8; 32], [u8; 32]);

/// Give each event of a batch, in order, its sequence number, predecessor hash and hash,
/// advancing `heads`. `heads` must already hold every organisation of the batch.
pub(crate) fn assign(
    events: &[&NewAuditEvent],
    heads: &mut Heads,
) -> Result<Vec<Link>, StoreError> {
    let mut links = Vec::with_capacity(events.len());
    for e in events {
        let (seq, prev) = heads
            .get(&e.org_id)
            .copied()
            .ok_or(StoreError::CommitFailed)?;
        let seq = seq + 1;
        let hash = coffer_crypto::audit::event_hash(&prev, seq, &e.body);
        heads.insert(e.org_id, (seq, hash));
        links.push((seq, prev, hash));
    }
    Ok(links)
}

/// The distinct organisations of a batch, in ascending order (the order chains are locked in).
pub(crate) fn orgs(events: &[&NewAuditEvent]) -> Vec<Uuid> {
    let mut orgs: Vec<Uuid> = events.iter().map(|e| e.org_id).collect();
    orgs.sort_unstable();
    orgs.dedup();
    orgs
}
