//! SQLite: an embedded file (`sqlite://catalog.db`, created when missing) or memory
//! (`sqlite::memory:`). Times are stored as integer microseconds since the Unix epoch, so
//! ordering and equality are exact.

use super::sql::{Backend, SqlRepository};
use super::{DbError, Options, Result};
use chrono::{DateTime, Utc};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::str::FromStr;

/// [`Repository`](super::Repository) over SQLite.
pub type SqliteRepository = SqlRepository<Sqlite>;

/// Whether `url` names an in-memory SQLite database (one connection, this process only).
pub fn is_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

impl SqliteRepository {
    /// Opens (creating if needed) the database at `url`. An in-memory database lives in a
    /// single connection that is never closed.
    pub async fn connect(url: &str, options: &Options) -> Result<Self> {
        let memory = is_memory(url);
        let mut connect = SqliteConnectOptions::from_str(url)
            .map_err(DbError::Query)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(options.timeout);
        if !memory {
            connect = connect
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
        }
        let pool = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(options.max_connections.max(1))
        };
        let pool: SqlitePool = pool
            .acquire_timeout(options.timeout)
            .connect_with(connect)
            .await?;
        Ok(Self::from_pool(pool))
    }
}

impl Backend for Sqlite {
    type Time = i64;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

    fn encode_time(t: DateTime<Utc>) -> i64 {
        t.timestamp_micros()
    }

    fn decode_time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
        let us: i64 = row.try_get(column)?;
        DateTime::from_timestamp_micros(us).ok_or_else(|| {
            DbError::Query(sqlx::Error::Decode(
                format!("{column} out of range: {us}").into(),
            ))
        })
    }

    async fn begin_seed(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
        // IMMEDIATE: take the write lock before looking, so two processes cannot both seed.
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn install_feed(pool: &SqlitePool) -> std::result::Result<(), aside_feed::Error> {
        aside_feed::sqlite::install_all_columns(pool, crate::feed::TABLES).await
    }

    fn start_feed(
        pool: SqlitePool,
        cache: aside::Cache,
        config: aside_feed::FeedConfig,
        mapping: crate::feed::Mapping,
    ) -> std::result::Result<aside_feed::Feed, aside_feed::Error> {
        aside_feed::Feed::sqlite(
            pool,
            cache,
            move |c: &aside_feed::Change| mapping(c),
            config,
        )
    }
}

/// Whether `e` is SQLite's busy or locked (`SQLITE_BUSY`, `SQLITE_LOCKED`,
/// `SQLITE_BUSY_SNAPSHOT`): another connection holds the database, so trying later can work.
pub(super) fn is_unavailable(e: &dyn DatabaseError) -> bool {
    e.try_downcast_ref::<SqliteError>()
        .and_then(|e| e.code())
        .is_some_and(|c| matches!(c.as_ref(), "5" | "6" | "517"))
}
