//! The driver's order, batches, canary, and how it halts or quarantines.

use std::collections::BTreeSet;
use std::time::Duration;

use rollgate::outcome::StepOutput;
use rollgate::role::Role;

use super::harness::*;
use super::{Call, Effect, ScriptedFleet, Step};
use crate::fleet::FleetApi;
use crate::rollout::log::Outcome;
use crate::rollout::steps::op_id;

// === tests: the scripted agent itself ===

#[tokio::test]
async fn a_scripted_agent_answers_a_repeated_operation_from_its_record() {
    let s = setup(1, 1);
    let fleet = s.fleet();
    let rel = &s.catalog.releases[1];
    let hello = fleet.hello("dp-1").await.expect("facts");
    assert_eq!((hello.role, hello.installed), (Role::Dp, Some(v("3.3.0"))));
    let staged = fleet
        .stage("dp-1", "op-stage", rel, Default::default())
        .await;
    assert!(matches!(staged, Ok(StepOutput::Stage(_))), "{staged:?}");
    let min = Duration::from_millis(1);
    let first = fleet
        .install("dp-1", "op-install", &rel.version, min, min)
        .await;
    // The host moves on; the same operation id must not act again.
    fleet.lock().hosts.get_mut("dp-1").expect("dp-1").version = v("3.3.0");
    let again = fleet
        .install("dp-1", "op-install", &rel.version, min, min)
        .await;
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    assert_eq!(fleet.version("dp-1"), v("3.3.0"), "the repeat acted");
    assert_eq!(fleet.actions("dp-1", Step::Install, None), 1);
    assert_eq!(fleet.steps("dp-1").len(), 4, "every call is recorded");
    let never = fleet.install("dp-1", "op-2", &v("3.5.0"), min, min).await;
    assert!(
        matches!(never, Err(f) if f.code == rollgate::outcome::FailureCode::Precondition),
        "not staged"
    );
}

// === tests: order, batches, canary ===

#[tokio::test]
async fn stages_then_backs_up_guards_and_upgrades_cps_one_at_a_time_before_any_dp() {
    let s = setup(2, 4).batch("2");
    let fleet = s.fleet();
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Succeeded, &["every host is on the target"]);

    let calls = fleet.calls();
    let n = s.spec.hosts.len();
    let (stages, rest) = calls.split_at(n);
    assert!(stages.iter().all(|c| c.step == Step::Stage), "{stages:?}");
    let staged: BTreeSet<&str> = stages.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(staged.len(), n, "every host staged once");
    let stages_done = stages.iter().map(ended).max().expect("stages");
    assert!(
        rest[0].started >= stages_done,
        "nothing after staging starts before it ends"
    );

    let head: Vec<(&str, Step)> = rest[..5]
        .iter()
        .map(|c| (c.host.as_str(), c.step))
        .collect();
    assert_eq!(
        head,
        [
            ("cp-1", Step::Backup),
            ("cp-1", Step::FetchBackup),
            ("cp-1", Step::Fingerprint),
            ("cp-1", Step::Install),
            ("cp-2", Step::Install),
        ]
    );
    assert_eq!(
        rest[2].arg, RID,
        "the guard compares with this rollout's backup"
    );
    assert!(ended(&rest[3]) <= rest[4].started, "CPs go one at a time");
    let cps_done = ended(&rest[4]);
    for c in &rest[5..] {
        assert!(c.host.starts_with("dp-"), "after the CPs only DPs: {c:?}");
        assert!(
            c.started >= cps_done,
            "{c:?} started before the CPs were done"
        );
    }
    for dp in s.dps() {
        assert_eq!(
            fleet.steps(&dp),
            [Step::Stage, Step::Drain, Step::Install, Step::Undrain],
            "{dp}"
        );
    }
    for h in s.names() {
        assert_eq!(fleet.version(&h), v("3.4.0"), "{h}");
        assert!(!fleet.drained(&h), "{h}");
        assert_eq!(fleet.actions(&h, Step::Install, None), 1, "{h}");
    }
    // Every call with an operation id was journalled before it was made,
    // and under the id the driver derives for it.
    let ops: BTreeSet<String> = calls
        .iter()
        .filter(|c| !c.op.is_empty())
        .map(|c| c.op.clone())
        .collect();
    assert_eq!(ops, begun_ops(&ran.records));
    assert!(ops.contains(&op_id(RID, "dp-1", "install", Some(&v("3.4.0")))));
    assert!(ran.notes().contains(&"backup_copy".to_string()));
}

#[tokio::test]
async fn dp_batches_follow_the_plan_canary_first_and_one_batch_at_a_time() {
    let hop = v("3.4.0");
    let names = |ns: &[&[&str]]| -> Vec<Vec<String>> {
        ns.iter()
            .map(|b| b.iter().map(|h| h.to_string()).collect())
            .collect()
    };
    let cases = [
        (
            setup(1, 5).canary(1).batch("2"),
            names(&[&["dp-1"], &["dp-2", "dp-3"], &["dp-4", "dp-5"]]),
        ),
        (
            setup(1, 5).canary(2).batch("50%"),
            names(&[&["dp-1", "dp-2"], &["dp-3", "dp-4", "dp-5"]]),
        ),
        (
            // dp-2 is already there: it is in no batch and is not touched.
            setup(1, 4).canary(1).batch("2").from("dp-2", "3.4.0"),
            names(&[&["dp-1"], &["dp-3", "dp-4"]]),
        ),
    ];
    let hop = &hop;
    let runs = cases.iter().map(|(s, want)| async move {
        assert_eq!(&s.spec.batches(hop), want, "the plan");
        let fleet = s.fleet();
        let ran = s.run(&fleet).await;
        ran.expect(Outcome::Succeeded, &[]);
        assert_batches(&fleet, want, s.spec.policy.min_healthy());
        for dp in s.dps() {
            assert_eq!(fleet.version(&dp), *hop, "{dp}");
        }
        fleet
    });
    let fleets = futures::future::join_all(runs).await;
    assert!(
        fleets[2].steps("dp-2").is_empty(),
        "a host on the target is left alone"
    );
}

#[tokio::test]
async fn hosts_are_watched_closely_from_the_batch_before_theirs_and_not_before() {
    let s = setup(1, 7).canary(1).batch("2");
    let fleet = s.fleet();
    fleet.fail("dp-2", Step::Install, health_gate_failed("3.3.0"));
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["dp-2", "install failed"]);

    // Every host the rollout changes is watched closely before its first
    // change (the CP's install, a DP's drain)...
    for host in ["cp-1", "dp-1", "dp-2", "dp-3"] {
        let first_change = fleet
            .calls()
            .into_iter()
            .find(|c| {
                c.host == host
                    && matches!(
                        c.step,
                        Step::Drain | Step::Install | Step::Rollback | Step::Undrain
                    )
            })
            .unwrap_or_else(|| panic!("{host} was not changed"));
        let closely = fleet
            .watched_closely(host)
            .unwrap_or_else(|| panic!("{host} was changed without a close watch"));
        assert!(
            closely <= first_change.started,
            "{host}: watched closely after its {:?}",
            first_change.step
        );
    }
    // ...the next batch's hosts from the start of the batch before theirs
    // (so its health check reads fresh looks)...
    let second_batch = fleet
        .calls()
        .into_iter()
        .find(|c| c.host == "dp-2" && c.step == Step::Drain)
        .unwrap();
    for host in ["dp-4", "dp-5"] {
        assert_eq!(fleet.steps(host), [Step::Stage], "{host}");
        let closely = fleet
            .watched_closely(host)
            .unwrap_or_else(|| panic!("{host}"));
        assert!(closely <= second_batch.started, "{host}");
    }
    // ...and a host two batches away is not probed at that pace.
    for host in ["dp-6", "dp-7"] {
        assert_eq!(fleet.steps(host), [Step::Stage], "{host}");
        assert_eq!(fleet.watched_closely(host), None, "{host}");
    }
}

/// The last call the driver made on each host (skipping replayed ones).
fn last_ops(fleet: &ScriptedFleet) -> std::collections::HashMap<String, String> {
    fleet
        .calls()
        .into_iter()
        .filter(|c| !c.replayed && !c.op.is_empty())
        .map(|c| (c.host, c.op))
        .collect()
}

#[tokio::test]
async fn the_closing_report_takes_each_host_from_a_report_after_its_last_step() {
    let s = setup(1, 4).canary(1).batch("2");
    let fleet = s.fleet();
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Succeeded, &[]);
    let last = last_ops(&fleet);
    // Every host's last report came after its last step (the driver's
    // final health confirmation waits for one): none is asked again.
    for host in ["cp-1", "dp-1", "dp-2", "dp-3", "dp-4"] {
        let h = ran.settled.get(host).unwrap_or_else(|| {
            panic!(
                "{host} would be asked again: {:?}; last {:?}; calls {:?}",
                ran.settled.keys(),
                last.get(host),
                fleet
                    .calls()
                    .iter()
                    .filter(|c| c.host == host)
                    .map(|c| (
                        c.step,
                        c.op.clone(),
                        c.ended.map(|e| ran.ended_at.saturating_duration_since(e))
                    ))
                    .collect::<Vec<_>>()
            )
        });
        assert_eq!(h.last_operation, last[host], "{host}");
        assert_eq!(h.installed_version, "3.4.0", "{host}");
    }
}

#[tokio::test]
async fn a_host_whose_last_step_never_answered_is_asked_at_the_end() {
    let s = setup(1, 4).canary(1).batch("2");
    let fleet = s.fleet();
    // dp-1's agent dies during its drain: the call never returns and the
    // host stops reporting.
    fleet.on_first_call(Step::Drain, Effect::Silent("dp-1".into()));
    let ran = s.run(&fleet).await;
    assert_ne!(ran.outcome, Outcome::Succeeded, "{}", ran.reason);
    assert!(
        !ran.settled.contains_key("dp-1"),
        "a host whose step never answered was taken from its watch"
    );
    // Every host taken from its watch reported after its last step.
    let last = last_ops(&fleet);
    for (host, h) in &ran.settled {
        if let Some(op) = last.get(host) {
            assert_eq!(&h.last_operation, op, "{host}");
        }
    }
}

// === tests: failures ===

#[tokio::test]
async fn a_failed_canary_install_halts_with_the_canary_undrained_and_no_batch_after() {
    let s = setup(1, 4);
    let fleet = s.fleet();
    fleet.fail("dp-1", Step::Install, health_gate_failed("3.3.0"));
    let ran = s.run(&fleet).await;
    ran.expect(
        Outcome::Halted,
        &["dp-1", "install failed", "HEALTH_GATE_FAILED"],
    );

    assert_eq!(
        fleet.steps("dp-1"),
        [Step::Stage, Step::Drain, Step::Install, Step::Undrain],
        "healthy after the revert: back in rotation"
    );
    assert_eq!(fleet.version("dp-1"), v("3.3.0"));
    for dp in ["dp-2", "dp-3", "dp-4"] {
        assert_eq!(fleet.steps(dp), [Step::Stage], "{dp} is in a later batch");
    }
    for dp in s.dps() {
        assert!(!fleet.drained(&dp), "{dp} left drained");
    }
}

#[tokio::test]
async fn a_failed_host_that_is_not_healthy_stays_out_of_rotation() {
    let s = setup(1, 2);
    let fleet = s.fleet();
    fleet.fail("dp-1", Step::Install, revert_unhealthy("3.3.0"));
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["dp-1", "install failed"]);
    assert_eq!(
        fleet.steps("dp-1"),
        [Step::Stage, Step::Drain, Step::Install]
    );
    assert!(
        fleet.drained("dp-1"),
        "an unhealthy gateway must not take traffic"
    );
    assert_eq!(fleet.steps("dp-2"), [Step::Stage]);
}

#[tokio::test]
async fn a_failed_cp_install_halts_before_any_dp_is_touched() {
    let s = setup(2, 2);
    let fleet = s.fleet();
    fleet.fail("cp-1", Step::Install, health_gate_failed("3.3.0"));
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["cp-1", "install failed"]);
    assert_eq!(fleet.version("cp-1"), v("3.3.0"));
    assert!(
        !fleet.steps("cp-2").contains(&Step::Install),
        "one CP at a time"
    );
    for dp in s.dps() {
        assert_eq!(fleet.steps(&dp), [Step::Stage], "{dp}");
    }
}

#[tokio::test]
async fn a_write_after_the_backup_halts_before_the_cp_is_touched() {
    let s = setup(2, 2);
    let fleet = s.fleet();
    fleet.on(
        "cp-1",
        Step::Backup,
        Effect::DbWrite("public.routes".into()),
    );
    let ran = s.run(&fleet).await;
    ran.expect(
        Outcome::Halted,
        &["public.routes", "the CP was not touched"],
    );
    let touched: Vec<Call> = fleet
        .calls()
        .into_iter()
        .filter(|c| matches!(c.step, Step::Install | Step::Drain | Step::Rollback))
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    for h in s.names() {
        assert_eq!(fleet.version(&h), v("3.3.0"), "{h}");
    }

    // Two hops: a write during the first hop's DP batches stops the
    // second hop before its CP swap, against the baseline taken after the
    // first hop's CPs (their migrations are not the operator's writes).
    let s = setup(1, 2).hops(&["3.4.0", "3.5.0"]);
    let fleet = s.fleet();
    fleet.on(
        "dp-1",
        Step::Undrain,
        Effect::DbWrite("public.services".into()),
    );
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["public.services"]);
    for h in s.names() {
        assert_eq!(
            fleet.version(&h),
            v("3.4.0"),
            "{h} finished the first hop only"
        );
    }
    assert!(ran.notes().contains(&"baseline:1".to_string()));
}

#[tokio::test]
async fn failures_within_the_budget_are_quarantined_and_beyond_it_halt() {
    let s = setup(1, 5).canary(1).batch("2").max_failures(1);

    // One failure: quarantined on its old release, the rollout goes on.
    let one = s.fleet();
    one.fail("dp-2", Step::Install, health_gate_failed("3.3.0"));

    // A second failure in a later batch exceeds the budget.
    let two = s.fleet();
    two.fail("dp-2", Step::Install, health_gate_failed("3.3.0"));
    two.fail("dp-4", Step::Install, health_gate_failed("3.3.0"));

    // Two failures in one batch, with room for one.
    let same = s.fleet();
    same.fail("dp-2", Step::Install, health_gate_failed("3.3.0"));
    same.fail("dp-3", Step::Install, health_gate_failed("3.3.0"));

    let (r1, r2, r3) = tokio::join!(s.run(&one), s.run(&two), s.run(&same));

    r1.expect(Outcome::Quarantined, &["quarantined", "dp-2"]);
    assert!(r1.notes().contains(&"quarantined:dp-2".to_string()));
    assert_eq!(one.version("dp-2"), v("3.3.0"));
    for dp in ["dp-1", "dp-3", "dp-4", "dp-5"] {
        assert_eq!(one.version(dp), v("3.4.0"), "{dp}");
    }

    r2.expect(Outcome::Halted, &["dp-4", "install failed"]);
    assert_eq!(two.version("dp-4"), v("3.3.0"));
    assert_eq!(
        two.version("dp-5"),
        v("3.4.0"),
        "dp-5 shares dp-4's batch and finishes"
    );

    r3.expect(
        Outcome::Halted,
        &[
            "more hosts failed than --max-failures allows",
            "dp-2",
            "dp-3",
        ],
    );
    for dp in ["dp-4", "dp-5"] {
        assert_eq!(same.steps(dp), [Step::Stage], "{dp}");
    }

    for (fleet, name) in [(&one, "one"), (&two, "two"), (&same, "same")] {
        for dp in s.dps() {
            assert!(!fleet.drained(&dp), "{name}: {dp} left drained");
        }
    }
}

#[tokio::test]
async fn a_dp_that_turns_unhealthy_after_its_batch_passed_halts_the_rollout() {
    // dp-2's install and hold (300 ms each) outlast the two bad reports
    // (250 ms apart) that make an alarm, so dp-3's batch never starts.
    // A DP-only fleet (no CP install to wait for).
    let s = setup(0, 3).canary(1).batch("1").min_healthy_ms(300);
    let fleet = s.fleet();
    fleet.on("dp-2", Step::Drain, Effect::Unhealthy("dp-1".into()));
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["dp-1 turned unhealthy"]);
    let turned = call(&fleet.calls(), "dp-2", Step::Drain).started;
    let noticed = ran.ended_at - turned;
    // ARCHITECTURE.md "Targets": halted within 1 s of a DP turning unhealthy.
    assert!(
        noticed < Duration::from_secs(1),
        "halted {noticed:?} after dp-1 turned"
    );
    assert_eq!(
        fleet.steps("dp-3"),
        [Step::Stage],
        "no batch after the alarm"
    );
    assert_eq!(
        fleet.version("dp-2"),
        v("3.4.0"),
        "the batch in flight finished"
    );
    for dp in s.dps() {
        assert!(!fleet.drained(&dp), "{dp}");
    }
}

#[tokio::test]
async fn a_dp_that_turns_unhealthy_while_its_batch_holds_is_rolled_back() {
    // A hold long enough for two reports at the watch interval.
    let s = setup(0, 3).canary(1).min_healthy_ms(800);
    let fleet = s.fleet();
    fleet.on("dp-1", Step::Undrain, Effect::Unhealthy("dp-1".into()));
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["dp-1 turned unhealthy"]);
    assert_eq!(
        fleet.steps("dp-1"),
        [
            Step::Stage,
            Step::Drain,
            Step::Install,
            Step::Undrain,
            Step::Drain,
            Step::Rollback,
            Step::Undrain
        ]
    );
    assert_eq!(fleet.version("dp-1"), v("3.3.0"));
    assert!(!fleet.drained("dp-1"));
    for dp in ["dp-2", "dp-3"] {
        assert_eq!(fleet.steps(dp), [Step::Stage], "{dp}");
    }
}

#[tokio::test]
async fn a_silent_agent_halts_the_rollout_as_lost() {
    // Silent in the middle of its own install: the step is given up.
    let s = setup(1, 3).canary(1).silence_ms(500);
    let busy = s.fleet();
    busy.on("dp-1", Step::Drain, Effect::Silent("dp-1".into()));

    // Silent from the start: nothing changes anywhere.
    let idle = s.fleet();
    idle.set_silent("dp-3");

    let (r1, r2) = tokio::join!(s.run(&busy), s.run(&idle));

    r1.expect(Outcome::Disconnected, &["agent dp-1 stopped answering"]);
    let calls = busy.calls();
    let install = call(&calls, "dp-1", Step::Install);
    assert!(install.ended.is_none() && !install.acted, "{install:?}");
    let gone = call(&calls, "dp-1", Step::Drain).started;
    let noticed = r1.ended_at - gone;
    assert!(
        noticed < s.spec.policy.agent_silence() + Duration::from_secs(1),
        "halted {noticed:?} after dp-1 went silent"
    );
    assert_eq!(busy.version("dp-1"), v("3.3.0"));
    for dp in ["dp-2", "dp-3"] {
        assert_eq!(busy.steps(dp), [Step::Stage], "{dp}");
    }

    r2.expect(Outcome::Disconnected, &["agent dp-3 stopped answering"]);
    assert!(idle.calls().is_empty(), "{:?}", idle.calls());
}

// === tests: halting and the load balancer ===

#[tokio::test]
async fn an_interrupt_during_staging_starts_no_new_stage_call() {
    let s = setup(1, 40);
    let fleet = s.fleet();
    fleet.slow_stage(Duration::from_millis(400));
    let (tx, rx) = tokio::sync::watch::channel(false);
    fleet.on_first_call(Step::Stage, Effect::Interrupt(tx.clone()));
    let ran = s.run_with(&fleet, (tx, rx)).await;
    ran.expect(Outcome::Interrupted, &["rollgate resume"]);
    let calls = fleet.calls();
    let stages: Vec<&Call> = calls.iter().filter(|c| c.step == Step::Stage).collect();
    assert_eq!(stages.len(), 1, "only the call in flight: {stages:?}");
    let took = ran.ended_at - stages[0].started;
    assert!(
        took < Duration::from_millis(400) + Duration::from_secs(1),
        "halted {took:?} after Ctrl-C"
    );
}

#[tokio::test]
async fn a_dp_left_drained_by_an_earlier_rollout_is_put_back_first() {
    let s = setup(1, 3).from("dp-2", "3.4.0").drained("dp-2");
    let fleet = s.fleet();
    fleet.set_drained("dp-2");
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Succeeded, &[]);
    assert_eq!(
        fleet.steps("dp-2"),
        [Step::Undrain],
        "on the target already"
    );
    assert!(!fleet.drained("dp-2"));
    let first_undrain = fleet
        .calls()
        .iter()
        .position(|c| c.step == Step::Undrain)
        .expect("an undrain");
    let first_stage = fleet
        .calls()
        .iter()
        .position(|c| c.step == Step::Stage)
        .expect("a stage");
    assert!(
        first_undrain < first_stage,
        "back in rotation before any work"
    );
}

#[tokio::test]
async fn a_rollout_never_succeeds_with_a_dp_out_of_rotation() {
    // Drained after the plan looked: every step ends, but dp-2 is out.
    let s = setup(1, 3).from("dp-2", "3.4.0");
    let fleet = s.fleet();
    fleet.set_drained("dp-2");
    let ran = s.run(&fleet).await;
    ran.expect(Outcome::Halted, &["dp-2", "not every DP is in rotation"]);
}
