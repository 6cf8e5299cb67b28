//! Benchmark: how fast the agent answers HAProxy's agent-check while it
//! works (target: p99 ≤ 5 ms). The agent runs one thread; its journal is
//! written and fsynced by a thread of its own and releases are unpacked and
//! removed off the runtime, so a stage or an install in progress must not
//! delay the one-line answer a load balancer waits for.
//!
//! One real `rollgate-agent` (release build) on loopback with agent-check
//! on. Two phases of the same length:
//!
//! * `idle`: nothing but agent-check questions;
//! * `busy`: meanwhile a client stages releases (a 16 MiB incompressible
//!   payload each: received, hashed, unpacked, journalled) and installs them
//!   (stop, switch, start, gate, prune), back to back.
//!
//! A question is a TCP connect, one line read, close, every 2 ms; the
//! figure is connect → line. `cargo bench --bench agent_check`;
//! ROLLGATE_BENCH_SECS sets each phase's length (default 20).

#[path = "support/mod.rs"]
mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rollgate::pb;
use support::{Host, Sandbox};

const P99_TARGET: Duration = Duration::from_millis(5);
/// Loopback network of this bench (the e2e tests use 127.2-251.*.*).
const NET: [u8; 3] = [127, 254, 0];
const PAYLOAD: usize = 16 << 20;

fn main() {
    support::init();
    let secs: u64 = std::env::var("ROLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let phase = Duration::from_secs(secs);
    let sb = Sandbox::new("rollgate-bench-agent-check-");
    let ip = Ipv4Addr::new(NET[0], NET[1], NET[2], 1);
    let certs = sb.certs(&[("dp-1".to_string(), ip)]);
    let check = SocketAddr::new(ip.into(), 9999);
    let host = Host::create(
        &sb,
        "dp-1",
        &certs,
        SocketAddr::new(ip.into(), 7443),
        &format!(
            "[health]\nstart_timeout = \"10s\"\nmin_healthy = \"0s\"\n\n[drain]\nagent_check_listen = \"{check}\"\ngateway_ports = []\n"
        ),
    );
    let first = support::artifact(sb.path(), "1.0.0");
    support::preinstall(&host.root(), &first);
    let releases: Vec<support::Artifact> = (1..=4)
        .map(|i| support::artifact_with_payload(sb.path(), &format!("1.0.{i}"), PAYLOAD))
        .collect();
    host.start_agent();
    support::wait_until(Duration::from_secs(20), "the agent listening", || {
        support::listening(host.addr) && support::listening(check)
    });

    eprintln!("bench: agent-check every 2 ms, {phase:?} idle then {phase:?} busy");
    let idle = sample(check, phase, None);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        let certs = certs.clone();
        let host_name = host.name.clone();
        let addr = host.addr;
        std::thread::spawn(move || work(&certs, &host_name, addr, &releases, &stop, &done))
    };
    let busy = sample(check, phase, Some(&done));
    stop.store(true, Ordering::SeqCst);
    let steps = worker.join().expect("the worker");
    report(&idle, &busy, steps, phase);
    drop(sb);
    support::cleanup();
}

/// Agent-check latencies over `phase`, one question every 2 ms.
fn sample(check: SocketAddr, phase: Duration, busy: Option<&AtomicU64>) -> Vec<Duration> {
    let mut out = Vec::new();
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let t = Instant::now();
        let mut line = String::new();
        let ok = TcpStream::connect_timeout(&check, Duration::from_secs(2))
            .and_then(|mut s| s.read_to_string(&mut line))
            .is_ok();
        let took = t.elapsed();
        if ok && !line.is_empty() {
            out.push(took);
        }
        std::thread::sleep(Duration::from_millis(2).saturating_sub(took));
    }
    if let Some(done) = busy {
        eprintln!(
            "bench: {} steps ran during the busy phase",
            done.load(Ordering::Relaxed)
        );
    }
    out
}

/// Stages and installs releases back to back until `stop`; counts steps.
fn work(
    certs: &std::path::Path,
    name: &str,
    addr: SocketAddr,
    releases: &[support::Artifact],
    stop: &AtomicBool,
    done: &AtomicU64,
) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = support::connect(certs, name, addr).await;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let r = &releases[(n / 2) as usize % releases.len()];
            let op = format!("bench/dp-1/{n}");
            let result = if n.is_multiple_of(2) {
                let header = pb::StageHeader {
                    operation_id: op,
                    version: r.version.clone(),
                    sha256: r.sha256.clone(),
                    size: r.size,
                    source: Some(pb::stage_header::Source::Location(
                        r.path.display().to_string(),
                    )),
                    unpacked_size: 0,
                    image_id: String::new(),
                };
                let req = pb::StageRequest {
                    msg: Some(pb::stage_request::Msg::Header(header)),
                };
                support::final_result(c.stage(futures::stream::iter([req])).await).await
            } else {
                let req = pb::InstallRequest {
                    operation_id: op,
                    version: r.version.clone(),
                    min_healthy_ms: 1,
                    health_timeout_ms: 10_000,
                };
                support::final_result(c.install(req).await).await
            };
            if let Err(e) = result {
                eprintln!("bench: step {n} failed: {e}");
            }
            n += 1;
            done.store(n, Ordering::Relaxed);
        }
        n
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(idle: &[Duration], busy: &[Duration], steps: u64, phase: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nagent-check answer latency (connect → line), one question every 2 ms");
    println!(
        "{:<6} {:>8} {:>9} {:>9} {:>9}",
        "phase", "answers", "p50 ms", "p99 ms", "max ms"
    );
    for (label, v) in [("idle", idle), ("busy", busy)] {
        let mut v = v.to_vec();
        v.sort();
        println!(
            "{label:<6} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            v.len(),
            ms(pct(&v, 0.5)),
            ms(pct(&v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    let mut b = busy.to_vec();
    b.sort();
    let p99 = pct(&b, 0.99);
    println!(
        "busy phase: {steps} stage/install steps in {phase:?} ({:.1} per second)",
        steps as f64 / phase.as_secs_f64()
    );
    println!(
        "target: p99 ≤ {} ms while busy: {}",
        ms(P99_TARGET),
        if p99 <= P99_TARGET { "met" } else { "MISSED" }
    );
}
