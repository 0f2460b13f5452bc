//! The OpenAPI document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they take and return; served at `GET /openapi.json` and kept
//! in the repository as `crates/catalog/openapi.json` (a test checks that the two are the
//! same).

use crate::model::{MAX_ID_LEN, MAX_LIMIT, MAX_PAGE};
use bytes::Bytes;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The document's frame: title, version, tags, and what the paths do not carry.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "catalog",
        description = "A product catalog, cached with aside. Every error is an Error body; \
                       the README documents each rule and error code.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "products", description = "Products and pages of them"),
        (name = "categories", description = "Categories"),
        (name = "ops", description = "Health, metrics and this document")
    ),
    modifiers(&Closed)
)]
pub struct ApiDoc;

/// Makes every object schema closed (`additionalProperties: false`): request bodies refuse
/// unknown fields, and responses have none.
struct Closed;

impl Modify for Closed {
    fn modify(&self, openapi: &mut Document) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(object)) = schema
                && object.additional_properties.is_none()
            {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// The `{id}` of a product or category path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdParam {
    /// 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_` and `-`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
}

/// The query of `GET /products`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The page, from 1 to 2^53 - 1; a page past the last one has no products.
    #[param(
        minimum = 1,
        maximum = 9007199254740991_u64,
        default = 1,
        nullable = false
    )]
    pub page: Option<u64>,
    /// The page size.
    #[param(minimum = 1, maximum = 100, default = 20, nullable = false)]
    pub limit: Option<u32>,
}

/// Every failure: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The content of an Error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_id`, `invalid_name`, `invalid_price`,
    /// `invalid_category_id`, `unknown_category`, `empty_update`, `invalid_body`,
    /// `invalid_json`, `invalid_query`, `invalid_page`, `invalid_limit`, `not_found`,
    /// `conflict`, `method_not_allowed`, `request_timeout`, `payload_too_large`,
    /// `unsupported_media_type`, `unavailable`, `overloaded`, `internal`.
    pub code: String,
    /// For people: what to fix (4xx), or a generic message (5xx).
    pub message: String,
}

/// The document, as served (pretty-printed JSON, with a final newline).
pub fn document() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let doc = crate::routes::api().into_openapi();
            let mut text = doc.to_pretty_json().unwrap_or_else(|e| {
                tracing::error!(error = %e, "the OpenAPI document could not be encoded");
                String::from("{}")
            });
            text.push('\n');
            Bytes::from(text)
        })
        .clone()
}

// The schemas state these bounds as literals; they must be the model's.
const _: () = assert!(MAX_PAGE == 9007199254740991 && MAX_LIMIT == 100 && MAX_ID_LEN == 64);
