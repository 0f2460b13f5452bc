//! Extractors whose rejections are [`ApiError`]s, so that every malformed request gets the
//! API's Error body instead of axum's plain-text one.
//!
//! Bodies are read as a JSON object and then field by field ([`FromBody`]), so that every
//! message is the API's own (which field, what it must be) and none is serde's, which would
//! show Rust type names and positions in the body, and so that nothing but an object is a
//! body: serde would also take a struct from an array, by position.

use crate::error::ApiError;
use crate::model::{Id, Invalid};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// A body that can be read from a JSON object's fields.
pub trait FromBody: Sized {
    /// Reads the value from `fields`; every field must be used or refused
    /// ([`Fields::finish`]).
    fn from_fields(fields: Fields) -> Result<Self, Invalid>;
}

/// A JSON body (`content-type: application/json`, or another `application/*+json`) that is
/// an object; its size was bounded by [`Guard`](crate::server::Guard) before.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: FromBody,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::invalid("invalid_body", "the request body could not be read"))?;
        let fields = Fields::parse(&bytes)?;
        Ok(Body(T::from_fields(fields)?))
    }
}

/// `application/json`, or `application/<anything>+json`, with or without parameters.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json")))
}

/// The members of a JSON object body, each to be taken once by name.
#[derive(Debug)]
pub struct Fields {
    members: Vec<(String, Value)>,
    allowed: &'static [&'static str],
}

impl Fields {
    /// Parses `body` as one JSON object whose names are all different.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let Members(members) = serde_json::from_slice(body).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                not_an_object()
            } else if body.iter().all(u8::is_ascii_whitespace) {
                Invalid {
                    code: "invalid_json",
                    message: "the body is empty: send a JSON object".into(),
                }
            } else {
                Invalid {
                    code: "invalid_json",
                    message: "the body is not valid JSON (one JSON object, UTF-8)".into(),
                }
            }
        })?;
        for (i, (name, _)) in members.iter().enumerate() {
            if members[..i].iter().any(|(n, _)| n == name) {
                return Err(body_error(format!(
                    "the field {} is given twice",
                    shown(name)
                )));
            }
        }
        Ok(Self {
            members,
            allowed: &[],
        })
    }

    /// Declares the fields this body may have (for [`Fields::finish`]'s message) and refuses
    /// any other at once.
    pub fn allow(mut self, allowed: &'static [&'static str]) -> Result<Self, Invalid> {
        self.allowed = allowed;
        match self
            .members
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            Some((name, _)) => Err(body_error(format!(
                "unknown field {}: the fields are {}",
                shown(name),
                allowed.join(", ")
            ))),
            None => Ok(self),
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.members.iter().position(|(n, _)| n == name)?;
        Some(self.members.swap_remove(i).1)
    }

    /// The string field `name`, if given; `null` or another type is refused.
    pub fn string(&mut self, name: &'static str) -> Result<Option<String>, Invalid> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(name, "a string", &other)),
        }
    }

    /// The number field `name`, if given; `null` or another type is refused.
    pub fn number(&mut self, name: &'static str) -> Result<Option<f64>, Invalid> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(wrong_type(name, "a number", &Value::Number(n))),
            },
            Some(other) => Err(wrong_type(name, "a number", &other)),
        }
    }

    /// `value` of the field `name`, which must be given.
    pub fn required<T>(value: Option<T>, name: &'static str) -> Result<T, Invalid> {
        value.ok_or_else(|| body_error(format!("the field {name} is required")))
    }

    /// Refuses any field not taken (there is none once [`Fields::allow`] passed and every
    /// allowed field was read).
    pub fn finish(self) -> Result<(), Invalid> {
        match self.members.first() {
            Some((name, _)) => Err(body_error(format!(
                "unknown field {}: the fields are {}",
                shown(name),
                self.allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

fn body_error(message: String) -> Invalid {
    Invalid {
        code: "invalid_body",
        message,
    }
}

fn not_an_object() -> Invalid {
    body_error("the body must be a JSON object".into())
}

fn wrong_type(name: &str, expected: &str, got: &Value) -> Invalid {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    body_error(format!("the field {name} must be {expected}, not {got}"))
}

/// A field name from the body, quoted and cut short, for a message.
fn shown(name: &str) -> String {
    const MAX: usize = 40;
    match name.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &name[..end]),
        None => format!("{name:?}"),
    }
}

/// A JSON object's members in the body's order, duplicates kept (to be refused).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_with_distinct_names() {
        assert!(Fields::parse(br#"{"a":1,"b":"x"}"#).is_ok());
        for (body, code) in [
            (&br#"["x","n",1,"c1"]"#[..], "invalid_body"),
            (b"1", "invalid_body"),
            (b"\"x\"", "invalid_body"),
            (b"null", "invalid_body"),
            (br#"{"a":1,"a":2}"#, "invalid_body"),
            (b"", "invalid_json"),
            (b"{", "invalid_json"),
            (br#"{"a":1} {}"#, "invalid_json"),
        ] {
            let e = Fields::parse(body).unwrap_err();
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!with("application/+json"));
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
