//! Drain and Undrain: take the host out of its load balancer and wait for
//! in-flight work, or put it back. A failed drain puts the host back in
//! rotation before it reports, so no failure leaves a host drained unsaid.

use std::time::{Duration, Instant};

use rollgate::outcome::{Drained, StepOutput};

use super::StepRun;
use crate::command;
use crate::drain_state::Drain;
use crate::kind::Phase;
use crate::netstat;
use crate::op::{OpCtx, StepError};
use crate::state::AgentState;

/// How long to wait for the load balancer to ask agent-check after a change.
const LB_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often the connection count is read.
const POLL: Duration = Duration::from_millis(100);

pub async fn drain(state: &AgentState, ctx: &OpCtx, timeout: Option<Duration>) -> StepRun {
    let cfg = &state.config.drain;
    if cfg.agent_check_listen.is_none() && cfg.drain_command.is_none() {
        return Err(StepError::precondition(
            "this host has neither [drain] agent_check_listen nor drain_command: it cannot be taken out of its load balancer",
        ));
    }
    let timeout = timeout.unwrap_or(cfg.timeout);
    let start = Instant::now();
    let checks_before = state.drain.checks().borrow().0;
    set(state, Drain::Draining)?;
    // Recovery puts a drained host back in rotation whatever phases the
    // journal shows, so neither phase here needs the disk before going on.
    ctx.phase_behind(Phase::Marked, serde_json::Value::Null)
        .await?;
    if let Some(argv) = &cfg.drain_command
        && let Err(e) = command::run_argv(argv, timeout).await
    {
        let e = StepError::from(e);
        let back = back_in_rotation(state).await;
        let mut detail = e.detail;
        if let Err(b) = &back {
            detail.push_str(&format!(
                "\nputting the host back failed too, it may be out of rotation: {}",
                b.message
            ));
        }
        return Err(
            StepError::new(e.code, format!("drain hook failed: {}", e.message))
                .detail(detail)
                .reverted(back.is_ok()),
        );
    }
    let lb_acknowledged = wait_lb(state, checks_before, Drain::Draining).await;
    ctx.progress(
        "connections",
        "waiting for established connections to finish",
        0,
        timeout.as_millis() as u64,
    );
    let deadline = start + timeout;
    let mut remaining = count(&cfg.gateway_ports).await;
    while remaining > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        remaining = count(&cfg.gateway_ports).await;
    }
    if remaining > 0 {
        tracing::warn!(
            remaining,
            ?timeout,
            "connections still open at the drain deadline"
        );
    }
    ctx.phase_behind(
        Phase::Drained,
        serde_json::json!({ "remaining": remaining }),
    )
    .await?;
    // A drain that cannot be recorded fails, and a failed drain puts the
    // host back in rotation before it reports.
    if let Err(e) = ctx.settle().await {
        let back = back_in_rotation(state).await;
        return Err(e.reverted(back.is_ok()));
    }
    Ok(StepOutput::Drain(Drained {
        remaining_connections: remaining as u32,
        lb_acknowledged,
        waited_ms: start.elapsed().as_millis() as u64,
    }))
}

pub async fn undrain(state: &AgentState, ctx: &OpCtx) -> StepRun {
    let checks_before = state.drain.checks().borrow().0;
    back_in_rotation(state).await?;
    ctx.phase_behind(Phase::Ready, serde_json::Value::Null)
        .await?;
    wait_lb(state, checks_before, Drain::Ready).await;
    Ok(StepOutput::Undrain)
}

/// Established connections on the gateway ports. Reading /proc/net/tcp on a
/// busy host takes tens of milliseconds: off the agent's only thread.
async fn count(ports: &[u16]) -> usize {
    let ports = ports.to_vec();
    tokio::task::spawn_blocking(move || netstat::established_on(&ports))
        .await
        .unwrap_or(0)
}

/// Puts the host back into its load balancer the way it is configured: the
/// undrain hook when there is one, and agent-check `ready`.
pub async fn back_in_rotation(state: &AgentState) -> Result<(), StepError> {
    if let Some(argv) = &state.config.drain.undrain_command {
        command::run_argv(argv, state.config.drain.timeout)
            .await
            .map_err(|e| {
                let e = StepError::from(e);
                StepError::new(e.code, format!("undrain hook failed: {}", e.message))
                    .detail(e.detail)
            })?;
    }
    set(state, Drain::Ready)
}

pub fn set(state: &AgentState, d: Drain) -> Result<(), StepError> {
    state
        .drain
        .set(d)
        .map_err(|e| StepError::internal(format!("cannot save the drain state: {e}")))
}

/// Waits until the load balancer has been told `target` by agent-check
/// (a query after `before`), when one has asked at all since the agent
/// started. True when it has.
async fn wait_lb(state: &AgentState, before: u64, target: Drain) -> bool {
    if state.config.drain.agent_check_listen.is_none() {
        return false;
    }
    let mut rx = state.drain.checks();
    if before == 0 {
        // No load balancer has asked yet; waiting for one proves nothing.
        return false;
    }
    let wait = rx.wait_for(|(n, served)| *n > before && *served == target);
    tokio::time::timeout(LB_ACK_WAIT, wait)
        .await
        .is_ok_and(|r| r.is_ok())
}
