//! Accepting with back-off, for every listener (public, admin, control socket).
//!
//! At the file-descriptor limit `accept` fails at once, again and again, while
//! the pending connection stays in the kernel's queue: a loop that retries at
//! once spins a core. As mini-redis's `accept` does, a failed accept waits, the
//! wait doubling up to a cap, and the first success resets it. Errors that
//! concern only the one connection (it was reset before we took it) are
//! retried at once: they do not repeat.

use std::future::Future;
use std::io;
use std::time::Duration;

/// First wait after a failed accept.
const FIRST: Duration = Duration::from_millis(5);
/// Longest wait: a freed descriptor is noticed within this.
const CAP: Duration = Duration::from_secs(1);

/// The back-off state of one listener's accept loop.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    /// Failures since the last success (logged once per streak).
    failures: u64,
    listener: &'static str,
}

impl Backoff {
    /// `listener` names the listener in logs ("public", "admin", "control").
    pub fn new(listener: &'static str) -> Self {
        Backoff {
            next: FIRST,
            failures: 0,
            listener,
        }
    }

    /// Accepts with `accept` until it succeeds, waiting between failures.
    pub async fn accept<T, F, Fut>(&mut self, mut accept: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(conn) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.listener,
                            failures = self.failures,
                            "accepting again"
                        );
                    }
                    self.next = FIRST;
                    self.failures = 0;
                    return conn;
                }
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    if self.failures == 0 {
                        tracing::warn!(listener = self.listener, error = %e, "accept failed; backing off (at the file-descriptor limit? raise `ulimit -n` or lower [proxy] max_connections)");
                    }
                    tokio::time::sleep(self.failed()).await;
                }
            }
        }
    }
}

impl Backoff {
    /// Records a failure; returns how long to wait before the next try.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        let wait = self.next;
        self.next = (self.next * 2).min(CAP);
        wait
    }
}

/// Errors about the one connection being accepted, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn waits_double_up_to_the_cap() {
        let mut b = Backoff::new("test");
        let waits: Vec<u64> = (0..12).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
        );
    }

    #[tokio::test]
    async fn a_success_resets_and_per_connection_errors_do_not_wait() {
        let mut b = Backoff::new("test");
        let calls = AtomicU32::new(0);
        let got = b
            .accept(|| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(io::Error::from_raw_os_error(libc::EMFILE)),
                        1 => Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
                        _ => Ok(n),
                    }
                }
            })
            .await;
        assert_eq!(got, 2);
        assert_eq!(b.failures, 0);
        assert_eq!(b.next, FIRST, "a success resets the back-off");
    }
}
