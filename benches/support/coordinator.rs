//! Running `rollgate upgrade` the way the rollout benches time it: wall
//! clock, its CPU time (read while it is a zombie, so the whole life
//! counts), its peak RSS, and its JSON events.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde_json::Value;

/// Milliseconds since the Unix epoch (the coordinator's `at_ms` clock).
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Writes `<dir>/fleet.toml` listing `hosts` (name, agent address) as DPs,
/// with the sandbox's certificates and state directory.
pub fn write_fleet(dir: &Path, hosts: &[(String, SocketAddr)]) -> PathBuf {
    let p = dir.join("fleet.toml");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).expect("fleet.toml"));
    write!(
        f,
        "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/rollgate-coordinator.pem\"\nkey = \"certs/rollgate-coordinator.key\"\n\n\
         [coordinator]\nstate_dir = \"state\"\n"
    )
    .expect("write fleet.toml");
    for (name, addr) in hosts {
        write!(
            f,
            "\n[[hosts]]\nname = \"{name}\"\naddress = \"{addr}\"\nrole = \"dp\"\n"
        )
        .expect("write fleet.toml");
    }
    f.flush().expect("write fleet.toml");
    p
}

/// What one coordinator run cost.
pub struct Measured {
    pub wall_ms: f64,
    pub started_ms: f64,
    pub ended_ms: f64,
    /// utime + stime of its whole life.
    pub cpu_ms: f64,
    /// (at_ms, CPU ms so far), every 10 ms, to split the CPU by phase.
    pub cpu_samples: Vec<(f64, f64)>,
    /// VmHWM, bytes.
    pub peak_rss: u64,
    pub events: PathBuf,
}

impl Measured {
    /// The coordinator's CPU time until `t` (the last sample at or before it).
    pub fn cpu_at(&self, t: f64) -> f64 {
        self.cpu_samples
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0.0, |(_, ms)| *ms)
    }
}

/// Runs `rollgate upgrade -i fleet -c catalog --to to --yes --output json`
/// plus `extra` in `dir`; panics with the log's tail when it fails.
pub fn upgrade(dir: &Path, fleet: &Path, catalog: &Path, to: &str, extra: &[&str]) -> Measured {
    let (out, err) = (dir.join("events.jsonl"), dir.join("coordinator.log"));
    let started_ms = now_ms();
    let t0 = Instant::now();
    // ROLLGATE_BENCH_WRAP (e.g. `heaptrack -o /tmp/ht`) runs the coordinator
    // under a profiler; the figures printed are then the profiler's process.
    // The coordinator is started as a user starts it, with this process's
    // open-file limits: it raises its own (`coordinator/open_files.rs`).
    let mut cmd = match std::env::var("ROLLGATE_BENCH_WRAP") {
        Ok(w) if !w.trim().is_empty() => {
            let mut words = w.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or_default());
            c.args(words).arg(super::ROLLGATE);
            c
        }
        _ => Command::new(super::ROLLGATE),
    };
    let mut child = cmd
        .args(["upgrade", "-i"])
        .arg(fleet)
        .arg("-c")
        .arg(catalog)
        .args(["--to", to, "--yes", "--output", "json"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("events file"))
        .stderr(std::fs::File::create(&err).expect("log file"))
        .spawn()
        .expect("start rollgate upgrade");
    let pid = child.id();
    let tck = super::clk_tck() as f64;
    let hwm = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (hwm, done) = (hwm.clone(), done.clone());
        std::thread::spawn(move || {
            let mut cpu = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(v) = super::status_kb(pid, "VmHWM") {
                    hwm.fetch_max(v, Ordering::Relaxed);
                }
                if let Some(st) = super::stat(pid).filter(|s| s.state != 'Z') {
                    cpu.push((now_ms(), st.cpu_ticks as f64 / tck * 1000.0));
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
    let cpu_ms = super::stat(pid).expect("coordinator stat").cpu_ticks as f64 / tck * 1000.0;
    let mut cpu_samples = sampler.join().unwrap_or_default();
    cpu_samples.push((ended_ms, cpu_ms));
    let status = child.wait().expect("reap the coordinator");
    if !status.success() {
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "rollgate upgrade failed ({status}); events in {}:\n{}",
            out.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Measured {
        wall_ms,
        started_ms,
        ended_ms,
        cpu_ms,
        cpu_samples,
        peak_rss: hwm.load(Ordering::Relaxed),
        events: out,
    }
}

/// One DP batch, from its events.
pub struct Batch {
    pub hosts: Vec<String>,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// The coordinator's JSON events.
pub struct Events {
    /// (event, step, status, at_ms)
    all: Vec<(String, String, String, f64)>,
    /// Each DP batch, in order.
    pub batches: Vec<Batch>,
}

impl Events {
    pub fn read(path: &Path) -> Events {
        let file = std::fs::File::open(path).expect("events file");
        let mut all = Vec::new();
        let mut batches: Vec<Batch> = Vec::new();
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let at = v["at_ms"].as_f64().unwrap_or(0.0);
            if s("event") == "batch" && s("status") == "started" {
                batches.push(Batch {
                    hosts: v["detail"]["hosts"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|h| h.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                    start_ms: at,
                    end_ms: at,
                });
            }
            if s("event") == "batch"
                && s("status") == "succeeded"
                && let Some(b) = batches.last_mut()
            {
                b.end_ms = at;
            }
            all.push((s("event"), s("step"), s("status"), at));
        }
        Events { all, batches }
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

    pub fn first(&self, event: &str, step_status: Option<(&str, &str)>) -> Option<f64> {
        self.matching(event, step_status).reduce(f64::min)
    }

    pub fn last(&self, event: &str, step_status: Option<(&str, &str)>) -> Option<f64> {
        self.matching(event, step_status).reduce(f64::max)
    }

    /// Phase bounds: (rollout started, staging done, last batch done).
    pub fn phases(&self, started_ms: f64) -> (f64, f64, f64) {
        let plan_at = self
            .first("rollout", Some(("", "started")))
            .unwrap_or(started_ms);
        let stage_end = self
            .last("step", Some(("stage", "succeeded")))
            .unwrap_or(plan_at);
        let dp_end = self.batches.last().map_or(stage_end, |b| b.end_ms);
        (plan_at, stage_end, dp_end)
    }
}

/// Journal records of every rollout under `dir`.
pub fn journal_records(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.lines().count())
        .sum()
}

/// A sandbox for a DP rollout bench: `n` host names (`dp-00001`...) on
/// their own loopback addresses 127.`net`.x.y, their certificates, and a
/// catalog of releases 1.0.0 and 1.0.1 of the fake gateway.
pub struct Prepared {
    pub sb: super::Sandbox,
    pub names: Vec<(String, std::net::Ipv4Addr)>,
    pub certs: PathBuf,
    pub v0: super::Artifact,
    pub catalog: PathBuf,
}

pub fn prepare(prefix: &str, n: usize, net: u8) -> Prepared {
    let sb = super::Sandbox::new(prefix);
    let names: Vec<(String, std::net::Ipv4Addr)> = (0..n)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250) as u8 + 1);
            (format!("dp-{:05}", i + 1), ip)
        })
        .collect();
    let certs = sb.certs(&names);
    let v0 = super::artifact(sb.path(), "1.0.0");
    let v1 = super::artifact(sb.path(), "1.0.1");
    let catalog = super::catalog(sb.path(), &[&v0, &v1]);
    Prepared {
        sb,
        names,
        certs,
        v0,
        catalog,
    }
}
