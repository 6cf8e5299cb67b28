//! `demo-gateway package`: artifacts match the catalog, unpack into runnable
//! releases that report their manifest's version, and are reproducible.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use demo_gateway::manifest::Manifest;
use demo_gateway::package::catalog::Catalog;
use sha2::{Digest, Sha256};

use crate::support::client;
use crate::support::gateway::{Dp, free_addr, temp_dir};
use crate::support::releases::{BINARY, packaged, release};

const VERSIONS: [&str; 8] = [
    "3.3.0",
    "3.3.1",
    "3.4.0",
    "3.4.1",
    "3.5.0",
    "3.4.0-never-ready",
    "3.4.0-crash-after-ready",
    "3.4.0-bad-migration",
];

#[test]
fn artifacts_match_the_catalog_and_run_as_their_manifest_says() {
    let packaged = packaged();
    let versions: Vec<&str> = packaged
        .catalog
        .releases
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert_eq!(versions, VERSIONS);
    for entry in &packaged.catalog.releases {
        let bytes = std::fs::read(packaged.dir.join(&entry.artifact)).unwrap();
        assert_eq!(
            entry.artifact,
            format!("demo-gateway-{}.tar.gz", entry.version)
        );
        assert_eq!(entry.size, bytes.len() as u64, "{}", entry.version);
        assert_eq!(
            entry.sha256,
            hex::encode(Sha256::digest(&bytes)),
            "{}",
            entry.version
        );
        let expect_changes = matches!(entry.version.as_str(), "3.4.0" | "3.5.0");
        assert_eq!(
            !entry.breaking_changes.is_empty(),
            expect_changes,
            "{}",
            entry.version
        );
        for sentence in &entry.breaking_changes {
            assert!(
                sentence.ends_with('.') && !sentence.contains('\n'),
                "{sentence:?}"
            );
        }
    }

    let dir = temp_dir();
    let nobody = free_addr(); // no CP: a DP still answers /status, unready
    let mut dps = Vec::new();
    for version in VERSIONS {
        let release = release(version);
        let manifest: Manifest =
            toml::from_str(&std::fs::read_to_string(release.join("manifest.toml")).unwrap())
                .unwrap();
        assert_eq!(manifest.version, version);
        let binary = release.join("bin/demo-gateway");
        let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o755,
            "{version}: bin/demo-gateway mode {mode:o}"
        );
        for conf in ["conf/cp.toml", "conf/dp.toml"] {
            assert!(release.join(conf).is_file(), "{version}: {conf}");
        }
        dps.push((version, Dp::start(version, nobody, dir.path(), "1s")));
    }
    for (version, dp) in &dps {
        let status = client::get(dp.addr, "/status").json();
        assert_eq!(status["version"], *version);
        assert_eq!(status["role"], "dp");
        assert_eq!(
            client::get(dp.addr, "/status/ready").status,
            503,
            "no config without a CP"
        );
    }
}

#[test]
fn packaging_is_reproducible() {
    let dir = temp_dir();
    let stand_in = dir.path().join("stand-in-binary");
    std::fs::write(&stand_in, b"#!/bin/sh\necho stand-in\n").unwrap();
    let catalog = |out: &Path| -> (Catalog, String) {
        let output = Command::new(BINARY)
            .args(["package", "--out"])
            .arg(out)
            .arg("--binary")
            .arg(&stand_in)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = std::fs::read_to_string(out.join("releases.toml")).unwrap();
        (toml::from_str(&text).unwrap(), text)
    };
    let (first, first_text) = catalog(&dir.path().join("one"));
    let (_, second_text) = catalog(&dir.path().join("two"));
    assert_eq!(
        first_text, second_text,
        "same binary, same artifacts, same catalog"
    );
    assert_eq!(first.releases.len(), VERSIONS.len());
}

#[test]
fn bad_usage_and_config_exit_64_with_a_clear_error() {
    let dir = temp_dir();
    let cp_config = dir.path().join("cp.toml");
    std::fs::write(
        &cp_config,
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"host=127.0.0.1 port=1 user=postgres dbname=x\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(BINARY).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // The test binary is not inside a release: no manifest beside it.
    let (code, stderr) = run(&["cp", "--config", cp_config.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("manifest.toml") && stderr.contains("--manifest"),
        "{stderr}"
    );

    let dp_config = dir.path().join("dp.toml");
    std::fs::write(
        &dp_config,
        "listen = \"127.0.0.1:1\"\ncp_url = \"http://127.0.0.1:2\"\ninstance_id = \"x\"\npoll_intervall = \"1s\"\n",
    )
    .unwrap();
    let manifest = release("3.4.0").join("manifest.toml");
    let (code, stderr) = run(&[
        "dp",
        "--config",
        dp_config.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("poll_intervall"), "{stderr}");

    let (code, _) = run(&["no-such-command"]);
    assert_eq!(code, Some(64));
}
