//! A fake gateway for benchmarks that times itself. The bench binary runs
//! as this gateway when called `<bench> fake-gateway VERSION` (the release's
//! `bin/gw` execs it), so no other program has to be built.
//!
//! It appends one line per instant to `$GW_EVENTS`, in the order a restart
//! passes them:
//!
//! ```text
//! start <unix ns> <pid> <version>   the process runs (main entered)
//! ready <unix ns> <pid> <version>   it listens on $GW_LISTEN, after $GW_READY_DELAY_MS
//! stop  <unix ns> <pid> <version>   it received its stop signal; it exits at once
//! ```
//!
//! Every HTTP request gets `200 ok` with `Server: APISIX/<version>`, so the
//! agent's readiness probe and its default version source both work. A
//! bench reads the file to put the gateway's own stop → ready time beside
//! the time the rollout took.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};

/// Runs the gateway if the process was started as one; returns otherwise.
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("fake-gateway") {
        return;
    }
    let version = args.get(2).cloned().unwrap_or_default();
    run(&version);
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        eprintln!("fake-gateway: {key} is not set");
        std::process::exit(64)
    })
}

fn record(path: &str, what: &str, version: &str) {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let line = format!("{what} {ns} {} {version}\n", std::process::id());
    // One write to an O_APPEND file: lines of two instances never interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("fake-gateway: cannot write {path}: {e}");
    }
}

fn run(version: &str) -> ! {
    let (listen, events) = (env("GW_LISTEN"), env("GW_EVENTS"));
    let delay = std::env::var("GW_READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    // The stop signals are taken by one thread; blocked here before any
    // thread starts, so every thread inherits the mask.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGINT] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("fake-gateway: cannot block signals: {e}");
        std::process::exit(70);
    }
    record(&events, "start", version);
    {
        let (events, version) = (events.clone(), version.to_string());
        std::thread::spawn(move || {
            let _ = signals.wait();
            record(&events, "stop", &version);
            std::process::exit(0);
        });
    }
    std::thread::sleep(delay);
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-gateway: cannot listen on {listen}: {e}");
            std::process::exit(71);
        }
    };
    record(&events, "ready", version);
    let reply = format!(
        "HTTP/1.1 200 OK\r\nServer: APISIX/{version}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    for conn in listener.incoming().flatten() {
        let mut conn = conn;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 2048];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(reply.as_bytes());
    }
    std::process::exit(0)
}
