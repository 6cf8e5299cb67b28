//! The reference gateway in tests: its packaged releases, a PostgreSQL
//! database, and hosts whose agent runs it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate::catalog::{Artifact, Catalog, Release};
use rollgate::version::Version;
use rollgate_testbed::pg::PgCluster;

use super::{Host, ROLLGATE, Sandbox, wait_until};

pub fn demo_bin() -> PathBuf {
    rollgate_testbed::artifacts::demo_gateway_next_to(Path::new(ROLLGATE))
}

/// The packaged releases (cached per build of demo-gateway).
pub fn artifacts() -> PathBuf {
    rollgate_testbed::artifacts::packaged(&demo_bin(), Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn catalog() -> Catalog {
    Catalog::load(&artifacts().join("releases.toml")).expect("catalog")
}

pub fn release(version: &str) -> Release {
    let v: Version = version.parse().unwrap();
    catalog()
        .get(&v)
        .cloned()
        .unwrap_or_else(|| panic!("no release {version} in the catalog"))
}

pub fn artifact_path(r: &Release) -> PathBuf {
    match &r.artifact {
        Artifact::File(p) => p.clone(),
        Artifact::Url(u) => panic!("unexpected URL artifact {u}"),
    }
}

/// A throwaway cluster with the gateway's database.
pub struct Db {
    pub pg: PgCluster,
}

impl Db {
    pub fn start() -> Db {
        let pg = PgCluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
        pg.createdb("gateway").expect("createdb");
        Db { pg }
    }

    pub fn url(&self) -> String {
        self.pg.conninfo("gateway")
    }

    pub fn psql(&self, sql: &str) -> String {
        self.pg
            .psql("gateway", sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }
}

/// What the gateway on a host needs.
pub enum Gw<'a> {
    Cp { db: &'a Db },
    Dp { cp_url: String },
}

/// A host whose agent runs the reference gateway (exec manager), with health
/// probes, agent-check and, on a CP, backups configured. The install root
/// starts empty.
pub fn gateway_host(
    sb: &Sandbox,
    name: &str,
    n: u8,
    gw: Gw<'_>,
    extra: &str,
) -> (Host, SocketAddr) {
    let ip = sb.ip(n);
    let port = sb.free_port(ip);
    let listen = SocketAddr::new(ip.into(), port);
    let check_port = sb.free_port(ip);
    let dir = sb.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (role, gateway_toml, role_extra) = match gw {
        Gw::Cp { db } => (
            "cp",
            format!("listen = \"{listen}\"\ndatabase_url = \"{}\"\n", db.url()),
            {
                // The rehearsal CP's config: rollgate fills in the placeholders.
                std::fs::write(
                    dir.join("rehearsal.toml.in"),
                    "listen = \"{listen}\"\ndatabase_url = \"{database_url}\"\n",
                )
                .unwrap();
                format!(
                    "[backup]\ndir = \"backups\"\nkeep = 3\npg_bin_dir = \"{}\"\ndatabase_url = \"{}\"\nexclude_tables = [\"public.instances\"]\nconfig_files = [\"{}/gateway.toml\"]\nexport_url = \"http://{listen}/api/export\"\n\n\
                     [rehearsal]\ncommand = [\"bin/demo-gateway\", \"cp\", \"--config\", \"{{config}}\"]\nconfig_template = \"rehearsal.toml.in\"\nready_url = \"http://{{listen}}/status/ready\"\nstatus_url = \"http://{{listen}}/status\"\nexport_url = \"http://{{listen}}/api/export\"\nstart_timeout = \"20s\"\n",
                    db.pg.bin_dir().display(),
                    db.url(),
                    dir.display()
                )
            },
        ),
        Gw::Dp { cp_url } => (
            "dp",
            format!(
                "listen = \"{listen}\"\ncp_url = \"{cp_url}\"\ninstance_id = \"{name}\"\npoll_interval = \"200ms\"\ngraceful_timeout = \"5s\"\n"
            ),
            String::new(),
        ),
    };
    std::fs::write(dir.join("gateway.toml"), gateway_toml).unwrap();
    let agent_extra = format!(
        "[health]\nstatus_url = \"http://{listen}/status\"\nready_url = \"http://{listen}/status/ready\"\nstart_timeout = \"20s\"\nmin_healthy = \"1s\"\nprobe_timeout = \"1s\"\n\n\
         [drain]\nagent_check_listen = \"{ip}:{check_port}\"\ngateway_ports = [{port}]\ntimeout = \"5s\"\n\n{role_extra}\n{extra}"
    );
    let host = Host::create(sb, name, role, n, &[], None, &agent_extra);
    (host, listen)
}

/// Where a host's agent answers HAProxy's agent-check (from its agent.toml).
pub fn agent_check_addr(host: &super::Host) -> SocketAddr {
    std::fs::read_to_string(host.config_path())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("agent_check_listen = "))
        .expect("agent_check_listen in agent.toml")
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// What the agent-check port answers (`ready up\n`, `drain\n`, ...).
pub fn agent_check(addr: SocketAddr) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// GET http://addr/path; (status, body) or None when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The version the gateway at `addr` reports on /status.
pub fn running_version(addr: SocketAddr) -> Option<String> {
    let (code, body) = http_get(addr, "/status")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// Waits until the gateway at `addr` serves `version` and is ready.
pub fn wait_serving(addr: SocketAddr, version: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{addr} ready on {version}"),
        || {
            running_version(addr).as_deref() == Some(version)
                && http_get(addr, "/status/ready").is_some_and(|(c, _)| c == 200)
        },
    );
}

/// The release `current` points at in a host's install root.
pub fn current_of(host: &Host) -> Option<String> {
    let t = std::fs::read_link(host.dir.join("root/current")).ok()?;
    Some(t.file_name()?.to_string_lossy().to_string())
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

pub fn add_route(cp: SocketAddr, id: &str) {
    let body = format!(
        r#"{{"id":"{id}","path_prefix":"/{id}","upstream":"http://127.0.0.1:9","plugins":[]}}"#
    );
    let (code, out) = http(cp, "POST", "/api/routes", &body);
    assert!(code == 200 || code == 201, "{code}: {out}");
}
