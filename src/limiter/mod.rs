//! The limiter: sliding-window logs, in Redis (shared) or in memory (one instance).
//!
//! Being limited is not an error: [`Decision`] is a value. `Err` means the store could not
//! answer, and the caller applies the configured `on_error` policy.

pub mod algorithms;
pub mod breaker;
pub mod conn;
pub mod denials;
pub mod limit;
pub mod memory;
pub mod redis;
mod shards;
pub mod side;

use std::time::Duration;

pub use self::limit::{Algorithm, Cost, Limit, OnError};
pub use self::side::StoreSide;

pub use self::memory::MemoryLimiter;
pub use self::redis::RedisLimiter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-process sliding log: exact for one instance, no shared state across instances.
    Memory,
    /// Limits in Redis, shared by every instance that points at the same server.
    Redis { url: String },
    /// Limits in a Redis Cluster: `nodes` are seeds, the rest is discovered. Every decision is
    /// one script call on the node that owns the caller's hash tag.
    RedisCluster { nodes: Vec<String> },
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
}

/// The state of one limit after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: Limit,
    /// Cost units counted in the window, this request's included when it was admitted (for
    /// GCRA: the burst less what remains).
    pub used: u32,
    /// Cost units that may still be admitted now.
    pub remaining: u32,
    /// Until the counts of this limit are back to nothing (sliding log: the oldest leaves;
    /// sliding window: the current fixed window ends; GCRA: the bucket is full again).
    pub reset: Duration,
    /// Until this limit would admit the request (zero when it admits now).
    pub retry: Duration,
}

/// One limit's state as a store reports it: used, remaining, reset, retry.
pub type Parts = (u32, u32, Duration, Duration);

/// Each limit with its reported state.
pub fn states(limits: &[Limit], parts: impl IntoIterator<Item = Parts>) -> Vec<LimitState> {
    limits
        .iter()
        .zip(parts)
        .map(|(&limit, (used, remaining, reset, retry))| LimitState {
            limit,
            used,
            remaining,
            reset,
            retry,
        })
        .collect()
}

/// The outcome of checking every limit of a route for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every limit admitted the request, and it was counted against all of them.
    Admitted { states: Vec<LimitState> },
    /// At least one limit refused; nothing was counted.
    Limited(Refused),
}

/// A refused request: every limit's state and the one that refuses longest (whose retry time
/// the 429 reports). Only a refusal has one, so a 429 for an admitted request cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    states: Vec<LimitState>,
    refusing: usize,
}

impl Refused {
    /// `None` when there is no limit to refuse with.
    pub fn new(states: Vec<LimitState>) -> Option<Refused> {
        let refusing =
            (0..states.len()).max_by_key(|&i| (states[i].retry, states[i].limit.window))?;
        Some(Refused { states, refusing })
    }

    pub fn states(&self) -> &[LimitState] {
        &self.states
    }

    /// The limit that refuses longest.
    pub fn refusing(&self) -> &LimitState {
        &self.states[self.refusing]
    }

    /// The same refusal `elapsed` later (a cached one, counted down).
    pub fn later(&self, elapsed: Duration) -> Refused {
        let mut later = self.clone();
        for s in &mut later.states {
            s.retry = s.retry.saturating_sub(elapsed);
            s.reset = s.reset.saturating_sub(elapsed);
        }
        later
    }
}

impl Decision {
    /// Builds a decision from the per-limit [`Parts`] a store returns.
    pub fn from_parts(
        admitted: bool,
        limits: &[Limit],
        parts: impl IntoIterator<Item = Parts>,
    ) -> Decision {
        let states = states(limits, parts);
        match admitted {
            true => Decision::Admitted { states },
            false => match Refused::new(states) {
                Some(refused) => Decision::Limited(refused),
                // No limit, nothing to refuse with (no store refuses with no limits).
                None => Decision::Admitted { states: Vec::new() },
            },
        }
    }

    pub fn states(&self) -> &[LimitState] {
        match self {
            Decision::Admitted { states } => states,
            Decision::Limited(refused) => refused.states(),
        }
    }

    pub fn is_admitted(&self) -> bool {
        matches!(self, Decision::Admitted { .. })
    }

    /// For a limited request: the limit that refuses longest, whose retry time the 429 reports.
    pub fn refusing(&self) -> Option<&LimitState> {
        match self {
            Decision::Limited(refused) => Some(refused.refusing()),
            Decision::Admitted { .. } => None,
        }
    }
}

/// One question to a store: may this request (of `cost` units, perhaps a retry) pass every
/// one of `limits` for the caller `key`?
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub key: &'a str,
    pub limits: &'a [Limit],
    pub cost: u32,
    pub retry: Option<Retry<'a>>,
}

/// A request id that may mark a retry (see [`crate::identity::RequestIds`]): a repeat of an id
/// counted less than `window` ago is admitted uncounted, at most `max_retries` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry<'a> {
    pub id: &'a str,
    pub window: Duration,
    pub max_retries: u32,
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
    #[error("the in-process store is full ({0} callers, store.max_callers)")]
    Full(usize),
    #[error("breaker open since {}", httpdate::fmt_http_date(*.0))]
    Open(std::time::SystemTime),
}

/// The Redis key prefix shared by every limit of one caller on one route.
///
/// The `{...}` hash tag keeps all of them in one Redis Cluster slot, so one script can touch
/// them atomically. Route names are validated to `[A-Za-z0-9._-]`; the caller is escaped (every
/// byte outside `[A-Za-z0-9._-@]` becomes `%XX`), so the mapping is injective: no caller can
/// collide with another or inject `}` or `:` into the key. An anonymous caller is `~`, which
/// no escaped identity can be.
pub fn caller_key(prefix: &str, route: &str, caller: Option<&[u8]>) -> String {
    let mut key =
        String::with_capacity(prefix.len() + route.len() + 8 + caller.map_or(1, |c| c.len()));
    key.push_str(prefix);
    key.push('{');
    key.push_str(route);
    key.push(':');
    match caller {
        None => key.push('~'),
        Some(bytes) => {
            for &b in bytes {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@') {
                    key.push(b as char);
                } else {
                    key.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    key.push('}');
    key
}

/// The store behind every decision: one enum, so the hot path needs no boxing or dynamic call.
///
/// Clones share the state (the admin listener reads what the proxy counts); Redis connections
/// are per thread (see [`RedisLimiter`]), so admin traffic never drives the proxy's.
#[derive(Clone)]
pub enum Store {
    Memory(std::sync::Arc<MemoryLimiter>),
    Redis(std::sync::Arc<RedisLimiter>),
}

impl Store {
    pub fn new(config: &StoreConfig, instance: &str) -> Result<Store, StoreError> {
        Ok(match &config.backend {
            Backend::Memory => {
                Store::Memory(std::sync::Arc::new(MemoryLimiter::new(config.max_callers)))
            }
            Backend::Redis { .. } | Backend::RedisCluster { .. } => {
                Store::Redis(std::sync::Arc::new(RedisLimiter::new(config, instance)?))
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
            Store::Memory(_) => "memory",
            Store::Redis(r) if r.is_cluster() => "redis_cluster",
            Store::Redis(_) => "redis",
        }
    }

    /// Checks every limit and, only if all admit, counts the request against all of them.
    ///
    /// `retry` (a trusted load balancer's request id) makes the decision idempotent: a retry
    /// of a request that a dead sidecar already counted is admitted without counting it twice,
    /// within the retry window and up to the retry budget.
    /// `cost` units (at least 1) are counted against every limit, and a request is admitted
    /// only when every limit has room for all of them.
    pub async fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        let ask = Ask {
            cost: ask.cost.max(1),
            ..*ask
        };
        match self {
            Store::Memory(m) => m.check(&ask),
            Store::Redis(r) => r.check(&ask).await,
        }
    }

    /// Reads the current state of each limit without counting anything.
    pub async fn peek(&self, key: &str, limits: &[Limit]) -> Result<Vec<LimitState>, StoreError> {
        match self {
            Store::Memory(m) => m.peek(key, limits),
            Store::Redis(r) => r.peek(key, limits).await,
        }
    }

    /// Whether the store answers, as its breaker last saw it (always up for memory).
    pub fn status(&self) -> breaker::StoreStatus {
        match self {
            Store::Memory(_) => breaker::StoreStatus::Up,
            Store::Redis(r) => r.breaker().status(),
        }
    }
}

/// The per-limit key: the caller key, the window and (but for the sliding log, whose keys
/// predate the others) the algorithm, so a changed request count keeps its state and a changed
/// algorithm never reads another's.
pub fn limit_key(caller_key: &str, limit: &Limit) -> String {
    let ms = limit.window.as_millis();
    match limit.algorithm {
        Algorithm::SlidingLog => format!("{caller_key}:{ms}"),
        Algorithm::SlidingWindow => format!("{caller_key}:{ms}:sw"),
        Algorithm::Gcra => format!("{caller_key}:{ms}:gcra"),
    }
}

/// The key that remembers one request id of one caller (how often it was retried). It shares
/// the caller's hash tag, and the id is 1-64 of `[A-Za-z0-9._-]`, so it cannot escape it.
pub fn retry_key(caller_key: &str, id: &str) -> String {
    format!("{caller_key}:id:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_keys_escape_and_never_collide() {
        assert_eq!(
            caller_key("sluice:", "api", Some(b"alice")),
            "sluice:{api:alice}"
        );
        assert_eq!(
            caller_key("sluice:", "api", Some(b"a}b:c")),
            "sluice:{api:a%7Db%3Ac}"
        );
        assert_eq!(
            caller_key("sluice:", "api", Some(b"%7D")),
            "sluice:{api:%257D}"
        );
        assert_eq!(caller_key("sluice:", "api", None), "sluice:{api:~}");
        assert_eq!(caller_key("sluice:", "api", Some(b"~")), "sluice:{api:%7E}");
        assert_eq!(caller_key("p:", "r", Some("ö".as_bytes())), "p:{r:%C3%B6}");
    }
}
