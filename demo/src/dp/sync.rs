//! Following the CP: poll `/dp/config`, install new revisions, heartbeat the
//! version and revision in force. A CP outage only produces warnings; the DP keeps
//! serving the config it has.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::routes::RouteTable;
use super::state::DpState;
use crate::http::{self, BoxError, Client, UpstreamUrl};
use crate::model::Route;

/// A CP that takes longer than this is treated as unreachable for the round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct DpConfigResponse {
    revision: i64,
    routes: Vec<Route>,
}

pub struct Sync {
    pub state: Arc<DpState>,
    pub client: Client,
    pub cp: UpstreamUrl,
    pub poll_interval: Duration,
    /// Fired when the `dp_exit_after_ready` fault is due.
    pub crash: Option<oneshot::Sender<Duration>>,
}

impl Sync {
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cp_reachable = true;
        loop {
            ticker.tick().await;
            match self.fetch().await {
                Ok(config) => {
                    if !cp_reachable {
                        info!("control plane reachable again");
                        cp_reachable = true;
                    }
                    self.apply(config);
                }
                Err(e) => {
                    // Warn once per outage, not once per poll.
                    if cp_reachable {
                        warn!(error = %http::chain(&*e), revision = ?self.state.revision(), "cannot fetch config from the control plane; serving the last config");
                        cp_reachable = false;
                    } else {
                        debug!(error = %http::chain(&*e), "control plane still unreachable");
                    }
                }
            }
            if let Err(e) = self.heartbeat().await {
                debug!(error = %http::chain(&*e), "heartbeat failed");
            }
        }
    }

    fn apply(&mut self, config: DpConfigResponse) {
        if self.state.revision() == Some(config.revision) {
            return;
        }
        let table = RouteTable::compile(config.revision, &config.routes);
        info!(
            revision = config.revision,
            routes = table.len(),
            "config loaded"
        );
        if self.state.install(table) {
            info!("ready");
            if let (Some(after), Some(crash)) =
                (self.state.faults.dp_exit_after_ready, self.crash.take())
            {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    error!(?after, "injected fault dp_exit_after_ready: exiting");
                    let _ = crash.send(after);
                });
            }
        }
    }

    async fn fetch(&self) -> Result<DpConfigResponse, BoxError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.cp.uri("/dp/config")?)
            .body(http::empty())?;
        let body = self.call(request).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn heartbeat(&self) -> Result<(), BoxError> {
        let beat = json!({
            "instance_id": self.state.instance_id,
            "version": self.state.version,
            "config_revision": self.state.revision().unwrap_or(-1),
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.cp.uri("/dp/heartbeat")?)
            .header(CONTENT_TYPE, "application/json")
            .body(http::full(serde_json::to_vec(&beat)?))?;
        self.call(request).await.map(drop)
    }

    async fn call(&self, request: Request<http::Body>) -> Result<Bytes, BoxError> {
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK {
                return Err(format!("control plane answered {status}").into());
            }
            Ok::<_, BoxError>(body)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| -> BoxError { "control plane did not answer in time".into() })?
    }
}
