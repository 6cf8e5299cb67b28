//! kill -9 of the agent at every step boundary: after a restart the host is
//! on exactly one release with the gateway serving it, and the same
//! operation id completes or reports the revert.

use std::time::Duration;

use rollgate::pb;

use crate::support::client::{
    connect, drive, failure, install, install_result, stage_file, success, until_result,
};
use crate::support::fixtures::{cp_on_330, dp_on_330};
use crate::support::gateway::{Db, current_of, release, wait_serving};
use crate::support::{Host, Proc, Sandbox};

/// Restarts `host`'s agent with a failpoint, runs `call` (which the agent
/// dies in), restarts it without one, and returns the agent.
fn restart_with_failpoint(host: &Host, agent: &mut Proc, fp: &str) -> Proc {
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent killed");
    host.start_agent_env(&[("ROLLGATE_FAILPOINT", fp)])
}

fn died(agent: &mut Proc, fp: &str) {
    let st = agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the agent did not die at {fp}"));
    assert_eq!(st.code(), None, "killed by a signal at {fp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_survives_a_kill_at_every_step_boundary() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, addr, _c) = dp_on_330(&sb, &cp, &["3.4.0"], "").await;

    // (phase, the step finishes after the restart?)
    let cases = [
        ("stopped", false),
        ("switched", true),
        ("started", true),
        ("gated", true),
    ];
    let mut on = "3.3.0";
    for (phase, finishes) in cases {
        let target = if on == "3.3.0" { "3.4.0" } else { "3.3.0" };
        let fp = format!("install:{phase}");
        let op = format!("t/dp-1/crash-{phase}");
        let mut dying = restart_with_failpoint(&dp, &mut agent, &fp);
        let mut c = connect(&sb, &dp).await;
        let r = install(&mut c, &op, target).await;
        assert!(
            r.is_none(),
            "{fp}: the stream ends without a result when the agent dies"
        );
        died(&mut dying, &fp);
        drop(dying);

        agent = dp.start_agent();
        let mut c = connect(&sb, &dp).await;
        let r = until_result(|| {
            let (mut c, op) = (c.clone(), op.clone());
            async move { install(&mut c, &op, target).await }
        })
        .await;
        if finishes {
            assert_eq!(install_result(&r).version, target, "{fp}");
            on = target;
        } else {
            let f = failure(&r);
            assert_eq!(f.code(), pb::FailureCode::Interrupted, "{fp}: {f:?}");
            assert!(f.reverted, "{fp}: {f:?}");
            assert_eq!(f.active_version, on);
        }
        assert_eq!(
            current_of(&dp).as_deref(),
            Some(on),
            "{fp}: one release is current"
        );
        wait_serving(addr, on);
        let rec = c
            .get_operation(pb::GetOperationRequest {
                operation_id: op.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            rec.attempts, 2,
            "{fp}: the cut-off attempt and the recovery: {rec:?}"
        );
        let again = install(&mut c, &op, target).await.unwrap();
        assert!(again.replayed, "{fp}: the recovered result is recorded");
    }
}

/// A kill after the switch and the new gateway's start, with none of the
/// phases written behind (Stopped, Switched, Started) on disk: recovery
/// goes back to the previous release, stopping the new gateway that runs,
/// and the same id reports the step interrupted and undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_that_loses_the_phases_written_behind_goes_back_with_one_release_serving() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, addr, _c) = dp_on_330(&sb, &cp, &["3.4.0"], "").await;
    let fp = "install:started-unrecorded";
    let op = "t/dp-1/crash-unrecorded".to_string();
    let mut dying = restart_with_failpoint(&dp, &mut agent, fp);
    let mut c = connect(&sb, &dp).await;
    assert!(
        install(&mut c, &op, "3.4.0").await.is_none(),
        "the stream ends without a result when the agent dies"
    );
    died(&mut dying, fp);
    drop(dying);
    wait_serving(addr, "3.4.0"); // the new gateway outlived its agent

    let _agent = dp.start_agent();
    let c = connect(&sb, &dp).await;
    let r = until_result(|| {
        let (mut c, op) = (c.clone(), op.clone());
        async move { install(&mut c, &op, "3.4.0").await }
    })
    .await;
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::Interrupted, "{f:?}");
    assert!(f.reverted, "{f:?}");
    assert_eq!(f.active_version, "3.3.0", "{f:?}");
    assert_eq!(
        current_of(&dp).as_deref(),
        Some("3.3.0"),
        "one release is current"
    );
    wait_serving(addr, "3.3.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_and_drain_survive_a_kill() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, addr, _c) = dp_on_330(&sb, &cp, &[], "").await;

    for (phase, staged) in [("received", false), ("unpacked", true)] {
        let fp = format!("stage:{phase}");
        let op = format!("t/dp-1/stage-crash-{phase}");
        let mut dying = restart_with_failpoint(&dp, &mut agent, &fp);
        let mut c = connect(&sb, &dp).await;
        assert!(stage_file(&mut c, &op, &release("3.4.0")).await.is_none());
        died(&mut dying, &fp);
        drop(dying);
        agent = dp.start_agent();
        let c = connect(&sb, &dp).await;
        let r = until_result(|| {
            let (mut c, op) = (c.clone(), op.clone());
            async move { stage_file(&mut c, &op, &release("3.4.0")).await }
        })
        .await;
        let on_disk = dp.dir.join("root/releases/3.4.0").is_dir();
        if staged {
            success(&r);
            assert!(on_disk);
        } else {
            assert_eq!(failure(&r).code(), pb::FailureCode::Interrupted);
            assert!(!on_disk, "a cut-off stage leaves no release");
        }
        let staging: Vec<_> = std::fs::read_dir(dp.dir.join("state/staging"))
            .map(|d| d.flatten().count())
            .into_iter()
            .collect();
        assert!(staging.iter().all(|n| *n == 0), "{fp}: staging cleaned");
        let hidden = std::fs::read_dir(dp.dir.join("root/releases"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(hidden, 0, "{fp}: no half-unpacked release");
        wait_serving(addr, "3.3.0");
    }

    let fp = "drain:marked";
    let mut dying = restart_with_failpoint(&dp, &mut agent, fp);
    let mut c = connect(&sb, &dp).await;
    let r = drive(
        c.drain(pb::DrainRequest {
            operation_id: "t/dp-1/drain-crash".into(),
            timeout_ms: 1000,
        })
        .await,
    )
    .await
    .1;
    assert!(r.is_none());
    died(&mut dying, fp);
    drop(dying);
    let _agent = dp.start_agent();
    let c = connect(&sb, &dp).await;
    let r = until_result(|| {
        let mut c = c.clone();
        async move {
            let req = pb::DrainRequest {
                operation_id: "t/dp-1/drain-crash".into(),
                timeout_ms: 1000,
            };
            drive(c.drain(req).await).await.1
        }
    })
    .await;
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::Interrupted);
    assert!(
        f.reverted && f.message.contains("back in rotation"),
        "{f:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dp.dir.join("state/drain-state")).unwrap(),
        "ready",
        "never left drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_outlives_its_agent_and_is_readopted() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, addr, _c) = dp_on_330(&sb, &cp, &["3.4.0"], "").await;
    let pid_before = std::fs::read_to_string(dp.dir.join("state/gateway.pid")).unwrap();

    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10)).unwrap();
    wait_serving(addr, "3.3.0"); // still serving without its agent
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let mut watch = c
        .watch_health(pb::WatchHealthRequest {
            interval_ms: 200,
            heartbeat_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let report = watch.message().await.unwrap().unwrap();
    assert!(report.healthy, "{report:?}");
    assert!(
        pid_before.starts_with(&report.pid.to_string()),
        "same process re-adopted: {pid_before} vs {}",
        report.pid
    );
    assert_eq!(report.running_version, "3.3.0");
    // And the re-adopted gateway is stopped and replaced normally.
    success(
        &install(&mut c, "t/dp-1/after-readopt", "3.4.0")
            .await
            .unwrap(),
    );
    wait_serving(addr, "3.4.0");
}

/// Defect: one unreadable line in the middle of the journal made the agent
/// drop every later record, and a completed Drain ran again. Now a damaged
/// record that is not the last stops the agent (exit 65) with the journal
/// untouched; once an operator moves the line aside, nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_record_stops_the_agent_and_no_step_runs_twice() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, _addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;
    let drain = || pb::DrainRequest {
        operation_id: "t/dp-1/drain-once".into(),
        timeout_ms: 1000,
    };
    success(&drive(c.drain(drain()).await).await.1.unwrap());
    let undrain = pb::UndrainRequest {
        operation_id: "t/dp-1/undrain-once".into(),
    };
    success(&drive(c.undrain(undrain).await).await.1.unwrap());
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10)).unwrap();

    let journal = dp.dir.join("state/journal");
    let good = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    assert!(lines.len() > 4, "{good}");
    let at = lines.len() / 2;
    lines.insert(at, "{\"op\": garbage");
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&journal, &damaged).unwrap();

    let mut refused = Proc::spawn_env(
        crate::support::AGENT,
        &[
            "--config".to_string(),
            dp.config_path().display().to_string(),
        ],
        &dp.dir,
        &dp.dir.join("agent-refused.log"),
        &[],
    );
    let st = refused
        .wait_exit(Duration::from_secs(20))
        .expect("the agent refuses to start");
    assert_eq!(st.code(), Some(65), "{}", refused.log_text());
    let log = refused.log_text();
    assert!(
        log.contains(&format!("line {}", at + 1)) && log.contains("not a torn last write"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        damaged,
        "the journal is left exactly as it was"
    );

    // The operator moves the damaged line aside.
    std::fs::write(&journal, &good).unwrap();
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let rec = c
        .get_operation(pb::GetOperationRequest {
            operation_id: "t/dp-1/drain-once".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.status(), pb::OperationStatus::Succeeded, "{rec:?}");
    let again = drive(c.drain(drain()).await).await.1.unwrap();
    assert!(again.replayed, "answered from the journal: {again:?}");
    assert_eq!(
        std::fs::read_to_string(dp.dir.join("state/drain-state")).unwrap(),
        "ready",
        "the repeated drain did not drain the host again"
    );
}
