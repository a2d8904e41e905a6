//! What MCP itself defines, and the proxy's one MCP-level invention (the session
//! tag): header names, protocol revisions, the transport era of a request, and
//! the tag codec, the method names it knows. Imports nothing of the crate, so
//! every other module may use it.

pub mod answers;
pub mod era;
pub mod headers;
pub mod method;
pub mod tag;

pub use era::Era;
pub use tag::{SessionTag, TagSite};
