//! The Debian packages built by `deploy/package.sh`, installed, upgraded and
//! purged with the real dpkg and their real maintainer scripts, each into a
//! throwaway root (`testbed::sysroot`), never this machine's own.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rollgate_testbed::sysroot::SysRoot;

use crate::support::{AGENT, ROLLGATE, Sandbox, output_text};

/// Builds both packages at `version` from the test binaries; the agent's
/// shipped example is `agent_config`.
fn package(sb: &Sandbox, version: &str, agent_config: &Path) -> (PathBuf, PathBuf) {
    let bin_dir = Path::new(ROLLGATE).parent().unwrap();
    assert_eq!(Path::new(AGENT).parent().unwrap(), bin_dir);
    let out_dir = sb.path().join(format!("debs-{version}"));
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/package.sh"))
        .args(["--version", version, "--compress", "gzip"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&out_dir)
        .arg("--agent-config")
        .arg(agent_config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let built: Vec<PathBuf> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    let find = |name: &str| {
        built
            .iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}_{version}_"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("{name} not built: {built:?}"))
    };
    (find("rollgate"), find("rollgate-agent"))
}

fn dpkg_ok(root: &SysRoot, args: &[&str]) -> String {
    let out = root.dpkg(args);
    assert!(out.status.success(), "dpkg {args:?}: {}", output_text(&out));
    output_text(&out)
}

/// Mode (permission bits) and owner uid of a path inside the root.
fn mode_uid(root: &SysRoot, p: &str) -> (u32, u32) {
    let m = std::fs::symlink_metadata(root.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid())
}

fn sysroot(sb: &Sandbox, name: &str) -> SysRoot {
    let base = sb.path().join(name);
    std::fs::create_dir_all(&base).unwrap();
    SysRoot::create(&base).expect("a throwaway root")
}

/// The host's certificates in /etc/rollgate, as an operator places them.
fn place_certificates(sb: &Sandbox, root: &SysRoot) {
    let dir = root.path("/etc/rollgate");
    let certs = sb.rollgate(&[
        "certs",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--agent",
        "dp-1=127.0.0.1",
    ]);
    assert_eq!(certs.code, Some(0), "{}", certs.stderr);
}

const AGENT_TOML: &str = "/etc/rollgate/agent.toml";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/rollgate-agent.service";

#[test]
fn the_agent_package_installs_configures_upgrades_and_purges() {
    let sb = Sandbox::new();
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/agent.toml"));
    let (_, agent_010) = package(&sb, "0.1.0", example);
    // The next version ships a changed example, as a new release's might.
    let newer_example = sb.path().join("agent-0.1.1.toml");
    let mut text_011 = std::fs::read_to_string(example).unwrap();
    text_011.push_str("# (0.1.1: a new comment in the example)\n");
    std::fs::write(&newer_example, &text_011).unwrap();
    let (_, agent_011) = package(&sb, "0.1.1", &newer_example);
    let root = sysroot(&sb, "host");

    // Install: files, modes, owners; enabled, not started unconfigured.
    let said = dpkg_ok(&root, &["-i", agent_010.to_str().unwrap()]);
    assert!(
        said.contains("enabled, not started") && said.contains("not configured yet"),
        "{said}"
    );
    assert_eq!(mode_uid(&root, "/usr/bin/rollgate-agent"), (0o755, 0));
    assert_eq!(mode_uid(&root, "/etc/rollgate"), (0o750, 0));
    assert_eq!(mode_uid(&root, AGENT_TOML), (0o640, 0));
    assert_eq!(mode_uid(&root, "/var/lib/rollgate-agent"), (0o700, 0));
    assert_eq!(
        mode_uid(&root, "/lib/systemd/system/rollgate-agent.service"),
        (0o644, 0)
    );
    assert_eq!(
        mode_uid(&root, "/usr/share/man/man8/rollgate-agent.8.gz").0,
        0o644
    );
    assert_eq!(
        root.query("rollgate-agent", "${Conffiles}")
            .unwrap()
            .split_whitespace()
            .next(),
        Some(AGENT_TOML)
    );
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("rollgate-agent:"))
        .expect("the system user");
    let fields: Vec<&str> = user.split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    assert_eq!(
        std::fs::read_link(root.path(WANTS)).unwrap(),
        Path::new("/lib/systemd/system/rollgate-agent.service"),
        "enabled"
    );
    // The unit as installed, verified by systemd inside the root (it checks
    // the binary and the man page named in it): no complaint at all.
    let verify = root.chroot(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/rollgate-agent.service",
    ]);
    assert!(
        verify.status.success() && output_text(&verify).trim().is_empty(),
        "{}",
        output_text(&verify)
    );
    let unit =
        std::fs::read_to_string(root.path("/lib/systemd/system/rollgate-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/rollgate-agent --config /etc/rollgate/agent.toml"),
        "{unit}"
    );

    // The operator configures the host: certificates, an edited config.
    place_certificates(&sb, &root);
    let edited = std::fs::read_to_string(root.path(AGENT_TOML))
        .unwrap()
        .replace("keep_releases = 3", "keep_releases = 5");
    std::fs::write(root.path(AGENT_TOML), &edited).unwrap();
    let check = root.chroot(&["rollgate-agent", "--check", "--config", AGENT_TOML]);
    assert!(check.status.success(), "{}", output_text(&check));
    // What a running agent leaves: its journal and working files; a backup.
    let state = root.path("/var/lib/rollgate-agent");
    std::fs::write(state.join("journal"), "{\"v\":1}\n").unwrap();
    std::fs::write(state.join("drain-state"), "ready\n").unwrap();
    std::fs::write(state.join("fencing-token"), "7\n").unwrap();
    std::fs::write(state.join("gateway.pid"), "4242\n").unwrap();
    std::fs::create_dir_all(state.join("staging/3.4.0")).unwrap();
    std::fs::write(state.join("staging/3.4.0/part"), "x").unwrap();
    let backup = root.path("/var/backups/rollgate/b-1/db.dump");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    std::fs::write(&backup, "a backup").unwrap();

    // Upgrade: the edited conffile is kept, the new example set beside it;
    // a configured agent is restarted (try-restart: only if it runs).
    let said = dpkg_ok(
        &root,
        &[
            "--force-confdef",
            "--force-confold",
            "-i",
            agent_011.to_str().unwrap(),
        ],
    );
    assert!(
        said.contains("upgraded from 0.1.0; restarting it if it runs"),
        "{said}"
    );
    assert_eq!(
        root.query("rollgate-agent", "${Version}").as_deref(),
        Some("0.1.1")
    );
    assert_eq!(
        std::fs::read_to_string(root.path(AGENT_TOML)).unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/rollgate/agent.toml.dpkg-dist")).unwrap(),
        text_011
    );
    assert_eq!(
        mode_uid(&root, AGENT_TOML),
        (0o640, 0),
        "the edited file's mode kept"
    );

    // An upgrade whose agent refuses the config does not restart it.
    std::fs::write(
        root.path(AGENT_TOML),
        format!("{edited}\n[nonsense]\nkey = 1\n"),
    )
    .unwrap();
    let said = dpkg_ok(
        &root,
        &["--force-confold", "-i", agent_011.to_str().unwrap()],
    );
    assert!(
        said.contains("but not restarted: the new agent refuses") && said.contains("nonsense"),
        "{said}"
    );

    // Purge: the package's files and the agent's working files go; the
    // journal, the backups, the certificates and the user stay.
    let said = dpkg_ok(&root, &["--purge", "rollgate-agent"]);
    assert!(
        said.contains("kept in /var/lib/rollgate-agent: fencing-token gateway.pid journal"),
        "{said}"
    );
    for gone in [
        "/usr/bin/rollgate-agent",
        "/lib/systemd/system/rollgate-agent.service",
        WANTS,
        AGENT_TOML,
        "/etc/rollgate/agent.toml.dpkg-dist",
        "/var/lib/rollgate-agent/drain-state",
        "/var/lib/rollgate-agent/staging",
        "/usr/share/man/man8/rollgate-agent.8.gz",
    ] {
        // symlink_metadata: a dangling link left behind counts as left.
        assert!(
            root.path(gone).symlink_metadata().is_err(),
            "{gone} is left after purge"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["fencing-token", "gateway.pid", "journal"],
        "only the documented files are kept"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("fencing-token")).unwrap(),
        "7\n"
    );
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "a backup");
    assert!(
        root.path("/etc/rollgate/dp-1.key").exists(),
        "the certificates stay"
    );
    assert!(
        std::fs::read_to_string(root.path("/etc/passwd"))
            .unwrap()
            .contains("rollgate-agent:"),
        "the system user stays"
    );
    assert!(
        root.query("rollgate-agent", "${Status}")
            .is_none_or(|s| s.contains("not-installed"))
    );
}

#[test]
fn an_unedited_conffile_follows_the_package_and_a_configured_install_starts() {
    let sb = Sandbox::new();
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/agent.toml"));
    let (_, agent_010) = package(&sb, "0.1.0", example);
    let newer = sb.path().join("agent-0.2.0.toml");
    let text_020 = std::fs::read_to_string(example).unwrap() + "# 0.2.0\n";
    std::fs::write(&newer, &text_020).unwrap();
    let (_, agent_020) = package(&sb, "0.2.0", &newer);
    let root = sysroot(&sb, "host");

    // Certificates placed before the package: the example config is then
    // complete, and the first install says it starts the agent.
    place_certificates(&sb, &root);
    let said = dpkg_ok(&root, &["-i", agent_010.to_str().unwrap()]);
    assert!(said.contains("passes --check; starting it"), "{said}");

    let said = dpkg_ok(&root, &["-i", agent_020.to_str().unwrap()]);
    assert!(!said.contains("dpkg-dist"), "{said}");
    assert_eq!(
        std::fs::read_to_string(root.path(AGENT_TOML)).unwrap(),
        text_020
    );
    assert!(!root.path("/etc/rollgate/agent.toml.dpkg-dist").exists());
}

#[test]
fn the_cli_package_brings_man_pages_and_completions_and_purges_clean() {
    let sb = Sandbox::new();
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/agent.toml"));
    let (cli, _) = package(&sb, "0.1.0", example);
    let root = sysroot(&sb, "host");
    dpkg_ok(&root, &["-i", cli.to_str().unwrap()]);
    let files: Vec<String> = root
        .query("rollgate", "${db-fsys:Files}")
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();

    let version = root.chroot(&["rollgate", "--version"]);
    assert!(
        output_text(&version).contains("rollgate"),
        "{}",
        output_text(&version)
    );
    assert_eq!(mode_uid(&root, "/usr/bin/rollgate"), (0o755, 0));
    // Each page renders with the real man.
    let pages: Vec<PathBuf> = std::fs::read_dir(root.path("/usr/share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("rollgate")
        })
        .collect();
    assert!(pages.len() >= 10, "{pages:?}");
    for page in &pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{page:?}: {}",
            output_text(&out)
        );
    }
    // bash loads the completion and binds it to the command.
    let bash = root.chroot(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/rollgate && complete -p rollgate",
    ]);
    assert!(
        output_text(&bash).contains("_rollgate"),
        "{}",
        output_text(&bash)
    );
    for f in [
        "/usr/share/zsh/vendor-completions/_rollgate",
        "/usr/share/fish/vendor_completions.d/rollgate.fish",
    ] {
        assert!(std::fs::metadata(root.path(f)).unwrap().len() > 0, "{f}");
    }

    dpkg_ok(&root, &["--purge", "rollgate"]);
    for f in files.iter().filter(|f| !root.path(f).is_dir()) {
        assert!(!root.path(f).exists(), "{f} is left after purge");
    }
}
