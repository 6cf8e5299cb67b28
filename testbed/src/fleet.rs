//! A whole fleet on one machine, as `rollgate demo` and the end-to-end tests
//! use it: a throwaway PostgreSQL, the reference gateway's CP and DPs (each
//! host its own directory and loopback address, each run by its own
//! `rollgate-agent`), an upstream, HAProxy in front of the DPs with
//! agent-check pointed at each agent, certificates, the inventory and the
//! release catalog. The gateways are installed as `install::Install` says:
//! release tarballs run by the agent, Docker Compose services, or Debian
//! packages in a root of their own per host. DPs serve the APISIX-shaped
//! status API on a port of their own; their agents read the version from its
//! `Server` header.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::haproxy::{self, Haproxy, Server};
use crate::install::{self, DebRoot, Install, Project, ServiceDef};
use crate::{artifacts, catalog, http, pg::PgCluster};

/// What a simulated host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cp,
    Dp,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Cp => "cp",
            Role::Dp => "dp",
        })
    }
}

/// The binaries a fleet runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub rollgate: PathBuf,
    pub agent: PathBuf,
    pub demo_gateway: PathBuf,
}

impl Bins {
    /// All three from the directory holding `exe` (cargo's target dir).
    pub fn next_to(exe: &Path) -> Bins {
        let dir = exe.parent().unwrap_or(Path::new("."));
        Bins {
            rollgate: dir.join("rollgate"),
            agent: dir.join("rollgate-agent"),
            demo_gateway: dir.join("demo-gateway"),
        }
    }
}

/// What fleet to build.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Everything goes here; it must not exist yet or be empty.
    pub dir: PathBuf,
    /// Hosts get 127.`net.0`.`net.1`.x.
    pub net: (u8, u8),
    pub dps: usize,
    /// The release every host starts on.
    pub version: String,
    pub bins: Bins,
    /// Where packaged artifacts are cached.
    pub artifacts_cache: PathBuf,
    /// Lines for the inventory's `[policy]`.
    pub policy: String,
    /// Processes outlive this handle's creator (`demo --keep`): their own
    /// process groups, so a terminal's Ctrl-C does not reach them.
    pub detached: bool,
    /// How every host's gateway is installed.
    pub install: Install,
}

/// One host of the fleet.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    pub role: Role,
    pub dir: PathBuf,
    pub gateway: SocketAddr,
    pub agent: SocketAddr,
    pub agent_check: Option<SocketAddr>,
    /// DPs: the APISIX-shaped status API (`/status`, `/status/ready`,
    /// `Server: APISIX/<version>`).
    pub status: Option<SocketAddr>,
    /// Compose hosts: the host's project.
    pub project: Option<Project>,
    /// Package hosts: the host's own root and dpkg database.
    pub deb: Option<DebRoot>,
    /// Compose CP: the address of the project's service rollgate must not
    /// touch.
    pub unrelated: Option<SocketAddr>,
}

pub struct DemoFleet {
    pub dir: PathBuf,
    pub pg: Option<PgCluster>,
    pub hosts: Vec<HostInfo>,
    pub lb: SocketAddr,
    pub upstream: SocketAddr,
    pub inventory: PathBuf,
    pub catalog: PathBuf,
    pub state_dir: PathBuf,
    pub bins: Bins,
    agents: BTreeMap<String, Child>,
    upstream_proc: Option<Child>,
    haproxy: Option<Haproxy>,
    detached: bool,
    pub install: Install,
    /// The compose command (compose fleets).
    pub compose: Vec<String>,
}

/// The path the load and the demo request through the load balancer.
pub const ROUTE: &str = "/api/hello";

/// A TOML array of strings.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn ip_of(a: &SocketAddr) -> Ipv4Addr {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    }
}

/// The reference gateway's `upstream` subcommand (a small HTTP server), as
/// the argv of a compose service.
fn upstream_args(listen: SocketAddr, name: &str) -> Vec<String> {
    vec![
        "upstream".into(),
        "--listen".into(),
        listen.to_string(),
        "--name".into(),
        name.into(),
    ]
}

fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    crate::net::free_port(ip)
}

fn wait(deadline: Duration, what: &str, ok: impl FnMut() -> bool) -> Result<(), String> {
    crate::wait::until(deadline, what, ok)
}

impl DemoFleet {
    /// Builds and starts the fleet; everything is stopped again on error.
    pub fn start(spec: FleetSpec) -> Result<DemoFleet, String> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
        let compose = match spec.install {
            Install::Compose => {
                if let Some(why) = install::docker_missing() {
                    return Err(format!("the compose install method needs {why}"));
                }
                install::compose_argv().unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let pkg = artifacts::packaged(&spec.bins.demo_gateway, &spec.artifacts_cache)?;
        let catalog_path = pkg.join("releases.toml");
        let release = catalog::release(&catalog_path, &spec.version)?;
        if spec.install == Install::Compose {
            let images: Vec<(String, String)> = catalog::releases(&catalog_path)?
                .into_iter()
                .filter_map(|r| Some((format!("{}:{}", install::IMAGE, r.version), r.image?.1)))
                .collect();
            let (first, _) = release
                .image
                .clone()
                .ok_or_else(|| format!("the catalog has no image of {}", spec.version))?;
            install::prepare_engine(
                &images,
                &first,
                &format!("{}:{}", install::IMAGE, spec.version),
            )?;
        }
        let pg = PgCluster::start().map_err(|e| format!("PostgreSQL: {e}"))?;
        pg.createdb("gateway")
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        let ip = |n: u8| Ipv4Addr::new(127, spec.net.0, spec.net.1, n);

        let mut fleet = DemoFleet {
            dir: spec.dir.clone(),
            hosts: Vec::new(),
            lb: SocketAddr::new(ip(200).into(), 0),
            upstream: SocketAddr::new(ip(100).into(), free_port(ip(100))?),
            inventory: spec.dir.join("fleet.toml"),
            catalog: catalog_path,
            state_dir: spec.dir.join("state"),
            bins: spec.bins.clone(),
            agents: BTreeMap::new(),
            upstream_proc: None,
            haproxy: None,
            detached: spec.detached,
            pg: Some(pg),
            install: spec.install,
            compose,
        };
        // Certificates for every host and the coordinator.
        let mut names = vec![("cp-1".to_string(), 1u8, Role::Cp)];
        names.extend((1..=spec.dps).map(|i| (format!("dp-{i}"), i as u8 + 1, Role::Dp)));
        let mut certs = Command::new(&spec.bins.rollgate);
        certs
            .args(["certs", "init", "--dir"])
            .arg(spec.dir.join("certs"));
        for (n, i, _) in &names {
            certs.arg("--agent").arg(format!("{n}={}", ip(*i)));
        }
        let out = certs
            .output()
            .map_err(|e| format!("cannot run rollgate certs init: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "rollgate certs init: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cp_addr = SocketAddr::new(ip(1).into(), free_port(ip(1))?);
        for (name, i, role) in &names {
            let gateway = if *role == Role::Cp {
                cp_addr
            } else {
                SocketAddr::new(ip(*i).into(), free_port(ip(*i))?)
            };
            let host = HostInfo {
                name: name.clone(),
                role: *role,
                dir: spec.dir.join(name),
                gateway,
                agent: SocketAddr::new(ip(*i).into(), free_port(ip(*i))?),
                agent_check: if *role == Role::Dp {
                    Some(SocketAddr::new(ip(*i).into(), free_port(ip(*i))?))
                } else {
                    None
                },
                status: if *role == Role::Dp {
                    Some(SocketAddr::new(ip(*i).into(), free_port(ip(*i))?))
                } else {
                    None
                },
                unrelated: if *role == Role::Cp && spec.install == Install::Compose {
                    Some(SocketAddr::new(ip(*i).into(), free_port(ip(*i))?))
                } else {
                    None
                },
                project: None,
                deb: None,
            };
            let host = fleet.lay_out(host, cp_addr, &release)?;
            fleet.hosts.push(host);
        }
        // The upstream, then the agents (each starts its installed gateway).
        let upstream = fleet.spawn(
            Command::new(&spec.bins.demo_gateway).args([
                "upstream",
                "--listen",
                &fleet.upstream.to_string(),
                "--name",
                "upstream",
            ]),
            &spec.dir.join("upstream.log"),
        )?;
        fleet.upstream_proc = Some(upstream);
        // What an operator did before rollgate: the services are up.
        for p in fleet.hosts.iter().filter_map(|h| h.project.as_ref()) {
            p.up(&fleet.compose)?;
        }
        for h in fleet.hosts.clone() {
            let child = fleet.spawn_agent(&h)?;
            fleet.agents.insert(h.name.clone(), child);
        }
        wait(Duration::from_secs(60), "the CP to be ready", || {
            http::ready(cp_addr)
        })?;
        let route = format!(
            r#"{{"id":"api","path_prefix":"/api","upstream":"http://{}","plugins":[{{"name":"response-header","config":{{"name":"x-served-by","value":"rollgate-demo"}}}}]}}"#,
            fleet.upstream
        );
        match http::request(cp_addr, "POST", "/api/routes", &route) {
            Some((200 | 201, _)) => {}
            other => return Err(format!("cannot create the demo route: {other:?}")),
        }
        for h in fleet.hosts.iter().filter(|h| h.role == Role::Dp) {
            let a = h.gateway;
            wait(
                Duration::from_secs(60),
                &format!("{} to be ready", h.name),
                || http::get(a, ROUTE).is_some_and(|(c, _)| c == 200),
            )?;
        }
        // HAProxy in front of the DPs.
        let lb = SocketAddr::new(ip(200).into(), free_port(ip(200))?);
        let servers: Vec<Server> = fleet
            .hosts
            .iter()
            .filter(|h| h.role == Role::Dp)
            .map(|h| Server {
                name: h.name.clone(),
                addr: h.gateway,
                agent_check: h.agent_check.expect("DPs answer agent-check"),
            })
            .collect();
        fleet.haproxy = Some(Haproxy::start(&spec.dir, lb, &servers)?);
        fleet.lb = lb;
        wait(
            Duration::from_secs(30),
            "HAProxy to serve the route",
            || http::get(lb, ROUTE).is_some_and(|(c, _)| c == 200),
        )?;
        fleet.write_inventory(&spec.policy)?;
        Ok(fleet)
    }

    fn spawn(&self, cmd: &mut Command, log: &Path) -> Result<Child, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if self.detached {
            cmd.process_group(0);
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
    }

    /// A host's directory: agent.toml, gateway.toml, and the first release
    /// installed the host's way.
    fn lay_out(
        &self,
        mut h: HostInfo,
        cp: SocketAddr,
        release: &catalog::Release,
    ) -> Result<HostInfo, String> {
        let io = |e: std::io::Error| format!("{}: {e}", h.dir.display());
        std::fs::create_dir_all(&h.dir).map_err(io)?;
        let role = match h.role {
            Role::Cp => "cp",
            Role::Dp => "dp",
        };
        let gateway_config = h.dir.join("gateway.toml");
        let gateway_args = |program: String| {
            vec![
                program,
                role.to_string(),
                "--config".to_string(),
                gateway_config.display().to_string(),
            ]
        };
        let (install_toml, service_toml) = match self.install {
            Install::Tarball => {
                self.unpack_release(&h, release)?;
                (
                    "method = \"tarball\"\nroot = \"root\"\n".to_string(),
                    format!(
                        "manager = \"exec\"\ncommand = {}\n",
                        toml_list(&gateway_args("bin/demo-gateway".into()))
                    ),
                )
            }
            Install::Deb => {
                let root = DebRoot::create(h.dir.join("deb-root"))?;
                let deb = release
                    .deb
                    .as_ref()
                    .ok_or_else(|| format!("the catalog has no package of {}", release.version))?;
                root.install(deb)?;
                let t = (
                    format!(
                        "method = \"deb\"\npackage = \"{}\"\ndpkg = {}\ndpkg_query = {}\nadmin_dir = \"{}\"\n",
                        install::PACKAGE,
                        toml_list(&root.dpkg()),
                        toml_list(&root.dpkg_query()),
                        root.admin_dir().display()
                    ),
                    format!(
                        "manager = \"exec\"\ncommand = {}\n",
                        toml_list(&gateway_args(root.program().display().to_string()))
                    ),
                );
                h.deb = Some(root);
                t
            }
            Install::Compose => {
                let image = format!("{}:${{{}}}", install::IMAGE, install::TAG_VARIABLE);
                let mut services = vec![ServiceDef {
                    name: role,
                    image: image.clone(),
                    command: gateway_args(String::new()).split_off(1),
                }];
                let mut upgraded = vec![role];
                if let Some(unrelated) = h.unrelated {
                    // An API7 CP is two services pinned by one variable
                    // (dashboard and dp-manager): the CP and a sidecar of
                    // the same release stand for them. And one service the
                    // rollout must leave alone.
                    let sidecar = SocketAddr::new(h.gateway.ip(), free_port(ip_of(&h.gateway))?);
                    services.push(ServiceDef {
                        name: "cp-sidecar",
                        image,
                        command: upstream_args(sidecar, "cp-sidecar"),
                    });
                    upgraded.push("cp-sidecar");
                    services.push(ServiceDef {
                        name: "unrelated",
                        image: install::UNRELATED_IMAGE.into(),
                        command: upstream_args(unrelated, "unrelated"),
                    });
                }
                let project = Project::write(
                    h.dir.join("compose"),
                    install::project_name(&self.dir, &h.name),
                    &h.dir,
                    &release.version,
                    &services,
                    &upgraded,
                )?;
                let t = (
                    format!(
                        "method = \"compose\"\nproject_dir = \"compose\"\nproject = \"{}\"\nvariable = \"{}\"\nimage = \"{}\"\nservices = {}\ncompose = {}\n",
                        project.name,
                        install::TAG_VARIABLE,
                        install::IMAGE,
                        toml_list(&project.services),
                        toml_list(&self.compose)
                    ),
                    "manager = \"compose\"\n".to_string(),
                );
                h.project = Some(project);
                t
            }
        };
        let certs = self.dir.join("certs");
        let pg = self.pg.as_ref().ok_or("no database")?;
        let (gateway_toml, extra, health) = match h.role {
            Role::Cp => (
                format!(
                    "listen = \"{}\"\ndatabase_url = \"{}\"\n",
                    h.gateway,
                    pg.conninfo("gateway")
                ),
                format!(
                    "[backup]\ndir = \"backups\"\nkeep = 5\npg_bin_dir = \"{}\"\ndatabase_url = \"{}\"\nexclude_tables = [\"public.instances\"]\nconfig_files = [\"{}/gateway.toml\"]\nexport_url = \"http://{}/api/export\"\n\n{}",
                    pg.bin_dir().display(),
                    pg.conninfo("gateway"),
                    h.dir.display(),
                    h.gateway,
                    self.rehearsal_toml(&h)?
                ),
                format!(
                    "status_url = \"http://{g}/status\"\nready_url = \"http://{g}/status/ready\"\n",
                    g = h.gateway
                ),
            ),
            Role::Dp => {
                let status = h.status.ok_or("a DP without a status address")?;
                (
                    format!(
                        "listen = \"{}\"\nstatus_listen = \"{status}\"\ncp_url = \"http://{cp}\"\ninstance_id = \"{}\"\npoll_interval = \"300ms\"\ngraceful_timeout = \"10s\"\n",
                        h.gateway, h.name
                    ),
                    format!(
                        "[drain]\nagent_check_listen = \"{}\"\ngateway_ports = [{}]\ntimeout = \"10s\"\n",
                        h.agent_check.map(|a| a.to_string()).unwrap_or_default(),
                        h.gateway.port()
                    ),
                    // APISIX's shape: the version is in the Server header.
                    format!(
                        "status_url = \"http://{status}/status\"\nready_url = \"http://{status}/status/ready\"\nversion = {{ from = \"header\", name = \"Server\", pattern = '^APISIX/(\\S+)$' }}\n"
                    ),
                )
            }
        };
        std::fs::write(&gateway_config, gateway_toml).map_err(io)?;
        let agent = format!(
            "[agent]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{listen}\"\nstate_dir = \"state\"\n\n\
             [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}.key\"\nallowed_clients = [\"rollgate-coordinator\"]\n\n\
             [install]\n{install_toml}\n\
             [service]\n{service_toml}stop_timeout = \"15s\"\n\n\
             [health]\n{health}start_timeout = \"30s\"\nmin_healthy = \"2s\"\nprobe_timeout = \"2s\"\n\n{extra}",
            name = h.name,
            listen = h.agent,
            c = certs.display(),
        );
        std::fs::write(h.dir.join("agent.toml"), agent).map_err(io)?;
        Ok(h)
    }

    /// The CP's `[rehearsal]`: the reference CP started from the staged
    /// release against the scratch database, the way each install method
    /// has it (a release directory, an unpacked .deb, a container).
    fn rehearsal_toml(&self, h: &HostInfo) -> Result<String, String> {
        let template = h.dir.join("rehearsal-cp.toml.in");
        std::fs::write(
            &template,
            "# The reference CP of a rehearsal: rollgate fills in the placeholders.\nlisten = \"{listen}\"\ndatabase_url = \"{database_url}\"\n",
        )
        .map_err(|e| format!("{}: {e}", template.display()))?;
        let args = ["cp", "--config", "{config}"].map(String::from);
        let (command, cleanup) = match self.install {
            Install::Tarball => (
                [vec!["bin/demo-gateway".to_string()], args.to_vec()].concat(),
                None,
            ),
            Install::Deb => (
                [
                    vec!["opt/demo-gateway/bin/demo-gateway".to_string()],
                    args.to_vec(),
                ]
                .concat(),
                None,
            ),
            Install::Compose => {
                let d = h.dir.display().to_string();
                let mut c: Vec<String> = [
                    "docker",
                    "run",
                    "--rm",
                    "--name",
                    "{name}",
                    "--network",
                    "host",
                    "-v",
                ]
                .map(String::from)
                .to_vec();
                c.push(format!("{d}:{d}:ro"));
                c.push("{image}".into());
                c.extend(args);
                (
                    c,
                    Some(["docker", "rm", "-f", "{name}"].map(String::from).to_vec()),
                )
            }
        };
        let mut t = format!(
            "[rehearsal]\ncommand = {}\nconfig_template = \"rehearsal-cp.toml.in\"\nready_url = \"http://{{listen}}/status/ready\"\nstatus_url = \"http://{{listen}}/status\"\nexport_url = \"http://{{listen}}/api/export\"\nstart_timeout = \"30s\"\nstop_timeout = \"10s\"\n",
            toml_list(&command)
        );
        if let Some(c) = cleanup {
            t.push_str(&format!("cleanup_command = {}\n", toml_list(&c)));
        }
        Ok(t)
    }

    /// The tarball way: the release unpacked under `root/releases/<v>`, its
    /// marker written, `root/current` pointing at it.
    fn unpack_release(&self, h: &HostInfo, release: &catalog::Release) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", h.dir.display());
        let version = &release.version;
        let rel = h.dir.join("root/releases").join(version);
        std::fs::create_dir_all(&rel).map_err(io)?;
        let f = std::fs::File::open(&release.artifact).map_err(io)?;
        tar::Archive::new(flate2::read::GzDecoder::new(f))
            .unpack(&rel)
            .map_err(io)?;
        std::fs::write(
            rel.join(".rollgate-release"),
            serde_json::json!({ "version": version, "sha256": release.sha256 }).to_string(),
        )
        .map_err(io)?;
        std::os::unix::fs::symlink(format!("releases/{version}"), h.dir.join("root/current"))
            .map_err(io)
    }

    fn write_inventory(&self, policy: &str) -> Result<(), String> {
        let mut t = String::from(
            "# The demo fleet: one CP and its DPs behind HAProxy, all on this machine.\n\
             [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/rollgate-coordinator.pem\"\nkey = \"certs/rollgate-coordinator.key\"\n\n\
             [coordinator]\nstate_dir = \"state\"\n\n[policy]\n",
        );
        t.push_str(policy);
        t.push('\n');
        for h in &self.hosts {
            t.push_str(&format!(
                "\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"{}\"\n",
                h.name, h.agent, h.role
            ));
        }
        std::fs::write(&self.inventory, t).map_err(|e| format!("{}: {e}", self.inventory.display()))
    }

    pub fn host(&self, name: &str) -> Option<&HostInfo> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The URL the load requests through HAProxy.
    pub fn url(&self) -> String {
        format!("http://{}{ROUTE}", self.lb)
    }

    /// What every gateway reports on /status (None: no answer).
    pub fn versions(&self) -> BTreeMap<String, Option<String>> {
        self.hosts
            .iter()
            .map(|h| (h.name.clone(), http::status_version(h.gateway)))
            .collect()
    }

    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.agents.get(name).map(Child::id)
    }

    fn spawn_agent(&self, h: &HostInfo) -> Result<Child, String> {
        self.spawn(
            Command::new(&self.bins.agent)
                .arg("--config")
                .arg(h.dir.join("agent.toml"))
                .current_dir(&h.dir),
            &h.dir.join("agent.log"),
        )
    }

    /// kill -9 of a host's agent, the way a crash or an OOM kill ends it. Its
    /// gateway lives on (it runs in its own process group).
    pub fn kill_agent(&mut self, name: &str) -> Result<(), String> {
        let mut child = self
            .agents
            .remove(name)
            .ok_or_else(|| format!("no agent {name} is running"))?;
        child
            .kill()
            .map_err(|e| format!("kill {name}'s agent: {e}"))?;
        child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Starts a host's agent again with the same command line (as systemd
    /// would after a crash) and waits until it accepts connections. A dead
    /// agent (killed at a failpoint) is reaped first.
    pub fn start_agent(&mut self, name: &str) -> Result<(), String> {
        self.start_agent_env(name, &[])
    }

    /// `start_agent` with extra environment (`ROLLGATE_FAILPOINT`).
    pub fn start_agent_env(&mut self, name: &str, env: &[(&str, &str)]) -> Result<(), String> {
        let h = self
            .host(name)
            .cloned()
            .ok_or_else(|| format!("no host {name}"))?;
        if self.agent_exited(name) {
            self.agents.remove(name);
        }
        if self.agents.contains_key(name) {
            return Err(format!("{name}'s agent is running"));
        }
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("--config")
            .arg(h.dir.join("agent.toml"))
            .current_dir(&h.dir)
            .envs(env.iter().copied());
        let child = self.spawn(&mut cmd, &h.dir.join("agent.log"))?;
        self.agents.insert(name.to_string(), child);
        wait(
            Duration::from_secs(20),
            &format!("{name}'s agent to listen"),
            || std::net::TcpStream::connect_timeout(&h.agent, Duration::from_millis(200)).is_ok(),
        )
    }

    /// Whether a host's agent has exited (reaped here if so).
    pub fn agent_exited(&mut self, name: &str) -> bool {
        self.agents
            .get_mut(name)
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    }

    /// Kills every gateway an agent started (they outlive their agents).
    fn kill_gateways(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for h in &self.hosts {
            let pid = std::fs::read_to_string(h.dir.join("state/gateway.pid"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok());
            if let Some(pid) = pid {
                pids.push(pid);
                if !self.detached {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
        pids
    }

    /// Leaves the fleet running; writes `teardown.sh` that stops all of it
    /// and removes the directory. Returns its path.
    pub fn keep(mut self) -> Result<PathBuf, String> {
        let agents: Vec<u32> = self.agents.values().map(Child::id).collect();
        let mut others: Vec<u32> = self
            .upstream_proc
            .as_ref()
            .map(Child::id)
            .into_iter()
            .collect();
        self.detached = true;
        if let Some(h) = self.haproxy.take() {
            others.push(h.detach());
        }
        let pg_stop = self.pg.take().map(PgCluster::detach).unwrap_or_default();
        let script = self.dir.join("teardown.sh");
        let list = |v: &[u32]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Agents first, so none starts a gateway again; then the gateways,
        // whichever pids they have by now (upgrades restart them), from the
        // agents' pid files.
        let downs: String = self
            .hosts
            .iter()
            .filter_map(|h| h.project.as_ref())
            .map(|p| {
                let c = p.command(&self.compose, &["down", "--timeout", "5"]);
                let mut line: Vec<String> = vec![c.get_program().to_string_lossy().into_owned()];
                line.extend(c.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
                format!("{} >/dev/null 2>&1\n", line.join(" "))
            })
            .collect();
        let text = format!(
            "#!/bin/sh\n# Stops the rollgate demo fleet in {dir} and removes it.\n\
             kill -9 {agents} 2>/dev/null\n\
             for f in '{dir}'/*/state/gateway.pid; do [ -f \"$f\" ] && kill -9 $(cut -d' ' -f1 \"$f\") 2>/dev/null; done\n\
             {downs}kill -9 {others} 2>/dev/null\n{pg_stop}\nrm -rf '{dir}'\necho 'demo fleet stopped and removed'\n",
            dir = self.dir.display(),
            agents = list(&agents),
            others = list(&others),
        );
        std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        self.agents.clear();
        self.upstream_proc = None;
        Ok(script)
    }
}

impl Drop for DemoFleet {
    fn drop(&mut self) {
        if self.detached && self.agents.is_empty() {
            return; // kept: teardown.sh stops it
        }
        for c in self
            .agents
            .values_mut()
            .chain(self.upstream_proc.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.detached = false;
        self.kill_gateways();
        for p in self.hosts.iter().filter_map(|h| h.project.as_ref()) {
            if let Err(e) = p.down(&self.compose) {
                tracing::warn!(project = %p.name, error = %e, "cannot take the compose project down");
            }
        }
        self.haproxy.take();
        self.pg.take();
    }
}

/// The check `rollgate demo` makes before building anything: what is
/// missing, and how to install it.
pub fn missing_prerequisites(bins: &Bins) -> Vec<String> {
    let mut missing = Vec::new();
    let pg_bin = std::env::var_os("ROLLGATE_PG_BIN")
        .map_or_else(|| PathBuf::from(super::pg::DEFAULT_BIN_DIR), PathBuf::from);
    if !pg_bin.join("initdb").is_file() {
        missing.push(
            "PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15)".to_string(),
        );
    }
    if haproxy::binary().is_none() {
        missing.push("HAProxy (Debian: apt-get install haproxy)".to_string());
    }
    if !bins.demo_gateway.is_file() || !bins.agent.is_file() {
        missing.push(format!(
            "the rollgate-agent and demo-gateway binaries next to {} (cargo build --workspace)",
            bins.rollgate.display()
        ));
    }
    missing
}
