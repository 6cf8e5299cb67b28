//! Benchmark: what an idle agent costs its host (issue 2, ARCHITECTURE.md
//! "Performance targets": ≤ 8 MiB RSS, ≤ 0.2 % of one core with a health
//! watch at 1 s).
//!
//! Starts real `rollgate-agent` processes (release build) on loopback, each
//! supervising a gateway that is a long-running `sleep`, opens a
//! `WatchHealth` stream at 1 s to each over mutual TLS the way the coordinator
//! does, and reads /proc for the agents' resident memory and CPU time over
//! the window. Two agents run side by side:
//!
//! * `process-only`: `[health]` without URLs: each report reads the pid file
//!   and /proc (the cheapest configuration);
//! * `http-probes`: `status_url` + `ready_url` (as `deploy/agent.toml`): each
//!   report also makes two HTTP requests to a status endpoint this bench
//!   serves.
//!
//! `cargo bench --bench agent_idle`. ROLLGATE_BENCH_SECS sets the window
//! (default 60), ROLLGATE_BENCH_KEEP=1 keeps the sandbox.

#[path = "support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rollgate::pb;
use rollgate::pb::agent_client::AgentClient;
use support::{Host, Sandbox, mib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RSS_TARGET: u64 = 8 * 1024 * 1024;
const CPU_TARGET_PCT: f64 = 0.2;
const WARM_UP: Duration = Duration::from_secs(3);
/// Loopback network of this bench (the e2e tests use 127.2-251.*.*).
const NET: [u8; 3] = [127, 253, 0];

fn main() {
    support::init();
    let secs: u64 = std::env::var("ROLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Duration::from_secs(secs)));
}

/// One agent under observation.
struct Subject {
    label: &'static str,
    host: Host,
    pid: u32,
    reports: Arc<AtomicU64>,
    unhealthy: Arc<AtomicU64>,
}

/// What was read about one agent over the window.
struct Reading {
    rss_start: u64,
    rss_end: u64,
    rss_max: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    /// Proportional set size: shared pages (libc) divided among their users.
    pss: u64,
    /// Pages touched during the window: the idle working set.
    touched: Option<u64>,
    threads: u64,
    cpu_pct: f64,
    cpu_ms: f64,
    reports: u64,
    unhealthy: u64,
}

async fn run(window: Duration) {
    let sb = Sandbox::new("rollgate-bench-idle-");
    let ip = |n: u8| Ipv4Addr::new(NET[0], NET[1], NET[2], n);
    let names = [("idle-plain", ip(1)), ("idle-probed", ip(2))];
    let certs = sb.certs(&names.map(|(n, ip)| (n.to_string(), ip)));
    let release = support::artifact(sb.path(), "1.0.0");

    // The status endpoint the probed agent polls: a gateway's /status and
    // /status/ready, served here so it costs the agent nothing but the probe.
    let status = tokio::net::TcpListener::bind((ip(3), 0))
        .await
        .expect("bind status endpoint");
    let status_addr = status.local_addr().expect("status addr");
    tokio::spawn(serve_status(status));

    let common = "[drain]\ngateway_ports = []\n";
    let plain = Host::create(
        &sb,
        names[0].0,
        &certs,
        SocketAddr::new(names[0].1.into(), 7443),
        &format!("[health]\nstart_timeout = \"10s\"\nmin_healthy = \"0s\"\n\n{common}"),
    );
    let probed = Host::create(
        &sb,
        names[1].0,
        &certs,
        SocketAddr::new(names[1].1.into(), 7443),
        &format!(
            "[health]\nstatus_url = \"http://{status_addr}/status\"\nready_url = \"http://{status_addr}/status/ready\"\nprobe_timeout = \"1s\"\nstart_timeout = \"10s\"\nmin_healthy = \"0s\"\n\n{common}"
        ),
    );
    let mut subjects = Vec::new();
    for (label, host) in [("process only", plain), ("process + 2 HTTP probes", probed)] {
        support::preinstall(&host.root(), &release);
        let pid = host.start_agent();
        subjects.push(Subject {
            label,
            host,
            pid,
            reports: Arc::new(AtomicU64::new(0)),
            unhealthy: Arc::new(AtomicU64::new(0)),
        });
    }
    for s in &subjects {
        let addr = s.host.addr;
        support::wait_until(Duration::from_secs(20), "the agent listening", || {
            support::listening(addr)
        });
        support::wait_until(
            Duration::from_secs(20),
            "the agent starting its gateway",
            || s.host.gateway_pid().is_some(),
        );
    }

    rollgate::tls::install_crypto_provider();
    for s in &subjects {
        let client = support::connect(&certs, &s.host.name, s.host.addr).await;
        let (reports, unhealthy) = (s.reports.clone(), s.unhealthy.clone());
        tokio::spawn(watch(client, reports, unhealthy));
    }
    tokio::time::sleep(WARM_UP).await;

    let tck = support::clk_tck() as f64;
    let rss = |pid| support::status_kb(pid, "VmRSS").unwrap_or(0);
    let begin: Vec<(u64, u64, u64)> = subjects
        .iter()
        .map(|s| {
            let st = support::stat(s.pid).expect("agent alive");
            (st.cpu_ticks, rss(s.pid), s.reports.load(Ordering::Relaxed))
        })
        .collect();
    let cleared: Vec<bool> = subjects
        .iter()
        .map(|s| support::clear_refs(s.pid))
        .collect();
    let t0 = Instant::now();
    let mut rss_max = vec![0u64; subjects.len()];
    eprintln!(
        "bench: watching {} agents' health at 1 s for {window:?}",
        subjects.len()
    );
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (m, s) in rss_max.iter_mut().zip(&subjects) {
            *m = (*m).max(rss(s.pid));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let readings: Vec<Reading> = subjects
        .iter()
        .zip(&begin)
        .zip(&rss_max)
        .zip(&cleared)
        .map(|(((s, &(ticks0, rss0, reports0)), &max), &cleared)| {
            let st = support::stat(s.pid).expect("agent alive");
            let cpu_s = (st.cpu_ticks - ticks0) as f64 / tck;
            Reading {
                rss_start: rss0,
                rss_end: rss(s.pid),
                rss_max: max,
                hwm: support::status_kb(s.pid, "VmHWM").unwrap_or(0),
                anon: support::status_kb(s.pid, "RssAnon").unwrap_or(0),
                file: support::status_kb(s.pid, "RssFile").unwrap_or(0),
                pss: support::rollup_kb(s.pid, "Pss").unwrap_or(0),
                touched: support::rollup_kb(s.pid, "Referenced").filter(|_| cleared),
                threads: st.threads,
                cpu_pct: cpu_s / elapsed * 100.0,
                cpu_ms: cpu_s * 1000.0,
                reports: s.reports.load(Ordering::Relaxed) - reports0,
                unhealthy: s.unhealthy.load(Ordering::Relaxed),
            }
        })
        .collect();
    print_report(&subjects, &readings, elapsed, tck);
    drop(sb);
}

fn print_report(subjects: &[Subject], readings: &[Reading], elapsed: f64, tck: f64) {
    println!();
    println!(
        "agent idle cost — rollgate-agent {} (release build), one WatchHealth stream at 1 s each, {elapsed:.0} s window after {}s warm-up",
        rollgate::VERSION,
        WARM_UP.as_secs()
    );
    println!(
        "  {:<26} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>8}",
        "health config",
        "RSS",
        "RSS max",
        "VmHWM",
        "RssAnon",
        "RssFile",
        "PSS",
        "touched",
        "threads",
        "CPU",
        "CPU time",
        "reports"
    );
    for (s, r) in subjects.iter().zip(readings) {
        println!(
            "  {:<26} {:>5.2} MiB {:>5.2} MiB {:>5.2} MiB {:>4.2} MiB {:>4.2} MiB {:>4.2} MiB {:>8} {:>7} {:>8.3} % {:>6.0} ms {:>8}",
            s.label,
            mib(r.rss_end),
            mib(r.rss_max),
            mib(r.hwm),
            mib(r.anon),
            mib(r.file),
            mib(r.pss),
            r.touched
                .map_or("-".to_string(), |t| format!("{:.2} MiB", mib(t))),
            r.threads,
            r.cpu_pct,
            r.cpu_ms,
            r.reports,
        );
        if r.unhealthy > 0 {
            println!("    warning: {} reports said unhealthy", r.unhealthy);
        }
        if r.rss_start != r.rss_end {
            println!(
                "    RSS moved from {:.2} to {:.2} MiB over the window",
                mib(r.rss_start),
                mib(r.rss_end)
            );
        }
    }
    println!(
        "  target                     ≤ {:.2} MiB RSS, ≤ {CPU_TARGET_PCT} % of one core  (CPU resolution: 1 tick = {:.3} %)",
        mib(RSS_TARGET),
        100.0 / tck / elapsed
    );
    for (s, r) in subjects.iter().zip(readings) {
        let rss_ok = r.rss_max <= RSS_TARGET;
        let cpu_ok = r.cpu_pct <= CPU_TARGET_PCT;
        println!(
            "  {:<26} RSS {:.2} MiB {}  CPU {:.3} % {}{}",
            s.label,
            mib(r.rss_max),
            if rss_ok { "meets" } else { "MISSES" },
            r.cpu_pct,
            if cpu_ok { "meets" } else { "MISSES" },
            if r.hwm > RSS_TARGET {
                format!(
                    "  (peak since start {:.2} MiB is above the target)",
                    mib(r.hwm)
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "  RSS: the resident set while watched (largest of samples every 0.5 s), held against the target; VmHWM: the peak since start;"
    );
    println!(
        "  RssAnon: heap, stacks, data; RssFile: mapped pages of the binary and libc/libm/ld (clean, shared, reclaimable);"
    );
    println!(
        "  PSS: shared pages divided among the processes using them; touched: pages the agent used during the window (its working set)."
    );
}

/// A channel to the agent as the coordinator opens one (`coordinator/client.rs`).
async fn watch(
    mut client: AgentClient<tonic::transport::Channel>,
    reports: Arc<AtomicU64>,
    unhealthy: Arc<AtomicU64>,
) {
    let mut stream = client
        .watch_health(pb::WatchHealthRequest {
            interval_ms: 1000,
            heartbeat_ms: 0,
        })
        .await
        .expect("WatchHealth")
        .into_inner();
    while let Ok(Some(r)) = stream.message().await {
        reports.fetch_add(1, Ordering::Relaxed);
        if !r.healthy {
            unhealthy.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers every request with a gateway-style status document.
async fn serve_status(l: tokio::net::TcpListener) {
    const BODY: &str = r#"{"version":"1.0.0","config_revision":1,"ready":true}"#;
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
