//! Every committed fuzz input, run through its target in the normal test
//! suite: the seed corpus (`fuzz/corpus/<target>/`) and the inputs that once
//! made a target fail (`fuzz/regressions/<target>/`). A fuzz run's crash is
//! fixed, then its input is committed under `regressions`, so it stays
//! fixed.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for (name, target) in rollgate_fuzz_harness::TARGETS {
        let seeds = inputs(&fuzz.join("corpus").join(name));
        assert!(
            seeds.len() >= 3,
            "target {name}: {} seed input(s) in fuzz/corpus/{name}; the seed corpus is missing",
            seeds.len()
        );
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for file in seeds.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("read a fuzz input");
            if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {}: {why}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}
