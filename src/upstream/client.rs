//! The pooled HTTP client a slot forwards through (hyper-util's legacy client on a
//! TCP connector, with rustls for `https://` upstreams), and the classification
//! of its failures.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::body::{BodyState, BodyWatch, ForwardBody};

/// Kinds of upstream failure, the `kind` label of `mcpflip_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection was refused or could not be made.
    Connect,
    /// The connection could not be made within `connect_timeout`.
    Timeout,
    /// The connection broke (reset, closed early, unparsable answer).
    Reset,
    /// No response head within the response header timeout.
    ResponseTimeout,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 4] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::ResponseTimeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::ResponseTimeout => "response_timeout",
        }
    }
}

/// Why a forwarded request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client's request body failed (timed out or broke): the client's fault.
    #[error("the client's request body failed ({0:?})")]
    ClientBody(BodyState),
    /// The slot failed.
    #[error("{kind:?}")]
    Upstream {
        kind: UpstreamError,
        /// The client error, for the message (none for a response timeout).
        error: Option<hyper_util::client::legacy::Error>,
    },
}

/// A cheaply cloneable pooled client; clones share the pool.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, ForwardBody>,
    /// The slot's response header timeout.
    response_timeout: Duration,
}

/// The response header timeout of a client made without one.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

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
        Self {
            inner,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// This client with `timeout` as its response header timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The slot's response header timeout.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends `req` as is (probes keep their own timeout).
    pub fn request(
        &self,
        req: http::Request<ForwardBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }

    /// Sends a client's request and waits at most `wait` for the response head,
    /// counted from the end of the client's body (`body`): a client that sends
    /// its body slowly does not make the slot look slow. A failure is the
    /// client's when its body failed, however the client library reports it.
    pub async fn send(
        &self,
        req: http::Request<ForwardBody>,
        wait: Duration,
        body: &BodyWatch,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let response = self.inner.request(req);
        tokio::pin!(response);
        let mut frames = body.frames();
        loop {
            match tokio::time::timeout(wait, &mut response).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => {
                    let state = body.state();
                    if state.is_client_fault() {
                        return Err(SendError::ClientBody(state));
                    }
                    return Err(SendError::Upstream {
                        kind: classify(&e),
                        error: Some(e),
                    });
                }
                // The client is still sending (each pause bounded by its body
                // timeout), or the slot is still taking the body: the clock
                // for the response head has not started. A slot that took
                // nothing for a whole period is timed out.
                Err(_)
                    if body.state() == BodyState::Sending
                        && (body.waiting_on_client() || body.frames() != frames) =>
                {
                    frames = body.frames();
                    continue;
                }
                Err(_) => {
                    return Err(SendError::Upstream {
                        kind: UpstreamError::ResponseTimeout,
                        error: None,
                    })
                }
            }
        }
    }
}

/// Sorts a client error into the `kind` label of `mcpflip_upstream_errors_total`,
/// by the types in its source chain (never by its text).
pub fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let timed_out = chain(err).any(|e| {
        // hyper-util's connector wraps `connect_timeout`'s `Elapsed`; the OS
        // reports its own connect timeout as `TimedOut`.
        e.is::<tokio::time::error::Elapsed>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
    });
    match (err.is_connect(), timed_out) {
        (_, true) => UpstreamError::Timeout,
        (true, false) => UpstreamError::Connect,
        (false, false) => UpstreamError::Reset,
    }
}

/// `err`'s source chain, `err` excluded.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |e| e.source())
}
