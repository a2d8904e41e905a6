//! mcpflip: a blue-green reverse proxy for MCP servers.
//!
//! ```text
//! clients ─► proxy (route: pinned session? → its slot : weighted pick) ─► blue / green
//! ctl ─────► control socket ─► controller (apply, persist, publish) ─► table swap
//! Prometheus, browsers ─► admin (/ /events /metrics /status /healthz)
//! ```
//!
//! Modules. The request path: `proxy` (listener, per-core workers, routing,
//! forwarding, SSE relay, live session migration) and `upstream` (the pooled
//! HTTP/1.1 client to a slot's server, with its own codec). The slot model:
//! `table` (slots, weighted pick, the ArcSwap holder) and `stats` (per-slot
//! counts and guards). The control path: `control` (the state machine, the
//! typed protocol, the controller that owns the state, the persister, the
//! socket server and the `ctl` client, and the drain, watch, deploy and
//! reload tasks) and `probe` (the MCP probe that gates flips). Leaves every
//! module may use: `mcp` (header names, protocol revisions, `Era`, the session
//! tag codec), `config`, `tls`, `files` (bounded reads of the files an
//! operator names). Around them: `admin` (the admin listener:
//! the live status page and its event feed, `/metrics`, `/status`, `/readyz`),
//! `health` (readiness: the process's phase and the serving slots' health),
//! `notify` (the systemd notification protocol, a leaf), `handover` (the
//! hitless upgrade: the listeners and the live counts passed to a new
//! process),
//! `metrics`
//! (what `/metrics` exposes, in OpenMetrics or the 0.0.4 text format), `log`
//! (the main log and the access log), `run` (wiring), `demo`, and
//! `demo_server` (the built-in MCP server behind `mcpflip upstream`).
//! `tests/module_graph.rs` keeps this graph free of cycles.

pub mod acme;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod demo_server;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod health;
pub mod log;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod proxy;
pub mod run;
pub mod shard;
pub mod stats;
pub mod table;
pub mod tls;
pub mod upstream;
