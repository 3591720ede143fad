//! The decision's rules around the store, with a store that works, fails or stalls on command:
//! shadow routes, per-route `on_error`, overrides, scopes and request ids.

use super::*;
use crate::limiter::double::{Double, Mode};
use http::HeaderValue;
use std::time::Duration;

const CONFIG: &str = r#"
upstream: { addrs: ["127.0.0.1:9"] }
trusted_proxies: ["10.0.0.1/32"]
request_ids: { header: x-request-id }
store: { on_error: allow, fallback_share: 0.5 }
buckets:
  shared: { limits: [{ requests: 3, window: 60s }] }
routes:
  - name: shadow
    match: { path_prefix: /shadow/ }
    shadow: true
    limits: [{ requests: 1, window: 60s }]
  - name: deny
    match: { path_prefix: /deny/ }
    on_error: deny
    limits: [{ requests: 1, window: 60s }]
  - name: local
    match: { path_prefix: /local/ }
    on_error: local
    limits: [{ requests: 4, window: 60s }]
  - name: allow
    match: { path_prefix: /allow/ }
    limits: [{ requests: 1, window: 60s }]
  - name: vip
    match: { path_prefix: /vip/ }
    buckets: [shared]
    limits: [{ requests: 1, window: 60s }, { requests: 2, window: 60s, per: global }]
    overrides:
      boss: { limits: [{ requests: 100, window: 60s }] }
  - name: tenant
    match: { path_prefix: /tenant/ }
    limits: [{ requests: 1, window: 60s, per: "header:x-tenant" }]
"#;

struct World {
    double: Arc<Double>,
    decider: Decider,
}

fn world() -> World {
    world_of(CONFIG)
}

fn world_of(text: &str) -> World {
    let config = crate::config::parse("t.yaml", text, &|_| None).unwrap();
    let double = Arc::new(Double::default());
    let side = StoreSide::new(
        Store::Double(double.clone()),
        10_000,
        Duration::from_secs(10),
    );
    let decider = Decider::new(&config, Arc::new(side), Arc::new(Metrics::new()), 0);
    World { double, decider }
}

/// The outcome of one GET: the metric label, and the refusal's status (0: forwarded).
async fn ask(w: &World, target: &str, headers: &[(&str, &str)], peer: &str) -> (&'static str, u16) {
    ask_method(w, Method::GET, target, headers, peer).await
}

async fn ask_method(
    w: &World,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    peer: &str,
) -> (&'static str, u16) {
    let uri: http::Uri = target.parse().unwrap();
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let head = RequestHead {
        method: &method,
        raw_target: target.as_bytes(),
        path: uri.path(),
        query: uri.query(),
        headers: &map,
        peer: peer.parse().ok(),
    };
    let verdict = w.decider.decide(&head).await;
    let status = match &verdict.action {
        Action::Forward(_) => 0,
        Action::Refuse(r) => crate::response::refusal(r).unwrap().0.status.as_u16(),
        Action::Wait(_) => panic!("no route of these tests throttles"),
    };
    (verdict.trace.decision, status)
}

async fn get(w: &World, target: &str) -> (&'static str, u16) {
    ask(w, target, &[], "192.0.2.1").await
}

#[tokio::test]
async fn a_shadow_route_counts_and_logs_but_forwards_without_headers() {
    let w = world();
    assert_eq!(get(&w, "/shadow/x?user_id=a").await, ("admitted", 0));
    assert_eq!(get(&w, "/shadow/x?user_id=a").await, ("shadow_limited", 0));
    let uri: http::Uri = "/shadow/x?user_id=b".parse().unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &Method::GET,
        raw_target: b"/shadow/x?user_id=b",
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
        peer: None,
    };
    let Action::Forward(f) = w.decider.decide(&head).await.action else {
        panic!("a shadow route forwards")
    };
    assert!(f.rate_headers.is_none(), "a dry run shows clients nothing");
    w.double.set(Mode::Fails);
    assert_eq!(get(&w, "/shadow/x?user_id=c").await, ("store_error", 0));
}

#[tokio::test]
async fn each_route_answers_a_failing_store_by_its_own_policy() {
    let w = world();
    w.double.set(Mode::Fails);
    assert_eq!(get(&w, "/deny/x?user_id=a").await, ("store_error", 503));
    assert_eq!(get(&w, "/allow/x?user_id=a").await, ("store_error", 0));
    assert_eq!(get(&w, "/allow/x?user_id=a").await, ("store_error", 0));
    // local: the route's 4 × fallback_share 0.5 = 2 in this process.
    for _ in 0..2 {
        assert_eq!(get(&w, "/local/x?user_id=a").await, ("store_error", 0));
    }
    assert_eq!(get(&w, "/local/x?user_id=a").await, ("store_error", 429));
    // Back: the store decides again.
    w.double.set(Mode::Works);
    assert_eq!(get(&w, "/deny/x?user_id=a").await, ("admitted", 0));
    assert_eq!(get(&w, "/deny/x?user_id=a").await, ("limited", 429));
}

#[tokio::test]
async fn a_stalled_store_is_answered_by_the_policy_once_its_deadline_passes() {
    let w = world();
    w.double.set(Mode::Stalls(Duration::from_millis(30)));
    let start = std::time::Instant::now();
    assert_eq!(get(&w, "/deny/x?user_id=a").await, ("store_error", 503));
    assert_eq!(get(&w, "/allow/x?user_id=a").await, ("store_error", 0));
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn an_override_replaces_the_callers_limits_but_not_global_caps_or_buckets() {
    let w = world();
    // Everyone: 1 per caller.
    assert_eq!(get(&w, "/vip/x?user_id=a").await, ("admitted", 0));
    assert_eq!(get(&w, "/vip/x?user_id=a").await, ("limited", 429));
    // boss: 100 of its own, but the route's global 2 (one used by a) stops it at 1 more.
    assert_eq!(get(&w, "/vip/x?user_id=boss").await, ("admitted", 0));
    assert_eq!(get(&w, "/vip/x?user_id=boss").await, ("limited", 429));
    let keys = &w.double.asked()[2].keys;
    assert_eq!(
        keys,
        &[
            "sluice:{vip:boss}:60000",
            "sluice:{vip:*}:60000",
            "sluice:{@shared:boss}:60000"
        ]
    );
}

#[tokio::test]
async fn a_header_scope_is_bounded_like_an_identity() {
    let w = world();
    let tenant = |v: &'static str| [("x-tenant", v)];
    let acme = tenant("acme");
    assert_eq!(
        ask(&w, "/tenant/x", &acme, "192.0.2.1").await,
        ("admitted", 0)
    );
    assert_eq!(
        ask(&w, "/tenant/x", &acme, "192.0.2.2").await,
        ("limited", 429)
    );
    let other = tenant("globex");
    assert_eq!(
        ask(&w, "/tenant/x", &other, "192.0.2.1").await,
        ("admitted", 0)
    );
    let long = "t".repeat(300);
    let long: &'static str = Box::leak(long.into_boxed_str());
    let refused = ask(&w, "/tenant/x", &tenant(long), "192.0.2.1").await;
    assert_eq!(refused, ("identity_too_long", 400));
    let count = w.double.asked().len();
    assert_eq!(count, 3, "a refused value never reaches the store");
}

#[tokio::test]
async fn request_ids_reach_the_store_only_from_trusted_peers() {
    let w = world();
    let id = [("x-request-id", "r-1")];
    ask(&w, "/allow/x?user_id=a", &id, "10.0.0.1").await;
    ask(&w, "/allow/x?user_id=b", &id, "192.0.2.1").await;
    let asked = w.double.asked();
    assert_eq!(asked[0].retry.as_deref(), Some("r-1"));
    assert_eq!(asked[1].retry, None, "an untrusted peer's id is no id");
    // A retry of a counted request passes again, uncounted.
    assert_eq!(
        ask(&w, "/allow/x?user_id=a", &id, "10.0.0.1").await,
        ("admitted", 0)
    );
    assert_eq!(get(&w, "/allow/x?user_id=a").await, ("limited", 429));
}

const WHO: &str = r#"
upstream: { addrs: ["127.0.0.1:9"] }
identity: [{ header: x-user-id }]
trusted_proxies: ["10.0.0.1/32"]
exempt: { cidrs: ["192.0.2.128/25"], callers: [monitor] }
routes:
  - name: anon
    match: { path_prefix: /anon/ }
    limits: [{ requests: 1, window: 60s }]
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
    exempt: { methods: [delete], preflight: false }
    limits: [{ requests: 1, window: 60s }]
  - name: acme
    match: { path_prefix: /t/, headers: { x-tenant: acme } }
    limits: [{ requests: 1, window: 60s }]
  - name: tenants
    match: { path_prefix: /t/ }
    limits: [{ requests: 1, window: 60s }]
"#;

#[tokio::test]
async fn a_request_without_a_caller_gets_its_routes_policy() {
    let w = world_of(WHO);
    let none: &[(&str, &str)] = &[];
    // anonymous: one bucket for everyone without an identity.
    assert_eq!(ask(&w, "/anon/x", none, "192.0.2.1").await, ("admitted", 0));
    assert_eq!(
        ask(&w, "/anon/x", none, "192.0.2.2").await,
        ("limited", 429)
    );
    // client_ip: each client its own, read through the trusted proxy.
    assert_eq!(ask(&w, "/byip/x", none, "192.0.2.1").await, ("admitted", 0));
    assert_eq!(ask(&w, "/byip/x", none, "192.0.2.2").await, ("admitted", 0));
    assert_eq!(
        ask(&w, "/byip/x", none, "192.0.2.2").await,
        ("limited", 429)
    );
    let xff = [("x-forwarded-for", "198.51.100.7")];
    assert_eq!(ask(&w, "/byip/x", &xff, "10.0.0.1").await, ("admitted", 0));
    assert_eq!(ask(&w, "/byip/x", &xff, "10.0.0.1").await, ("limited", 429));
    assert_eq!(
        w.double.asked().last().unwrap().keys,
        ["sluice:{byip:198.51.100.7}:60000"]
    );
    // A named caller is unaffected by the policy.
    let bob = [("x-user-id", "bob")];
    assert_eq!(
        ask(&w, "/reject/x", &bob, "192.0.2.1").await,
        ("admitted", 0)
    );
    let asked = w.double.asked().len();
    assert_eq!(
        ask(&w, "/reject/x", none, "192.0.2.1").await,
        ("identity_required", 401)
    );
    for _ in 0..3 {
        assert_eq!(
            ask(&w, "/skip/x", none, "192.0.2.1").await,
            ("unidentified", 0)
        );
    }
    assert_eq!(w.double.asked().len(), asked, "neither reached the store");
    assert_eq!(ask(&w, "/skip/x", &bob, "192.0.2.1").await, ("admitted", 0));
    assert_eq!(
        ask(&w, "/skip/x", &bob, "192.0.2.1").await,
        ("limited", 429)
    );
}

#[tokio::test]
async fn exempt_requests_are_forwarded_uncounted() {
    let w = world_of(WHO);
    let bob = [("x-user-id", "bob")];
    let monitor = [("x-user-id", "monitor")];
    let preflight = [
        ("x-user-id", "bob"),
        ("access-control-request-method", "POST"),
    ];
    assert_eq!(ask(&w, "/anon/x", &bob, "192.0.2.1").await, ("admitted", 0));
    // Preflights (on by default), listed callers and networks: on every route.
    for _ in 0..3 {
        let options = ask_method(&w, Method::OPTIONS, "/anon/x", &preflight, "192.0.2.1");
        assert_eq!(options.await, ("exempt", 0));
        assert_eq!(
            ask(&w, "/anon/x", &monitor, "192.0.2.1").await,
            ("exempt", 0)
        );
        assert_eq!(ask(&w, "/anon/x", &bob, "192.0.2.200").await, ("exempt", 0));
    }
    // A plain OPTIONS is an ordinary request.
    let options = ask_method(&w, Method::OPTIONS, "/anon/x", &bob, "192.0.2.1");
    assert_eq!(options.await, ("limited", 429));
    // The route's list adds to the global one, and its preflight setting wins.
    let delete = ask_method(&w, Method::DELETE, "/skip/x", &bob, "192.0.2.1");
    assert_eq!(delete.await, ("exempt", 0));
    assert_eq!(
        ask(&w, "/skip/x", &monitor, "192.0.2.1").await,
        ("exempt", 0)
    );
    let options = ask_method(&w, Method::OPTIONS, "/skip/x", &preflight, "192.0.2.1");
    assert_eq!(options.await, ("admitted", 0));
    // The network is the client's, not a trusted proxy's.
    let forwarded = [("x-user-id", "bob"), ("x-forwarded-for", "192.0.2.130")];
    assert_eq!(ask(&w, "/t/x", &forwarded, "10.0.0.1").await, ("exempt", 0));
    assert_eq!(
        w.double.asked().len(),
        3,
        "exempt requests never reach the store"
    );
}

#[tokio::test]
async fn a_header_splits_one_path_into_two_routes() {
    let w = world_of(WHO);
    let acme = [("x-user-id", "bob"), ("x-tenant", "acme")];
    let globex = [("x-user-id", "bob"), ("x-tenant", "globex")];
    assert_eq!(ask(&w, "/t/x", &acme, "192.0.2.1").await, ("admitted", 0));
    assert_eq!(ask(&w, "/t/x", &globex, "192.0.2.1").await, ("admitted", 0));
    assert_eq!(ask(&w, "/t/x", &acme, "192.0.2.1").await, ("limited", 429));
    let keys: Vec<String> = w.double.asked().iter().map(|a| a.keys[0].clone()).collect();
    assert_eq!(
        keys[..2],
        ["sluice:{acme:bob}:60000", "sluice:{tenants:bob}:60000"]
    );
}

const PLANS: &str = r#"
upstream: { addrs: ["127.0.0.1:9"] }
identity: [{ header: x-user-id }]
trusted_proxies: ["10.0.0.1/32"]
buckets:
  account: { limits: [{ requests: 100, window: 1h }] }
plans:
  free: { limits: [{ requests: 1, window: 60s }] }
  pro: { limits: [{ requests: 3, window: 60s }, { concurrency: 2 }] }
plan: { from: [{ header: x-plan }], default: free }
routes:
  - name: api
    match: { path_prefix: / }
    limits: plan
    buckets: [account]
    overrides:
      boss: { limits: [{ requests: 50, window: 60s }] }
"#;

#[tokio::test]
async fn a_plans_limits_are_keyed_by_route_and_plan_beside_the_buckets() {
    let w = world_of(PLANS);
    let pro = [("x-user-id", "bob"), ("x-plan", "pro")];
    assert_eq!(ask(&w, "/x", &pro, "10.0.0.1").await, ("admitted", 0));
    let free = [("x-user-id", "bob")];
    assert_eq!(ask(&w, "/x", &free, "10.0.0.1").await, ("admitted", 0));
    assert_eq!(ask(&w, "/x", &free, "10.0.0.1").await, ("limited", 429));
    let boss = [("x-user-id", "boss"), ("x-plan", "pro")];
    assert_eq!(ask(&w, "/x", &boss, "10.0.0.1").await, ("admitted", 0));
    let keys: Vec<Vec<String>> = w.double.asked().iter().map(|a| a.keys.clone()).collect();
    assert_eq!(
        keys[0],
        [
            "sluice:{api+pro:bob}:60000",
            "sluice:{api+pro:bob}:cc",
            "sluice:{@account:bob}:3600000"
        ]
    );
    assert_eq!(
        keys[1],
        [
            "sluice:{api+free:bob}:60000",
            "sluice:{@account:bob}:3600000"
        ]
    );
    // An override replaces the plan's limits for its caller; the buckets still apply.
    assert_eq!(
        keys[3],
        ["sluice:{api:boss}:60000", "sluice:{@account:boss}:3600000"]
    );
    // From an untrusted peer the header is ignored: the default plan.
    let sneaky = [("x-user-id", "eve"), ("x-plan", "pro")];
    ask(&w, "/x", &sneaky, "192.0.2.1").await;
    let last = w.double.asked().last().unwrap().keys.clone();
    assert_eq!(last[0], "sluice:{api+free:eve}:60000");
}

const OUTCOMES: &str = r#"
upstream: { addrs: ["127.0.0.1:9"] }
store: { on_error: local, fallback_share: 1 }
routes:
  - name: login
    match: { path_prefix: / }
    limits: [{ requests: 2, window: 60s, count: { status: ["4xx", 500] } }]
"#;

/// Admits one request for `user` and settles it with `status`; the admission's outcome.
async fn admit_and_settle(w: &World, user: &str, status: u16) -> &'static str {
    let target = format!("/x?user_id={user}");
    let uri: http::Uri = target.parse().unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &Method::POST,
        raw_target: target.as_bytes(),
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
        peer: None,
    };
    let verdict = w.decider.decide(&head).await;
    if let Action::Forward(f) = verdict.action {
        w.decider
            .settle(f.settle.expect("a count to settle"), status, None)
            .await;
    }
    verdict.trace.decision
}

#[tokio::test]
async fn a_response_that_does_not_match_gives_its_count_back_on_either_store() {
    for mode in [Mode::Works, Mode::Fails] {
        let w = world_of(OUTCOMES);
        w.double.set(mode);
        let admitted = if mode == Mode::Works {
            "admitted"
        } else {
            "store_error"
        };
        for status in [200, 201, 302, 200, 503] {
            assert_eq!(
                admit_and_settle(&w, "a", status).await,
                admitted,
                "{mode:?}"
            );
        }
        assert_eq!(admit_and_settle(&w, "a", 404).await, admitted);
        assert_eq!(admit_and_settle(&w, "a", 500).await, admitted);
        let target = "/x?user_id=a";
        let (decision, status) = ask_method(&w, Method::POST, target, &[], "192.0.2.1").await;
        let limited = if mode == Mode::Works {
            "limited"
        } else {
            "store_error"
        };
        assert_eq!((decision, status), (limited, 429), "{mode:?}");
    }
}
