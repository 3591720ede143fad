//! The `sluice` command: parse the CLI, load the config, run the sidecar (or only check).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: the request path allocates many small short-lived buffers (headers, keys);
/// glibc malloc cost about 12% of a proxy core in profiles, see bench/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A rate-limiting reverse-proxy sidecar.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (YAML).
    #[arg(long, short = 'c', default_value = "conf/sluice.yaml")]
    config: PathBuf,
    /// Validate the config (environment overrides included) and exit: 0 valid, 2 invalid.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // pingora_core::connectors logs an ERROR each time a pooled upstream connection loses a
    // benign race with its idle watcher (Pingora then opens a new one); under load that is
    // thousands of lines a second and no action to take, so it is off unless RUST_LOG asks.
    let default_log = "warn,sluice=info,pingora_core::connectors=off";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    let config = match sluice::config::load(&cli.config, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // A name that does not resolve passes validation but fails the start: --check (the
        // systemd unit's ExecStartPre) catches it here.
        let unresolved = sluice::upstream::unresolved(&config.upstream);
        if !unresolved.is_empty() {
            for line in unresolved {
                eprintln!("{}: {line}", cli.config.display());
            }
            return ExitCode::from(2);
        }
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    for line in &config.sources {
        log::info!("{line}");
    }
    // Logged once both addresses are known to bind (build checks them), never before a start
    // that then fails on a port in use.
    let listening = format!(
        "sluice {} listening on {} (admin {}), store {:?}, instance {}",
        env!("CARGO_PKG_VERSION"),
        config.server.listen,
        config.server.admin_listen,
        config.store.backend,
        config.server.instance
    );
    match sluice::server::build(config, &cli.config) {
        Ok(sidecar) => {
            log::info!("{listening}");
            sidecar.run()
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        }
    }
}
