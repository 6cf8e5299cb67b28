//! Gateways run as Docker Compose services, upgraded by rewriting the one
//! variable that pins their image tag and recreating only their services:
//! the real Docker Engine, the machine's compose tool, real HAProxy and
//! PostgreSQL, the real CLI. These tests need a running Docker Engine: where
//! there is none they fail, saying so; they never skip.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rollgate::pb;
use rollgate_testbed::fleet::DemoFleet;
use rollgate_testbed::install::{self, Install};
use rollgate_testbed::load::Load;
use sha2::{Digest, Sha256};

use crate::support::{Sandbox, client, wait_until};
use crate::upgrade::events;
use crate::zero_downtime::{
    RATE, args, assert_rate, assert_rehearsed, expect_exit, failed_steps, inventory_args, policy,
    rollback_args, rollgate,
};

/// Fails (never skips) when the Docker Engine is not there.
fn require_docker() {
    if let Some(why) = install::docker_missing() {
        panic!("the compose tests need {why}; deploy/prereqs.sh installs and starts it");
    }
}

fn compose_fleet(sb: &Sandbox, dps: usize, policy: &str) -> DemoFleet {
    require_docker();
    sb.fleet_installed(Install::Compose, dps, "3.3.0", policy)
}

/// (id, "StartedAt Running Image") of every container of a host's service.
fn containers(fleet: &DemoFleet, host: &str, service: &str) -> Vec<(String, String)> {
    fleet
        .host(host)
        .and_then(|h| h.project.as_ref())
        .map(|p| p.containers(service))
        .unwrap_or_default()
}

/// Every service the rollout upgrades: (host, service).
const UPGRADED: [(&str, &str); 5] = [
    ("cp-1", "cp"),
    ("cp-1", "cp-sidecar"),
    ("dp-1", "dp"),
    ("dp-2", "dp"),
    ("dp-3", "dp"),
];

/// Exactly one container of the service, running `demo-gateway:<version>`.
fn assert_runs(fleet: &DemoFleet, host: &str, service: &str, version: &str) {
    let cs = containers(fleet, host, service);
    assert_eq!(cs.len(), 1, "{host}/{service}: one container, not {cs:?}");
    let state = &cs[0].1;
    assert!(
        state.ends_with(&format!("true demo-gateway:{version}")),
        "{host}/{service} should run demo-gateway:{version}: {state}"
    );
}

fn pinned(fleet: &DemoFleet, host: &str) -> String {
    let env = fleet
        .host(host)
        .unwrap()
        .project
        .as_ref()
        .unwrap()
        .dir
        .join(".env");
    std::fs::read_to_string(env).unwrap()
}

/// A CP (two services pinned by one variable, plus an unrelated service)
/// and three DPs go 3.3.0 → 3.4.0 under load with no failed request, then
/// `rollback --restore-db` brings every container back; the unrelated
/// service runs untouched throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compose_fleet_upgrades_and_rolls_back_with_zero_failed_requests() {
    let sb = Sandbox::new();
    let fleet = compose_fleet(&sb, 3, &policy(""));
    let unrelated = containers(&fleet, "cp-1", "unrelated");
    assert_eq!(unrelated.len(), 1, "{unrelated:?}");
    let env_before = pinned(&fleet, "cp-1");

    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0")).await;
    let report = load.stop().await;
    expect_exit(&out, 0);
    assert_eq!(events(&out.stdout).last().unwrap()["status"], "succeeded");
    // 3.4.0 migrates: the CP hop was rehearsed first, as a throwaway
    // container of the staged image.
    assert_rehearsed(&out.stdout);
    assert_rate(&report);
    assert_eq!(report.failed, 0, "failed requests: {report:?}");
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h} /status");
    }
    for (host, service) in UPGRADED {
        assert_runs(&fleet, host, service, "3.4.0");
    }
    // One line of the operator's env file changed, nothing else.
    assert_eq!(
        pinned(&fleet, "cp-1"),
        env_before.replace("GATEWAY_TAG=3.3.0", "GATEWAY_TAG=3.4.0")
    );
    assert_eq!(
        containers(&fleet, "cp-1", "unrelated"),
        unrelated,
        "the unrelated service was not touched"
    );

    // Status shows the container's version beside the gateway's own.
    let st = rollgate(&sb, inventory_args("status", &fleet)).await;
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    for h in doc["hosts"].as_array().unwrap() {
        assert_eq!(h["method"], "compose", "{h}");
        assert_eq!(h["artifact_version"], "3.4.0", "{h}");
        assert_eq!(h["running_version"], "3.4.0", "{h}");
        assert!(h.get("mismatch").is_none(), "{h}");
    }

    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, rollback_args(&fleet)).await;
    let report = load.stop().await;
    expect_exit(&out, 0);
    assert_eq!(report.failed, 0, "failed requests: {report:?}");
    for (host, service) in UPGRADED {
        assert_runs(&fleet, host, service, "3.3.0");
    }
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.3.0"), "{h} /status");
    }
    assert_eq!(pinned(&fleet, "cp-1"), env_before);
    assert_eq!(
        containers(&fleet, "cp-1", "unrelated"),
        unrelated,
        "the unrelated service was not touched"
    );
}

/// A release whose gateway never becomes ready: the canary's container goes
/// back to the previous image and the fleet keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_never_ready_image_is_reverted_to_the_previous_image() {
    let sb = Sandbox::new();
    let fleet = compose_fleet(&sb, 2, &policy("health_timeout = \"5s\""));
    let load = Load::start(fleet.url(), RATE, 8);
    let out = rollgate(&sb, args(&fleet, "upgrade", "3.4.0-never-ready")).await;
    let report = load.stop().await;
    expect_exit(&out, 1);
    let failed = failed_steps(&out.stdout);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["host"], "dp-1", "the canary");
    assert_eq!(failed[0]["detail"]["reverted"], true);
    assert_runs(&fleet, "dp-1", "dp", "3.3.0");
    assert!(pinned(&fleet, "dp-1").contains("GATEWAY_TAG=3.3.0"));
    assert_runs(&fleet, "dp-2", "dp", "3.3.0");
    assert_rate(&report);
    assert!(report.failed <= 5, "failed requests: {report:?}");
}

/// kill -9 of the agent right after it rewrote the tag (dp-1), and in the
/// middle of compose recreating the container (dp-2, compose killed with
/// it): each restarted agent ends its host on exactly one container of the
/// new image, and the rollout goes on to succeed with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_leaves_its_compose_host_on_exactly_one_image() {
    let sb = Sandbox::new();
    let mut fleet = compose_fleet(&sb, 2, &policy(""));
    fleet.kill_agent("dp-1").unwrap();
    fleet
        .start_agent_env("dp-1", &[("ROLLGATE_FAILPOINT", "install:switched")])
        .unwrap();
    fleet.kill_agent("dp-2").unwrap();
    fleet
        .start_agent_env("dp-2", &[("ROLLGATE_FAILPOINT", "compose:recreating")])
        .unwrap();
    let load = Load::start(fleet.url(), RATE, 8);
    let run = sb.rollgate_bg(&args(&fleet, "upgrade", "3.4.0"));
    let fleet = tokio::task::spawn_blocking(move || {
        let mut fleet = fleet;
        for host in ["dp-1", "dp-2"] {
            wait_until(
                Duration::from_secs(180),
                &format!("{host}'s agent to die at its failpoint"),
                || fleet.agent_exited(host),
            );
            if host == "dp-1" {
                // Killed right after the rewrite: the file pins the new tag.
                assert!(pinned(&fleet, host).contains("GATEWAY_TAG=3.4.0"));
            }
            fleet.start_agent(host).unwrap();
        }
        fleet
    })
    .await
    .unwrap();
    let (code, lines) = tokio::task::spawn_blocking(move || run.finish(Duration::from_secs(300)))
        .await
        .unwrap();
    let report = load.stop().await;
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    for host in ["dp-1", "dp-2"] {
        assert_runs(&fleet, host, "dp", "3.4.0");
        assert!(pinned(&fleet, host).contains("GATEWAY_TAG=3.4.0"));
    }
    for (h, v) in fleet.versions() {
        assert_eq!(v.as_deref(), Some("3.4.0"), "{h} /status");
    }
    assert_eq!(report.failed, 0, "failed requests: {report:?}");
}

/// An image archive, rewritten to tag `reference` (the config, so the ID,
/// unchanged); written uncompressed, as `docker save` writes it.
fn retagged(archive: &Path, reference: &str, out: &Path) {
    use std::io::Read;
    let f = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if path == Path::new("manifest.json") {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            m[0]["RepoTags"] = serde_json::json!([reference]);
            data = serde_json::to_vec(&m).unwrap();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

async fn stage_image(
    c: &mut rollgate::pb::agent_client::AgentClient<tonic::transport::Channel>,
    op: &str,
    version: &str,
    file: &Path,
    sha256: &str,
    image_id: &str,
) -> pb::OperationResult {
    client::stage_location(c, op, version, file, sha256, image_id)
        .await
        .expect("a result")
}

fn sha256_of(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// A tampered archive and an archive whose image ID is not the catalog's
/// are refused on stage: nothing is loaded into the engine and nothing is
/// left on the host. The same archive with the right checksum and ID loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_mislabelled_images_are_refused_with_nothing_loaded() {
    let sb = Sandbox::new();
    let fleet = compose_fleet(&sb, 2, &policy(""));
    let release = rollgate_testbed::catalog::release(&fleet.catalog, "3.4.0").unwrap();
    let (archive, id) = release.image.clone().unwrap();
    // A version no other test uses, so the engine's tags say what this
    // test loaded.
    let version = format!("3.4.0-t{}", std::process::id());
    let reference = format!("{}:{version}", install::IMAGE);
    let good = sb.path().join("good.tar");
    retagged(&archive, &reference, &good);
    let good_sha = sha256_of(&good);

    let dp = fleet.host("dp-1").unwrap().clone();
    let mut c = client::to_fleet_host(&fleet, &dp.name).await;
    let nothing_left = |what: &str| {
        assert_eq!(
            install::image_id(&reference),
            None,
            "{what}: an image was loaded"
        );
        let markers = dp.dir.join("state/images");
        assert!(
            !markers.join(format!("{version}.json")).exists(),
            "{what}: a marker was left"
        );
        let staging: Vec<_> = std::fs::read_dir(dp.dir.join("state/staging"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(staging.is_empty(), "{what}: left {staging:?}");
    };

    // Tampered: one byte changed after the catalog's checksum was taken.
    let tampered = sb.path().join("tampered.tar");
    let mut bytes = std::fs::read(&good).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    let r = stage_image(&mut c, "t/tampered", &version, &tampered, &good_sha, &id).await;
    let f = client::failure(&r);
    assert_eq!(f.code, pb::FailureCode::ChecksumMismatch as i32, "{f:?}");
    nothing_left("tampered");

    // The catalog's image ID is not the archive's.
    let other_id = format!("sha256:{}", hex::encode(Sha256::digest(b"another image")));
    let r = stage_image(&mut c, "t/wrong-id", &version, &good, &good_sha, &other_id).await;
    let f = client::failure(&r);
    assert_eq!(f.code, pb::FailureCode::ChecksumMismatch as i32, "{f:?}");
    assert!(f.message.contains("image ID"), "{f:?}");
    nothing_left("wrong ID");

    // The checks can pass: the right checksum and ID load the image.
    let r = stage_image(&mut c, "t/good", &version, &good, &good_sha, &id).await;
    client::success(&r);
    assert_eq!(install::image_id(&reference).as_deref(), Some(id.as_str()));
    let _ = Command::new("docker")
        .args(["image", "rm", &reference])
        .output();
}
