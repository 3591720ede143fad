//! sluice: a rate-limiting reverse-proxy sidecar on Pingora.
//!
//! # Layout
//! - [`config`]: the YAML file model and the validated runtime model (`--check` lives here).
//! - [`identity`]: who is calling (query parameter, header, client IP via trusted proxies, API
//!   key, bearer token, verified JWT claim; hashed when configured), and the request values
//!   other scopes are keyed by; [`plans`]: which plan's limits a caller gets; [`exempt`]:
//!   requests that spend no quota.
//! - [`routes`]: the ordered route table (method + path + headers → route); it only matches
//!   requests.
//! - [`limiter`]: the limit model ([`limiter::Limit`]: a kind and a scope), keys, and one engine
//!   in two stores: `check.lua` in Redis (one server or a cluster) and its twin in memory,
//!   checked against each other; the denial cache, the circuit breaker, leases of in-flight
//!   slots; what outlives a reload ([`limiter::StoreSide`]).
//! - [`decision`]: one request's verdict (head checks, path, route, caller, each limit's key,
//!   store, `on_error`), Pingora-free.
//! - [`response`]: the RateLimit headers and every response sluice writes itself; [`grpc`]:
//!   the same answered to a gRPC call (`grpc-status` in a trailers-only response).
//! - [`proxy`]: the Pingora `ProxyHttp` phases, each delegating to the modules above;
//!   [`forwarded`]: the forwarding headers the upstream receives.
//! - [`admin`]: `/health`, `/metrics` and `/stats/{user}` on their own listener.
//! - [`metrics`], [`access_log`]: what operators read.
//! - [`watch`]: the store probe (breaker recovery, restarts) and lease renewal; [`reload`]:
//!   SIGHUP.
//! - [`upstream`]: the upstream peers (resolved again on an interval) and their health checks
//!   (HTTP, TCP, gRPC); [`tls`]: the TLS listener's certificate.
//! - [`server`]: builds the Pingora server from a config; [`shutdown`]: the grace and the drain.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod decision;
pub mod exempt;
pub mod forwarded;
pub mod grpc;
pub mod identity;
pub mod limiter;
pub mod metrics;
pub mod plans;
pub mod proxy;
pub mod redact;
pub mod refusal;
pub mod reload;
pub mod response;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod watch;
