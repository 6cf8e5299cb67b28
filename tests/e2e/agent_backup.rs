//! Backup, fingerprint and restore on a real PostgreSQL; drain against
//! agent-check and real connections.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use rollgate::pb;

use crate::support::Sandbox;
use crate::support::client::{connect, drive, success};
use crate::support::fixtures::{cp_on_330, dp_on_330};
use crate::support::gateway::{Db, add_route, agent_check, agent_check_addr, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_fingerprint_and_restore_on_a_real_database() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    add_route(cp.addr, "orders");
    add_route(cp.addr, "users");
    let mut c = connect(&sb, &cp.host).await;

    let (_, r) = drive(
        c.backup(pb::BackupRequest {
            operation_id: "t/cp-1/backup".into(),
            backup_id: "b1".into(),
        })
        .await,
    )
    .await;
    let b = match success(&r.unwrap()) {
        pb::success::Detail::Backup(b) => b.clone(),
        other => panic!("{other:?}"),
    };
    let names: Vec<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
    for want in ["db.dump", "export.yaml", "fingerprint.json"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("config/")), "{names:?}");
    let dir = std::path::Path::new(&b.dir);
    assert!(dir.join("MANIFEST").is_file());
    let saved_export = std::fs::read_to_string(dir.join("export.yaml")).unwrap();
    assert!(
        saved_export.contains("orders") && saved_export.contains("users"),
        "{saved_export}"
    );
    let fp = b.fingerprint.unwrap();
    assert!(
        fp.tables.iter().any(|t| t.table == "public.routes"),
        "{fp:?}"
    );
    assert!(
        fp.tables.iter().all(|t| t.table != "public.instances"),
        "heartbeats are excluded"
    );

    let same = c
        .fingerprint(pb::FingerprintRequest {
            baseline_backup_id: "b1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        same.changed_tables.is_empty() && !same.export_changed,
        "{same:?}"
    );

    // The verdict is exact and immediate (no settle wait): straight after a
    // write, one reading tells. Heartbeats (excluded) and a no-op UPDATE
    // change nothing; a single-row UPDATE or DELETE does.
    let reading = |c: &mut rollgate::pb::agent_client::AgentClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            let started = std::time::Instant::now();
            let r = c
                .fingerprint(pb::FingerprintRequest {
                    baseline_backup_id: "b1".into(),
                })
                .await
                .unwrap()
                .into_inner();
            (r.changed_tables, started.elapsed())
        }
    };
    db.psql("INSERT INTO instances VALUES ('dp-9', '3.3.0', 1, now())");
    db.psql("UPDATE routes SET upstream = upstream WHERE id = 'orders'");
    let (changed, took) = reading(&mut c).await;
    assert!(changed.is_empty(), "{changed:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    let restore = |c: &mut rollgate::pb::agent_client::AgentClient<tonic::transport::Channel>,
                   op: &'static str| {
        let mut c = c.clone();
        async move {
            let (_, r) = drive(
                c.restore(pb::RestoreRequest {
                    operation_id: op.into(),
                    backup_id: "b1".into(),
                })
                .await,
            )
            .await;
            success(&r.unwrap());
        }
    };
    db.psql("UPDATE routes SET upstream = 'http://127.0.0.1:1' WHERE id = 'orders'");
    assert_eq!(reading(&mut c).await.0, ["public.routes"]);
    // Back to exactly the backed-up rows: the same hash again.
    restore(&mut c, "t/cp-1/restore-after-update").await;
    assert!(reading(&mut c).await.0.is_empty());
    db.psql("DELETE FROM routes WHERE id = 'users'");
    assert_eq!(reading(&mut c).await.0, ["public.routes"]);
    restore(&mut c, "t/cp-1/restore-after-delete").await;
    assert!(reading(&mut c).await.0.is_empty());

    // A write after the backup shows.
    add_route(cp.addr, "payments");
    let changed = c
        .fingerprint(pb::FingerprintRequest {
            baseline_backup_id: "b1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        changed
            .changed_tables
            .contains(&"public.routes".to_string()),
        "{changed:?}"
    );
    assert!(changed.export_changed);

    let (_, r) = drive(
        c.restore(pb::RestoreRequest {
            operation_id: "t/cp-1/restore".into(),
            backup_id: "b1".into(),
        })
        .await,
    )
    .await;
    match success(&r.unwrap()) {
        pb::success::Detail::Restore(r) => assert!(r.export_matches),
        other => panic!("{other:?}"),
    }
    let (code, now) = http_get(cp.addr, "/api/export").unwrap();
    assert_eq!(code, 200);
    assert_eq!(now, saved_export, "restored data equals the original");
    assert!(!now.contains("payments"));

    // A restore from a backup that does not exist changes nothing.
    let (_, r) = drive(
        c.restore(pb::RestoreRequest {
            operation_id: "t/cp-1/restore-x".into(),
            backup_id: "nope".into(),
        })
        .await,
    )
    .await;
    let r = r.unwrap();
    let f = crate::support::client::failure(&r);
    assert_eq!(f.code(), pb::FailureCode::InvalidArgument, "{f:?}");
    assert_eq!(http_get(cp.addr, "/api/export").unwrap().1, saved_export);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_agent_check_and_waits_for_connections() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let db = Db::start();
    let cp = cp_on_330(&sb, &db).await;
    let (dp, _agent, addr, mut c) = dp_on_330(&sb, &cp, &[], "").await;
    let check = agent_check_addr(&dp);
    assert_eq!(agent_check(check), "ready up\n");

    // A client with a request in flight keeps the drain waiting.
    let mut held = TcpStream::connect(addr).unwrap();
    write!(held, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut c2 = c.clone();
    let drain = tokio::spawn(async move {
        drive(
            c2.drain(pb::DrainRequest {
                operation_id: "t/dp-1/drain".into(),
                timeout_ms: 10_000,
            })
            .await,
        )
        .await
        .1
    });
    crate::support::wait_until(Duration::from_secs(10), "agent-check says drain", || {
        agent_check(check) == "drain\n"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !drain.is_finished(),
        "the drain waits for the open connection"
    );
    drop(held);
    let r = drain.await.unwrap().unwrap();
    match success(&r) {
        pb::success::Detail::Drain(d) => {
            assert_eq!(d.remaining_connections, 0, "{d:?}");
            assert!(
                d.lb_acknowledged,
                "agent-check was asked after the change: {d:?}"
            );
            assert!(d.waited_ms >= 300, "{d:?}");
        }
        other => panic!("{other:?}"),
    }
    success(
        &drive(
            c.undrain(pb::UndrainRequest {
                operation_id: "t/dp-1/undrain".into(),
            })
            .await,
        )
        .await
        .1
        .unwrap(),
    );
    assert_eq!(agent_check(check), "ready up\n");
}
