//! The deliberately faulty DP releases fail the way an upgrader must notice.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::client;
use crate::support::eventually;
use crate::support::gateway::{Cp, Dp, postgres, temp_dir};

#[test]
fn a_never_ready_dp_follows_the_cp_but_never_reports_ready() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);
    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    let revision =
        cp.put_route(&json!({"id": "r", "path_prefix": "/r", "upstream": "http://127.0.0.1:9"}));
    let dp = Dp::start("3.4.0-never-ready", cp.addr, dir.path(), "10s");

    // It loads the config and heartbeats its (faulty) version...
    eventually("the DP to load the config", Duration::from_secs(10), || {
        (client::get(dp.addr, "/status").json()["config_revision"] == revision).then_some(())
    });
    let instance = eventually("the CP to list the DP", Duration::from_secs(10), || {
        let listed = client::get(cp.addr, "/api/instances").json();
        listed["instances"]
            .as_array()?
            .iter()
            .find(|i| i["instance_id"] == dp.instance_id() && i["config_revision"] == revision)
            .cloned()
    });
    assert_eq!(instance["version"], "3.4.0-never-ready");
    assert_eq!(instance["compatible"], true);

    // ...but stays unready, well past many poll intervals (100 ms).
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let alive = client::get(dp.addr, "/status");
        assert_eq!(alive.status, 200);
        assert_eq!(alive.json()["version"], "3.4.0-never-ready");
        let ready = client::get(dp.addr, "/status/ready");
        assert_eq!(ready.status, 503, "{}", ready.text());
        assert_eq!(ready.json()["ready"], false);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_crash_after_ready_dp_exits_1_a_few_seconds_after_ready() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);
    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    let revision =
        cp.put_route(&json!({"id": "r", "path_prefix": "/r", "upstream": "http://127.0.0.1:9"}));
    let mut dp = Dp::start("3.4.0-crash-after-ready", cp.addr, dir.path(), "10s");

    let status = dp.wait_ready(revision);
    let ready_at = Instant::now();
    assert_eq!(status["version"], "3.4.0-crash-after-ready");
    let exit = dp
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the DP crashes after becoming ready");
    let after = ready_at.elapsed();
    assert_eq!(exit.code(), Some(1), "{}", dp.proc.log());
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(5)).contains(&after),
        "crashed {after:?} after ready, expected about 3 s"
    );
    assert!(
        dp.proc.log().contains("dp_exit_after_ready"),
        "{}",
        dp.proc.log()
    );
}
