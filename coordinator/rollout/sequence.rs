//! The step sequence of one DP inside a batch — drain, the step, undrain —
//! for an upgrade and for a rollback, with the same rules for putting the
//! host back into rotation.

use rollgate::lb::LbState;
use rollgate::version::Version;

use super::steps::{Ctx, op_id};
use rollgate::outcome::Failure;

use crate::fleet::{FleetApi, is_lost, lost};

/// How one host's sequence ended.
#[derive(Debug, Clone)]
pub enum HostEnd {
    Done,
    /// The rollout was halting before the host's step began: nothing was
    /// changed, and the host is in rotation (undrained if it had been
    /// drained already).
    NotStarted,
    Failed {
        step: String,
        failure: Failure,
        left_drained: bool,
    },
}

/// Whether a sequence may start when the rollout is halting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenStopping {
    /// New work: not begun once the rollout halts.
    Skip,
    /// Putting a host back (a rollback): always carried through.
    Run,
}

/// The steps of one DP sequence: (step name shown, op id prefix).
struct Names {
    drain: (&'static str, &'static str),
    middle: (&'static str, &'static str),
    undrain: (&'static str, &'static str),
}

/// Runs one step of a sequence: new work is held back once the rollout
/// halts (None), a rollback always goes on.
async fn start<F, Fut>(
    ctx: &Ctx<F>,
    when_stopping: WhenStopping,
    host: &str,
    step: &str,
    shown: &Version,
    op: &str,
    call: impl FnOnce() -> Fut,
) -> Option<crate::fleet::StepOutcome>
where
    F: FleetApi,
    Fut: std::future::Future<Output = crate::fleet::StepOutcome>,
{
    match when_stopping {
        WhenStopping::Skip => {
            ctx.run_unless_halting(host, step, Some(shown), op, call)
                .await
        }
        WhenStopping::Run => Some(ctx.run(host, step, Some(shown), op, call).await),
    }
}

/// `base` in round `round`: rounds after the first get a number.
fn numbered(base: &str, round: usize) -> String {
    if round == 1 {
        base.to_string()
    } else {
        format!("{base}.{round}")
    }
}

/// drain → `middle` → undrain on one DP. When `middle` fails the agent has put
/// the old release back; the host returns to rotation only if that release
/// is healthy, and a failure always says whether the host was left drained.
///
/// A halt that comes between the drain and `middle` puts the host back
/// (a `…-stopped` undrain) instead of starting `middle`. A later resume
/// drains it again under the next round's operation ids, so no journalled
/// step is mistaken for one that still holds. The same goes for a drain an
/// earlier run journalled that has lapsed since: an agent left drained with
/// no coordinator in touch puts its host back once its drain lease runs
/// out, so a resume that finds the host in rotation before `middle` drains
/// it again in the next round.
async fn drained<F, Fut>(
    ctx: &Ctx<F>,
    host: &str,
    shown: &Version,
    suffix: &Version,
    names: Names,
    when_stopping: WhenStopping,
    middle: impl FnOnce(String) -> Fut,
) -> HostEnd
where
    F: FleetApi,
    Fut: std::future::Future<Output = crate::fleet::StepOutcome>,
{
    let p = ctx.policy.clone();
    let op = |s: &str| op_id(&ctx.rid, host, s, Some(suffix));
    // A step already begun (this is a resume) is followed whatever happens.
    let begun = |o: &str| ctx.log().begun(o);
    let stopped_base = format!("{}-stopped", names.undrain.1);
    let stopped = |round: usize| op(&numbered(&stopped_base, round));
    let drain_round = |round: usize| op(&numbered(names.drain.1, round));
    let mut round = 1;
    // A round ended when its drain was undone: by us (`…-stopped`), or by
    // the agent's lease (then a later round's drain was begun).
    while begun(&stopped(round)) || begun(&drain_round(round + 1)) {
        round += 1;
    }
    let middle_op = op(names.middle.1);
    let undrain_op = op(names.undrain.1);
    loop {
        let drain_op = drain_round(round);
        // Begun by an earlier run: it may have lapsed since.
        let earlier = begun(&drain_op);
        let Some(drained) = start(
            ctx,
            when_stopping,
            host,
            names.drain.0,
            shown,
            &drain_op,
            || ctx.fleet.drain(host, &drain_op, p.drain_timeout()),
        )
        .await
        else {
            return HostEnd::NotStarted;
        };
        if let Err(failure) = drained {
            // A failed drain undoes itself on the agent, when it says so.
            let left_drained = is_lost(&failure) || !failure.reverted;
            return HostEnd::Failed {
                step: "drain".into(),
                failure,
                left_drained,
            };
        }
        if !earlier || begun(&middle_op) {
            break;
        }
        match ctx.fleet.load_balancer(host).await {
            Ok(LbState::InRotation) => {
                tracing::warn!(host, op = %drain_op, "the host is back in rotation since this drain (its agent's drain lease lapsed): draining it again");
                round += 1;
            }
            Ok(_) => break,
            Err(e) => {
                return HostEnd::Failed {
                    step: "drain".into(),
                    failure: lost(format!(
                        "{host}: cannot tell whether it is still drained: {e}"
                    )),
                    left_drained: true,
                };
            }
        }
    }
    let done = start(
        ctx,
        when_stopping,
        host,
        names.middle.0,
        shown,
        &middle_op,
        || middle(middle_op.clone()),
    )
    .await;
    let Some(done) = done else {
        // Drained, but the rollout halted before the step: put it back.
        let back = stopped(round);
        return match ctx
            .run(host, names.undrain.0, Some(shown), &back, || {
                ctx.fleet.undrain(host, &back)
            })
            .await
        {
            Ok(_) => HostEnd::NotStarted,
            Err(failure) => HostEnd::Failed {
                step: "undrain".into(),
                failure,
                left_drained: true,
            },
        };
    };
    let healthy = match &done {
        Ok(_) => true,
        Err(f) => f.gateway_healthy && !is_lost(f),
    };
    let back = if healthy {
        ctx.run(host, names.undrain.0, Some(shown), &undrain_op, || {
            ctx.fleet.undrain(host, &undrain_op)
        })
        .await
        .map(|_| ())
    } else {
        Err(lost("not healthy: left out of rotation"))
    };
    match (done, back) {
        (Ok(_), Ok(())) => HostEnd::Done,
        (Err(failure), b) => HostEnd::Failed {
            step: names.middle.0.into(),
            failure,
            left_drained: b.is_err(),
        },
        (Ok(_), Err(failure)) => HostEnd::Failed {
            step: "undrain".into(),
            failure,
            left_drained: true,
        },
    }
}

/// One DP: drain, install, undrain.
pub async fn upgrade_dp<F: FleetApi>(
    ctx: std::sync::Arc<Ctx<F>>,
    host: String,
    hop: Version,
) -> HostEnd {
    let p = ctx.policy.clone();
    let names = Names {
        drain: ("drain", "drain"),
        middle: ("install", "install"),
        undrain: ("undrain", "undrain"),
    };
    let (c, h, v) = (&ctx, &host, &hop);
    drained(
        c,
        h,
        v,
        v,
        names,
        WhenStopping::Skip,
        move |op| async move {
            c.fleet
                .install(h, &op, v, p.min_healthy(), p.health_timeout())
                .await
        },
    )
    .await
}

/// One DP back to `to`: drain, rollback, undrain. `tag` separates the op ids
/// of a rollback inside an upgrade from those of `rollgate rollback`.
pub async fn rollback_dp<F: FleetApi>(
    ctx: std::sync::Arc<Ctx<F>>,
    host: String,
    to: Version,
    tag: Option<Version>,
) -> HostEnd {
    let p = ctx.policy.clone();
    let suffix = tag.unwrap_or_else(|| to.clone());
    let names = Names {
        drain: ("rollback-drain", "rb-drain"),
        middle: ("rollback", "rollback"),
        undrain: ("rollback-undrain", "rb-undrain"),
    };
    let (c, h, v) = (&ctx, &host, &to);
    drained(
        c,
        h,
        v,
        &suffix,
        names,
        WhenStopping::Run,
        move |op| async move { c.fleet.rollback(h, &op, v, None, p.health_timeout()).await },
    )
    .await
}
