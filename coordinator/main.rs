//! rollgate: the coordinator CLI. Plans an upgrade, takes and verifies the
//! backup, upgrades the CP in place and then rolls the DPs, through the agents.
#![forbid(unsafe_code)]

mod agent_channel;
mod ansible;
mod batch;
mod certs;
mod cli;
mod client;
mod cmd;
mod fleet;
mod fleet_tls;
mod inventory;
mod lease;
mod open_files;
mod output;
mod planner;
mod report;
mod rollout;
mod state_db;

use std::process::ExitCode;

use rollgate::exit;

use crate::cli::{CertsCommand, Cli, Command, InventoryCommand};
use crate::inventory::Inventory;

/// How a command ended, mapped to the exit codes (`rollgate::exit`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad usage or configuration; nothing changed (64).
    #[error("{0}")]
    Usage(String),
    /// Blocked by plan or preflight; nothing changed (2).
    #[error("{0}")]
    Blocked(String),
    /// The command ran and failed, or hosts were unreachable (1).
    #[error("{0}")]
    Failed(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Blocked(_) => exit::BLOCKED,
            Failure::Failed(_) => exit::FAILED,
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match rollgate::cli::parse() {
        Ok(a) => a,
        Err(code) => return code,
    };
    rollgate::telemetry::init(cli.log_format, "warn");
    rollgate::tls::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollgate: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let code = match rt.block_on(run(cli.command)) {
        Ok(()) => exit::OK,
        Err(f) => {
            eprintln!("rollgate: {f}");
            f.code()
        }
    };
    // Exit with the runtime still standing. Everything a command must finish
    // (journal records, the lease's release, the lock, the report on
    // stdout, which `exit` flushes) has finished when `run` returns; what
    // dropping the runtime would add is closing every agent connection in
    // turn (an HTTP/2 GOAWAY and a TLS close_notify each, then freeing its
    // buffers): at 10,000 hosts ~0.05 ms of CPU per host (benches/fleet_scale)
    // for what the kernel does at exit anyway. An agent sees the connection
    // end as it does when a coordinator is killed.
    std::process::exit(i32::from(code))
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Certs(CertsCommand::Init(a)) => cmd::certs::init(a),
        Command::Status(a) => cmd::status::run(a).await,
        Command::Inventory(InventoryCommand::Import(a)) => cmd::inventory::import(&a),
        Command::Completions(a) => {
            cmd::docs::completions(a.shell);
            Ok(())
        }
        Command::Man(a) => cmd::docs::man(&a.dir),
        Command::Plan(a) => cmd::plan::run(a).await,
        Command::Upgrade(a) => {
            let inv = a.plan.inv.load()?;
            let args = cmd::upgrade::UpgradeArgs {
                to: a.plan.to.clone(),
                overrides: cmd::upgrade::Overrides {
                    batch: a.batch,
                    canary: a.canary,
                    min_healthy: a.min_healthy,
                    max_failures: a.max_failures,
                    min_in_service: a.min_in_service,
                    no_rehearse: a.no_rehearse,
                },
                yes: a.yes,
                dry_run: a.dry_run,
                output: a.plan.inv.output,
            };
            if args.dry_run {
                return cmd::upgrade::upgrade(inv, &a.plan.catalog, args).await;
            }
            lease::holding(inv, "upgrade", |inv| {
                cmd::upgrade::upgrade(inv, &a.plan.catalog, args)
            })
            .await
        }
        Command::Rehearse(a) => {
            let inv = a.plan.inv.load()?;
            let args = cmd::rehearse::RehearseArgs {
                to: a.plan.to.clone(),
                backup: a.backup,
                output: a.plan.inv.output,
            };
            lease::holding(inv, "rehearse", |inv| {
                cmd::rehearse::rehearse(inv, &a.plan.catalog, args)
            })
            .await
        }
        Command::Resume(a) => {
            let (rollout, output) = (a.rollout, a.inv.output);
            let take_over = a.take_over.then_some(lease::TakeOver { yes: a.yes });
            let given = a
                .catalog
                .as_deref()
                .map(cmd::upgrade::load_catalog)
                .transpose()?;
            let inv = a.inv.load()?;
            let (id, catalog) =
                cmd::upgrade::resume_target(&inv, rollout.as_deref(), given).await?;
            lease::holding_or_taking(inv, "resume", take_over, |inv| {
                cmd::upgrade::resume(inv, id, output, catalog)
            })
            .await
        }
        Command::Rollback(a) => {
            let inv = a.inv.load()?;
            let args = cmd::rollback::RollbackArgs {
                rollout: a.rollout,
                restore_db: a.restore_db,
                yes: a.yes,
                output: a.inv.output,
            };
            lease::holding(inv, "rollback", |inv| cmd::rollback::rollback(inv, args)).await
        }
        Command::Backup(a) => {
            let output = a.output;
            lease::holding(a.load()?, "backup", |inv| cmd::upgrade::backup(inv, output)).await
        }
        Command::History(a) => cmd::history::history(&a.load_records_only()?, a.output).await,
        #[cfg(feature = "demo")]
        Command::Demo(a) => {
            cmd::demo::demo(cmd::demo::DemoArgs {
                dps: a.dps,
                from: a.from,
                to: a.to,
                keep: a.keep,
                no_upgrade: a.no_upgrade,
                rate: a.rate,
                install: a.install.parse().map_err(Failure::Usage)?,
                dir: a.dir,
                state_postgres: a.state == "postgres",
                output: a.output,
            })
            .await
        }
        Command::Show(a) => {
            cmd::history::show(&a.inv.load_records_only()?, &a.rollout, a.inv.output).await
        }
    }
}

/// Reads the inventory for a command that calls its agents; a bad one is a
/// usage error (64), as is one with more hosts than this process may hold
/// connections to (`open_files`). `state_dir` (`--state-dir`) replaces its
/// `[coordinator] state_dir`.
pub fn load_inventory(
    path: &std::path::Path,
    state_dir: Option<&std::path::Path>,
) -> Result<Inventory, Failure> {
    let inv = load_inventory_records_only(path, state_dir)?;
    open_files::make_room(inv.hosts.len()).map_err(Failure::Usage)?;
    Ok(inv)
}

/// As `load_inventory`, for a command that only reads the state directory
/// (`history`, `show`): it opens no connection, so needs no room for them.
pub fn load_inventory_records_only(
    path: &std::path::Path,
    state_dir: Option<&std::path::Path>,
) -> Result<Inventory, Failure> {
    let mut inv =
        Inventory::load(path).map_err(|e| Failure::Usage(format!("bad inventory: {e}")))?;
    if let Some(dir) = state_dir {
        if dir.as_os_str().is_empty() {
            return Err(Failure::Usage("--state-dir is empty".into()));
        }
        inv.coordinator.state_dir = dir.to_path_buf();
    }
    Ok(inv)
}

impl cli::InventoryArgs {
    /// The inventory these options name, with `--state-dir` applied.
    pub fn load(&self) -> Result<Inventory, Failure> {
        load_inventory(&self.inventory, self.state_dir.as_deref())
    }

    /// The inventory, for a command that only reads the state directory.
    pub fn load_records_only(&self) -> Result<Inventory, Failure> {
        load_inventory_records_only(&self.inventory, self.state_dir.as_deref())
    }
}
