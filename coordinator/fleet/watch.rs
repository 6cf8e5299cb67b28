//! One health watcher task per host: streams the agent's WatchHealth
//! reports to the driver and reconnects when the stream breaks.

use std::sync::Arc;
use std::time::Duration;

use rollgate::pb;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{Health, HealthUpdate};
use crate::client::{Agent, CallPolicy, Client};
use crate::inventory::{Host, Inventory};

/// How long a broken watch waits before it reconnects.
const RECONNECT: Duration = Duration::from_millis(500);

/// What a watcher needs.
pub struct Watcher {
    pub host: Host,
    pub inv: Arc<Inventory>,
    pub policy: CallPolicy,
    /// A channel already open to the host, reused for the first stream.
    pub reuse: Option<Agent>,
    /// The pace once `closely` turns true; until then a look each
    /// `heartbeat`.
    pub interval: Duration,
    pub closely: watch::Receiver<bool>,
    pub heartbeat: Duration,
    pub tx: mpsc::Sender<HealthUpdate>,
}

impl Watcher {
    pub fn spawn(self) {
        let span = tracing::info_span!("health_watch", host = %self.host.name);
        tokio::spawn(self.run().instrument(span));
    }

    async fn run(mut self) {
        loop {
            let why = match self.stream().await {
                Ok(Ended::ReceiverGone) => return,
                Ok(Ended::Broke(why)) | Err(why) => why,
            };
            let broken = HealthUpdate::Broken {
                host: self.host.name.clone(),
                why,
            };
            if self.tx.send(broken).await.is_err() {
                return;
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// One stream, forwarded until it breaks or nobody listens.
    ///
    /// The connect and the call are boxed: a task is as large as its
    /// largest state, and these two (a TLS handshake, a gRPC call being
    /// set up) are far larger than the loop that then runs for the whole
    /// rollout. Inline, they made every host's watcher ~8 KiB.
    async fn stream(&mut self) -> Result<Ended, String> {
        let agent = match self.reuse.take() {
            Some(a) => a,
            None => Box::pin(Agent::connect(&self.host, &self.inv, &self.policy))
                .await
                .map_err(|e| e.to_string())?,
        };
        // Only the client lives on with the stream, not the rest of `Agent`.
        let mut client = agent.client;
        // A stream at the heartbeat's pace until the host is to be watched
        // closely, then one at `interval` in its place (same connection;
        // the agent's first report on it comes at once).
        let mut close = *self.closely.borrow_and_update();
        let mut s = self.open(&mut client, close).await?;
        loop {
            let next = tokio::select! {
                next = s.message() => next,
                Ok(()) = self.closely.changed(), if !close => {
                    close = *self.closely.borrow_and_update();
                    if close {
                        // The old stream goes first, so its buffers are
                        // reused by the new one's (a batch of 1,000 hosts
                        // switching at once otherwise holds both, and the
                        // allocator keeps that peak). Nothing is missed in
                        // between: the new stream's first report is a
                        // fresh look, sent at once.
                        drop(s);
                        s = self.open(&mut client, close).await?;
                    }
                    continue;
                }
            };
            let r = match next {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(Ended::Broke("the health stream ended".into())),
                Err(e) => return Ok(Ended::Broke(format!("{:?}: {}", e.code(), e.message()))),
            };
            let health = Health {
                healthy: r.healthy,
                streak: r.unhealthy_streak,
                summary: summarize(&r),
                lb: rollgate::convert::lb_from_wire(r.drain_state),
                installed_version: r.installed_version.clone(),
                running_version: r.running_version.clone(),
                last_operation: r.last_operation_id.clone(),
                received: std::time::Instant::now(),
                active_operation: r.active_operation_id.clone(),
            };
            let update = HealthUpdate::Report {
                host: self.host.name.clone(),
                health,
            };
            if self.tx.send(update).await.is_err() {
                return Ok(Ended::ReceiverGone);
            }
        }
    }

    /// Opens a WatchHealth stream at the pace `close` says.
    async fn open(
        &self,
        client: &mut Client,
        close: bool,
    ) -> Result<tonic::Streaming<pb::HealthReport>, String> {
        // Closely: a look every interval, unchanged reports once a
        // heartbeat. Otherwise a look, and a report, every heartbeat (a
        // heartbeat of 0: none is skipped as unchanged, which a look at the
        // heartbeat's own pace could be, by a timer's jitter).
        let (interval, heartbeat) = if close {
            (self.interval, self.heartbeat)
        } else {
            (self.heartbeat, Duration::ZERO)
        };
        Box::pin(client.watch_health(pb::WatchHealthRequest {
            interval_ms: interval.as_millis() as u32,
            heartbeat_ms: heartbeat.as_millis() as u32,
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.message().to_string())
    }
}

enum Ended {
    ReceiverGone,
    Broke(String),
}

/// One line saying why a report is unhealthy.
fn summarize(r: &pb::HealthReport) -> String {
    if r.healthy {
        return format!("healthy on {}", r.running_version);
    }
    let mut parts = vec![format!("process {:?}", r.process())];
    for p in &r.probes {
        if !p.ok {
            parts.push(format!(
                "{} {}",
                p.name,
                if p.error.is_empty() {
                    format!("answered {}", p.http_status)
                } else {
                    p.error.clone()
                }
            ));
        }
    }
    parts.join("; ")
}
