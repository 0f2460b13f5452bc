//! `/categories/{id}`.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, PathId};
use crate::model::{Category, RenameCategory, check_name};
use axum::Json;
use axum::extract::State;

/// `PUT /categories/{id}` `{name}`: 200 Category, 400, 404. Every cached product of the
/// category and every list page is invalidated.
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
