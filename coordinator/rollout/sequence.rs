//! The step sequence of one DP inside a batch — drain, the step, undrain —
//! for an upgrade and for a rollback, with the same rules for putting the
//! host back into rotation.

use rollgate::version::Version;

use super::driver::HostEnd;
use super::steps::{Ctx, op_id};
use crate::fleet::{FleetApi, StepFailure};

/// The steps of one DP sequence: (step name shown, op id prefix).
struct Names {
    drain: (&'static str, &'static str),
    middle: (&'static str, &'static str),
    undrain: (&'static str, &'static str),
}

/// drain → `middle` → undrain on one DP. When `middle` fails the agent has put
/// the old release back; the host returns to rotation only if that release
/// is healthy, and a failure always says whether the host was left drained.
async fn drained<F, Fut>(
    ctx: &Ctx<F>,
    host: &str,
    shown: &Version,
    suffix: &Version,
    names: Names,
    middle: impl FnOnce(String) -> Fut,
) -> HostEnd
where
    F: FleetApi,
    Fut: std::future::Future<Output = crate::fleet::StepOutcome>,
{
    let p = ctx.policy.clone();
    let op = |s: &str| op_id(&ctx.rid, host, s, Some(suffix));
    let drain_op = op(names.drain.1);
    if let Err(failure) = ctx
        .run(host, names.drain.0, Some(shown), &drain_op, || {
            ctx.fleet.drain(host, &drain_op, p.drain_timeout())
        })
        .await
    {
        // A failed drain undoes itself on the agent, when it says so.
        let left_drained = failure.lost || !failure.reverted;
        return HostEnd::Failed {
            step: "drain".into(),
            failure,
            left_drained,
        };
    }
    let middle_op = op(names.middle.1);
    let done = ctx
        .run(host, names.middle.0, Some(shown), &middle_op, || {
            middle(middle_op.clone())
        })
        .await;
    let undrain_op = op(names.undrain.1);
    let healthy = match &done {
        Ok(_) => true,
        Err(f) => f.gateway_healthy && !f.lost,
    };
    let back = if healthy {
        ctx.run(host, names.undrain.0, Some(shown), &undrain_op, || {
            ctx.fleet.undrain(host, &undrain_op)
        })
        .await
        .map(|_| ())
    } else {
        Err(StepFailure::lost(
            "not healthy: left out of rotation".into(),
        ))
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
    drained(c, h, v, v, names, move |op| async move {
        c.fleet
            .install(h, &op, v, p.min_healthy(), p.health_timeout())
            .await
    })
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
    drained(c, h, v, &suffix, names, move |op| async move {
        c.fleet.rollback(h, &op, v, None, p.health_timeout()).await
    })
    .await
}
