//! What the benchmarks share: a sandbox directory, certificates from the real
//! `rollgate certs init`, hosts whose gateway is a tiny long-running program,
//! real `rollgate-agent` processes, readings from /proc, and cleanup that
//! kills everything the bench started — on success, on a panic and on
//! Ctrl-C/SIGTERM.
//!
//! Each bench includes this file with `#[path]`; not every bench uses every
//! helper.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

pub mod coordinator;
pub mod fake_gateway;
pub mod hollow_agent;

/// The binaries under test, built by `cargo bench` with the bench profile
/// (which inherits `[profile.release]`).
pub const ROLLGATE: &str = env!("CARGO_BIN_EXE_rollgate");
pub const AGENT: &str = env!("CARGO_BIN_EXE_rollgate-agent");

/// The fake gateway: starts at once, runs until stopped (SIGQUIT kills
/// `sleep`), and ends by itself after an hour should anything survive
/// the bench (the exec manager runs gateways in their own process group, so
/// a Ctrl-C of the bench does not reach them).
pub const GATEWAY_SCRIPT: &str = "#!/bin/sh\n# fake gateway {VERSION}\nexec sleep 3600\n";

// === cleanup ===

/// Everything the bench started, for `cleanup`.
struct Started {
    children: Vec<Child>,
    /// Gateway pid files (`<state_dir>/gateway.pid`): gateways are started
    /// by the agents and outlive them.
    pid_files: Vec<PathBuf>,
    /// Sandbox directories to remove when a signal cuts the bench short.
    dirs: Vec<PathBuf>,
}

static STARTED: Mutex<Started> = Mutex::new(Started {
    children: Vec::new(),
    pid_files: Vec::new(),
    dirs: Vec::new(),
});

fn started() -> std::sync::MutexGuard<'static, Started> {
    STARTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prepares the process: orphaned gateways are re-parented to the bench
/// (child subreaper) so they are reaped here, not left as zombies under a
/// PID 1 that does not reap; Ctrl-C and SIGTERM kill what was started.
pub fn init() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        let sig = rt.block_on(rollgate::shutdown::signalled());
        eprintln!("\nbench: {sig}: stopping everything it started");
        cleanup();
        for d in std::mem::take(&mut started().dirs) {
            let _ = std::fs::remove_dir_all(d);
        }
        std::process::exit(130);
    });
}

/// Registers a process the bench started (killed by `cleanup`).
pub fn track(child: Child) -> u32 {
    let pid = child.id();
    started().children.push(child);
    pid
}

/// Kills every process the bench started and every gateway they started,
/// then reaps them. Idempotent.
pub fn cleanup() {
    let (children, pid_files) = {
        let mut s = started();
        (
            std::mem::take(&mut s.children),
            std::mem::take(&mut s.pid_files),
        )
    };
    // Agents first, so none starts a gateway again.
    for c in &children {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
    }
    for f in &pid_files {
        if let Some(pid) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    // Gateways orphaned by the agents' death are ours now: reap them.
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

// === sandbox ===

/// The testbed's sandbox; dropping it kills what was started, then removes
/// its directory (unless ROLLGATE_BENCH_KEEP is set).
pub struct Sandbox {
    inner: Option<rollgate_testbed::Sandbox>,
    path: PathBuf,
}

impl Sandbox {
    pub fn new(prefix: &str) -> Sandbox {
        let inner = rollgate_testbed::Sandbox::new(prefix);
        let path = inner.path().to_path_buf();
        started().dirs.push(path.clone());
        Sandbox {
            inner: Some(inner),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rollgate certs init` for `agents` (name, address).
    pub fn certs(&self, agents: &[(String, Ipv4Addr)]) -> PathBuf {
        let dir = self.path.join("certs");
        let mut cmd = Command::new(ROLLGATE);
        cmd.args(["certs", "init", "--dir"]).arg(&dir);
        for (name, ip) in agents {
            cmd.arg("--agent").arg(format!("{name}={ip}"));
        }
        let out = cmd.output().expect("run rollgate certs init");
        assert!(
            out.status.success(),
            "rollgate certs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        cleanup();
        started().dirs.retain(|d| *d != self.path);
        if std::env::var_os("ROLLGATE_BENCH_KEEP").is_some()
            && let Some(sb) = self.inner.take()
        {
            eprintln!("bench: kept {}", sb.dir.keep().display());
        }
    }
}

// === releases ===

/// A release artifact on disk.
pub struct Artifact {
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The bench binary itself, when releases run it as a fake gateway that
/// times itself (`use_fake_gateway`).
static FAKE_GATEWAY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// From now on, releases this bench packs run the bench binary as their
/// gateway (`fake_gateway`), which needs GW_LISTEN and GW_EVENTS in the
/// agent's `[service] env`. Call `fake_gateway::run_if_asked()` first in
/// `main`.
pub fn use_fake_gateway() {
    let exe = std::env::current_exe().expect("the bench's own path");
    let _ = FAKE_GATEWAY.set(exe);
}

fn gateway_script(version: &str) -> String {
    match FAKE_GATEWAY.get() {
        Some(exe) => format!(
            "#!/bin/sh\n# fake gateway {version}\nexec '{}' fake-gateway {version}\n",
            exe.display()
        ),
        None => GATEWAY_SCRIPT.replace("{VERSION}", version),
    }
}

/// Packs `bin/gw` (mode 0755) for `version` into `<dir>/gw-<version>.tar.gz`.
pub fn artifact(dir: &Path, version: &str) -> Artifact {
    let path = dir.join(format!("gw-{version}.tar.gz"));
    let file = std::fs::File::create(&path).expect("create artifact");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let body = gateway_script(version);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, "bin", std::io::empty())
        .expect("tar bin/");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(body.len() as u64);
    tar.append_data(&mut h, "bin/gw", body.as_bytes())
        .expect("tar bin/gw");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut f| f.flush())
        .expect("finish artifact");
    let bytes = std::fs::read(&path).expect("read artifact");
    Artifact {
        version: version.into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        path,
    }
}

/// As `artifact`, with a `payload` file of `size` incompressible bytes, so
/// receiving, hashing and unpacking it is real work.
pub fn artifact_with_payload(dir: &Path, version: &str, size: usize) -> Artifact {
    let path = dir.join(format!("gw-{version}.tar.gz"));
    let file = std::fs::File::create(&path).expect("create artifact");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let body = gateway_script(version);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(body.len() as u64);
    tar.append_data(&mut h, "bin/gw", body.as_bytes())
        .expect("tar bin/gw");
    // xorshift: reproducible bytes gzip cannot shrink.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ version.len() as u64;
    let payload: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(payload.len() as u64);
    tar.append_data(&mut h, "payload", payload.as_slice())
        .expect("tar payload");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut f| f.flush())
        .expect("finish artifact");
    let bytes = std::fs::read(&path).expect("read artifact");
    Artifact {
        version: version.into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        path,
    }
}

/// Writes `releases.toml` listing `artifacts` next to them.
pub fn catalog(dir: &Path, artifacts: &[&Artifact]) -> PathBuf {
    let mut t = String::new();
    for a in artifacts {
        t.push_str(&format!(
            "[[releases]]\nversion = \"{}\"\nartifact = \"{}\"\nsha256 = \"{}\"\nsize = {}\n\n",
            a.version,
            a.path.file_name().unwrap().to_string_lossy(),
            a.sha256,
            a.size
        ));
    }
    let p = dir.join("releases.toml");
    std::fs::write(&p, t).expect("write releases.toml");
    p
}

/// Lays `a` out in `root` as if the agent had staged and installed it:
/// `releases/<v>/bin/gw`, the release marker, and `current` pointing at it.
pub fn preinstall(root: &Path, a: &Artifact) {
    use std::os::unix::fs::PermissionsExt;
    let rel = root.join("releases").join(&a.version);
    std::fs::create_dir_all(rel.join("bin")).expect("release dir");
    let gw = rel.join("bin/gw");
    std::fs::write(&gw, gateway_script(&a.version)).expect("write bin/gw");
    std::fs::set_permissions(&gw, std::fs::Permissions::from_mode(0o755)).expect("chmod bin/gw");
    std::fs::write(
        rel.join(".rollgate-release"),
        serde_json::json!({ "version": a.version, "sha256": a.sha256 }).to_string(),
    )
    .expect("write release marker");
    std::os::unix::fs::symlink(format!("releases/{}", a.version), root.join("current"))
        .expect("current link");
}

/// The version `current` points at in `root`.
pub fn current_version(root: &Path) -> Option<String> {
    let t = std::fs::read_link(root.join("current")).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

// === hosts and agents ===

/// One simulated DP host.
pub struct Host {
    pub name: String,
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

impl Host {
    /// Writes `<sandbox>/<name>/agent.toml` (exec manager running `bin/gw`
    /// of the current release) plus `extra` sections.
    pub fn create(sb: &Sandbox, name: &str, certs: &Path, addr: SocketAddr, extra: &str) -> Host {
        Host::create_as(sb, name, "dp", certs, addr, extra)
    }

    /// `create` with another role ("cp").
    pub fn create_as(
        sb: &Sandbox,
        name: &str,
        role: &str,
        certs: &Path,
        addr: SocketAddr,
        extra: &str,
    ) -> Host {
        let dir = sb.path().join(name);
        std::fs::create_dir_all(&dir).expect("host dir");
        let c = certs.display();
        let config = format!(
            "[agent]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{addr}\"\nstate_dir = \"state\"\n\n\
             [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}.key\"\nallowed_clients = [\"rollgate-coordinator\"]\n\n\
             [install]\nmethod = \"tarball\"\nroot = \"root\"\n\n\
             [service]\nmanager = \"exec\"\ncommand = [\"bin/gw\"]\nstop_timeout = \"5s\"\n\n{extra}"
        );
        std::fs::write(dir.join("agent.toml"), config).expect("write agent.toml");
        Host {
            name: name.into(),
            dir,
            addr,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn gateway_pid_file(&self) -> PathBuf {
        self.dir.join("state/gateway.pid")
    }

    /// Starts the agent (log in `<dir>/agent.log`); returns its pid.
    pub fn start_agent(&self) -> u32 {
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("agent.log");
        // ROLLGATE_BENCH_AGENT: another build of the agent, to compare.
        let agent = std::env::var("ROLLGATE_BENCH_AGENT").unwrap_or_else(|_| AGENT.into());
        let child = Command::new(agent)
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent.log"))
            .stderr(log)
            .spawn()
            .expect("start rollgate-agent");
        started().pid_files.push(self.gateway_pid_file());
        track(child)
    }

    /// The gateway's pid, once the agent has started it.
    pub fn gateway_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.gateway_pid_file())
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

#[allow(unused_imports)] // not every bench waits
pub use rollgate_testbed::wait::must as wait_until;

pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// === /proc ===

/// Clock ticks per second (utime/stime unit).
pub fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |v| v as u64)
}

/// The fields of /proc/PID/stat a bench reads.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    /// utime + stime, in clock ticks (of all the process's threads, also
    /// those that ended; for a zombie: its whole life).
    pub cpu_ticks: u64,
    pub threads: u64,
}

pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: field 3 first.
    let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        threads: f.get(17)?.parse().ok()?,
    })
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in bytes.
/// None for a process that is gone or a zombie (no memory any more).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A `kB` field of /proc/PID/smaps_rollup (Pss, Referenced, ...), in bytes.
pub fn rollup_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Clears the "referenced" bits of a process's pages, so that
/// `rollup_kb(pid, "Referenced")` later tells what it touched since.
pub fn clear_refs(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "1").is_ok()
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// === agents over mTLS ===

/// A gRPC client of `host`'s agent, with the coordinator's certificate.
pub async fn connect(
    certs: &Path,
    name: &str,
    addr: SocketAddr,
) -> rollgate::pb::agent_client::AgentClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    rollgate::tls::install_crypto_provider();
    let read = |f: &str| std::fs::read(certs.join(f)).expect("read certs");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("rollgate-coordinator.pem"),
            read("rollgate-coordinator.key"),
        ))
        .domain_name(name.to_string());
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("connect to the agent");
    rollgate::pb::agent_client::AgentClient::new(channel)
}

/// Follows a step's stream to its result: Ok on success, the failure (or
/// a broken stream) as text otherwise.
pub async fn final_result(
    resp: Result<tonic::Response<tonic::Streaming<rollgate::pb::OperationEvent>>, tonic::Status>,
) -> Result<(), String> {
    use rollgate::pb::operation_event::Event;
    use rollgate::pb::operation_result::Outcome;
    let mut stream = resp.map_err(|s| s.message().to_string())?.into_inner();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
    {
        if let Some(Event::Result(r)) = ev.event {
            return match r.outcome {
                Some(Outcome::Success(_)) => Ok(()),
                Some(Outcome::Failure(f)) => Err(f.message),
                None => Err("a result without an outcome".into()),
            };
        }
    }
    Err("the stream ended without a result".into())
}
