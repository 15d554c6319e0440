//! `twinlake-edge`: the gateway binary (`twinlake-edge --config edge.toml`).

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use twinlake_gateway::cli;

#[derive(Debug, Parser)]
#[command(
    name = "twinlake-edge",
    version,
    about = "Twinlake edge agent: device listener, WAL, Parquet, upload, cloud link",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The agent's configuration (see deploy/edge-agent.example.toml).
    #[arg(long, short, env = "TWINLAKE_EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the stored form of a device credential, for the registry.
    HashCredential(cli::HashArgs),
}

fn main() -> anyhow::Result<()> {
    // One rustls provider for the whole process, installed before any TLS is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The embedded MQTT broker (rumqttd) logs every client disconnect as an error: its log
    // is off unless asked for (RUST_LOG=...,rumqttd=info).
    twinlake_gateway::init_logging("warn,twinlake_edge=info,rumqttd=off");
    let args = Cli::parse();
    match (args.command, args.config) {
        (Some(Command::HashCredential(h)), _) => cli::hash(h),
        (None, Some(config)) => cli::run(cli::EdgeArgs { config }),
        (None, None) => Cli::command()
            .error(ErrorKind::MissingRequiredArgument, "give --config <CONFIG>")
            .exit(),
    }
}
