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
/// MADV_FREE'd, would still count in RSS until the kernel needs them).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
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
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mcpflip: {e}");
                    return ExitCode::from(2);
                }
            };
            // Kept until exit: dropping it flushes the access log.
            let _log = match mcpflip::log::init(&config.log) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("mcpflip: {e}");
                    return ExitCode::from(1);
                }
            };
            let workers = config.proxy.workers;
            // Multi-thread even for one worker: its LIFO slot runs a task woken by
            // the task before it next, which keeps hyper's client dispatch hand-off
            // (request task <-> connection task) short; a current-thread runtime
            // measured worse in W1 and W2 relay p99 (BENCHMARKS.md).
            let rt = if workers > 0 {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            } else {
                runtime()
            };
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mcpflip: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(run(config, ignore_state)) {
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

async fn run(config: Config, ignore_state: bool) -> anyhow::Result<()> {
    let socket = config.control.socket.clone();
    let running = mcpflip::run::start(config, ignore_state).await?;
    // SIGHUP re-reads the config, like `mcpflip ctl reload` (and `nginx -s reload`).
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let ctl = std::sync::Arc::clone(&running.controller);
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
    shutdown_signal().await;
    tracing::info!("shutting down: draining every slot up to the drain deadline (signal again to stop at once)");
    tokio::select! {
        _ = running.shutdown() => {}
        _ = shutdown_signal() => tracing::warn!("second signal: stopping now"),
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
