//! `demo-gateway`: the reference gateway that rollgate's demo and tests upgrade.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad usage or config (see `exit`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{Instrument, error, info_span};

use demo_gateway::config::{CpConfig, DpConfig};
use demo_gateway::manifest::Release;
use demo_gateway::{cp, dp, exit, package, telemetry, upstream};

#[derive(Parser)]
#[command(
    name = "demo-gateway",
    about = "Reference API gateway (CP + DP) for rollgate's demo and tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (PostgreSQL-backed admin API).
    Cp {
        #[arg(long)]
        config: PathBuf,
        /// Release manifest; default `<dir of the executable>/../manifest.toml`.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run a data plane (follows the CP, proxies HTTP).
    Dp {
        #[arg(long)]
        config: PathBuf,
        /// Release manifest; default `<dir of the executable>/../manifest.toml`.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run a tiny upstream that answers every request with 200 JSON.
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "upstream")]
        name: String,
        /// Hold every request this long before answering.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Build every release artifact and `releases.toml` into a directory.
    Package {
        #[arg(long)]
        out: PathBuf,
        /// The binary to package; default: this executable.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(run(cli.command))
}

fn usage_error(error: impl Into<anyhow::Error>) -> u8 {
    eprintln!("demo-gateway: {:#}", error.into());
    exit::USAGE
}

fn outcome<E: Into<anyhow::Error>>(result: Result<(), E>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let e = e.into();
            error!(error = %format!("{e:#}"), "exiting");
            eprintln!("demo-gateway: {e:#}");
            exit::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run(command: Command) -> u8 {
    match command {
        Command::Cp { config, manifest } => {
            // Validate everything before binding or connecting to anything.
            let config = match CpConfig::load(&config) {
                Ok(config) => config,
                Err(e) => return usage_error(e),
            };
            let release = match Release::locate(manifest.as_deref()) {
                Ok(release) => release,
                Err(e) => return usage_error(e),
            };
            telemetry::init(config.log_level.as_deref());
            let span = info_span!("cp", version = %release.version);
            match runtime() {
                Ok(rt) => outcome(rt.block_on(cp::run(config, release).instrument(span))),
                Err(e) => outcome(Err(e)),
            }
        }
        Command::Dp { config, manifest } => {
            let config = match DpConfig::load(&config) {
                Ok(config) => config,
                Err(e) => return usage_error(e),
            };
            let release = match Release::locate(manifest.as_deref()) {
                Ok(release) => release,
                Err(e) => return usage_error(e),
            };
            telemetry::init(config.log_level.as_deref());
            let span = info_span!("dp", version = %release.version, instance = %config.instance_id);
            match runtime() {
                Ok(rt) => {
                    let code = outcome(rt.block_on(dp::run(config, release).instrument(span)));
                    // Abandoned connections (after a graceful timeout or a fast stop)
                    // must not hold the exit.
                    rt.shutdown_timeout(Duration::from_millis(100));
                    code
                }
                Err(e) => outcome(Err(e)),
            }
        }
        Command::Upstream {
            listen,
            name,
            delay_ms,
        } => {
            telemetry::init(None);
            let span = info_span!("upstream", %name);
            let delay = Duration::from_millis(delay_ms);
            match runtime() {
                Ok(rt) => {
                    let code =
                        outcome(rt.block_on(upstream::run(listen, name, delay).instrument(span)));
                    rt.shutdown_timeout(Duration::from_millis(100));
                    code
                }
                Err(e) => outcome(Err(e)),
            }
        }
        Command::Package { out, binary } => {
            telemetry::init(None);
            match package::run(&out, binary.as_deref()) {
                Ok(catalog) => {
                    println!(
                        "wrote {} releases and {} to {}",
                        catalog.releases.len(),
                        package::catalog::FILE_NAME,
                        out.display()
                    );
                    exit::OK
                }
                Err(e) => outcome(Err(e)),
            }
        }
    }
}
