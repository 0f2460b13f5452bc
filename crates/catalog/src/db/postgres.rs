//! PostgreSQL (`postgres://user:password@host:port/db`). Times are `TIMESTAMPTZ`; ids use the
//! `C` collation so ordering matches SQLite's byte order.

use super::{
    DbError, Options, Page, Repository, Result, seed_batches, seed_categories, seed_product,
};
use crate::model::{Category, Id, NewProduct, Product, ProductPatch};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

/// [`Repository`] over PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresRepository {
    pool: PgPool,
}

impl PostgresRepository {
    /// Connects a pool to `url`.
    pub async fn connect(url: &str, options: &Options) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.timeout)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn product(row: &PgRow) -> Result<Product> {
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
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl Repository for PostgresRepository {
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
            "INSERT INTO products AS p (id, name, price, category_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             RETURNING p.id, p.name, p.price, p.category_id, \
                 (SELECT c.name FROM categories c WHERE c.id = p.category_id) AS category_name, \
                 p.created_at, p.updated_at",
        )
        .bind(p.id.as_str())
        .bind(&p.name)
        .bind(p.price)
        .bind(p.category_id.as_str())
        .bind(p.created_at)
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
            "UPDATE products AS p SET \
                 name = COALESCE($1, p.name), \
                 price = COALESCE($2, p.price), \
                 category_id = COALESCE($3, p.category_id), \
                 updated_at = $4 \
             WHERE p.id = $5 \
             RETURNING p.id, p.name, p.price, p.category_id, \
                 (SELECT c.name FROM categories c WHERE c.id = p.category_id) AS category_name, \
                 p.created_at, p.updated_at",
        )
        .bind(patch.name.as_deref())
        .bind(patch.price)
        .bind(patch.category_id.as_ref().map(Id::as_str))
        .bind(now)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(product).transpose()
    }

    async fn delete(&self, id: &Id) -> Result<bool> {
        let done = sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
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
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(DbError::Migrate)
    }

    async fn seed(&self, products: u32) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Two instances starting on one empty database: the second waits here, then finds
        // the data.
        sqlx::query("SELECT pg_advisory_xact_lock(8315461)")
            .execute(&mut *tx)
            .await?;
        let existing: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM categories) + (SELECT COUNT(*) FROM products)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if existing > 0 {
            return Ok(false);
        }
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO categories (id, name) ");
        q.push_values(seed_categories(), |mut b, c| {
            b.push_bind(c.id).push_bind(c.name);
        });
        q.build().execute(&mut *tx).await?;
        for batch in seed_batches(products) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO products (id, name, price, category_id, created_at, updated_at) ",
            );
            q.push_values(batch.map(seed_product), |mut b, p| {
                b.push_bind(p.id.as_str().to_owned())
                    .push_bind(p.name)
                    .push_bind(p.price)
                    .push_bind(p.category_id.as_str().to_owned())
                    .push_bind(p.created_at)
                    .push_bind(p.created_at);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
