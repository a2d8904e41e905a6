//! The control protocol's types, shared by the server and `mcpflip ctl`:
//! requests, replies, progress lines, events and errors.
//!
//! On the wire a request is one line: the words of `mcpflip ctl` (`flip green
//! --drain`, parsed by the same clap grammar as the command line, so the two
//! can never drift apart) or a JSON object (`{"cmd": "flip", "slot": "green",
//! "drain": true}`, what `ctl` sends). The proxy answers with JSON lines:
//! progress objects (`"event": "progress"`) while a command waits, then
//! exactly one final object carrying `"ok"`. An error is `{"ok": false,
//! "error": MESSAGE, "code": CODE}`; [`CtlError::code`] is stable.
//!
//! This module only defines and parses; it never acts, and it imports nothing
//! of the crate but the slot state, the probe report and the duration syntax.

// The help texts name config sections as `mcpflip --help` shows them ("[drain]
// deadline"); rustdoc would read them as links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::config::parse_duration;
use crate::probe::report::Step;
use crate::probe::ProbeReport;
use crate::table::{SlotState, MAX_WEIGHT};

/// The longest control line the proxy reads (bytes, newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// How much of a client's own input an error message quotes.
const QUOTE: usize = 64;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The slots with their live counts, the active slot, a running drain and watch.
    Status,
    /// Probe SLOT, then send new sessions to it: weight 100 for SLOT, 0 for every other serving slot.
    ///
    /// A failed probe changes nothing. A probed flip starts the watch window.
    /// Without --drain the old slots go to standby and their sessions get 404
    /// (with [drain] migrate = "replay" they move to a serving slot).
    Flip {
        /// The slot to send new sessions to.
        slot: String,
        /// Skip the probe (and the watch window that follows a probed flip).
        #[arg(long)]
        #[serde(default)]
        no_probe: bool,
        /// Drain the slots that served until now: their sessions keep going to them.
        #[arg(long)]
        #[serde(default)]
        drain: bool,
        /// With --drain: reply once the old slots are drained.
        #[arg(long)]
        #[serde(default)]
        wait: bool,
        /// Drain deadline for the old slots (default: [drain] deadline), e.g. 90s.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        deadline: Option<Duration>,
    },
    /// Set weights in one atomic table swap (canary shifts), e.g. `weights blue=90 green=10`.
    Weights {
        /// NAME=W pairs; W from 0 to 1000000. A slot with a weight above 0 serves.
        #[arg(value_name = "NAME=W", required = true)]
        #[serde(serialize_with = "weights_out", deserialize_with = "weights_in")]
        weights: Vec<Weight>,
        /// A serving slot set to 0 drains (its sessions keep going to it)
        /// instead of going to standby (its sessions get 404, or move with
        /// [drain] migrate = "replay").
        #[arg(long)]
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drain: bool,
        /// With --drain: reply once the slots set to 0 are drained.
        #[arg(long, requires = "drain")]
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait: bool,
        /// With --drain: the drain deadline (default: [drain] deadline), e.g. 90s.
        #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "drain")]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        deadline: Option<Duration>,
    },
    /// Stop new sessions to SLOT; its sessions keep going to it until it is drained.
    Drain {
        /// The slot to drain.
        slot: String,
        /// Reply once the slot is drained (no live stream, nothing in flight) or the deadline passed.
        #[arg(long)]
        #[serde(default)]
        wait: bool,
        /// After this, the slot's remaining streams end at an event boundary (default: [drain] deadline).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        deadline: Option<Duration>,
        /// End the slot's streams at event boundaries now and move its sessions
        /// to a serving slot (needs [drain] migrate = "replay"; else they get 404).
        #[arg(long, conflicts_with = "deadline")]
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        migrate: bool,
    },
    /// Wait until SLOT is drained: `wait SLOT drained [--timeout DUR]`.
    Wait {
        /// The draining slot.
        slot: String,
        /// The condition; `drained` is the only one (and the default).
        #[arg(value_parser = ["drained"], hide_possible_values = true)]
        #[serde(skip)]
        condition: Option<String>,
        /// Give up (code `timeout`) after this long; the drain goes on.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        timeout: Option<Duration>,
    },
    /// Run the MCP probe against SLOT and report each step.
    Probe {
        /// The slot to probe (straight to its upstream, not through the proxy).
        slot: String,
    },
    /// Flip back to the slot active before the last flip, if it passes its probe.
    Rollback,
    /// Mark SLOT's process as gone: requests of its sessions are answered 404.
    Retire {
        /// The slot whose process is gone.
        slot: String,
    },
    /// Mark SLOT's process as started again: a new generation, a fresh connection pool.
    Standby {
        /// The slot whose process was started again.
        slot: String,
    },
    /// Probe SLOT, flip, drain the old slot until its last session ends, then watch SLOT.
    ///
    /// Exits 0 when SLOT passed its watch; non-zero when the probe refused it
    /// (nothing changed), SLOT is already active, or the watch rolled back.
    Deploy {
        /// The slot with the new release.
        slot: String,
        /// Drain deadline for the old slot (default: [drain] deadline).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        deadline: Option<Duration>,
        /// Drain the old slot with `drain --migrate`: its sessions move to SLOT at once.
        #[arg(long, conflicts_with = "deadline")]
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        migrate: bool,
        /// Watch window (default: [watch] window); 0s skips the watch.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        watch: Option<Duration>,
    },
    /// Re-read the config file: slots, certificates, [drain], [probe], [watch], [health].
    Reload,
    /// Start the mcpflip binary again and hand it the listeners without dropping a connection.
    ///
    /// The new process gets the listening sockets, takes over the control
    /// socket and serves; this one stops accepting, finishes its open
    /// connections and streams (up to [drain] deadline) and exits. If the new
    /// process fails (a bad config, a crash, no answer in time), this one
    /// serves on as before and the command fails with the new process's error.
    /// Listener addresses, the control socket and [proxy] may change.
    Upgrade {
        /// The binary to start (default: the path this process was started from, read anew).
        #[arg(long, value_name = "PATH")]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
        /// How long the new process has to take over (default: 30s).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        #[serde(
            default,
            serialize_with = "duration_out",
            deserialize_with = "duration_in",
            skip_serializing_if = "Option::is_none"
        )]
        timeout: Option<Duration>,
    },
}

impl Request {
    /// The command word.
    pub fn word(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Flip { .. } => "flip",
            Request::Weights { .. } => "weights",
            Request::Drain { .. } => "drain",
            Request::Wait { .. } => "wait",
            Request::Probe { .. } => "probe",
            Request::Rollback => "rollback",
            Request::Retire { .. } => "retire",
            Request::Standby { .. } => "standby",
            Request::Deploy { .. } => "deploy",
            Request::Reload => "reload",
            Request::Upgrade { .. } => "upgrade",
        }
    }

    /// The JSON line `ctl` sends.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"cmd\":\"{}\"}}", self.word()))
    }
}

/// The line grammar: the `ctl` subcommands, without a program name.
#[derive(clap::Parser, Debug)]
#[command(
    name = "mcpflip-ctl",
    no_binary_name = true,
    disable_help_subcommand = true,
    color = clap::ColorChoice::Never
)]
struct Words {
    #[command(subcommand)]
    request: Request,
}

/// Parses one control line: a JSON request when it starts with `{`, else words.
pub fn parse_line(line: &str) -> Result<Request, CtlError> {
    let line = line.trim();
    if line.starts_with('{') {
        return serde_json::from_str(line).map_err(|e| {
            CtlError::BadCommand(format!("bad JSON request: {}", quote(&e.to_string(), 200)))
        });
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.is_empty() {
        return Err(CtlError::BadCommand("empty command; try `status`".into()));
    }
    let request = <Words as clap::Parser>::try_parse_from(&words)
        .map(|w| w.request)
        .map_err(|e| {
            let text = e.render().to_string();
            if e.kind() == clap::error::ErrorKind::DisplayHelp {
                // `flip --help` on the socket: the help is the answer.
                return CtlError::BadCommand(text.trim_end().to_owned());
            }
            CtlError::BadCommand(one_line_error(&text))
        })?;
    as_on_the_wire(request)
}

/// clap's error for a terminal as one line for the socket: its first
/// paragraph (what is wrong, with what it lists below: the missing
/// arguments, the possible values), then the command's usage, or the
/// commands when no command was recognised.
fn one_line_error(text: &str) -> String {
    let what = text
        .split("\n\n")
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let usage = text
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .filter(|u| !u.starts_with("mcpflip-ctl "));
    match usage {
        Some(usage) => format!("{}; usage: {}", quote(&what, 200), quote(usage, 200)),
        None => format!(
            "{}; commands: status, flip, weights, drain, wait, probe, rollback, deploy, retire, standby, reload (`mcpflip ctl CMD --help`)",
            quote(&what, 200)
        ),
    }
}

/// The words' request as its JSON form carries it, so that both forms of one
/// command are the same request: `wait SLOT drained` is `wait SLOT` (the
/// condition is the default and never sent), and a slot named twice in
/// `weights` is refused as the JSON object refuses it.
fn as_on_the_wire(request: Request) -> Result<Request, CtlError> {
    Ok(match request {
        Request::Wait { slot, timeout, .. } => Request::Wait {
            slot,
            condition: None,
            timeout,
        },
        Request::Weights { ref weights, .. } => {
            for (i, w) in weights.iter().enumerate() {
                if weights[..i].iter().any(|o| o.slot == w.slot) {
                    return Err(CtlError::BadCommand(format!(
                        "slot {} is given twice",
                        quote(&w.slot, QUOTE)
                    )));
                }
            }
            request
        }
        other => other,
    })
}

/// At most `max` bytes of `s` (on a character boundary), marked when cut.
pub fn quote(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// `NAME=W`: one slot's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight {
    pub slot: String,
    pub weight: u32,
}

impl FromStr for Weight {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (slot, w) = s
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not NAME=W", quote(s, QUOTE)))?;
        let weight = w.parse().map_err(|_| {
            format!(
                "weight {:?} of {} is not a whole number from 0 to {MAX_WEIGHT}",
                quote(w, QUOTE),
                quote(slot, QUOTE)
            )
        })?;
        Ok(Weight {
            slot: slot.to_owned(),
            weight,
        })
    }
}

/// Weights as a JSON object, `{"blue": 90, "green": 10}`.
fn weights_out<S: Serializer>(ws: &[Weight], s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(ws.len()))?;
    for w in ws {
        m.serialize_entry(&w.slot, &w.weight)?;
    }
    m.end()
}

/// Reads `{"blue": 90, ...}`; a name given twice is an error.
fn weights_in<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weight>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Weight>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of slot names to weights, e.g. {\"blue\": 90}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Weight>, A::Error> {
            let mut out: Vec<Weight> = Vec::new();
            while let Some((slot, weight)) = map.next_entry::<String, u32>()? {
                if out.iter().any(|w| w.slot == slot) {
                    return Err(de::Error::custom(format!(
                        "slot {} is given twice",
                        quote(&slot, QUOTE)
                    )));
                }
                out.push(Weight { slot, weight });
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// A duration as a string, `"90s"`, like the config.
fn duration_out<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

fn duration_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(de::Error::custom))
        .transpose()
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// One slot in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub name: String,
    pub upstream: String,
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
    pub live_streams: u64,
    pub inflight: u64,
}

/// One slot after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotBrief {
    pub name: String,
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
}

/// A drain that runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub slot: String,
    pub elapsed_ms: u64,
    pub deadline_ms: u64,
}

/// The watch window that runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub slot: String,
    pub elapsed_ms: u64,
    pub window_ms: u64,
    pub probes: u64,
}

/// The last rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
}

/// Whether the state file holds the state that routes (`persisted: false`
/// after a save failed for a change that could not be undone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: PathBuf,
    pub persisted: bool,
    /// The state's revision: one more with every change.
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `status` (and the admin listener's `/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub slots: Vec<SlotStatus>,
    pub active: Option<String>,
    pub flips_total: u64,
    pub rollbacks_total: u64,
    /// The first drain that runs (see `drains` for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<DrainStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<RollbackRecord>,
    pub state_file: StateFileStatus,
    /// The deploy that runs, or else the last one since the proxy started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployStatus>,
    /// The process this one took over from, while it still serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<HandoverStatus>,
    /// Live session migration, when `[drain] migrate = "replay"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// The fleet, when this instance is in one (`[cluster]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// The listener's certificate from an ACME CA (`[listen] tls.acme`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeStatus>,
}

/// `[listen] tls.acme`: how the listener's certificate came, since the
/// process started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeStatus {
    pub domains: Vec<String>,
    pub directory: String,
    /// Orders that ended with a certificate served.
    pub issued: u64,
    /// Certificates another instance of the fleet ordered, taken instead of
    /// an order (`tls.acme.share`).
    #[serde(default)]
    pub shared: u64,
    /// Orders that failed (tried again later).
    pub failed: u64,
    /// When the last certificate was issued or taken (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<u64>,
    /// Why the last order failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the certificate is looked at next (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_ms: Option<u64>,
}

/// The fleet as one of its instances sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This instance's name.
    pub instance: String,
    pub prefix: String,
    /// Whether etcd answers this instance now.
    pub connected: bool,
    /// Since when it does not (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_since_ms: Option<u64>,
    /// The etcd revision of the table this instance routes by.
    pub revision: i64,
    /// Every live instance (whose lease holds), this one included.
    pub instances: Vec<InstanceStatus>,
    /// The sums over `instances`, per slot.
    pub totals: Vec<SlotCounts>,
    /// The instance that holds the fleet's deploy lock (a deploy runs there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_lock: Option<String>,
    /// The fleet's last deploy as its instance recorded it in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<FleetDeploy>,
}

/// A deploy as the fleet sees it (`{prefix}/deploy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDeploy {
    /// The instance that runs (or ran) it.
    pub by: String,
    pub status: DeployStatus,
    /// Its phase says it runs, but no instance holds the lock: the instance
    /// running it died. The committed table stands; the watch window does
    /// not resume.
    #[serde(default)]
    pub orphaned: bool,
}

/// One instance of the fleet and the counts it published last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// How long ago it published them (its lease is renewed as it does).
    pub lease_age_ms: u64,
    pub slots: Vec<SlotCounts>,
}

/// One slot's counts on one instance (or summed over the fleet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCounts {
    pub slot: String,
    pub live_streams: u64,
    pub inflight: u64,
    /// How long the slot had been idle here (no stream, nothing in flight,
    /// no pinned request) when published; absent while busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Responses so far, and the 5xx among them that the slot caused (what
    /// the watch window judges).
    #[serde(default)]
    pub responses: u64,
    #[serde(default)]
    pub errors_5xx: u64,
}

/// Live session migration's counts since the proxy started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// `[drain] migrate`.
    pub mode: String,
    /// Sessions whose `initialize` is held for a replay.
    pub captured_sessions: u64,
    /// Bytes of request bodies held for them.
    pub captured_bytes: u64,
    /// Sessions moved to another slot.
    pub migrated: u64,
    /// Sessions that could not move, by cause (answered 404).
    pub failed: std::collections::BTreeMap<String, u64>,
    /// Calls cut in flight and answered with a JSON-RPC error.
    pub interrupted_calls: u64,
}

/// Where a deploy is. The flip happens between `probe` and `drain`; the watch
/// window starts at the flip and runs beside the drain, and `watch` is the
/// wait for it once every old slot drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    Probe,
    Drain,
    Watch,
    /// Ended: the new slot passed its watch.
    Passed,
    /// Ended otherwise: `error` and `code` say how.
    Failed,
}

impl DeployPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Drain => "drain",
            Self::Watch => "watch",
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }

    /// Whether the deploy ended.
    pub fn ended(self) -> bool {
        matches!(self, Self::Passed | Self::Failed)
    }
}

/// A deploy as it goes (`status.deploy`): what each phase did so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployStatus {
    /// The slot with the new release.
    pub to: String,
    /// The active slot when the deploy started; after the flip, the slot it flipped from.
    pub from: Option<String>,
    pub phase: DeployPhase,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Time since the start; once ended, how long the deploy took.
    pub elapsed_ms: u64,
    /// The probe that gated the flip, once it ran (passed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
    /// Milliseconds since the Unix epoch, once flipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipped_at: Option<u64>,
    /// The old slots the flip set draining.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// How each of them drained, as its drain ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<Drained>,
    /// How the watch window ended (a rollback included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchOutcome>,
    /// Why it failed, and the error's code (`probe_failed`, `rolled_back`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    pub slots: Vec<SlotBrief>,
    /// Set when a serving slot went to `standby` (weighted 0): its open
    /// sessions' requests now get 404 (or move, with `[drain] migrate =
    /// "replay"), as after `flip` without `--drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// With `--drain`: the slots that went from serving to `draining`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// With `--wait`: how they drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Vec<Drained>>,
}

/// `flip` and `rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flipped {
    pub from: Option<String>,
    pub to: String,
    /// The old slots that drain (empty without `--drain`).
    pub draining: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub flipped_at: u64,
    /// The probe that gated the flip; `null` with `--no-probe`.
    pub probe: Option<ProbeReport>,
    /// The watch window that started, when the flip was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_ms: Option<u64>,
    /// What the operator should know (a flip without a drain cuts sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// With `--wait`: how the old slots drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Vec<Drained>>,
    /// A rollback's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// False when the change could not be saved and could not be undone (a
    /// rollback after a failed watch): the state file is behind.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub persisted: bool,
}

/// `drain` without `--wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStarted {
    pub slot: String,
    pub state: SlotState,
}

/// How a drain ended (`drain --wait`, `wait`, and each drain of `deploy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    pub drained_after_ms: u64,
    /// Streams ended at the deadline.
    pub forced: u64,
    /// False when the `drained` state could not be saved (see `status`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub persisted: bool,
}

/// One slot's drain outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    pub slot: String,
    #[serde(flatten)]
    pub outcome: DrainOutcome,
}

/// `retire` and `standby`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub slot: String,
    pub state: SlotState,
    pub generation: u32,
}

/// How a watch window ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WatchOutcome {
    Passed {
        probes: u64,
    },
    RolledBack {
        reason: String,
        to: String,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        persisted: bool,
    },
    /// The slot failed but was not rolled back (auto_rollback off, or the old
    /// slot failed its probe).
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

/// `deploy` (and, with `ok: false`, a deploy that rolled back or failed its watch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    pub from: Option<String>,
    pub to: String,
    pub probe: Option<ProbeReport>,
    pub drained: Vec<Drained>,
    pub drained_after_ms: Option<u64>,
    pub forced: u64,
    pub watch: WatchOutcome,
    pub elapsed_ms: u64,
}

/// `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub changed: Vec<String>,
    pub restart_required: Vec<String>,
}

/// `upgrade`: the new process serves; this one finishes its streams and exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgraded {
    /// This process, which now hands over.
    pub old_pid: u32,
    /// The process that took over.
    pub new_pid: u32,
    pub binary: PathBuf,
}

/// A handover in progress, as the new process's `status` shows it: the
/// process that handed over still serves these streams and requests, and
/// a drain of a slot ends only when they are gone too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverStatus {
    /// The process handing over.
    pub pid: u32,
    /// Milliseconds since it handed over.
    pub since_ms: u64,
    /// Its open streams and requests in flight, per slot.
    pub slots: Vec<HandoverSlot>,
}

/// One slot's counts in the process handing over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverSlot {
    pub slot: String,
    pub live_streams: u64,
    pub inflight: u64,
}

/// The final reply of a command that succeeded.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    Weights(Weighted),
    Flip(Box<Flipped>),
    Drain(DrainStarted),
    Drained(Drained),
    Probe(Box<ProbeReport>),
    Lifecycle(Lifecycle),
    Deploy(Box<Deployed>),
    Reload(Reloaded),
    Upgrade(Upgraded),
}

impl Reply {
    /// The reply as a JSON object with `"ok": true`.
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ok".into(), Value::Bool(true));
        }
        v
    }

    /// Reads the final reply of `request` (the client knows what it asked for).
    pub fn decode(request: &Request, v: Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value as of;
        Ok(match request {
            Request::Status => Reply::Status(Box::new(of(v)?)),
            Request::Weights { .. } => Reply::Weights(of(v)?),
            Request::Flip { .. } | Request::Rollback => Reply::Flip(of(v)?),
            Request::Drain { wait: false, .. } => Reply::Drain(of(v)?),
            Request::Drain { wait: true, .. } | Request::Wait { .. } => Reply::Drained(of(v)?),
            Request::Probe { .. } => Reply::Probe(of(v)?),
            Request::Retire { .. } | Request::Standby { .. } => Reply::Lifecycle(of(v)?),
            Request::Deploy { .. } => Reply::Deploy(of(v)?),
            Request::Reload => Reply::Reload(of(v)?),
            Request::Upgrade { .. } => Reply::Upgrade(of(v)?),
        })
    }
}

/// What a waiting command streams before its final reply (`"event":
/// "progress"` on the wire), and what drains and watches publish as events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Progress {
    /// A deploy probes its slot.
    Probe {
        /// The slot to probe (straight to its upstream, not through the proxy).
        slot: String,
    },
    /// A deploy flipped.
    Flip {
        from: Option<String>,
        to: String,
        draining: Vec<String>,
    },
    /// A drain's counts against its deadline.
    Drain {
        /// The slot to drain.
        slot: String,
        live_streams: u64,
        inflight: u64,
        elapsed_ms: u64,
        deadline_ms: u64,
    },
    /// A watch window's countdown.
    Watch {
        slot: String,
        elapsed_ms: u64,
        window_ms: u64,
        probes: u64,
    },
}

impl Progress {
    /// The progress line, `{"event": "progress", "phase": ..., ...}`.
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("event".into(), Value::from("progress"));
        }
        v
    }
}

/// What happened in the control plane: every change `apply` makes, the
/// progress of drains and watches, and how they end. The controller publishes
/// each one to its event hub (`Controller::subscribe`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    WeightsSet {
        slots: Vec<SlotBrief>,
    },
    Flipped {
        from: Option<String>,
        to: String,
        draining: Vec<String>,
        standby: Vec<String>,
    },
    DrainStarted {
        slot: String,
        generation: u32,
    },
    /// The state machine marked the slot drained.
    SlotDrained {
        slot: String,
        generation: u32,
    },
    Retired {
        slot: String,
    },
    Standby {
        slot: String,
        generation: u32,
    },
    SlotAdded {
        slot: String,
        state: SlotState,
    },
    SlotRemoved {
        slot: String,
    },
    SlotReaddressed {
        slot: String,
        generation: u32,
    },
    /// A drain task ended.
    DrainEnded {
        slot: String,
        #[serde(flatten)]
        outcome: DrainOutcome,
    },
    Progress(Progress),
    ProbeDone {
        slot: String,
        ok: bool,
        ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// What each step did (initialize, initialized, tools/list, canary, ...).
        steps: Vec<Step>,
    },
    WatchEnded {
        slot: String,
        outcome: WatchOutcome,
    },
    RolledBack {
        from: Option<String>,
        to: String,
        reason: String,
    },
    StateSaved {
        revision: u64,
    },
    StateNotSaved {
        path: PathBuf,
        error: String,
    },
    Reloaded {
        changed: Vec<String>,
        restart_required: Vec<String>,
    },
    /// `deploy` passed its refusals and probes its slot now.
    DeployStarted {
        to: String,
        /// The active slot it starts from.
        from: Option<String>,
    },
    /// A deploy ended: `ok` when the slot passed its watch, else the error
    /// (its message and code) the `deploy` command answered.
    DeployEnded {
        to: String,
        ok: bool,
        elapsed_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Event {
    /// Every event name, as the `event` field spells it (what the admin
    /// listener's `/events` feed names its SSE events).
    pub const NAMES: [&'static str; 19] = [
        "weights_set",
        "flipped",
        "drain_started",
        "slot_drained",
        "retired",
        "standby",
        "slot_added",
        "slot_removed",
        "slot_readdressed",
        "drain_ended",
        "progress",
        "probe_done",
        "watch_ended",
        "rolled_back",
        "state_saved",
        "state_not_saved",
        "reloaded",
        "deploy_started",
        "deploy_ended",
    ];

    /// The event's name (its `event` field on the wire).
    pub fn name(&self) -> &'static str {
        match self {
            Event::WeightsSet { .. } => "weights_set",
            Event::Flipped { .. } => "flipped",
            Event::DrainStarted { .. } => "drain_started",
            Event::SlotDrained { .. } => "slot_drained",
            Event::Retired { .. } => "retired",
            Event::Standby { .. } => "standby",
            Event::SlotAdded { .. } => "slot_added",
            Event::SlotRemoved { .. } => "slot_removed",
            Event::SlotReaddressed { .. } => "slot_readdressed",
            Event::DrainEnded { .. } => "drain_ended",
            Event::Progress(_) => "progress",
            Event::ProbeDone { .. } => "probe_done",
            Event::WatchEnded { .. } => "watch_ended",
            Event::RolledBack { .. } => "rolled_back",
            Event::StateSaved { .. } => "state_saved",
            Event::StateNotSaved { .. } => "state_not_saved",
            Event::Reloaded { .. } => "reloaded",
            Event::DeployStarted { .. } => "deploy_started",
            Event::DeployEnded { .. } => "deploy_ended",
        }
    }

    /// The event as a JSON object, `{"event": NAME, ...}`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({"event": self.name()}))
    }
}

/// The stable machine codes of [`CtlError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadCommand,
    LineTooLong,
    UnknownSlot,
    WeightOutOfRange,
    NoServingSlot,
    SlotRetired,
    LastServingSlot,
    AlreadyActive,
    GenerationExhausted,
    NotDraining,
    DrainCancelled,
    Timeout,
    Busy,
    ProbeFailed,
    RolledBack,
    WatchFailed,
    WatchCancelled,
    NoPrevious,
    BadConfig,
    SlotInUse,
    StateNotSaved,
    Forbidden,
    ShuttingDown,
    UpgradeFailed,
    Internal,
    Conflict,
    ClusterUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        Self::BadCommand,
        Self::LineTooLong,
        Self::UnknownSlot,
        Self::WeightOutOfRange,
        Self::NoServingSlot,
        Self::SlotRetired,
        Self::LastServingSlot,
        Self::AlreadyActive,
        Self::GenerationExhausted,
        Self::NotDraining,
        Self::DrainCancelled,
        Self::Timeout,
        Self::Busy,
        Self::ProbeFailed,
        Self::RolledBack,
        Self::WatchFailed,
        Self::WatchCancelled,
        Self::NoPrevious,
        Self::BadConfig,
        Self::SlotInUse,
        Self::StateNotSaved,
        Self::Forbidden,
        Self::ShuttingDown,
        Self::UpgradeFailed,
        Self::Internal,
        Self::Conflict,
        Self::ClusterUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCommand => "bad_command",
            Self::LineTooLong => "line_too_long",
            Self::UnknownSlot => "unknown_slot",
            Self::WeightOutOfRange => "weight_out_of_range",
            Self::NoServingSlot => "no_serving_slot",
            Self::SlotRetired => "slot_retired",
            Self::LastServingSlot => "last_serving_slot",
            Self::AlreadyActive => "already_active",
            Self::GenerationExhausted => "generation_exhausted",
            Self::NotDraining => "not_draining",
            Self::DrainCancelled => "drain_cancelled",
            Self::Timeout => "timeout",
            Self::Busy => "busy",
            Self::ProbeFailed => "probe_failed",
            Self::RolledBack => "rolled_back",
            Self::WatchFailed => "watch_failed",
            Self::WatchCancelled => "watch_cancelled",
            Self::NoPrevious => "no_previous",
            Self::BadConfig => "bad_config",
            Self::SlotInUse => "slot_in_use",
            Self::StateNotSaved => "state_not_saved",
            Self::Forbidden => "forbidden",
            Self::ShuttingDown => "shutting_down",
            Self::UpgradeFailed => "upgrade_failed",
            Self::Internal => "internal",
            Self::Conflict => "conflict",
            Self::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// The code of a wire string, `None` for one this version does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a control command failed. Callers match on the variant (or on
/// [`CtlError::code`]); the message is for people.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    BadCommand(String),
    #[error("a control line may be at most {max} bytes; this one was longer, so nothing was run and the connection is closed")]
    LineTooLong { max: usize },
    #[error("no slot named {:?} (slots: {})", quote(.name, QUOTE), .known.join(", "))]
    UnknownSlot { name: String, known: Vec<String> },
    #[error("weight {weight} of {slot} is out of range (0 to {MAX_WEIGHT}, as in the config)")]
    WeightOutOfRange { slot: String, weight: u32 },
    #[error("{0}")]
    NoServingSlot(String),
    #[error("slot {slot} is retired; run `standby {slot}` once its process is up again")]
    SlotRetired { slot: String },
    #[error("slot {slot} is the only serving slot: `{command} {slot}` would leave nothing to take new sessions; flip to another slot first")]
    LastServingSlot { slot: String, command: &'static str },
    #[error("{slot} is already the active slot (no other slot serves); nothing changed and no flip was counted")]
    AlreadyActive { slot: String },
    #[error("slot {slot} is at generation {generation}; generations run from 1 to 4294967294 and a restart of the slot needs the next one (start the proxy with --ignore-state to count from 1 again)")]
    GenerationExhausted { slot: String, generation: u32 },
    #[error("slot {slot} is {state}, not draining; start with `drain {slot}`")]
    NotDraining { slot: String, state: SlotState },
    #[error(
        "the drain of {slot} was cancelled (the slot was flipped back, weighted up or restarted)"
    )]
    DrainCancelled { slot: String },
    #[error("slot {slot} is not drained yet ({live_streams} live streams, {inflight} in flight); the drain goes on")]
    Timeout {
        slot: String,
        live_streams: u64,
        inflight: u64,
    },
    #[error("another deploy is running; wait for it (or watch `status`)")]
    Busy,
    #[error("probe of {} failed: {}; nothing changed", .report.slot, .report.error.as_deref().unwrap_or("unknown failure"))]
    ProbeFailed { report: Box<ProbeReport> },
    #[error("{message}")]
    RolledBack {
        message: String,
        deploy: Box<Deployed>,
    },
    #[error("{message}")]
    WatchFailed {
        message: String,
        deploy: Box<Deployed>,
    },
    #[error("{message}")]
    WatchCancelled {
        message: String,
        deploy: Box<Deployed>,
    },
    #[error("there is no previous slot to roll back to (no flip since the state was created)")]
    NoPrevious,
    #[error("{0}")]
    BadConfig(String),
    #[error("{0}")]
    SlotInUse(String),
    #[error("cannot save the state to {}: {error}; nothing changed", .path.display())]
    StateNotSaved { path: PathBuf, error: String },
    #[error("permission denied: only the proxy's user or root may control it")]
    Forbidden,
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("upgrade failed: {0}; this process serves on as before")]
    UpgradeFailed(String),
    #[error("{0}")]
    Internal(String),
    /// The fleet's table changed since this instance computed the change
    /// (another operator, another instance): nothing changed; retry.
    #[error("the fleet's table changed meanwhile (revision {seen} is no longer the latest): nothing changed; look at `status` and retry")]
    Conflict { seen: i64 },
    /// etcd cannot be reached: this instance keeps serving on its last table
    /// but changes nothing on its own.
    #[error("the fleet's etcd cannot be reached ({reason}): this instance keeps serving on its last table and refuses changes until etcd is back")]
    ClusterUnavailable { reason: String },
}

impl CtlError {
    /// The stable machine code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadCommand(_) => ErrorCode::BadCommand,
            Self::LineTooLong { .. } => ErrorCode::LineTooLong,
            Self::UnknownSlot { .. } => ErrorCode::UnknownSlot,
            Self::WeightOutOfRange { .. } => ErrorCode::WeightOutOfRange,
            Self::NoServingSlot(_) => ErrorCode::NoServingSlot,
            Self::SlotRetired { .. } => ErrorCode::SlotRetired,
            Self::LastServingSlot { .. } => ErrorCode::LastServingSlot,
            Self::AlreadyActive { .. } => ErrorCode::AlreadyActive,
            Self::GenerationExhausted { .. } => ErrorCode::GenerationExhausted,
            Self::NotDraining { .. } => ErrorCode::NotDraining,
            Self::DrainCancelled { .. } => ErrorCode::DrainCancelled,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::Busy => ErrorCode::Busy,
            Self::ProbeFailed { .. } => ErrorCode::ProbeFailed,
            Self::RolledBack { .. } => ErrorCode::RolledBack,
            Self::WatchFailed { .. } => ErrorCode::WatchFailed,
            Self::WatchCancelled { .. } => ErrorCode::WatchCancelled,
            Self::NoPrevious => ErrorCode::NoPrevious,
            Self::BadConfig(_) => ErrorCode::BadConfig,
            Self::SlotInUse(_) => ErrorCode::SlotInUse,
            Self::StateNotSaved { .. } => ErrorCode::StateNotSaved,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::UpgradeFailed(_) => ErrorCode::UpgradeFailed,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Conflict { .. } => ErrorCode::Conflict,
            Self::ClusterUnavailable { .. } => ErrorCode::ClusterUnavailable,
        }
    }

    /// `unknown_slot` for `name` among `known`.
    pub fn unknown_slot<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        Self::UnknownSlot {
            name: name.to_owned(),
            known: known.into_iter().map(str::to_owned).collect(),
        }
    }

    /// The error as its wire reply.
    pub fn to_reply(&self) -> ErrorReply {
        let detail = match self {
            Self::ProbeFailed { report } => ErrorDetail::Probe {
                probe: report.clone(),
            },
            Self::RolledBack { deploy, .. }
            | Self::WatchFailed { deploy, .. }
            | Self::WatchCancelled { deploy, .. } => ErrorDetail::Deploy(deploy.clone()),
            _ => ErrorDetail::None {},
        };
        ErrorReply {
            ok: false,
            error: self.to_string(),
            code: self.code().as_str().to_owned(),
            detail,
        }
    }
}

/// An error as it travels: `{"ok": false, "error", "code", ...detail}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub ok: bool,
    pub error: String,
    pub code: String,
    #[serde(flatten)]
    pub detail: ErrorDetail,
}

/// What an error carries beyond its message: a failed probe's steps, or what
/// a deploy did before its watch failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorDetail {
    Deploy(Box<Deployed>),
    Probe { probe: Box<ProbeReport> },
    None {},
}

impl ErrorReply {
    /// The code, when this version knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Request {
        parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn words_parse_as_today() {
        assert_eq!(words("status"), Request::Status);
        assert_eq!(
            words("weights blue=90 green=10"),
            Request::Weights {
                weights: vec![
                    Weight {
                        slot: "blue".into(),
                        weight: 90
                    },
                    Weight {
                        slot: "green".into(),
                        weight: 10
                    }
                ],
                drain: false,
                wait: false,
                deadline: None,
            }
        );
        assert_eq!(
            words("weights blue=0 green=100 --drain --wait --deadline 90s"),
            Request::Weights {
                weights: vec![
                    Weight {
                        slot: "blue".into(),
                        weight: 0
                    },
                    Weight {
                        slot: "green".into(),
                        weight: 100
                    }
                ],
                drain: true,
                wait: true,
                deadline: Some(Duration::from_secs(90)),
            }
        );
        assert!(parse_line("weights blue=0 --wait").is_err());
        assert_eq!(
            words("flip green --no-probe --drain --wait"),
            Request::Flip {
                slot: "green".into(),
                no_probe: true,
                drain: true,
                wait: true,
                deadline: None
            }
        );
        assert_eq!(
            words("drain blue --wait --deadline 2s"),
            Request::Drain {
                slot: "blue".into(),
                wait: true,
                deadline: Some(Duration::from_secs(2)),
                migrate: false,
            }
        );
        assert_eq!(
            words("drain blue --migrate"),
            Request::Drain {
                slot: "blue".into(),
                wait: false,
                deadline: None,
                migrate: true,
            }
        );
        assert_eq!(
            words("wait blue drained --timeout 5s"),
            // The condition word is the default and never on the wire: the
            // words read as the JSON `ctl` sends (tests/fuzz_found.rs).
            Request::Wait {
                slot: "blue".into(),
                condition: None,
                timeout: Some(Duration::from_secs(5))
            }
        );
        assert!(matches!(
            words("wait blue"),
            Request::Wait { timeout: None, .. }
        ));
        assert_eq!(
            words("deploy green --watch 0s"),
            Request::Deploy {
                slot: "green".into(),
                deadline: None,
                watch: Some(Duration::ZERO),
                migrate: false,
            }
        );
        assert!(matches!(
            words("deploy green --migrate"),
            Request::Deploy { migrate: true, .. }
        ));
        for (line, expected) in [
            ("rollback", Request::Rollback),
            ("reload", Request::Reload),
            (
                "retire blue",
                Request::Retire {
                    slot: "blue".into(),
                },
            ),
            (
                "standby blue",
                Request::Standby {
                    slot: "blue".into(),
                },
            ),
            (
                "probe blue",
                Request::Probe {
                    slot: "blue".into(),
                },
            ),
        ] {
            assert_eq!(words(line), expected);
        }
    }

    #[test]
    fn bad_words_are_bad_commands_that_quote_little() {
        for line in [
            "bogus",
            "weights blue=x",
            "weights blue",
            "weights",
            "drain --wait",
            "status extra",
            "flip green --bogus",
            "wait blue undrained",
            "retire",
            "",
        ] {
            let e = parse_line(line).expect_err(line);
            assert_eq!(e.code(), ErrorCode::BadCommand, "{line}: {e}");
        }
        // What clap lists under its first line is part of the error.
        let e = parse_line("flip").expect_err("no slot").to_string();
        assert!(
            e.starts_with(
                "the following required arguments were not provided: <SLOT>; usage: flip <SLOT>"
            ),
            "{e}"
        );
        let e = parse_line("wait blue undrained")
            .expect_err("condition")
            .to_string();
        assert!(e.contains("[possible values: drained]"), "{e}");
        let e = parse_line("bogus").expect_err("command").to_string();
        assert!(e.contains("commands: status, flip,"), "{e}");
        let long = "z".repeat(50_000);
        let e = parse_line(&long).expect_err("long word");
        assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
        let e = parse_line(&format!("weights blue={long}")).expect_err("long weight");
        assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
        // A long slot name parses; the state machine's `unknown_slot` quotes little of it.
        let ok = parse_line(&format!("weights {long}=1")).map(|r| r.word());
        assert_eq!(ok.ok(), Some("weights"));
        let e = CtlError::unknown_slot(&long, ["blue"]).to_string();
        assert!(e.len() < 600, "{} bytes", e.len());
    }

    #[test]
    fn help_on_the_socket_answers_with_the_help() {
        let e = parse_line("flip --help").expect_err("help is not a request");
        let text = e.to_string();
        assert!(
            text.contains("--no-probe") && text.contains("--drain"),
            "{text}"
        );
    }

    #[test]
    fn json_requests_round_trip_and_refuse_unknown_fields() {
        let all = [
            Request::Status,
            words("flip green --no-probe --drain --wait --deadline 90s"),
            words("weights blue=90 green=10"),
            words("drain blue --wait --deadline 2s"),
            Request::Wait {
                slot: "blue".into(),
                condition: None,
                timeout: Some(Duration::from_millis(1500)),
            },
            words("probe blue"),
            Request::Rollback,
            words("retire blue"),
            words("standby blue"),
            words("deploy green --deadline 1m --watch 0s"),
            Request::Reload,
            words("upgrade --binary /usr/bin/mcpflip --timeout 5s"),
            Request::Upgrade {
                binary: None,
                timeout: None,
            },
        ];
        for r in all {
            let line = r.to_line();
            assert!(line.starts_with('{'), "{line}");
            assert_eq!(parse_line(&line).expect(&line), r, "{line}");
        }
        assert_eq!(
            words(r#"{"cmd": "weights", "weights": {"blue": 70, "green": 30}}"#),
            words("weights blue=70 green=30")
        );
        for bad in [
            r#"{"cmd": "flip", "slot": "green", "bogus": 1}"#,
            r#"{"cmd": "launch"}"#,
            r#"{"slot": "green"}"#,
            r#"{"cmd": "weights", "weights": {"blue": 1, "blue": 2}}"#,
            r#"{"cmd": "weights", "weights": {"blue": -1}}"#,
            r#"{"cmd": "drain", "slot": "blue", "deadline": "soon"}"#,
            r#"{"cmd": "status""#,
        ] {
            let e = parse_line(bad).expect_err(bad);
            assert_eq!(e.code(), ErrorCode::BadCommand, "{bad}: {e}");
        }
    }

    #[test]
    fn codes_are_stable_and_unique() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::parse(a.as_str()), Some(*a));
            for b in &ErrorCode::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
        // The codes of the first release keep their spelling.
        for code in [
            "unknown_slot",
            "probe_failed",
            "bad_command",
            "no_serving_slot",
            "slot_retired",
            "last_serving_slot",
            "not_draining",
            "drain_cancelled",
            "timeout",
            "busy",
            "rolled_back",
            "watch_failed",
            "watch_cancelled",
            "no_previous",
            "bad_config",
            "slot_in_use",
            "forbidden",
            "internal",
        ] {
            assert!(ErrorCode::parse(code).is_some(), "{code}");
        }
        let e = CtlError::unknown_slot("purple", ["blue", "green"]);
        let v = e.to_reply().to_value();
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], "unknown_slot");
        assert_eq!(v["error"], "no slot named \"purple\" (slots: blue, green)");
        assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{v}");
    }

    #[test]
    fn every_event_is_named_as_serde_tags_it() {
        let all = vec![
            Event::WeightsSet { slots: vec![] },
            Event::Flipped {
                from: None,
                to: "g".into(),
                draining: vec![],
                standby: vec![],
            },
            Event::DrainStarted {
                slot: "b".into(),
                generation: 1,
            },
            Event::SlotDrained {
                slot: "b".into(),
                generation: 1,
            },
            Event::Retired { slot: "b".into() },
            Event::Standby {
                slot: "b".into(),
                generation: 2,
            },
            Event::SlotAdded {
                slot: "c".into(),
                state: SlotState::Standby,
            },
            Event::SlotRemoved { slot: "c".into() },
            Event::SlotReaddressed {
                slot: "c".into(),
                generation: 2,
            },
            Event::DrainEnded {
                slot: "b".into(),
                outcome: DrainOutcome {
                    drained_after_ms: 1,
                    forced: 0,
                    persisted: true,
                },
            },
            Event::Progress(Progress::Probe { slot: "g".into() }),
            Event::ProbeDone {
                slot: "g".into(),
                ok: true,
                ms: 3,
                error: None,
                steps: vec![],
            },
            Event::WatchEnded {
                slot: "g".into(),
                outcome: WatchOutcome::Passed { probes: 1 },
            },
            Event::RolledBack {
                from: None,
                to: "b".into(),
                reason: "r".into(),
            },
            Event::StateSaved { revision: 1 },
            Event::StateNotSaved {
                path: "/x".into(),
                error: "e".into(),
            },
            Event::Reloaded {
                changed: vec![],
                restart_required: vec![],
            },
            Event::DeployStarted {
                to: "g".into(),
                from: Some("b".into()),
            },
            Event::DeployEnded {
                to: "g".into(),
                ok: true,
                elapsed_ms: 5,
                code: None,
                error: None,
            },
        ];
        assert_eq!(all.len(), Event::NAMES.len(), "one sample per variant");
        for (e, name) in all.iter().zip(Event::NAMES) {
            assert_eq!(e.name(), name);
            assert_eq!(e.to_value()["event"], name, "{e:?}");
        }
    }

    #[test]
    fn progress_lines_keep_their_shape() {
        let p = Progress::Drain {
            slot: "blue".into(),
            live_streams: 2,
            inflight: 1,
            elapsed_ms: 1500,
            deadline_ms: 300_000,
        };
        let v = p.to_value();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["phase"], "drain");
        assert_eq!(v["live_streams"], 2);
        let back: Progress = serde_json::from_value(v).expect("progress reads back");
        assert_eq!(back, p);
        let e = serde_json::to_value(Event::Progress(p)).expect("event");
        assert_eq!(
            (e["event"].as_str(), e["phase"].as_str()),
            (Some("progress"), Some("drain"))
        );
    }
}
