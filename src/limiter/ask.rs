//! What a store is asked ([`Ask`]: the request's limits, each resolved to a key) and what it
//! answers ([`Decision`]: admitted with every limit's state, or [`Refused`] by one limit).

use super::leases::Leases;
use super::limit::Kind;
use std::sync::Arc;
use std::time::Duration;

/// One limit of one request, resolved to its store key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub kind: Kind,
}

/// One question to a store: may this request (of `cost` units, perhaps a retry) pass every
/// one of `checks`? Admitted means counted against all of them; refused means counted nowhere.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub checks: &'a [Check],
    pub cost: u32,
    pub retry: Option<Retry<'a>>,
}

impl Ask<'_> {
    pub fn holds_slots(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c.kind, Kind::Concurrency(_)))
    }
}

/// A request id that may mark a retry (see [`crate::identity::RequestIds`]): a repeat of an id
/// counted less than `window` ago passes the rate limits uncounted, at most `max_retries` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry<'a> {
    pub id: &'a str,
    pub window: Duration,
    pub max_retries: u32,
}

/// The state of one limit after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub kind: Kind,
    /// Cost units counted in the window (slots held), this request's included when it was
    /// admitted (for GCRA: the burst less what remains).
    pub used: u32,
    /// Cost units (slots) that may still be admitted now.
    pub remaining: u32,
    /// Until the counts of this limit are back to nothing (sliding log: the oldest leaves;
    /// sliding window: the current fixed window ends; GCRA: the bucket is full again).
    pub reset: Duration,
    /// Until this limit would admit the request (zero when it admits now).
    pub retry: Duration,
}

/// One limit's state as a store reports it: used, remaining, reset, retry.
pub type Parts = (u32, u32, Duration, Duration);

impl LimitState {
    pub fn new(kind: Kind, (used, remaining, reset, retry): Parts) -> LimitState {
        LimitState {
            kind,
            used,
            remaining,
            reset,
            retry,
        }
    }

    /// The same state `elapsed` later (a cached refusal, counted down).
    pub fn later(&self, elapsed: Duration) -> LimitState {
        LimitState {
            retry: self.retry.saturating_sub(elapsed),
            reset: self.reset.saturating_sub(elapsed),
            ..*self
        }
    }
}

/// The outcome of checking every limit of a request.
#[derive(Debug)]
pub enum Decision {
    /// Every limit admitted the request, and it was counted against all of them; `permit`
    /// holds its in-flight slots, to be released when the request ends.
    Admitted {
        states: Vec<LimitState>,
        permit: Option<Permit>,
        receipt: Receipt,
    },
    /// At least one limit refused; nothing was counted.
    Limited(Refused),
}

/// What an admitted request was counted as: its member and the store's time of the count, by
/// which the count can be adjusted later (undone, or settled at another cost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    pub member: u64,
    pub at: u64,
    /// A retry of a request counted before (a request id within its budget): it passed the
    /// rate limits uncounted, so there is nothing of its own to adjust.
    pub replayed: bool,
}

/// A refused request: the limit that refuses longest (whose retry time the 429 reports) and
/// its place among the request's checks. Only a refusal has one, so a 429 for an admitted
/// request cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub state: LimitState,
    pub index: usize,
}

impl Refused {
    /// The limit of `states` that refuses longest (`None` when there is none).
    pub fn longest(states: &[LimitState]) -> Option<Refused> {
        let index =
            (0..states.len()).max_by_key(|&i| (states[i].retry, states[i].kind.max_window()))?;
        Some(Refused {
            state: states[index],
            index,
        })
    }
}

impl Decision {
    /// Builds a decision from the per-check [`Parts`] a store returns.
    pub fn from_parts(
        admitted: bool,
        checks: &[Check],
        parts: impl IntoIterator<Item = Parts>,
        permit: Option<Permit>,
        receipt: Receipt,
    ) -> Decision {
        let states: Vec<LimitState> = checks
            .iter()
            .zip(parts)
            .map(|(c, p)| LimitState::new(c.kind, p))
            .collect();
        match admitted {
            true => Decision::Admitted {
                states,
                permit,
                receipt,
            },
            false => match Refused::longest(&states) {
                Some(refused) => Decision::Limited(refused),
                // No limit, nothing to refuse with (no store refuses with no limits).
                None => Decision::Admitted {
                    states: Vec::new(),
                    permit,
                    receipt,
                },
            },
        }
    }

    pub fn is_admitted(&self) -> bool {
        matches!(self, Decision::Admitted { .. })
    }

    /// For a limited request: the limit that refuses longest, whose retry time the 429 reports.
    pub fn refusing(&self) -> Option<&LimitState> {
        match self {
            Decision::Limited(refused) => Some(&refused.state),
            Decision::Admitted { .. } => None,
        }
    }

    /// An admitted request's states (empty for a refused one).
    pub fn states(&self) -> &[LimitState] {
        match self {
            Decision::Admitted { states, .. } => states,
            Decision::Limited(_) => &[],
        }
    }
}

/// The in-flight slots an admitted request holds, until [`crate::limiter::Store::release`]
/// (or, should the request vanish without it, until the store's lease runs out: dropping a
/// permit stops its renewal).
pub struct Permit {
    /// The request's unique member in the store (its slots' lease name).
    pub member: u64,
    /// The key of each concurrency limit it holds a slot of.
    pub slots: Vec<String>,
    pub(super) leases: Arc<Leases>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("member", &self.member)
            .field("slots", &self.slots)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.leases.forget(self.member);
    }
}
