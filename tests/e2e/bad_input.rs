//! Careless and hostile command-line input: bad catalogs, rollout ids that
//! point outside the state directory, damaged rollout journals. Each gets a
//! clear error and changes nothing.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::support::Sandbox;
use crate::support::fixtures::fleet_on_330;
use crate::support::gateway::{self, Db};

/// A catalog of 3.3.0 and 3.4.0 in `<sandbox>/<name>/`, the artifacts
/// copied next to it; `edit` changes the 3.4.0 entry's (artifact, sha256,
/// size) before it is written.
fn catalog(sb: &Sandbox, name: &str, edit: impl Fn(&mut (String, String, u64))) -> PathBuf {
    let dir = sb.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for v in ["3.3.0", "3.4.0"] {
        let r = gateway::release(v);
        let file = format!("gw-{v}.tar.gz");
        std::fs::copy(gateway::artifact_path(&r), dir.join(&file)).unwrap();
        let mut entry = (file, r.sha256.clone(), r.size);
        if v == "3.4.0" {
            edit(&mut entry);
        }
        text.push_str(&format!(
            "[[releases]]\nversion = \"{v}\"\nartifact = \"{}\"\nsha256 = \"{}\"\nsize = {}\n\n",
            entry.0, entry.1, entry.2
        ));
    }
    let p = dir.join("releases.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sha_of(p: &Path) -> (String, u64) {
    let b = std::fs::read(p).unwrap();
    (hex::encode(Sha256::digest(&b)), b.len() as u64)
}

/// Stage operations the rollouts (ids `r-…`) asked of the agents.
fn rollout_stages(sb: &Sandbox) -> usize {
    ["cp-1", "dp-1", "dp-2"]
        .iter()
        .filter_map(|h| std::fs::read_to_string(sb.path().join(h).join("state/journal")).ok())
        .flat_map(|t| {
            t.lines()
                .filter(|l| l.contains("\"op\":\"r-") && l.contains("\"kind\":\"stage\""))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .count()
}

/// Defect: a missing artifact, a wrong checksum or size, or an artifact path
/// naming a system file passed `plan` ("can run"), and `upgrade` streamed the
/// file to every agent before halting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_catalog_artifacts_are_refused_before_any_rollout_or_agent_step() {
    let sb = Sandbox::new();
    let db = Db::start();
    let _fleet = fleet_on_330(&sb, &db, 2, "").await;
    let (passwd_sha, passwd_size) = sha_of(Path::new("/etc/passwd"));
    let other = gateway::release("3.4.1");
    let cases = [
        (
            catalog(&sb, "missing", |e| e.0 = "nope.tar.gz".into()),
            "cannot be read",
        ),
        (
            catalog(&sb, "badsha", |e| e.1 = other.sha256.clone()),
            "sha256",
        ),
        (catalog(&sb, "badsize", |e| e.2 += 1), "bytes"),
        (
            catalog(&sb, "system", |e| {
                *e = ("/etc/passwd".into(), passwd_sha.clone(), passwd_size)
            }),
            "outside the catalog's directory",
        ),
    ];
    for (cat, want) in cases {
        let cat = cat.display().to_string();
        for cmd in ["plan", "upgrade"] {
            let mut args = vec![cmd, "-i", "fleet.toml", "-c", &cat, "--to", "3.4.0"];
            if cmd == "upgrade" {
                args.push("--yes");
            }
            let out = sb.rollgate(&args);
            assert_eq!(
                out.code,
                Some(64),
                "{cmd} {cat}: {}\n{}",
                out.stdout,
                out.stderr
            );
            assert!(
                out.stderr.contains("release 3.4.0") && out.stderr.contains(want),
                "{cmd} {cat}: expected {want:?}: {}",
                out.stderr
            );
        }
    }
    assert!(
        !sb.path().join("state/rollouts").exists()
            || sb.path().join("state/rollouts").read_dir().unwrap().count() == 0,
        "no rollout was recorded"
    );
    assert_eq!(rollout_stages(&sb), 0, "no agent was asked to stage");
    // The good catalog still plans.
    let good = catalog(&sb, "good", |_| {}).display().to_string();
    let ok = sb.rollgate(&["plan", "-i", "fleet.toml", "-c", &good, "--to", "3.4.0"]);
    assert_eq!(ok.code, Some(0), "{}\n{}", ok.stdout, ok.stderr);
}

/// An inventory whose agents never need to answer.
fn idle_inventory(sb: &Sandbox) {
    sb.certs(&[("dp-1", 2)]);
    let addr = std::net::SocketAddr::new(sb.ip(2).into(), 9);
    sb.inventory(&[("dp-1", "dp", addr)], "");
}

/// An inventory with more hosts than the coordinator may hold connections
/// to (it keeps one open to every agent) is refused at once, naming the
/// limit, before anything is asked of a host or written: not halfway
/// through a rollout with "too many open files".
#[test]
fn a_fleet_beyond_the_open_file_limit_is_refused_before_anything_happens() {
    let sb = Sandbox::new();
    sb.certs(&[]);
    let hosts: Vec<(String, std::net::SocketAddr)> = (1..=100)
        .map(|n| {
            let addr = std::net::SocketAddr::new(sb.ip(2).into(), 9000 + n);
            (format!("dp-{n}"), addr)
        })
        .collect();
    let listed: Vec<(&str, &str, std::net::SocketAddr)> =
        hosts.iter().map(|(n, a)| (n.as_str(), "dp", *a)).collect();
    sb.inventory(&listed, "");
    // `ulimit -n` sets the hard limit too: the coordinator cannot raise it.
    let limited = |args: &[String]| {
        let mut argv = vec![
            "-c",
            "ulimit -n 300 && exec \"$0\" \"$@\"",
            crate::support::ROLLGATE,
        ];
        argv.extend(args.iter().map(String::as_str));
        crate::support::proc::run("sh", &argv, sb.path(), std::time::Duration::from_secs(60))
    };
    let out = limited(&crate::upgrade::upgrade_to("3.4.0"));
    assert_eq!(out.code, Some(64), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("100 hosts") && out.stderr.contains("at most 300"),
        "{}",
        out.stderr
    );
    assert!(!sb.path().join("state").exists(), "nothing was written");
    // Reading the history opens no connection: the same limit is no bar.
    let history = limited(&["history", "-i", "fleet.toml"].map(String::from));
    assert_eq!(
        history.code,
        Some(0),
        "{}\n{}",
        history.stdout,
        history.stderr
    );
}

/// Defect: `rollback -i fleet.toml ../../../../<elsewhere>/evil` read
/// `<elsewhere>/evil.jsonl`. Rollout ids follow the generated form or exit 64.
#[test]
fn rollout_ids_outside_the_generated_form_exit_64() {
    let sb = Sandbox::new();
    idle_inventory(&sb);
    std::fs::write(sb.path().join("evil.jsonl"), "{\"t\":\"created\"}\n").unwrap();
    let evil = format!("../../../..{}/evil", sb.path().display());
    for args in [
        vec!["rollback", "-i", "fleet.toml", &evil, "--yes"],
        vec!["resume", "-i", "fleet.toml", &evil],
        vec!["show", "-i", "fleet.toml", &evil],
        vec!["show", "-i", "fleet.toml", "r-20261130T105553Z-1a2b/../x"],
    ] {
        let out = sb.rollgate(&args);
        assert_eq!(out.code, Some(64), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("rollout id"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A well-formed id that does not exist is a plain "no rollout".
    let out = sb.rollgate(&["show", "-i", "fleet.toml", "r-20261130T105553Z-1a2b"]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("no rollout"), "{}", out.stderr);
}

/// Defect: corrupt rollout journals silently dropped out of `history`.
#[test]
fn history_lists_unreadable_journals_and_exits_1() {
    let sb = Sandbox::new();
    idle_inventory(&sb);
    let rollouts = sb.path().join("state/rollouts");
    std::fs::create_dir_all(&rollouts).unwrap();
    std::fs::write(
        rollouts.join("r-20261130T105553Z-1a2b.jsonl"),
        "not a journal\n",
    )
    .unwrap();
    let text = sb.rollgate(&["history", "-i", "fleet.toml"]);
    assert_eq!(text.code, Some(1), "{}", text.stderr);
    assert!(
        text.stdout.contains("r-20261130T105553Z-1a2b") && text.stdout.contains("unreadable"),
        "{}",
        text.stdout
    );
    let json = sb.rollgate(&["history", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(json.code, Some(1), "{}", json.stderr);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["unreadable"], 1, "{doc}");
    assert_eq!(doc["rollouts"][0]["outcome"], "unreadable", "{doc}");
    assert!(
        doc["rollouts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{doc}"
    );
}
