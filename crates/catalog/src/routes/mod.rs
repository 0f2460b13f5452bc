//! The HTTP API (documented in the README). Handlers are thin: extract and validate, call the
//! [`Catalog`](crate::service::Catalog), shape the response.

use crate::AppState;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::server::Guard;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use std::convert::Infallible;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod categories;
mod ops;
mod products;

/// The `x-cache` header of product and list reads.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Every route, with the API's Error body for unknown routes (404), wrong methods (405),
/// oversized bodies (413) and panics (500), behind the [`Guard`] of the state's limits; each
/// request is traced at debug level when the log filter enables it
/// (`RUST_LOG=tower_http=debug`).
///
/// The guard and the panic guard wrap the router once, around routing, instead of being
/// [`Router::layer`](axum::Router::layer)s: a router layer wraps every route in a boxed service of its own, and
/// each request would clone (allocate) the whole chain again.
pub fn router(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let no_id = || async { ApiError::invalid("invalid_id", "the path has no id") };
    let (router, _) = api().split_for_parts();
    let router = router
        .route("/products/", get(no_id).put(no_id).delete(no_id))
        .route("/categories/", put(no_id))
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // Request tracing costs a span and a wrapped body per request: only when it is wanted.
    let router = if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        router.layer(TraceLayer::new_for_http())
    } else {
        router
    };
    let limits = state.limits.clone();
    let inner = ServiceBuilder::new()
        .map_response(|r: Response<_>| r.map(Body::new))
        .layer(CatchPanicLayer::custom(panicked as fn(_) -> Response))
        // The guard bounds bodies before routing: axum's own limit would only repeat it.
        .layer(DefaultBodyLimit::disable())
        .service(router.with_state(state));
    Guard::new(inner, limits)
}

/// Every documented route, with its OpenAPI paths (see [`crate::openapi`]).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(products::list, products::create))
        .routes(routes!(products::get, products::update, products::delete))
        .routes(routes!(categories::rename))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
}

/// The 503s every route may answer.
const UNAVAILABLE_DOC: &str = "`unavailable`: the database is down or slower than `--db-timeout`; `overloaded`: past `--max-in-flight` or `--max-connections` (with `retry-after`)";
/// The 400s of a route with a body.
const BODY_400_DOC: &str = "`invalid_id`, `invalid_body` (not a JSON object, an unknown or repeated field, a wrong type), `invalid_json`, `invalid_name`, `invalid_price`, `invalid_category_id`, `unknown_category`, `empty_update`";

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal.into_response()
}
