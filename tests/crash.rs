//! The crash test (issue 11): the real proxy is killed with SIGKILL at random
//! instants of a stream of control commands and restarted on its state file
//! every time. Each restart must come up (no corrupt or empty file) on the
//! last acknowledged change, or on the one command that was in flight when it
//! died; never on anything older.
//!
//! A few dozen kills run with the suite; `cargo test --test crash -- --ignored`
//! runs hundreds. `MCPFLIP_CRASH_SEED` replays a run (each run prints its seed).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::proc::ProxyProcess;
use support::{closed_port, TestConfig};

/// `(blue weight, green weight)`: what each command leaves, and what a restart shows.
type Weights = (u64, u64);

fn weights(status: &Value) -> Weights {
    let w = |name: &str| {
        status["slots"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .and_then(|s| s["weight"].as_u64())
            .unwrap_or_else(|| panic!("no weight of {name} in {status}"))
    };
    (w("blue"), w("green"))
}

fn status(socket: &Path) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(b"status\n").expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("status {line:?}: {e}"))
}

fn crash_and_restart(kills: usize) {
    let seed = std::env::var("MCPFLIP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test: {kills} kills, MCPFLIP_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the slots: the commands below need no upstream.
    let cfg = TestConfig::new(dir.path())
        .slot("blue", closed_port(), 100)
        .slot("green", closed_port(), 0);
    let path = cfg.write();
    let socket = cfg.socket();
    let mut acked: Weights = (100, 0);
    let mut in_flight: Option<Weights> = None;
    let mut n: u64 = 0;
    let mut acks = 0;
    for kill in 0..kills {
        let mut proxy = ProxyProcess::spawn(&path, &socket, &[]);
        proxy.wait_ready();
        let now = weights(&status(&socket));
        assert!(
            now == acked || Some(now) == in_flight,
            "kill {kill} (seed {seed}): restarted on {now:?}; the last acknowledged change was {acked:?}, \
             the one in flight {in_flight:?}\n{}",
            proxy.stderr()
        );
        acked = now;
        in_flight = None;

        // Commands, one at a time, until the process is killed at a random instant.
        let pid = proxy.id() as i32;
        let after = Duration::from_micros(rng.u64(0..100_000));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(after);
            // SAFETY-free: kill(2) of our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        if let Ok(conn) = UnixStream::connect(&socket) {
            let mut w = conn.try_clone().expect("clone");
            let mut r = BufReader::new(conn);
            loop {
                n += 1;
                // Every command leaves a state no other command leaves (blue's weight
                // is unique), except the flips, which alternate.
                let (line, expect) = match n % 7 {
                    0 => ("flip green --no-probe".to_owned(), (0, 100)),
                    3 => ("flip blue --no-probe".to_owned(), (100, 0)),
                    _ => (format!("weights blue={n} green=1"), (n, 1)),
                };
                in_flight = Some(expect);
                if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                    break;
                }
                let mut reply = String::new();
                match r.read_line(&mut reply) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let v: Value =
                    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"));
                if v["ok"] == true {
                    acked = expect;
                    acks += 1;
                } else {
                    // Refused (a flip to the active slot): nothing changed.
                    assert_eq!(v["code"], "already_active", "{v}");
                }
            }
        }
        killer.join().expect("killer");
        proxy.kill9();
    }
    let mut proxy = ProxyProcess::spawn(&path, &socket, &[]);
    proxy.wait_ready();
    let now = weights(&status(&socket));
    assert!(
        now == acked || Some(now) == in_flight,
        "last restart (seed {seed}): {now:?}, acknowledged {acked:?}, in flight {in_flight:?}"
    );
    assert!(
        acks > 0,
        "no command was acknowledged in {kills} runs (seed {seed})"
    );
    eprintln!(
        "crash test: {kills} kills, {acks} acknowledged commands, every restart on the last one"
    );
}

#[test]
fn sigkill_during_a_stream_of_commands_keeps_the_last_acknowledged_change() {
    crash_and_restart(30);
}

#[test]
#[ignore = "hundreds of kills (about half a minute); run with --ignored"]
fn sigkill_hundreds_of_times() {
    crash_and_restart(300);
}
