//! The binary as an operator runs it: `check` on a bad config, a stale control
//! socket replaced, a live one refused, SIGTERM ending with exit 0.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::proc::{ProxyProcess, BIN};
use support::{closed_port, TestConfig};

#[test]
fn check_names_file_line_and_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[drain]\ndeadline = \"soon\"\n[[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:1\"\nweight = 100\n").expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: key `drain.deadline`"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn stale_socket_replaced_live_one_refused_sigterm_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::new(dir.path()).slot("blue", closed_port(), 100);
    let sock = cfg.socket();
    // A stale socket file left by a crashed proxy.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let mut proxy = ProxyProcess::spawn(&cfg.write(), &sock, &[]);
    proxy.wait_ready();
    // A second proxy on the same control socket is refused.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let cfg2 = TestConfig::new(&second)
        .set_str("control", "socket", sock.display().to_string())
        .slot("blue", closed_port(), 100);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg2.write())
        .output()
        .expect("second run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another running mcpflip"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.terminate().code(), Some(0));
    assert!(!sock.exists(), "socket removed on clean shutdown");
}

/// The README's first command: the demo refuses a broken green by its probe,
/// then deploys the fixed one: blue's short SSE sessions end on their own,
/// its long Streamable HTTP session moves to green with `drain --migrate`
/// (answered by blue, then by green, under one session id), and so does its
/// long legacy SSE session (on its one open stream); it exits 0.
#[test]
fn demo_refuses_a_broken_green_then_deploys_and_exits_0() {
    let out = Command::new(BIN).arg("demo").output().expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "refused: tools/list failed: tool set differs from expect_tools: missing search_documents, whoami",
        "flip: blue -> green",
        "client 3 closes its session",
        // Clients 3 and 5 hold blue once client 2 closed (client 4's calls
        // may be in flight at the count); client 5's stream moves with
        // `drain --migrate`, which may come before the count shows 1.
        "drain: blue has 2 live streams, ",
        "landed on green",
        "client 4 opened a Streamable HTTP session on blue (session id mf1.blue.",
        "drain blue --migrate",
        "watch passed",
        "deploy succeeded",
    ] {
        assert!(text.contains(needle), "demo output lacks {needle:?}:\n{text}");
    }
    // The long session moved: green answered it under the id blue gave it.
    let sid = text
        .split("(session id ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("client 4's session id");
    let moved = format!("answered by green, same session id {sid} ");
    assert!(
        text.contains(&moved),
        "demo output lacks {moved:?}:\n{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.contains("client 4: ") && l.contains("calls answered by blue, then "))
        .unwrap_or_else(|| panic!("no summary of client 4's calls:\n{text}"));
    assert!(
        summary.ends_with("by green, one session id throughout, none failed"),
        "{summary}"
    );
    // The long legacy SSE session moved on its open stream.
    assert!(
        text.contains("client 5 opened a legacy SSE session on blue"),
        "{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.contains("client 5: ") && l.contains("calls answered by blue, then "))
        .unwrap_or_else(|| panic!("no summary of client 5's calls:\n{text}"));
    assert!(
        summary.ends_with("by green, one stream throughout, none failed"),
        "{summary}"
    );
}

/// Kills the processes whose pids are in `dir/*.pid` (the slots deploy.sh
/// started), and the proxy.
struct Slots(std::path::PathBuf, ProxyProcess);

impl Drop for Slots {
    fn drop(&mut self) {
        self.1.kill9();
        for slot in ["blue", "green"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{slot}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY-free: kill(2) of a process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// `examples/deploy.sh` as an operator runs it, with slots that are real
/// `mcpflip upstream` processes: a deploy, a refused broken release, a deploy
/// back into the other slot, and a rollback to the previous release.
#[test]
fn examples_deploy_sh_deploys_refuses_and_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (blue, green) = (closed_port(), closed_port());
    let cfg = TestConfig::blue_green(d, blue, green)
        .set_str("probe", "timeout", "2s")
        .expect_all_tools()
        .set_str("watch", "window", "300ms")
        .set_str("watch", "interval", "100ms");
    let mut proxy = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proxy.wait_ready();
    let _slots = Slots(d.to_path_buf(), proxy);
    // Blue runs release v1 already.
    let start = format!(
        "port_var=PORT_$SLOT; tools=; [ \"$RELEASE\" = broken ] && tools='--tools get_document'; \
         {BIN} upstream --port ${{!port_var}} --slot $SLOT $tools >/dev/null 2>&1 & echo $! > {dir}/$SLOT.pid",
        dir = d.display()
    );
    let stop = format!("kill $(cat {}/$SLOT.pid)", d.display());
    let script = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/deploy.sh"))
            .args(args)
            .env("MCPFLIP", BIN)
            .env("MCPFLIP_SOCKET", d.join("control.sock"))
            .env("START_SLOT", &start)
            .env("STOP_SLOT", &stop)
            .env("STATE_DIR", d.join("state"))
            .env("PORT_blue", blue.to_string())
            .env("PORT_green", green.to_string())
            .output()
            .expect("deploy.sh runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let status = Command::new("bash")
        .args(["-c", &start])
        .env("SLOT", "blue")
        .env("RELEASE", "v1")
        .env("PORT_blue", blue.to_string())
        .status()
        .expect("start blue");
    assert!(status.success());
    let ctl = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["ctl", "--json", "--socket"])
            .arg(d.join("control.sock"))
            .args(args)
            .output()
            .expect("ctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while !ctl(&["probe", "blue"]).contains("\"ok\":true") {
        assert!(Instant::now() < end, "blue never came up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (code, out) = script(&["deploy", "v2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("deployed blue -> green"), "{out}");
    let s = ctl(&["status"]);
    assert!(s.contains("\"active\":\"green\""), "{s}");
    assert!(s.contains("\"name\":\"blue\",\"state\":\"retired\""), "{s}");

    let (code, out) = script(&["deploy", "broken"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("missing list_documents, search_documents, slow, whoami"),
        "{out}"
    );
    assert!(ctl(&["status"]).contains("\"active\":\"green\""));

    let (code, out) = script(&["deploy", "v3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(ctl(&["status"]).contains("\"active\":\"blue\""));

    let (code, out) = script(&["rollback"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rolled back to v2 in green"), "{out}");
    let s = ctl(&["status"]);
    assert!(s.contains("\"active\":\"green\""), "{s}");
}

/// `mcpflip cert --dev` writes a CA and a server pair (key 0600) that `check`
/// accepts as `[listen] tls`, and refuses to overwrite them without --force.
#[test]
fn cert_dev_writes_a_usable_pair_and_keeps_it_unless_forced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["cert", "--dev", "--dir"])
            .arg(&certs)
            .args(extra)
            .output()
            .expect("run")
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(certs.join("server.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run(&[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(&["--force"]).status.success());
    let cfg = dir.path().join("tls.toml");
    let check = |cfg: &Path| {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .expect("check")
    };
    let tls = TestConfig::new(dir.path())
        .tls(&certs.join("server.crt"), &certs.join("server.key"))
        .slot_url("blue", "https://127.0.0.1:1", Some(100), None);
    std::fs::write(&cfg, tls.text()).expect("write");
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("(https, HTTP/1.1 and HTTP/2)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key that is not the certificate's: the error names the file and line.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("server.key", "dev-ca.crt"),
    )
    .expect("write");
    let out = check(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tls.toml:3: key `listen.tls`") && err.contains("no private key"),
        "{err}"
    );
}

/// `mcpflip upstream` on a port that is taken says which port, not only the OS error.
#[test]
fn upstream_on_a_busy_port_names_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(BIN)
        .args(["upstream", "--port", &port.to_string()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (--port)")),
        "{err}"
    );
}

/// `examples/deploy.sh` on a machine without systemd and without START_SLOT /
/// STOP_SLOT says what to set instead of a raw `systemctl` error; and once the
/// first release is recorded, `rollback` right after the first deploy
/// restarts it.
#[test]
fn deploy_sh_needs_slot_commands_without_systemd_and_rolls_back_the_first_deploy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (blue, green) = (closed_port(), closed_port());
    let cfg = TestConfig::blue_green(d, blue, green)
        .set_str("probe", "timeout", "2s")
        .set_str("watch", "window", "300ms")
        .set_str("watch", "interval", "100ms");
    let mut proxy = ProxyProcess::spawn(&cfg.write(), &cfg.socket(), &[]);
    proxy.wait_ready();
    let _slots = Slots(d.to_path_buf(), proxy);
    let start = format!(
        "port_var=PORT_$SLOT; echo \"$RELEASE\" > {dir}/$SLOT.release; \
         {BIN} upstream --port ${{!port_var}} --slot $SLOT >/dev/null 2>&1 & echo $! > {dir}/$SLOT.pid",
        dir = d.display()
    );
    let stop = format!("kill $(cat {}/$SLOT.pid)", d.display());
    let script = |args: &[&str], commands: bool| {
        let mut cmd = Command::new("bash");
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/deploy.sh"))
            .args(args)
            .env("MCPFLIP", BIN)
            .env("MCPFLIP_SOCKET", d.join("control.sock"))
            .env("STATE_DIR", d.join("state"))
            .env("SYSTEMD_RUN_DIR", d.join("no-systemd"))
            .env("PORT_blue", blue.to_string())
            .env("PORT_green", green.to_string())
            .env_remove("START_SLOT")
            .env_remove("STOP_SLOT")
            .env_remove("CURRENT_RELEASE");
        if commands {
            cmd.env("START_SLOT", &start).env("STOP_SLOT", &stop);
        }
        let out = cmd.output().expect("deploy.sh runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    // No systemd, no commands: refused before anything changes.
    let (code, out) = script(&["deploy", "v2"], false);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("START_SLOT and STOP_SLOT default to systemd") && !out.contains("systemctl:"),
        "{out}"
    );

    // Blue runs v1, recorded once; deploy v2 to green, then roll back to v1.
    let status = Command::new("bash")
        .args(["-c", &start])
        .env("SLOT", "blue")
        .env("RELEASE", "v1")
        .env("PORT_blue", blue.to_string())
        .status()
        .expect("start blue");
    assert!(status.success());
    let (code, out) = script(&["record", "blue", "v1"], true);
    assert_eq!(code, Some(0), "{out}");
    let end = Instant::now() + Duration::from_secs(20);
    while !support::proc::ctl(&d.join("control.sock"), &["probe", "blue"]).ok() {
        assert!(Instant::now() < end, "blue never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = script(&["deploy", "v2"], true);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = script(&["rollback"], true);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rolled back to v1 in blue"), "{out}");
    assert_eq!(
        std::fs::read_to_string(d.join("blue.release")).expect("blue's release"),
        "v1\n",
        "rollback restarted blue with v1"
    );
    let s = support::proc::ctl(&d.join("control.sock"), &["--json", "status"]);
    assert!(s.stdout.contains("\"active\":\"blue\""), "{}", s.stdout);
}
