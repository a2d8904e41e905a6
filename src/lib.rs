//! mcpflip: a blue-green reverse proxy for MCP servers.
//!
//! ```text
//! clients ─► proxy (route: pinned session? → its slot : weighted pick) ─► blue / green
//! ctl ─────► control socket (flip, drain, weights, ...) ─► controller ─► table swap
//! Prometheus ─► admin (/metrics /status /healthz)
//! ```
//!
//! Modules: `config` (TOML), `table` (slots, weighted pick, the ArcSwap holder),
//! `stats` (per-slot counts and guards), `proxy` (the request path), `controller`
//! (the one place that changes the table), `drain`, `state` (persisted state),
//! `control` (Unix socket and `ctl` client), `admin`, `upstream` (built-in MCP
//! server), `run` (wiring), `demo`.

pub mod admin;
pub mod config;
pub mod control;
pub mod controller;
pub mod demo;
pub mod deploy;
pub mod drain;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod state;
pub mod stats;
pub mod table;
pub mod tls;
pub mod upstream;
pub mod upstream_client;
