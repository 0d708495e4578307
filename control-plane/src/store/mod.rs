//! The store: one `sqlx` Any pool over SQLite (embedded default) or PostgreSQL (scale-out),
//! with hand-written migrations per backend applied at start.
//!
//! The SQL is shared by both backends: `$N` placeholders, `BIGINT` millisecond times, text ids,
//! and concurrency through conditional single-statement updates (`... WHERE balance >= $1`,
//! `... WHERE state = 'queued'`) that are atomic on both. SQLite gets one connection: it has a
//! single writer anyway, and one connection means a transaction never fails to upgrade its
//! lock.

pub mod audit;
pub mod batches;
pub mod checks;
pub mod devices;
pub mod invites;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod networks;
pub mod people;
pub mod presence;
pub mod ringers;
pub mod workloads;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections to PostgreSQL per control-plane process.
const POSTGRES_CONNECTIONS: u32 = 16;

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file under the data directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?} (use sqlite://… or postgres://…)")]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migrating the database: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("creating {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A migrated connection pool and which backend it is.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// The backend behind it.
    pub backend: Backend,
}

impl Db {
    /// The default SQLite database in `data_dir` (`mesh.db`), created on first use. It holds
    /// the signing key and the VRF seed: the directory is created 0700 and the file 0600 in
    /// the calls that create them (SQLite gives its `-wal` and `-shm` files the database's
    /// mode).
    pub async fn open_sqlite(data_dir: &Path) -> Result<Db, DbError> {
        let failed = |source| DbError::DataDir {
            path: data_dir.display().to_string(),
            source,
        };
        mesh_fs::create_private_dir_all(data_dir).map_err(failed)?;
        let file = data_dir.join("mesh.db");
        match mesh_fs::create_private_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e)),
        }
        let url = format!("sqlite://{}?mode=rwc", file.display());
        Db::connect(&url).await
    }

    /// Connect to `url` (`sqlite://…` or `postgres://…`) and apply migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(url).map_err(DbError::Connect)?;
        let pool = match backend {
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?,
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?,
        };
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(DbError::Migrate)?;
        Ok(Db { pool, backend })
    }
}

/// A transaction on either backend.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed or refused the statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value does not parse as what the schema promises.
    #[error("corrupt {column} in the database: {value:?}")]
    Corrupt {
        /// The table and column.
        column: &'static str,
        /// What was stored there (cut at 100 characters).
        value: String,
    },
    /// A uniqueness constraint refused the write (another writer got there first).
    #[error("{0} already exists")]
    Duplicate(&'static str),
}

/// Parse a stored text column, or say which one is corrupt.
pub(crate) fn parse_column<T: FromStr>(column: &'static str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: value.chars().take(100).collect(),
    })
}

impl Db {
    /// Whether the database answers (a trivial query).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Parse every stored text of a column, or say which one is corrupt.
pub(crate) fn parse_all<T: FromStr>(
    column: &'static str,
    values: &[String],
) -> Result<Vec<T>, StoreError> {
    values.iter().map(|v| parse_column(column, v)).collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// 16 fresh random bytes for a new id.
pub fn random_id<T>(make: fn([u8; 16]) -> T) -> T {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    make(bytes)
}

/// A fresh random secret of 32 bytes, as 64 hex digits.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form of a secret (token or invite code): its BLAKE3, hex.
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}
