//! Legacy HTTP+SSE transport (MCP 2024-11-05): `GET /sse` opens a session
//! stream whose first event names the POST endpoint; `POST
//! /messages?sessionId=` accepts one JSON-RPC message with `202 Accepted`
//! and delivers the reply, if any, on that session's stream.
//!
//! A session lives exactly as long as its stream body: when hyper drops the
//! body (client gone) the session is removed from the map.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use super::body::{Body, SseStream};
use super::reply::{json, read_body, sse_response, text};
use super::sessions::SessionMap;
use super::tools::{self, Dispatcher, Outcome};
use super::wire::{query_param, sse_event, DropGuard};

/// The legacy transport's sessions and what it answers them with.
pub(crate) struct Legacy {
    sessions: Arc<SessionMap<Session>>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
}

/// One legacy session: the sending side of its SSE stream.
#[derive(Clone)]
pub(crate) struct Session {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Legacy {
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) -> Self {
        Legacy {
            sessions: Arc::new(SessionMap::new()),
            dispatcher,
            shutdown,
        }
    }

    /// Ends every session (server shutdown): dropping the senders ends the streams.
    pub(crate) fn end_all(&self) {
        drop(self.sessions.drain());
    }

    /// `GET /sse`.
    pub(crate) fn open_stream(&self) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.sessions.create(Session { tx: tx.clone() });
        let endpoint = format!("/messages?sessionId={id}");
        // Cannot fail: `rx` is alive right here.
        let _ = tx.send(sse_event("endpoint", None, endpoint.as_bytes()));
        // From now on the map holds the only sender: removing the session ends
        // the stream.
        drop(tx);
        tracing::debug!(session = %id, "demo server: legacy session opened");
        let sessions = Arc::clone(&self.sessions);
        let guard = DropGuard::new(move || {
            sessions.remove(&id);
            tracing::debug!(session = %id, "demo server: legacy session closed");
        });
        sse_response(Body::Sse(SseStream::new(
            Some(rx),
            self.shutdown.clone(),
            Some(guard),
        )))
    }

    /// `POST /messages?sessionId=<id>`.
    pub(crate) async fn post_message(&self, req: Request<Incoming>) -> Response<Body> {
        let session = match query_param(req.uri().query(), "sessionId") {
            None | Some("") => return text(StatusCode::BAD_REQUEST, "missing sessionId"),
            Some(id) => match self.sessions.get(id) {
                Some(s) => s,
                None => return text(StatusCode::NOT_FOUND, "Could not find session"),
            },
        };
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let msg = match tools::parse(&body) {
            Ok(m) => m,
            Err(e) => return json(StatusCode::BAD_REQUEST, e.to_response()),
        };
        match self.dispatcher.dispatch(&msg) {
            Outcome::NoReply => accepted(),
            Outcome::Reply(reply) => {
                if session.tx.send(sse_event("message", None, &reply)).is_ok() {
                    accepted()
                } else {
                    text(StatusCode::NOT_FOUND, "Could not find session")
                }
            }
            Outcome::Fail(reply) => json(StatusCode::INTERNAL_SERVER_ERROR, reply),
            Outcome::Slow(call) => {
                let stop = self.shutdown.clone();
                tokio::spawn(async move {
                    let tx = session.tx;
                    call.run(&stop, tx.closed(), |msg| {
                        tx.send(sse_event("message", None, &msg)).is_ok()
                    })
                    .await;
                });
                accepted()
            }
        }
    }
}

fn accepted() -> Response<Body> {
    text(StatusCode::ACCEPTED, "Accepted")
}
