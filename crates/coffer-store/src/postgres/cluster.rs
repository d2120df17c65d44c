//! Nodes on one database: job leadership (a session-level advisory lock), cache
//! invalidation over LISTEN/NOTIFY, the root guard, shutdown.

use super::*;

/// Advisory lock key for background-job leadership ("coffer" in ASCII).
const LEADER_LOCK: i64 = 0x636f_6666_6572;

#[async_trait]
impl Cluster for PgStore {
    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(true);
            }
            // The session (and with it the lock) is gone: compete again.
            *held = None;
        }
        let mut conn = self.pool.acquire().await?.detach();
        let won: (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if won.0 {
            *held = Some(conn);
        }
        Ok(won.0)
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        Some(self.invalidations.subscribe())
    }

    fn notices_live(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn publish_invalidation(&self, what: Invalidation) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(notify::encode(&what))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn set_root_guard(&self, check: Option<RootKeyCheck>) {
        if let Ok(mut g) = self.root_guard.write() {
            *g = check.map_or(RootGuard::Sealed, RootGuard::Root);
        }
    }

    async fn close(&self) {
        PgStore::close(self).await;
    }
}
