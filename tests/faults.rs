//! Store faults with real processes: Redis killed under load, stalled, restarted empty, and
//! reached over TLS with a password. Each test starts its own redis-server.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Three sidecars on one Redis and one upstream, each with `body` after the store section.
async fn three_sidecars(
    dir: &Path,
    redis: &Redis,
    up: &Upstream,
    store: &str,
    body: &str,
) -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let config = format!(
            "store:\n  backend: redis\n  url: \"{}\"\n  timeout: 100ms\n{store}{body}",
            redis.url()
        );
        sidecars.push(Sidecar::start(dir, name, up.port, &config).await);
    }
    sidecars
}

/// One request's outcome in a load loop.
struct Sample {
    target: &'static str,
    at: Duration,
    status: u16,
    took: Duration,
    reply: Reply,
}

/// Sends `targets` round robin over `ports`, one at a time, for `length`; `at_half` runs once
/// halfway through (the fault).
async fn load(
    ports: &[u16],
    targets: &[&'static str],
    length: Duration,
    at_half: impl FnOnce(),
) -> Vec<Sample> {
    let start = Instant::now();
    let mut fault = Some(at_half);
    let mut samples = Vec::new();
    let mut i = 0;
    while start.elapsed() < length {
        if start.elapsed() >= length / 2 {
            if let Some(f) = fault.take() {
                f();
            }
        }
        let target = targets[i % targets.len()];
        let sent = Instant::now();
        let reply = get(ports[i % ports.len()], target)
            .await
            .expect("every request is answered");
        samples.push(Sample {
            target,
            at: start.elapsed(),
            status: reply.status,
            took: sent.elapsed(),
            reply,
        });
        i += 1;
    }
    samples
}

const ROUTES: &str = "routes:
  - name: pay
    match: { path_prefix: /pay/ }
    on_error: deny
    limits: [{ requests: 1000000, window: 60s }]
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 1000000, window: 60s }]
  - name: fresh
    match: { path_prefix: /fresh/ }
    limits: [{ requests: 100, window: 60s }]
  - name: open
    match: { path_prefix: / }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_each_route_follows_its_policy_then_exactness_returns() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let mut redis = Redis::start(&dir).await;
    let port = redis.port;
    let up = Upstream::start(&dir).await;
    let sidecars = three_sidecars(&dir, &redis, &up, "  on_error: allow\n", ROUTES).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    let samples = load(
        &ports,
        &["/api/x?user_id=a", "/pay/x?user_id=a", "/open"],
        Duration::from_secs(3),
        || redis.proc.kill(),
    )
    .await;
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > Duration::from_millis(1600))
        .collect();
    assert!(
        after.len() > 30,
        "load kept going after the kill ({} samples)",
        after.len()
    );
    for s in &samples {
        // The deadline is 100 ms; a request waits for at most one call.
        assert!(
            s.took < Duration::from_millis(600),
            "{} took {:?}",
            s.target,
            s.took
        );
        match s.target {
            "/api/x?user_id=a" | "/open" => assert_eq!(s.status, 200, "{} at {:?}", s.target, s.at),
            _ => assert!(s.status == 200 || s.status == 503, "{}", s.status),
        }
    }
    for s in after.iter().filter(|s| s.target.starts_with("/pay/")) {
        assert_eq!(s.status, 503, "pay fails closed at {:?}", s.at);
        assert_eq!(s.reply.json()["error"], "store_unavailable");
        assert_eq!(s.reply.header("retry-after"), Some("1"));
    }
    // The breaker is open now: no waiting at all.
    let sent = Instant::now();
    assert_eq!(status(ports[0], "/api/x?user_id=a", &[]).await, 200);
    assert!(
        sent.elapsed() < Duration::from_millis(50),
        "{:?}",
        sent.elapsed()
    );
    let health = get(sidecars[0].admin_port, "/health").await.unwrap();
    assert_eq!(health.status, 200);
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["store"].as_str()),
        (Some("degraded"), Some("down"))
    );
    let reason = h["reason"].as_str().unwrap();
    assert!(reason.starts_with("breaker open since "), "{reason}");
    let metrics = get(sidecars[0].admin_port, "/metrics").await.unwrap().body;
    assert!(
        metric(
            &metrics,
            "sluice_requests_total",
            "decision=\"store_error\",route=\"api\""
        ) > 0.0,
        "{metrics}"
    );
    assert!(metrics.contains("sluice_store_breaker_open 1"), "{metrics}");

    // Redis comes back (empty, same port): limiting resumes by itself, exactly.
    let _redis = Redis::start_on(&dir, port, &[]).await;
    let back = Instant::now();
    loop {
        let h = get(sidecars[2].admin_port, "/health").await.unwrap().json();
        if h["store"] == "ok" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "not back after 2 s: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replies = burst(&ports, 300, "/fresh/x?user_id=after_restart").await;
    let metrics = get(sidecars[0].admin_port, "/metrics").await.unwrap().body;
    assert_eq!(
        count_status(&replies, 200),
        100,
        "exact again: {:?}\n{metrics}",
        replies[0]
    );
    assert_eq!(count_status(&replies, 429), 200);
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "{:?}",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_fail_open_beside_a_store_that_fails_closed() {
    let dir = scratch_dir();
    let mut redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let routes = "routes:
  - name: feed
    match: { path_prefix: /feed/ }
    on_error: allow
    limits: [{ requests: 1000000, window: 60s }]
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 1000000, window: 60s }]
  - name: open
    match: { path_prefix: / }
";
    let body = format!(
        "store:\n  backend: redis\n  url: \"{}\"\n  timeout: 100ms\n  on_error: deny\n{routes}",
        redis.url()
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    assert_eq!(status(s.port, "/api/x?user_id=u", &[]).await, 200);
    redis.proc.kill();
    for _ in 0..5 {
        assert_eq!(status(s.port, "/feed/x?user_id=u", &[]).await, 200);
        let api = get(s.port, "/api/x?user_id=u").await.unwrap();
        assert_eq!(api.status, 503);
        assert_eq!(api.json()["error"], "store_unavailable");
        assert_eq!(status(s.port, "/elsewhere", &[]).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_error_local_each_sidecar_enforces_its_share_until_redis_returns() {
    let dir = scratch_dir();
    let mut redis = Redis::start(&dir).await;
    let port = redis.port;
    let up = Upstream::start(&dir).await;
    let routes = "routes:
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 10, window: 60s }]
";
    let store = "  on_error: local\n  fallback_share: 0.34\n";
    let sidecars = three_sidecars(&dir, &redis, &up, store, routes).await;
    assert_eq!(status(sidecars[0].port, "/?user_id=warm", &[]).await, 200);
    redis.proc.kill();
    // ceil(10 * 0.34) = 4 per sidecar while Redis is away.
    for s in &sidecars {
        let targets: Vec<String> = (0..8).map(|_| "/?user_id=c".to_string()).collect();
        let got = keepalive_gets(s.port, &targets).await.unwrap();
        let admitted = got.iter().filter(|&&x| x == 200).count();
        assert_eq!(admitted, 4, "{got:?}");
        assert!(got[4..].iter().all(|&x| x == 429), "{got:?}");
    }
    let refused = get(sidecars[0].port, "/?user_id=c").await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("x-ratelimit-limit"),
        Some("4"),
        "the local share is reported"
    );
    // Redis is back: the local counts are dropped and Redis (empty) decides again.
    let _redis = Redis::start_on(&dir, port, &[]).await;
    let back = Instant::now();
    loop {
        let r = get(sidecars[1].port, "/?user_id=c").await.unwrap();
        if r.status == 200 && r.header("x-ratelimit-limit") == Some("10") {
            assert_eq!(
                r.header("x-ratelimit-remaining"),
                Some("9"),
                "counted by Redis alone"
            );
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(3), "{:?}", r);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_at_most_the_deadline_and_opens_the_breaker() {
    let dir = scratch_dir();
    let redis = Redis::start_on(&dir, free_port(), &["--enable-debug-command", "yes"]).await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "store:\n  backend: redis\n  url: \"{}\"\n  timeout: 100ms\n  on_error: allow\nroutes:\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 1000000, window: 60s }}]\n",
        redis.url()
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    assert_eq!(status(s.port, "/?user_id=u", &[]).await, 200);
    // DEBUG SLEEP blocks Redis for 3 s; the command's own reply is not awaited.
    let mut stall = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stall, b"DEBUG SLEEP 3\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let mut opened = false;
    while start.elapsed() < Duration::from_millis(1500) {
        let sent = Instant::now();
        let r = get(s.port, "/?user_id=u").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            sent.elapsed() < Duration::from_millis(400),
            "{:?}",
            sent.elapsed()
        );
        let h = get(s.admin_port, "/health").await.unwrap().json();
        if h["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("breaker open"))
        {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened while Redis stalled");
    // Once Redis wakes, the breaker closes by itself.
    let wake = Instant::now();
    loop {
        let h = get(s.admin_port, "/health").await.unwrap().json();
        if h["store"] == "ok" {
            break;
        }
        assert!(wake.elapsed() < Duration::from_secs(5), "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cached_as_refused_is_admitted_once_redis_restarts_empty() {
    let dir = scratch_dir();
    let mut redis = Redis::start(&dir).await;
    let port = redis.port;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "store:\n  backend: redis\n  url: \"{}\"\n  timeout: 100ms\n  on_error: deny\nroutes:\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 2, window: 60s }}]\n",
        redis.url()
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    for expected in [200, 200, 429, 429] {
        assert_eq!(status(s.port, "/?user_id=hot", &[]).await, expected);
    }
    let metrics = get(s.admin_port, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("sluice_denial_cache_hits_total 1"),
        "{metrics}"
    );
    // Restarted empty, quickly: Redis would admit `hot` now.
    redis.proc.kill();
    let _redis = Redis::start_on(&dir, port, &[]).await;
    let restarted = Instant::now();
    loop {
        let r = get(s.port, "/?user_id=hot").await.unwrap();
        if r.status == 200 {
            assert_eq!(
                r.header("x-ratelimit-remaining"),
                Some("1"),
                "counted by the new Redis"
            );
            break;
        }
        assert!(matches!(r.status, 429 | 503), "{r:?}");
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "still refused: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_redis_restart_is_sent_again_not_given_to_on_error() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let mut redis = Redis::start(&dir).await;
    let port = redis.port;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "store:\n  backend: redis\n  url: \"{}\"\nroutes:\n  - name: deny\n    match: {{ path_prefix: /deny/ }}\n    on_error: deny\n    limits: [{{ requests: 2, window: 60s }}]\n  - name: allow\n    match: {{ path_prefix: /allow/ }}\n    on_error: allow\n    limits: [{{ requests: 2, window: 60s }}]\n",
        redis.url()
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    for restart in 0..20 {
        // Both workers connect (their connections then die with the old Redis).
        for route in ["deny", "allow"] {
            for _ in 0..4 {
                get(s.port, &format!("/{route}/x?user_id=warm{restart}"))
                    .await
                    .unwrap();
            }
        }
        redis.proc.kill();
        redis = Redis::start_on(&dir, port, &[]).await;
        for route in ["deny", "allow"] {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let target = format!("/{route}/x?user_id=r{restart}");
                seen.push(status(s.port, &target, &[]).await);
            }
            // A 503 would be deny's answer to a failed call, a third 200 allow's.
            assert_eq!(
                seen,
                [200, 200, 429],
                "restart {restart}, on_error: {route}"
            );
        }
    }
    let metrics = get(s.admin_port, "/metrics").await.unwrap().body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("decision=\"store_error\"") && !l.ends_with(" 0")),
        "no request was decided without the store: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_redis_over_tls_with_a_user_password_and_database() {
    let dir = scratch_dir();
    make_certs(&dir, "");
    let port = free_port();
    let d = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca) = (d("server.crt"), d("server.key"), d("ca.crt"));
    let _redis = Redis::start_on(
        &dir,
        port,
        &[
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--user",
            "sluice",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ],
    )
    .await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "store:\n  backend: redis\n  url: \"rediss://sluice:s3cret-pass@127.0.0.1:{port}/3\"\n  tls_ca_file: \"{ca}\"\nroutes:\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 3, window: 60s }}]\n"
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    for expected in [200, 200, 200, 429] {
        assert_eq!(status(s.port, "/?user_id=tls", &[]).await, expected);
    }
    assert_eq!(
        get(s.admin_port, "/health").await.unwrap().json()["store"],
        "ok"
    );
    // The keys went to database 3, through the TLS port.
    let out = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            &ca,
            "-p",
            &port.to_string(),
            "--user",
            "sluice",
            "--pass",
            "s3cret-pass",
            "-n",
            "3",
            "--no-auth-warning",
            "DBSIZE",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // A wrong password is a store fault, with a reason.
    let bad = body.replace("s3cret-pass", "wrong-pass-123");
    let b = Sidecar::start(&dir, "bad", up.port, &bad).await;
    assert_eq!(
        status(b.port, "/?user_id=tls", &[]).await,
        200,
        "on_error: allow"
    );
    let h = get(b.admin_port, "/health").await.unwrap().json();
    assert_eq!(h["store"], "down", "{h}");
}
