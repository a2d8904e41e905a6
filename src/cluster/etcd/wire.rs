//! etcd's v3 JSON gateway on the wire: the request and response shapes of the
//! few calls mcpflip makes, as the gateway writes them (protobuf's JSON
//! mapping: keys and values in base64, 64-bit integers as strings, fields
//! with their zero value left out).
//!
//! Types and codecs only: nothing here opens a connection.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};

/// Bytes as base64, the way the gateway writes `bytes` fields.
pub mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use serde::de;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes())
            .map_err(|e| de::Error::custom(format!("bad base64: {e}")))
    }
}

/// A 64-bit integer as the gateway writes it: a string (`"42"`), or a number.
pub mod int64 {
    use serde::de;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(i64),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(s) => s
                .parse()
                .map_err(|_| de::Error::custom(format!("not a 64-bit integer: {s:?}"))),
        }
    }
}

/// The `header` of every response.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, with = "int64")]
    pub revision: i64,
}

/// A key and its value, as a range or a watch returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Kv {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, with = "int64")]
    pub create_revision: i64,
    #[serde(default, with = "int64")]
    pub mod_revision: i64,
    #[serde(default, with = "int64")]
    pub version: i64,
    #[serde(default, with = "int64")]
    pub lease: i64,
}

#[derive(Debug, Serialize)]
pub struct RangeRequest<'a> {
    #[serde(with = "b64")]
    pub key: &'a [u8],
    #[serde(with = "b64", skip_serializing_if = "<[u8]>::is_empty")]
    pub range_end: &'a [u8],
    /// The keys alone, no values (whether they exist).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<Kv>,
}

#[derive(Debug, Serialize)]
pub struct PutRequest<'a> {
    #[serde(with = "b64")]
    pub key: &'a [u8],
    #[serde(with = "b64")]
    pub value: &'a [u8],
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
    /// Keeps the key's value (only its lease changes); etcd refuses it for
    /// a key that does not exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_value: bool,
}

#[derive(Debug, Serialize)]
pub struct DeleteRequest<'a> {
    #[serde(with = "b64")]
    pub key: &'a [u8],
    #[serde(with = "b64", skip_serializing_if = "<[u8]>::is_empty")]
    pub range_end: &'a [u8],
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default, with = "int64")]
    pub deleted: i64,
}

/// Any response whose body is only a header (put).
#[derive(Debug, Default, Deserialize)]
pub struct HeaderOnly {
    #[serde(default)]
    pub header: Header,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One comparison of a transaction.
#[derive(Debug, Serialize)]
pub struct CompareJson<'a> {
    #[serde(with = "b64")]
    pub key: &'a [u8],
    pub target: &'static str,
    pub result: &'static str,
    #[serde(serialize_with = "opt_int64", skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    #[serde(serialize_with = "opt_int64", skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<i64>,
    #[serde(serialize_with = "opt_b64", skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a [u8]>,
}

fn opt_int64<S: Serializer>(n: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_str(&n.to_string()),
        None => s.serialize_none(),
    }
}

fn opt_b64<S: Serializer>(b: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&B64.encode(b)),
        None => s.serialize_none(),
    }
}

/// One operation of a transaction's branch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp<'a> {
    RequestRange(RangeRequest<'a>),
    RequestPut(PutRequest<'a>),
    RequestDeleteRange(DeleteRequest<'a>),
}

#[derive(Debug, Serialize)]
pub struct TxnRequest<'a> {
    pub compare: Vec<CompareJson<'a>>,
    pub success: Vec<RequestOp<'a>>,
    pub failure: Vec<RequestOp<'a>>,
}

/// One answer of a transaction's branch, in the order of its operations.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
    #[serde(default)]
    pub response_delete_range: Option<DeleteResponse>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Serialize)]
#[allow(non_snake_case)]
pub struct LeaseGrantRequest {
    #[serde(with = "int64")]
    pub TTL: i64,
}

/// Grant and keep-alive answers: the lease and its TTL (absent or 0: the lease is gone).
#[derive(Debug, Default, Deserialize)]
#[allow(non_snake_case)]
pub struct LeaseResponse {
    #[serde(default, with = "int64")]
    pub ID: i64,
    #[serde(default, with = "int64")]
    pub TTL: i64,
}

/// The keep-alive call is a stream on the gateway: one request, one `result`.
#[derive(Debug, Default, Deserialize)]
pub struct KeepAliveStream {
    #[serde(default)]
    pub result: Option<LeaseResponse>,
}

#[derive(Debug, Serialize)]
#[allow(non_snake_case)]
pub struct LeaseId {
    #[serde(with = "int64")]
    pub ID: i64,
}

#[derive(Debug, Serialize)]
pub struct AuthenticateRequest<'a> {
    pub name: &'a str,
    pub password: &'a str,
}

#[derive(Debug, Default, Deserialize)]
pub struct AuthenticateResponse {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Serialize)]
pub struct WatchCreate<'a> {
    pub create_request: WatchCreateRequest<'a>,
}

#[derive(Debug, Serialize)]
pub struct WatchCreateRequest<'a> {
    #[serde(with = "b64")]
    pub key: &'a [u8],
    #[serde(with = "b64", skip_serializing_if = "<[u8]>::is_empty")]
    pub range_end: &'a [u8],
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub start_revision: i64,
}

/// One message of a watch stream: `{"result": {...}}` or `{"error": {...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct WatchMessage {
    #[serde(default)]
    pub result: Option<WatchResult>,
    #[serde(default)]
    pub error: Option<GatewayError>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchResult {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<EventJson>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EventJson {
    /// `PUT` is the zero value, so the gateway leaves it out.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub kv: Kv,
}

/// What the gateway answers instead of a response: a gRPC status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayError {
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

/// gRPC status codes mcpflip acts on.
pub mod code {
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The key right after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix): the prefix with its last byte below 0xff
/// incremented; empty (to the end of the keyspace) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use crate::cluster::etcd::wire::*;

    #[test]
    fn reads_what_the_gateway_writes() {
        // Captured from etcd 3.4.23's gateway.
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"151","member_id":"136","revision":"2","raft_term":"2"},"kvs":[{"key":"L3AvdGFibGU=","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],"count":"1"}"#,
        )
        .expect("range");
        assert_eq!(r.header.revision, 2);
        assert_eq!(r.kvs[0].key, b"/p/table");
        assert_eq!(r.kvs[0].value, b"hello");
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L3AvdGFibGU=","mod_revision":"2","value":"aGVsbG8="}],"count":"1"}}]}"#,
        )
        .expect("txn");
        assert!(!t.succeeded, "a false `succeeded` is left out");
        assert_eq!(
            t.responses[0]
                .response_range
                .as_ref()
                .map(|r| r.kvs[0].mod_revision),
            Some(2)
        );
        let k: KeepAliveStream =
            serde_json::from_str(r#"{"result":{"header":{"revision":"2"},"ID":"12345"}}"#)
                .expect("keepalive");
        assert_eq!(k.result.map(|l| (l.ID, l.TTL)), Some((12345, 0)));
        let w: WatchMessage = serde_json::from_str(
            r#"{"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"L3AvYQ==","mod_revision":"4"}}]}}"#,
        )
        .expect("watch");
        let ev = &w.result.expect("result").events[0];
        assert_eq!(ev.kind.as_deref(), Some("DELETE"));
        assert_eq!(ev.kv.mod_revision, 4);
        assert_eq!(
            serde_json::to_string(&LeaseGrantRequest { TTL: 5 }).expect("json"),
            r#"{"TTL":"5"}"#
        );
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}

/// Why an etcd request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached or answered in time: etcd is down, or
    /// this machine is cut off from it.
    #[error("etcd cannot be reached ({tried} endpoint{} tried; last: {last})", if *.tried == 1 { "" } else { "s" })]
    Unavailable { tried: usize, last: String },
    /// etcd answered with an error (a gRPC status code).
    #[error("etcd refused the request: {message} (gRPC status {code})")]
    Status { code: i32, message: String },
    /// The username or password was refused.
    #[error("etcd refused the credentials of user {username}: {message}")]
    Auth { username: String, message: String },
    /// An answer that is not etcd's, or too large.
    #[error("etcd's answer cannot be used: {0}")]
    Protocol(String),
}

impl EtcdError {
    /// Whether etcd could not be reached at all (as opposed to refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. })
    }

    /// etcd's gRPC status code, when it answered with one.
    pub fn status_code(&self) -> Option<i32> {
        match self {
            EtcdError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}
