//! Extractors whose rejections are [`ApiError`]s, so that every malformed request gets the
//! API's Error body instead of axum's plain-text one.

use crate::error::ApiError;
use crate::model::Id;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON body (`content-type: application/json`); its size was bounded by
/// [`Guard`](crate::server::Guard) before.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(r) => Err(match r {
                JsonRejection::JsonDataError(e) => ApiError::invalid("invalid_body", e.body_text()),
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::invalid("invalid_json", e.body_text())
                }
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                r => ApiError::invalid("invalid_body", r.body_text()),
            }),
        }
    }
}

/// The `{id}` segment of a path, validated as an [`Id`].
#[derive(Debug)]
pub struct PathId(pub Id);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("invalid_id", "the id in the path is not valid"))?;
        Ok(PathId(Id::parse(&raw)?))
    }
}
