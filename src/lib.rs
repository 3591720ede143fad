//! sluice: a rate-limiting reverse-proxy sidecar on Pingora.
//!
//! # Layout
//! - [`config`]: the YAML file model and the validated runtime model (`--check` lives here).
//! - [`identity`]: who is calling (query parameter, header, client IP via trusted proxies).
//! - [`routes`]: the ordered route table (method + path → route and its limits).
//! - [`decision`]: one request's verdict (head checks, path, route, caller, limits, store),
//!   Pingora-free.
//! - [`limiter`]: the three algorithms in Redis (one Lua call; one server or a cluster) or in
//!   memory, the denial cache and the circuit breaker; [`limiter::Decision`].
//! - [`response`]: the RateLimit headers and every response sluice writes itself.
//! - [`proxy`]: the Pingora `ProxyHttp` phases, each delegating to the modules above.
//! - [`admin`]: `/health`, `/metrics` and `/stats/{user}` on their own listener.
//! - [`metrics`], [`access_log`]: what operators read.
//! - [`watch`]: the store probe (breaker recovery, restarts); [`reload`]: SIGHUP.
//! - [`server`]: builds the Pingora server from a config.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod decision;
pub mod identity;
pub mod limiter;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod routes;
pub mod server;
pub mod watch;
