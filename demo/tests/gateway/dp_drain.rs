//! Graceful stop of a DP under load (SIGQUIT, nginx/APISIX style): in-flight
//! requests finish, new connections are refused at once, the process exits 0
//! within its graceful timeout.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::client::{self, ReadError};
use crate::support::eventually;
use crate::support::gateway::{Cp, Dp, Upstream, postgres, temp_dir};

const CLIENTS: usize = 8;
/// A client still connected this long after SIGQUIT means the DP never stopped
/// accepting; give up rather than hang.
const GIVE_UP: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct ClientStats {
    ok: u64,
    /// Sent before SIGQUIT, answered 200 after it: in flight across the signal.
    across_quit: u64,
    /// Of those, how many told the client the connection closes.
    across_quit_closing: u64,
    /// Never taken by the DP: the connection ended before any response byte.
    /// Only allowed after SIGQUIT, when the DP closes idle keep-alive
    /// connections; the upstream's count proves none of these was accepted.
    not_taken: u64,
    refused_after_quit: bool,
    errors: Vec<String>,
}

/// Loops keep-alive requests through the DP until its connections are refused
/// after SIGQUIT.
fn load_client(
    addr: SocketAddr,
    n: usize,
    quit: &OnceLock<Instant>,
    progress: &AtomicU64,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    for i in 0.. {
        if quit.get().is_some_and(|at| at.elapsed() > GIVE_UP) {
            stats
                .errors
                .push("still connected long after SIGQUIT".into());
            break;
        }
        if conn.is_none() {
            match client::connect(addr) {
                Ok(stream) => {
                    let reader = BufReader::new(stream.try_clone().unwrap());
                    conn = Some((stream, reader));
                }
                Err(e)
                    if quit.get().is_some()
                        && e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    stats.refused_after_quit = true;
                    break;
                }
                Err(e) => {
                    stats.errors.push(format!("connect: {e}"));
                    break;
                }
            }
        }
        let (stream, reader) = conn.as_mut().unwrap();
        let path = format!("/load/c{n}/r{i}");
        let sent_before_quit = quit.get().is_none();
        if client::write_request(stream, "GET", &path, None, b"", false).is_err() {
            stats.not_taken += 1;
            conn = None;
            continue;
        }
        match client::read_response(reader) {
            Ok(response) => {
                let good = response.status == 200
                    && response.header("x-via") == Some("dp")
                    && response.json()["path"] == path.as_str();
                if good {
                    stats.ok += 1;
                    if sent_before_quit && quit.get().is_some() {
                        stats.across_quit += 1;
                        stats.across_quit_closing += u64::from(response.closes());
                    }
                } else {
                    stats
                        .errors
                        .push(format!("{path}: {} {}", response.status, response.text()));
                }
                progress.fetch_add(1, Ordering::SeqCst);
                if response.closes() {
                    conn = None;
                }
            }
            Err(ReadError::Nothing(e)) => {
                if quit.get().is_none() {
                    stats
                        .errors
                        .push(format!("{path}: connection dropped before SIGQUIT: {e}"));
                }
                stats.not_taken += 1;
                conn = None;
            }
            Err(ReadError::Broken(what)) => {
                stats
                    .errors
                    .push(format!("{path}: broken response: {what}"));
                conn = None;
            }
        }
    }
    stats
}

fn in_flight(dp: SocketAddr) -> u64 {
    client::get(dp, "/status").json()["in_flight"]
        .as_u64()
        .unwrap()
}

fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn sigquit_under_load_finishes_in_flight_requests_and_refuses_new_connections() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);
    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    let fast = Upstream::start("fast", 100, dir.path());
    let slow = Upstream::start("slow", 3000, dir.path());
    cp.put_route(
        &json!({"id": "load", "path_prefix": "/load", "upstream": fast.url(),
        "plugins": [{"name": "response-header", "config": {"name": "X-Via", "value": "dp"}}]}),
    );
    let revision = cp.put_route(
        &json!({"id": "slow", "path_prefix": "/slow", "upstream": slow.url(),
        "plugins": [{"name": "strip-prefix", "config": {}}]}),
    );
    let graceful_timeout = Duration::from_secs(10);
    let mut dp = Dp::start("3.4.0", cp.addr, dir.path(), "10s");
    dp.wait_ready(revision);
    let addr = dp.addr;

    // A long request, surely taken by the DP before the load starts.
    let slow_request =
        thread::spawn(move || client::request(addr, "GET", "/slow/report", None, b""));
    eventually(
        "the slow request to be in flight",
        Duration::from_secs(5),
        || (in_flight(addr) >= 1).then_some(()),
    );

    let quit: Arc<OnceLock<Instant>> = Arc::default();
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (quit, progress) = (quit.clone(), progress.clone());
            thread::spawn(move || load_client(addr, n, &quit, &progress[n]))
        })
        .collect();
    eventually(
        "every client to get answers",
        Duration::from_secs(10),
        || {
            progress
                .iter()
                .all(|p| p.load(Ordering::SeqCst) >= 5)
                .then_some(())
        },
    );

    quit.set(Instant::now()).unwrap();
    dp.proc.signal(Signal::SIGQUIT);
    eventually(
        "new connections to be refused",
        Duration::from_secs(2),
        || refused(addr).then_some(()),
    );
    assert!(
        dp.proc.exited().is_none(),
        "the listener must close at once, while the slow request is still in flight"
    );

    let status = dp
        .proc
        .wait_exit(graceful_timeout + Duration::from_secs(2))
        .expect("the DP exits within its graceful timeout");
    let drain_took = quit.get().unwrap().elapsed();
    assert_eq!(status.code(), Some(0), "{}", dp.proc.log());
    assert!(drain_took < graceful_timeout, "drain took {drain_took:?}");

    let slow_response = slow_request
        .join()
        .unwrap()
        .expect("the slow request completes");
    assert_eq!(slow_response.status, 200);
    assert_eq!(
        slow_response.json()["path"],
        "/report",
        "strip-prefix applied"
    );

    let stats: Vec<ClientStats> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let errors: Vec<&String> = stats.iter().flat_map(|s| &s.errors).collect();
    assert!(errors.is_empty(), "failed requests: {errors:#?}");
    assert!(stats.iter().all(|s| s.refused_after_quit), "{stats:#?}");
    let ok: u64 = stats.iter().map(|s| s.ok).sum();
    let across: u64 = stats.iter().map(|s| s.across_quit).sum();
    let closing: u64 = stats.iter().map(|s| s.across_quit_closing).sum();
    assert!(
        across >= 1,
        "some requests were in flight across SIGQUIT: {stats:#?}"
    );
    assert!(
        closing >= 1,
        "in-flight responses say Connection: close: {stats:#?}"
    );

    // Every request the DP took reached the upstream; every one of those was
    // answered 200 at the client: the DP accepted none that it then dropped.
    let served = client::get(fast.addr, "/count").json()["served"]
        .as_u64()
        .unwrap()
        - 1;
    assert_eq!(
        served, ok,
        "upstream saw {served} requests, clients got {ok} answers: {stats:#?}"
    );
    eprintln!(
        "drain: {ok} requests ok, {across} across SIGQUIT ({closing} with Connection: close), {} not taken, drained in {drain_took:?}",
        stats.iter().map(|s| s.not_taken).sum::<u64>()
    );
}

#[test]
fn the_graceful_timeout_bounds_a_drain() {
    let dir = temp_dir();
    let pg = postgres(&["gateway"]);
    let cp = Cp::start("3.4.0", &pg, "gateway", dir.path());
    let stuck = Upstream::start("stuck", 30_000, dir.path());
    let revision =
        cp.put_route(&json!({"id": "stuck", "path_prefix": "/stuck", "upstream": stuck.url()}));
    let mut dp = Dp::start("3.4.0", cp.addr, dir.path(), "1s");
    dp.wait_ready(revision);
    let addr = dp.addr;
    let request = thread::spawn(move || client::request(addr, "GET", "/stuck", None, b""));
    eventually(
        "the request to be in flight",
        Duration::from_secs(5),
        || (in_flight(addr) >= 1).then_some(()),
    );

    let quit_at = Instant::now();
    dp.proc.signal(Signal::SIGQUIT);
    let status = dp
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the DP exits after its graceful timeout");
    let took = quit_at.elapsed();
    assert_eq!(status.code(), Some(0), "{}", dp.proc.log());
    assert!(
        took >= Duration::from_millis(900),
        "it waited for the in-flight request ({took:?})"
    );
    assert!(
        took < Duration::from_secs(4),
        "it did not wait much past 1s ({took:?})"
    );
    assert!(
        request.join().unwrap().is_err(),
        "the abandoned request gets no response"
    );
}
