//! Resuming: after Ctrl-C, and from a cut after every record of a journal.

use std::collections::BTreeSet;

use tokio::sync::watch;

use super::harness::*;
use super::{Call, Effect, ScriptedFleet, Step};
use crate::rollout::log::{Outcome, RolloutLog, rollouts_dir};

#[tokio::test]
async fn an_interrupt_starts_nothing_new_and_resume_completes() {
    let s = setup(1, 4).canary(1).batch("2");
    let fleet = s.fleet();
    let (tx, rx) = watch::channel(false);
    fleet.on("dp-2", Step::Drain, Effect::Interrupt(tx.clone()));
    let ran = s.run_with(&fleet, (tx, rx)).await;
    ran.expect(Outcome::Interrupted, &["rollgate resume"]);
    // Ctrl-C came as dp-2's drain ended: its install, a new call, never
    // started and it went back into rotation on its old release.
    assert_eq!(
        fleet.steps("dp-2"),
        [Step::Stage, Step::Drain, Step::Undrain]
    );
    assert_eq!(fleet.version("dp-2"), v("3.3.0"));
    for dp in ["dp-2", "dp-3"] {
        assert!(!fleet.drained(dp), "{dp}");
    }
    assert_eq!(fleet.steps("dp-4"), [Step::Stage], "nothing new starts");

    let mark = fleet.calls().len();
    let log = RolloutLog::open(&ran.journal).expect("the journal");
    let again = drive(log, &s.catalog, &fleet, ran.state, watch::channel(false)).await;
    again.expect(Outcome::Succeeded, &[]);
    let resumed = |host: &str| -> Vec<Step> {
        fleet.calls()[mark..]
            .iter()
            .filter(|c| c.host == host)
            .map(|c| c.step)
            .collect()
    };
    let whole = [Step::Drain, Step::Install, Step::Undrain];
    assert_eq!(resumed("dp-4"), whole, "resume does what was left");
    assert_eq!(resumed("dp-2"), whole, "dp-2 is drained again first");
    assert!(resumed("dp-1").is_empty(), "the canary is done");
    for h in s.names() {
        assert_eq!(fleet.version(&h), v("3.4.0"), "{h}");
        assert_eq!(fleet.actions(&h, Step::Install, None), 1, "{h}");
    }
}

/// Runs `s` once, then cuts its journal after every record and resumes
/// from each cut, with the agents as they were at that point: the steps
/// journalled as ended had happened, those not begun had not. A step begun
/// but not ended is tried both ways: the agent never got it, or did it and
/// the coordinator died before journalling the end. Each resumed run must
/// end as `want`, walk the same plan, never repeat an ended step,
/// re-attach to the ones in flight by their operation id, and leave every
/// install done exactly once; `check` looks at the hosts it left.
/// Returns the number of resumes.
async fn resume_from_every_cut(
    s: &Setup,
    script: impl Fn(&ScriptedFleet),
    want: Outcome,
    check: impl Fn(&ScriptedFleet, &str),
) -> usize {
    let first = s.fleet();
    script(&first);
    let ran = s.run(&first).await;
    ran.expect(want, &[]);
    check(&first, "the first run");
    let history: Vec<Call> = first.calls().into_iter().filter(|c| c.acted).collect();
    let plan = begun_ops(&ran.records);
    let text = std::fs::read_to_string(&ran.journal).expect("the journal");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ran.records.len());

    let mut cases = Vec::new();
    // The last record is the outcome: a rollout that ended is not resumed.
    for k in 1..lines.len() {
        let done = ended_ops(&ran.records[..k]);
        let in_flight: BTreeSet<String> = begun_ops(&ran.records[..k])
            .difference(&done)
            .cloned()
            .collect();
        cases.push((k, false, done.clone(), in_flight.clone()));
        if !in_flight.is_empty() {
            cases.push((k, true, done, in_flight));
        }
    }
    let n = cases.len();
    let (lines, history, plan, script, check) = (&lines, &history, &plan, &script, &check);
    let runs = cases
        .into_iter()
        .map(|(k, acted, done, in_flight)| async move {
            let case = format!(
                "cut after record {k} (in flight {in_flight:?}, done by the agent: {acted})"
            );
            let fleet = s.fleet();
            script(&fleet);
            for c in history {
                if done.contains(&c.op) || (acted && in_flight.contains(&c.op)) {
                    fleet.replay(c);
                }
            }
            let mark = fleet.calls().len();
            let dir = state_dir();
            let path = rollouts_dir(dir.path()).join(format!("{RID}.jsonl"));
            std::fs::create_dir_all(rollouts_dir(dir.path())).expect("the rollouts dir");
            std::fs::write(&path, lines[..k].join("\n") + "\n").expect("the cut journal");
            let log = RolloutLog::open(&path).expect("the cut journal opens");
            let ran = drive(log, &s.catalog, &fleet, dir, watch::channel(false)).await;

            assert_eq!(ran.outcome, want, "{case}: {}", ran.reason);
            assert_eq!(&begun_ops(&ran.records), plan, "{case}: not the same plan");
            let resumed = &fleet.calls()[mark..];
            if let Some(c) = resumed.iter().find(|c| done.contains(&c.op)) {
                panic!(
                    "{case}: {} ended before the cut, and was called again",
                    c.op
                );
            }
            for op in &in_flight {
                let again = resumed.iter().find(|c| c.op == *op);
                let again = again.unwrap_or_else(|| panic!("{case}: {op} was not re-attached"));
                assert_eq!(again.acted, !acted, "{case}: {op} acted twice, or never");
            }
            for h in &s.spec.hosts {
                for hop in s.spec.hops.iter().filter(|hop| h.from < **hop) {
                    let n = fleet.actions(&h.name, Step::Install, Some(hop));
                    assert_eq!(n, 1, "{case}: {} installed {hop} {n} times", h.name);
                }
            }
            check(&fleet, &case);
        });
    // Each run mostly waits on timers: all at once keep the test short.
    futures::future::join_all(runs).await;
    n
}

#[tokio::test]
async fn resume_from_every_transition_finishes_with_each_install_done_once() {
    // Two hops, two CPs, and a DP already on the middle release.
    let s = setup(2, 3).hops(&["3.4.0", "3.5.0"]).from("dp-3", "3.4.0");
    let n = resume_from_every_cut(
        &s,
        |_| {},
        Outcome::Succeeded,
        |fleet, case| {
            for h in s.names() {
                assert_eq!(fleet.version(&h), v("3.5.0"), "{case}: {h}");
                assert!(!fleet.drained(&h), "{case}: {h} left drained");
            }
        },
    )
    .await;
    assert!(n > 60, "only {n} cuts");
}

#[tokio::test]
async fn resume_after_a_quarantine_keeps_the_host_quarantined() {
    // dp-2 fails and its old release does not come up healthy either: it
    // stays drained, and must not block the resumed rollout.
    let s = setup(1, 4).max_failures(1);
    let script = |f: &ScriptedFleet| {
        f.fail("dp-2", Step::Install, revert_unhealthy("3.3.0"));
    };
    resume_from_every_cut(&s, script, Outcome::Quarantined, |fleet, case| {
        assert_eq!(fleet.version("dp-2"), v("3.3.0"), "{case}");
        assert!(
            fleet.drained("dp-2"),
            "{case}: an unhealthy dp-2 took traffic"
        );
        for h in ["cp-1", "dp-1", "dp-3", "dp-4"] {
            assert_eq!(fleet.version(h), v("3.4.0"), "{case}: {h}");
            assert!(!fleet.drained(h), "{case}: {h} left drained");
        }
    })
    .await;
}
