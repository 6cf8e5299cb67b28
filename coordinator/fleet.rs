//! The seam between the rollout driver and the agents: `FleetApi`. The real
//! implementation (`GrpcFleet`) calls agents over mTLS; driver tests use a
//! scripted one (`crate::rollout::scripted`).

use std::collections::HashMap;

use bytes::Bytes;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollgate::catalog::{Artifact, Release};
use rollgate::lb::LbState;
use rollgate::pb;
use rollgate::pb::operation_event::Event;
use rollgate::pb::operation_result::Outcome;
use rollgate::version::Version;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, mpsc};

use crate::client::{Agent, CallError, CallPolicy};
use crate::inventory::Inventory;

/// A step that ended without success.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepFailure {
    pub code: String,
    pub message: String,
    pub detail: String,
    /// The agent undid the step.
    pub reverted: bool,
    /// The release current on the host afterwards.
    pub active_version: String,
    pub gateway_healthy: bool,
    /// True when the agent could not be reached or its stream broke for
    /// good: the step's outcome is unknown.
    pub lost: bool,
}

impl StepFailure {
    pub fn lost(message: String) -> Self {
        StepFailure {
            code: "AGENT_LOST".into(),
            message,
            detail: String::new(),
            reverted: false,
            active_version: String::new(),
            gateway_healthy: false,
            lost: true,
        }
    }

    fn from_wire(f: pb::Failure) -> Self {
        StepFailure {
            code: f
                .code()
                .as_str_name()
                .trim_start_matches("FAILURE_CODE_")
                .to_string(),
            message: f.message,
            detail: f.detail,
            reverted: f.reverted,
            active_version: f.active_version,
            gateway_healthy: f.gateway_healthy,
            lost: false,
        }
    }

    pub fn is_interrupted(&self) -> bool {
        self.code == "INTERRUPTED"
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

pub type StepOutcome = Result<pb::success::Detail, StepFailure>;

/// One health observation of a host, as the driver needs it.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    /// Consecutive unhealthy looks, as the agent counted them (0 if the
    /// agent does not count: every report is then one look).
    pub streak: u32,
    pub summary: String,
}

#[derive(Debug, Clone)]
pub enum HealthUpdate {
    Report {
        host: String,
        health: Health,
    },
    /// The watch broke (the watcher keeps trying to reconnect).
    Broken {
        host: String,
        why: String,
    },
}

/// What the driver asks of the fleet. Every step carries an operation id, so
/// calling again with the same id re-attaches to the agent's operation.
pub trait FleetApi: Send + Sync + 'static {
    fn stage(
        &self,
        host: &str,
        op: &str,
        release: &Release,
    ) -> impl Future<Output = StepOutcome> + Send;
    fn backup(
        &self,
        host: &str,
        op: &str,
        backup_id: &str,
    ) -> impl Future<Output = StepOutcome> + Send;
    /// Copies a backup's files (as listed) into `into`, verifying each.
    fn fetch_backup(
        &self,
        host: &str,
        backup_id: &str,
        files: &[pb::BackupFile],
        into: &Path,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn fingerprint(
        &self,
        host: &str,
        baseline_backup: &str,
    ) -> impl Future<Output = Result<pb::FingerprintResponse, CallError>> + Send;
    fn install(
        &self,
        host: &str,
        op: &str,
        version: &Version,
        min_healthy: Duration,
        health_timeout: Duration,
    ) -> impl Future<Output = StepOutcome> + Send;
    fn rollback(
        &self,
        host: &str,
        op: &str,
        to: &Version,
        restore: Option<&str>,
        health_timeout: Duration,
    ) -> impl Future<Output = StepOutcome> + Send;
    fn drain(
        &self,
        host: &str,
        op: &str,
        timeout: Duration,
    ) -> impl Future<Output = StepOutcome> + Send;
    fn undrain(&self, host: &str, op: &str) -> impl Future<Output = StepOutcome> + Send;
    /// Where the host stands towards its load balancer now, as its agent says.
    fn load_balancer(&self, host: &str) -> impl Future<Output = Result<LbState, CallError>> + Send;
    /// Starts streaming health of every host in `hosts` into `tx`.
    fn watch(&self, hosts: &[String], interval: Duration, tx: mpsc::Sender<HealthUpdate>);
}

// === impl GrpcFleet ===

/// The fleet over gRPC: one lazily opened channel per host.
pub struct GrpcFleet {
    inv: Arc<Inventory>,
    policy: CallPolicy,
    agents: Mutex<HashMap<String, Agent>>,
    /// How long a step may take before the driver gives up on it.
    step_deadline: Duration,
    /// Artifacts read once per rollout, in 1 MiB slices, by version.
    artifacts: Mutex<HashMap<String, Arc<Vec<Bytes>>>>,
}

impl GrpcFleet {
    pub fn new(inv: Arc<Inventory>, step_deadline: Duration) -> Self {
        GrpcFleet {
            policy: CallPolicy::from_inventory(&inv),
            inv,
            agents: Mutex::new(HashMap::new()),
            step_deadline,
            artifacts: Mutex::new(HashMap::new()),
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

    /// A file artifact's slices, read from disk the first time only.
    async fn artifact(&self, r: &Release) -> Result<Arc<Vec<Bytes>>, String> {
        let key = r.version.to_string();
        let mut cache = self.artifacts.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let chunks = match &r.artifact {
            Artifact::Url(_) => Vec::new(),
            Artifact::File(p) => {
                let data = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("cannot read artifact {}: {e}", p.display()))?;
                // The plan verified the file; it is read again here, so check
                // the bytes actually sent are those.
                let digest = hex::encode(Sha256::digest(&data));
                if data.len() as u64 != r.size || digest != r.sha256 {
                    return Err(format!(
                        "artifact {} changed since it was verified: {} bytes, sha256 {digest}",
                        p.display(),
                        data.len()
                    ));
                }
                let data = Bytes::from(data);
                (0..data.len())
                    .step_by(1 << 20)
                    .map(|o| data.slice(o..(o + (1 << 20)).min(data.len())))
                    .collect()
            }
        };
        let chunks = Arc::new(chunks);
        cache.insert(key, chunks.clone());
        Ok(chunks)
    }

    /// Reuses channels opened before the rollout (by the plan).
    pub fn adopt(&self, agents: Vec<Agent>) {
        if let Ok(mut cache) = self.agents.try_lock() {
            for a in agents {
                cache.insert(a.host.name.clone(), a);
            }
        }
    }

    /// The open channels, for a last survey of the fleet.
    pub async fn channels(&self) -> HashMap<String, Agent> {
        self.agents.lock().await.clone()
    }

    async fn forget(&self, host: &str) {
        self.agents.lock().await.remove(host);
    }

    /// Runs a step and follows its stream to the result. If the stream
    /// breaks (agent restarted, connection lost) the same call — same
    /// operation id — is made again, which re-attaches to the operation,
    /// until the step deadline.
    async fn step<F, Fut>(&self, host: &str, op: &str, call: F) -> StepOutcome
    where
        F: Fn(Agent) -> Fut + Send + Sync,
        Fut: Future<Output = Result<tonic::Streaming<pb::OperationEvent>, tonic::Status>> + Send,
    {
        let deadline = Instant::now() + self.step_deadline;
        let mut last_error = String::new();
        let mut delay = Duration::from_millis(200);
        while Instant::now() < deadline {
            match self.agent(host).await {
                Ok(agent) => match call(agent).await {
                    Ok(mut stream) => loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, stream.message()).await {
                            Err(_) => {
                                return Err(StepFailure::lost(format!(
                                    "{host}: no result for {op} within {:?}",
                                    self.step_deadline
                                )));
                            }
                            Ok(Ok(Some(ev))) => match ev.event {
                                Some(Event::Result(r)) => return outcome(r),
                                Some(Event::Progress(p)) => {
                                    tracing::debug!(host, op, phase = %p.phase, done = p.done, total = p.total, "{}", p.message)
                                }
                                None => {}
                            },
                            Ok(Ok(None)) => {
                                last_error = "the stream ended without a result".into();
                                break;
                            }
                            Ok(Err(s)) => {
                                last_error = format!("{:?}: {}", s.code(), s.message());
                                break;
                            }
                        }
                    },
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                                | tonic::Code::Unimplemented
                        ) =>
                    {
                        return Err(StepFailure {
                            code: format!("{:?}", s.code()).to_uppercase(),
                            message: format!("{host} refused {op}: {}", s.message()),
                            ..StepFailure::lost(String::new())
                        }
                        .not_lost());
                    }
                    Err(s) => last_error = format!("{:?}: {}", s.code(), s.message()),
                },
                Err(e) => last_error = e.to_string(),
            }
            tracing::warn!(host, op, error = %last_error, "step stream broke; re-attaching by operation id");
            self.forget(host).await;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err(StepFailure::lost(format!(
            "{host}: {op} did not finish: {last_error}"
        )))
    }
}

impl StepFailure {
    fn not_lost(mut self) -> Self {
        self.lost = false;
        self
    }
}

fn outcome(r: pb::OperationResult) -> StepOutcome {
    match r.outcome {
        Some(Outcome::Success(s)) => s
            .detail
            .ok_or_else(|| StepFailure::lost("a success without detail".into())),
        Some(Outcome::Failure(f)) => Err(StepFailure::from_wire(f)),
        None => Err(StepFailure::lost("a result without an outcome".into())),
    }
}

/// The artifact's messages for a Stage call: streamed from here for files
/// (the slices of `chunks`, shared, not copied), fetched by the agent for URLs.
fn stage_messages(op: &str, r: &Release, chunks: &[Bytes]) -> Vec<pb::StageRequest> {
    let source = match &r.artifact {
        Artifact::Url(u) => pb::stage_header::Source::Location(u.clone()),
        Artifact::File(_) => pb::stage_header::Source::Coordinator(pb::CoordinatorSource {}),
    };
    let header = pb::StageHeader {
        operation_id: op.into(),
        version: r.version.to_string(),
        sha256: r.sha256.clone(),
        size: r.size,
        source: Some(source),
        unpacked_size: r.unpacked_size.unwrap_or(0),
    };
    let mut msgs = vec![pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(header)),
    }];
    if matches!(r.artifact, Artifact::File(_)) {
        msgs.extend(chunks.iter().map(|c| pb::StageRequest {
            msg: Some(pb::stage_request::Msg::Chunk(c.clone())),
        }));
    }
    msgs
}

impl FleetApi for GrpcFleet {
    async fn stage(&self, host: &str, op: &str, release: &Release) -> StepOutcome {
        let chunks = self.artifact(release).await.map_err(|e| {
            StepFailure {
                code: "FETCH_FAILED".into(),
                ..StepFailure::lost(e)
            }
            .not_lost()
        })?;
        let msgs = Arc::new(stage_messages(op, release, &chunks));
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
        self.step(host, op, |a| {
            let req = req.clone();
            async move { a.client.clone().backup(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn fetch_backup(
        &self,
        host: &str,
        backup_id: &str,
        files: &[pb::BackupFile],
        into: &Path,
    ) -> Result<(), String> {
        let a = self.agent(host).await.map_err(|e| e.to_string())?;
        let mut names: Vec<(String, Option<&pb::BackupFile>)> =
            files.iter().map(|f| (f.path.clone(), Some(f))).collect();
        names.push(("MANIFEST".into(), None));
        // The names come from the agent: only plain relative paths may
        // become files here (no '/', no '..', nothing absolute).
        for (path, _) in &names {
            let plain = std::path::Path::new(path)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || path.is_empty() {
                return Err(format!(
                    "{host}: backup file name {path:?} is not a plain relative path; nothing copied"
                ));
            }
        }
        for (path, meta) in names {
            let target = into.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            let mut stream = a
                .client
                .clone()
                .read_backup_file(pb::ReadBackupFileRequest {
                    backup_id: backup_id.into(),
                    path: path.clone(),
                })
                .await
                .map_err(|s| format!("{host}: cannot read backup file {path}: {}", s.message()))?
                .into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| format!("{host}: reading {path}: {}", s.message()))?
            {
                data.extend_from_slice(&chunk.data);
            }
            if let Some(m) = meta {
                let sha = hex::encode(Sha256::digest(&data));
                if sha != m.sha256 || data.len() as u64 != m.size {
                    return Err(format!(
                        "{host}: backup file {path} arrived damaged (sha256 {sha}, MANIFEST says {})",
                        m.sha256
                    ));
                }
            }
            rollgate::fsx::write_atomic(&target, &data)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
        Ok(())
    }

    async fn fingerprint(
        &self,
        host: &str,
        baseline_backup: &str,
    ) -> Result<pb::FingerprintResponse, CallError> {
        let a = self.agent(host).await?;
        // The agent reads the counters until they settle (11 s apart, a few
        // rounds at most): allow for it.
        let mut c = a.client.clone();
        let call = c.fingerprint(pb::FingerprintRequest {
            baseline_backup_id: baseline_backup.into(),
        });
        let t = self.policy.call_timeout + Duration::from_secs(60);
        Ok(tokio::time::timeout(t, call)
            .await
            .map_err(|_| CallError::Timeout(t))??
            .into_inner())
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
        self.step(host, op, |a| {
            let req = req.clone();
            async move { a.client.clone().install(req).await.map(|r| r.into_inner()) }
        })
        .await
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
        self.step(host, op, |a| {
            let req = req.clone();
            async move { a.client.clone().rollback(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn drain(&self, host: &str, op: &str, timeout: Duration) -> StepOutcome {
        let req = pb::DrainRequest {
            operation_id: op.into(),
            timeout_ms: timeout.as_millis() as u32,
        };
        self.step(host, op, |a| {
            let req = req.clone();
            async move { a.client.clone().drain(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn undrain(&self, host: &str, op: &str) -> StepOutcome {
        let req = pb::UndrainRequest {
            operation_id: op.into(),
        };
        self.step(host, op, |a| {
            let req = req.clone();
            async move { a.client.clone().undrain(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn load_balancer(&self, host: &str) -> Result<LbState, CallError> {
        let report = self.agent(host).await?.health_once().await?;
        Ok(rollgate::convert::lb_from_wire(report.drain_state))
    }

    fn watch(&self, hosts: &[String], interval: Duration, tx: mpsc::Sender<HealthUpdate>) {
        // Changes come at once; unchanged reports once a heartbeat, well
        // inside the silence after which an agent counts as lost.
        let heartbeat = (self.inv.policy.agent_silence / 3)
            .min(Duration::from_secs(1))
            .max(interval);
        // A stream multiplexes over the step channel when one is open.
        let open: HashMap<String, Agent> = self
            .agents
            .try_lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        for host in hosts {
            let Some(h) = self.inv.host(host).cloned() else {
                continue;
            };
            let mut reuse = open.get(host).cloned();
            let inv = self.inv.clone();
            let policy = self.policy.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let agent = match reuse.take() {
                        Some(a) => Ok(a),
                        None => Agent::connect(&h, &inv, &policy).await,
                    };
                    let why = match agent {
                        Ok(a) => match a
                            .client
                            .clone()
                            .watch_health(pb::WatchHealthRequest {
                                interval_ms: interval.as_millis() as u32,
                                heartbeat_ms: heartbeat.as_millis() as u32,
                            })
                            .await
                        {
                            Ok(resp) => {
                                let mut s = resp.into_inner();
                                loop {
                                    match s.message().await {
                                        Ok(Some(r)) => {
                                            let health = Health {
                                                healthy: r.healthy,
                                                streak: r.unhealthy_streak,
                                                summary: summarize(&r),
                                            };
                                            if tx
                                                .send(HealthUpdate::Report {
                                                    host: h.name.clone(),
                                                    health,
                                                })
                                                .await
                                                .is_err()
                                            {
                                                return;
                                            }
                                        }
                                        Ok(None) => break "the health stream ended".to_string(),
                                        Err(e) => break format!("{:?}: {}", e.code(), e.message()),
                                    }
                                }
                            }
                            Err(e) => e.message().to_string(),
                        },
                        Err(e) => e.to_string(),
                    };
                    if tx
                        .send(HealthUpdate::Broken {
                            host: h.name.clone(),
                            why,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    }
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
