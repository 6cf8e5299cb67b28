//! The agent's values on the wire: operation events and records, health
//! reports, host facts. The only agent module besides `rpc` that names `pb`.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rollgate::convert::result_to_wire;
use rollgate::pb;
use tonic::Status;

use crate::drain_state::Drain;
use crate::health::{Observation, Probe};
use crate::op::{EventStream, OpEvent, OpRecord, Started};
use crate::service::ProcessStatus;

pub type WireEvents = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

/// An operation's events as the rpc streams them; a step about to be
/// recovered is UNAVAILABLE (the caller retries, then follows it).
pub fn events(op: &str, started: Started) -> WireEvents {
    match started {
        Started::Retry(why) => Box::pin(futures::stream::iter([Err(Status::unavailable(why))])),
        Started::Events(s) => stream(op, s),
    }
}

fn stream(op: &str, s: EventStream) -> WireEvents {
    let op = op.to_string();
    Box::pin(s.map(move |ev| Ok(event(&op, ev))))
}

fn event(op: &str, ev: OpEvent) -> pb::OperationEvent {
    use pb::operation_event::Event;
    pb::OperationEvent {
        operation_id: op.to_string(),
        event: Some(match ev {
            OpEvent::Progress(p) => Event::Progress(pb::Progress {
                phase: p.phase.to_string(),
                message: p.message,
                done: p.done,
                total: p.total,
            }),
            OpEvent::Done { result, replayed } => Event::Result(result_to_wire(result, replayed)),
        }),
    }
}

pub fn record(r: OpRecord) -> pb::OperationRecord {
    let status = match &r.result {
        None => pb::OperationStatus::Running,
        Some(Ok(_)) => pb::OperationStatus::Succeeded,
        Some(Err(_)) => pb::OperationStatus::Failed,
    };
    pb::OperationRecord {
        operation_id: r.op,
        kind: r.kind.as_str().to_string(),
        status: status as i32,
        result: r.result.map(|res| result_to_wire(res, false)),
        started_at_unix_ms: r.started_ms,
        finished_at_unix_ms: r.finished_ms,
        attempts: r.attempts,
    }
}

pub fn probe(p: &Probe) -> pb::ProbeResult {
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

pub fn drain(d: Drain) -> pb::DrainState {
    match d {
        Drain::Ready => pb::DrainState::Ready,
        Drain::Draining => pb::DrainState::Draining,
        Drain::Maint => pb::DrainState::Maint,
    }
}

pub fn process(p: &ProcessStatus) -> pb::ProcessState {
    match p {
        ProcessStatus::Running { .. } => pb::ProcessState::Running,
        ProcessStatus::Stopped => pb::ProcessState::Stopped,
        ProcessStatus::Unknown(_) => pb::ProcessState::Unknown,
    }
}

/// The parts of a health report that come from one observation.
pub fn observation(obs: &Observation, r: &mut pb::HealthReport) {
    r.process = process(&obs.process) as i32;
    r.pid = obs.process.pid().unwrap_or(0);
    r.probes = obs.probes.iter().map(probe).collect();
    r.running_version = obs.running_version.clone().unwrap_or_default();
    r.artifact_version = obs.artifact_version.clone().unwrap_or_default();
    r.config_revision = obs.config_revision;
    r.healthy = obs.healthy();
    r.gateway_rss_bytes = obs.rss_bytes;
}
