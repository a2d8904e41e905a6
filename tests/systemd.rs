//! mcpflip under systemd, checked against systemd's own tools and protocol:
//! the shipped units pass `systemd-analyze verify`; the real binary, given a
//! datagram socket as `NOTIFY_SOCKET`, says `READY=1` once its listeners
//! serve, `STATUS=` with the active slot, `RELOADING=1` with
//! `MONOTONIC_USEC` then `READY=1` on a reload, `MAINPID=` of the new process
//! on an upgrade and `STOPPING=1` on SIGTERM; and it serves on sockets passed
//! by socket activation (`systemd-socket-activate`, `LISTEN_FDS`).

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::mcp::{http_client, initialize, post_json};
use support::proc::{ctl, ProxyProcess, BIN};
use support::Harness;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn systemd_analyze() -> PathBuf {
    support::tools::ensure("systemd");
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(
        p.exists(),
        "systemd-analyze is missing: install systemd's tools (Debian: apt-get install systemd)"
    );
    p
}

/// `systemd-analyze verify` on `units` (in `dir`): its complaints, if any.
fn verify(dir: &Path, units: &[&str]) -> String {
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze runs");
    format!(
        "{}{}{}",
        if out.status.success() {
            ""
        } else {
            "(exit status not 0) "
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The units name /usr/bin/mcpflip, which the package installs; verify
    // checks that the binary exists, so the copies run the built one.
    for unit in ["mcpflip.service", "mcpflip.socket"] {
        let text = std::fs::read_to_string(Path::new(REPO).join("contrib/systemd").join(unit))
            .expect("unit");
        std::fs::write(dir.path().join(unit), text.replace("/usr/bin/mcpflip", BIN)).expect("copy");
    }
    let said = verify(dir.path(), &["mcpflip.service", "mcpflip.socket"]);
    assert!(said.is_empty(), "systemd-analyze verify: {said}");

    // The check is real: a unit with a bad setting is reported.
    std::fs::write(
        dir.path().join("bad.service"),
        "[Service]\nType=notify-reloadd\nExecStart=/bin/true\n",
    )
    .expect("bad unit");
    assert!(!verify(dir.path(), &["bad.service"]).is_empty());

    let unit = std::fs::read_to_string(Path::new(REPO).join("contrib/systemd/mcpflip.service"))
        .expect("unit");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/usr/bin/mcpflip ctl --config /etc/mcpflip/mcpflip.toml reload",
        "KillMode=control-group",
        "StateDirectory=mcpflip",
        "RuntimeDirectory=mcpflip",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "User=mcpflip",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks {line:?}:\n{unit}"
        );
    }
}

/// The notification socket a service manager would listen on.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// The next message that satisfies `want` (30 s at most); every message
    /// received is kept in `seen`.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < end,
                "no {what} message; got {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
        }
    }
}

/// A process this test started through `ctl upgrade`: SIGKILLed when the
/// test ends, so that a failing test leaves nothing behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test learned from `ctl upgrade`.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn lines(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_protocol_is_spoken_at_start_reload_upgrade_and_stop() {
    let h = Harness::new().await;
    let (cfg, public, _admin) = h.builder_on_ports();
    let path = cfg.write();
    let socket = cfg.socket();
    let mut notify = Notify::new(h.dir.path());
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.path);
    let mut old = ProxyProcess::spawn_command(cmd, &socket);

    // READY=1 once the listeners serve: a request right after it is answered.
    let ready = notify.until("READY=1", |m| lines(m).contains(&"READY=1"));
    assert_eq!(lines(&ready), ["READY=1"]);
    let client = http_client();
    let (code, _, _) = post_json(
        &client,
        &format!("http://127.0.0.1:{public}/mcp"),
        None,
        initialize(),
    )
    .await;
    assert_eq!(code, 200);
    let status = notify.until("STATUS=", |m| m.starts_with("STATUS="));
    assert!(status.contains("active: blue"), "{status}");

    // A reload: RELOADING=1 with the monotonic clock, then READY=1.
    let out = ctl(&socket, &["reload"]);
    assert!(out.ok(), "{out:?}");
    let reloading = notify.until("RELOADING=1", |m| lines(m).contains(&"RELOADING=1"));
    let usec = lines(&reloading)
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{usec}");
    notify.until("READY=1 after the reload", |m| lines(m) == ["READY=1"]);

    // A refused reload still ends with READY=1 (and fails the command).
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, "[listen\n").expect("break the config");
    assert_eq!(ctl(&socket, &["reload"]).code, Some(1));
    notify.until("RELOADING=1", |m| lines(m).contains(&"RELOADING=1"));
    notify.until("READY=1 after the refused reload", |m| {
        lines(m) == ["READY=1"]
    });
    std::fs::write(&path, good).expect("restore the config");

    // An upgrade: the new process takes the service over with MAINPID=.
    let copy = h.dir.path().join("mcpflip-rebuilt");
    std::fs::copy(BIN, &copy).expect("copy");
    let out = ctl(
        &socket,
        &[
            "--json",
            "upgrade",
            "--binary",
            copy.to_str().expect("utf-8"),
        ],
    );
    assert!(out.ok(), "{out:?}");
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let new_pid = reply["new_pid"].as_u64().expect("new_pid");
    let _guard = KillOnDrop(new_pid as i32);
    let main = notify.until("MAINPID=", |m| m.contains("MAINPID="));
    assert_eq!(
        lines(&main),
        [format!("MAINPID={new_pid}").as_str(), "READY=1"]
    );
    // The old process holds nothing once the client's idle keep-alive
    // connection to it is gone: it exits 0, without STOPPING=1 (the service
    // goes on).
    drop(client);
    assert!(old.wait_exit().success(), "{}", old.stderr());
    let client = http_client();
    let (code, _, _) = post_json(
        &client,
        &format!("http://127.0.0.1:{public}/mcp"),
        None,
        initialize(),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        !notify.seen.iter().any(|m| m.contains("STOPPING=1")),
        "{:?}",
        notify.seen
    );

    // SIGTERM: STOPPING=1.
    // SAFETY: kill(2) on the process this test started through ctl.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    let stopping = notify.until("STOPPING=1", |m| lines(m).contains(&"STOPPING=1"));
    assert_eq!(lines(&stopping), ["STOPPING=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_passed_by_socket_activation_are_served() {
    let h = Harness::new().await;
    let (cfg, public, admin) = h.builder_on_ports();
    let path = cfg.write();
    support::tools::ensure("systemd");
    let activate = PathBuf::from("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "systemd-socket-activate is missing: install systemd (Debian: apt-get install systemd)"
    );
    // systemd-socket-activate binds both and starts mcpflip on the first
    // connection; the admin socket is named, the public one found by address.
    let mut cmd = Command::new(activate);
    cmd.arg(format!("--listen=127.0.0.1:{admin}"))
        .arg(format!("--listen=127.0.0.1:{public}"))
        .arg("--fdname=admin:unnamed")
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&path);
    let mut proxy = ProxyProcess::spawn_command(cmd, &cfg.socket());
    // The first connection starts mcpflip; it waits on the passed socket
    // until mcpflip accepts it.
    support::until_async("systemd-socket-activate listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", public))
            .await
            .is_ok()
    })
    .await;
    let client = http_client();
    let (code, _, _) = post_json(
        &client,
        &format!("http://127.0.0.1:{public}/mcp"),
        None,
        initialize(),
    )
    .await;
    assert_eq!(code, 200);
    let ready = support::mcp::get_text(&client, &format!("http://127.0.0.1:{admin}/readyz")).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    proxy.stderr_with("[listen] addr: listening socket taken over");
    let log = proxy.stderr_with("[admin] addr: listening socket taken over");
    assert!(
        log.contains("[listen] addr: listening socket taken over")
            && log.contains("[admin] addr: listening socket taken over"),
        "{log}"
    );
    assert!(proxy.terminate().success(), "{}", proxy.stderr());
}
