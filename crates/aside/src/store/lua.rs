//! The Lua scripts of the Redis stores, one `.lua` file each under `lua/`. Scripts that read
//! entries or versions start with `lua/prelude.lua` (lease and record checks, the freshness of
//! an envelope, version creation), so that what they share is written once.

/// The helpers shared by the scripts below.
const PRELUDE: &str = include_str!("lua/prelude.lua");

/// `body` after the prelude.
pub(crate) fn with_prelude(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// Scripts of the standalone store: each sees an entry and its stamps at once.
pub(crate) mod standalone {
    /// Placeholder, or the entry if valid; the versions of its stamps. Uses the prelude.
    pub(crate) const CLAIM: &str = include_str!("lua/claim.lua");
    /// A refresh lease on a stale entry; the versions of its stamps. Uses the prelude.
    pub(crate) const CLAIM_REFRESH: &str = include_str!("lua/claim_refresh.lua");
    /// The fenced fill. Uses the prelude.
    pub(crate) const FILL: &str = include_str!("lua/fill.lua");
    /// An unconditional write, stamped with the current versions. Uses the prelude.
    pub(crate) const SET: &str = include_str!("lua/set.lua");
    /// Gives a lease back. Also used by the cluster store.
    pub(crate) const RELEASE: &str = include_str!("lua/release.lua");
    /// Version bumps (and tag clocks). Also used by the cluster store, per slot.
    pub(crate) const BUMP: &str = include_str!("lua/bump.lua");
}

/// Scripts of the cluster store: each touches the keys of one slot only.
pub(crate) mod cluster {
    /// Placeholder unless a lease or another record is there. Uses the prelude.
    pub(crate) const CLAIM: &str = include_str!("lua/cluster/claim.lua");
    /// A refresh lease on the entry the caller saw. Uses the prelude.
    pub(crate) const CLAIM_REFRESH: &str = include_str!("lua/cluster/claim_refresh.lua");
    /// The versions of one slot's keys, created if missing. Uses the prelude.
    pub(crate) const VERSIONS: &str = include_str!("lua/cluster/versions.lua");
    /// Compare-and-set on the lease token.
    pub(crate) const FILL: &str = include_str!("lua/cluster/fill.lua");
    /// An unconditional write of a record built by the caller.
    pub(crate) const PUT: &str = include_str!("lua/cluster/put.lua");
}
