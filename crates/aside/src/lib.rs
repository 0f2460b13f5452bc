//! `aside`: cache-aside for Rust services, with Redis as the shared cache.
//!
//! Put it in front of a slow database: reads go to the cache first and to your loader on a
//! miss; writes invalidate keys, tags or whole key prefixes. It is built to stay correct under
//! concurrency and to stay out of the way when Redis misbehaves.
//!
//! ```
//! use std::time::Duration;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Product { name: String }
//! # async fn db_find(_: &str) -> Result<Option<Product>, std::io::Error> { Ok(Some(Product { name: "Lamp".into() })) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cache = aside::Cache::builder()            // .redis("redis://127.0.0.1:6379") to share it
//!     .namespace("shop")
//!     .build()?;
//!
//! // Read through the cache: one loader call per key, however many callers miss at once.
//! let product: Option<Product> = cache
//!     .entry("product:p1")
//!     .ttl(Duration::from_secs(300))
//!     .tags(["category:c1"])
//!     .get_or_load(|| db_find("p1"))
//!     .await?;
//!
//! // After a write to the database: invalidate what depends on it.
//! cache.del(["product:p1"]).await?;
//! cache.invalidate_prefix("products:list:").await?;
//! cache.invalidate_tag("category:c1").await?;
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! Changes made to the database by anyone else (a SQL console, a migration, another service)
//! reach the cache through the companion crate `aside-feed`: triggers record every committed
//! change in an outbox, and a feed in every instance applies it through a mapping from rows to
//! keys, tags and prefixes, from a durable position.
//!
//! # What it guarantees
//! | property | how |
//! | --- | --- |
//! | typed values, falsy values are hits | serde + a small envelope; `None`, `0`, `""`, `false`, `[]` round-trip |
//! | every entry expires | default and per-call TTL, with jitter |
//! | one load per key | in-process single-flight, and a lease in Redis across processes |
//! | negative caching | a loader's `Ok(None)` is cached for the negative TTL |
//! | stale-while-revalidate, stale-if-error | past its TTL an entry is served while one background refresh runs, or when the loader fails; never once invalidated |
//! | no stale sets | fills are fenced: an invalidation during a load voids its write |
//! | batch get-or-load | [`Cache::get_many`], [`Cache::get_or_load_many`], [`Cache::entries`]: one store round trip for many keys, one loader call for their misses, each key with the single path's guarantees |
//! | tags and prefixes | versioned stamps: one `INCR`-like bump, whatever the TTLs; no `KEYS`, no `SCAN` |
//! | Redis failure is not yours | timeouts, circuit breaker, fall back to the loader, invalidations kept and replayed in the background ([`Cache::flush`] on shutdown), lazy connect |
//! | no read older than a write | a read that begins after an invalidation returned never gets the value it voided, on any instance: callers joining a load in process take its value only if it is newer than their start; nothing is filled while invalidations are kept; a dropped fetch gives its lease back |
//! | two tiers (optional) | [`CacheBuilder::l1`]: an in-process L1 in front of Redis, coherent across instances through pub/sub within a bound (100 ms) |
//! | Redis standalone or Cluster | `redis(url)` (TLS, ACL users) or `redis_cluster(urls)`: the same guarantees with an entry and its stamps on different nodes |
//! | corrupt or old entries | a miss, removed and counted (`schema_version` for type changes) |
//! | observability | `metrics` counters and histograms, `tracing` spans |
//!
//! # Layout
//! Each file has one job; its name says which.
//!
//! - [`cache`]: [`Cache`], the front door (get, set, del, invalidate_*), and its parts:
//!   - `cache/entry.rs`: [`Entry`], TTLs, the fetch variants, and the hit / stale / expired
//!     decision;
//!   - `cache/lease.rs`: the miss path: flight join, claim, waiting for another loader's
//!     fill (steps shared by a single fetch and a batch);
//!   - `cache/fill.rs`: a load under its lease: the loader, the fenced fill, release;
//!   - `cache/batch.rs`: [`Entries`], batch get-or-load: one store read for many keys, one
//!     call of a batched loader for the misses (`cache/batch/misses.rs`: the rounds);
//!   - `cache/refresh.rs`: stale-while-revalidate, a refresh on its own task;
//!   - `cache/guard.rs`: the outage policy: every store call bounded, the circuit breaker,
//!     the backlog of invalidations that could not be sent and where it is replayed;
//!   - `cache/value.rs`: values to entries and back (codec, envelope, freshness, jitter).
//! - [`builder`]: [`CacheBuilder`], validated settings.
//! - [`key`]: every Redis key is made here (namespacing, escaping).
//! - [`codec`]: [`Codec`](codec::Codec) and the JSON default; [`envelope`]: the envelope
//!   around codec bytes (schema version, freshness).
//! - [`store`]: the [`Store`](store::Store) boundary (bytes, TTLs, leases, version stamps):
//!   - `store/memory.rs`: [`MemoryStore`](store::MemoryStore), in process;
//!   - `store/redis.rs`: [`RedisStore`](store::RedisStore), standalone Redis (its batch
//!     read in `store/redis/many.rs`, as the cluster's and the L1's in their `many.rs`);
//!     `store/versions.rs`: its versions held in process, kept exact by client tracking;
//!     `store/hints.rs`: the learnt tags of entries, so a read names them;
//!   - `store/cluster/`: [`ClusterStore`](store::ClusterStore), Redis Cluster: the store
//!     (`mod.rs`), its reads of stamps across slots (`stamps.rs`), its per-slot scripts
//!     (`scripts.rs`) and settings (`config.rs`);
//!   - `store/tiered/`: [`TieredStore`](store::TieredStore), an L1 in front of Redis: the
//!     store (`mod.rs`, where a copy is voided), its generation table (`generations.rs`),
//!     the subscriber task that proves the bound (`subscriber.rs`), settings (`config.rs`);
//!   - `store/record.rs`: the record format of the Redis stores and its parser;
//!     `store/lua/`: their Lua scripts (`lua.rs` loads them), sharing one prelude;
//!     `store/client.rs`: connection setup, call bounds, error mapping, URL redaction.
//! - `flight`: in-process single-flight. `breaker`: circuit breaker. `backlog`: invalidations
//!   kept during an outage. `metrics`: metric names. `deadline`: the bounds of store calls,
//!   enforced by one process-wide thread (`aside-deadlines`, started when the first Redis
//!   store is built, so that a refused thread is a `BuildError`; asleep whenever no call is
//!   pending) instead of a timer per call.
//! - [`clock`]: injectable time.
//! - `fuzzing` (feature `fuzzing` only, not part of the API): the private parsers, exposed
//!   for the fuzz targets.

pub mod builder;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod error;
pub mod key;
pub mod store;

mod backlog;
mod breaker;
mod deadline;
pub mod envelope;
mod flight;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod metrics;

pub use builder::CacheBuilder;
pub use cache::{Cache, Entries, Entry, Fetched, Health, Invalidation, Status, Tagged};
pub use error::{BuildError, Error, LoadError, Result, StoreError};
pub use store::Kind;
