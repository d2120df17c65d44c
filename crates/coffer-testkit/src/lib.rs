//! Test fixtures: a real Coffer server over TLS on 127.0.0.1:0 with its own temporary data
//! directory, and clients that pin its internal CA.

mod peers;

use std::net::SocketAddr;

pub use peers::{MotoKms, OidcProvider, SOFTHSM_LIBRARY, SmtpReceiver, SoftHsm, free_port};

use coffer_client::Client;
use coffer_core::CoreConfig;
use coffer_server::{RunningServer, ServerConfig};
use coffer_store::{Location, Storage};

/// Settings for [`TestServer::with`].
#[derive(Debug)]
pub struct TestOptions {
    pub dev: bool,
    pub database_url: Option<String>,
    pub core: CoreConfig,
    pub login_rate_per_minute: u32,
    pub jwks: std::collections::HashMap<String, coffer_server::jwks::JwksLocation>,
    pub smtp: Option<coffer_server::mail::SmtpConfig>,
    pub seal: std::sync::Arc<dyn coffer_core::seal::Seal>,
    pub key_services: coffer_core::seal::KeyServices,
    pub audit_archive: coffer_core::audit::ArchiveSettings,
    /// Reuse this data directory (a restart) instead of a new one.
    pub dir: Option<tempfile::TempDir>,
    /// Stay on SQLite even when `COFFER_TEST_BACKEND=postgres`: the test reads the SQLite
    /// file itself, or restarts on the same data directory.
    pub sqlite_only: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            dev: true,
            database_url: None,
            core: TestServer::fast_core(),
            login_rate_per_minute: 10_000,
            jwks: Default::default(),
            smtp: None,
            seal: std::sync::Arc::new(coffer_core::seal::ShamirSeal),
            key_services: Default::default(),
            audit_archive: Default::default(),
            dir: None,
            sqlite_only: false,
        }
    }
}

#[derive(Debug)]
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    /// Dev mode: the bootstrap owner's password.
    pub owner_password: Option<String>,
    /// The PostgreSQL database it runs on (None: SQLite in its data directory).
    pub database_url: Option<String>,
    server: Option<RunningServer>,
}

impl TestServer {
    /// Dev mode: unsealed, with a bootstrap owner `admin`.
    pub async fn dev() -> Self {
        Self::start(true, None).await
    }

    /// Production mode: not initialised, sealed.
    pub async fn production() -> Self {
        Self::start(false, None).await
    }

    /// [`TestServer::dev`] on SQLite whatever `COFFER_TEST_BACKEND` says, for tests that
    /// open the database file themselves.
    pub async fn dev_sqlite() -> Self {
        Self::with(TestOptions {
            sqlite_only: true,
            ..TestOptions::default()
        })
        .await
    }

    /// [`TestServer::production`] on SQLite, like [`TestServer::dev_sqlite`].
    pub async fn production_sqlite() -> Self {
        Self::with(TestOptions {
            dev: false,
            sqlite_only: true,
            ..TestOptions::default()
        })
        .await
    }

    /// Test-friendly identity settings: no delay between attempts, a generous per-address
    /// limit (tests log in often from 127.0.0.1).
    pub fn fast_core() -> CoreConfig {
        CoreConfig {
            login_delay_step: std::time::Duration::ZERO,
            ..CoreConfig::default()
        }
    }

    /// Production mode on PostgreSQL at `url` (e.g. from [`pg_database`]); several servers
    /// may share one database, as nodes.
    pub async fn production_on(url: &str) -> Self {
        Self::start(false, Some(url.to_owned())).await
    }

    async fn start(dev: bool, database_url: Option<String>) -> Self {
        Self::with(TestOptions {
            dev,
            database_url,
            ..TestOptions::default()
        })
        .await
    }

    /// A server with chosen settings.
    pub async fn with(o: TestOptions) -> Self {
        Self::try_with(o)
            .await
            .unwrap_or_else(|e| panic!("start server: {e:#}"))
    }

    /// Like [`TestServer::with`], returning a start failure.
    pub async fn try_with(o: TestOptions) -> anyhow::Result<Self> {
        let dev = o.dev;
        // The test backend's own database runs as the runtime role, migrated beforehand; a
        // database the test chose is migrated by the server, as its owner.
        let (database_url, migrate) =
            match o.database_url {
                None if !o.sqlite_only && postgres_backend() => (
                    Some(pg_runtime_database().await.unwrap_or_else(|| {
                        panic!("COFFER_TEST_BACKEND=postgres needs PostgreSQL")
                    })),
                    false,
                ),
                url => (url, true),
            };
        let dir = o
            .dir
            .unwrap_or_else(|| tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")));
        let cfg = ServerConfig {
            listen: "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|e| panic!("addr: {e}")),
            data_dir: dir.path().join("data"),
            dev,
            tls_cert: None,
            tls_key: None,
            core: CoreConfig {
                mail_enabled: o.smtp.is_some(),
                ..o.core
            },
            audit_file: None,
            audit_stdout: false,
            checkpoint_interval: std::time::Duration::from_secs(300),
            sign_interval: std::time::Duration::from_secs(1),
            key_check_interval: std::time::Duration::from_secs(60),
            login_rate_per_minute: o.login_rate_per_minute,
            max_header_bytes: coffer_server::DEFAULT_MAX_HEADER_BYTES,
            jwks: o.jwks,
            smtp: o.smtp,
            seal: o.seal,
            key_services: o.key_services,
            audit_archive: o.audit_archive,
            audit_archiver: None,
        };
        let storage = open_storage(&cfg.data_dir, database_url.as_deref(), migrate).await?;
        let server = coffer_server::start(cfg, storage).await?;
        let ca = server
            .tls
            .ca
            .clone()
            .unwrap_or_else(|| panic!("internal CA expected"));
        let ca_pem = std::fs::read(ca).unwrap_or_else(|e| panic!("read CA: {e}"));
        let owner_password = server
            .bootstrap
            .as_ref()
            .map(|b| b.password.expose_secret().to_owned());
        Ok(Self {
            addr: server.addr,
            dir,
            ca_pem,
            owner_password,
            database_url,
            server: Some(server),
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// An anonymous client that trusts only this server's CA.
    pub fn client(&self) -> Client {
        Client::new(&self.url(), Some(&self.ca_pem)).unwrap_or_else(|e| panic!("client: {e}"))
    }

    /// A client logged in as the dev bootstrap owner.
    pub async fn owner(&self) -> Client {
        let pw = self
            .owner_password
            .as_deref()
            .unwrap_or_else(|| panic!("dev server expected"));
        let r = self
            .client()
            .login("admin", pw)
            .await
            .unwrap_or_else(|e| panic!("login: {e}"));
        self.client()
            .with_token(r.token.unwrap_or_else(|| panic!("no token")))
    }

    /// A client logged in with a password (no MFA).
    pub async fn login(&self, username: &str, password: &str) -> Client {
        let r = self
            .client()
            .login(username, password)
            .await
            .unwrap_or_else(|e| panic!("login {username}: {e}"));
        self.client()
            .with_token(r.token.unwrap_or_else(|| panic!("no token for {username}")))
    }

    pub fn coffer(&self) -> &coffer_core::Coffer {
        &self
            .server
            .as_ref()
            .unwrap_or_else(|| panic!("server stopped"))
            .coffer
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Stop, keeping the data directory for a restart ([`TestOptions::dir`]).
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }
}

/// `COFFER_TEST_BACKEND=postgres`: every [`TestServer`] not pinned to SQLite runs on a fresh
/// PostgreSQL database, so the end-to-end suites run against both backends
/// (scripts/test.sh runs them once each way).
pub fn postgres_backend() -> bool {
    std::env::var("COFFER_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

fn pg_admin_url() -> String {
    std::env::var("COFFER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A new empty PostgreSQL database on the test server (127.0.0.1:5432, or
/// `COFFER_TEST_PG_URL`), returned as a URL. None when PostgreSQL is unreachable outside CI;
/// in CI (`CI` set) that is a test failure, never a skip. Databases are named
/// `coffer_test_*`; drop them with [`drop_pg_database`].
pub async fn pg_database() -> Option<String> {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL is required in CI but unreachable at {admin}: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL unreachable at {admin} ({e})");
            return None;
        }
    };
    // A non-superuser role owns and uses the database, so row-level security applies.
    let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {name} LOGIN"),
        format!("CREATE DATABASE {name} OWNER {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create test database: {e}"));
    }
    let (base, _) = admin
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("COFFER_TEST_PG_URL must end with /database"));
    let (scheme, rest) = base
        .split_once("://")
        .unwrap_or_else(|| panic!("bad COFFER_TEST_PG_URL"));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Some(format!("{scheme}://{name}@{host}/{name}"))
}

/// A service without a server on the test backend: SQLite in `dir`, or with
/// `COFFER_TEST_BACKEND=postgres` a fresh PostgreSQL database ([`pg_runtime_database`]),
/// whose URL is returned so that the test can drop it ([`drop_pg_database`]) or open it
/// again ([`open_coffer_on`]).
pub async fn open_coffer(
    dir: &std::path::Path,
    cfg: CoreConfig,
) -> (coffer_core::Coffer, Option<String>) {
    let pg = if postgres_backend() {
        Some(
            pg_runtime_database()
                .await
                .unwrap_or_else(|| panic!("COFFER_TEST_BACKEND=postgres needs PostgreSQL")),
        )
    } else {
        None
    };
    (open_coffer_on(dir, pg.as_deref(), cfg).await, pg)
}

/// A service on the SQLite file in `dir`, or on the PostgreSQL database `pg` (migrated
/// already: it runs as the runtime role, which could not).
pub async fn open_coffer_on(
    dir: &std::path::Path,
    pg: Option<&str>,
    cfg: CoreConfig,
) -> coffer_core::Coffer {
    let location = match pg {
        Some(url) => Location::Postgres {
            url: url.to_owned(),
            migrate: false,
        },
        None => Location::Sqlite(dir.join("coffer.db")),
    };
    let storage = Storage::open(&location)
        .await
        .unwrap_or_else(|e| panic!("open {location:?}: {e}"));
    coffer_core::Coffer::new(storage, cfg).unwrap_or_else(|e| panic!("service: {e}"))
}

/// A service on the SQLite file at `path` (the embedded default), as the binary opens it.
pub async fn open_sqlite(
    path: &std::path::Path,
    cfg: CoreConfig,
) -> anyhow::Result<coffer_core::Coffer> {
    let storage = Storage::open(&Location::Sqlite(path.to_owned())).await?;
    Ok(coffer_core::Coffer::new(storage, cfg)?)
}

/// Open the storage the server of `o` runs on, as the binary's wiring does.
async fn open_storage(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    migrate: bool,
) -> anyhow::Result<Storage> {
    let location = match database_url {
        // Through the binary's rules for database URLs (scheme, refused parameters).
        Some(url) => Location::Postgres {
            url: coffer_server::DatabaseUrl::new(url.to_owned())?
                .expose_secret()
                .to_owned(),
            migrate,
        },
        None => {
            coffer_server::create_data_dir(data_dir)?;
            Location::Sqlite(data_dir.join("coffer.db"))
        }
    };
    Ok(Storage::open(&location).await?)
}

/// A fresh database set up as docs/deployment.md tells operators to: its owner role applies
/// the migrations and grants docs/postgres-runtime-role.sql to a runtime role (`<db>_app`),
/// whose URL is returned. Services on it run without `migrate`, as that role, so every test
/// on it also checks the documented privileges. None like [`pg_database`].
pub async fn pg_runtime_database() -> Option<String> {
    use sqlx::Connection;
    let owner_url = pg_database().await?;
    let (head, name) = owner_url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("database URL without a name"));
    let app = format!("{name}_app");
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
        .await
        .unwrap_or_else(|e| panic!("connect as the administrative role: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {app} LOGIN")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("create the runtime role: {e}"));
    coffer_store::migrate(&owner_url)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let mut owner = sqlx::PgConnection::connect(&owner_url)
        .await
        .unwrap_or_else(|e| panic!("connect as the owner: {e}"));
    let grants =
        include_str!("../../../docs/postgres-runtime-role.sql").replace("coffer_app", &app);
    for stmt in grants
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
    {
        sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
            .execute(&mut owner)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let head = head.replacen(&format!("://{name}@"), &format!("://{app}@"), 1);
    let url = format!("{head}/{name}");
    // What the services get is the runtime role, and it cannot change the schema.
    let mut probe = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect as the runtime role: {e}"));
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut probe)
        .await
        .unwrap_or_else(|e| panic!("current_user: {e}"));
    assert_eq!(me, app);
    assert!(
        sqlx::query("CREATE TABLE ddl_probe (x int)")
            .execute(&mut probe)
            .await
            .is_err(),
        "the runtime role must not be able to create tables"
    );
    Some(url)
}

/// The database of `url` (made by [`pg_database`]) as the administrative role of
/// `COFFER_TEST_PG_URL`, for tests that must look past row-level security.
pub fn pg_admin_url_for(url: &str) -> String {
    let admin = pg_admin_url();
    let (_, name) = url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("database URL without a database name"));
    let (base, _) = admin
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("COFFER_TEST_PG_URL must end with /database"));
    format!("{base}/{name}")
}

/// Drop a database made by [`pg_database`] (after its servers stopped).
pub async fn drop_pg_database(url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {name}"),
            format!("DROP ROLE IF EXISTS {name}_app"),
        ] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
}

/// A private PostgreSQL server (own data directory and port on 127.0.0.1) that a test may
/// stop and start — the machine's shared cluster must not be restarted under parallel tests.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// None when PostgreSQL's server binaries are not installed (outside CI; in CI it panics).
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .find(|p| p.join("initdb").exists())
        });
        let Some(bin) = bin else {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL server binaries are required in CI (/usr/lib/postgresql/*/bin)");
            }
            eprintln!("SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        // initdb refuses to run as root: run the server as the postgres user then.
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        if as_postgres {
            run(std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("port: {e}"));
        let pg = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        run(pg
            .cmd("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(pg.data()));
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, tool: &str) -> std::process::Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A database `coffer` owned by a login role `coffer` (not a superuser, so row-level
    /// security applies, as in production), as a URL.
    pub fn app_url(&self) -> String {
        let port = self.port.to_string();
        run(self.cmd("psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            "CREATE ROLE coffer LOGIN",
            "-c",
            "CREATE DATABASE coffer OWNER coffer",
        ]));
        format!("postgres://coffer@127.0.0.1:{}/coffer", self.port)
    }

    /// Start (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "start"]));
    }

    /// Stop like a crash: no shutdown checkpoint, connections cut.
    pub fn stop_immediate(&self) {
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
