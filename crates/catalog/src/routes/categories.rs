//! `/categories/{id}`.

use super::{BODY_400_DOC, UNAVAILABLE_DOC};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, PathId};
use crate::model::{Category, RenameCategory, check_name};
use crate::openapi::{ErrorBody, IdParam};
use axum::Json;
use axum::extract::State;

/// `PUT /categories/{id}` `{name}`: 200 Category, 400, 404. Every cached product of the
/// category and every list page is invalidated.
#[utoipa::path(
    put, path = "/categories/{id}", tag = "categories", operation_id = "rename_category", params(IdParam),
    request_body(content = RenameCategory, content_type = "application/json"),
    responses(
        (status = 200, description = "The category renamed", body = Category),
        (status = 400, description = BODY_400_DOC, body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_DOC, body = ErrorBody),
    )
)]
pub async fn rename(
    State(s): State<AppState>,
    PathId(id): PathId,
    Body(body): Body<RenameCategory>,
) -> Result<Json<Category>, ApiError> {
    check_name(&body.name)?;
    match s.catalog.rename_category(&id, &body.name).await? {
        Some(c) => Ok(Json(c)),
        None => Err(ApiError::NotFound("no such category")),
    }
}
