//! The `mcpflip` command line as data: every subcommand, flag and default,
//! parsed by `main` and also rendered as the man pages (`mcpflip man`) and
//! the shell completions (`mcpflip completions SHELL`), and walked by
//! `tests/docs.rs` so that `docs/cli.md` names every one of them.
//!
//! Only the grammar lives here; what each command does is in `main.rs`.

// The help texts name config sections as `mcpflip --help` shows them ("[drain]
// deadline"); rustdoc would read them as links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;
use crate::control::protocol::Request;

/// `mcpflip`: the proxy, its control client and its tools.
#[derive(Parser, Debug)]
#[command(
    name = "mcpflip",
    version,
    // `--version` names the commit too (as `mcpflip_build_info` does), so that a
    // report or a bug can say which build it was; `-V` and the man pages (which
    // the repository keeps) say the version alone.
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("MCPFLIP_COMMIT"), ")"),
    about = "Blue-green reverse proxy for MCP servers",
    long_about = "Blue-green reverse proxy for MCP servers: SSE-aware drains, session \
                  affinity, probe-gated flips and one-command deploys.\n\n\
                  Exit status: 0 success; 1 failure (a refused control command, an \
                  error at run time); 2 a bad config or a command line that does not parse."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the proxy (exit 0 after a clean shutdown, 2 on a bad config, 1 on another failure).
    ///
    /// SIGHUP re-reads the config (like `mcpflip ctl reload`); SIGTERM or
    /// SIGINT stops accepting, drains every slot up to [drain] deadline and
    /// exits; a second signal stops at once.
    Run {
        /// The config file.
        #[arg(long, env = "MCPFLIP_CONFIG", default_value = DEFAULT_PATH, value_name = "PATH")]
        config: PathBuf,
        /// Start from the config's weights, ignoring the state file.
        #[arg(long)]
        ignore_state: bool,
    },
    /// Validate a config and print the resolved settings, like `nginx -t` (exit 2 on error).
    Check {
        /// The config file.
        #[arg(long, env = "MCPFLIP_CONFIG", default_value = DEFAULT_PATH, value_name = "PATH")]
        config: PathBuf,
    },
    /// A self-contained showcase: two demo slots, clients holding SSE sessions, a deploy with drain.
    Demo,
    /// The built-in demo MCP server (tools get_document, list_documents, search_documents, slow, whoami).
    Upstream {
        /// The loopback port to listen on (127.0.0.1).
        #[arg(long)]
        port: u16,
        /// The slot name `whoami` answers with.
        #[arg(long, default_value = "blue")]
        slot: String,
        /// The MCP transports to serve: legacy HTTP+SSE on /sse, Streamable HTTP on /mcp, or both.
        #[arg(long, value_enum, default_value = "both")]
        transport: TransportArg,
        /// Serve only these tools (comma-separated); simulates a broken release.
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        tools: Option<Vec<String>>,
        /// Answer 500 to initialize.
        #[arg(long)]
        fail_initialize: bool,
    },
    /// Write a development certificate: a local CA and a server certificate it
    /// signed for localhost, 127.0.0.1 and ::1 (plus --name ...).
    Cert {
        /// Required: this command only makes development certificates.
        #[arg(long, required = true)]
        dev: bool,
        /// Where to write dev-ca.crt, server.crt and server.key.
        #[arg(long, default_value = "certs", value_name = "DIR")]
        dir: PathBuf,
        /// More DNS names or IP addresses for the server certificate (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace an existing development certificate.
        #[arg(long)]
        force: bool,
    },
    /// Send one control command to a running proxy.
    ///
    /// The socket: --socket, else MCPFLIP_SOCKET, else the [control] socket of
    /// the config (--config, MCPFLIP_CONFIG, default config/mcpflip.toml),
    /// else /run/mcpflip/control.sock. Exit 0 when the reply is ok, 1 when it
    /// is not, 2 when the command line does not parse (nothing is sent).
    Ctl {
        /// The control socket.
        #[arg(long, global = true, env = "MCPFLIP_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The config that names the socket (when --socket is not given).
        #[arg(long, global = true, env = "MCPFLIP_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// Control the fleet of this config's [cluster] straight through etcd (no socket; from any machine that reaches etcd).
        #[arg(long, global = true, value_name = "CONFIG", conflicts_with = "socket")]
        cluster: Option<PathBuf>,
        /// Print the raw JSON lines.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        request: Request,
    },
    /// Print the shell completion script for SHELL, e.g. `mcpflip completions bash > /etc/bash_completion.d/mcpflip`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page mcpflip(1), or write every page (mcpflip-run(1), mcpflip-ctl-deploy(1), ...) to --dir.
    Man {
        /// Write mcpflip.1 and one page per subcommand into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `mcpflip upstream --transport`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TransportArg {
    /// Legacy HTTP+SSE (2024-11-05): GET /sse, POST /messages.
    Sse,
    /// Streamable HTTP: POST, GET and DELETE /mcp.
    StreamableHttp,
    /// Both.
    Both,
}

/// The command tree, for the man pages, completions and the docs test.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The command tree as the man pages show it: no `help` subcommand, and the
/// version without the commit (a page must not change with every commit).
fn for_pages() -> clap::Command {
    command()
        .disable_help_subcommand(true)
        .long_version(None::<&str>)
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "mcpflip", out);
}

/// The man page of `mcpflip` itself (roff).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(for_pages()).render(&mut out)?;
    Ok(out)
}

/// Writes `mcpflip.1` and a page per subcommand (`mcpflip-ctl-deploy.1`, ...)
/// into `dir`, each created without following a link planted in its place;
/// returns the files written.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = for_pages();
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let page = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(page.get_filename());
    let mut buf = Vec::new();
    page.render(&mut buf)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    file.write_all(&buf)?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, out)?;
    }
    Ok(())
}
