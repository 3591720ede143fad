//! Reload on SIGHUP: re-read and validate the config file, swap the rules in whole for new
//! requests, and report the settings that only a restart can change.

use crate::config::{self, Config};
use crate::decision::Decider;
use crate::limiter::Backend;
use crate::proxy::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGHUP and reloads `path`. Requests in flight keep the rules they started with
/// (each holds its own `Arc` of the old [`Decider`]).
pub struct Reloader {
    pub path: PathBuf,
    pub shared: Arc<Shared>,
    /// The config in force (restart-only settings as the process started with them).
    pub current: Mutex<Config>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => match got {
                    Some(()) => self.reload(),
                    None => return,
                },
            }
        }
    }
}

impl Reloader {
    /// Reloads once: a valid file takes effect, an invalid one is refused whole and the old
    /// config keeps serving.
    pub fn reload(&self) {
        // The TLS certificate first, from the files the listener was started with: new
        // handshakes get it, open connections keep theirs; a pair that does not load keeps
        // the one in use.
        if let Some(cert) = &self.shared.tls {
            match cert.reload() {
                Ok(()) => log::info!("server.tls: certificate re-read"),
                Err(e) => log::error!("server.tls: {e}; the certificate in use stays"),
            }
        }
        let reloads = &self.shared.metrics.reloads;
        let new = match config::load(&self.path, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                for line in &e.lines {
                    log::error!("reload refused, the old config keeps serving: {line}");
                }
                reloads.with_label_values(&["failure"]).inc();
                return;
            }
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (merged, need_restart) = merge(&current, new);
        if !need_restart.is_empty() {
            log::warn!(
                "reload: {} changed but take effect only after a restart; the old values stay",
                need_restart.join(", ")
            );
        }
        let generation = self.shared.decider.load().generation() + 1;
        let decider = Decider::new(
            &merged,
            self.shared.side.clone(),
            self.shared.metrics.clone(),
            generation,
        );
        self.shared.decider.store(Arc::new(decider));
        // Refusals cached under the old rules may not hold under the new ones, and a request
        // still deciding on the old rules must not cache one after this.
        self.shared.side.new_rules(generation);
        for w in &merged.warnings {
            log::warn!("{w}");
        }
        for line in &merged.sources {
            log::info!("{line}");
        }
        log::info!(
            "reloaded {}: {} routes",
            self.path.display(),
            merged.routes.routes().len()
        );
        *current = merged;
        reloads.with_label_values(&["success"]).inc();
    }
}

/// `new` with every restart-only setting taken from `old`, and the names of those that differ.
pub fn merge(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut changed = Vec::new();
    // The store's address is named by what changed in it, not by the enum that holds it.
    if new.store.backend != old.store.backend {
        changed.push(match (&old.store.backend, &new.store.backend) {
            (Backend::Redis { .. }, Backend::Redis { .. }) => "store.url",
            (Backend::RedisCluster { .. }, Backend::RedisCluster { .. }) => "store.nodes",
            _ => "store.backend",
        });
        new.store.backend = old.store.backend.clone();
    }
    macro_rules! keep {
        ($($section:ident . $field:ident),* $(,)?) => {$(
            if new.$section.$field != old.$section.$field {
                changed.push(concat!(stringify!($section), ".", stringify!($field)));
                new.$section.$field = old.$section.$field.clone();
            }
        )*};
    }
    keep!(
        server.listen,
        server.admin_listen,
        server.threads,
        server.instance,
        server.h2c,
        server.tls,
        server.grace_period,
        server.drain_timeout,
        server.admin_token,
        upstream.addrs,
        upstream.connect_timeout,
        upstream.idle_timeout,
        upstream.read_timeout,
        upstream.write_timeout,
        upstream.protocol,
        upstream.tls,
        upstream.health_check,
        upstream.resolve_every,
        store.timeout,
        store.prefix,
        store.max_callers,
        store.tls_ca_file,
        store.lease_ttl,
    );
    (new, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        config::parse("x.yaml", text, &|_| None).unwrap()
    }

    #[test]
    fn restart_only_settings_are_kept_and_named() {
        let old = parse("server: { listen: \"127.0.0.1:1\", threads: 2, instance: a }\nupstream: { addrs: [\"h:1\"] }\nstore: { on_error: allow }\n");
        let new = parse("server: { listen: \"127.0.0.1:2\", threads: 4, instance: a, max_identity_bytes: 10 }\nupstream: { addrs: [\"h:1\"] }\nstore: { on_error: deny }\n");
        let (merged, changed) = merge(&old, new);
        assert_eq!(changed, ["server.listen", "server.threads"]);
        assert_eq!(merged.server.listen, "127.0.0.1:1");
        assert_eq!(merged.server.threads, 2);
        assert_eq!(merged.store.on_error, config::OnError::Deny, "reloadable");
        assert_eq!(merged.identity.max_bytes, 10, "reloadable");
    }

    #[test]
    fn a_changed_store_address_is_named_by_what_changed() {
        let redis = |url: &str| {
            parse(&format!(
                "upstream: {{ addrs: [\"h:1\"] }}\nstore: {{ backend: redis, url: \"{url}\" }}\n"
            ))
        };
        let (_, changed) = merge(&redis("redis://h:1/0"), redis("redis://h:1/1"));
        assert_eq!(changed, ["store.url"], "a new database is a new url");
        let (merged, changed) = merge(
            &redis("redis://h:1/0"),
            parse("upstream: { addrs: [\"h:1\"] }\nstore: { backend: memory }\n"),
        );
        assert_eq!(changed, ["store.backend"]);
        assert_eq!(merged.store.backend, redis("redis://h:1/0").store.backend);
        let cluster = |n: &str| {
            parse(&format!(
                "upstream: {{ addrs: [\"h:1\"] }}\nstore: {{ backend: redis_cluster, nodes: [\"{n}\"] }}\n"
            ))
        };
        let (_, changed) = merge(&cluster("redis://a:1"), cluster("redis://b:1"));
        assert_eq!(changed, ["store.nodes"]);
    }
}
