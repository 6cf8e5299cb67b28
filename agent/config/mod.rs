//! The agent's configuration (`agent.toml`), read and checked before
//! anything is bound or touched.
//!
//! The file is read into `file::File` (every key optional, unknown keys
//! refused) and converted once into `Config`: defaults filled in, relative
//! paths joined to the config file's directory, signals, URLs and commands
//! checked. Every error names the file, the key and what is wrong; `main`
//! turns it into exit code 64.

mod file;
mod from_file;
mod rehearsal;

pub use rehearsal::RehearsalSection;

#[cfg(test)]
use from_file::parse_signal;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use rollgate::role::Role;
use rollgate::tls::TlsMaterial;

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub problem: String,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentSection,
    pub tls: TlsSection,
    pub install: InstallSection,
    pub gateway: GatewaySection,
    pub service: ServiceSection,
    pub health: HealthSection,
    pub drain: DrainSection,
    pub backup: Option<BackupSection>,
    /// CP hosts: how a release is rehearsed on a scratch database.
    pub rehearsal: Option<RehearsalSection>,
}

/// `[agent]`: who this host is and where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct AgentSection {
    /// Equals the name in this agent's certificate and in the inventory.
    pub name: String,
    pub role: Role,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Journal, staging area, pid file, gateway log.
    pub state_dir: PathBuf,
    /// HTTP/2 pings to an idle coordinator connection, and how long one may
    /// go unanswered before the connection is dropped: a coordinator cut
    /// off by a partition (no FIN, no RST) is noticed within their sum.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
}

/// `[tls]`: this agent's identity and who may call it.
#[derive(Debug, Clone)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificate names (CN or DNS SAN) allowed to call this agent.
    pub allowed_clients: Vec<String>,
}

/// `[install]`: how releases are put on this host and switched.
#[derive(Debug, Clone)]
pub struct InstallSection {
    pub method: InstallMethod,
    /// Free bytes that must remain while a release is received and put in
    /// place: the floor is checked as bytes are written, not only before.
    pub min_free_bytes: u64,
}

/// The install methods (`[install] method = ...`).
#[derive(Debug, Clone)]
pub enum InstallMethod {
    /// `tarball`: `<root>/releases/<version>/` and an atomic `current` link.
    Tarball(TarballConfig),
    /// `compose`: an image loaded into the Docker Engine, its tag pinned by
    /// one variable of the compose env file.
    Compose(ComposeConfig),
    /// `deb`: a package installed with dpkg; the previous one cached.
    Deb(DebConfig),
}

impl InstallMethod {
    pub fn name(&self) -> &'static str {
        self.method().as_str()
    }

    pub fn method(&self) -> rollgate::method::Method {
        use rollgate::method::Method;
        match self {
            InstallMethod::Tarball(_) => Method::Tarball,
            InstallMethod::Compose(_) => Method::Compose,
            InstallMethod::Deb(_) => Method::Deb,
        }
    }
}

/// `[install] method = "compose"`.
#[derive(Debug, Clone)]
pub struct ComposeConfig {
    /// The compose project's directory.
    pub project_dir: PathBuf,
    /// The compose project name (`-p`); default: the directory's name.
    pub project: String,
    /// The compose files, absolute.
    pub files: Vec<PathBuf>,
    /// The env file holding the pinning variable, absolute.
    pub env_file: PathBuf,
    /// The one variable that pins the image tag (`GATEWAY_TAG`).
    pub variable: String,
    /// The image repository the variable tags (`demo-gateway`).
    pub image: String,
    /// The services that move together (an API7 CP: dashboard and
    /// dp-manager); every other service of the project is left alone.
    pub services: Vec<String>,
    /// The compose command: `["docker", "compose"]` or `["docker-compose"]`.
    pub compose: Vec<String>,
    /// The Docker Engine's socket.
    pub docker_socket: PathBuf,
    /// Images of this repository kept: the current one and the previous
    /// (for a rollback with no transfer) at least.
    pub keep_images: usize,
}

impl ComposeConfig {
    /// `<compose…> --project-directory D -p P -f F… --env-file E`: what
    /// every compose command starts with.
    pub fn base_argv(&self) -> Vec<String> {
        let mut v = self.compose.clone();
        v.push("--project-directory".into());
        v.push(self.project_dir.display().to_string());
        v.push("-p".into());
        v.push(self.project.clone());
        for f in &self.files {
            v.push("-f".into());
            v.push(f.display().to_string());
        }
        v.push("--env-file".into());
        v.push(self.env_file.display().to_string());
        v
    }
}

/// `[install] method = "deb"`.
#[derive(Debug, Clone)]
pub struct DebConfig {
    /// The package name (`apisix`).
    pub package: String,
    /// How dpkg is run (argv prefix; e.g. with `--instdir`/`--admindir`).
    pub dpkg: Vec<String>,
    pub dpkg_query: Vec<String>,
    pub dpkg_deb: Vec<String>,
    /// dpkg's database (the `--admindir` the dpkg argv uses): its `status`
    /// file changing is what makes the agent ask dpkg-query again.
    pub admin_dir: PathBuf,
    /// Where staged packages are kept (the rollback cache).
    pub cache_dir: PathBuf,
    /// Packages kept in the cache.
    pub keep_packages: usize,
}

#[derive(Debug, Clone)]
pub struct TarballConfig {
    /// Holds `releases/<version>/` and the `current` link.
    pub root: PathBuf,
    /// Releases kept on disk, the current one included (at least 2, so the
    /// previous release is there to roll back to).
    pub keep_releases: usize,
    /// How many times its archive's size a release may unpack to when the
    /// catalog does not say: a bomb is refused as soon as it passes this.
    pub max_unpack_ratio: u64,
}

/// `[gateway]`: what the agent compares in a release.
#[derive(Debug, Clone, Default)]
pub struct GatewaySection {
    /// Custom plugin directories, relative to a release directory, that a
    /// preflight compares with the release.
    pub custom_plugin_dirs: Vec<PathBuf>,
}

/// How the gateway process is controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerKind {
    Systemd,
    Exec,
    Compose,
}

/// `[service]`: the gateway process.
#[derive(Debug, Clone)]
pub struct ServiceSection {
    pub manager: Manager,
    /// The signal for a graceful stop (exec), e.g. SIGQUIT for nginx/APISIX.
    pub stop_signal: Signal,
    /// How long a graceful stop may take before SIGKILL.
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Manager {
    /// The agent runs the gateway itself. A relative first element of the
    /// argv is a path inside the release directory (e.g. `bin/apisix`).
    Exec {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// systemctl start/stop of the gateway's unit.
    Systemd { unit: String, systemctl: PathBuf },
    /// The compose services of `[install] method = "compose"`.
    Compose,
}

impl ServiceSection {
    pub fn kind(&self) -> ManagerKind {
        match self.manager {
            Manager::Exec { .. } => ManagerKind::Exec,
            Manager::Systemd { .. } => ManagerKind::Systemd,
            Manager::Compose => ManagerKind::Compose,
        }
    }
}

/// `[health]`: how the agent judges the gateway.
#[derive(Debug, Clone)]
pub struct HealthSection {
    /// Answers with the running version and config revision as JSON.
    pub status_url: Option<String>,
    /// Answers 2xx only when the gateway is ready to serve.
    pub ready_url: Option<String>,
    /// Where the running version is read.
    pub version: VersionSource,
    /// JSON pointer to the config revision in the status body.
    pub revision_pointer: String,
    pub probe_timeout: Duration,
    /// How long a started gateway may take to become healthy.
    pub start_timeout: Duration,
    /// How long it must then stay healthy.
    pub min_healthy: Duration,
}

/// Where the version the gateway runs is read (`[health] version`).
#[derive(Debug, Clone)]
pub enum VersionSource {
    /// A JSON pointer into the status probe's body (`/version`).
    Json(String),
    /// A response header of the status probe; the pattern's first group is
    /// the version (APISIX: `Server: APISIX/3.x.y`).
    Header {
        name: String,
        pattern: regex_lite::Regex,
    },
    /// The running container's image tag (compose hosts).
    Image,
    /// The installed package's version (deb hosts).
    Package,
    /// A command's output (argv, run as configured), through a pattern.
    Command {
        command: Vec<String>,
        pattern: regex_lite::Regex,
    },
}

/// `[drain]`: taking the host out of its load balancer.
#[derive(Debug, Clone)]
pub struct DrainSection {
    /// Where to answer HAProxy agent-check.
    pub agent_check_listen: Option<SocketAddr>,
    /// The gateway's ports whose established connections a drain waits for.
    pub gateway_ports: Vec<u16>,
    /// How long a drain waits for connections to finish.
    pub timeout: Duration,
    /// Hook commands (argv), run as configured, never from a request.
    pub drain_command: Option<Vec<String>>,
    pub undrain_command: Option<Vec<String>>,
    /// How long a drained host stays out of rotation with no coordinator in
    /// touch and no step running before the agent puts it back by itself
    /// (when its gateway is healthy): a coordinator lost mid-rollout never
    /// leaves a host drained forever.
    pub lease: Duration,
}

/// `[backup]` (CP hosts): the database and the declarative config.
#[derive(Debug, Clone)]
pub struct BackupSection {
    /// Holds one directory per backup id.
    pub dir: PathBuf,
    /// Backups kept; older ones are removed after a new one is verified.
    pub keep: usize,
    /// Where pg_dump and pg_restore live.
    pub pg_bin_dir: PathBuf,
    /// libpq connection string of the gateway's database.
    pub database_url: String,
    /// Tables (schema.table) the gateway writes by itself, left out of the
    /// write-freeze fingerprint.
    pub exclude_tables: Vec<String>,
    /// Gateway config files copied into every backup.
    pub config_files: Vec<PathBuf>,
    /// The declarative export: an HTTP URL, or a command printing it.
    pub export: Option<Export>,
}

#[derive(Debug, Clone)]
pub enum Export {
    Url(String),
    Command(Vec<String>),
}

/// 64 MiB: staging never takes the last free blocks a running gateway needs
/// for its logs, and it still fits a test host's filesystem.
const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
/// Release tarballs of text and binaries compress 3-8x; 20x leaves room and
/// still stops a bomb after a few tens of megabytes.
const DEFAULT_MAX_UNPACK_RATIO: u64 = 20;

/// A checked config and what was loaded with it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub tls: TlsMaterial,
    pub path: PathBuf,
}

/// Reads, parses and checks `path`, and loads the TLS files it names.
/// Nothing is created or bound.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let err = |problem: String| ConfigError {
        file: path.to_path_buf(),
        problem,
    };
    let (text, base) = rollgate::tomlerr::read_file(path).map_err(err)?;
    let config = parse(&text, &base).map_err(err)?;
    let tls = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)
        .map_err(|e| err(format!("key `tls`: {e}")))?;
    Ok(Loaded {
        config,
        tls,
        path: path.to_path_buf(),
    })
}

/// Parses and checks config text; relative paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
    let raw: file::File =
        toml::from_str(text).map_err(|e| rollgate::tomlerr::describe(text, &e))?;
    Config::from_file(raw, base)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn example_configs_in_deploy_are_valid() {
        let dp = parse(
            include_str!("../../deploy/agent.toml"),
            Path::new("/etc/rollgate"),
        )
        .unwrap();
        assert_eq!(dp.agent.role, Role::Dp);
        assert_eq!(dp.service.kind(), ManagerKind::Systemd);
        let cp = parse(
            include_str!("../../deploy/agent-cp.toml"),
            Path::new("/etc/rollgate"),
        )
        .unwrap();
        assert!(cp.backup.is_some());
    }

    /// The smallest valid DP agent config (other tests add sections).
    pub(crate) fn minimal() -> String {
        r#"
[agent]
name = "dp-1"
role = "dp"
listen = "127.0.0.1:0"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "dp-1.pem"
key = "dp-1.key"
allowed_clients = ["rollgate-coordinator"]
[install]
method = "tarball"
root = "root"
[service]
manager = "exec"
command = ["bin/gw"]
"#
        .to_string()
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_dir_and_defaults_filled() {
        let c = parse(&minimal(), Path::new("/srv/h1")).unwrap();
        assert_eq!(c.agent.state_dir, Path::new("/srv/h1/state"));
        assert_eq!(c.tls.ca, Path::new("/srv/h1/ca.pem"));
        let InstallMethod::Tarball(t) = &c.install.method else {
            panic!("tarball expected");
        };
        assert_eq!(t.root, Path::new("/srv/h1/root"));
        assert_eq!(t.keep_releases, 3);
        assert_eq!(c.install.min_free_bytes, 64 << 20);
        assert_eq!(c.service.stop_signal, Signal::SIGQUIT);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                minimal().replace("role = \"dp\"", "role = \"edge\""),
                "unknown variant",
            ),
            (
                minimal().replace("[install]", "[install]\nkeep = 3"),
                "unknown field `keep`",
            ),
            (
                minimal().replace("method = \"tarball\"", "method = \"zip\""),
                "unknown variant `zip`",
            ),
            (
                minimal().replace("name = \"dp-1\"", "name = \"dp_1\""),
                "agent.name",
            ),
            (
                minimal().replace("command = [\"bin/gw\"]", "command = []"),
                "service.command",
            ),
            (
                minimal().replace(
                    "manager = \"exec\"",
                    "manager = \"exec\"\nstop_signal = \"SIGNOPE\"",
                ),
                "service.stop_signal",
            ),
            (
                minimal().replace(
                    "allowed_clients = [\"rollgate-coordinator\"]",
                    "allowed_clients = []",
                ),
                "tls.allowed_clients",
            ),
            (
                minimal() + "[backup]\ndir = \"b\"\ndatabase_url = \"x\"\n",
                "key `backup`",
            ),
            (
                minimal().replace("[service]", "[health]\nstatus_url = \"ftp://x\"\n[service]"),
                "health.status_url",
            ),
            (minimal().replace("root = \"root\"\n", ""), "install.root"),
        ];
        for (text, want) in cases {
            let e = parse(&text, Path::new("/")).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    fn compose() -> String {
        minimal()
            .replace(
                "method = \"tarball\"\nroot = \"root\"",
                "method = \"compose\"\nproject_dir = \"/srv/gw\"\nvariable = \"GATEWAY_TAG\"\nimage = \"api7/gateway\"\nservices = [\"gateway\"]\ncompose = [\"docker-compose\"]",
            )
            .replace("manager = \"exec\"\ncommand = [\"bin/gw\"]", "manager = \"compose\"")
    }

    fn deb() -> String {
        minimal()
            .replace(
                "method = \"tarball\"\nroot = \"root\"",
                "method = \"deb\"\npackage = \"apisix\"",
            )
            .replace(
                "command = [\"bin/gw\"]",
                "command = [\"/usr/bin/apisix\", \"start\"]",
            )
    }

    #[test]
    fn compose_and_deb_methods_are_read_with_their_defaults() {
        let c = parse(&compose(), Path::new("/srv/h1")).unwrap();
        let InstallMethod::Compose(k) = &c.install.method else {
            panic!("compose expected");
        };
        assert_eq!(k.project, "gw", "the project is the directory's name");
        assert_eq!(k.env_file, Path::new("/srv/gw/.env"));
        assert_eq!(k.files, vec![PathBuf::from("/srv/gw/docker-compose.yml")]);
        assert_eq!(k.keep_images, 2);
        assert_eq!(
            k.base_argv(),
            [
                "docker-compose",
                "--project-directory",
                "/srv/gw",
                "-p",
                "gw",
                "-f",
                "/srv/gw/docker-compose.yml",
                "--env-file",
                "/srv/gw/.env"
            ]
        );
        assert_eq!(c.service.kind(), ManagerKind::Compose);

        let c = parse(
            &(deb() + "[health]\nstatus_url = \"http://127.0.0.1:7085/status\"\nversion = { from = \"header\" }\n"),
            Path::new("/srv/h1"),
        )
        .unwrap();
        let InstallMethod::Deb(d) = &c.install.method else {
            panic!("deb expected");
        };
        assert_eq!(d.dpkg, ["dpkg"]);
        assert_eq!(d.admin_dir, Path::new("/var/lib/dpkg"));
        assert_eq!(d.cache_dir, Path::new("/srv/h1/state/packages"));
        let VersionSource::Header { name, pattern } = &c.health.version else {
            panic!("header expected");
        };
        assert_eq!(name, "Server");
        assert_eq!(&pattern.captures("APISIX/3.9.1").unwrap()[1], "3.9.1");
    }

    #[test]
    fn compose_and_deb_mistakes_name_the_key() {
        let cases = [
            (
                compose().replace("variable = \"GATEWAY_TAG\"\n", ""),
                "install.variable",
            ),
            (
                compose().replace("GATEWAY_TAG", "GATEWAY-TAG"),
                "install.variable",
            ),
            (
                compose().replace("api7/gateway", "gw:3.3.0"),
                "install.image",
            ),
            (
                compose().replace("services = [\"gateway\"]", "services = []"),
                "install.services",
            ),
            (
                compose().replace("[\"docker-compose\"]", "[]"),
                "install.compose",
            ),
            (
                compose().replace(
                    "image = \"api7/gateway\"",
                    "image = \"gw\"\nkeep_images = 1",
                ),
                "install.keep_images",
            ),
            (
                compose().replace(
                    "manager = \"compose\"",
                    "manager = \"exec\"\ncommand = [\"x\"]",
                ),
                "service.manager",
            ),
            (
                minimal().replace(
                    "manager = \"exec\"\ncommand = [\"bin/gw\"]",
                    "manager = \"compose\"",
                ),
                "service.manager",
            ),
            (
                deb().replace("/usr/bin/apisix", "bin/apisix"),
                "service.command",
            ),
            (
                deb().replace("apisix\"\n", "Apisix!\"\n"),
                "install.package",
            ),
            (
                deb() + "[health]\nversion = { from = \"image\" }\n",
                "health.version",
            ),
            (
                deb() + "[health]\nversion = { from = \"header\", pattern = \"APISIX\" }\n",
                "health.version.pattern",
            ),
            (
                deb() + "[health]\nversion = { from = \"command\" }\n",
                "health.version.command",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text, Path::new("/")).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::SIGQUIT);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
