//! The control plane: migrates its PostgreSQL schema, then serves the admin API,
//! the declarative export/import and the DP-facing config and heartbeat endpoints.

pub mod api;
pub mod migrations;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::CpConfig;
use crate::http;
use crate::manifest::Release;
use crate::signals::Signals;
use api::Cp;
use migrations::MigrateError;
use store::Store;

/// How long the CP keeps retrying its first database connection: long enough for
/// a database that is still starting, short enough to fail a bad config quickly.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// A stopping CP finishes its (short) in-flight admin requests for at most this.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error("cannot connect to the database ({target})")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("lost the database connection")]
    DatabaseLost(#[source] tokio_postgres::Error),
}

pub async fn run(config: CpConfig, release: Release) -> Result<(), CpError> {
    let mut signals = Signals::install().map_err(CpError::Signals)?;
    let pg = config.pg_config();
    let (lost_tx, mut lost_rx) = mpsc::channel(2);
    let mut migrator = connect(&pg, &lost_tx).await?;
    let level = migrations::migrate(&mut migrator, &release).await?;
    let reader = connect(&pg, &lost_tx).await?;
    let cp = Arc::new(Cp {
        store: Store::new(migrator, reader, level),
        release,
    });

    // Bind only once the schema is ready: an open port means a usable CP.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| CpError::Bind {
            addr: config.listen,
            source,
        })?;
    info!(listen = %config.listen, schema_version = level, "control plane ready");

    let handler = move |request, _peer| api::handle(cp.clone(), request);
    let stop = async move {
        let how = signals.next().await;
        info!(?how, "stopping");
    };
    tokio::select! {
        drained = http::serve(listener, handler, stop, DRAIN_TIMEOUT) => {
            info!(?drained, "control plane stopped");
            Ok(())
        }
        Some(source) = lost_rx.recv() => Err(CpError::DatabaseLost(source)),
    }
}

/// Connects, retrying while the database is not reachable yet; the connection's
/// driver task reports on `lost` if it ever ends with an error.
async fn connect(
    pg: &tokio_postgres::Config,
    lost: &mpsc::Sender<tokio_postgres::Error>,
) -> Result<Client, CpError> {
    let target = describe(pg);
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match pg.connect(NoTls).await {
            Ok((client, connection)) => {
                let lost = lost.clone();
                let span = info_span!("pg_connection", %target);
                tokio::spawn(
                    async move {
                        if let Err(e) = connection.await {
                            error!(error = %e, "database connection failed");
                            let _ = lost.send(e).await;
                        }
                    }
                    .instrument(span),
                );
                return Ok(client);
            }
            Err(source)
                if tokio::time::Instant::now() >= deadline || source.as_db_error().is_some() =>
            {
                // A server-side refusal (bad database, auth) will not fix itself.
                return Err(CpError::Connect { target, source });
            }
            Err(e) => {
                warn!(%target, error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

fn describe(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = pg.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host={} port={} dbname={}",
        hosts.join(","),
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        },
        pg.get_dbname().unwrap_or("(default)")
    )
}
