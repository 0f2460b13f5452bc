//! `/healthz` and `/metrics`.

use crate::AppState;
use crate::openapi::ErrorBody;
use aside::Kind;
use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the database or the cache is down, or the change feed is
    /// down or behind.
    #[schema(pattern = "^(ok|degraded)$")]
    pub status: &'static str,
    /// `up` or `down`.
    #[schema(pattern = "^(up|down)$")]
    pub db: &'static str,
    /// `up`, `down`, or `off` (`--no-cache`).
    #[schema(pattern = "^(up|down|off)$")]
    pub cache: &'static str,
    /// The change feed: `up`, `behind` (changes wait longer than a second to reach the
    /// cache), `down` (it cannot read the database), or `off` (`--no-change-feed`,
    /// `--no-cache`, or an in-memory database).
    #[schema(pattern = "^(up|behind|down|off)$")]
    pub feed: &'static str,
}

/// `GET /healthz`: always 200; the body tells what is down. Asks the database (one round
/// trip, bounded by the query timeout) and the cache (bounded by its command timeout).
#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, description = "What is up and what is down", body = Health),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    )
)]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
}

/// `GET /openapi.json`: this API's OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    )
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}
