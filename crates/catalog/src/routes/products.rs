//! `/products` and `/products/{id}`.

use super::X_CACHE;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, PathId};
use crate::model::{CreateProduct, PageRequest, UpdateProduct};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `GET /products/{id}`: 200 Product, 404; `x-cache` on both. The body is the cached JSON as is.
pub async fn get(State(s): State<AppState>, PathId(id): PathId) -> Result<Response, ApiError> {
    let (product, status) = s.catalog.product(&id).await?;
    let x_cache = (X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    Ok(match product {
        Some(body) => ([(CONTENT_TYPE, JSON.clone()), x_cache], body).into_response(),
        None => ([x_cache], ApiError::NotFound("no such product")).into_response(),
    })
}

/// `GET /products?page=&limit=`: 200 page, with `x-cache`.
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
pub async fn create(
    State(s): State<AppState>,
    Body(body): Body<CreateProduct>,
) -> Result<Response, ApiError> {
    let p = s.catalog.create(body.validate()?).await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

/// `PUT /products/{id}`: 200 Product, 400, 404.
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
pub async fn delete(State(s): State<AppState>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    if s.catalog.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no such product"))
    }
}
