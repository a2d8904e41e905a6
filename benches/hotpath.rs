//! Micro benchmarks of the per-request hot path: the routing decision (weighted
//! pick and pinned tag), tag decoding and encoding, era classification, and the
//! SSE boundary scan every streamed byte goes through (GB/s).
//!
//! `cargo bench --bench hotpath`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderValue, Method, Request};
use mcpflip::config::Config;
use mcpflip::control::state::State;
use mcpflip::control::Controller;
use mcpflip::mcp::tag::{self, SessionTag};
use mcpflip::mcp::Era;
use mcpflip::proxy::affinity::{self, Route};
use mcpflip::proxy::scan::Scan;
use mcpflip::proxy::sse::SseScanner;
use tokio_util::sync::CancellationToken;

/// A controller on a runtime of its own (it runs an owner task); the routing
/// benches only read its table.
fn controller() -> std::sync::Arc<Controller> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"));
    let _in = rt.enter();
    let text = "[control]\nsocket = \"/tmp/mcpflip-bench.sock\"\nstate_file = \"/tmp/mcpflip-bench.json\"\n\
                [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:3001\"\nweight = 90\n\
                [[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:3002\"\nweight = 10\n";
    let cfg = Config::parse(text, Path::new("bench.toml")).expect("bench config");
    let state = State::from_config(cfg.slots.iter().map(|s| (s.name.as_str(), s.weight)));
    Controller::start(cfg, state, None, CancellationToken::new()).expect("controller")
}

fn routing(c: &mut Criterion) {
    let ctl = controller();
    let untagged = Request::post("/mcp").body(()).expect("req");
    let tagged = Request::post("/mcp")
        .header(
            "mcp-session-id",
            "mf1.blue.1.5f0c3a9e2b7d4e6f8a1b2c3d4e5f6a7b",
        )
        .body(())
        .expect("req");
    let legacy =
        Request::post("/messages/?session_id=mf1.green.1.5f0c3a9e2b7d4e6f8a1b2c3d4e5f6a7b")
            .body(())
            .expect("req");
    let mut g = c.benchmark_group("route");
    for (name, req) in [
        ("weighted_pick", &untagged),
        ("pinned_header", &tagged),
        ("pinned_query", &legacy),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let table = ctl.tables.load();
                let req = black_box(req);
                // As the forwarder does: the one pass over the headers, then the route.
                let scan = Scan::of(req.headers());
                match affinity::route(&table, req, scan.session.as_ref()) {
                    Route::Pinned { slot, .. } | Route::Picked(slot) => black_box(slot.generation),
                    _ => 0,
                }
            })
        });
    }
    g.finish();

    let table = ctl.tables.load_full();
    let blue = table.get("blue").expect("blue");
    let inner = HeaderValue::from_static("5f0c3a9e2b7d4e6f8a1b2c3d4e5f6a7b");
    let mut g = c.benchmark_group("tag");
    g.bench_function("decode", |b| {
        b.iter(|| SessionTag::decode(black_box("mf1.blue.1.5f0c3a9e2b7d4e6f8a1b2c3d4e5f6a7b")))
    });
    g.bench_function("encode_header", |b| {
        b.iter(|| tag::tag_header(&blue.tag_prefix, black_box(&inner)))
    });
    g.finish();

    let headers = tagged.headers().clone();
    c.bench_function("era/classify", |b| {
        b.iter(|| Era::of(black_box(&Method::POST), black_box(&headers), None))
    });
}

fn sse_scan(c: &mut Criterion) {
    // Typical MCP SSE traffic: JSON-RPC messages of a few hundred bytes.
    let event = format!(
        "event: message\nid: 42\ndata: {{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}}}}\n\n",
        "x".repeat(300)
    );
    let buf: Vec<u8> = event
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    let big = format!("data: {}\n\n", "y".repeat(64 * 1024));
    let big: Vec<u8> = big
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    let mut g = c.benchmark_group("sse_scan");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    for (name, bytes) in [("small_events_1MiB", &buf), ("64KiB_events_1MiB", &big)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = SseScanner::default();
                black_box(s.feed(black_box(bytes)));
                s.at_boundary()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, routing, sse_scan);
criterion_main!(benches);
