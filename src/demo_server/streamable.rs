//! Streamable HTTP transport (MCP 2025-03-26 .. 2025-11-25) at `/mcp`, with
//! sessions: `POST` carries one JSON-RPC message (initialize creates the
//! session and returns `Mcp-Session-Id`), `GET` opens the session's
//! standalone SSE stream (one at a time), `DELETE` ends the session.
//!
//! Replies are plain JSON, except `tools/call` of `slow` from a client that
//! accepts `text/event-stream`: that one is answered with an SSE stream
//! carrying progress notifications and then the response.
//!
//! `POST /stateless` is the same server without sessions, like an SDK server
//! built stateless (Python `stateless_http=True`, TypeScript
//! `sessionIdGenerator: undefined`): every message is answered on its own, no
//! `Mcp-Session-Id` is issued or read. The benchmarks flip slots under it, where
//! no request is pinned to a slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::body::{Body, SseStream};
use super::reply::{empty, json, read_body, sse_response, text};
use super::sessions::{self, SessionMap};
use super::tools::{self, Dispatcher, Outcome};
use super::wire::{accepts_event_stream, sse_event, DropGuard, MCP_SESSION_ID};

const SESSION_NOT_FOUND: &[u8] =
    br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#;

/// One Streamable HTTP session.
pub(crate) struct Session {
    /// Cancelled on DELETE and on shutdown; ends every stream of the session.
    token: CancellationToken,
    /// A standalone GET stream is open.
    get_open: AtomicBool,
}

impl Session {
    fn new(shutdown: &CancellationToken) -> Self {
        Self {
            token: shutdown.child_token(),
            get_open: AtomicBool::new(false),
        }
    }

    /// Ends the session's streams.
    pub(crate) fn end(&self) {
        self.token.cancel();
    }
}

enum Lookup {
    Missing,
    Unknown,
    /// The session's key (see `sessions::key`) and its id as sent.
    Found(u128, HeaderValue),
}

/// The Streamable HTTP transport's sessions and what it answers them with.
pub(crate) struct Streamable {
    sessions: SessionMap<Arc<Session>>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
}

impl Streamable {
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) -> Self {
        Streamable {
            sessions: SessionMap::new(),
            dispatcher,
            shutdown,
        }
    }

    /// Ends every session's streams (server shutdown).
    pub(crate) fn end_all(&self) {
        for s in self.sessions.drain() {
            s.end();
        }
    }

    fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let Some(value) = headers.get(&MCP_SESSION_ID) else {
            return Lookup::Missing;
        };
        // Only whether the session exists: most requests never need its
        // state, and cloning its `Arc` would touch one more cache line.
        match value.to_str().ok().and_then(sessions::key) {
            Some(k) if self.sessions.contains(k) => Lookup::Found(k, value.clone()),
            _ => Lookup::Unknown,
        }
    }

    /// `POST /mcp`.
    pub(crate) async fn post(&self, req: Request<Incoming>) -> Response<Body> {
        let wants_sse = accepts_event_stream(req.headers());
        let session = match self.lookup(req.headers()) {
            Lookup::Missing => None,
            Lookup::Unknown => return session_not_found(),
            Lookup::Found(s, sid) => Some((s, sid)),
        };
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let msg = match tools::parse(&body) {
            Ok(m) => m,
            Err(e) => return json(StatusCode::BAD_REQUEST, e.to_response()),
        };

        let Some((session, sid)) = session else {
            if !msg.is_initialize() {
                return missing_session(msg.id.as_ref());
            }
            return match self.dispatcher.dispatch(&msg) {
                Outcome::Reply(reply) => {
                    let id = self.sessions.create(Arc::new(Session::new(&self.shutdown)));
                    tracing::debug!(session = %id, "demo server: streamable session created");
                    match HeaderValue::from_str(&id) {
                        Ok(sid) => with_session(json(StatusCode::OK, reply), sid),
                        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "bad session id"),
                    }
                }
                Outcome::Fail(reply) => json(StatusCode::INTERNAL_SERVER_ERROR, reply),
                Outcome::NoReply | Outcome::Slow(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unexpected initialize outcome",
                ),
            };
        };

        let call = match self.dispatcher.dispatch(&msg) {
            Outcome::NoReply => return empty(StatusCode::ACCEPTED),
            Outcome::Reply(reply) => return with_session(json(StatusCode::OK, reply), sid),
            Outcome::Fail(reply) => return json(StatusCode::INTERNAL_SERVER_ERROR, reply),
            Outcome::Slow(call) => call,
        };
        // A slow call runs under the session's token (its streams end with it).
        let Some(session) = self.sessions.get_key(session) else {
            // Deleted since the lookup.
            return session_not_found();
        };
        if wants_sse {
            let (tx, rx) = mpsc::unbounded_channel();
            let stop = session.token.clone();
            tokio::spawn(async move {
                let mut event_id = 0u64;
                call.run(&stop, tx.closed(), |msg| {
                    event_id += 1;
                    tx.send(sse_event("message", Some(event_id), &msg)).is_ok()
                })
                .await;
            });
            let body = Body::Sse(SseStream::new(Some(rx), session.token.clone(), None));
            with_session(sse_response(body), sid)
        } else {
            with_session(json(StatusCode::OK, call.reply(&session.token).await), sid)
        }
    }

    /// `POST /stateless`: one JSON-RPC message answered without a session.
    pub(crate) async fn post_stateless(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let msg = match tools::parse(&body) {
            Ok(m) => m,
            Err(e) => return json(StatusCode::BAD_REQUEST, e.to_response()),
        };
        match self.dispatcher.dispatch(&msg) {
            Outcome::NoReply => empty(StatusCode::ACCEPTED),
            Outcome::Reply(reply) => json(StatusCode::OK, reply),
            Outcome::Fail(reply) => json(StatusCode::INTERNAL_SERVER_ERROR, reply),
            Outcome::Slow(call) => json(StatusCode::OK, call.reply(&self.shutdown).await),
        }
    }

    /// `GET /mcp`: the session's standalone SSE stream.
    pub(crate) fn get(&self, req: &Request<Incoming>) -> Response<Body> {
        let (session, sid) = match self.lookup(req.headers()) {
            Lookup::Missing => return missing_session(None),
            Lookup::Unknown => return session_not_found(),
            Lookup::Found(k, sid) => match self.sessions.get_key(k) {
                Some(s) => (s, sid),
                None => return session_not_found(),
            },
        };
        let accept = req.headers().get(http::header::ACCEPT);
        let accept_ok = accept.is_none()
            || accepts_event_stream(req.headers())
            || accept.is_some_and(|v| memchr::memmem::find(v.as_bytes(), b"*/*").is_some());
        if !accept_ok {
            return text(
                StatusCode::NOT_ACCEPTABLE,
                "GET /mcp needs Accept: text/event-stream",
            );
        }
        if session.get_open.swap(true, Ordering::AcqRel) {
            return text(
                StatusCode::CONFLICT,
                "an SSE stream is already open for this session",
            );
        }
        let token = session.token.clone();
        let guard = DropGuard::new(move || session.get_open.store(false, Ordering::Release));
        let body = Body::Sse(SseStream::new(None, token, Some(guard)));
        with_session(sse_response(body), sid)
    }

    /// `DELETE /mcp`: ends the session and its streams.
    pub(crate) fn delete(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(value) = req.headers().get(&MCP_SESSION_ID) else {
            return missing_session(None);
        };
        let id = value.to_str().unwrap_or_default();
        match self.sessions.remove(id) {
            Some(session) => {
                session.end();
                tracing::debug!(session = %id, "demo server: streamable session deleted");
                empty(StatusCode::OK)
            }
            None => session_not_found(),
        }
    }
}

fn session_not_found() -> Response<Body> {
    json(StatusCode::NOT_FOUND, Bytes::from_static(SESSION_NOT_FOUND))
}

fn missing_session(id: Option<&Value>) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        tools::error_response(
            id.unwrap_or(&Value::Null),
            -32000,
            "Bad Request: Mcp-Session-Id header is required",
        ),
    )
}

fn with_session(mut resp: Response<Body>, sid: HeaderValue) -> Response<Body> {
    resp.headers_mut().insert(MCP_SESSION_ID.clone(), sid);
    resp
}
