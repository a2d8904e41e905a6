//! The pooled HTTP client a slot forwards through (hyper-util's legacy client on a
//! TCP connector, with rustls for `https://` upstreams), and the classification
//! of its failures.

use std::error::Error as _;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::body::ForwardBody;

/// Kinds of upstream failure, the `kind` label of `mcpflip_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Reset,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 3] = [Self::Connect, Self::Timeout, Self::Reset];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }
}

/// A cheaply cloneable pooled client; clones share the pool.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, ForwardBody>,
}

impl UpstreamClient {
    /// A client for plain `http://` upstreams.
    pub fn new(connect_timeout: Duration, pool_idle: Duration) -> Self {
        // Never used for TLS (the slot is http://): an empty root store is enough.
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::with_tls(connect_timeout, pool_idle, tls)
    }

    /// A client that speaks TLS to `https://` upstreams with `tls` (and plain
    /// HTTP to `http://` ones).
    pub fn with_tls(
        connect_timeout: Duration,
        pool_idle: Duration,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle)
            .pool_max_idle_per_host(1024)
            // We set Host ourselves (the upstream's authority, or the client's).
            .set_host(false)
            .build(connector);
        Self { inner }
    }

    pub fn request(
        &self,
        req: http::Request<ForwardBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }
}

/// Sorts a client error into the `kind` label of `mcpflip_upstream_errors_total`.
pub fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::Timeout;
            }
        }
        source = e.source();
    }
    if err.is_connect() {
        // hyper-util reports its connect timeout as a connect error whose message says so.
        if format!("{err:?}").contains("timed out") || format!("{err:?}").contains("Timeout") {
            return UpstreamError::Timeout;
        }
        UpstreamError::Connect
    } else {
        UpstreamError::Reset
    }
}
