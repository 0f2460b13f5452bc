//! What a committed row change looks like to a mapping, what a mapping answers, and how the
//! answers of one batch are merged before they reach the cache.

use serde_json::Value;
use std::collections::BTreeSet;

/// The kind of statement that changed a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// A row was inserted: [`Change::new`] holds it.
    Insert,
    /// A row was updated: [`Change::old`] and [`Change::new`] hold it before and after.
    Update,
    /// A row was deleted: [`Change::old`] holds it.
    Delete,
    /// The whole table was emptied (PostgreSQL `TRUNCATE`): neither row is known, so a
    /// mapping usually answers [`Invalidations::all`] for a table it caches.
    Truncate,
}

impl Op {
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`, as the triggers write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            _ => None,
        }
    }
}

/// One committed row change, as the triggers recorded it.
///
/// On PostgreSQL the rows are `to_jsonb(OLD)` / `to_jsonb(NEW)`: every column, with the types
/// `to_jsonb` gives them (numbers, strings, timestamps as strings, `jsonb` as is). On SQLite
/// they are `json_object(..)` of the columns named when the triggers were installed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The table's name, without its schema.
    pub table: String,
    /// What happened to the row.
    pub op: Op,
    /// The row before the change (updates and deletes).
    pub old: Option<Value>,
    /// The row after the change (inserts and updates).
    pub new: Option<Value>,
}

impl Change {
    /// A change, for tests of a mapping.
    pub fn new(table: impl Into<String>, op: Op, old: Option<Value>, new: Option<Value>) -> Self {
        Self {
            table: table.into(),
            op,
            old,
            new,
        }
    }

    /// The value of `column` in the new row, or in the old one when there is no new row.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .and_then(|row| row.get(column))
    }

    /// Whether `column` may differ between the old and the new row: `true` for an insert or
    /// a delete, for a row that does not carry the column, and when its values differ; `false`
    /// only when both rows carry it with the same value.
    ///
    /// An update that leaves the list order alone need not drop the list pages:
    /// `change.changed("created_at")` tells.
    ///
    /// ```
    /// use aside_feed::{Change, Op};
    /// use serde_json::json;
    /// let priced = Change::new(
    ///     "products",
    ///     Op::Update,
    ///     Some(json!({"id": "p1", "price": 1.5, "created_at": 7})),
    ///     Some(json!({"id": "p1", "price": 2.5, "created_at": 7})),
    /// );
    /// assert!(priced.changed("price") && !priced.changed("created_at"));
    /// assert!(priced.changed("no_such_column"));
    /// ```
    pub fn changed(&self, column: &str) -> bool {
        let (Some(old), Some(new)) = (self.old.as_ref(), self.new.as_ref()) else {
            return true;
        };
        match (old.get(column), new.get(column)) {
            (Some(a), Some(b)) => a != b,
            _ => true,
        }
    }

    /// The distinct values of `column` in the old and the new row, as text (a string as is,
    /// a number or boolean as written in JSON; `null` and absent columns are left out).
    ///
    /// An update that moves a product to another category changes what both categories list:
    /// `change.values("category_id")` gives both.
    pub fn values(&self, column: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(2);
        for row in [self.old.as_ref(), self.new.as_ref()].into_iter().flatten() {
            let text = match row.get(column) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                Some(v) => v.to_string(),
            };
            if !out.contains(&text) {
                out.push(text);
            }
        }
        out
    }
}

/// What a mapping wants invalidated for one [`Change`]. Build it with the helpers:
///
/// ```
/// use aside_feed::Invalidations;
/// let inv = Invalidations::none()
///     .key("product:p1")
///     .tag("category:c1")
///     .prefix("products:list:");
/// assert!(!inv.is_empty());
/// assert!(Invalidations::all().all);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidations {
    /// Entries to delete ([`aside::Cache::del`]).
    pub keys: Vec<String>,
    /// Tags to invalidate ([`aside::Cache::invalidate_tags`]).
    pub tags: Vec<String>,
    /// Key prefixes to invalidate ([`aside::Cache::invalidate_prefix`]; each must end with `:`).
    pub prefixes: Vec<String>,
    /// Invalidate the whole namespace ([`aside::Cache::invalidate_all`]).
    pub all: bool,
}

impl Invalidations {
    /// Nothing to invalidate (a table the service does not cache).
    pub fn none() -> Self {
        Self::default()
    }

    /// Everything in the cache's namespace.
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// Adds a key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Adds keys.
    pub fn keys<I: IntoIterator<Item = S>, S: Into<String>>(mut self, keys: I) -> Self {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Adds a key prefix (ending with `:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Whether nothing is to be invalidated.
    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty() && self.tags.is_empty() && self.prefixes.is_empty()
    }
}

/// The merged invalidations of one batch of changes: each key, tag and prefix once; nothing
/// but the namespace epoch when any change asked for everything; no key or prefix that a
/// shorter prefix of the same batch already covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) all: bool,
    pub(crate) keys: BTreeSet<String>,
    pub(crate) tags: BTreeSet<String>,
    pub(crate) prefixes: BTreeSet<String>,
}

impl Plan {
    pub(crate) fn add(&mut self, inv: Invalidations) {
        if self.all {
            return;
        }
        if inv.all {
            *self = Plan {
                all: true,
                ..Plan::default()
            };
            return;
        }
        self.keys.extend(inv.keys);
        self.tags.extend(inv.tags);
        self.prefixes.extend(inv.prefixes);
    }

    /// Asks for everything (a mapping that failed, a row that could not be read).
    pub(crate) fn everything(&mut self) {
        self.add(Invalidations::all());
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty() && self.tags.is_empty() && self.prefixes.is_empty()
    }

    /// Drops what a shorter prefix of the plan covers. An entry is stamped with the versions
    /// of all its `:`-terminated prefixes (up to the engine's depth, which every accepted
    /// prefix respects), so bumping `a:` voids `a:b` and everything under `a:b:` already.
    pub(crate) fn compact(&mut self) {
        if self.prefixes.is_empty() {
            return;
        }
        let mut kept: Vec<String> = Vec::with_capacity(self.prefixes.len());
        // Sorted order puts a prefix before every longer string that starts with it.
        for p in std::mem::take(&mut self.prefixes) {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        self.keys
            .retain(|key| !kept.iter().any(|p| key.starts_with(p.as_str())));
        self.prefixes = kept.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_names_each_key_tag_and_prefix_once() {
        let mut plan = Plan::default();
        plan.add(Invalidations::none().key("product:1").tag("category:a"));
        plan.add(
            Invalidations::none()
                .keys(["product:1", "product:2"])
                .tags(["category:a", "category:b"]),
        );
        plan.add(Invalidations::none());
        plan.compact();
        assert_eq!(
            plan.keys.iter().map(String::as_str).collect::<Vec<_>>(),
            ["product:1", "product:2"]
        );
        assert_eq!(
            plan.tags.iter().map(String::as_str).collect::<Vec<_>>(),
            ["category:a", "category:b"]
        );
        assert!(!plan.all);
    }

    #[test]
    fn a_shorter_prefix_covers_longer_ones_and_their_keys() {
        let mut plan = Plan::default();
        plan.add(
            Invalidations::none()
                .prefix("products:list:")
                .prefix("products:")
                .prefix("categories:")
                .key("products:list:7")
                .key("product:7"),
        );
        plan.compact();
        assert_eq!(
            plan.prefixes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["categories:", "products:"]
        );
        assert_eq!(
            plan.keys.iter().map(String::as_str).collect::<Vec<_>>(),
            ["product:7"],
            "product:7 does not start with products:"
        );
    }

    #[test]
    fn all_replaces_everything_else_in_the_batch() {
        let mut plan = Plan::default();
        plan.add(Invalidations::none().key("a"));
        plan.add(Invalidations::all());
        plan.add(Invalidations::none().tag("t"));
        assert!(plan.all);
        assert!(plan.keys.is_empty() && plan.tags.is_empty() && plan.prefixes.is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn values_gives_old_and_new_once_each() {
        let c = Change::new(
            "products",
            Op::Update,
            Some(json!({"id": 7, "category_id": "a", "name": null})),
            Some(json!({"id": 7, "category_id": "b", "name": "Lamp"})),
        );
        assert_eq!(c.values("id"), ["7"]);
        assert_eq!(c.values("category_id"), ["a", "b"]);
        assert_eq!(c.values("name"), ["Lamp"]);
        assert!(c.values("missing").is_empty());
        assert_eq!(c.get("category_id"), Some(&json!("b")));
        let d = Change::new("products", Op::Delete, Some(json!({"id": "x"})), None);
        assert_eq!(d.get("id"), Some(&json!("x")));
    }

    #[test]
    fn ops_round_trip_through_their_names() {
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
        assert_eq!(Op::parse("MERGE"), None);
    }
}
