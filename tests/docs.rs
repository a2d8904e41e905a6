//! The reference in docs/ covers what the code has: every config key (walked
//! from the config structs' serde fields, with its default), every command
//! line subcommand and flag (clap's command tree), every control command, flag
//! and error code (the typed protocol), and every metric a real scrape serves
//! (with its type and labels). Also: the committed man pages and completions
//! are what the binary generates now, and the README links into docs/.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpflip::config::{
    AccessLog, AdminConfig, CanaryConfig, CertPair, ClusterConfig, Config, ControlConfig,
    DrainConfig, HealthConfig, ListenConfig, LogConfig, LogFormat, MigrateMode, ProbeConfig,
    ProbeTransport, ProxyConfig, SlotConfig, TlsConfig, WatchConfig,
};
use mcpflip::control::protocol::ErrorCode;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn doc(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("docs").join(name))
        .unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

/// The sections of a markdown page by heading text (without the `#`s).
fn sections(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current = String::new();
    let mut body = String::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix('#') {
            out.insert(std::mem::take(&mut current), std::mem::take(&mut body));
            current = h.trim_start_matches('#').trim().to_owned();
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.insert(current, body);
    out
}

/// Table rows of a section whose first cell is a `code` name: name -> cells.
fn rows(section: &str) -> BTreeMap<String, Vec<String>> {
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<String> = l
                .trim()
                .strip_prefix('|')?
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            let key = cells
                .first()?
                .strip_prefix('`')?
                .strip_suffix('`')?
                .to_owned();
            Some((key, cells[1..].to_vec()))
        })
        .collect()
}

/// A config with every optional key set, written as struct literals so that
/// a new field fails to compile here until it is given a value (and then
/// must be documented).
fn populated() -> Config {
    let p = PathBuf::from;
    Config {
        listen: ListenConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: Some(TlsConfig {
                cert: p("a.crt"),
                key: p("a.key"),
                sni: vec![CertPair {
                    cert: p("b.crt"),
                    key: p("b.key"),
                }],
                client_ca: Some(p("clients-ca.crt")),
                client_crl: Some(p("clients-ca.crl")),
                client_auth: mcpflip::tls::ClientAuth::Optional,
                min_version: mcpflip::tls::TlsVersion::V1_3,
                ciphers: vec!["TLS13_AES_256_GCM_SHA384".into()],
                acme: Some(mcpflip::tls::AcmeConfig {
                    domains: vec!["mcp.example.com".into()],
                    email: Some("ops@example.com".into()),
                    directory: mcpflip::tls::LETS_ENCRYPT.into(),
                    directory_ca: Some(p("acme-ca.crt")),
                    renew_before: Some(Duration::from_secs(30 * 86_400)),
                    eab: Some(mcpflip::tls::AcmeEab {
                        kid: "kid-1".into(),
                        hmac_key_file: p("eab.key"),
                    }),
                    share: false,
                }),
            }),
            proxy_protocol: true,
        },
        admin: AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            allowed_hosts: Some(vec!["h".into()]),
            allowed_clients: Some(vec!["10.0.0.0/8".parse().expect("address block")]),
            tls: Some(TlsConfig {
                cert: p("admin.crt"),
                key: p("admin.key"),
                sni: vec![],
                client_ca: Some(p("scrapers.crt")),
                client_crl: None,
                client_auth: Default::default(),
                min_version: Default::default(),
                ciphers: Vec::new(),
                acme: None,
            }),
        },
        control: ControlConfig {
            socket: p("c.sock"),
            state_file: p("s.json"),
        },
        drain: DrainConfig {
            deadline: Duration::from_secs(1),
            quiet: Duration::from_secs(1),
            migrate: MigrateMode::Replay,
            migrate_max_sessions: 1,
            migrate_idle: Duration::from_secs(1),
            migrate_call_grace: Duration::from_secs(1),
            migrate_on_404: true,
            migrate_save_interval: Duration::from_secs(1),
        },
        probe: ProbeConfig {
            path: "/mcp".into(),
            transport: ProbeTransport::Sse,
            timeout: Duration::from_secs(1),
            expect_tools: Some(vec!["t".into()]),
            canary: Some(CanaryConfig {
                tool: "t".into(),
                arguments: serde_json::Map::new(),
                expect: Some("ok".into()),
            }),
        },
        watch: WatchConfig {
            window: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            max_error_ratio: 0.5,
            auto_rollback: false,
        },
        proxy: ProxyConfig {
            preserve_host: true,
            x_forwarded: mcpflip::config::XForwarded::Off,
            request_id: true,
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("address block")],
            client_ip_header: Some("X-Real-IP".into()),
            allowed_clients: Some(vec!["192.0.2.0/24".parse().expect("address block")]),
            connect_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            client_body_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            max_request_body: 1024,
            response_header_timeout: Duration::from_secs(1),
            response_body_timeout: Duration::from_secs(1),
            tool_call_timeout: Duration::from_secs(1),
            max_connections: Some(1),
            max_connections_per_ip: Some(1),
            rate_limit: Some(mcpflip::config::RateLimitConfig {
                requests: 1,
                per: Duration::from_secs(1),
                burst: Some(1),
                max_clients: 16,
            }),
            pool_idle_timeout: Duration::from_secs(1),
            workers: 1,
            sse_keepalive: Some(Duration::from_secs(1)),
            allowed_hosts: Some(vec!["h".into()]),
        },
        health: HealthConfig {
            interval: Some(Duration::from_secs(1)),
        },
        log: LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
            access_log: AccessLog::File(p("access.log")),
        },
        slots: vec![SlotConfig {
            name: "blue".into(),
            upstream: "https://127.0.0.1:1".into(),
            weight: 1,
            ca: Some(p("ca.pem")),
            cert: Some(p("client.crt")),
            key: Some(p("client.key")),
            response_header_timeout: Some(Duration::from_secs(1)),
            response_body_timeout: Some(Duration::from_secs(1)),
        }],
        cluster: Some(ClusterConfig {
            etcd: vec!["https://127.0.0.1:2379".into()],
            prefix: "/mcpflip/prod".into(),
            instance: "edge-1".into(),
            ca: Some(p("etcd-ca.pem")),
            cert: Some(p("etcd.crt")),
            key: Some(p("etcd.key")),
            username: Some("mcpflip".into()),
            password_file: Some(p("etcd.password")),
            lease_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
        }),
        source: PathBuf::new(),
        resolved: Default::default(),
    }
}

/// Dotted key paths with their values; an array of tables contributes its
/// first table's keys, an empty table (`canary.arguments`) is a leaf.
fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let table = matches!(v, toml::Value::Table(t) if !t.is_empty());
                let tables = matches!(v, toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table));
                if !table && !tables {
                    out.insert(path.clone(), v.clone());
                }
                keys(&path, v, out);
            }
        }
        toml::Value::Array(a) => {
            if let Some(first @ toml::Value::Table(_)) = a.first() {
                keys(prefix, first, out);
            }
        }
        _ => {}
    }
}

fn config_keys(c: &Config) -> BTreeMap<String, toml::Value> {
    let v = toml::Value::try_from(c).expect("the config serializes");
    let mut out = BTreeMap::new();
    keys("", &v, &mut out);
    out
}

/// `listen.tls.cert` -> (`[listen]`, `tls.cert`); `slot.name` -> (`[[slot]]`, `name`).
fn doc_place(key: &str) -> (String, String) {
    let (section, rest) = key.split_once('.').expect("keys live in sections");
    let heading = if section == "slot" {
        "[[slot]]".to_owned()
    } else {
        format!("[{section}]")
    };
    (heading, rest.to_owned())
}

#[test]
fn every_config_key_and_default_is_in_docs_config_md() {
    let page = sections(&doc("config.md"));
    let mut missing = Vec::new();
    let all = config_keys(&populated());
    // Tables themselves (`tls`, `canary`, `tls.sni`) have a row of their own too.
    let mut documented_keys: BTreeSet<String> = all.keys().cloned().collect();
    for k in all.keys() {
        let mut parts: Vec<&str> = k.split('.').collect();
        while parts.len() > 2 {
            parts.pop();
            documented_keys.insert(parts.join("."));
        }
    }
    for key in &documented_keys {
        let (heading, row) = doc_place(key);
        let documented = page.get(&heading).map(|s| rows(s)).unwrap_or_default();
        if !documented.contains_key(&row) {
            missing.push(format!("{heading} `{row}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "config keys missing from docs/config.md (a row `| \\`key\\` | default | what it does |` under the section's heading): {missing:?}"
    );

    // Defaults: what a config that sets nothing but a slot resolves to.
    let minimal = Config::parse(
        // The first slot sets nothing but what it must; the second serves.
        "[[slot]]\nname = \"a\"\nupstream = \"http://127.0.0.1:3001\"\n\
         [[slot]]\nname = \"b\"\nupstream = \"http://127.0.0.1:3002\"\nweight = 100\n",
        Path::new("minimal.toml"),
    )
    .expect("a minimal config parses");
    let mut wrong = Vec::new();
    for (key, value) in config_keys(&minimal) {
        let (heading, row) = doc_place(&key);
        let Some(cells) = page
            .get(&heading)
            .map(|s| rows(s))
            .and_then(|r| r.get(&row).cloned())
        else {
            continue; // reported above
        };
        let default = cells.first().cloned().unwrap_or_default();
        if default.starts_with("required") {
            continue;
        }
        let want = format!("`{value}`");
        if !default.contains(&want) {
            wrong.push(format!(
                "{heading} `{row}`: the code's default is {want}, docs say {default:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults in docs/config.md differ from the code: {wrong:?}"
    );
}

/// Every command path of the CLI (`mcpflip ctl deploy`) with its command.
fn commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    out.push((path.to_owned(), cmd.clone()));
    for sub in cmd.get_subcommands() {
        commands(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

/// How an argument is written in the docs: `--flag`, or its value name.
fn spelled(arg: &clap::Arg) -> Option<String> {
    if let Some(long) = arg.get_long() {
        return Some(format!("--{long}"));
    }
    if arg.is_positional() {
        return Some(match arg.get_value_names() {
            Some(names) => names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            None => arg.get_id().as_str().to_uppercase(),
        });
    }
    None
}

#[test]
fn every_subcommand_flag_and_variable_is_in_docs_cli_md() {
    let page = sections(&doc("cli.md"));
    let mut all = Vec::new();
    // Unbuilt: each argument appears where it is defined (globals once, on `ctl`).
    commands(&mcpflip::cli::command(), "mcpflip", &mut all);
    let mut missing = Vec::new();
    for (path, cmd) in &all {
        if path == "mcpflip" {
            continue;
        }
        let Some(section) = page.get(path) else {
            missing.push(format!("a `## {path}` section"));
            continue;
        };
        for arg in cmd.get_arguments() {
            if let Some(word) = spelled(arg) {
                if !section.contains(&word) {
                    missing.push(format!("{path}: {word}"));
                }
            }
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                if !section.contains(env.as_ref()) {
                    missing.push(format!("{path}: {env}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "missing from docs/cli.md: {missing:?}");
    let exit = page
        .get("Exit codes")
        .expect("an `## Exit codes` section in docs/cli.md");
    for code in ["| 0 |", "| 1 |", "| 2 |"] {
        assert!(exit.contains(code), "docs/cli.md exit codes lack {code}");
    }
}

#[test]
fn every_control_command_flag_and_error_code_is_in_docs_control_md() {
    let text = doc("control.md");
    let page = sections(&text);
    let root = mcpflip::cli::command();
    let ctl = root.find_subcommand("ctl").expect("ctl");
    let mut missing = Vec::new();
    for cmd in ctl.get_subcommands() {
        let word = cmd.get_name();
        let Some(section) = page.get(word) else {
            missing.push(format!("a `### {word}` section"));
            continue;
        };
        for arg in cmd.get_arguments() {
            if let Some(w) = spelled(arg) {
                if !section.contains(&w) {
                    missing.push(format!("{word}: {w}"));
                }
            }
        }
    }
    let codes = rows(
        page.get("Error codes")
            .expect("an `## Error codes` section"),
    );
    for code in ErrorCode::ALL {
        if !codes.contains_key(code.as_str()) {
            missing.push(format!("error code {}", code.as_str()));
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/control.md: {missing:?}"
    );
}

/// Complements `tests/observability.rs` (every family a scrape has is named
/// in docs/metrics.md, nothing stale): here each family's type and labels.
#[tokio::test]
async fn every_metric_a_scrape_serves_is_in_docs_metrics_md_with_its_type_and_labels() {
    let h = support::Harness::new().await;
    let p = h.start().await;
    let client = support::mcp::http_client();
    // Traffic, so that families that appear once used have series.
    let _ = support::mcp::get_text(&client, &format!("http://{}/mcp", p.public_addr)).await;
    // No Accept header: the Prometheus text format 0.0.4, whose family names
    // are the names users query (`_total` on counters).
    let text = support::mcp::get_text(&client, &format!("http://{}/metrics", p.admin_addr)).await;
    let mut types = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_owned(), (ty.to_owned(), BTreeSet::new()));
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = l.find(['{', ' ']).expect("a sample");
        let sample = &l[..name_end];
        let family = if types.contains_key(sample) {
            sample
        } else {
            ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|s| sample.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or_else(|| panic!("sample {sample} of no family"))
        };
        let labels: Vec<String> = l[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(inner, _)| {
                inner
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
                    .filter(|k| k != "le")
                    .collect()
            })
            .unwrap_or_default();
        if let Some(entry) = types.get_mut(family) {
            entry.1.extend(labels);
        }
    }
    assert!(types.len() >= 10, "a scrape with metrics: {text}");
    let documented = rows(&doc("metrics.md"));
    let mut wrong = Vec::new();
    for (name, (ty, labels)) in &types {
        let Some(cells) = documented.get(name) else {
            wrong.push(format!("{name} ({ty}) is not documented"));
            continue;
        };
        if !cells.first().is_some_and(|c| c.contains(ty.as_str())) {
            wrong.push(format!("{name}: type {ty}, docs say {:?}", cells.first()));
        }
        for label in labels {
            if !cells
                .get(1)
                .is_some_and(|c| c.contains(&format!("`{label}`")))
            {
                wrong.push(format!("{name}: label `{label}` is not documented"));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/metrics.md: {wrong:?}");
    p.shutdown().await;
    h.stop.cancel();
}

/// The committed man pages and completions are what the binary writes now.
#[test]
fn man_pages_and_completions_in_the_repository_are_current() {
    let repo = Path::new(REPO);
    let fresh = tempfile::tempdir().expect("tempdir");
    let written = mcpflip::cli::write_man_pages(fresh.path()).expect("man pages");
    let regenerate =
        "regenerate the man pages and completions as contrib/completions/README.md says";
    let committed: BTreeSet<String> = std::fs::read_dir(repo.join("docs/man"))
        .expect("docs/man")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".1"))
        .collect();
    let made: BTreeSet<String> = written
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(
        committed, made,
        "docs/man differs from the commands; {regenerate}"
    );
    for name in &made {
        let want = std::fs::read(fresh.path().join(name)).expect("fresh page");
        let have = std::fs::read(repo.join("docs/man").join(name)).expect("committed page");
        assert!(want == have, "docs/man/{name} is stale; {regenerate}");
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "mcpflip.bash"),
        (clap_complete::Shell::Zsh, "_mcpflip"),
        (clap_complete::Shell::Fish, "mcpflip.fish"),
    ] {
        let mut want = Vec::new();
        mcpflip::cli::completions(shell, &mut want);
        let have = std::fs::read(repo.join("contrib/completions").join(file)).expect("completion");
        assert!(
            want == have,
            "contrib/completions/{file} is stale; {regenerate}"
        );
    }
}

/// The README points into docs/, not to files outside the repository.
#[test]
fn the_readme_links_the_docs_and_nothing_outside_the_repository() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).expect("README");
    assert!(
        !readme.contains("../shared/"),
        "README.md links outside the repository"
    );
    for page in [
        "cli.md",
        "config.md",
        "control.md",
        "metrics.md",
        "install.md",
    ] {
        assert!(
            readme.contains(&format!("(docs/{page})")),
            "README.md does not link docs/{page}"
        );
        assert!(Path::new(REPO).join("docs").join(page).is_file());
    }
}
