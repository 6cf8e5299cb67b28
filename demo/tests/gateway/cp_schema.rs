//! The CP's schema lifecycle: forward migrations, refusal of a newer schema, and a
//! failing migration that leaves the database exactly as it was.

use rollgate_testbed::pg::PgCluster;
use serde_json::json;

use crate::support::client;
use crate::support::gateway::{Cp, postgres, temp_dir};

fn schema_versions(pg: &PgCluster) -> String {
    pg.psql(
        "gateway",
        "SELECT version FROM schema_version ORDER BY version",
    )
    .unwrap()
    .trim()
    .to_owned()
}

fn route(id: &str, prefix: &str) -> serde_json::Value {
    json!({
        "id": id,
        "path_prefix": prefix,
        "upstream": "http://127.0.0.1:9",
        "plugins": [{"name": "response-header", "config": {"name": "X-Route", "value": id}}],
    })
}

#[test]
fn cp_migrates_forward_and_refuses_a_schema_newer_than_it_knows() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);

    let cp = Cp::start("3.3.0", &pg, "gateway", dir.path());
    let status = cp.status();
    assert_eq!(status["version"], "3.3.0");
    assert_eq!(status["schema_version"], 1);
    assert_eq!(status["role"], "cp");
    assert_eq!(schema_versions(&pg), "1");
    let revision = cp.put_route(&route("orders", "/orders"));
    assert_eq!(cp.status()["config_revision"], revision);
    cp.proc.stop();

    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    let status = cp.status();
    assert_eq!(status["version"], "3.4.0");
    assert_eq!(status["schema_version"], 2);
    assert_eq!(
        status["config_revision"], revision,
        "the revision survives the upgrade"
    );
    assert_eq!(schema_versions(&pg), "1\n2");
    let kept = client::get(cp.addr, "/api/routes/orders");
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json()["plugins"][0]["config"]["value"], "orders");
    // What migration 2 brought is usable: a route with a description.
    let mut described = route("users", "/users");
    described["description"] = json!("added on 3.4");
    cp.put_route(&described);
    cp.proc.stop();

    let (status, log) = Cp::run_to_exit("3.3.0", &pg, "gateway", dir.path());
    assert_eq!(status.code(), Some(1), "{log}");
    for needle in ["schema version 2", "(3.3.0)", "highest: 1", "restore"] {
        assert!(
            log.contains(needle),
            "the refusal should mention {needle:?}:\n{log}"
        );
    }
    assert_eq!(
        schema_versions(&pg),
        "1\n2",
        "a refused start changes nothing"
    );
}

/// Everything an operator would compare: recorded versions, tables and columns,
/// indexes, and a full dump of schema and data.
fn fingerprint(pg: &PgCluster) -> (String, String, String, String) {
    let columns = pg
        .psql(
            "gateway",
            "SELECT table_name || '.' || column_name || ':' || data_type
             FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
        )
        .unwrap();
    let indexes = pg
        .psql(
            "gateway",
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        )
        .unwrap();
    let dump = std::process::Command::new(pg.bin("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["--no-owner", "gateway"])
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // Newer pg_dump releases wrap the script in \restrict <random key>.
    let dump: String = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        dump.contains("COPY public.routes"),
        "the dump holds the data"
    );
    (schema_versions(pg), columns, indexes, dump)
}

#[test]
fn a_failing_migration_leaves_schema_and_data_unchanged() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);
    let cp = Cp::start("3.3.0", &pg, "gateway", dir.path());
    cp.put_route(&route("a", "/a"));
    cp.put_route(&route("b", "/b"));
    cp.proc.stop();
    let before = fingerprint(&pg);
    assert_eq!(before.0, "1");

    let (status, log) = Cp::run_to_exit("3.4.0-bad-migration", &pg, "gateway", dir.path());
    assert_eq!(status.code(), Some(1), "{log}");
    for needle in [
        "migration 2",
        "statement 2 of 2",
        "upstream_host",
        "unchanged at schema version 1",
    ] {
        assert!(
            log.contains(needle),
            "the failure should mention {needle:?}:\n{log}"
        );
    }
    assert_eq!(
        fingerprint(&pg),
        before,
        "the database must be exactly as before"
    );

    // The good release of the same version then migrates the same database.
    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    assert_eq!(cp.status()["schema_version"], 2);
    assert_eq!(
        client::get(cp.addr, "/api/routes").json()["routes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
