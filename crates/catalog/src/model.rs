//! The catalog's data: what the API returns and what it accepts, with the validation rules of
//! the HTTP contract (see the README) in one place.

use crate::extract::{Fields, FromBody};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// Longest id, in characters.
pub const MAX_ID_LEN: usize = 64;
/// Longest product or category name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Largest page size of `GET /products`.
pub const MAX_LIMIT: u32 = 100;
/// Page size of `GET /products` when none is given.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest page number of `GET /products`: 2^53 - 1, the largest whole number every JSON
/// client can send exactly (a double's integer range).
pub const MAX_PAGE: u64 = (1 << 53) - 1;

/// A product, with its category, as the API returns it (and as it is cached).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its price: finite, at least 0.
    pub price: f64,
    /// The id of its category.
    pub category_id: String,
    /// Its category.
    pub category: Category,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

/// A category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Category {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// One page of `GET /products`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductPage {
    /// The products of this page (empty past the last page).
    pub products: Vec<Product>,
    /// How many products there are in all.
    pub total: u64,
    /// This page's number, from 1 to [`MAX_PAGE`].
    pub page: u64,
    /// The page size.
    pub limit: u32,
    /// How many pages of `limit` products there are.
    pub total_pages: u64,
}

/// A product or category id: 1 to 64 characters of `[A-Za-z0-9_-]`.
///
/// Ids become parts of cache keys (`product:{id}`), so nothing that could act as a separator
/// or a pattern gets through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Validates an id.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::new(
                "invalid_id",
                "an id is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
            ))
        }
    }

    /// A fresh random id for a product created without one (`prd-` and 16 hex digits, so it
    /// can never be one of the seeded `p1`..`pN`).
    pub fn generate() -> Self {
        Self(format!("prd-{:016x}", rand::random::<u64>()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an input was refused: a machine-readable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Machine-readable, e.g. `invalid_id`.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl Invalid {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Validates a product or category name: 1 to 200 characters, no control characters.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_LEN {
        return Err(Invalid::new(
            "invalid_name",
            "a name is 1 to 200 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(
            "invalid_name",
            "a name may not contain control characters",
        ));
    }
    Ok(())
}

/// Validates a price (finite, at least 0) and folds `-0` into `0`.
pub fn check_price(price: f64) -> Result<f64, Invalid> {
    if price.is_finite() && price >= 0.0 {
        Ok(price + 0.0)
    } else {
        Err(Invalid::new(
            "invalid_price",
            "a price is a finite number of at least 0",
        ))
    }
}

/// The current time at the databases' precision (microseconds), so that what a write returns
/// is exactly what later reads return.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The body of `POST /products` (`id`, `name`, `price`, `categoryId`).
// The `serde` attributes are read by `ToSchema` only: the body is read by `FromBody`.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProduct {
    /// The id (1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`); one is generated when
    /// absent.
    #[schema(
        nullable = false,
        pattern = r"^[A-Za-z0-9_-]{1,64}$",
        min_length = 1,
        max_length = 64
    )]
    pub id: Option<String>,
    /// The name: 1 to 200 characters, no control characters.
    #[schema(
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,200}$",
        min_length = 1,
        max_length = 200
    )]
    pub name: String,
    /// The price: at least 0.
    #[schema(minimum = 0.0)]
    pub price: f64,
    /// The category's id, of an existing category (else 400 `unknown_category`).
    #[schema(
        pattern = r"^[A-Za-z0-9_-]{1,64}$",
        min_length = 1,
        max_length = 64,
        example = "c3"
    )]
    pub category_id: String,
}

impl FromBody for CreateProduct {
    fn from_fields(fields: Fields) -> Result<Self, Invalid> {
        let mut f = fields.allow(&["id", "name", "price", "categoryId"])?;
        let body = Self {
            id: f.string("id")?,
            name: Fields::required(f.string("name")?, "name")?,
            price: Fields::required(f.number("price")?, "price")?,
            category_id: Fields::required(f.string("categoryId")?, "categoryId")?,
        };
        f.finish()?;
        Ok(body)
    }
}

/// The body of `PUT /products/{id}`: the fields to change (at least one). A field given as
/// `null` is refused, not read as "leave it alone".
#[derive(Debug, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateProduct {
    /// A new name: 1 to 200 characters, no control characters.
    #[schema(
        nullable = false,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,200}$",
        min_length = 1,
        max_length = 200
    )]
    pub name: Option<String>,
    /// A new price: at least 0.
    #[schema(nullable = false, minimum = 0.0)]
    pub price: Option<f64>,
    /// A new category, an existing one (else 400 `unknown_category`).
    #[schema(
        nullable = false,
        pattern = r"^[A-Za-z0-9_-]{1,64}$",
        min_length = 1,
        max_length = 64
    )]
    pub category_id: Option<String>,
}

impl FromBody for UpdateProduct {
    fn from_fields(fields: Fields) -> Result<Self, Invalid> {
        let mut f = fields.allow(&["name", "price", "categoryId"])?;
        let body = Self {
            name: f.string("name")?,
            price: f.number("price")?,
            category_id: f.string("categoryId")?,
        };
        f.finish()?;
        Ok(body)
    }
}

/// The body of `PUT /categories/{id}` (`name`).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameCategory {
    /// The new name: 1 to 200 characters, no control characters.
    #[schema(
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,200}$",
        min_length = 1,
        max_length = 200
    )]
    pub name: String,
}

impl FromBody for RenameCategory {
    fn from_fields(fields: Fields) -> Result<Self, Invalid> {
        let mut f = fields.allow(&["name"])?;
        let name = Fields::required(f.string("name")?, "name")?;
        f.finish()?;
        Ok(Self { name })
    }
}

/// A validated new product.
#[derive(Clone, Debug, PartialEq)]
pub struct NewProduct {
    /// Its id.
    pub id: Id,
    /// Its name.
    pub name: String,
    /// Its price.
    pub price: f64,
    /// Its category's id.
    pub category_id: Id,
    /// Its creation (and first update) time.
    pub created_at: DateTime<Utc>,
}

/// A validated change to a product (at least one field is set).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProductPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new price.
    pub price: Option<f64>,
    /// A new category.
    pub category_id: Option<Id>,
}

impl CreateProduct {
    /// Validates the body.
    pub fn validate(self) -> Result<NewProduct, Invalid> {
        let id = match self.id {
            Some(id) => Id::parse(&id)?,
            None => Id::generate(),
        };
        check_name(&self.name)?;
        Ok(NewProduct {
            id,
            name: self.name,
            price: check_price(self.price)?,
            category_id: parse_category(&self.category_id)?,
            created_at: now(),
        })
    }
}

impl UpdateProduct {
    /// Validates the body.
    pub fn validate(self) -> Result<ProductPatch, Invalid> {
        if self.name.is_none() && self.price.is_none() && self.category_id.is_none() {
            return Err(Invalid::new(
                "empty_update",
                "give at least one of name, price, categoryId",
            ));
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        Ok(ProductPatch {
            name: self.name,
            price: self.price.map(check_price).transpose()?,
            category_id: self
                .category_id
                .as_deref()
                .map(parse_category)
                .transpose()?,
        })
    }
}

fn parse_category(id: &str) -> Result<Id, Invalid> {
    Id::parse(id).map_err(|_| {
        Invalid::new(
            "invalid_category_id",
            "a categoryId is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
        )
    })
}

/// `page` and `limit` of `GET /products`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// The page, from 1 to [`MAX_PAGE`].
    pub page: u64,
    /// The page size, 1 to 100.
    pub limit: u32,
}

impl PageRequest {
    /// Reads `page` and `limit` from a query string (both optional; other parameters are
    /// ignored). A parameter given twice, empty, or not a number in range is refused.
    pub fn from_query(query: Option<&str>) -> Result<Self, Invalid> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| Invalid::new("invalid_query", "the query string is malformed"))?;
        let mut page = None;
        let mut limit = None;
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "page" => &mut page,
                "limit" => &mut limit,
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err(Invalid::new(
                    "invalid_query",
                    format!("'{k}' is given more than once"),
                ));
            }
        }
        let page = match page {
            None => 1,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|p| (1..=MAX_PAGE).contains(p))
                .ok_or_else(|| {
                    Invalid::new(
                        "invalid_page",
                        "page is a whole number from 1 to 9007199254740991 (2^53 - 1)",
                    )
                })?,
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    Invalid::new("invalid_limit", "limit is a whole number from 1 to 100")
                })?,
        };
        Ok(Self { page, limit })
    }

    /// How many products come before this page. At most (2^53 - 2) * 100, well within the
    /// databases' 64-bit signed `OFFSET`; saturating all the same, for a request built by
    /// hand past [`MAX_PAGE`].
    pub fn offset(self) -> u64 {
        self.page
            .saturating_sub(1)
            .saturating_mul(u64::from(self.limit))
    }
}

/// How many pages of `limit` products `total` makes.
pub fn total_pages(total: u64, limit: u32) -> u64 {
    total.div_ceil(u64::from(limit.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["p1", "a", "A-z_0", &"x".repeat(64)] {
            assert!(Id::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "p 1",
            "p*",
            "p:1",
            "p/1",
            "a{b}",
            "é",
            "p1\n",
            &"x".repeat(65),
        ] {
            assert!(Id::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Id::parse(Id::generate().as_str()).is_ok());
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(check_name(&"é".repeat(200)).is_ok());
        assert!(check_name(&"é".repeat(201)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a\u{0}b").is_err());
    }

    #[test]
    fn prices() {
        assert_eq!(check_price(-0.0).map(f64::to_bits), Ok(0.0f64.to_bits()));
        assert!(check_price(-0.01).is_err());
        assert!(check_price(f64::NAN).is_err());
        assert!(check_price(f64::INFINITY).is_err());
    }

    #[test]
    fn page_requests() {
        let p = |q| PageRequest::from_query(Some(q));
        assert_eq!(
            PageRequest::from_query(None),
            Ok(PageRequest { page: 1, limit: 20 })
        );
        assert_eq!(
            p("page=3&limit=100&x=1"),
            Ok(PageRequest {
                page: 3,
                limit: 100
            })
        );
        for bad in [
            "page=0",
            "page=-1",
            "page=",
            "page=a",
            "page=1.5",
            "limit=0",
            "limit=101",
            "page=1&page=2",
            "page=9007199254740992",
            "page=18446744073709551616",
            "limit=%ZZ",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(PageRequest { page: 3, limit: 20 }.offset(), 40);
        let last = p("page=9007199254740991&limit=100");
        assert_eq!(
            last,
            Ok(PageRequest {
                page: MAX_PAGE,
                limit: 100
            })
        );
        assert_eq!(last.map(PageRequest::offset), Ok((MAX_PAGE - 1) * 100));
        assert!((MAX_PAGE - 1) * 100 < i64::MAX as u64);
        assert_eq!(p("page=4294967296&limit=1").map(|r| r.page), Ok(1 << 32));
        let past = PageRequest {
            page: u64::MAX,
            limit: 100,
        };
        assert_eq!(past.offset(), u64::MAX, "saturates");
        assert_eq!(total_pages(0, 20), 0);
        assert_eq!(total_pages(1000, 20), 50);
        assert_eq!(total_pages(1001, 20), 51);
    }
}
