//! `demo-gateway package`: one binary in, every release artifact and the
//! `releases.toml` catalog out.

pub mod archive;
pub mod catalog;
pub mod deb;
pub mod image;
pub mod releases;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info;

use archive::{Entry, Source};
use catalog::{Catalog, CatalogEntry, PackageEntry};
use releases::ReleaseSpec;

/// Example host configs shipped in every release's `conf/`. The gateway reads its
/// real config from a path given on the command line, outside the release.
pub const EXAMPLE_CP_TOML: &str = r#"# demo-gateway control plane: an example host config.
# Copy it outside the release directory and start: demo-gateway cp --config CP.toml
listen = "127.0.0.2:7080"
database_url = "host=127.0.0.1 port=5432 user=postgres dbname=gateway"
log_level = "info"
"#;

pub const EXAMPLE_DP_TOML: &str = r#"# demo-gateway data plane: an example host config.
# Copy it outside the release directory and start: demo-gateway dp --config DP.toml
listen = "127.0.0.3:9080"
cp_url = "http://127.0.0.2:7080"
instance_id = "dp-1"
poll_interval = "500ms"
graceful_timeout = "10s"
"#;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot find the running executable")]
    Executable(#[source] std::io::Error),
    #[error("binary {path} is not a readable file")]
    Binary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise {what}")]
    Serialise {
        what: String,
        #[source]
        source: toml::ser::Error,
    },
}

/// Builds every release into `out` and returns the catalog it wrote.
pub fn run(out: &Path, binary: Option<&Path>) -> Result<Catalog, PackageError> {
    let binary = match binary {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe().map_err(PackageError::Executable)?,
    };
    let meta = std::fs::metadata(&binary).map_err(|source| PackageError::Binary {
        path: binary.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PackageError::Binary {
            path: binary,
            source: std::io::Error::other("not a regular file"),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| PackageError::Write {
        path: out.to_path_buf(),
        source,
    })?;

    let libs = image::libraries(&binary).map_err(|source| PackageError::Write {
        path: binary.clone(),
        source,
    })?;
    let specs = releases::all();
    // The work is gzip of a large binary: one release per core.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(specs.len());
    let results: Vec<Result<CatalogEntry, PackageError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (specs, binary, libs) = (&specs, &binary, &libs);
                scope.spawn(move || {
                    specs
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| index % workers == worker)
                        .map(|(index, spec)| (index, build(out, binary, libs, spec)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut indexed: Vec<_> = handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("packaging thread panicked"))
            .collect();
        indexed.sort_by_key(|(index, _)| *index);
        indexed.into_iter().map(|(_, result)| result).collect()
    });
    let mut releases: Vec<CatalogEntry> = results.into_iter().collect::<Result<_, _>>()?;
    mark_migrations(&mut releases);
    let catalog = Catalog { releases };

    let text = catalog
        .to_toml()
        .map_err(|source| PackageError::Serialise {
            what: catalog::FILE_NAME.into(),
            source,
        })?;
    let path = out.join(catalog::FILE_NAME);
    let tmp = out.join(format!(
        ".{}.tmp-{}",
        catalog::FILE_NAME,
        std::process::id()
    ));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| PackageError::Write { path, source })?;
    Ok(catalog)
}

/// A release migrates when its schema is newer than every older release's
/// (pre-releases do not count as older: nobody upgrades through them).
fn mark_migrations(releases: &mut [CatalogEntry]) {
    let parsed: Vec<Option<crate::version::Version>> =
        releases.iter().map(|r| r.version.parse().ok()).collect();
    let levels: Vec<Option<i64>> = releases.iter().map(|r| r.schema_version).collect();
    for (i, r) in releases.iter_mut().enumerate() {
        let (Some(v), Some(level)) = (&parsed[i], levels[i]) else {
            continue;
        };
        let older = parsed
            .iter()
            .zip(&levels)
            .filter(|(o, _)| o.as_ref().is_some_and(|o| o < v && o.pre.is_none()))
            .filter_map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        r.migrates = level > older;
    }
}

fn build(
    out: &Path,
    binary: &Path,
    libs: &[PathBuf],
    spec: &ReleaseSpec,
) -> Result<CatalogEntry, PackageError> {
    let started = Instant::now();
    let version = &spec.manifest.version;
    let manifest = toml::to_string(&spec.manifest).map_err(|source| PackageError::Serialise {
        what: format!("the manifest of {version}"),
        source,
    })?;
    let manifest = format!(
        "# demo-gateway release manifest: the binary takes its version and behaviour from here.\n{manifest}"
    );
    let file = |path: &str, text: &str| Entry {
        path: path.into(),
        mode: 0o644,
        source: Source::Bytes(text.as_bytes().to_vec()),
    };
    let dir = |path: &str| Entry {
        path: path.into(),
        mode: 0o755,
        source: Source::Dir,
    };
    let entries = vec![
        dir("bin"),
        Entry {
            path: "bin/demo-gateway".into(),
            mode: 0o755,
            source: Source::File(binary.to_path_buf()),
        },
        dir("conf"),
        file("conf/cp.toml", EXAMPLE_CP_TOML),
        file("conf/dp.toml", EXAMPLE_DP_TOML),
        file(crate::manifest::FILE_NAME, &manifest),
    ];
    let write_err = |path: PathBuf| move |source| PackageError::Write { path, source };
    let image_file = catalog::image_name(version);
    let image_path = out.join(&image_file);
    let img = image::write(&image_path, version, &entries, libs)
        .map_err(write_err(image_path.clone()))?;
    let deb_file = deb::file_name(version);
    let deb_path = out.join(&deb_file);
    let pkg = deb::write(&deb_path, version, &entries).map_err(write_err(deb_path.clone()))?;
    let artifact = catalog::artifact_name(version);
    let path = out.join(&artifact);
    let written = archive::write(&path, entries).map_err(write_err(path.clone()))?;
    info!(%version, %artifact, size = written.size, image = %img.id, elapsed = ?started.elapsed(), "release packaged");
    Ok(CatalogEntry {
        version: version.clone(),
        artifact,
        sha256: written.sha256,
        size: written.size,
        image: Some(PackageEntry {
            artifact: image_file,
            sha256: img.sha256,
            size: img.size,
            id: Some(img.id),
        }),
        deb: Some(PackageEntry {
            artifact: deb_file,
            sha256: pkg.sha256,
            size: pkg.size,
            id: None,
        }),
        breaking_changes: spec
            .breaking_changes
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        migrates: false,
        schema_version: Some(i64::from(spec.manifest.migration_level)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpConfig, DpConfig};
    use crate::manifest::Release;

    #[test]
    fn shipped_example_configs_load() {
        CpConfig::parse(EXAMPLE_CP_TOML, Path::new("conf/cp.toml")).unwrap();
        DpConfig::parse(EXAMPLE_DP_TOML, Path::new("conf/dp.toml")).unwrap();
    }

    #[test]
    fn every_release_manifest_is_valid_and_faulty_ones_are_pre_releases() {
        let dir =
            std::env::temp_dir().join(format!("demo-gateway-manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for spec in releases::all() {
            let path = dir.join("manifest.toml");
            std::fs::write(&path, toml::to_string(&spec.manifest).unwrap()).unwrap();
            let release = Release::load(&path).unwrap();
            assert_eq!(
                release.version.pre.is_some(),
                !spec.manifest.faults.is_none(),
                "{}",
                spec.manifest.version
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
