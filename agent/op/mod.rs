//! Operations: at most one step changes the host at a time; every step is
//! journalled before it acts; a repeated operation id never acts twice.
//!
//! A call with a new id begins the operation (journal `begin`, durable), runs
//! it in its own task — it goes on if the caller disconnects — and streams
//! its events. A call with an id that is running follows the same operation;
//! a call with an id that has ended gets the recorded result at once.
//!
//! This layer knows steps only as `Intent`s and results: the steps sit on top
//! of it, the gRPC edge turns its events into wire messages.

pub mod error;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use rollgate::clock::now_ms;
use rollgate::outcome::{Failure, FailureCode, StepResult};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

pub use error::StepError;

use crate::failpoint;
use crate::journal::{Entry, Event, FORMAT, Journal, OpState};
use crate::kind::{Intent, Phase, StepKind};

/// Something a running operation says.
#[derive(Debug, Clone)]
pub enum OpEvent {
    /// Work is going on (not journalled).
    Progress(Progress),
    /// The operation ended; always the last event.
    Done { result: StepResult, replayed: bool },
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// Short machine-readable phase ("receive", "stop", "health", ...).
    pub phase: &'static str,
    pub message: String,
    pub done: u64,
    pub total: u64,
}

pub type EventStream = Pin<Box<dyn Stream<Item = OpEvent> + Send>>;

/// What a start request got.
pub enum Started {
    /// The operation's events (new, followed, or replayed from the journal).
    Events(EventStream),
    /// A step cut off by a restart is about to be recovered: ask again.
    Retry(&'static str),
}

/// An operation as the journal has it, for GetOperation/ListOperations.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub op: String,
    pub kind: StepKind,
    /// None while running.
    pub result: Option<StepResult>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub attempts: u32,
}

/// The operation registry: the journal plus the running operation.
#[derive(Debug)]
pub struct Ops {
    inner: Mutex<Inner>,
    /// Counts operations ended. A health watch reports at once when it
    /// moves, so the coordinator sees a host's state after a step (back in
    /// rotation, on the new release) without waiting for the next interval.
    ended: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    states: BTreeMap<String, OpState>,
    running: Option<Running>,
    seq: u64,
    /// The agent is stopping (SIGTERM, a package upgrade's restart): no
    /// new operation begins; the running one is finished first.
    stopping: bool,
    /// The last operation that ended since the agent started.
    last_ended: Option<String>,
}

#[derive(Debug)]
struct Running {
    op: String,
    events: broadcast::Sender<OpEvent>,
}

/// Handed to a running step: reports progress and journals phases.
#[derive(Debug, Clone)]
pub struct OpCtx {
    pub op: String,
    pub kind: StepKind,
    ops: Arc<Ops>,
    events: broadcast::Sender<OpEvent>,
    /// Phases journalled with `phase_behind`, not yet known durable: the
    /// end waits for them, so no operation reports a result before the
    /// journal holds every phase it passed.
    behind: Arc<Mutex<Vec<Durable>>>,
}

/// A submitted journal entry's acknowledgement.
type Durable = oneshot::Receiver<std::io::Result<()>>;

impl OpCtx {
    /// A progress message to whoever follows the operation (not journalled).
    pub fn progress(&self, phase: &'static str, message: impl Into<String>, done: u64, total: u64) {
        let message = message.into();
        tracing::info!(op = %self.op, phase, done, total, "{message}");
        let _ = self.events.send(OpEvent::Progress(Progress {
            phase,
            message,
            done,
            total,
        }));
    }

    /// Journals that a step boundary was passed and waits until it is
    /// durable. A failpoint named `<kind>:<phase>` kills the agent right
    /// after, for crash tests.
    pub async fn phase(&self, phase: Phase, detail: serde_json::Value) -> Result<(), StepError> {
        let durable = self
            .ops
            .submit(&self.op, self.kind, Event::Phase { phase, detail });
        wait(durable)
            .await
            .map_err(|e| StepError::internal(format!("cannot write the journal: {e}")))?;
        failpoint::hit(self.kind, phase);
        Ok(())
    }

    /// Journals a step boundary without waiting for the disk: for a phase
    /// that recovery does not act on (it decides from other phases, or
    /// from the host itself), so the step may go on while the journal
    /// thread writes it. Entries reach the file in submission order, and
    /// the operation's end waits for this one, so what the journal shows
    /// is the same; only a crash in between can lose it, which recovery
    /// treats as the phase not reached. Each wait for the disk is a hand-off
    /// to the journal thread and back: on a busy host that is milliseconds
    /// on a batch's critical path. A failpoint on the phase still waits,
    /// so crash tests see it durable.
    pub async fn phase_behind(
        &self,
        phase: Phase,
        detail: serde_json::Value,
    ) -> Result<(), StepError> {
        if failpoint::names(self.kind, phase) {
            return self.phase(phase, detail).await;
        }
        let durable = self
            .ops
            .submit(&self.op, self.kind, Event::Phase { phase, detail })
            .map_err(|e| StepError::internal(format!("cannot write the journal: {e}")))?;
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(durable);
        Ok(())
    }

    /// Waits until every phase journalled behind is durable; the first
    /// failure. A step calls it (through `steps::conclude`) before it
    /// reports, so a phase the disk refused becomes the step's failure with
    /// the host's state in it, and a drain puts the host back first.
    pub async fn settle(&self) -> Result<(), StepError> {
        let pending = std::mem::take(&mut *self.behind.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first = Ok(());
        for d in pending {
            let r = wait(Ok(d)).await;
            if first.is_ok() {
                first = r;
            }
        }
        first.map_err(|e| StepError::internal(format!("cannot write the journal: {e}")))
    }
}

/// Waits until a submitted entry is durable.
async fn wait(
    submitted: std::io::Result<oneshot::Receiver<std::io::Result<()>>>,
) -> std::io::Result<()> {
    submitted?
        .await
        .map_err(|_| std::io::Error::other("the journal writer has stopped"))?
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
                stopping: false,
                last_ended: None,
            }),
            ended: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Moves each time an operation ends.
    pub fn ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ended.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(
        &self,
        op: &str,
        kind: StepKind,
        event: Event,
    ) -> std::io::Result<oneshot::Receiver<std::io::Result<()>>> {
        self.lock().submit(op, kind, event)
    }

    /// The journal's record of an operation.
    pub fn get(&self, op: &str) -> Option<OpRecord> {
        self.lock().states.get(op).map(record)
    }

    /// Records whose id starts with `prefix`, oldest first.
    pub fn list(&self, prefix: &str) -> Vec<OpRecord> {
        let inner = self.lock();
        let mut v: Vec<&OpState> = inner
            .states
            .values()
            .filter(|s| s.op.starts_with(prefix))
            .collect();
        v.sort_by_key(|s| s.seq);
        v.into_iter().map(record).collect()
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

    /// The id of the last operation that ended since the agent started.
    pub fn last_ended(&self) -> Option<String> {
        self.lock().last_ended.clone()
    }

    /// From now on no operation begins (callers are asked to retry, as
    /// during recovery); returns the one still running, which goes on.
    pub fn stop_admitting(&self) -> Option<String> {
        let mut inner = self.lock();
        inner.stopping = true;
        inner.running.as_ref().map(|r| r.op.clone())
    }

    /// Waits until no operation runs (the end is durable by then).
    pub async fn idle(&self) {
        let mut ended = self.ended();
        while self.active().is_some() {
            if ended.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs `work` as operation `op` with `intent`, or follows / replays it
    /// if the id is known. `begin` is journalled with the start.
    pub fn start<F, Fut>(self: &Arc<Self>, op: &str, intent: Intent, work: F) -> Started
    where
        F: FnOnce(OpCtx) -> Fut + Send + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        let kind = intent.kind();
        self.begin(op, kind, Some(intent), false, work)
    }

    /// Takes up an operation cut off by a restart (recovery): the same id,
    /// its attempt count one higher, its first intent kept.
    pub fn resume<F, Fut>(self: &Arc<Self>, op: &str, kind: StepKind, work: F) -> Started
    where
        F: FnOnce(OpCtx) -> Fut + Send + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        self.begin(op, kind, None, true, work)
    }

    fn begin<F, Fut>(
        self: &Arc<Self>,
        op: &str,
        kind: StepKind,
        intent: Option<Intent>,
        resume: bool,
        work: F,
    ) -> Started
    where
        F: FnOnce(OpCtx) -> Fut + Send + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        let mut inner = self.lock();
        if !resume {
            // Running first: its end may be applied but not yet durable.
            if let Some(run) = inner.running.as_ref().filter(|r| r.op == op) {
                tracing::info!(op, "repeated operation id: following the running operation");
                return Started::Events(follow(op, run.events.subscribe()));
            }
            if let Some((st, result)) = inner
                .states
                .get(op)
                .and_then(|st| st.result.as_ref().map(|r| (st, r)))
            {
                tracing::info!(op, kind = %st.kind, "repeated operation id: answering from the journal");
                return Started::Events(single(result.clone(), true));
            }
        }
        if inner.stopping {
            // A restart is under way: the caller retries and reaches the
            // agent that comes back, which follows or replays this id.
            tracing::info!(op, "the agent is stopping; asking the caller to retry");
            return Started::Retry("the agent is stopping (a restart); retry");
        }
        if !resume && inner.running.is_none() && inner.states.values().any(|s| s.result.is_none()) {
            // A step cut off by a restart that recovery has not taken up yet:
            // ask the caller to come back (it retries, and then follows it).
            tracing::info!(
                op,
                "a cut-off step is about to be recovered; asking the caller to retry"
            );
            return Started::Retry("the agent is recovering a step cut off by its restart; retry");
        }
        if let Some(run) = &inner.running {
            return Started::Events(single(
                Err(Failure::new(
                    FailureCode::Precondition,
                    format!("operation {} is running on this host", run.op),
                )),
                false,
            ));
        }
        let before = inner.states.get(op).cloned();
        let attempt = before.as_ref().map_or(0, |s| s.attempts) + 1;
        let durable = inner.submit(op, kind, Event::Begin { attempt, intent });
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
            behind: Arc::default(),
        };
        let settler = ctx.clone();
        let ops = self.clone();
        let span = tracing::info_span!("operation", op = %op, %kind, attempt);
        tokio::spawn(
            async move {
                let op = ctx.op.clone();
                match wait(durable).await {
                    Ok(()) => {
                        let mut result = work(ctx).await;
                        // A net: steps settle in `steps::conclude`, which
                        // leaves nothing here.
                        if let Err(e) = settler.settle().await {
                            tracing::error!(op = %op, error = %e.message, "cannot journal a phase of the operation");
                            result = result.and(Err(Failure::new(e.code, e.message)));
                        }
                        ops.finish(&op, kind, result).await;
                    }
                    Err(e) => {
                        tracing::error!(op = %op, error = %e, "cannot journal the start; not acting");
                        ops.not_started(&op, before, &e);
                    }
                }
            }
            .instrument(span),
        );
        Started::Events(stream)
    }

    /// Journals the end and waits until it is durable; only then is the
    /// operation over for repeated ids and its followers told.
    async fn finish(&self, op: &str, kind: StepKind, result: StepResult) {
        match &result {
            Ok(_) => tracing::info!(op, "operation succeeded"),
            Err(f) => {
                tracing::warn!(op, code = %f.code, reverted = f.reverted, "operation failed: {}", f.message)
            }
        }
        let end = Event::End {
            result: result.clone(),
        };
        let durable = self.submit(op, kind, end);
        if let Err(e) = wait(durable).await {
            // The host is in the state the result says; only the record is
            // missing. The result is kept in memory (applied on submit), so
            // repeated ids get it; a restart treats the step as cut off and
            // re-checks the host.
            tracing::error!(op, error = %e, "cannot journal the end of the operation");
        }
        self.close(result, |_| {});
    }

    /// The start could not be journalled, so nothing was done: the
    /// operation's in-memory state goes back to what the disk says (the
    /// failed batch was cut from the file), and the same id runs afresh
    /// once the journal can be written. Keeping the failure as its result
    /// would answer every retry with it until the agent restarted.
    fn not_started(&self, op: &str, before: Option<OpState>, e: &std::io::Error) {
        let failure = Failure::new(
            FailureCode::Internal,
            format!(
                "cannot write the journal: {e}; nothing was done, retry once it can be written"
            ),
        );
        self.close(Err(failure), |inner| match before {
            Some(st) => {
                inner.states.insert(op.to_string(), st);
            }
            None => {
                inner.states.remove(op);
            }
        });
    }

    /// Ends the running operation: `settle` the state under the lock, then
    /// tell its followers and the health watch.
    fn close(&self, result: StepResult, settle: impl FnOnce(&mut Inner)) {
        let events = {
            let mut inner = self.lock();
            settle(&mut inner);
            let running = inner.running.take();
            if let Some(r) = &running {
                inner.last_ended = Some(r.op.clone());
            }
            running.map(|r| r.events)
        };
        self.ended.send_modify(|n| *n += 1);
        if let Some(tx) = events {
            let _ = tx.send(OpEvent::Done {
                result,
                replayed: false,
            });
        }
    }
}

impl Inner {
    /// Applies an entry to the in-memory state and queues it for the disk.
    fn submit(
        &mut self,
        op: &str,
        kind: StepKind,
        event: Event,
    ) -> std::io::Result<oneshot::Receiver<std::io::Result<()>>> {
        let e = Entry {
            v: FORMAT,
            op: op.to_string(),
            kind,
            at_ms: now_ms(),
            event,
        };
        let durable = self.journal.submit(&e);
        crate::journal::apply(&mut self.states, e, &mut self.seq);
        durable
    }
}

fn record(s: &OpState) -> OpRecord {
    OpRecord {
        op: s.op.clone(),
        kind: s.kind,
        result: s.result.clone(),
        started_ms: s.started_ms,
        finished_ms: s.finished_ms,
        attempts: s.attempts,
    }
}

/// A stream of exactly one result.
pub fn single(result: StepResult, replayed: bool) -> EventStream {
    Box::pin(futures::stream::iter([OpEvent::Done { result, replayed }]))
}

/// Forwards a running operation's events until its result.
fn follow(op: &str, mut rx: broadcast::Receiver<OpEvent>) -> EventStream {
    let (tx, out) = mpsc::channel(64);
    let op = op.to_string();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let last = matches!(ev, OpEvent::Done { .. });
                    if tx.send(ev).await.is_err() || last {
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

#[cfg(test)]
pub(crate) mod tests;
