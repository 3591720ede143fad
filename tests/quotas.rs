//! Calendar quotas end to end. The sidecars run on a clock that libfaketime puts a few seconds
//! before midnight in Kathmandu (UTC+05:45, so a zone's own
//! midnight is what counts); a route allows 5 requests per day and 8 per month there. Through
//! three sidecars: exactly 5 are admitted, the refusals report the time to that midnight
//! (`Retry-After`, `RateLimit`, `/stats` `reset_at`) and the period's length
//! (`RateLimit-Policy`); after midnight the day starts afresh while the month goes on counting.
//! Redis keeps its real clock, days away: a quota is on the sidecars' clocks throughout.

mod common;

use chrono::{DateTime, Datelike, Days, TimeZone, Utc};
use chrono_tz::Tz;
use common::*;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ZONE: Tz = chrono_tz::Asia::Kathmandu;

const ROUTES: &str = "routes:
  - name: quota
    match: { path_prefix: /api/ }
    limits:
      - { requests: 5, period: day, timezone: Asia/Kathmandu }
      - { requests: 8, period: month, timezone: Asia/Kathmandu }
";

/// The faked clock: a local midnight in [`ZONE`] a few days ahead that is not the first of a
/// month (so the month goes on over it), and the offset that puts processes started now `lead`
/// before it.
struct Fake {
    offset: i64,
    midnight: DateTime<Tz>,
}

impl Fake {
    fn before_midnight(lead: Duration) -> Fake {
        let real = Utc::now();
        let mut date = real.with_timezone(&ZONE).date_naive() + Days::new(3);
        if date.day() == 1 {
            date = date + Days::new(1);
        }
        let midnight = ZONE
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
            .single()
            .unwrap();
        let offset = midnight.timestamp() - lead.as_secs() as i64 - real.timestamp();
        fake_clock(offset);
        Fake { offset, midnight }
    }

    /// The processes' time.
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.offset as u64)
    }

    fn until_midnight(&self) -> Duration {
        let at = UNIX_EPOCH + Duration::from_secs(self.midnight.timestamp() as u64);
        at.duration_since(self.now()).unwrap_or_default()
    }
}

async fn three(dir: &Path, up: &Upstream, store: &str) -> Vec<Sidecar> {
    three_sidecars(dir, up.port, &format!("{store}{ROUTES}")).await
}

async fn call(port: u16, user: &str) -> Reply {
    get(port, &format!("/api/x?user_id={user}"))
        .await
        .expect("reply")
}

/// The scenario, on whichever store the sidecars at `ports` (admin ports `admin`) share.
async fn day_and_month(fake: &Fake, ports: &[u16], admin: u16) {
    let left = fake.until_midnight();
    assert!(
        left > Duration::from_secs(3),
        "start-up took too long: {left:?} left before midnight"
    );
    let mut replies = Vec::new();
    for i in 0..7 {
        replies.push(call(ports[i % ports.len()], "ann").await);
    }
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);

    // Admitted: the day has the least left; the policy lists both periods with their lengths
    // (no DST in Kathmandu: a day is 86,400 s).
    let days_in_month = {
        let first = fake.midnight.date_naive().with_day(1).unwrap();
        let next = first + chrono::Months::new(1);
        (next - first).num_days() as u64
    };
    let fourth = &replies[3];
    assert_eq!(
        fourth.header("ratelimit-policy"),
        Some(
            format!(
                "\"quota-day\";q=5;w=86400, \"quota-month\";q=8;w={}",
                days_in_month * 86_400
            )
            .as_str()
        )
    );
    assert_eq!(fourth.header("x-ratelimit-remaining"), Some("1"));

    // Refused by the day: Retry-After is the time to midnight in Kathmandu.
    let refused = &replies[5];
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let expected = fake.until_midnight().as_secs_f64();
    assert!(
        (retry as f64 - expected).abs() <= 2.0,
        "Retry-After {retry}, midnight in {expected:.1} s"
    );
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"quota-day\";r=0;t={retry}").as_str())
    );
    let body = refused.json();
    assert_eq!(body["error"], "quota_exceeded");
    assert_eq!(body["period"], "day");
    assert_eq!(body["timezone"], "Asia/Kathmandu");
    assert_eq!(body["window_s"], 86_400);

    // /stats: used, remaining and the reset instant, in the zone's own offset.
    let stats = get(admin, "/stats/ann").await.expect("stats").json();
    assert_eq!(stats["routes"][0]["route"], "quota");
    let limits = stats["routes"][0]["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("{stats}"));
    let day = &limits[0];
    assert_eq!(
        (day["used"].as_u64(), day["remaining"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(
        day["reset_at"],
        fake.midnight.format("%Y-%m-%dT%H:%M:%S+05:45").to_string()
    );
    assert_eq!(day["period"], "day");
    assert_eq!(limits[1]["used"], 5);

    // Midnight: the day starts afresh, the month does not: 3 more, then the month refuses
    // until its own end.
    tokio::time::sleep(fake.until_midnight() + Duration::from_millis(500)).await;
    let mut after = Vec::new();
    for i in 0..4 {
        after.push(call(ports[i % ports.len()], "ann").await);
    }
    let statuses: Vec<u16> = after.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let by_month = &after[3];
    assert_eq!(by_month.json()["period"], "month");
    let retry: u64 = by_month.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 86_400 && retry < 31 * 86_400, "{retry}");
    // Another caller has its own quotas.
    assert_eq!(call(ports[0], "bob").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_exactly_and_reset_at_midnight_in_their_zone_through_three_sidecars() {
    let _heavy = HEAVY.lock().await;
    let fake = Fake::before_midnight(Duration::from_secs(12));
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let sidecars = three(&dir, &up, &redis_store(&redis)).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    day_and_month(&fake, &ports, sidecars[0].admin_port).await;
    // Counters, not logs: one hash per caller and quota, expiring with its period.
    let keys = redis.cmd("KEYS *day@Asia/Kathmandu").await;
    assert!(keys.starts_with("*2\r\n"), "ann's and bob's: {keys}");
    let ann = keys
        .lines()
        .find(|k| k.contains("ann"))
        .unwrap_or_else(|| panic!("{keys}"));
    assert_eq!(redis.cmd(&format!("TYPE {ann}")).await, "+hash\r\n");
    let ttl = redis.cmd(&format!("PTTL {ann}")).await;
    let ttl: i64 = ttl.trim_start_matches(':').trim().parse().expect("a TTL");
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_reset_at_midnight_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    let fake = Fake::before_midnight(Duration::from_secs(30));
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let sidecars = three(&dir, &up, &cluster.store()).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    day_and_month(&fake, &ports, sidecars[0].admin_port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_reset_at_midnight_on_the_memory_store() {
    let fake = Fake::before_midnight(Duration::from_secs(8));
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{ROUTES}");
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    day_and_month(&fake, &[s.port], s.admin_port).await;
}
