//! Benchmark: the write-freeze guard's verdict and the CP backup on a
//! config database of about 100 MB (ARCHITECTURE.md "Targets": a verdict in
//! ≤ 1 s that sees a single-row write made just before it; the demo's
//! backup in ≤ 3 s).
//!
//! A throwaway PostgreSQL 15 cluster with a `routes` table of 200,000 rows
//! (~500 bytes each) plus the heartbeat table the guard ignores; one real
//! CP `rollgate-agent` with `[backup]`. It times, over mTLS as the
//! coordinator calls them:
//!
//! * `Backup` (fingerprint and pg_dump in one snapshot, dump verified);
//! * `Fingerprint` against that backup, three times (the guard's verdict);
//! * a single-row UPDATE, then at once the verdict again: it must name
//!   `public.routes`.
//!
//! `cargo build --release --workspace && cargo bench --bench write_freeze`;
//! ROLLGATE_BENCH_ROWS sets the row count.

#[path = "support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rollgate::pb;
use rollgate_testbed::pg::PgCluster;
use support::{Host, Sandbox};

const NET: [u8; 3] = [127, 254, 2];

fn main() {
    support::init();
    let rows: u64 = std::env::var("ROLLGATE_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let sb = Sandbox::new("rollgate-bench-write-freeze-");
    let pg = PgCluster::start().expect("PostgreSQL 15 (deploy/prereqs.sh installs it)");
    pg.createdb("gateway").expect("createdb");
    let fill = format!(
        "CREATE TABLE routes (id text PRIMARY KEY, path_prefix text NOT NULL, upstream text NOT NULL, plugins jsonb NOT NULL); \
         INSERT INTO routes SELECT 'r' || i, '/p/' || i, 'http://10.0.' || (i % 250) || '.1:80', \
           jsonb_build_array(jsonb_build_object('name', 'response-header', 'config', jsonb_build_object('value', repeat(md5(i::text), 12)))) \
         FROM generate_series(1, {rows}) i; \
         CREATE TABLE instances (instance_id text PRIMARY KEY, last_seen timestamptz);"
    );
    let t = Instant::now();
    pg.psql("gateway", &fill).expect("fill the database");
    pg.psql("gateway", "VACUUM ANALYZE").expect("vacuum");
    let size: u64 = pg
        .psql("gateway", "SELECT pg_database_size('gateway')")
        .expect("size")
        .trim()
        .parse()
        .unwrap_or(0);
    eprintln!(
        "bench: {rows} rows, {:.0} MiB, filled in {:?}",
        size as f64 / (1 << 20) as f64,
        t.elapsed()
    );
    let ip = Ipv4Addr::new(NET[0], NET[1], NET[2], 1);
    let certs = sb.certs(&[("cp-1".to_string(), ip)]);
    let host = Host::create_as(
        &sb,
        "cp-1",
        "cp",
        &certs,
        SocketAddr::new(ip.into(), 7443),
        &format!(
            "[backup]\ndir = \"backups\"\npg_bin_dir = \"{}\"\ndatabase_url = \"{}\"\nexclude_tables = [\"public.instances\"]\n",
            pg.bin_dir().display(),
            pg.conninfo("gateway")
        ),
    );
    host.start_agent();
    support::wait_until(Duration::from_secs(20), "the agent listening", || {
        support::listening(host.addr)
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = support::connect(&certs, "cp-1", host.addr).await;
        let t = Instant::now();
        let r = support::final_result(
            c.backup(pb::BackupRequest {
                operation_id: "bench/backup".into(),
                backup_id: "b1".into(),
            })
            .await,
        )
        .await;
        let backup = t.elapsed();
        r.expect("the backup succeeds");
        // The guard's call: the verdict against backup b1, and how long.
        let mut verdict = async || {
            let t = Instant::now();
            let f = c
                .fingerprint(pb::FingerprintRequest {
                    baseline_backup_id: "b1".into(),
                })
                .await
                .expect("fingerprint")
                .into_inner();
            (f.changed_tables, t.elapsed())
        };
        let mut verdicts = Vec::new();
        for _ in 0..3 {
            let (changed, took) = verdict().await;
            verdicts.push(took);
            assert!(changed.is_empty(), "{changed:?}");
        }
        pg.psql("gateway", "INSERT INTO instances VALUES ('dp-1', now())")
            .expect("heartbeat");
        pg.psql(
            "gateway",
            "UPDATE routes SET upstream = 'http://10.9.9.9:80' WHERE id = 'r777'",
        )
        .expect("update");
        let (changed, after_write) = verdict().await;
        assert_eq!(changed, ["public.routes"], "the one-row write is seen");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "write_freeze: {rows} rows, {:.0} MiB database",
            size as f64 / (1 << 20) as f64
        );
        println!("  backup (fingerprint + pg_dump in one snapshot + verify): {:.0} ms", ms(backup));
        println!(
            "  guard verdict, unchanged: {}",
            verdicts.iter().map(|d| format!("{:.0} ms", ms(*d))).collect::<Vec<_>>().join(", ")
        );
        println!(
            "  guard verdict right after a one-row UPDATE: {:.0} ms, names public.routes (target ≤ 1000 ms)",
            ms(after_write)
        );
    });
    drop(pg);
    drop(sb);
    support::cleanup();
}
