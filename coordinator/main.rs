//! rollgate: the coordinator CLI. Plans an upgrade, takes and verifies the
//! backup, upgrades the CP in place and then rolls the DPs, through the agents.
#![forbid(unsafe_code)]

mod batch;
mod certs;
mod cli;
mod client;
mod cmd;
mod fleet;
mod inventory;
mod output;
mod planner;
mod report;
mod rollout;
mod status;

use std::process::ExitCode;

use rollgate::exit;

use crate::cli::{CertsCommand, Cli, Command};
use crate::inventory::Inventory;
use crate::output::{Output, print_json, print_table, yes_no};

/// How a command ended, mapped to the exit codes of DESIGN.md.
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
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("rollgate: {f}");
            ExitCode::from(f.code())
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Certs(CertsCommand::Init(a)) => {
            let clients = if a.clients.is_empty() && !a.dir.join("ca.pem").exists() {
                vec![certs::DEFAULT_CLIENT.to_string()]
            } else {
                a.clients
            };
            let w = certs::init(&a.dir, &clients, &a.agents, a.force, a.valid_days).map_err(
                |e| match e {
                    certs::CertsError::Rcgen(_) => Failure::Failed(e.to_string()),
                    _ => Failure::Usage(e.to_string()),
                },
            )?;
            match a.output {
                Output::Json => print_json(&w),
                Output::Text => {
                    if w.ca_reused {
                        println!("using the existing CA in {}", w.dir.display());
                    }
                    for f in &w.files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "next: on each host put ca.pem, <host>.pem and <host>.key in /etc/rollgate/ \
                         (see deploy/agent.toml); the inventory's [tls] names ca.pem and the client's .pem/.key"
                    );
                }
            }
            Ok(())
        }
        Command::Status(a) => {
            let inv = load_inventory(&a.inventory)?;
            let rows = status::collect(&inv).await;
            match a.output {
                Output::Json => print_json(&serde_json::json!({ "hosts": rows })),
                Output::Text => print_table(
                    &[
                        "HOST",
                        "ROLE",
                        "VERSION",
                        "HEALTHY",
                        "LOAD BALANCER",
                        "COMPATIBLE",
                        "REACHABLE",
                        "NOTE",
                    ],
                    &rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.role.to_string(),
                                r.version.clone().unwrap_or_else(|| "-".into()),
                                yes_no(r.healthy),
                                r.load_balancer
                                    .map_or_else(|| "-".into(), |l| l.to_string()),
                                yes_no(r.compatible),
                                yes_no(Some(r.reachable)),
                                r.error
                                    .clone()
                                    .or_else(|| r.reason.clone())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            let down: Vec<&str> = rows
                .iter()
                .filter(|r| !r.reachable)
                .map(|r| r.name.as_str())
                .collect();
            if down.is_empty() {
                Ok(())
            } else {
                Err(Failure::Failed(format!("unreachable: {}", down.join(", "))))
            }
        }
        Command::Plan(a) => plan(a).await,
        Command::Upgrade(a) => {
            let inv = load_inventory(&a.plan.inv.inventory)?;
            let args = cmd::upgrade::UpgradeArgs {
                to: a.plan.to.clone(),
                overrides: cmd::upgrade::Overrides {
                    batch: a.batch,
                    canary: a.canary,
                    min_healthy: a.min_healthy,
                    max_failures: a.max_failures,
                    min_in_service: a.min_in_service,
                },
                yes: a.yes,
                dry_run: a.dry_run,
                output: a.plan.inv.output,
            };
            cmd::upgrade::upgrade(inv, &a.plan.catalog, args).await
        }
        Command::Resume(a) => {
            cmd::upgrade::resume(load_inventory(&a.inv.inventory)?, a.rollout, a.inv.output).await
        }
        Command::Rollback(a) => {
            let inv = load_inventory(&a.inv.inventory)?;
            cmd::rollback::rollback(
                inv,
                cmd::rollback::RollbackArgs {
                    rollout: a.rollout,
                    restore_db: a.restore_db,
                    yes: a.yes,
                    output: a.inv.output,
                },
            )
            .await
        }
        Command::Backup(a) => cmd::upgrade::backup(load_inventory(&a.inventory)?, a.output).await,
        Command::History(a) => cmd::history::history(&load_inventory(&a.inventory)?, a.output),
        Command::Demo(a) => {
            cmd::demo::demo(cmd::demo::DemoArgs {
                dps: a.dps,
                from: a.from,
                to: a.to,
                keep: a.keep,
                no_upgrade: a.no_upgrade,
                rate: a.rate,
                dir: a.dir,
                output: a.output,
            })
            .await
        }
        Command::Show(a) => {
            cmd::history::show(&load_inventory(&a.inv.inventory)?, &a.rollout, a.inv.output)
        }
    }
}

async fn plan(a: cli::PlanArgs) -> Result<(), Failure> {
    let inv = load_inventory(&a.inv.inventory)?;
    let catalog = rollgate::catalog::Catalog::load(&a.catalog)
        .map_err(|e| Failure::Usage(format!("bad catalog: {e}")))?;
    cmd::upgrade::in_catalog(&catalog, &a.to)?;
    cmd::upgrade::verify_artifacts(&catalog, std::slice::from_ref(&a.to))?;
    let r = cmd::plan::plan(&inv, &catalog, &a.to).await;
    cmd::upgrade::verify_artifacts(&catalog, &r.hop_versions)?;
    match a.inv.output {
        Output::Json => print_json(&r),
        Output::Text => cmd::plan::print_text(&r),
    }
    if r.runnable {
        Ok(())
    } else {
        Err(Failure::Blocked(format!(
            "the plan is blocked: {}",
            r.blocked.join("; ")
        )))
    }
}

fn load_inventory(path: &std::path::Path) -> Result<Inventory, Failure> {
    Inventory::load(path).map_err(|e| Failure::Usage(format!("bad inventory: {e}")))
}
