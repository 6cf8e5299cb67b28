//! The health gate after a start: the gateway must become healthy (process
//! running, every probe 2xx, reporting the target version) within the start
//! deadline, then stay so — same process, no relapse — for `min_healthy`.

use std::time::{Duration, Instant};

use rollgate::version::Version;

use crate::health::Observation;
use crate::op::OpCtx;
use crate::service::ProcessStatus;
use crate::state::AgentState;

/// How often the gate looks once the gateway is healthy (during the hold),
/// and the longest pause before that.
const POLL: Duration = Duration::from_millis(200);
/// The first pause after a start. Until the gateway is healthy the pause
/// doubles from here up to `FAST_POLL` for the first `FAST_WINDOW`, then up
/// to `POLL`: a gateway ready within a couple of seconds (most restarts) is
/// seen within 10 ms of it, and a slow one is not probed more than every
/// `POLL` after that. A batch waits for its slowest host, which is seen
/// late by up to the cap; a look at a gateway not yet listening is one
/// refused connect.
const FIRST_POLL: Duration = Duration::from_millis(5);
const FAST_POLL: Duration = Duration::from_millis(10);
const FAST_WINDOW: Duration = Duration::from_secs(2);
/// A stopped process counts as "exited" only after this long, so a service
/// manager that shows the new process a moment after the start (a container
/// being created) is not failed for it.
const EXIT_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct GatePassed {
    pub pid: u32,
    pub healthy_for: Duration,
}

#[derive(Debug, Clone)]
pub struct GateFailed {
    pub reason: String,
    pub last: Observation,
}

/// Why an observation does not count as healthy on `target`; None if it does.
pub fn verdict(obs: &Observation, target: &Version, check_version: bool) -> Option<String> {
    if !obs.healthy() {
        return Some(obs.describe());
    }
    if check_version {
        let running = obs.running_version.as_deref().unwrap_or("");
        let same = running.parse::<Version>().is_ok_and(|v| v == *target);
        if !same {
            return Some(format!("reports version {running:?}, expected {target}"));
        }
    }
    None
}

pub async fn gate(
    state: &AgentState,
    ctx: Option<&OpCtx>,
    target: &Version,
    health_timeout: Duration,
    min_healthy: Duration,
) -> Result<GatePassed, GateFailed> {
    let check_version = state.prober.reads_version();
    let start = Instant::now();
    let mut healthy_since: Option<(Instant, u32)> = None;
    let mut last_report = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        let obs = state.prober.observe(&state.service, &state.installer).await;
        let pid = obs.process.pid();
        match (verdict(&obs, target, check_version), healthy_since) {
            (None, None) => {
                let pid = pid.unwrap_or(0);
                healthy_since = Some((Instant::now(), pid));
                if let Some(c) = ctx {
                    c.progress(
                        "health",
                        format!("healthy on {target} (pid {pid}); holding for {min_healthy:?}"),
                        0,
                        min_healthy.as_millis() as u64,
                    );
                }
            }
            (None, Some((_, first_pid))) => {
                if pid.unwrap_or(0) != first_pid {
                    return Err(GateFailed {
                        reason: format!(
                            "the gateway restarted during the hold (pid {first_pid} → {})",
                            pid.unwrap_or(0)
                        ),
                        last: obs,
                    });
                }
            }
            (Some(why), Some((since, _))) => {
                return Err(GateFailed {
                    reason: format!(
                        "became unhealthy {:.1}s after passing: {why}",
                        since.elapsed().as_secs_f64()
                    ),
                    last: obs,
                });
            }
            (Some(why), None) => {
                if matches!(obs.process, ProcessStatus::Stopped) && start.elapsed() > EXIT_GRACE {
                    return Err(GateFailed {
                        reason: format!("the gateway exited: {why}"),
                        last: obs,
                    });
                }
                if start.elapsed() >= health_timeout {
                    return Err(GateFailed {
                        reason: format!("not healthy within {health_timeout:?}: {why}"),
                        last: obs,
                    });
                }
            }
        }
        if let Some((since, pid)) = healthy_since {
            let held = since.elapsed();
            // A hold of T lasts T: the last pause ends when the hold does.
            pause = POLL.min(min_healthy.saturating_sub(held));
            if held >= min_healthy {
                return Ok(GatePassed {
                    pid,
                    healthy_for: held,
                });
            }
            if let Some(c) = ctx.filter(|_| last_report.elapsed() >= Duration::from_secs(1)) {
                last_report = Instant::now();
                c.progress(
                    "health",
                    "holding healthy",
                    held.as_millis() as u64,
                    min_healthy.as_millis() as u64,
                );
            }
        }
        tokio::time::sleep(pause).await;
        if healthy_since.is_none() {
            let cap = if start.elapsed() < FAST_WINDOW {
                FAST_POLL
            } else {
                POLL
            };
            pause = (pause * 2).min(cap);
        }
    }
}
