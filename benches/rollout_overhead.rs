//! Benchmark: how long a full rollout of N DPs takes, wall clock, with the
//! gateways' own restart time measured and printed beside it (nothing is
//! subtracted), plus the coordinator's CPU time and peak memory.
//!
//! For each gateway restart time R (default 0 ms and 150 ms) and fleet size
//! N (default 200) it starts N real `rollgate-agent`s on their own loopback
//! addresses (127.254.x.y), each host on release 1.0.0 of a fake gateway
//! (`support/fake_gateway.rs`: the bench binary itself) that is ready R ms
//! after it starts and logs its own start, ready and stop instants. The
//! agents probe its readiness over HTTP, as they would a real gateway. Then
//! it times
//!
//! ```text
//! rollgate upgrade -i fleet.toml -c releases.toml --to 1.0.1 --yes \
//!     --batch 10% --min-healthy 0s --output json
//! ```
//!
//! and reads:
//!
//! * wall time (coordinator start → exit), split into phases from the
//!   coordinator's JSON events;
//! * the gateways' share: per DP batch, the slowest host's stop → ready
//!   (old gateway got its stop signal → new gateway listens), from the
//!   gateways' own logs; summed over batches. The rest of the wall time is
//!   rollgate's (staging, drain, undrain, health confirmation, round trips);
//! * per batch: batch wall (batch started → succeeded events) minus its
//!   slowest gateway's stop → ready: what a batch costs beyond its gateways;
//! * the agents' own step time on the critical path, from their journals;
//! * the coordinator's CPU time (utime + stime of the finished process,
//!   read while it is a zombie) and peak RSS (VmHWM, sampled every 10 ms).
//!
//! Each rollout runs twice: with the rollout journal and lease in files
//! (`[state] backend = "file"`, the default) and in PostgreSQL (`backend =
//! "postgres"`, a throwaway cluster on loopback started by the bench, its
//! commits synchronous as rollgate asks): the difference is what the shared
//! state costs.
//!
//! `cargo bench --bench rollout_overhead`; ROLLGATE_BENCH_HOSTS=20,200,1000
//! picks the fleet sizes, ROLLGATE_BENCH_RESTART_MS=0,150 the gateway's
//! start → ready delays, ROLLGATE_BENCH_STATE=file,postgres the state
//! backends, ROLLGATE_BENCH_KEEP=1 keeps the sandboxes.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::coordinator::{self, Batch, Events};
use support::{Host, mib};

/// Targets (issue "Speed"), at 200 hosts, batch 10 %: total wall time with
/// an instant gateway and with one that takes 150 ms to restart, and what a
/// batch may cost beyond its slowest gateway's stop → ready (p50).
const TARGET_WALL_INSTANT_MS: f64 = 2000.0;
const TARGET_WALL_150_MS: f64 = 3500.0;
const TARGET_BATCH_EXTRA_MS: f64 = 50.0;
/// The fake gateway's port on every host's own address.
const GATEWAY_PORT: u16 = 8080;

fn list(var: &str, default: &str) -> Vec<u64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn main() {
    support::fake_gateway::run_if_asked();
    support::init();
    support::use_fake_gateway();
    let sizes: Vec<usize> = list("ROLLGATE_BENCH_HOSTS", "200")
        .into_iter()
        .map(|n| n as usize)
        .filter(|&n| n > 0 && n <= 62_500)
        .collect();
    let restarts = list("ROLLGATE_BENCH_RESTART_MS", "0,150");
    let states: Vec<String> = std::env::var("ROLLGATE_BENCH_STATE")
        .unwrap_or_else(|_| "file,postgres".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| s == "file" || s == "postgres")
        .collect();
    let pg = states.iter().any(|s| s == "postgres").then(|| {
        rollgate_testbed::pg::PgCluster::start().expect("a PostgreSQL cluster for the state")
    });
    let mut runs = Vec::new();
    for &restart_ms in &restarts {
        for &n in &sizes {
            for state in &states {
                eprintln!(
                    "bench: rollout of {n} hosts, gateway ready {restart_ms} ms after its start, {state} state"
                );
                let db = (state == "postgres").then(|| {
                    let cluster = pg.as_ref().expect("started above");
                    let name = format!("rollgate_state_{}", runs.len());
                    cluster.createdb(&name).expect("a state database");
                    (cluster, name)
                });
                runs.push(run_once(n, restart_ms, db));
            }
        }
    }
    report(&runs);
}

/// What one rollout showed.
struct Run {
    /// "file" or "pg": where the journal and lease were.
    state: &'static str,
    n: usize,
    restart_ms: u64,
    batches: usize,
    wall_ms: f64,
    /// Coordinator start → the rollout starts (connect to every agent,
    /// Hello, preflight, lock and journal).
    plan_ms: f64,
    /// Rollout start → last stage done (waiting for every host's first
    /// health report, then staging).
    stage_ms: f64,
    dp_ms: f64,
    /// Last batch → exit (the closing fleet survey, the last event).
    close_ms: f64,
    /// Σ over batches of the slowest host's gateway stop → ready.
    gateway_ms: f64,
    /// Per batch: batch wall − its slowest gateway stop → ready.
    batch_extra_ms: Vec<f64>,
    /// Σ over batches of the slowest host's drain + install + undrain, from
    /// the agents' journals (includes the gateway's stop → ready).
    dp_agents_ms: f64,
    coord_cpu_ms: f64,
    /// The coordinator's CPU time in plan, stage, DP and close.
    phase_cpu_ms: Vec<f64>,
    coord_hwm: u64,
    agents_cpu_ms: f64,
    journal_records: usize,
}

impl Run {
    fn rest_ms(&self) -> f64 {
        self.wall_ms - self.gateway_ms
    }
    fn batch_extra_p50(&self) -> f64 {
        percentile(&self.batch_extra_ms, 0.5)
    }
    fn target_wall_ms(&self) -> Option<f64> {
        match self.restart_ms {
            0 => Some(TARGET_WALL_INSTANT_MS),
            150 => Some(TARGET_WALL_150_MS),
            _ => None,
        }
    }
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn run_once(
    n: usize,
    restart_ms: u64,
    state_db: Option<(&rollgate_testbed::pg::PgCluster, String)>,
) -> Run {
    let coordinator::Prepared {
        sb,
        names,
        certs,
        v0,
        catalog,
    } = coordinator::prepare("rollgate-bench-rollout-", n, 254);

    let mut hosts = Vec::new();
    let mut pids = Vec::new();
    for (name, ip) in &names {
        let events = sb.path().join(name).join("gateway-events.log");
        let url = format!("http://{ip}:{GATEWAY_PORT}");
        let extra = format!(
            "[service.env]\nGW_LISTEN = \"{ip}:{GATEWAY_PORT}\"\nGW_EVENTS = \"{}\"\nGW_READY_DELAY_MS = \"{restart_ms}\"\n\n\
             [health]\nstatus_url = \"{url}/status\"\nready_url = \"{url}/status/ready\"\nversion = {{ from = \"header\" }}\n\
             start_timeout = \"10s\"\nmin_healthy = \"0s\"\n\n\
             [drain]\nagent_check_listen = \"{ip}:9999\"\ngateway_ports = []\ntimeout = \"5s\"\n",
            events.display()
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
        support::wait_until(Duration::from_secs(60), "every gateway ready", || {
            gateway_log(h).iter().any(|e| e.what == "ready")
        });
    }
    let fleet = coordinator::write_fleet(
        sb.path(),
        &hosts
            .iter()
            .map(|h| (h.name.clone(), h.addr))
            .collect::<Vec<_>>(),
    );
    if let Some((cluster, name)) = &state_db {
        let text = std::fs::read_to_string(&fleet).expect("fleet.toml");
        let state = format!(
            "[state]\nbackend = \"postgres\"\nurl = \"{}\"\n\n",
            cluster.conninfo(name)
        );
        std::fs::write(&fleet, format!("{state}{text}")).expect("fleet.toml");
    }
    // Let the agents' start-up work (TLS set-up, first probes) finish
    // before anything is measured: a real fleet's agents are long idle.
    std::thread::sleep(Duration::from_secs(1));
    let agents_cpu = |pids: &[u32]| -> u64 {
        pids.iter()
            .filter_map(|&p| support::stat(p))
            .map(|s| s.cpu_ticks)
            .sum()
    };
    let agents_before = agents_cpu(&pids);
    let m = coordinator::upgrade(
        sb.path(),
        &fleet,
        &catalog,
        "1.0.1",
        &["--batch", "10%", "--min-healthy", "0s"],
    );
    let agents_after = agents_cpu(&pids);
    let behind: Vec<&str> = hosts
        .iter()
        .filter(|h| support::current_version(&h.root()).as_deref() != Some("1.0.1"))
        .map(|h| h.name.as_str())
        .collect();
    assert!(
        behind.is_empty(),
        "hosts not on 1.0.1 after the rollout: {behind:?}"
    );

    let ev = Events::read(&m.events);
    let agent_ops = AgentOps::read(&hosts);
    let restarts: HashMap<&str, f64> = hosts
        .iter()
        .map(|h| {
            let r = stop_to_ready_ms(&gateway_log(h)).unwrap_or_else(|| {
                panic!(
                    "{}: no stop → ready of 1.0.0 → 1.0.1 in its gateway log",
                    h.name
                )
            });
            (h.name.as_str(), r)
        })
        .collect();
    let slowest = |b: &Batch| -> f64 {
        b.hosts
            .iter()
            .map(|h| restarts.get(h.as_str()).copied().unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    let tck = support::clk_tck() as f64;
    let (plan_at, stage_end, dp_end) = ev.phases(m.started_ms);
    let bounds = [m.started_ms, plan_at, stage_end, dp_end, m.ended_ms];
    let phase_cpu_ms: Vec<f64> = bounds
        .windows(2)
        .map(|w| m.cpu_at(w[1]) - m.cpu_at(w[0]))
        .collect();
    let dp_agents_ms = ev
        .batches
        .iter()
        .map(|b| {
            b.hosts
                .iter()
                .map(|h| agent_ops.busy(h, &["drain", "install", "undrain"]))
                .fold(0.0, f64::max)
        })
        .sum();
    let journal_records = match &state_db {
        None => coordinator::journal_records(&sb.path().join("state/rollouts")),
        Some((cluster, name)) => cluster
            .psql(name, "SELECT count(*) FROM rollgate_journal")
            .expect("count the journal rows")
            .trim()
            .parse()
            .expect("a count"),
    };
    Run {
        state: if state_db.is_some() { "pg" } else { "file" },
        n,
        restart_ms,
        batches: ev.batches.len(),
        wall_ms: m.wall_ms,
        plan_ms: plan_at - m.started_ms,
        stage_ms: stage_end - plan_at,
        dp_ms: dp_end - stage_end,
        close_ms: m.ended_ms - dp_end,
        gateway_ms: ev.batches.iter().map(slowest).sum(),
        batch_extra_ms: ev
            .batches
            .iter()
            .map(|b| b.end_ms - b.start_ms - slowest(b))
            .collect(),
        dp_agents_ms,
        coord_cpu_ms: m.cpu_ms,
        phase_cpu_ms,
        coord_hwm: m.peak_rss,
        agents_cpu_ms: (agents_after - agents_before) as f64 / tck * 1000.0,
        journal_records,
    }
}

/// One line of a fake gateway's own log.
struct GatewayEvent {
    what: String,
    at_ms: f64,
    version: String,
}

fn gateway_log(h: &Host) -> Vec<GatewayEvent> {
    let text = std::fs::read_to_string(h.dir.join("gateway-events.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ns: u128 = f.get(1)?.parse().ok()?;
            Some(GatewayEvent {
                what: f.first()?.to_string(),
                at_ms: ns as f64 / 1e6,
                version: f.get(3)?.to_string(),
            })
        })
        .collect()
}

/// The gateway's own restart during the upgrade: 1.0.0 got its stop signal
/// → 1.0.1 listens.
fn stop_to_ready_ms(log: &[GatewayEvent]) -> Option<f64> {
    let stop = log
        .iter()
        .rfind(|e| e.what == "stop" && e.version == "1.0.0")?;
    let ready = log
        .iter()
        .find(|e| e.what == "ready" && e.version == "1.0.1")?;
    Some(ready.at_ms - stop.at_ms)
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

fn report(runs: &[Run]) {
    let s = |ms: f64| format!("{:.2}s", ms / 1000.0);
    println!();
    println!(
        "rollout wall time — rollgate {} (release build): full rollout 1.0.0 → 1.0.1 of N DPs (no CP), --batch 10% --min-healthy 0s",
        rollgate::VERSION
    );
    println!(
        "machine: {} CPU(s), coordinator, every agent and every gateway on this one machine (loopback)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "  {:>5} {:>7} {:>5} {:>7} | {:>7} | {:>6} {:>6} {:>6} {:>6} | {:>8} {:>7} | {:>10} {:>10} | {:>11} {:>9} {:>8} | {:>10}",
        "state",
        "restart",
        "hosts",
        "batches",
        "WALL",
        "plan",
        "stage",
        "DP",
        "close",
        "gateways",
        "rest",
        "batch+ p50",
        "batch+ max",
        "agent steps",
        "CPU/host",
        "peak RSS",
        "agents CPU"
    );
    for r in runs {
        println!(
            "  {:>5} {:>4} ms {:>5} {:>7} | {:>7} | {:>6} {:>6} {:>6} {:>6} | {:>8} {:>7} | {:>7.0} ms {:>7.0} ms | {:>11} {:>6.2} ms {:>4.1} MiB | {:>10}",
            r.state,
            r.restart_ms,
            r.n,
            r.batches,
            s(r.wall_ms),
            s(r.plan_ms),
            s(r.stage_ms),
            s(r.dp_ms),
            s(r.close_ms),
            s(r.gateway_ms),
            s(r.rest_ms()),
            r.batch_extra_p50(),
            r.batch_extra_ms.iter().copied().fold(0.0, f64::max),
            s(r.dp_agents_ms),
            r.coord_cpu_ms / r.n as f64,
            mib(r.coord_hwm),
            s(r.agents_cpu_ms),
        );
    }
    println!();
    println!(
        "  coordinator CPU per host, by phase:  {:>6} {:>6} {:>6} {:>6} {:>7}",
        "plan", "stage", "DP", "close", "total"
    );
    for r in runs {
        let per = |ms: f64| format!("{:.2}", ms / r.n as f64);
        println!(
            "  {:>4} {:>4} ms {:>5} hosts (ms/host)  {:>6} {:>6} {:>6} {:>6} {:>7}",
            r.state,
            r.restart_ms,
            r.n,
            per(r.phase_cpu_ms[0]),
            per(r.phase_cpu_ms[1]),
            per(r.phase_cpu_ms[2]),
            per(r.phase_cpu_ms[3]),
            per(r.coord_cpu_ms),
        );
    }
    if let Some(r) = runs.last() {
        println!(
            "  journal records (each batch of them fsynced once, or one transaction) at N = {}: {} ({:.1} per host)",
            r.n,
            r.journal_records,
            r.journal_records as f64 / r.n as f64
        );
    }
    println!();
    println!("  the shared state's cost (postgres − file, same hosts and gateway):");
    for p in runs.iter().filter(|r| r.state == "pg") {
        let Some(f) = runs
            .iter()
            .find(|f| f.state == "file" && f.n == p.n && f.restart_ms == p.restart_ms)
        else {
            continue;
        };
        println!(
            "    {:>5} hosts, restart {:>3} ms: wall {} vs {} ({:+.0} ms, {:+.1} %), coordinator CPU {:+.2} ms/host",
            p.n,
            p.restart_ms,
            s(p.wall_ms),
            s(f.wall_ms),
            p.wall_ms - f.wall_ms,
            (p.wall_ms - f.wall_ms) / f.wall_ms * 100.0,
            (p.coord_cpu_ms - f.coord_cpu_ms) / p.n as f64,
        );
    }
    println!();
    println!("  how to read it:");
    for l in [
        "    state       = where the rollout journal and lease were: files, or PostgreSQL (pg)",
        "    restart     = how long the fake gateway takes from its start to listening (its stop is immediate)",
        "    WALL        = coordinator start → exit: what the user waits for. Phases: plan = until the rollout starts",
        "                  (connect, Hello and preflight of every agent, lock, journal); stage = every host's first health",
        "                  report, then staging; DP = the batches; close = the closing fleet survey",
        "    gateways    = the gateways' own share, from their logs: Σ over batches of the slowest host's stop → ready",
        "                  (old gateway gets its stop signal → new one listens). rest = WALL − gateways: rollgate's part",
        "    batch+      = per batch: batch wall (started → succeeded event) − its slowest gateway's stop → ready, i.e.",
        "                  what a batch costs beyond its gateways (drain, undrain, the agents' readiness watch, the one",
        "                  confirmed healthy report after the undrain, round trips)",
        "    agent steps = Σ over batches of the slowest host's drain + install + undrain, from the agents' journals",
        "    CPU/host    = the coordinator's utime + stime over its whole life / N; peak RSS = its VmHWM",
        "    caveat: agents, gateways and the coordinator share this machine's cores; on a real fleet each agent has its",
        "            own host, so these are upper bounds for the coordinator's latency.",
    ] {
        println!("{l}");
    }
    println!();
    println!("  compared with the targets (200 hosts, batch 10%):");
    for r in runs.iter().filter(|r| r.n == 200 && r.state == "file") {
        let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
        if let Some(t) = r.target_wall_ms() {
            println!(
                "    gateway restart {:>3} ms: wall {} (target ≤ {}) — {} the target",
                r.restart_ms,
                s(r.wall_ms),
                s(t),
                verdict(r.wall_ms <= t)
            );
        }
        println!(
            "    gateway restart {:>3} ms: a batch beyond its slowest gateway, p50 {:.0} ms (target ≤ {TARGET_BATCH_EXTRA_MS:.0} ms) — {} the target",
            r.restart_ms,
            r.batch_extra_p50(),
            verdict(r.batch_extra_p50() <= TARGET_BATCH_EXTRA_MS)
        );
    }
}
