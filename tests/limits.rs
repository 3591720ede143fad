//! The limiter end to end: real Redis, real sidecars, real upstream, over HTTP.

mod common;

use common::*;
use std::time::Duration;

const API_5_PER_MIN: &str = "routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 5, window: 60s }]
  - name: open
    match: { path_prefix: / }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_admits_exactly_l_then_answers_429_with_every_header() {
    let (_redis, _up, s) = one_sidecar(API_5_PER_MIN).await;
    for expected_remaining in (0..5).rev() {
        let r = get(s.port, "/api/data?user_id=alice").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["user_id"], "alice");
        assert_eq!(r.header("ratelimit-policy"), Some("\"api\";q=5;w=60"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(expected_remaining.to_string().as_str())
        );
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((59..=60).contains(&reset), "reset {reset}");
        assert_eq!(
            r.header("ratelimit").unwrap(),
            format!("\"api\";r={expected_remaining};t={reset}")
        );
        assert_eq!(r.header("via"), Some("1.1 s1"));
    }
    let r = get(s.port, "/api/data?user_id=alice").await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    let body = r.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["route"], "api");
    assert_eq!(body["limit"], 5);
    assert_eq!(body["window_s"], 60);
    assert_eq!(body["retry_after"], retry);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("ratelimit").unwrap(),
        format!("\"api\";r=0;t={retry}")
    );
    assert_eq!(r.header("via"), Some("1.1 s1"));
    // Another caller is untouched, and an unlimited route carries no RateLimit headers.
    assert_eq!(
        get(s.port, "/api/data?user_id=bob").await.unwrap().status,
        200
    );
    let open = get(s.port, "/other?user_id=alice").await.unwrap();
    assert_eq!(open.status, 200);
    assert_eq!(open.header("ratelimit"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_keeps_the_connection_open_and_head_gets_no_body() {
    let (_redis, _up, s) =
        one_sidecar(API_5_PER_MIN.replace("requests: 5", "requests: 1").as_str()).await;
    assert_eq!(get(s.port, "/api/x?user_id=k").await.unwrap().status, 200);
    // Three requests on one keep-alive connection: every 429 arrives whole, the connection stays.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for i in 0..3 {
        conn.write_all(b"GET /api/x?user_id=k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(b"}") {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "request {i}: connection closed after {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: keep-alive"),
            "{text}"
        );
    }
    let head = request(s.port, "HEAD", "/api/x?user_id=k", &[], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 429);
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_requests_reach_the_upstream_unchanged() {
    let (_redis, _up, s) = one_sidecar(API_5_PER_MIN).await;
    let body = vec![b'x'; 100_000];
    let headers = [
        ("x-echo", "1"),
        ("x-custom", "kept"),
        ("x-forwarded-for", "203.0.113.5"),
        ("x-real-ip", "203.0.113.5"),
        ("forwarded", "for=203.0.113.5;proto=https"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ];
    let r = request(
        s.port,
        "POST",
        "/api/items?user_id=al%20ice&b=2",
        &headers,
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/api/items");
    assert_eq!(seen["query"], "user_id=al%20ice&b=2");
    assert_eq!(seen["user_id"], "al ice");
    assert_eq!(seen["body_bytes"], 100_000);
    assert_eq!(seen["headers"]["x-custom"][0], "kept");
    // The client is no trusted proxy: what it claimed about its address, scheme and host is
    // replaced by what sluice saw (one value each), never passed on.
    let header = |name: &str| seen["headers"][name].clone();
    assert_eq!(header("x-forwarded-for"), serde_json::json!(["127.0.0.1"]));
    assert_eq!(header("x-real-ip"), serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        header("forwarded"),
        serde_json::json!(["for=127.0.0.1;proto=http"])
    );
    assert_eq!(header("x-forwarded-proto"), serde_json::json!(["http"]));
    assert_eq!(header("x-forwarded-host"), serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["headers"]["via"][0], "1.1 s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_slides() {
    let routes = "routes:\n  - name: api\n    match: { path_prefix: / }\n    limits: [{ requests: 2, window: 1s }]\n";
    let (_redis, _up, s) = one_sidecar(routes).await;
    let first = std::time::Instant::now();
    assert_eq!(get(s.port, "/a?user_id=w").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(s.port, "/a?user_id=w").await.unwrap().status, 200);
    let refused = get(s.port, "/a?user_id=w").await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    // The first request leaves the window one second after it was made; the second stays.
    tokio::time::sleep(Duration::from_millis(1050).saturating_sub(first.elapsed())).await;
    assert_eq!(get(s.port, "/a?user_id=w").await.unwrap().status, 200);
    assert_eq!(get(s.port, "/a?user_id=w").await.unwrap().status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limits_on_one_route_must_both_admit() {
    let routes = "routes:\n  - name: api\n    match: { path_prefix: / }\n    limits:\n      - { requests: 2, window: 1s }\n      - { requests: 3, window: 10s }\n";
    let (_redis, _up, s) = one_sidecar(routes).await;
    let r = get(s.port, "/?user_id=t").await.unwrap();
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"api-1s\";q=2;w=1, \"api-10s\";q=3;w=10")
    );
    // Remaining: 1 of 2 (1 s) and 2 of 3 (10 s): the 1 s limit has least remaining.
    assert_eq!(r.header("ratelimit"), Some("\"api-1s\";r=1;t=1"));
    assert_eq!(get(s.port, "/?user_id=t").await.unwrap().status, 200);
    let refused = get(s.port, "/?user_id=t").await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["window_s"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = get(s.port, "/?user_id=t").await.unwrap();
    assert_eq!(third.status, 200);
    // Both limits at 0 remaining: the tie goes to the longer window.
    assert!(
        third
            .header("ratelimit")
            .unwrap()
            .starts_with("\"api-10s\";r=0;t="),
        "{third:?}"
    );
    let refused = get(s.port, "/?user_id=t").await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.json()["window_s"],
        10,
        "the 429 reports the limit that refuses longest"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((8..=9).contains(&retry), "retry-after {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_path_and_method_in_order() {
    let routes = "routes:
  - name: login
    match: { path: /login, methods: [POST] }
    limits: [{ requests: 1, window: 60s }]
  - name: writes
    match: { path_prefix: /api/, methods: [post, PUT] }
    limits: [{ requests: 1, window: 60s }]
  - name: reads
    match: { path_prefix: /api/ }
    limits: [{ requests: 2, window: 60s }]
  - name: open
    match: { path_prefix: / }
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    let post =
        |path: &'static str| async move { request(s.port, "POST", path, &[], b"x").await.unwrap() };
    assert_eq!(post("/login?user_id=m").await.status, 200);
    assert_eq!(post("/login?user_id=m").await.json()["route"], "login");
    assert_eq!(post("/api/a?user_id=m").await.status, 200);
    assert_eq!(post("/api/a?user_id=m").await.json()["route"], "writes");
    // GET goes to "reads", a separate quota; DELETE too (no methods listed).
    assert_eq!(
        get(s.port, "/api/a?user_id=m")
            .await
            .unwrap()
            .header("ratelimit-policy"),
        Some("\"reads\";q=2;w=60")
    );
    assert_eq!(
        request(s.port, "DELETE", "/api/a?user_id=m", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(s.port, "/api/a?user_id=m").await.unwrap().json()["route"],
        "reads"
    );
    // An exact path matches only itself; an encoded path cannot dodge its route.
    assert_eq!(
        get(s.port, "/login?user_id=m")
            .await
            .unwrap()
            .header("ratelimit"),
        None
    );
    assert_eq!(
        request(s.port, "POST", "/login/x?user_id=m", &[], b"")
            .await
            .unwrap()
            .header("ratelimit"),
        None
    );
    assert_eq!(get(s.port, "/%61pi/a?user_id=m").await.unwrap().status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_replace_the_limits_for_named_callers() {
    let routes = "routes:
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 1, window: 60s }]
    overrides:
      vip: { limits: [{ requests: 3, window: 60s }] }
      robot: { limits: [] }
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    for _ in 0..3 {
        let r = get(s.port, "/?user_id=vip").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"api\";q=3;w=60"));
    }
    assert_eq!(get(s.port, "/?user_id=vip").await.unwrap().status, 429);
    assert_eq!(get(s.port, "/?user_id=pleb").await.unwrap().status, 200);
    assert_eq!(get(s.port, "/?user_id=pleb").await.unwrap().status, 429);
    for _ in 0..5 {
        let r = get(s.port, "/?user_id=robot").await.unwrap();
        assert_eq!(r.status, 200, "an empty override is unlimited");
        assert_eq!(r.header("ratelimit"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_sources_are_tried_in_order_and_name_one_caller() {
    let routes = "trusted_proxies: [\"127.0.0.1/32\"]
routes:
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 1, window: 60s }]
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    // The query parameter names the caller even when a header is present.
    assert_eq!(
        status(s.port, "/?user_id=ann", &[("x-user-id", "ben")]).await,
        200
    );
    // The same caller through the header is already counted.
    assert_eq!(status(s.port, "/", &[("x-user-id", "ann")]).await, 429);
    // "ben" (header) was never counted, although the first request carried his header.
    assert_eq!(status(s.port, "/", &[("x-user-id", "ben")]).await, 200);
    // No query or header: the client IP, read through the trusted proxy 127.0.0.1.
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(status(s.port, "/", &xff("198.51.100.1")).await, 200);
    assert_eq!(status(s.port, "/", &xff("198.51.100.1")).await, 429);
    assert_eq!(status(s.port, "/", &xff("198.51.100.2")).await, 200);
    // Empty values count as absent: this is the IP 198.51.100.2 again.
    assert_eq!(
        status(
            s.port,
            "/?user_id=",
            &[("x-user-id", ""), ("x-forwarded-for", "198.51.100.2")]
        )
        .await,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_choose_its_ip() {
    let routes = "identity: [{ client_ip: true }]\nroutes:\n  - name: api\n    match: { path_prefix: / }\n    limits: [{ requests: 1, window: 60s }]\n";
    let (_redis, _up, s) = one_sidecar(routes).await;
    assert_eq!(
        status(s.port, "/", &[("x-forwarded-for", "198.51.100.1")]).await,
        200
    );
    // A different forged address is still the same peer, 127.0.0.1.
    assert_eq!(
        status(s.port, "/", &[("x-forwarded-for", "198.51.100.2")]).await,
        429
    );
    assert_eq!(
        status(s.port, "/", &[("x-real-ip", "198.51.100.3")]).await,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_usage_and_never_consume_quota() {
    let routes = "routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 5, window: 60s }, { requests: 50, window: 1h }]
    overrides:
      vip: { limits: [{ requests: 500, window: 60s }] }
  - name: open
    match: { path_prefix: / }
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    for _ in 0..3 {
        assert_eq!(
            get(s.port, "/api/x?user_id=st%2Fat").await.unwrap().status,
            200
        );
    }
    for _ in 0..5 {
        let stats = get(s.admin_port, "/stats/st%2Fat").await.unwrap();
        assert_eq!(stats.status, 200);
        let j = stats.json();
        assert_eq!(j["user"], "st/at");
        assert_eq!(
            j["routes"].as_array().unwrap().len(),
            1,
            "only routes with limits: {j}"
        );
        assert_eq!(j["routes"][0]["route"], "api");
        let l = &j["routes"][0]["limits"];
        assert_eq!(
            (l[0]["requests"].as_u64(), l[0]["window_s"].as_u64()),
            (Some(5), Some(60))
        );
        assert_eq!(
            (l[0]["used"].as_u64(), l[0]["remaining"].as_u64()),
            (Some(3), Some(2))
        );
        assert!((59..=60).contains(&l[0]["reset_s"].as_u64().unwrap()));
        assert_eq!(
            (l[1]["requests"].as_u64(), l[1]["used"].as_u64()),
            (Some(50), Some(3))
        );
    }
    // Stats were read five times and used nothing: exactly 2 more are admitted.
    assert_eq!(
        get(s.port, "/api/x?user_id=st%2Fat").await.unwrap().status,
        200
    );
    assert_eq!(
        get(s.port, "/api/x?user_id=st%2Fat").await.unwrap().status,
        200
    );
    assert_eq!(
        get(s.port, "/api/x?user_id=st%2Fat").await.unwrap().status,
        429
    );
    let vip = get(s.admin_port, "/stats/vip").await.unwrap().json();
    assert_eq!(vip["routes"][0]["limits"][0]["requests"], 500);
    assert_eq!(vip["routes"][0]["limits"][0]["used"], 0);
    assert_eq!(vip["routes"][0]["limits"][0]["reset_s"], 0);
    assert_eq!(get(s.admin_port, "/nope").await.unwrap().status, 404);
    let health = get(s.admin_port, "/health").await.unwrap().json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "ok");
    assert_eq!(health["instance"], "s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_on_one_redis_admit_exactly_l_of_1000_concurrent() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "{}routes:\n  - name: api\n    match: {{ path_prefix: /api/ }}\n    limits: [{{ requests: 100, window: 60s }}]\n",
        redis_store(&redis)
    );
    let mut sidecars = three_sidecars(&dir, up.port, &body).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    for trial in 0..2 {
        let replies = burst(&ports, 1000, &format!("/api/data?user_id=burst{trial}")).await;
        assert_eq!(count_status(&replies, 200), 100, "trial {trial}: admitted");
        assert_eq!(count_status(&replies, 429), 900, "trial {trial}: refused");
        for s in &sidecars {
            let stats = get(s.admin_port, &format!("/stats/burst{trial}"))
                .await
                .unwrap()
                .json();
            assert_eq!(stats["routes"][0]["limits"][0]["used"], 100);
        }
    }
    for s in &mut sidecars {
        s.proc.assert_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_backend_is_exact_for_one_instance() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = "routes:\n  - name: api\n    match: { path_prefix: / }\n    limits: [{ requests: 50, window: 60s }]\n";
    let s = Sidecar::start(&dir, "mem", up.port, body).await;
    let replies = burst(&[s.port], 500, "/x?user_id=m").await;
    assert_eq!(count_status(&replies, 200), 50);
    assert_eq!(count_status(&replies, 429), 450);
    let stats = get(s.admin_port, "/stats/m").await.unwrap().json();
    assert_eq!(stats["routes"][0]["limits"][0]["used"], 50);
    let health = get(s.admin_port, "/health").await.unwrap().json();
    assert_eq!(
        (health["store"].as_str(), health["backend"].as_str()),
        (Some("ok"), Some("memory"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_is_a_redis_function_loaded_again_when_redis_lost_it() {
    let (redis, _up, s) = one_sidecar(API_5_PER_MIN).await;
    assert_eq!(get(s.port, "/api/x?user_id=f").await.unwrap().status, 200);
    // On Redis 7 and later the store's code is a function library (loaded once, as the
    // connection was made); a Redis that lost it (restarted without it, flushed) gets it again.
    assert!(redis.cmd("FUNCTION FLUSH").await.starts_with("+OK"));
    let r = get(s.port, "/api/x?user_id=f").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("3"),
        "the count survived the flush"
    );
    // Keys carry the prefix and the caller's hash tag, and expire with their window.
    let keys = redis.cmd("KEYS *").await;
    assert!(keys.contains("sluice:{api:f}:60000"), "{keys}");
    let ttl: i64 = redis
        .cmd("PTTL sluice:{api:f}:60000")
        .await
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!((59_000..=60_000).contains(&ttl), "pttl {ttl}");
    assert_eq!(calls_of(&redis, "evalsha").await, 0);
    assert!(calls_of(&redis, "fcall").await >= 2);
    assert!(calls_of(&redis, "function|load").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_down_on_error_decides_and_health_says_degraded() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let dead = free_port();
    let routes = "routes:\n  - name: api\n    match: { path_prefix: /api/ }\n    limits: [{ requests: 1, window: 60s }]\n  - name: open\n    match: { path_prefix: / }\n";
    let store = |on_error: &str| {
        format!("store:\n  backend: redis\n  url: \"redis://127.0.0.1:{dead}\"\n  timeout: 100ms\n  on_error: {on_error}\n{routes}")
    };
    let allow = Sidecar::start(&dir, "allow", up.port, &store("allow")).await;
    let deny = Sidecar::start(&dir, "deny", up.port, &store("deny")).await;
    for _ in 0..3 {
        assert_eq!(
            get(allow.port, "/api/x?user_id=z").await.unwrap().status,
            200
        );
        let refused = get(deny.port, "/api/x?user_id=z").await.unwrap();
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"], "store_unavailable");
    }
    // Unlimited routes never touch the store.
    assert_eq!(get(deny.port, "/open").await.unwrap().status, 200);
    let health = get(allow.admin_port, "/health").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "degraded");
    assert_eq!(health.json()["store"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_from_a_trusted_proxy_is_counted_once() {
    let routes = "trusted_proxies: [\"127.0.0.1/32\"]
request_ids: {}
routes:
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 2, window: 60s }]
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    let with_id = |id: &'static str| [("x-request-id", id)];
    // The same request retried (as nginx does after a sidecar dies) counts once.
    for _ in 0..3 {
        let r = request(s.port, "GET", "/?user_id=rid", &with_id("3f2a"), b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    }
    assert_eq!(status(s.port, "/?user_id=rid", &with_id("77b1")).await, 200);
    assert_eq!(status(s.port, "/?user_id=rid", &with_id("9c9c")).await, 429);
    // A refused request was not counted: its retry is decided afresh, not replayed as admitted.
    assert_eq!(status(s.port, "/?user_id=rid", &with_id("9c9c")).await, 429);
    assert_eq!(get(s.port, "/?user_id=rid").await.unwrap().status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_untrusted_peers_are_ignored() {
    let (_redis, _up, s) = one_sidecar(API_5_PER_MIN).await;
    for expected in ["200", "200", "200", "200", "200", "429"] {
        let r = request(
            s.port,
            "GET",
            "/api/x?user_id=u",
            &[("x-request-id", "same")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(
            r.status.to_string(),
            expected,
            "a replayed id must not bypass the limit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_caller_is_refused_locally_until_redis_would_admit_it() {
    let routes = "trusted_proxies: [\"127.0.0.1/32\"]
request_ids: {}
routes:
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 2, window: 1s }]
";
    let (redis, _up, s) = one_sidecar(routes).await;
    let start = std::time::Instant::now();
    assert_eq!(get(s.port, "/?user_id=hot").await.unwrap().status, 200);
    assert_eq!(get(s.port, "/?user_id=hot").await.unwrap().status, 200);
    assert_eq!(get(s.port, "/?user_id=hot").await.unwrap().status, 429);
    // Forget the caller in Redis: only the local cache can still refuse.
    assert!(redis
        .cmd("DEL sluice:{api:hot}:1000")
        .await
        .starts_with(":1"));
    let cached = get(s.port, "/?user_id=hot").await.unwrap();
    assert_eq!(cached.status, 429, "answered from the local cache");
    assert_eq!(cached.header("retry-after"), Some("1"));
    assert_eq!(cached.json()["route"], "api");
    assert_eq!(cached.header("x-ratelimit-remaining"), Some("0"));
    // A request id from a trusted proxy may be a retry only Redis can recognise: no cache.
    let with_id = request(
        s.port,
        "GET",
        "/?user_id=hot",
        &[("x-request-id", "abc")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(with_id.status, 200);
    // The cache lets go no later than the moment Redis would admit again (1 s after the first).
    tokio::time::sleep(Duration::from_millis(1050).saturating_sub(start.elapsed())).await;
    assert_eq!(get(s.port, "/?user_id=hot").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_share_script_calls_and_each_gets_its_own_answer() {
    let _heavy = HEAVY.lock().await;
    let routes = "routes:
  - name: a
    match: { path_prefix: /a/ }
    limits: [{ requests: 5, window: 60s }]
  - name: b
    match: { path_prefix: /b/ }
    limits: [{ requests: 3, window: 60s }, { requests: 100, window: 1h }]
";
    let (redis, _up, s) = one_sidecar(routes).await;
    // 20 callers, each 10 requests on a route with one limit and 10 on a route with two,
    // all at once: a worker's waiting decisions go to Redis together, in one script call.
    let (callers, each) = (20, 10);
    let mut targets = Vec::new();
    for n in 0..each {
        for c in 0..callers {
            let route = if (n + c) % 2 == 0 { "a" } else { "b" };
            targets.push(format!("/{route}/x?user_id=c{c}"));
            let other = if route == "a" { "b" } else { "a" };
            targets.push(format!("/{other}/x?user_id=c{c}"));
        }
    }
    let replies = burst_of(&[s.port], &targets).await;
    for c in 0..callers {
        for (route, limit, header) in [("a", 5, "\"a\";r="), ("b", 3, "\"b-1m\";r=")] {
            let target = format!("/{route}/x?user_id=c{c}");
            let mine = replies_to(&targets, &replies, &target);
            let admitted: Vec<&&Reply> = mine.iter().filter(|r| r.status == 200).collect();
            assert_eq!(admitted.len(), limit, "{target}: admitted");
            let refused = mine.iter().filter(|r| r.status == 429).count();
            assert_eq!(refused, each - limit, "{target}: refused");
            // Each admitted request saw its own state: remaining counts down once per decision,
            // so every value from limit - 1 to 0 is some request's answer, exactly once.
            let mut remaining: Vec<usize> = admitted
                .iter()
                .map(|r| {
                    assert_eq!(r.json()["user_id"], format!("c{c}"));
                    let h = r.header("ratelimit").expect("RateLimit header");
                    assert!(h.starts_with(header), "{target}: {h}");
                    h[header.len()..]
                        .split(';')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            remaining.sort_unstable();
            assert_eq!(remaining, (0..limit).collect::<Vec<_>>(), "{target}");
        }
    }
    let calls = calls_of(&redis, "fcall").await;
    assert!(calls > 0, "no FCALL");
    assert!(
        calls < targets.len(),
        "{calls} script calls for {} decisions: nothing was batched",
        targets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_keys_are_broken_fails_alone_in_a_batch() {
    let _heavy = HEAVY.lock().await;
    let (redis, _up, s) = one_sidecar(API_5_PER_MIN).await;
    // Something other than sluice wrote a string where this caller's sorted set belongs.
    assert!(redis
        .cmd("SET sluice:{api:broken}:60000 x")
        .await
        .starts_with("+OK"));
    let callers = ["broken", "g1", "g2", "g3"];
    let targets: Vec<String> = (0..10)
        .flat_map(|_| callers.map(|c| format!("/api/x?user_id={c}")))
        .collect();
    let replies = burst_of(&[s.port], &targets).await;
    let of = |c: &str| replies_to(&targets, &replies, &format!("/api/x?user_id={c}"));
    // The others in the same script calls are decided exactly, as if it were not there.
    for c in &callers[1..] {
        let mine = of(c);
        assert_eq!(mine.iter().filter(|r| r.status == 200).count(), 5, "{c}");
        assert_eq!(mine.iter().filter(|r| r.status == 429).count(), 5, "{c}");
        assert!(mine.iter().all(|r| r.header("ratelimit").is_some()), "{c}");
    }
    // The broken caller could not be decided: on_error (allow) forwards it, without headers.
    for r in of("broken") {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("ratelimit"), None, "{r:?}");
    }
    // One caller's keys say nothing about the store: the breaker stays closed.
    let health = get(s.admin_port, "/health").await.unwrap().json();
    assert_eq!(health["store"], "ok", "{health}");
    assert_eq!(get(s.port, "/api/x?user_id=g4").await.unwrap().status, 200);
}

/// The replies of a [`burst_of`] to the requests for `target`.
fn replies_to<'r>(targets: &[String], replies: &'r [Reply], target: &str) -> Vec<&'r Reply> {
    targets
        .iter()
        .zip(replies)
        .filter(|(t, _)| *t == target)
        .map(|(_, r)| r)
        .collect()
}

/// What Redis's `INFO commandstats` says `command` was called (0 when never).
async fn calls_of(redis: &Redis, command: &str) -> usize {
    let stats = redis.cmd("INFO commandstats").await;
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const FIVE_PER_MINUTE: &str = "routes:
  - name: a
    match: { path_prefix: /a/ }
    limits: [{ requests: 5, window: 60s }]
";

/// Eight requests of one caller, one after another, with `between` done to Redis after the
/// third: five admitted, then refused (the last two from the sidecar's cache of refusals), none
/// failed (503 would be the store failing).
async fn eight_requests(redis: &Redis, s: &Sidecar, between: &str) {
    let mut statuses = Vec::new();
    for i in 0..8 {
        if i == 3 {
            redis.cmd(between).await;
        }
        statuses.push(get(s.port, "/a/x?user_id=u").await.unwrap().status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "{between}"
    );
}

/// A Redis without FUNCTION (older than 7, or an ACL that forbids it; here the command is
/// renamed away) gets the same code as a script, sent with EVALSHA, and limits alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_functions_the_code_goes_as_a_script_and_limits_alike() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start_on(&dir, free_port(), &["--rename-command", "FUNCTION", ""]).await;
    let upstream = Upstream::start(&dir).await;
    let store = redis_store(&redis);
    let s = Sidecar::start(
        &dir,
        "s1",
        upstream.port,
        &format!("{store}{FIVE_PER_MINUTE}"),
    )
    .await;
    eight_requests(&redis, &s, "SCRIPT FLUSH").await;
    assert_eq!(calls_of(&redis, "fcall").await, 0);
    assert!(calls_of(&redis, "evalsha").await >= 6);
    let log = s.proc.log_text();
    assert!(log.contains("refused FUNCTION LOAD"), "{log}");
}
