//! Command-line parsing shared by both binaries: clap's own usage errors exit
//! with 2, which rollgate reserves for "blocked by plan"; bad usage is 64.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit;
use crate::telemetry::LogFormat;

/// `rollgate-agent`'s command line. Here rather than in the agent so that
/// `rollgate man` renders the agent's man page from the same definition.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rollgate-agent",
    version,
    about = "The rollgate host agent",
    long_about = "The rollgate host agent: runs on every CP and DP host under systemd and carries out the coordinator's steps (stage, back up, drain, install, undrain, roll back) with commands named only in its own configuration.",
    after_help = "Exit codes: 0 stopped; 1 failed; 64 bad configuration (nothing bound); 65 a damaged journal (move the named line aside)."
)]
pub struct AgentArgs {
    /// The agent's configuration file.
    #[arg(long, short = 'c', env = "ROLLGATE_AGENT_CONFIG")]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Check the configuration and exit without binding anything.
    #[arg(long)]
    pub check: bool,
}

/// Parses the command line, or prints clap's message and returns the exit
/// code to end with (0 for --help/--version, 64 for bad usage).
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(exit::USAGE)
        } else {
            ExitCode::from(exit::OK)
        }
    })
}
