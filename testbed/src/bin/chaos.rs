//! The randomized kill -9 matrix: `chaos --trials N --seed S`.
//!
//! Each trial builds a demo fleet (a CP on PostgreSQL, DPs behind HAProxy,
//! one agent per host), runs `rollgate upgrade` to 3.4.0 under steady load,
//! kill -9s one randomly chosen process — the coordinator or one agent — at
//! a random instant, restarts a killed agent as systemd would, and carries
//! the rollout to its end the way an operator would (`resume` after a lost
//! coordinator, `upgrade` again after a halt). Then it checks every
//! invariant the product promises:
//!
//! * every host is on one release and runs it (installed = running = 3.4.0);
//! * no agent journal records an operation ending twice;
//! * no DP is left out of rotation;
//! * the database is the backup's or the migrated one, never in between:
//!   its schema level is the one the running CP reports and the config rows
//!   are the ones it had before;
//! * no request through HAProxy failed.
//!
//! The last line is `N trials, M consistent`. Trial `i` uses seed `S + i`,
//! so a failure is replayed exactly with `--seed <S + i> --trials 1`;
//! `--seeds A,B,C` runs exactly those (the regression set).
//!
//! Binaries (`rollgate`, `rollgate-agent`, `demo-gateway`) are taken from
//! next to this program (`cargo build --workspace`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate_testbed::fleet::{Bins, DemoFleet, FleetSpec};
use rollgate_testbed::install::Install;
use rollgate_testbed::load::{Load, LoadReport};
use serde_json::Value;

const FROM: &str = "3.3.0";
const TO: &str = "3.4.0";
/// The fault lands this long into the upgrade at most (the demo's upgrade
/// takes ~20-30 s with debug binaries on two cores).
const LATEST_FAULT: Duration = Duration::from_secs(25);
/// How long one `rollgate` command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);
/// Operator rounds (resume / upgrade again) before a trial is called stuck.
const MAX_ROUNDS: usize = 5;
/// systemd's RestartSec for the agent unit.
const RESTART_AFTER: Duration = Duration::from_secs(1);
const LOAD_RATE: u32 = 100;

struct Args {
    /// The seed of each trial.
    seeds: Vec<u64>,
    dps: usize,
}

fn parse_args() -> Result<Args, String> {
    let (mut trials, mut seed, mut dps, mut seeds) = (1u64, 1u64, 3usize, None);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, s: String| s.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match k.as_str() {
            "--trials" => trials = num("--trials", v("--trials")?)?,
            "--seed" => seed = num("--seed", v("--seed")?)?,
            "--dps" => dps = num("--dps", v("--dps")?)? as usize,
            "--seeds" => {
                let list = v("--seeds")?
                    .split(',')
                    .map(|s| num("--seeds", s.trim().to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                seeds = Some(list);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (use --trials N --seed S, or --seeds S1,S2,...; [--dps N])"
                ));
            }
        }
    }
    let seeds = seeds.unwrap_or_else(|| (0..trials).map(|i| seed.wrapping_add(i)).collect());
    if seeds.is_empty() || dps < 3 {
        return Err("there must be at least one trial, and --dps ≥ 3".into());
    }
    Ok(Args { seeds, dps })
}

/// splitmix64: a small, well-mixed generator, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One trial's plan, drawn from its seed.
#[derive(Debug, Clone)]
struct Fault {
    victim: String,
    at: Duration,
}

fn draw(seed: u64, dps: usize) -> Fault {
    let mut rng = Rng(seed);
    let mut victims = vec!["coordinator".to_string(), "cp-1".to_string()];
    victims.extend((1..=dps).map(|i| format!("dp-{i}")));
    let victim = victims[rng.below(victims.len() as u64) as usize].clone();
    let at = Duration::from_millis(rng.below(LATEST_FAULT.as_millis() as u64));
    Fault { victim, at }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(64);
        }
    };
    // Gateways whose agent died are re-parented to us and reaped here, not
    // left as zombies under a PID 1 that does not reap.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let exe = std::env::current_exe().expect("own path");
    let bins = Bins::next_to(&exe);
    let missing = rollgate_testbed::fleet::missing_prerequisites(&bins);
    if !missing.is_empty() {
        eprintln!("chaos: missing: {}", missing.join("; "));
        std::process::exit(64);
    }
    let mut consistent = 0;
    let mut failures = Vec::new();
    let trials = args.seeds.len();
    for (i, &seed) in args.seeds.iter().enumerate() {
        let fault = draw(seed, args.dps);
        eprintln!(
            "chaos: trial {} of {trials} (seed {seed}): kill -9 {} at {} ms",
            i + 1,
            fault.victim,
            fault.at.as_millis()
        );
        let t0 = Instant::now();
        match trial(&bins, seed, &fault, args.dps) {
            Ok(v) if v.is_empty() => {
                consistent += 1;
                eprintln!(
                    "chaos: seed {seed}: consistent ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                );
            }
            Ok(violations) => {
                eprintln!(
                    "chaos: seed {seed}: INCONSISTENT: {}",
                    violations.join("; ")
                );
                failures.push((seed, fault, violations.join("; ")));
            }
            Err(e) => {
                eprintln!("chaos: seed {seed}: trial could not run: {e}");
                failures.push((seed, fault, format!("trial could not run: {e}")));
            }
        }
    }
    for (seed, f, why) in &failures {
        println!(
            "seed {seed}: kill -9 {} at {} ms: {why} (replay: chaos --seed {seed} --trials 1)",
            f.victim,
            f.at.as_millis()
        );
    }
    println!("{trials} trials, {consistent} consistent");
    if consistent != trials {
        std::process::exit(1);
    }
}

/// Load through HAProxy on its own thread and runtime until `stop` fires.
struct Traffic {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<LoadReport>>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("load runtime");
            rt.block_on(async move {
                let load = Load::start(url, LOAD_RATE, 4);
                let _ = rx.await;
                load.stop().await
            })
        });
        Traffic {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> LoadReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

fn trial(bins: &Bins, seed: u64, fault: &Fault, dps: usize) -> Result<Vec<String>, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("rollgate-chaos-{seed}-"))
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let net = ((seed % 250) as u8 + 2, ((seed / 250) % 250) as u8 + 2);
    let mut fleet = DemoFleet::start(FleetSpec {
        dir: dir.path().join("fleet"),
        net,
        dps,
        version: FROM.into(),
        bins: bins.clone(),
        artifacts_cache: std::env::temp_dir().join("rollgate-chaos-artifacts"),
        policy: "agent_silence = \"2s\"".into(),
        detached: false,
        install: Install::Tarball,
    })?;
    let db_before = database(&fleet)?;
    let traffic = Traffic::start(fleet.url());
    let fleet_dir = fleet.dir.clone();
    let rollgate = |args: &[&str], out: &Path| -> Result<Child, String> {
        Command::new(&bins.rollgate)
            .args(args)
            .current_dir(&fleet_dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out).map_err(|e| e.to_string())?)
            .stderr(std::fs::File::create(out.with_extension("log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("start rollgate: {e}"))
    };
    let (inv, cat) = (
        fleet.inventory.display().to_string(),
        fleet.catalog.display().to_string(),
    );
    let upgrade_args = [
        "upgrade", "-i", &inv, "-c", &cat, "--to", TO, "--yes", "--output", "json",
    ];
    let mut round = 0;
    let mut out = dir.path().join(format!("run-{round}.jsonl"));
    let mut child = rollgate(&upgrade_args, &out)?;
    let started = Instant::now();
    // The fault.
    while started.elapsed() < fault.at {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut coordinator_killed = false;
    if fault.victim == "coordinator" {
        if child.try_wait().map_err(|e| e.to_string())?.is_none() {
            let _ = child.kill();
            coordinator_killed = true;
        }
        let _ = child.wait();
    } else {
        fleet.kill_agent(&fault.victim)?;
        std::thread::sleep(RESTART_AFTER);
        fleet.start_agent(&fault.victim)?;
    }
    // The operator carries the rollout to its end.
    let mut rid = None;
    let outcome = loop {
        if !coordinator_killed {
            wait_exit(&mut child, COMMAND_DEADLINE)?;
        }
        let events = read_events(&out);
        if rid.is_none() {
            rid = events.iter().find_map(|e| {
                e["rollout"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
            });
        }
        let last = events
            .iter()
            .rev()
            .find(|e| e["event"] == "rollout" && e["status"] != "started")
            .and_then(|e| e["status"].as_str().map(str::to_string));
        round += 1;
        if round > MAX_ROUNDS {
            break format!("stuck after {MAX_ROUNDS} rounds (last: {last:?})");
        }
        out = dir.path().join(format!("run-{round}.jsonl"));
        coordinator_killed = false;
        match last.as_deref() {
            Some("succeeded") => break "succeeded".to_string(),
            // The coordinator died before it said how the rollout ended.
            // Or it stopped on a lost agent: its steps are followed by id.
            None | Some("interrupted" | "disconnected") => match &rid {
                Some(r) => {
                    let resume = ["resume", r.as_str(), "-i", &inv, "--output", "json"];
                    child = rollgate(&resume, &out)?;
                }
                None => child = rollgate(&upgrade_args, &out)?,
            },
            // A halt is finished by running the upgrade again.
            Some(_) => child = rollgate(&upgrade_args, &out)?,
        }
    };
    let load = traffic.stop();
    let mut violations = Vec::new();
    if outcome != "succeeded" {
        violations.push(format!("the rollout did not end: {outcome}"));
    }
    violations.extend(check_hosts(&fleet, &bins.rollgate)?);
    violations.extend(check_journals(&fleet));
    let db_after = database(&fleet)?;
    let cp_level = cp_schema_level(&fleet);
    if db_after.1 != db_before.1 {
        violations.push(format!(
            "config rows changed: {} before, {} after",
            db_before.1, db_after.1
        ));
    }
    if cp_level != Some(db_after.0) {
        violations.push(format!(
            "the database is at schema {} but the running CP reports {cp_level:?}",
            db_after.0
        ));
    }
    if load.failed > 0 {
        violations.push(format!(
            "{} of {} requests failed: {:?}",
            load.failed,
            load.sent,
            load.failures.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if !violations.is_empty() {
        // Keep the evidence.
        let kept = dir.keep();
        violations.push(format!("evidence kept in {}", kept.display()));
    }
    Ok(violations)
}

fn wait_exit(child: &mut Child, deadline: Duration) -> Result<(), String> {
    let end = Instant::now() + deadline;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("rollgate did not end within {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::File::open(path)
        .map(|f| {
            std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str(&l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Installed = running = the target, and every DP in rotation, as
/// `rollgate status` reports it.
fn check_hosts(fleet: &DemoFleet, rollgate: &PathBuf) -> Result<Vec<String>, String> {
    let out = Command::new(rollgate)
        .args(["status", "-i"])
        .arg(&fleet.inventory)
        .args(["--output", "json"])
        .current_dir(&fleet.dir)
        .output()
        .map_err(|e| format!("rollgate status: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("rollgate status printed no JSON: {e}"))?;
    let mut bad = Vec::new();
    for h in v["hosts"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or("?");
        let installed = h["version"].as_str();
        let running = h["running_version"].as_str();
        if installed != Some(TO) || running != Some(TO) {
            bad.push(format!(
                "{name}: installed {installed:?}, running {running:?} (expected {TO})"
            ));
        }
        if h["role"] == "dp" && h["load_balancer"] != "in rotation" {
            bad.push(format!("{name}: load balancer {}", h["load_balancer"]));
        }
    }
    Ok(bad)
}

/// No operation ends twice in any agent's journal.
fn check_journals(fleet: &DemoFleet) -> Vec<String> {
    let mut bad = Vec::new();
    for h in &fleet.hosts {
        let text = std::fs::read_to_string(h.dir.join("state/journal")).unwrap_or_default();
        let mut ends: std::collections::BTreeMap<String, u32> = Default::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["event"] == "end"
                && let Some(op) = v["op"].as_str()
            {
                *ends.entry(op.to_string()).or_default() += 1;
            }
        }
        for (op, n) in ends.into_iter().filter(|(_, n)| *n > 1) {
            bad.push(format!("{}: operation {op} ended {n} times", h.name));
        }
    }
    bad
}

/// (schema level, config rows) of the gateway database.
fn database(fleet: &DemoFleet) -> Result<(i64, i64), String> {
    let pg = fleet.pg.as_ref().ok_or("the fleet has no database")?;
    let q = |sql: &str| -> Result<i64, String> {
        pg.psql("gateway", sql)
            .map_err(|e| e.to_string())?
            .trim()
            .parse::<i64>()
            .map_err(|e| format!("{sql}: {e}"))
    };
    Ok((
        q("SELECT coalesce(max(version), 0) FROM schema_version")?,
        q("SELECT count(*) FROM routes")?,
    ))
}

/// The schema level the running CP reports on its status API.
fn cp_schema_level(fleet: &DemoFleet) -> Option<i64> {
    let cp = fleet.hosts.iter().find(|h| h.name == "cp-1")?;
    let (_, body) = rollgate_testbed::http::get(cp.gateway, "/status")?;
    serde_json::from_str::<Value>(&body).ok()?["schema_version"].as_i64()
}
