/// Storage errors. Deliberately coarse: callers act on Conflict and Unavailable; anything
/// else is an internal error whose detail goes to the log, not to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness rule or an optimistic-concurrency check failed.
    #[error("conflicting write")]
    Conflict,
    /// A value was sealed under a tenant key term that is no longer the newest: the caller's
    /// key cache is stale. Nothing was written.
    #[error("the value was sealed under a superseded key term")]
    StaleKeyTerm,
    /// The database cannot be reached or is overloaded; worth retrying later.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Another organisation already uses this external key.
    #[error("the external key is in use by another organisation")]
    KeyInUse,
    /// The root key was replaced (by a rekey on another node) since this node unsealed:
    /// material sealed with the key this node holds would be unreadable. Nothing was written.
    #[error("the root key was replaced on another node")]
    RootReplaced,
    /// Stored bytes that should be a ciphertext are not.
    #[error("corrupt stored record")]
    Corrupt,
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// PostgreSQL refused a text value it cannot hold (a NUL character). Nothing was
    /// written; the caller sent bad input.
    #[error("the text contains a character the database cannot store")]
    UnstorableText,
    /// The audit event of a change could not be appended: the change was rolled back with
    /// it, so nothing was written.
    #[error("the audit event could not be appended; nothing was written")]
    AuditFailed,
    /// The transaction carrying this write did not commit; nothing was written.
    #[error("the write could not be committed")]
    CommitFailed,
    /// The database schema is not at the version this build needs (run `coffer migrate`).
    #[error(
        "the database schema is at version {have}, this server needs {want}: run `coffer migrate`"
    )]
    SchemaOutdated { have: i64, want: i64 },
    /// The PostgreSQL database is not UTF-8 (create it with `ENCODING 'UTF8'`).
    #[error("the database's encoding is {0}; Coffer needs a UTF8 database")]
    Encoding(String),
    /// `synchronous_commit` is off for Coffer's role or database: a commit could then be
    /// acknowledged, and a secret released, before its audit event is durable.
    #[error(
        "synchronous_commit is off for this database or role; Coffer acknowledges writes and \
         releases reads only once they are durable: set it to on (or local, remote_write, \
         remote_apply)"
    )]
    AsyncCommit,
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            // Deadlock detected, serialization failure: lost a race; the caller may retry.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| matches!(&*c, "40P01" | "40001")) =>
            {
                StoreError::Conflict
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e)
            }
            // PostgreSQL going away or coming back: connection exceptions (class 08),
            // shutdown, crash and start-up (57P01-57P03), out of resources such as
            // connection slots while nodes reconnect (class 53), and a standby answering
            // during a failover (25006, read-only transaction). Worth a retry: 503, not 500.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || c.starts_with("53")
                        || matches!(&*c, "57P01" | "57P02" | "57P03" | "25006")
                }) =>
            {
                StoreError::Unavailable(e)
            }
            // character_not_in_repertoire (NUL in text) and untranslatable_character: the
            // input, not the database, is at fault.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| matches!(&*c, "22021" | "22P05")) =>
            {
                StoreError::UnstorableText
            }
            _ => StoreError::Database(e),
        }
    }
}
