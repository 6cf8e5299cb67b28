//! Full disks, for real: a size- or inode-limited tmpfs under one directory
//! of a host. A stage, a backup or a journal write that runs out of space
//! fails with a clear error, leaves nothing half-written, changes no
//! release, and the agent goes on answering health and agent-check. Once
//! there is room again the same step succeeds.

use rollgate::pb;

use crate::support::client::{connect, drive, failure, install, stage_file, success};
use crate::support::disk::SmallDisk;
use crate::support::fixtures::{Cp, cp_on_330_with, fleet_on_330};
use crate::support::gateway::{
    Db, add_route, agent_check, agent_check_addr, current_of, release, wait_serving,
};
use crate::support::{Host, Sandbox};
use crate::upgrade::{events, hosts_running, upgrade_to};

const GIB: u64 = 1 << 30;
const INODES: u64 = 100_000;

/// The agent still reports a healthy gateway on `version`, and HAProxy's
/// agent-check still says it is in rotation.
async fn still_serving(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    host: &Host,
    version: &str,
) {
    let mut watch = c
        .watch_health(pb::WatchHealthRequest {
            interval_ms: 100,
            heartbeat_ms: 0,
        })
        .await
        .expect("the agent answers a health watch")
        .into_inner();
    let report = watch.message().await.unwrap().expect("a health report");
    assert!(report.healthy, "{report:?}");
    assert_eq!(report.running_version, version, "{report:?}");
    assert_eq!(agent_check(agent_check_addr(host)), "ready up\n");
    assert_eq!(current_of(host).as_deref(), Some(version));
}

/// A CP on 3.3.0 whose directories `small` (relative to the host's) are
/// each a tmpfs of their own, mounted before its agent first starts.
async fn cp_with_disks(sb: &Sandbox, db: &Db, small: &[&str]) -> (Cp, Vec<SmallDisk>) {
    sb.certs(&[("cp-1", 1)]);
    let mut disks = Vec::new();
    let cp = cp_on_330_with(sb, db, |h| {
        for dir in small {
            disks.push(SmallDisk::mount(&h.dir.join(dir), GIB, INODES));
        }
    })
    .await;
    (cp, disks)
}

/// Installs 3.4.0 under `op` and waits until the CP serves it.
async fn install_340(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    cp: &Cp,
    op: &str,
) {
    success(&install(c, op, "3.4.0").await.unwrap());
    wait_serving(cp.addr, "3.4.0");
}

/// Names in a directory, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_runs_out_of_disk_fails_cleanly_and_the_agent_keeps_serving() {
    let sb = Sandbox::new();
    let db = Db::start();
    let (cp, disks) = cp_with_disks(&sb, &db, &["state/staging", "root/releases"]).await;
    let (staging, releases) = (&disks[0], &disks[1]);
    let host = &cp.host;
    let mut c = connect(&sb, host).await;
    let before = names(&releases.dir);
    let next = release("3.4.0");

    // 1. The artifact does not fit where it is received.
    staging.resize(64 << 10, INODES);
    let r = stage_file(&mut c, "t/cp-1/stage-3.4.0", &next)
        .await
        .unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::DiskFull, "{f:?}");
    assert!(f.message.contains("staging"), "names where: {f:?}");
    assert!(names(&staging.dir).is_empty(), "{:?}", names(&staging.dir));
    assert_eq!(names(&releases.dir), before);
    still_serving(&mut c, host, "3.3.0").await;

    // 2. The release does not fit where it is unpacked: out of inodes, as a
    // disk full of small files is.
    staging.resize(GIB, INODES);
    releases.resize(GIB, releases.inodes_used() + 2);
    let r = stage_file(&mut c, "t/cp-1/stage-3.4.0.2", &next)
        .await
        .unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::DiskFull, "{f:?}");
    assert!(f.message.contains("releases"), "names where: {f:?}");
    assert_eq!(names(&releases.dir), before, "no half-unpacked release");
    assert!(names(&staging.dir).is_empty(), "{:?}", names(&staging.dir));
    still_serving(&mut c, host, "3.3.0").await;

    // 3. Room again: nothing half-made is in the way.
    releases.resize(GIB, INODES);
    success(
        &stage_file(&mut c, "t/cp-1/stage-3.4.0.3", &next)
            .await
            .unwrap(),
    );
    install_340(&mut c, &cp, "t/cp-1/install-3.4.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_runs_out_of_disk_fails_cleanly_and_leaves_no_partial_backup() {
    let sb = Sandbox::new();
    let db = Db::start();
    let (cp, disks) = cp_with_disks(&sb, &db, &["backups"]).await;
    let backups = &disks[0];
    add_route(cp.addr, "orders");
    let mut c = connect(&sb, &cp.host).await;
    let filler = backups.fill();

    let backup = |id: &str| pb::BackupRequest {
        operation_id: format!("t/cp-1/backup-{id}"),
        backup_id: id.into(),
    };
    let (_, r) = drive(c.backup(backup("b1")).await).await;
    let r = r.unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::DiskFull, "{f:?}");
    assert!(
        f.message.contains(&backups.dir.display().to_string()),
        "names where: {f:?}"
    );
    assert_eq!(names(&backups.dir), ["filler"], "no partial backup is left");
    still_serving(&mut c, &cp.host, "3.3.0").await;

    std::fs::remove_file(filler).unwrap();
    let (_, r) = drive(c.backup(backup("b2")).await).await;
    match success(&r.unwrap()) {
        pb::success::Detail::Backup(b) => {
            assert!(
                std::path::Path::new(&b.dir).join("MANIFEST").is_file(),
                "{b:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_write_that_fails_refuses_the_step_before_any_swap() {
    let sb = Sandbox::new();
    let db = Db::start();
    let (cp, disks) = cp_with_disks(&sb, &db, &["state"]).await;
    let state = &disks[0];
    let mut c = connect(&sb, &cp.host).await;
    success(
        &stage_file(&mut c, "t/cp-1/stage-3.4.0", &release("3.4.0"))
            .await
            .unwrap(),
    );
    // The state disk fills up. The journal's last page may still hold a
    // few small records (a tmpfs, like any file system, needs no new block
    // for them): steps that journal and change nothing use it up, as a busy
    // host would, until one cannot journal.
    let filler = state.fill();
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 100, "the journal never ran out of room");
        let again = stage_file(&mut c, &format!("t/cp-1/again-{n}"), &release("3.4.0"))
            .await
            .unwrap();
        if let Some(pb::operation_result::Outcome::Failure(f)) = &again.outcome {
            assert!(f.message.contains("journal"), "says why: {f:?}");
            break;
        }
    }
    let journal = state.dir.join("journal");
    let journal_before = std::fs::read(&journal).unwrap();

    let r = install(&mut c, "t/cp-1/install-3.4.0", "3.4.0")
        .await
        .unwrap();
    let f = failure(&r);
    assert!(f.message.contains("journal"), "says why: {f:?}");
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        journal_before,
        "no half record"
    );
    still_serving(&mut c, &cp.host, "3.3.0").await;
    wait_serving(cp.addr, "3.3.0");

    // Room again: the same operation id runs.
    std::fs::remove_file(filler).unwrap();
    install_340(&mut c, &cp, "t/cp-1/install-3.4.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_dp_disk_is_full_halts_in_staging_before_any_swap() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 2, "batch = 1").await;
    let dp1 = &fleet.dps[0].0;
    let _full = SmallDisk::mount(&dp1.dir.join("state/staging"), 64 << 10, INODES);

    let out = sb.rollgate(&upgrade_to("3.4.0"));
    assert_eq!(
        out.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let evs = events(&out.stdout);
    let last = evs.last().unwrap();
    assert_eq!(last["status"], "halted", "{last}");
    let failed: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "step" && e["status"] == "failed")
        .map(|e| {
            (
                e["host"].as_str(),
                e["step"].as_str(),
                e["detail"]["code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [(Some("dp-1"), Some("stage"), Some("DISK_FULL"))],
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e["step"].as_str(), Some("backup" | "drain" | "install"))),
        "nothing after staging ran: {evs:?}"
    );
    for (h, v) in hosts_running(&fleet) {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h}");
    }
}
