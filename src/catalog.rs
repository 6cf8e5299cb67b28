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
//! unpacked_size = 23456  # optional: bytes of file content once unpacked; the agent stops beyond it
//! migrates = true        # optional: the CP migrates the database on its first start
//! schema_version = 2     # optional: the schema version the CP reaches (checked by a rehearsal)
//!
//! [releases.image]        # for hosts installed with `method = "compose"`
//! artifact = "demo-gateway-3.4.0.image.tar.gz"   # a `docker save` archive (may be gzipped)
//! sha256 = "…"
//! size = 12345
//! id = "sha256:…"         # the image ID it must load as
//!
//! [releases.deb]          # for hosts installed with `method = "deb"`
//! artifact = "demo-gateway_3.4.0_amd64.deb"
//! sha256 = "…"
//! size = 12345
//! ```
//!
//! The tarball (the top-level `artifact`) is every release's; an image or a
//! package is needed only by hosts installed that way (`Release::package`).
//!
//! File artifacts must lie inside the catalog's directory, or inside one of
//! the directories a top-level `artifact_dirs = ["/srv/releases"]` names: a
//! catalog cannot make the coordinator send any file of its machine. Before
//! a rollout, `Catalog::verify` checks each artifact it needs: a regular
//! file there, of the catalog's size and SHA-256.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::method::Method;
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
    /// The release tarball.
    pub artifact: Artifact,
    pub sha256: String,
    pub size: u64,
    /// Bytes of file content once unpacked, when the catalog says.
    pub unpacked_size: Option<u64>,
    /// The container image archive, for compose hosts.
    pub image: Option<Package>,
    /// The OS package, for deb hosts.
    pub deb: Option<Package>,
    pub breaking_changes: Vec<String>,
    pub dp_min: Option<Version>,
    /// The CP migrates the database on its first start.
    pub migrates: bool,
    /// The database schema version this release's CP reaches.
    pub schema_version: Option<i64>,
}

/// One artifact of a release, in the form one install method takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub method: Method,
    pub artifact: Artifact,
    pub sha256: String,
    pub size: u64,
    pub unpacked_size: Option<u64>,
    /// Images: the ID the archive must load as.
    pub image_id: Option<String>,
}

impl Release {
    /// The artifact a host installed with `method` takes; None when the
    /// catalog has none for it.
    pub fn package(&self, method: Method) -> Option<Package> {
        match method {
            Method::Tarball => Some(Package {
                method,
                artifact: self.artifact.clone(),
                sha256: self.sha256.clone(),
                size: self.size,
                unpacked_size: self.unpacked_size,
                image_id: None,
            }),
            Method::Compose => self.image.clone(),
            Method::Deb => self.deb.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub path: PathBuf,
    /// Ascending by version.
    pub releases: Vec<Release>,
    /// Directories file artifacts may be in: the catalog's own, and those
    /// `artifact_dirs` names.
    pub artifact_dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    artifact_dirs: Vec<PathBuf>,
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
    unpacked_size: Option<u64>,
    #[serde(default)]
    migrates: bool,
    schema_version: Option<i64>,
    image: Option<RawPackage>,
    deb: Option<RawPackage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    artifact: String,
    sha256: String,
    size: u64,
    /// Images only.
    id: Option<String>,
}

/// A location as the catalog writes it: a path (relative to the catalog)
/// or an http(s) URL.
fn location(raw: &str, base: &Path, key: &str) -> Result<Artifact, String> {
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(Artifact::Url(raw.to_string()))
    } else if raw.is_empty() || raw.contains("://") {
        Err(format!(
            "{key}: {raw:?} is neither a path nor an http(s) URL"
        ))
    } else {
        let p = Path::new(raw);
        Ok(Artifact::File(if p.is_relative() {
            base.join(p)
        } else {
            p.to_path_buf()
        }))
    }
}

fn check_sha256(sha: &str, key: &str) -> Result<(), String> {
    if sha.len() != 64
        || !sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("{key}: must be 64 lower-case hex digits"));
    }
    Ok(())
}

impl RawPackage {
    fn check(
        self,
        method: Method,
        base: &Path,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Package, String> {
        check_sha256(&self.sha256, &key("sha256"))?;
        if self.size == 0 {
            return Err(format!(
                "{}: must be the artifact's size in bytes",
                key("size")
            ));
        }
        match (method, &self.id) {
            (Method::Compose, None) => {
                return Err(format!(
                    "{}: an image needs the ID it loads as (sha256:…)",
                    key("id")
                ));
            }
            (Method::Compose, Some(id)) => {
                let hex = id.strip_prefix("sha256:").unwrap_or_default();
                if check_sha256(hex, "").is_err() {
                    return Err(format!(
                        "{}: {id:?} is not sha256:<64 hex digits>",
                        key("id")
                    ));
                }
            }
            (_, Some(_)) => return Err(format!("{}: only images have an id", key("id"))),
            (_, None) => {}
        }
        Ok(Package {
            method,
            artifact: location(&self.artifact, base, &key("artifact"))?,
            sha256: self.sha256,
            size: self.size,
            unpacked_size: None,
            image_id: self.id,
        })
    }
}

/// Why an artifact cannot be used for a rollout.
#[derive(Debug, thiserror::Error)]
#[error("release {version}: artifact {artifact}: {problem}")]
pub struct ArtifactError {
    pub version: Version,
    pub artifact: String,
    pub problem: String,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let err = |problem: String| CatalogError {
            file: path.to_path_buf(),
            problem,
        };
        let (text, base) = crate::tomlerr::read_file(path).map_err(err)?;
        Catalog::parse(&text, &base)
            .map(|(releases, artifact_dirs)| Catalog {
                path: path.to_path_buf(),
                releases,
                artifact_dirs,
            })
            .map_err(err)
    }

    /// Parses and checks catalog text; relative paths join `base`. Returns
    /// the releases and the directories their files may be in.
    pub fn parse(text: &str, base: &Path) -> Result<(Vec<Release>, Vec<PathBuf>), String> {
        let raw: Raw = toml::from_str(text).map_err(|e| crate::tomlerr::describe(text, &e))?;
        let mut dirs = vec![base.to_path_buf()];
        for (i, d) in raw.artifact_dirs.iter().enumerate() {
            if d.as_os_str().is_empty() {
                return Err(format!("key `artifact_dirs[{i}]`: is empty"));
            }
            dirs.push(if d.is_relative() {
                base.join(d)
            } else {
                d.clone()
            });
        }
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
            check_sha256(&r.sha256, &key("sha256"))?;
            if r.size == 0 {
                return Err(format!(
                    "{}: must be the artifact's size in bytes",
                    key("size")
                ));
            }
            if r.unpacked_size == Some(0) {
                return Err(format!(
                    "{}: must be the release's unpacked size in bytes, or left out",
                    key("unpacked_size")
                ));
            }
            if r.breaking_changes.iter().any(|c| c.trim().is_empty()) {
                return Err(format!("{}: an entry is empty", key("breaking_changes")));
            }
            if r.schema_version.is_some_and(|v| v < 1) {
                return Err(format!("{}: must be 1 or more", key("schema_version")));
            }
            if r.dp_min.as_ref().is_some_and(|m| *m > r.version) {
                return Err(format!(
                    "{}: is newer than the release itself",
                    key("dp_min")
                ));
            }
            let artifact = location(&r.artifact, base, &key("artifact"))?;
            let image = r
                .image
                .map(|p| p.check(Method::Compose, base, &|k| key(&format!("image.{k}"))))
                .transpose()?;
            let deb = r
                .deb
                .map(|p| p.check(Method::Deb, base, &|k| key(&format!("deb.{k}"))))
                .transpose()?;
            out.push(Release {
                version: r.version,
                artifact,
                sha256: r.sha256,
                size: r.size,
                unpacked_size: r.unpacked_size,
                image,
                deb,
                breaking_changes: r.breaking_changes,
                dp_min: r.dp_min,
                migrates: r.migrates,
                schema_version: r.schema_version,
            });
        }
        out.sort_by(|a, b| a.version.cmp(&b.version));
        Ok((out, dirs))
    }

    pub fn get(&self, v: &Version) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == *v)
    }

    /// Checks that every artifact of a release (tarball, image, package) can
    /// be sent as the catalog says.
    pub fn verify(&self, r: &Release) -> Result<(), ArtifactError> {
        for m in [Method::Tarball, Method::Compose, Method::Deb] {
            if let Some(p) = r.package(m) {
                self.verify_package(&r.version, &p)?;
            }
        }
        Ok(())
    }

    /// Checks that an artifact can be sent as the catalog says: a regular
    /// file inside an allowed directory, of the listed size and SHA-256.
    /// Reads the whole file. URL artifacts are checked by each agent as it
    /// downloads them (size and SHA-256), not here.
    pub fn verify_package(&self, version: &Version, p: &Package) -> Result<(), ArtifactError> {
        let Artifact::File(path) = &p.artifact else {
            return Ok(());
        };
        let fail = |problem: String| ArtifactError {
            version: version.clone(),
            artifact: path.display().to_string(),
            problem,
        };
        let real = std::fs::canonicalize(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
        let inside = self
            .artifact_dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d)));
        if !inside {
            return Err(fail(format!(
                "{} is outside the catalog's directory{}; list its directory in the catalog's `artifact_dirs` to allow it",
                real.display(),
                if self.artifact_dirs.len() > 1 {
                    " and its artifact_dirs"
                } else {
                    ""
                }
            )));
        }
        let meta = std::fs::metadata(&real).map_err(|e| fail(format!("cannot be read: {e}")))?;
        if !meta.is_file() {
            return Err(fail("is not a regular file".into()));
        }
        if meta.len() != p.size {
            return Err(fail(format!(
                "is {} bytes, the catalog says {}",
                meta.len(),
                p.size
            )));
        }
        let digest = sha256_file(&real).map_err(|e| fail(format!("cannot be read: {e}")))?;
        if digest != p.sha256 {
            return Err(fail(format!(
                "its sha256 is {digest}, the catalog says {}",
                p.sha256
            )));
        }
        Ok(())
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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
        let (r, dirs) = Catalog::parse(&text, Path::new("/srv/cat")).unwrap();
        assert_eq!(dirs, [Path::new("/srv/cat")]);
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

    #[test]
    fn verify_checks_place_kind_size_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"release bytes";
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
        std::fs::write(dir.path().join("a-3.4.0.tar.gz"), data).unwrap();
        std::fs::create_dir(dir.path().join("a-3.5.0.tar.gz")).unwrap();
        let entry = |version: &str, artifact: &str, sha: &str, size: usize| {
            format!(
                "[[releases]]\nversion = \"{version}\"\nartifact = \"{artifact}\"\nsha256 = \"{sha}\"\nsize = {size}\n"
            )
        };
        let text = [
            entry("3.4.0", "a-3.4.0.tar.gz", &sha, data.len()),
            entry("3.4.1", "a-3.4.0.tar.gz", SHA, data.len()),
            entry("3.4.2", "a-3.4.0.tar.gz", &sha, 99),
            entry("3.4.3", "missing.tar.gz", &sha, 1),
            entry("3.4.4", "/etc/passwd", &sha, 1),
            entry("3.5.0", "a-3.5.0.tar.gz", &sha, 1),
        ]
        .concat();
        std::fs::write(dir.path().join("releases.toml"), &text).unwrap();
        let cat = Catalog::load(&dir.path().join("releases.toml")).unwrap();
        let verify = |v: &str| cat.verify(cat.get(&v.parse().unwrap()).unwrap());
        verify("3.4.0").unwrap();
        for (v, want) in [
            ("3.4.1", "sha256"),
            ("3.4.2", "99"),
            ("3.4.3", "cannot be read"),
            ("3.4.4", "outside the catalog's directory"),
            ("3.5.0", "not a regular file"),
        ] {
            let e = verify(v).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(v),
                "{v}: expected {want:?} in {e:?}"
            );
        }
        // An explicitly allowed directory.
        let allowed = format!("artifact_dirs = [\"/etc\"]\n{text}");
        std::fs::write(dir.path().join("releases.toml"), allowed).unwrap();
        let cat = Catalog::load(&dir.path().join("releases.toml")).unwrap();
        let e = cat
            .verify(cat.get(&"3.4.4".parse().unwrap()).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bytes"),
            "/etc is allowed now: only the size differs: {e}"
        );
    }
}
