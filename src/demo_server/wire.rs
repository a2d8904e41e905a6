//! Wire-level pieces shared by the demo server's parts: SSE event framing,
//! query strings, the `Accept` check, and the small futures and guards its
//! streams are built from. Imports nothing else of the server.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use bytes::Bytes;
use http::header::HeaderName;
use http::HeaderMap;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub(crate) static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

/// Runs a closure when dropped: used to unregister a session when hyper
/// drops the stream body (client went away, connection closed).
pub(crate) struct DropGuard(Option<Box<dyn FnOnce() + Send>>);

impl DropGuard {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A future that resolves when the stream must end.
pub(crate) struct Stop(Pin<Box<WaitForCancellationFutureOwned>>);

impl Stop {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self(Box::pin(token.cancelled_owned()))
    }

    /// `true` once the token is cancelled.
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> bool {
        self.0.as_mut().poll(cx).is_ready()
    }
}

/// Frames one SSE event. `data` must not contain newlines (compact JSON and
/// the endpoint URL never do).
pub(crate) fn sse_event(event: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(itoa_u64(id, &mut [0u8; 20]));
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Formats `n` in decimal into `buf` without allocating.
pub(crate) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `key=value` pairs of a query string (no percent-decoding: every value
/// this server reads is plain ASCII).
pub(crate) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query_pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// `true` if any `Accept` value mentions `text/event-stream`.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), b"text/event-stream").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_event_framing() {
        assert_eq!(
            &sse_event("message", None, b"{}")[..],
            b"event: message\ndata: {}\n\n"
        );
        assert_eq!(
            &sse_event("message", Some(7), b"{}")[..],
            b"id: 7\nevent: message\ndata: {}\n\n"
        );
    }

    #[test]
    fn itoa() {
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(1234567890, &mut [0; 20]), b"1234567890");
        assert_eq!(
            itoa_u64(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }
}
