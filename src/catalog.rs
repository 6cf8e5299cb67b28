//! The release catalog (`releases.toml`): every gateway release rollgate may
//! install, where its artifact is, its SHA-256 and size, and the breaking
//! changes an operator must read before upgrading across it.
//!
//! ```toml
//! [[releases]]
//! version = "3.4.0"
//! artifact = "demo-gateway-3.4.0.tar.gz"  # relative to this file, absolute, or http(s)://
//! sha256 = "…64 lower-case hex digits…"
//! size = 12345
//! breaking_changes = ["One sentence each."]
//! dp_min = "3.2.0"   # optional: oldest DP this CP release accepts (compatibility override)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::version::Version;

/// A catalog that cannot be used: the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct CatalogError {
    pub file: PathBuf,
    pub problem: String,
}

/// Where an artifact's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Artifact::File(p) => write!(f, "{}", p.display()),
            Artifact::Url(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Release {
    pub version: Version,
    pub artifact: Artifact,
    pub sha256: String,
    pub size: u64,
    pub breaking_changes: Vec<String>,
    pub dp_min: Option<Version>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub path: PathBuf,
    /// Ascending by version.
    pub releases: Vec<Release>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    releases: Vec<RawRelease>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    version: Version,
    artifact: String,
    sha256: String,
    size: u64,
    #[serde(default)]
    breaking_changes: Vec<String>,
    dp_min: Option<Version>,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let err = |problem: String| CatalogError {
            file: path.to_path_buf(),
            problem,
        };
        let (text, base) = crate::tomlerr::read_file(path).map_err(err)?;
        Catalog::parse(&text, base)
            .map(|releases| Catalog {
                path: path.to_path_buf(),
                releases,
            })
            .map_err(err)
    }

    /// Parses and checks catalog text; relative artifact paths join `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Vec<Release>, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| crate::tomlerr::describe(text, &e))?;
        if raw.releases.is_empty() {
            return Err("key `releases`: the catalog lists no releases".into());
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.releases.into_iter().enumerate() {
            let key = |k: &str| format!("key `releases[{i}].{k}` ({})", r.version);
            if !seen.insert(r.version.clone()) {
                return Err(format!(
                    "{}: version {} is listed twice",
                    key("version"),
                    r.version
                ));
            }
            if r.sha256.len() != 64
                || !r
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "{}: must be 64 lower-case hex digits",
                    key("sha256")
                ));
            }
            if r.size == 0 {
                return Err(format!(
                    "{}: must be the artifact's size in bytes",
                    key("size")
                ));
            }
            if r.breaking_changes.iter().any(|c| c.trim().is_empty()) {
                return Err(format!("{}: an entry is empty", key("breaking_changes")));
            }
            if r.dp_min.as_ref().is_some_and(|m| *m > r.version) {
                return Err(format!(
                    "{}: is newer than the release itself",
                    key("dp_min")
                ));
            }
            let artifact =
                if r.artifact.starts_with("http://") || r.artifact.starts_with("https://") {
                    Artifact::Url(r.artifact)
                } else if r.artifact.is_empty() || r.artifact.contains("://") {
                    return Err(format!(
                        "{}: {:?} is neither a path nor an http(s) URL",
                        key("artifact"),
                        r.artifact
                    ));
                } else {
                    let p = Path::new(&r.artifact);
                    Artifact::File(if p.is_relative() {
                        base.join(p)
                    } else {
                        p.to_path_buf()
                    })
                };
            out.push(Release {
                version: r.version,
                artifact,
                sha256: r.sha256,
                size: r.size,
                breaking_changes: r.breaking_changes,
                dp_min: r.dp_min,
            });
        }
        out.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(out)
    }

    pub fn get(&self, v: &Version) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn one(version: &str, extra: &str) -> String {
        format!(
            "[[releases]]\nversion = \"{version}\"\nartifact = \"a-{version}.tar.gz\"\nsha256 = \"{SHA}\"\nsize = 10\n{extra}\n"
        )
    }

    #[test]
    fn parses_sorted_with_resolved_paths() {
        let text = one("3.4.0", "breaking_changes = [\"x\"]") + &one("3.3.0", "");
        let r = Catalog::parse(&text, Path::new("/srv/cat")).unwrap();
        assert_eq!(r[0].version.to_string(), "3.3.0");
        assert_eq!(
            r[1].artifact,
            Artifact::File("/srv/cat/a-3.4.0.tar.gz".into())
        );
        assert_eq!(r[1].breaking_changes, ["x"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (one("3.4.0", "") + &one("3.4.0", ""), "releases[1].version"),
            (one("3.4.0", "").replace(SHA, "XYZ"), "releases[0].sha256"),
            (
                one("3.4.0", "").replace("size = 10", "size = 0"),
                "releases[0].size",
            ),
            (one("3.4.0", "dp_min = \"3.5.0\""), "dp_min"),
            (one("3.4.0", "notes = 1"), "unknown field `notes`"),
            (one("3.x", ""), "releases.version"),
            (
                one("3.4.0", "").replace("a-3.4.0.tar.gz", "ftp://x/a.tgz"),
                "artifact",
            ),
            (String::new(), "no releases"),
        ];
        for (text, want) in cases {
            let e = Catalog::parse(&text, Path::new("/")).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }
}
