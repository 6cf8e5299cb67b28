//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rollgate::telemetry::LogFormat;

use crate::certs::AgentName;
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "rollgate",
    version,
    about = "Safe, resumable upgrades of API gateway fleets (control plane + data planes)",
    after_help = "Exit codes: 0 done; 1 failed, halted or unreachable; 2 blocked by plan or preflight; 64 bad usage or config."
)]
pub struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Certificates for the fleet's mutual TLS.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Ask every agent for its host's version, health and compatibility.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA (or reuse the one in DIR), a coordinator client certificate
    /// and one server certificate per agent.
    Init(CertsInitArgs),
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory for ca.pem/ca.key and <name>.pem/<name>.key.
    #[arg(long)]
    pub dir: PathBuf,
    /// An agent certificate: NAME=IP (both go into its subject alternative names).
    #[arg(long = "agent", value_name = "NAME=IP", value_parser = parse_agent)]
    pub agents: Vec<AgentName>,
    /// A client certificate name; default: rollgate-coordinator when the CA is new.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Overwrite existing certificate files.
    #[arg(long)]
    pub force: bool,
    /// Validity of the issued certificates, in days.
    #[arg(long, default_value_t = 825)]
    pub valid_days: i64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn parse_agent(s: &str) -> Result<AgentName, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The fleet inventory.
    #[arg(long, short = 'i', env = "ROLLGATE_INVENTORY")]
    pub inventory: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}
