//! Fixtures: a CP on a throwaway database, DPs, upstreams, each a real process of
//! a packaged release, each on its own free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rollgate_testbed::pg::PgCluster;
use serde_json::Value;

use super::client;
use super::eventually;
use super::process::Proc;
use super::releases::{BINARY, binary_of};

/// How long a process may take to come up on a busy 2-core machine.
pub const STARTUP: Duration = Duration::from_secs(20);

pub fn free_addr() -> SocketAddr {
    let ip = std::net::Ipv4Addr::LOCALHOST;
    SocketAddr::new(
        ip.into(),
        rollgate_testbed::net::free_port(ip).expect("a free port"),
    )
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("demo-gateway-test-")
        .tempdir()
        .expect("create a temp dir")
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{name}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until `GET /status` answers, failing early (with the log) if the process
/// exits first.
fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> Value {
    eventually(
        &format!("{} to answer /status", proc.name()),
        STARTUP,
        || {
            if let Some(status) = proc.exited() {
                panic!(
                    "{} exited early ({status}); log:\n{}",
                    proc.name(),
                    proc.log()
                );
            }
            client::request(addr, "GET", "/status", None, b"")
                .ok()
                .map(|r| r.json())
        },
    )
}

pub struct Cp {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Cp {
    fn spawn(version: &str, pg: &PgCluster, db: &str, dir: &Path) -> Cp {
        let addr = free_addr();
        let name = unique(&format!("cp-{version}"));
        let config = write_config(
            dir,
            &name,
            &format!(
                "listen = \"{addr}\"\ndatabase_url = \"{}\"\n",
                pg.conninfo(db)
            ),
        );
        let proc = Proc::spawn(
            &name,
            &binary_of(version),
            &["cp", "--config", config.to_str().unwrap()],
            dir,
        );
        Cp { proc, addr }
    }

    /// Starts the CP of `version` on `db` and waits until it serves.
    pub fn start(version: &str, pg: &PgCluster, db: &str, dir: &Path) -> Cp {
        let mut cp = Cp::spawn(version, pg, db, dir);
        wait_listening(&mut cp.proc, cp.addr);
        cp
    }

    /// Runs a CP that is expected to exit on its own; returns its status and log.
    pub fn run_to_exit(
        version: &str,
        pg: &PgCluster,
        db: &str,
        dir: &Path,
    ) -> (ExitStatus, String) {
        let mut cp = Cp::spawn(version, pg, db, dir);
        let status = cp
            .proc
            .wait_exit(STARTUP)
            .unwrap_or_else(|| panic!("CP {version} kept running; log:\n{}", cp.proc.log()));
        assert!(
            client::request(cp.addr, "GET", "/status", None, b"").is_err(),
            "a CP that exits must not have served"
        );
        (status, cp.proc.log())
    }

    pub fn status(&self) -> Value {
        let response = client::get(self.addr, "/status");
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// Creates or replaces a route; returns the new config revision.
    pub fn put_route(&self, route: &Value) -> i64 {
        let id = route["id"].as_str().expect("route id");
        let response = client::send_json(self.addr, "PUT", &format!("/api/routes/{id}"), route);
        assert!(
            matches!(response.status, 200 | 201),
            "PUT route {id}: {} {}",
            response.status,
            response.text()
        );
        response.json()["revision"].as_i64().unwrap()
    }
}

pub struct Dp {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Dp {
    /// Starts a DP of `version` following `cp`; waits until `/status` answers
    /// (not until it is ready).
    pub fn start(version: &str, cp: SocketAddr, dir: &Path, graceful_timeout: &str) -> Dp {
        let addr = free_addr();
        let name = unique(&format!("dp-{version}"));
        let config = write_config(
            dir,
            &name,
            &format!(
                "listen = \"{addr}\"\ncp_url = \"http://{cp}\"\ninstance_id = \"{name}\"\npoll_interval = \"100ms\"\ngraceful_timeout = \"{graceful_timeout}\"\n"
            ),
        );
        let mut proc = Proc::spawn(
            &name,
            &binary_of(version),
            &["dp", "--config", config.to_str().unwrap()],
            dir,
        );
        wait_listening(&mut proc, addr);
        Dp { proc, addr }
    }

    pub fn instance_id(&self) -> &str {
        self.proc.name()
    }

    /// Waits until `/status/ready` is 200 with `revision` loaded.
    pub fn wait_ready(&mut self, revision: i64) -> Value {
        let addr = self.addr;
        let proc = &mut self.proc;
        eventually(
            &format!("DP to be ready at revision {revision}"),
            STARTUP,
            || {
                if let Some(status) = proc.exited() {
                    panic!("DP exited early ({status}); log:\n{}", proc.log());
                }
                let response = client::request(addr, "GET", "/status/ready", None, b"").ok()?;
                let body = response.json();
                (response.status == 200 && body["config_revision"] == revision).then_some(body)
            },
        )
    }
}

pub struct Upstream {
    /// Held so the upstream is killed when the test ends.
    _proc: Proc,
    pub addr: SocketAddr,
}

impl Upstream {
    pub fn start(name: &str, delay_ms: u64, dir: &Path) -> Upstream {
        let addr = free_addr();
        let mut proc = Proc::spawn(
            &unique(&format!("upstream-{name}")),
            Path::new(BINARY),
            &[
                "upstream",
                "--listen",
                &addr.to_string(),
                "--name",
                name,
                "--delay-ms",
                &delay_ms.to_string(),
            ],
            dir,
        );
        eventually("the upstream to listen", STARTUP, || {
            if let Some(status) = proc.exited() {
                panic!("upstream exited ({status}); log:\n{}", proc.log());
            }
            client::connect(addr).ok()
        });
        Upstream { _proc: proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A throwaway cluster with the named databases created.
pub fn postgres(databases: &[&str]) -> PgCluster {
    let pg = PgCluster::start().expect("start a throwaway PostgreSQL");
    for db in databases {
        pg.createdb(db).expect("create a database");
    }
    pg
}
