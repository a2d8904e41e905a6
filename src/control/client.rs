//! The `mcpflip ctl` client: checks that the control socket is one root or the
//! invoking user made (and that the proxy behind it runs as one of them),
//! sends one JSON request, and prints the typed replies: readable by default
//! (see `display`), the raw JSON lines with `--json`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::control::display;
use crate::control::paths;
use crate::control::protocol::{ErrorReply, Progress, Reply, Request, MAX_LINE};

/// Connects to `socket` after checking who could have made it.
async fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    paths::check_socket(socket).map_err(|e| match e {
        paths::PathError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "no control socket at {} (is `mcpflip run` running? give --socket, MCPFLIP_SOCKET or --config naming its [control] socket)",
            socket.display()
        ),
        e => anyhow::anyhow!("{e}"),
    })?;
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the control socket {}: {e}\n(is `mcpflip run` running? give --socket, MCPFLIP_SOCKET or --config naming its [control] socket)",
            socket.display()
        )
    })?;
    // The path was checked; this checks the process that listens on it.
    let peer = stream.peer_cred()?.uid();
    if !paths::trusted_uid(peer, paths::euid()) {
        anyhow::bail!(
            "refusing the control socket {}: the process listening on it runs as uid {peer}, not as root or uid {} (you)",
            socket.display(),
            paths::euid()
        );
    }
    Ok(stream)
}

/// Sends one control line (words or JSON) and returns the final reply (the
/// object with `"ok"`); progress objects go to `on_progress`.
pub async fn send(
    socket: &Path,
    line: &str,
    mut on_progress: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let stream = connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", line.trim()).as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > 16 * MAX_LINE {
            anyhow::bail!("the proxy sent a reply of {} bytes", line.len());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "bad reply {:?}: {e}",
                crate::control::protocol::quote(&line, 200)
            )
        })?;
        if v.get("ok").is_some() {
            return Ok(v);
        }
        on_progress(&v);
    }
    anyhow::bail!("the proxy closed the control connection without a reply")
}

/// Sends `request`; returns its typed reply, or the error the proxy answered.
pub async fn request(
    socket: &Path,
    request: &Request,
    mut on_progress: impl FnMut(&Progress),
) -> anyhow::Result<Result<Reply, ErrorReply>> {
    let v = send(socket, &request.to_line(), |p| {
        if let Ok(p) = serde_json::from_value::<Progress>(p.clone()) {
            on_progress(&p);
        }
    })
    .await?;
    decode(request, v)
}

fn decode(request: &Request, v: Value) -> anyhow::Result<Result<Reply, ErrorReply>> {
    if v["ok"] == Value::Bool(true) {
        Reply::decode(request, v.clone())
            .map(Ok)
            .map_err(|e| anyhow::anyhow!("unexpected reply to `{}` ({e}): {v}", request.word()))
    } else {
        serde_json::from_value::<ErrorReply>(v.clone())
            .map(Err)
            .map_err(|e| anyhow::anyhow!("unexpected error reply ({e}): {v}"))
    }
}

/// Runs `mcpflip ctl`: prints, and returns the exit code (0 when ok).
pub async fn run(socket: &Path, request: &Request, json: bool) -> anyhow::Result<i32> {
    let line = request.to_line();
    render(request, json, |on_progress| {
        send(socket, &line, on_progress)
    })
    .await
}

/// Sends `request` through `transport` (the control socket, or the fleet's
/// command queue in etcd: `ctl --cluster`), prints its progress and reply
/// as `ctl` does, and returns the exit code (0 when ok).
pub async fn render<'a, T, F>(request: &Request, json: bool, transport: T) -> anyhow::Result<i32>
where
    T: FnOnce(Box<dyn FnMut(&Value) + Send + 'a>) -> F,
    F: std::future::Future<Output = anyhow::Result<Value>> + 'a,
{
    let tty = std::io::stderr().is_terminal();
    let printed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&printed);
    let mut printed_progress = false;
    let mut phase = String::new();
    let reply = transport(Box::new(move |v: &Value| {
        if json {
            println!("{v}");
            return;
        }
        let Ok(p) = serde_json::from_value::<Progress>(v.clone()) else {
            return;
        };
        let this = display::phase(&p);
        if tty {
            // A new phase keeps the last line of the previous one: a timeline.
            if printed_progress && this != phase {
                eprintln!();
            }
            eprint!("\r\x1b[K{}", display::progress_line(&p));
            let _ = std::io::stderr().flush();
            printed_progress = true;
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        } else if this != phase || this != "drain" && this != "watch" {
            eprintln!("{}", display::progress_line(&p));
        }
        phase = this.to_owned();
    }))
    .await?;
    if printed.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!();
    }
    if json {
        println!("{reply}");
        return Ok(if reply["ok"] == Value::Bool(true) {
            0
        } else {
            1
        });
    }
    Ok(match decode(request, reply)? {
        Ok(r) => {
            println!("{}", display::reply(&r));
            0
        }
        Err(e) => {
            println!("{}", display::error(&e));
            1
        }
    })
}
