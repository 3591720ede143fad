//! The limiter: rate and in-flight limits, in Redis (shared) or in memory (one instance), on
//! one engine ([`layout`], `check.lua`, [`algorithms`]).
//!
//! Being limited is not an error: [`Decision`] is a value. `Err` means the store could not
//! answer, and the caller applies the configured `on_error` policy.

pub mod algorithms;
pub mod ask;
pub mod breaker;
pub mod calendar;
pub mod conn;
pub mod denials;
pub mod keys;
pub mod layout;
pub mod leases;
pub mod limit;
pub mod memory;
pub mod redis;
pub(crate) mod shards;
pub mod side;

#[cfg(test)]
pub mod double;

use std::sync::Arc;
use std::time::Duration;

pub use self::ask::{Ask, Check, Decision, LimitState, Parts, Permit, Receipt, Refused, Retry};
pub use self::limit::{
    Algorithm, Cost, Kind, Limit, OnError, Part, Period, Quota, Rate, Scope, StatusMatch,
};
pub use self::side::StoreSide;

pub use self::memory::MemoryLimiter;
pub use self::redis::RedisLimiter;

#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-process sliding log: exact for one instance, no shared state across instances.
    Memory,
    /// Limits in Redis, shared by every instance that points at the same server.
    Redis { url: String },
    /// Limits in a Redis Cluster: `nodes` are seeds, the rest is discovered. Every decision is
    /// one script call on the node that owns the caller's hash tag.
    RedisCluster { nodes: Vec<String> },
}

/// Printed with every password as `***` (the start-up line, reload warnings, tests).
impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory => write!(f, "memory"),
            Backend::Redis { url } => write!(f, "redis {}", crate::redact::url(url)),
            Backend::RedisCluster { nodes } => {
                let nodes: Vec<String> = nodes.iter().map(|n| crate::redact::url(n)).collect();
                write!(f, "redis_cluster {}", nodes.join(","))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Deadline for one store call, connection set-up included.
    pub timeout: Duration,
    pub on_error: OnError,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub prefix: String,
    /// Most callers the in-process state holds (memory store entries, denial-cache entries).
    pub max_callers: usize,
    /// `on_error: local`: the share of each limit this sidecar enforces alone, in (0, 1].
    pub fallback_share: f64,
    /// `rediss://`: PEM file of the CA that signed the server's certificate (else the system's).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// How long an in-flight slot outlives its last renewal: a sidecar that dies (SIGKILL)
    /// frees its slots this long after it last renewed them.
    pub lease_ttl: Duration,
}

/// A store failure: the decision could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("store unreachable: the last connect failed less than a second ago")]
    Unavailable,
    #[error("unexpected reply from the store script: {0}")]
    Reply(String),
    /// The store answered, but the script failed on this caller's keys alone (something else
    /// wrote another type there): not a store fault, so it does not count toward the breaker.
    #[error("the store could not decide for this caller: {0}")]
    Caller(String),
    #[error("the in-process store is full ({0} keys, store.max_callers)")]
    Full(usize),
    #[error("breaker open since {}", httpdate::fmt_http_date(*.0))]
    Open(std::time::SystemTime),
}

/// The store behind every decision: one enum, so the hot path needs no boxing or dynamic call.
///
/// Clones share the state (the admin listener reads what the proxy counts); Redis connections
/// are per thread (see [`RedisLimiter`]), so admin traffic never drives the proxy's.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<MemoryLimiter>),
    Redis(Arc<RedisLimiter>),
    /// A store that works, fails or stalls on command (unit tests of the decision's rules).
    #[cfg(test)]
    Double(Arc<double::Double>),
}

impl Store {
    pub fn new(config: &StoreConfig, instance: &str) -> Result<Store, StoreError> {
        Ok(match &config.backend {
            Backend::Memory => Store::Memory(Arc::new(MemoryLimiter::new(
                config.max_callers,
                config.lease_ttl,
            ))),
            Backend::Redis { .. } | Backend::RedisCluster { .. } => {
                Store::Redis(Arc::new(RedisLimiter::new(config, instance)?))
            }
        })
    }

    /// Whether refusals are worth caching locally: a Redis call costs a round trip, a memory
    /// check costs what a cache lookup costs.
    pub fn is_remote(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            #[cfg(test)]
            Store::Double(_) => "double",
            Store::Memory(_) => "memory",
            Store::Redis(r) if r.is_cluster() => "redis_cluster",
            Store::Redis(_) => "redis",
        }
    }

    /// Checks every limit and, only if all admit, counts the request against all of them.
    ///
    /// `retry` (a trusted load balancer's request id) makes the decision idempotent: a retry
    /// of a request that a dead sidecar already counted passes the rate limits without being
    /// counted twice, within the retry window and up to the retry budget.
    /// `cost` units (at least 1) are counted against every rate limit, and a request is
    /// admitted only when every limit has room for all of them; a concurrency limit takes one
    /// slot, held until [`Store::release`].
    pub async fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        let ask = Ask {
            cost: ask.cost.max(1),
            ..*ask
        };
        match self {
            Store::Memory(m) => m.check(&ask),
            // Boxed: the Redis call's state is large, and every request's future (limited or
            // not, on any store) would otherwise carry room for it and copy it as it moves.
            Store::Redis(r) => Box::pin(r.check(&ask)).await,
            #[cfg(test)]
            Store::Double(d) => d.check(&ask).await,
        }
    }

    /// Reads the current state of each limit without counting anything.
    pub async fn peek(&self, checks: &[Check]) -> Result<Vec<LimitState>, StoreError> {
        match self {
            Store::Memory(m) => m.peek(checks),
            Store::Redis(r) => r.peek(checks).await,
            #[cfg(test)]
            Store::Double(d) => d.memory.peek(checks),
        }
    }

    /// Settles what an admitted request counted on its rate limits `checks` (`counted` units,
    /// as `receipt` says) at `cost` units instead: 0 undoes the count, more charges the
    /// difference. A replayed retry counted nothing of its own and is left alone.
    pub async fn adjust(
        &self,
        checks: &[Check],
        receipt: Receipt,
        counted: u32,
        cost: u32,
    ) -> Result<(), StoreError> {
        if receipt.replayed || counted == cost || checks.is_empty() {
            return Ok(());
        }
        let (member, at) = (receipt.member, receipt.at);
        match self {
            Store::Memory(m) => {
                m.adjust(checks, member, (counted, cost), at, None);
                Ok(())
            }
            Store::Redis(r) => Box::pin(r.adjust(checks, member, (counted, cost), at, None)).await,
            #[cfg(test)]
            Store::Double(d) => {
                d.memory.adjust(checks, member, (counted, cost), at, None);
                Ok(())
            }
        }
    }

    /// Gives back the slots of a request that has ended. A failure is logged, not returned:
    /// the request is over either way, and its lease runs out by itself.
    pub async fn release(&self, permit: Permit) {
        match self {
            Store::Memory(m) => m.release(&permit),
            // Boxed for the reason `check` is: `logging` runs for every request.
            Store::Redis(r) => Box::pin(r.release(&permit)).await,
            #[cfg(test)]
            Store::Double(d) => d.memory.release(&permit),
        }
    }

    /// Extends the lease of every slot this process holds (one batched call per store node).
    pub async fn renew(&self) {
        match self {
            Store::Memory(m) => m.renew(),
            Store::Redis(r) => r.renew().await,
            #[cfg(test)]
            Store::Double(d) => d.memory.renew(),
        }
    }

    /// Decisions rolled back across cluster slots, and in-flight slots held now.
    pub fn counts(&self) -> (u64, usize) {
        match self {
            Store::Memory(m) => (0, m.slots_held()),
            Store::Redis(r) => (r.rollbacks(), r.slots_held()),
            #[cfg(test)]
            Store::Double(d) => (0, d.memory.slots_held()),
        }
    }

    /// Whether the store answers, as its breaker last saw it (always up for memory).
    pub fn status(&self) -> breaker::StoreStatus {
        match self {
            Store::Redis(r) => r.breaker().status(),
            _ => breaker::StoreStatus::Up,
        }
    }
}
