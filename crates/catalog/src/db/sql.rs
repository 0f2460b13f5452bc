//! What SQLite and PostgreSQL share: every statement, the mapping of rows to the model, and the
//! one [`Repository`] implementation, [`SqlRepository`], generic over a [`Backend`].
//!
//! Placeholders are `$n`, which both drivers accept (in SQLite, `$5` written twice is one
//! parameter, as in PostgreSQL). A [`Backend`] supplies only what differs between the two: how
//! a time is stored, how concurrent seeding is serialized and where the migrations are. Each
//! database's connect options and the error codes that mean it is unavailable are in its own
//! module.

use super::{Page, PageIds, Repository, Result, seed_batches, seed_categories, seed_product};
use crate::model::{Category, Id, NewProduct, Product, ProductPatch};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row,
    Transaction, Type,
};

/// What one database does its own way. Implemented for [`sqlx::Sqlite`] and
/// [`sqlx::Postgres`] only.
pub trait Backend: Database + sealed::Sealed {
    /// How a time is bound as a statement parameter.
    type Time: for<'q> Encode<'q, Self> + Type<Self> + Send;

    /// The migrations of this database.
    const MIGRATOR: Migrator;

    /// `t` as it is stored.
    fn encode_time(t: DateTime<Utc>) -> Self::Time;

    /// The time in `column` of `row`.
    fn decode_time(row: &Self::Row, column: &str) -> Result<DateTime<Utc>>;

    /// Begins the seeding transaction, holding a lock that keeps a concurrent seeder out until
    /// it ends: whoever comes second then finds the data and writes nothing.
    fn begin_seed(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>>> + Send;

    /// Installs the change feed's outbox and the triggers of [`crate::feed::TABLES`]
    /// (idempotent).
    fn install_feed(
        pool: &Pool<Self>,
    ) -> impl Future<Output = std::result::Result<(), aside_feed::Error>> + Send;

    /// Starts a change feed over `pool`.
    fn start_feed(
        pool: Pool<Self>,
        cache: aside::Cache,
        config: aside_feed::FeedConfig,
        mapping: crate::feed::Mapping,
    ) -> std::result::Result<aside_feed::Feed, aside_feed::Error>;
}

// Sealed: the statements are written for these two databases and checked against them only.
mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Sqlite {}
    impl Sealed for sqlx::Postgres {}
}

/// [`Repository`] over a pool of database `D` ([`SqliteRepository`](super::sqlite::SqliteRepository)
/// or [`PostgresRepository`](super::postgres::PostgresRepository)).
#[derive(Debug)]
pub struct SqlRepository<D: Database> {
    pool: Pool<D>,
}

impl<D: Database> SqlRepository<D> {
    /// Wraps an existing pool.
    pub fn from_pool(pool: Pool<D>) -> Self {
        Self { pool }
    }
}

// By hand: a derived `Clone` would ask `D: Clone` of the database marker type.
impl<D: Database> Clone for SqlRepository<D> {
    fn clone(&self) -> Self {
        Self::from_pool(self.pool.clone())
    }
}

/// A product row: the product's columns and its category's name as `category_name`.
fn product<D: Backend>(row: &D::Row) -> Result<Product>
where
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> f64: Decode<'r, D> + Type<D>,
    for<'c> &'c str: ColumnIndex<D::Row>,
{
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
        created_at: D::decode_time(row, "created_at")?,
        updated_at: D::decode_time(row, "updated_at")?,
    })
}

// sqlx has no bound meaning "a driver that binds and reads these types": each type the
// statements bind or read is named here.
#[async_trait]
impl<D: Backend> Repository for SqlRepository<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    D::Connection: Migrate,
    D::Arguments: IntoArguments<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D> + ColumnIndex<D::Row>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> Option<f64>: Encode<'q, D>,
    for<'q> f64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> Option<String>: Decode<'r, D>,
{
    async fn product(&self, id: &Id) -> Result<Option<Product>> {
        let row = sqlx::query(
            "SELECT p.id, p.name, p.price, p.category_id, c.name AS category_name, \
                    p.created_at, p.updated_at \
             FROM products p JOIN categories c ON c.id = p.category_id \
             WHERE p.id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(product::<D>).transpose()
    }

    async fn page(&self, offset: u64, limit: u32) -> Result<Page> {
        // One statement, so the count and the page are one consistent snapshot; the LEFT JOIN
        // keeps the count's row when the page is empty.
        let rows = sqlx::query(
            "SELECT t.total, p.id, p.name, p.price, p.category_id, c.name AS category_name, \
                    p.created_at, p.updated_at \
             FROM (SELECT COUNT(*) AS total FROM products) AS t \
             LEFT JOIN (SELECT * FROM products ORDER BY created_at DESC, id DESC \
                        LIMIT $1 OFFSET $2) AS p ON TRUE \
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
                products.push(product::<D>(r)?);
            }
        }
        Ok(Page {
            products,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn page_ids(&self, offset: u64, limit: u32) -> Result<PageIds> {
        // As `page`, without the products' columns.
        let rows = sqlx::query(
            "SELECT t.total, p.id \
             FROM (SELECT COUNT(*) AS total FROM products) AS t \
             LEFT JOIN (SELECT id, created_at FROM products ORDER BY created_at DESC, id DESC \
                        LIMIT $1 OFFSET $2) AS p ON TRUE \
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
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(id) = r.try_get::<Option<String>, _>("id")? {
                ids.push(id);
            }
        }
        Ok(PageIds {
            ids,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn products(&self, ids: &[Id]) -> Result<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<D>::new(
            "SELECT p.id, p.name, p.price, p.category_id, c.name AS category_name, \
                    p.created_at, p.updated_at \
             FROM products p JOIN categories c ON c.id = p.category_id \
             WHERE p.id IN (",
        );
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.as_str());
        }
        q.push(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(product::<D>).collect()
    }

    async fn insert(&self, p: &NewProduct) -> Result<Product> {
        let row = sqlx::query(
            "INSERT INTO products (id, name, price, category_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             RETURNING id, name, price, category_id, \
                 (SELECT name FROM categories WHERE categories.id = products.category_id) \
                     AS category_name, \
                 created_at, updated_at",
        )
        .bind(p.id.as_str())
        .bind(p.name.as_str())
        .bind(p.price)
        .bind(p.category_id.as_str())
        .bind(D::encode_time(p.created_at))
        .fetch_one(&self.pool)
        .await?;
        product::<D>(&row)
    }

    async fn update(
        &self,
        id: &Id,
        patch: &ProductPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>> {
        let row = sqlx::query(
            "UPDATE products SET \
                 name = COALESCE($1, name), \
                 price = COALESCE($2, price), \
                 category_id = COALESCE($3, category_id), \
                 updated_at = $4 \
             WHERE id = $5 \
             RETURNING id, name, price, category_id, \
                 (SELECT name FROM categories WHERE categories.id = products.category_id) \
                     AS category_name, \
                 created_at, updated_at",
        )
        .bind(patch.name.as_deref())
        .bind(patch.price)
        .bind(patch.category_id.as_ref().map(Id::as_str))
        .bind(D::encode_time(now))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(product::<D>).transpose()
    }

    async fn delete(&self, id: &Id) -> Result<bool> {
        // RETURNING rather than the affected-row count, which sqlx reports per driver only.
        let row = sqlx::query("DELETE FROM products WHERE id = $1 RETURNING id")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>> {
        let row = sqlx::query("UPDATE categories SET name = $1 WHERE id = $2 RETURNING id, name")
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
        D::MIGRATOR
            .run(&self.pool)
            .await
            .map_err(super::DbError::Migrate)
    }

    async fn change_feed(
        &self,
        cache: aside::Cache,
        config: aside_feed::FeedConfig,
        mapping: crate::feed::Mapping,
    ) -> Result<aside_feed::Feed> {
        D::install_feed(&self.pool)
            .await
            .map_err(super::DbError::Feed)?;
        D::start_feed(self.pool.clone(), cache, config, mapping).map_err(super::DbError::Feed)
    }

    async fn seed(&self, products: u32) -> Result<bool> {
        let mut tx = D::begin_seed(&self.pool).await?;
        let existing: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM categories) + (SELECT COUNT(*) FROM products) AS n",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if existing > 0 {
            return Ok(false);
        }
        let mut q = QueryBuilder::<D>::new("INSERT INTO categories (id, name) ");
        q.push_values(seed_categories(), |mut b, c| {
            b.push_bind(c.id.as_str()).push_bind(c.name.as_str());
        });
        q.build().execute(&mut *tx).await?;
        for batch in seed_batches(products) {
            let mut q = QueryBuilder::<D>::new(
                "INSERT INTO products (id, name, price, category_id, created_at, updated_at) ",
            );
            q.push_values(batch.map(seed_product), |mut b, p| {
                b.push_bind(p.id.as_str())
                    .push_bind(p.name.as_str())
                    .push_bind(p.price)
                    .push_bind(p.category_id.as_str())
                    .push_bind(D::encode_time(p.created_at))
                    .push_bind(D::encode_time(p.created_at));
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
