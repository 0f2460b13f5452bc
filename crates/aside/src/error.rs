//! Typed errors. A backend failure is never flattened into a miss: `get` and `set` say when
//! the store could not be reached, `get_or_load` falls back to its loader instead.

use std::sync::Arc;
use std::time::Duration;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a cache call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key, tag or prefix is empty or too long.
    #[error("invalid {what}: it {reason}")]
    InvalidKey {
        /// `key`, `tag` or `prefix`.
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A prefix for `invalidate_prefix` must end with `:` and have at most 4 segments.
    #[error("invalid prefix {0:?}: it must end with ':' and have at most 4 ':'-separated segments")]
    InvalidPrefix(String),
    /// A namespace must be 1 to 64 characters of `[A-Za-z0-9_.-]`.
    #[error("invalid namespace {0:?}: use 1 to 64 characters of [A-Za-z0-9_.-]")]
    InvalidNamespace(String),
    /// A TTL of zero or of more than a year.
    #[error("invalid ttl {0:?}: it must be between 1 ms and 365 days")]
    InvalidTtl(Duration),
    /// The value could not be encoded.
    #[error("could not encode the value")]
    Encode(#[source] crate::codec::CodecError),
    /// The store could not be reached (timeout, connection refused, circuit open, ...).
    #[error("cache backend unavailable")]
    Backend(#[source] StoreError),
}

/// The error of [`Cache::get_or_load`](crate::Cache::get_or_load): the loader's own error
/// (shared by every caller that waited on the same load, hence the `Arc`), or invalid input.
/// Backend failures never appear here: the loader runs instead.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    /// The loader failed.
    #[error("loader failed")]
    Loader(#[source] Arc<E>),
    /// The key, tags or TTL were refused before anything ran.
    #[error(transparent)]
    Cache(#[from] Error),
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what this is.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            LoadError::Loader(e) => Some(e),
            LoadError::Cache(_) => None,
        }
    }
}

/// A store failure. Cheap to clone; ask it what happened.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not answer within the command timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open: the store was not called.
    #[error("circuit open: the store failed repeatedly and is skipped for now")]
    CircuitOpen,
    /// The store answered with an error or the connection failed.
    #[error("{0}")]
    Backend(Arc<dyn std::error::Error + Send + Sync>),
    /// The store answered something the engine does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether the call timed out (a paused or overloaded server looks like this).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Timeout(_))
    }

    /// Whether the call was skipped because the circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, StoreError::CircuitOpen)
    }
}

/// Why [`CacheBuilder::build`](crate::CacheBuilder::build) refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The builder method.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace is not valid.
    #[error(transparent)]
    Namespace(Error),
    /// The Redis URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("invalid redis url: {0}")]
    RedisUrl(String),
    /// The thread that bounds store calls could not be started (the OS refused a thread).
    #[error("cannot start the store-call deadline thread")]
    DeadlineThread(#[source] std::io::Error),
}
