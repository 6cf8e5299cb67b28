//! `docs/operator-guide.md`, run: every `rollgate` command in its shell
//! blocks is run, in order, against a demo fleet built by the guide's own
//! `rollgate demo` command. Before the section on stopped rollouts each must
//! succeed (exit 0); that section's commands (resume, upgrade again,
//! rollback: what a halted rollout needs, which this fleet has not got) are
//! parsed by the real CLI (`--help` appended: every option and value is
//! checked, nothing runs).

use std::path::Path;
use std::time::Duration;

use crate::support::{KeptDemo, ROLLGATE, Sandbox, proc};

const GUIDE: &str = include_str!("../../docs/operator-guide.md");
const HALTS: &str = "## When a rollout stops";

/// The `rollgate …` lines of the guide's ```sh blocks, in order.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if in_sh && t.starts_with("rollgate ") {
            out.push(t.split(" #").next().unwrap().trim().to_string());
        }
    }
    out
}

fn words(cmd: &str, rollout: &str) -> Vec<String> {
    cmd.split_whitespace()
        .skip(1)
        .map(|w| w.replace("<rollout>", rollout))
        .collect()
}

/// The newest upgrade's id, from `rollgate history`.
fn latest_upgrade(cwd: &Path) -> String {
    let out = proc::run(
        ROLLGATE,
        &["history", "-i", "fleet.toml", "--output", "json"],
        cwd,
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut ups: Vec<&serde_json::Value> = doc["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"].to_string().contains("upgrade"))
        .collect();
    ups.sort_by_key(|r| r["created"].as_str().unwrap_or_default().to_string());
    ups.last()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn every_command_of_the_operator_guide_runs_against_a_demo_fleet() {
    let (walk, halts) = GUIDE.split_at(GUIDE.find(HALTS).expect("the guide has its halts section"));
    let walk = commands(walk);
    let halts = commands(halts);
    assert!(walk.len() >= 8 && halts.len() >= 3, "{walk:?} {halts:?}");
    let sb = Sandbox::new();
    let cwd = sb.path();

    // The guide's demo command first, as written (JSON to read its paths).
    let demo = walk[0].clone();
    assert!(demo.starts_with("rollgate demo"), "{demo}");
    let demo_fleet = KeptDemo::start(cwd, &words(&demo, ""));
    let doc = &demo_fleet.doc;
    std::os::unix::fs::symlink(doc["inventory"].as_str().unwrap(), cwd.join("fleet.toml")).unwrap();
    std::os::unix::fs::symlink(doc["catalog"].as_str().unwrap(), cwd.join("releases.toml"))
        .unwrap();

    for cmd in &walk[1..] {
        let rollout = if cmd.contains("<rollout>") {
            let id = latest_upgrade(cwd);
            assert!(!id.is_empty(), "no upgrade in history for {cmd}");
            id
        } else {
            String::new()
        };
        let out = proc::run(
            ROLLGATE,
            &words(cmd, &rollout),
            cwd,
            Duration::from_secs(300),
        );
        assert_eq!(out.code, Some(0), "{cmd}\n{}\n{}", out.stdout, out.stderr);
    }

    let rollout = latest_upgrade(cwd);
    for cmd in &halts {
        let mut args = words(cmd, &rollout);
        args.push("--help".into());
        let out = proc::run(ROLLGATE, &args, cwd, Duration::from_secs(30));
        let sub = &args[0];
        assert!(
            out.code == Some(0) && out.stdout.contains(&format!("Usage: rollgate {sub}")),
            "{cmd}: {}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn a_command_the_cli_would_refuse_is_caught() {
    // The check above would see a wrong option: clap refuses it even with
    // --help after it.
    let sb = Sandbox::new();
    let out = proc::run(
        ROLLGATE,
        &["resume", "-i", "fleet.toml", "--no-such-option", "--help"],
        sb.path(),
        Duration::from_secs(30),
    );
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    let fenced =
        "```sh\nrollgate status -i fleet.toml   # a comment\n```\n```\nrollgate not-sh\n```\n";
    assert_eq!(commands(fenced), ["rollgate status -i fleet.toml"]);
}
