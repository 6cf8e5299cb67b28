//! Fencing tokens at the agent: a call carrying a token lower than the
//! highest the agent has seen is refused before anything is done, also
//! after the agent restarts; calls without a token (status from any
//! machine) go through.

use std::time::Duration;

use nix::sys::signal::Signal;
use rollgate::fencing::METADATA_KEY;
use rollgate::pb;
use tonic::Request;

use crate::support::Sandbox;
use crate::support::client::{connect, drive, success};
use crate::support::fixtures::{cp_on_330, dp_on_330};
use crate::support::gateway::Db;

fn with_token<T>(msg: T, token: u64) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(METADATA_KEY, token.to_string().parse().unwrap());
    r
}

fn drain(op: &str) -> pb::DrainRequest {
    pb::DrainRequest {
        operation_id: op.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_fencing_token_is_refused_before_anything_is_done_even_after_a_restart() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, mut agent, _addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;

    // Coordinator B (token 5) drains and undrains.
    let r = drive(c.drain(with_token(drain("b/dp-1/drain"), 5)).await).await;
    success(&r.1.expect("B's drain ran"));
    let r = drive(
        c.undrain(with_token(
            pb::UndrainRequest {
                operation_id: "b/dp-1/undrain".into(),
            },
            5,
        ))
        .await,
    )
    .await;
    success(&r.1.expect("B's undrain ran"));

    // Coordinator A (token 4), woken after B took over, is refused: the
    // step, and any other call.
    let refused = c
        .drain(with_token(drain("a/dp-1/drain"), 4))
        .await
        .expect_err("A's drain is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("fenced") && refused.message().contains("below 5"),
        "{refused:?}"
    );
    let hello = c
        .hello(with_token(pb::HelloRequest::default(), 4))
        .await
        .expect_err("any call of A is refused");
    assert_eq!(hello.code(), tonic::Code::FailedPrecondition);
    // Without a token (status from any machine) the agent answers.
    c.hello(pb::HelloRequest::default())
        .await
        .expect("a tokenless Hello");
    let bad = c
        .hello({
            let mut r = Request::new(pb::HelloRequest::default());
            r.metadata_mut().insert(METADATA_KEY, "x".parse().unwrap());
            r
        })
        .await
        .expect_err("a malformed token is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The highest token survives a restart.
    agent.signal(Signal::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(20))
        .expect("the agent stopped");
    assert_eq!(
        std::fs::read_to_string(dp.dir.join("state/fencing-token")).unwrap(),
        "5\n"
    );
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let refused = c
        .drain(with_token(drain("a/dp-1/drain"), 4))
        .await
        .expect_err("still refused after the restart");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // Nothing of A's reached the journal. The operation id as the record
    // holds it: the bare "a/dp-1/" is also in a path under a sandbox whose
    // random name ends in "a" (/tmp/rollgate-e2e-Uh9Sxa/dp-1/root/...).
    let journal = std::fs::read_to_string(dp.dir.join("state/journal")).unwrap();
    assert!(!journal.contains("\"op\":\"a/dp-1/"), "{journal}");
    assert!(journal.contains("\"op\":\"b/dp-1/drain\""), "{journal}");
    // A higher token (a later take-over) goes through and is recorded.
    let r = drive(c.drain(with_token(drain("c/dp-1/drain"), 6)).await).await;
    success(&r.1.expect("C's drain ran"));
    assert_eq!(
        std::fs::read_to_string(dp.dir.join("state/fencing-token")).unwrap(),
        "6\n"
    );
}
