//! The gRPC face of the agent: converts between the wire and the agent's own
//! types. Read-only rpcs are answered here; steps that change the host live in
//! their own modules.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use rollgate::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::config::ManagerKind;
use crate::health::{Observation, Probe};
use crate::service::ProcessStatus;
use crate::state::{AgentState, Drain};

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

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
                drain_hooks: cfg.drain.drain_command.is_some() || cfg.drain.undrain_command.is_some(),
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
        }
    }

    async fn report(&self, sequence: u64) -> pb::HealthReport {
        let s = &self.state;
        let obs = s.prober.observe(&s.service).await;
        let facts = s.facts.read();
        health_report(sequence, &obs, s, facts.load_average_1m, facts.memory_available_bytes)
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
        drain_state: drain_to_wire(*s.drain.borrow()) as i32,
        load_average_1m: load,
        memory_available_bytes: mem_available,
        gateway_rss_bytes: obs.rss_bytes,
        active_operation_id: String::new(),
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

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented by this agent version; it changes nothing"
    ))
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
        let interval = match req.into_inner().interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms)).max(MIN_INTERVAL),
        };
        let (tx, rx) = mpsc::channel(4);
        let svc = self.clone();
        let span = tracing::info_span!("watch_health", peer = ?peer, interval_ms = interval.as_millis() as u64);
        tokio::spawn(
            async move {
                tracing::debug!("health watch started");
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tx.closed() => break,
                    }
                    seq += 1;
                    let report = svc.report(seq).await;
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
        _req: Request<Streaming<pb::StageRequest>>,
    ) -> Result<Response<Self::StageStream>, Status> {
        Err(not_yet("Stage"))
    }

    type BackupStream = EventStream;
    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Err(not_yet("Backup"))
    }

    async fn fingerprint(
        &self,
        _req: Request<pb::FingerprintRequest>,
    ) -> Result<Response<pb::FingerprintResponse>, Status> {
        Err(not_yet("Fingerprint"))
    }

    type RestoreStream = EventStream;
    async fn restore(
        &self,
        _req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        Err(not_yet("Restore"))
    }

    type DrainStream = EventStream;
    async fn drain(
        &self,
        _req: Request<pb::DrainRequest>,
    ) -> Result<Response<Self::DrainStream>, Status> {
        Err(not_yet("Drain"))
    }

    type UndrainStream = EventStream;
    async fn undrain(
        &self,
        _req: Request<pb::UndrainRequest>,
    ) -> Result<Response<Self::UndrainStream>, Status> {
        Err(not_yet("Undrain"))
    }

    type InstallStream = EventStream;
    async fn install(
        &self,
        _req: Request<pb::InstallRequest>,
    ) -> Result<Response<Self::InstallStream>, Status> {
        Err(not_yet("Install"))
    }

    type RollbackStream = EventStream;
    async fn rollback(
        &self,
        _req: Request<pb::RollbackRequest>,
    ) -> Result<Response<Self::RollbackStream>, Status> {
        Err(not_yet("Rollback"))
    }

    async fn get_operation(
        &self,
        _req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::OperationRecord>, Status> {
        Err(not_yet("GetOperation"))
    }

    async fn list_operations(
        &self,
        _req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        Err(not_yet("ListOperations"))
    }
}
