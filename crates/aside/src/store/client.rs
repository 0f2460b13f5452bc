//! What the Redis stores (standalone, cluster, and the L1's channel) share about talking to
//! Redis: opening a client, the connection manager's settings, bounding a call, mapping
//! errors, and keeping passwords out of what is shown.
//!
//! Every call is bounded by the store's command timeout through [`bounded`], whatever the
//! state of the TCP connection (a paused server never answers; the timeout decides). The
//! bound is enforced by the process-wide watchdog of [`crate::deadline`] rather than a timer
//! per call.

use crate::error::{BuildError, StoreError};
use metrics::{Counter, counter};
use redis::aio::ConnectionManager;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{Client, IntoConnectionInfo, TlsCertificates, Value};
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tracing::warn;

/// Hides the passwords of a connection URL (Redis, PostgreSQL, or any other), for logs and
/// errors: the password of its userinfo (`redis://user:***@host:6379`), and the value of
/// every `password`, `passwd`, `pwd` or `sslpassword` parameter, whatever its case
/// (`postgres://u@h/db?password=***`).
///
/// Passwords are often pasted into URLs without percent-encoding, so a password may hold
/// `/`, `@`, `:`, `?` or `#`: the userinfo is taken to end at the *last* `@` of the URL, and
/// everything after its first `:` up to there is hidden. A URL whose query holds an `@`
/// may so lose more than its password (its port, path, query), never less.
///
/// ```
/// use aside::store::redact;
/// assert_eq!(redact("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
/// assert_eq!(redact("redis://:p@ss/w:rd@h"), "redis://:***@h");
/// assert_eq!(redact("postgres://u@h/db?sslmode=require&Password=x"), "postgres://u@h/db?sslmode=require&Password=***");
/// ```
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 3);
    match url.find("://").map(|s| s + 3) {
        Some(start) => match url[start..].rfind('@').map(|at| start + at) {
            Some(at) => {
                let userinfo = &url[start..at];
                out.push_str(&url[..start]);
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        },
        None => out.push_str(url),
    }
    redact_parameters(&out)
}

/// Parameter names whose values are passwords, lowercase.
const SECRET_PARAMETERS: [&str; 4] = ["password", "passwd", "pwd", "sslpassword"];

/// `s` with the value of every secret parameter (a name of [`SECRET_PARAMETERS`] in any case,
/// at the start or after `?`, `&`, `;` or whitespace, then `=`) hidden up to the next `&` or
/// `#` (or the end).
fn redact_parameters(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(eq) = s[i..].find('=').map(|e| i + e) {
        let name_start = s[..eq]
            .rfind(|c: char| matches!(c, '?' | '&' | ';') || c.is_whitespace())
            .map_or(0, |b| b + 1);
        let name = &s[name_start..eq];
        let value_end = s[eq + 1..].find(['&', '#']).map_or(s.len(), |e| eq + 1 + e);
        if SECRET_PARAMETERS
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p))
            && value_end > eq + 1
        {
            out.push_str(&s[copied..=eq]);
            out.push_str("***");
            copied = value_end;
            i = value_end;
        } else {
            i = eq + 1;
        }
        if i >= bytes.len() {
            break;
        }
    }
    out.push_str(&s[copied..]);
    out
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

/// The certificates to trust for TLS, read from `ca_file` (PEM: the CA, or CAs, that
/// signed the servers' certificates); `None` without a file (the system's roots are trusted).
pub(crate) fn tls_certificates(
    ca_file: Option<&Path>,
) -> Result<Option<TlsCertificates>, BuildError> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| BuildError::Invalid {
        name: "tls_ca_file",
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Refuses a CA file for URLs that are not all `rediss://`: it would be silently unused.
pub(crate) fn check_tls(urls: &[String], ca_file: Option<&Path>) -> Result<(), BuildError> {
    if ca_file.is_some() && urls.iter().any(|u| !u.starts_with("rediss:")) {
        return Err(BuildError::Invalid {
            name: "tls_ca_file",
            reason: "a CA file needs rediss:// URLs (TLS)".into(),
        });
    }
    Ok(())
}

/// A client for `url` (TLS with `rediss://`, trusting the CA of `ca_file` if given, else the
/// system's roots), without connecting.
pub(crate) fn open(url: &str, ca_file: Option<&Path>) -> Result<Client, BuildError> {
    let urls = [url.to_owned()];
    check_tls(&urls, ca_file)?;
    if url.starts_with("rediss:") {
        install_tls_provider();
    }
    let info = url
        .into_connection_info()
        .map_err(|e| url_error(&e, &urls))?;
    let tcp = with_keepalive(info.tcp_settings().clone());
    let info = info.set_tcp_settings(tcp);
    match tls_certificates(ca_file)? {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
    .map_err(|e| url_error(&e, &urls))
}

/// How long a connection may be idle before the kernel probes the peer, then the time
/// between probes: a peer gone without a reset (a host switched off, a path that drops
/// everything) is found within about [`KEEPALIVE_IDLE`] + 3 × [`KEEPALIVE_INTERVAL`], even
/// on a connection nothing is sent on, instead of never.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long data sent on a connection may stay unacknowledged before the kernel gives the
/// connection up (Linux's `TCP_USER_TIMEOUT`; its default is the retransmission limit, about
/// 15 minutes).
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// `tcp` with keepalive probes and, on Linux, a user timeout (see [`KEEPALIVE_IDLE`]).
pub(crate) fn with_keepalive(tcp: TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let (keepalive, tcp) = (
        keepalive.with_retries(3),
        tcp.set_user_timeout(TCP_USER_TIMEOUT),
    );
    tcp.set_keepalive(keepalive)
}

/// Consecutive timed-out calls after which a connection is taken for dead and replaced.
///
/// A connection to a host that went away without a reset never fails by itself: every call
/// on it times out, one by one, until the kernel gives up. A timeout alone proves nothing
/// (a slow command, a paused server), so one is not enough; several in a row, with no reply
/// in between, are what a dead path looks like, and a fresh connection costs only a connect.
pub(crate) const REPLACE_AFTER_TIMEOUTS: u32 = 3;

/// A connection manager that is replaced by a fresh one after [`REPLACE_AFTER_TIMEOUTS`]
/// consecutive timeouts (see there). Cheap to share; [`Link::get`] is a clone of the current
/// manager.
pub(crate) struct Link {
    client: Client,
    connect_timeout: Duration,
    current: RwLock<ConnectionManager>,
    timeouts: AtomicU32,
    replaced: Counter,
}

impl Link {
    /// A link over `client`, not connected yet.
    pub(crate) fn new(client: Client, connect_timeout: Duration) -> Result<Self, BuildError> {
        let current = RwLock::new(manager(client.clone(), connect_timeout)?);
        Ok(Self {
            client,
            connect_timeout,
            current,
            timeouts: AtomicU32::new(0),
            replaced: counter!("aside_connections_replaced_total"),
        })
    }

    /// The current connection.
    pub(crate) fn get(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts the outcome of a call made on [`Link::get`]'s connection: a timeout, or
    /// anything else (an answer, an error the server or the socket reported).
    pub(crate) fn record<T>(&self, outcome: &Result<T, StoreError>) {
        if !matches!(outcome, Err(StoreError::Timeout(_))) {
            if self.timeouts.load(Ordering::Relaxed) != 0 {
                self.timeouts.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 < REPLACE_AFTER_TIMEOUTS {
            return;
        }
        self.timeouts.store(0, Ordering::Relaxed);
        match manager(self.client.clone(), self.connect_timeout) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                self.replaced.increment(1);
                warn!(
                    timeouts = REPLACE_AFTER_TIMEOUTS,
                    "redis connection replaced after consecutive timeouts"
                );
            }
            Err(e) => warn!(error = %e, "redis connection could not be replaced"),
        }
    }
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
        for (url, shown) in [
            ("redis://u:secret@h:6379/0", "redis://u:***@h:6379/0"),
            ("rediss://:secret@h", "rediss://:***@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://u@h:6379", "redis://u@h:6379"),
            ("sqlite://catalog.db", "sqlite://catalog.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("postgres://u:pa/ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
            (
                "postgres://u@h/db?password=x",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=verify-full&PWD=x&sslpassword=y#z",
                "postgres://h/db?sslmode=verify-full&PWD=***&sslpassword=***#z",
            ),
            ("postgres://h/db?passwd=a@b", "postgres://h/db?passwd=***"),
            ("host=h password=secret", "host=h password=***"),
            (
                "postgres://h/db?user_password=x",
                "postgres://h/db?user_password=x",
            ),
            ("postgres://h/db?password=", "postgres://h/db?password="),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    /// A password: a marker no URL around it holds, then anything `allowed`.
    fn password(allowed: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(allowed)
            .unwrap_or_else(|e| panic!("{e}"))
            .prop_map(|p| format!("\u{a7}{p}"))
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_userinfo_password_is_ever_shown(
            p in password(".{0,40}"),
            scheme in "(redis|rediss|postgres|postgresql)",
            user in "[a-z_]{0,8}",
            rest in "(:[0-9]{1,5})?(/[a-z0-9_]{0,8})?(\\?[a-z]{1,8}=[a-z0-9]{0,8})?",
        ) {
            let url = format!("{scheme}://{user}:{p}@host{rest}");
            let shown = redact(&url);
            prop_assert!(!shown.contains(&p), "{url} -> {shown}");
            prop_assert!(!shown.contains('\u{a7}'), "{url} -> {shown}");
        }

        #[test]
        fn no_password_parameter_is_ever_shown(
            p in password("[^&#]{0,40}"),
            name in "(?i-u)(password|passwd|pwd|sslpassword)",
            before in "([a-z]{1,8}=[a-z0-9]{0,8}&){0,2}",
            after in "(&[a-z]{1,8}=[a-z0-9]{0,8}){0,2}(#[a-z]{0,4})?",
            userinfo in "([a-z]{1,8}(:[a-z]{1,8})?@)?",
        ) {
            let url = format!("postgres://{userinfo}host:5432/db?{before}{name}={p}{after}");
            let shown = redact(&url);
            prop_assert!(!shown.contains(&p), "{url} -> {shown}");
            prop_assert!(!shown.contains('\u{a7}'), "{url} -> {shown}");
        }
    }

    #[test]
    fn connections_probe_their_peer() {
        for url in ["redis://127.0.0.1:1/", "rediss://127.0.0.1:1/"] {
            let client = open(url, None).unwrap();
            let tcp = client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}: keepalive");
            #[cfg(target_os = "linux")]
            assert_eq!(tcp.user_timeout(), Some(TCP_USER_TIMEOUT), "{url}");
        }
    }

    #[test]
    fn unusable_urls_are_refused_without_showing_passwords() {
        let e = open("redis://u:secret@h:notaport", None).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(e, BuildError::RedisUrl(_)));
    }
}
