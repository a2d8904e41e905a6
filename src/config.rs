//! The TOML configuration: schema, defaults, validation, and errors that name the
//! file, the line and the key, and say what is wrong.
//!
//! Parsing never panics on input; every problem becomes a [`ConfigError`].
//! Validation also resolves what the runtime needs once ([`Resolved`]: the
//! listener's certificates and each `https://` slot's TLS client, loaded and
//! checked), so nothing is loaded twice and a reload compares sections with
//! `PartialEq`. Relative `[control]` paths are taken from the config file's
//! directory, so `mcpflip run` and `mcpflip ctl` agree on them from anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::tls::{CertPair, TlsConfig};
pub use crate::upstream::h1::XForwarded;

/// Where the default config lives (overridable with `MCPFLIP_CONFIG` or `--config`).
pub const DEFAULT_PATH: &str = "config/mcpflip.toml";
/// The `[control] socket` of a config that sets none, and the socket `mcpflip
/// ctl` uses when neither `--socket`, `MCPFLIP_SOCKET` nor a config names one.
pub const DEFAULT_SOCKET: &str = "/run/mcpflip/control.sock";
/// The `[control] state_file` of a config that sets none.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/mcpflip/state.json";

/// A configuration problem, located in its file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `slot[1].upstream`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub drain: DrainConfig,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Skipped when unset: an empty table would be a key of its own.
    #[serde(default, skip_serializing_if = "HealthConfig::is_unset")]
    pub health: HealthConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(rename = "slot", default)]
    pub slots: Vec<SlotConfig>,
    /// The fleet: absent, this instance is on its own (as before the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// The file this config was read from.
    #[serde(skip)]
    pub source: PathBuf,
    /// What validation loaded from the files the config names.
    #[serde(skip)]
    pub resolved: Resolved,
}

/// Built once by validation from the files a config names: the listener's TLS
/// config (certificates loaded and checked) and the TLS client of every
/// `https://` slot (its `ca` file or the system roots).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub listener_tls: Option<Arc<rustls::ServerConfig>>,
    /// `[admin] tls`'s config, when set.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificates `listener_tls` and `admin_tls` serve (for their
    /// expiry metric).
    pub certificates: Vec<crate::tls::CertificateInfo>,
    pub slot_tls: BTreeMap<String, Arc<rustls::ClientConfig>>,
    /// What each of them trusts (`[[slot]] ca`) and presents (`cert`), read
    /// now; `reload` hands it to a running slot's TLS client.
    pub slot_live: BTreeMap<String, Arc<crate::tls::SlotTls>>,
    /// The client certificates of those slots (for their expiry metric).
    pub slot_certificates: Vec<SlotCertificate>,
    /// `[cluster]`'s TLS client (its `ca`, `cert` and `key`) for https endpoints.
    pub cluster_tls: Option<Arc<rustls::ClientConfig>>,
    /// `[cluster] password_file`'s content (trailing newline removed).
    pub cluster_password: Option<String>,
}

/// A slot's client certificate (`[[slot]] cert`), for
/// `mcpflip_slot_client_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCertificate {
    pub slot: String,
    pub file: PathBuf,
    /// Its notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Builds the error of a key: section, index in an array of tables, key, message.
type KeyError<'a> = dyn Fn(&str, Option<usize>, &str, String) -> ConfigError + 'a;

/// `[cluster]`: the etcd this instance shares its table, counts and commands
/// through with the rest of its fleet.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://` or `https://`), tried in order.
    pub etcd: Vec<String>,
    /// Every key of this fleet lives under it.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// This instance's name in the fleet (default: the host name).
    #[serde(default = "default_instance")]
    pub instance: String,
    /// The CA that signed etcd's certificates (https endpoints).
    pub ca: Option<PathBuf>,
    /// The client certificate and key presented to etcd.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user; its password is read from `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// TTL of this instance's lease (its counts vanish this long after it died).
    #[serde(
        default = "default_lease_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub lease_ttl: Duration,
    /// How long one etcd request may take on one endpoint.
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub request_timeout: Duration,
}

fn default_cluster_prefix() -> String {
    "/mcpflip".into()
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The host name (the default `[cluster] instance`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn default_instance() -> String {
    host_name()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Every connection starts with a PROXY protocol header (version 1 or
    /// 2) that names the client's address: for a listener behind a load
    /// balancer in TCP mode (nginx's `listen ... proxy_protocol`).
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin", deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    /// Host names the admin listener answers to in `Host` and `Origin` (the
    /// same guard as `[proxy] allowed_hosts`). Unset: loopback names only on a
    /// loopback address; any host elsewhere.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// The only client addresses (or blocks) the admin listener serves
    /// (nginx's `allow` on a `/metrics` location); any other gets 403.
    /// Unset: every client.
    #[serde(
        default,
        deserialize_with = "allowed_clients",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_clients: Option<Vec<IpNet>>,
    /// HTTPS on the admin listener (the `[listen] tls` keys: a certificate,
    /// SNI, client certificates for the scraper); `reload` re-reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
}

impl ControlConfig {
    /// Where the captured sessions are saved (`[drain] migrate = "replay"`
    /// without a fleet): beside the state file, `state.json` giving
    /// `state.sessions.json`.
    pub fn sessions_file(&self) -> PathBuf {
        let stem = self
            .state_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        self.state_file
            .with_file_name(format!("{stem}.sessions.json"))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    #[serde(
        default = "default_deadline",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub deadline: Duration,
    #[serde(
        default = "default_quiet",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub quiet: Duration,
    /// What becomes of a session whose slot is gone (`proxy::migrate`).
    #[serde(default)]
    pub migrate: MigrateMode,
    /// Most sessions whose `initialize` is kept for a replay.
    #[serde(default = "default_migrate_max_sessions")]
    pub migrate_max_sessions: usize,
    /// A captured session nobody used for this long is forgotten.
    #[serde(
        default = "default_migrate_idle",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub migrate_idle: Duration,
    /// At a cut (drain deadline, `drain --migrate`), how long a call already
    /// in flight on the slot may take to answer before the proxy ends its
    /// stream with a JSON-RPC error (with `migrate = "replay"`).
    #[serde(
        default = "default_migrate_call_grace",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub migrate_call_grace: Duration,
    /// With `migrate = "replay"`: a 404 from a session's slot to a request of
    /// a captured session is taken as the slot's server having lost it (a
    /// restart the control plane did not make): the session is replayed and
    /// the request sent again, instead of the 404 passed on.
    #[serde(default)]
    pub migrate_on_404: bool,
    /// With `migrate = "replay"` and no fleet: how often the captured
    /// sessions are written beside the state file (and at every shutdown),
    /// so that a proxy killed or crashed comes back with those saved last.
    #[serde(
        default = "default_migrate_save_interval",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub migrate_save_interval: Duration,
}

/// `[drain] migrate`: what happens to a session whose slot is retired,
/// stopped, past its drain deadline or refusing connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrateMode {
    /// The session ends: its requests get the SDK-style 404 (the behaviour
    /// before migration existed).
    #[default]
    Off,
    /// The proxy replays the session's `initialize` on a serving slot and
    /// maps the client's session id to the new one.
    Replay,
}

impl MigrateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Replay => "replay",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeTransport {
    StreamableHttp,
    Sse,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default = "default_probe_path")]
    pub path: String,
    #[serde(default = "default_probe_transport")]
    pub transport: ProbeTransport,
    #[serde(
        default = "default_probe_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub timeout: Duration,
    pub expect_tools: Option<Vec<String>>,
    pub canary: Option<CanaryConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    pub tool: String,
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    pub expect: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(
        default = "default_window",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub window: Duration,
    #[serde(
        default = "default_interval",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub interval: Duration,
    #[serde(default = "default_error_ratio")]
    pub max_error_ratio: f64,
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

/// `[proxy] rate_limit = { requests = 20, per = "1s", burst = 40 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests let through per `per`, sustained.
    pub requests: u32,
    /// The period of `requests` ("1s", "1m").
    #[serde(deserialize_with = "duration", serialize_with = "duration_out")]
    pub per: Duration,
    /// Requests a client may send at once (on top of nothing: a burst of
    /// 40 is 40 requests back to back). Unset: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Client addresses remembered at most; past it a new one takes the
    /// place of a stale one, or of any one.
    #[serde(default = "default_rate_limit_clients")]
    pub max_clients: u32,
}

impl RateLimitConfig {
    /// The burst: `burst`, or `requests` when unset.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

fn default_rate_limit_clients() -> u32 {
    100_000
}

/// How requests are forwarded (an extension of INTERFACE.md's schema).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Forward the client's `Host` instead of the upstream's own authority. Off by
    /// default: MCP SDK servers answer 421 to a foreign Host (DNS-rebinding guard).
    #[serde(default)]
    pub preserve_host: bool,
    /// What a slot is told of the client in `X-Forwarded-For`, `-Host` and
    /// `-Proto`: the client's `X-Forwarded-For` kept in front of its address
    /// (`append`, nginx's `$proxy_add_x_forwarded_for`), its address alone
    /// (`replace`), or none of the three (`off`).
    #[serde(default)]
    pub x_forwarded: XForwarded,
    /// Give every request an id (nginx's `$request_id`): sent to the slot and
    /// back to the client in `X-Request-Id`, and written in the access log.
    /// A trusted proxy's own id is kept; any other client's is replaced.
    #[serde(default)]
    pub request_id: bool,
    /// The addresses (or address blocks) of the load balancers in front of
    /// the proxy, whose `X-Forwarded-*` headers are believed (nginx's
    /// `set_real_ip_from`, Caddy's `trusted_proxies`). Empty (the default):
    /// every client's `X-Forwarded-For` is kept, nobody's `-Proto`/`-Host`.
    #[serde(
        default,
        deserialize_with = "trusted_proxies",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// The header a trusted proxy names the client in (nginx's
    /// `real_ip_header`): `X-Forwarded-For` unless set, e.g.
    /// `CF-Connecting-IP` or `X-Real-IP`; read as `X-Forwarded-For` is
    /// (from the right, past trusted addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_header: Option<String>,
    /// The only client addresses (or address blocks) served (nginx's `allow`
    /// with `deny all`, Caddy's `client_ip` matcher); any other client's
    /// request is answered 403. Behind `trusted_proxies`, the client they
    /// name. Unset: every client.
    #[serde(
        default,
        deserialize_with = "allowed_clients",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_clients: Option<Vec<IpNet>>,
    /// Time allowed to open a TCP connection to a slot.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub connect_timeout: Duration,
    /// Time a new connection has, from accept, to deliver its first complete
    /// request head (TLS handshake included): slowloris and silent-socket guard.
    #[serde(
        default = "default_header_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress (HTTP/1.1), or with
    /// no open stream (HTTP/2), is closed after this long.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub idle_timeout: Duration,
    /// Longest wait between two reads of a client's request body (answered 408).
    #[serde(
        default = "default_client_body_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub client_body_timeout: Duration,
    /// A client that takes nothing of what it is sent (an answer, an event
    /// stream's events) for this long has its connection dropped.
    #[serde(
        default = "default_send_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub send_timeout: Duration,
    /// The largest request body a client may send (nginx's
    /// `client_max_body_size`): a larger declared `Content-Length` is
    /// answered 413 before any slot is asked, and a body without one
    /// (chunked, HTTP/2) is cut at this many bytes and answered 413.
    #[serde(
        default = "default_max_request_body",
        deserialize_with = "byte_size",
        serialize_with = "byte_size_out"
    )]
    pub max_request_body: u64,
    /// Longest wait, once the request is sent, for a slot's response head
    /// (answered 504); `[[slot]] response_header_timeout` overrides it per slot.
    /// SSE bodies are never timed once their head arrived.
    #[serde(
        default = "default_response_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub response_header_timeout: Duration,
    /// Longest pause between two reads of a slot's answer body once its head
    /// was passed on (nginx's `proxy_read_timeout` between reads), unless the
    /// answer is an event stream: the client's answer is then cut (its
    /// connection closed, or its HTTP/2 stream reset) and the slot's
    /// connection closed.
    #[serde(
        default = "default_response_body_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub response_body_timeout: Duration,
    /// The same wait for a request that carries `Mcp-Method: tools/call` (tool
    /// calls run long). Clients before 2026-07-28 send no `Mcp-Method`: their
    /// calls are bounded by `response_header_timeout`.
    #[serde(
        default = "default_tool_call_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub tool_call_timeout: Duration,
    /// Cap on open client connections of the public listener; at the cap a new
    /// connection is answered 503 (or closed). Unset: half the process's
    /// open-file limit (each client connection may hold a slot connection too).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Cap on the open client connections of one address (of an IPv6
    /// client, its /64); at the cap its new connection is answered 503 (or
    /// closed). A trusted proxy's are not capped (`trusted_proxies`). Unset:
    /// no cap but `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// Limit on the requests of one client address (of an IPv6 client, its
    /// /64): a sustained rate with a burst on top; a request over it is
    /// answered 429 with `Retry-After`. Behind `trusted_proxies`, the client
    /// their `X-Forwarded-For` names. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Idle upstream connections are kept this long in the pool.
    #[serde(
        default = "default_pool_idle",
        deserialize_with = "duration",
        serialize_with = "duration_out"
    )]
    pub pool_idle_timeout: Duration,
    /// Worker threads of the proxy runtime (0 = one per core).
    #[serde(default)]
    pub workers: usize,
    /// Send an SSE comment (`: keepalive`) on a stream idle this long, between
    /// events only, so idle-timeout middleboxes keep it open. Off when absent.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "opt_duration_out"
    )]
    pub sse_keepalive: Option<Duration>,
    /// Host names clients may use in `Host` and `Origin` (DNS-rebinding guard;
    /// `["*"]` turns it off). Unset: a loopback listener accepts loopback names
    /// only, like the MCP SDK servers; any other listener accepts every host.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
}

/// The `[health]` section (an extension of INTERFACE.md's schema): what
/// `/readyz` knows about the serving slots besides the requests they answer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Probe every serving slot this often with the MCP probe (`[probe]`); a
    /// failed probe makes the slot down for `/readyz` until one passes or it
    /// answers a request. Unset: readiness is passive only.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "opt_duration_out"
    )]
    pub interval: Option<Duration>,
}

impl HealthConfig {
    fn is_unset(&self) -> bool {
        *self == HealthConfig::default()
    }
}

/// The `[log]` section (an extension of INTERFACE.md's schema): how the main
/// log and the access log are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable, colours only on a terminal) or `json` (one
    /// object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// The main log's level or filter (`RUST_LOG` syntax); `RUST_LOG`, when
    /// set, wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `off`, `stderr` (beside the main log), or a file path (appended to,
    /// created mode 0640, never through a symbolic link).
    #[serde(default)]
    pub access_log: AccessLog,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the access log goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    /// Beside the main log on stderr: where it went before `[log]` existed.
    #[default]
    Stderr,
    File(PathBuf),
}

impl Serialize for AccessLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AccessLog::Off => s.serialize_str("off"),
            AccessLog::Stderr => s.serialize_str("stderr"),
            AccessLog::File(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "off" => Ok(AccessLog::Off),
            "stderr" => Ok(AccessLog::Stderr),
            "" => Err(serde::de::Error::custom(
                "must be \"off\", \"stderr\" or a file path",
            )),
            path => Ok(AccessLog::File(PathBuf::from(path))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    pub name: String,
    pub upstream: String,
    #[serde(default)]
    pub weight: u32,
    /// For an `https://` upstream: trust only the CA certificates in this PEM file
    /// (default: the system's roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// For an `https://` upstream that asks for a client certificate (mutual
    /// TLS): the PEM certificate chain presented, with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// This slot's `[proxy] response_header_timeout`.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "opt_duration_out"
    )]
    pub response_header_timeout: Option<Duration>,
    /// This slot's `[proxy] response_body_timeout`.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "opt_duration_out"
    )]
    pub response_body_timeout: Option<Duration>,
}

impl SlotConfig {
    /// The validated upstream URI (validation guarantees it parses).
    pub fn upstream_uri(&self) -> Result<Uri, http::uri::InvalidUri> {
        self.upstream.parse()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_state_file() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_FILE)
}
fn default_deadline() -> Duration {
    Duration::from_secs(300)
}
fn default_quiet() -> Duration {
    Duration::from_secs(1)
}
fn default_migrate_max_sessions() -> usize {
    100_000
}
fn default_migrate_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_migrate_save_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_migrate_call_grace() -> Duration {
    Duration::from_secs(1)
}
/// The longest `migrate_call_grace`: a cut stream's client connection is
/// dropped if the stream has not ended [`crate::proxy::conn::FORCE_GRACE`]
/// (5 s) after the cut, and a
/// stream stalled inside an event is ended a second before that.
pub const MAX_MIGRATE_CALL_GRACE: Duration = Duration::from_secs(3);
fn default_probe_path() -> String {
    "/mcp".into()
}
fn default_probe_transport() -> ProbeTransport {
    ProbeTransport::StreamableHttp
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_error_ratio() -> f64 {
    0.05
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Under the 5 s after which uvicorn (the Python SDK's server) and Node's
/// HTTP server close an idle connection: a request sent on one the slot is
/// closing at that moment would be lost unanswered.
fn default_pool_idle() -> Duration {
    Duration::from_secs(4)
}
fn default_log_level() -> String {
    "info".into()
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}
fn default_client_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_request_body() -> u64 {
    16 * MIB
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_response_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_tool_call_timeout() -> Duration {
    Duration::from_secs(600)
}

macro_rules! section_default {
    ($t:ty { $($f:ident : $v:expr),* $(,)? }) => {
        impl Default for $t {
            fn default() -> Self {
                Self { $($f: $v),* }
            }
        }
    };
}
section_default!(ListenConfig {
    addr: default_listen(),
    tls: None,
    proxy_protocol: false
});
section_default!(AdminConfig {
    addr: default_admin(),
    allowed_hosts: None,
    allowed_clients: None,
    tls: None,
});
section_default!(ControlConfig {
    socket: default_socket(),
    state_file: default_state_file()
});
section_default!(DrainConfig {
    deadline: default_deadline(),
    quiet: default_quiet(),
    migrate: MigrateMode::Off,
    migrate_max_sessions: default_migrate_max_sessions(),
    migrate_idle: default_migrate_idle(),
    migrate_call_grace: default_migrate_call_grace(),
    migrate_on_404: false,
    migrate_save_interval: default_migrate_save_interval()
});
section_default!(ProbeConfig {
    path: default_probe_path(),
    transport: default_probe_transport(),
    timeout: default_probe_timeout(),
    expect_tools: None,
    canary: None,
});
section_default!(WatchConfig {
    window: default_window(),
    interval: default_interval(),
    max_error_ratio: default_error_ratio(),
    auto_rollback: true,
});
section_default!(LogConfig {
    format: LogFormat::Text,
    level: default_log_level(),
    access_log: AccessLog::Stderr,
});
section_default!(ProxyConfig {
    preserve_host: false,
    x_forwarded: XForwarded::Append,
    request_id: false,
    trusted_proxies: Vec::new(),
    client_ip_header: None,
    allowed_clients: None,
    connect_timeout: default_connect_timeout(),
    header_read_timeout: default_header_timeout(),
    idle_timeout: default_idle_timeout(),
    client_body_timeout: default_client_body_timeout(),
    send_timeout: default_send_timeout(),
    max_request_body: default_max_request_body(),
    response_header_timeout: default_response_timeout(),
    response_body_timeout: default_response_body_timeout(),
    tool_call_timeout: default_tool_call_timeout(),
    max_connections: None,
    max_connections_per_ip: None,
    rate_limit: None,
    pool_idle_timeout: default_pool_idle(),
    workers: 0,
    sse_keepalive: None,
    allowed_hosts: None,
});

/// Parses a humane duration string ("250ms", "90s", "5m", "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?}: {e} (write it like \"250ms\", \"90s\" or \"5m\")")
    })
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// The largest size a size key takes: far past any request body.
const MAX_SIZE: u64 = 1024 * GIB;

/// Parses a size: bytes (`65536`), or a number with a binary unit
/// (`"64KiB"`, `"16MiB"`, `"1GiB"`; nginx's `"64k"`, `"16m"`, `"1g"` mean
/// the same). Decimal units (`"16MB"`) are refused rather than guessed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let hint = "write it like \"64KiB\", \"16MiB\" or \"1GiB\"";
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("invalid size {s:?}: no number ({hint})"));
    };
    let unit = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "k" | "K" => KIB,
        "MiB" | "m" | "M" => MIB,
        "GiB" | "g" | "G" => GIB,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} ({hint})"
            ))
        }
    };
    match n.checked_mul(unit) {
        Some(0) => Err(format!("invalid size {s:?}: must be at least 1 byte")),
        Some(b) if b <= MAX_SIZE => Ok(b),
        _ => Err(format!("invalid size {s:?}: more than 1024GiB")),
    }
}

/// A size as `parse_size` reads it, in its largest whole unit.
pub fn size_text(b: u64) -> String {
    match b {
        b if b % GIB == 0 => format!("{}GiB", b / GIB),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % KIB == 0 => format!("{}KiB", b / KIB),
        b => b.to_string(),
    }
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size in bytes, or a string like \"16MiB\"")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u64, E> {
            parse_size(&n.to_string()).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
            parse_size(&n.to_string()).map_err(E::custom)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(E::custom)
        }
    }
    d.deserialize_any(Size)
}

fn byte_size_out<S: Serializer>(b: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&size_text(*b))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `[proxy] trusted_proxies`: each entry an address block (`10.0.0.0/8`,
/// `fd00::/8`) or a single address (`192.0.2.7`, `::1`).
fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|e| trusted_proxy(e).map_err(serde::de::Error::custom))
        .collect()
}

/// `[proxy] allowed_clients`: entries as in `trusted_proxies`.
fn allowed_clients<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    trusted_proxies(d).map(Some)
}

fn trusted_proxy(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{entry:?} is neither an address nor an address block (such as \"10.0.0.0/8\")")
        })
}

/// A listener address: an IP address and a port. Host names are refused with
/// the address to write instead (a listener binds an address, and resolving
/// `localhost` could bind ::1 or 127.0.0.1 depending on the machine).
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim()
        .parse()
        .map_err(|_| serde::de::Error::custom(socket_addr_hint(&s)))
}

fn socket_addr_hint(s: &str) -> String {
    // Quote a bounded part of what the file says.
    let shown: String = s.chars().take(64).collect();
    match s.trim().rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => format!(
            "{shown:?} is not an IP address and port: a listener binds an address, not a host name; \
             write \"127.0.0.1:{port}\" (this machine only), \"0.0.0.0:{port}\" (every IPv4 \
             interface) or \"[::]:{port}\" (IPv6 too)"
        ),
        _ => format!(
            "{shown:?} is not an IP address and port; write it like \"127.0.0.1:8080\", \
             \"0.0.0.0:8080\" or \"[::1]:8080\""
        ),
    }
}

/// A duration as the config writes it: "250ms", "90s", "5m", "1h".
pub fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return match d.subsec_nanos() % 1_000_000 {
            0 if d.as_secs() < 1000 => format!("{}ms", d.as_millis()),
            _ => humantime::format_duration(d).to_string(),
        };
    }
    match d.as_secs() {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn duration_out<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

fn opt_duration_out<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_out(d, s),
        None => s.serialize_none(),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The `[cluster]` section of a config file, resolved (its TLS client and
/// password loaded): what `mcpflip ctl --cluster` needs on a machine that
/// only reaches etcd (a CI runner). The rest of the file is not read.
pub fn load_cluster(path: &Path) -> Result<(ClusterConfig, Resolved), ConfigError> {
    #[derive(Deserialize)]
    struct ClusterOnly {
        cluster: Option<ClusterConfig>,
    }
    let fail = |line, key: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        key: key.to_owned(),
        message,
    };
    let text = crate::files::read_to_string(path, crate::files::MAX_CONFIG)
        .map_err(|e| fail(None, "", format!("cannot read the config file: {e}")))?;
    let only: ClusterOnly = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| locate_offset(&text, s.start).0);
        fail(line.flatten(), "cluster", e.message().to_owned())
    })?;
    let c = only.cluster.ok_or_else(|| {
        fail(
            None,
            "cluster",
            "no [cluster] section: `ctl --cluster` needs etcd's endpoints and the fleet's prefix"
                .into(),
        )
    })?;
    let mut resolved = Resolved::default();
    let err = |section: &str, _: Option<usize>, key: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        line: locate_key(&text, section, None, key),
        key: format!("{section}.{key}"),
        message,
    };
    Config::validate_cluster(&c, &mut resolved, &err)?;
    Ok((c, resolved))
}

impl Config {
    /// Reads, parses and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::files::read_to_string(path, crate::files::MAX_CONFIG).map_err(|e| {
            ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate_offset(text, span.start),
                None => (None, String::new()),
            };
            ConfigError {
                file: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        config.source = path.to_path_buf();
        if let Some(base) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            for p in [&mut config.control.socket, &mut config.control.state_file] {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    *p = base.join(&*p);
                }
            }
            // The access log too, like the control paths.
            if let AccessLog::File(p) = &mut config.log.access_log {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        config.resolved = config.validate(text)?;
        Ok(config)
    }

    fn validate(&self, text: &str) -> Result<Resolved, ConfigError> {
        let mut resolved = Resolved::default();
        let err = |section: &str, index: Option<usize>, key: &str, message: String| {
            let line = locate_key(text, section, index, key);
            let shown = match index {
                Some(i) => format!("{section}[{i}].{key}"),
                None if section.is_empty() => key.to_string(),
                None => format!("{section}.{key}"),
            };
            ConfigError {
                file: self.source.clone(),
                line,
                key: shown,
                message,
            }
        };
        if self.slots.is_empty() {
            return Err(ConfigError {
                file: self.source.clone(),
                line: None,
                key: "slot".into(),
                message: "no [[slot]] is configured: add at least one, e.g.\n  [[slot]]\n  name = \"blue\"\n  upstream = \"http://127.0.0.1:3001\"\n  weight = 100".into(),
            });
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.name.is_empty()
                || slot.name.len() > 32
                || !slot
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    "slot",
                    Some(i),
                    "name",
                    format!(
                        "slot name {:?} must be 1 to 32 characters of letters, digits, '-' or '_'",
                        slot.name
                    ),
                ));
            }
            if let Some(j) = self.slots[..i].iter().position(|s| s.name == slot.name) {
                return Err(err(
                    "slot",
                    Some(i),
                    "name",
                    format!("slot name {:?} is already used by slot[{j}]", slot.name),
                ));
            }
            if let Err(message) = check_upstream(&slot.upstream) {
                return Err(err("slot", Some(i), "upstream", message));
            }
            let https = slot.upstream.starts_with("https://");
            if slot.ca.is_some() && !https {
                return Err(err(
                    "slot",
                    Some(i),
                    "ca",
                    format!(
                        "`ca` is for https:// upstreams; {} is plain HTTP",
                        slot.upstream
                    ),
                ));
            }
            let identity = match (&slot.cert, &slot.key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (Some(_), None) | (None, Some(_)) => {
                    let (has, lacks) = match slot.cert {
                        Some(_) => ("cert", "key"),
                        None => ("key", "cert"),
                    };
                    return Err(err(
                        "slot",
                        Some(i),
                        has,
                        format!("`{has}` needs `{lacks}`: a client certificate is a certificate and its key"),
                    ));
                }
            };
            if identity.is_some() && !https {
                return Err(err(
                    "slot",
                    Some(i),
                    "cert",
                    format!(
                        "`cert` and `key` are for https:// upstreams; {} is plain HTTP",
                        slot.upstream
                    ),
                ));
            }
            if https {
                let identity = match identity.as_ref().map(crate::tls::load_identity) {
                    None => None,
                    Some(Ok((key, not_after))) => {
                        if let (Some(not_after), Some(file)) = (not_after, &slot.cert) {
                            resolved.slot_certificates.push(SlotCertificate {
                                slot: slot.name.clone(),
                                file: file.clone(),
                                not_after,
                            });
                        }
                        Some(key)
                    }
                    Some(Err(message)) => return Err(err("slot", Some(i), "cert", message)),
                };
                let key = if slot.ca.is_some() { "ca" } else { "upstream" };
                match crate::tls::SlotTls::new(slot.ca.as_deref(), identity)
                    .and_then(|live| Ok((live.config()?, live)))
                {
                    Ok((c, live)) => {
                        resolved.slot_tls.insert(slot.name.clone(), Arc::new(c));
                        resolved.slot_live.insert(slot.name.clone(), live);
                    }
                    Err(message) => return Err(err("slot", Some(i), key, message)),
                }
            }
            if slot.weight > crate::table::MAX_WEIGHT {
                return Err(err(
                    "slot",
                    Some(i),
                    "weight",
                    format!(
                        "weight {} is out of range (0 to {})",
                        slot.weight,
                        crate::table::MAX_WEIGHT
                    ),
                ));
            }
        }
        if self.slots.iter().all(|s| s.weight == 0) {
            return Err(err(
                "slot",
                Some(0),
                "weight",
                "no slot has a weight above 0, so no slot would take new sessions: give the active slot `weight = 100`".into(),
            ));
        }
        if let Some(tls) = &self.listen.tls {
            match crate::tls::listener_tls(tls) {
                Ok((c, certs)) => {
                    resolved.listener_tls = Some(c);
                    resolved.certificates = certs;
                }
                Err(message) => return Err(err("listen", None, "tls", message)),
            }
        }
        if let Some(tls) = &self.admin.tls {
            if tls.acme.is_some() {
                return Err(err(
                    "admin",
                    None,
                    "tls",
                    "tls.acme is for the public listener (the CA validates on port 443); give the admin listener a certificate of its own".into(),
                ));
            }
            match crate::tls::listener_tls(tls) {
                Ok((c, certs)) => {
                    resolved.admin_tls = Some(c);
                    resolved.certificates.extend(certs);
                }
                Err(message) => return Err(err("admin", None, "tls", message)),
            }
        }
        // Durations that must be positive.
        for (section, key, d) in [
            ("drain", "deadline", self.drain.deadline),
            ("drain", "migrate_idle", self.drain.migrate_idle),
            (
                "drain",
                "migrate_save_interval",
                self.drain.migrate_save_interval,
            ),
            ("probe", "timeout", self.probe.timeout),
            ("watch", "interval", self.watch.interval),
            ("proxy", "connect_timeout", self.proxy.connect_timeout),
            (
                "proxy",
                "header_read_timeout",
                self.proxy.header_read_timeout,
            ),
            ("proxy", "idle_timeout", self.proxy.idle_timeout),
            (
                "proxy",
                "client_body_timeout",
                self.proxy.client_body_timeout,
            ),
            ("proxy", "send_timeout", self.proxy.send_timeout),
            (
                "proxy",
                "response_header_timeout",
                self.proxy.response_header_timeout,
            ),
            (
                "proxy",
                "response_body_timeout",
                self.proxy.response_body_timeout,
            ),
            ("proxy", "tool_call_timeout", self.proxy.tool_call_timeout),
        ] {
            if d.is_zero() {
                return Err(err(section, None, key, "must be greater than 0".into()));
            }
        }
        if self.health.interval.is_some_and(|d| d.is_zero()) {
            return Err(err(
                "health",
                None,
                "interval",
                "must be greater than 0 (leave it out for passive readiness only)".into(),
            ));
        }
        if self.drain.migrate_call_grace > MAX_MIGRATE_CALL_GRACE {
            return Err(err(
                "drain",
                None,
                "migrate_call_grace",
                format!(
                    "must be at most {} (a cut stream's connection is dropped if the stream has not ended 5s after the cut); \
                     \"0s\" ends calls in flight at the cut at once",
                    humantime::format_duration(MAX_MIGRATE_CALL_GRACE)
                ),
            ));
        }
        if self.drain.migrate_on_404 && self.drain.migrate == MigrateMode::Off {
            return Err(err(
                "drain",
                None,
                "migrate_on_404",
                "needs migrate = \"replay\" (a session is replayed from what the proxy captured when it began)".into(),
            ));
        }
        if self.drain.migrate_max_sessions == 0 {
            return Err(err(
                "drain",
                None,
                "migrate_max_sessions",
                "must be at least 1 (set migrate = \"off\" to capture nothing)".into(),
            ));
        }
        if self.proxy.max_connections == Some(0) {
            return Err(err(
                "proxy",
                None,
                "max_connections",
                "must be at least 1 (leave it out for half the open-file limit)".into(),
            ));
        }
        if let Some(name) = &self.proxy.client_ip_header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(
                    "proxy",
                    None,
                    "client_ip_header",
                    format!("{name:?} is not a header name"),
                ));
            }
            if self.proxy.trusted_proxies.is_empty() {
                return Err(err(
                    "proxy",
                    None,
                    "client_ip_header",
                    "is read from trusted proxies only: set trusted_proxies too".into(),
                ));
            }
        }
        if self.proxy.max_connections_per_ip == Some(0) {
            return Err(err(
                "proxy",
                None,
                "max_connections_per_ip",
                "must be at least 1 (leave it out for no cap per address)".into(),
            ));
        }
        for (section, list) in [
            ("proxy", &self.proxy.allowed_clients),
            ("admin", &self.admin.allowed_clients),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(
                    section,
                    None,
                    "allowed_clients",
                    "names no address: every client would be refused (leave it out to serve every client)"
                        .into(),
                ));
            }
        }
        if let Some(r) = &self.proxy.rate_limit {
            // Located at the `rate_limit` line, named by its own key.
            let bad = |key: &str, why: &str| {
                let mut e = err("proxy", None, "rate_limit", why.into());
                e.key = format!("proxy.rate_limit.{key}");
                Err(e)
            };
            if !(1..=1_000_000).contains(&r.requests) {
                return bad("requests", "must be from 1 to 1000000");
            }
            if r.per < Duration::from_millis(1) || r.per > Duration::from_secs(86_400) {
                return bad("per", "must be from 1ms to 1 day (24h)");
            }
            if !(1..=1_000_000).contains(&r.burst()) {
                return bad(
                    "burst",
                    "must be from 1 to 1000000 (leave it out for `requests`)",
                );
            }
            if !(16..=10_000_000).contains(&r.max_clients) {
                return bad("max_clients", "must be from 16 to 10000000");
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            for (key, timeout) in [
                ("response_header_timeout", slot.response_header_timeout),
                ("response_body_timeout", slot.response_body_timeout),
            ] {
                if timeout.is_some_and(|d| d.is_zero()) {
                    return Err(err(
                        "slot",
                        Some(i),
                        key,
                        format!("must be greater than 0 (leave it out for [proxy] {key})"),
                    ));
                }
            }
        }
        if !self.probe.path.starts_with('/') {
            return Err(err(
                "probe",
                None,
                "path",
                format!(
                    "{:?} must be an absolute path such as \"/mcp\"",
                    self.probe.path
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.watch.max_error_ratio) {
            return Err(err(
                "watch",
                None,
                "max_error_ratio",
                format!("{} must be between 0 and 1", self.watch.max_error_ratio),
            ));
        }
        if self.proxy.sse_keepalive.is_some_and(|d| d.is_zero()) {
            return Err(err(
                "proxy",
                None,
                "sse_keepalive",
                "must be greater than 0 (leave it out to turn keep-alives off)".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(err(
                "log",
                None,
                "level",
                format!(
                    "{:?} is not a log level or filter ({e}): write e.g. \"info\", \"warn\" or \"info,mcpflip=debug\"",
                    self.log.level
                ),
            ));
        }
        if let AccessLog::File(path) = &self.log.access_log {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                return Err(err(
                    "log",
                    None,
                    "access_log",
                    format!(
                        "the directory {} of the access log does not exist; create it or use \"stderr\"",
                        dir.display()
                    ),
                ));
            }
        }
        if self.control.socket.as_os_str().is_empty() {
            return Err(err("control", None, "socket", "must not be empty".into()));
        }
        if self.control.state_file.as_os_str().is_empty() {
            return Err(err(
                "control",
                None,
                "state_file",
                "must not be empty".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            Config::validate_cluster(c, &mut resolved, &err)?;
        }
        if self.control.state_file.file_name().is_none() {
            return Err(err(
                "control",
                None,
                "state_file",
                format!(
                    "{} names a directory; give a file, e.g. \"/var/lib/mcpflip/state.json\"",
                    self.control.state_file.display()
                ),
            ));
        }
        Ok(resolved)
    }

    fn validate_cluster(
        c: &ClusterConfig,
        resolved: &mut Resolved,
        err: &KeyError<'_>,
    ) -> Result<(), ConfigError> {
        let e = |key: &str, m: String| err("cluster", None, key, m);
        if c.etcd.is_empty() || c.etcd.len() > 16 {
            return Err(e(
                "etcd",
                "give 1 to 16 etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]".into(),
            ));
        }
        let mut https = false;
        for u in &c.etcd {
            let uri: http::Uri = u
                .parse()
                .map_err(|x| e("etcd", format!("{u:?} is not a URL: {x}")))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => https = true,
                _ => {
                    return Err(e(
                        "etcd",
                        format!("{u:?}: an etcd endpoint is http://HOST:PORT or https://HOST:PORT"),
                    ))
                }
            }
            if uri.authority().is_none() || uri.path().len() > 1 {
                return Err(e(
                    "etcd",
                    format!("{u:?}: an etcd endpoint is http://HOST:PORT or https://HOST:PORT, without a path"),
                ));
            }
        }
        if !c.prefix.starts_with('/') || c.prefix.len() > 256 || c.prefix.ends_with('/') {
            return Err(e(
                "prefix",
                format!(
                    "{:?}: a prefix starts with '/', does not end with one, and is at most 256 bytes, e.g. \"/mcpflip/prod\"",
                    c.prefix
                ),
            ));
        }
        if c.instance.is_empty()
            || c.instance.len() > 64
            || !c
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(e(
                "instance",
                format!(
                    "{:?}: an instance name is 1 to 64 letters, digits, '-', '_' or '.' (the host name when unset), unique in the fleet",
                    c.instance
                ),
            ));
        }
        if c.lease_ttl < Duration::from_secs(2) || c.lease_ttl > Duration::from_secs(600) {
            return Err(e(
                "lease_ttl",
                "a lease lasts 2s to 10m (whole seconds)".into(),
            ));
        }
        if c.request_timeout < Duration::from_millis(10)
            || c.request_timeout > Duration::from_secs(60)
        {
            return Err(e("request_timeout", "10ms to 60s".into()));
        }
        if c.cert.is_some() != c.key.is_some() {
            return Err(e(
                if c.cert.is_some() { "key" } else { "cert" },
                "a client certificate needs both `cert` and `key`".into(),
            ));
        }
        if (c.ca.is_some() || c.cert.is_some()) && !https {
            return Err(e(
                if c.ca.is_some() { "ca" } else { "cert" },
                "TLS settings are for https:// etcd endpoints; every endpoint here is plain http"
                    .into(),
            ));
        }
        if https {
            let identity = match (&c.cert, &c.key) {
                (Some(cert), Some(key)) => Some(crate::tls::CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            };
            let tls = crate::tls::client_config_with_identity(c.ca.as_deref(), identity.as_ref())
                .map_err(|m| e(if c.cert.is_some() { "cert" } else { "ca" }, m))?;
            resolved.cluster_tls = Some(Arc::new(tls));
        }
        match (&c.username, &c.password_file) {
            (Some(_), Some(path)) => {
                let text =
                    crate::files::read_to_string(path, crate::files::MAX_SECRET).map_err(|x| {
                        e(
                            "password_file",
                            format!("cannot read {}: {x}", path.display()),
                        )
                    })?;
                let pw = text.trim_end_matches(['\n', '\r']).to_owned();
                if pw.is_empty() || pw.len() > 1024 {
                    return Err(e(
                        "password_file",
                        format!(
                            "{} must hold the password (1 to 1024 bytes)",
                            path.display()
                        ),
                    ));
                }
                resolved.cluster_password = Some(pw);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(e(
                    "password_file",
                    "a `username` needs a `password_file`".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(e("username", "a `password_file` needs a `username`".into()))
            }
        }
        Ok(())
    }

    /// A human-readable summary of the resolved settings (for `mcpflip check`).
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let scheme = if self.listen.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let _ = writeln!(
            s,
            "  listen        {} ({scheme}, HTTP/1.1 and HTTP/2{}{})",
            self.listen.addr,
            match self.listen.tls.as_ref() {
                Some(t) => format!(
                    "{}{}{}",
                    match &t.acme {
                        Some(a) => format!(
                            ", certificate from ACME for {} ({})",
                            a.domains.join(", "),
                            a.directory
                        ),
                        None => String::new(),
                    },
                    match t.min_version {
                        crate::tls::TlsVersion::V1_2 => "",
                        crate::tls::TlsVersion::V1_3 => ", TLS 1.3 only",
                    },
                    match &t.client_ca {
                        Some(ca) => format!(
                            ", client certificates {} (signed by {}{})",
                            match t.client_auth {
                                crate::tls::ClientAuth::Required => "required",
                                crate::tls::ClientAuth::Optional => "checked when presented",
                            },
                            ca.display(),
                            t.client_crl
                                .as_ref()
                                .map(|c| format!(", revoked in {}", c.display()))
                                .unwrap_or_default()
                        ),
                        None => String::new(),
                    }
                ),
                None => String::new(),
            },
            if self.listen.proxy_protocol {
                ", a PROXY protocol header first on every connection"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  admin         {}://{}/ (status page) /events /metrics /status /healthz{}",
            if self.admin.tls.is_some() {
                "https"
            } else {
                "http"
            },
            self.admin.addr,
            match &self.admin.allowed_clients {
                Some(nets) => format!(
                    "; only {}",
                    nets.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => String::new(),
            }
        );
        let _ = writeln!(s, "  control       {}", self.control.socket.display());
        let _ = writeln!(s, "  state file    {}", self.control.state_file.display());
        let _ = writeln!(
            s,
            "  drain         deadline {}, quiet {}, migrate {}",
            d(self.drain.deadline),
            d(self.drain.quiet),
            self.drain.migrate.as_str()
        );
        if self.drain.migrate == MigrateMode::Replay && self.cluster.is_none() {
            let _ = writeln!(
                s,
                "  sessions file {} (captured sessions, saved every {} and at shutdown)",
                self.control.sessions_file().display(),
                d(self.drain.migrate_save_interval)
            );
        }
        let transport = match self.probe.transport {
            ProbeTransport::StreamableHttp => "streamable-http",
            ProbeTransport::Sse => "sse",
        };
        let _ = writeln!(
            s,
            "  probe         {} {} timeout {}{}",
            transport,
            self.probe.path,
            d(self.probe.timeout),
            match &self.probe.expect_tools {
                Some(t) => format!(", expect tools [{}]", t.join(", ")),
                None => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "  watch         window {}, interval {}, max error ratio {}, auto rollback {}",
            d(self.watch.window),
            d(self.watch.interval),
            self.watch.max_error_ratio,
            self.watch.auto_rollback
        );
        let _ = writeln!(
            s,
            "  health        {}",
            match self.health.interval {
                Some(i) => format!("probe serving slots every {}", d(i)),
                None => "passive (the requests they answer)".to_owned(),
            }
        );
        let _ = writeln!(
            s,
            "  proxy         preserve_host {}, x_forwarded {}{}, connect timeout {}, header read timeout {}",
            self.proxy.preserve_host,
            self.proxy.x_forwarded.as_str(),
            if self.proxy.request_id {
                ", request_id (X-Request-Id)"
            } else {
                ""
            },
            d(self.proxy.connect_timeout),
            d(self.proxy.header_read_timeout)
        );
        if !self.proxy.trusted_proxies.is_empty() {
            let list: Vec<String> = self
                .proxy
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            let _ = writeln!(
                s,
                "  trusted       X-Forwarded-* believed from {}; dropped from any other client{}",
                list.join(", "),
                match &self.proxy.client_ip_header {
                    Some(h) => format!("; the client named in {h}"),
                    None => String::new(),
                }
            );
        }
        let _ = writeln!(
            s,
            "  limits        header read {}, idle {}, client body {} (at most {}), send {}, response header {}, response body {}, tools/call {}, max connections {}",
            d(self.proxy.header_read_timeout),
            d(self.proxy.idle_timeout),
            d(self.proxy.client_body_timeout),
            size_text(self.proxy.max_request_body),
            d(self.proxy.send_timeout),
            d(self.proxy.response_header_timeout),
            d(self.proxy.response_body_timeout),
            d(self.proxy.tool_call_timeout),
            match self.proxy.max_connections {
                Some(n) => n.to_string(),
                None => format!("{} (half the open-file limit)", default_max_connections()),
            }
        );
        if let Some(n) = self.proxy.max_connections_per_ip {
            let _ = writeln!(
                s,
                "  per client    at most {n} connections per address (IPv6: per /64){}",
                if self.proxy.trusted_proxies.is_empty() {
                    ""
                } else {
                    ", trusted proxies exempt"
                }
            );
        }
        if let Some(nets) = &self.proxy.allowed_clients {
            let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "  clients       only {}; 403 to any other{}",
                nets.join(", "),
                if self.proxy.trusted_proxies.is_empty() {
                    ""
                } else {
                    " (behind trusted proxies, the client they name)"
                }
            );
        }
        if let Some(r) = &self.proxy.rate_limit {
            let _ = writeln!(
                s,
                "  rate limit    {} requests per {} per address (IPv6: per /64), burst {}{}; 429 over it",
                r.requests,
                d(r.per),
                r.burst(),
                if self.proxy.trusted_proxies.is_empty() {
                    ""
                } else {
                    ", behind trusted proxies the client they name"
                }
            );
        }
        let _ = writeln!(
            s,
            "  hosts         {}",
            match &self.proxy.allowed_hosts {
                Some(h) => format!("allowed: {}", h.join(", ")),
                None if self.listen.addr.ip().is_loopback() =>
                    "loopback names only (loopback listener; set [proxy] allowed_hosts to change)"
                        .to_owned(),
                None => "any (set [proxy] allowed_hosts to guard against DNS rebinding)".to_owned(),
            }
        );
        let _ = writeln!(
            s,
            "  log           {} format, level {}, access log {}",
            match self.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            self.log.level,
            match &self.log.access_log {
                AccessLog::Off => "off".to_owned(),
                AccessLog::Stderr => "on stderr".to_owned(),
                AccessLog::File(p) => p.display().to_string(),
            }
        );
        for slot in &self.slots {
            let _ = writeln!(
                s,
                "  slot {:<8} {} weight {}{}{}{}{}",
                slot.name,
                slot.upstream,
                slot.weight,
                match slot.response_header_timeout {
                    Some(t) => format!(", response header timeout {}", d(t)),
                    None => String::new(),
                },
                match slot.response_body_timeout {
                    Some(t) => format!(", response body timeout {}", d(t)),
                    None => String::new(),
                },
                match &slot.ca {
                    Some(ca) => format!(", trusts {}", ca.display()),
                    None => String::new(),
                },
                match &slot.cert {
                    Some(cert) => format!(", client certificate {}", cert.display()),
                    None => String::new(),
                }
            );
        }
        s
    }
}

/// The control socket the config at `path` names (`[control] socket`, relative
/// to the file's directory; the default when it sets none), for `mcpflip ctl`.
/// Only that key is read: `ctl` needs neither the certificates nor the rest.
pub fn control_socket(path: &Path) -> Result<PathBuf, ConfigError> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        control: PartialControl,
    }
    #[derive(Deserialize, Default)]
    struct PartialControl {
        socket: Option<PathBuf>,
    }
    let text =
        crate::files::read_to_string(path, crate::files::MAX_CONFIG).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
    let partial: Partial = toml::from_str(&text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => locate_offset(&text, span.start),
            None => (None, String::new()),
        };
        ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message: e.message().trim().to_string(),
        }
    })?;
    let socket = partial
        .control
        .socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    Ok(match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(base) if socket.is_relative() => base.join(socket),
        _ => socket,
    })
}

impl ProxyConfig {
    /// `max_connections`, or its default: half the open-file limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(default_max_connections)
    }
}

/// The soft `RLIMIT_NOFILE` (`ulimit -n`); `None` when unlimited or
/// unreadable.
pub fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Half the soft `RLIMIT_NOFILE` (a client connection may hold a slot
/// connection too), at least 16; 4096 when the limit cannot be read.
pub fn default_max_connections() -> usize {
    let Some(limit) = open_file_limit() else {
        return 4096;
    };
    usize::try_from(limit / 2).unwrap_or(usize::MAX).max(16)
}

fn check_upstream(s: &str) -> Result<(), String> {
    let uri: Uri = s.parse().map_err(|e| {
        format!("{s:?} is not a valid URL: {e} (write it like \"http://127.0.0.1:3001\")")
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{s:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!(
            "{s:?} has a path; give only scheme, host and port (requests keep their own path)"
        ));
    }
    Ok(())
}

/// The 1-based line of byte `offset` and the dotted key path written there.
fn locate_offset(text: &str, offset: usize) -> (Option<usize>, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let mut section = String::new();
    for l in before.lines().rev() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    let trimmed = line.trim();
    let key = if trimmed.starts_with('[') {
        trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    } else {
        let k = trimmed.split('=').next().unwrap_or("").trim();
        match (section.is_empty(), k.is_empty()) {
            (_, true) => section,
            (true, false) => k.to_string(),
            (false, false) => format!("{section}.{k}"),
        }
    };
    (Some(line_no), key)
}

/// Finds the line of `key` in `[section]` (or in the `index`-th `[[section]]`).
fn locate_key(text: &str, section: &str, index: Option<usize>, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut array_seen: usize = 0;
    let mut current_index: Option<usize> = None;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            current = name.trim().to_string();
            if current == section {
                current_index = Some(array_seen);
                array_seen += 1;
                if current_index == index {
                    header_line = Some(n + 1);
                }
            } else {
                current_index = None;
            }
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_string();
            current_index = None;
            if index.is_none() && current == section {
                header_line = Some(n + 1);
            }
            continue;
        }
        if current == section && current_index == index {
            let k = t.split('=').next().unwrap_or("").trim();
            if k == key {
                return Some(n + 1);
            }
        }
    }
    header_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[listen]
addr = "127.0.0.1:8080"

[drain]
deadline = "90s"

[[slot]]
name = "blue"
upstream = "http://127.0.0.1:3001"
weight = 100

[[slot]]
name = "green"
upstream = "http://127.0.0.1:3002"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_sessions_file_is_named_after_the_state_file_beside_it() {
        let of = |state: &str| {
            ControlConfig {
                socket: PathBuf::from("/run/c.sock"),
                state_file: PathBuf::from(state),
            }
            .sessions_file()
        };
        assert_eq!(
            of("/var/lib/mcpflip/state.json"),
            PathBuf::from("/var/lib/mcpflip/state.sessions.json")
        );
        assert_eq!(of("/srv/bg"), PathBuf::from("/srv/bg.sessions.json"));
    }

    #[test]
    fn the_config_and_pem_readers_use_the_size_bound() {
        let zero = Path::new("/dev/zero");
        let e = Config::load(zero).expect_err("/dev/zero is no config");
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = crate::tls::read_chain(zero).expect_err("/dev/zero is no certificate");
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_address_blocks_or_single_addresses() {
        let c = parse(&format!(
            "{GOOD}[proxy]\ntrusted_proxies = [\"10.1.2.3/8\", \" 192.0.2.7 \", \"::1\", \"fd00::/8\"]\n"
        ))
        .expect("good trusted_proxies");
        let list: Vec<String> = c
            .proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(list, ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "fd00::/8"]);
        assert!(c
            .describe()
            .contains("X-Forwarded-* believed from 10.0.0.0/8, 192.0.2.7/32"));
        assert!(parse(GOOD).expect("good").proxy.trusted_proxies.is_empty());
        for bad in ["", "10.0.0.0/33", "localhost", "10.0.0.1:80", "*"] {
            let e =
                parse(&format!("{GOOD}[proxy]\ntrusted_proxies = [\"{bad}\"]\n")).expect_err(bad);
            assert_eq!(e.key, "proxy.trusted_proxies", "{bad}: {e}");
            assert!(e.to_string().contains("neither an address"), "{bad}: {e}");
        }
    }

    #[test]
    fn max_connections_per_ip_is_at_least_one_and_described() {
        let c = parse(&format!("{GOOD}[proxy]\nmax_connections_per_ip = 8\n")).expect("good");
        assert_eq!(c.proxy.max_connections_per_ip, Some(8));
        assert!(c
            .describe()
            .contains("at most 8 connections per address (IPv6: per /64)\n"));
        let e = parse(&format!("{GOOD}[proxy]\nmax_connections_per_ip = 0\n")).expect_err("0");
        assert_eq!(e.key, "proxy.max_connections_per_ip", "{e}");
        assert!(parse(GOOD)
            .expect("good")
            .proxy
            .max_connections_per_ip
            .is_none());
    }

    #[test]
    fn max_request_body_is_a_size_in_binary_units_and_described() {
        assert_eq!(parse(GOOD).expect("good").proxy.max_request_body, 16 << 20);
        for (text, bytes) in [
            ("65536", 65_536),
            ("\"64KiB\"", 64 << 10),
            ("\"64k\"", 64 << 10),
            ("\"1 MiB\"", 1 << 20),
            ("\"2m\"", 2 << 20),
            ("\"1GiB\"", 1 << 30),
            ("\"100B\"", 100),
        ] {
            let c = parse(&format!("{GOOD}[proxy]\nmax_request_body = {text}\n"))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.proxy.max_request_body, bytes, "{text}");
        }
        let c = parse(&format!("{GOOD}[proxy]\nmax_request_body = \"1m\"\n")).expect("good");
        assert!(
            c.describe().contains("client body 1m (at most 1MiB)"),
            "{}",
            c.describe()
        );
        for (text, why) in [
            ("\"16MB\"", "unknown unit \"MB\""),
            ("\"MiB\"", "no number"),
            ("0", "at least 1 byte"),
            ("\"2048GiB\"", "more than 1024GiB"),
            ("\"99999999999999999999\"", "no number"),
            ("-1", "no number"),
        ] {
            let e = parse(&format!("{GOOD}[proxy]\nmax_request_body = {text}\n")).expect_err(text);
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        assert_eq!(size_text(16 << 20), "16MiB");
        assert_eq!(size_text(1536), "1536B".trim_end_matches('B'));
    }

    #[test]
    fn allowed_clients_are_blocks_never_an_empty_list_and_described() {
        let c = parse(&format!(
            "{GOOD}[proxy]\nallowed_clients = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n"
        ))
        .expect("good");
        assert_eq!(c.proxy.allowed_clients.as_ref().map(Vec::len), Some(3));
        assert!(
            c.describe().contains(
                "clients       only 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32; 403 to any other\n"
            ),
            "{}",
            c.describe()
        );
        let e = parse(&format!("{GOOD}[proxy]\nallowed_clients = []\n")).expect_err("empty");
        assert_eq!(e.key, "proxy.allowed_clients", "{e}");
        assert!(e.message.contains("leave it out"), "{e}");
        let e = parse(&format!(
            "{GOOD}[proxy]\nallowed_clients = [\"example.com\"]\n"
        ))
        .expect_err("a name");
        assert!(e.to_string().contains("neither an address nor"), "{e}");
        assert!(parse(GOOD).expect("good").proxy.allowed_clients.is_none());
    }

    #[test]
    fn client_certificates_are_described() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = crate::tls::write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let text = GOOD.replace(
            "addr = \"127.0.0.1:8080\"\n",
            &format!(
                "addr = \"127.0.0.1:8080\"\ntls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}\n",
                dev.cert, dev.key, dev.ca
            ),
        );
        let c = parse(&text).expect("good");
        let listen = c.describe();
        assert!(
            listen.contains(&format!(
                "(https, HTTP/1.1 and HTTP/2, client certificates required (signed by {}))",
                dev.ca.display()
            )),
            "{listen}"
        );
    }

    #[test]
    fn a_slot_client_certificate_is_a_pair_for_https_and_described() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = crate::tls::write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let slot = |upstream: &str, keys: &str| {
            parse(&format!(
                "{GOOD}[[slot]]\nname = \"red\"\nupstream = \"{upstream}\"\nca = {:?}\n{keys}\n",
                dev.ca
            ))
        };
        let both = format!("cert = {:?}\nkey = {:?}", dev.cert, dev.key);
        let c = slot("https://127.0.0.1:3003", &both).expect("good");
        let id = c.resolved.slot_live.get("red").expect("the slot's TLS");
        assert!(id.current().is_some(), "the certificate is loaded");
        assert!(
            c.describe()
                .contains(&format!("client certificate {}", dev.cert.display())),
            "{}",
            c.describe()
        );
        // Without cert and key: an identity that presents nothing.
        let c = slot("https://127.0.0.1:3003", "").expect("good");
        assert!(c.resolved.slot_live["red"].current().is_none());
        for (upstream, keys, key, why) in [
            (
                "https://127.0.0.1:3003",
                format!("cert = {:?}", dev.cert),
                "slot[2].cert",
                "`cert` needs `key`",
            ),
            (
                "https://127.0.0.1:3003",
                format!("key = {:?}", dev.key),
                "slot[2].key",
                "`key` needs `cert`",
            ),
            (
                "https://127.0.0.1:3003",
                // The CA's certificate with the leaf's key: not a pair.
                format!("cert = {:?}\nkey = {:?}", dev.ca, dev.key),
                "slot[2].cert",
                "does not belong to the certificate",
            ),
            (
                "https://127.0.0.1:3003",
                format!("cert = {:?}\nkey = \"/nonexistent.key\"", dev.cert),
                "slot[2].cert",
                "/nonexistent.key",
            ),
        ] {
            let e = slot(upstream, &keys).expect_err(&keys);
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        let e = parse(&format!(
            "{GOOD}[[slot]]\nname = \"red\"\nupstream = \"http://127.0.0.1:3003\"\n{both}\n"
        ))
        .expect_err("plain HTTP");
        assert_eq!(e.key, "slot[2].cert", "{e}");
        assert!(e.to_string().contains("are for https:// upstreams"), "{e}");
    }

    #[test]
    fn tls_min_version_is_12_or_13_and_described() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = crate::tls::write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let with = |extra: &str| {
            parse(&GOOD.replace(
                "addr = \"127.0.0.1:8080\"\n",
                &format!(
                    "addr = \"127.0.0.1:8080\"\ntls = {{ cert = {:?}, key = {:?}{extra} }}\n",
                    dev.cert, dev.key
                ),
            ))
        };
        let c = with(", min_version = \"1.3\"").expect("good");
        assert!(
            c.describe()
                .contains("(https, HTTP/1.1 and HTTP/2, TLS 1.3 only)"),
            "{}",
            c.describe()
        );
        let c = with("").expect("good");
        assert_eq!(
            c.listen.tls.as_ref().map(|t| t.min_version),
            Some(crate::tls::TlsVersion::V1_2)
        );
        assert!(
            c.describe().contains("(https, HTTP/1.1 and HTTP/2)\n"),
            "{}",
            c.describe()
        );
        let e = with(", min_version = \"1.1\"").expect_err("1.1");
        assert!(
            e.to_string()
                .contains("unknown variant `1.1`, expected `1.2` or `1.3`"),
            "{e}"
        );
    }

    #[test]
    fn client_ip_header_is_a_header_name_behind_trusted_proxies() {
        let c = parse(&format!(
            "{GOOD}[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"CF-Connecting-IP\"\n"
        ))
        .expect("good");
        assert_eq!(
            c.proxy.client_ip_header.as_deref(),
            Some("CF-Connecting-IP")
        );
        assert!(
            c.describe()
                .contains("; the client named in CF-Connecting-IP\n"),
            "{}",
            c.describe()
        );
        let e = parse(&format!(
            "{GOOD}[proxy]\nclient_ip_header = \"X-Real-IP\"\n"
        ))
        .expect_err("no trusted proxies");
        assert_eq!(e.key, "proxy.client_ip_header", "{e}");
        assert!(e.to_string().contains("set trusted_proxies too"), "{e}");
        let e = parse(&format!(
            "{GOOD}[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"Real IP\"\n"
        ))
        .expect_err("a space");
        assert!(e.to_string().contains("is not a header name"), "{e}");
    }

    #[test]
    fn rate_limit_is_checked_key_by_key_and_described() {
        let c = parse(&format!(
            "{GOOD}[proxy]\nrate_limit = {{ requests = 20, per = \"1s\", burst = 40 }}\n"
        ))
        .expect("good");
        let r = c.proxy.rate_limit.as_ref().expect("set");
        assert_eq!(
            (r.requests, r.per, r.burst()),
            (20, Duration::from_secs(1), 40)
        );
        assert_eq!(r.max_clients, 100_000);
        assert!(
            c.describe()
                .contains("rate limit    20 requests per 1s per address (IPv6: per /64), burst 40; 429 over it\n"),
            "{}",
            c.describe()
        );
        let c = parse(&format!(
            "{GOOD}[proxy]\nrate_limit = {{ requests = 5, per = \"1m\" }}\n"
        ))
        .expect("good");
        assert_eq!(
            c.proxy.rate_limit.expect("set").burst(),
            5,
            "burst defaults to requests"
        );
        for (table, key) in [
            (
                "{ requests = 0, per = \"1s\" }",
                "proxy.rate_limit.requests",
            ),
            ("{ requests = 5, per = \"0s\" }", "proxy.rate_limit.per"),
            ("{ requests = 5, per = \"2d\" }", "proxy.rate_limit.per"),
            (
                "{ requests = 5, per = \"1s\", burst = 0 }",
                "proxy.rate_limit.burst",
            ),
            (
                "{ requests = 5, per = \"1s\", max_clients = 3 }",
                "proxy.rate_limit.max_clients",
            ),
        ] {
            let text = format!("{GOOD}[proxy]\nrate_limit = {table}\n");
            let e = parse(&text).expect_err(table);
            assert_eq!(e.key, key, "{e}");
            assert!(e.line.is_some(), "located: {e}");
        }
        let e = parse(&format!(
            "{GOOD}[proxy]\nrate_limit = {{ requests = 5, per = \"1s\", brust = 9 }}\n"
        ))
        .expect_err("an unknown key");
        assert!(e.to_string().contains("brust"), "{e}");
        assert!(parse(GOOD).expect("good").proxy.rate_limit.is_none());
    }

    #[test]
    fn the_cluster_section_is_checked_with_the_key_to_fix() {
        let base = "[[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:3001\"\nweight = 100\n[cluster]\n";
        let c = parse(&format!(
            "{base}etcd = [\"http://127.0.0.1:2379\"]\ninstance = \"edge-1\"\n"
        ))
        .expect("a good [cluster]");
        let cluster = c.cluster.expect("cluster");
        assert_eq!(cluster.prefix, "/mcpflip");
        assert_eq!(cluster.lease_ttl, Duration::from_secs(5));
        assert!(c.resolved.cluster_tls.is_none());
        for (extra, key) in [
            ("etcd = []", "cluster.etcd"),
            ("etcd = [\"ftp://x:1\"]", "cluster.etcd"),
            ("etcd = [\"http://x:1/v3\"]", "cluster.etcd"),
            (
                "etcd = [\"http://x:1\"]\nprefix = \"nope\"",
                "cluster.prefix",
            ),
            (
                "etcd = [\"http://x:1\"]\ninstance = \"a b\"",
                "cluster.instance",
            ),
            (
                "etcd = [\"http://x:1\"]\nlease_ttl = \"1s\"",
                "cluster.lease_ttl",
            ),
            ("etcd = [\"http://x:1\"]\nca = \"ca.pem\"", "cluster.ca"),
            ("etcd = [\"https://x:1\"]\ncert = \"c.pem\"", "cluster.key"),
            (
                "etcd = [\"http://x:1\"]\nusername = \"u\"",
                "cluster.password_file",
            ),
        ] {
            let e = parse(&format!("{base}{extra}\n")).expect_err(extra);
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn parses_a_good_config() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.drain.deadline, Duration::from_secs(90));
        assert_eq!(c.drain.quiet, Duration::from_secs(1));
        assert_eq!(c.slots.len(), 2);
        assert_eq!(c.slots[1].weight, 0);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(&GOOD.replace("deadline = \"90s\"", "deadlin = \"90s\"")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.toml:6: key `drain.deadlin`"), "{s}");
        assert!(s.contains("unknown field"), "{s}");
    }

    #[test]
    fn bad_duration_is_located() {
        let e = parse(&GOOD.replace("\"90s\"", "\"ninety\"")).unwrap_err();
        assert_eq!(e.line, Some(6));
        assert_eq!(e.key, "drain.deadline");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn duplicate_slot_is_located() {
        let e = parse(&GOOD.replace("name = \"green\"", "name = \"blue\"")).unwrap_err();
        assert_eq!(e.line, Some(14));
        assert_eq!(e.key, "slot[1].name");
        assert!(e.message.contains("already used"), "{e}");
    }

    #[test]
    fn bad_upstream_is_located() {
        let e = parse(&GOOD.replace("http://127.0.0.1:3002", "ftp://x")).unwrap_err();
        assert_eq!(e.line, Some(15));
        assert_eq!(e.key, "slot[1].upstream");
    }

    #[test]
    fn all_zero_weights_are_refused() {
        let e = parse(&GOOD.replace("weight = 100", "weight = 0")).unwrap_err();
        assert!(e.message.contains("no slot has a weight"), "{e}");
        assert_eq!(e.line, Some(11));
    }

    #[test]
    fn a_slots_zero_timeout_is_refused() {
        for key in ["response_header_timeout", "response_body_timeout"] {
            let text = GOOD.replace(
                "upstream = \"http://127.0.0.1:3002\"",
                &format!("upstream = \"http://127.0.0.1:3002\"\n{key} = \"0s\""),
            );
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, format!("slot[1].{key}"), "{e}");
            assert!(e.message.contains("greater than 0"), "{e}");
            let text = text.replace("\"0s\"", "\"5m\"");
            let c = parse(&text).expect("valid");
            assert!(c.describe().contains("timeout 5m"), "{key}");
        }
    }

    #[test]
    fn wrong_type_is_located() {
        let e = parse(&GOOD.replace("weight = 100", "weight = \"heavy\"")).unwrap_err();
        assert_eq!(e.line, Some(11));
        assert_eq!(e.key, "slot.weight");
    }

    #[test]
    fn relative_control_paths_are_taken_from_the_config_directory() {
        let text = format!(
            "{GOOD}[control]\nsocket = \"run/control.sock\"\nstate_file = \"/abs/state.json\"\n"
        );
        let c = Config::parse(&text, Path::new("/etc/mcpflip/mcpflip.toml")).expect("valid");
        assert_eq!(c.control.socket, Path::new("/etc/mcpflip/run/control.sock"));
        assert_eq!(c.control.state_file, Path::new("/abs/state.json"));
        // Relative to the working directory when the file has no directory.
        let c = parse(&text).expect("valid");
        assert_eq!(c.control.socket, Path::new("run/control.sock"));
    }

    #[test]
    fn ctl_reads_the_socket_alone_from_a_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("mcpflip.toml");
        // Certificates that do not exist do not matter to `ctl`.
        std::fs::write(
            &p,
            "[listen]\ntls = { cert = \"nope.crt\", key = \"nope.key\" }\n[control]\nsocket = \"run/c.sock\"\n",
        )
        .expect("write");
        assert_eq!(
            control_socket(&p).expect("socket"),
            dir.path().join("run/c.sock")
        );
        std::fs::write(&p, "[listen]\n").expect("write");
        assert_eq!(
            control_socket(&p).expect("socket"),
            Path::new(DEFAULT_SOCKET)
        );
        std::fs::write(&p, "[control]\nsocket = 3\n").expect("write");
        let e = control_socket(&p).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "control.socket"), "{e}");
    }

    #[test]
    fn log_section_reads_format_level_and_access_log() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.access_log, AccessLog::Stderr);
        let c = parse(&format!(
            "{GOOD}\n[log]\nformat = \"json\"\nlevel = \"warn\"\naccess_log = \"off\"\n"
        ))
        .expect("valid");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.access_log, AccessLog::Off);
        let c = parse(&format!("{GOOD}\n[log]\naccess_log = \"access.log\"\n")).expect("valid");
        assert_eq!(c.log.access_log, AccessLog::File("access.log".into()));
    }

    #[test]
    fn bad_log_settings_are_located() {
        let e = parse(&format!("{GOOD}\n[log]\nformat = \"xml\"\n")).unwrap_err();
        assert_eq!(e.key, "log.format");
        let e = parse(&format!("{GOOD}\n[log]\nlevel = \"loud[\"\n")).unwrap_err();
        assert_eq!(e.key, "log.level");
        assert_eq!(e.line, Some(18));
        let e = parse(&format!(
            "{GOOD}\n[log]\naccess_log = \"/nonexistent-dir/access.log\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "log.access_log");
        assert!(e.message.contains("/nonexistent-dir"), "{e}");
    }

    #[test]
    fn a_host_name_as_listen_address_says_what_to_write() {
        let e = parse(&GOOD.replace("127.0.0.1:8080", "localhost:8080")).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "listen.addr"), "{e}");
        assert!(
            e.message.contains("not a host name")
                && e.message.contains("\"127.0.0.1:8080\"")
                && e.message.contains("\"0.0.0.0:8080\""),
            "{e}"
        );
        let e = parse(&format!("[admin]\naddr = \"9090\"\n{GOOD}")).unwrap_err();
        assert_eq!(e.key, "admin.addr", "{e}");
        assert!(e.message.contains("like \"127.0.0.1:8080\""), "{e}");
    }

    #[test]
    fn serializes_durations_as_the_config_writes_them() {
        for (d, text) in [
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(duration_text(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn zero_deadline_is_refused() {
        let e = parse(&GOOD.replace("\"90s\"", "\"0s\"")).unwrap_err();
        assert_eq!(e.key, "drain.deadline");
        assert_eq!(e.line, Some(6));
    }
    #[test]
    fn a_call_grace_past_the_connection_grace_is_refused() {
        let with = |grace: &str| {
            GOOD.replace(
                "[drain]\n",
                &format!("[drain]\nmigrate_call_grace = \"{grace}\"\n"),
            )
        };
        let e = parse(&with("4s")).unwrap_err();
        assert_eq!(e.key, "drain.migrate_call_grace");
        assert!(e.to_string().contains("at most 3s"), "{e}");
        let c = parse(&with("0s")).expect("0s is allowed");
        assert_eq!(c.drain.migrate_call_grace, Duration::ZERO);
    }

    #[test]
    fn migrate_on_404_needs_migration() {
        let with = |keys: &str| GOOD.replace("[drain]\n", &format!("[drain]\n{keys}\n"));
        let e = parse(&with("migrate_on_404 = true")).unwrap_err();
        assert_eq!(e.key, "drain.migrate_on_404");
        assert!(e.to_string().contains("replay"), "{e}");
        let c = parse(&with("migrate = \"replay\"\nmigrate_on_404 = true")).expect("with replay");
        assert!(c.drain.migrate_on_404);
        assert!(!parse(GOOD).expect("default").drain.migrate_on_404);
    }
}
