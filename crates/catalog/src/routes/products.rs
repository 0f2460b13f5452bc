//! `/products` and `/products/{id}`.

use super::X_CACHE;
use super::{BODY_400_DOC, UNAVAILABLE_DOC};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, PathId};
use crate::model::{CreateProduct, PageRequest, Product, ProductPage, UpdateProduct};
use crate::openapi::{ErrorBody, IdParam, ListParams};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `GET /products/{id}`: 200 Product, 404; `x-cache` on both. The body is the cached JSON as is.
#[utoipa::path(
    get, path = "/products/{id}", tag = "products", operation_id = "get_product", params(IdParam),
    responses(
        (status = 200, description = "The product", body = Product, headers(("x-cache" = String, description = "`hit`, `miss`, `stale` (past its TTL: refreshing, or the database failed) or `bypass` (`--no-cache`)"))),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such product (a cached answer too)", body = ErrorBody, headers(("x-cache" = String, description = "`hit`, `miss`, `stale` (past its TTL: refreshing, or the database failed) or `bypass` (`--no-cache`)"))),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn get(State(s): State<AppState>, PathId(id): PathId) -> Result<Response, ApiError> {
    let (product, status) = s.catalog.product(&id).await?;
    let x_cache = (X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    Ok(match product {
        Some(body) => ([(CONTENT_TYPE, JSON.clone()), x_cache], body).into_response(),
        None => ([x_cache], ApiError::NotFound("no such product")).into_response(),
    })
}

/// `GET /products?page=&limit=`: 200 page, with `x-cache`.
#[utoipa::path(
    get, path = "/products", tag = "products", operation_id = "list_products", params(ListParams),
    responses(
        (status = 200, description = "One page, newest first", body = ProductPage, headers(("x-cache" = String, description = "`hit` (the page's entry and every one of its products' were hits), `stale` (any of them was past its TTL: refreshing, or the database failed), `miss` (any came from the database) or `bypass` (`--no-cache`)"))),
        (status = 400, description = "`invalid_page`, `invalid_limit`, `invalid_query`", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn list(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let req = PageRequest::from_query(q.as_deref())?;
    let (page, status) = s.catalog.page(req).await?;
    let x_cache = HeaderValue::from_static(status.as_str());
    Ok((
        [(CONTENT_TYPE, JSON.clone()), (X_CACHE.clone(), x_cache)],
        page,
    )
        .into_response())
}

/// `POST /products`: 201 Product, 400, 409.
#[utoipa::path(
    post, path = "/products", tag = "products", operation_id = "create_product",
    request_body(content = CreateProduct, content_type = "application/json"),
    responses(
        (status = 201, description = "The product created", body = Product),
        (status = 400, description = BODY_400_DOC, body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 409, description = "`conflict`: a product with this id exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn create(
    State(s): State<AppState>,
    Body(body): Body<CreateProduct>,
) -> Result<Response, ApiError> {
    let p = s.catalog.create(body.validate()?).await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

/// `PUT /products/{id}`: 200 Product, 400, 404.
#[utoipa::path(
    put, path = "/products/{id}", tag = "products", operation_id = "update_product", params(IdParam),
    request_body(content = UpdateProduct, content_type = "application/json"),
    responses(
        (status = 200, description = "The product changed", body = Product),
        (status = 400, description = BODY_400_DOC, body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn update(
    State(s): State<AppState>,
    PathId(id): PathId,
    Body(body): Body<UpdateProduct>,
) -> Result<Response, ApiError> {
    let patch = body.validate()?;
    match s.catalog.update(&id, &patch).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::NotFound("no such product")),
    }
}

/// `DELETE /products/{id}`: 204, 404.
#[utoipa::path(
    delete, path = "/products/{id}", tag = "products", operation_id = "delete_product", params(IdParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn delete(State(s): State<AppState>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    if s.catalog.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no such product"))
    }
}
