//! `/healthz` and `/metrics`.

use crate::AppState;
use aside::Kind;
use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;

/// The body of `/healthz`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok`, or `degraded` when the database or the cache is down, or the change feed is
    /// down or behind.
    pub status: &'static str,
    /// `up` or `down`.
    pub db: &'static str,
    /// `up`, `down`, or `off` (`--no-cache`).
    pub cache: &'static str,
    /// The change feed: `up`, `behind` (changes wait longer than a second to reach the
    /// cache), `down` (it cannot read the database), or `off` (`--no-change-feed`,
    /// `--no-cache`, or an in-memory database).
    pub feed: &'static str,
}

/// `GET /healthz`: always 200; the body tells what is down. Asks the database (one round
/// trip, bounded by the query timeout) and the cache (bounded by its command timeout).
pub async fn healthz(State(s): State<AppState>) -> Json<Health> {
    let db_check = s.catalog.db().ping();
    let cache_check = async {
        match s.catalog.cache() {
            None => "off",
            Some(c) if c.health().kind == Kind::Memory => "up",
            Some(c) => {
                if c.ping().await {
                    "up"
                } else {
                    "down"
                }
            }
        }
    };
    let (db, cache) = tokio::join!(db_check, cache_check);
    let db = if db.is_ok() { "up" } else { "down" };
    let feed = match s.feed.as_deref().map(aside_feed::Feed::status) {
        None => "off",
        Some(aside_feed::Status::Up) => "up",
        Some(aside_feed::Status::Behind) => "behind",
        Some(aside_feed::Status::Down) => "down",
    };
    let status = if db == "up" && cache != "down" && matches!(feed, "up" | "off") {
        "ok"
    } else {
        "degraded"
    };
    Json(Health {
        status,
        db,
        cache,
        feed,
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
}
