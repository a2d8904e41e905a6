//! How `mcpflip ctl` shows replies: one function per reply type, reading the
//! typed replies of `protocol` (never guessing at JSON shapes).

use std::fmt::Write;

use crate::control::protocol::{
    ClusterStatus, DeployPhase, DeployStatus, Deployed, Drained, ErrorDetail, ErrorReply, Flipped,
    Progress, Reply, Status, WatchOutcome,
};
use crate::probe::ProbeReport;

/// "1 live stream", "2 live streams": a count with its noun, singular for one.
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A 20-cell bar of `done` out of `total`.
fn bar(done: f64, total: f64) -> String {
    let cells = if total > 0.0 {
        ((done / total).clamp(0.0, 1.0) * 20.0).round() as usize
    } else {
        0
    };
    format!("[{}{}]", "#".repeat(cells), ".".repeat(20 - cells))
}

/// The phase a progress line belongs to (a new phase starts a new line).
pub fn phase(p: &Progress) -> &'static str {
    match p {
        Progress::Probe { .. } => "probe",
        Progress::Flip { .. } => "flip",
        Progress::Drain { .. } => "drain",
        Progress::Watch { .. } => "watch",
    }
}

pub fn progress_line(p: &Progress) -> String {
    match p {
        Progress::Probe { slot } => format!("probe    {slot}: initialize, tools/list, canary ..."),
        Progress::Flip { from, to, draining } => format!(
            "flip     {} -> {to}; draining {}",
            from.as_deref().unwrap_or("(none)"),
            if draining.is_empty() {
                "nothing".to_owned()
            } else {
                draining.join(", ")
            }
        ),
        Progress::Watch {
            slot,
            elapsed_ms,
            window_ms,
            probes,
        } => {
            let (elapsed, window) = (secs(*elapsed_ms), secs(*window_ms));
            format!(
                "watch    {slot}: {} {:.0}s left, {} passed",
                bar(elapsed, window),
                (window - elapsed).max(0.0),
                counted(*probes, "probe"),
            )
        }
        Progress::Drain {
            slot,
            live_streams,
            inflight,
            elapsed_ms,
            deadline_ms,
        } => {
            let (elapsed, deadline) = (secs(*elapsed_ms), secs(*deadline_ms));
            format!(
                "drain    {slot}: {}, {inflight} in flight {} {elapsed:.1}s of {deadline:.0}s deadline",
                counted(*live_streams, "live stream"),
                bar(elapsed, deadline),
            )
        }
    }
}

/// The steps of a probe report, one line each.
fn probe_steps(report: &ProbeReport, out: &mut String) {
    for st in &report.steps {
        let _ = writeln!(
            out,
            "  {} {:<12} {:>5}ms  {}",
            if st.ok { "ok  " } else { "FAIL" },
            st.step,
            st.ms,
            st.detail,
        );
        if let Some(status) = st.status {
            let _ = write!(out, "       HTTP {status}");
            if let Some(b) = &st.body {
                let _ = write!(out, ": {b}");
            }
            out.push('\n');
        }
    }
}

fn drained_line(d: &Drained) -> String {
    let o = &d.outcome;
    let mut s = format!("{} drained after {:.3}s", d.slot, secs(o.drained_after_ms));
    if o.forced > 0 {
        let _ = write!(s, " ({} streams ended at the deadline)", o.forced);
    }
    if !o.persisted {
        s.push_str(" (NOT SAVED to the state file: see `status`)");
    }
    s
}

fn status(s: &Status) -> String {
    let mut out = format!(
        "{:<10} {:<9} {:>7} {:>4} {:>8} {:>8}  {}\n",
        "SLOT", "STATE", "WEIGHT", "GEN", "STREAMS", "INFLIGHT", "UPSTREAM"
    );
    for x in &s.slots {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>7} {:>4} {:>8} {:>8}  {}",
            x.name, x.state, x.weight, x.generation, x.live_streams, x.inflight, x.upstream
        );
    }
    if let Some(a) = &s.active {
        let _ = writeln!(out, "active: {a}");
    }
    for d in &s.drains {
        let _ = writeln!(
            out,
            "draining {}: {:.1}s of {:.0}s deadline",
            d.slot,
            secs(d.elapsed_ms),
            secs(d.deadline_ms)
        );
    }
    if let Some(w) = &s.watch {
        let _ = writeln!(
            out,
            "watching {}: {:.0}s of {:.0}s, {} passed",
            w.slot,
            secs(w.elapsed_ms),
            secs(w.window_ms),
            counted(w.probes, "probe")
        );
    }
    if let Some(d) = &s.deploy {
        let _ = writeln!(out, "{}", deploy_line(d));
    }
    if let Some(h) = &s.handover {
        let held: Vec<String> = h
            .slots
            .iter()
            .filter(|c| c.live_streams + c.inflight > 0)
            .map(|c| {
                format!(
                    "{} {}, {} in flight",
                    c.slot,
                    counted(c.live_streams, "live stream"),
                    c.inflight
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "handover: process {} handed over {:.0}s ago and still serves {} (drains wait for it too)",
            h.pid,
            secs(h.since_ms),
            if held.is_empty() {
                "nothing".to_owned()
            } else {
                held.join("; ")
            }
        );
    }
    if let Some(r) = &s.last_rollback {
        let _ = writeln!(
            out,
            "last rollback: {} -> {}: {}",
            r.from.as_deref().unwrap_or("(none)"),
            r.to,
            r.reason
        );
    }
    if let Some(c) = &s.cluster {
        out.push_str(&fleet(c));
    }
    if let Some(a) = &s.acme {
        let now = crate::control::controller::now_ms();
        let _ = writeln!(
            out,
            "acme: {} from {}: {} issued, {} failed{}{}{}",
            a.domains.join(", "),
            a.directory,
            a.issued,
            a.failed,
            match a.shared {
                0 => String::new(),
                n => format!(", {n} taken from the fleet"),
            },
            match &a.error {
                Some(e) => format!("; last order failed: {e}"),
                None => String::new(),
            },
            match a.next_check_ms {
                Some(at) => format!("; next look in {:.0}s", secs(at.saturating_sub(now))),
                None => String::new(),
            }
        );
    }
    if !s.state_file.persisted {
        let _ = writeln!(
            out,
            "WARNING: the state file {} does not hold this state ({}); a restart would come back on an older one",
            s.state_file.path.display(),
            s.state_file.error.as_deref().unwrap_or("a save failed")
        );
    }
    out
}

/// The fleet: the connection, each live instance's counts, the totals.
fn fleet(c: &ClusterStatus) -> String {
    let mut out = match c.disconnected_since_ms {
        Some(since) if !c.connected => format!(
            "cluster: disconnected since {} (serving on table revision {}; changes are refused)\n",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(since)
            ),
            c.revision
        ),
        _ => format!(
            "cluster: connected, instance {} of {} (table revision {})\n",
            c.instance, c.prefix, c.revision
        ),
    };
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:>8} {:>8} {:>9}",
        "INSTANCE", "SLOT", "STREAMS", "INFLIGHT", "LEASE AGE"
    );
    for i in &c.instances {
        for x in &i.slots {
            let _ = writeln!(
                out,
                "{:<16} {:<10} {:>8} {:>8} {:>8.1}s",
                i.name,
                x.slot,
                x.live_streams,
                x.inflight,
                secs(i.lease_age_ms)
            );
        }
    }
    for x in &c.totals {
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:>8} {:>8}",
            "(fleet)", x.slot, x.live_streams, x.inflight
        );
    }
    if let Some(holder) = &c.deploy_lock {
        let _ = writeln!(out, "fleet deploy lock: held by {holder}");
    }
    if let Some(d) = &c.deploy {
        let line = deploy_line(&d.status);
        if d.orphaned {
            let _ = writeln!(
                out,
                "fleet deploy by {}: ORPHANED in its {} phase (its instance died; the committed table stands, the watch window does not resume)",
                d.by, d.status.phase.as_str()
            );
        } else {
            let _ = writeln!(out, "fleet deploy by {}: {line}", d.by);
        }
    }
    out
}

/// The running (or last) deploy in one line.
fn deploy_line(d: &DeployStatus) -> String {
    let from = d.from.as_deref().unwrap_or("(none)");
    match d.phase {
        DeployPhase::Passed => format!(
            "last deploy: {from} -> {} passed in {:.1}s",
            d.to,
            secs(d.elapsed_ms)
        ),
        DeployPhase::Failed => format!(
            "last deploy: {from} -> {} failed after {:.1}s: {}",
            d.to,
            secs(d.elapsed_ms),
            d.error.as_deref().unwrap_or("unknown error")
        ),
        phase => format!(
            "deploying {from} -> {}: {} phase, {:.1}s so far",
            d.to,
            phase.as_str(),
            secs(d.elapsed_ms)
        ),
    }
}

fn flipped(f: &Flipped) -> String {
    let verb = if f.reason.is_some() {
        "rolled back"
    } else {
        "flipped"
    };
    let mut out = format!(
        "{verb} {} -> {}",
        f.from.as_deref().unwrap_or("(none)"),
        f.to
    );
    match &f.probe {
        Some(p) => {
            let _ = write!(out, " (probe passed in {}ms)", p.ms);
        }
        None => out.push_str(" (no probe)"),
    }
    if let Some(r) = &f.reason {
        let _ = write!(out, ": {r}");
    }
    out.push('\n');
    if let Some(w) = &f.warning {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(ms) = f.watch_ms {
        let _ = writeln!(out, "watching {} for {:.0}s", f.to, secs(ms));
    }
    for d in f.drained.iter().flatten() {
        let _ = writeln!(out, "{}", drained_line(d));
    }
    if !f.persisted {
        let _ = writeln!(
            out,
            "WARNING: this change could not be saved to the state file (see `status`)"
        );
    }
    out
}

fn watch_line(w: &WatchOutcome) -> String {
    match w {
        WatchOutcome::Passed { probes } => format!("passed ({})", counted(*probes, "probe")),
        WatchOutcome::RolledBack { reason, to, .. } => format!("rolled back to {to}: {reason}"),
        WatchOutcome::Failed { reason } => format!("failed: {reason}"),
        WatchOutcome::Cancelled { reason } => format!("cancelled: {reason}"),
    }
}

fn deployed(d: &Deployed) -> String {
    let mut out = format!(
        "deployed {} -> {} in {:.1}s\n",
        d.from.as_deref().unwrap_or("(none)"),
        d.to,
        secs(d.elapsed_ms)
    );
    if let Some(p) = &d.probe {
        let _ = writeln!(out, "  probe  passed in {}ms", p.ms);
    }
    for x in &d.drained {
        let _ = writeln!(out, "  drain  {}", drained_line(x));
    }
    let _ = write!(out, "  watch  {}", watch_line(&d.watch));
    out
}

/// A successful reply, readable.
pub fn reply(r: &Reply) -> String {
    let out = match r {
        Reply::Status(s) => status(s),
        Reply::Weights(w) => {
            let mut out = String::new();
            for s in &w.slots {
                let _ = writeln!(
                    out,
                    "{:<10} {:<9} weight {:>7}  generation {}",
                    s.name, s.state, s.weight, s.generation
                );
            }
            if !w.draining.is_empty() {
                let _ = writeln!(out, "draining: {}", w.draining.join(", "));
            }
            for d in w.drained.iter().flatten() {
                let _ = writeln!(out, "{}", drained_line(d));
            }
            if let Some(w) = &w.warning {
                let _ = writeln!(out, "warning: {w}");
            }
            out
        }
        Reply::Flip(f) => flipped(f),
        Reply::Drain(d) => format!("{}: {}", d.slot, d.state),
        Reply::Drained(d) => drained_line(d),
        Reply::Probe(p) => {
            let mut out = format!(
                "probe of {} passed in {}ms (protocol {})\n",
                p.slot,
                p.ms,
                p.protocol.as_deref().unwrap_or("?")
            );
            probe_steps(p, &mut out);
            out
        }
        Reply::Lifecycle(l) => format!("{}: {} (generation {})", l.slot, l.state, l.generation),
        Reply::Deploy(d) => deployed(d),
        Reply::Reload(r) => {
            let mut out = String::new();
            if r.changed.is_empty() {
                out.push_str("reloaded: nothing changed\n");
            }
            for c in &r.changed {
                let _ = writeln!(out, "reloaded: {c}");
            }
            for x in &r.restart_required {
                let _ = writeln!(
                    out,
                    "not applied (needs a restart, e.g. `mcpflip ctl upgrade`): {x}"
                );
            }
            out
        }
        Reply::Upgrade(u) => format!(
            "upgraded: process {} ({}) serves; process {} finishes its open streams and exits",
            u.new_pid,
            u.binary.display(),
            u.old_pid
        ),
    };
    out.trim_end().to_owned()
}

/// An error reply, readable: the code, the message, and what it carries.
pub fn error(e: &ErrorReply) -> String {
    let mut out = format!("error ({}): {}\n", e.code, e.error);
    match &e.detail {
        ErrorDetail::Probe { probe } => {
            let _ = writeln!(out, "probe of {}:", probe.slot);
            probe_steps(probe, &mut out);
        }
        ErrorDetail::Deploy(d) => {
            if let Some(p) = d.probe.as_ref() {
                let _ = writeln!(out, "  probe  passed in {}ms", p.ms);
            }
            for x in &d.drained {
                let _ = writeln!(out, "  drain  {}", drained_line(x));
            }
            let _ = writeln!(out, "  watch  {}", watch_line(&d.watch));
        }
        ErrorDetail::None {} => {}
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{CtlError, DrainOutcome};

    /// One stream is "1 live stream", not "1 live streams" (the demo's
    /// drain lines, `ctl status`).
    #[test]
    fn one_is_singular() {
        assert_eq!(counted(1, "live stream"), "1 live stream");
        assert_eq!(counted(0, "live stream"), "0 live streams");
        assert_eq!(counted(2, "live stream"), "2 live streams");
    }

    #[test]
    fn errors_show_their_code_message_and_probe_steps() {
        let report = ProbeReport {
            ok: false,
            slot: "green".into(),
            transport: "streamable-http".into(),
            protocol: None,
            ms: 12,
            tools: vec![],
            steps: vec![crate::probe::Step {
                step: "tools/list".into(),
                ok: false,
                ms: 3,
                detail: "missing whoami".into(),
                status: Some(200),
                body: None,
            }],
            error: Some("tools/list failed: missing whoami".into()),
        };
        let wire = CtlError::ProbeFailed {
            report: Box::new(report),
        }
        .to_reply()
        .to_value();
        let back: ErrorReply = serde_json::from_value(wire).expect("reads back");
        let text = error(&back);
        assert!(
            text.starts_with("error (probe_failed): probe of green failed"),
            "{text}"
        );
        assert!(
            text.contains("FAIL tools/list") && text.contains("missing whoami"),
            "{text}"
        );
    }

    #[test]
    fn one_live_stream_is_singular() {
        let drain = |live_streams| {
            progress_line(&Progress::Drain {
                slot: "blue".into(),
                live_streams,
                inflight: 0,
                elapsed_ms: 1000,
                deadline_ms: 10_000,
            })
        };
        assert!(
            drain(1).contains("blue: 1 live stream, 0 in flight"),
            "{}",
            drain(1)
        );
        assert!(drain(2).contains("blue: 2 live streams,"), "{}", drain(2));
        assert!(drain(0).contains("blue: 0 live streams,"), "{}", drain(0));
        assert_eq!(
            watch_line(&WatchOutcome::Passed { probes: 1 }),
            "passed (1 probe)"
        );
    }

    #[test]
    fn the_deploy_shows_its_phase_or_how_it_ended() {
        let mut d = DeployStatus {
            to: "green".into(),
            from: Some("blue".into()),
            phase: DeployPhase::Drain,
            started_at: 0,
            elapsed_ms: 2500,
            probe: None,
            flipped_at: Some(1),
            draining: vec!["blue".into()],
            drained: vec![],
            watch: None,
            error: None,
            code: None,
        };
        assert_eq!(
            deploy_line(&d),
            "deploying blue -> green: drain phase, 2.5s so far"
        );
        d.phase = DeployPhase::Failed;
        d.error = Some("green was rolled back to blue: 5xx".into());
        assert_eq!(
            deploy_line(&d),
            "last deploy: blue -> green failed after 2.5s: green was rolled back to blue: 5xx"
        );
    }

    #[test]
    fn a_drain_that_was_not_saved_says_so() {
        let d = Drained {
            slot: "blue".into(),
            outcome: DrainOutcome {
                drained_after_ms: 1500,
                forced: 2,
                persisted: false,
            },
        };
        let line = drained_line(&d);
        assert!(
            line.contains("1.500s") && line.contains("2 streams") && line.contains("NOT SAVED"),
            "{line}"
        );
    }
}
