//! The cluster store's scripts: each runs on the keys of one slot, with `EVALSHA`, and is
//! loaded on the node of that slot only when that node does not know it yet. (redis-rs's
//! `Script` loads a script on every node at once, so one node that does not answer would
//! keep the others from running it.)

use crate::store::lua::{cluster, standalone, with_prelude};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// A script for the keys of one slot.
pub(super) struct Lua {
    code: String,
    hash: String,
}

/// One run of a [`Lua`] script: its keys, then its arguments.
pub(super) struct Call<'a> {
    lua: &'a Lua,
    cmd: Cmd,
    route: Route,
}

impl Lua {
    fn new(code: String) -> Self {
        let hash = Script::new(&code).get_hash().to_owned();
        Self { code, hash }
    }

    fn checked(body: &str) -> Self {
        Self::new(with_prelude(body))
    }

    /// A run on `keys`, which must share a slot.
    pub(super) fn on<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Call<'_> {
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys.len()).arg(&keys);
        let first = keys.first().copied().unwrap_or_default();
        Call {
            lua: self,
            cmd,
            route: Route::with_key(first, SlotAddr::Master),
        }
    }
}

impl Call<'_> {
    pub(super) fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub(super) async fn run<T: FromRedisValue>(self, conn: &ClusterConnection) -> RedisResult<T> {
        let mut conn = conn.clone();
        match self.cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(&self.lua.code);
                let node = SingleNodeRoutingInfo::SpecificNode(self.route);
                conn.route_command(load, RoutingInfo::SingleNode(node))
                    .await?;
                self.cmd.query_async(&mut conn).await
            }
            r => r,
        }
    }
}

pub(super) struct Scripts {
    pub(super) claim: Lua,
    pub(super) claim_refresh: Lua,
    pub(super) versions: Lua,
    pub(super) fill: Lua,
    pub(super) put: Lua,
    pub(super) release: Lua,
    pub(super) bump: Lua,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Lua::checked(cluster::CLAIM),
            claim_refresh: Lua::checked(cluster::CLAIM_REFRESH),
            versions: Lua::checked(cluster::VERSIONS),
            fill: Lua::new(cluster::FILL.into()),
            put: Lua::new(cluster::PUT.into()),
            release: Lua::new(standalone::RELEASE.into()),
            bump: Lua::new(standalone::BUMP.into()),
        }
    }
}

/// The indices of `keys` grouped by hash slot, in order of first appearance.
pub(super) fn by_slot(keys: &[&str]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let slot = Slot::for_key(k);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_by_slot_in_order() {
        let keys = ["a:t:x", "{a}:1", "a:t:y", "{a}:2"];
        let groups = by_slot(&keys);
        assert!(groups.contains(&vec![1, 3]), "{groups:?}");
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 4);
        assert_eq!(groups[0][0], 0);
    }
}
