//! `twinlake cloud --config cloud.toml` and `twinlake hash-token`.

use std::path::PathBuf;

use clap::Args;
use twinlake_cloud::{Cloud, CloudConfig};

use twinlake_gateway::cli::{fmt, shutdown_signal};

#[derive(Debug, Args)]
pub struct CloudArgs {
    /// The cloud's configuration (see deploy/cloud.example.toml); defaults without one.
    #[arg(long, short, env = "TWINLAKE_CLOUD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HashTokenArgs {
    /// The token to hash for `[[tokens]]` or `[[gateways]]` (or set TWINLAKE_TOKEN).
    #[arg(env = "TWINLAKE_TOKEN", hide_env_values = true)]
    pub token: String,
}

pub fn run(args: CloudArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => CloudConfig::load(p)?,
        None => CloudConfig::default(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let cloud = Cloud::start(config).await?;
            if let Some(t) = cloud.initial_token() {
                println!("created the first admin token (shown once; keep it): {t}");
            }
            let scheme = if cloud.is_tls() { "https" } else { "http" };
            let (tcp, tls) = cloud.device_addrs();
            // Listening for SIGTERM before saying so: one sent right after is a clean stop.
            let stop = shutdown_signal();
            // The line tests and scripts wait for.
            println!(
                "twinlake cloud ready: api={scheme}://{} devices={} devices_tls={} metrics={}",
                fmt(cloud.http_addr()),
                fmt(tcp),
                fmt(tls),
                fmt(cloud.metrics_addr())
            );
            cloud.run(stop).await?;
            anyhow::Ok(())
        })
}

pub fn hash(args: HashTokenArgs) -> anyhow::Result<()> {
    println!("{}", twinlake_cloud::auth::sha256_hex(&args.token));
    Ok(())
}
