//! The status page at `GET /`, rendered on the server from the status and the
//! recent events, so that it is complete without JavaScript (a `<noscript>`
//! meta refresh reloads it every [`REFRESH_S`] seconds). With JavaScript,
//! `app.js` redraws the same sections, with the same structure, from the
//! `/events` feed. `style.css` and `app.js` are embedded in the binary: the
//! page makes no request anywhere but to this listener.
//!
//! Everything that comes from outside the page's own text (slot names,
//! upstream URLs, probe errors and body excerpts, rollback reasons) goes
//! through [`esc`]; nothing is ever written unescaped.

use std::fmt::Write;

use serde_json::Value;

use crate::control::protocol::{DeployPhase, DeployStatus, Event, Status, WatchOutcome};

/// The embedded assets.
pub const APP_JS: &str = include_str!("assets/app.js");
pub const STYLE_CSS: &str = include_str!("assets/style.css");
pub const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Seconds between reloads of the page without JavaScript.
pub const REFRESH_S: u32 = 2;

/// `s` with `& < > " '` escaped, for text and attribute values alike.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `HH:MM:SS` (UTC) of milliseconds since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `1.2 s`, `15 s`, `4 min 10 s`, `5 min`.
pub fn dur(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if (ms / 1000).is_multiple_of(60) {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} min {} s", ms / 60_000, ms / 1000 % 60)
    }
}

/// `1 live stream`, `2 live streams`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What the page shows: the status, the recent events (oldest first), and
/// the version line.
pub struct Page<'a> {
    pub status: &'a Status,
    pub recent: &'a [Value],
    pub version: &'a str,
    pub commit: &'a str,
}

impl Page<'_> {
    /// The whole HTML document.
    pub fn render(&self) -> String {
        let s = self.status;
        let active = s.active.as_deref().unwrap_or("none");
        let mut o = String::with_capacity(8 * 1024);
        let _ = write!(
            o,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>mcpflip · {}</title>\n\
             <noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_S}\"></noscript>\n\
             <link rel=\"stylesheet\" href=\"/style.css\">\n\
             <link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">\n\
             <script src=\"/app.js\" defer></script>\n</head>\n",
            esc(active)
        );
        let _ = write!(
            o,
            "<body data-events=\"{}\">\n<header>\n<h1>mcpflip</h1>\n\
             <span id=\"active\">active: <b>{}</b></span>\n\
             <span id=\"conn\" data-conn=\"static\">static page, reloads every {REFRESH_S} s</span>\n\
             <span class=\"version\">{} · {}</span>\n</header>\n<main>\n",
            Event::NAMES.join(" "),
            esc(active),
            esc(self.version),
            esc(self.commit),
        );
        o.push_str("<section id=\"slots-section\">\n<h2>Slots</h2>\n");
        slots(s, &mut o);
        if s.cluster.is_some() {
            o.push_str(
                "</section>\n<section id=\"fleet-section\">\n<h2>Fleet</h2>\n<div id=\"fleet\">\n",
            );
            fleet(s, &mut o);
            o.push_str("</div>\n");
        }
        if s.migration.is_some() {
            o.push_str("</section>\n<section id=\"migration-section\">\n<h2>Session migration</h2>\n<div id=\"migration\">\n");
            migration(s, &mut o);
            o.push_str("</div>\n");
        }
        if s.acme.is_some() {
            o.push_str("</section>\n<section id=\"acme-section\">\n<h2>Certificate (ACME)</h2>\n<div id=\"acme\">\n");
            acme(s, &mut o);
            o.push_str("</div>\n");
        }
        o.push_str(
            "</section>\n<section id=\"drain-section\">\n<h2>Drain</h2>\n<div id=\"drains\">\n",
        );
        drains(s, &mut o);
        o.push_str("</div>\n</section>\n<section id=\"deploy-section\">\n<h2>Deploy</h2>\n<div id=\"deploy\">\n");
        deploy(s, &mut o);
        o.push_str("</div>\n</section>\n<section id=\"events-section\">\n<h2>Last events <small>(UTC, newest first)</small></h2>\n<ol id=\"events\">\n");
        events(self.recent, &mut o);
        o.push_str(
            "</ol>\n</section>\n</main>\n<footer>read-only · <a href=\"/status\">/status</a> · \
             <a href=\"/metrics\">/metrics</a> · <a href=\"/events\">/events</a></footer>\n\
             </body>\n</html>\n",
        );
        o
    }
}

fn slots(s: &Status, o: &mut String) {
    o.push_str(
        "<table id=\"slots\">\n<thead><tr><th>slot</th><th>state</th><th class=\"num\">weight</th>\
         <th class=\"num\">gen</th><th class=\"num\">live streams</th><th class=\"num\">in flight</th>\
         <th>upstream</th></tr></thead>\n<tbody>\n",
    );
    for x in &s.slots {
        let state = x.state.as_str();
        let _ = writeln!(
            o,
            "<tr data-slot=\"{n}\" data-state=\"{state}\"><td class=\"name\">{n}</td>\
             <td class=\"state\"><span class=\"badge {state}\">{state}</span></td>\
             <td class=\"num weight\">{}</td><td class=\"num generation\">{}</td>\
             <td class=\"num live\">{}</td><td class=\"num inflight\">{}</td>\
             <td class=\"upstream\">{}</td></tr>",
            x.weight,
            x.generation,
            x.live_streams,
            x.inflight,
            esc(&x.upstream),
            n = esc(&x.name),
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

/// What a drain of `slot` waits for: this instance's live streams and
/// requests in flight, and in a fleet every other instance's as it
/// published them (`(live, in flight, this instance's live)`; app.js's
/// `drainCounts` is the same).
fn drain_counts(s: &Status, slot: &str) -> (u64, u64, Option<u64>) {
    let here = s.slots.iter().find(|x| x.name == slot);
    let (live, inflight) = here.map_or((0, 0), |x| (x.live_streams, x.inflight));
    let Some(c) = &s.cluster else {
        return (live, inflight, None);
    };
    let (mut all_live, mut all_inflight) = (live, inflight);
    for i in c.instances.iter().filter(|i| i.name != c.instance) {
        for x in i.slots.iter().filter(|x| x.slot == slot) {
            all_live += x.live_streams;
            all_inflight += x.inflight;
        }
    }
    (all_live, all_inflight, Some(live))
}

/// The live streams of a drain as the page writes them: `1 live stream`,
/// in a fleet `3 live streams in the fleet (1 here)`.
fn live_text(live: u64, here: Option<u64>) -> String {
    let n = count(live, "live stream", "live streams");
    match here {
        Some(h) => format!("{n} in the fleet ({h} here)"),
        None => n,
    }
}

/// The fleet (`[cluster]`): this instance, etcd, the table's revision, the
/// deploy lock, and each live instance's counts per slot with their sums.
fn fleet(s: &Status, o: &mut String) {
    let Some(c) = &s.cluster else { return };
    let etcd = if c.connected {
        "<span class=\"etcd up\">connected</span>".to_owned()
    } else {
        format!(
            "<span class=\"etcd down\">unreachable{}</span>",
            c.disconnected_since_ms
                .map(|t| format!(" since {}", clock(t)))
                .unwrap_or_default()
        )
    };
    let _ = writeln!(
        o,
        "<p class=\"fleet-head\" data-connected=\"{}\">this instance <b>{}</b> · etcd {etcd} · \
         table revision {} · deploy lock <b class=\"lock\">{}</b></p>",
        c.connected,
        esc(&c.instance),
        c.revision,
        esc(c.deploy_lock.as_deref().unwrap_or("free")),
    );
    o.push_str(
        "<table id=\"instances\">\n<thead><tr><th>instance</th><th class=\"num\">counts from</th>",
    );
    for x in &s.slots {
        let _ = write!(
            o,
            "<th class=\"num\">{} live / in flight</th>",
            esc(&x.name)
        );
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    let cells = |o: &mut String, counts: &[crate::control::protocol::SlotCounts]| {
        for x in &s.slots {
            let (live, inflight) = counts
                .iter()
                .find(|y| y.slot == x.name)
                .map_or((0, 0), |y| (y.live_streams, y.inflight));
            let _ = write!(
                o,
                "<td class=\"num\" data-slot=\"{}\">{live} / {inflight}</td>",
                esc(&x.name)
            );
        }
    };
    for i in &c.instances {
        let _ = write!(
            o,
            "<tr data-instance=\"{n}\"><td class=\"name\">{n}{}</td><td class=\"num age\">{} ago</td>",
            if i.name == c.instance { " (this one)" } else { "" },
            dur(i.lease_age_ms),
            n = esc(&i.name),
        );
        cells(o, &i.slots);
        o.push_str("</tr>\n");
    }
    o.push_str("<tr class=\"total\" data-instance=\"\"><td class=\"name\">fleet</td><td></td>");
    cells(o, &c.totals);
    o.push_str("</tr>\n</tbody>\n</table>\n");
}

/// `1.5 KiB`, `2.0 MiB`: a byte count as people read it (app.js's `size`).
fn size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// `[drain] migrate = "replay"`: the sessions held for a move, the moves,
/// the sessions that could not move by cause, and the calls cut in flight
/// (app.js's `renderMigration` is the same).
fn migration(s: &Status, o: &mut String) {
    let Some(m) = &s.migration else { return };
    let failed: u64 = m.failed.values().sum();
    let causes: Vec<String> = m
        .failed
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    let _ = writeln!(
        o,
        "<p class=\"migration-counts\" data-migrated=\"{}\" data-failed=\"{failed}\">{} · {} moved · {} could not move{} · {}</p>",
        m.migrated,
        esc(&format!(
            "{} captured ({})",
            count(m.captured_sessions, "session", "sessions"),
            size(m.captured_bytes)
        )),
        m.migrated,
        failed,
        if causes.is_empty() {
            String::new()
        } else {
            esc(&format!(" ({})", causes.join(", ")))
        },
        count(m.interrupted_calls, "call interrupted", "calls interrupted"),
    );
}

/// `[listen] tls.acme`: the domains and the CA, what the orders came to, why
/// the last one failed, and when the certificate is looked at next (app.js's
/// `renderAcme` is the same).
fn acme(s: &Status, o: &mut String) {
    let Some(a) = &s.acme else { return };
    let _ = writeln!(
        o,
        "<p class=\"acme-head\"><b>{}</b> from <span class=\"directory\">{}</span></p>",
        esc(&a.domains.join(", ")),
        esc(&a.directory)
    );
    let mut counts = format!("{} issued, {} failed", a.issued, a.failed);
    if a.shared > 0 {
        let _ = write!(counts, ", {} taken from the fleet", a.shared);
    }
    if let Some(at) = a.issued_at_ms {
        let _ = write!(counts, " · last certificate at {}", clock(at));
    }
    if let Some(at) = a.next_check_ms {
        let _ = write!(counts, " · next look at {}", clock(at));
    }
    let _ = writeln!(
        o,
        "<p class=\"acme-counts\" data-issued=\"{}\" data-failed=\"{}\">{}</p>",
        a.issued,
        a.failed,
        esc(&counts)
    );
    if let Some(e) = &a.error {
        let _ = writeln!(
            o,
            "<p class=\"acme-error\">last order failed: {}</p>",
            esc(e)
        );
    }
}

fn drains(s: &Status, o: &mut String) {
    for d in &s.drains {
        let (live, inflight, here) = drain_counts(s, &d.slot);
        let _ = writeln!(
            o,
            "<div class=\"drain\" data-slot=\"{n}\">\n<p class=\"drain-head\"><b>{n}</b> \
             <span class=\"live\">{}</span>, <span class=\"inflight\">{} in flight</span></p>\n\
             <p class=\"clock\"><meter min=\"0\" max=\"{}\" value=\"{}\"></meter> \
             <span>{} of {} deadline</span></p>\n</div>",
            esc(&live_text(live, here)),
            inflight,
            d.deadline_ms,
            d.elapsed_ms.min(d.deadline_ms),
            dur(d.elapsed_ms),
            dur(d.deadline_ms),
            n = esc(&d.slot),
        );
    }
    if s.drains.is_empty() {
        o.push_str("<p class=\"none\">No drain runs.</p>\n");
        if let Some(d) = &s.deploy {
            for x in &d.drained {
                let _ = writeln!(
                    o,
                    "<p class=\"last-drain\">last: {}</p>",
                    esc(&drained_text(x))
                );
            }
        }
    }
}

fn drained_text(d: &crate::control::protocol::Drained) -> String {
    let mut t = format!(
        "{} drained after {}",
        d.slot,
        dur(d.outcome.drained_after_ms)
    );
    if d.outcome.forced > 0 {
        let _ = write!(
            t,
            ", {} ended at the deadline",
            count(d.outcome.forced, "stream", "streams")
        );
    }
    t
}

/// One phase of a deploy, as the page lists it.
struct Phase {
    name: &'static str,
    state: &'static str,
    detail: String,
    /// Probe steps: (ok, text).
    steps: Vec<(bool, String)>,
    /// A clock: (value, max).
    meter: Option<(u64, u64)>,
}

impl Phase {
    fn new(name: &'static str, state: &'static str, detail: impl Into<String>) -> Phase {
        Phase {
            name,
            state,
            detail: detail.into(),
            steps: Vec::new(),
            meter: None,
        }
    }
}

/// The phases of `d` as the page shows them (app.js's `phases` is the same).
fn phases(d: &DeployStatus, s: &Status) -> Vec<Phase> {
    let failed = d.phase == DeployPhase::Failed;
    let mut out = Vec::new();
    let mut probe = match &d.probe {
        Some(p) if p.ok => Phase::new("probe", "done", format!("passed in {} ms", p.ms)),
        Some(p) => Phase::new(
            "probe",
            "failed",
            format!(
                "failed: {}",
                p.error.as_deref().unwrap_or("unknown failure")
            ),
        ),
        None if d.phase == DeployPhase::Probe => {
            Phase::new("probe", "active", format!("probing {}", d.to))
        }
        None => Phase::new("probe", "skipped", "not run"),
    };
    if let Some(p) = &d.probe {
        probe.steps = p
            .steps
            .iter()
            .map(|st| {
                let mut t = format!("{} {} ms", st.step, st.ms);
                if !st.ok {
                    let _ = write!(t, ": {}", st.detail);
                }
                (st.ok, t)
            })
            .collect();
    }
    out.push(probe);
    out.push(match d.flipped_at {
        Some(at) => Phase::new(
            "flip",
            "done",
            format!(
                "{} → {} at {}",
                d.from.as_deref().unwrap_or("(none)"),
                d.to,
                clock(at)
            ),
        ),
        None if failed => Phase::new("flip", "skipped", "not flipped"),
        None => Phase::new("flip", "pending", ""),
    });
    out.push(if d.flipped_at.is_none() {
        Phase::new("drain", if failed { "skipped" } else { "pending" }, "")
    } else if d.draining.is_empty() {
        Phase::new("drain", "done", "nothing to drain")
    } else {
        let mut texts = Vec::new();
        let mut meter = None;
        for slot in &d.draining {
            if let Some(x) = d.drained.iter().find(|x| &x.slot == slot) {
                texts.push(drained_text(x));
            } else if let Some(r) = s.drains.iter().find(|r| &r.slot == slot) {
                let (live, _, here) = drain_counts(s, slot);
                texts.push(format!(
                    "{slot}: {}, {} of {}",
                    live_text(live, here),
                    dur(r.elapsed_ms),
                    dur(r.deadline_ms)
                ));
                meter = Some((r.elapsed_ms.min(r.deadline_ms), r.deadline_ms));
            } else {
                texts.push(format!("{slot}: drain ended early"));
            }
        }
        let all = d
            .draining
            .iter()
            .all(|x| d.drained.iter().any(|y| &y.slot == x));
        let state = if all {
            "done"
        } else if d.phase == DeployPhase::Drain {
            "active"
        } else {
            "skipped"
        };
        let mut p = Phase::new("drain", state, texts.join("; "));
        p.meter = meter;
        p
    });
    let running_watch = s
        .watch
        .as_ref()
        .filter(|w| w.slot == d.to && !d.phase.ended());
    out.push(match (&d.watch, running_watch) {
        (Some(WatchOutcome::Passed { probes }), _) => Phase::new(
            "watch",
            "done",
            format!("passed, {}", count(*probes, "probe", "probes")),
        ),
        (Some(WatchOutcome::RolledBack { reason, .. }), _) => {
            Phase::new("watch", "failed", format!("failed: {reason}"))
        }
        (Some(WatchOutcome::Failed { reason }), _) => {
            Phase::new("watch", "failed", format!("failed: {reason}"))
        }
        (Some(WatchOutcome::Cancelled { reason }), _) => {
            Phase::new("watch", "skipped", format!("ended early: {reason}"))
        }
        (None, Some(w)) if d.flipped_at.is_some() => {
            let mut p = Phase::new(
                "watch",
                "active",
                format!(
                    "{}: {} left, {} passed",
                    w.slot,
                    dur(w.window_ms.saturating_sub(w.elapsed_ms)),
                    count(w.probes, "probe", "probes")
                ),
            );
            p.meter = Some((w.elapsed_ms.min(w.window_ms), w.window_ms));
            p
        }
        (None, _) if failed => Phase::new("watch", "skipped", ""),
        (None, _) => Phase::new("watch", "pending", ""),
    });
    if let Some(WatchOutcome::RolledBack { to, reason, .. }) = &d.watch {
        out.push(Phase::new(
            "rollback",
            "done",
            format!("rolled back to {to}: {reason}"),
        ));
    }
    out.push(match d.phase {
        DeployPhase::Passed => {
            Phase::new("result", "done", format!("passed in {}", dur(d.elapsed_ms)))
        }
        DeployPhase::Failed => Phase::new(
            "result",
            "failed",
            d.error.clone().unwrap_or_else(|| "failed".to_owned()),
        ),
        _ => Phase::new(
            "result",
            "pending",
            format!("running for {}", dur(d.elapsed_ms)),
        ),
    });
    out
}

/// The deploy the page shows: this instance's, or in a fleet the fleet's
/// last when it is newer (another instance ran it), with who ran it and
/// whether it was orphaned (app.js's `shownDeploy` is the same).
fn shown_deploy(
    s: &Status,
) -> Option<(
    &DeployStatus,
    Option<&crate::control::protocol::FleetDeploy>,
)> {
    let fleet = s.cluster.as_ref().and_then(|c| c.deploy.as_ref());
    match (&s.deploy, fleet) {
        (Some(d), Some(f)) if f.status.started_at > d.started_at => Some((&f.status, Some(f))),
        (Some(d), _) => Some((d, None)),
        (None, Some(f)) => Some((&f.status, Some(f))),
        (None, None) => None,
    }
}

fn deploy(s: &Status, o: &mut String) {
    let Some((d, fleet)) = shown_deploy(s) else {
        o.push_str("<p class=\"none\">No deploy since the proxy started.</p>\n");
        return;
    };
    let by = match fleet {
        Some(f) => format!(
            " · by <b class=\"by\">{}</b>{}",
            esc(&f.by),
            if f.orphaned {
                " <span class=\"badge orphaned\">orphaned</span>"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "<p class=\"deploy-head\" data-phase=\"{p}\">deploy <b>{}</b> from <b>{}</b> · started {}{by} · \
         <span class=\"badge phase-{p}\">{p}</span></p>\n<ol class=\"phases\">",
        esc(&d.to),
        esc(d.from.as_deref().unwrap_or("(none)")),
        clock(d.started_at),
        p = d.phase.as_str(),
    );
    for ph in phases(d, s) {
        let _ = write!(
            o,
            "<li class=\"phase {st}\" data-phase=\"{n}\" data-state=\"{st}\">\
             <span class=\"label\">{n}</span> <span class=\"detail\">{}</span>",
            esc(&ph.detail),
            n = ph.name,
            st = ph.state,
        );
        if let Some((value, max)) = ph.meter {
            let _ = write!(
                o,
                " <meter min=\"0\" max=\"{max}\" value=\"{value}\"></meter>"
            );
        }
        if !ph.steps.is_empty() {
            o.push_str("<ul class=\"steps\">");
            for (ok, t) in &ph.steps {
                let _ = write!(
                    o,
                    "<li class=\"{}\">{}</li>",
                    if *ok { "ok" } else { "fail" },
                    esc(t)
                );
            }
            o.push_str("</ul>");
        }
        o.push_str("</li>\n");
    }
    o.push_str("</ol>\n");
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn list_of(v: &Value, key: &str) -> String {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// One line for an event (app.js's `summary` is the same).
pub fn summary(v: &Value) -> String {
    let slot = str_of(v, "slot");
    let u = |key: &str| v[key].as_u64().unwrap_or(0);
    match str_of(v, "event") {
        "weights_set" => {
            let parts: Vec<String> = v["slots"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| format!("{}={}", str_of(s, "name"), s["weight"]))
                        .collect()
                })
                .unwrap_or_default();
            format!("weights {}", parts.join(" "))
        }
        "flipped" => {
            let mut t = format!(
                "{} → {}",
                v["from"].as_str().unwrap_or("(none)"),
                str_of(v, "to")
            );
            let draining = list_of(v, "draining");
            if !draining.is_empty() {
                let _ = write!(t, "; draining {draining}");
            }
            t
        }
        "drain_started" => format!("{slot} draining (generation {})", u("generation")),
        "slot_drained" => format!("{slot} drained"),
        "drain_ended" => {
            let mut t = format!("{slot} drain ended after {}", dur(u("drained_after_ms")));
            if u("forced") > 0 {
                let _ = write!(t, ", {} forced", u("forced"));
            }
            t
        }
        "retired" => format!("{slot} retired"),
        "standby" => format!("{slot} on standby (generation {})", u("generation")),
        "slot_added" => format!("{slot} added ({})", str_of(v, "state")),
        "slot_removed" => format!("{slot} removed"),
        "slot_readdressed" => format!("{slot} has a new upstream"),
        "probe_done" if v["ok"] == true => format!("probe of {slot} passed in {} ms", u("ms")),
        "probe_done" => format!("probe of {slot} failed: {}", str_of(v, "error")),
        "watch_ended" => {
            let o = &v["outcome"];
            let what = match str_of(o, "result") {
                "passed" => format!("passed ({} probes)", o["probes"].as_u64().unwrap_or(0)),
                "rolled_back" => format!("rolled back: {}", str_of(o, "reason")),
                other => format!("{other}: {}", str_of(o, "reason")),
            };
            format!("watch of {slot} {what}")
        }
        "rolled_back" => format!(
            "rolled back {} → {}: {}",
            v["from"].as_str().unwrap_or("(none)"),
            str_of(v, "to"),
            str_of(v, "reason")
        ),
        "state_not_saved" => format!("state NOT saved: {}", str_of(v, "error")),
        "reloaded" => {
            let changed = list_of(v, "changed");
            if changed.is_empty() {
                "config reloaded, nothing changed".to_owned()
            } else {
                format!("config reloaded: {changed}")
            }
        }
        "deploy_started" => format!(
            "deploy of {} started (from {})",
            str_of(v, "to"),
            v["from"].as_str().unwrap_or("(none)")
        ),
        "deploy_ended" if v["ok"] == true => {
            format!(
                "deploy of {} passed in {}",
                str_of(v, "to"),
                dur(u("elapsed_ms"))
            )
        }
        "deploy_ended" => format!(
            "deploy of {} failed: {}",
            str_of(v, "to"),
            str_of(v, "error")
        ),
        "lagged" => format!("{} events missed (the reader fell behind)", u("missed")),
        other => other.to_owned(),
    }
}

fn events(recent: &[Value], o: &mut String) {
    if recent.is_empty() {
        o.push_str("<li class=\"none\">No events since the proxy started.</li>\n");
    }
    for v in recent.iter().rev() {
        let name = str_of(v, "event");
        let _ = writeln!(
            o,
            "<li data-event=\"{n}\"><time>{}</time> <span class=\"ev\">{n}</span> <span class=\"text\">{}</span></li>",
            clock(v["at"].as_u64().unwrap_or(0)),
            esc(&summary(v)),
            n = esc(name),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        DrainOutcome, DrainStatus, Drained, SlotStatus, StateFileStatus, WatchStatus,
    };
    use crate::probe::{ProbeReport, Step};
    use crate::table::SlotState;

    const HOSTILE: &str = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>";

    fn status() -> Status {
        Status {
            slots: vec![
                SlotStatus {
                    name: "blue".into(),
                    upstream: format!("http://127.0.0.1:3001/{HOSTILE}"),
                    weight: 0,
                    state: SlotState::Draining,
                    generation: 1,
                    live_streams: 1,
                    inflight: 0,
                },
                SlotStatus {
                    name: "green".into(),
                    upstream: "http://127.0.0.1:3002".into(),
                    weight: 100,
                    state: SlotState::Serving,
                    generation: 2,
                    live_streams: 0,
                    inflight: 3,
                },
            ],
            active: Some("green".into()),
            flips_total: 1,
            rollbacks_total: 0,
            drain: None,
            drains: vec![DrainStatus {
                slot: "blue".into(),
                elapsed_ms: 3200,
                deadline_ms: 60_000,
            }],
            watch: Some(WatchStatus {
                slot: "green".into(),
                elapsed_ms: 2000,
                window_ms: 5000,
                probes: 1,
            }),
            last_rollback: None,
            state_file: StateFileStatus {
                path: "/tmp/state.json".into(),
                persisted: true,
                revision: 3,
                error: None,
            },
            deploy: Some(DeployStatus {
                to: "green".into(),
                from: Some("blue".into()),
                phase: DeployPhase::Drain,
                started_at: 1_700_000_000_000,
                elapsed_ms: 3300,
                probe: Some(ProbeReport {
                    ok: true,
                    slot: "green".into(),
                    transport: "streamable-http".into(),
                    protocol: None,
                    ms: 12,
                    tools: vec![],
                    steps: vec![Step {
                        step: "initialize".into(),
                        ok: true,
                        ms: 5,
                        detail: HOSTILE.into(),
                        status: None,
                        body: None,
                    }],
                    error: None,
                }),
                flipped_at: Some(1_700_000_000_100),
                draining: vec!["blue".into()],
                drained: vec![],
                watch: None,
                error: None,
                code: None,
            }),
            cluster: None,
            handover: None,
            migration: None,
            acme: None,
        }
    }

    fn page(s: &Status, recent: &[Value]) -> String {
        Page {
            status: s,
            recent,
            version: "0.1.0",
            commit: "abc",
        }
        .render()
    }

    #[test]
    fn renders_slots_drain_deploy_and_the_meta_refresh() {
        let s = status();
        let html = page(&s, &[]);
        assert!(html.contains("<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>"));
        assert!(html.contains(
            "<tr data-slot=\"blue\" data-state=\"draining\"><td class=\"name\">blue</td>"
        ));
        assert!(html.contains("<tr data-slot=\"green\" data-state=\"serving\">"));
        assert!(html.contains("<td class=\"num inflight\">3</td>"));
        assert!(html.contains("<div class=\"drain\" data-slot=\"blue\">"));
        assert!(html.contains("<span class=\"live\">1 live stream</span>"));
        assert!(html.contains("<meter min=\"0\" max=\"60000\" value=\"3200\"></meter>"));
        assert!(html.contains("data-phase=\"probe\" data-state=\"done\""));
        assert!(html.contains("data-phase=\"flip\" data-state=\"done\""));
        assert!(html.contains("data-phase=\"drain\" data-state=\"active\""));
        assert!(html.contains("data-phase=\"watch\" data-state=\"active\""));
        assert!(html.contains("blue → green at 22:13:20"), "{html}");
        // No script or style inline: the CSP allows only the files.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("<script src=\"/app.js\" defer></script>"));
        assert!(!html.contains("<style") && !html.contains(" style="));
        // Nothing is loaded from elsewhere.
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    }

    /// `status()` as instance `edge-1` of a fleet whose `edge-2` holds two
    /// of blue's streams, and whose last deploy `by` ran, started at `at`.
    fn in_a_fleet(by: &str, at: u64) -> Status {
        use crate::control::protocol::{ClusterStatus, FleetDeploy, InstanceStatus, SlotCounts};
        let counts = |blue: u64, green_inflight: u64| {
            vec![
                SlotCounts {
                    slot: "blue".into(),
                    live_streams: blue,
                    ..Default::default()
                },
                SlotCounts {
                    slot: "green".into(),
                    inflight: green_inflight,
                    ..Default::default()
                },
            ]
        };
        let mut s = status();
        let mut fleet_deploy = s.deploy.clone().expect("a deploy");
        fleet_deploy.started_at = at;
        s.cluster = Some(ClusterStatus {
            instance: "edge-1".into(),
            prefix: "/mcpflip".into(),
            connected: false,
            disconnected_since_ms: Some(1_700_000_003_000),
            revision: 42,
            instances: vec![
                InstanceStatus {
                    name: "edge-1".into(),
                    lease_age_ms: 400,
                    // Published before its own stream opened.
                    slots: counts(0, 3),
                },
                InstanceStatus {
                    name: HOSTILE.into(),
                    lease_age_ms: 1200,
                    slots: counts(2, 1),
                },
            ],
            totals: counts(2, 4),
            deploy_lock: Some(by.into()),
            deploy: Some(FleetDeploy {
                by: by.into(),
                status: fleet_deploy,
                orphaned: true,
            }),
        });
        s
    }

    #[test]
    fn in_a_fleet_the_drain_counts_every_instance_and_the_fleet_is_shown() {
        // The fleet's deploy is older than this instance's: this one's shows.
        let html = page(&in_a_fleet("edge-2", 1_600_000_000_000), &[]);
        // This instance's live stream now, and the other's as published.
        assert!(
            html.contains("<span class=\"live\">3 live streams in the fleet (1 here)</span>, <span class=\"inflight\">0 in flight</span>"),
            "{html}"
        );
        assert!(
            html.contains("blue: 3 live streams in the fleet (1 here), 3.2 s of 60 s"),
            "{html}"
        );
        assert!(html.contains("<section id=\"fleet-section\">"));
        assert!(html.contains("this instance <b>edge-1</b> · etcd <span class=\"etcd down\">unreachable since 22:13:23</span> · table revision 42 · deploy lock <b class=\"lock\">edge-2</b>"), "{html}");
        assert!(html.contains("<th class=\"num\">blue live / in flight</th><th class=\"num\">green live / in flight</th>"));
        assert!(html.contains("<tr data-instance=\"edge-1\"><td class=\"name\">edge-1 (this one)</td><td class=\"num age\">0.4 s ago</td><td class=\"num\" data-slot=\"blue\">0 / 0</td><td class=\"num\" data-slot=\"green\">0 / 3</td></tr>"), "{html}");
        assert!(html.contains("<td class=\"num\" data-slot=\"blue\">2 / 0</td><td class=\"num\" data-slot=\"green\">0 / 1</td>"));
        assert!(html.contains("<tr class=\"total\" data-instance=\"\"><td class=\"name\">fleet</td><td></td><td class=\"num\" data-slot=\"blue\">2 / 0</td><td class=\"num\" data-slot=\"green\">0 / 4</td></tr>"));
        assert!(!html.contains(HOSTILE) && html.contains("&lt;script&gt;alert(1)"));
        assert!(!html.contains("class=\"by\""), "{html}");
        // A newer deploy another instance ran shows, with who ran it.
        let html = page(&in_a_fleet("edge-2", 1_800_000_000_000), &[]);
        assert!(html.contains(" · by <b class=\"by\">edge-2</b> <span class=\"badge orphaned\">orphaned</span> · "), "{html}");
        // Without a fleet there is no fleet section and the counts are this
        // instance's.
        let html = page(&status(), &[]);
        assert!(!html.contains("fleet"), "{html}");
    }

    #[test]
    fn the_acme_section_says_how_the_certificate_came_and_why_an_order_failed() {
        let mut s = status();
        assert!(!page(&s, &[]).contains("acme"));
        s.acme = Some(crate::control::protocol::AcmeStatus {
            domains: vec!["mcp.example.com".into(), "b.example.com".into()],
            directory: crate::tls::LETS_ENCRYPT.into(),
            issued: 1,
            shared: 2,
            failed: 3,
            issued_at_ms: Some(1_700_000_000_000),
            error: Some(HOSTILE.into()),
            next_check_ms: Some(1_700_000_300_000),
        });
        let html = page(&s, &[]);
        assert!(html.contains("<section id=\"acme-section\">"), "{html}");
        assert!(html.contains("<p class=\"acme-head\"><b>mcp.example.com, b.example.com</b> from <span class=\"directory\">https://acme-v02.api.letsencrypt.org/directory</span></p>"), "{html}");
        assert!(html.contains("<p class=\"acme-counts\" data-issued=\"1\" data-failed=\"3\">1 issued, 3 failed, 2 taken from the fleet · last certificate at 22:13:20 · next look at 22:18:20</p>"), "{html}");
        assert!(
            html.contains("<p class=\"acme-error\">last order failed: &lt;script&gt;"),
            "{html}"
        );
        assert!(!html.contains(HOSTILE));
    }

    #[test]
    fn the_migration_section_counts_captures_moves_and_failures() {
        let mut s = status();
        assert!(!page(&s, &[]).contains("migration"));
        s.migration = Some(crate::control::protocol::MigrationStatus {
            mode: "replay".into(),
            captured_sessions: 1,
            captured_bytes: 3 * 1024 * 1024 / 2,
            migrated: 12,
            failed: [("not_captured".to_owned(), 2), ("upstream".to_owned(), 0)]
                .into_iter()
                .collect(),
            interrupted_calls: 3,
        });
        let html = page(&s, &[]);
        assert!(
            html.contains("<section id=\"migration-section\">"),
            "{html}"
        );
        assert!(
            html.contains("<p class=\"migration-counts\" data-migrated=\"12\" data-failed=\"2\">1 session captured (1.5 MiB) · 12 moved · 2 could not move (2 not_captured) · 3 calls interrupted</p>"),
            "{html}"
        );
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
    }

    #[test]
    fn escapes_everything_that_comes_from_outside() {
        let mut s = status();
        s.deploy = Some(DeployStatus {
            phase: DeployPhase::Failed,
            error: Some(HOSTILE.into()),
            watch: Some(WatchOutcome::RolledBack {
                reason: HOSTILE.into(),
                to: "blue".into(),
                persisted: true,
            }),
            drained: vec![Drained {
                slot: "blue".into(),
                outcome: DrainOutcome {
                    drained_after_ms: 10,
                    forced: 0,
                    persisted: true,
                },
            }],
            ..s.deploy.clone().expect("deploy")
        });
        s.drains.clear();
        let recent = vec![
            serde_json::json!({"event": "probe_done", "slot": "green", "ok": false, "error": HOSTILE, "at": 1}),
            serde_json::json!({"event": HOSTILE, "at": 2}),
            serde_json::json!({"event": "rolled_back", "to": "blue", "reason": HOSTILE, "at": 3}),
        ];
        let html = page(&s, &recent);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("\"'&<"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;&lt;img"));
        // Each hostile text shows up, escaped: the upstream, the probe step, the
        // deploy error, the rollback reason (twice) and three events.
        assert!(
            html.matches("&lt;img src=x onerror=alert(2)&gt;").count() >= 7,
            "{html}"
        );
    }

    #[test]
    fn a_failed_probe_shows_which_step_failed_and_skips_the_rest() {
        let mut s = status();
        let mut d = s.deploy.clone().expect("deploy");
        d.phase = DeployPhase::Failed;
        d.flipped_at = None;
        d.draining.clear();
        d.error = Some("probe of green failed: tools/list: missing whoami; nothing changed".into());
        if let Some(p) = d.probe.as_mut() {
            p.ok = false;
            p.error = Some("tools/list: missing whoami".into());
            p.steps[0].ok = false;
            p.steps[0].detail = "missing whoami".into();
        }
        s.deploy = Some(d);
        s.watch = None;
        let html = page(&s, &[]);
        assert!(html.contains("data-phase=\"probe\" data-state=\"failed\""));
        assert!(html.contains("<li class=\"fail\">initialize 5 ms: missing whoami</li>"));
        assert!(html.contains("data-phase=\"flip\" data-state=\"skipped\""));
        assert!(html.contains("data-phase=\"watch\" data-state=\"skipped\""));
        assert!(html.contains("data-phase=\"result\" data-state=\"failed\""));
    }

    #[test]
    fn the_body_names_every_event_for_the_script_to_listen_to() {
        let html = page(&status(), &[]);
        for n in Event::NAMES {
            assert!(html.contains(n), "{n}");
        }
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(clock(1_700_000_000_000), "22:13:20");
        assert_eq!(dur(1234), "1.2 s");
        assert_eq!(dur(15_000), "15 s");
        assert_eq!(dur(250_000), "4 min 10 s");
        assert_eq!(dur(300_000), "5 min");
    }
}
