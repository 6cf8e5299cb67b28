//! `rollgate inventory import --ansible`: an operator's Ansible inventory
//! becomes a fleet.toml that `rollgate status` uses against real agents.

use crate::support::fixtures::fleet_on_330;
use crate::support::gateway::Db;
use crate::support::{Host, Sandbox, json};

fn line(h: &Host) -> String {
    format!(
        "{} ansible_host={} rollgate_agent_port={}",
        h.name,
        h.agent_addr.ip(),
        h.agent_addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ansible_inventory_becomes_a_fleet_toml_that_status_accepts() {
    let sb = Sandbox::new();
    let db = Db::start();
    let fleet = fleet_on_330(&sb, &db, 2, "").await;
    let (dp1, dp2) = (&fleet.dps[0].0, &fleet.dps[1].0);
    // As an operator has it: nested groups, group vars, a host rollgate
    // does not manage.
    let ini = format!(
        "# production\n[gateway_cp]\n{}\n\n[edge_a]\n{}\n[edge_b]\n{}\n\n[gateway_dp:children]\nedge_a\nedge_b\n\n[edge_b:vars]\nrollgate_group=b\n\n[databases]\npg-1 ansible_host=127.0.0.1\n",
        line(&fleet.cp.host),
        line(dp1),
        line(dp2)
    );
    std::fs::write(sb.path().join("hosts.ini"), ini).unwrap();
    let import = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "inventory",
            "import",
            "--ansible",
            "hosts.ini",
            "--cp-group",
            "gateway_cp",
            "--dp-group",
            "gateway_dp",
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        sb.rollgate(&args)
    };
    let out = import("imported.toml", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("left out") && out.stderr.contains("pg-1"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(sb.path().join("imported.toml")).unwrap();
    assert!(text.contains("labels = { group = \"b\" }"), "{text}");

    let status = sb.rollgate(&["status", "-i", "imported.toml", "--output", "json"]);
    assert_eq!(status.code, Some(0), "{}\n{}", status.stdout, status.stderr);
    let doc = json(&status);
    let hosts = doc["hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cp-1", "dp-1", "dp-2"], "{doc}");
    for h in hosts {
        assert_eq!(h["version"], "3.3.0", "{h}");
    }

    // An existing file is not replaced without --force.
    let again = import("imported.toml", &[]);
    assert_eq!(again.code, Some(64), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(sb.path().join("imported.toml")).unwrap(),
        text
    );
    assert_eq!(import("imported.toml", &["--force"]).code, Some(0));

    // A host in both groups: the error names it, nothing is written.
    std::fs::write(
        sb.path().join("hosts.ini"),
        format!(
            "[gateway_cp]\n{}\n[gateway_dp]\n{}\ncp-1\n",
            line(&fleet.cp.host),
            line(dp1)
        ),
    )
    .unwrap();
    let bad = import("ambiguous.toml", &[]);
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("host `cp-1` is in both"),
        "{}",
        bad.stderr
    );
    assert!(!sb.path().join("ambiguous.toml").exists());
}
