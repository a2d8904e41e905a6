//! The proxy as the soak watches it: its memory and file descriptors from
//! `/proc`, its live counts from the admin listener's `/status` and
//! `/metrics`, and the sampler that reads them every second while the load
//! runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Conn};
use crate::model::{SlotCounts, SoakSample, Span};
use crate::sys::{self, Fd};

/// How long an admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy process and its admin listener.
#[derive(Clone)]
pub struct Gauges {
    pub pid: u32,
    pub admin: SocketAddr,
}

impl Gauges {
    pub fn rss_kib(&self) -> u64 {
        sys::status_kib(self.pid, "VmRSS").unwrap_or(0)
    }

    /// The most the proxy was ever resident, KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        sys::status_kib(self.pid, "VmHWM").unwrap_or(0)
    }

    pub fn fds(&self) -> u64 {
        sys::open_fds(self.pid).unwrap_or(0)
    }

    /// What the open descriptors are, grouped (see [`describe`]).
    pub fn fd_kinds(&self, ports: &[(u16, &str)]) -> Vec<String> {
        describe(&sys::fds_of(self.pid), ports)
    }

    /// `GET path` on the admin listener, on a connection of its own (closed
    /// after: the soak's end counts the proxy's descriptors).
    async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let host = self.admin.to_string();
        let fetch = async {
            let mut conn = Conn::open(self.admin, None).await?;
            let head = conn.roundtrip(&http::get(&host, path), false).await?;
            Ok::<_, http::HttpError>((head, std::mem::take(&mut conn.body)))
        };
        let (head, body) = tokio::time::timeout(ADMIN_TIMEOUT, fetch)
            .await
            .with_context(|| format!("no answer to GET {path} on the admin listener"))?
            .with_context(|| format!("GET {path} on the admin listener"))?;
        if head.status != 200 {
            bail!(
                "GET {path} on the admin listener answered {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    /// `/status` (the same JSON as `ctl status`).
    pub async fn status(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.get("/status").await?).context("/status is not JSON")
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.get("/metrics").await?).into_owned())
    }
}

/// The slots of a `/status` reply with their counts.
pub fn status_counts(status: &Value) -> Vec<SlotCounts> {
    status["slots"]
        .as_array()
        .map(|slots| {
            slots
                .iter()
                .map(|s| SlotCounts {
                    slot: s["name"].as_str().unwrap_or("?").to_owned(),
                    live_streams: s["live_streams"].as_u64().unwrap_or(0),
                    inflight: s["inflight"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One slot of a `/status` reply.
pub fn slot_status<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["slots"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
}

/// The value of a sample line of `metric` with `slot="<slot>"` among its
/// labels (the Prometheus text format and OpenMetrics alike).
fn sample(text: &str, metric: &str, slot: &str) -> Option<f64> {
    let label = format!("slot=\"{slot}\"");
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once('}')?;
        if !labels.split(',').any(|kv| kv.trim() == label) {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The value of an unlabelled counter (`name value`), if the text has it.
pub fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(' ')?;
        v.split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

/// `mcpflip_live_streams` and `mcpflip_inflight_requests` of each of `slots`
/// (a gauge that is missing reads as `u64::MAX`: it cannot pass for 0).
pub fn metric_counts(text: &str, slots: &[String]) -> Vec<SlotCounts> {
    let read = |metric: &str, slot: &str| {
        sample(text, metric, slot).map_or(u64::MAX, |v| if v < 0.0 { u64::MAX } else { v as u64 })
    };
    slots
        .iter()
        .map(|s| SlotCounts {
            slot: s.clone(),
            live_streams: read("mcpflip_live_streams", s),
            inflight: read("mcpflip_inflight_requests", s),
        })
        .collect()
}

/// Descriptors grouped by what they are: `2 × TCP ESTABLISHED an ephemeral
/// port → blue upstream :22107`, `1 × anon_inode:[eventpoll]`; `ports` names
/// the ports the soak knows.
pub fn describe(fds: &[Fd], ports: &[(u16, &str)]) -> Vec<String> {
    let name = |p: u16| match ports.iter().find(|(q, _)| *q == p) {
        Some((_, n)) => format!("{n} :{p}"),
        None if p == 0 => "*".to_owned(),
        None => "an ephemeral port".to_owned(),
    };
    let mut groups: Vec<(String, usize)> = Vec::new();
    for fd in fds {
        let key = match fd {
            Fd::Tcp {
                local,
                remote,
                state,
            } => format!("TCP {state} {} → {}", name(*local), name(*remote)),
            // `pipe:[123]`, `socket:[456]` (a Unix socket): the kind, not the inode.
            Fd::Other(link) => match link.split_once(":[") {
                Some((kind, rest)) if rest.bytes().all(|b| b.is_ascii_digit() || b == b']') => {
                    kind.to_owned()
                }
                _ => link.clone(),
            },
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some(g) => g.1 += 1,
            None => groups.push((key, 1)),
        }
    }
    groups
        .into_iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect()
}

/// Readings every second while the load runs.
pub struct Sampler {
    samples: Arc<Mutex<Vec<SoakSample>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(g: Gauges, start: Instant) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let counts = g
                        .status()
                        .await
                        .map(|s| status_counts(&s))
                        .unwrap_or_default();
                    let s = SoakSample {
                        t_s: start.elapsed().as_secs_f64(),
                        rss_kib: g.rss_kib(),
                        fds: g.fds(),
                        live_streams: counts.iter().map(|c| c.live_streams).sum(),
                        inflight: counts.iter().map(|c| c.inflight).sum(),
                    };
                    if let Ok(mut v) = samples.lock() {
                        v.push(s);
                    }
                }
            }
        });
        Sampler {
            samples,
            stop,
            task,
        }
    }

    /// Stops sampling; returns every sample.
    pub async fn stop(self) -> Vec<SoakSample> {
        self.stop.cancel();
        let _ = self.task.await;
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// The highest of `samples`' readings, with `start` and `end` around them.
pub fn span(start: u64, end: u64, samples: impl Iterator<Item = u64>) -> Span {
    Span {
        start,
        peak: samples.fold(start.max(end), u64::max),
        end,
    }
}

/// One sample every `every` seconds (the first at or after each multiple),
/// for the results file.
pub fn thin(samples: &[SoakSample], every: f64) -> Vec<SoakSample> {
    let mut out: Vec<SoakSample> = Vec::new();
    let mut next = 0.0;
    for s in samples {
        if s.t_s >= next {
            out.push(s.clone());
            next = (s.t_s / every).floor() * every + every;
        }
    }
    // The last reading always: the end of the run.
    if let Some(last) = samples.last() {
        if out.last() != Some(last) {
            out.push(last.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_from_either_text_format() {
        let prom = "# TYPE mcpflip_live_streams gauge\n\
                    mcpflip_live_streams{slot=\"blue\"} 0\n\
                    mcpflip_live_streams{slot=\"green\"} 3\n\
                    mcpflip_inflight_requests{slot=\"blue\"} 1\n\
                    mcpflip_inflight_requests{slot=\"green\"} 0\n";
        let open = "mcpflip_live_streams{instance=\"a\",slot=\"blue\"} 0.0\n\
                    mcpflip_inflight_requests{slot=\"blue\",instance=\"a\"} 1.0\n# EOF\n";
        let slots = vec!["blue".to_owned(), "green".to_owned()];
        let c = metric_counts(prom, &slots);
        assert_eq!((c[0].live_streams, c[0].inflight), (0, 1));
        assert_eq!((c[1].live_streams, c[1].inflight), (3, 0));
        let c = metric_counts(open, &slots);
        assert_eq!((c[0].live_streams, c[0].inflight), (0, 1));
        // Green has no gauge there: it cannot read as 0.
        assert_eq!(c[1].live_streams, u64::MAX);
    }

    #[test]
    fn unlabelled_counters_are_read() {
        let text = "# TYPE mcpflip_access_log_dropped_lines counter\n\
                    mcpflip_access_log_dropped_lines_total 3\n\
                    mcpflip_access_log_dropped_lines_created 1.7e9\n";
        assert_eq!(
            counter(text, "mcpflip_access_log_dropped_lines_total"),
            Some(3)
        );
        assert_eq!(counter("", "mcpflip_access_log_dropped_lines_total"), None);
    }

    #[test]
    fn a_longer_metric_name_is_not_taken_for_the_gauge() {
        let text =
            "mcpflip_live_streams_total{slot=\"blue\"} 9\nmcpflip_live_streams{slot=\"blue\"} 2\n";
        assert_eq!(sample(text, "mcpflip_live_streams", "blue"), Some(2.0));
    }

    #[test]
    fn descriptors_are_grouped_by_what_they_are() {
        let fds = vec![
            Fd::Tcp {
                local: 8080,
                remote: 0,
                state: "LISTEN",
            },
            Fd::Tcp {
                local: 40001,
                remote: 3001,
                state: "ESTABLISHED",
            },
            Fd::Tcp {
                local: 40002,
                remote: 3001,
                state: "ESTABLISHED",
            },
            Fd::Other("socket:[99]".to_owned()),
            Fd::Other("anon_inode:[eventpoll]".to_owned()),
            Fd::Other("/tmp/x/state.json".to_owned()),
        ];
        assert_eq!(
            describe(&fds, &[(8080, "proxy listener"), (3001, "blue upstream")]),
            vec![
                "1 × TCP LISTEN proxy listener :8080 → *",
                "2 × TCP ESTABLISHED an ephemeral port → blue upstream :3001",
                "1 × socket",
                "1 × anon_inode:[eventpoll]",
                "1 × /tmp/x/state.json",
            ]
        );
    }

    #[test]
    fn status_lists_every_slot_with_its_counts() {
        let v = serde_json::json!({"ok": true, "active": "green", "slots": [
            {"name": "blue", "state": "retired", "generation": 2, "live_streams": 0, "inflight": 0},
            {"name": "green", "state": "serving", "generation": 3, "live_streams": 5, "inflight": 2},
        ]});
        let c = status_counts(&v);
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].live_streams, c[1].inflight), (5, 2));
        assert_eq!(
            slot_status(&v, "green").map(|s| s["generation"].clone()),
            Some(3.into())
        );
    }

    #[test]
    fn samples_are_thinned_to_one_per_period() {
        let s: Vec<SoakSample> = (0..35)
            .map(|i| SoakSample {
                t_s: i as f64 + 0.4,
                rss_kib: i,
                fds: 0,
                live_streams: 0,
                inflight: 0,
            })
            .collect();
        let t: Vec<u64> = thin(&s, 10.0).iter().map(|s| s.rss_kib).collect();
        assert_eq!(t, vec![0, 10, 20, 30, 34]);
        assert_eq!(span(5, 7, s.iter().map(|s| s.rss_kib)).peak, 34);
    }
}
