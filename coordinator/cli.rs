//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rollgate::telemetry::LogFormat;
use rollgate::version::Version;

use crate::batch::{BatchSize, InService};

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
    /// Show the upgrade path, its breaking changes and a preflight of every host.
    Plan(PlanArgs),
    /// Rehearse the CP upgrade on a scratch copy of the production database
    /// (on the CP host), hop by hop; production is not touched.
    Rehearse(RehearseArgs),
    /// Upgrade the fleet: stage, back up, CP in place, DPs in batches.
    Upgrade(UpgradeArgs),
    /// Continue a rollout cut off by a crash or Ctrl-C, or stopped by a lost agent.
    Resume(ResumeArgs),
    /// Return every host to the release it had before a rollout.
    Rollback(RollbackArgs),
    /// Take a verified CP backup (the upgrade's backup phase alone).
    Backup(InventoryArgs),
    /// List rollouts and how they ended.
    History(InventoryArgs),
    /// One rollout's per-host timeline.
    Show(ShowArgs),
    /// Inventories from elsewhere.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages of rollgate, its subcommands and rollgate-agent.
    Man(ManArgs),
    /// Build a throwaway fleet on this machine (PostgreSQL, CP, DPs behind
    /// HAProxy, agents) and upgrade it under live traffic.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Write a fleet.toml from an Ansible inventory (INI or YAML): group
    /// membership gives the role, `ansible_host` the address.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The Ansible inventory file (INI or YAML).
    #[arg(long, value_name = "FILE")]
    pub ansible: PathBuf,
    /// The group whose hosts (with its children's) are CPs.
    #[arg(long, default_value = "cp")]
    pub cp_group: String,
    /// The group whose hosts (with its children's) are DPs.
    #[arg(long, default_value = "dp")]
    pub dp_group: String,
    /// The agents' port where a host sets no `rollgate_agent_port`.
    #[arg(long, default_value_t = 7443)]
    pub port: u16,
    /// Where to write the fleet.toml (default: stdout).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Replace the output file when it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell. Bash: `rollgate completions bash > /etc/bash_completion.d/rollgate`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write them (created if missing): rollgate.1, one
    /// rollgate-<command>.1 per subcommand, rollgate-agent.8.
    #[arg(long)]
    pub dir: PathBuf,
}

#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data planes behind HAProxy (2 to 50).
    #[arg(long, default_value_t = 3)]
    pub dps: usize,
    /// The release the fleet starts on.
    #[arg(long, default_value = "3.3.0", value_parser = parse_version)]
    pub from: Version,
    /// The release to upgrade to.
    #[arg(long, default_value = "3.4.0", value_parser = parse_version)]
    pub to: Version,
    /// Leave the fleet running and print how to reach and stop it.
    #[arg(long)]
    pub keep: bool,
    /// Only build the fleet (with --keep: to drive it by hand).
    #[arg(long)]
    pub no_upgrade: bool,
    /// Requests per second through HAProxy during the upgrade.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// How the gateways are installed: release tarballs run by the agents,
    /// Docker Compose services (needs a running Docker Engine), or Debian
    /// packages (each host in a dpkg root of its own).
    #[arg(long, default_value = "tarball", value_parser = ["tarball", "compose", "deb"])]
    pub install: String,
    /// Where to build the fleet (default: a new temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where coordinators keep the fleet lease: the local state dir (file),
    /// or a database of rollgate's own on the demo's PostgreSQL server.
    #[arg(long, default_value = "file", value_parser = ["file", "postgres"])]
    pub state: String,
    /// text for people; json: one document, or one event per line while a rollout runs.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The fleet inventory.
    #[arg(long, short = 'i', env = "ROLLGATE_INVENTORY")]
    pub inventory: PathBuf,
    /// Keep rollout journals, the lock and backup copies here instead of the
    /// inventory's `[coordinator] state_dir` (e.g. another operator's machine).
    #[arg(long, env = "ROLLGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// text for people; json: one document, or one event per line while a rollout runs.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The release catalog.
    #[arg(long, short = 'c', env = "ROLLGATE_CATALOG")]
    pub catalog: PathBuf,
    /// The version to upgrade to.
    #[arg(long, value_parser = parse_version)]
    pub to: Version,
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Rehearse on this verified backup on the CP (default: take one now).
    #[arg(long)]
    pub backup: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// DPs per batch after the canary: a count (2) or a share (25%).
    #[arg(long, value_parser = parse_batch)]
    pub batch: Option<BatchSize>,
    /// DPs in the canary batch.
    #[arg(long)]
    pub canary: Option<usize>,
    /// How long a host, then its batch, must stay healthy (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub min_healthy: Option<Duration>,
    /// Failed DPs that may be quarantined (left on their old release) before the rollout halts.
    #[arg(long)]
    pub max_failures: Option<usize>,
    /// DPs that must stay in rotation while a batch is out (a count or a share); 0 accepts an outage.
    #[arg(long, value_parser = parse_in_service)]
    pub min_in_service: Option<InService>,
    /// Do not rehearse the CP upgrade on a scratch copy of the database first
    /// (whatever `[policy] rehearse` says); the journal records it.
    #[arg(long)]
    pub no_rehearse: bool,
    /// Acknowledge the breaking changes without asking.
    #[arg(long)]
    pub yes: bool,
    /// Print the exact steps and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The rollout to resume (default: the one that was cut off).
    #[arg(value_parser = parse_rollout_id)]
    pub rollout: Option<String>,
    /// Take the fleet lease from the coordinator holding it (shared state
    /// only): one on a machine that was lost, or that stopped answering.
    /// Asks you to type the holder's name; every agent refuses the old
    /// holder's calls from then on.
    #[arg(long)]
    pub take_over: bool,
    /// With --take-over: take it without asking.
    #[arg(long, requires = "take_over")]
    pub yes: bool,
    /// The release catalog (default: the one the rollout was started with,
    /// at the path it had there). For a resume on another machine, where
    /// the catalog is elsewhere; it must list the rollout's releases, whose
    /// artifacts are checked against it (size, SHA-256) before anything.
    #[arg(long, short = 'c')]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The upgrade to undo (default: the latest).
    #[arg(value_parser = parse_rollout_id)]
    pub rollout: Option<String>,
    /// Also restore the CP database from the rollout's backup.
    #[arg(long)]
    pub restore_db: bool,
    /// Confirm without asking.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub inv: InventoryArgs,
    /// The rollout to show (an id from `rollgate history`).
    #[arg(value_parser = parse_rollout_id)]
    pub rollout: String,
}

fn parse_version(s: &str) -> Result<Version, String> {
    s.parse()
        .map_err(|e: rollgate::version::ParseVersionError| e.to_string())
}

/// Rollout ids name files in the state directory: only the ids rollgate
/// makes are accepted, so no argument can point outside it.
fn parse_rollout_id(s: &str) -> Result<String, String> {
    rollgate::ids::check_rollout_id(s).map(|()| s.to_string())
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

fn parse_in_service(s: &str) -> Result<InService, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
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
    /// An agent certificate: NAME=ADDRESS, the address an IP or a DNS name (both go into its subject alternative names).
    #[arg(long = "agent", value_name = "NAME=ADDRESS", value_parser = parse_agent)]
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
    /// text for people; json: one document, or one event per line while a rollout runs.
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
    /// The coordinator's state directory, instead of the inventory's
    /// `[coordinator] state_dir`.
    #[arg(long, env = "ROLLGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// text for people; json: one document, or one event per line while a rollout runs.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}
