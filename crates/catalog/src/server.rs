//! [`Guard`], the layer in front of the router that reads every request body before the
//! handlers see it.
//!
//! What each bound protects against:
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
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// Most bytes of an oversized body read (and dropped) before its 413 is sent.
pub const DRAIN_BYTES: u64 = 8 * 1024 * 1024;
/// Longest time spent reading (and dropping) an oversized body before its 413 is sent.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The bounds of the HTTP server and of each request (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
        }
    }
}

/// The layer of [`Limits`] in front of the router: reads the body, if there is one, within
/// the body limit, and hands the handlers a body already in memory.
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
        if req.body().is_end_stream() {
            // No body (every GET): straight through, nothing to read.
            return GuardFuture::Direct {
                inner: self.inner.call(req),
            };
        }
        // The inner service was made ready for this call: take it, leave a clone.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let limits = self.limits.clone();
        GuardFuture::Body {
            future: Box::pin(async move {
                match read_body(req, &limits).await {
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
        /// A request without a body: the inner service's future.
        Direct { #[pin] inner: F },
        /// A request whose body is read first, then the inner service's.
        Body { future: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for GuardFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Direct { inner } => inner.poll(cx),
            GuardProj::Body { future } => future.as_mut().poll(cx),
        }
    }
}

/// Reads the body of `req` into memory, within the body limit; the request with its body in
/// memory, or the response refusing it.
async fn read_body(req: Request, limits: &Limits) -> Result<Request, Response> {
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
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(closing(
                ApiError::invalid("invalid_body", "the request body could not be read")
                    .into_response(),
            ));
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
