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
        "upstream: { addrs: [\"127.0.0.1:9000\"] }\nbuckets:\n  spare: { limits: [{ requests: 5, window: 1s }] }\n",
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
                let (code, stdout, stderr) = check(&rel, &[]);
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
            ("SLUICE_UPSTREAMS", "a:1, b:2"),
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
