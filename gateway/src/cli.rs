//! Running the agent (`twinlake-edge --config edge.toml`, `twinlake edge …`) and hashing a
//! device credential (`hash-credential`).

use std::path::PathBuf;

use clap::Args;
use twinlake_edge::{EdgeAgent, EdgeConfig};

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// The agent's configuration (see deploy/edge-agent.example.toml).
    #[arg(long, short, env = "TWINLAKE_EDGE_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// The device credential to hash (or set TWINLAKE_CREDENTIAL).
    #[arg(env = "TWINLAKE_CREDENTIAL", hide_env_values = true)]
    pub credential: String,
    /// PBKDF2 iterations.
    #[arg(long, default_value_t = twinlake_edge::registry::DEFAULT_ITERATIONS)]
    pub iterations: u32,
}

pub fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let config = EdgeConfig::load(&args.config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let agent = EdgeAgent::start(config).await?;
            // Listening for SIGTERM before saying so: one sent right after is a clean stop.
            let stop = shutdown_signal();
            // The line tests and scripts wait for.
            println!(
                "twinlake edge ready: tcp={} tls={} metrics={}",
                fmt(agent.tcp_addr()),
                fmt(agent.tls_addr()),
                fmt(agent.metrics_addr())
            );
            agent.run(stop).await?;
            anyhow::Ok(())
        })
}

pub fn hash(args: HashArgs) -> anyhow::Result<()> {
    println!(
        "{}",
        twinlake_edge::registry::CredentialHash::new(&args.credential, args.iterations)
    );
    Ok(())
}

/// An address, or "off".
pub fn fmt(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "off".into(), |a| a.to_string())
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called (inside the runtime),
/// not when the future is first polled: call it before announcing readiness, so a signal
/// sent right after the announcement stops the process cleanly instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut term, mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
