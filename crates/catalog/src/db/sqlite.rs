//! SQLite: an embedded file (`sqlite://catalog.db`, created when missing) or memory
//! (`sqlite::memory:`). Times are stored as integer microseconds since the Unix epoch, so
//! ordering and equality are exact.

use super::{
    DbError, Options, Page, Repository, Result, seed_batches, seed_categories, seed_product,
};
use crate::model::{Category, Id, NewProduct, Product, ProductPatch};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;

/// [`Repository`] over SQLite.
#[derive(Clone, Debug)]
pub struct SqliteRepository {
    pool: SqlitePool,
}

impl SqliteRepository {
    /// Opens (creating if needed) the database at `url`. An in-memory database lives in a
    /// single connection that is never closed.
    pub async fn connect(url: &str, options: &Options) -> Result<Self> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
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
        let pool = pool
            .acquire_timeout(options.timeout)
            .connect_with(connect)
            .await?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    let us: i64 = row.try_get(column)?;
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        DbError::Query(sqlx::Error::Decode(
            format!("{column} out of range: {us}").into(),
        ))
    })
}

fn product(row: &SqliteRow) -> Result<Product> {
    let category_id: String = row.try_get("category_id")?;
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        price: row.try_get("price")?,
        category: Category {
            id: category_id.clone(),
            name: row.try_get("category_name")?,
        },
        category_id,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

#[async_trait]
impl Repository for SqliteRepository {
    async fn product(&self, id: &Id) -> Result<Option<Product>> {
        let row = sqlx::query(
            "SELECT p.id, p.name, p.price, p.category_id, c.name AS category_name, \
                    p.created_at, p.updated_at \
             FROM products p JOIN categories c ON c.id = p.category_id \
             WHERE p.id = ?1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(product).transpose()
    }

    async fn page(&self, offset: u64, limit: u32) -> Result<Page> {
        // One statement, so the count and the page are one consistent snapshot; the LEFT JOIN
        // keeps the count's row when the page is empty.
        let rows = sqlx::query(
            "SELECT t.total, p.id, p.name, p.price, p.category_id, c.name AS category_name, \
                    p.created_at, p.updated_at \
             FROM (SELECT COUNT(*) AS total FROM products) AS t \
             LEFT JOIN (SELECT * FROM products ORDER BY created_at DESC, id DESC \
                        LIMIT ?1 OFFSET ?2) AS p ON 1 = 1 \
             LEFT JOIN categories c ON c.id = p.category_id \
             ORDER BY p.created_at DESC, p.id DESC",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = match rows.first() {
            Some(r) => r.try_get("total")?,
            None => 0,
        };
        let mut products = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<Option<String>, _>("id")?.is_some() {
                products.push(product(r)?);
            }
        }
        Ok(Page {
            products,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn insert(&self, p: &NewProduct) -> Result<Product> {
        let row = sqlx::query(
            "INSERT INTO products (id, name, price, category_id, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             RETURNING id, name, price, category_id, \
                 (SELECT name FROM categories WHERE categories.id = products.category_id) \
                     AS category_name, \
                 created_at, updated_at",
        )
        .bind(p.id.as_str())
        .bind(&p.name)
        .bind(p.price)
        .bind(p.category_id.as_str())
        .bind(micros(p.created_at))
        .fetch_one(&self.pool)
        .await?;
        product(&row)
    }

    async fn update(
        &self,
        id: &Id,
        patch: &ProductPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>> {
        let row = sqlx::query(
            "UPDATE products SET \
                 name = COALESCE(?1, name), \
                 price = COALESCE(?2, price), \
                 category_id = COALESCE(?3, category_id), \
                 updated_at = ?4 \
             WHERE id = ?5 \
             RETURNING id, name, price, category_id, \
                 (SELECT name FROM categories WHERE categories.id = products.category_id) \
                     AS category_name, \
                 created_at, updated_at",
        )
        .bind(patch.name.as_deref())
        .bind(patch.price)
        .bind(patch.category_id.as_ref().map(Id::as_str))
        .bind(micros(now))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(product).transpose()
    }

    async fn delete(&self, id: &Id) -> Result<bool> {
        let done = sqlx::query("DELETE FROM products WHERE id = ?1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>> {
        let row = sqlx::query("UPDATE categories SET name = ?1 WHERE id = ?2 RETURNING id, name")
            .bind(name)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(Category {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
            }),
            None => None,
        })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(DbError::Migrate)
    }

    async fn seed(&self, products: u32) -> Result<bool> {
        // IMMEDIATE: take the write lock before looking, so two processes cannot both seed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM categories) + (SELECT COUNT(*) FROM products)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if existing > 0 {
            return Ok(false);
        }
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO categories (id, name) ");
        q.push_values(seed_categories(), |mut b, c| {
            b.push_bind(c.id).push_bind(c.name);
        });
        q.build().execute(&mut *tx).await?;
        for batch in seed_batches(products) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO products (id, name, price, category_id, created_at, updated_at) ",
            );
            q.push_values(batch.map(seed_product), |mut b, p| {
                let t = micros(p.created_at);
                b.push_bind(p.id.as_str().to_owned())
                    .push_bind(p.name)
                    .push_bind(p.price)
                    .push_bind(p.category_id.as_str().to_owned())
                    .push_bind(t)
                    .push_bind(t);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
