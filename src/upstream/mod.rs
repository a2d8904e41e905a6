//! The slot's side of a request: the pooled client (a connection pool of its own) that forwards to a slot's
//! upstream server, the request body it sends, and how its failures are told
//! apart. "Upstream" in this crate always means a slot's backend server.

pub mod body;
pub mod client;
pub mod connect;
pub mod h1;
pub mod lines;
pub mod timer;

pub use body::{BodyState, BodyWatch, ClientBodyError, ForwardBody, RequestBody};
pub use client::{classify, ClientError, SendError, UpstreamBody, UpstreamClient, UpstreamError};
pub use h1::HttpError;
