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
/// How often the connection count is read: the pause after the first read
/// doubles from `FIRST_POLL` up to `POLL`. Connections that close soon after
/// the drain (most, once the load balancer stops sending) are seen within
/// milliseconds instead of a whole `POLL` later, and a host with long-lived
/// connections has its table read no more than every `POLL` (a busy host's
/// /proc/net/tcp takes tens of milliseconds to read).
const FIRST_POLL: Duration = Duration::from_millis(5);
const POLL: Duration = Duration::from_millis(100);

/// The pauses between reads of the connection count.
fn pauses() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_POLL), |p| Some((*p * 2).min(POLL)))
}

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
    if let Err(e) = ctx
        .phase_behind(Phase::Marked, serde_json::Value::Null)
        .await
    {
        return Err(put_back(state, e).await);
    }
    if let Some(argv) = &cfg.drain_command
        && let Err(e) = command::run_argv(argv, timeout).await
    {
        let mut e = StepError::from(e);
        e.message = format!("drain hook failed: {}", e.message);
        return Err(put_back(state, e).await);
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
    let mut pauses = pauses();
    while remaining > 0 && Instant::now() < deadline {
        let pause = pauses.next().unwrap_or(POLL);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        remaining = count(&cfg.gateway_ports).await;
    }
    if remaining > 0 {
        tracing::warn!(
            remaining,
            ?timeout,
            "connections still open at the drain deadline"
        );
    }
    // A drain that cannot be recorded fails, and a failed drain puts the
    // host back in rotation before it reports.
    let recorded = async {
        ctx.phase_behind(
            Phase::Drained,
            serde_json::json!({ "remaining": remaining }),
        )
        .await?;
        ctx.settle().await
    };
    if let Err(e) = recorded.await {
        return Err(put_back(state, e).await);
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

/// A drain that fails after the host was marked draining puts it back in
/// rotation before it reports, and says whether that worked (and, when it
/// did not, why, in the detail).
async fn put_back(state: &AgentState, mut e: StepError) -> StepError {
    let back = back_in_rotation(state).await;
    if let Err(b) = &back {
        tracing::warn!(error = %b.message, "putting the host back after a failed drain failed");
        e.detail.push_str(&format!(
            "\nputting the host back failed too, it may be out of rotation: {}",
            b.message
        ));
    }
    e.reverted(back.is_ok())
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::journal::Journal;
    use crate::kind::Intent;
    use crate::op::Ops;
    use crate::op::tests::{Refusing, result_of};

    /// A DP agent whose drain is a hook and whose journal refuses `refuse`.
    fn agent(dir: &Path, refuse: &'static str) -> Arc<AgentState> {
        let text = format!(
            "{}[drain]\ndrain_command = [\"true\"]\nundrain_command = [\"true\"]\n",
            crate::config::tests::minimal()
        );
        let config = crate::config::parse(&text, dir).unwrap();
        std::fs::create_dir_all(&config.agent.state_dir).unwrap();
        let mut state = AgentState::open(config).unwrap();
        let journal = Journal::with_sink(Refusing {
            refuse,
            kept: Arc::new(Mutex::new(Vec::new())),
        })
        .unwrap();
        state.ops = Ops::new(journal, Default::default());
        Arc::new(state)
    }

    async fn drain_on(state: &Arc<AgentState>) -> rollgate::outcome::StepResult {
        drain_within(state, Duration::from_secs(1)).await
    }

    async fn drain_within(
        state: &Arc<AgentState>,
        timeout: Duration,
    ) -> rollgate::outcome::StepResult {
        result_of(start_drain(state, "t/dp-1/drain", timeout)).await
    }

    /// Starts drain operation `op`, as the rpc layer would.
    fn start_drain(state: &Arc<AgentState>, op: &str, timeout: Duration) -> crate::op::Started {
        let s = state.clone();
        state.ops.start(
            op,
            Intent::Drain {
                timeout_ms: timeout.as_millis() as u64,
            },
            move |ctx| async move {
                let r = drain(&s, &ctx, Some(timeout)).await;
                crate::steps::conclude(&s, &ctx, r).await
            },
        )
    }

    #[tokio::test]
    async fn a_drain_the_disk_refused_puts_the_host_back_in_rotation() {
        for refuse in ["\"marked\"", "\"drained\""] {
            let dir = tempfile::tempdir().unwrap();
            let state = agent(dir.path(), refuse);
            let f = drain_on(&state)
                .await
                .expect_err("a drain whose record the disk refused succeeded");
            assert!(f.reverted, "{refuse}: {f:?}");
            assert!(f.message.contains("no space left on device"), "{f:?}");
            assert_eq!(state.drain.get(), Drain::Ready, "{refuse}: left drained");
            // What a restarted agent reads back.
            let saved = crate::drain_state::DrainCtl::load(&dir.path().join("state"));
            assert_eq!(saved.get(), Drain::Ready, "{refuse}: saved drained");
        }
    }

    #[tokio::test]
    async fn a_recorded_drain_leaves_the_host_out_of_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let state = agent(dir.path(), "nothing is refused");
        let r = drain_on(&state).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(state.drain.get(), Drain::Draining);
    }

    #[test]
    fn the_connection_count_is_read_again_soon_then_every_poll() {
        let ms: Vec<u128> = pauses().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 100, 100, 100]);
    }

    /// A drain waits for the gateway port's established connections to
    /// close: with one held open it runs to its deadline and says one is
    /// left; with it closed once the drain waits, it ends soon after, with
    /// none left, long before its deadline.
    #[tokio::test]
    async fn a_drain_waits_for_open_connections_to_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}[drain]\ndrain_command = [\"true\"]\nundrain_command = [\"true\"]\ngateway_ports = [{port}]\n",
            crate::config::tests::minimal()
        );
        let config = crate::config::parse(&text, dir.path()).unwrap();
        std::fs::create_dir_all(&config.agent.state_dir).unwrap();
        let state = Arc::new(AgentState::open(config).unwrap());
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (served, _) = listener.accept().unwrap();
        assert_eq!(count(&[port]).await, 1, "the connection is seen");

        let held = drain_within(&state, Duration::from_millis(300)).await;
        match held {
            Ok(rollgate::outcome::StepOutput::Drain(d)) => {
                assert_eq!(d.remaining_connections, 1, "{d:?}");
                assert!(d.waited_ms >= 300, "did not wait for it: {d:?}");
            }
            other => panic!("{other:?}"),
        }

        let started = start_drain(&state, "t/dp-1/drain-again", Duration::from_secs(10));
        let crate::op::Started::Events(mut events) = started else {
            panic!("the drain did not start");
        };
        let mut open = Some((client, served));
        let mut closed_at = None;
        let (result, ended_at) = loop {
            match futures::StreamExt::next(&mut events).await {
                Some(crate::op::OpEvent::Progress(p)) if p.phase == "connections" => {
                    drop(open.take());
                    closed_at = Some(Instant::now());
                }
                Some(crate::op::OpEvent::Done { result, .. }) => break (result, Instant::now()),
                Some(_) => {}
                None => panic!("the drain's events ended without a result"),
            }
        };
        let closed_at = closed_at.expect("the drain never waited for connections");
        assert!(ended_at >= closed_at);
        match result {
            Ok(rollgate::outcome::StepOutput::Drain(d)) => {
                assert_eq!(d.remaining_connections, 0, "{d:?}");
                assert!(d.waited_ms < 10_000, "ran into its deadline: {d:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
