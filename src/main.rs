//! The `mcpflip` command line: parses (the grammar is `mcpflip::cli`), then
//! calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mcpflip::cli::{Cli, Cmd, TransportArg};
use mcpflip::config::{Config, DEFAULT_PATH, DEFAULT_SOCKET};

/// jemalloc, because it gives memory back: after a burst of SSE streams closes,
/// glibc's malloc kept its freed arenas (RSS stayed at the high-water mark and
/// climbed across bursts) and mimalloc kept pages freed by other threads until
/// those threads allocate again. jemalloc's background thread returns dirty
/// pages after about `dirty_decay_ms`, idle or not (issue 10, defect 7;
/// measured by tests/edge_process.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: purge freed pages from a
/// background thread within about a second, straight to the OS (`muzzy` pages,
/// MADV_FREE'd, would still count in RSS until the kernel needs them). A
/// thread's cache is swept once per MiB it allocates, not once per 64 KiB:
/// at 64 KiB the sweep ran every few requests (bench/PROFILE.md §19); what a
/// cache may hold is bounded by its bins either way.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_gc_incr_bytes:1048576\0";

/// The log of the commands that have no config (`upstream`): text on stderr,
/// colours only on a terminal.
fn init_tracing() {
    let cfg = mcpflip::config::LogConfig {
        access_log: mcpflip::config::AccessLog::Off,
        ..Default::default()
    };
    let _ = mcpflip::log::init(&cfg);
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_builder().build()
}

/// A multi-thread runtime whose workers hand their access-log lines to the
/// writer whenever they run out of work or stop (`mcpflip::log::access`
/// gathers them per thread).
fn runtime_builder() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all()
        .on_thread_park(mcpflip::log::access::flush_thread)
        .on_thread_stop(mcpflip::log::access::flush_thread);
    b
}

/// The proxy's main runtime: a current-thread runtime, worker 0 of the
/// per-core workers (`proxy::workers`; `[proxy] workers` counts them), which
/// also runs the control plane. A current-thread runtime has no
/// work-stealing queues, idle-worker wake-ups or atomics: since the upstream
/// client writes and reads from the request's own task, a request lives on
/// one task, and W1 at c=64 measured 0.92-0.98x nginx's requests/s against
/// 0.80-0.82x with a one-worker multi-thread pool (bench/PROFILE.md §7).
fn proxy_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all()
        .on_thread_park(mcpflip::log::access::flush_thread)
        .on_thread_stop(mcpflip::log::access::flush_thread);
    b.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mcpflip: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run {
            config,
            ignore_state,
        } => {
            // Before any thread starts (both edit the environment): the
            // handover socket of a process that upgrades to this one, and the
            // sockets systemd passed (socket activation).
            let incoming = match mcpflip::handover::Incoming::from_env() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("mcpflip: cannot take over: {e}");
                    return ExitCode::from(1);
                }
            };
            let activated = match activated_sockets() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("mcpflip: socket activation (LISTEN_FDS): {e}");
                    return ExitCode::from(1);
                }
            };
            // The path this process was started from: an upgrade starts it
            // again, read anew from disk (a package upgrade replaced it).
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(i) = &incoming {
                        i.fail(&format!("bad config: {e}"));
                    }
                    eprintln!("mcpflip: {e}");
                    return ExitCode::from(2);
                }
            };
            // Kept until exit: dropping it flushes the access log.
            let _log = match mcpflip::log::init(&config.log) {
                Ok(guard) => guard,
                Err(e) => {
                    if let Some(i) = &incoming {
                        i.fail(&format!("{e}"));
                    }
                    eprintln!("mcpflip: {e}");
                    return ExitCode::from(1);
                }
            };
            let rt = proxy_runtime();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    if let Some(i) = &incoming {
                        i.fail(&format!("cannot start the runtime: {e}"));
                    }
                    eprintln!("mcpflip: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let start = Start {
                ignore_state,
                incoming,
                activated,
                exe,
            };
            match rt.block_on(run(config, start)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcpflip: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Demo => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mcpflip: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(mcpflip::demo::run()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Upstream {
            port,
            slot,
            transport,
            tools,
            fail_initialize,
        } => {
            init_tracing();
            let transport = match transport {
                TransportArg::Sse => mcpflip::demo_server::Transport::Sse,
                TransportArg::StreamableHttp => mcpflip::demo_server::Transport::StreamableHttp,
                TransportArg::Both => mcpflip::demo_server::Transport::Both,
            };
            let mut cfg = mcpflip::demo_server::ServerConfig::new(slot, transport);
            cfg.tools = tools;
            cfg.fail_initialize = fail_initialize;
            let result = runtime().and_then(|rt| {
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                        .await
                        .map_err(|e| {
                            std::io::Error::new(
                                e.kind(),
                                format!("cannot listen on 127.0.0.1:{port} (--port): {e}"),
                            )
                        })?;
                    let stop = tokio_util::sync::CancellationToken::new();
                    let s2 = stop.clone();
                    tokio::spawn(async move {
                        shutdown_signal().await;
                        s2.cancel();
                    });
                    mcpflip::demo_server::serve(listener, cfg, stop).await
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcpflip upstream: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Cert {
            dev: _,
            dir,
            names,
            force,
        } => match mcpflip::tls::write_dev_cert(&dir, &names, force) {
            Ok(d) => {
                println!(
                    "wrote {} and {} (key, mode 0600), signed by the development CA {}\n\
                     use:    [listen] tls = {{ cert = \"{}\", key = \"{}\" }}\n\
                     trust:  curl --cacert {ca} | SSL_CERT_FILE={ca} (Python) | NODE_EXTRA_CA_CERTS={ca} (Node)\n\
                     for development only: in production use a certificate from your CA (see certs/README.md)",
                    d.cert.display(),
                    d.key.display(),
                    d.ca.display(),
                    d.cert.display(),
                    d.key.display(),
                    ca = d.ca.display(),
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mcpflip cert: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Completions { shell } => {
            mcpflip::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir: None } => match mcpflip::cli::man_page()
            .and_then(|page| std::io::Write::write_all(&mut std::io::stdout(), &page))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mcpflip man: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Man { dir: Some(dir) } => match mcpflip::cli::write_man_pages(&dir) {
            Ok(pages) => {
                println!("wrote {} man pages to {}", pages.len(), dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mcpflip man: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Ctl {
            cluster: Some(cluster),
            json,
            request,
            ..
        } => match runtime()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(mcpflip::cluster::remote::ctl(&cluster, &request, json)))
        {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("mcpflip ctl --cluster: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Ctl {
            socket,
            config,
            json,
            request,
            ..
        } => {
            let socket = match ctl_socket(socket, config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("mcpflip ctl: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(mcpflip::control::client::run(&socket, &request, json)))
            {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("mcpflip ctl: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The socket `ctl` talks to: --socket / MCPFLIP_SOCKET, else the one the
/// config names (an explicit --config / MCPFLIP_CONFIG must exist; the
/// default config may be absent), else the default socket.
fn ctl_socket(socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let (path, explicit) = match config {
        Some(p) => (p, true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    if !explicit && !path.exists() {
        return Ok(PathBuf::from(DEFAULT_SOCKET));
    }
    mcpflip::config::control_socket(&path).map_err(anyhow::Error::from)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`),
/// with their names; the variables are removed so that no child sees them.
fn activated_sockets() -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()?.collect();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let mut out = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed these descriptors to this process (LISTEN_PID matched).
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let l = std::net::TcpListener::from(owned);
        if let Err(e) = l.local_addr() {
            return Err(std::io::Error::new(
                e.kind(),
                format!("descriptor {fd} ({name}) is not a TCP listening socket: {e}"),
            ));
        }
        out.push((name, l));
    }
    Ok(out)
}

/// How `run` starts: what this process inherited, and where its binary is.
struct Start {
    ignore_state: bool,
    incoming: Option<mcpflip::handover::Incoming>,
    activated: Vec<(String, std::net::TcpListener)>,
    exe: PathBuf,
}

/// The socket-activated listener for a role: the one named `name`
/// (`FileDescriptorName=`), else the one bound to `addr`.
fn take_activated(
    activated: &mut Vec<(String, std::net::TcpListener)>,
    name: &str,
    addr: std::net::SocketAddr,
) -> Option<std::net::TcpListener> {
    let i = activated.iter().position(|(n, _)| n == name).or_else(|| {
        activated
            .iter()
            .position(|(_, l)| l.local_addr().is_ok_and(|a| a == addr))
    })?;
    Some(activated.remove(i).1)
}

async fn run(config: Config, start: Start) -> anyhow::Result<()> {
    use mcpflip::control::controller::UpgradeRequest;
    use mcpflip::control::protocol::{CtlError, Upgraded};
    use tokio::signal::unix::{signal, SignalKind};

    // SIGUSR1 reopens the access-log file, like nginx's (logrotate's
    // `postrotate`). Taken first: its default action would end the process.
    if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                if !mcpflip::log::reopen() {
                    tracing::info!("SIGUSR1: no access log to reopen");
                }
            }
        });
    }

    let Start {
        ignore_state,
        incoming,
        mut activated,
        exe,
    } = start;
    let socket = config.control.socket.clone();
    let mut handshake = incoming;
    let inherited = match &mut handshake {
        Some(h) => {
            if ignore_state {
                tracing::info!("taking over: the state comes from the state file the running process saved (--ignore-state applies to a cold start only)");
            }
            mcpflip::run::Inherited {
                public: h.public.take(),
                admin: h.admin.take(),
                replace_control: true,
                previous: h.counts().to_vec(),
                drains: h.drains(),
            }
        }
        None => {
            let public = take_activated(&mut activated, "public", config.listen.addr);
            let admin = take_activated(&mut activated, "admin", config.admin.addr);
            for (name, l) in &activated {
                tracing::warn!(name, addr = ?l.local_addr().ok(), "socket activation: a socket neither named public/admin nor bound to [listen] or [admin] addr is closed");
            }
            mcpflip::run::Inherited {
                public,
                admin,
                ..Default::default()
            }
        }
    };
    drop(activated);
    let ignore_state = ignore_state && handshake.is_none();
    let running = match mcpflip::run::start_with(config, ignore_state, inherited).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(h) = &handshake {
                h.fail(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    let ctl = std::sync::Arc::clone(&running.controller);
    match handshake {
        Some(h) => {
            let old = h.old_pid;
            if let Err(e) = h.ready(std::sync::Arc::clone(&ctl), running.sessions()) {
                tracing::warn!(error = %e, "the process that handed over did not hear that this one serves");
            }
            tracing::info!(
                old_pid = old,
                "took over: this process serves; the old one finishes its streams"
            );
            mcpflip::notify::main_pid_ready();
        }
        None => mcpflip::notify::ready(),
    }
    if mcpflip::notify::enabled() {
        let ctl = std::sync::Arc::clone(&ctl);
        let lifecycle = std::sync::Arc::clone(&running.lifecycle);
        tokio::spawn(async move {
            let mut last = String::new();
            while lifecycle.phase() == mcpflip::health::Phase::Serving {
                let line = mcpflip::run::status_line(&ctl);
                if line != last {
                    mcpflip::notify::status(&line);
                    last = line;
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
    }
    // SIGHUP re-reads the config, like `mcpflip ctl reload` (and `nginx -s reload`).
    if let Ok(mut hup) = signal(SignalKind::hangup()) {
        let ctl = std::sync::Arc::clone(&ctl);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match mcpflip::control::reload::reload(&ctl).await {
                    Ok(r) => {
                        tracing::info!(changed = ?r.changed, restart_required = ?r.restart_required, "SIGHUP: config reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: reload refused; the running config stays")
                    }
                }
            }
        });
    }
    // `ctl upgrade` and SIGUSR2 (like nginx's binary upgrade) start the new process.
    let (tx, mut upgrades) = tokio::sync::mpsc::channel::<UpgradeRequest>(1);
    ctl.set_upgrader(tx);
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    loop {
        let (binary, timeout, reply) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(r) = upgrades.recv() => (r.binary, r.timeout, Some(r.reply)),
            Some(()) = usr2.recv() => (None, mcpflip::control::controller::UPGRADE_TIMEOUT, None),
        };
        let binary = binary.unwrap_or_else(|| exe.clone());
        tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
        let [public, admin] = running.sockets();
        let table = ctl.tables.load_full();
        let drains = ctl
            .status()
            .drains
            .into_iter()
            .map(|d| {
                let left = d.deadline_ms.saturating_sub(d.elapsed_ms);
                (d.slot, std::time::Duration::from_millis(left))
            })
            .collect();
        let result = mcpflip::handover::start_successor(mcpflip::handover::Offer {
            binary: &binary,
            args: &args,
            public,
            admin,
            table: &table,
            drains,
            timeout,
        })
        .await;
        match result {
            Ok(successor) => {
                let upgraded = Upgraded {
                    old_pid: std::process::id(),
                    new_pid: successor.pid,
                    binary: binary.clone(),
                };
                tracing::info!(new_pid = successor.pid, "upgrade: the new process serves; handing over (finishing the open streams, up to the drain deadline)");
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(upgraded));
                }
                let publisher = successor.publish(table, running.sessions());
                tokio::select! {
                    _ = running.hand_over() => {
                        // Its connections ended: what they captured since goes too.
                        publisher.finish().await;
                    }
                    _ = term.recv() => tracing::warn!("signal during the handover: stopping now"),
                    _ = int.recv() => tracing::warn!("signal during the handover: stopping now"),
                }
                // The control socket's path is the new process's now: left alone.
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed; this process serves on as before");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(CtlError::UpgradeFailed(e.to_string())));
                }
            }
        }
    }
    mcpflip::notify::stopping();
    tracing::info!("shutting down: draining every slot up to the drain deadline (signal again to stop at once)");
    tokio::select! {
        _ = running.shutdown() => {}
        _ = shutdown_signal() => tracing::warn!("second signal: stopping now"),
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
