//! The shared limiter in Redis (one server or a cluster): one atomic script call per decision
//! and store node (see `check.lua` and `redis/ops.rs`).

mod ops;

use self::ops::{bounded, is_slot, queued, Calling, Op, Queue, Reply, ScriptClock, Sender};
pub use self::ops::{LIBRARY, SCRIPT};
use super::ask::{Ask, Check, Decision, LimitState, Parts, Permit, Receipt, Refused};
use super::breaker::Breaker;
use super::conn::{Conn, Target};
use super::keys::{retry_key, tag};
use super::leases::Leases;
use super::memory::Clock;
use super::{StoreConfig, StoreError};
use pingora::time::fast_timeout::fast_timeout;
use redis::cluster_routing::Slot as HashSlot;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks and counts in one script, so concurrent requests on any number of instances see
/// one order: N concurrent requests against a limit L admit exactly min(N, L).
///
/// Time comes from Redis `TIME` inside the script, so instances with skewed clocks agree.
/// Each request has a member that is unique across instances (a random instance id and a
/// counter): its log entries and its slot leases are named by it, so requests in the same
/// microsecond never collapse into one.
pub struct RedisLimiter {
    /// Tells this limiter's connections apart in the per-thread table.
    id: u64,
    target: Target,
    timeout: Duration,
    member_prefix: Arc<str>,
    breaker: Breaker,
    /// What the last successful probe saw (a run_id, or the cluster's state), for `/health`.
    seen: std::sync::Mutex<Option<String>>,
    /// Bumped when the store comes back: every thread then drops the connection it had (which
    /// may sit in a failed reconnect) and connects anew on its next call.
    epoch: AtomicU64,
    lease: Duration,
    leases: Arc<Leases>,
    /// `None`: Redis `TIME` (always, but in tests; see [`RedisLimiter::with_clock`]).
    clock: ScriptClock,
    /// Decisions across cluster slots that reserved on one slot and were refused on another
    /// (what was reserved is given back: see [`RedisLimiter::check`]).
    rollbacks: AtomicU64,
}

/// This thread's connection of one limiter: set once connected, shared by concurrent requests.
#[derive(Default)]
struct ThreadConn {
    connection: Arc<tokio::sync::OnceCell<(Conn, Calling)>>,
    /// The operations of this thread waiting to be sent.
    queue: Arc<std::sync::Mutex<Queue>>,
    /// When connecting last failed; requests fail fast for [`CONNECT_BACKOFF`] after that.
    failed_at: Option<Instant>,
    /// The limiter's epoch this connection belongs to.
    epoch: u64,
}

/// How long after a failed connect this thread answers "store down" without trying again
/// (the breaker usually stops calls long before; this bounds the probe's connects too).
const CONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// Leases renewed per script call.
const RENEW_BATCH: usize = 512;

thread_local! {
    /// One multiplexed connection per limiter per worker thread, made on that thread.
    ///
    /// Pingora runs each worker thread as its own runtime, and redis-rs drives a connection
    /// from the runtime that created it: a connection made here is written, read and woken on
    /// the same thread as the requests that use it, with no cross-thread hand-off. Concurrent
    /// requests on a thread pipeline on its connection.
    static CONNECTIONS: RefCell<HashMap<u64, ThreadConn>> = RefCell::new(HashMap::new());
}

impl RedisLimiter {
    pub fn new(config: &StoreConfig, instance: &str) -> Result<Self, StoreError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            target: Target::new(config)?,
            timeout: config.timeout,
            member_prefix: unique_prefix(instance).into(),
            breaker: Breaker::default(),
            seen: std::sync::Mutex::new(None),
            epoch: AtomicU64::new(0),
            lease: config.lease_ttl,
            leases: Arc::new(Leases::new(config.max_callers)),
            clock: None,
            rollbacks: AtomicU64::new(0),
        })
    }

    /// A limiter whose script takes its time from `clock` instead of Redis `TIME`: for tests
    /// that run the memory store and the script side by side on one clock. Exactness across
    /// sidecars needs Redis's own time; never use this in a deployment.
    pub fn with_clock(config: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        Ok(Self {
            clock: Some(clock),
            ..Self::new(config, "test")?
        })
    }

    /// Makes every thread connect anew on its next call (the store is back, or restarted).
    pub fn renew_connections(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Decisions refused on one cluster slot after reserving on another (see `check`).
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }

    /// In-flight slots held now (requests, not slot keys).
    pub fn slots_held(&self) -> usize {
        self.leases.len()
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

    /// This thread's connection, connecting (and loading the script) on first use.
    ///
    /// Connecting is bounded by its own deadline (the store timeout, at least 1 s), not by the
    /// per-call one: a burst that arrives before a worker has connected waits for the one
    /// connect instead of timing out, which under `on_error: allow` would admit it uncounted.
    /// After a failed connect the thread fails fast for a second instead of every request
    /// waiting for a Redis that is down. Once connected, redis-rs reconnects by itself.
    async fn connection(&self) -> Result<(Sender, Arc<std::sync::Mutex<Queue>>), StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let (cell, queue, failed_at) = CONNECTIONS.with(|table| {
            let mut table = table.borrow_mut();
            let slot = table.entry(self.id).or_default();
            if slot.epoch != epoch {
                *slot = ThreadConn {
                    epoch,
                    ..ThreadConn::default()
                };
            }
            (slot.connection.clone(), slot.queue.clone(), slot.failed_at)
        });
        if let Some(conn) = cell.get() {
            return Ok((self.sender(conn), queue));
        }
        if failed_at.is_some_and(|t| t.elapsed() < CONNECT_BACKOFF) {
            return Err(StoreError::Unavailable);
        }
        // The code is loaded as the connection is made (on every node of a cluster): a first
        // burst would otherwise find it missing on every call and load it once per request.
        let connect = async {
            let mut conn = self.target.connect().await?;
            let calling = ops::load(&mut conn).await?;
            Ok((conn, calling))
        };
        let deadline = self.timeout.max(Duration::from_secs(1));
        let result = match fast_timeout(deadline, cell.get_or_try_init(|| connect)).await {
            Ok(Ok(conn)) => return Ok((self.sender(conn), queue)),
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

    fn sender(&self, (conn, calling): &(Conn, Calling)) -> Sender {
        Sender {
            conn: conn.clone(),
            calling: *calling,
            prefix: self.member_prefix.clone(),
            clock: self.clock.clone(),
            timeout: self.timeout,
        }
    }

    /// Sends `op` alone, or queued on this thread to go out with whatever else is waiting.
    async fn run(&self, op: Op, batch: bool) -> Result<Reply, StoreError> {
        let (mut sender, queue) = self.connection().await?;
        // A cluster spreads keys over slots, and one script call may only touch one slot:
        // there every operation is its own call.
        if self.is_cluster() || !batch {
            let timeout = self.timeout;
            let prefix = sender.prefix.clone();
            let mut replies = ops::send(
                &mut sender.conn,
                sender.calling,
                &[&op],
                &prefix,
                &sender.clock,
                timeout,
            )
            .await?;
            return replies
                .pop()
                .unwrap_or_else(|| Err(StoreError::Reply("no reply".into())));
        }
        queued(&queue, &sender, op).await
    }

    /// The checks grouped by cluster slot, in a fixed order (one group on a single Redis): one
    /// script call may touch one slot only.
    fn groups<'c>(&self, checks: &'c [Check]) -> Vec<Vec<(usize, &'c Check)>> {
        if !self.is_cluster() {
            return vec![checks.iter().enumerate().collect()];
        }
        let mut groups: Vec<(HashSlot, Vec<(usize, &Check)>)> = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            let slot = HashSlot::for_key(&c.key);
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push((i, c)),
                None => groups.push((slot, vec![(i, c)])),
            }
        }
        // Every sidecar takes the groups in one order: by their first hash tag, but groups of
        // global keys last. A narrow key refuses most often, and what a refused request
        // reserved before its refusal is given back but blocks others meanwhile: reserved on
        // a caller's own key that blocks only the caller, on a global key everyone.
        let order = |g: &[(usize, &Check)]| {
            let t = tag(&g[0].1.key);
            (t.ends_with(":*}"), t.to_string())
        };
        groups.sort_by_key(|(_, g)| order(g));
        groups.into_iter().map(|(_, g)| g).collect()
    }

    pub async fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        let member = self.leases.member();
        if ask.holds_slots() && !self.leases.has_room(member) {
            return Err(StoreError::Full(self.leases.len()));
        }
        let (decision, _) = self.guarded(self.decide(ask, member)).await?;
        self.hold(ask, decision, member).await
    }

    /// Every group of the request's checks, one call each, in slot order. On one Redis that is
    /// one call, all or nothing. On a cluster, a group that refuses after earlier groups
    /// counted gives back what they counted, so no limit is ever exceeded; a request deciding
    /// meanwhile may see those counts and be refused (a transient under-admission).
    async fn decide(&self, ask: &Ask<'_>, member: u64) -> Result<(Decision, u64), StoreError> {
        if !self.is_cluster() {
            return self.decide_at_once(ask, member).await;
        }
        let groups = self.groups(ask.checks);
        let mut parts: Vec<Parts> = vec![Default::default(); ask.checks.len()];
        let mut done: Vec<(usize, u64, Option<String>)> = Vec::new();
        let mut replayed = false;
        for (g, group) in groups.iter().enumerate() {
            let checks: Vec<&Check> = group.iter().map(|(_, c)| *c).collect();
            // The request id's mark lives beside the first group's keys.
            let retry = match (g, ask.retry) {
                (0, Some(r)) => Some((
                    retry_key(&checks[0].key, r.id),
                    (r.window.as_millis() as u64).max(1),
                    r.max_retries,
                )),
                _ => None,
            };
            let id_key = retry.as_ref().map(|r| r.0.clone());
            let now = ops::quota_instant(&checks, &self.clock);
            let op = Op::check(&checks, self.lease, member, retry, replayed, ask.cost, now);
            let reply = self.run(op, ask.cost > 0).await;
            let (status, group_parts, at) = match reply {
                Ok(Reply::Checked { status, parts, at }) => (status, parts, at),
                Ok(Reply::Done) => Err(StoreError::Reply("not a check reply".into()))?,
                Err(e) => {
                    self.undo(&groups, &done, ask.cost, member, replayed).await;
                    return Err(e);
                }
            };
            for ((i, _), p) in group.iter().zip(group_parts) {
                parts[*i] = p;
            }
            if status == 0 {
                if !done.is_empty() {
                    self.rollbacks.fetch_add(1, Ordering::Relaxed);
                    self.undo(&groups, &done, ask.cost, member, replayed).await;
                }
                let states: Vec<LimitState> = group
                    .iter()
                    .map(|(i, c)| LimitState::new(c.kind, parts[*i]))
                    .collect();
                let refused = Refused::longest(&states)
                    .map(|r| Refused {
                        index: group[r.index].0,
                        ..r
                    })
                    .ok_or_else(|| StoreError::Reply("a refusal without a limit".into()))?;
                return Ok((Decision::Limited(refused), at));
            }
            replayed |= status == 2;
            let mark = id_key.filter(|_| status == 1);
            done.push((g, at, mark));
        }
        let at = done.first().map_or(0, |d| d.1);
        let receipt = Receipt {
            member,
            at,
            replayed,
        };
        Ok((
            Decision::from_parts(true, ask.checks, parts, None, receipt),
            at,
        ))
    }

    /// The whole decision in one call (one Redis: every key in one script, all or nothing).
    async fn decide_at_once(
        &self,
        ask: &Ask<'_>,
        member: u64,
    ) -> Result<(Decision, u64), StoreError> {
        let retry = match (ask.retry, ask.checks.first()) {
            (Some(r), Some(first)) => Some((
                retry_key(&first.key, r.id),
                (r.window.as_millis() as u64).max(1),
                r.max_retries,
            )),
            _ => None,
        };
        let now = ops::quota_instant(ask.checks, &self.clock);
        let op = Op::check(ask.checks, self.lease, member, retry, false, ask.cost, now);
        match self.run(op, ask.cost > 0).await? {
            Reply::Checked { status, parts, at } => {
                let receipt = Receipt {
                    member,
                    at,
                    replayed: status == 2,
                };
                let decision = Decision::from_parts(status != 0, ask.checks, parts, None, receipt);
                Ok((decision, at))
            }
            Reply::Done => Err(StoreError::Reply("not a check reply".into())),
        }
    }

    /// Gives back what the groups in `done` counted (best effort: a failure leaves a count that
    /// runs out with its window, and a slot whose lease does).
    async fn undo(
        &self,
        groups: &[Vec<(usize, &Check)>],
        done: &[(usize, u64, Option<String>)],
        cost: u32,
        member: u64,
        replayed: bool,
    ) {
        for (g, at, mark) in done {
            let group = &groups[*g];
            let rates: Vec<&Check> = group
                .iter()
                .map(|(_, c)| *c)
                .filter(|c| !is_slot(&c.kind) && !replayed)
                .collect();
            let slots: Vec<&Check> = group
                .iter()
                .map(|(_, c)| *c)
                .filter(|c| is_slot(&c.kind))
                .collect();
            let mut ops = Vec::new();
            if !rates.is_empty() || mark.is_some() {
                ops.push(Op::undo(
                    &rates,
                    self.lease,
                    member,
                    cost,
                    *at,
                    mark.clone(),
                ));
            }
            if !slots.is_empty() {
                let keys = slots.iter().map(|c| c.key.clone()).collect();
                ops.push(Op::Release { keys, member });
            }
            for op in ops {
                if let Err(e) = self.run(op, false).await {
                    log::debug!("store: giving back a reservation failed: {e}");
                }
            }
        }
    }

    /// An admitted request's slots, registered for renewal as its permit (given back when the
    /// registry is full: a slot nobody renews would expire under its request).
    async fn hold(
        &self,
        ask: &Ask<'_>,
        decision: Decision,
        member: u64,
    ) -> Result<Decision, StoreError> {
        let Decision::Admitted {
            states, receipt, ..
        } = decision
        else {
            return Ok(decision);
        };
        let slots: Vec<String> = ask
            .checks
            .iter()
            .filter(|c| is_slot(&c.kind))
            .map(|c| c.key.clone())
            .collect();
        if slots.is_empty() {
            return Ok(Decision::Admitted {
                states,
                permit: None,
                receipt,
            });
        }
        let permit = Permit {
            member,
            slots: slots.clone(),
            leases: self.leases.clone(),
        };
        if !self.leases.hold(member, slots) {
            self.release(&permit).await;
            return Err(StoreError::Full(self.leases.len()));
        }
        Ok(Decision::Admitted {
            states,
            permit: Some(permit),
            receipt,
        })
    }

    /// The state of each limit, counting nothing (checks with a cost of 0).
    pub async fn peek(&self, checks: &[Check]) -> Result<Vec<LimitState>, StoreError> {
        let ask = Ask {
            checks,
            cost: 0,
            retry: None,
        };
        let (decision, _) = self.guarded(self.decide(&ask, 0)).await?;
        match decision {
            Decision::Admitted { states, .. } => Ok(states),
            Decision::Limited(_) => Err(StoreError::Reply("a peek was refused".into())),
        }
    }

    /// Replaces what `member` counted (`counted` units at `at`) by `cost` on every one of
    /// `checks` (0 undoes it); `retry_id` drops that request id's mark. One call per slot group.
    pub async fn adjust(
        &self,
        checks: &[Check],
        member: u64,
        (counted, cost): (u32, u32),
        at: u64,
        retry_id: Option<&str>,
    ) -> Result<(), StoreError> {
        for (g, group) in self.groups(checks).iter().enumerate() {
            let checks: Vec<&Check> = group.iter().map(|(_, c)| *c).collect();
            let id_key = retry_id
                .filter(|_| g == 0)
                .map(|id| retry_key(&checks[0].key, id));
            let Op::Adjust {
                keys,
                limits,
                drop_id,
                ..
            } = Op::undo(&checks, self.lease, member, counted, at, id_key)
            else {
                continue;
            };
            let op = Op::Adjust {
                keys,
                limits,
                member,
                counted,
                cost,
                at,
                drop_id,
            };
            self.guarded(self.run(op, false)).await?;
        }
        Ok(())
    }

    /// Frees a finished request's slots (one call per slot group).
    pub async fn release(&self, permit: &Permit) {
        for group in self.slot_groups(permit.slots.iter().map(|k| (permit.member, k.clone()))) {
            let keys = group.into_iter().map(|(_, k)| k).collect();
            let op = Op::Release {
                keys,
                member: permit.member,
            };
            if let Err(e) = self.guarded(self.run(op, true)).await {
                log::debug!("store: releasing a slot failed (its lease runs out): {e}");
            }
        }
        self.leases.forget(permit.member);
    }

    /// Renews every lease this process holds, 512 per call.
    pub async fn renew(&self) {
        let held = self.leases.snapshot();
        let pairs = held
            .into_iter()
            .flat_map(|(member, keys)| keys.into_iter().map(move |k| (member, k)));
        for group in self.slot_groups(pairs) {
            for chunk in group.chunks(RENEW_BATCH) {
                let op = Op::Renew {
                    keys: chunk.iter().map(|(_, k)| k.clone()).collect(),
                    members: chunk.iter().map(|(m, _)| *m).collect(),
                    lease_us: super::layout::lease_ms(self.lease) * 1000,
                };
                if let Err(e) = self.guarded(self.run(op, false)).await {
                    log::warn!(
                        "store: renewing {} in-flight leases failed: {e}",
                        chunk.len()
                    );
                }
            }
        }
    }

    /// (member, key) pairs grouped by cluster slot (one group on a single Redis).
    fn slot_groups(&self, pairs: impl Iterator<Item = (u64, String)>) -> Vec<Vec<(u64, String)>> {
        let mut groups: HashMap<Option<HashSlot>, Vec<(u64, String)>> = HashMap::new();
        for (m, k) in pairs {
            let slot = self.is_cluster().then(|| HashSlot::for_key(&k));
            groups.entry(slot).or_default().push((m, k));
        }
        groups.into_values().collect()
    }
}

/// A member prefix unique to this process with overwhelming probability: 64 random bits from
/// the standard library's randomly keyed hasher, mixed with the instance name and process id.
fn unique_prefix(instance: &str) -> String {
    use std::hash::BuildHasher;
    let random =
        std::collections::hash_map::RandomState::new().hash_one((instance, std::process::id()));
    format!("{random:016x}:")
}
