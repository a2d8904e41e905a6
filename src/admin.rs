//! The admin listener: `GET /metrics` (Prometheus text, read from the request
//! path's atomics at scrape time), `GET /status` (the `status` JSON) and
//! `GET /healthz`. Loopback by default; nothing here runs on the request path.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::protocol::Reply;
use crate::control::Controller;
use crate::mcp::Era;
use crate::table::SlotState;
use crate::upstream::UpstreamError;

#[derive(Debug)]
struct SlotCollector(Arc<Controller>);

impl Collector for SlotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.0.tables.load_full();
        let gauge = |enc: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     f: &dyn Fn(&crate::table::Slot) -> i64| {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &table.slots {
                m.encode_family(&[("slot", &*s.name)])?
                    .encode_gauge(&f(s))?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        gauge(
            &mut enc,
            "mcpflip_live_streams",
            "Open SSE responses per slot",
            &|s| s.stats.live_streams() as i64,
        )?;
        gauge(
            &mut enc,
            "mcpflip_inflight_requests",
            "Requests in flight per slot",
            &|s| s.stats.inflight() as i64,
        )?;
        gauge(
            &mut enc,
            "mcpflip_slot_weight",
            "Routing weight per slot",
            &|s| i64::from(s.weight),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "mcpflip_slot_state",
                "1 for the slot's current state",
                None,
                MetricType::Gauge,
            )?;
            for s in &table.slots {
                for st in SlotState::ALL {
                    m.encode_family(&[("slot", &*s.name), ("state", st.as_str())])?
                        .encode_gauge(&i64::from(s.state == st))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "mcpflip_requests",
                "Responses per slot and status class",
                None,
                MetricType::Counter,
            )?;
            for s in &table.slots {
                for class in 1..=5usize {
                    let code = format!("{class}xx");
                    m.encode_family(&[("slot", &*s.name), ("code", code.as_str())])?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &s.stats.responses(class),
                            None,
                        )?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "mcpflip_upstream_errors",
                "Upstream failures per slot and kind",
                None,
                MetricType::Counter,
            )?;
            for s in &table.slots {
                for kind in UpstreamError::ALL {
                    m.encode_family(&[("slot", &*s.name), ("kind", kind.as_str())])?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &s.stats.upstream_errors(kind),
                            None,
                        )?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "mcpflip_mcp_requests",
                "Requests per slot and MCP protocol era, classified from headers",
                None,
                MetricType::Counter,
            )?;
            for s in &table.slots {
                for era in Era::ALL {
                    m.encode_family(&[("slot", &*s.name), ("era", era.label())])?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &s.stats.era_requests(era),
                            None,
                        )?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "mcpflip_stream_duration_seconds",
                "How long SSE streams stay open",
                true,
            ),
            (
                "mcpflip_drain_duration_seconds",
                "How long drains take",
                false,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for s in &table.slots {
                let h = if pick {
                    &s.stats.stream_duration
                } else {
                    &s.stats.drain_duration
                };
                let (sum, count, buckets) = h.snapshot();
                m.encode_family(&[("slot", &*s.name)])?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        for (name, help, v) in [
            (
                "mcpflip_flips",
                "Flips done",
                self.0.flips_total.load(Ordering::Relaxed),
            ),
            (
                "mcpflip_rollbacks",
                "Rollbacks done",
                self.0.rollbacks_total.load(Ordering::Relaxed),
            ),
            (
                "mcpflip_state_save_failures",
                "Saves of the state file that failed",
                self.0.state_save_failures_total.load(Ordering::Relaxed),
            ),
        ] {
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            prometheus_client::metrics::counter::ConstCounter::new(v).encode(m)?;
        }
        let m = enc.encode_descriptor(
            "mcpflip_state_persisted",
            "1 when the state file holds the state that routes, 0 after a change could not be saved",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from(self.0.persisted()))
            .encode(m)?;
        Ok(())
    }
}

/// Renders the metrics text.
pub fn metrics_text(ctl: &Arc<Controller>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SlotCollector(Arc::clone(ctl))));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

async fn handle(req: Request<Incoming>, ctl: Arc<Controller>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(&ctl),
        ),
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
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
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
