//! The deployment files, checked offline: the Kubernetes manifests parse and describe a real
//! sidecar pod whose embedded config passes `--check`; the systemd unit verifies; the
//! Dockerfile has its entry point, health check and separate images. (`.ci/run` also runs
//! checkov over the manifests.)

mod common;

use common::{repo_root, scratch_dir, sluice_bin};
use serde_yaml::Value;
use std::process::Command;

fn manifests() -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            for key in ["apiVersion", "kind"] {
                assert!(value[key].is_string(), "{name}: {key}");
            }
            assert!(
                value["metadata"]["name"].is_string(),
                "{name}: metadata.name"
            );
            docs.push((name, value));
        }
    }
    docs
}

use serde::Deserialize;

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn the_kubernetes_example_is_a_sidecar_pod_whose_config_checks() {
    let docs = manifests();
    // The embedded config passes --check (its token file is the mounted Secret: a stand-in).
    let config_map = find(&docs, "ConfigMap", "sluice-config");
    let text = config_map["data"]["sluice.yaml"].as_str().unwrap();
    let config: Value = serde_yaml::from_str(text).unwrap();
    let dir = scratch_dir();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let file = dir.join("sluice.yaml");
    std::fs::write(
        &file,
        text.replace("/var/run/sluice/token", &token.display().to_string()),
    )
    .unwrap();
    let out = Command::new(sluice_bin())
        .arg("--check")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deployment = find(&docs, "Deployment", "api");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let container = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("container {name}"))
    };
    let (app, sluice) = (container("app"), container("sluice"));
    // The app listens on the pod's loopback, where sluice forwards to it.
    let app_args: Vec<&str> = app["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let app_listen = app_args[app_args.iter().position(|a| *a == "--listen").unwrap() + 1];
    assert!(app_listen.starts_with("127.0.0.1:"), "{app_listen}");
    assert_eq!(config["upstream"]["addrs"][0].as_str(), Some(app_listen));
    // The Service targets sluice's port, which is the port sluice listens on.
    let service = find(&docs, "Service", "api");
    let target = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
    let ports = sluice["ports"].as_sequence().unwrap();
    let named = |n: &str| {
        ports
            .iter()
            .find(|p| p["name"] == n)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert_eq!(
        named(target),
        port_of(config["server"]["listen"].as_str().unwrap())
    );
    assert!(app["ports"].is_null(), "the app exposes no port");
    // Probes on the admin /health.
    let admin = port_of(config["server"]["admin_listen"].as_str().unwrap());
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &sluice[probe]["httpGet"];
        assert_eq!(get["path"], "/health", "{probe}");
        assert_eq!(named(get["port"].as_str().unwrap()), admin, "{probe}");
    }
    // Every container: resources, non-root, read-only, no privilege escalation.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    for (_, doc) in docs.iter().filter(|(_, d)| d["kind"] == "Deployment") {
        for c in doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let name = c["name"].as_str().unwrap();
            for r in ["requests", "limits"] {
                assert!(c["resources"][r]["cpu"].is_string(), "{name} {r}");
                assert!(c["resources"][r]["memory"].is_string(), "{name} {r}");
            }
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        }
    }
    // Shutdown: the pod waits out sluice's grace period and drain, and the app outlives them.
    let secs = |v: &Value| {
        v.as_str()
            .and_then(|t| t.strip_suffix('s'))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (grace, drain) = (
        secs(&config["server"]["grace_period"]),
        secs(&config["server"]["drain_timeout"]),
    );
    assert!(
        grace > 0,
        "endpoint removal lags SIGTERM: keep serving a while"
    );
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination >= grace + drain,
        "{termination} < {grace} + {drain}"
    );
    let linger: u64 = app_args[app_args.iter().position(|a| *a == "--linger").unwrap() + 1]
        .parse()
        .unwrap();
    assert!(linger >= grace + drain, "the app stays while sluice drains");
    // And a Redis for the example, which the config points at.
    find(&docs, "Deployment", "redis");
    let redis = find(&docs, "Service", "redis");
    assert!(config["store"]["url"]
        .as_str()
        .unwrap()
        .contains(redis["metadata"]["name"].as_str().unwrap()));
}

#[test]
fn the_systemd_unit_checks_before_it_starts_and_reloads_with_sighup() {
    let path = repo_root().join("deploy/systemd/sluice.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    let has = |l: &str| lines.contains(&l);
    assert!(has(
        "ExecStartPre=/usr/local/bin/sluice --config /etc/sluice/sluice.yaml --check"
    ));
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
    // systemd waits out the default drain (30 s) before it kills.
    assert!(has("KillSignal=SIGTERM"));
    let stop: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec={stop}");
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(has(hardening), "{hardening}");
    }
    // systemd's own verifier, against the binary this build made.
    let analyze = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "systemd-analyze is missing (Debian package systemd)"
    );
    let dir = scratch_dir();
    let copy = dir.join("sluice.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sluice", &sluice_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn the_dockerfile_builds_two_images_with_an_entrypoint_and_health_check() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 3, "build, sluice, upstream-demo: {stages:?}");
    for stage in ["AS build", "AS sluice", "AS upstream-demo"] {
        assert!(stages.iter().any(|s| s.ends_with(stage)), "{stage}");
    }
    assert!(text.contains("ENTRYPOINT [\"sluice\"]"));
    assert!(text.contains("ENTRYPOINT [\"upstream-demo\"]"));
    assert!(text.contains("HEALTHCHECK"));
    // Dependencies build in their own layer, before the sources are copied.
    let deps = text.find("cargo build").unwrap();
    let sources = text.find("COPY src src").unwrap();
    assert!(deps < sources, "dependency layer first");
    assert!(text.contains("USER 10001"));
}
