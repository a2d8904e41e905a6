//! The control path, from the socket to the disk:
//!
//! ```text
//! ctl / socat ─► server (lines, capped) ─► protocol::Request
//!                  │
//!                  ▼
//!             controller (one owner task, commands in order)
//!               ├─ state::apply (pure: every rule, unit-tested)
//!               ├─ persist (one writer; the reply waits until it is durable)
//!               ├─ Tables::swap (the table the request path reads)
//!               └─ events ─► subscribers (Controller::subscribe)
//!             drain / watch / deploy / reload: tasks that issue commands
//! ```
//!
//! `protocol` holds the types `mcpflip ctl` and the server share; `client`
//! and `display` are the `ctl` side; `paths` refuses directories and sockets
//! another user could have planted; `host` is what the drain and watch tasks
//! need of the controller (so the controller owns them without a cycle);
//! `store` is the seam a fleet's shared store (etcd) plugs into;
//! `sessions_file` keeps the captured sessions across a restart, beside the
//! state file.

pub mod client;
pub mod controller;
pub mod deploy;
pub mod display;
pub mod drain;
pub mod host;
pub mod paths;
pub mod persist;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod sessions_file;
pub mod state;
pub mod store;
pub mod watch;

pub use controller::Controller;
