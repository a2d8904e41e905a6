//! The request body on its way to a slot: the client's, streamed, or one the
//! proxy made itself (probes).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ForwardBody {
    /// The client's body, streamed.
    Incoming(Incoming),
    /// A body we made (probes).
    Full(Full<Bytes>),
}

impl From<Incoming> for ForwardBody {
    fn from(b: Incoming) -> Self {
        ForwardBody::Incoming(b)
    }
}

impl From<Bytes> for ForwardBody {
    fn from(b: Bytes) -> Self {
        ForwardBody::Full(Full::new(b))
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ForwardBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ForwardBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Incoming(b) => b.is_end_stream(),
            ForwardBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Incoming(b) => b.size_hint(),
            ForwardBody::Full(b) => b.size_hint(),
        }
    }
}
