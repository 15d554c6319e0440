//! `twinlake`: the one binary. Thin CLI wiring over the library crates.

mod cloud;
mod demo;
mod fleet;
mod sim;

use twinlake_gateway::cli as edge;

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
    /// Run everything on embedded defaults: the cloud, an edge agent and a simulated fleet.
    Demo(Box<demo::DemoArgs>),
    /// Run the cloud: registry, twins, gateway link, REST and streaming API.
    Cloud(cloud::CloudArgs),
    /// Run the edge agent: device listener, WAL, Parquet, upload.
    Edge(edge::EdgeArgs),
    /// Run simulated devices against a listener.
    Sim(sim::SimArgs),
    /// Print the stored form of a device credential, for the registry.
    HashCredential(edge::HashArgs),
    /// Print the SHA-256 of an API or gateway token, for cloud.toml.
    HashToken(cloud::HashTokenArgs),
}

fn main() -> anyhow::Result<()> {
    // One rustls provider for the whole process, installed before any TLS is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // RUST_LOG picks the levels; TWINLAKE_LOG_FORMAT=json gives one JSON object per line.
    // The embedded MQTT broker (rumqttd) logs every client disconnect as an error: its log is
    // off unless asked for (RUST_LOG=...,rumqttd=info).
    twinlake_gateway::init_logging("warn,twinlake=info,twinlake_edge=info,twinlake_cloud=info,rumqttd=off");
    match Cli::parse().command {
        Command::Demo(args) => demo::run(*args),
        Command::Cloud(args) => cloud::run(args),
        Command::Edge(args) => edge::run(args),
        Command::Sim(args) => sim::run(args),
        Command::HashCredential(args) => edge::hash(args),
        Command::HashToken(args) => cloud::hash(args),
    }
}
