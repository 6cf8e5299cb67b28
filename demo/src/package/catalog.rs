//! `releases.toml`, the release catalog the coordinator reads. Its shape is a
//! contract: the coordinator rejects unknown keys.

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "releases.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub releases: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub version: String,
    /// Relative to the catalog file's directory.
    pub artifact: String,
    /// Lower-case hex SHA-256 of the `.tar.gz`.
    pub sha256: String,
    /// Bytes of the `.tar.gz`.
    pub size: u64,
    pub breaking_changes: Vec<String>,
    /// The CP migrates the database on its first start (its schema is newer
    /// than every older release's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrates: bool,
    /// The schema version its CP reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// The container image (`docker save` archive, gzipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PackageEntry>,
    /// The Debian package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb: Option<PackageEntry>,
}

/// Another artifact of the same release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    /// Relative to the catalog file's directory.
    pub artifact: String,
    pub sha256: String,
    pub size: u64,
    /// Images: the ID `docker load` gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Catalog {
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string(self)?;
        Ok(format!(
            "# Release catalog written by `demo-gateway package`: one [[releases]] per artifact.\n\n{body}"
        ))
    }
}

/// The artifact file name of a version.
pub fn artifact_name(version: &str) -> String {
    format!("demo-gateway-{version}.tar.gz")
}

/// The image archive file name of a version.
pub fn image_name(version: &str) -> String {
    format!("demo-gateway-{version}.image.tar.gz")
}
