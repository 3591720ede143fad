//! Every default of the config file in one place, so validation and docs never disagree.

use std::time::Duration;

pub const LISTEN: &str = "127.0.0.1:8080";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const THREADS: u64 = 2;
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);
pub const KEY_PREFIX: &str = "sluice:";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read from (or write to) the upstream may wait: a hung upstream answers 504.
pub const UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// After the grace period, how long requests in flight may take to finish (a Kubernetes pod's
/// default termination grace is 30 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An identity longer than this (after percent-decoding) is refused with 400, never stored.
pub const MAX_IDENTITY_BYTES: u64 = 256;
/// The request line plus every header: 64 KiB, beyond which a request gets 431.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
/// The request target (path and query): nginx's default header buffer, 8 KiB; beyond it 414.
pub const MAX_URI_BYTES: u64 = 8 * 1024;
/// Callers held in process (memory store entries, denial-cache entries) at once.
pub const MAX_CALLERS: u64 = 1_000_000;

/// How long an in-flight slot outlives its holder's last renewal (a SIGKILLed sidecar's slots
/// are free again this long after it died, at most); renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// `on_error: local` with no share given: each sidecar enforces the whole limit alone.
pub const FALLBACK_SHARE: f64 = 1.0;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// A load balancer retries within seconds; a repeated id later than this is a new request.
pub const RETRY_WINDOW: Duration = Duration::from_secs(10);
/// nginx's `proxy_next_upstream_tries 3` is one attempt and two retries.
pub const MAX_RETRIES: u32 = 2;
/// How often upstream names are resolved again (`upstream.resolve_every`): DNS changes, such as a
/// Kubernetes Service's endpoints or a failover record, reach the rotation within this.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
