//! Operating a sidecar: /metrics read by a real Prometheus text parser, reload on SIGHUP,
//! shadow routes, the admin token and the JSON access log, against real processes.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// `/metrics` parsed by prometheus-parse: the value of `name` with every label in `labels`.
async fn scrape(admin_port: u16, token: Option<&str>) -> prometheus_parse::Scrape {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let r = request(admin_port, "GET", "/metrics", &headers, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)));
    match sample.map(|x| &x.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn requests(s: &prometheus_parse::Scrape, route: &str, decision: &str) -> f64 {
    value(
        s,
        "sluice_requests_total",
        &[("route", route), ("decision", decision)],
    )
}

const ROUTES: &str = "routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 2, window: 60s }]
  - name: trial
    match: { path_prefix: /trial/ }
    shadow: true
    limits: [{ requests: 1, window: 60s }]
  - name: free
    match: { path_prefix: /free/ }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_decision_and_a_shadow_route_never_refuses() {
    let (_redis, _up, s) = one_sidecar(ROUTES).await;
    let before = scrape(s.admin_port, None).await;
    assert_eq!(
        requests(&before, "api", "admitted"),
        0.0,
        "every route starts at zero"
    );
    let mut statuses = Vec::new();
    for target in [
        "/api/x?user_id=m",
        "/api/x?user_id=m",
        "/api/x?user_id=m",
        "/trial/x?user_id=m",
        "/trial/x?user_id=m",
        "/trial/x?user_id=m",
        "/free/x",
        "/nowhere",
    ] {
        statuses.push(status(s.port, target, &[]).await);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 200, 200, 200]);
    let bad = raw(
        s.port,
        b"GET x:/api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(raw_status(&bad), Some(400));
    let m = scrape(s.admin_port, None).await;
    assert_eq!(requests(&m, "api", "admitted"), 2.0);
    assert_eq!(requests(&m, "api", "limited"), 1.0);
    assert_eq!(requests(&m, "trial", "admitted"), 1.0);
    assert_eq!(
        requests(&m, "trial", "shadow_limited"),
        2.0,
        "would-be refusals are counted"
    );
    assert_eq!(requests(&m, "trial", "limited"), 0.0);
    assert_eq!(requests(&m, "free", "unlimited"), 1.0);
    assert_eq!(requests(&m, "(none)", "unlimited"), 1.0);
    assert_eq!(requests(&m, "api", "store_error"), 0.0);
    assert_eq!(
        value(
            &m,
            "sluice_rejected_requests_total",
            &[("reason", "invalid_target")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "sluice_upstream_responses_total", &[("class", "2xx")]),
        7.0
    );
    assert_eq!(value(&m, "sluice_store_up", &[]), 1.0);
    assert_eq!(value(&m, "sluice_store_breaker_open", &[]), 0.0);
    assert_eq!(
        value(
            &m,
            "sluice_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Six requests on limited routes: the third trial request was refused from the denial
    // cache (the second one's refusal), the other five were store calls, each in the histogram.
    let calls = m
        .samples
        .iter()
        .find(|x| x.metric == "sluice_store_call_seconds")
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        });
    assert_eq!(calls, Some(5.0));
    assert_eq!(value(&m, "sluice_denial_cache_hits_total", &[]), 1.0);
    assert!(
        s.proc
            .log_text()
            .contains("shadow route trial: would refuse"),
        "would-be refusals are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_rules_and_an_invalid_file_keeps_the_old_ones() {
    let (_redis, _up, mut s) = one_sidecar(ROUTES).await;
    let original = std::fs::read_to_string(&s.config).unwrap();
    for expected in [200, 200, 429] {
        assert_eq!(status(s.port, "/api/x?user_id=r", &[]).await, expected);
    }
    // Raise the limit, and change a setting that needs a restart.
    let raised = original
        .replace("requests: 2, window: 60s", "requests: 4, window: 60s")
        .replace("threads: 2", "threads: 3");
    std::fs::write(&s.config, &raised).unwrap();
    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    hup(s.proc.pid());
    let sent = Instant::now();
    loop {
        let r = get(s.port, "/api/x?user_id=r").await.unwrap();
        if r.status == 200 {
            assert_eq!(r.header("x-ratelimit-limit"), Some("4"));
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "not applied within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.proc.assert_running();
    let log = s.proc.log_text();
    assert!(
        log.contains("server.threads changed but take effect only after a restart"),
        "{log}"
    );
    let m = scrape(s.admin_port, None).await;
    assert_eq!(
        value(&m, "sluice_config_reloads_total", &[("result", "success")]),
        1.0
    );
    // An invalid file is refused whole: logged as --check reports it, counted, old rules stay.
    let broken = raised.replace("requests: 4, window: 60s", "requests: 0, window: 60s");
    std::fs::write(&s.config, &broken).unwrap();
    hup(s.proc.pid());
    let path = s.config.display().to_string();
    let expected = format!("{path}: routes[0].limits[0].requests: must be at least 1");
    let sent = Instant::now();
    while !s.proc.log_text().contains(&expected) {
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{}",
            s.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.proc.assert_running();
    let m = scrape(s.admin_port, None).await;
    assert_eq!(
        value(&m, "sluice_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    let r = get(s.port, "/api/x?user_id=r").await.unwrap();
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some("4"),
        "the last good config serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_metrics_and_stats_but_not_health() {
    let token = "0123456789abcdef0123";
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{ROUTES}");
    let config = dir.join("t.yaml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\", admin_token: \"{token}\" }}\nupstream: {{ addrs: [\"127.0.0.1:{}\"] }}\n{body}", up.port),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "t", &config, port, admin).await;
    for path in ["/metrics", "/stats/alice"] {
        let missing = request(admin, "GET", path, &[], b"").await.unwrap();
        assert_eq!(missing.status, 401, "{path}");
        assert_eq!(missing.json()["error"], "missing_token");
        assert!(missing
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let wrong = request(
            admin,
            "GET",
            path,
            &[("authorization", "Bearer 0123456789abcdef0124")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(wrong.json()["error"], "invalid_token");
        let basic = request(admin, "GET", path, &[("authorization", token)], b"")
            .await
            .unwrap();
        assert_eq!(basic.status, 401, "the scheme is Bearer");
        let right = request(
            admin,
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(right.status, 200, "{path}");
    }
    assert_eq!(get(s.admin_port, "/health").await.unwrap().status, 200);
    // The token also comes from the environment, and --check rejects a short one.
    let out = Command::new(sluice_bin())
        .args(["--check", "--config"])
        .arg(&config)
        .env("SLUICE_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "server.admin_token (from SLUICE_ADMIN_TOKEN): must be 16-256 visible ASCII characters"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_access_log_has_one_parseable_line_per_request() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{ROUTES}");
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("log.yaml");
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\", access_log: json, access_log_caller: plain }}\nupstream: {{ addrs: [\"127.0.0.1:{}\"] }}\n{body}", up.port),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "log", &config, port, admin).await;
    let targets = [
        "/api/a?user_id=ann",
        "/api/a?user_id=ann",
        "/api/a?user_id=ann",
        "/free/b",
        "/api/%zz",
    ];
    for t in targets {
        get(port, t).await.unwrap();
    }
    let lines = || -> Vec<serde_json::Value> {
        s.proc
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("each access-log line is JSON"))
            .collect()
    };
    let sent = Instant::now();
    while lines().len() < targets.len() && sent.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = lines();
    assert_eq!(lines.len(), targets.len(), "one line per request");
    let decisions: Vec<&str> = lines
        .iter()
        .map(|l| l["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "admitted",
            "admitted",
            "limited",
            "unlimited",
            "invalid_path"
        ]
    );
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 429, 200, 400]);
    assert_eq!(lines[0]["route"], "api");
    assert_eq!(lines[0]["caller"], "ann");
    assert_eq!(lines[0]["path"], "/api/a");
    assert!(lines[0]["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(
        lines[2]["upstream_ms"].is_null(),
        "a 429 never reached the upstream"
    );
    assert!(lines[0]["total_ms"].as_f64().unwrap() >= lines[0]["upstream_ms"].as_f64().unwrap());
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
}
