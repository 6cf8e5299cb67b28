//! The drain lease: a host drained by a coordinator that then went away (a
//! partition, a lost bastion, a killed process nobody resumed) goes back
//! into rotation by itself.
//!
//! The rule: once the host has been drained, with no step running and no
//! coordinator in touch (no health watch open, no call received), for
//! `[drain] lease`, the agent puts it back — but only when its gateway is
//! healthy, since serving from a broken gateway is worse than serving with
//! one host fewer. It does so as an operation of its own (`lease/<host>/
//! undrain-<ms>`), so it never runs beside a coordinator's step and the
//! journal says it happened. A coordinator that comes back finds the host in
//! rotation and drains it again, under new operation ids, before any step
//! that needs it drained.
//!
//! A coordinator with a health watch open keeps the lease: the watch lives
//! as long as its connection, and a connection to a coordinator that is cut
//! off is dropped within `[agent] keepalive + keepalive_timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::drain_state::Drain;
use crate::kind::Intent;
use crate::op::{OpEvent, Started, StepError};
use crate::state::AgentState;
use crate::steps;

/// When a coordinator was last in touch.
#[derive(Debug)]
pub struct Contact {
    watchers: AtomicUsize,
    last: Mutex<Instant>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            watchers: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }
}

/// Held by an open health watch.
pub struct Watching(Arc<Contact>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Contact {
    /// A coordinator's call arrived.
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// A health watch opened; in touch until the guard drops.
    pub fn watching(self: &Arc<Self>) -> Watching {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Watching(self.clone())
    }

    /// How long no coordinator has been in touch; None while one watches.
    fn quiet_for(&self) -> Option<Duration> {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

/// Watches the lease for as long as the agent runs.
pub async fn run(state: Arc<AgentState>) {
    let lease = state.config.drain.lease;
    let tick = (lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut said_unhealthy = false;
    loop {
        tokio::time::sleep(tick).await;
        if state.drain.get() == Drain::Ready {
            said_unhealthy = false;
            continue;
        }
        if state.ops.active().is_some() {
            // A step running counts as being in touch.
            state.contact.touch();
            continue;
        }
        let Some(quiet) = state.contact.quiet_for() else {
            continue;
        };
        if quiet < lease {
            continue;
        }
        let obs = state.prober.observe(&state.service, &state.installer).await;
        if !obs.healthy() {
            if !said_unhealthy {
                tracing::warn!(quiet_s = quiet.as_secs(), lease = ?lease, why = %obs.describe(), "drain lease lapsed, but the gateway is not healthy: the host stays out of rotation");
                said_unhealthy = true;
            }
            continue;
        }
        tracing::warn!(quiet_s = quiet.as_secs(), lease = ?lease, "drain lease lapsed with no coordinator in touch: putting the host back in rotation");
        lapse(&state).await;
    }
}

/// Undrains as an operation of the agent's own.
async fn lapse(state: &Arc<AgentState>) {
    let op = format!(
        "lease/{}/undrain-{}",
        state.config.agent.name,
        rollgate::clock::now_ms()
    );
    let s = state.clone();
    let started = state
        .ops
        .start(&op, Intent::Undrain, move |ctx| async move {
            let r = async {
                let obs = s.prober.observe(&s.service, &s.installer).await;
                if !obs.healthy() {
                    return Err(StepError::precondition(format!(
                        "the gateway is not healthy ({}): the host stays out of rotation",
                        obs.describe()
                    )));
                }
                steps::drain::undrain(&s, &ctx).await
            }
            .await;
            steps::conclude(&s, &ctx, r).await
        });
    let Started::Events(mut events) = started else {
        return; // a cut-off step is being recovered: look again next tick
    };
    while let Some(ev) = events.next().await {
        if let OpEvent::Done { result, .. } = ev {
            match result {
                Ok(_) => tracing::info!(op, "back in rotation after the drain lease lapsed"),
                Err(f) => {
                    tracing::warn!(op, code = %f.code, "the lapsed drain was not undone: {}", f.message)
                }
            }
        }
    }
    state.contact.touch();
}
