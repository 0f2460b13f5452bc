//! The HTTP API (documented in the README). Handlers are thin: extract and validate, call the
//! [`Catalog`](crate::service::Catalog), shape the response.

use crate::AppState;
use crate::error::ApiError;
use crate::server::Guard;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use std::convert::Infallible;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

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
/// [`Router::layer`]s: a router layer wraps every route in a boxed service of its own, and
/// each request would clone (allocate) the whole chain again.
pub fn router(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let no_id = || async { ApiError::invalid("invalid_id", "the path has no id") };
    let router = Router::new()
        .route("/products", get(products::list).post(products::create))
        .route(
            "/products/{id}",
            get(products::get)
                .put(products::update)
                .delete(products::delete),
        )
        .route("/products/", get(no_id).put(no_id).delete(no_id))
        .route("/categories/{id}", put(categories::rename))
        .route("/categories/", put(no_id))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
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

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal.into_response()
}
