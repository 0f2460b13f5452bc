//! HTTP/1.1 keep-alive connections to a target, with raw hyper.
//!
//! Each load task owns one [`Conn`]: one TCP connection, requests sent one after another
//! (no pipelining, like a browser or a connection pool slot). Nothing is shared between
//! connections, and the paths of every request are built once before the run.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::CacheStatus;

/// A service under load: a name for reports and where it listens.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name in reports (`catalog-redis`, `seed`, ...).
    pub name: String,
    /// The base URL as given (`http://127.0.0.1:8080`).
    pub url: String,
    /// `host:port` to connect to.
    addr: String,
    host: HeaderValue,
}

impl Target {
    /// Parses `NAME=URL` or a bare `URL` (then named after its `host:port`). Only `http://`
    /// URLs without a path are accepted: the tool appends `/products...` itself.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, url) = match spec.split_once('=') {
            Some((name, url)) if !name.contains("://") => (Some(name.trim()), url.trim()),
            _ => (None, spec.trim()),
        };
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url:?}: only http:// targets are supported");
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            bail!("{url:?}: give the service's base URL, without a path");
        }
        let authority = uri.authority().context("URL has no host")?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let addr = format!("{host}:{port}");
        let name = match name {
            Some("") => bail!("{spec:?}: empty target name"),
            Some(n) => n.to_owned(),
            None => addr.clone(),
        };
        Ok(Target {
            name,
            url: url.trim_end_matches('/').to_owned(),
            host: HeaderValue::from_str(authority.as_str())?,
            addr,
        })
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> Result<Conn> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        // Requests are small and latency-bound: do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            closed: false,
            sender,
            driver: Box::pin(driver),
            host: self.host.clone(),
        })
    }

    /// One `GET path` on a fresh connection, with the whole body (for `/metrics` and
    /// `/stats`). Fails after 10 seconds.
    pub async fn fetch(&self, path: &str) -> Result<(u16, Bytes)> {
        let work = async {
            let mut conn = self.connect().await?;
            let uri: Uri = path.parse()?;
            let req = conn.request(Method::GET, uri, None)?;
            let Conn { sender, driver, .. } = &mut conn;
            let exchange = async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            };
            drive(driver, exchange).await.0
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .with_context(|| format!("GET {}{path} timed out", self.url))?
            .with_context(|| format!("GET {}{path}", self.url))
    }
}

/// One HTTP/1.1 keep-alive connection.
///
/// hyper splits a client connection into a request handle and a driver future that does
/// the socket I/O. The driver is not spawned as a task of its own: each exchange polls it
/// together with the request in the caller's task, which saves two task wake-ups and a
/// channel hop per request (a load generator competes with the server for the CPU).
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Driver>>,
    host: HeaderValue,
    /// The driver has finished: the server closed the connection (`connection: close`).
    closed: bool,
}

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Runs `exchange` while polling the connection's driver in the same task. The flag says
/// whether the driver has finished (the connection is closed; it must not be polled again).
async fn drive<T>(
    driver: &mut Pin<Box<Driver>>,
    exchange: impl Future<Output = Result<T>>,
) -> (Result<T>, bool) {
    tokio::pin!(exchange);
    tokio::select! {
        biased;
        done = &mut exchange => (done, false),
        ended = driver.as_mut() => match ended {
            // A clean close (`connection: close`) after the whole response was read: the
            // response is already handed over, so the exchange completes without the driver.
            Ok(()) => (exchange.await, true),
            Err(e) => (Err(e.into()), true),
        },
    }
}

/// What the load loop needs from a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status code.
    pub status: u16,
    /// The `x-cache` header.
    pub cache: CacheStatus,
}

impl Conn {
    fn request(
        &self,
        method: Method,
        uri: Uri,
        json: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.host.clone());
        if json.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(builder.body(Full::new(json.unwrap_or_default()))?)
    }

    /// Sends one request and reads its response to the end. The body is drained frame by
    /// frame, never collected.
    pub async fn send(&mut self, method: Method, uri: Uri, json: Option<Bytes>) -> Result<Outcome> {
        self.exchange(method, uri, json, false)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// Sends one request and returns its response with the whole body (for a caller that
    /// looks inside responses, such as the consistency checker).
    pub async fn send_collect(
        &mut self,
        method: Method,
        uri: Uri,
        json: Option<Bytes>,
    ) -> Result<(Outcome, Bytes)> {
        self.exchange(method, uri, json, true).await
    }

    /// One exchange; the body is collected when `keep_body` is set, else drained and an
    /// empty body returned.
    async fn exchange(
        &mut self,
        method: Method,
        uri: Uri,
        json: Option<Bytes>,
        keep_body: bool,
    ) -> Result<(Outcome, Bytes)> {
        let req = self.request(method, uri, json)?;
        let sender = &mut self.sender;
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let cache = resp.headers().get("x-cache").map(HeaderValue::as_bytes);
            let cache = CacheStatus::from_header(cache);
            let mut body = resp.into_body();
            let outcome = Outcome { status, cache };
            if keep_body {
                return anyhow::Ok((outcome, body.collect().await?.to_bytes()));
            }
            while let Some(frame) = body.frame().await {
                frame?;
            }
            anyhow::Ok((outcome, Bytes::new()))
        };
        let (outcome, finished) = drive(&mut self.driver, exchange).await;
        // Give the driver one more turn (it does not block): a server that answered with
        // `connection: close` has closed it by now, and the next request must not be sent
        // into a dead connection and counted as an error. A driver that has finished, or
        // failed, must not be polled again.
        if finished || outcome.is_err() {
            self.closed = true;
        } else {
            let driver = &mut self.driver;
            self.closed =
                std::future::poll_fn(|cx| Poll::Ready(driver.as_mut().poll(cx).is_ready())).await;
        }
        outcome
    }

    /// Whether requests can still be sent on this connection.
    pub fn is_open(&self) -> bool {
        !self.closed && !self.sender.is_closed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("seed=http://127.0.0.1:3100").unwrap();
        assert_eq!(
            (t.name.as_str(), t.addr.as_str()),
            ("seed", "127.0.0.1:3100")
        );
        let t = Target::parse("http://localhost:8080/").unwrap();
        assert_eq!(
            (t.name.as_str(), t.url.as_str()),
            ("localhost:8080", "http://localhost:8080")
        );
        assert_eq!(
            Target::parse("http://127.0.0.1").unwrap().addr,
            "127.0.0.1:80"
        );
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("x=http://127.0.0.1:1/products").is_err());
        assert!(Target::parse("=http://127.0.0.1:1").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
