//! What `/metrics` exposes, read at scrape time from the table, the slots'
//! stats and the controller's counters, and written in the format the scraper
//! asked for. Nothing here runs on the request path: the request path only
//! bumps atomics, and a scrape reads them.
//!
//! Every family is documented in README.md's metrics reference; the
//! `contrib/` dashboard and alert rules are tested against a real scrape.

pub mod counters;
pub mod exposition;
pub mod process;

use std::sync::atomic::Ordering;

pub use exposition::Format;
use exposition::{Histogram, Kind, Writer};

use crate::control::watch::WATCH_RESULTS;
use crate::control::Controller;
use crate::mcp::{method, Era};
use crate::stats::{
    AddressMap, AtomicHistogram, ClientFault, FleetTaken, FleetWrite, LocalResponse,
    MigrateFailure, ProxyStats, Refusal, PROBE_STEPS,
};
use crate::table::{Slot, SlotState};
use crate::upstream::UpstreamError;

/// The version this binary was built as, and the git commit (build.rs).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("MCPFLIP_COMMIT");

/// Which of a slot's histograms a family shows.
type PickHistogram = fn(&Slot) -> &AtomicHistogram;

/// Renders one scrape in `format`; `proxy` holds the public listener's
/// counters that belong to no slot, `process` what [`process::read`] read
/// (off the worker threads: see there).
pub fn render(
    ctl: &Controller,
    proxy: &ProxyStats,
    format: Format,
    process: Option<&process::Process>,
) -> String {
    let table = ctl.tables.load_full();
    let slots = &table.slots;
    let mut w = Writer::new(format);

    w.family(
        "mcpflip_build",
        Kind::Info,
        "The mcpflip version and git commit this process runs",
    )
    .info(&[("version", VERSION), ("commit", COMMIT)]);

    let gauge = |w: &mut Writer, name: &str, help: &str, f: &dyn Fn(&Slot) -> f64| {
        let mut fam = w.family(name, Kind::Gauge, help);
        for s in slots {
            fam.gauge(&[("slot", &s.name)], f(s));
        }
    };
    gauge(
        &mut w,
        "mcpflip_live_streams",
        "Open SSE responses per slot",
        &|s| s.stats.live_streams() as f64,
    );
    gauge(
        &mut w,
        "mcpflip_inflight_requests",
        "Requests in flight per slot",
        &|s| s.stats.inflight() as f64,
    );
    gauge(
        &mut w,
        "mcpflip_slot_weight",
        "Routing weight per slot",
        &|s| f64::from(s.weight),
    );
    gauge(
        &mut w,
        "mcpflip_slot_generation",
        "Generation per slot (sessions tagged with an older one get 404)",
        &|s| f64::from(s.generation),
    );
    {
        let mut fam = w.family(
            "mcpflip_slot_state",
            Kind::Gauge,
            "1 for the slot's current state, 0 for the others",
        );
        for s in slots {
            for st in SlotState::ALL {
                let v = f64::from(u8::from(s.state == st));
                fam.gauge(&[("slot", &s.name), ("state", st.as_str())], v);
            }
        }
    }

    {
        let mut fam = w.family(
            "mcpflip_requests",
            Kind::Counter,
            "Responses per slot and status class",
        );
        for s in slots {
            for (class, code) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                fam.counter(
                    &[("slot", &s.name), ("code", code)],
                    s.stats.responses(class + 1),
                );
            }
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_upstream_errors",
            Kind::Counter,
            "Upstream failures per slot and kind",
        );
        for s in slots {
            for kind in UpstreamError::ALL {
                fam.counter(
                    &[("slot", &s.name), ("kind", kind.as_str())],
                    s.stats.upstream_errors(kind),
                );
            }
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_upstream_connections",
            Kind::Counter,
            "Connections made to each slot (a request on a reused one makes none)",
        );
        for s in slots {
            fam.counter(&[("slot", &s.name)], s.stats.upstream_connections());
        }
    }
    edge(&mut w, proxy);
    {
        let mut fam = w.family(
            "mcpflip_mcp_requests",
            Kind::Counter,
            "Requests per slot and MCP protocol era, classified from headers",
        );
        for s in slots {
            for era in Era::ALL {
                fam.counter(
                    &[("slot", &s.name), ("era", era.label())],
                    s.stats.era_requests(era),
                );
            }
        }
    }

    let histograms: [(&str, &str, PickHistogram); 3] = [
        (
            "mcpflip_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, per slot (streams opened by GET and subscriptions/listen excepted)",
            |s| &s.stats.request_duration,
        ),
        (
            "mcpflip_stream_duration_seconds",
            "How long SSE streams stay open, per slot",
            |s| &s.stats.stream_duration,
        ),
        (
            "mcpflip_drain_duration_seconds",
            "How long drains take, per slot",
            |s| &s.stats.drain_duration,
        ),
    ];
    for (name, help, pick) in histograms {
        let mut fam = w.family(name, Kind::Histogram, help);
        for s in slots {
            let snap = pick(s).snapshot();
            fam.histogram(&[("slot", &s.name)], histogram(&snap));
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_mcp_request_duration_seconds",
            Kind::Histogram,
            "Request duration per slot and MCP method, for requests that name their method in Mcp-Method (known methods, else `other`); methods not seen yet are left out",
        );
        for s in slots {
            for i in 0..method::COUNT {
                let Some(h) = s.stats.mcp_method_duration(i) else {
                    continue;
                };
                let snap = h.snapshot();
                if snap.count > 0 {
                    fam.histogram(
                        &[("slot", &s.name), ("method", method::label(i))],
                        histogram(&snap),
                    );
                }
            }
        }
    }

    {
        let mut fam = w.family(
            "mcpflip_probes",
            Kind::Counter,
            "MCP probes of a slot (flip gates, watch windows, rollbacks, `ctl probe`) by result",
        );
        for s in slots {
            fam.counter(
                &[("slot", &s.name), ("result", "passed")],
                s.stats.probes(true),
            );
            fam.counter(
                &[("slot", &s.name), ("result", "failed")],
                s.stats.probes(false),
            );
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_probe_step_duration_seconds",
            Kind::Histogram,
            "Duration of each probe step per slot (millisecond resolution); steps never run are left out",
        );
        for s in slots {
            for (i, step) in PROBE_STEPS.iter().enumerate() {
                let Some(h) = s.stats.probe_step(i) else {
                    continue;
                };
                let snap = h.snapshot();
                if snap.count > 0 {
                    fam.histogram(&[("slot", &s.name), ("step", step)], histogram(&snap));
                }
            }
        }
    }

    {
        let mut fam = w.family(
            "mcpflip_drains",
            Kind::Counter,
            "Finished drains per slot: `drained` by itself, or `forced` at its deadline",
        );
        for s in slots {
            fam.counter(
                &[("slot", &s.name), ("result", "drained")],
                s.stats.drains(false),
            );
            fam.counter(
                &[("slot", &s.name), ("result", "forced")],
                s.stats.drains(true),
            );
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_drain_forced_streams",
            Kind::Counter,
            "Streams a drain deadline ended (at an event boundary), per slot",
        );
        for s in slots {
            fam.counter(&[("slot", &s.name)], s.stats.forced_streams());
        }
    }
    let drains = ctl.drains.status();
    for (name, help, pick) in [
        (
            "mcpflip_drain_elapsed_seconds",
            "Time since the running drain of a slot started (present while it runs)",
            (|e, _| e) as fn(u64, u64) -> u64,
        ),
        (
            "mcpflip_drain_deadline_seconds",
            "Deadline of the running drain of a slot (present while it runs)",
            |_, d| d,
        ),
    ] {
        let mut fam = w.family(name, Kind::Gauge, help);
        for d in &drains {
            let ms = pick(d.elapsed_ms, d.deadline_ms);
            fam.gauge(&[("slot", &d.slot)], ms as f64 / 1000.0);
        }
    }

    let (watching, remaining) = ctl.watch.status().map_or((0.0, 0.0), |w| {
        (
            1.0,
            w.window_ms.saturating_sub(w.elapsed_ms) as f64 / 1000.0,
        )
    });
    w.family(
        "mcpflip_watch_active",
        Kind::Gauge,
        "1 while a watch window runs after a probed flip",
    )
    .gauge(&[], watching);
    w.family(
        "mcpflip_watch_remaining_seconds",
        Kind::Gauge,
        "Time left in the running watch window (0 when none runs)",
    )
    .gauge(&[], remaining);
    {
        let mut fam = w.family(
            "mcpflip_watch_outcomes",
            Kind::Counter,
            "Watch windows by how they ended",
        );
        for (i, result) in WATCH_RESULTS.iter().enumerate() {
            fam.counter(&[("result", result)], ctl.watch.ended(i));
        }
    }

    for (name, help, v) in [
        (
            "mcpflip_flips",
            "Flips done",
            ctl.flips_total.load(Ordering::Relaxed),
        ),
        (
            "mcpflip_rollbacks",
            "Rollbacks done (by hand or by a watch window)",
            ctl.rollbacks_total.load(Ordering::Relaxed),
        ),
        (
            "mcpflip_state_save_failures",
            "Saves of the state file that failed",
            ctl.state_save_failures_total.load(Ordering::Relaxed),
        ),
    ] {
        w.family(name, Kind::Counter, help).counter(&[], v);
    }
    w.family(
        "mcpflip_state_persisted",
        Kind::Gauge,
        "1 when the state file holds the state that routes, 0 after a change could not be saved",
    )
    .gauge(&[], f64::from(u8::from(ctl.persisted())));
    if let Some(store) = ctl.store() {
        w.family(
            "mcpflip_cluster_connected",
            Kind::Gauge,
            "1 while the fleet's etcd answers this instance, 0 while it is cut off (it serves on its last table and refuses changes)",
        )
        .gauge(&[], f64::from(u8::from(store.status().connected)));
        let snap = store.propagation();
        w.family(
            "mcpflip_cluster_propagation_seconds",
            Kind::Histogram,
            "Time from a table change's commit to etcd (on another instance) to its routing here (wall clocks; millisecond resolution)",
        )
        .histogram(&[], histogram(&snap));
        {
            let mut fam = w.family(
                "mcpflip_cluster_session_writes",
                Kind::Counter,
                "Captured sessions' records written to the fleet's etcd ([drain] migrate = \"replay\"): ok, failed (retried), dropped (queue full)",
            );
            for result in FleetWrite::ALL {
                fam.counter(&[("result", result.as_str())], proxy.fleet_writes(result));
            }
        }
        {
            let mut fam = w.family(
                "mcpflip_cluster_sessions_taken",
                Kind::Counter,
                "Sessions this instance took from the fleet's etcd: record (a session begun through another instance), move (a move another instance made; nothing replayed here), raced (another instance's move recorded while this one replayed too)",
            );
            for what in FleetTaken::ALL {
                fam.counter(&[("what", what.as_str())], proxy.fleet_taken(what));
            }
        }
    }
    if let Some(acme) = ctl.acme_status() {
        let mut fam = w.family(
            "mcpflip_acme_orders",
            Kind::Counter,
            "Certificate orders of [listen] tls.acme, by result: issued (served from the next handshake), shared (another fleet instance's certificate taken instead), failed (tried again later)",
        );
        fam.counter(&[("result", "issued")], acme.issued);
        fam.counter(&[("result", "shared")], acme.shared);
        fam.counter(&[("result", "failed")], acme.failed);
    }
    {
        let mut fam = w.family(
            "mcpflip_reloads",
            Kind::Counter,
            "Config reloads (`ctl reload`, SIGHUP): `ok` applied, `failed` refused (the running config stays)",
        );
        for (i, result) in counters::RELOAD_RESULTS.iter().enumerate() {
            fam.counter(&[("result", result)], ctl.counters.reloads(i));
        }
    }
    {
        // The applied config's certificates: what the listener serves (a reload
        // swaps both together).
        let config = ctl.config();
        let certs = &config.resolved.certificates;
        let mut fam = w.family(
            "mcpflip_certificate_expiry_timestamp_seconds",
            Kind::Gauge,
            "notAfter of each certificate the public and admin listeners serve, seconds since the Unix epoch",
        );
        for c in certs {
            let file = c.file.display().to_string();
            fam.gauge(&[("name", &c.name), ("file", &file)], c.not_after as f64);
        }
    }
    {
        let config = ctl.config();
        let mut fam = w.family(
            "mcpflip_slot_client_certificate_expiry_timestamp_seconds",
            Kind::Gauge,
            "notAfter of the client certificate each https:// slot presents ([[slot]] cert), seconds since the Unix epoch",
        );
        for c in &config.resolved.slot_certificates {
            let file = c.file.display().to_string();
            fam.gauge(&[("slot", &c.slot), ("file", &file)], c.not_after as f64);
        }
    }
    w.family(
        "mcpflip_access_log_dropped_lines",
        Kind::Counter,
        "Access-log lines lost: the writer fell 16,384 lines behind or a write failed (the request path never waits for it)",
    )
    .counter(&[], crate::log::dropped_lines());
    w.family(
        "mcpflip_start_time_seconds",
        Kind::Gauge,
        "When this process started serving, seconds since the Unix epoch",
    )
    .gauge(&[], ctl.counters.started());
    process::write(&mut w, process);
    w.finish()
}

/// The public listener's own families: its connections, the connections it
/// refused, client faults, and the answers it made before choosing a slot.
fn edge(w: &mut Writer, proxy: &ProxyStats) {
    w.family(
        "mcpflip_open_connections",
        Kind::Gauge,
        "Open client connections of the public listener",
    )
    .gauge(&[], proxy.open_connections() as f64);
    {
        let mut fam = w.family(
            "mcpflip_connections_refused",
            Kind::Counter,
            "Client connections refused, by reason (`max_connections`, `max_connections_per_ip`: answered 503 or closed at the cap)",
        );
        for why in Refusal::ALL {
            fam.counter(&[("reason", why.as_str())], proxy.refused(why));
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_client_errors",
            Kind::Counter,
            "Client faults by kind (never in a slot's 5xx): no request head in time, a request body that paused too long or broke, a malformed Host/Origin, plain HTTP on the TLS port",
        );
        for kind in ClientFault::ALL {
            fam.counter(&[("kind", kind.as_str())], proxy.client_faults(kind));
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_local_responses",
            Kind::Counter,
            "Answers the proxy made itself before a slot was chosen, by status code and reason",
        );
        for answer in LocalResponse::ALL {
            let code = answer.code().to_string();
            fam.counter(
                &[("code", &code), ("reason", answer.reason())],
                proxy.local_responses(answer),
            );
        }
    }
    // Live session migration ([drain] migrate = "replay"; zero when off).
    w.family(
        "mcpflip_sessions_migrated",
        Kind::Counter,
        "Sessions moved to a serving slot by replaying their initialize ([drain] migrate = \"replay\")",
    )
    .counter(&[], proxy.migrated());
    {
        let mut fam = w.family(
            "mcpflip_migrations_failed",
            Kind::Counter,
            "Sessions that could not move to a serving slot, by cause (their request was answered 404)",
        );
        for cause in MigrateFailure::ALL {
            fam.counter(&[("cause", cause.as_str())], proxy.migrate_failures(cause));
        }
    }
    {
        let mut fam = w.family(
            "mcpflip_client_addresses",
            Kind::Gauge,
            "Client addresses a per-address limit keeps state for (max_connections_per_ip: with an open connection; rate_limit: remembered, at most max_clients)",
        );
        for map in AddressMap::ALL {
            fam.gauge(&[("limit", map.as_str())], proxy.addresses(map) as f64);
        }
    }
    w.family(
        "mcpflip_captured_sessions",
        Kind::Gauge,
        "Sessions whose initialize the proxy holds for a replay",
    )
    .gauge(&[], proxy.captured_sessions() as f64);
    w.family(
        "mcpflip_captured_session_bytes",
        Kind::Gauge,
        "Bytes of request bodies held for captured sessions",
    )
    .gauge(&[], proxy.captured_bytes() as f64);
    w.family(
        "mcpflip_captured_sessions_saved_timestamp_seconds",
        Kind::Gauge,
        "When the captured sessions were last saved beside the state file (0: not yet; without a fleet)",
    )
    .gauge(&[], proxy.sessions_saved_at() as f64);
    w.family(
        "mcpflip_captured_sessions_save_failures",
        Kind::Counter,
        "Saves of the captured sessions beside the state file that failed",
    )
    .counter(&[], proxy.sessions_save_failures());
    w.family(
        "mcpflip_interrupted_calls",
        Kind::Counter,
        "Calls whose slot went away before answering, answered with a JSON-RPC error by the proxy",
    )
    .counter(&[], proxy.interrupted());
}

fn histogram(s: &crate::stats::HistogramSnapshot) -> Histogram<'_> {
    Histogram {
        buckets: &s.buckets,
        count: s.count,
        sum: s.sum,
    }
}
