//! Configuration: the YAML file model ([`file`]) and the validated runtime model built from it.
//!
//! `load` reads a file, applies the `SLUICE_*` environment overrides, and validates everything
//! at once, reporting every problem (not just the first) as `FILE: FIELD.PATH: message`.
//! Runtime code only ever sees [`Config`], whose types cannot hold an invalid value.

mod duration;
pub mod file;
mod validate;

pub use duration::{format_duration, parse_duration, DURATION_HINT};

use crate::identity::IdentityExtractor;
use crate::routes::RouteTable;
use std::path::Path;
use std::time::Duration;

/// The validated configuration of one sidecar.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub identity: IdentityExtractor,
    pub routes: RouteTable,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Proxy listener, an IP socket address (`0.0.0.0:8080`, `[::1]:8080`).
    pub listen: String,
    /// Admin listener (health, stats); loopback by default.
    pub admin_listen: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// This instance's name in `/health` and in `Via` headers.
    pub instance: String,
    /// How long a sidecar told to stop (SIGTERM) keeps accepting before it drains and exits.
    pub grace_period: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port` addresses, resolved once at start-up and used round robin.
    pub addrs: Vec<String>,
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept; below the upstream's own keep-alive.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-process sliding log: exact for one instance, no shared state across instances.
    Memory,
    /// Sliding log in Redis, shared by every instance that points at the same server.
    Redis { url: String },
}

/// What to do with a request on a limited route when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Forward it (availability first: a store outage does not take the API down).
    Allow,
    /// Refuse it with 503 (protection first).
    Deny,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Deadline for one store call, connection set-up included.
    pub timeout: Duration,
    pub on_error: OnError,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub prefix: String,
    /// Multiplexed Redis connections per service; concurrent calls pipeline on each.
    pub connections: usize,
}

/// Every problem found in a config file, one line each, ready for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{}", .lines.join("\n"))]
pub struct ConfigError {
    pub lines: Vec<String>,
}

/// Reads `path`, applies the environment overrides from `env`, and validates the result.
///
/// `env` is a lookup (normally `std::env::var`) so tests can pass their own environment.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        lines: vec![format!("{shown}: cannot read config file: {e}")],
    })?;
    parse(&shown, &text, env)
}

/// Validates config `text`; `name` is the file name that every message starts with.
pub fn parse(name: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let prefix = |problems: Vec<String>| ConfigError {
        lines: problems.into_iter().map(|p| format!("{name}: {p}")).collect(),
    };
    let file = validate::deserialize(text).map_err(|p| prefix(vec![p]))?;
    validate::build(file, env).map_err(prefix)
}
