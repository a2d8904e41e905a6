//! The MCP probe: a real client handshake, straight to a slot's upstream (never
//! through the public listener), that gates a flip and drives the watch window.
//!
//! Streamable HTTP: `initialize` → `notifications/initialized` → `tools/list`
//! (following `nextCursor`) → optional canary `tools/call` → `DELETE` of the
//! probe's session; answers may be JSON or SSE-framed. Legacy HTTP+SSE: the same
//! over `GET /sse` and the POST URL of its `endpoint` event. A server that refuses
//! `initialize` but answers `server/discover` is probed the 2026-07-28 way.
//! Each step reports ok, milliseconds and, on failure, the HTTP status and an
//! excerpt of the body. The whole probe shares one deadline (`probe.timeout`).

pub mod events;
pub mod report;
pub mod wire;

use std::time::Duration;

use http::Uri;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{ProbeConfig, ProbeTransport};
use crate::mcp::headers::{
    is_event_stream, ACCEPTED_VERSIONS, STATELESS_REVISION as MODERN_VERSION,
};
use crate::table::Slot;
use bytes::Bytes;
use events::EventReader;
use http::{header, Method};
use report::{excerpt, Fail};
pub use report::{ProbeReport, Step};
use wire::{base_request, failed_answer, init_params, modern_params, send, slot_uri, Wire};

/// `tools/list` pages followed at most (a server looping on a cursor fails).
const MAX_PAGES: usize = 100;

/// Runs the probe configured by `cfg` against `slot`'s upstream.
pub async fn probe(slot: &Slot, cfg: &ProbeConfig) -> ProbeReport {
    let started = Instant::now();
    let mut run = Run {
        slot,
        deadline: started + cfg.timeout,
        timeout: cfg.timeout,
        steps: Vec::new(),
    };
    let transport = match cfg.transport {
        ProbeTransport::StreamableHttp => "streamable-http",
        ProbeTransport::Sse => "sse",
    };
    let result = match cfg.transport {
        ProbeTransport::StreamableHttp => run.streamable(cfg).await,
        ProbeTransport::Sse => run.legacy(cfg).await,
    };
    let (protocol, tools) = match &result {
        Ok(found) => (Some(found.protocol.clone()), found.tools.clone()),
        Err(found) => (found.protocol.clone(), found.tools.clone()),
    };
    let error = run
        .steps
        .iter()
        .find(|s| !s.ok)
        .map(|s| format!("{} failed: {}", s.step, s.detail));
    let ok = result.is_ok() && error.is_none();
    let steps = run
        .steps
        .iter()
        .map(|s| (&*s.step, Duration::from_millis(s.ms)));
    slot.stats.record_probe(ok, steps);
    ProbeReport {
        ok,
        slot: slot.name.to_string(),
        transport: transport.into(),
        protocol,
        ms: started.elapsed().as_millis() as u64,
        tools,
        steps: run.steps,
        error,
    }
}

/// What the probe learnt, kept for the report even when a later step fails.
#[derive(Debug, Default)]
struct Found {
    protocol: Option<String>,
    tools: Vec<String>,
}

#[derive(Debug, Default)]
struct Learnt {
    protocol: String,
    tools: Vec<String>,
}

struct Run<'a> {
    slot: &'a Slot,
    deadline: Instant,
    timeout: Duration,
    steps: Vec<Step>,
}

impl Run<'_> {
    /// Runs one step under the probe's deadline and records it.
    async fn step<T>(
        &mut self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<(T, String), Fail>>,
    ) -> Result<T, ()> {
        let t0 = Instant::now();
        let out = match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(Fail::new(format!(
                "no answer within the probe timeout ({})",
                humantime::format_duration(self.timeout)
            ))),
        };
        let ms = t0.elapsed().as_millis() as u64;
        match out {
            Ok((v, detail)) => {
                self.steps.push(Step {
                    step: name.into(),
                    ok: true,
                    ms,
                    detail,
                    status: None,
                    body: None,
                });
                Ok(v)
            }
            Err(f) => {
                self.steps.push(Step {
                    step: name.into(),
                    ok: false,
                    ms,
                    detail: f.detail,
                    status: f.status,
                    body: f.body,
                });
                Err(())
            }
        }
    }

    async fn streamable(&mut self, cfg: &ProbeConfig) -> Result<Learnt, Found> {
        let slot = self.slot;
        let uri = slot_uri(slot, &cfg.path).map_err(|f| {
            self.record_fail("initialize", f);
            Found::default()
        })?;
        let mut wire = Wire::Streamable {
            uri,
            session: None,
            version: None,
            modern: false,
        };
        let init = self
            .step("initialize", async {
                let v = wire.request(slot, 1, "initialize", init_params()).await?;
                let version = v["protocolVersion"].as_str().unwrap_or("").to_owned();
                check_version(&version)?;
                let server = v["serverInfo"]["name"].as_str().unwrap_or("?");
                wire.set_version(&version);
                Ok((version.clone(), format!("{server}, protocol {version}")))
            })
            .await;
        let protocol = match init {
            Ok(version) => version,
            Err(()) => self
                .try_modern(&mut wire)
                .await
                .ok_or_else(Found::default)?,
        };
        let modern = protocol == MODERN_VERSION;
        if !modern {
            self.step("initialized", async {
                wire.notify(slot, "notifications/initialized").await?;
                Ok(((), "accepted".to_owned()))
            })
            .await
            .map_err(|()| found(&protocol, &[]))?;
        }
        let learnt = self.tools_and_canary(&mut wire, cfg, &protocol).await;
        if let Wire::Streamable {
            session: Some(_), ..
        } = &wire
        {
            let closed = self
                .step("close", async {
                    let status = wire.delete(slot).await?;
                    Ok(((), format!("DELETE answered {status}")))
                })
                .await;
            if closed.is_err() {
                return Err(found(
                    &protocol,
                    &learnt.as_ref().map_or(vec![], |l| l.tools.clone()),
                ));
            }
        }
        learnt
    }

    /// After a refused `initialize`: a 2026-07-28 server answers `server/discover`.
    /// On success the failed initialize step is replaced by the discover step.
    async fn try_modern(&mut self, wire: &mut Wire) -> Option<String> {
        let slot = self.slot;
        let refused = self.steps.pop()?;
        if !refused.status.is_some_and(|s| (400..500).contains(&s)) {
            self.steps.push(refused);
            return None;
        }
        wire.go_modern();
        let discover = self
            .step("discover", async {
                let v = wire
                    .request(slot, 1, "server/discover", modern_params(json!({})))
                    .await?;
                let server = v["_meta"]["io.modelcontextprotocol/serverInfo"]["name"]
                    .as_str()
                    .or_else(|| v["serverInfo"]["name"].as_str())
                    .unwrap_or("?");
                Ok((
                    (),
                    format!("{server}, protocol {MODERN_VERSION} (initialize refused)"),
                ))
            })
            .await;
        match discover {
            Ok(()) => Some(MODERN_VERSION.to_owned()),
            Err(()) => {
                // Report the initialize failure: the server is not a modern one either.
                self.steps.pop();
                self.steps.push(refused);
                None
            }
        }
    }

    async fn tools_and_canary(
        &mut self,
        wire: &mut Wire,
        cfg: &ProbeConfig,
        protocol: &str,
    ) -> Result<Learnt, Found> {
        let slot = self.slot;
        let tools = self
            .step("tools/list", async {
                let mut names = Vec::new();
                let mut cursor: Option<String> = None;
                for page in 0.. {
                    if page == MAX_PAGES {
                        return Err(Fail::new(format!(
                            "still paging after {MAX_PAGES} pages of tools/list"
                        )));
                    }
                    let params = match &cursor {
                        Some(c) => json!({ "cursor": c }),
                        None => json!({}),
                    };
                    let v = wire
                        .request(slot, 2 + page as u64, "tools/list", params)
                        .await?;
                    let Some(list) = v["tools"].as_array() else {
                        return Err(Fail::new("tools/list result has no `tools` array"));
                    };
                    names.extend(
                        list.iter()
                            .filter_map(|t| t["name"].as_str().map(str::to_owned)),
                    );
                    match v["nextCursor"].as_str() {
                        Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                        _ => break,
                    }
                }
                names.sort();
                names.dedup();
                if let Some(expected) = &cfg.expect_tools {
                    let differs = tool_set_difference(expected, &names);
                    if let Some(d) = differs {
                        return Err(Fail::new(d));
                    }
                }
                let detail = format!("{} tools: {}", names.len(), names.join(", "));
                Ok((names, detail))
            })
            .await
            .map_err(|()| found(protocol, &[]))?;
        if let Some(canary) = &cfg.canary {
            self.step("canary", async {
                let params = json!({ "name": canary.tool, "arguments": canary.arguments });
                let v = wire.request(slot, 1000, "tools/call", params).await?;
                let text = result_text(&v);
                if v["isError"].as_bool() == Some(true) {
                    return Err(Fail::new(format!(
                        "{} returned an error: {}",
                        canary.tool,
                        excerpt(&text)
                    )));
                }
                match &canary.expect {
                    Some(want) if !text.contains(want.as_str()) => Err(Fail::new(format!(
                        "{} answered {:?}, which does not contain {want:?}",
                        canary.tool,
                        excerpt(&text)
                    ))),
                    _ => Ok(((), format!("{} answered {:?}", canary.tool, excerpt(&text)))),
                }
            })
            .await
            .map_err(|()| found(protocol, &tools))?;
        }
        Ok(Learnt {
            protocol: protocol.to_owned(),
            tools,
        })
    }

    async fn legacy(&mut self, cfg: &ProbeConfig) -> Result<Learnt, Found> {
        let slot = self.slot;
        let opened = self
            .step("endpoint", async {
                let uri = slot_uri(slot, &cfg.path)?;
                let req = base_request(slot, Method::GET, uri.clone())
                    .header(header::ACCEPT, "text/event-stream")
                    .body(Bytes::new().into())
                    .map_err(|e| Fail::new(e.to_string()))?;
                let resp = send(slot, req).await?;
                let status = resp.status();
                if !status.is_success() || !is_event_stream(resp.headers()) {
                    return Err(failed_answer(resp, "GET of the SSE endpoint").await);
                }
                let mut events = EventReader::new(resp.into_body());
                loop {
                    let ev = events.next().await?;
                    if ev.event == "endpoint" {
                        let post = resolve(slot, &uri, ev.data.trim())?;
                        let detail = format!("POST URL {post}");
                        return Ok(((post, events), detail));
                    }
                }
            })
            .await;
        let Ok((post, events)) = opened else {
            return Err(Found::default());
        };
        let mut wire = Wire::Legacy { post, events };
        let protocol = self
            .step("initialize", async {
                let v = wire.request(slot, 1, "initialize", init_params()).await?;
                let version = v["protocolVersion"].as_str().unwrap_or("").to_owned();
                check_version(&version)?;
                let server = v["serverInfo"]["name"].as_str().unwrap_or("?");
                Ok((version.clone(), format!("{server}, protocol {version}")))
            })
            .await
            .map_err(|()| Found::default())?;
        self.step("initialized", async {
            wire.notify(slot, "notifications/initialized").await?;
            Ok(((), "accepted".to_owned()))
        })
        .await
        .map_err(|()| found(&protocol, &[]))?;
        // Dropping the wire closes the GET stream, which ends the legacy session.
        self.tools_and_canary(&mut wire, cfg, &protocol).await
    }

    fn record_fail(&mut self, name: &'static str, f: Fail) {
        self.steps.push(Step {
            step: name.into(),
            ok: false,
            ms: 0,
            detail: f.detail,
            status: f.status,
            body: f.body,
        });
    }
}

fn found(protocol: &str, tools: &[String]) -> Found {
    Found {
        protocol: Some(protocol.to_owned()),
        tools: tools.to_vec(),
    }
}

fn check_version(v: &str) -> Result<(), Fail> {
    if ACCEPTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(Fail::new(format!(
            "protocol version {v:?} is not one mcpflip accepts ({})",
            ACCEPTED_VERSIONS.join(", ")
        )))
    }
}

/// `None` when `got` is exactly the `expected` set; else what differs.
fn tool_set_difference(expected: &[String], got: &[String]) -> Option<String> {
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !got.contains(e))
        .map(String::as_str)
        .collect();
    let unexpected: Vec<&str> = got
        .iter()
        .filter(|g| !expected.contains(g))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {}", unexpected.join(", ")));
    }
    Some(format!(
        "tool set differs from expect_tools: {}",
        parts.join("; ")
    ))
}

/// The concatenated text content of a `tools/call` result.
fn result_text(v: &Value) -> String {
    v["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// The legacy endpoint event's URL, made absolute against the slot's upstream.
fn resolve(slot: &Slot, sse: &Uri, data: &str) -> Result<Uri, Fail> {
    if data.starts_with("http://") || data.starts_with("https://") {
        return data
            .parse()
            .map_err(|e| Fail::new(format!("endpoint URL {data:?}: {e}")));
    }
    if data.starts_with('/') {
        return slot_uri(slot, data);
    }
    let dir = sse.path().rsplit_once('/').map_or("", |(d, _)| d);
    slot_uri(slot, &format!("{dir}/{data}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_sets_compare_exactly() {
        let want = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(tool_set_difference(&want, &["a".into(), "b".into()]), None);
        assert_eq!(
            tool_set_difference(&want, &["a".into(), "c".into()]).as_deref(),
            Some("tool set differs from expect_tools: missing b; unexpected c")
        );
    }

    #[test]
    fn versions_and_excerpts() {
        assert!(check_version("2025-06-18").is_ok());
        assert!(check_version("2026-07-28").is_ok());
        assert!(check_version("1999-01-01").is_err());
        let long = "é".repeat(400);
        assert!(excerpt(&long).ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }
}
