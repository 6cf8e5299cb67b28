//! The fleet over gRPC: one lazily opened mTLS channel per host, and the step
//! runner that follows an agent's operation to its result, re-attaching by
//! operation id when a stream breaks.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rollgate::catalog::Release;
use rollgate::convert::result_from_wire;
use rollgate::fingerprint::Reading;
use rollgate::lb::LbState;
use rollgate::method::Method;
use rollgate::outcome::{BackupFile, Failure, FailureCode};
use rollgate::pb;
use rollgate::pb::operation_event::Event;
use rollgate::version::Version;
use tokio::sync::{Mutex, mpsc};

use super::artifacts::{Artifacts, stage_messages};
use super::watch::Watcher;
use super::{FleetApi, HealthUpdate, StepOutcome, lost};
use crate::client::{Agent, CallError, CallPolicy};
use crate::inventory::Inventory;

pub struct GrpcFleet {
    inv: Arc<Inventory>,
    policy: CallPolicy,
    agents: Mutex<HashMap<String, Agent>>,
    /// How long a step may take before the driver gives up on it.
    step_deadline: Duration,
    artifacts: Artifacts,
    /// Each watched host's pace: true once it is watched closely.
    closely: std::sync::Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

/// Why one attempt at following a step did not give its result.
enum Attempt {
    /// The connection or the stream broke: re-attach by operation id.
    Broke(String),
}

impl GrpcFleet {
    pub fn new(inv: Arc<Inventory>, step_deadline: Duration) -> Self {
        GrpcFleet {
            policy: CallPolicy::from_inventory(&inv),
            inv,
            agents: Mutex::new(HashMap::new()),
            step_deadline,
            artifacts: Artifacts::default(),
            closely: Default::default(),
        }
    }

    async fn agent(&self, host: &str) -> Result<Agent, CallError> {
        if let Some(a) = self.agents.lock().await.get(host) {
            return Ok(a.clone());
        }
        let h = self
            .inv
            .host(host)
            .ok_or_else(|| CallError::Mismatch(format!("{host} is not in the inventory")))?;
        let a = Agent::connect_retrying(h, &self.inv, &self.policy).await?;
        self.agents.lock().await.insert(host.to_string(), a.clone());
        Ok(a)
    }

    /// Reuses channels opened before the rollout (by the plan).
    pub fn adopt(&self, agents: Vec<Agent>) {
        if let Ok(mut cache) = self.agents.try_lock() {
            for a in agents {
                cache.insert(a.host.name.clone(), a);
            }
        }
    }

    /// The open channels, handed over for a last survey of the fleet once
    /// the rollout is done with them.
    pub async fn take_channels(&self) -> HashMap<String, Agent> {
        std::mem::take(&mut *self.agents.lock().await)
    }

    async fn forget(&self, host: &str) {
        self.agents.lock().await.remove(host);
    }

    /// Runs a step and follows its stream to the result. If the stream
    /// breaks (agent restarted, connection lost) the same call — same
    /// operation id — is made again, which re-attaches to the operation,
    /// with backon's exponential delays (200 ms to 2 s) until the step
    /// deadline.
    async fn step<F, Fut>(&self, host: &str, op: &str, call: F) -> StepOutcome
    where
        F: Fn(Agent) -> Fut + Send + Sync,
        Fut: Future<Output = Result<tonic::Streaming<pb::OperationEvent>, tonic::Status>> + Send,
    {
        let attempt = || async {
            let r = self.follow(host, op, &call).await;
            if r.is_err() {
                // A broken channel is dropped; the next attempt opens one.
                self.forget(host).await;
            }
            r
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times();
        let followed = attempt
            .retry(backoff)
            .notify(|Attempt::Broke(why), after| {
                tracing::warn!(host, op, error = %why, retry_in = ?after, "step stream broke; re-attaching by operation id");
            });
        match tokio::time::timeout(self.step_deadline, followed).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(Attempt::Broke(why))) => {
                Err(lost(format!("{host}: {op} did not finish: {why}")))
            }
            Err(_) => Err(lost(format!(
                "{host}: no result for {op} within {:?}",
                self.step_deadline
            ))),
        }
    }

    /// One attempt: call, then follow the stream to the result.
    async fn follow<F, Fut>(&self, host: &str, op: &str, call: &F) -> Result<StepOutcome, Attempt>
    where
        F: Fn(Agent) -> Fut + Send + Sync,
        Fut: Future<Output = Result<tonic::Streaming<pb::OperationEvent>, tonic::Status>> + Send,
    {
        let agent = self
            .agent(host)
            .await
            .map_err(|e| Attempt::Broke(e.to_string()))?;
        let mut stream = match call(agent).await {
            Ok(s) => s,
            Err(s) if refused(s.code()) => {
                return Ok(Err(Failure::new(
                    FailureCode::Refused,
                    format!("{host} refused {op}: {:?}: {}", s.code(), s.message()),
                )));
            }
            Err(s) => return Err(Attempt::Broke(format!("{:?}: {}", s.code(), s.message()))),
        };
        loop {
            match stream.message().await {
                Ok(Some(ev)) => match ev.event {
                    Some(Event::Result(r)) => {
                        return Ok(result_from_wire(r)
                            .map(|(r, _replayed)| r)
                            .unwrap_or_else(|e| Err(lost(format!("{host} sent {e}")))));
                    }
                    Some(Event::Progress(p)) => {
                        tracing::debug!(host, op, phase = %p.phase, done = p.done, total = p.total, "{}", p.message)
                    }
                    None => {}
                },
                Ok(None) => {
                    return Err(Attempt::Broke("the stream ended without a result".into()));
                }
                Err(s) => return Err(Attempt::Broke(format!("{:?}: {}", s.code(), s.message()))),
            }
        }
    }
}

/// A step whose request is one message: the same request on every attempt.
macro_rules! step_rpc {
    ($fleet:expr, $host:expr, $op:expr, $rpc:ident, $req:expr) => {{
        let req = $req;
        $fleet
            .step($host, $op, |a| {
                let req = req.clone();
                async move { a.client.clone().$rpc(req).await.map(|r| r.into_inner()) }
            })
            .await
    }};
}

/// Answers a retry cannot change: the agent refused the call itself.
fn refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
    )
}

impl FleetApi for GrpcFleet {
    async fn stage(&self, host: &str, op: &str, release: &Release, method: Method) -> StepOutcome {
        let Some(package) = release.package(method) else {
            return Err(Failure::new(
                FailureCode::InvalidArgument,
                format!(
                    "the catalog has no {method} artifact for {} ({host} installs with {method})",
                    release.version
                ),
            ));
        };
        let chunks = self
            .artifacts
            .slices(&release.version, &package)
            .await
            .map_err(|e| Failure::new(FailureCode::FetchFailed, e))?;
        let msgs = Arc::new(stage_messages(op, &release.version, &package, &chunks));
        self.step(host, op, |a| {
            let msgs = msgs.clone();
            async move {
                let mut c = a.client.clone();
                c.stage(futures::stream::iter(
                    msgs.iter().cloned().collect::<Vec<_>>(),
                ))
                .await
                .map(|r| r.into_inner())
            }
        })
        .await
    }

    async fn backup(&self, host: &str, op: &str, backup_id: &str) -> StepOutcome {
        let req = pb::BackupRequest {
            operation_id: op.into(),
            backup_id: backup_id.into(),
        };
        step_rpc!(self, host, op, backup, req)
    }

    async fn fetch_backup(
        &self,
        host: &str,
        backup_id: &str,
        files: &[BackupFile],
        into: &Path,
    ) -> Result<(), String> {
        let a = self.agent(host).await.map_err(|e| e.to_string())?;
        super::backup_copy::fetch(&a, backup_id, files, into).await
    }

    async fn fingerprint(&self, host: &str, baseline_backup: &str) -> Result<Reading, CallError> {
        let a = self.agent(host).await?;
        // The agent hashes every watched table (one scan each): allow for a
        // large database.
        let mut c = a.client.clone();
        let call = c.fingerprint(pb::FingerprintRequest {
            baseline_backup_id: baseline_backup.into(),
        });
        let t = self.policy.call_timeout + Duration::from_secs(60);
        let resp = tokio::time::timeout(t, call)
            .await
            .map_err(|_| CallError::Timeout(t))??
            .into_inner();
        Ok(Reading::try_from(resp)?)
    }

    async fn rehearse(
        &self,
        host: &str,
        op: &str,
        backup_id: &str,
        hops: &[(Version, i64)],
    ) -> StepOutcome {
        let req = pb::RehearseRequest {
            operation_id: op.into(),
            backup_id: backup_id.into(),
            hops: hops
                .iter()
                .map(|(v, s)| pb::RehearseHop {
                    version: v.to_string(),
                    expect_schema: *s,
                })
                .collect(),
        };
        step_rpc!(self, host, op, rehearse, req)
    }

    async fn install(
        &self,
        host: &str,
        op: &str,
        version: &Version,
        min_healthy: Duration,
        health_timeout: Duration,
    ) -> StepOutcome {
        let req = pb::InstallRequest {
            operation_id: op.into(),
            version: version.to_string(),
            min_healthy_ms: min_healthy.as_millis() as u32,
            health_timeout_ms: health_timeout.as_millis() as u32,
        };
        step_rpc!(self, host, op, install, req)
    }

    async fn rollback(
        &self,
        host: &str,
        op: &str,
        to: &Version,
        restore: Option<&str>,
        health_timeout: Duration,
    ) -> StepOutcome {
        let req = pb::RollbackRequest {
            operation_id: op.into(),
            to_version: to.to_string(),
            min_healthy_ms: 0,
            health_timeout_ms: health_timeout.as_millis() as u32,
            restore_backup_id: restore.unwrap_or_default().into(),
        };
        step_rpc!(self, host, op, rollback, req)
    }

    async fn drain(&self, host: &str, op: &str, timeout: Duration) -> StepOutcome {
        let req = pb::DrainRequest {
            operation_id: op.into(),
            timeout_ms: timeout.as_millis() as u32,
        };
        step_rpc!(self, host, op, drain, req)
    }

    async fn undrain(&self, host: &str, op: &str) -> StepOutcome {
        let req = pb::UndrainRequest {
            operation_id: op.into(),
        };
        step_rpc!(self, host, op, undrain, req)
    }

    async fn load_balancer(&self, host: &str) -> Result<LbState, CallError> {
        let report = self.agent(host).await?.health_once().await?;
        Ok(rollgate::convert::lb_from_wire(report.drain_state))
    }

    fn watch(&self, hosts: &[String], interval: Duration, tx: mpsc::Sender<HealthUpdate>) {
        let heartbeat = super::heartbeat(self.inv.policy.agent_silence, interval);
        // A stream multiplexes over the step channel when one is open.
        let open: HashMap<String, Agent> = self
            .agents
            .try_lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut closely = self.closely.lock().unwrap_or_else(|e| e.into_inner());
        for host in hosts {
            let Some(h) = self.inv.host(host).cloned() else {
                continue;
            };
            let pace = closely
                .entry(host.clone())
                .or_insert_with(|| tokio::sync::watch::Sender::new(false))
                .subscribe();
            Watcher {
                reuse: open.get(host).cloned(),
                host: h,
                inv: self.inv.clone(),
                policy: self.policy.clone(),
                interval,
                closely: pace,
                heartbeat,
                tx: tx.clone(),
            }
            .spawn();
        }
    }

    fn watch_closely(&self, hosts: &[String]) {
        let closely = self.closely.lock().unwrap_or_else(|e| e.into_inner());
        for host in hosts {
            if let Some(pace) = closely.get(host) {
                pace.send_if_modified(|c| !std::mem::replace(c, true));
            }
        }
    }
}
