//! The gRPC face of the agent: converts between the wire and the agent's own
//! types. Read-only rpcs are answered here; steps that change the host live in
//! their own modules.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollgate::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::config::ManagerKind;
use crate::drain_state::Drain;
use crate::health::{Observation, Probe};
use crate::ops::{self, EventStream, OpCtx};
use crate::service::ProcessStatus;
use crate::state::AgentState;
use crate::steps::install::{self, Plan};
use crate::steps::{self, StepError, StepResult, backup, drain, pg, stage};

/// Shortest health interval a client may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct AgentService {
    state: Arc<AgentState>,
}

impl AgentService {
    pub fn new(state: Arc<AgentState>) -> Self {
        AgentService { state }
    }

    fn hello(&self) -> pb::HelloResponse {
        let s = &self.state;
        let facts = s.facts.read();
        let cfg = &s.config;
        pb::HelloResponse {
            agent_version: rollgate::VERSION.to_string(),
            host_name: cfg.agent.name.clone(),
            role: pb::Role::from(cfg.agent.role) as i32,
            installed_version: s.root.current().map(|v| v.to_string()).unwrap_or_default(),
            releases: s.root.releases().iter().map(ToString::to_string).collect(),
            disk_free_bytes: s.root.free_bytes().unwrap_or(0),
            memory_total_bytes: facts.memory_total_bytes,
            memory_available_bytes: facts.memory_available_bytes,
            cpu_count: facts.cpu_count,
            cpu_brand: facts.cpu_brand,
            load_average_1m: facts.load_average_1m,
            service_manager: match s.service.kind() {
                ManagerKind::Exec => pb::ServiceManager::Exec,
                ManagerKind::Systemd => pb::ServiceManager::Systemd,
            } as i32,
            features: Some(pb::Features {
                agent_check_port: cfg
                    .drain
                    .agent_check_listen
                    .map(|a| u32::from(a.port()))
                    .unwrap_or(0),
                drain_hooks: cfg.drain.drain_command.is_some()
                    || cfg.drain.undrain_command.is_some(),
                database_backup: cfg.backup.is_some(),
                declarative_export: cfg
                    .backup
                    .as_ref()
                    .is_some_and(|b| b.export_url.is_some() || b.export_command.is_some()),
            }),
            custom_plugin_dirs: cfg
                .gateway
                .custom_plugin_dirs
                .iter()
                .map(|d| s.root.current_link().join(d).display().to_string())
                .collect(),
            custom_plugin_files: s
                .root
                .current()
                .map(|v| {
                    crate::plugins::list(&s.root.release_dir(&v), &cfg.gateway.custom_plugin_dirs)
                })
                .unwrap_or_default(),
        }
    }

    async fn report(&self, sequence: u64) -> pb::HealthReport {
        let s = &self.state;
        let obs = s.prober.observe(&s.service).await;
        let facts = s.facts.read();
        health_report(
            sequence,
            &obs,
            s,
            facts.load_average_1m,
            facts.memory_available_bytes,
        )
    }
}

fn health_report(
    sequence: u64,
    obs: &Observation,
    s: &AgentState,
    load: f64,
    mem_available: u64,
) -> pb::HealthReport {
    pb::HealthReport {
        sequence,
        observed_at_unix_ms: unix_ms(SystemTime::now()),
        process: match obs.process {
            ProcessStatus::Running { .. } => pb::ProcessState::Running,
            ProcessStatus::Stopped => pb::ProcessState::Stopped,
            ProcessStatus::Unknown(_) => pb::ProcessState::Unknown,
        } as i32,
        pid: obs.process.pid().unwrap_or(0),
        probes: obs.probes.iter().map(probe_to_wire).collect(),
        running_version: obs.running_version.clone().unwrap_or_default(),
        installed_version: s.root.current().map(|v| v.to_string()).unwrap_or_default(),
        config_revision: obs.config_revision,
        healthy: obs.healthy(),
        drain_state: drain_to_wire(s.drain.get()) as i32,
        load_average_1m: load,
        memory_available_bytes: mem_available,
        gateway_rss_bytes: obs.rss_bytes,
        active_operation_id: s.ops.active().unwrap_or_default(),
        // Set by the watch that sends it.
        unhealthy_streak: 0,
    }
}

/// What makes two reports "the same" for a heartbeat-paced watch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportKey {
    process: i32,
    healthy: bool,
    streak: u32,
    version: String,
    drain: i32,
    active: String,
}

impl ReportKey {
    fn of(r: &pb::HealthReport) -> Self {
        ReportKey {
            process: r.process,
            healthy: r.healthy,
            // 2 bad looks make an alarm; more of them change nothing.
            streak: r.unhealthy_streak.min(2),
            version: r.running_version.clone(),
            drain: r.drain_state,
            active: r.active_operation_id.clone(),
        }
    }
}

pub fn probe_to_wire(p: &Probe) -> pb::ProbeResult {
    pb::ProbeResult {
        name: p.name.to_string(),
        url: p.url.clone(),
        ok: p.ok,
        http_status: u32::from(p.http_status),
        error: p.error.clone(),
        latency_ms: u32::try_from(p.latency.as_millis()).unwrap_or(u32::MAX),
        body_excerpt: p.body_excerpt.clone(),
    }
}

pub fn drain_to_wire(d: Drain) -> pb::DrainState {
    match d {
        Drain::Ready => pb::DrainState::Ready,
        Drain::Draining => pb::DrainState::Draining,
        Drain::Maint => pb::DrainState::Maint,
    }
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn check_op(op: &str) -> Result<(), Status> {
    rollgate::ids::check_operation_id(op).map_err(Status::invalid_argument)
}

fn ms(v: u32, default: Duration) -> u64 {
    if v == 0 {
        default.as_millis() as u64
    } else {
        u64::from(v)
    }
}

impl AgentService {
    /// Starts (or follows, or replays) a journalled step.
    fn step<F, Fut>(
        &self,
        op: &str,
        kind: &'static str,
        begin: serde_json::Value,
        work: F,
    ) -> EventStream
    where
        F: FnOnce(Arc<AgentState>, OpCtx) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StepResult> + Send + 'static,
    {
        let state = self.state.clone();
        self.state
            .ops
            .start(op, kind, begin, false, move |ctx| async move {
                let r = work(state.clone(), ctx).await;
                steps::finish(&state, r).await
            })
    }

    /// A request that cannot start: answered with a failure, not journalled.
    fn refuse(op: &str, e: StepError) -> EventStream {
        ops::single(op, ops::failure(e.code, e.message, e.detail))
    }

    fn plan(
        &self,
        target: &str,
        min_healthy_ms: u32,
        health_timeout_ms: u32,
        restore: Option<String>,
    ) -> Result<Plan, StepError> {
        let target = target
            .parse()
            .map_err(|e| StepError::invalid(format!("{e}")))?;
        let h = &self.state.config.health;
        Ok(Plan {
            previous: self.state.root.current(),
            target,
            restore,
            min_healthy_ms: ms(min_healthy_ms, h.min_healthy),
            health_timeout_ms: ms(health_timeout_ms, h.start_timeout),
        })
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn hello(
        &self,
        _req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        Ok(Response::new(AgentService::hello(self)))
    }

    type WatchHealthStream = ReceiverStream<Result<pb::HealthReport, Status>>;

    async fn watch_health(
        &self,
        req: Request<pb::WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        let peer = req.remote_addr();
        let r = req.into_inner();
        let interval = match r.interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms)).max(MIN_INTERVAL),
        };
        let heartbeat = Duration::from_millis(u64::from(r.heartbeat_ms));
        let (tx, rx) = mpsc::channel(4);
        let svc = self.clone();
        let span = tracing::info_span!("watch_health", peer = ?peer, interval_ms = interval.as_millis() as u64);
        tokio::spawn(
            async move {
                tracing::debug!("health watch started");
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut seq, mut streak) = (0, 0u32);
                let mut last: Option<(ReportKey, std::time::Instant)> = None;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tx.closed() => break,
                    }
                    let mut report = svc.report(seq + 1).await;
                    streak = if report.healthy {
                        0
                    } else {
                        streak.saturating_add(1)
                    };
                    report.unhealthy_streak = streak;
                    let key = ReportKey::of(&report);
                    let quiet = !heartbeat.is_zero()
                        && last
                            .as_ref()
                            .is_some_and(|(k, at)| *k == key && at.elapsed() < heartbeat);
                    if quiet {
                        continue;
                    }
                    seq += 1;
                    last = Some((key, std::time::Instant::now()));
                    if tx.send(Ok(report)).await.is_err() {
                        break;
                    }
                }
                tracing::debug!("health watch ended: the client went away");
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type StageStream = EventStream;
    async fn stage(
        &self,
        req: Request<Streaming<pb::StageRequest>>,
    ) -> Result<Response<Self::StageStream>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(pb::StageRequest {
                msg: Some(pb::stage_request::Msg::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first Stage message must be the header",
                ));
            }
        };
        check_op(&header.operation_id)?;
        let op = header.operation_id.clone();
        let parsed = match stage::Header::parse(&header) {
            Ok(h) => h,
            Err(e) => return Ok(Response::new(Self::refuse(&op, e))),
        };
        let begin = serde_json::json!({ "version": header.version, "sha256": header.sha256, "size": header.size });
        let streamed = matches!(parsed.source, stage::Source::Coordinator);
        Ok(Response::new(self.step(
            &op,
            "stage",
            begin,
            move |s, ctx| async move {
                stage::stage(&s, &ctx, parsed, streamed.then_some(stream)).await
            },
        )))
    }

    type BackupStream = EventStream;
    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        if let Err(e) = rollgate::ids::check_backup_id(&r.backup_id) {
            return Ok(Response::new(Self::refuse(
                &r.operation_id,
                StepError::invalid(e),
            )));
        }
        let begin = serde_json::json!({ "backup": r.backup_id });
        Ok(Response::new(self.step(
            &r.operation_id,
            "backup",
            begin,
            move |s, ctx| async move { backup::backup(&s, &ctx, &r.backup_id).await },
        )))
    }

    async fn fingerprint(
        &self,
        req: Request<pb::FingerprintRequest>,
    ) -> Result<Response<pb::FingerprintResponse>, Status> {
        let r = req.into_inner();
        let cfg = pg::config(&self.state).map_err(|e| Status::failed_precondition(e.message))?;
        let (current, _) = pg::fingerprint(cfg)
            .await
            .map_err(|e| Status::unavailable(e.message))?;
        let mut resp = pb::FingerprintResponse {
            current: Some(current.clone()),
            ..Default::default()
        };
        if !r.baseline_backup_id.is_empty() {
            rollgate::ids::check_backup_id(&r.baseline_backup_id)
                .map_err(Status::invalid_argument)?;
            let base = pg::recorded_fingerprint(cfg, &r.baseline_backup_id)
                .map_err(|e| Status::not_found(e.message))?;
            resp.changed_tables = rollgate::fingerprint::changed_tables(&base, &current);
            resp.export_changed = base.export_sha256 != current.export_sha256;
            resp.baseline = Some(base);
        }
        Ok(Response::new(resp))
    }

    type RestoreStream = EventStream;
    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let begin = serde_json::json!({ "backup": r.backup_id });
        Ok(Response::new(self.step(
            &r.operation_id,
            "restore",
            begin,
            move |s, ctx| async move { steps::restore::restore(&s, &ctx, &r.backup_id).await },
        )))
    }

    type DrainStream = EventStream;
    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<Self::DrainStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let timeout = (r.timeout_ms > 0).then(|| Duration::from_millis(u64::from(r.timeout_ms)));
        Ok(Response::new(self.step(
            &r.operation_id,
            "drain",
            serde_json::Value::Null,
            move |s, ctx| async move { drain::drain(&s, &ctx, timeout).await },
        )))
    }

    type UndrainStream = EventStream;
    async fn undrain(
        &self,
        req: Request<pb::UndrainRequest>,
    ) -> Result<Response<Self::UndrainStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        Ok(Response::new(self.step(
            &r.operation_id,
            "undrain",
            serde_json::Value::Null,
            |s, ctx| async move { drain::undrain(&s, &ctx).await },
        )))
    }

    type InstallStream = EventStream;
    async fn install(
        &self,
        req: Request<pb::InstallRequest>,
    ) -> Result<Response<Self::InstallStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let plan = match self.plan(&r.version, r.min_healthy_ms, r.health_timeout_ms, None) {
            Ok(p) => p,
            Err(e) => return Ok(Response::new(Self::refuse(&r.operation_id, e))),
        };
        let begin = serde_json::to_value(&plan).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(self.step(
            &r.operation_id,
            "install",
            begin,
            move |s, ctx| async move { install::run(&s, &ctx, &plan).await },
        )))
    }

    type RollbackStream = EventStream;
    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<Self::RollbackStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let op = r.operation_id.clone();
        let target = if r.to_version.is_empty() {
            match install::previous_release(&self.state) {
                Some(v) => v.to_string(),
                None => {
                    return Ok(Response::new(Self::refuse(
                        &op,
                        StepError::precondition(
                            "no previous release is recorded on this host; name one",
                        ),
                    )));
                }
            }
        } else {
            r.to_version.clone()
        };
        let restore = Some(r.restore_backup_id.clone()).filter(|b| !b.is_empty());
        if let Some(b) = &restore
            && let Err(e) = rollgate::ids::check_backup_id(b)
        {
            return Ok(Response::new(Self::refuse(&op, StepError::invalid(e))));
        }
        let plan = match self.plan(&target, r.min_healthy_ms, r.health_timeout_ms, restore) {
            Ok(p) => p,
            Err(e) => return Ok(Response::new(Self::refuse(&op, e))),
        };
        let begin = serde_json::to_value(&plan).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(self.step(
            &op,
            "rollback",
            begin,
            move |s, ctx| async move { install::run(&s, &ctx, &plan).await },
        )))
    }

    type ReadBackupFileStream = ReceiverStream<Result<pb::FileChunk, Status>>;

    async fn read_backup_file(
        &self,
        req: Request<pb::ReadBackupFileRequest>,
    ) -> Result<Response<Self::ReadBackupFileStream>, Status> {
        let r = req.into_inner();
        rollgate::ids::check_backup_id(&r.backup_id).map_err(Status::invalid_argument)?;
        let cfg = pg::config(&self.state).map_err(|e| Status::failed_precondition(e.message))?;
        let dir = pg::backup_dir(cfg, &r.backup_id);
        let manifest = std::fs::read_to_string(dir.join(pg::MANIFEST_FILE))
            .map_err(|e| Status::not_found(format!("backup {:?}: {e}", r.backup_id)))?;
        let listed = r.path == pg::MANIFEST_FILE
            || pg::parse_manifest(&manifest)
                .map_err(Status::internal)?
                .iter()
                .any(|f| f.path == r.path);
        if !listed {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a file of backup {:?}",
                r.path, r.backup_id
            )));
        }
        let mut file = tokio::fs::File::open(dir.join(&r.path))
            .await
            .map_err(|e| Status::not_found(format!("{}: {e}", r.path)))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(pb::FileChunk {
                                data: bytes::Bytes::copy_from_slice(&buf[..n]),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("read failed: {e}"))))
                            .await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::OperationRecord>, Status> {
        let op = req.into_inner().operation_id;
        check_op(&op)?;
        Ok(Response::new(self.state.ops.get(&op).unwrap_or(
            pb::OperationRecord {
                operation_id: op,
                status: pb::OperationStatus::Unknown as i32,
                ..Default::default()
            },
        )))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let prefix = req.into_inner().prefix;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: self.state.ops.list(&prefix),
        }))
    }
}
