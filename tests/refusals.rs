//! The refusal users choose (`refusal:`), end to end: RFC 9457 problems, plain text, a body
//! template with the caller in it, another status; and sluice's own 503 and 504 in the
//! route's format.

mod common;

use common::*;

const ROUTES: &str = "refusal: { content_type: application/problem+json }
routes:
  - name: problem
    match: { path_prefix: /problem/ }
    timeout: 300ms
    limits: [{ requests: 1, window: 60s }]
  - name: text
    match: { path_prefix: /text/ }
    refusal: { status: 503, content_type: text/plain, body: \"slow down, {caller}: {limit} per {window_s} s, retry in {retry_after} s\" }
    limits: [{ requests: 1, window: 60s }]
  - name: json
    match: { path_prefix: /json/ }
    refusal: { body: '{\"message\": \"{caller} used {limit} on {route}\", \"retry_in\": {retry_after}}' }
    limits: [{ requests: 1, window: 60s }]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_take_the_routes_status_type_and_body() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let s = Sidecar::start(
        &dir,
        "s1",
        up.port,
        &format!("store: {{ backend: memory }}\n{ROUTES}"),
    )
    .await;
    let twice = async |target: &str| {
        assert_eq!(get(s.port, target).await.unwrap().status, 200);
        get(s.port, target).await.unwrap()
    };
    // The global default: an RFC 9457 problem with the limit's fields.
    let r = twice("/problem/x?user_id=ann").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(
        (p["type"].clone(), p["status"].clone()),
        ("about:blank".into(), 429.into())
    );
    assert_eq!(p["title"], "Too Many Requests");
    assert_eq!(
        (p["route"].clone(), p["limit"].clone()),
        ("problem".into(), 1.into())
    );
    assert!(p["detail"].as_str().unwrap().contains("retry in"), "{p}");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit").is_some());
    // Plain text with another status, filled in.
    let r = twice("/text/x?user_id=bob").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let retry = r.header("retry-after").unwrap().to_string();
    assert_eq!(
        r.body,
        format!("slow down, bob: 1 per 60 s, retry in {retry} s")
    );
    // A JSON template: the caller is escaped inside its string.
    let r = twice("/json/x?user_id=a%22b").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["message"], "a\"b used 1 on json", "{}", r.body);
    assert!(r.json()["retry_in"].as_u64().unwrap() >= 1);
    // sluice's own 504 on the route takes its format too.
    let r = request(
        s.port,
        "GET",
        "/problem/slow?user_id=cy",
        &[("x-hold-ms", "2000")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.json()["title"], "Gateway Timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_under_deny_is_answered_in_the_routes_format() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let dead = free_port();
    let body = format!(
        "store: {{ backend: redis, url: \"redis://127.0.0.1:{dead}\", on_error: deny, timeout: 100ms }}\n{ROUTES}"
    );
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    let r = get(s.port, "/problem/x?user_id=dee").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["error"], "store_unavailable");
    assert_eq!(r.json()["status"], 503);
    let r = get(s.port, "/text/x?user_id=dee").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.starts_with("Service Unavailable: "), "{}", r.body);
}
