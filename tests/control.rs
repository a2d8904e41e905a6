//! The control plane as an operator and an attacker meet it (issue 11): state
//! that is on disk when `ok` comes back, a save that fails is not acknowledged,
//! planted paths are refused, no command leaves nothing serving, control lines
//! are bounded, a restart says what it restored, and a restarted slot gets a
//! fresh connection pool. Each test drives real sockets and files.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpflip::demo_server::{ServerConfig, Transport};
use serde_json::Value;
use support::mcp::{call_whoami, http_client, initialize, open_session, post_json, SseSession};
use support::proc::{ctl as ctl_bin, ProxyProcess};
use support::{closed_port, until, upstream, Harness, TestConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn read_state(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text:?}", path.display()))
}

/// Defect 1: the reply to a command comes after its state is on disk, every
/// time (the state file is read right after each acknowledgement, no waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_is_on_disk_when_the_reply_comes() {
    let h = Harness::new().await;
    // The state directory does not exist yet: the proxy creates it (0700).
    let state = h.dir.path().join("var").join("state.json");
    let cfg = h
        .builder()
        .set_str("control", "state_file", state.display().to_string());
    let p = mcpflip::run::start(cfg.load(), false)
        .await
        .expect("proxy starts");
    for i in 1..=40u32 {
        let r = h.ctl(&format!("weights blue={i} green={}", 100 - i)).await;
        assert_eq!(r["ok"], true, "{r}");
        let s = read_state(&state);
        assert_eq!(s["slots"]["blue"]["weight"], i, "after ack {i}: {s}");
        assert_eq!(s["slots"]["green"]["weight"], 100 - i, "after ack {i}: {s}");
    }
    // A flip with a drain makes two changes (flip, then drained) in quick succession.
    for to in ["green", "blue", "green"] {
        let r = h.ctl(&format!("flip {to} --no-probe --drain --wait")).await;
        assert_eq!(r["ok"], true, "{r}");
        let s = read_state(&state);
        assert_eq!(s["slots"][to]["state"], "serving", "{s}");
    }
    let mode = std::fs::metadata(state.parent().expect("dir"))
        .expect("state directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "state directory mode {mode:o}");
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 2: a change whose save fails is not acknowledged: the reply is an
/// error naming the state file and the OS error, nothing changed, and once the
/// directory is back the next change is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_refused_and_rolled_back() {
    let h = Harness::new().await;
    let dir = h.dir.path().join("state");
    let state = dir.join("state.json");
    let cfg = h
        .builder()
        .set_str("control", "state_file", state.display().to_string());
    let p = mcpflip::run::start(cfg.load(), false)
        .await
        .expect("proxy starts");
    assert_eq!(h.ctl("weights blue=100 green=0").await["ok"], true);
    // The state directory vanishes and a file takes its name: every save fails.
    let moved = h.dir.path().join("state.moved");
    std::fs::rename(&dir, &moved).expect("move the state directory");
    std::fs::write(&dir, b"not a directory").expect("plant a file");
    let r = h.ctl("flip green --no-probe").await;
    assert_eq!(r["ok"], false, "an unsaved flip was acknowledged: {r}");
    assert_eq!(r["code"], "state_not_saved", "{r}");
    let msg = r["error"].as_str().unwrap_or("");
    assert!(
        msg.contains(&state.display().to_string()) && msg.contains("Not a directory"),
        "{msg}"
    );
    let s = h.ctl("status").await;
    assert_eq!(s["active"], "blue", "the unsaved flip was rolled back: {s}");
    assert_eq!(s["flips_total"], 0, "{s}");
    std::fs::remove_file(&dir).expect("remove the planted file");
    std::fs::rename(&moved, &dir).expect("directory back");
    let r = h.ctl("flip green --no-probe").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(read_state(&state)["slots"]["green"]["state"], "serving");
    p.shutdown().await;
    h.stop.cancel();
}

/// A change that cannot be refused (a drain that ended) while the state cannot
/// be saved is kept, and says so loudly: `persisted: false` in its reply, in
/// `status` and in `mcpflip_state_persisted`, until a later save succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_that_cannot_be_saved_is_kept_and_reported_unsaved() {
    let h = Harness::new().await;
    let dir = h.dir.path().join("state");
    let cfg = h.builder().set_str(
        "control",
        "state_file",
        dir.join("state.json").display().to_string(),
    );
    let p = mcpflip::run::start(cfg.load(), false)
        .await
        .expect("proxy starts");
    let client = http_client();
    let held = support::mcp::SseSession::open(&client, &format!("http://{}", p.public_addr))
        .await
        .expect("session on blue");
    assert_eq!(h.ctl("flip green --no-probe --drain").await["ok"], true);
    let moved = h.dir.path().join("state.moved");
    std::fs::rename(&dir, &moved).expect("move the state directory");
    std::fs::write(&dir, b"not a directory").expect("plant a file");
    drop(held); // blue's last session ends: the drain ends, and cannot be saved
    let r = h.ctl("wait blue drained").await;
    assert_eq!(
        (r["ok"].clone(), r["persisted"].clone()),
        (Value::Bool(true), Value::Bool(false)),
        "{r}"
    );
    let s = h.ctl("status").await;
    assert_eq!(s["slots"][0]["state"], "drained", "{s}");
    assert_eq!(s["state_file"]["persisted"], false, "{s}");
    assert!(
        s["state_file"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("Not a directory"),
        "{s}"
    );
    let metrics =
        support::mcp::get_text(&client, &format!("http://{}/metrics", p.admin_addr)).await;
    assert!(metrics.contains("mcpflip_state_persisted 0"), "{metrics}");
    assert!(
        metrics.contains("mcpflip_state_save_failures_total 1"),
        "{metrics}"
    );
    // The directory is back: the next change saves everything, drained included.
    std::fs::remove_file(&dir).expect("remove the planted file");
    std::fs::rename(&moved, &dir).expect("directory back");
    assert_eq!(h.ctl("weights green=50").await["ok"], true);
    let s = h.ctl("status").await;
    assert_eq!(s["state_file"]["persisted"], true, "{s}");
    assert_eq!(
        read_state(&dir.join("state.json"))["slots"]["blue"]["state"],
        "drained"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 3: a symlink planted where the state's temporary file used to go is
/// never followed; the file it points to stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_in_the_state_directory_is_never_followed() {
    let h = Harness::new().await;
    let victim = h.dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    std::os::unix::fs::symlink(&victim, h.dir.path().join(".state.json.tmp")).expect("symlink");
    let p = mcpflip::run::start(h.config(), false)
        .await
        .expect("proxy starts");
    for to in ["green", "blue", "green"] {
        assert_eq!(h.ctl(&format!("flip {to} --no-probe")).await["ok"], true);
    }
    let state = h.dir.path().join("state.json");
    until("the state file names green", || {
        std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains("\"serving\"") && t.contains("green"))
    })
    .await;
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    let meta = std::fs::symlink_metadata(&state).expect("state file");
    assert!(meta.file_type().is_file(), "the state file is a plain file");
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 3: a state or socket directory that others can write (or that
/// another user owns) is refused at start with its path, owner and mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_socket_directories_others_control_are_refused() {
    let h = Harness::new().await;
    let open = h.dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for (key, file) in [("state_file", "state.json"), ("socket", "control.sock")] {
        let cfg = h
            .builder()
            .set_str("control", key, open.join(file).display().to_string());
        let err = mcpflip::run::start(cfg.load(), false)
            .await
            .err()
            .unwrap_or_else(|| panic!("a world-writable {key} directory was accepted"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&open.display().to_string()) && msg.contains("777"),
            "{msg}"
        );
    }
    // SAFETY-free: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = h.dir.path().join("foreign");
        std::fs::create_dir(&foreign).expect("mkdir");
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
        let cfg = h.builder().set_str(
            "control",
            "state_file",
            foreign.join("state.json").display().to_string(),
        );
        let err = mcpflip::run::start(cfg.load(), false)
            .await
            .err()
            .expect("a directory owned by another user was accepted");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&foreign.display().to_string()) && msg.contains("65534"),
            "{msg}"
        );
    } else {
        eprintln!(
            "not root: the foreign-owner case is covered by the unit tests of control::paths"
        );
    }
    h.stop.cancel();
}

/// Defect 3: `ctl` sends nothing to a socket it cannot trust (in a directory
/// others can write, or owned by another user); it names the path and why.
#[test]
fn ctl_refuses_a_socket_that_another_user_could_have_planted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    let sock = open.join("control.sock");
    let fake = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    fake.set_nonblocking(true).expect("nonblocking");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let run = ctl_bin(&sock, &["flip", "green"]);
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&open.display().to_string()) && run.stderr.contains("777"),
        "{run:?}"
    );
    match fake.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok(_) => panic!("ctl connected to an untrusted socket"),
        Err(e) => panic!("accept: {e}"),
    }
    // SAFETY-free: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::lchown(&sock, Some(65534), Some(65534)).expect("chown");
        let run = ctl_bin(&sock, &["status"]);
        assert_ne!(run.code, Some(0), "{run:?}");
        assert!(run.stderr.contains("65534"), "{run:?}");
        assert!(
            matches!(fake.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "ctl connected to a socket another user owns"
        );
    }
}

/// Defect 4: no command leaves nothing serving, and weights stay in the
/// config's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_would_leave_nothing_serving_are_refused() {
    let h = Harness::new().await;
    let p = h.start().await;
    for (line, code) in [
        ("drain blue", "last_serving_slot"),
        ("standby blue", "last_serving_slot"),
        ("retire blue", "last_serving_slot"),
        ("weights blue=0", "no_serving_slot"),
        ("weights blue=4294967295", "weight_out_of_range"),
        ("weights green=1000001", "weight_out_of_range"),
    ] {
        let r = h.ctl(line).await;
        assert_eq!(
            (r["ok"].clone(), r["code"].clone()),
            (Value::Bool(false), Value::from(code)),
            "{line}: {r}"
        );
    }
    let s = h.ctl("status").await;
    assert_eq!(s["slots"][0]["state"], "serving", "{s}");
    assert_eq!(s["slots"][0]["generation"], 1, "{s}");
    assert_eq!(s["slots"][0]["weight"], 100, "{s}");
    let (status, sid, _) = post_json(
        &http_client(),
        &format!("http://{}/mcp", p.public_addr),
        None,
        initialize(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(sid.expect("session").starts_with("mf1.blue.1."));
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 4: a state file the proxy could not have written is refused at
/// start with a message that says what is wrong and how to start anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_breaks_the_rules_is_refused_at_start() {
    let h = Harness::new().await;
    let state = h.dir.path().join("state.json");
    let slot = |state: &str, weight: u32, generation: u32| serde_json::json!({"weight": weight, "state": state, "generation": generation});
    for (file, needle) in [
        (
            serde_json::json!({"version": 1, "slots": {"blue": slot("retired", 0, 1), "green": slot("retired", 0, 1)}}),
            "no slot",
        ),
        (
            serde_json::json!({"version": 999, "slots": {"blue": slot("serving", 100, 1), "green": slot("standby", 0, 1)}}),
            "999",
        ),
        (
            serde_json::json!({"version": 1, "slots": {"blue": slot("serving", 100, 1), "green": slot("standby", 0, u32::MAX)}}),
            "4294967295",
        ),
        (
            serde_json::json!({"version": 1, "slots": {"blue": slot("serving", 4_294_967_295, 1), "green": slot("standby", 0, 1)}}),
            "4294967295",
        ),
    ] {
        std::fs::write(&state, file.to_string()).expect("write state");
        let err = mcpflip::run::start(h.config(), false)
            .await
            .err()
            .unwrap_or_else(|| panic!("state {file} was accepted"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains(needle)
                && msg.contains("--ignore-state")
                && msg.contains(&state.display().to_string()),
            "{file}: {msg}"
        );
    }
    h.stop.cancel();
}

/// Defect 5: a control line is length-capped: an oversize line is refused with
/// a short JSON error (not an echo of the line) and the connection is closed,
/// without waiting for the line to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_control_line_is_refused_without_being_echoed() {
    let h = Harness::new().await;
    let p = h.start().await;
    let s = tokio::net::UnixStream::connect(h.socket())
        .await
        .expect("connect");
    let (r, mut w) = s.into_split();
    // 8 MiB of one word and no newline: the proxy must not wait for the end.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..128 {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(r).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a reply before the line ends")
        .expect("read")
        .expect("a reply line");
    assert!(
        line.len() < 1024,
        "the reply echoes the line: {} bytes",
        line.len()
    );
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(
        (v["ok"].clone(), v["code"].clone()),
        (Value::Bool(false), Value::from("line_too_long")),
        "{v}"
    );
    let end = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the connection closes");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    let _ = writer.await;
    // An unknown word is not echoed whole either.
    let long = "y".repeat(10_000);
    let r = h.ctl(&long).await;
    assert_eq!(r["code"], "bad_command", "{r}");
    assert!(r.to_string().len() < 1024, "{r}");
    p.shutdown().await;
    h.stop.cancel();
}

/// Defect 6: a restart says what it restored and how to ignore it, and a
/// deploy to the slot that is already active says so, changes nothing, does
/// not count a flip and exits non-zero.
#[test]
fn a_restart_says_what_it_restored_and_a_deploy_to_the_active_slot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = CancellationToken::new();
    let (blue, green) = rt.block_on(async {
        (
            upstream(ServerConfig::new("blue", Transport::Both), &stop).await,
            upstream(ServerConfig::new("green", Transport::Both), &stop).await,
        )
    });
    let cfg = TestConfig::blue_green(dir.path(), blue, green)
        .expect_all_tools()
        .set_str("watch", "window", "200ms")
        .set_str("watch", "interval", "100ms");
    let path = cfg.write();
    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &[]);
    proxy.wait_ready();
    assert!(
        !proxy.stderr().contains("state restored"),
        "{}",
        proxy.stderr()
    );
    let run = ctl_bin(&cfg.socket(), &["flip", "green", "--no-probe"]);
    assert!(run.ok(), "{run:?}");
    assert_eq!(proxy.terminate().code(), Some(0));

    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &[]);
    proxy.wait_ready();
    let expected = format!(
        "state restored from {} (active: green, generation 1); start with --ignore-state to use the config's weights",
        cfg.state_file().display()
    );
    let log = proxy.stderr_with(&expected);
    assert!(log.contains(&expected), "{log}");
    let run = ctl_bin(&cfg.socket(), &["deploy", "green"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains("already_active")
            && run.stdout.contains("green is already the active slot"),
        "{run:?}"
    );
    let run = ctl_bin(&cfg.socket(), &["--json", "status"]);
    let s: Value = serde_json::from_str(run.stdout.trim()).expect("status JSON");
    assert_eq!(s["flips_total"], 0, "{s}");
    assert!(s["watch"].is_null(), "{s}");
    drop(proxy);

    // --ignore-state starts from the config's weights, and says nothing was restored.
    let mut proxy = ProxyProcess::spawn(&path, &cfg.socket(), &["--ignore-state"]);
    proxy.wait_ready();
    let run = ctl_bin(&cfg.socket(), &["--json", "status"]);
    let s: Value = serde_json::from_str(run.stdout.trim()).expect("status JSON");
    assert_eq!(s["active"], "blue", "{s}");
    assert!(
        !proxy.stderr().contains("state restored"),
        "{}",
        proxy.stderr()
    );
    drop(proxy);
    stop.cancel();
}

/// A relay in front of a slot: connections accepted before `switch` keep
/// going to the first server (the old process's keep-alive connections),
/// connections after it reach the second (the restarted process).
async fn relay(first: u16) -> (u16, Arc<Mutex<u16>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let target = Arc::new(Mutex::new(first));
    let t = Arc::clone(&target);
    tokio::spawn(async move {
        while let Ok((mut down, _)) = l.accept().await {
            let to = *t.lock().unwrap_or_else(|p| p.into_inner());
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (port, target)
}

/// The lead's finding: `standby SLOT` (its process was restarted) gives the
/// slot a fresh connection pool; a pooled keep-alive connection to the old
/// process is never reused for the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_gives_the_slot_a_fresh_connection_pool() {
    let stop = CancellationToken::new();
    let blue = upstream(ServerConfig::new("blue", Transport::Both), &stop).await;
    let old = upstream(ServerConfig::new("green-old", Transport::Both), &stop).await;
    let (green, target) = relay(old).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::blue_green(dir.path(), blue, green).set(
        "probe",
        "canary",
        r#"{ tool = "whoami", expect = "green-new" }"#,
    );
    let p = support::start(cfg.load()).await;
    let sock = cfg.socket();
    // The old process answers (and leaves pooled connections behind).
    let r = support::ctl(&sock, "probe green").await;
    assert_eq!(r["code"], "probe_failed", "{r}");
    // Green's process is restarted: new connections reach the new one.
    let new = upstream(ServerConfig::new("green-new", Transport::Both), &stop).await;
    *target.lock().unwrap_or_else(|p| p.into_inner()) = new;
    let r = support::ctl(&sock, "standby green").await;
    assert_eq!(
        (r["ok"].clone(), r["generation"].clone()),
        (Value::Bool(true), Value::from(2)),
        "{r}"
    );
    let r = support::ctl(&sock, "probe green").await;
    assert_eq!(
        r["ok"], true,
        "the probe reached the old process over a pooled connection: {r}"
    );
    p.shutdown().await;
    stop.cancel();
}

/// `mcpflip ctl` without `--socket` or `MCPFLIP_SOCKET` finds the socket in
/// the config (`--config` or `MCPFLIP_CONFIG`), relative paths taken from
/// the config file's directory.
#[test]
fn ctl_finds_the_socket_in_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TestConfig::new(dir.path())
        .set_str("control", "socket", "run/control.sock")
        .set_str("control", "state_file", "run/state.json")
        .slot("blue", closed_port(), 100);
    let path = cfg.write();
    let socket = dir.path().join("run/control.sock");
    let mut proxy = ProxyProcess::spawn(&path, &socket, &[]);
    proxy.wait_ready();
    let run = support::proc::ctl_env(
        &[
            "--json",
            "--config",
            path.to_str().expect("utf-8"),
            "status",
        ],
        &[],
    );
    assert!(run.ok(), "{run:?}");
    let run = support::proc::ctl_env(&["--json", "status"], &[("MCPFLIP_CONFIG", &path)]);
    assert!(run.ok(), "{run:?}");
    let s: Value = serde_json::from_str(run.stdout.trim()).expect("status JSON");
    assert_eq!(s["active"], "blue", "{s}");
}

/// `mcpflip ctl CMD --help` documents each command's flags; `ctl --help`
/// lists the commands.
#[test]
fn ctl_help_lists_the_commands_and_each_commands_flags() {
    let run = support::proc::ctl_env(&["--help"], &[]);
    assert!(run.ok(), "{run:?}");
    for cmd in [
        "status", "flip", "weights", "drain", "wait", "probe", "rollback", "deploy", "retire",
        "standby", "reload",
    ] {
        assert!(
            run.stdout.contains(cmd),
            "ctl --help lacks {cmd}: {}",
            run.stdout
        );
    }
    for (cmd, flags) in [
        (
            "flip",
            &["--no-probe", "--drain", "--wait", "--deadline"][..],
        ),
        ("drain", &["--wait", "--deadline"]),
        ("wait", &["--timeout"]),
        ("deploy", &["--deadline", "--watch"]),
        ("weights", &["NAME=W"]),
        ("status", &[]),
        ("probe", &["SLOT"]),
        ("rollback", &[]),
        ("retire", &["SLOT"]),
        ("standby", &["SLOT"]),
        ("reload", &[]),
    ] {
        let run = support::proc::ctl_env(&[cmd, "--help"], &[]);
        assert!(run.ok(), "{cmd} --help: {run:?}");
        for f in flags {
            assert!(
                run.stdout.contains(f),
                "ctl {cmd} --help lacks {f}: {}",
                run.stdout
            );
        }
    }
}

/// Reads one JSON line from a raw control connection.
async fn reply(lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>) -> Value {
    let l = lines.next_line().await.expect("read").expect("line");
    serde_json::from_str(&l).expect("JSON")
}

/// The line protocol stays for socat users: words and JSON requests on one
/// connection, each answered by one final JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_and_json_requests_share_one_connection() {
    let h = Harness::new().await;
    let p = h.start().await;
    let s = tokio::net::UnixStream::connect(h.socket())
        .await
        .expect("connect");
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"{\"cmd\": \"weights\", \"weights\": {\"blue\": 70, \"green\": 30}}\n")
        .await
        .expect("write");
    let v = reply(&mut lines).await;
    assert_eq!(v["ok"], true, "{v}");
    w.write_all(b"status\n").await.expect("write");
    let v = reply(&mut lines).await;
    assert_eq!(v["slots"][1]["weight"], 30, "{v}");
    w.write_all(b"{\"cmd\": \"flip\", \"slot\": \"green\", \"bogus\": 1}\n")
        .await
        .expect("write");
    let v = reply(&mut lines).await;
    assert_eq!(v["code"], "bad_command", "{v}");
    w.write_all(b"{\"cmd\": \"status\"}\n")
        .await
        .expect("write");
    let v = reply(&mut lines).await;
    assert_eq!(v["ok"], true, "{v}");
    drop(w);
    let mut rest = Vec::new();
    let _ = lines.into_inner().read_to_end(&mut rest).await;
    p.shutdown().await;
    h.stop.cancel();
}

/// A serving slot weighted to 0 goes to standby at once, and its sessions'
/// requests get 404 (HAProxy's weight 0 would drain it instead): the reply
/// says so, as `flip` without `--drain` does, in JSON and on the CLI, and a
/// canary shift that leaves every slot serving carries no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighting_a_serving_slot_to_zero_warns_that_its_sessions_get_404() {
    let h = Harness::new().await;
    let p = h.start().await;
    let url = format!("http://{}/mcp", p.public_addr);
    let client = http_client();
    let sid = support::mcp::open_session(&client, &url).await;
    let r = h.ctl("weights blue=50 green=50").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r.get("warning").is_none(),
        "a canary shift cuts nothing: {r}"
    );

    let r = h.ctl("weights blue=0 green=100").await;
    assert_eq!(r["ok"], true, "{r}");
    let w = r["warning"].as_str().unwrap_or_default();
    assert!(
        w.contains("blue went to standby without a drain")
            && w.contains("404")
            && w.contains("drain blue")
            && w.contains("--drain"),
        "{r}"
    );
    // What the warning says: blue's session is cut.
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = post_json(&client, &url, Some(&sid), call).await;
    assert_eq!(status, 404, "{body}");

    // The CLI prints it; a second weight change that cuts nothing does not.
    let run = ctl_bin(&h.socket(), &["weights", "blue=100", "green=100"]);
    assert!(run.ok() && !run.stdout.contains("warning"), "{run:?}");
    let run = ctl_bin(&h.socket(), &["weights", "green=0"]);
    assert!(
        run.ok()
            && run
                .stdout
                .contains("warning: green went to standby without a drain"),
        "{run:?}"
    );
    p.shutdown().await;
    h.stop.cancel();
}

/// The slot `sid`'s `whoami` reached through `url`.
async fn whoami(client: &support::mcp::HttpClient, url: &str, sid: &str, id: u32) -> String {
    let (status, body) = call_whoami(client, url, sid, id).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `weights ... --drain`, the canary's last step as HAProxy's weight 0 does
/// it: the slot weighted to 0 takes no new session, its sessions (a Streamable
/// HTTP one and a legacy SSE stream) keep going to it, `--wait` replies once
/// the stream is gone, and the slot is then drained. `wait` without `drain`
/// is refused in both forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighting_a_slot_to_zero_with_drain_keeps_its_sessions_until_it_drains() {
    let h = Harness::new().await;
    let p = h.start().await;
    let base = format!("http://{}", p.public_addr);
    let url = format!("{base}/mcp");
    let client = http_client();
    let sid = open_session(&client, &url).await;
    let mut stream = SseSession::open(&client, &base)
        .await
        .expect("legacy session");
    assert_eq!(whoami(&client, &url, &sid, 2).await, "blue");

    let run = ctl_bin(&h.socket(), &["weights", "blue=0", "--wait"]);
    assert!(!run.ok() && run.stderr.contains("--drain"), "{run:?}");
    let r = h
        .ctl(r#"{"cmd": "weights", "weights": {"blue": 0}, "wait": true}"#)
        .await;
    assert_eq!(r["code"], "bad_command", "{r}");
    assert_eq!(h.ctl("status").await["active"], "blue");

    let socket = h.socket();
    let waiting = tokio::spawn(async move {
        support::ctl(&socket, "weights blue=0 green=100 --drain --wait").await
    });
    let hr = &h;
    support::until_async("blue draining", || async move {
        hr.ctl("status").await["slots"][0]["state"] == "draining"
    })
    .await;
    // Blue's sessions keep going to blue; a new one goes to green.
    assert_eq!(whoami(&client, &url, &sid, 3).await, "blue");
    let text = stream
        .call("whoami", serde_json::json!({}))
        .await
        .expect("legacy call");
    assert_eq!(text, "blue");
    let fresh = open_session(&client, &url).await;
    assert_eq!(whoami(&client, &url, &fresh, 2).await, "green");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "blue has a live stream: not drained yet"
    );

    drop(stream);
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the drain ends once the stream is gone")
        .expect("ctl task");
    assert_eq!(r["ok"], true, "{r}");
    assert!(r.get("warning").is_none(), "a drain cuts nothing: {r}");
    assert_eq!(r["draining"], serde_json::json!(["blue"]), "{r}");
    assert_eq!(r["drained"][0]["slot"], "blue", "{r}");
    assert_eq!(r["drained"][0]["forced"], 0, "{r}");
    assert_eq!(h.ctl("status").await["slots"][0]["state"], "drained");

    // The CLI says what drains.
    let run = ctl_bin(&h.socket(), &["weights", "blue=100", "green=100"]);
    assert!(run.ok(), "{run:?}");
    let run = ctl_bin(&h.socket(), &["weights", "green=0", "--drain"]);
    assert!(
        run.ok() && run.stdout.contains("draining: green") && !run.stdout.contains("warning"),
        "{run:?}"
    );
    p.shutdown().await;
    h.stop.cancel();
}
