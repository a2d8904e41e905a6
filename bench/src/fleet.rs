//! `mcpflip-bench fleet`: the fleet's figures (issue 15) with a three-member
//! etcd of our own and three mcpflip instances on loopback, blue and green
//! served by `mcpflip upstream`.
//!
//! - Propagation: for each of `--flips` flips sent to instance 1, the time
//!   from sending the flip to the moment the last of instances 2 and 3
//!   routes by it (each polled over its control socket, `status`, in a
//!   tight loop). This bounds commit -> last swap from above: it includes
//!   instance 1's own work and etcd's transaction. The instances' own
//!   histogram, `mcpflip_cluster_propagation_seconds` (commit -> swap, wall
//!   clocks, millisecond resolution), is printed beside it.
//! - Drain detection: a legacy SSE stream held through instance 3 pins
//!   blue; after `flip green --drain` on instance 1, the stream is closed,
//!   and instance 1 is polled until blue is drained. The figure is that
//!   time, raw: the quiet period (`[drain] quiet`, 100 ms here) counts from
//!   the slot's last pinned request (the stream's GET, long before), as on a
//!   single instance, so it has passed when the stream closes; the time
//!   includes instance 3's report through etcd and the status polling.
//!
//! etcd is `$ETCD`, else `target/tools/etcd/usr/bin/etcd`
//! (`tests/tools/install.sh etcd`), else `etcd` on the PATH.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn etcd_binary(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD") {
        return PathBuf::from(p);
    }
    let local = root.join("target/tools/etcd/usr/bin/etcd");
    if local.exists() {
        return local;
    }
    PathBuf::from("etcd")
}

fn ctl(socket: &Path, line: &str) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("{}", socket.display()))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            bail!("no reply to {line}");
        }
        let v: Value = serde_json::from_str(&l)?;
        if v.get("ok").is_some() {
            return Ok(v);
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs the fleet figures and prints them.
pub fn run(root: &Path, mcpflip: &Path, flips: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("mcpflip-bench-fleet-")
        .tempdir()?;
    let mut procs = Procs(Vec::new());
    let etcd = etcd_binary(root);
    let members: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let cluster: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    for (i, (c, p)) in members.iter().enumerate() {
        let child = Command::new(&etcd)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "{} (install it: tests/tools/install.sh etcd)",
                    etcd.display()
                )
            })?;
        procs.0.push(child);
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|(c, _)| format!("\"http://127.0.0.1:{c}\""))
        .collect();
    let mut slots = Vec::new();
    for slot in ["blue", "green"] {
        let port = free_port()?;
        procs.0.push(
            Command::new(mcpflip)
                .args(["upstream", "--port", &port.to_string(), "--slot", slot])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        slots.push(port);
    }
    let mut sockets = Vec::new();
    let mut publics = Vec::new();
    for n in 1..=3 {
        let d = dir.path().join(format!("edge-{n}"));
        std::fs::create_dir_all(&d)?;
        let public = free_port()?;
        let socket = d.join("control.sock");
        let config = format!(
            "[listen]\naddr = \"127.0.0.1:{public}\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
             [control]\nsocket = \"{}\"\nstate_file = \"{}\"\n[drain]\nquiet = \"100ms\"\n\
             [log]\nlevel = \"warn\"\naccess_log = \"off\"\n\
             [cluster]\netcd = [{}]\nprefix = \"/bench\"\ninstance = \"edge-{n}\"\nlease_ttl = \"3s\"\n\
             [[slot]]\nname = \"blue\"\nupstream = \"http://127.0.0.1:{}\"\nweight = 100\n\
             [[slot]]\nname = \"green\"\nupstream = \"http://127.0.0.1:{}\"\nweight = 0\n",
            socket.display(),
            d.join("state.json").display(),
            endpoints.join(", "),
            slots[0],
            slots[1]
        );
        let path = d.join("mcpflip.toml");
        std::fs::write(&path, config)?;
        // Give etcd its first election before the first instance joins.
        let mut started = None;
        for _ in 0..100 {
            let mut c = Command::new(mcpflip)
                .args(["run", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let up = wait_for("an instance", Duration::from_secs(10), || {
                UnixStream::connect(&socket).is_ok() || c.try_wait().ok().flatten().is_some()
            });
            if up.is_ok() && c.try_wait()?.is_none() {
                started = Some(c);
                break;
            }
            let _ = c.kill();
            let _ = c.wait();
            std::thread::sleep(Duration::from_millis(200));
        }
        procs.0.push(started.context("an instance did not start")?);
        sockets.push(socket);
        publics.push(public);
    }
    let instances = |s: &Value| s["cluster"]["instances"].as_array().map_or(0, Vec::len);
    for s in &sockets {
        wait_for("three instances", Duration::from_secs(20), || {
            ctl(s, "status").is_ok_and(|v| instances(&v) == 3)
        })?;
    }

    // Propagation.
    let mut took = Vec::with_capacity(flips);
    let mut to = "green";
    for _ in 0..flips {
        let t0 = Instant::now();
        let r = ctl(&sockets[0], &format!("flip {to} --no-probe"))?;
        if r["ok"] != true {
            bail!("flip: {r}");
        }
        let mut last = t0;
        for s in &sockets[1..] {
            wait_for(
                "the flip on every instance",
                Duration::from_secs(10),
                || ctl(s, "status").is_ok_and(|v| v["active"] == to),
            )?;
            last = last.max(Instant::now());
        }
        took.push(last - t0);
        to = if to == "green" { "blue" } else { "green" };
    }
    took.sort();
    println!(
        "fleet propagation ({flips} flips, 3 instances, 3 etcd members): flip sent -> last instance routes by it: p50 {}, p99 {}, max {}",
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.99)),
        ms(*took.last().unwrap_or(&Duration::ZERO))
    );

    // Drain detection: a stream on the slot that is active now, through instance 3.
    // The last flip went to the slot before `to`.
    let mut from = if to == "green" { "blue" } else { "green" };
    let mut rounds = Vec::new();
    for _ in 0..10 {
        let next = if from == "blue" { "green" } else { "blue" };
        let mut stream = TcpStream::connect(("127.0.0.1", publics[2]))?;
        stream.write_all(
            format!(
                "GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: text/event-stream\r\n\r\n",
                publics[2]
            )
            .as_bytes(),
        )?;
        let mut buf = [0u8; 512];
        let _ = stream.read(&mut buf)?;
        let r = ctl(&sockets[0], &format!("flip {next} --drain --no-probe"))?;
        if r["ok"] != true {
            bail!("flip: {r}");
        }
        let held = |v: &Value| {
            v["cluster"]["totals"]
                .as_array()
                .and_then(|t| t.iter().find(|x| x["slot"] == from))
                .map_or(0, |x| x["live_streams"].as_u64().unwrap_or(0))
        };
        wait_for(
            "the stream in the fleet's counts",
            Duration::from_secs(10),
            || ctl(&sockets[0], "status").is_ok_and(|v| held(&v) == 1),
        )?;
        let t0 = Instant::now();
        drop(stream);
        let state = |v: &Value| {
            v["slots"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == from))
                .map(|s| s["state"].as_str().unwrap_or("").to_owned())
        };
        wait_for("the fleet's drain", Duration::from_secs(30), || {
            ctl(&sockets[0], "status").is_ok_and(|v| state(&v).as_deref() == Some("drained"))
        })?;
        rounds.push(t0.elapsed());
        // Drained to standby: the next round flips back to it.
        ctl(&sockets[0], &format!("standby {from}"))?;
        from = next;
    }
    rounds.sort();
    println!(
        "fleet drain detection ({} drains, stream held through instance 3, judged on instance 1): last stream closed -> drained (raw; quiet period 100 ms since the last pinned request): p50 {}, max {}",
        rounds.len(),
        ms(percentile(&rounds, 0.5)),
        ms(*rounds.last().unwrap_or(&Duration::ZERO))
    );
    drop(procs);
    Ok(())
}
