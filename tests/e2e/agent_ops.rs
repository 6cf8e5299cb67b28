//! The agent's steps on real hosts: the reference gateway's releases, a real
//! PostgreSQL, real processes, real files.

use std::time::Duration;

use rollgate::pb;

use crate::support::Sandbox;
use crate::support::client::{
    self, drive, failure, install, install_result, stage_stream, success,
};
use crate::support::fixtures::{cp_on_330, dp_on_330};
use crate::support::gateway::{self, Db, current_of, release, wait_serving};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_install_gate_and_rollback() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, _agent, addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;

    // 3.4.0 streamed from here, as the coordinator sends it.
    let r40 = release("3.4.0");
    let bytes = std::fs::read(gateway::artifact_path(&r40)).unwrap();
    let r = stage_stream(&mut c, "t/dp-1/stage-3.4.0", "3.4.0", &r40.sha256, bytes)
        .await
        .unwrap();
    match success(&r) {
        pb::success::Detail::Stage(s) => assert_eq!(s.bytes, r40.size),
        other => panic!("{other:?}"),
    }

    let r = install(&mut c, "t/dp-1/install-3.4.0", "3.4.0")
        .await
        .unwrap();
    let i = install_result(&r);
    assert_eq!(
        (i.previous_version.as_str(), i.version.as_str()),
        ("3.3.0", "3.4.0")
    );
    assert!(
        i.healthy_for_ms >= 1000,
        "held healthy for min_healthy: {i:?}"
    );
    wait_serving(addr, "3.4.0");
    assert_eq!(current_of(&dp).as_deref(), Some("3.4.0"));

    // Rollback without a version: the release before the last switch.
    let r = drive(
        c.rollback(pb::RollbackRequest {
            operation_id: "t/dp-1/rollback".into(),
            ..Default::default()
        })
        .await,
    )
    .await
    .1
    .unwrap();
    assert_eq!(install_result(&r).version, "3.3.0");
    wait_serving(addr, "3.3.0");
    assert_eq!(current_of(&dp).as_deref(), Some("3.3.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_becomes_ready_is_reverted() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, _agent, addr, mut c) = dp_on_330(&sb, &cp, &["3.4.0-never-ready"], "").await;

    let (progress, r) = drive(
        c.install(pb::InstallRequest {
            operation_id: "t/dp-1/install-bad".into(),
            version: "3.4.0-never-ready".into(),
            health_timeout_ms: 4000,
            ..Default::default()
        })
        .await,
    )
    .await;
    let r = r.unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::HealthGateFailed, "{f:?}");
    assert!(f.reverted, "{f:?}");
    assert_eq!(f.active_version, "3.3.0");
    assert!(f.gateway_healthy, "the old release serves again: {f:?}");
    assert!(
        f.detail.contains("ready answered 503"),
        "the last probe is in the report: {}",
        f.detail
    );
    assert!(progress.iter().any(|p| p.phase == "revert"), "{progress:?}");
    wait_serving(addr, "3.3.0");
    assert_eq!(current_of(&dp).as_deref(), Some("3.3.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_operation_id_does_no_work_twice() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, _agent, addr, mut c) = dp_on_330(&sb, &cp, &["3.4.0"], "").await;

    let first = install(&mut c, "t/dp-1/once", "3.4.0").await.unwrap();
    let pid = install_result(&first).pid;
    assert!(!first.replayed);
    let again = install(&mut c, "t/dp-1/once", "3.4.0").await.unwrap();
    assert!(again.replayed, "answered from the journal");
    assert_eq!(
        install_result(&again).pid,
        pid,
        "the gateway was not restarted"
    );
    let pid_file = std::fs::read_to_string(dp.dir.join("state/gateway.pid")).unwrap();
    assert!(pid_file.starts_with(&pid.to_string()), "{pid_file}");
    wait_serving(addr, "3.4.0");

    let ops = c
        .list_operations(pb::ListOperationsRequest {
            prefix: "t/dp-1/once".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].attempts, 1);
    assert_eq!(ops[0].status(), pb::OperationStatus::Succeeded);

    let unknown = c
        .get_operation(pb::GetOperationRequest {
            operation_id: "t/dp-1/never".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.status(), pb::OperationStatus::Unknown);

    // While one step runs, another is refused and changes nothing: hold a
    // connection open so a drain has to wait.
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    write!(held, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut c2 = c.clone();
    let drain = tokio::spawn(async move {
        drive(
            c2.drain(pb::DrainRequest {
                operation_id: "t/dp-1/drain".into(),
                timeout_ms: 3000,
            })
            .await,
        )
        .await
        .1
    });
    crate::support::wait_until(Duration::from_secs(10), "drain running", || {
        std::fs::read_to_string(dp.dir.join("state/drain-state")).is_ok_and(|s| s == "drain")
    });
    let refused = install(&mut c, "t/dp-1/meanwhile", "3.3.0").await.unwrap();
    let f = failure(&refused);
    assert_eq!(f.code(), pb::FailureCode::Precondition);
    assert!(f.message.contains("t/dp-1/drain"), "{f:?}");
    let d = drain.await.unwrap().unwrap();
    match success(&d) {
        pb::success::Detail::Drain(d) => assert_eq!(d.remaining_connections, 1, "{d:?}"),
        other => panic!("{other:?}"),
    }
    drop(held);
    assert_eq!(
        current_of(&dp).as_deref(),
        Some("3.4.0"),
        "the refused install did nothing"
    );
    // The refused id was not journalled: it can run later.
    success(
        &client::drive(
            c.undrain(pb::UndrainRequest {
                operation_id: "t/dp-1/undrain".into(),
            })
            .await,
        )
        .await
        .1
        .unwrap(),
    );
    success(&install(&mut c, "t/dp-1/meanwhile", "3.3.0").await.unwrap());
}

/// Hello asked `with_health` answers the host's facts and a look at the
/// gateway made as it answered — what a WatchHealth stream's first report
/// says — in one round trip: how the plan and `status` ask every host.
/// Asked without it, Hello carries no report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_health_says_what_a_watch_first_report_says() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (_dp, _agent, _addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;
    let bare = c.hello(pb::HelloRequest::default()).await.unwrap();
    assert!(bare.into_inner().health.is_none());

    let up = hello_health(&mut c).await;
    assert!(up.healthy, "{up:?}");
    assert_eq!(up.running_version, "3.3.0");
    assert_eq!(key(&up), key(&first_report(&mut c).await));

    // The gateway killed: the same report says so, first look unhealthy.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Until the agent sees the process gone (a look in between may find it
    // still there, its probes already failing).
    let down = loop {
        let r = hello_health(&mut c).await;
        if r.process == pb::ProcessState::Stopped as i32 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway still running 10 s after the kill: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!down.healthy, "{down:?}");
    // Each look is a first look: a Hello is not a watch counting streaks.
    assert_eq!(down.unhealthy_streak, 1, "{down:?}");
    assert_eq!(key(&down), key(&first_report(&mut c).await));
}

type Agent = pb::agent_client::AgentClient<tonic::transport::Channel>;

async fn hello_health(c: &mut Agent) -> pb::HealthReport {
    c.hello(pb::HelloRequest { with_health: true })
        .await
        .unwrap()
        .into_inner()
        .health
        .expect("Hello with_health carries a report")
}

async fn first_report(c: &mut Agent) -> pb::HealthReport {
    c.watch_health(pb::WatchHealthRequest {
        interval_ms: 1000,
        heartbeat_ms: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .message()
    .await
    .unwrap()
    .expect("a first report")
}

/// What a look at the gateway says, without its instant.
#[allow(clippy::type_complexity)]
fn key(r: &pb::HealthReport) -> (u64, bool, u32, i32, u32, String, String, i32) {
    (
        r.sequence,
        r.healthy,
        r.unhealthy_streak,
        r.process,
        r.pid,
        r.installed_version.clone(),
        r.running_version.clone(),
        r.drain_state,
    )
}
