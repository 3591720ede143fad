//! The script's operations on the wire: how each is encoded (the layout of limiter/layout.rs),
//! how a call carrying several is sent and answered, and the per-thread batching of calls.

use super::super::conn::Conn;
use super::super::layout::{
    limit_args, LIMIT_ARGS, OP_ADJUST, OP_CHECK, OP_RELEASE, OP_RENEW, REPLY_PER_LIMIT,
};
use super::super::{Check, Kind, Parts, StoreError};
use pingora::time::fast_timeout::fast_timeout;
use redis::Script;
use std::borrow::Borrow;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// The store's code as a script, for a Redis without functions (see [`Calling`]).
pub static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&super::super::layout::script_source()));

/// The store's code as a function library, named after the script's hash: sidecars of different
/// versions sharing a Redis load different libraries, and one version's sidecars all replace the
/// same one with the same code.
pub static LIBRARY: LazyLock<(String, String)> = LazyLock::new(|| {
    let name = format!("sluice_{}", &SCRIPT.get_hash()[..16]);
    let source = super::super::layout::library_source(&name);
    (name, source)
});

/// How a connection runs the store's code. A function (Redis 7 and later) has its definitions
/// made once, when its library is loaded; a script has them made again on every call, which
/// costs Redis as much as a decision does when a call carries one (`bench/script.sh`). Where
/// `FUNCTION` is missing (an older Redis) or not allowed (an ACL), the script is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calling {
    Function,
    Script,
}

/// Loads the store's code on a new connection (on every master of a cluster) and says how to
/// call it.
pub async fn load(conn: &mut Conn) -> redis::RedisResult<Calling> {
    let loaded = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.1)
        .query_async::<redis::Value>(conn)
        .await;
    match loaded {
        Ok(_) => Ok(Calling::Function),
        Err(e) if !matches!(e.kind(), redis::ErrorKind::Server(_)) => Err(e),
        Err(e) => {
            log::warn!(
                "store: Redis refused FUNCTION LOAD ({e}): the store's code goes as a script \
                 (EVALSHA), which costs Redis more per call"
            );
            SCRIPT.load_async(conn).await?;
            Ok(Calling::Script)
        }
    }
}

/// Whether `e` says the library is not loaded (Redis restarted without it, or was flushed).
fn function_missing(e: &redis::RedisError) -> bool {
    e.detail().is_some_and(|d| d.contains("Function not found"))
}

/// One operation of a script call.
#[derive(Debug)]
pub enum Op {
    /// Check `limits` (their keys, then the request id's key when `retry` is set) for a request
    /// of `cost`; `replayed`: an earlier call already found it a retry (count no rate limit).
    Check {
        keys: Vec<String>,
        limits: Vec<[u64; LIMIT_ARGS]>,
        member: u64,
        retry: Option<(u64, u32)>,
        replayed: bool,
        cost: u32,
    },
    /// Free `member`'s slot in each of `keys`.
    Release { keys: Vec<String>, member: u64 },
    /// Extend each (key, member) lease by `lease_us` from now.
    Renew {
        keys: Vec<String>,
        members: Vec<u64>,
        lease_us: u64,
    },
    /// Replace what `member` counted (`counted` units at `at`) by `cost` on each of `limits`
    /// (0 undoes it); `drop_id`: the last key is the request id's mark, to be deleted.
    Adjust {
        keys: Vec<String>,
        limits: Vec<[u64; LIMIT_ARGS]>,
        member: u64,
        counted: u32,
        cost: u32,
        at: u64,
        drop_id: bool,
    },
}

/// What one operation answered.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A check: its status (1 admitted, 2 admitted as a retry, 0 refused) and each limit's
    /// state; `at` is the script's time.
    Checked {
        status: i64,
        parts: Vec<Parts>,
        at: u64,
    },
    /// Any other operation, done.
    Done,
}

impl Op {
    pub fn check<C: Borrow<Check>>(
        checks: &[C],
        lease: Duration,
        member: u64,
        retry: Option<(String, u64, u32)>,
        replayed: bool,
        cost: u32,
        now: u64,
    ) -> Op {
        let mut keys: Vec<String> = Vec::with_capacity(checks.len() + 1);
        keys.extend(checks.iter().map(|c| c.borrow().key.clone()));
        let limits = checks
            .iter()
            .map(|c| limit_args(&c.borrow().kind, lease, now))
            .collect();
        let retry = retry.map(|(key, ms, max)| {
            keys.push(key);
            (ms, max)
        });
        Op::Check {
            keys,
            limits,
            member,
            retry,
            replayed,
            cost,
        }
    }

    /// Undoes a check that counted `cost` at `at`: its rate limits (unless it was a replay)
    /// and its slots, and the request id's mark it set.
    pub fn undo(
        checks: &[&super::super::Check],
        lease: Duration,
        member: u64,
        cost: u32,
        at: u64,
        id_key: Option<String>,
    ) -> Op {
        let mut keys: Vec<String> = checks.iter().map(|c| c.key.clone()).collect();
        // A quota's count is adjusted in the period of its count.
        let limits = checks
            .iter()
            .map(|c| limit_args(&c.kind, lease, at))
            .collect();
        let drop_id = id_key.is_some();
        keys.extend(id_key);
        Op::Adjust {
            keys,
            limits,
            member,
            counted: cost,
            cost: 0,
            at,
            drop_id,
        }
    }

    pub fn keys(&self) -> &[String] {
        match self {
            Op::Check { keys, .. }
            | Op::Release { keys, .. }
            | Op::Renew { keys, .. }
            | Op::Adjust { keys, .. } => keys,
        }
    }

    fn reply_len(&self) -> usize {
        match self {
            Op::Check { limits, .. } => 1 + REPLY_PER_LIMIT * limits.len(),
            _ => 1,
        }
    }

    fn encode(&self, cmd: &mut redis::Cmd, prefix: &str) {
        let member = |m: &u64| format!("{prefix}{m:x}");
        match self {
            Op::Check {
                limits,
                member: m,
                retry,
                replayed,
                cost,
                ..
            } => {
                let retry_ms = match (retry, replayed) {
                    (_, true) => -1,
                    (Some((ms, _)), false) => *ms as i64,
                    (None, false) => 0,
                };
                cmd.arg(OP_CHECK)
                    .arg(member(m))
                    .arg(retry_ms)
                    .arg(retry.map_or(0, |r| r.1))
                    .arg(*cost)
                    .arg(limits.len());
                for l in limits {
                    cmd.arg(&l[..]);
                }
            }
            Op::Release { keys, member: m } => {
                cmd.arg(OP_RELEASE).arg(member(m)).arg(keys.len());
            }
            Op::Renew {
                members, lease_us, ..
            } => {
                cmd.arg(OP_RENEW).arg(*lease_us).arg(members.len());
                for m in members {
                    cmd.arg(member(m));
                }
            }
            Op::Adjust {
                limits,
                member: m,
                counted,
                cost,
                at,
                drop_id,
                ..
            } => {
                cmd.arg(OP_ADJUST)
                    .arg(member(m))
                    .arg(*counted)
                    .arg(*cost)
                    .arg(*at)
                    .arg(u8::from(*drop_id))
                    .arg(limits.len());
                for l in limits {
                    cmd.arg(&l[..]);
                }
            }
        }
    }
}

/// How the script learns the time: `None` is Redis `TIME` (always, but in tests that run the
/// memory store and the script on one clock).
pub type ScriptClock = Option<Arc<dyn super::super::memory::Clock>>;

/// The instant a calendar quota's period is found for (µs since the epoch): the script's clock
/// when it has one (tests), else this machine's; 0, unread, when none of `checks` is a quota
/// (the plain path reads no clock). A quota is on the sidecars' clocks (its period, reset and
/// expiry; check.lua's KIND_QUOTA): at a period's end, sidecars whose clocks differ by δ may
/// count a request δ early or late in the next period, and the script never goes back to an
/// earlier one.
pub fn quota_instant<C: Borrow<Check>>(checks: &[C], clock: &ScriptClock) -> u64 {
    if !checks
        .iter()
        .any(|c| matches!(c.borrow().kind, Kind::Quota(_)))
    {
        return 0;
    }
    match clock {
        Some(c) => c.now_us(),
        None => super::super::calendar::now_us(),
    }
}

/// One script call doing `ops` in order, loading the script first if Redis lacks it, sent a
/// second time (within the same deadline) when the connection was found closed: the call's
/// own failure, or each operation's reply (one can fail while the others stand).
pub async fn send(
    conn: &mut Conn,
    calling: Calling,
    ops: &[&Op],
    prefix: &str,
    clock: &ScriptClock,
    timeout: Duration,
) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let keys: usize = ops.iter().map(|o| o.keys().len()).sum();
    let (command, code) = match calling {
        Calling::Function => ("FCALL", LIBRARY.0.as_str()),
        Calling::Script => ("EVALSHA", SCRIPT.get_hash()),
    };
    let mut cmd = redis::cmd(command);
    cmd.arg(code).arg(keys);
    for op in ops {
        for k in op.keys() {
            cmd.arg(k);
        }
    }
    cmd.arg(clock.as_ref().map_or(0, |c| c.now_us()))
        .arg(ops.len());
    for op in ops {
        op.encode(&mut cmd, prefix);
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut reply = call(conn, &cmd, timeout).await;
    if let Err(StoreError::Redis(e)) = &reply {
        // A connection found closed (Redis restarted, a link reset) fails the call before
        // anything was answered; the connection manager reconnects, and the call goes once more
        // on the fresh connection within what is left of the deadline.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if e.is_connection_dropped() && !left.is_zero() {
            reply = call(conn, &cmd, left).await;
        }
    }
    parse(ops, &reply?)
}

/// The call, loading the code and calling again when Redis has lost it (`NOSCRIPT`, or no
/// such function: restarted without it, or flushed).
async fn call(
    conn: &mut Conn,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<Vec<i64>, StoreError> {
    match bounded(timeout, cmd.query_async(conn)).await {
        Err(StoreError::Redis(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            bounded(timeout, SCRIPT.load_async(conn)).await?;
            bounded(timeout, cmd.query_async(conn)).await
        }
        Err(StoreError::Redis(e)) if function_missing(&e) => {
            bounded(timeout, load(conn)).await?;
            bounded(timeout, cmd.query_async(conn)).await
        }
        other => other,
    }
}

fn parse(ops: &[&Op], reply: &[i64]) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let expected: usize = 1 + ops.iter().map(|o| o.reply_len()).sum::<usize>();
    if reply.len() != expected {
        return Err(StoreError::Reply(format!("{reply:?}")));
    }
    let at = reply[0].max(0) as u64;
    let count = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
    let mut rest = &reply[1..];
    Ok(ops
        .iter()
        .map(|op| {
            let (one, next) = rest.split_at(op.reply_len());
            rest = next;
            if one[0] < 0 {
                return Err(StoreError::Caller(
                    "the script failed on this request's keys (Redis's log says why)".into(),
                ));
            }
            Ok(match op {
                Op::Check { .. } => Reply::Checked {
                    status: one[0],
                    parts: one[1..]
                        .chunks(REPLY_PER_LIMIT)
                        .map(|p| (count(p[0]), count(p[1]), micros(p[2]), micros(p[3])))
                        .collect(),
                    at,
                },
                _ => Reply::Done,
            })
        })
        .collect())
}

pub async fn bounded<T>(
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

/// An operation waiting for the call that carries it.
struct Pending {
    op: Op,
    done: tokio::sync::oneshot::Sender<Result<Reply, StoreError>>,
}

/// The operations of one thread waiting for a script call, and how many drivers are sending.
#[derive(Default)]
pub struct Queue {
    pending: Vec<Pending>,
    sending: usize,
}

/// The most operations one script call carries: Redis runs a script to its end before
/// anything else, and 64 decisions take it a few hundred microseconds.
const MAX_BATCH: usize = 64;

/// Script calls one thread keeps in flight: while one is in Redis, the next is being sent
/// (pipelined on the same connection), so neither side waits idle for the other. One or four
/// measured the same as two (`bench/optimisations.md`, round 3).
const MAX_IN_FLIGHT: usize = 2;

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a queued call needs to be sent: the connection, how members are named, the clock.
#[derive(Clone)]
pub struct Sender {
    pub conn: Conn,
    pub calling: Calling,
    pub prefix: Arc<str>,
    pub clock: ScriptClock,
    pub timeout: Duration,
}

/// Queues `op` on this thread's queue and waits (at most `timeout`) for its reply: it goes out
/// at once when fewer than [`MAX_IN_FLIGHT`] calls are out, else with whatever else waits.
pub async fn queued(
    queue: &Arc<Mutex<Queue>>,
    sender: &Sender,
    op: Op,
) -> Result<Reply, StoreError> {
    let (done, answer) = tokio::sync::oneshot::channel();
    let start = {
        let mut q = lock(queue);
        q.pending.push(Pending { op, done });
        let start = q.sending < MAX_IN_FLIGHT;
        q.sending += usize::from(start);
        start
    };
    if start {
        tokio::spawn(drive(queue.clone(), sender.clone()));
    }
    match fast_timeout(sender.timeout, answer).await {
        Ok(Ok(result)) => result,
        // The driver ended without answering (its runtime is shutting down).
        Ok(Err(_)) => Err(StoreError::Unavailable),
        Err(_) => Err(StoreError::Timeout(sender.timeout)),
    }
}

/// Sends a thread's waiting operations, as many as are waiting (up to [`MAX_BATCH`]) in one
/// script call, until none are left. Redis does them one after another, exactly as separate
/// calls would.
async fn drive(queue: Arc<Mutex<Queue>>, mut sender: Sender) {
    /// Lets the next request start a driver should this one end early (its task dropped).
    struct Sending(Arc<Mutex<Queue>>);
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
        let ops: Vec<&Op> = batch.iter().map(|p| &p.op).collect();
        let sent = send(
            &mut sender.conn,
            sender.calling,
            &ops,
            &sender.prefix,
            &sender.clock,
            sender.timeout,
        )
        .await;
        match sent {
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

/// Whether `kind` holds a slot (its keys are released, not undone).
pub fn is_slot(kind: &Kind) -> bool {
    matches!(kind, Kind::Concurrency(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::layout::OP_LAYOUT;
    use crate::limiter::{Check, Rate};

    /// Every encoder writes exactly the layout the script reads.
    #[test]
    fn each_operation_is_encoded_as_its_layout_says() {
        let rate = Check {
            key: "p:{r:a}:1000".into(),
            kind: Kind::Rate(Rate::log(5, Duration::from_secs(1))),
        };
        let checks = [&rate, &rate];
        let lease = Duration::from_secs(10);
        let ops = [
            Op::check(
                &checks,
                lease,
                7,
                Some(("p:{r:a}:id:x".into(), 10, 2)),
                false,
                1,
                0,
            ),
            Op::Release {
                keys: vec!["k".into(), "l".into()],
                member: 7,
            },
            Op::Renew {
                keys: vec!["k".into(), "l".into()],
                members: vec![1, 2],
                lease_us: 1,
            },
            Op::undo(&checks, lease, 7, 1, 99, Some("p:{r:a}:id:x".into())),
        ];
        for (op, (code, fixed, n_at, per_item, extra_at, _)) in ops.iter().zip(OP_LAYOUT) {
            let mut cmd = redis::cmd("X");
            op.encode(&mut cmd, "m:");
            let args: Vec<String> = cmd
                .args_iter()
                .skip(1)
                .map(|a| match a {
                    redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                })
                .collect();
            assert_eq!(args[0], code.to_string());
            let n: usize = args[n_at].parse().unwrap();
            assert_eq!(n, 2, "{op:?}");
            assert_eq!(args.len(), fixed + per_item * n, "{op:?}");
            let extra = extra_at > 0 && args[extra_at].parse::<i64>().unwrap() > 0;
            assert_eq!(op.keys().len(), n + usize::from(extra), "{op:?}");
        }
    }
}
