//! Operations: at most one step changes the host at a time; every step is
//! journalled before it acts; a repeated operation id never acts twice.
//!
//! A call with a new id begins the operation (journal `begin`, fsync), runs it
//! in its own task — it goes on if the caller disconnects — and streams its
//! events. A call with an id that is running follows the same operation; a
//! call with an id that has ended gets the recorded result at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::Stream;
use rollgate::pb;
use rollgate::pb::operation_event::Event as Ev;
use rollgate::pb::operation_result::Outcome;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::failpoint;
use crate::journal::{Entry, Event, Journal, OpState};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

/// The operation registry: the journal plus the running operation.
#[derive(Debug)]
pub struct Ops {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    states: BTreeMap<String, OpState>,
    running: Option<Running>,
    seq: u64,
}

#[derive(Debug)]
struct Running {
    op: String,
    events: broadcast::Sender<pb::OperationEvent>,
}

/// Handed to a running step: reports progress and journals phases.
#[derive(Debug, Clone)]
pub struct OpCtx {
    pub op: String,
    pub kind: &'static str,
    ops: Arc<Ops>,
    events: broadcast::Sender<pb::OperationEvent>,
}

impl OpCtx {
    /// A progress message to whoever follows the operation (not journalled).
    pub fn progress(&self, phase: &str, message: impl Into<String>, done: u64, total: u64) {
        let message = message.into();
        tracing::info!(op = %self.op, phase, done, total, "{message}");
        let _ = self.events.send(pb::OperationEvent {
            operation_id: self.op.clone(),
            event: Some(Ev::Progress(pb::Progress {
                phase: phase.into(),
                message,
                done,
                total,
            })),
        });
    }

    /// Journals that a step boundary was passed (fsync). A failpoint named
    /// `<kind>:<phase>` kills the agent right after, for crash tests.
    pub fn phase(&self, phase: &str, detail: serde_json::Value) -> std::io::Result<()> {
        self.ops.append(
            &self.op,
            self.kind,
            Event::Phase {
                phase: phase.into(),
                detail,
            },
        )?;
        failpoint::hit(self.kind, phase);
        Ok(())
    }
}

impl Ops {
    pub fn new(journal: Journal, states: BTreeMap<String, OpState>) -> Arc<Ops> {
        let seq = states.values().map(|s| s.seq).max().unwrap_or(0);
        Arc::new(Ops {
            inner: Mutex::new(Inner {
                journal,
                states,
                running: None,
                seq,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, op: &str, kind: &str, event: Event) -> std::io::Result<()> {
        let mut inner = self.lock();
        inner.append(op, kind, event)
    }

    /// The journal's record of an operation.
    pub fn get(&self, op: &str) -> Option<pb::OperationRecord> {
        self.lock().states.get(op).map(OpState::record)
    }

    /// Records whose id starts with `prefix`, oldest first.
    pub fn list(&self, prefix: &str) -> Vec<pb::OperationRecord> {
        let inner = self.lock();
        let mut v: Vec<&OpState> = inner
            .states
            .values()
            .filter(|s| s.op.starts_with(prefix))
            .collect();
        v.sort_by_key(|s| s.seq);
        v.into_iter().map(OpState::record).collect()
    }

    /// Operations the journal shows begun and never ended (crash victims).
    pub fn unfinished(&self) -> Vec<OpState> {
        self.lock()
            .states
            .values()
            .filter(|s| s.result.is_none())
            .cloned()
            .collect()
    }

    /// The id of the running operation, if any.
    pub fn active(&self) -> Option<String> {
        self.lock().running.as_ref().map(|r| r.op.clone())
    }

    /// Runs `work` as operation `op` of `kind`, or follows / replays it if the
    /// id is known. `begin` is journalled with the start. `resume` marks a
    /// restart of an operation cut off by a crash (its attempt count grows).
    pub fn start<F, Fut>(
        self: &Arc<Self>,
        op: &str,
        kind: &'static str,
        begin: serde_json::Value,
        resume: bool,
        work: F,
    ) -> EventStream
    where
        F: FnOnce(OpCtx) -> Fut + Send + 'static,
        Fut: Future<Output = pb::OperationResult> + Send + 'static,
    {
        let mut inner = self.lock();
        if !resume && let Some(st) = inner.states.get(op) {
            if let Some(result) = &st.result {
                let mut r = result.clone();
                r.replayed = true;
                tracing::info!(op, kind = %st.kind, "repeated operation id: answering from the journal");
                return single(op, r);
            }
            if let Some(run) = inner.running.as_ref().filter(|r| r.op == op) {
                tracing::info!(op, "repeated operation id: following the running operation");
                return follow(op, run.events.subscribe());
            }
        }
        if !resume && inner.running.is_none() && inner.states.values().any(|s| s.result.is_none()) {
            // A step cut off by a restart that recovery has not taken up yet:
            // ask the caller to come back (it retries, and then follows it).
            tracing::info!(
                op,
                "a cut-off step is about to be recovered; asking the caller to retry"
            );
            return unavailable("the agent is recovering a step cut off by its restart; retry");
        }
        if let Some(run) = &inner.running {
            return single(
                op,
                failure(
                    pb::FailureCode::Precondition,
                    format!("operation {} is running on this host", run.op),
                    String::new(),
                ),
            );
        }
        let attempt = inner.states.get(op).map_or(0, |s| s.attempts) + 1;
        if let Err(e) = inner.append(
            op,
            kind,
            Event::Begin {
                attempt,
                detail: begin,
            },
        ) {
            tracing::error!(op, error = %e, "cannot journal the start; not acting");
            return single(
                op,
                failure(
                    pb::FailureCode::Internal,
                    format!("cannot write the journal: {e}"),
                    String::new(),
                ),
            );
        }
        let (tx, _) = broadcast::channel(256);
        inner.running = Some(Running {
            op: op.to_string(),
            events: tx.clone(),
        });
        let stream = follow(op, tx.subscribe());
        drop(inner);

        let ctx = OpCtx {
            op: op.to_string(),
            kind,
            ops: self.clone(),
            events: tx,
        };
        let ops = self.clone();
        let span = tracing::info_span!("operation", op = %op, kind, attempt);
        tokio::spawn(
            async move {
                let events = ctx.events.clone();
                let op = ctx.op.clone();
                let result = work(ctx).await;
                ops.finish(&op, kind, result, &events);
            }
            .instrument(span),
        );
        stream
    }

    /// Journals the end, marks the operation done, then tells followers.
    fn finish(
        &self,
        op: &str,
        kind: &str,
        result: pb::OperationResult,
        events: &broadcast::Sender<pb::OperationEvent>,
    ) {
        let mut inner = self.lock();
        match &result.outcome {
            Some(Outcome::Success(_)) => tracing::info!(op, "operation succeeded"),
            Some(Outcome::Failure(f)) => {
                tracing::warn!(op, code = ?f.code(), reverted = f.reverted, "operation failed: {}", f.message)
            }
            None => tracing::error!(op, "operation ended without an outcome"),
        }
        let end = Event::End {
            result: result.clone(),
        };
        if let Err(e) = inner.append(op, kind, end.clone()) {
            // The host is in the state the result says; only the record is
            // missing. Keep the result in memory so repeated ids get it; a
            // restart will treat the step as cut off and re-check the host.
            tracing::error!(op, error = %e, "cannot journal the end of the operation");
            inner.remember(op, kind, end);
        }
        inner.running = None;
        let _ = events.send(pb::OperationEvent {
            operation_id: op.to_string(),
            event: Some(Ev::Result(result)),
        });
    }
}

impl Inner {
    fn append(&mut self, op: &str, kind: &str, event: Event) -> std::io::Result<()> {
        let e = Entry {
            op: op.to_string(),
            kind: kind.to_string(),
            at_ms: crate::server::unix_ms(SystemTime::now()),
            event,
        };
        self.journal.append(&e)?;
        crate::journal::apply(&mut self.states, e, &mut self.seq);
        Ok(())
    }

    /// Applies an entry to the in-memory state only (its journal write failed).
    fn remember(&mut self, op: &str, kind: &str, event: Event) {
        let e = Entry {
            op: op.to_string(),
            kind: kind.to_string(),
            at_ms: crate::server::unix_ms(SystemTime::now()),
            event,
        };
        crate::journal::apply(&mut self.states, e, &mut self.seq);
    }
}

/// A stream of exactly one result.
pub fn single(op: &str, result: pb::OperationResult) -> EventStream {
    let ev = pb::OperationEvent {
        operation_id: op.to_string(),
        event: Some(Ev::Result(result)),
    };
    Box::pin(futures::stream::iter([Ok(ev)]))
}

/// A stream that ends at once with UNAVAILABLE: the caller retries.
fn unavailable(why: &str) -> EventStream {
    Box::pin(futures::stream::iter([Err(Status::unavailable(
        why.to_string(),
    ))]))
}

/// Forwards a running operation's events until its result.
fn follow(op: &str, mut rx: broadcast::Receiver<pb::OperationEvent>) -> EventStream {
    let (tx, out) = mpsc::channel(64);
    let op = op.to_string();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let last = matches!(ev.event, Some(Ev::Result(_)));
                    if tx.send(Ok(ev)).await.is_err() || last {
                        break;
                    }
                }
                // A slow follower missed progress lines; the result still comes.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(op = %op, missed = n, "follower lagged");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

/// A failure result.
pub fn failure(
    code: pb::FailureCode,
    message: impl Into<String>,
    detail: impl Into<String>,
) -> pb::OperationResult {
    pb::OperationResult {
        outcome: Some(Outcome::Failure(pb::Failure {
            code: code as i32,
            message: message.into(),
            detail: detail.into(),
            ..Default::default()
        })),
        replayed: false,
    }
}

/// A success result.
pub fn success(detail: pb::success::Detail) -> pb::OperationResult {
    pb::OperationResult {
        outcome: Some(Outcome::Success(pb::Success {
            detail: Some(detail),
        })),
        replayed: false,
    }
}
