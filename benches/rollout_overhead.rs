//! Benchmark: the coordinator's orchestration overhead per host and its peak
//! memory during a full rollout (issue 5, ARCHITECTURE.md "Targets":
//! ≤ 2 ms per host).
//!
//! For each fleet size N (default 20, 100, 200, 400) it starts N real
//! `rollgate-agent`s on their own loopback addresses (127.254.x.y), each host
//! on release 1.0.0 of a fake gateway whose steps take almost no time (a
//! `sleep` that starts at once and dies on the stop signal, health = the
//! process runs, min_healthy 0 s, nothing to drain), then times
//!
//! ```text
//! rollgate upgrade -i fleet.toml -c releases.toml --to 1.0.1 --yes \
//!     --batch 10% --min-healthy 0s --output json
//! ```
//!
//! and reads:
//!
//! * wall time, split into phases from the coordinator's JSON events;
//! * the agents' own time on the critical path, from their journals (every
//!   step is journalled `begin` … `end` on the agent): per DP batch the
//!   slowest host's drain + install + undrain, and the staging round;
//! * the coordinator's CPU time (utime + stime of the finished process,
//!   read while it is a zombie) and peak RSS (VmHWM, sampled every 10 ms).
//!
//! Orchestration overhead = wall time − the agents' critical-path time − the
//! driver's fixed waits, divided by N; that is the figure held against the
//! 2 ms target. The report explains the others.
//!
//! `cargo bench --bench rollout_overhead`; ROLLGATE_BENCH_HOSTS=20,200,1000
//! picks the fleet sizes, ROLLGATE_BENCH_KEEP=1 keeps the sandboxes.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde_json::Value;
use support::{Host, Sandbox, mib};

const TARGET_MS_PER_HOST: f64 = 2.0;
/// Stage calls in flight at once (`buffer_unordered(16)` in the driver).
const STAGE_LANES: f64 = 16.0;

fn main() {
    support::init();
    let sizes: Vec<usize> = std::env::var("ROLLGATE_BENCH_HOSTS")
        .unwrap_or_else(|_| "20,100,200,400".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0 && n <= 62_500)
        .collect();
    let mut runs = Vec::new();
    for n in sizes {
        eprintln!("bench: rollout of {n} hosts");
        runs.push(run_once(n));
    }
    report(&runs);
}

/// What one rollout showed.
struct Run {
    n: usize,
    batches: usize,
    wall_ms: f64,
    /// Coordinator start → the rollout starts (connect to every agent,
    /// Hello, preflight, lock and journal).
    plan_ms: f64,
    /// Rollout start → last stage done (the first hold, then staging).
    /// The driver's deliberate waits: the first hold (rollout start → first
    /// stage, every health watch gets its first reports) and each batch's
    /// health hold (`elapsed_ms` of its `batch succeeded` event).
    holds_ms: f64,
    first_hold_ms: f64,
    stage_ms: f64,
    dp_ms: f64,
    /// Last batch → exit (the closing fleet survey, the last event).
    close_ms: f64,
    /// The agents' own time on the critical path.
    stage_agents_ms: f64,
    dp_agents_ms: f64,
    coord_cpu_ms: f64,
    /// The coordinator's CPU time in plan, hold, stage, DP and close.
    phase_cpu_ms: Vec<f64>,
    coord_hwm: u64,
    agents_cpu_ms: f64,
    journal_records: usize,
}

impl Run {
    fn overhead_ms(&self) -> f64 {
        self.wall_ms - self.holds_ms - self.stage_agents_ms - self.dp_agents_ms
    }
    fn per_host(&self) -> f64 {
        self.overhead_ms() / self.n as f64
    }
    /// The overhead of each phase: plan, stage, DP, close.
    fn overhead_by_phase(&self) -> [f64; 4] {
        [
            self.plan_ms,
            self.stage_ms - self.first_hold_ms - self.stage_agents_ms,
            self.dp_ms - (self.holds_ms - self.first_hold_ms) - self.dp_agents_ms,
            self.close_ms,
        ]
    }
}

fn ip_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 254, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn run_once(n: usize) -> Run {
    let sb = Sandbox::new("rollgate-bench-rollout-");
    let names: Vec<(String, Ipv4Addr)> = (0..n)
        .map(|i| (format!("dp-{:04}", i + 1), ip_of(i)))
        .collect();
    let certs = sb.certs(&names);
    let v0 = support::artifact(sb.path(), "1.0.0");
    let v1 = support::artifact(sb.path(), "1.0.1");
    let catalog = support::catalog(sb.path(), &[&v0, &v1]);

    let mut hosts = Vec::new();
    let mut pids = Vec::new();
    for (name, ip) in &names {
        let extra = format!(
            "[health]\nstart_timeout = \"10s\"\nmin_healthy = \"0s\"\n\n\
             [drain]\nagent_check_listen = \"{ip}:9999\"\ngateway_ports = []\ntimeout = \"5s\"\n"
        );
        let h = Host::create(
            &sb,
            name,
            &certs,
            SocketAddr::new((*ip).into(), 7443),
            &extra,
        );
        support::preinstall(&h.root(), &v0);
        pids.push(h.start_agent());
        hosts.push(h);
    }
    for h in &hosts {
        support::wait_until(Duration::from_secs(60), "every agent listening", || {
            support::listening(h.addr)
        });
        support::wait_until(Duration::from_secs(60), "every gateway started", || {
            h.gateway_pid().is_some()
        });
    }
    let fleet = write_fleet(sb.path(), &hosts);
    // Let the agents' start-up settle before anything is measured.
    std::thread::sleep(Duration::from_secs(1));
    let agents_cpu = |pids: &[u32]| -> u64 {
        pids.iter()
            .filter_map(|&p| support::stat(p))
            .map(|s| s.cpu_ticks)
            .sum()
    };
    let agents_before = agents_cpu(&pids);

    let (out, err) = (
        sb.path().join("events.jsonl"),
        sb.path().join("coordinator.log"),
    );
    let started_ms = now_ms();
    let t0 = Instant::now();
    let mut child = support::with_raised_nofile(support::ROLLGATE)
        .args(["upgrade", "-i"])
        .arg(&fleet)
        .arg("-c")
        .arg(&catalog)
        .args([
            "--to",
            "1.0.1",
            "--yes",
            "--batch",
            "10%",
            "--min-healthy",
            "0s",
        ])
        .args(["--output", "json"])
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("events file"))
        .stderr(std::fs::File::create(&err).expect("log file"))
        .spawn()
        .expect("start rollgate upgrade");
    let pid = child.id();
    let hwm = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Every 10 ms: the peak RSS so far, and the CPU time so far (to split it
    // by phase afterwards).
    let sampler = {
        let (hwm, done) = (hwm.clone(), done.clone());
        std::thread::spawn(move || {
            let mut cpu = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(v) = support::status_kb(pid, "VmHWM") {
                    hwm.fetch_max(v, Ordering::Relaxed);
                }
                if let Some(st) = support::stat(pid).filter(|s| s.state != 'Z') {
                    cpu.push((now_ms(), st.cpu_ticks));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            cpu
        })
    };
    // Wait for the exit but leave the process a zombie, whose stat still
    // holds the CPU time of its whole life.
    waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )
    .expect("waitid");
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let ended_ms = now_ms();
    done.store(true, Ordering::Relaxed);
    let coord = support::stat(pid).expect("coordinator stat");
    let mut cpu_samples = sampler.join().unwrap_or_default();
    cpu_samples.push((ended_ms, coord.cpu_ticks));
    let status = child.wait().expect("reap the coordinator");
    let agents_after = agents_cpu(&pids);
    if !status.success() {
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "rollgate upgrade of {n} hosts failed ({status}); events in {}:\n{}",
            out.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let behind: Vec<&str> = hosts
        .iter()
        .filter(|h| support::current_version(&h.root()).as_deref() != Some("1.0.1"))
        .map(|h| h.name.as_str())
        .collect();
    assert!(
        behind.is_empty(),
        "hosts not on 1.0.1 after the rollout: {behind:?}"
    );

    let ev = Events::read(&out);
    let agent_ops = AgentOps::read(&hosts);
    let tck = support::clk_tck() as f64;
    let plan_at = ev
        .first("rollout", Some(("", "started")))
        .unwrap_or(started_ms);
    let stage_start = ev
        .first("step", Some(("stage", "started")))
        .unwrap_or(plan_at);
    let stage_end = ev
        .last("step", Some(("stage", "succeeded")))
        .unwrap_or(stage_start);
    let dp_end = ev
        .last("batch", Some(("", "succeeded")))
        .unwrap_or(stage_end);
    // The coordinator's CPU time until `t`: the last sample at or before it.
    let cpu_at = |t: f64| -> f64 {
        let ticks = cpu_samples
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, ticks)| *ticks);
        ticks as f64 / tck * 1000.0
    };
    let bounds = [
        started_ms,
        plan_at,
        stage_start,
        stage_end,
        dp_end,
        ended_ms,
    ];
    let phase_cpu_ms: Vec<f64> = bounds
        .windows(2)
        .map(|w| cpu_at(w[1]) - cpu_at(w[0]))
        .collect();
    let stage_durations: Vec<f64> = hosts
        .iter()
        .map(|h| agent_ops.busy(&h.name, &["stage"]))
        .collect();
    let stage_agents_ms = stage_durations
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(stage_durations.iter().sum::<f64>() / STAGE_LANES);
    let dp_agents_ms = ev
        .batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|h| agent_ops.busy(h, &["drain", "install", "undrain"]))
                .fold(0.0, f64::max)
        })
        .sum();
    Run {
        n,
        batches: ev.batches.len(),
        wall_ms,
        plan_ms: plan_at - started_ms,
        holds_ms: (stage_start - plan_at) + ev.batch_holds_ms.iter().sum::<f64>(),
        first_hold_ms: stage_start - plan_at,
        stage_ms: stage_end - plan_at,
        dp_ms: dp_end - stage_end,
        close_ms: ended_ms - dp_end,
        stage_agents_ms,
        dp_agents_ms,
        coord_cpu_ms: coord.cpu_ticks as f64 / tck * 1000.0,
        phase_cpu_ms,
        coord_hwm: hwm.load(Ordering::Relaxed),
        agents_cpu_ms: (agents_after - agents_before) as f64 / tck * 1000.0,
        journal_records: journal_records(&sb.path().join("state/rollouts")),
    }
}

fn write_fleet(dir: &Path, hosts: &[Host]) -> std::path::PathBuf {
    let p = dir.join("fleet.toml");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).expect("fleet.toml"));
    // Coordinator settings and policy: the defaults, but for what the
    // command line overrides.
    write!(
        f,
        "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/rollgate-coordinator.pem\"\nkey = \"certs/rollgate-coordinator.key\"\n\n\
         [coordinator]\nstate_dir = \"state\"\n"
    )
    .expect("write fleet.toml");
    for h in hosts {
        write!(
            f,
            "\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"dp\"\n",
            h.name, h.addr
        )
        .expect("write fleet.toml");
    }
    f.flush().expect("write fleet.toml");
    p
}

fn journal_records(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.lines().count())
        .sum()
}

/// The coordinator's JSON events.
struct Events {
    /// (event, step, status, at_ms)
    all: Vec<(String, String, String, f64)>,
    /// Hosts of each DP batch, in order.
    batches: Vec<Vec<String>>,
    /// How long each batch held healthy after its hosts were done.
    batch_holds_ms: Vec<f64>,
}

impl Events {
    fn read(path: &Path) -> Events {
        let file = std::fs::File::open(path).expect("events file");
        let mut all = Vec::new();
        let mut batches = Vec::new();
        let mut batch_holds_ms = Vec::new();
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            if s("event") == "batch" && s("status") == "started" {
                batches.push(
                    v["detail"]["hosts"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|h| h.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                );
            }
            if s("event") == "batch" && s("status") == "succeeded" {
                batch_holds_ms.push(v["elapsed_ms"].as_f64().unwrap_or(0.0));
            }
            all.push((
                s("event"),
                s("step"),
                s("status"),
                v["at_ms"].as_f64().unwrap_or(0.0),
            ));
        }
        Events {
            all,
            batches,
            batch_holds_ms,
        }
    }

    fn matching(
        &self,
        event: &str,
        step_status: Option<(&str, &str)>,
    ) -> impl Iterator<Item = f64> {
        self.all
            .iter()
            .filter(move |(e, st, s, _)| {
                e == event
                    && step_status.is_none_or(|(want_step, want)| st == want_step && s == want)
            })
            .map(|(.., at)| *at)
    }

    fn first(&self, event: &str, step_status: Option<(&str, &str)>) -> Option<f64> {
        self.matching(event, step_status).reduce(f64::min)
    }

    fn last(&self, event: &str, step_status: Option<(&str, &str)>) -> Option<f64> {
        self.matching(event, step_status).reduce(f64::max)
    }
}

/// How long each agent spent in each step: `end.at_ms − begin.at_ms` from
/// its journal.
struct AgentOps {
    /// host → kind → milliseconds
    busy: HashMap<String, BTreeMap<String, f64>>,
}

impl AgentOps {
    fn read(hosts: &[Host]) -> AgentOps {
        let mut busy = HashMap::new();
        for h in hosts {
            let mut begun: HashMap<String, f64> = HashMap::new();
            let mut per: BTreeMap<String, f64> = BTreeMap::new();
            let text = std::fs::read_to_string(h.dir.join("state/journal")).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let op = v["op"].as_str().unwrap_or_default().to_string();
                let at = v["at_ms"].as_f64().unwrap_or(0.0);
                match v["event"].as_str() {
                    Some("begin") => {
                        begun.insert(op, at);
                    }
                    Some("end") => {
                        if let Some(b) = begun.remove(&op) {
                            let kind = v["kind"].as_str().unwrap_or_default().to_string();
                            *per.entry(kind).or_default() += at - b;
                        }
                    }
                    _ => {}
                }
            }
            busy.insert(h.name.clone(), per);
        }
        AgentOps { busy }
    }

    fn busy(&self, host: &str, kinds: &[&str]) -> f64 {
        self.busy
            .get(host)
            .map(|m| kinds.iter().filter_map(|k| m.get(*k)).sum())
            .unwrap_or(0.0)
    }
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    line_fit(points).map(|(_, b)| b)
}

/// Least-squares line y = a + b·x: (a, b).
fn line_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let k = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / k;
    let my = points.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| (my - sxy / sxx * mx, sxy / sxx))
}

fn report(runs: &[Run]) {
    let s = |ms: f64| format!("{:.2}s", ms / 1000.0);
    println!();
    println!(
        "coordinator orchestration overhead — rollgate {} (release build): full rollout 1.0.0 → 1.0.1 of N DPs (no CP), --batch 10% --canary 1 --min-healthy 0s",
        rollgate::VERSION
    );
    println!(
        "machine: {} CPU(s), coordinator and every agent on this one machine (loopback)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "  {:>5} {:>7} {:>7} | {:>6} {:>7} {:>7} {:>6} | {:>7} {:>7} | {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>10}",
        "hosts",
        "batches",
        "wall",
        "plan",
        "stage",
        "DP",
        "close",
        "holds",
        "agents",
        "overhead",
        "per host",
        "coord CPU",
        "CPU/host",
        "peak RSS",
        "agents CPU"
    );
    for r in runs {
        println!(
            "  {:>5} {:>7} {:>7} | {:>6} {:>7} {:>7} {:>6} | {:>7} {:>7} | {:>8} {:>5.2} ms | {:>9} {:>5.2} ms {:>4.1} MiB | {:>10}",
            r.n,
            r.batches,
            s(r.wall_ms),
            s(r.plan_ms),
            s(r.stage_ms),
            s(r.dp_ms),
            s(r.close_ms),
            s(r.holds_ms),
            s(r.stage_agents_ms + r.dp_agents_ms),
            s(r.overhead_ms()),
            r.per_host(),
            s(r.coord_cpu_ms),
            r.coord_cpu_ms / r.n as f64,
            mib(r.coord_hwm),
            s(r.agents_cpu_ms),
        );
    }
    println!();
    println!(
        "  coordinator CPU per host, by phase:  {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
        "plan", "hold", "stage", "DP", "close", "total"
    );
    for r in runs {
        let per = |ms: f64| format!("{:.2}", ms / r.n as f64);
        println!(
            "  {:>5} hosts (ms/host)                {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
            r.n,
            per(r.phase_cpu_ms[0]),
            per(r.phase_cpu_ms[1]),
            per(r.phase_cpu_ms[2]),
            per(r.phase_cpu_ms[3]),
            per(r.phase_cpu_ms[4]),
            per(r.coord_cpu_ms),
        );
    }
    println!();
    println!(
        "  orchestration overhead per host, by phase (wall):  {:>6} {:>6} {:>6} {:>6} {:>7}",
        "plan", "stage", "DP", "close", "total"
    );
    for r in runs {
        let o = r.overhead_by_phase();
        let per = |ms: f64| format!("{:.2}", ms / r.n as f64);
        println!(
            "  {:>5} hosts (ms/host)                              {:>6} {:>6} {:>6} {:>6} {:>7}",
            r.n,
            per(o[0]),
            per(o[1]),
            per(o[2]),
            per(o[3]),
            per(r.overhead_ms()),
        );
    }
    let pts = |f: &dyn Fn(&Run) -> f64| -> Vec<(f64, f64)> {
        runs.iter().map(|r| (r.n as f64, f(r))).collect()
    };
    println!();
    println!("  marginal cost of one more host (least-squares slope over the fleet sizes):");
    let line = |what: &str, v: Option<f64>, unit: &str| match v {
        Some(v) => println!("    {what:<44} {v:>8.3} {unit}"),
        None => println!("    {what:<44} {:>8} (needs two fleet sizes)", "-"),
    };
    line("wall time", slope(&pts(&|r| r.wall_ms)), "ms/host");
    line(
        "orchestration overhead (wall)",
        slope(&pts(&|r| r.overhead_ms())),
        "ms/host",
    );
    line(
        "coordinator CPU time",
        slope(&pts(&|r| r.coord_cpu_ms)),
        "ms/host",
    );
    line(
        "coordinator peak RSS",
        slope(&pts(&|r| r.coord_hwm as f64 / 1024.0)),
        "KiB/host",
    );
    line(
        "agents' CPU time (all agents)",
        slope(&pts(&|r| r.agents_cpu_ms)),
        "ms/host",
    );
    if let Some(r) = runs.last() {
        println!(
            "    journal records (each fsynced) at N = {}: {} ({:.1} per host)",
            r.n,
            r.journal_records,
            r.journal_records as f64 / r.n as f64
        );
    }
    println!();
    println!("  how to read it:");
    for l in [
        "    wall      = coordinator start → exit. Phases: plan = until the rollout starts (connect, Hello and preflight of",
        "                every agent, lock, journal); stage = the first hold, then staging; DP = the batches, each with its",
        "                health hold; close = the closing fleet survey",
        "    holds     = the driver's deliberate waits: the first hold + every batch's health hold (batch events' elapsed_ms)",
        "    agents    = the agents' own step time on the critical path, from their journals (begin → end of each step):",
        "                Σ over batches of the slowest host's drain + install + undrain, plus the staging round",
        "                (max of the slowest stage and Σ stage / 16 lanes)",
        "    overhead  = wall − holds − agents: what the coordinator adds — its own work, connects, round trips and waits",
        "                between steps and batches, the plan and the survey; per host = overhead / N",
        "    coord CPU = utime + stime of the coordinator process (all threads, whole life); peak RSS = its VmHWM",
        "    caveat: agents and coordinator share this machine's cores, so step times and the coordinator's latency include",
        "            that contention (and any other load on the machine); on a real fleet each agent has its own host.",
    ] {
        println!("{l}");
    }
    let Some(r) = runs.iter().max_by_key(|r| r.n) else {
        return;
    };
    let v = r.per_host();
    println!();
    println!(
        "  compared with the target (≤ {TARGET_MS_PER_HOST} ms per host): the orchestration overhead per host of the largest fleet"
    );
    println!(
        "    N = {}: {:.2} ms per host — {}",
        r.n,
        v,
        if v <= TARGET_MS_PER_HOST {
            "meets the target"
        } else {
            "MISSES the target"
        }
    );
    if let Some((a, b)) = line_fit(&pts(&|r| r.overhead_ms())) {
        println!(
            "    fitted overhead ≈ {:.0} ms + {:.2} ms × N; at N = 1000 (the targets' fleet) that is {:.2} ms per host (extrapolated)",
            a,
            b,
            (a + b * 1000.0) / 1000.0
        );
    }
    println!(
        "  coordinator CPU time per host at N = {}: {:.2} ms; peak memory: {:.1} MiB",
        r.n,
        r.coord_cpu_ms / r.n as f64,
        mib(r.coord_hwm)
    );
}
