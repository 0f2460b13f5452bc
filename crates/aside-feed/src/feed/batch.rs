//! One batch of outbox rows turned into invalidations through the service's mapping, and
//! applied to the cache.

use super::engine::Engine;
use crate::backend::Row;
use crate::change::Plan;
use aside::Invalidation;
use aside::codec::Codec;
use std::panic::AssertUnwindSafe;
use tracing::error;

impl<C: Codec> Engine<C> {
    /// What a batch's rows invalidate. A row the mapping panics on, or one that cannot be
    /// read, voids the whole namespace.
    pub(super) fn plan(&self, rows: &[Row]) -> Plan {
        let mut plan = Plan::default();
        for row in rows {
            match &row.change {
                Ok(change) => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| (self.mapping)(change))) {
                        Ok(inv) => plan.add(inv),
                        Err(_) => {
                            error!(feed = %self.config.name, table = %change.table, "the mapping panicked; invalidating the whole namespace");
                            plan.everything();
                        }
                    }
                }
                Err(why) => {
                    error!(feed = %self.config.name, id = row.id, reason = %why, "unreadable outbox row; invalidating the whole namespace");
                    plan.everything();
                }
            }
        }
        plan
    }

    /// Applies one batch's invalidations. A key, tag or prefix the cache refuses makes it void
    /// the whole namespace instead: never a stale entry because a mapping made a bad key.
    pub(super) async fn apply(&self, mut plan: Plan) -> Invalidation {
        if plan.is_empty() {
            return Invalidation::Applied;
        }
        if !plan.all {
            plan.compact();
            if let Err(why) = self.check(&plan) {
                error!(feed = %self.config.name, error = %why, "the mapping gave an invalidation the cache refuses; invalidating the whole namespace");
                plan.everything();
            }
        }
        if plan.all {
            return self.cache.invalidate_all().await;
        }
        let mut outcome = Invalidation::Applied;
        let mut note = |r: aside::Result<Invalidation>| match r {
            Ok(Invalidation::Applied) => true,
            Ok(Invalidation::Queued) => {
                outcome = Invalidation::Queued;
                true
            }
            Err(_) => false,
        };
        let mut ok = note(self.cache.del(&plan.keys).await);
        if !plan.tags.is_empty() {
            ok &= note(self.cache.invalidate_tags(&plan.tags).await);
        }
        for p in &plan.prefixes {
            ok &= note(self.cache.invalidate_prefix(p).await);
        }
        if !ok {
            return self.cache.invalidate_all().await;
        }
        outcome
    }

    fn check(&self, plan: &Plan) -> aside::Result<()> {
        let ns = aside::key::Namespace::new(self.cache.namespace())?;
        for k in &plan.keys {
            ns.entry(k)?;
        }
        for t in &plan.tags {
            ns.tag(t)?;
        }
        for p in &plan.prefixes {
            ns.prefix(p)?;
        }
        Ok(())
    }
}
