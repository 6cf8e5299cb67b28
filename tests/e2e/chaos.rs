//! The kill -9 matrix's fixed-seed set, run in CI (`deploy/chaos.sh` runs
//! the full matrix): seed 2 kills the coordinator mid-rollout (then
//! `resume`), seed 3 kills a DP's agent mid-rollout (restarted as systemd
//! would), seed 1000 kills the CP's agent during its install (found by the
//! matrix: the re-run upgrade was refused while the restarted agent still
//! finished that install; the coordinator now waits for it). Each trial
//! checks every invariant (testbed/src/bin/chaos.rs).

use std::path::Path;
use std::process::Command;

use crate::support::ROLLGATE;

#[test]
fn the_fixed_seed_kill_matrix_is_consistent() {
    // Built by `cargo build --workspace` next to rollgate (deploy/test.sh).
    let chaos = Path::new(ROLLGATE).with_file_name("chaos");
    assert!(
        chaos.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        chaos.display()
    );
    let out = Command::new(&chaos)
        .args(["--seeds", "2,3,1000"])
        .output()
        .expect("run chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "3 trials, 3 consistent",
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}
