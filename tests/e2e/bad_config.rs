//! Bad configuration never starts anything: exit 64 naming the file and key.

use std::time::Duration;

use crate::support::{AGENT, Host, Sandbox, proc};

fn agent_check(sb: &Sandbox, config: &std::path::Path) -> proc::RunOutput {
    proc::run(
        AGENT,
        &["--config".to_string(), config.display().to_string()],
        sb.path(),
        Duration::from_secs(20),
    )
}

#[test]
fn bad_agent_config_exits_64_naming_the_key_and_binds_nothing() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let h = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let good = std::fs::read_to_string(h.config_path()).unwrap();

    let cases = [
        (good.replace("role = \"dp\"", "role = \"edge\""), "role"),
        (good.replace("[install]", "[install]\nkeep = 2"), "keep"),
        (
            good.replace("name = \"dp-1\"", "name = \"dp 1\""),
            "agent.name",
        ),
        (good.replace("dp-1.key", "missing.key"), "missing.key"),
        (
            good.replace(
                "manager = \"exec\"",
                "manager = \"exec\"\nunit = \"gw.service\"",
            ),
            "service.unit",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(h.config_path(), &text).unwrap();
        let out = agent_check(&sb, &h.config_path());
        assert_eq!(out.code, Some(64), "{key}: {}", out.stderr);
        assert!(
            out.stderr.contains(key),
            "stderr should name {key:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("agent.toml"),
            "stderr should name the file: {}",
            out.stderr
        );
        // Nothing was bound.
        assert!(
            std::net::TcpListener::bind(h.agent_addr).is_ok(),
            "{key}: port was taken"
        );
        assert!(
            !h.dir.join("state").exists(),
            "{key}: the state dir was created"
        );
    }

    let missing = agent_check(&sb, &sb.path().join("nope.toml"));
    assert_eq!(missing.code, Some(64));
    assert!(missing.stderr.contains("nope.toml"), "{}", missing.stderr);
}

#[test]
fn bad_inventory_exits_64_naming_the_key() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let addr = "127.0.0.1:1".parse().unwrap();
    let good = std::fs::read_to_string(sb.inventory(&[("dp-1", "dp", addr)], "")).unwrap();
    let cases = [
        (
            good.replace("role = \"dp\"", "role = \"dataplane\""),
            "role",
        ),
        (
            good.clone()
                + "\n[[hosts]]\nname = \"dp-1\"\naddress = \"127.0.0.1:2\"\nrole = \"dp\"\n",
            "hosts[1].name",
        ),
        (
            good.replace("[coordinator]", "[coordinator]\nthreads = 4"),
            "threads",
        ),
        (
            good.replace("rollgate-coordinator.pem", "nope.pem"),
            "nope.pem",
        ),
        (good.clone() + "\n[policy]\nbatch = \"150%\"\n", "batch"),
    ];
    for (text, key) in cases {
        std::fs::write(sb.path().join("fleet.toml"), &text).unwrap();
        let out = sb.rollgate(&["status", "-i", "fleet.toml"]);
        assert_eq!(out.code, Some(64), "{key}: {}", out.stderr);
        assert!(
            out.stderr.contains(key),
            "stderr should name {key:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("fleet.toml"), "{}", out.stderr);
    }
    let out = sb.rollgate(&["status", "-i", "absent.toml"]);
    assert_eq!(out.code, Some(64));
    assert!(out.stderr.contains("absent.toml"), "{}", out.stderr);
}

#[test]
fn certs_init_refuses_to_overwrite_without_force_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let key = sb.certs_dir().join("dp-1.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(sb.certs_dir().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let dir = sb.certs_dir().display().to_string();

    let again = sb.rollgate(&[
        "certs",
        "init",
        "--dir",
        &dir,
        "--agent",
        "dp-1=127.0.0.2",
        "--agent",
        "dp-9=127.0.0.9",
    ]);
    assert_eq!(again.code, Some(64), "{}", again.stderr);
    assert!(
        again.stderr.contains("dp-1.key") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "nothing overwritten");
    assert!(
        !sb.certs_dir().join("dp-9.pem").exists(),
        "nothing written at all"
    );

    let forced = sb.rollgate(&[
        "certs",
        "init",
        "--dir",
        &dir,
        "--agent",
        "dp-1=127.0.0.2",
        "--force",
    ]);
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert!(forced.stdout.contains("existing CA"), "{}", forced.stdout);

    let bad = sb.rollgate(&["certs", "init", "--dir", &dir, "--agent", "dp-2"]);
    assert_eq!(
        bad.code,
        Some(64),
        "bad usage is 64, not clap's 2: {}",
        bad.stderr
    );
    assert!(bad.stderr.contains("NAME=ADDRESS"), "{}", bad.stderr);
}
