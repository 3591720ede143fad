//! A store test double for the decision's unit tests: it works (an in-process store behind
//! it), fails at once, or stalls past its deadline, on command; and it records what it was
//! asked, so the rules around the store (shadow, `on_error`, overrides, request ids) are
//! checked without starting processes.

use super::{Ask, Decision, MemoryLimiter, StoreError};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Works,
    /// Refused connections: every call fails at once.
    Fails,
    /// Every call waits this long, then fails with its deadline passed.
    Stalls(Duration),
}

/// What one call asked: its keys, cost and request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub keys: Vec<String>,
    pub cost: u32,
    pub retry: Option<String>,
}

pub struct Double {
    pub memory: MemoryLimiter,
    mode: Mutex<Mode>,
    asked: Mutex<Vec<Asked>>,
}

impl Default for Double {
    fn default() -> Self {
        Self {
            memory: MemoryLimiter::new(10_000, Duration::from_secs(10)),
            mode: Mutex::new(Mode::Works),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl Double {
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Every call so far, oldest first.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    pub async fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        self.asked.lock().unwrap().push(Asked {
            keys: ask.checks.iter().map(|c| c.key.clone()).collect(),
            cost: ask.cost,
            retry: ask.retry.map(|r| r.id.to_string()),
        });
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Works => self.memory.check(ask),
            Mode::Fails => Err(StoreError::Unavailable),
            Mode::Stalls(deadline) => {
                tokio::time::sleep(deadline).await;
                Err(StoreError::Timeout(deadline))
            }
        }
    }
}
