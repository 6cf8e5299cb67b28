//! The declarative config (`adc dump` style): export, import into an empty CP,
//! export again, byte for byte.

use serde_json::json;

use crate::support::client;
use crate::support::gateway::{Cp, postgres, temp_dir};

#[test]
fn export_then_import_into_an_empty_cp_round_trips_byte_for_byte() {
    let dir = temp_dir();
    let pg = postgres(&["source", "target"]);
    let source = Cp::start("3.4.0", &pg, "source", dir.path());
    let target = Cp::start("3.4.0", &pg, "target", dir.path());

    // Written out of id order, with values YAML could misread if quoted badly.
    let routes = [
        json!({"id": "web", "path_prefix": "/", "upstream": "http://127.0.0.1:8081",
               "plugins": [{"name": "response-header", "config": {"name": "X-Yes", "value": "yes"}}]}),
        json!({"id": "api-v2", "path_prefix": "/api/v2", "upstream": "http://127.0.0.1:8082",
               "description": "multi-line\nnote: with # and 'quotes' and ünïcødé",
               "plugins": [
                   {"name": "strip-prefix", "config": {}},
                   {"name": "response-header", "config": {"value": "0123", "name": "X-Num"}}]}),
        json!({"id": "api", "path_prefix": "/api", "upstream": "http://127.0.0.1:8083", "plugins": []}),
    ];
    for route in &routes {
        source.put_route(route);
    }
    let exported = client::get(source.addr, "/api/export");
    assert_eq!(exported.status, 200);
    assert_eq!(exported.header("content-type"), Some("application/yaml"));
    let yaml = exported.text();
    assert!(
        !yaml.contains("revision"),
        "no revision in the export:\n{yaml}"
    );
    let ids: Vec<_> = yaml
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- id: "))
        .collect();
    assert_eq!(
        ids,
        ["api", "api-v2", "web"],
        "routes sorted by id:\n{yaml}"
    );

    let revision_before = target.status()["config_revision"].as_i64().unwrap();
    let imported = client::request(
        target.addr,
        "POST",
        "/api/import",
        Some("application/yaml"),
        yaml.as_bytes(),
    )
    .unwrap();
    assert_eq!(imported.status, 200, "{}", imported.text());
    assert!(target.status()["config_revision"].as_i64().unwrap() > revision_before);

    let again = client::get(target.addr, "/api/export").text();
    assert_eq!(
        again, yaml,
        "export -> import -> export must be byte-for-byte identical"
    );
    assert_eq!(
        client::get(target.addr, "/api/routes").json()["routes"],
        client::get(source.addr, "/api/routes").json()["routes"]
    );

    // A bad import is refused and changes nothing.
    let revision = target.status()["config_revision"].clone();
    for bad in [
        "routes: [",
        "routes:\n  - id: x\n    path_prefix: nope\n    upstream: http://h:1\n",
    ] {
        let refused = client::request(
            target.addr,
            "POST",
            "/api/import",
            Some("application/yaml"),
            bad.as_bytes(),
        )
        .unwrap();
        assert_eq!(refused.status, 400, "{}", refused.text());
    }
    assert_eq!(client::get(target.addr, "/api/export").text(), yaml);
    assert_eq!(target.status()["config_revision"], revision);
}
