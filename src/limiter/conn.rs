//! Where the Redis store is and how to talk to it: one server (through redis-rs's connection
//! manager) or a Redis Cluster (through redis-rs's cluster client, which follows MOVED/ASK,
//! slot migration and failover), behind one connection type.

use super::{Backend, StoreConfig};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// How to reach the store.
pub enum Target {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster(ClusterClient),
}

/// A live connection: cheap to clone, shared by the requests of one thread.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    /// A plain connection, for the probe (never waits on a reconnecting manager).
    Plain(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// `TCP_NODELAY` on every connection to Redis (redis-rs leaves Nagle's algorithm on by
/// default): with Nagle, a script call written while an earlier one is still unanswered waits
/// in the kernel until that answer arrives, so pipelined calls (two per worker, and every
/// concurrent call on a cluster connection) would go out one round trip apart.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

impl Target {
    pub fn new(config: &StoreConfig) -> RedisResult<Target> {
        let tls = |ca: &std::path::Path| -> RedisResult<redis::TlsCertificates> {
            let root_cert = std::fs::read(ca).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "store.tls_ca_file",
                    format!("{}: {e}", ca.display()),
                ))
            })?;
            Ok(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            })
        };
        match &config.backend {
            Backend::RedisCluster { nodes } => {
                let mut builder = ClusterClient::builder(nodes.clone())
                    .tcp_settings(tcp_settings())
                    .connection_timeout(config.timeout.max(Duration::from_secs(1)))
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(ca) = &config.tls_ca_file {
                    builder = builder.certs(tls(ca)?);
                }
                Ok(Target::Cluster(builder.build()?))
            }
            Backend::Redis { url } => {
                let info = url
                    .as_str()
                    .into_connection_info()?
                    .set_tcp_settings(tcp_settings());
                let client = match &config.tls_ca_file {
                    Some(ca) => redis::Client::build_with_tls(info, tls(ca)?)?,
                    None => redis::Client::open(info)?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    // No response timeout here: the limiter applies its deadline with
                    // Pingora's timer wheel, which costs far less per call than a tokio timer.
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500));
                Ok(Target::Single { client, config })
            }
            Backend::Memory => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the memory store has no Redis target",
            ))),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A connection for requests: it reconnects (and, in a cluster, follows the slots) itself.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Target::Single { client, config } => Ok(Conn::Single(
                ConnectionManager::new_with_config(client.clone(), config.clone()).await?,
            )),
            Target::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }

    /// A connection for the probe, dropped on its first failure.
    pub async fn connect_plain(&self) -> RedisResult<Conn> {
        match self {
            Target::Single { client, .. } => Ok(Conn::Plain(
                client.get_multiplexed_async_connection().await?,
            )),
            Target::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }

    /// What the probe asks: one server's `run_id` (a new one means it restarted), or the
    /// cluster's state, which must be `ok` (a cluster missing a slot's master is down).
    pub fn probe_command(&self) -> Cmd {
        match self {
            Target::Single { .. } => {
                let mut c = redis::cmd("INFO");
                c.arg("server");
                c
            }
            Target::Cluster(_) => {
                let mut c = redis::cmd("CLUSTER");
                c.arg("INFO");
                c
            }
        }
    }

    /// The identity the probe reports, from the probe command's reply.
    pub fn probe_identity(&self, reply: &str) -> Result<String, String> {
        let field = |name: &str| {
            reply
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        match self {
            Target::Single { .. } => field("run_id:").ok_or_else(|| "INFO has no run_id".into()),
            Target::Cluster(_) => match field("cluster_state:").as_deref() {
                Some("ok") => Ok(format!(
                    "cluster ok, {} nodes",
                    field("cluster_known_nodes:").unwrap_or_default()
                )),
                Some(state) => Err(format!("cluster_state:{state}")),
                None => Err("CLUSTER INFO has no cluster_state".into()),
            },
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
