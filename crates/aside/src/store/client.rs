//! What the Redis stores (standalone, cluster, and the L1's channel) share about talking to
//! Redis: opening a client, the connection manager's settings, bounding a call, mapping
//! errors, and keeping passwords out of what is shown.
//!
//! Every call is bounded by the store's command timeout through [`bounded`], whatever the
//! state of the TCP connection (a paused server never answers; the timeout decides). The
//! bound is enforced by the process-wide watchdog of [`crate::deadline`] rather than a timer
//! per call.

use crate::error::{BuildError, StoreError};
use redis::aio::ConnectionManager;
use redis::{Client, Value};
use std::sync::Arc;
use std::time::Duration;

/// Hides the password of a connection URL: `redis://user:***@host:6379`.
///
/// ```
/// assert_eq!(aside::store::redact("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
/// ```
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            let user = cred.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A redis-rs error about `urls` as a build error, with their passwords hidden.
pub(crate) fn url_error(e: &redis::RedisError, urls: &[String]) -> BuildError {
    let mut msg = e.to_string();
    for url in urls {
        msg = msg.replace(url.as_str(), &redact(url));
    }
    BuildError::RedisUrl(msg)
}

/// rustls needs a process-wide crypto provider; installs ring's unless one is set.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for `url` (TLS with `rediss://`), without connecting.
pub(crate) fn open(url: &str) -> Result<Client, BuildError> {
    if url.starts_with("rediss:") {
        install_tls_provider();
    }
    Client::open(url).map_err(|e| url_error(&e, &[url.to_owned()]))
}

/// A connection manager on `client` that connects on first use and reconnects by itself.
pub(crate) fn manager(
    client: Client,
    connect_timeout: Duration,
) -> Result<ConnectionManager, BuildError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        // The store's own bound covers every call (connecting included); a second,
        // per-request timer inside redis-rs would only cost a timer registration per call.
        .set_response_timeout(None)
        .set_connection_timeout(Some(connect_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| BuildError::RedisUrl(e.to_string()))
}

/// An error a bounded call can end with.
pub(crate) trait CallError {
    /// As a store error, for a call bounded by `timeout`.
    fn into_store_error(self, timeout: Duration) -> StoreError;
}

impl CallError for redis::RedisError {
    fn into_store_error(self, timeout: Duration) -> StoreError {
        backend_error(self, timeout)
    }
}

impl CallError for StoreError {
    fn into_store_error(self, _: Duration) -> StoreError {
        self
    }
}

/// A call bounded by `timeout`, whatever the state of its connection.
pub(crate) async fn bounded<T, E: CallError>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match crate::deadline::within(timeout, fut).await {
        Ok(r) => r.map_err(|e| e.into_store_error(timeout)),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// A Redis error as a store error: a timeout inside redis-rs is a timeout like ours.
pub(crate) fn backend_error(e: redis::RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout(timeout)
    } else {
        StoreError::Backend(Arc::new(e))
    }
}

/// A duration in whole milliseconds for `PX`, at least 1.
pub(crate) fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// An integer reply, or a decimal string reply.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn unusable_urls_are_refused_without_showing_passwords() {
        let e = open("redis://u:secret@h:notaport").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(e, BuildError::RedisUrl(_)));
    }
}
