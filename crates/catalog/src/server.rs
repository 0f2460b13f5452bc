//! The HTTP server: [`serve`], hyper's HTTP/1.1 connection driver with a timer behind an
//! accept loop, and [`Guard`], the layer in front of the router that reads every request body
//! before the handlers see it.
//!
//! What each bound protects against:
//! - **Header read timeout** (`--header-timeout`): a client that trickles its headers
//!   (slowloris) or keeps an idle keep-alive connection open is disconnected; hyper's timer
//!   runs whenever a connection waits for the head of a request, the first or the next one.
//! - **Request timeout** (`--request-timeout`): the body of a request must arrive within it
//!   from the moment its head was read; a stalled body gets a 408 and the connection is
//!   closed, so it holds no worker.
//! - **Connections** (`--max-connections`): a connection past the limit is answered with a
//!   503 `overloaded` Error and closed, never queued without bound.
//! - **Requests in flight** (`--max-in-flight`): past it a request gets a 503 `overloaded`
//!   Error at once (load shedding) instead of queueing behind the database pool.
//! - **Body limit** (`--max-body-bytes`): a larger body gets a 413. The rest of it is read
//!   and dropped first (up to [`DRAIN_BYTES`] within [`DRAIN_TIME`], as nginx's lingering
//!   close does), because a server that closes a socket holding unread data makes the kernel
//!   reset the connection, and the client then loses the response before it could read it.

use crate::error::ApiError;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT};
use axum::http::{HeaderValue, Request as HttpRequest};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// Most bytes of an oversized body read (and dropped) before its 413 is sent.
pub const DRAIN_BYTES: u64 = 8 * 1024 * 1024;
/// Longest time spent reading (and dropping) an oversized body before its 413 is sent.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How long a connection refused past `--max-connections` may take to send its request's
/// head before the 503 is sent anyway.
const REFUSAL_READ: Duration = Duration::from_secs(1);
/// Connections being refused at once; past it a further one is closed without an answer.
const REFUSALS: usize = 64;

/// The bounds of the HTTP server and of each request (see the module docs). Cheap to clone:
/// clones share the count of requests in flight.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time to receive a request's head, and longest idle time of a keep-alive connection.
    pub header_timeout: Duration,
    /// Time to receive a request's body, from its head.
    pub request_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Limits {
    /// The defaults with at most `max_in_flight` requests in flight (the other fields are
    /// public).
    pub fn with_max_in_flight(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            ..Self::default()
        }
    }

    /// Most requests in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }
}

impl Default for Limits {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            in_flight: Arc::new(Semaphore::new(512)),
            max_in_flight: 512,
        }
    }
}

/// The layer of [`Limits`] in front of the router: takes a request slot (or sheds the
/// request with a 503), then reads the body, if there is one, within
/// the body limit and the request timeout, and hands the handlers a body already in memory.
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    limits: Limits,
}

impl<S> Guard<S> {
    /// `inner` behind `limits`.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self { inner, limits }
    }
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Ok(permit) = self.limits.in_flight.clone().try_acquire_owned() else {
            return GuardFuture::Ready {
                response: Some(ApiError::Overloaded.into_response()),
            };
        };
        if req.body().is_end_stream() {
            // No body (every GET): straight through, nothing to read.
            return GuardFuture::Direct {
                inner: self.inner.call(req),
                _permit: permit,
            };
        }
        // The inner service was made ready for this call: take it, leave a clone.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let limits = self.limits.clone();
        let deadline = Instant::now() + limits.request_timeout;
        GuardFuture::Body {
            future: Box::pin(async move {
                let _permit = permit;
                match read_body(req, &limits, deadline).await {
                    Ok(req) => inner.oneshot(req).await,
                    Err(refused) => Ok(refused),
                }
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Guard`].
    #[project = GuardProj]
    #[allow(missing_docs)]
    pub enum GuardFuture<F> {
        /// Shed: the response is ready.
        Ready { response: Option<Response> },
        /// A request without a body: the inner service's future, and its request slot.
        Direct { #[pin] inner: F, _permit: OwnedSemaphorePermit },
        /// A request whose body is read first, then the inner service's.
        Body { future: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for GuardFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            GuardProj::Direct { inner, .. } => inner.poll(cx),
            GuardProj::Body { future } => future.as_mut().poll(cx),
        }
    }
}

/// Reads the body of `req` into memory, within the body limit and by `deadline`; the request
/// with its body in memory, or the response refusing it.
async fn read_body(req: Request, limits: &Limits, deadline: Instant) -> Result<Request, Response> {
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = limits.max_body;
    let too_large = || ApiError::PayloadTooLarge(limit).into_response();
    if declared.is_some_and(|n| n > limit as u64) {
        // A client waiting for `100 Continue` sends nothing more: refuse without reading.
        if parts.headers.get(EXPECT).is_some() {
            return Err(closing(too_large()));
        }
        return Err(drain(body, too_large()).await);
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(closing(ApiError::RequestTimeout.into_response())),
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) => {
                return Err(closing(
                    ApiError::invalid("invalid_body", "the request body could not be read")
                        .into_response(),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(drain(body, too_large()).await);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(HttpRequest::from_parts(parts, Body::from(buf.freeze())))
}

/// Reads and drops the rest of `body` (at most [`DRAIN_BYTES`] within [`DRAIN_TIME`]), then
/// hands back `response`, marked to close the connection unless the body was read to its
/// end.
async fn drain(mut body: Body, response: Response) -> Response {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut read = 0u64;
    while read <= DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return response,
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    closing(response)
}

/// `response` with `connection: close`.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the requests in flight to finish (idle connections are closed at once). At most
/// `limits.max_connections` connections are served at once; one more is refused.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let hyper_service =
        hyper::service::service_fn(move |req: HttpRequest<hyper::body::Incoming>| {
            service.clone().oneshot(req.map(Body::new))
        });
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(permit);
                });
            }
            // Past both limits the stream is dropped here: closed without an answer.
            continue;
        };
        let conn = http.serve_connection(TokioIo::new(stream), hyper_service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept that failed: a connection reset before it was accepted is nothing; running out
/// of file descriptors (or memory) is waited out rather than spun on.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers a connection past `--max-connections` with a 503 `overloaded` Error and closes
/// it. Its request's head is read first (for at most [`REFUSAL_READ`]), so that closing
/// leaves no unread request behind (which would reset the connection under the answer).
async fn refuse(mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_READ, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let body = ApiError::Overloaded.body();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_READ, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
