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

use super::body::{sse_event, Body, DropGuard, SseStream};
use super::tools::{self, Outcome};
use super::{json, query_param, read_body, sse_response, text, State};

/// One legacy session: the sending side of its SSE stream.
#[derive(Clone)]
pub(crate) struct Session {
    tx: mpsc::UnboundedSender<Bytes>,
}

/// `GET /sse`.
pub(crate) fn open_stream(state: &Arc<State>) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = state.legacy.create(Session { tx: tx.clone() });
    let endpoint = format!("/messages?sessionId={id}");
    // Cannot fail: `rx` is alive right here.
    let _ = tx.send(sse_event("endpoint", None, endpoint.as_bytes()));
    // From now on the map holds the only sender: removing the session ends
    // the stream.
    drop(tx);
    tracing::debug!(session = %id, "upstream: legacy session opened");
    let st = Arc::clone(state);
    let guard = DropGuard::new(move || {
        st.legacy.remove(&id);
        tracing::debug!(session = %id, "upstream: legacy session closed");
    });
    sse_response(Body::Sse(SseStream::new(
        Some(rx),
        state.shutdown.clone(),
        Some(guard),
    )))
}

/// `POST /messages?sessionId=<id>`.
pub(crate) async fn post_message(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let session = match query_param(req.uri().query(), "sessionId") {
        None | Some("") => return text(StatusCode::BAD_REQUEST, "missing sessionId"),
        Some(id) => match state.legacy.get(id) {
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
    match state.dispatcher.dispatch(&msg) {
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
            let stop = state.shutdown.clone();
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

fn accepted() -> Response<Body> {
    text(StatusCode::ACCEPTED, "Accepted")
}
