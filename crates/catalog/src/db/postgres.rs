//! PostgreSQL (`postgres://user:password@host:port/db`). Times are `TIMESTAMPTZ`; ids use the
//! `C` collation so ordering matches SQLite's byte order.

use super::sql::{Backend, SqlRepository};
use super::{Options, Result};
use chrono::{DateTime, Utc};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgDatabaseError, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

/// [`Repository`](super::Repository) over PostgreSQL.
pub type PostgresRepository = SqlRepository<Postgres>;

impl PostgresRepository {
    /// Connects a pool to `url`.
    pub async fn connect(url: &str, options: &Options) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.timeout)
            .connect(url)
            .await?;
        Ok(Self::from_pool(pool))
    }
}

impl Backend for Postgres {
    type Time = DateTime<Utc>;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

    fn encode_time(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    fn decode_time(row: &PgRow, column: &str) -> Result<DateTime<Utc>> {
        Ok(row.try_get(column)?)
    }

    async fn begin_seed(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
        let mut tx = pool.begin().await?;
        // Two instances starting on one empty database: the second waits here, then finds
        // the data.
        sqlx::query("SELECT pg_advisory_xact_lock(8315461)")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn install_feed(pool: &PgPool) -> std::result::Result<(), aside_feed::Error> {
        aside_feed::postgres::install(pool, crate::feed::TABLES).await
    }

    fn start_feed(
        pool: PgPool,
        cache: aside::Cache,
        config: aside_feed::FeedConfig,
        mapping: crate::feed::Mapping,
    ) -> std::result::Result<aside_feed::Feed, aside_feed::Error> {
        aside_feed::Feed::postgres(
            pool,
            cache,
            move |c: &aside_feed::Change| mapping(c),
            config,
        )
    }
}

/// Whether `e` is a PostgreSQL outage rather than a bad statement: a serialization failure or
/// deadlock (`40001`, `40P01`), or the connection (`08`), insufficient resources (`53`) and
/// operator intervention such as a shutdown (`57P`) classes.
pub(super) fn is_unavailable(e: &dyn DatabaseError) -> bool {
    e.try_downcast_ref::<PgDatabaseError>()
        .map(PgDatabaseError::code)
        .is_some_and(|c| {
            matches!(c, "40001" | "40P01") || ["08", "53", "57P"].iter().any(|p| c.starts_with(p))
        })
}
