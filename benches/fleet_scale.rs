//! Benchmark: one coordinator against 1,000, 5,000 and 10,000 hosts.
//!
//! Real agents overload this machine long before that (each is a process
//! with its own gateway), so the hosts are hollow agents
//! (`support/hollow_agent.rs`): a few processes — this bench binary run as
//! `hollow-agents`, up to 4,000 hosts each, under the open-file limit —
//! serve every host's agent endpoint over real gRPC and mutual TLS, each on
//! its own loopback address (127.252.x.y) with its own certificate, an
//! in-memory journal and an instant gateway. The coordinator is the real `rollgate`
//! binary, timed as a user runs it:
//!
//! ```text
//! rollgate upgrade -i fleet.toml -c releases.toml --to 1.0.1 --yes \
//!     --batch 10% --min-healthy 0s --output json
//! ```
//!
//! It prints, per fleet size: wall time and its phases, the coordinator's
//! CPU time per host and peak RSS, and the warnings and errors it logged
//! (protocol errors among them), against the targets at 10,000 hosts:
//! CPU ≤ 1 ms per host, peak RSS ≤ 256 MiB, wall ≤ 60 s, no protocol errors.
//!
//! `cargo bench --bench fleet_scale`; ROLLGATE_BENCH_HOSTS=1000,5000,10000
//! picks the sizes, ROLLGATE_BENCH_KEEP=1 keeps the sandboxes,
//! ROLLGATE_BENCH_WRAP="heaptrack -o /tmp/ht" (or `perf record -o …`) runs
//! the coordinator under a profiler, whose process the CPU and RSS columns
//! then measure instead.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;

use rollgate::tls::TlsMaterial;
use support::coordinator::{self, Events};
use support::hollow_agent::{self, HollowHost};
use support::mib;

const TARGET_CPU_MS_PER_HOST: f64 = 1.0;
const TARGET_RSS: u64 = 256 * 1024 * 1024;
const TARGET_WALL_MS: f64 = 60_000.0;

/// A hollow-agent process holds a listening socket and a connection per
/// host: it raises its open-file limit to the hard limit.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, l) {
        eprintln!("bench: cannot raise the open-file limit: {e}");
    }
}

/// Hosts per hollow-agent process: each host is a listening socket and an
/// accepted connection, and a process may hold `ulimit -Hn` descriptors
/// (20,000 here), so 10,000 hosts need more than one process.
const HOSTS_PER_SHARD: usize = 4000;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("hollow-agents") {
        shard_main();
    }
    support::init();
    // Not raised here: the coordinator inherits this process's limits and
    // must make its own room, as it does for a user.
    let sizes: Vec<usize> = std::env::var("ROLLGATE_BENCH_HOSTS")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0 && n <= 62_500)
        .collect();
    let mut runs = Vec::new();
    for n in sizes {
        eprintln!("bench: rollout of {n} hollow hosts");
        runs.push(run_once(n));
    }
    report(&runs);
}

/// A hollow-agent process (the bench binary run as `hollow-agents CERTS
/// HOSTS_FILE VERSION TARGET`): serves every host of HOSTS_FILE (lines `name
/// address`), prints `ready`, and when its stdin closes prints `behind N`
/// (hosts not on TARGET) and exits.
fn shard_main() -> ! {
    use std::io::{Read, Write};
    raise_nofile();
    rollgate::tls::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let (certs, list, version, target) = (
        std::path::PathBuf::from(&args[2]),
        &args[3],
        &args[4],
        args[5].clone(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("hollow agents' runtime");
    let text = std::fs::read_to_string(list).expect("hosts file");
    let mut hosts: Vec<HollowHost> = Vec::new();
    for line in text.lines() {
        let Some((name, addr)) = line.split_once(' ') else {
            continue;
        };
        let addr: SocketAddr = addr.parse().expect("host address");
        let tls = TlsMaterial::load(
            &certs.join("ca.pem"),
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
        )
        .expect("hollow agent TLS material");
        let h = rt
            .block_on(hollow_agent::serve(name, addr, &tls, version))
            .unwrap_or_else(|e| panic!("hollow agent {name} on {addr}: {e}"));
        hosts.push(h);
    }
    println!("ready");
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    let behind = hosts.iter().filter(|h| h.current() != target).count();
    println!("behind {behind}");
    std::io::stdout().flush().ok();
    std::process::exit(0)
}

struct Run {
    n: usize,
    batches: usize,
    wall_ms: f64,
    plan_ms: f64,
    stage_ms: f64,
    dp_ms: f64,
    close_ms: f64,
    cpu_ms: f64,
    phase_cpu_ms: Vec<f64>,
    peak_rss: u64,
    warnings: usize,
    errors: usize,
    protocol_errors: usize,
    journal_records: usize,
}

fn run_once(n: usize) -> Run {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let coordinator::Prepared {
        sb,
        names,
        certs,
        catalog,
        ..
    } = coordinator::prepare("rollgate-bench-scale-", n, 252);
    let fleet_hosts: Vec<(String, SocketAddr)> = names
        .iter()
        .map(|(name, ip)| (name.clone(), SocketAddr::new((*ip).into(), 7443)))
        .collect();
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut shards = Vec::new();
    for (i, chunk) in fleet_hosts.chunks(HOSTS_PER_SHARD).enumerate() {
        let list = sb.path().join(format!("shard-{i}.hosts"));
        let text: String = chunk.iter().map(|(n, a)| format!("{n} {a}\n")).collect();
        std::fs::write(&list, text).expect("shard hosts file");
        let mut child = Command::new(&exe)
            .arg("hollow-agents")
            .arg(&certs)
            .arg(&list)
            .args(["1.0.0", "1.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a hollow-agent process");
        let mut out = BufReader::new(child.stdout.take().expect("shard stdout"));
        let stdin = child.stdin.take().expect("shard stdin");
        // Killed with everything else the bench started if it stops early.
        support::track(child);
        let mut line = String::new();
        out.read_line(&mut line).expect("shard ready line");
        assert_eq!(
            line.trim(),
            "ready",
            "hollow-agent process {i} did not start"
        );
        shards.push((stdin, out));
    }
    let fleet = coordinator::write_fleet(sb.path(), &fleet_hosts);
    let m = coordinator::upgrade(
        sb.path(),
        &fleet,
        &catalog,
        "1.0.1",
        &["--batch", "10%", "--min-healthy", "0s"],
    );
    let mut behind = 0;
    for (stdin, mut out) in shards {
        drop(stdin);
        let mut line = String::new();
        out.read_line(&mut line).expect("shard summary");
        behind += line
            .trim()
            .strip_prefix("behind ")
            .and_then(|v| v.parse::<usize>().ok())
            .expect("shard summary line");
    }
    assert_eq!(behind, 0, "{behind} hosts not on 1.0.1 after the rollout");
    let ev = Events::read(&m.events);
    let (plan_at, stage_end, dp_end) = ev.phases(m.started_ms);
    let bounds = [m.started_ms, plan_at, stage_end, dp_end, m.ended_ms];
    let log = std::fs::read_to_string(sb.path().join("coordinator.log")).unwrap_or_default();
    let count = |pat: &str| log.lines().filter(|l| l.contains(pat)).count();
    Run {
        n,
        batches: ev.batches.len(),
        wall_ms: m.wall_ms,
        plan_ms: plan_at - m.started_ms,
        stage_ms: stage_end - plan_at,
        dp_ms: dp_end - stage_end,
        close_ms: m.ended_ms - dp_end,
        cpu_ms: m.cpu_ms,
        phase_cpu_ms: bounds
            .windows(2)
            .map(|w| m.cpu_at(w[1]) - m.cpu_at(w[0]))
            .collect(),
        peak_rss: m.peak_rss,
        warnings: count(" WARN "),
        errors: count(" ERROR "),
        protocol_errors: log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("protocol error") || l.contains("goaway") || l.contains("h2 ")
            })
            .count(),
        journal_records: coordinator::journal_records(&sb.path().join("state/rollouts")),
    }
}

fn report(runs: &[Run]) {
    let s = |ms: f64| format!("{:.2}s", ms / 1000.0);
    println!();
    println!(
        "one coordinator, many hosts — rollgate {} (release build): full rollout 1.0.0 → 1.0.1 of N hollow DPs, --batch 10% --min-healthy 0s",
        rollgate::VERSION
    );
    println!(
        "machine: {} CPU(s); the hollow agents (processes of up to {HOSTS_PER_SHARD} hosts, one thread each) share them with the coordinator",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "  {:>6} {:>7} | {:>8} | {:>6} {:>6} {:>7} {:>6} | {:>9} {:>9} {:>9} | {:>5} {:>6} {:>8} | {:>8}",
        "hosts",
        "batches",
        "WALL",
        "plan",
        "stage",
        "DP",
        "close",
        "CPU",
        "CPU/host",
        "peak RSS",
        "warns",
        "errors",
        "protocol",
        "journal"
    );
    for r in runs {
        println!(
            "  {:>6} {:>7} | {:>8} | {:>6} {:>6} {:>7} {:>6} | {:>9} {:>6.2} ms {:>5.0} MiB | {:>5} {:>6} {:>8} | {:>8}",
            r.n,
            r.batches,
            s(r.wall_ms),
            s(r.plan_ms),
            s(r.stage_ms),
            s(r.dp_ms),
            s(r.close_ms),
            s(r.cpu_ms),
            r.cpu_ms / r.n as f64,
            mib(r.peak_rss),
            r.warnings,
            r.errors,
            r.protocol_errors,
            r.journal_records,
        );
    }
    println!();
    println!(
        "  coordinator CPU per host, by phase (ms/host):  {:>6} {:>6} {:>6} {:>6}",
        "plan", "stage", "DP", "close"
    );
    for r in runs {
        let per = |ms: f64| format!("{:.3}", ms / r.n as f64);
        println!(
            "  {:>6} hosts                                   {:>6} {:>6} {:>6} {:>6}",
            r.n,
            per(r.phase_cpu_ms[0]),
            per(r.phase_cpu_ms[1]),
            per(r.phase_cpu_ms[2]),
            per(r.phase_cpu_ms[3]),
        );
    }
    println!();
    println!(
        "  WALL = coordinator start → exit; plan = connect, Hello and preflight of every agent, lock, journal;"
    );
    println!(
        "  stage = first health reports, then staging; DP = the batches; close = the closing survey and exit."
    );
    println!("  CPU = the coordinator's utime + stime over its whole life; peak RSS = its VmHWM;");
    println!(
        "  warns/errors = lines the coordinator logged at WARN/ERROR; protocol = lines naming an h2 protocol error or GOAWAY."
    );
    let Some(r) = runs.iter().max_by_key(|r| r.n) else {
        return;
    };
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    println!();
    println!(
        "  compared with the targets at {} hosts (targets are set for 10,000):",
        r.n
    );
    let per = r.cpu_ms / r.n as f64;
    println!(
        "    CPU {per:.2} ms/host (≤ {TARGET_CPU_MS_PER_HOST} ms) — {}",
        verdict(per <= TARGET_CPU_MS_PER_HOST)
    );
    println!(
        "    peak RSS {:.0} MiB (≤ {:.0} MiB) — {}",
        mib(r.peak_rss),
        mib(TARGET_RSS),
        verdict(r.peak_rss <= TARGET_RSS)
    );
    println!(
        "    wall {} (≤ {}) — {}",
        s(r.wall_ms),
        s(TARGET_WALL_MS),
        verdict(r.wall_ms <= TARGET_WALL_MS)
    );
    println!(
        "    protocol errors {} (none) — {}",
        r.protocol_errors,
        verdict(r.protocol_errors == 0)
    );
}
