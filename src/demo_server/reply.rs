//! The demo server's responses: plain text, JSON, empty, SSE, and the bounded
//! request-body reader that answers 413 itself.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::Body;

/// Largest accepted request body.
const MAX_BODY: usize = 4 << 20;

/// Reads the whole request body, up to [`MAX_BODY`].
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(e) => {
            tracing::debug!(error = %e, "demo server: reading request body failed");
            Err(text(StatusCode::BAD_REQUEST, "could not read request body"))
        }
    }
}

pub(crate) fn with_type(
    status: StatusCode,
    body: Body,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, Body::full(body), "text/plain; charset=utf-8")
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    with_type(status, Body::full(body), "application/json")
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

pub(crate) fn sse_response(body: Body) -> Response<Body> {
    let mut resp = with_type(StatusCode::OK, body, "text/event-stream");
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}
