//! The public listener: accept, serve HTTP/1.1 and HTTP/2 (h2c) with hyper-util's
//! auto connection, and hand every request to the [`Forwarder`].
//!
//! Malformed HTTP is answered 4xx by hyper and ends only that connection; a
//! client slow to send its headers is cut after `header_read_timeout`; plain
//! HTTP sent to the TLS listener is answered 400 (`plaintext`).

pub mod affinity;
pub mod body;
pub mod exchange;
pub mod forward;
pub mod host_guard;
pub mod plaintext;
pub mod sse;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use forward::Forwarder;

/// The public listener's TLS config, swapped by `reload` (new handshakes get the
/// new certificates; established connections keep theirs).
pub type TlsSlot = Arc<ArcSwap<rustls::ServerConfig>>;

/// Serves the public listener until `stop` is cancelled, then stops accepting
/// and returns a handle that waits for the open connections.
pub async fn serve(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    header_read_timeout: Duration,
    tls: Option<TlsSlot>,
    stop: CancellationToken,
) -> GracefulShutdown {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let forwarder = Arc::clone(&forwarder);
        let client = forward::Peer::new(peer);
        let service = service_fn(move |req| {
            let forwarder = Arc::clone(&forwarder);
            let client = client.clone();
            async move { Ok::<_, Infallible>(forwarder.forward(req, client).await) }
        });
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(serve_connection(builder, tcp, service, watcher, peer));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                tokio::spawn(async move {
                    // The handshake gets the header-read budget: a silent client is cut.
                    let deadline = tokio::time::Instant::now() + header_read_timeout;
                    match tokio::time::timeout_at(deadline, plaintext::is_plain_http(&tcp)).await {
                        Ok(Ok(false)) => {}
                        Ok(Ok(true)) => {
                            tracing::debug!(%peer, "plain HTTP on the TLS listener: answered 400");
                            let _ = tokio::time::timeout_at(deadline, plaintext::refuse(tcp)).await;
                            return;
                        }
                        Ok(Err(e)) => {
                            return tracing::debug!(%peer, error = %e, "connection failed")
                        }
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(builder, stream, service, watcher, peer).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    graceful
}

async fn serve_connection<I, S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    service: S,
    watcher: Watcher,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<body::ResponseBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}
