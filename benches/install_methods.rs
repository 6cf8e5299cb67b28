//! Benchmark: what one DP's upgrade takes with each install method — release
//! tarballs (the agent runs the gateway), Docker Compose services, Debian
//! packages — on the demo fleet (1 CP, 3 DPs behind HAProxy, PostgreSQL),
//! 3.3.0 → 3.4.0 with `min_healthy = 2s`.
//!
//! The headline is what an operator waits for: the rollout's wall time, and
//! per DP the time from its drain to its undrain. Beside it, from the
//! agents' journals (every install phase is journalled with its time), the
//! part the tool does not control — the gateway's own stop, and its start
//! until it answers ready — and the policy's hold (`min_healthy`).
//!
//! `cargo build --release --workspace && cargo bench --bench install_methods`;
//! ROLLGATE_BENCH_METHODS=compose,deb picks the methods (default all three;
//! compose needs a Docker Engine).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rollgate_testbed::fleet::{Bins, DemoFleet, FleetSpec};
use rollgate_testbed::install::Install;

const MIN_HEALTHY_MS: u64 = 2000;

/// One DP's install, from its journal: begin, then each phase's time.
#[derive(Debug, Default)]
struct InstallTimes {
    stop_ms: u64,
    switch_ms: u64,
    start_ms: u64,
    ready_ms: u64,
}

fn install_times(state_dir: &Path) -> Option<InstallTimes> {
    let text = std::fs::read_to_string(state_dir.join("journal")).ok()?;
    let mut at: BTreeMap<String, i64> = BTreeMap::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v["kind"] != "install" {
            continue;
        }
        let key = match v["event"].as_str()? {
            "begin" => "begin".to_string(),
            "phase" => v["phase"].as_str()?.to_string(),
            "end" => "end".to_string(),
            _ => continue,
        };
        at.insert(key, v["at_ms"].as_i64()?);
    }
    let d = |a: &str, b: &str| Some((at.get(b)? - at.get(a)?).max(0) as u64);
    Some(InstallTimes {
        stop_ms: d("begin", "stopped")?,
        switch_ms: d("stopped", "switched")?,
        start_ms: d("switched", "started")?,
        ready_ms: d("started", "gated")?.saturating_sub(MIN_HEALTHY_MS),
    })
}

struct Run {
    method: Install,
    wall: Duration,
    /// Per DP: drain start → undrain end, from the coordinator's events.
    per_dp_ms: Vec<u64>,
    installs: Vec<InstallTimes>,
}

fn run(method: Install, bins: &Bins, cache: &Path) -> Result<Run, String> {
    let dir = std::env::temp_dir().join(format!(
        "rollgate-bench-methods-{}-{}",
        method.as_str(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let fleet = DemoFleet::start(FleetSpec {
        dir: dir.clone(),
        net: (251, 1 + method as u8),
        dps: 3,
        version: "3.3.0".into(),
        bins: bins.clone(),
        artifacts_cache: cache.to_path_buf(),
        policy: format!(
            "batch = 1\ncanary = 1\nmin_healthy = \"{MIN_HEALTHY_MS}ms\"\nhealth_timeout = \"30s\"\ndrain_timeout = \"10s\""
        ),
        detached: false,
        install: method,
    })?;
    let started = Instant::now();
    let out = Command::new(&bins.rollgate)
        .args(["upgrade", "-i"])
        .arg(&fleet.inventory)
        .arg("-c")
        .arg(&fleet.catalog)
        .args(["--to", "3.4.0", "--yes", "--output", "json"])
        .current_dir(&fleet.dir)
        .output()
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "the upgrade failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let (Some(host), Some(step), Some(at)) =
            (v["host"].as_str(), v["step"].as_str(), v["at_ms"].as_i64())
        else {
            continue;
        };
        if !host.starts_with("dp") {
            continue;
        }
        if step == "drain" && v["status"] == "started" {
            first.insert(host.into(), at);
        }
        if step == "undrain" && v["status"] == "succeeded" {
            last.insert(host.into(), at);
        }
    }
    let per_dp_ms = first
        .iter()
        .filter_map(|(h, a)| Some((last.get(h)? - a).max(0) as u64))
        .collect();
    let installs = fleet
        .hosts
        .iter()
        .filter(|h| h.name.starts_with("dp"))
        .filter_map(|h| install_times(&h.dir.join("state")))
        .collect();
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        method,
        wall,
        per_dp_ms,
        installs,
    })
}

fn mean(v: impl Iterator<Item = u64>) -> f64 {
    let v: Vec<u64> = v.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0
}

fn main() {
    support::init();
    let exe = std::env::current_exe().expect("this bench's path");
    // Benches run from target/<profile>/deps: the binaries are one up, or
    // where ROLLGATE_BENCH_BIN_DIR says (demo-gateway is another package of
    // the workspace: `cargo build --release --workspace` builds it).
    let bins = match std::env::var_os("ROLLGATE_BENCH_BIN_DIR") {
        Some(d) => Bins::next_to(&Path::new(&d).join("rollgate")),
        None => Bins::next_to(exe.parent().unwrap_or(Path::new("."))),
    };
    if !bins.demo_gateway.is_file() {
        eprintln!(
            "install_methods: no {} (run `cargo build --release --workspace` first)",
            bins.demo_gateway.display()
        );
        std::process::exit(64);
    }
    let cache = std::env::temp_dir().join("rollgate-bench-artifacts");
    let methods: Vec<Install> = std::env::var("ROLLGATE_BENCH_METHODS")
        .unwrap_or_else(|_| "tarball,compose,deb".into())
        .split(',')
        .map(|m| m.trim().parse().expect("tarball, compose or deb"))
        .collect();
    println!(
        "install_methods: 1 CP + 3 DPs, 3.3.0 → 3.4.0, batch 1, min_healthy {MIN_HEALTHY_MS} ms"
    );
    println!(
        "{:<8} {:>9} {:>11} | {:>9} {:>9} {:>9} {:>13} {:>6}",
        "method", "rollout", "per DP", "stop", "switch", "start", "start→ready", "hold"
    );
    for m in methods {
        match run(m, &bins, &cache) {
            Ok(r) => println!(
                "{:<8} {:>8.1}s {:>10.2}s | {:>8.2}s {:>8.2}s {:>8.2}s {:>12.2}s {:>5.1}s",
                r.method.as_str(),
                r.wall.as_secs_f64(),
                mean(r.per_dp_ms.iter().copied()),
                mean(r.installs.iter().map(|i| i.stop_ms)),
                mean(r.installs.iter().map(|i| i.switch_ms)),
                mean(r.installs.iter().map(|i| i.start_ms)),
                mean(r.installs.iter().map(|i| i.ready_ms)),
                MIN_HEALTHY_MS as f64 / 1000.0,
            ),
            Err(e) => println!("{:<8} failed: {e}", m.as_str()),
        }
    }
    println!(
        "per DP = drain start → undrain end (what the operator waits for, per host); \
         stop and start→ready are the gateway's own (not rollgate's), start is the service \
         manager's start (exec spawn, compose up, systemd), switch is the install method's swap; \
         hold is the policy's min_healthy."
    );
    support::cleanup();
}
