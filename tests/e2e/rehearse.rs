//! Rehearsing the CP upgrade on a scratch copy of the production database:
//! real PostgreSQL, the reference CP's real migrations, the real CLI.

use std::time::Duration;

use rollgate_testbed::fleet::DemoFleet;
use rollgate_testbed::http;

use crate::support::{Sandbox, wait_until};
use crate::upgrade::events;
use crate::zero_downtime::{args, expect_exit, inventory_args, policy, rollgate};

/// `rollgate rehearse -i … -c … --to V --output json`.
fn rehearse_args(fleet: &DemoFleet, to: &str) -> Vec<String> {
    let mut a = args(fleet, "rehearse", to);
    a.retain(|x| x != "--yes");
    a
}

/// What a rehearsal must leave of production exactly as it was, and of
/// itself nothing.
struct Production {
    schema: String,
    export: String,
}

fn production(fleet: &DemoFleet) -> Production {
    let cp = fleet.host("cp-1").unwrap().gateway;
    Production {
        schema: fleet
            .pg
            .as_ref()
            .unwrap()
            .psql("gateway", "SELECT max(version) FROM schema_version")
            .unwrap(),
        export: http::get(cp, "/api/export").unwrap().1,
    }
}

fn assert_untouched_and_clean(fleet: &DemoFleet, before: &Production) {
    let now = production(fleet);
    assert_eq!(now.schema, before.schema, "production's schema");
    assert_eq!(
        now.export, before.export,
        "production's export, byte for byte"
    );
    let scratch = fleet
        .pg
        .as_ref()
        .unwrap()
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'rollgate\\_rehearsal\\_%'",
        )
        .unwrap();
    assert_eq!(scratch.trim(), "0", "no scratch database is left");
    let state = fleet.host("cp-1").unwrap().dir.join("state");
    assert!(
        !state.join("rehearsal").exists(),
        "no rehearsal files are left"
    );
    assert!(
        !state.join("rehearsal.pid").exists(),
        "no rehearsal CP is recorded"
    );
    let log = std::fs::read_to_string(fleet.dir.join("cp-1/agent.log")).unwrap_or_default();
    for pid in log
        .lines()
        .filter(|l| l.contains("rehearsal CP started"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        })
    {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with(['R', 'S', 'D']))
            })
            .unwrap_or(false);
        assert!(!alive, "the rehearsal CP (pid {pid}) still runs");
    }
}

/// A two-hop rehearsal (to 3.5.0 through 3.4.1) passes, each hop on the
/// result of the one before, reports its timings, and leaves production
/// byte-identical and no scratch database, file or process; `plan` then
/// predicts the CP window from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_passes_reports_timings_and_leaves_production_as_it_was() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(2, "3.3.0", &policy(""));
    let before = production(&fleet);
    let out = rollgate(&sb, rehearse_args(&fleet, "3.5.0")).await;
    expect_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(doc["production_unchanged"], true, "{doc}");
    let hops = doc["hops"].as_array().unwrap();
    let seen: Vec<(&str, i64, i64)> = hops
        .iter()
        .map(|h| {
            assert_eq!(h["ok"], true, "{h}");
            assert_eq!(h["export_ok"], true, "{h}");
            assert!(h["ready_ms"].as_u64().unwrap() > 0, "{h}");
            assert_eq!(h["reported_version"], h["to"], "{h}");
            (
                h["to"].as_str().unwrap(),
                h["schema_before"].as_i64().unwrap(),
                h["schema_after"].as_i64().unwrap(),
            )
        })
        .collect();
    // The second hop starts from the first one's schema.
    assert_eq!(seen, [("3.4.1", 1, 2), ("3.5.0", 2, 3)], "{doc}");
    assert_untouched_and_clean(&fleet, &before);

    let mut plan = args(&fleet, "plan", "3.5.0");
    plan.retain(|x| x != "--yes");
    let out = rollgate(&sb, plan).await;
    expect_exit(&out, 0);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let windows = plan["cp_windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{plan}");
    for w in windows {
        assert!(w["rehearsed"]["ready_ms"].as_u64().is_some(), "{w}");
    }
}

/// A release whose migration fails: the rehearsal exits 2 with the CP's
/// own last lines and production untouched; an upgrade to it then halts at
/// its rehearsal, before the CP is swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_is_caught_by_the_rehearsal_before_production() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(2, "3.3.0", &policy(""));
    let before = production(&fleet);
    let out = rollgate(&sb, rehearse_args(&fleet, "3.4.0-bad-migration")).await;
    expect_exit(&out, 2);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(doc["production_unchanged"], true, "{doc}");
    let hop = &doc["hops"][0];
    assert_eq!(hop["ok"], false, "{doc}");
    assert!(
        hop["log"].as_str().unwrap().contains("migration 2"),
        "the CP's own lines: {doc}"
    );
    assert_untouched_and_clean(&fleet, &before);

    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0-bad-migration")).await;
    expect_exit(&out, 1);
    let evs = events(&out.stdout);
    let failed = evs
        .iter()
        .find(|e| e["event"] == "step" && e["status"] == "failed")
        .expect("a failed step");
    assert_eq!(failed["step"], "rehearse", "{failed}");
    assert!(
        !evs.iter()
            .any(|e| e["step"] == "install" || e["step"] == "drain"),
        "no CP or DP was touched"
    );
    assert_eq!(
        http::status_version(fleet.host("cp-1").unwrap().gateway).as_deref(),
        Some("3.3.0")
    );
    assert_untouched_and_clean(&fleet, &before);
}

/// kill -9 of the CP's agent right after the scratch database was made (the
/// restore about to run) and again right after the rehearsal CP started:
/// the restarted agent removes the scratch database, the process and the
/// files; the next rehearsal passes on a fresh copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_cleans_up_its_rehearsal_on_restart() {
    let sb = Sandbox::new();
    let mut fleet = sb.demo_fleet(2, "3.3.0", &policy(""));
    let before = production(&fleet);
    for failpoint in ["rehearse:scratch_created", "rehearse:started"] {
        fleet.kill_agent("cp-1").unwrap();
        fleet
            .start_agent_env("cp-1", &[("ROLLGATE_FAILPOINT", failpoint)])
            .unwrap();
        let run = sb.rollgate_bg(&rehearse_args(&fleet, "3.4.0"));
        fleet = tokio::task::spawn_blocking(move || {
            let mut fleet = fleet;
            wait_until(
                Duration::from_secs(120),
                &format!("cp-1's agent to die at {failpoint}"),
                || fleet.agent_exited("cp-1"),
            );
            fleet.start_agent("cp-1").unwrap();
            fleet
        })
        .await
        .unwrap();
        let (code, lines) =
            tokio::task::spawn_blocking(move || run.finish(Duration::from_secs(180)))
                .await
                .unwrap();
        // The recovered step is INTERRUPTED (undone): a failed rehearsal
        // with production unchanged.
        assert_eq!(code, Some(2), "{failpoint}: {}", lines.join("\n"));
        assert_untouched_and_clean(&fleet, &before);
    }
    let out = rollgate(&sb, rehearse_args(&fleet, "3.4.0")).await;
    expect_exit(&out, 0);
    assert_untouched_and_clean(&fleet, &before);
    let st = rollgate(&sb, inventory_args("status", &fleet)).await;
    expect_exit(&st, 0);
}

/// kill -9 of the coordinator once the rehearsal step has begun: `resume`
/// re-attaches to it by operation id on the agent (no second rehearsal),
/// and ends with the rehearsal's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_resumes_the_rehearsal_by_operation_id() {
    let sb = Sandbox::new();
    let fleet = sb.demo_fleet(2, "3.3.0", &policy(""));
    let before = production(&fleet);
    let mut text = rehearse_args(&fleet, "3.4.0");
    text.truncate(text.len() - 2); // text output: one line per event
    let mut run = sb.rollgate_bg(&text);
    tokio::task::spawn_blocking(move || {
        run.wait_line(Duration::from_secs(180), "the rehearsal to begin", |l| {
            l.contains("rehearse") && l.contains("started")
        });
        run.kill9();
    })
    .await
    .unwrap();
    let out = rollgate(&sb, inventory_args("resume", &fleet)).await;
    expect_exit(&out, 0);
    assert!(out.stdout.contains("\"rehearsed\""), "{}", out.stdout);
    assert_untouched_and_clean(&fleet, &before);
    // The agent ran one rehearsal, whatever the coordinator did.
    let log = std::fs::read_to_string(fleet.dir.join("cp-1/agent.log")).unwrap();
    assert_eq!(
        log.matches("rehearsal CP started").count(),
        1,
        "one rehearsal CP, not two"
    );
}
