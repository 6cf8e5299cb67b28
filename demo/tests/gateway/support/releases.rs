//! Packages every release once per build of the binary under test (`demo-gateway
//! package`) and unpacks releases on demand, as an agent would.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use demo_gateway::package::catalog::{Catalog, FILE_NAME};
use flate2::read::GzDecoder;

/// The binary under test; also runs the upstreams and `package`.
pub const BINARY: &str = env!("CARGO_BIN_EXE_demo-gateway");

pub struct Packaged {
    pub dir: PathBuf,
    pub catalog: Catalog,
}

/// Packaged releases are shared by every test process of one build (nextest runs
/// each test in its own process): they live in a dir named after the binary's
/// size and mtime, published with an atomic rename.
fn shared_root() -> PathBuf {
    let meta = std::fs::metadata(BINARY).expect("the binary under test");
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    work_root().join(format!("pkg-{}-{mtime}", meta.len()))
}

fn work_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-gateway-tests")
}

/// Builds `final_dir` through `fill(tmp)` and a rename, unless another process
/// already published it.
fn publish(final_dir: &Path, fill: impl FnOnce(&Path)) {
    if final_dir.exists() {
        return;
    }
    // Unique per process and per call: tests of one process race here too.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let tmp = final_dir.with_file_name(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed),
        final_dir.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    fill(&tmp);
    if std::fs::rename(&tmp, final_dir).is_err() {
        // Another process won the race; its copy is identical.
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(final_dir.exists(), "cannot publish {}", final_dir.display());
    }
}

/// The packaged releases of this build, built on first use (the testbed's
/// cache, shared with rollgate's own tests).
pub fn packaged() -> &'static Packaged {
    static PACKAGED: OnceLock<Packaged> = OnceLock::new();
    PACKAGED.get_or_init(|| {
        remove_stale(&work_root());
        let out = rollgate_testbed::artifacts::packaged(
            Path::new(BINARY),
            Path::new(env!("CARGO_TARGET_TMPDIR")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(out.join(FILE_NAME)).expect("read the catalog");
        let catalog: Catalog = toml::from_str(&text).expect("parse the catalog");
        Packaged { dir: out, catalog }
    })
}

/// Packages of earlier builds pile up in the target dir; remove those untouched
/// for a while (a concurrent run of another build may still use a recent one).
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let current = shared_root();
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(30 * 60));
        if old && entry.path() != current {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The unpacked release dir of `version` (`bin/`, `conf/`, `manifest.toml`),
/// unpacked once per build and shared read-only by the tests.
pub fn release(version: &str) -> PathBuf {
    let packaged = packaged();
    let entry = packaged
        .catalog
        .releases
        .iter()
        .find(|r| r.version == version)
        .unwrap_or_else(|| panic!("release {version} is not in the catalog"));
    let dir = shared_root().join("releases").join(version);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    publish(&dir, |tmp| unpack(&packaged.dir.join(&entry.artifact), tmp));
    dir
}

pub fn unpack(artifact: &Path, into: &Path) {
    let file = std::fs::File::open(artifact).expect("open the artifact");
    std::fs::create_dir_all(into).unwrap();
    tar::Archive::new(GzDecoder::new(file))
        .unpack(into)
        .expect("unpack the artifact");
}

/// The gateway binary inside an unpacked release.
pub fn binary_of(version: &str) -> PathBuf {
    release(version).join("bin").join("demo-gateway")
}
