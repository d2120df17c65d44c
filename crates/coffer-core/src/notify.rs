//! Account notifications through a durable outbox.
//!
//! A message is sealed (it may carry an invitation token) and written to the outbox table;
//! the leader node's delivery job sends due messages over SMTP and retries with backoff, so
//! nothing is lost while the mail server is down. The transport is behind [`MailSender`]:
//! the domain does no network I/O itself.

use std::time::Duration;

use async_trait::async_trait;
use coffer_crypto::system::{Purpose, SystemKey};
use coffer_store::{OutboxRow, UserRow};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::CoreError;
use crate::clock::now_ms;
use crate::identity::Identity;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Delivers one message; an error means "try again later".
#[async_trait]
pub trait MailSender: Send + Sync + std::fmt::Debug {
    async fn send(&self, mail: &Mail) -> Result<(), String>;
}

/// How long a node that took a message keeps it before another may send it: well past the
/// SMTP sender's 10 s timeout, so only a sender that died loses it.
const SEND_LEASE: Duration = Duration::from_secs(60);

/// Wait before the next attempt: 5 s, 10 s, 20 s, … up to one hour.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.min(10))).min(Duration::from_secs(3600))
}

impl Identity {
    fn outbox_key(&self) -> Result<SystemKey, CoreError> {
        self.k.keyring.with_root(|root| {
            SystemKey::derive(root, Purpose::Outbox).map_err(|_| CoreError::Internal("derive key"))
        })
    }

    /// Queue a message for delivery.
    pub(crate) async fn enqueue_mail(
        &self,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), CoreError> {
        let _root = self.k.root_stable().await;
        let row = self.seal_mail(to, subject, body)?;
        self.mail.enqueue_mail(&row).await?;
        Ok(())
    }

    /// A message sealed for the outbox, to be stored with the change that sends it. Hold
    /// [`Kernel::root_stable`](crate::kernel::Kernel::root_stable) until it is stored: it is sealed under the root key.
    pub(crate) fn seal_mail(
        &self,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<OutboxRow, CoreError> {
        let mail = Mail {
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
        };
        let id = Uuid::new_v4();
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&mail).map_err(|_| CoreError::Internal("encode mail"))?,
        );
        let sealed = self
            .outbox_key()?
            .seal(id, &json)
            .map_err(|_| CoreError::Internal("seal mail"))?;
        let now = now_ms();
        Ok(OutboxRow {
            id,
            sealed,
            created_at: now,
            attempts: 0,
            next_attempt_at: now,
        })
    }

    /// Tell a user about a change to their account, if they have an address. The change has
    /// already happened; a failure to queue is logged, not returned.
    pub(crate) async fn notify(&self, user: &UserRow, subject: &str, body: &str) {
        let Some(to) = &user.email else { return };
        let body = format!("Hello {},\n\n{body}\n\n— Coffer", user.username);
        if let Err(e) = self.enqueue_mail(to, subject, &body).await {
            tracing::error!(error = %e, "could not queue a notification");
        }
    }

    /// Send what is due. Returns how many messages were delivered.
    pub async fn deliver_mail(&self, sender: &dyn MailSender) -> Result<usize, CoreError> {
        self.k.ensure_unsealed()?;
        let key = self.outbox_key()?;
        let mut sent = 0;
        let lease = i64::try_from(SEND_LEASE.as_millis()).unwrap_or(i64::MAX);
        for row in self.mail.due_mail(now_ms(), 50).await? {
            // Leadership can move during a batch (each send may take seconds), so the job
            // lock alone does not keep two nodes apart: send only what this node has taken.
            let now = now_ms();
            if !self
                .mail
                .claim_mail(row.id, now, now.saturating_add(lease))
                .await?
            {
                continue;
            }
            let result = match key.open(row.id, &row.sealed) {
                Ok(plain) => match serde_json::from_slice::<Mail>(plain.expose_secret()) {
                    Ok(mail) => sender.send(&mail).await,
                    Err(_) => Err("undecodable message".to_owned()),
                },
                Err(_) => Err("message does not open with this root key".to_owned()),
            };
            match result {
                Ok(()) => {
                    self.mail.mail_sent(row.id, now_ms()).await?;
                    sent += 1;
                }
                Err(e) => {
                    let next = now_ms().saturating_add(
                        i64::try_from(backoff(row.attempts).as_millis()).unwrap_or(i64::MAX),
                    );
                    tracing::warn!(attempt = row.attempts + 1, error = %e, "mail delivery failed; will retry");
                    self.mail.mail_failed(row.id, next, &e).await?;
                }
            }
        }
        Ok(sent)
    }

    /// Messages not delivered yet.
    pub async fn pending_mail(&self) -> Result<u64, CoreError> {
        Ok(self.mail.pending_mail().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(3600));
    }
}
