//! A made-up run for the tests of `figures`, `report` and `diff`: three
//! rounds, every part, round numbers chosen so that each ratio and each
//! target's status is known by hand (see the comments beside them); and a
//! made-up soak for the soak's verdicts and report.

use crate::model::{
    AccessLog, CpuPlan, Deploy, Exchange, ExchangeCount, FailureCount, Kill, Kind, Machine, Meta,
    MultiCore, MultiCoreLevel, Run, Shielded, Slot, SlotCounts, Soak, SoakEnd, Span, Version,
    W1Cell, W1Level, W1Static, W2Cell, W2Level, W3Cell, W4Cell, W5Capture, W5Cell, W1, W2, W3, W4,
    W5,
};
use crate::stats::Series;

fn s(v: &[f64]) -> Series {
    Series(v.to_vec())
}

/// A W1 cell with these requests/s, CPU µs per request and p99 ms per round.
fn w1(target: Kind, rps: &[f64], cpu: &[f64], p99: &[f64]) -> W1Cell {
    let mut c = W1Cell::new(target);
    c.rps = s(rps);
    c.cpu_us = s(cpu);
    c.p99_ms = s(p99);
    c.p50_ms = s(&p99.iter().map(|v| v / 2.0).collect::<Vec<_>>());
    c.proxy_busy = s(&[0.95, 0.95, 0.95]);
    c.upstream_cores = s(&[0.5, 0.5, 0.5]);
    c.loadgen_cores = s(&[0.4, 0.4, 0.4]);
    c.steal_pct = s(&[0.1, 0.3, 0.2]);
    c
}

fn w2(target: Kind, mem: f64, p99: f64, before_kib: f64) -> W2Cell {
    let mut c = W2Cell::new(target);
    c.mem_kib = s(&[mem, mem, mem]);
    c.rss_before_kib = s(&[before_kib, before_kib, before_kib]);
    c.p50_ms = s(&[p99 / 4.0; 3]);
    c.p99_ms = s(&[p99; 3]);
    c.cpu_per_1k_ms = s(&[20.0, 20.0, 20.0]);
    c.setup_s = s(&[0.2, 0.2, 0.2]);
    c.settle_s = s(&[0.3, 2.4, 0.6]);
    c.steal_pct = s(&[0.2, 0.4, 1.6]);
    c.remeasured = 1;
    c
}

pub fn meta() -> Meta {
    Meta {
        date: "2026-11-24T22:05:31Z".to_owned(),
        command: "cargo run -p mcpflip-bench --release".to_owned(),
        file: "bench/results/2026-11-24T2205Z-2c-amd-epyc.json".to_owned(),
        quick: false,
        complete: true,
        elapsed_s: 600.0,
        steal_s: Some(24.0),
        rounds: 3,
        w1_rounds: 3,
        rotated: true,
        stepped: true,
        targets: Kind::ALL.to_vec(),
        machine: Machine {
            hostname: "bench-host".to_owned(),
            cpu_model: "AMD EPYC @ 2.60 GHz".to_owned(),
            cores: 2,
            kernel: "6.18.44".to_owned(),
            memory_gib: 23.5,
        },
        plan: CpuPlan::new(&[0, 1], None),
        pinned: true,
        versions: vec![
            Version {
                name: "mcpflip".to_owned(),
                version: "git abc1234 (release profile)".to_owned(),
            },
            Version {
                name: "wrk".to_owned(),
                version: "wrk debian/4.1.0-3+b2 [epoll]".to_owned(),
            },
        ],
        nofile: 20_000,
        nofile_hard: 20_000,
        shield: Some(Shielded {
            cpus: vec![1],
            threads: 6,
            processes: vec!["process_api".to_owned(), "sshd".to_owned()],
            left: 0,
            refused: 0,
        }),
    }
}

pub fn run() -> Run {
    let mut r = Run::new(meta());
    // c=64, this bench's generator: mcpflip 40,000 vs nginx 48,000 = 0.83×
    // (per round 0.833, 0.840, 0.826): must (≥ 1.0) not met. CPU 24 vs 19 µs
    // = 1.26×: not met. c=1 p99 0.25 vs 0.30 ms = 0.83×: met.
    let c64 = vec![
        w1(Kind::Direct, &[56_000.0; 3], &[f64::NAN; 3], &[1.7; 3]),
        w1(
            Kind::Mcpflip,
            &[40_000.0, 42_000.0, 38_000.0],
            &[24.0, 25.0, 23.0],
            &[2.7; 3],
        ),
        w1(
            Kind::Nginx,
            &[48_000.0, 50_000.0, 46_000.0],
            &[19.0, 18.0, 20.0],
            &[2.4; 3],
        ),
        w1(Kind::Haproxy, &[49_000.0; 3], &[19.0; 3], &[2.3; 3]),
        w1(Kind::Caddy, &[10_000.0; 3], &[93.0; 3], &[15.0; 3]),
    ];
    let c1 = vec![
        w1(Kind::Direct, &[44_000.0; 3], &[f64::NAN; 3], &[0.04; 3]),
        w1(Kind::Mcpflip, &[5_000.0; 3], &[92.0; 3], &[0.25; 3]),
        w1(Kind::Nginx, &[5_600.0; 3], &[70.0; 3], &[0.30; 3]),
        w1(Kind::Haproxy, &[5_000.0; 3], &[86.0; 3], &[0.29; 3]),
        w1(Kind::Caddy, &[3_800.0; 3], &[190.0; 3], &[0.66; 3]),
    ];
    r.w1 = Some(W1 {
        generator: "mcpflip-bench".to_owned(),
        warmup_s: 0.4,
        measure_s: 2.0,
        levels: vec![
            W1Level { conc: 1, cells: c1 },
            W1Level {
                conc: 64,
                cells: c64.clone(),
            },
        ],
    });
    // wrk at c=64: 50,000 vs 45,000 = 1.11×: must met, stretch (≥ 1.25) not.
    let wrk64 = vec![
        w1(Kind::Direct, &[60_000.0; 3], &[f64::NAN; 3], &[1.5; 3]),
        w1(Kind::Mcpflip, &[50_000.0; 3], &[20.0; 3], &[2.0; 3]),
        w1(Kind::Nginx, &[45_000.0; 3], &[20.0; 3], &[2.2; 3]),
        w1(Kind::Haproxy, &[46_000.0; 3], &[19.0; 3], &[2.1; 3]),
        w1(Kind::Caddy, &[9_000.0; 3], &[95.0; 3], &[16.0; 3]),
    ];
    r.w1_wrk = Some(W1 {
        generator: "wrk debian/4.1.0-3+b2 [epoll]".to_owned(),
        warmup_s: 0.0,
        measure_s: 2.0,
        levels: vec![W1Level {
            conc: 64,
            cells: wrk64.clone(),
        }],
    });
    // Behind the static upstream (no direct): mcpflip 88,000 vs nginx 80,000
    // = 1.10× (per round 1.10, 1.05, 1.16); CPU 11 vs 12 µs = 0.92×. wrk:
    // 90,000 vs 81,000 = 1.11×.
    let statics = |cells: Vec<W1Cell>| W1Level { conc: 64, cells };
    r.w1_static = Some(W1Static {
        upstream: "nginx 1.22.1, one process".to_owned(),
        ours: W1 {
            generator: "mcpflip-bench".to_owned(),
            warmup_s: 0.4,
            measure_s: 2.0,
            levels: vec![statics(vec![
                w1(
                    Kind::Mcpflip,
                    &[88_000.0, 84_000.0, 92_800.0],
                    &[11.0; 3],
                    &[1.0; 3],
                ),
                w1(Kind::Nginx, &[80_000.0; 3], &[12.0; 3], &[1.1; 3]),
                w1(Kind::Haproxy, &[79_000.0; 3], &[12.5; 3], &[1.1; 3]),
                w1(Kind::Caddy, &[20_000.0; 3], &[50.0; 3], &[6.0; 3]),
            ])],
        },
        wrk: Some(W1 {
            generator: "wrk debian/4.1.0-3+b2 [epoll]".to_owned(),
            warmup_s: 0.0,
            measure_s: 2.0,
            levels: vec![statics(vec![
                w1(Kind::Mcpflip, &[90_000.0; 3], &[10.8; 3], &[0.9; 3]),
                w1(Kind::Nginx, &[81_000.0; 3], &[11.9; 3], &[1.0; 3]),
            ])],
        }),
    });
    // Access log: 39,000 on vs 40,000 off = 0.975×: met (≥ 0.95).
    r.access_log = Some(AccessLog {
        conc: 64,
        measure_s: 2.0,
        how: "`RUST_LOG=info`".to_owned(),
        off_rps: s(&[40_000.0, 40_000.0, 40_000.0]),
        on_rps: s(&[39_000.0, 38_800.0, 39_200.0]),
        off_cpu_us: s(&[24.0; 3]),
        on_cpu_us: s(&[24.6; 3]),
        log_bytes: 12 * 1024 * 1024,
        failed: 0,
    });
    // Two workers: 60,000 vs 50,000 = 1.20× (must met, stretch not); with
    // wrk 65,000 vs 50,000 = 1.30× (stretch met).
    let workers = |cells: &[W1Cell]| {
        cells
            .iter()
            .filter(|c| c.target.has_workers())
            .cloned()
            .collect::<Vec<_>>()
    };
    r.multicore = Some(MultiCore {
        conc: 64,
        measure_s: 2.0,
        levels: vec![
            MultiCoreLevel {
                workers: 1,
                proxy_cpus: vec![1],
                dedicated: true,
                from_w1: true,
                ours: workers(&c64),
                wrk: workers(&wrk64),
            },
            MultiCoreLevel {
                workers: 2,
                proxy_cpus: vec![0, 1],
                dedicated: false,
                from_w1: false,
                ours: vec![
                    w1(Kind::Mcpflip, &[60_000.0; 3], &[22.0; 3], &[2.0; 3]),
                    w1(Kind::Nginx, &[50_000.0; 3], &[21.0; 3], &[2.1; 3]),
                    w1(Kind::Haproxy, &[52_000.0; 3], &[21.0; 3], &[2.1; 3]),
                ],
                wrk: vec![
                    w1(Kind::Mcpflip, &[65_000.0; 3], &[21.0; 3], &[1.9; 3]),
                    w1(Kind::Nginx, &[50_000.0; 3], &[21.0; 3], &[2.0; 3]),
                    w1(Kind::Haproxy, &[51_000.0; 3], &[21.0; 3], &[2.0; 3]),
                ],
            },
        ],
    });
    // W2: N=1,000 10 vs 14 KiB = 0.71× (must met, stretch not); N=9,000
    // 6.5 vs 14 KiB = 0.46× (stretch met). Relay p99 1.2 vs 1.0 ms = 1.2×
    // (not met) and 0.9 vs 1.5 ms = 0.6× (met).
    let level = |n: usize, m: f64, m99: f64, n99: f64| W2Level {
        n,
        cells: vec![
            w2(Kind::Direct, f64::NAN, 1.0, f64::NAN),
            w2(Kind::Mcpflip, m, m99, 10_240.0),
            w2(Kind::Nginx, 14.0, n99, 8_192.0),
            w2(Kind::Haproxy, 4.8, 1.4, 9_000.0),
            w2(Kind::Caddy, 80.0, 1.3, 40_000.0),
        ],
    };
    r.w2 = Some(W2 {
        interval_ms: 500,
        pad: 256,
        window_s: 2.5,
        max_n: 9_000,
        max_reason: "the open-file limit".to_owned(),
        phased: true,
        levels: vec![level(1_000, 10.0, 1.2, 1.0), level(9_000, 6.5, 0.9, 1.5)],
    });
    // W3: no failed request: met.
    r.w3 = Some(W3 {
        flips: 1000,
        every_ms: 5,
        rate: 2000.0,
        conns: 64,
        cells: Kind::ALL
            .into_iter()
            .map(|k| {
                let mut c = W3Cell::new(k);
                c.failed = s(&[0.0, 0.0, 0.0]);
                c.p50_ms = s(&[1.2; 3]);
                c.p99_ms = s(&[2.2; 3]);
                c.max_ms = s(&[5.0; 3]);
                c.requests = 31_000;
                c
            })
            .collect(),
    });
    // W4: detection p99 of these 12 is 0.9 ms: met.
    r.w4 = Some(W4 {
        sessions: 100,
        span_s: 2.0,
        guide_sleep_s: 120.0,
        cells: Kind::ALL
            .into_iter()
            .map(|k| {
                let mut c = W4Cell::new(k);
                c.last_close_s = vec![1.98, 1.99, 1.97];
                if k == Kind::Mcpflip {
                    c.deploy_s = vec![1.99; 12];
                    c.detection_ms = vec![
                        0.5, 0.6, 0.55, 0.52, 0.7, 0.65, 0.58, 0.61, 0.8, 0.54, 0.9, 0.57,
                    ];
                }
                c
            })
            .collect(),
    });
    // W5: 0.96: met.
    r.w5 = Some(W5 {
        sessions: 100_000,
        conns: 64,
        created_in_s: 2.6,
        cells: Kind::ALL
            .into_iter()
            .map(|k| {
                let mut c = W5Cell::new(k);
                c.one = s(&[41_000.0; 3]);
                c.many = s(&[39_360.0; 3]);
                c.ratio = s(&[0.96, 0.97, 0.95]);
                c.cpu_ratio = s(&[1.04; 3]);
                c
            })
            .collect(),
        // Capture on: 0.95: met (the bound itself); 50,000 KiB over 100,000
        // sessions: 512 bytes each.
        capture: Some(W5Capture {
            how: "a second mcpflip with `[drain] migrate = \"replay\"`".to_owned(),
            cell: {
                let mut c = W5Cell::new(Kind::Mcpflip);
                c.one = s(&[40_000.0; 3]);
                c.many = s(&[38_000.0; 3]);
                c.ratio = s(&[0.95, 0.96, 0.94]);
                c.cpu_ratio = s(&[1.06; 3]);
                c
            },
            captured: 100_000,
            captured_bytes: 21_600_000,
            rss_growth_kib: 50_000.0,
            rss_growth_off_kib: Some(4_000.0),
        }),
    });
    r
}

fn counts(slot: &str, live: u64, inflight: u64) -> SlotCounts {
    SlotCounts {
        slot: slot.to_owned(),
        live_streams: live,
        inflight,
    }
}

/// A 2-minute soak that passed: two deploys, one kill, three failures that
/// were the killed upstream's own.
pub fn soak() -> Soak {
    Soak {
        date: String::new(),
        command: String::new(),
        file: String::new(),
        mcpflip: String::new(),
        machine: meta().machine,
        minutes: 2.0,
        load_s: 120.0,
        smoke: true,
        mix: Vec::new(),
        config: String::new(),
        requests: vec![ExchangeCount {
            exchange: Exchange::Call,
            ok: 1_000,
            failed: 3,
            expected: 3,
        }],
        sse_events: 10,
        failures: vec![FailureCount {
            exchange: Exchange::Call,
            what: "404 Session not found".to_owned(),
            expected: 3,
            unexpected: 0,
        }],
        examples: Vec::new(),
        kills: vec![Kill {
            slot: Slot::Green,
            generation: 3,
            deploy: 2,
            state: "draining".to_owned(),
            live_streams: 10,
            inflight: 2,
            killed_ms: 10_000,
            recovered_ms: 10_500,
            new_generation: 4,
            failures: 3,
        }],
        deploys: vec![Deploy {
            n: 1,
            at_s: 20.0,
            from: Slot::Blue,
            to: Slot::Green,
            outcome: "passed".to_owned(),
            message: None,
            elapsed_s: 31.0,
            drained_after_ms: Some(30_000),
            forced: 0,
            killed: false,
        }],
        planned_deploys: 1,
        planned_kills: 1,
        end: SoakEnd {
            zero_after_s: Some(0.3),
            waited_s: 30.0,
            settle_s: 12.0,
            status: vec![counts("blue", 0, 0), counts("green", 0, 0)],
            metrics: vec![counts("blue", 0, 0), counts("green", 0, 0)],
            proxy_exit: None,
            stuck_clients: 0,
            fds_start: Vec::new(),
            fds_end: Vec::new(),
            log_errors: Vec::new(),
            log_error_count: 0,
            log_bytes: 0,
            access_log_dropped: Some(0),
        },
        rss_kib: Span {
            start: 10_000,
            peak: 40_000,
            end: 20_000,
        },
        fds: Span {
            start: 20,
            peak: 300,
            end: 24,
        },
        samples: Vec::new(),
        checks: Vec::new(),
    }
}
