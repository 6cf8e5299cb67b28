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
    image: Option<PackageEntry>,
    deb: Option<PackageEntry>,
}

#[derive(Deserialize)]
struct PackageEntry {
    artifact: String,
    id: Option<String>,
}

/// One release of the packaged reference gateway.
#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    pub artifact: PathBuf,
    pub sha256: String,
    /// The image archive and the ID it loads as.
    pub image: Option<(PathBuf, String)>,
    pub deb: Option<PathBuf>,
}

/// Every release of the catalog at `path`.
pub fn releases(path: &Path) -> Result<Vec<Release>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(file
        .releases
        .into_iter()
        .map(|r| Release {
            artifact: base.join(&r.artifact),
            version: r.version,
            sha256: r.sha256,
            image: r
                .image
                .map(|i| (base.join(&i.artifact), i.id.unwrap_or_default())),
            deb: r.deb.map(|d| base.join(&d.artifact)),
        })
        .collect())
}

/// Release `version` of the catalog at `path` (artifacts relative to it).
pub fn release(path: &Path, version: &str) -> Result<Release, String> {
    releases(path)?
        .into_iter()
        .find(|r| r.version == version)
        .ok_or_else(|| format!("no release {version} in {}", path.display()))
}
