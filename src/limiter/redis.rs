//! The shared limiter in Redis (one server or a cluster): one atomic Lua call per decision.

use super::breaker::Breaker;
use super::conn::{Conn, Target};
use super::{limit_key, retry_key, Ask, Decision, LimitState, Parts, StoreError};
use crate::config::StoreConfig;
use crate::routes::Algorithm;
use crate::routes::Limit;
use pingora::time::fast_timeout::fast_timeout;
use redis::Script;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks and counts in one script, so concurrent requests on any number of instances see
/// one order: N concurrent requests against a limit L admit exactly min(N, L).
///
/// Time comes from Redis `TIME` inside the script, so instances with skewed clocks agree.
/// Each admitted request adds a member that is unique across instances (a random instance id
/// and a counter), so requests in the same microsecond never collapse into one.
pub struct RedisLimiter {
    /// Tells this limiter's connections apart in the per-thread table.
    id: u64,
    target: Target,
    check_script: Script,
    timeout: Duration,
    member_prefix: String,
    counter: AtomicU64,
    breaker: Breaker,
    /// What the last successful probe saw (a run_id, or the cluster's state), for `/health`.
    seen: std::sync::Mutex<Option<String>>,
    /// Bumped when the store comes back: every thread then drops the connection it had (which
    /// may sit in a failed reconnect) and connects anew on its next call.
    epoch: AtomicU64,
}

/// This thread's connection of one limiter: set once connected, shared by concurrent requests.
#[derive(Default)]
struct Slot {
    connection: Arc<tokio::sync::OnceCell<Conn>>,
    /// When connecting last failed; requests fail fast for [`CONNECT_BACKOFF`] after that.
    failed_at: Option<Instant>,
    /// The limiter's epoch this connection belongs to.
    epoch: u64,
}

/// How long after a failed connect this thread answers "store down" without trying again
/// (the breaker usually stops calls long before; this bounds the probe's connects too).
const CONNECT_BACKOFF: Duration = Duration::from_millis(200);

thread_local! {
    /// One multiplexed connection per limiter per worker thread, made on that thread.
    ///
    /// Pingora runs each worker thread as its own runtime, and redis-rs drives a connection
    /// from the runtime that created it: a connection made here is written, read and woken on
    /// the same thread as the requests that use it, with no cross-thread hand-off. Concurrent
    /// requests on a thread pipeline on its connection.
    static CONNECTIONS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
}

impl RedisLimiter {
    pub fn new(config: &StoreConfig, instance: &str) -> Result<Self, StoreError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            target: Target::new(config)?,
            check_script: Script::new(include_str!("check.lua")),
            timeout: config.timeout,
            member_prefix: unique_prefix(instance),
            counter: AtomicU64::new(0),
            breaker: Breaker::default(),
            seen: std::sync::Mutex::new(None),
            epoch: AtomicU64::new(0),
        })
    }

    /// Makes every thread connect anew on its next call (the store is back, or restarted).
    pub fn renew_connections(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Runs one store call through the breaker: no call at all while it is open, and the
    /// outcome counted toward opening it.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Some(since) = self.breaker.open_since() {
            return Err(StoreError::Open(since));
        }
        let result = call.await;
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(e) => {
                self.breaker.record_failure(&e.to_string());
            }
        }
        result
    }

    /// One look at the store for the background probe: its `run_id` when it answers (a new
    /// one means Redis restarted, and whatever was cached from its old data is void).
    ///
    /// The probe keeps its own plain connection in `conn`, dropped on any failure and made
    /// anew on the next probe, so it never waits on a reconnecting connection manager.
    pub async fn probe(&self, conn: &mut Option<Conn>) -> Result<String, StoreError> {
        let result = self.probe_on(conn).await;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(id) => *seen = Some(id.clone()),
            Err(_) => *conn = None,
        }
        result
    }

    async fn probe_on(&self, conn: &mut Option<Conn>) -> Result<String, StoreError> {
        if conn.is_none() {
            *conn = Some(self.bounded(self.target.connect_plain()).await?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let reply: String = self
            .bounded(self.target.probe_command().query_async(c))
            .await?;
        self.target
            .probe_identity(&reply)
            .map_err(StoreError::Reply)
    }

    /// What the last successful probe saw: a cluster's state (`cluster ok, 6 nodes`).
    pub fn cluster_state(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.clone().filter(|_| self.is_cluster())
    }

    /// Whether the store is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// This thread's connection, connecting on first use (inside a tokio runtime).
    ///
    /// Connecting is bounded by its own deadline (the store timeout, at least 1 s), not by the
    /// per-call one: a burst that arrives before a worker has connected waits for the one
    /// connect instead of timing out, which under `on_error: allow` would admit it uncounted.
    /// After a failed connect the thread fails fast for a second instead of every request
    /// waiting for a Redis that is down. Once connected, redis-rs reconnects by itself.
    async fn connection(&self) -> Result<Conn, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let (cell, failed_at) = CONNECTIONS.with(|table| {
            let mut table = table.borrow_mut();
            let slot = table.entry(self.id).or_default();
            if slot.epoch != epoch {
                *slot = Slot {
                    epoch,
                    ..Slot::default()
                };
            }
            (slot.connection.clone(), slot.failed_at)
        });
        if let Some(conn) = cell.get() {
            return Ok(conn.clone());
        }
        if failed_at.is_some_and(|t| t.elapsed() < CONNECT_BACKOFF) {
            return Err(StoreError::Unavailable);
        }
        let connect = self.target.connect();
        let deadline = self.timeout.max(Duration::from_secs(1));
        let result = match fast_timeout(deadline, cell.get_or_try_init(|| connect)).await {
            Ok(Ok(conn)) => return Ok(conn.clone()),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(deadline)),
        };
        CONNECTIONS.with(|table| {
            if let Some(slot) = table.borrow_mut().get_mut(&self.id) {
                slot.failed_at = Some(Instant::now());
            }
        });
        result
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match fast_timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    pub async fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        self.guarded(async {
            let (admitted, parts) = self.run(ask).await?;
            Ok(Decision::from_parts(admitted, ask.limits, parts))
        })
        .await
    }

    /// The state of each limit, counting nothing (the script with a cost of 0).
    pub async fn peek(&self, key: &str, limits: &[Limit]) -> Result<Vec<LimitState>, StoreError> {
        self.guarded(async {
            let peek = Ask {
                key,
                limits,
                cost: 0,
                retry: None,
            };
            let (_, parts) = self.run(&peek).await?;
            Ok(super::states(limits, parts))
        })
        .await
    }

    /// One call of `check.lua`.
    async fn run(&self, ask: &Ask<'_>) -> Result<(bool, Vec<Parts>), StoreError> {
        let (key, limits, cost, retry) = (ask.key, ask.limits, ask.cost, ask.retry);
        let mut conn = self.connection().await?;
        let member = format!(
            "{}{:x}",
            self.member_prefix,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let mut call = self.check_script.prepare_invoke();
        call.arg(member);
        match retry {
            Some(r) => call
                .arg(r.window.as_millis().max(1) as u64)
                .arg(r.max_retries),
            None => call.arg(0).arg(0),
        };
        call.arg(cost);
        for l in limits {
            let algorithm = match l.algorithm {
                Algorithm::SlidingLog => 1,
                Algorithm::SlidingWindow => 2,
                Algorithm::Gcra => 3,
            };
            call.key(limit_key(key, l))
                .arg(algorithm)
                .arg(l.requests.get())
                .arg(l.window.as_micros() as u64)
                .arg(l.burst.get());
        }
        if let Some(r) = retry {
            call.key(retry_key(key, r.id));
        }
        let reply: Vec<i64> = self.bounded(call.invoke_async(&mut conn)).await?;
        if reply.len() != 1 + 4 * limits.len() {
            return Err(StoreError::Reply(format!("{reply:?}")));
        }
        let count = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
        let parts = reply[1..]
            .chunks(4)
            .map(|c| (count(c[0]), count(c[1]), micros(c[2]), micros(c[3])))
            .collect();
        Ok((reply[0] == 1, parts))
    }
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(v.max(0) as u64)
}

/// A member prefix unique to this process with overwhelming probability: 64 random bits from
/// the standard library's randomly keyed hasher, mixed with the instance name and process id.
fn unique_prefix(instance: &str) -> String {
    use std::hash::BuildHasher;
    let random =
        std::collections::hash_map::RandomState::new().hash_one((instance, std::process::id()));
    format!("{random:016x}:")
}
