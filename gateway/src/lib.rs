//! # twinlake-gateway: the gateway's command line
//!
//! The `twinlake-edge` binary runs the edge agent alone: it links `twinlake-edge` and
//! nothing of the cloud, so a gateway ships no DataFusion, Flight SQL, pgwire or redb.
//! The all-in-one `twinlake` binary takes [`cli`] from here for its `edge` and
//! `hash-credential` commands, so both run the same code.

pub mod cli;

/// Logs to stderr: RUST_LOG picks the levels (`default` without it);
/// TWINLAKE_LOG_FORMAT=json gives one JSON object per line.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TWINLAKE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}
