//! The seam between the rollout driver and the agents: `FleetApi`. The real
//! implementation (`grpc::GrpcFleet`) calls agents over mTLS and is the only
//! coordinator code that names `pb`; driver tests use a scripted one
//! (`crate::rollout::scripted`). Everything crossing the seam is a domain
//! type (`rollgate::outcome`, `rollgate::fingerprint`).

mod artifacts;
mod backup_copy;
pub mod grpc;
mod watch;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rollgate::catalog::Release;
use rollgate::fingerprint::Reading;
use rollgate::lb::LbState;
use rollgate::method::Method;
use rollgate::outcome::{BackupFile, Failure, FailureCode, StepResult};
use rollgate::version::Version;
use tokio::sync::mpsc;

use crate::client::CallError;

pub use grpc::GrpcFleet;

/// How a step ended, as the driver sees it.
pub type StepOutcome = StepResult;

/// A step whose outcome is unknown: the agent could not be reached, or its
/// stream broke for good.
pub fn lost(message: impl Into<String>) -> Failure {
    Failure::new(FailureCode::AgentLost, message)
}

/// How often a live health watch sends a report at the least: unchanged
/// reports once this heartbeat, well inside the silence after which an
/// agent counts as lost (and never more often than a look each
/// `interval`).
pub fn heartbeat(agent_silence: Duration, interval: Duration) -> Duration {
    (agent_silence / 3)
        .min(Duration::from_secs(1))
        .max(interval)
}

/// True for a failure whose outcome on the host is unknown.
pub fn is_lost(f: &Failure) -> bool {
    f.code == FailureCode::AgentLost
}

/// One health observation of a host, as the driver needs it.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    /// Consecutive unhealthy looks, as the agent counted them (0 if the
    /// agent does not count: every report is then one look).
    pub streak: u32,
    pub summary: String,
    /// The load balancer's state as the agent serves it.
    pub lb: LbState,
    /// The release the host has installed (`current`).
    pub installed_version: String,
    /// The release the running gateway says it is; empty when unknown.
    pub running_version: String,
    /// The last operation that ended on the agent before it looked; empty
    /// when none (or an agent that does not say).
    pub last_operation: String,
    /// When the watch received the report.
    pub received: std::time::Instant,
    /// The operation the agent runs right now (one it recovers after a
    /// restart, say); empty when idle.
    pub active_operation: String,
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
    /// Stages `release` on `host` as the artifact of its install `method`.
    fn stage(
        &self,
        host: &str,
        op: &str,
        release: &Release,
        method: Method,
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
        files: &[BackupFile],
        into: &Path,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn fingerprint(
        &self,
        host: &str,
        baseline_backup: &str,
    ) -> impl Future<Output = Result<Reading, CallError>> + Send;
    /// Rehearses the CP `hops` (version, expected schema; 0: unknown) on a
    /// scratch copy of backup `backup_id`, in order on the same copy.
    fn rehearse(
        &self,
        host: &str,
        op: &str,
        backup_id: &str,
        hops: &[(Version, i64)],
    ) -> impl Future<Output = StepOutcome> + Send;
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
    /// Starts streaming health of every host in `hosts` into `tx`: a look
    /// once a heartbeat (changes at once), and every `interval` for a host
    /// named to `watch_closely`.
    fn watch(&self, hosts: &[String], interval: Duration, tx: mpsc::Sender<HealthUpdate>);
    /// From now on `hosts` are looked at every `interval` of `watch`: the
    /// rollout is about to change them, or has, and an upgraded host that
    /// turns unhealthy must be seen within a second. A host the rollout has
    /// not reached raises no alarm by its health (only by its silence), so
    /// probing its gateway four times a second would buy nothing: on a
    /// 200-host fleet those probes were most of the agents' CPU.
    fn watch_closely(&self, hosts: &[String]);
}
