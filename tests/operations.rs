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

/// Whether `proc`'s log has a line containing `text`, waiting up to `within` for it.
async fn logged_within(proc: &Proc, text: &str, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if proc.log_text().contains(text) {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`logged_within`] 5 s.
async fn logged(proc: &Proc, text: &str) -> bool {
    logged_within(proc, text, Duration::from_secs(5)).await
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
    signal(s.proc.pid(), "-HUP");
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
    signal(s.proc.pid(), "-HUP");
    let path = s.config.display().to_string();
    let expected = format!("{path}: routes[0].limits[0].requests: must be at least 1");
    assert!(
        logged_within(&s.proc, &expected, Duration::from_secs(2)).await,
        "{}",
        s.proc.log_text()
    );
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
        // The scheme is case-insensitive (RFC 9110 §11.1).
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let right = request(
                admin,
                "GET",
                path,
                &[("authorization", &format!("{scheme} {token}"))],
                b"",
            )
            .await
            .unwrap();
            assert_eq!(right.status, 200, "{path} {scheme}");
        }
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

/// No password, token or plain caller in any line a sidecar logs or shows: at start, on
/// reload, while Redis stalls and when it returns, for shadow refusals and in the access log;
/// nor in what `--check` prints. The admin token from the environment wins over the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line() {
    let _heavy = HEAVY.lock().await;
    const PASSWORD: &str = "Redis-Pw-7d1f0c";
    const ENV_TOKEN: &str = "Env-Token-0123456789abcdef";
    const FILE_TOKEN: &str = "File-Token-0123456789abcdef";
    const CALLER: &str = "Secret-Caller-42";
    let dir = scratch_dir();
    let redis = Redis::start_on(&dir, free_port(), &["--requirepass", PASSWORD]).await;
    let up = Upstream::start(&dir).await;
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{FILE_TOKEN}\n")).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("secret.yaml");
    let text = |db: u8| {
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\", threads: 1, admin_token_file: \"{}\", access_log: json }}\nupstream: {{ addrs: [\"127.0.0.1:{}\"] }}\nstore: {{ backend: redis, url: \"redis://:{PASSWORD}@127.0.0.1:{}/{db}\", timeout: 100ms, on_error: allow }}\nidentity: [{{ query: user_id }}]\nroutes:\n  - name: sh\n    match: {{ path_prefix: /shadow/ }}\n    shadow: true\n    limits: [{{ requests: 1, window: 60s }}]\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 1000, window: 60s }}]\n",
            token_file.display(),
            up.port,
            redis.port
        )
    };
    std::fs::write(&config, text(0)).unwrap();
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("SLUICE_ADMIN_TOKEN", ENV_TOKEN);
    let mut s = Proc::spawn("secret", &mut cmd, &dir);
    wait_until(&mut s, Duration::from_secs(15), async || {
        get(admin, "/health").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    // The environment's token is the one in use, and one line says so.
    let auth = |t: &str| format!("Bearer {t}");
    let with = |t: String| async move {
        request(admin, "GET", "/metrics", &[("authorization", &t)], b"")
            .await
            .unwrap()
            .status
    };
    assert_eq!(with(auth(ENV_TOKEN)).await, 200);
    assert_eq!(with(auth(FILE_TOKEN)).await, 401);
    assert!(
        logged(&s, "server.admin_token: from the environment (SLUICE_ADMIN_TOKEN), instead of the file's server.admin_token_file").await,
        "{}",
        s.log_text()
    );
    assert!(logged(&s, "store redis redis://:***@127.0.0.1:").await);
    // Shadow refusals, and the access log.
    for _ in 0..3 {
        let r = get(port, &format!("/shadow/x?user_id={CALLER}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(logged(&s, "shadow route sh: would refuse caller").await);
    // A reload that changes the database names store.url, not store.backend.
    std::fs::write(&config, text(1)).unwrap();
    signal(s.pid(), "-HUP");
    assert!(
        logged(&s, "reload: store.url changed").await,
        "{}",
        s.log_text()
    );
    // Redis stalls (SIGSTOP): failures, the breaker and /health's reason; then it returns.
    signal(redis.proc.pid(), "-STOP");
    let mut shown = Vec::new();
    let start = Instant::now();
    loop {
        assert_eq!(
            status(port, &format!("/api?user_id={CALLER}"), &[]).await,
            200
        );
        let h = get(admin, "/health").await.unwrap();
        shown.push(h.body.clone());
        if h.json()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("breaker open"))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{shown:?}");
    }
    signal(redis.proc.pid(), "-CONT");
    let back = Instant::now();
    while !s.log_text().contains("store: answering again") {
        assert!(back.elapsed() < Duration::from_secs(10), "{}", s.log_text());
        assert_eq!(
            status(port, &format!("/api?user_id={CALLER}"), &[]).await,
            200
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `--check` quotes a bad URL without its password.
    let check = Command::new(sluice_bin())
        .args(["--check", "--config"])
        .arg(&config)
        .env(
            "SLUICE_REDIS_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:notaport"),
        )
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check_text = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(
        check_text.contains("redis://:***@127.0.0.1:notaport"),
        "{check_text}"
    );
    s.kill();
    let everything = format!("{}\n{}\n{check_text}", s.log_text(), shown.join("\n"));
    for secret in [PASSWORD, ENV_TOKEN, FILE_TOKEN, CALLER] {
        assert!(
            !everything.contains(secret),
            "{secret} was printed:\n{everything}"
        );
    }
}

/// With no upstream answering, the client gets sluice's JSON error (not Pingora's empty 502 with
/// `Server: Pingora`), the failure is counted, and the access log has its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_gets_sluices_own_502() {
    let dir = scratch_dir();
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let config = dir.join("down.yaml");
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\", access_log: text }}\nupstream: {{ addrs: [\"127.0.0.1:{dead}\"] }}\nstore: {{ backend: memory }}\n{ROUTES}"),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "down", &config, port, admin).await;
    for target in ["/api/a?user_id=ann", "/free/b"] {
        let r = get(port, target).await.unwrap();
        assert_eq!(r.status, 502, "{target}");
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "upstream_unavailable"})
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("server"), None, "no Server: Pingora");
    }
    let m = scrape(admin, None).await;
    for route in ["api", "free"] {
        let labels = [("route", route), ("kind", "unavailable")];
        assert_eq!(value(&m, "sluice_upstream_errors_total", &labels), 1.0);
    }
    let start = Instant::now();
    while s.proc.log_text().matches("status=502").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            s.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that hangs is answered 504 within `upstream.read_timeout` (plus a margin), with
/// sluice's JSON error; the timeout is counted on the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_gets_504_within_the_read_timeout() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("hang.yaml");
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\" }}\nupstream: {{ addrs: [\"127.0.0.1:{}\"], read_timeout: 1s }}\nstore: {{ backend: memory }}\n{ROUTES}", up.port),
    )
    .unwrap();
    let _s = Sidecar::start_with(&dir, "hang", &config, port, admin).await;
    let start = Instant::now();
    let r = request(
        port,
        "GET",
        "/api/slow?user_id=h",
        &[("x-hold-ms", "5000")],
        b"",
    )
    .await
    .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({"error": "upstream_timeout"}));
    assert_eq!(r.header("server"), None);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // A response within the timeout is untouched.
    let ok = request(
        port,
        "GET",
        "/api/fast?user_id=h",
        &[("x-hold-ms", "200")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    let m = scrape(admin, None).await;
    let labels = [("route", "api"), ("kind", "timeout")];
    assert_eq!(value(&m, "sluice_upstream_errors_total", &labels), 1.0);
}

/// An upstream that accepts a request and never reads its body: sending the body stalls once
/// the sockets' buffers are full, and `upstream.write_timeout` ends the sending; Pingora then
/// waits up to `read_timeout` for an early answer from the upstream (one that refused the body,
/// a 413, would come that way), and the client gets a 504, counted as a timeout: bounded by the
/// two timeouts together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_a_body_gets_504_within_the_write_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch_dir();
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_port = deaf.local_addr().unwrap().port();
    // Accepts, reads nothing, holds every connection open.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = deaf.accept().await {
            held.push(c);
        }
    });
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("deaf.yaml");
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\" }}\nupstream: {{ addrs: [\"127.0.0.1:{deaf_port}\"], write_timeout: 1s, read_timeout: 2s }}\nstore: {{ backend: memory }}\n{ROUTES}"),
    )
    .unwrap();
    let _s = Sidecar::start_with(&dir, "deaf", &config, port, admin).await;
    let size = 64 << 20;
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head =
        format!("POST /api/upload?user_id=w HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let start = Instant::now();
    // The body goes as far as the buffers take it; the writer stops when sluice gives up.
    tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut raw)).await;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(read.is_ok(), "no answer within 20 s");
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("upstream_timeout"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "write_timeout + read_timeout: {took:?}"
    );
    let m = scrape(admin, None).await;
    let labels = [("route", "api"), ("kind", "timeout")];
    assert_eq!(value(&m, "sluice_upstream_errors_total", &labels), 1.0);
}

/// A route's `timeout` replaces the upstream's read timeout for that route alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_timeout_bounds_its_upstream_and_no_other_route() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = "store: { backend: memory }
routes:
  - name: quick
    match: { path_prefix: /quick/ }
    timeout: 500ms
  - name: rest
    match: { path_prefix: / }
";
    let s = Sidecar::start(&dir, "s1", up.port, body).await;
    let start = Instant::now();
    let r = request(s.port, "GET", "/quick/x", &[("x-hold-ms", "3000")], b"")
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({"error": "upstream_timeout"}));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    let r = request(s.port, "GET", "/quick/x", &[("x-hold-ms", "100")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // The other route keeps the upstream's 60 s.
    let r = request(s.port, "GET", "/other", &[("x-hold-ms", "1200")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let m = scrape(s.admin_port, None).await;
    let labels = [("route", "quick"), ("kind", "timeout")];
    assert_eq!(value(&m, "sluice_upstream_errors_total", &labels), 1.0);
}
