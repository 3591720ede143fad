//! Who is calling, end to end: requests without a caller, exemptions and header-matched
//! routes through a real sidecar on a real Redis.

mod common;

use common::*;

const POLICIES: &str = "identity: [{ header: x-user-id }]
exempt: { cidrs: [\"127.0.0.9/32\"], callers: [monitor] }
routes:
  - name: byip
    match: { path_prefix: /byip/ }
    on_missing_identity: client_ip
    limits: [{ requests: 1, window: 60s }]
  - name: reject
    match: { path_prefix: /reject/ }
    on_missing_identity: reject
    limits: [{ requests: 1, window: 60s }]
  - name: skip
    match: { path_prefix: /skip/ }
    on_missing_identity: skip
    limits: [{ requests: 1, window: 60s }]
  - name: acme
    match: { path_prefix: /t/, headers: { x-tenant: acme } }
    limits: [{ requests: 2, window: 60s }]
  - name: api
    match: { path_prefix: / }
    limits: [{ requests: 1, window: 60s }]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_identity_get_their_routes_policy() {
    let (redis, _up, s) = one_sidecar(POLICIES).await;
    // client_ip: every anonymous client its own bucket.
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let r = request_from(ip, s.port, "/byip/x", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{ip}: {r:?}");
        let r = request_from(ip, s.port, "/byip/x", &[]).await.unwrap();
        assert_eq!(r.status, 429, "{ip}: {r:?}");
    }
    assert_eq!(
        redis
            .cmd("EXISTS sluice:{byip:127.0.0.2}:60000")
            .await
            .trim(),
        ":1"
    );
    // reject: 401 with its own error, nothing counted.
    let r = get(s.port, "/reject/x").await.unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["error"], "identity_required");
    let named = [("x-user-id", "bob")];
    assert_eq!(status(s.port, "/reject/x", &named).await, 200);
    // skip: forwarded unlimited, and counted as unidentified.
    for _ in 0..3 {
        assert_eq!(status(s.port, "/skip/x", &[]).await, 200);
    }
    assert_eq!(status(s.port, "/skip/x", &named).await, 200);
    assert_eq!(status(s.port, "/skip/x", &named).await, 429);
    let page = get(s.admin_port, "/metrics").await.unwrap().body;
    let requests = |labels: &str| metric(&page, "sluice_requests_total", labels);
    assert_eq!(requests("decision=\"unidentified\",route=\"skip\""), 3.0);
    assert_eq!(requests("decision=\"limited\",route=\"byip\""), 2.0);
    let rejected = metric(&page, "sluice_rejected_requests_total", "identity_required");
    assert_eq!(rejected, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_requests_pass_uncounted_and_headers_pick_routes() {
    let (redis, _up, s) = one_sidecar(POLICIES).await;
    let bob = [("x-user-id", "bob")];
    assert_eq!(status(s.port, "/x", &bob).await, 200);
    assert_eq!(status(s.port, "/x", &bob).await, 429);
    // A CORS preflight never spends a quota; a plain OPTIONS is an ordinary request.
    let preflight = [
        ("x-user-id", "carol"),
        ("access-control-request-method", "POST"),
        ("origin", "https://app.example"),
    ];
    for _ in 0..3 {
        let r = request(s.port, "OPTIONS", "/x", &preflight, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("ratelimit").is_none(), "{r:?}");
    }
    assert_eq!(
        redis.cmd("EXISTS sluice:{api:carol}:60000").await.trim(),
        ":0"
    );
    let carol = [("x-user-id", "carol")];
    assert_eq!(
        request(s.port, "OPTIONS", "/x", &carol, b"")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        request(s.port, "OPTIONS", "/x", &carol, b"")
            .await
            .unwrap()
            .status,
        429
    );
    // A listed caller, a listed network.
    let monitor = [("x-user-id", "monitor")];
    for _ in 0..3 {
        assert_eq!(status(s.port, "/x", &monitor).await, 200);
        let r = request_from("127.0.0.9", s.port, "/x", &bob).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    // One path, two routes by a header: acme's own limit of 2, the rest share api's.
    let acme = [("x-user-id", "dave"), ("x-tenant", "acme")];
    let other = [("x-user-id", "dave"), ("x-tenant", "globex")];
    assert_eq!(status(s.port, "/t/x", &acme).await, 200);
    assert_eq!(status(s.port, "/t/x", &acme).await, 200);
    assert_eq!(status(s.port, "/t/x", &acme).await, 429);
    assert_eq!(status(s.port, "/t/x", &other).await, 200);
    assert_eq!(status(s.port, "/t/x", &other).await, 429);
    let page = get(s.admin_port, "/metrics").await.unwrap().body;
    let exempt = metric(
        &page,
        "sluice_requests_total",
        "decision=\"exempt\",route=\"api\"",
    );
    assert_eq!(exempt, 9.0);
}
