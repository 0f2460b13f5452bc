//! `aside-feed`: cache invalidation from the database itself, for services cached with
//! [`aside`].
//!
//! A service that invalidates its cache after its own writes still serves stale entries
//! after a change it did not make: a `psql` session, a migration, another service. This crate
//! turns every *committed* row change of chosen tables into invalidations:
//!
//! 1. triggers write each changed row to an outbox table, in the changing transaction (so a
//!    rolled-back change leaves nothing, and a committed one cannot be lost);
//! 2. a [`Feed`] task in every instance of the service reads the outbox in commit-safe order,
//!    asks the service's mapping what each change voids, and applies it to its
//!    [`aside::Cache`];
//! 3. the position up to which changes reached the cache store is kept in the database, so a
//!    restart continues where the service stopped, and the outbox is pruned behind it.
//!
//! ```no_run
//! use aside_feed::{Change, Feed, FeedConfig, Invalidations};
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let cache = aside::Cache::builder().namespace("catalog").build()?;
//! aside_feed::postgres::install(&pool, &["products", "categories"]).await?;
//!
//! let mapping = |c: &Change| match c.table.as_str() {
//!     "products" => Invalidations::none()
//!         .keys(c.values("id").iter().map(|id| format!("product:{id}")))
//!         .tags(c.values("category_id").iter().map(|id| format!("category:{id}")))
//!         .prefix("products:list:"),
//!     "categories" => Invalidations::none()
//!         .tags(c.values("id").iter().map(|id| format!("category:{id}"))),
//!     _ => Invalidations::none(),
//! };
//! let feed = Feed::postgres(pool, cache.clone(), mapping, FeedConfig::new("catalog"))?;
//!
//! // ... serve; report feed.status() on a readiness endpoint ...
//!
//! feed.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Why nothing is skipped or applied twice
//! PostgreSQL assigns row ids and transaction ids before commit, so a transaction that began
//! first may commit last; "the last id seen" would skip its rows. Each read is one statement
//! (one snapshot) that also takes `xmin = pg_snapshot_xmin(pg_current_snapshot())` of that
//! snapshot. Every transaction below `xmin` has ended, and no transaction can later get an id
//! below it, so the rows with `txid < xmin` are final: the read sees every committed one and
//! no later read finds another. The feed reads the rows from its cursor up to `xmin`, ordered
//! by `(txid, id)`, and moves its cursor to `xmin`. Committed rows above `xmin` (an older
//! transaction is still open somewhere on the server) are applied at once and remembered
//! until `xmin` passes them. See [`postgres`].
//!
//! SQLite lets one writer at a time hold the database, so its `AUTOINCREMENT` ids are in
//! commit order and the cursor is the next id. See [`sqlite`].
//!
//! # Durable position
//! After a batch is applied (every invalidation returned [`aside::Invalidation::Applied`]) the
//! instance raises the feed's position in `aside_feed_position` (never lowers it). An
//! invalidation the cache queued (its store did not answer; the engine replays it) holds the
//! position back until [`aside::Cache::ping`] reports the backlog applied. On start an
//! instance continues from the stored position, so changes made while every instance was
//! down are applied then. **A feed without a stored position (its first start) starts at the
//! head: changes committed before it are not replayed.**
//!
//! # Many instances
//! Every instance runs a feed under the same name and applies every change itself: its
//! invalidations also void its own in-process L1, which no other instance can reach. The
//! invalidations are idempotent, so the shared store receiving each one several times is
//! harmless; the shared position is the furthest any instance got.
//!
//! # Pruning and resync
//! The instance that raised the position deletes outbox rows below the lowest position of
//! all feeds on the database (a feed idle for [`FeedConfig::abandon_after`] aside) that are
//! older than [`FeedConfig::retention`], and records the highest pruned position in the same
//! statement. An instance that finds its own position at or below that mark (it fell too far
//! behind, or was down too long), or a stored position the database cannot have (a restored
//! database), calls [`aside::Cache::invalidate_all`] once and continues from the head: a
//! resync, counted.
//!
//! # Metrics
//! Through the `metrics` facade, labelled `feed`: `aside_feed_lag_seconds` (gauge: age of the
//! oldest change not yet applied to the cache store, zero when caught up),
//! `aside_feed_lag_changes` (gauge), `aside_feed_changes_total` (counter of changes applied)
//! and `aside_feed_resyncs_total` (counter).
//!
//! # Failure
//! The feed never fails a cache call. While the database does not answer, the feed is
//! [`Status::Down`] and retries every [`FeedConfig::retry_interval`]; entries may then be
//! stale up to their TTL. A mapping that panics, or gives a key, tag or prefix the cache
//! refuses, makes the batch void the whole namespace instead.
//!
//! # Layout
//! - `feed/`: the [`Feed`] handle and its [`Stats`] (`mod.rs`), the state its task publishes
//!   (`state.rs`), the task's loop (`engine.rs`), a batch's rows turned into invalidations
//!   and applied (`batch.rs`), the durable position and pruning (`position.rs`).
//! - `change.rs`: [`Change`], [`Invalidations`] and how one batch's answers are merged.
//! - `backend.rs`: what the feed asks of a database, and the dispatch to the one it runs on.
//! - [`postgres`], [`sqlite`]: the triggers, the outbox and the reads of each database.
//! - `config.rs`: [`FeedConfig`] and [`Error`].

#[cfg(not(any(feature = "postgres", feature = "sqlite")))]
compile_error!("aside-feed needs the `postgres` feature, the `sqlite` feature, or both");

mod backend;
mod change;
mod config;
mod feed;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use change::{Change, Invalidations, Op};
pub use config::{Error, FeedConfig};
pub use feed::{Feed, Stats, Status};
