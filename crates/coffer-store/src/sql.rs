//! The generic SQL layer: each statement is written once, with `$n` placeholders (both
//! SQLite and PostgreSQL accept them), as a [`Stmt`] that carries its own arguments, and run
//! through the few operations a [`Backend`] provides. Only what truly differs between the
//! databases lives in the backend: opening a transaction scoped for PostgreSQL's row-level
//! security, the statement that locks an organisation's row, type names for casts, and
//! what happens to caches when key material changes. docs/adr/0003-generic-sql-layer.md
//! says why this shape rather than `sqlx::Any`, a query builder or macros.
//!
//! Arguments are typed values (ids as 16-byte blobs, times and counters as `i64`), so one
//! binding routine per database replaces per-statement generic bounds.

use std::borrow::Cow;

use async_trait::async_trait;
use uuid::Uuid;

use crate::rows::RowRead;
use crate::{ChangeEvent, NewAuditEvent, Scope, StoreError};

/// An id as both databases store it: 16 bytes (`BLOB` on SQLite, `BYTEA` on PostgreSQL).
/// Binds directly in the backends' own statements; [`Stmt`] arguments use it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbId(pub(crate) Uuid);

impl<DB: sqlx::Database> sqlx::Type<DB> for DbId
where
    [u8]: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <[u8] as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <[u8] as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for DbId
where
    for<'a> &'a [u8]: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut DB::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&[u8] as sqlx::Encode<'q, DB>>::encode(self.0.as_bytes().as_slice(), buf)
    }
}

/// A count or version as both databases store it (a signed 64-bit integer). Values beyond
/// `i64::MAX` cannot exist in the database, so they saturate (and match nothing).
pub(crate) fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One bound argument. Nullable kinds keep their SQL type, which PostgreSQL needs even
/// for a NULL.
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Id(Option<DbId>),
    Bytes(Option<Cow<'a, [u8]>>),
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Bool(bool),
}

/// A value that can be bound to a statement.
pub(crate) trait IntoArg<'a> {
    fn into_arg(self) -> Arg<'a>;
}

macro_rules! into_arg {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl<'a> IntoArg<'a> for $t {
            fn into_arg(self) -> Arg<'a> {
                let $v = self;
                $e
            }
        })*
    };
}
into_arg! {
    Uuid => |v| Arg::Id(Some(DbId(v)));
    &Uuid => |v| Arg::Id(Some(DbId(*v)));
    Option<Uuid> => |v| Arg::Id(v.map(DbId));
    &'a [u8] => |v| Arg::Bytes(Some(Cow::Borrowed(v)));
    &'a Vec<u8> => |v| Arg::Bytes(Some(Cow::Borrowed(v.as_slice())));
    Vec<u8> => |v| Arg::Bytes(Some(Cow::Owned(v)));
    Option<&'a [u8]> => |v| Arg::Bytes(v.map(Cow::Borrowed));
    Option<Vec<u8>> => |v| Arg::Bytes(v.map(Cow::Owned));
    &'a str => |v| Arg::Text(Some(Cow::Borrowed(v)));
    &'a String => |v| Arg::Text(Some(Cow::Borrowed(v.as_str())));
    String => |v| Arg::Text(Some(Cow::Owned(v)));
    Option<&'a str> => |v| Arg::Text(v.map(Cow::Borrowed));
    Option<String> => |v| Arg::Text(v.map(Cow::Owned));
    i64 => |v| Arg::Int(Some(v));
    Option<i64> => |v| Arg::Int(v);
    bool => |v| Arg::Bool(v);
}

/// One SQL statement and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Stmt<'a> {
    sql: Cow<'static, str>,
    args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    pub(crate) fn new(sql: &'static str) -> Self {
        Self {
            sql: Cow::Borrowed(sql),
            args: Vec::new(),
        }
    }

    /// A statement whose text was generated (only ever placeholders: every value is bound).
    pub(crate) fn generated(sql: String) -> Self {
        Self {
            sql: Cow::Owned(sql),
            args: Vec::new(),
        }
    }

    pub(crate) fn bind(mut self, v: impl IntoArg<'a>) -> Self {
        self.args.push(v.into_arg());
        self
    }

    pub(crate) async fn execute<E: Exec>(&self, e: &mut E) -> Result<u64, sqlx::Error> {
        e.execute(self).await
    }

    pub(crate) async fn fetch_one<E: Exec>(&self, e: &mut E) -> Result<E::Row, sqlx::Error> {
        e.fetch_optional(self)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub(crate) async fn fetch_optional<E: Exec>(
        &self,
        e: &mut E,
    ) -> Result<Option<E::Row>, sqlx::Error> {
        e.fetch_optional(self).await
    }

    pub(crate) async fn fetch_all<E: Exec>(&self, e: &mut E) -> Result<Vec<E::Row>, sqlx::Error> {
        e.fetch_all(self).await
    }

    /// The sqlx query for any database whose driver binds these types.
    fn query<'q, DB>(&'q self) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        DB: sqlx::Database,
        Option<DbId>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let mut q = match &self.sql {
            Cow::Borrowed(s) => sqlx::query(*s),
            Cow::Owned(s) => sqlx::query(sqlx::AssertSqlSafe(s.as_str())),
        };
        for a in &self.args {
            q = match a {
                Arg::Id(v) => q.bind(*v),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Int(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
            };
        }
        q
    }
}

/// Something statements run on: a transaction or a pool.
#[async_trait]
pub(crate) trait Exec: Send {
    type Row: RowRead + Send;
    async fn execute(&mut self, s: &Stmt<'_>) -> Result<u64, sqlx::Error>;
    async fn fetch_optional(&mut self, s: &Stmt<'_>) -> Result<Option<Self::Row>, sqlx::Error>;
    async fn fetch_all(&mut self, s: &Stmt<'_>) -> Result<Vec<Self::Row>, sqlx::Error>;
    /// Settings without arguments (e.g. planner hints), possibly several statements.
    async fn execute_raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error>;
}

/// A transaction: statements, then commit (dropping it rolls back).
#[async_trait]
pub(crate) trait Tx: Exec {
    async fn commit(self) -> Result<(), sqlx::Error>;
}

/// A pool, as something statements run on (each statement in its own transaction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolExec<'p, DB: sqlx::Database>(pub(crate) &'p sqlx::Pool<DB>);

macro_rules! exec_for {
    ($db:ty, $row:ty) => {
        #[async_trait]
        impl Exec for sqlx::Transaction<'_, $db> {
            type Row = $row;
            async fn execute(&mut self, s: &Stmt<'_>) -> Result<u64, sqlx::Error> {
                Ok(s.query::<$db>().execute(&mut **self).await?.rows_affected())
            }
            async fn fetch_optional(&mut self, s: &Stmt<'_>) -> Result<Option<$row>, sqlx::Error> {
                s.query::<$db>().fetch_optional(&mut **self).await
            }
            async fn fetch_all(&mut self, s: &Stmt<'_>) -> Result<Vec<$row>, sqlx::Error> {
                s.query::<$db>().fetch_all(&mut **self).await
            }
            async fn execute_raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
                sqlx::raw_sql(sql).execute(&mut **self).await.map(|_| ())
            }
        }

        #[async_trait]
        impl Tx for sqlx::Transaction<'_, $db> {
            async fn commit(self) -> Result<(), sqlx::Error> {
                sqlx::Transaction::commit(self).await
            }
        }

        #[async_trait]
        impl Exec for PoolExec<'_, $db> {
            type Row = $row;
            async fn execute(&mut self, s: &Stmt<'_>) -> Result<u64, sqlx::Error> {
                Ok(s.query::<$db>().execute(self.0).await?.rows_affected())
            }
            async fn fetch_optional(&mut self, s: &Stmt<'_>) -> Result<Option<$row>, sqlx::Error> {
                s.query::<$db>().fetch_optional(self.0).await
            }
            async fn fetch_all(&mut self, s: &Stmt<'_>) -> Result<Vec<$row>, sqlx::Error> {
                s.query::<$db>().fetch_all(self.0).await
            }
            async fn execute_raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
                sqlx::raw_sql(sql).execute(self.0).await.map(|_| ())
            }
        }
    };
}
exec_for!(sqlx::Sqlite, sqlx::sqlite::SqliteRow);
exec_for!(sqlx::Postgres, sqlx::postgres::PgRow);

/// What differs between the databases, for the statements written once. The repositories
/// are implemented for every `Backend` (`impl<B: Backend> UserRepo for B`).
#[async_trait]
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    type Row: RowRead + Send;
    type Tx: Tx<Row = Self::Row>;
    type Pool<'a>: Exec<Row = Self::Row>
    where
        Self: 'a;

    /// Locks one organisation's row (`$1`) for the rest of the transaction. SQLite's single
    /// writer connection serialises transactions, so it only reads the row.
    const LOCK_ORG: &'static str;
    /// SQL type names of ids and integers, for casts in generated statements.
    const BLOB: &'static str;
    const INT: &'static str;
    /// Planner settings run before reading a rewrap batch, if any.
    const REWRAP_WALK_HINT: Option<&'static str>;
    /// Whether a read needs a transaction to carry its scope (row-level security). Without,
    /// a one-statement read runs straight on [`Backend::reads`]: on SQLite each statement
    /// is a round trip to the connection's thread, and BEGIN and COMMIT would be two more.
    const SCOPED_READS: bool;
    /// One row, column `bytes`: what the audit log takes on disk (`ArchiveRepo::audit_storage`).
    const AUDIT_BYTES_SQL: &'static str;

    /// Where statements outside a transaction read (SQLite: its read-only pool).
    fn reads(&self) -> Self::Pool<'_>;
    /// Where statements outside a transaction write.
    fn writes(&self) -> Self::Pool<'_>;
    /// A write transaction with no scope: under row-level security it sees no tenant row
    /// until [`Backend::rescope`].
    async fn begin_bare(&self) -> Result<Self::Tx, StoreError>;
    /// A write transaction scoped for row-level security.
    async fn begin(&self, scope: Scope<'_>) -> Result<Self::Tx, StoreError> {
        let mut tx = self.begin_bare().await?;
        self.rescope(&mut tx, scope).await?;
        Ok(tx)
    }
    /// A read transaction scoped for row-level security.
    async fn begin_read(&self, scope: Scope<'_>) -> Result<Self::Tx, StoreError>;
    /// Change the scope of an open transaction.
    async fn rescope(&self, tx: &mut Self::Tx, scope: Scope<'_>) -> Result<(), StoreError>;
    /// Refuse ([`StoreError::RootReplaced`]) to store root-sealed material unless the
    /// database's root key is still the one this node holds.
    async fn ensure_root(&self, tx: &mut Self::Tx) -> Result<(), StoreError>;
    /// Append a change's audit event inside the change's transaction (both commit or
    /// neither); returns its (seq, hash). Fails with [`StoreError::AuditFailed`].
    async fn append_in(
        &self,
        tx: &mut Self::Tx,
        event: &NewAuditEvent,
    ) -> Result<(u64, [u8; 32]), StoreError>;
    /// Announce a change's cache invalidations to the other nodes from inside its
    /// transaction, so that they are sent if and only if it commits. Nothing to do where
    /// there are no other nodes.
    async fn notify_in(
        &self,
        _tx: &mut Self::Tx,
        _notices: &[crate::Invalidation],
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Ciphertexts changed outside the value write path (rewrap, deletion): drop caches.
    fn key_material_changed(&self);
    /// After key material was deleted: make sure the deleted rows leave the files.
    async fn after_shredding(&self) -> Result<(), StoreError>;
}

/// Run `$body` in a transaction opened by `$store.$begin($scope)`, and commit it. An early
/// return (`?`) drops the transaction, which rolls it back.
///
/// With `audited $event` (an `Option<&ChangeEvent>`), the change's audit event is appended
/// in the same transaction after `$body`, and marked committed once the commit succeeded.
macro_rules! scoped {
    ($store:ident . $begin:ident ($scope:expr), |$tx:ident| $body:block) => {{
        let mut $tx = $store.$begin($scope).await?;
        let out = $body;
        $crate::sql::Tx::commit($tx).await?;
        out
    }};
    ($store:ident . $begin:ident ($scope:expr), audited $event:expr, |$tx:ident| $body:block) => {{
        let mut $tx = $store.$begin($scope).await?;
        let out = $body;
        $crate::sql::commit_audited($store, $tx, $event).await?;
        out
    }};
}

/// A change of one statement, in a transaction of its own with the change's event (if any).
pub(crate) async fn execute_audited<B: Backend>(
    store: &B,
    stmt: &Stmt<'_>,
    event: Option<&ChangeEvent>,
) -> Result<u64, StoreError> {
    let mut tx = store.begin_bare().await?;
    let n = stmt.execute(&mut tx).await?;
    commit_audited(store, tx, event).await?;
    Ok(n)
}

/// Append `event` (if any) in `tx`, commit, and mark the event committed.
pub(crate) async fn commit_audited<B: Backend>(
    store: &B,
    mut tx: B::Tx,
    event: Option<&ChangeEvent>,
) -> Result<(), StoreError> {
    let at = match event {
        Some(e) => {
            let at = store.append_in(&mut tx, &e.event).await?;
            store.notify_in(&mut tx, &e.notices).await?;
            Some(at)
        }
        None => None,
    };
    Tx::commit(tx).await?;
    if let Some(e) = event {
        e.mark_committed(at);
    }
    Ok(())
}
pub(crate) use scoped;

/// Run the one-statement read `$body` on an executor `$e` that sees `$scope`'s rows: a
/// scoped read transaction where the backend needs one ([`Backend::SCOPED_READS`]), else
/// the read pool directly.
macro_rules! read_scoped {
    ($store:ident, $scope:expr, |$e:ident| $body:block) => {{
        if <Self as $crate::sql::Backend>::SCOPED_READS {
            $crate::sql::scoped!($store.begin_read($scope), |$e| $body)
        } else {
            let mut $e = $crate::sql::Backend::reads($store);
            $body
        }
    }};
}
pub(crate) use read_scoped;
