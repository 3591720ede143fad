//! The shared limiter in Redis (one server or a cluster): one atomic Lua call per decision.

use super::breaker::Breaker;
use super::conn::{Conn, Target};
use super::{limit_key, retry_key, Ask, Decision, LimitState, Parts, StoreError};
use super::{Algorithm, Limit, StoreConfig};
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
    /// The decisions of this thread waiting to be sent (see [`drive`]).
    queue: Arc<std::sync::Mutex<Queue>>,
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
            // A caller's broken keys say nothing about the store, which answered.
            Ok(_) | Err(StoreError::Caller(_)) => self.breaker.record_success(),
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
            *conn = Some(bounded(self.timeout, self.target.connect_plain()).await?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let reply: String =
            bounded(self.timeout, self.target.probe_command().query_async(c)).await?;
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
    async fn connection(&self) -> Result<(Conn, Arc<std::sync::Mutex<Queue>>), StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let (cell, queue, failed_at) = CONNECTIONS.with(|table| {
            let mut table = table.borrow_mut();
            let slot = table.entry(self.id).or_default();
            if slot.epoch != epoch {
                *slot = Slot {
                    epoch,
                    ..Slot::default()
                };
            }
            (slot.connection.clone(), slot.queue.clone(), slot.failed_at)
        });
        if let Some(conn) = cell.get() {
            return Ok((conn.clone(), queue));
        }
        if failed_at.is_some_and(|t| t.elapsed() < CONNECT_BACKOFF) {
            return Err(StoreError::Unavailable);
        }
        let connect = self.target.connect();
        let deadline = self.timeout.max(Duration::from_secs(1));
        let result = match fast_timeout(deadline, cell.get_or_try_init(|| connect)).await {
            Ok(Ok(conn)) => return Ok((conn.clone(), queue)),
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

    /// One run of `check.lua` for `ask`: alone (a cluster, a peek), or queued on this thread
    /// to go out with whatever else is waiting (see [`drive`]).
    async fn run(&self, ask: &Ask<'_>) -> Result<(bool, Vec<Parts>), StoreError> {
        let call = Call::new(ask, self.member());
        let (mut conn, queue) = self.connection().await?;
        // A cluster spreads callers over slots, and one script call may only touch one slot:
        // there every decision is its own call. So is a peek (admin traffic, never hot).
        if self.is_cluster() || ask.cost == 0 {
            let mut replies = send(&mut conn, &[&call], self.timeout).await?;
            return replies
                .pop()
                .unwrap_or_else(|| Err(StoreError::Reply("no decision".into())));
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = lock(&queue);
            q.pending.push(Pending { call, done });
            let start = q.sending < MAX_IN_FLIGHT;
            q.sending += usize::from(start);
            start
        };
        if start {
            tokio::spawn(drive(queue, conn, self.timeout));
        }
        match fast_timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            // The driver ended without answering (its runtime is shutting down).
            Ok(Err(_)) => Err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// A member prefix no other request of any instance uses.
    fn member(&self) -> String {
        format!(
            "{}{:x}",
            self.member_prefix,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The script of every call, one decision or a batch (see its header).
static CHECK: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("check.lua")));

/// The most decisions one script call makes: Redis runs a script to its end before anything
/// else, and 64 decisions take it a few hundred microseconds.
const MAX_BATCH: usize = 64;

/// One decision's share of a script call: its keys and arguments.
struct Call {
    keys: Vec<String>,
    member: String,
    /// The retry window (ms) and budget of a request id; its key is the last of `keys`.
    retry: Option<(u64, u32)>,
    cost: u32,
    limits: Vec<Limit>,
}

impl Call {
    fn new(ask: &Ask<'_>, member: String) -> Call {
        let mut keys: Vec<String> = ask.limits.iter().map(|l| limit_key(ask.key, l)).collect();
        let retry = ask.retry.map(|r| {
            keys.push(retry_key(ask.key, r.id));
            (r.window.as_millis().max(1) as u64, r.max_retries)
        });
        Call {
            keys,
            member,
            retry,
            cost: ask.cost,
            limits: ask.limits.to_vec(),
        }
    }

    fn encode(&self, cmd: &mut redis::Cmd) {
        let (retry_ms, max_retries) = self.retry.unwrap_or((0, 0));
        cmd.arg(&self.member)
            .arg(retry_ms)
            .arg(max_retries)
            .arg(self.cost)
            .arg(self.limits.len());
        for l in &self.limits {
            let algorithm = match l.algorithm {
                Algorithm::SlidingLog => 1,
                Algorithm::SlidingWindow => 2,
                Algorithm::Gcra => 3,
            };
            let micros = l.window.as_micros() as u64;
            cmd.arg(algorithm)
                .arg(l.requests.get())
                .arg(micros)
                .arg(l.burst.get())
                .arg(micros.div_ceil(1000));
        }
    }
}

/// A decision waiting for the call that carries it.
struct Pending {
    call: Call,
    done: tokio::sync::oneshot::Sender<Result<(bool, Vec<Parts>), StoreError>>,
}

/// The decisions of one thread waiting for a script call, and how many drivers are sending.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    sending: usize,
}

/// Script calls one thread keeps in flight: while one is in Redis, the next is being sent
/// (pipelined on the same connection), so neither side waits idle for the other. One or four
/// measured the same as two (`bench/optimisations.md`, round 3).
const MAX_IN_FLIGHT: usize = 2;

fn lock(queue: &std::sync::Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends a thread's waiting decisions, as many as are waiting (up to [`MAX_BATCH`]) in one
/// script call, until none are left. At most [`MAX_IN_FLIGHT`] drivers run per thread: a request
/// that finds fewer goes out at once, alone; under load, the requests that arrive while the
/// calls are out go together in the next. Redis decides them one after another, exactly as
/// separate calls would be decided.
async fn drive(queue: Arc<std::sync::Mutex<Queue>>, mut conn: Conn, timeout: Duration) {
    /// Lets the next request start a driver should this one end early (its task dropped).
    struct Sending(Arc<std::sync::Mutex<Queue>>);
    impl Drop for Sending {
        fn drop(&mut self) {
            lock(&self.0).sending -= 1;
        }
    }
    let _sending = Sending(queue.clone());
    loop {
        let batch: Vec<Pending> = {
            let mut q = lock(&queue);
            // A request that stopped waiting (its deadline passed, its client left) has been
            // answered without the store: counting it now would count what was not decided.
            q.pending.retain(|p| !p.done.is_closed());
            if q.pending.is_empty() {
                return;
            }
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).collect()
        };
        let calls: Vec<&Call> = batch.iter().map(|p| &p.call).collect();
        match send(&mut conn, &calls, timeout).await {
            Ok(replies) => {
                for (p, reply) in batch.into_iter().zip(replies) {
                    let _ = p.done.send(reply);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One script call deciding `calls` in order, loading the script first if Redis lacks it: the
/// call's own failure, or each decision's outcome (one can fail while the others stand).
async fn send(
    conn: &mut Conn,
    calls: &[&Call],
    timeout: Duration,
) -> Result<Vec<Result<(bool, Vec<Parts>), StoreError>>, StoreError> {
    let keys: usize = calls.iter().map(|c| c.keys.len()).sum();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(CHECK.get_hash()).arg(keys);
    for c in calls {
        for k in &c.keys {
            cmd.arg(k);
        }
    }
    cmd.arg(calls.len());
    for c in calls {
        c.encode(&mut cmd);
    }
    let reply: Vec<i64> = match bounded(timeout, cmd.query_async(conn)).await {
        Err(StoreError::Redis(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            bounded(timeout, CHECK.load_async(conn)).await?;
            bounded(timeout, cmd.query_async(conn)).await?
        }
        other => other?,
    };
    let expected: usize = calls.iter().map(|c| 1 + 4 * c.limits.len()).sum();
    if reply.len() != expected {
        return Err(StoreError::Reply(format!("{reply:?}")));
    }
    let count = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
    let mut rest = &reply[..];
    Ok(calls
        .iter()
        .map(|c| {
            let (one, next) = rest.split_at(1 + 4 * c.limits.len());
            rest = next;
            if one[0] < 0 {
                return Err(StoreError::Caller(
                    "the script failed on this caller's keys (Redis's log says why)".into(),
                ));
            }
            let parts = one[1..]
                .chunks(4)
                .map(|p| (count(p[0]), count(p[1]), micros(p[2]), micros(p[3])))
                .collect();
            Ok((one[0] == 1, parts))
        })
        .collect())
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match fast_timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
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
