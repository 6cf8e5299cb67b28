//! The gRPC face of the agent: converts between the wire and the agent's own
//! types. Read-only rpcs are answered here; steps that change the host are
//! started through the operation registry (`crate::op`) and run by
//! `crate::steps`, which never see tonic or `pb`.

mod watch;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use rollgate::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::kind::{Intent, SwapPlan};
use crate::op::{OpCtx, StepError, single};
use crate::state::AgentState;
use crate::steps::{self, StepRun, backup, drain, install, pg, stage};
use wire::WireEvents;

#[derive(Debug, Clone)]
pub struct AgentService {
    state: Arc<AgentState>,
}

impl AgentService {
    pub fn new(state: Arc<AgentState>) -> Self {
        AgentService { state }
    }
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
    fn step<F, Fut>(&self, op: &str, intent: Intent, work: F) -> WireEvents
    where
        F: FnOnce(Arc<AgentState>, OpCtx) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StepRun> + Send + 'static,
    {
        let state = self.state.clone();
        let started = self.state.ops.start(op, intent, move |ctx| async move {
            let r = work(state.clone(), ctx.clone()).await;
            steps::conclude(&state, &ctx, r).await
        });
        wire::events(op, started)
    }

    /// A request that cannot start: answered with a failure, not journalled.
    fn refuse(op: &str, e: StepError) -> WireEvents {
        let mut f = rollgate::outcome::Failure::new(e.code, e.message);
        f.detail = e.detail;
        wire::events(op, crate::op::Started::Events(single(Err(f), false)))
    }

    fn plan(
        &self,
        target: &str,
        min_healthy_ms: u32,
        health_timeout_ms: u32,
        restore: Option<String>,
    ) -> Result<SwapPlan, StepError> {
        let target = target
            .parse()
            .map_err(|e| StepError::invalid(format!("{e}")))?;
        let h = &self.state.config.health;
        Ok(SwapPlan {
            previous: self.state.installer.current(),
            target,
            restore,
            min_healthy_ms: ms(min_healthy_ms, h.min_healthy),
            health_timeout_ms: ms(health_timeout_ms, h.start_timeout),
        })
    }
}

/// The coordinator's artifact bytes after a Stage header, as the stage step
/// takes them: no tonic past this point.
fn chunks(mut stream: Streaming<pb::StageRequest>) -> stage::Chunks {
    Box::pin(async_stream(move |tx| async move {
        loop {
            let item = match stream.message().await {
                Ok(None) => return,
                Ok(Some(pb::StageRequest {
                    msg: Some(pb::stage_request::Msg::Chunk(c)),
                })) => Ok(c),
                Ok(Some(pb::StageRequest {
                    msg: Some(pb::stage_request::Msg::Header(_)),
                })) => Err("a second header in the stream".to_string()),
                Ok(Some(pb::StageRequest { msg: None })) => continue,
                Err(e) => Err(e.message().to_string()),
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    }))
}

/// A stream fed by a task through a small channel.
fn async_stream<T, F, Fut>(body: F) -> ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(body(tx));
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let mut hello = watch::hello(&self.state);
        if req.into_inner().with_health {
            hello.health = Some(watch::first_report(&self.state).await);
        }
        Ok(Response::new(hello))
    }

    type WatchHealthStream = ReceiverStream<Result<pb::HealthReport, Status>>;

    async fn watch_health(
        &self,
        req: Request<pb::WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        Ok(Response::new(watch::watch(
            self.state.clone(),
            req.remote_addr(),
            req.into_inner(),
        )))
    }

    type StageStream = WireEvents;
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
        let source = header.source.as_ref().map(|s| match s {
            pb::stage_header::Source::Coordinator(_) => Ok(stage::Source::Coordinator),
            pb::stage_header::Source::Location(loc) => stage::source_of_location(loc),
        });
        let request = match stage::Request::new(
            &header.version,
            &header.sha256,
            header.size,
            header.unpacked_size,
            &header.image_id,
            source,
        ) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(Self::refuse(&op, e))),
        };
        let intent = Intent::Stage {
            version: request.version.clone(),
            sha256: request.sha256.clone(),
            size: request.size,
        };
        let streamed = matches!(request.source, stage::Source::Coordinator);
        let bytes = streamed.then(|| chunks(stream));
        Ok(Response::new(self.step(
            &op,
            intent,
            move |s, ctx| async move { stage::stage(&s, &ctx, request, bytes).await },
        )))
    }

    type BackupStream = WireEvents;
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
        let intent = Intent::Backup {
            backup_id: r.backup_id.clone(),
        };
        Ok(Response::new(self.step(
            &r.operation_id,
            intent,
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
        let mut reading = rollgate::fingerprint::Reading {
            current,
            baseline: None,
        };
        if !r.baseline_backup_id.is_empty() {
            rollgate::ids::check_backup_id(&r.baseline_backup_id)
                .map_err(Status::invalid_argument)?;
            let base = pg::recorded_fingerprint(cfg, &r.baseline_backup_id)
                .map_err(|e| Status::not_found(e.message))?;
            let diff = base.diff(&reading.current);
            reading.baseline = Some((base, diff));
        }
        Ok(Response::new(reading.into()))
    }

    type RestoreStream = WireEvents;
    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let intent = Intent::Restore {
            backup_id: r.backup_id.clone(),
        };
        Ok(Response::new(self.step(
            &r.operation_id,
            intent,
            move |s, ctx| async move { steps::restore::restore(&s, &ctx, &r.backup_id).await },
        )))
    }

    type RehearseStream = WireEvents;
    async fn rehearse(
        &self,
        req: Request<pb::RehearseRequest>,
    ) -> Result<Response<Self::RehearseStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let mut hops = Vec::new();
        for h in &r.hops {
            match h.version.parse() {
                Ok(v) => hops.push((v, h.expect_schema)),
                Err(e) => {
                    return Ok(Response::new(Self::refuse(
                        &r.operation_id,
                        StepError::invalid(format!("hop {:?}: {e}", h.version)),
                    )));
                }
            }
        }
        let intent = Intent::Rehearse {
            backup_id: r.backup_id.clone(),
            hops: hops.clone(),
        };
        Ok(Response::new(
            self.step(&r.operation_id, intent, move |s, ctx| async move {
                steps::rehearse::rehearse(&s, &ctx, &r.backup_id, &hops).await
            }),
        ))
    }

    type DrainStream = WireEvents;
    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<Self::DrainStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        let timeout = (r.timeout_ms > 0).then(|| Duration::from_millis(u64::from(r.timeout_ms)));
        let intent = Intent::Drain {
            timeout_ms: u64::from(r.timeout_ms),
        };
        Ok(Response::new(self.step(
            &r.operation_id,
            intent,
            move |s, ctx| async move { drain::drain(&s, &ctx, timeout).await },
        )))
    }

    type UndrainStream = WireEvents;
    async fn undrain(
        &self,
        req: Request<pb::UndrainRequest>,
    ) -> Result<Response<Self::UndrainStream>, Status> {
        let r = req.into_inner();
        check_op(&r.operation_id)?;
        Ok(Response::new(self.step(
            &r.operation_id,
            Intent::Undrain,
            |s, ctx| async move { drain::undrain(&s, &ctx).await },
        )))
    }

    type InstallStream = WireEvents;
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
        Ok(Response::new(self.step(
            &r.operation_id,
            Intent::Install(plan.clone()),
            move |s, ctx| async move { install::run(&s, &ctx, &plan).await },
        )))
    }

    type RollbackStream = WireEvents;
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
        Ok(Response::new(self.step(
            &op,
            Intent::Rollback(plan.clone()),
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
        Ok(Response::new(async_stream(move |tx| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = pb::FileChunk {
                            data: bytes::Bytes::copy_from_slice(&buf[..n]),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
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
        })))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::OperationRecord>, Status> {
        let op = req.into_inner().operation_id;
        check_op(&op)?;
        Ok(Response::new(match self.state.ops.get(&op) {
            Some(r) => wire::record(r),
            None => pb::OperationRecord {
                operation_id: op,
                status: pb::OperationStatus::Unknown as i32,
                ..Default::default()
            },
        }))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let prefix = req.into_inner().prefix;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: self
                .state
                .ops
                .list(&prefix)
                .into_iter()
                .map(wire::record)
                .collect(),
        }))
    }
}
