//! The mail outbox: sealed messages waiting for delivery, each taken under a lease.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;

use crate::sql::{Backend, Stmt, Tx};

/// Queued mail (already sealed by the core).
#[async_trait]
pub trait MailRepo: Send + Sync {
    async fn enqueue_mail(&self, m: &OutboxRow) -> Result<(), StoreError>;

    async fn due_mail(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Take a due message for sending until `until` (a lease: if the sender dies, the
    /// message is due again then). False if it is sent, not due, or another node took it.
    async fn claim_mail(&self, id: Uuid, now: i64, until: i64) -> Result<bool, StoreError>;

    async fn mail_sent(&self, id: Uuid, now: i64) -> Result<(), StoreError>;

    async fn mail_failed(
        &self,
        id: Uuid,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError>;

    async fn pending_mail(&self) -> Result<u64, StoreError>;
}

/// Queue a message (sealed under the root key: take [`Backend::ensure_root`] first).
pub(crate) fn insert_outbox(m: &OutboxRow) -> Stmt<'_> {
    Stmt::new("INSERT INTO outbox (id, sealed, created_at, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(m.id)
        .bind(m.sealed.as_slice())
        .bind(m.created_at)
        .bind(i64::from(m.attempts))
        .bind(m.next_attempt_at)
}

#[async_trait]
impl<B: Backend> MailRepo for B {
    async fn enqueue_mail(&self, m: &OutboxRow) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        self.ensure_root(&mut tx).await?;
        insert_outbox(m).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn due_mail(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        Stmt::new("SELECT id, sealed, created_at, attempts, next_attempt_at FROM outbox WHERE sent_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut self.writes())
            .await?
            .iter()
            .map(crate::identity::outbox_row)
            .collect()
    }

    async fn claim_mail(&self, id: Uuid, now: i64, until: i64) -> Result<bool, StoreError> {
        let r = Stmt::new("UPDATE outbox SET next_attempt_at = $3 WHERE id = $1 AND sent_at IS NULL AND next_attempt_at <= $2")
            .bind(id)
            .bind(now)
            .bind(until)
            .execute(&mut self.writes())
            .await?;
        Ok(r == 1)
    }

    async fn mail_sent(&self, id: Uuid, now: i64) -> Result<(), StoreError> {
        // The sealed message is dropped once delivered: nothing to keep.
        Stmt::new("UPDATE outbox SET sent_at = $2, sealed = $3, last_error = NULL WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(Vec::<u8>::new())
            .execute(&mut self.writes())
            .await?;
        Ok(())
    }

    async fn mail_failed(
        &self,
        id: Uuid,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        Stmt::new("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1")
            .bind(id)
            .bind(next_attempt_at)
            .bind(error)
            .execute(&mut self.writes())
            .await?;
        Ok(())
    }

    async fn pending_mail(&self) -> Result<u64, StoreError> {
        let r = Stmt::new("SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&mut self.reads())
            .await?;
        u64::try_from(crate::rows::RowRead::int(&r, "n")?).map_err(|_| StoreError::Corrupt)
    }
}
