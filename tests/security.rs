//! Hostile clients, tried as an attacker would, against real sidecars, Redis and upstream:
//! replayed request ids, oversized and malformed identities and requests, path tricks,
//! forged forwarding headers, and floods of fresh callers.

mod common;

use common::*;
use std::time::{Duration, Instant};

const LIMIT_5: &str = "routes:
  - name: api
    match: { path_prefix: /api/, methods: [GET] }
    limits: [{ requests: 5, window: 60s }]
  - name: open
    match: { path_prefix: / }
";

/// Sends `n` GETs of `target` from `source` with `headers`; the statuses in order.
async fn statuses_from(
    source: &str,
    port: u16,
    n: usize,
    target: &str,
    headers: &[(&str, &str)],
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = request_from(source, port, target, headers)
            .await
            .expect("reply");
        out.push(r.status);
    }
    out
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().take_while(|&&s| s == 200).count()
}

async fn used(admin_port: u16, user: &str) -> u64 {
    let stats = get(admin_port, &format!("/stats/{user}")).await.unwrap();
    stats.json()["routes"][0]["limits"][0]["used"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_id_gets_its_retry_budget_and_no_more() {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let lb = "trusted_proxies: [\"127.0.0.2/32\"]\n";
    let ids = "request_ids: { header: x-request-id, retry_window: 10s, max_retries: 2 }\n";
    let store = redis_store(&redis);
    let on = Sidecar::start(&dir, "on", up.port, &format!("{store}{lb}{ids}{LIMIT_5}")).await;
    let off = Sidecar::start(&dir, "off", up.port, &format!("{store}{lb}{LIMIT_5}")).await;
    let id = [("x-request-id", "fixed")];

    // From the trusted load balancer with request ids on: 1 counted + 2 retries + 4 counted.
    let got = statuses_from("127.0.0.2", on.port, 10, "/api/x?user_id=replay", &id).await;
    assert_eq!(admitted(&got), 7, "{got:?}");
    assert!(got[7..].iter().all(|&s| s == 429), "{got:?}");
    assert_eq!(used(on.admin_port, "replay").await, 5);

    // The same from any other local process (127.0.0.1 is not the load balancer): no replay.
    let got = statuses_from("127.0.0.1", on.port, 7, "/api/x?user_id=direct", &id).await;
    assert_eq!(admitted(&got), 5, "{got:?}");
    // Request ids not configured: ignored even from the trusted peer.
    let got = statuses_from("127.0.0.2", off.port, 7, "/api/x?user_id=noids", &id).await;
    assert_eq!(admitted(&got), 5, "{got:?}");
    // Two id lines, or an id that is not 1-64 of [A-Za-z0-9._-], is no id at all.
    let two = [("x-request-id", "dup"), ("x-request-id", "dup")];
    let got = statuses_from("127.0.0.2", on.port, 7, "/api/x?user_id=two", &two).await;
    assert_eq!(admitted(&got), 5, "{got:?}");
    let long = "a".repeat(65);
    let bad = [("x-request-id", long.as_str())];
    let got = statuses_from("127.0.0.2", on.port, 7, "/api/x?user_id=long", &bad).await;
    assert_eq!(admitted(&got), 5, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_past_its_retry_window_counts_as_a_new_request() {
    for backend in ["redis", "memory"] {
        let dir = scratch_dir();
        let redis = Redis::start(&dir).await;
        let up = Upstream::start(&dir).await;
        let store = match backend {
            "redis" => redis_store(&redis),
            _ => "store: { backend: memory }\n".to_string(),
        };
        let body = format!("{store}trusted_proxies: [\"127.0.0.2/32\"]\nrequest_ids: {{ retry_window: 500ms, max_retries: 5 }}\n{LIMIT_5}");
        let s = Sidecar::start(&dir, "s", up.port, &body).await;
        let id = [("x-request-id", "w1")];
        let target = "/api/x?user_id=late";
        let twice = statuses_from("127.0.0.2", s.port, 2, target, &id).await;
        assert_eq!(twice, [200, 200], "{backend}");
        assert_eq!(
            used(s.admin_port, "late").await,
            1,
            "{backend}: the repeat is a retry"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = statuses_from("127.0.0.2", s.port, 1, target, &id).await;
        assert_eq!(again, [200], "{backend}");
        assert_eq!(
            used(s.admin_port, "late").await,
            2,
            "{backend}: counted again"
        );
        // One id sent 10 times to a limit of 5 with a budget of 5 retries: 1 + 5 + 4 admitted.
        let got = statuses_from(
            "127.0.0.2",
            s.port,
            10,
            "/api/x?user_id=m",
            &[("x-request-id", "m")],
        )
        .await;
        assert_eq!(admitted(&got), 10, "{backend}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_or_control_character_identities_get_400_and_are_never_stored() {
    let (redis, _up, s) = one_sidecar(LIMIT_5).await;
    let max = "m".repeat(256);
    assert_eq!(
        status(s.port, &format!("/api/x?user_id={max}"), &[]).await,
        200
    );
    let over = "o".repeat(257);
    for (target, headers) in [
        (format!("/api/x?user_id={over}"), vec![]),
        ("/api/x".to_string(), vec![("x-user-id", over.as_str())]),
        // 257 bytes after decoding, from 771 characters on the wire.
        (format!("/api/x?user_id={}", "%41".repeat(257)), vec![]),
    ] {
        let r = request(s.port, "GET", &target, &headers, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.json()["error"], "identity_too_long");
        assert_eq!(r.json()["max_bytes"], 256);
    }
    for bad in ["a%00b", "a%0Ab", "x%1B", "%7F", "ta%09b"] {
        let r = get(s.port, &format!("/api/x?user_id={bad}")).await.unwrap();
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json(), serde_json::json!({"error": "invalid_identity"}));
    }
    // Two lines of the identity header: refused, not resolved by whichever came first.
    let two = request(
        s.port,
        "GET",
        "/api/x",
        &[("x-user-id", "max"), ("x-user-id", "other")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(two.status, 400);
    assert_eq!(two.json(), serde_json::json!({"error": "invalid_identity"}));
    // A query identity is trimmed like a header's: one caller, one count.
    assert_eq!(status(s.port, "/api/x?user_id=+trim%09", &[]).await, 200);
    assert_eq!(
        status(s.port, "/api/x", &[("x-user-id", "trim")]).await,
        200
    );
    assert_eq!(used(s.admin_port, "trim").await, 2);
    // A megabyte of identity never gets as far as the limiter: the head is too large.
    let huge = "h".repeat(1 << 20);
    let reply = raw(
        s.port,
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nx-user-id: {huge}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        matches!(raw_status(&reply), None | Some(431) | Some(400)),
        "{:?}",
        raw_status(&reply)
    );
    // Redis holds the accepted callers (256 bytes, and `trim`) and nothing else.
    let keys = redis.cmd("KEYS *").await;
    assert!(keys.starts_with("*2\r\n"), "{keys}");
    assert!(keys.contains(&max), "{keys}");
    assert_eq!(
        status(s.port, "/api/x?user_id=%C3%A9", &[]).await,
        200,
        "UTF-8 is fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_slow_requests_cannot_stop_the_sidecar() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let s = Sidecar::start(&dir, "s", up.port, LIMIT_5).await;
    // 70 KiB of headers: 431 (or a closed connection), never forwarded.
    let mut head = String::from("GET /open HTTP/1.1\r\nHost: a\r\n");
    for i in 0..70 {
        head.push_str(&format!("x-pad-{i}: {}\r\n", "p".repeat(1000)));
    }
    head.push_str("\r\n");
    let reply = raw(s.port, head.as_bytes()).await.unwrap();
    assert!(
        matches!(raw_status(&reply), None | Some(431)),
        "{:?}",
        raw_status(&reply)
    );
    // A 100 KB request line: over http::Uri's own 64 KiB cap, so Pingora refuses it with 400
    // before sluice sees it; from 8 KiB (server.max_uri_bytes) to 64 KiB sluice answers 414.
    let line = format!(
        "GET /open?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "q".repeat(100_000)
    );
    let reply = raw(s.port, line.as_bytes()).await.unwrap();
    assert!(
        matches!(raw_status(&reply), None | Some(414) | Some(400)),
        "{:?}",
        raw_status(&reply)
    );
    let r = get(s.port, &format!("/open?{}", "q".repeat(9000)))
        .await
        .unwrap();
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"], "uri_too_long");
    // Malformed: 400 or closed.
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /open HTTP/9.9\r\n\r\n",
        b"GET /open HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /open HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let reply = raw(s.port, bad).await.unwrap();
        assert!(
            matches!(raw_status(&reply), None | Some(400)),
            "{bad:?}: {:?}",
            raw_status(&reply)
        );
    }
    // Slowloris: 50 connections that send half a request and wait.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"GET /open HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        idle.push(c);
    }
    let start = Instant::now();
    let r = get(s.port, "/open").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
    let mut proc = s.proc;
    proc.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_that_chose_the_route_is_the_path_forwarded() {
    let routes = "routes:
  - name: api
    match: { path_prefix: /api/, methods: [GET] }
    limits: [{ requests: 4, window: 60s }]
  - name: open
    match: { path_prefix: / }
";
    let (_redis, _up, s) = one_sidecar(routes).await;
    let echo = [("x-echo", "1")];
    // Four spellings of /api/data: each counts against the api limit and reaches the upstream
    // as /api/data, its query untouched.
    for target in [
        "//api/data?user_id=p&q=%2F+x",
        "/api/../api/data?user_id=p&q=%2F+x",
        "/x/..//%61pi/./data?user_id=p&q=%2F+x",
        "/%2e%2E/api/%64ata?user_id=p&q=%2F+x",
    ] {
        let r = request(s.port, "GET", target, &echo, b"").await.unwrap();
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["path"], "/api/data", "{target}");
        assert_eq!(r.json()["query"], "user_id=p&q=%2F+x", "{target}");
        assert!(r.header("ratelimit").is_some(), "{target} was not limited");
    }
    // HEAD is limited wherever GET is: the fifth request, a HEAD, is refused.
    let head = request(s.port, "HEAD", "/api/data?user_id=p", &[], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 429);
    // An encoded slash stays encoded: one segment, not under /api/ (the open route).
    let r = request(s.port, "GET", "/api%2Fdata?user_id=p", &echo, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit").is_none());
    // Targets that are not origin-form, and malformed escapes: 400 before any route.
    for target in [
        "x:/api/data",
        "http://127.0.0.1/api/data",
        "api/data",
        "/api/%zz",
    ] {
        let reply = raw(
            s.port,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert!(
            matches!(raw_status(&reply), None | Some(400)),
            "{target}: {:?}",
            raw_status(&reply)
        );
    }
    let r = get(s.port, "/api/%zz?user_id=p").await.unwrap();
    assert_eq!(r.json()["error"], "invalid_path");
    let options = raw(
        s.port,
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(raw_status(&options), Some(200), "OPTIONS * is forwarded");
    assert_eq!(
        used(s.admin_port, "p").await,
        4,
        "only the four GETs were counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_read_entry_by_entry_from_trusted_peers_only() {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "{}identity: [{{ client_ip: true }}]\ntrusted_proxies: [\"127.0.0.2/32\"]\nroutes:\n  - name: echo\n    match: {{ path_prefix: /echo }}\n    limits: []\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 1, window: 60s }}]\n",
        redis_store(&redis)
    );
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    let from_lb = |xff: &'static str| async move {
        request_from(
            "127.0.0.2",
            s.port,
            "/",
            &[("x-forwarded-for", xff), ("x-real-ip", "6.6.6.6")],
        )
        .await
        .unwrap()
        .status
    };
    assert_eq!(from_lb("203.0.113.9:4711").await, 200);
    assert_eq!(
        from_lb("203.0.113.9").await,
        429,
        "the port does not make a new caller"
    );
    assert_eq!(from_lb("[2001:db8::7]:443").await, 200);
    assert_eq!(from_lb("2001:db8::7").await, 429);
    assert_eq!(used(s.admin_port, "203.0.113.9").await, 1);
    // A client behind the load balancer cannot pick an identity with a junk entry.
    assert_eq!(from_lb("nonsense, 198.51.100.4").await, 200);
    assert_eq!(from_lb("6.6.6.6, 198.51.100.4").await, 429);
    // From an untrusted peer, the headers mean nothing: the peer is the caller.
    let direct = request_from(
        "127.0.0.1",
        s.port,
        "/",
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 200);
    assert_eq!(used(s.admin_port, "127.0.0.1").await, 1);
    assert_eq!(used(s.admin_port, "192.0.2.1").await, 0);
    // What the upstream receives: from the trusted balancer, its X-Forwarded-For appended to and
    // its other headers as they were; from anyone else, only what sluice saw.
    let echo = |source: &'static str| async move {
        request_from(
            source,
            s.port,
            "/echo",
            &[
                ("x-echo", "1"),
                ("x-forwarded-for", "203.0.113.20"),
                ("x-real-ip", "203.0.113.20"),
            ],
        )
        .await
        .unwrap()
        .json()["headers"]
            .clone()
    };
    let via_lb = echo("127.0.0.2").await;
    assert_eq!(via_lb["x-forwarded-for"][0], "203.0.113.20, 127.0.0.2");
    assert_eq!(via_lb["x-real-ip"][0], "203.0.113.20");
    let direct = echo("127.0.0.1").await;
    assert_eq!(direct["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(direct["x-real-ip"][0], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fresh_callers_cannot_grow_the_memory_store() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body =
        format!("store: {{ backend: memory, max_callers: 2000, on_error: deny }}\n{LIMIT_5}");
    let s = Sidecar::start(&dir, "s", up.port, &body).await;
    // The first callers are held and limited exactly.
    let first: Vec<String> = (0..6).map(|_| "/api/x?user_id=held".to_string()).collect();
    let got = keepalive_gets(s.port, &first).await.unwrap();
    assert_eq!(got, [200, 200, 200, 200, 200, 429]);
    let flood = |from: usize, to: usize| async move {
        let tasks: Vec<_> = (0..8)
            .map(|c| {
                let targets: Vec<String> = (from + c..to)
                    .step_by(8)
                    .map(|i| format!("/api/x?user_id=fresh{i}"))
                    .collect();
                tokio::spawn(async move { keepalive_gets(s.port, &targets).await.unwrap() })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    };
    let a = flood(0, 10_000).await;
    let rss_a = rss_kib(s.proc.pid());
    let b = flood(10_000, 30_000).await;
    let rss_b = rss_kib(s.proc.pid());
    let ok = a.iter().chain(&b).filter(|&&x| x == 200).count();
    let full = a.iter().chain(&b).filter(|&&x| x == 503).count();
    // 2,000 in all, the one held caller included.
    assert!((1500..2000).contains(&ok), "{ok} fresh callers admitted");
    assert_eq!(
        ok + full,
        30_000,
        "every other fresh caller meets on_error: deny"
    );
    assert!(
        rss_b < rss_a + 4096,
        "RSS grew from {rss_a} KiB to {rss_b} KiB under 20,000 more callers"
    );
    // The caller held from the start is still limited.
    let held = keepalive_gets(s.port, &["/api/x?user_id=held".to_string()])
        .await
        .unwrap();
    assert_eq!(held, [429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_name_is_used_with_every_address_it_resolves_to() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("localhost.yaml");
    std::fs::write(
        &config,
        format!("server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\" }}\nupstream: {{ addrs: [\"localhost:{}\"] }}\n", up.port),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "s", &config, port, admin).await;
    // upstream-demo listens on 127.0.0.1 only; if localhost also resolves to ::1, that peer
    // refuses and the request moves on to the next address.
    for _ in 0..10 {
        assert_eq!(status(s.port, "/x", &[]).await, 200);
    }
}
