//! The admin listener: the status page (`GET /`, with `/app.js`, `/style.css`
//! and `/favicon.svg` embedded in the binary; `page`), its live feed
//! `GET /events` (`feed`), `GET /metrics` (OpenMetrics or the Prometheus text
//! format, as the scraper's `Accept` asks; the families are in `metrics`),
//! `GET /status` (the `status` JSON), `GET /healthz` (liveness: the process
//! answers) and `GET /readyz` (readiness, `health`: 200 while accepting with a
//! healthy serving slot, else 503 with a JSON body saying why). Read-only: a method
//! other than GET or HEAD is answered 405. Nothing here runs on the request
//! path.
//!
//! Loopback by default, and guarded like the public listener: on a loopback
//! address only loopback names pass as `Host` and `Origin` (`[admin]
//! allowed_hosts` sets the list), so a page on another site rebound to
//! 127.0.0.1 cannot read the status (DNS rebinding); a malformed `Host` or
//! `Origin` is 400. It is an edge like the public listener: its accept loop
//! backs off at the descriptor limit, and its connections have `[proxy]`'s
//! `header_read_timeout` (from accept) and `idle_timeout` (`proxy::conn`). A
//! feed, once its response started, is busy and never idle (it is long-lived
//! by design) and ends when the proxy shuts down.

pub mod feed;
pub mod page;
pub mod recent;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::protocol::Reply;
use crate::control::Controller;
use crate::health::{self, Lifecycle};
use crate::metrics::{self, Format};
use crate::proxy::accept::Backoff;
use crate::proxy::conn::{self, Conn, Connections, Limits, Tracked};
use crate::proxy::host_guard::{HostGuard, Refused};
use crate::proxy::trusted::Trusted;
use crate::stats::ProxyStats;
use feed::{Feed, FeedBody, Feeds};
use recent::Recent;

/// The page's Content-Security-Policy: its own script and stylesheet only (no
/// inline script or style), its own feed, nothing from anywhere else, never
/// in a frame; DOM sinks that parse HTML are refused (Trusted Types), so the
/// script can only set text.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'; require-trusted-types-for 'script'";

/// How long, at shutdown, idle admin connections get to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What every admin response body is: a whole one, or a feed.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// Renders the metrics text in the 0.0.4 text format (what a scraper without an
/// `Accept` header gets).
pub fn metrics_text(ctl: &Arc<Controller>, proxy: &ProxyStats) -> String {
    metrics::render(ctl, proxy, Format::Text, metrics::process::read().as_ref())
}

/// How the admin listener treats its clients.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `Host`/`Origin` check (`[admin] allowed_hosts`; loopback names on a
    /// loopback address).
    pub guard: HostGuard,
    /// The only clients served (`[admin] allowed_clients`; `None`: every one).
    pub allowed_clients: Option<Trusted>,
    /// The connection timers (`[proxy] header_read_timeout`, `idle_timeout`).
    pub limits: Limits,
    /// The public listener's counters that belong to no slot, for `/metrics`.
    pub proxy: Arc<ProxyStats>,
    /// The process's phase, for `/readyz`.
    pub lifecycle: Arc<Lifecycle>,
    /// `[admin] tls`: HTTPS, its config swapped by `reload`.
    pub tls: Option<crate::proxy::TlsSlot>,
}

/// What the handlers share.
struct Admin {
    ctl: Arc<Controller>,
    proxy: Arc<ProxyStats>,
    guard: HostGuard,
    recent: Arc<Recent>,
    feeds: Feeds,
    lifecycle: Arc<Lifecycle>,
    stop: CancellationToken,
}

impl feed::Source for Admin {
    fn status(&self) -> Value {
        serde_json::to_value(self.ctl.status()).unwrap_or(Value::Null)
    }

    fn recent(&self) -> Vec<Value> {
        self.recent.list()
    }
}

fn whole(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

/// Headers every admin answer carries: no sniffing, no framing, no referrer,
/// the page's CSP (harmless on JSON and text, and it covers error pages too).
fn secure(resp: &mut Response<AdminBody>, cache: &'static str) {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

/// The answer to a client outside `[admin] allowed_clients`.
fn not_allowed(peer: std::net::SocketAddr) -> Response<AdminBody> {
    let mut resp = whole(
        StatusCode::FORBIDDEN,
        "text/plain",
        format!(
            "{} is not among the clients this listener serves ([admin] allowed_clients)\n",
            peer.ip()
        ),
    );
    secure(&mut resp, "no-store");
    resp
}

/// `process`: what `/metrics` shows of the process, read before.
fn handle(
    req: &Request<Incoming>,
    admin: &Arc<Admin>,
    process: Option<&metrics::process::Process>,
) -> Response<AdminBody> {
    let mut cache = "no-store";
    let mut resp = if let Err(why) = admin.guard.check(req.headers(), req.uri()) {
        let status = match why {
            Refused::Malformed(_) => StatusCode::BAD_REQUEST,
            Refused::NotAllowed(_) => StatusCode::FORBIDDEN,
        };
        whole(status, "text/plain", format!("{why}\n"))
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = whole(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the admin listener is read-only: GET or HEAD\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        match req.uri().path() {
            "/" => {
                let status = admin.ctl.status();
                let recent = admin.recent.list();
                let html = page::Page {
                    status: &status,
                    recent: &recent,
                    version: metrics::VERSION,
                    commit: metrics::COMMIT,
                }
                .render();
                whole(StatusCode::OK, "text/html; charset=utf-8", html)
            }
            "/app.js" => {
                cache = "no-cache";
                whole(
                    StatusCode::OK,
                    "text/javascript; charset=utf-8",
                    page::APP_JS,
                )
            }
            "/style.css" => {
                cache = "no-cache";
                whole(StatusCode::OK, "text/css; charset=utf-8", page::STYLE_CSS)
            }
            "/favicon.svg" => {
                cache = "no-cache";
                whole(StatusCode::OK, "image/svg+xml", page::FAVICON_SVG)
            }
            "/events" => match admin.feeds.try_open() {
                Some(permit) => {
                    // Subscribed before the first status is read: nothing falls between.
                    let feed = Feed::new(
                        Arc::clone(admin) as Arc<dyn feed::Source>,
                        admin.ctl.subscribe(),
                        admin.stop.clone(),
                        Some(permit),
                    );
                    let mut r = Response::new(FeedBody::new(feed).boxed_unsync());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream; charset=utf-8"),
                    );
                    r
                }
                None => {
                    let mut r = whole(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!(
                            "{} event feeds are open, the most the admin listener serves; close one\n",
                            feed::MAX_FEEDS
                        ),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                    r
                }
            },
            "/metrics" => {
                let format =
                    Format::negotiate(req.headers().get(header::ACCEPT).map(|v| v.as_bytes()));
                let mut r = whole(
                    StatusCode::OK,
                    format.content_type(),
                    metrics::render(&admin.ctl, &admin.proxy, format, process),
                );
                // Caches must not hand one scraper the other format.
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("accept"));
                r
            }
            "/status" => whole(
                StatusCode::OK,
                "application/json",
                Reply::Status(Box::new(admin.ctl.status()))
                    .to_value()
                    .to_string(),
            ),
            "/healthz" => whole(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                let r = health::readiness(&admin.lifecycle, &admin.ctl.tables.load());
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::to_string(&r).unwrap_or_default();
                whole(status, "application/json", body + "\n")
            }
            _ => whole(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /, /events, /metrics, /status, /healthz or /readyz\n",
            ),
        }
    };
    secure(&mut resp, cache);
    resp
}

/// Serves the admin listener until `stop`; then the feeds end, idle
/// connections close (up to 5 s), and it returns.
pub async fn serve(
    listener: TcpListener,
    ctl: Arc<Controller>,
    settings: Settings,
    stop: CancellationToken,
) {
    let recent = Arc::new(Recent::default());
    tokio::spawn(recent::record(
        Arc::clone(&recent),
        ctl.subscribe(),
        stop.clone(),
    ));
    let admin = Arc::new(Admin {
        ctl,
        proxy: settings.proxy,
        guard: settings.guard,
        recent,
        feeds: Feeds::default(),
        lifecycle: settings.lifecycle,
        stop: stop.clone(),
    });
    let limits = settings.limits;
    let allowed_clients = settings.allowed_clients;
    let tls = settings.tls;
    let builder = Arc::new(conn::builder(feed::MAX_FEEDS as u32));
    let connections = Connections::new();
    let mut backoff = Backoff::new("admin");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = backoff.accept(|| listener.accept()) => accepted,
        };
        // Every request of a client outside `[admin] allowed_clients` is 403.
        let allowed = allowed_clients
            .as_ref()
            .is_none_or(|a| a.contains(peer.ip()));
        let head_deadline = tokio::time::Instant::now() + limits.header_read;
        let admin = Arc::clone(&admin);
        let builder = Arc::clone(&builder);
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let entered = connections.enter();
        let shutdown = connections.shutdown_token().clone();
        tokio::spawn(async move {
            let _entered = entered;
            let conn = Conn::new();
            // For the send check (`send_timeout`): its send queue.
            conn.set_socket(std::os::fd::AsRawFd::as_raw_fd(&tcp));
            let svc = {
                let conn = conn.clone();
                service_fn(move |req| {
                    // Busy until the response body is gone (a feed: until it ends).
                    let active = conn.begin(req.version() < http::Version::HTTP_2);
                    let admin = Arc::clone(&admin);
                    async move {
                        // Read on the blocking pool: listing `/proc/self/fd`
                        // may take milliseconds (`metrics::process`).
                        let process = if allowed && req.uri().path() == "/metrics" {
                            tokio::task::spawn_blocking(metrics::process::read)
                                .await
                                .ok()
                                .flatten()
                        } else {
                            None
                        };
                        let resp = if allowed {
                            handle(&req, &admin, process.as_ref())
                        } else {
                            not_allowed(peer)
                        };
                        Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, active)))
                    }
                })
            };
            let timed = conn::Timed {
                conn: &conn,
                limits,
                head_deadline,
                shutdown: &shutdown,
            };
            match acceptor {
                None => {
                    let _ = conn::drive(&builder, tcp, svc, timed).await;
                }
                // The handshake within the first head's time, as on the
                // public listener; a failed one is closed (logged at
                // debug: the public listener's counters are its own). Plain
                // HTTP is told to use https://, as there.
                Some(acceptor) => {
                    use crate::proxy::plaintext;
                    match tokio::time::timeout_at(head_deadline, plaintext::is_plain_http(&tcp))
                        .await
                    {
                        Ok(Ok(false)) => {}
                        Ok(Ok(true)) => {
                            tracing::debug!(%peer, "plain HTTP to the admin listener's TLS port: 400");
                            let _ = tokio::time::timeout_at(head_deadline, plaintext::refuse(tcp))
                                .await;
                            return;
                        }
                        _ => return,
                    }
                    match tokio::time::timeout_at(head_deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn::drive(&builder, tls, svc, timed).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin listener: no TLS handshake within header_read_timeout")
                        }
                    }
                }
            }
        });
    }
    // The feeds saw `stop` and end; what is idle closes now.
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.shutdown()).await;
}
