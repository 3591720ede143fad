//! Plans end to end through three sidecars on one Redis: a plan named by a verified token's
//! claim, by a trusted proxy's header, or by a callers file of hashed API keys; switches
//! mid-window; unknown plans; a callers file reloaded on SIGHUP.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn token(sub: &str, plan: &str) -> String {
    let claims =
        json!({"sub": sub, "plan": plan, "exp": jsonwebtoken::get_current_timestamp() + 600});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct World {
    _redis: Redis,
    _up: Upstream,
    sidecars: Vec<Sidecar>,
    callers: std::path::PathBuf,
}

impl World {
    fn ports(&self) -> Vec<u16> {
        self.sidecars.iter().map(|s| s.port).collect()
    }
}

async fn world() -> World {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let secret = dir.join("hs.key");
    std::fs::write(&secret, SECRET).unwrap();
    let callers = dir.join("plans.yaml");
    std::fs::write(&callers, "# API keys on a paid plan\nsk_live_pro: pro\n").unwrap();
    let body = format!(
        "{}trusted_proxies: [\"127.0.0.2/32\"]
identity:
  - jwt: {{ claim: sub, secret_file: \"{}\" }}
  - api_key: {{ header: x-api-key }}
plans:
  free: {{ limits: [{{ requests: 5, window: 60s }}] }}
  pro: {{ limits: [{{ requests: 20, window: 60s }}] }}
plan:
  from:
    - jwt_claim: plan
    - header: x-plan
    - callers_file: \"{}\"
  default: free
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    limits: plan
",
        redis_store(&redis),
        secret.display(),
        callers.display()
    );
    let sidecars = three_sidecars(&dir, up.port, &body).await;
    World {
        _redis: redis,
        _up: up,
        sidecars,
        callers,
    }
}

/// `n` requests at once through the three sidecars with one header; how many got 200, and
/// one of the 429s.
async fn burst_as(ports: &[u16], n: usize, header: (&str, &str)) -> (usize, Option<Reply>) {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            (
                "/api/x".to_string(),
                vec![(header.0.to_string(), header.1.to_string())],
            )
        })
        .collect();
    let replies = burst_with(ports, &requests).await;
    let refused = replies.iter().find(|r| r.status == 429).cloned();
    (count_status(&replies, 200), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_switch_takes_effect_at_once_and_never_inherits_a_count() {
    let _heavy = HEAVY.lock().await;
    let w = world().await;
    let ports = w.ports();
    let bearer = |plan: &str| format!("Bearer {}", token("alice", plan));
    // pro: 20 per minute, exactly, across three sidecars; the 429 names the plan.
    let (ok, refused) = burst_as(&ports, 10, ("authorization", &bearer("pro"))).await;
    assert_eq!(ok, 10);
    assert!(refused.is_none());
    // Downgraded mid-window: the free plan's own 5, not what is left of pro's 20.
    let (ok, refused) = burst_as(&ports, 12, ("authorization", &bearer("free"))).await;
    assert_eq!(ok, 5);
    let refused = refused.expect("a 429");
    assert_eq!(refused.json()["plan"], "free", "{refused:?}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("5"));
    // Upgraded again: pro's count is where it was (10 of 20).
    let (ok, refused) = burst_as(&ports, 15, ("authorization", &bearer("pro"))).await;
    assert_eq!(ok, 10);
    assert_eq!(refused.expect("a 429").json()["plan"], "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_come_from_the_callers_file_a_trusted_header_or_the_default() {
    let _heavy = HEAVY.lock().await;
    let mut w = world().await;
    let ports = w.ports();
    // A hashed API key listed raw in the callers file: pro.
    let (ok, _) = burst_as(&ports, 25, ("x-api-key", "sk_live_pro")).await;
    assert_eq!(ok, 20);
    // An unlisted key: the default plan.
    let (ok, refused) = burst_as(&ports, 10, ("x-api-key", "sk_live_other")).await;
    assert_eq!(ok, 5);
    assert_eq!(refused.unwrap().json()["plan"], "free");
    // x-plan from the trusted proxy names the plan; from anyone else it is ignored.
    let s = &w.sidecars[0];
    let h = [("x-api-key", "sk_live_h"), ("x-plan", "pro")];
    for _ in 0..6 {
        let r = request_from("127.0.0.2", s.port, "/api/x", &h)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let h = [("x-api-key", "sk_live_u"), ("x-plan", "pro")];
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..6 {
            out.push(
                request_from("127.0.0.3", s.port, "/api/x", &h)
                    .await
                    .unwrap()
                    .status,
            );
        }
        out
    };
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // A plan that does not exist: the default, counted.
    let h = [("x-api-key", "sk_live_g"), ("x-plan", "gold")];
    let r = request_from("127.0.0.2", s.port, "/api/x", &h)
        .await
        .unwrap();
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "{r:?}");
    let page = get(s.admin_port, "/metrics").await.unwrap().body;
    assert_eq!(metric(&page, "sluice_unknown_plan_total", ""), 1.0);
    // /stats takes the raw key, hashes it, and names the plan.
    let stats = get(s.admin_port, "/stats/sk_live_pro").await.unwrap();
    let route = &stats.json()["routes"][0];
    assert_eq!(route["plan"], "pro", "{stats:?}");
    assert_eq!(route["limits"][0]["used"], 20, "{stats:?}");
    assert!(!stats.body.contains("sk_live_pro"), "{}", stats.body);
    // The callers file is re-read on SIGHUP; a broken one is refused and the old one kept.
    std::fs::write(&w.callers, "sk_live_pro: free\nsk_live_new: pro\n").unwrap();
    for s in &w.sidecars {
        signal(s.proc.pid(), "-HUP");
    }
    let port = w.sidecars[1].port;
    let admin = w.sidecars[1].admin_port;
    wait_until(
        &mut w.sidecars[1].proc,
        Duration::from_secs(5),
        async || {
            let stats = get(admin, "/stats/sk_live_new").await.unwrap();
            stats.json()["routes"][0]["plan"] == "pro"
        },
    )
    .await;
    let r = request(port, "GET", "/api/x", &[("x-api-key", "sk_live_pro")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "now on free, whose count is its own: {r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "{r:?}");
    std::fs::write(&w.callers, "sk_live_new: platinum\n").unwrap();
    let s = &mut w.sidecars[1];
    signal(s.proc.pid(), "-HUP");
    let start = std::time::Instant::now();
    while !s.proc.log_text().contains("unknown plan \"platinum\"") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            s.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = get(admin, "/stats/sk_live_new").await.unwrap();
    assert_eq!(
        stats.json()["routes"][0]["plan"],
        "pro",
        "the old file is kept"
    );
}
