//! Hollow agents, after the hollow nodes of Kubernetes' kubemark: one process
//! serves many agent endpoints, each on its own loopback address with its
//! own certificate (real gRPC, real mutual TLS, the fleet CA and the
//! coordinator allow-list), so a single coordinator can be driven against
//! thousands of hosts on one machine.
//!
//! What is hollow is behind the wire: the journal is in memory (a repeated
//! operation id replays its result), staging checks the artifact's size and
//! SHA-256 but keeps no files, and the gateway is instant (always healthy,
//! reporting the installed release). Every rpc a DP rollout uses is served
//! with the real agent's contract; the others answer UNIMPLEMENTED.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use rollgate::pb;
use rollgate::pb::agent_server::{Agent, AgentServer};
use rollgate::tls::{AllowList, TlsMaterial};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

type Events = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

/// One simulated host.
#[derive(Debug, Default)]
struct HostState {
    current: String,
    staged: BTreeSet<String>,
    draining: bool,
    /// The in-memory journal: operation id → (kind, result).
    ops: HashMap<String, (String, pb::OperationResult)>,
    /// The last operation that ended (reported as the real agent does).
    last_ended: String,
}

#[derive(Clone)]
struct Hollow {
    name: String,
    state: Arc<Mutex<HostState>>,
    /// Moves when an operation ends, so a watch reports the change at once
    /// (as the real agent does).
    ended: watch::Sender<u64>,
}

fn success(detail: pb::success::Detail) -> pb::OperationResult {
    pb::OperationResult {
        outcome: Some(pb::operation_result::Outcome::Success(pb::Success {
            detail: Some(detail),
        })),
        replayed: false,
    }
}

fn failure(code: pb::FailureCode, message: String, active: &str) -> pb::OperationResult {
    pb::OperationResult {
        outcome: Some(pb::operation_result::Outcome::Failure(pb::Failure {
            code: code as i32,
            message,
            detail: String::new(),
            reverted: false,
            active_version: active.to_string(),
            gateway_healthy: true,
        })),
        replayed: false,
    }
}

fn one_event(op: &str, result: pb::OperationResult) -> Events {
    let ev = pb::OperationEvent {
        operation_id: op.to_string(),
        event: Some(pb::operation_event::Event::Result(result)),
    };
    Box::pin(tokio_stream::iter([Ok(ev)]))
}

impl Hollow {
    fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `act` once per operation id; a repeated id replays the result.
    fn once(
        &self,
        op: &str,
        kind: &str,
        act: impl FnOnce(&mut HostState) -> pb::OperationResult,
    ) -> Events {
        let result = {
            let mut s = self.lock();
            if let Some((_, r)) = s.ops.get(op) {
                let mut r = r.clone();
                r.replayed = true;
                r
            } else {
                let r = act(&mut s);
                s.ops.insert(op.to_string(), (kind.to_string(), r.clone()));
                op.clone_into(&mut s.last_ended);
                r
            }
        };
        self.ended.send_modify(|n| *n += 1);
        one_event(op, result)
    }

    fn report(&self, sequence: u64) -> pb::HealthReport {
        let s = self.lock();
        pb::HealthReport {
            sequence,
            observed_at_unix_ms: rollgate::clock::now_ms(),
            process: pb::ProcessState::Running as i32,
            pid: 1,
            running_version: s.current.clone(),
            installed_version: s.current.clone(),
            artifact_version: s.current.clone(),
            healthy: true,
            drain_state: if s.draining {
                pb::DrainState::Draining
            } else {
                pb::DrainState::Ready
            } as i32,
            last_operation_id: s.last_ended.clone(),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Agent for Hollow {
    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let health = req.into_inner().with_health.then(|| self.report(1));
        let s = self.lock();
        Ok(Response::new(pb::HelloResponse {
            agent_version: rollgate::VERSION.to_string(),
            host_name: self.name.clone(),
            role: pb::Role::Dp as i32,
            installed_version: s.current.clone(),
            releases: s.staged.iter().cloned().collect(),
            disk_free_bytes: 1 << 40,
            memory_total_bytes: 1 << 34,
            memory_available_bytes: 1 << 33,
            cpu_count: 2,
            cpu_brand: "hollow".into(),
            service_manager: pb::ServiceManager::Exec as i32,
            features: Some(pb::Features {
                agent_check_port: 9999,
                ..Default::default()
            }),
            install_method: "tarball".into(),
            health,
            ..Default::default()
        }))
    }

    type WatchHealthStream = ReceiverStream<Result<pb::HealthReport, Status>>;
    async fn watch_health(
        &self,
        req: Request<pb::WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        let r = req.into_inner();
        let interval = Duration::from_millis(u64::from(r.interval_ms.max(100)));
        let heartbeat = Duration::from_millis(u64::from(r.heartbeat_ms));
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut ended = me.ended.subscribe();
            let mut seq = 0;
            let mut last: Option<(i32, String, std::time::Instant)> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Ok(()) = ended.changed() => tick.reset(),
                    _ = tx.closed() => return,
                }
                let report = me.report(seq + 1);
                let key = (report.drain_state, report.installed_version.clone());
                let quiet = !heartbeat.is_zero()
                    && last.as_ref().is_some_and(|(d, v, at)| {
                        (*d, v.clone()) == key && at.elapsed() < heartbeat
                    });
                if quiet {
                    continue;
                }
                seq += 1;
                last = Some((key.0, key.1, std::time::Instant::now()));
                if tx.send(Ok(report)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type StageStream = Events;
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
        let mut hash = Sha256::new();
        let mut got = 0u64;
        while let Some(m) = stream.message().await? {
            if let Some(pb::stage_request::Msg::Chunk(c)) = m.msg {
                got += c.len() as u64;
                hash.update(&c);
            }
        }
        let sum = hex::encode(hash.finalize());
        let op = header.operation_id.clone();
        Ok(Response::new(self.once(&op, "stage", |s| {
            if got != header.size || sum != header.sha256 {
                return failure(
                    pb::FailureCode::ChecksumMismatch,
                    format!("got {got} bytes with SHA-256 {sum}"),
                    &s.current,
                );
            }
            let already_present = !s.staged.insert(header.version.clone());
            success(pb::success::Detail::Stage(pb::StageResult {
                version: header.version.clone(),
                release_dir: format!("/hollow/releases/{}", header.version),
                bytes: got,
                already_present,
            }))
        })))
    }

    type BackupStream = Events;
    async fn backup(&self, _r: Request<pb::BackupRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("a hollow agent has no database"))
    }

    async fn fingerprint(
        &self,
        _r: Request<pb::FingerprintRequest>,
    ) -> Result<Response<pb::FingerprintResponse>, Status> {
        Err(Status::unimplemented("a hollow agent has no database"))
    }

    type RestoreStream = Events;
    async fn restore(&self, _r: Request<pb::RestoreRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("a hollow agent has no database"))
    }

    type RehearseStream = Events;
    async fn rehearse(&self, _r: Request<pb::RehearseRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("a hollow agent has no database"))
    }

    type DrainStream = Events;
    async fn drain(&self, r: Request<pb::DrainRequest>) -> Result<Response<Events>, Status> {
        let op = r.into_inner().operation_id;
        Ok(Response::new(self.once(&op, "drain", |s| {
            s.draining = true;
            success(pb::success::Detail::Drain(pb::DrainResult::default()))
        })))
    }

    type UndrainStream = Events;
    async fn undrain(&self, r: Request<pb::UndrainRequest>) -> Result<Response<Events>, Status> {
        let op = r.into_inner().operation_id;
        Ok(Response::new(self.once(&op, "undrain", |s| {
            s.draining = false;
            success(pb::success::Detail::Undrain(pb::UndrainResult {}))
        })))
    }

    type InstallStream = Events;
    async fn install(&self, r: Request<pb::InstallRequest>) -> Result<Response<Events>, Status> {
        let r = r.into_inner();
        Ok(Response::new(self.once(&r.operation_id, "install", |s| {
            if !s.staged.contains(&r.version) {
                return failure(
                    pb::FailureCode::Precondition,
                    format!("{} is not staged", r.version),
                    &s.current,
                );
            }
            let previous = std::mem::replace(&mut s.current, r.version.clone());
            success(pb::success::Detail::Install(pb::InstallResult {
                previous_version: previous,
                version: r.version.clone(),
                pid: 1,
                healthy_for_ms: 0,
                restore: None,
            }))
        })))
    }

    type RollbackStream = Events;
    async fn rollback(&self, _r: Request<pb::RollbackRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("hollow agents only roll forward"))
    }

    type ReadBackupFileStream = ReceiverStream<Result<pb::FileChunk, Status>>;
    async fn read_backup_file(
        &self,
        _r: Request<pb::ReadBackupFileRequest>,
    ) -> Result<Response<Self::ReadBackupFileStream>, Status> {
        Err(Status::unimplemented("a hollow agent has no backups"))
    }

    async fn get_operation(
        &self,
        r: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::OperationRecord>, Status> {
        let op = r.into_inner().operation_id;
        let s = self.lock();
        Ok(Response::new(match s.ops.get(&op) {
            Some((kind, result)) => record(&op, kind, result),
            None => pb::OperationRecord {
                operation_id: op,
                status: pb::OperationStatus::Unknown as i32,
                ..Default::default()
            },
        }))
    }

    async fn list_operations(
        &self,
        r: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let prefix = r.into_inner().prefix;
        let s = self.lock();
        Ok(Response::new(pb::ListOperationsResponse {
            operations: s
                .ops
                .iter()
                .filter(|(op, _)| op.starts_with(&prefix))
                .map(|(op, (kind, result))| record(op, kind, result))
                .collect(),
        }))
    }
}

fn record(op: &str, kind: &str, result: &pb::OperationResult) -> pb::OperationRecord {
    let ok = matches!(
        result.outcome,
        Some(pb::operation_result::Outcome::Success(_))
    );
    pb::OperationRecord {
        operation_id: op.to_string(),
        kind: kind.to_string(),
        status: if ok {
            pb::OperationStatus::Succeeded
        } else {
            pb::OperationStatus::Failed
        } as i32,
        result: Some(result.clone()),
        attempts: 1,
        ..Default::default()
    }
}

/// A served hollow agent, to read its host's state afterwards.
pub struct HollowHost(Arc<Mutex<HostState>>);

impl HollowHost {
    /// The release the host is on.
    pub fn current(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// Operations its in-memory journal holds.
    pub fn operations(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).ops.len()
    }
}

/// Serves one hollow agent `name` on `addr` with `tls`, on release
/// `version`, until the runtime stops. Returns once it listens.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    tls: &TlsMaterial,
    version: &str,
) -> std::io::Result<HollowHost> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let state = Arc::new(Mutex::new(HostState {
        current: version.to_string(),
        staged: [version.to_string()].into(),
        ..Default::default()
    }));
    let hollow = Hollow {
        name: name.to_string(),
        state: state.clone(),
        ended: watch::Sender::new(0),
    };
    let allow = AllowList::new(vec!["rollgate-coordinator".into()]);
    let router = Server::builder()
        .tls_config(tls.server_config())
        .map_err(std::io::Error::other)?
        .add_service(InterceptedService::new(
            AgentServer::new(hollow),
            move |r| allow.check(r),
        ));
    tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("hollow agent: {e}");
        }
    });
    Ok(HollowHost(state))
}
