//! The settings of the cluster store.

use crate::store::redact;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach a Redis Cluster.
///
/// ```
/// let config = aside::store::ClusterConfig::new(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
/// assert_eq!(config.urls.len(), 2);
/// ```
#[derive(Clone)]
pub struct ClusterConfig {
    /// Some nodes of the cluster (`redis://[user:password@]host:port`, or `rediss://` for
    /// TLS); the others are discovered. Credentials and TLS are taken from the first.
    pub urls: Vec<String>,
    /// Upper bound of every call, from sending to reply, connecting included (default 250 ms).
    pub command_timeout: Duration,
    /// Upper bound of one connection attempt to one node (default 1 s).
    pub connect_timeout: Duration,
    /// A PEM file of the CA (or CAs) to trust for `rediss://` URLs instead of the system's
    /// roots (default none).
    pub tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl ClusterConfig {
    /// A configuration with the default timeouts.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            tls_ca_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_debug_output() {
        let c = ClusterConfig::new(["redis://u:secret@h:1", "redis://u:secret@h:2"]);
        assert!(!format!("{c:?}").contains("secret"));
    }
}
