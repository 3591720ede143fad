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

/// The HMAC-SHA-256 caller of `raw` under `key`, as the sidecars compute it.
fn hmac_caller(key: &[u8], raw: &str) -> String {
    let hash = sluice::identity::CallerHash::HmacSha256(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        key,
    ));
    String::from_utf8(hash.caller(raw.as_bytes().to_vec())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_api_keys_are_exact_across_three_sidecars_and_never_stored_in_clear() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let secret = b"0123456789abcdef-shared-by-all";
    let key_file = dir.join("identity.key");
    std::fs::write(&key_file, [&secret[..], b"\n"].concat()).unwrap();
    let (plain, vip, monitor, bearer) = ("sk_live_plain", "sk_live_vip", "sk_live_mon", "tok-7");
    let body = format!(
        "{}identity: [{{ api_key: {{ header: x-api-key }} }}, {{ bearer: true }}]
identity_hash: hmac_sha256
identity_hash_key_file: \"{}\"
exempt: {{ callers: [\"{}\"] }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    limits: [{{ requests: 10, window: 60s }}]
    overrides:
      {vip}: {{ limits: [{{ requests: 30, window: 60s }}] }}
",
        redis_store(&redis),
        key_file.display(),
        hmac_caller(secret, monitor),
    );
    let server = "  access_log: json\n  access_log_caller: plain\n";
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        sidecars.push(Sidecar::start_server(&dir, name, up.port, server, &body).await);
    }
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    let with = |header: &str, value: String| {
        (0..40)
            .map(|_| {
                (
                    "/data".to_string(),
                    vec![(header.to_string(), value.clone())],
                )
            })
            .collect::<Vec<_>>()
    };
    let ok = |replies: &[Reply]| count_status(replies, 200);
    assert_eq!(
        ok(&burst_with(&ports, &with("x-api-key", plain.into())).await),
        10
    );
    // An override listed by the raw key still applies to its hash.
    assert_eq!(
        ok(&burst_with(&ports, &with("x-api-key", vip.into())).await),
        30
    );
    // An exemption listed by the hash.
    assert_eq!(
        ok(&burst_with(&ports, &with("x-api-key", monitor.into())).await),
        40
    );
    let auth = format!("Bearer {bearer}");
    assert_eq!(
        ok(&burst_with(&ports, &with("authorization", auth)).await),
        10
    );
    // The caller is the hash, in the store and in /stats (asked for by the raw key).
    let scan = redis.cmd("KEYS *").await;
    let expected = format!("sluice:{{api:{}}}:60000", hmac_caller(secret, plain));
    assert!(scan.contains(&expected), "{scan}");
    let stats = get(sidecars[1].admin_port, &format!("/stats/{plain}"))
        .await
        .unwrap();
    assert_eq!(stats.status, 200, "{stats:?}");
    assert_eq!(
        stats.json()["routes"][0]["limits"][0]["used"],
        10,
        "{stats:?}"
    );
    // No raw credential anywhere: store keys, /stats, /metrics, any log line.
    let metrics = get(sidecars[0].admin_port, "/metrics").await.unwrap().body;
    let mut seen = vec![("redis", scan), ("stats", stats.body), ("metrics", metrics)];
    for s in &mut sidecars {
        s.proc.kill();
        seen.push(("log", s.proc.log_text()));
    }
    assert!(
        seen[3].1.contains(&hmac_caller(secret, plain)),
        "the access log names the hash"
    );
    for (place, text) in &seen {
        for raw in [plain, vip, monitor, bearer] {
            assert!(!text.contains(raw), "{place} holds {raw}: {text}");
        }
    }
}

/// The same identities on the memory store: a hashed API key on a plan from a callers file,
/// a bearer token, an exemption by hash, and no raw key in what the sidecar shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_plans_and_exemptions_work_on_the_memory_store() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let callers = dir.join("plans.yaml");
    let monitor =
        String::from_utf8(sluice::identity::CallerHash::Sha256.caller(b"sk_monitor".to_vec()))
            .unwrap();
    std::fs::write(&callers, "sk_pro: pro\n").unwrap();
    let body = format!(
        "store: {{ backend: memory }}
identity: [{{ api_key: {{ header: x-api-key }} }}, {{ bearer: true }}]
exempt: {{ callers: [\"{monitor}\"] }}
plans:
  free: {{ limits: [{{ requests: 2, window: 60s }}] }}
  pro: {{ limits: [{{ requests: 4, window: 60s }}] }}
plan: {{ from: [{{ callers_file: \"{}\" }}], default: free }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    limits: plan
",
        callers.display()
    );
    let mut s = Sidecar::start(&dir, "s1", up.port, &body).await;
    let count = async |h: (&str, &str)| {
        let mut ok = 0;
        for _ in 0..6 {
            ok += (status(s.port, "/x", &[h]).await == 200) as usize;
        }
        ok
    };
    assert_eq!(count(("x-api-key", "sk_pro")).await, 4);
    assert_eq!(count(("x-api-key", "sk_other")).await, 2);
    assert_eq!(count(("authorization", "Bearer tok_1")).await, 2);
    assert_eq!(count(("x-api-key", "sk_monitor")).await, 6);
    let stats = get(s.admin_port, "/stats/sk_pro").await.unwrap();
    assert_eq!(stats.json()["routes"][0]["plan"], "pro", "{stats:?}");
    assert_eq!(
        stats.json()["routes"][0]["limits"][0]["used"],
        4,
        "{stats:?}"
    );
    let metrics = get(s.admin_port, "/metrics").await.unwrap().body;
    s.proc.kill();
    for text in [stats.body, metrics, s.proc.log_text()] {
        for raw in ["sk_pro", "sk_other", "tok_1", "sk_monitor"] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
    }
}
