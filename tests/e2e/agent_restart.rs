//! A restart of the agent (SIGTERM: a package upgrade's `try-restart`, a
//! host shutdown) never cuts a step off: the step in flight is finished,
//! new steps are refused with "retry", the health watches end, then the
//! agent exits 0 and says so in its log.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rollgate::pb;

use crate::support::Sandbox;
use crate::support::client::{connect, drive, install_result};
use crate::support::fixtures::{cp_on_330, dp_on_330};
use crate::support::gateway::{Db, current_of, wait_serving};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_an_install_finishes_the_install_then_stops() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, addr, mut c) = dp_on_330(&sb, &cp, &["3.4.0"], "").await;

    // A health watch is open, as the coordinator's always is.
    let mut watch = c
        .watch_health(pb::WatchHealthRequest {
            interval_ms: 100,
            heartbeat_ms: 0,
        })
        .await
        .expect("a health watch")
        .into_inner();
    watch.message().await.expect("a first report").unwrap();

    // An install held healthy for 3 s: the restart lands inside it.
    let op = "t/dp-1/install-3.4.0";
    let mut installer = c.clone();
    let install = tokio::spawn(async move {
        drive(
            installer
                .install(pb::InstallRequest {
                    operation_id: op.into(),
                    version: "3.4.0".into(),
                    min_healthy_ms: 3000,
                    ..Default::default()
                })
                .await,
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = watch.message().await.expect("the watch goes on").unwrap();
        if r.active_operation_id == op {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the install never showed as active"
        );
    }
    let sent = Instant::now();
    agent.signal(Signal::SIGTERM);

    // While it finishes (once it has taken the signal in), a new step is
    // refused with "retry", not run.
    rollgate_testbed::wait::must(
        Duration::from_secs(10),
        "the agent to take SIGTERM in",
        || agent.log_text().contains("new steps are refused"),
    );
    let refused = match c
        .drain(pb::DrainRequest {
            operation_id: "t/dp-1/drain-during-stop".into(),
            ..Default::default()
        })
        .await
    {
        Err(status) => status,
        Ok(r) => r
            .into_inner()
            .message()
            .await
            .expect_err("the step is refused, not run"),
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("stopping"), "{refused:?}");

    let (_, result) = install.await.unwrap();
    let result = result.expect("the install's stream ended with its result, not cut off");
    let i = install_result(&result);
    assert_eq!(i.version, "3.4.0", "{result:?}");
    assert!(i.healthy_for_ms >= 3000, "{i:?}");

    // The watch ends instead of holding the stop.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the health watch ended when the agent stopped"
    );

    let st = agent
        .wait_exit(Duration::from_secs(20))
        .expect("the agent stopped once the install ended");
    assert_eq!(st.code(), Some(0), "{}", agent.log_text());
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "stopped {:?} after SIGTERM",
        sent.elapsed()
    );
    let log = agent.log_text();
    assert!(
        log.contains("finishing the step in flight first") && log.contains(op),
        "the log says it finished the step first:\n{log}"
    );

    // The journal: the install begun once and ended once; the refused drain
    // never begun.
    let journal = std::fs::read_to_string(dp.dir.join("state/journal")).unwrap();
    let lines = |needle: &str| {
        journal
            .lines()
            .filter(|l| l.contains(op) && l.contains(needle))
            .count()
    };
    assert_eq!((lines("\"begin\""), lines("\"end\"")), (1, 1), "{journal}");
    assert!(!journal.contains("drain-during-stop"), "{journal}");
    wait_serving(addr, "3.4.0");
    assert_eq!(current_of(&dp).as_deref(), Some("3.4.0"));

    // Started again, the agent answers the same id from its journal.
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let again = drive(
        c.install(pb::InstallRequest {
            operation_id: op.into(),
            version: "3.4.0".into(),
            ..Default::default()
        })
        .await,
    )
    .await
    .1
    .expect("a result");
    assert!(again.replayed, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_with_no_step_in_flight_stops_at_once_despite_open_watches() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (_dp, mut agent, _addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;
    let mut watch = c
        .watch_health(pb::WatchHealthRequest {
            interval_ms: 100,
            heartbeat_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    agent.signal(Signal::SIGTERM);
    let st = agent
        .wait_exit(Duration::from_secs(10))
        .expect("an idle agent stops at once, open watches or not");
    assert_eq!(st.code(), Some(0), "{}", agent.log_text());
    assert!(agent.log_text().contains("stopping: no step in flight"));
}
