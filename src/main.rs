//! `twinlake`: the one binary. Thin CLI wiring over the library crates.

mod demo;
mod sim;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "twinlake",
    version,
    about = "Edge-to-cloud time-series and digital-twin platform for IoT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on embedded defaults: the device listener and a simulated fleet.
    Demo(demo::DemoArgs),
    /// Run simulated devices against a listener.
    Sim(sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    // One rustls provider for the whole process, installed before any TLS is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
    }
}
