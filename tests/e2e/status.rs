//! `rollgate status` against real agents.

use crate::support::{Host, Sandbox, json};

fn row<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {doc}"))
}

#[test]
fn status_lists_every_host_with_its_installed_version_and_compatibility() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2), ("dp-2", 3)]);
    let cp = Host::create(&sb, "cp-1", "cp", 1, &["3.3.0", "3.4.0"], Some("3.4.0"), "");
    // One minor behind the CP: compatible. One minor ahead: not.
    let dp1 = Host::create(&sb, "dp-1", "dp", 2, &["3.3.0"], Some("3.3.0"), "");
    let dp2 = Host::create(&sb, "dp-2", "dp", 3, &["3.5.0"], Some("3.5.0"), "");
    let _agents: Vec<_> = [&cp, &dp1, &dp2].iter().map(|h| h.start_agent()).collect();
    sb.inventory(&[cp.entry(), dp1.entry(), dp2.entry()], "");

    let out = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let doc = json(&out);
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 3);
    let (c, d1, d2) = (row(&doc, "cp-1"), row(&doc, "dp-1"), row(&doc, "dp-2"));
    assert_eq!(c["role"], "cp");
    assert_eq!(c["version"], "3.4.0");
    assert_eq!(d1["version"], "3.3.0");
    assert_eq!(d2["version"], "3.5.0");
    for r in [c, d1, d2] {
        assert_eq!(r["reachable"], true, "{r}");
        // No gateway runs on these hosts yet.
        assert_eq!(r["healthy"], false, "{r}");
    }
    assert_eq!(d1["compatible"], true, "one minor older than the CP: {d1}");
    assert_eq!(d2["compatible"], false, "newer than the CP: {d2}");
    assert!(d2["reason"].as_str().unwrap().contains("newer"), "{d2}");

    // The text form shows the same rows.
    let text = sb.rollgate(&["status", "-i", "fleet.toml"]);
    assert_eq!(text.code, Some(0));
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("dp-2") && l.contains("3.5.0")),
        "{}",
        text.stdout
    );
}

#[test]
fn an_agent_killed_midway_is_reported_unreachable_with_exit_code_1() {
    let sb = Sandbox::new();
    sb.certs(&[("cp-1", 1), ("dp-1", 2)]);
    let cp = Host::create(&sb, "cp-1", "cp", 1, &["3.4.0"], Some("3.4.0"), "");
    let dp = Host::create(&sb, "dp-1", "dp", 2, &["3.4.0"], Some("3.4.0"), "");
    let _cp_agent = cp.start_agent();
    let mut dp_agent = dp.start_agent();
    sb.inventory(&[cp.entry(), dp.entry()], "");

    let before = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(before.code, Some(0), "{}", before.stderr);

    dp_agent.signal(nix::sys::signal::Signal::SIGKILL);
    dp_agent
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("agent died");

    let after = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(after.code, Some(1), "stderr: {}", after.stderr);
    let doc = json(&after);
    assert_eq!(row(&doc, "cp-1")["reachable"], true);
    let d = row(&doc, "dp-1");
    assert_eq!(d["reachable"], false);
    assert!(d["error"].as_str().unwrap().contains("connect"), "{d}");
    assert!(
        after.stderr.contains("dp-1"),
        "the failure names the host: {}",
        after.stderr
    );
}
