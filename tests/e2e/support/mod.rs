//! Test harness: a sandbox directory per test with its own loopback network
//! (127.A.B.x), certificates from the real `rollgate certs init`, agents
//! spawned from the real `rollgate-agent` binary, and the real `rollgate` CLI.

pub mod client;
pub mod disk;
pub mod files;
pub mod fixtures;
pub mod gateway;

pub use rollgate_testbed::install::Install;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use rollgate_testbed::proc::{self, Proc, RunOutput, Running};
pub use rollgate_testbed::wait::must as wait_until;

pub const ROLLGATE: &str = env!("CARGO_BIN_EXE_rollgate");
pub const AGENT: &str = env!("CARGO_BIN_EXE_rollgate-agent");

/// One test's world: the testbed's sandbox (a temp dir and a loopback /16)
/// with the real CLI and certificates at hand.
pub struct Sandbox {
    inner: rollgate_testbed::Sandbox,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            inner: rollgate_testbed::Sandbox::new("rollgate-e2e-"),
        }
    }

    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// Gateways started by agents run in their own process group and outlive
    /// their agent: kill them with the sandbox.
    fn kill_gateways(&self) {
        let Ok(hosts) = std::fs::read_dir(self.path()) else {
            return;
        };
        for h in hosts.flatten() {
            let pidfile = h.path().join("state/gateway.pid");
            let pid = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }

    /// A whole fleet (PostgreSQL, CP, `dps` DPs behind HAProxy, agents) on
    /// `version`, in `<sandbox>/fleet`, with `policy` in its inventory.
    pub fn demo_fleet(
        &self,
        dps: usize,
        version: &str,
        policy: &str,
    ) -> rollgate_testbed::fleet::DemoFleet {
        self.fleet_installed(Install::Tarball, dps, version, policy)
    }

    /// `demo_fleet` with every gateway installed by `install`.
    pub fn fleet_installed(
        &self,
        install: Install,
        dps: usize,
        version: &str,
        policy: &str,
    ) -> rollgate_testbed::fleet::DemoFleet {
        use rollgate_testbed::fleet::{Bins, DemoFleet, FleetSpec};
        DemoFleet::start(FleetSpec {
            dir: self.path().join("fleet"),
            net: self.inner.net(),
            dps,
            version: version.into(),
            bins: Bins::next_to(Path::new(ROLLGATE)),
            artifacts_cache: env!("CARGO_TARGET_TMPDIR").into(),
            policy: policy.into(),
            detached: false,
            install,
        })
        .unwrap_or_else(|e| panic!("demo fleet: {e}"))
    }

    /// The loopback address of simulated host `n` (1..=254).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        self.inner.ip(n)
    }

    /// A port free on `ip` right now.
    pub fn free_port(&self, ip: Ipv4Addr) -> u16 {
        self.inner.free_port(ip)
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.path().join("certs")
    }

    /// `rollgate certs init` for the given agents (name, host number).
    pub fn certs(&self, agents: &[(&str, u8)]) {
        let mut args = vec!["certs".to_string(), "init".into(), "--dir".into()];
        args.push(self.certs_dir().display().to_string());
        for (name, n) in agents {
            args.push("--agent".into());
            args.push(format!("{name}={}", self.ip(*n)));
        }
        let out = self.rollgate(&args);
        assert_eq!(out.code, Some(0), "certs init failed: {}", out.stderr);
    }

    /// Runs the coordinator CLI to completion (deadline: 120 s).
    pub fn rollgate<S: AsRef<str>>(&self, args: &[S]) -> RunOutput {
        proc::run(ROLLGATE, args, self.path(), Duration::from_secs(120))
    }

    /// Starts the coordinator CLI in the background, stdout streamed.
    pub fn rollgate_bg<S: AsRef<str>>(&self, args: &[S]) -> Running {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Running::spawn(
            ROLLGATE,
            args,
            self.path(),
            &self.path().join(format!("rollgate-{n}.stderr")),
        )
    }

    /// Writes a fleet.toml listing `hosts` (name, role, agent address).
    pub fn inventory(&self, hosts: &[(&str, &str, SocketAddr)], extra: &str) -> PathBuf {
        let mut t = String::from(
            "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/rollgate-coordinator.pem\"\nkey = \"certs/rollgate-coordinator.key\"\n\n[coordinator]\nstate_dir = \"state\"\nconnect_timeout = \"2s\"\ncall_timeout = \"5s\"\nretries = 1\n",
        );
        t.push_str(extra);
        for (name, role, addr) in hosts {
            t.push_str(&format!(
                "\n[[hosts]]\nname = \"{name}\"\naddress = \"{addr}\"\nrole = \"{role}\"\n"
            ));
        }
        let p = self.path().join("fleet.toml");
        std::fs::write(&p, t).unwrap();
        p
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_gateways();
    }
}

/// One simulated host: its directory, install root and agent config.
pub struct Host {
    pub name: String,
    pub role: &'static str,
    pub dir: PathBuf,
    pub agent_addr: SocketAddr,
}

impl Host {
    /// Lays out `<sandbox>/<name>/` with releases/<v> for each version and
    /// `current` pointing at `current` (when given), and an agent.toml using
    /// the sandbox's certificates. `extra` is appended to agent.toml.
    pub fn create(
        sb: &Sandbox,
        name: &str,
        role: &'static str,
        n: u8,
        versions: &[&str],
        current: Option<&str>,
        extra: &str,
    ) -> Host {
        let ip = sb.ip(n);
        let dir = sb.path().join(name);
        let root = dir.join("root");
        for v in versions {
            std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        if let Some(v) = current {
            std::os::unix::fs::symlink(format!("releases/{v}"), root.join("current")).unwrap();
        }
        let agent_addr = SocketAddr::new(ip.into(), sb.free_port(ip));
        let certs = sb.certs_dir();
        let config = format!(
            "[agent]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{agent_addr}\"\nstate_dir = \"state\"\n\n\
             [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}.key\"\nallowed_clients = [\"rollgate-coordinator\"]\n\n\
             [install]\nmethod = \"tarball\"\nroot = \"root\"\n\n\
             [service]\nmanager = \"exec\"\ncommand = [\"bin/demo-gateway\", \"{role}\", \"--config\", \"{d}/gateway.toml\"]\n\n{extra}",
            c = certs.display(),
            d = dir.display(),
        );
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        Host {
            name: name.into(),
            role,
            dir,
            agent_addr,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    /// Starts the agent and waits (deadline 20 s) until it accepts connections.
    pub fn start_agent(&self) -> Proc {
        self.start_agent_env(&[])
    }

    /// Starts the agent with extra environment (e.g. a failpoint).
    pub fn start_agent_env(&self, env: &[(&str, &str)]) -> Proc {
        let log = self.dir.join("agent.log");
        let p = Proc::spawn_env(
            AGENT,
            &[
                "--config".to_string(),
                self.config_path().display().to_string(),
            ],
            &self.dir,
            &log,
            env,
        );
        let addr = self.agent_addr;
        wait_until(
            Duration::from_secs(20),
            &format!("agent {} listening", self.name),
            || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        );
        p
    }

    /// The inventory entry for this host.
    pub fn entry(&self) -> (&str, &str, SocketAddr) {
        (&self.name, self.role, self.agent_addr)
    }
}

/// Parses a command's stdout as one JSON document.
pub fn json(out: &RunOutput) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    })
}

/// A demo fleet kept running by `rollgate demo --keep --no-upgrade …`, and
/// its teardown, run when this is dropped (whatever the test did).
pub struct KeptDemo {
    /// The demo's closing JSON document (inventory, catalog, lb, teardown…).
    pub doc: serde_json::Value,
}

impl KeptDemo {
    /// Runs `rollgate <args> --output json` in `cwd` (args start with
    /// "demo"), which must succeed.
    pub fn start(cwd: &Path, args: &[String]) -> KeptDemo {
        let mut args = args.to_vec();
        args.extend(["--output".to_string(), "json".to_string()]);
        let out = proc::run(ROLLGATE, &args, cwd, std::time::Duration::from_secs(240));
        assert_eq!(
            out.code,
            Some(0),
            "{args:?}\n{}\n{}",
            out.stdout,
            out.stderr
        );
        let doc = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
        KeptDemo { doc }
    }
}

impl Drop for KeptDemo {
    fn drop(&mut self) {
        if let Some(t) = self.doc["teardown"].as_str() {
            let _ = std::process::Command::new("sh").arg(t).output();
        }
    }
}

/// A command's stdout then stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many entries `dir` holds; 0 when it does not exist.
pub fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}
