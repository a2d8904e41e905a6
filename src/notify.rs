//! The systemd notification protocol (`sd_notify(3)`, through the
//! `sd-notify` crate): `READY=1` once the listeners serve, `RELOADING=1` with
//! `MONOTONIC_USEC` around a reload and `READY=1` after it (what
//! `Type=notify-reload` expects; `Type=notify` ignores the extra lines),
//! `STOPPING=1` at shutdown, `STATUS=` with the active slot and the live
//! streams, and `MAINPID=` when a new process takes the service over
//! (`ctl upgrade`). Without `NOTIFY_SOCKET` (not under systemd) every call
//! does nothing. A failed send is logged, never fatal: the proxy serves
//! whether or not the manager hears it.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify: cannot reach NOTIFY_SOCKET");
    }
}

/// The listeners serve.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// This process is the service's main process from now on (a hitless
/// upgrade's new process), and it serves.
pub fn main_pid_ready() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

/// A reload starts; `ready` must follow when it ends, applied or refused.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot read CLOCK_MONOTONIC");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Shutdown started (not sent by a process handing over to a new one: the
/// service goes on).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A one-line status for `systemctl status`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}
