//! The data plane: follows the CP's config, proxies by route, and stops the
//! nginx/APISIX way (SIGQUIT drains, SIGTERM/SIGINT exit at once).

pub mod proxy;
pub mod routes;
pub mod state;
pub mod status;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::config::DpConfig;
use crate::http::{self, Drained};
use crate::manifest::Release;
use crate::signals::{Signals, Stop};
use state::DpState;

#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("injected fault dp_exit_after_ready: exited {0:?} after becoming ready")]
    InjectedCrash(Duration),
}

pub async fn run(config: DpConfig, release: Release) -> Result<(), DpError> {
    let mut signals = Signals::install().map_err(DpError::Signals)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DpError::Bind {
            addr: config.listen,
            source,
        })?;
    let state = Arc::new(DpState::new(
        release.version.to_string(),
        config.instance_id.clone(),
        release.manifest.faults.clone(),
    ));
    let client = http::client();
    let (crash_tx, crash_rx) = oneshot::channel();
    let follower = sync::Sync {
        state: state.clone(),
        client: client.clone(),
        cp: config.cp(),
        poll_interval: config.poll_interval,
        crash: Some(crash_tx),
    };
    tokio::spawn(
        follower
            .run()
            .instrument(info_span!("sync", cp = %config.cp_url)),
    );
    info!(listen = %config.listen, cp = %config.cp_url, "data plane started");

    // One task owns the signals: the first SIGQUIT starts the drain; a SIGTERM or
    // SIGINT, even during the drain, ends the process at once.
    let (graceful_tx, mut graceful_rx) = watch::channel(false);
    let (fast_tx, fast_rx) = oneshot::channel::<()>();
    tokio::spawn(
        async move {
            loop {
                match signals.next().await {
                    Stop::Graceful => {
                        info!("SIGQUIT: graceful stop, no new connections");
                        let _ = graceful_tx.send(true);
                    }
                    Stop::Fast => {
                        info!("fast stop");
                        let _ = fast_tx.send(());
                        return;
                    }
                }
            }
        }
        .in_current_span(),
    );
    let stop = async move {
        let _ = graceful_rx.wait_for(|started| *started).await;
    };

    let status_server = match config.status_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| DpError::Bind { addr, source })?;
            info!(listen = %addr, "status API (APISIX-shaped) started");
            let st = state.clone();
            let handler = move |request, _peer| status::handle(st.clone(), request);
            Some(tokio::spawn(
                http::serve(l, handler, std::future::pending(), Duration::ZERO).in_current_span(),
            ))
        }
        None => None,
    };
    let _stop_status = status_server.map(AbortOnDrop);
    let handler = move |request, peer| proxy::handle(state.clone(), client.clone(), request, peer);
    let graceful_timeout = config.graceful_timeout;
    tokio::select! {
        drained = http::serve(listener, handler, stop, graceful_timeout) => {
            match drained {
                Drained::All => info!("drained: every in-flight request finished"),
                Drained::TimedOut => warn!(?graceful_timeout, "graceful timeout passed; abandoning the requests still in flight"),
            }
            Ok(())
        }
        _ = fast_rx => Ok(()),
        Ok(after) = crash_rx => Err(DpError::InjectedCrash(after)),
    }
}

/// Ends a spawned task when dropped (the status API ends with the DP).
struct AbortOnDrop(tokio::task::JoinHandle<http::Drained>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
