//! `sluice --check`: one fixture per validation rule, each asserting its exact message.
//!
//! A fixture states what it expects in `# expect: <message>` lines; the command must exit 2
//! and print exactly those lines, each prefixed with the file name.

mod common;

use common::{repo_root, sluice_bin};
use std::path::Path;
use std::process::{Command, Output};

fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.current_dir(repo_root()).args(args);
    for var in [
        "SLUICE_LISTEN",
        "SLUICE_ADMIN_LISTEN",
        "SLUICE_UPSTREAMS",
        "SLUICE_REDIS_URL",
        "SLUICE_INSTANCE",
        "SLUICE_ADMIN_TOKEN",
        "SLUICE_REDIS_NODES",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run sluice")
}

fn check(path: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = sluice(&["--config", path, "--check"], env);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn every_bad_fixture_fails_with_its_exact_message() {
    let dir = repo_root().join("tests/fixtures/check");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 25,
        "fixtures missing from {}",
        dir.display()
    );
    for fixture in fixtures {
        let rel = fixture
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(&fixture).unwrap();
        let expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|m| format!("{rel}: {m}"))
            .collect();
        assert!(!expected.is_empty(), "{rel} has no '# expect:' line");
        let (code, stdout, stderr) = check(&rel, &[]);
        assert_eq!(code, 2, "{rel}: exit status (stdout {stdout:?})");
        assert_eq!(stderr.lines().collect::<Vec<_>>(), expected, "{rel}");
    }
}

#[test]
fn a_bucket_no_route_draws_from_is_a_warning_not_an_error() {
    let dir = common::scratch_dir();
    let path = dir.join("unused-bucket.yaml");
    std::fs::write(
        &path,
        "upstream: { addrs: [\"127.0.0.1:9000\"] }\nbuckets:\n  spare: { limits: [{ requests: 5, window: 1s }] }\nroutes:\n  - { name: a, match: { path_prefix: / }, limits: [{ requests: 1, window: 1s }] }\n",
    )
    .unwrap();
    let shown = path.display().to_string();
    let (code, stdout, stderr) = check(&shown, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{shown}: ok"));
    assert_eq!(
        stderr.trim(),
        format!("warning: {shown}: buckets.spare: no route draws from this bucket (add it to a route's buckets, or remove it)")
    );
}

#[test]
fn every_shipped_config_passes() {
    let mut checked = 0;
    for dir in ["conf", "nginx", "docker"] {
        let Ok(entries) = std::fs::read_dir(repo_root().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") && is_sluice_config(&path) {
                let rel = path
                    .strip_prefix(repo_root())
                    .unwrap()
                    .display()
                    .to_string();
                let (mut code, mut stdout, mut stderr) = check(&rel, &[]);
                // The Compose config names its upstream by its Compose service, which resolves
                // only on the Compose network: here --check says exactly that, and passes once
                // the name is given an address.
                if stderr.contains("cannot resolve \"upstream-demo:9000\"") {
                    // One line, exit 2; the resolver's own words after the colon vary
                    // ("Name or service not known", "Temporary failure in name resolution").
                    assert_eq!(code, 2, "{stderr}");
                    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
                    assert!(
                        stderr.starts_with(&format!(
                            "{rel}: upstream.addrs[0]: cannot resolve \"upstream-demo:9000\": "
                        )),
                        "{stderr}"
                    );
                    (code, stdout, stderr) = check(&rel, &[("SLUICE_UPSTREAMS", "127.0.0.1:9000")]);
                }
                assert_eq!(
                    (code, stdout.trim()),
                    (0, format!("{rel}: ok").as_str()),
                    "{stderr}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "conf/sluice.yaml and conf/sluice-memory.yaml at least"
    );
}

fn is_sluice_config(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("routes:"))
}

#[test]
fn a_missing_file_is_named_and_exits_2() {
    let (code, _, stderr) = check("conf/nope.yaml", &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("conf/nope.yaml: cannot read config file: "),
        "{stderr}"
    );
    // Without --config the default is conf/sluice.yaml, relative to the working directory.
    let out = sluice(&["--check"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "conf/sluice.yaml: ok"
    );
}

#[test]
fn environment_overrides_are_validated_and_named() {
    let (code, _, stderr) = check(
        "conf/sluice.yaml",
        &[("SLUICE_LISTEN", "nowhere"), ("SLUICE_UPSTREAMS", "a:1,b")],
    );
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "conf/sluice.yaml: server.listen (from SLUICE_LISTEN): invalid socket address \"nowhere\" (use e.g. 127.0.0.1:8080 or [::1]:8080)",
            "conf/sluice.yaml: upstream.addrs[1]: invalid address \"b\" (use host:port)",
        ]
    );
    let ok = check(
        "conf/sluice-memory.yaml",
        &[
            ("SLUICE_REDIS_URL", "redis://10.0.0.1:6379"),
            ("SLUICE_UPSTREAMS", "127.0.0.1:1, localhost:2"),
        ],
    );
    assert_eq!(ok.0, 0, "{}", ok.2);
}

#[test]
fn an_invalid_file_stops_the_proxy_before_it_listens() {
    let out = sluice(&["--config", "tests/fixtures/check/zero-window.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "tests/fixtures/check/zero-window.yaml: routes[0].limits[0].window: must be longer than 0"
    );
}

/// A port in use is a failure at start (exit 1), reported as such, and `listening on` is never
/// logged for an address the sidecar could not bind.
#[test]
fn a_port_in_use_exits_1_without_claiming_to_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = sluice(
        &["--config", "conf/sluice-memory.yaml"],
        &[
            ("SLUICE_LISTEN", addr.as_str()),
            ("SLUICE_ADMIN_LISTEN", admin.as_str()),
            ("RUST_LOG", "info"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("sluice: cannot listen on {addr} (proxy): ")),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

/// `--check` catches what would fail the start: an upstream name that does not resolve. And it
/// warns (exit 0) about settings that can never take effect.
#[test]
fn check_catches_unresolvable_upstreams_and_warns_about_dead_settings() {
    let dir = common::scratch_dir();
    let path = dir.join("dead.yaml");
    std::fs::write(
        &path,
        "upstream: { addrs: [\"127.0.0.1:9000\", \"no-such-host.invalid:80\"] }\n",
    )
    .unwrap();
    let shown = path.display().to_string();
    let (code, _, stderr) = check(&shown, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{shown}: upstream.addrs[1]: cannot resolve \"no-such-host.invalid:80\": "
        )),
        "{stderr}"
    );
    std::fs::write(
        &path,
        "server: { max_uri_bytes: 1048576 }\nupstream: { addrs: [\"127.0.0.1:9000\"] }\nstore: { backend: memory, url: \"redis://h:1\", lease_ttl: 5s }\nrequest_ids: { header: x-request-id }\nroutes:\n  - { name: a, match: { path_prefix: / }, shadow: true, on_error: deny, limits: [] }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check(&shown, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{shown}: ok"));
    let warning = |w: &str| format!("warning: {shown}: {w}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            warning("request_ids: no trusted_proxies: an id is believed only from a trusted proxy, so none ever is"),
            warning("store.url: applies to a Redis store only; the memory backend ignores it"),
            warning("store.lease_ttl: applies to a Redis store only; the memory backend ignores it"),
            warning("routes[0].shadow: the route has no limit, so there is nothing to try in shadow"),
            warning("routes[0].on_error: the route has no limit, so it never asks the store"),
            warning("server.max_uri_bytes: above what can arrive: Pingora reads a request head of at most 1048575 bytes, so a target is at most 1048558"),
            warning("routes: no route has a limit: every request is forwarded unlimited"),
        ]
    );
}
