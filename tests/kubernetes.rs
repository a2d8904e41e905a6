//! contrib/kubernetes/: the manifests pass the Kubernetes schemas
//! (kubernetes-validate, strict), and keep the rules the README states:
//! readiness on /readyz and liveness on /healthz of the admin port, a grace
//! period above the drain deadline of the config they ship, a preStop pause,
//! the config valid for `mcpflip`, the control socket's directory mounted, and
//! a deploy Job that runs `mcpflip ctl deploy` through `kubectl exec` and whose
//! weight rewrite of the ConfigMap yields a config that routes to the new slot.

mod support;

use std::path::Path;
use std::process::Command;

use mcpflip::config::Config;
use serde_json::Value;
use support::tools;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/kubernetes");

/// The YAML documents of a manifest, as JSON (PyYAML of the tools' venv).
fn documents(file: &str) -> Vec<Value> {
    let out = Command::new(tools::venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(Path::new(DIR).join(file))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{file} is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    let out = Command::new(tools::venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(Path::new(DIR).join("mcpflip.yaml"))
        .arg(Path::new(DIR).join("deploy-job.yaml"))
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_deployment_probes_readiness_drains_within_its_grace_period_and_ships_a_valid_config() {
    let docs = documents("mcpflip.yaml");
    let text = find(&docs, "ConfigMap", "mcpflip")["data"]["mcpflip.toml"]
        .as_str()
        .expect("the config in the ConfigMap");
    let config = Config::parse(text, Path::new("configmap/mcpflip.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config is refused: {e}"));

    let pod = &find(&docs, "Deployment", "mcpflip")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let admin = config.admin.addr.port();
    let port_of = |name: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
    };
    assert_eq!(port_of("admin"), Some(u64::from(admin)));
    assert_eq!(port_of("http"), Some(u64::from(config.listen.addr.port())));
    assert!(
        !config.admin.addr.ip().is_loopback(),
        "the kubelet's probes reach the admin listener on the pod IP"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

    // SIGTERM comes after the preStop pause; the drain must fit in what is left.
    let pause: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .and_then(|cmd| cmd.get(1))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse().ok())
        .expect("preStop: sleep N");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        grace > pause + config.drain.deadline.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed the preStop pause {pause} + [drain] deadline {}s",
        config.drain.deadline.as_secs()
    );

    // The config, the socket's and the state file's directories are mounted.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for dir in [
        config.control.socket.parent(),
        config.control.state_file.parent(),
        Some(Path::new("/etc/mcpflip")),
    ] {
        let dir = dir.and_then(Path::to_str).expect("a directory");
        assert!(mounts.contains(&dir), "{dir} is not mounted: {mounts:?}");
    }
    assert_eq!(c["args"][2], "/etc/mcpflip/mcpflip.toml");
    // emptyDir volumes come 0777, which the proxy refuses for these
    // directories: the init container makes each one its user's, 0700.
    let init = pod["initContainers"][0]["command"][2]
        .as_str()
        .expect("init command");
    for dir in [&config.control.socket, &config.control.state_file] {
        let dir = dir.parent().and_then(Path::to_str).expect("dir");
        assert!(
            init.contains("chmod 0700 ")
                && init.contains(dir)
                && init.contains("chown 10001:10001"),
            "the init container does not make {dir} 0700 for uid 10001: {init}"
        );
    }
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    // Slot Services the config's upstreams name.
    for slot in &config.slots {
        let host = slot
            .upstream_uri()
            .expect("uri")
            .host()
            .expect("host")
            .to_owned();
        find(&docs, "Service", &host);
    }
}

#[test]
fn the_deploy_job_runs_ctl_deploy_in_the_pods_and_rewrites_the_weights_for_new_pods() {
    let docs = documents("deploy-job.yaml");
    let job = &find(&docs, "Job", "mcpflip-deploy")["spec"]["template"]["spec"];
    assert_eq!(job["serviceAccountName"], "mcpflip-deploy");
    let script = job["containers"][0]["args"][0]
        .as_str()
        .expect("the script");
    assert!(
        script.contains(r#"kubectl exec "$p" -c mcpflip -- mcpflip ctl deploy "$SLOT""#),
        "{script}"
    );
    let role = find(&docs, "Role", "mcpflip-deploy");
    let grants = |resource: &str, verb: &str| {
        role["rules"].as_array().expect("rules").iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|x| x.iter().any(|v| v == resource))
                && r["verbs"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|v| v == verb))
        })
    };
    assert!(
        grants("pods/exec", "create") && grants("pods", "list") && grants("configmaps", "patch")
    );

    // The script's sed, run on the shipped config, routes new pods to SLOT.
    let start = script.find("sed -i").expect("the weight rewrite");
    let end = start
        + script[start..].find("/tmp/mcpflip.toml").expect("its file")
        + "/tmp/mcpflip.toml".len();
    let sed = &script[start..end];
    let cm = documents("mcpflip.yaml");
    let text = find(&cm, "ConfigMap", "mcpflip")["data"]["mcpflip.toml"]
        .as_str()
        .expect("config")
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mcpflip.toml");
    std::fs::write(&file, &text).expect("write");
    let weights = |slot: &str| {
        let status = Command::new("bash")
            .args([
                "-c",
                &sed.replace("/tmp/mcpflip.toml", file.to_str().expect("utf-8")),
            ])
            .env("SLOT", slot)
            .status()
            .expect("sed runs");
        assert!(status.success());
        let c =
            Config::load(&file).unwrap_or_else(|e| panic!("the rewritten config is refused: {e}"));
        c.slots
            .iter()
            .map(|s| (s.name.clone(), s.weight))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        weights("green"),
        [("blue".to_owned(), 0), ("green".to_owned(), 100)]
    );
    assert_eq!(
        weights("blue"),
        [("blue".to_owned(), 100), ("green".to_owned(), 0)]
    );
}
