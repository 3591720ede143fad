//! Shutdown that drains. On SIGTERM (or SIGINT) a sidecar keeps accepting and serving on both
//! listeners for `server.grace_period` while `/health` answers 503 `draining` and every HTTP/1.1
//! response closes its connection (balancers stop sending, keep-alive clients reconnect
//! elsewhere); then it stops accepting and lets the requests in flight finish, for up to
//! `server.drain_timeout`, and exits 0 as soon as none is left. A second signal exits at once.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Whether the sidecar is draining, and how many requests are in flight.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped (with the request's context,
    /// after its response has been written in full, or its client or upstream has failed).
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One request in flight.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The signals Pingora's server waits on, with the grace and the drain around them.
pub struct Shutdown {
    pub drain: Arc<Drain>,
    pub grace: Duration,
    pub drain_timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Shutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot listen for SIGTERM/SIGINT/SIGQUIT; stopping now");
            return ShutdownSignal::FastShutdown;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            // Pingora's own: hand the listening sockets to a new process.
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
        };
        self.drain.draining.store(true, Ordering::Relaxed);
        log::info!(
            "{name}: draining; still serving for the grace period ({:?}) while /health says draining, then up to {:?} for requests in flight",
            self.grace,
            self.drain_timeout
        );
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            _ = term.recv() => return exit_now("SIGTERM"),
            _ = int.recv() => return exit_now("SIGINT"),
        }
        log::info!(
            "grace period over: no longer accepting; {} requests in flight",
            self.drain.in_flight()
        );
        // On the server's own runtime, which runs until the process ends.
        tokio::spawn(watch_drain(
            self.drain.clone(),
            self.drain_timeout,
            term,
            int,
        ));
        // Pingora now stops accepting, closes idle connections, and waits `drain_timeout`
        // (its grace period) before it stops the runtimes; the watch exits earlier, as soon as
        // nothing is in flight.
        ShutdownSignal::GracefulTerminate
    }
}

fn exit_now(name: &str) -> ShutdownSignal {
    log::warn!("{name} again: exiting now, without waiting for requests in flight");
    crate::access_log::flush(Duration::from_millis(200));
    std::process::exit(0)
}

/// Exits 0 once no request is in flight (or at once on another signal); Pingora's own
/// shutdown ends the process at `drain_timeout` otherwise.
async fn watch_drain(drain: Arc<Drain>, limit: Duration, mut term: Signal, mut int: Signal) {
    let start = Instant::now();
    // Let the listeners stop before counting down to none in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop {
        if drain.in_flight() == 0 {
            log::info!("drained after {:?}; exiting", start.elapsed());
            crate::access_log::flush(Duration::from_secs(1));
            std::process::exit(0);
        }
        if start.elapsed() >= limit {
            log::warn!(
                "drain timeout ({limit:?}): closing {} requests still in flight",
                drain.in_flight()
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = term.recv() => { exit_now("SIGTERM"); }
            _ = int.recv() => { exit_now("SIGINT"); }
        }
    }
}
