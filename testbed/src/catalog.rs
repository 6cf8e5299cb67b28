//! The reference gateway's `releases.toml`, read as far as building a fleet
//! needs: where each release's artifact is and its checksum. (The product's
//! own reading, with every check, is `rollgate::catalog`.)

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    releases: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    version: String,
    artifact: String,
    sha256: String,
}

/// One release of the packaged reference gateway.
#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    pub artifact: PathBuf,
    pub sha256: String,
}

/// Release `version` of the catalog at `path` (artifacts relative to it).
pub fn release(path: &Path, version: &str) -> Result<Release, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.releases
        .into_iter()
        .find(|r| r.version == version)
        .map(|r| Release {
            artifact: base.join(&r.artifact),
            version: r.version,
            sha256: r.sha256,
        })
        .ok_or_else(|| format!("no release {version} in {}", path.display()))
}
