//! The catalog's change feed: which cache entries each committed row change voids, whoever
//! made it (this service, another instance, a `psql` session, a migration, another service).
//!
//! The tables `products` and `categories` carry triggers that write every change to an
//! outbox in the changing transaction; every instance runs an [`aside_feed::Feed`] that reads
//! it and applies [`invalidations`] to its cache (see `aside-feed` for how nothing is skipped
//! and the position survives restarts). The catalog's own writes also invalidate directly,
//! before they are acknowledged: the feed is what makes changes made *elsewhere* visible, and
//! what finishes the job when an instance died right after its commit or could not reach
//! Redis at the time.
//!
//! | change | invalidates |
//! | --- | --- |
//! | a product inserted or deleted | the key `product:{id}`, the prefix `products:list:` |
//! | a product updated | the key `product:{id}` (old and new id); the prefix `products:list:` too if its `created_at` or its id changed (the list's order) |
//! | a category inserted, updated or deleted | the tag `category:{id}` (list pages hold product ids only) |
//! | a table truncated | the whole namespace |
//!
//! The outbox rows carry the whole old and new rows (PostgreSQL's `to_jsonb(OLD)` and
//! `to_jsonb(NEW)`; on SQLite every column, named by `install_all_columns`), so whether
//! `created_at` changed is read from them; a row without it counts as changed.

use crate::checker::Checker;
use crate::service::LIST_PREFIX;
use aside_feed::{Change, Invalidations, Op};
use std::sync::Arc;

/// The function a feed applies to each change: [`invalidations`], and on the way telling the
/// consistency checker (if there is one) what changed.
pub type Mapping = Arc<dyn Fn(&Change) -> Invalidations + Send + Sync>;

/// The catalog's [`Mapping`]: [`invalidations`], each key and tag it voids also recorded as
/// changed by `checker`.
pub fn mapping(checker: Option<Arc<Checker>>) -> Mapping {
    Arc::new(move |change| {
        let voids = invalidations(change);
        if let Some(checker) = &checker {
            if voids.all {
                checker.changed_everything();
            }
            voids
                .keys
                .iter()
                .chain(&voids.tags)
                .for_each(|k| checker.changed(k));
        }
        voids
    })
}

/// The feed's name: the key of its durable position in the database. Every instance of the
/// catalog shares it.
pub const NAME: &str = "catalog";

/// The tables the feed watches.
pub const TABLES: &[&str] = &["products", "categories"];

/// What a committed change voids (see the module docs).
pub fn invalidations(change: &Change) -> Invalidations {
    if change.op == Op::Truncate {
        return Invalidations::all();
    }
    match change.table.as_str() {
        "products" => {
            let keys = Invalidations::none()
                .keys(change.values("id").iter().map(|id| format!("product:{id}")));
            // An update that keeps the list's order (and ids) leaves the pages: they hold ids.
            let reordered =
                change.op != Op::Update || change.changed("created_at") || change.changed("id");
            if reordered {
                keys.prefix(LIST_PREFIX)
            } else {
                keys
            }
        }
        "categories" => Invalidations::none().tags(
            change
                .values("id")
                .iter()
                .map(|id| format!("category:{id}")),
        ),
        _ => Invalidations::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_change_voids_what_depends_on_it() {
        let row = |category: &str, created: i64| json!({"id": "p1", "category_id": category, "price": 1.5, "created_at": created});
        let moved = Change::new(
            "products",
            Op::Update,
            Some(row("c1", 7)),
            Some(row("c2", 7)),
        );
        let i = invalidations(&moved);
        assert_eq!(i.keys, vec!["product:p1".to_owned()]);
        assert!(i.prefixes.is_empty(), "the list's order did not change");
        let reordered = Change::new(
            "products",
            Op::Update,
            Some(row("c1", 7)),
            Some(row("c1", 8)),
        );
        assert_eq!(
            invalidations(&reordered).prefixes,
            vec![LIST_PREFIX.to_owned()]
        );
        let renamed_id = Change::new(
            "products",
            Op::Update,
            Some(json!({"id": "p1", "created_at": 7})),
            Some(json!({"id": "p2", "created_at": 7})),
        );
        let i = invalidations(&renamed_id);
        assert_eq!(
            i.keys,
            vec!["product:p1".to_owned(), "product:p2".to_owned()]
        );
        assert_eq!(i.prefixes, vec![LIST_PREFIX.to_owned()]);
        let unknown = Change::new(
            "products",
            Op::Update,
            Some(json!({"id": "p1"})),
            Some(json!({"id": "p1"})),
        );
        assert_eq!(
            invalidations(&unknown).prefixes,
            vec![LIST_PREFIX.to_owned()],
            "rows without created_at: the pages go too"
        );
        let inserted = Change::new("products", Op::Insert, None, Some(json!({"id": "p9"})));
        assert_eq!(invalidations(&inserted).keys, vec!["product:p9".to_owned()]);
        assert_eq!(
            invalidations(&inserted).prefixes,
            vec![LIST_PREFIX.to_owned()]
        );
        let deleted = Change::new("products", Op::Delete, Some(row("c1", 7)), None);
        assert_eq!(
            invalidations(&deleted).prefixes,
            vec![LIST_PREFIX.to_owned()]
        );
        let renamed = Change::new(
            "categories",
            Op::Update,
            Some(json!({"id": "c3", "name": "Old"})),
            Some(json!({"id": "c3", "name": "New"})),
        );
        let i = invalidations(&renamed);
        assert_eq!(i.tags, vec!["category:c3".to_owned()]);
        assert!(i.prefixes.is_empty(), "list pages hold ids only");
        assert!(invalidations(&Change::new("products", Op::Truncate, None, None)).all);
        assert!(invalidations(&Change::new("other", Op::Insert, None, None)).is_empty());
    }
}
