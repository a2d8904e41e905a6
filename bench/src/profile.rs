//! Where mcpflip's cycles go under W1 at c=64: `perf record` on the proxy
//! process for a few seconds of load, then `perf report`'s top symbols by
//! self time, user-space time by component, and the share spent in the
//! kernel; nginx is profiled the same way, so that the kernel's part of a
//! request can be compared. Self time only: release builds have no frame pointers, so `-g`
//! call chains would be truncated (use `--call-graph dwarf` by hand for those).
//! Skipped when perf is not installed or not permitted.

use std::time::Duration;

use tokio::process::Command;

use crate::bench::Bench;
use crate::http;
use crate::load::{self, Load};
use crate::model::{Component, Kind, Profile, Profiles, Symbol};
use crate::sys;

/// Drops a Rust symbol hash suffix (`::h0123456789abcdef`).
fn clean(sym: &str) -> String {
    let s = sym.trim();
    match s.rfind("::h") {
        Some(i) if s.len() - i == 19 && s[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) => {
            s[..i].to_owned()
        }
        _ => s.to_owned(),
    }
}

/// One line of `perf report --stdio`: share, dso (when sorted by it),
/// `[k]`/`[.]`, symbol.
struct Line {
    pct: f64,
    dso: String,
    kind: String,
    sym: String,
}

/// Parses `perf report --stdio` lines `  12.34%  [dso]  [k] symbol`.
fn parse_report(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            // `--children` adds a second share column.
            let rest = match rest.trim().split_once('%') {
                Some((self_pct, r)) if self_pct.trim().parse::<f64>().is_ok() => r,
                _ => rest,
            };
            let at = rest.find("[k]").or_else(|| rest.find("[.]"))?;
            let dso = rest[..at].trim().to_owned();
            let kind = rest[at..at + 3].to_owned();
            let sym = rest[at + 3..]
                .trim()
                .trim_end_matches(|c: char| c == '-' || c.is_whitespace())
                .to_owned();
            Some(Line {
                pct,
                dso,
                kind,
                sym: clean(&sym),
            })
        })
        .collect()
}

/// The component a user-space symbol belongs to.
fn component(dso: &str, sym: &str) -> &'static str {
    const GROUPS: [(&str, &str); 17] = [
        ("mcpflip::", "mcpflip's own code"),
        (
            "hyper_util::client",
            "hyper-util legacy client (pool, checkout)",
        ),
        ("hyper_util::", "hyper-util server (auto, graceful)"),
        (
            "hyper::client",
            "hyper client dispatch (channel to the connection task)",
        ),
        ("hyper::proto::h1::role", "hyper HTTP/1 parse and encode"),
        ("httparse", "hyper HTTP/1 parse and encode"),
        ("hyper::", "hyper HTTP/1 dispatch and buffers"),
        ("http::header", "http::HeaderMap operations"),
        ("http::", "http types (Uri, Request, Response)"),
        ("tokio::sync", "tokio sync (mpsc, oneshot, Notify)"),
        ("tokio::", "tokio runtime and I/O driver"),
        ("mio::", "tokio runtime and I/O driver"),
        ("bytes::", "bytes (Bytes/BytesMut)"),
        ("core::fmt", "formatting (fmt::write)"),
        ("core::hash", "hashing"),
        ("futures_util", "futures combinators"),
        ("alloc::", "alloc (Vec/String/Box)"),
    ];
    if let Some((_, g)) = GROUPS.iter().find(|(p, _)| sym.contains(p)) {
        return g;
    }
    if dso.contains("libc") {
        if sym.contains("mem") {
            return "libc memmove/memcpy/memcmp";
        }
        if ["malloc", "free", "realloc", "unlink_chunk", "consolidate"]
            .iter()
            .any(|m| sym.contains(m))
        {
            return "libc malloc/free";
        }
        return "libc syscall wrappers";
    }
    if dso.contains("vdso") {
        return "clock reads (vdso)";
    }
    "other"
}

/// Profiles mcpflip and, for comparison, nginx (kernel/user split only).
pub async fn under_w1(b: &mut Bench) -> Option<Profiles> {
    let mcpflip = profile(b, Kind::Mcpflip).await?;
    let nginx = profile(b, Kind::Nginx).await;
    Some(Profiles { mcpflip, nginx })
}

async fn profile(b: &mut Bench, kind: Kind) -> Option<Profile> {
    let i = b.index(kind)?;
    let perf = sys::find_binary("perf")?;
    let version = sys::version_of(perf.to_str()?, &["--version"]).unwrap_or_default();
    let pids = b.targets[i].pids();
    if pids.is_empty() {
        return None;
    }
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let data = b.env.dir.join(format!("perf-{}.data", kind.key()));
    let t = &b.targets[i];
    let mut conn = http::Conn::open(t.addr(), None).await.ok()?;
    let sid = http::initialize(&mut conn, &t.host()).await.ok()?;
    let load = Load {
        addr: t.addr(),
        host: t.host(),
        path: "/mcp",
        body: http::CALL,
        sessions: std::sync::Arc::new(vec![sid]),
        conns: 64,
    };
    let seconds = 4.0;
    let record = async {
        let out = Command::new(&perf)
            .args(["record", "-F", "999", "-p", &pid_list, "-o"])
            .arg(&data)
            .args(["--", "sleep", &seconds.to_string()])
            .output()
            .await;
        if let Ok(o) = &out {
            if !o.status.success() {
                b.log(&format!(
                    "profile: perf record failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
    };
    let o = load::run(
        &load,
        None,
        Duration::from_millis(500),
        Duration::ZERO,
        vec![("proxy", pids.clone())],
        Some(record),
    )
    .await;
    let cpu_us = o.cpu.seconds("proxy") * 1e6 / o.ok.max(1) as f64;
    let out = Command::new(&perf)
        .arg("report")
        .arg("-i")
        .arg(&data)
        .args(["--stdio", "--no-children", "--percent-limit", "0"])
        .args(["--sort", "dso,symbol"])
        .output()
        .await
        .ok()?;
    let lines = parse_report(&String::from_utf8_lossy(&out.stdout));
    if lines.is_empty() {
        b.log(&format!(
            "profile: perf report gave no samples for {}",
            kind.label()
        ));
        return None;
    }
    let kernel_share = lines
        .iter()
        .filter(|l| l.kind == "[k]")
        .map(|l| l.pct)
        .sum::<f64>()
        / 100.0;
    let mut components: Vec<Component> = Vec::new();
    for l in lines.iter().filter(|l| l.kind == "[.]") {
        let g = component(&l.dso, &l.sym);
        match components.iter_mut().find(|c| c.name == g) {
            Some(c) => c.percent += l.pct,
            None => components.push(Component {
                percent: l.pct,
                name: g.to_owned(),
            }),
        }
    }
    components.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    let mut top: Vec<Symbol> = lines
        .iter()
        .map(|l| Symbol {
            percent: l.pct,
            symbol: l.sym.clone(),
            place: match l.kind.as_str() {
                "[k]" => "kernel",
                _ => "user",
            }
            .to_owned(),
        })
        .collect();
    top.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    b.log(&format!(
        "profile: {} at {:.0} req/s, {:.1} µs CPU per request, {:.0}% of it in the kernel",
        kind.label(),
        o.rps(),
        cpu_us,
        kernel_share * 100.0
    ));
    Some(Profile {
        perf: version,
        seconds,
        rps: o.rps(),
        cpu_us,
        kernel_share,
        top: top.into_iter().take(20).collect(),
        components,
    })
}
