//! A release as a Debian package, built with `dpkg-deb`: the release under
//! `/opt/demo-gateway`, no maintainer scripts (so it also installs into a
//! test host's own root with `dpkg --instdir`, where no script could run).

use std::io;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::archive::{Entry, Source};
use super::image::{RELEASE_DIR, arch};

/// The package name every release has.
pub const PACKAGE: &str = "demo-gateway";

/// What was written.
pub struct Written {
    pub sha256: String,
    pub size: u64,
}

/// A rollgate version as a Debian version: a SemVer pre-release
/// (`3.4.0-never-ready`) must sort before its release, which `~` does in
/// Debian ordering (`3.4.0~never~ready`).
pub fn debian_version(version: &str) -> String {
    version.replace('-', "~")
}

/// The file name of a release's package.
pub fn file_name(version: &str) -> String {
    format!("{PACKAGE}_{}_{}.deb", debian_version(version), arch())
}

/// Builds the package of `version` from the release's `entries` into `out`.
pub fn write(out: &Path, version: &str, entries: &[Entry]) -> io::Result<Written> {
    let root = out.with_extension(format!("root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let build = || -> io::Result<()> {
        let base = root.join(RELEASE_DIR);
        for e in entries {
            let p = base.join(&e.path);
            match &e.source {
                Source::Dir => std::fs::create_dir_all(&p)?,
                Source::Bytes(b) => {
                    std::fs::create_dir_all(p.parent().unwrap_or(&base))?;
                    std::fs::write(&p, b)?;
                }
                Source::File(src) => {
                    std::fs::create_dir_all(p.parent().unwrap_or(&base))?;
                    std::fs::copy(src, &p)?;
                }
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))?;
        }
        std::fs::create_dir_all(root.join("DEBIAN"))?;
        std::fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {PACKAGE}\nVersion: {}\nArchitecture: {}\nMaintainer: rollgate <rollgate@localhost>\nSection: net\nPriority: optional\nDescription: rollgate's reference gateway, release {version}\n Not a product: the gateway rollgate's demo and tests upgrade.\n",
                debian_version(version),
                arch()
            ),
        )?;
        let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
        let status = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
            .arg(&root)
            .arg(&tmp)
            .env("SOURCE_DATE_EPOCH", "1704067200")
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "dpkg-deb --build exited {status}"
            )));
        }
        std::fs::rename(&tmp, out)
    };
    let r = build();
    let _ = std::fs::remove_dir_all(&root);
    r?;
    let bytes = std::fs::read(out)?;
    Ok(Written {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
    })
}
