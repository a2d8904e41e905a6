//! The admin listener: `GET /metrics` (OpenMetrics or the Prometheus text
//! format, as the scraper's `Accept` asks; the families are in `metrics`),
//! `GET /status` (the `status` JSON) and `GET /healthz`. Loopback by default;
//! nothing here runs on the request path.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::protocol::Reply;
use crate::control::Controller;
use crate::metrics::{self, Format};

/// Renders the metrics text in the 0.0.4 text format (what a scraper without an
/// `Accept` header gets).
pub fn metrics_text(ctl: &Arc<Controller>) -> String {
    metrics::render(ctl, Format::Text)
}

async fn handle(req: Request<Incoming>, ctl: Arc<Controller>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            let format = Format::negotiate(req.headers().get(header::ACCEPT).map(|v| v.as_bytes()));
            (
                StatusCode::OK,
                format.content_type(),
                metrics::render(&ctl, format),
            )
        }
        "/status" => (
            StatusCode::OK,
            "application/json",
            Reply::Status(Box::new(ctl.status())).to_value().to_string(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /status or /healthz\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Caches must not hand one scraper the other format.
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// Serves the admin listener until `stop`.
pub async fn serve(listener: TcpListener, ctl: Arc<Controller>, stop: CancellationToken) {
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok((t, _)) => t, Err(_) => continue },
        };
        let ctl = Arc::clone(&ctl);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctl = Arc::clone(&ctl);
                async move { Ok::<_, Infallible>(handle(req, ctl).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
