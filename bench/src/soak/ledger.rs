//! The soak's accounting: which failures were the killed upstream's own, the
//! tallies by request and cause, and the verdicts. Pure functions over the
//! records the clients and the operator kept; nothing here opens a socket or
//! reads `/proc`, so every rule is unit-tested.
//!
//! A failure is the killed upstream's own when the request was routed to the
//! killed slot (its session's tag, the upstream's `X-Served-By`, or the slot
//! the proxy's own error names) and:
//! - for a session request, whose tag also names the generation: the tag
//!   names the killed generation and the request failed after the kill (the
//!   session lived in the killed process; whenever its client next uses it,
//!   it is gone);
//! - otherwise (stateless requests, tickers): the request was in flight at
//!   the kill or sent before the operator's answer to it ended (`retire`,
//!   restart, `standby`). Until `standby` the slot has no other generation,
//!   and after `retire` nothing new is routed to it, so such a request can
//!   only have been on the killed process.
//!
//! Everything else is unexpected, including a failure whose slot the client
//! cannot know (the proxy closed the connection without an answer).

use std::collections::BTreeMap;

use crate::model::{Check, Exchange, ExchangeCount, Failure, FailureCount, Kill, Soak, Span};

/// What the verdicts allow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The RSS at the end may be at most this many times the RSS at the start.
    pub rss_factor: f64,
    /// Open file descriptors at the end may exceed those at the start by this many.
    pub fd_margin: u64,
}

/// The soak's limits: RSS within 2× (the issue), descriptors within 4 of the
/// start (the idle proxy's own set, give or take a probe or a state-file
/// write in progress; every client and pooled connection is closed by then).
pub const LIMITS: Limits = Limits {
    rss_factor: 2.0,
    fd_margin: 4,
};

/// The kill `f` belongs to (its index in `kills`), if it was routed to a
/// killed upstream within that kill's window.
pub fn attribute(f: &Failure, kills: &[Kill]) -> Option<usize> {
    let slot = f.slot?;
    kills.iter().position(|k| {
        k.slot == slot
            && f.failed_ms >= k.killed_ms
            && match f.generation {
                Some(g) => g == k.generation,
                None => f.sent_ms <= k.recovered_ms,
            }
    })
}

/// The tallies of a soak.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub requests: Vec<ExchangeCount>,
    pub failures: Vec<FailureCount>,
    /// The first `examples` unexpected failures, in the order they happened.
    pub examples: Vec<Failure>,
    /// Failures attributed to each kill, in the order of `kills`.
    pub per_kill: Vec<u64>,
}

/// Counts `ok` (successes per exchange) and `failures` against `kills`.
pub fn tally(
    ok: &[(Exchange, u64)],
    failures: &[Failure],
    kills: &[Kill],
    examples: usize,
) -> Tally {
    let mut per_kill = vec![0u64; kills.len()];
    let mut by_exchange: BTreeMap<Exchange, (u64, u64, u64)> = BTreeMap::new();
    let mut by_cause: BTreeMap<(Exchange, String), (u64, u64)> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for &(e, n) in ok {
        by_exchange.entry(e).or_default().0 += n;
    }
    for f in failures {
        let owner = attribute(f, kills);
        let e = by_exchange.entry(f.exchange).or_default();
        e.1 += 1;
        let c = by_cause.entry((f.exchange, f.what())).or_default();
        match owner {
            Some(k) => {
                per_kill[k] += 1;
                e.2 += 1;
                c.0 += 1;
            }
            None => {
                c.1 += 1;
                unexpected.push(f);
            }
        }
    }
    unexpected.sort_by_key(|f| f.failed_ms);
    Tally {
        requests: by_exchange
            .into_iter()
            .map(|(exchange, (ok, failed, expected))| ExchangeCount {
                exchange,
                ok,
                failed,
                expected,
            })
            .collect(),
        failures: by_cause
            .into_iter()
            .map(|((exchange, what), (expected, unexpected))| FailureCount {
                exchange,
                what,
                expected,
                unexpected,
            })
            .collect(),
        examples: unexpected.into_iter().take(examples).cloned().collect(),
        per_kill,
    }
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
    }
}

/// Every verdict of `s` (whatever `s.checks` holds is ignored).
pub fn checks(s: &Soak, limits: Limits) -> Vec<Check> {
    let ok: u64 = s.requests.iter().map(|r| r.ok).sum();
    let expected: u64 = s.failures.iter().map(|f| f.expected).sum();
    let unexpected: u64 = s.failures.iter().map(|f| f.unexpected).sum();
    let mut out = Vec::new();

    let causes: Vec<String> = s
        .failures
        .iter()
        .filter(|f| f.unexpected > 0)
        .map(|f| format!("{} {}: {}", f.unexpected, f.exchange.label(), f.what))
        .collect();
    out.push(check(
        "no failed request beyond the killed upstreams' own",
        unexpected == 0 && ok > 0,
        if ok == 0 {
            "no request succeeded: the load did not run".to_owned()
        } else if unexpected == 0 && expected == 0 {
            format!("{ok} requests answered as asked; none failed")
        } else if unexpected == 0 {
            format!(
                "{ok} requests answered as asked; {expected} failed, every one routed to a killed \
                 upstream within its kill window"
            )
        } else {
            format!(
                "{unexpected} failed otherwise ({}); {expected} were the killed upstreams' own",
                causes.join("; ")
            )
        },
    ));

    let e = &s.end;
    let nonzero = |v: &[crate::model::SlotCounts]| -> Vec<String> {
        v.iter()
            .filter(|c| c.live_streams != 0 || c.inflight != 0)
            .map(|c| {
                format!(
                    "{}: {} live streams, {} in flight",
                    c.slot, c.live_streams, c.inflight
                )
            })
            .collect()
    };
    let (in_status, in_metrics) = (nonzero(&e.status), nonzero(&e.metrics));
    let zero = e.zero_after_s.is_some()
        && in_status.is_empty()
        && in_metrics.is_empty()
        && !e.status.is_empty()
        && !e.metrics.is_empty();
    out.push(check(
        "live counts back to exactly 0 after the load",
        zero,
        match e.zero_after_s {
            _ if e.status.is_empty() || e.metrics.is_empty() => {
                "the proxy's /status or /metrics could not be read at the end".to_owned()
            }
            Some(t) if zero => format!(
                "every slot at 0 live streams and 0 in flight {t:.1} s after the load stopped \
                 (/status and /metrics agree)"
            ),
            Some(_) => format!("/metrics still counts: {}", in_metrics.join("; ")),
            None => format!(
                "not 0 within {:.0} s: /status {}; /metrics {}",
                e.waited_s,
                in_status.join("; "),
                if in_metrics.is_empty() {
                    "all 0".to_owned()
                } else {
                    in_metrics.join("; ")
                }
            ),
        },
    ));

    let Span {
        start: r0, end: r1, ..
    } = s.rss_kib;
    let rss_ok = r0 > 0 && (r1 as f64) <= limits.rss_factor * r0 as f64;
    out.push(check(
        &format!("RSS at the end within {}× the start", limits.rss_factor),
        rss_ok,
        format!(
            "{r0} KiB at the start, {} KiB at the peak, {r1} KiB at the end ({:.2}×)",
            s.rss_kib.peak,
            r1 as f64 / r0.max(1) as f64
        ),
    ));

    let Span {
        start: f0, end: f1, ..
    } = s.fds;
    out.push(check(
        &format!(
            "open file descriptors back to the start (± {})",
            limits.fd_margin
        ),
        f0 > 0 && f1 <= f0 + limits.fd_margin,
        format!(
            "{f0} at the start, {} at the peak, {f1} at the end",
            s.fds.peak
        ),
    ));

    let failed: Vec<String> = s
        .deploys
        .iter()
        .filter(|d| d.outcome != "passed" || d.forced > 0)
        .map(|d| {
            format!(
                "#{} {}→{}: {}{}{}",
                d.n,
                d.from.name(),
                d.to.name(),
                d.outcome,
                d.message
                    .as_deref()
                    .map_or(String::new(), |m| format!(" ({m})")),
                if d.forced > 0 {
                    format!(", {} streams forced at the drain deadline", d.forced)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let all_ran = s.deploys.len() == s.planned_deploys && s.kills.len() == s.planned_kills;
    out.push(check(
        "every deploy passed, and every planned deploy and kill happened",
        failed.is_empty() && all_ran && !s.deploys.is_empty(),
        if !failed.is_empty() {
            failed.join("; ")
        } else if !all_ran || s.deploys.is_empty() {
            format!(
                "{} of {} deploys and {} of {} kills happened",
                s.deploys.len(),
                s.planned_deploys,
                s.kills.len(),
                s.planned_kills
            )
        } else {
            format!(
                "{} deploy{} passed (none forced a stream at its drain deadline), {} upstream kill{}",
                s.deploys.len(),
                if s.deploys.len() == 1 { "" } else { "s" },
                s.kills.len(),
                if s.kills.len() == 1 { "" } else { "s" },
            )
        },
    ));

    out.push(check(
        "the proxy ran to the end and every client stopped",
        e.proxy_exit.is_none() && e.stuck_clients == 0,
        match (&e.proxy_exit, e.stuck_clients) {
            (Some(why), _) => why.clone(),
            (None, 0) => "yes".to_owned(),
            (None, n) => format!("{n} client tasks had not finished 60 s after the load stopped"),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cause, Slot};

    fn kill(slot: Slot, generation: u32, killed_ms: u64, recovered_ms: u64) -> Kill {
        Kill {
            slot,
            generation,
            deploy: 2,
            state: "draining".to_owned(),
            live_streams: 10,
            inflight: 2,
            killed_ms,
            recovered_ms,
            new_generation: generation + 1,
            failures: 0,
        }
    }

    fn failure(
        exchange: Exchange,
        slot: Option<Slot>,
        generation: Option<u32>,
        sent_ms: u64,
        failed_ms: u64,
    ) -> Failure {
        Failure {
            exchange,
            cause: Cause::Broken,
            status: None,
            slot,
            generation,
            sent_ms,
            failed_ms,
            detail: String::new(),
        }
    }

    /// Green generation 3 killed at 10 s; the operator done at 10.5 s.
    fn kills() -> Vec<Kill> {
        vec![kill(Slot::Green, 3, 10_000, 10_500)]
    }

    #[test]
    fn a_stream_in_flight_on_the_killed_slot_is_its_own() {
        let f = failure(Exchange::Ticker, Some(Slot::Green), None, 2_000, 10_001);
        assert_eq!(attribute(&f, &kills()), Some(0));
    }

    #[test]
    fn a_request_sent_in_the_kill_window_is_its_own() {
        let f = failure(Exchange::Stateless, Some(Slot::Green), None, 10_400, 10_402);
        assert_eq!(attribute(&f, &kills()), Some(0));
    }

    #[test]
    fn an_untagged_request_after_the_window_is_not() {
        // Sent after `standby`: the slot is another process by then.
        let f = failure(Exchange::Stateless, Some(Slot::Green), None, 10_501, 10_600);
        assert_eq!(attribute(&f, &kills()), None);
    }

    #[test]
    fn a_failure_before_the_kill_is_not() {
        let f = failure(Exchange::Ticker, Some(Slot::Green), None, 2_000, 9_999);
        assert_eq!(attribute(&f, &kills()), None);
        let f = failure(Exchange::Call, Some(Slot::Green), Some(3), 9_000, 9_999);
        assert_eq!(attribute(&f, &kills()), None);
    }

    #[test]
    fn a_session_of_the_killed_generation_is_its_own_whenever_it_fails_after() {
        // The session lived in the killed process: its next request, even
        // well after the operator is done, gets 404.
        let f = failure(Exchange::Call, Some(Slot::Green), Some(3), 12_000, 12_001);
        assert_eq!(attribute(&f, &kills()), Some(0));
    }

    #[test]
    fn a_session_of_another_generation_or_slot_is_not() {
        let f = failure(Exchange::Call, Some(Slot::Green), Some(4), 10_100, 10_200);
        assert_eq!(attribute(&f, &kills()), None);
        let f = failure(Exchange::Call, Some(Slot::Blue), Some(3), 10_100, 10_200);
        assert_eq!(attribute(&f, &kills()), None);
        let f = failure(Exchange::Ticker, Some(Slot::Blue), None, 10_100, 10_200);
        assert_eq!(attribute(&f, &kills()), None);
    }

    #[test]
    fn a_failure_whose_slot_is_unknown_is_never_expected() {
        let f = failure(Exchange::Stateless, None, None, 10_100, 10_200);
        assert_eq!(attribute(&f, &kills()), None);
    }

    #[test]
    fn the_right_one_of_several_kills() {
        let ks = vec![
            kill(Slot::Green, 3, 10_000, 10_500),
            kill(Slot::Blue, 5, 190_000, 190_400),
            kill(Slot::Green, 6, 370_000, 370_300),
        ];
        let f = failure(
            Exchange::SseReply,
            Some(Slot::Green),
            Some(6),
            369_000,
            370_010,
        );
        assert_eq!(attribute(&f, &ks), Some(2));
        let f = failure(Exchange::Ticker, Some(Slot::Blue), None, 180_000, 190_001);
        assert_eq!(attribute(&f, &ks), Some(1));
    }

    #[test]
    fn tallies_split_expected_from_unexpected() {
        let mut http502 = failure(Exchange::Stateless, Some(Slot::Green), None, 10_100, 10_101);
        http502.cause = Cause::Status;
        http502.status = Some(502);
        let fs = vec![
            failure(Exchange::Ticker, Some(Slot::Green), None, 5_000, 10_001),
            http502,
            // Not the kill's: blue was not killed.
            failure(Exchange::Ticker, Some(Slot::Blue), None, 5_000, 30_000),
            failure(Exchange::Ticker, None, None, 5_000, 20_000),
        ];
        let t = tally(
            &[(Exchange::Ticker, 100), (Exchange::Stateless, 50)],
            &fs,
            &kills(),
            1,
        );
        assert_eq!(t.per_kill, vec![2]);
        let ticker = t
            .requests
            .iter()
            .find(|r| r.exchange == Exchange::Ticker)
            .expect("tickers counted");
        assert_eq!((ticker.ok, ticker.failed, ticker.expected), (100, 3, 1));
        let broken = t
            .failures
            .iter()
            .find(|c| c.exchange == Exchange::Ticker)
            .expect("ticker failures counted");
        assert_eq!((broken.expected, broken.unexpected), (1, 2));
        let status = t
            .failures
            .iter()
            .find(|c| c.exchange == Exchange::Stateless)
            .expect("502 counted");
        assert_eq!(
            (status.what.as_str(), status.expected, status.unexpected),
            ("HTTP 502", 1, 0)
        );
        // The first unexpected one, by time.
        assert_eq!(t.examples.len(), 1);
        assert_eq!(t.examples[0].failed_ms, 20_000);
    }

    fn soak() -> Soak {
        let mut s = crate::fixture::soak();
        s.kills = kills();
        s
    }

    fn verdicts(s: &Soak) -> Vec<bool> {
        checks(s, LIMITS).iter().map(|c| c.passed).collect()
    }

    #[test]
    fn a_clean_soak_passes_every_check() {
        let s = soak();
        let c = checks(&s, LIMITS);
        assert!(c.iter().all(|c| c.passed), "{c:#?}");
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn each_limit_fails_its_own_check() {
        let mut s = soak();
        s.failures[0].unexpected = 1;
        assert_eq!(verdicts(&s), vec![false, true, true, true, true, true]);

        let mut s = soak();
        s.end.status[1].live_streams = 1;
        s.end.zero_after_s = None;
        assert_eq!(verdicts(&s), vec![true, false, true, true, true, true]);
        // /status at 0 but the gauge not: still a failure.
        let mut s = soak();
        s.end.metrics[0].inflight = 1;
        assert!(!verdicts(&s)[1]);

        let mut s = soak();
        s.rss_kib.end = 20_001;
        assert_eq!(verdicts(&s), vec![true, true, false, true, true, true]);

        let mut s = soak();
        s.fds.end = 25;
        assert_eq!(verdicts(&s), vec![true, true, true, false, true, true]);

        let mut s = soak();
        s.deploys[0].outcome = "rolled_back".to_owned();
        assert_eq!(verdicts(&s), vec![true, true, true, true, false, true]);
        let mut s = soak();
        s.deploys[0].forced = 1;
        assert!(!verdicts(&s)[4]);
        let mut s = soak();
        s.kills.clear();
        assert!(!verdicts(&s)[4]);

        let mut s = soak();
        s.end.stuck_clients = 2;
        assert_eq!(verdicts(&s), vec![true, true, true, true, true, false]);
    }

    #[test]
    fn a_load_that_did_not_run_fails() {
        let mut s = soak();
        s.requests[0].ok = 0;
        assert!(!verdicts(&s)[0]);
    }
}
