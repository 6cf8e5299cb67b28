//! The agent's configuration file (`agent.toml`), read and checked before
//! anything is bound or touched.
//!
//! Unknown keys are refused. Relative paths are taken relative to the
//! directory holding the config file. Every error names the file, the key and
//! what is wrong; `main` turns it into exit code 64.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate::ids::check_host_name;
use rollgate::role::Role;
use rollgate::tls::TlsMaterial;
use serde::Deserialize;

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub problem: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub tls: TlsSection,
    pub gateway: GatewaySection,
    pub service: ServiceSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub drain: DrainSection,
    pub backup: Option<BackupSection>,
}

/// `[agent]`: who this host is and where the agent keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The host name: equals the name in this agent's certificate and in the
    /// coordinator's inventory.
    pub name: String,
    pub role: Role,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Journal, staging area, pid file, gateway log.
    pub state_dir: PathBuf,
}

/// `[tls]`: this agent's identity and who may call it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificate names (CN or DNS SAN) allowed to call this agent.
    pub allowed_clients: Vec<String>,
}

/// `[gateway]`: where releases live on this host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Holds `releases/<version>/` and the `current` link.
    pub install_root: PathBuf,
    /// Releases kept on disk, the current one included (at least 2, so the
    /// previous release is there to roll back to).
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    /// Free bytes that must remain on the install root's and the state
    /// dir's file systems while a release is received and unpacked: the
    /// floor is checked as bytes are written, not only before.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// How many times its archive's size a release may unpack to, when the
    /// catalog does not declare the unpacked size: a compressed archive that
    /// expands further (a gzip bomb) is refused as soon as it passes this.
    #[serde(default = "default_max_unpack_ratio")]
    pub max_unpack_ratio: u64,
    /// Custom plugin directories, relative to a release directory, that a
    /// preflight compares with the release.
    #[serde(default)]
    pub custom_plugin_dirs: Vec<PathBuf>,
}

/// How the gateway process is controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerKind {
    Systemd,
    Exec,
}

/// `[service]`: the gateway process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub manager: ManagerKind,
    /// exec: the gateway's argv. A relative first element is a path inside the
    /// release directory (e.g. `bin/apisix`).
    #[serde(default)]
    pub command: Vec<String>,
    /// exec: extra environment for the gateway.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The signal for a graceful stop (exec), e.g. SIGQUIT for nginx/APISIX.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    /// How long a graceful stop may take before SIGKILL.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// systemd: the gateway's unit.
    pub unit: Option<String>,
    /// systemd: the systemctl binary.
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
}

/// `[health]`: how the agent judges the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Answers with the running version and config revision as JSON.
    pub status_url: Option<String>,
    /// Answers 2xx only when the gateway is ready to serve.
    pub ready_url: Option<String>,
    /// JSON pointer to the version in the status body.
    #[serde(default = "default_version_pointer")]
    pub version_pointer: String,
    /// JSON pointer to the config revision in the status body.
    #[serde(default = "default_revision_pointer")]
    pub revision_pointer: String,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// How long a started gateway may take to become healthy.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How long it must then stay healthy.
    #[serde(default = "default_min_healthy", with = "humantime_serde")]
    pub min_healthy: Duration,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            status_url: None,
            ready_url: None,
            version_pointer: default_version_pointer(),
            revision_pointer: default_revision_pointer(),
            probe_timeout: default_probe_timeout(),
            start_timeout: default_start_timeout(),
            min_healthy: default_min_healthy(),
        }
    }
}

/// `[drain]`: taking the host out of its load balancer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSection {
    /// Where to answer HAProxy agent-check.
    pub agent_check_listen: Option<SocketAddr>,
    /// The gateway's listening ports whose established connections a drain
    /// waits for.
    #[serde(default)]
    pub gateway_ports: Vec<u16>,
    /// How long a drain waits for connections to finish.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Optional hook commands (argv), run as configured, never from a request.
    pub drain_command: Option<Vec<String>>,
    pub undrain_command: Option<Vec<String>>,
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            agent_check_listen: None,
            gateway_ports: Vec::new(),
            timeout: default_drain_timeout(),
            drain_command: None,
            undrain_command: None,
        }
    }
}

/// `[backup]` (CP hosts): the database and the declarative config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Holds one directory per backup id.
    pub dir: PathBuf,
    /// Backups kept; older ones are removed after a new one is verified.
    #[serde(default = "default_keep_backups")]
    pub keep: usize,
    /// Where pg_dump and pg_restore live.
    #[serde(default = "default_pg_bin_dir")]
    pub pg_bin_dir: PathBuf,
    /// libpq connection string of the gateway's database.
    pub database_url: String,
    /// Tables (schema.table) the gateway writes by itself, left out of the
    /// write-freeze fingerprint.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// Gateway config files copied into every backup.
    #[serde(default)]
    pub config_files: Vec<PathBuf>,
    /// The declarative export: an HTTP URL answering with the whole config...
    pub export_url: Option<String>,
    /// ...or a command printing it on stdout.
    pub export_command: Option<Vec<String>>,
}

fn default_keep_releases() -> usize {
    3
}
/// 64 MiB: enough that staging never takes the last free blocks a running
/// gateway needs for its logs, small enough for a test host's filesystem.
fn default_min_free_bytes() -> u64 {
    64 << 20
}
/// Release tarballs of text and binaries compress 3-8x; 20x leaves room
/// and still stops a bomb after a few tens of megabytes.
fn default_max_unpack_ratio() -> u64 {
    20
}
fn default_stop_signal() -> String {
    "SIGQUIT".into()
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_systemctl() -> PathBuf {
    "/usr/bin/systemctl".into()
}
fn default_version_pointer() -> String {
    "/version".into()
}
fn default_revision_pointer() -> String {
    "/config_revision".into()
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(5)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keep_backups() -> usize {
    5
}
fn default_pg_bin_dir() -> PathBuf {
    "/usr/lib/postgresql/15/bin".into()
}

/// A checked config and what was loaded with it.
#[derive(Debug)]
pub struct Loaded {
    pub config: AgentConfig,
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
    let config = parse(&text, base).map_err(err)?;
    let tls = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)
        .map_err(|e| err(format!("key `tls`: {e}")))?;
    Ok(Loaded {
        config,
        tls,
        path: path.to_path_buf(),
    })
}

/// Parses and checks config text; relative paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<AgentConfig, String> {
    let mut config: AgentConfig =
        toml::from_str(text).map_err(|e| rollgate::tomlerr::describe(text, &e))?;
    config.resolve_paths(base);
    config.validate()?;
    Ok(config)
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl AgentConfig {
    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.agent.state_dir);
        resolve(base, &mut self.tls.ca);
        resolve(base, &mut self.tls.cert);
        resolve(base, &mut self.tls.key);
        resolve(base, &mut self.gateway.install_root);
        if let Some(b) = &mut self.backup {
            resolve(base, &mut b.dir);
            resolve(base, &mut b.pg_bin_dir);
            for f in &mut b.config_files {
                resolve(base, f);
            }
        }
    }

    /// Checks what serde cannot; the message starts with the offending key.
    fn validate(&self) -> Result<(), String> {
        check_host_name(&self.agent.name).map_err(|e| format!("key `agent.name`: {e}"))?;
        if self.tls.allowed_clients.is_empty() {
            return Err("key `tls.allowed_clients`: must name at least one client".into());
        }
        if self.gateway.max_unpack_ratio == 0 {
            return Err("key `gateway.max_unpack_ratio`: must be at least 1".into());
        }
        if self.gateway.keep_releases < 2 {
            return Err(
                "key `gateway.keep_releases`: must be at least 2, so the previous release stays for rollback"
                    .into(),
            );
        }
        for d in &self.gateway.custom_plugin_dirs {
            if d.is_absolute() || d.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "key `gateway.custom_plugin_dirs`: {} must be relative to the release directory",
                    d.display()
                ));
            }
        }
        self.validate_service()?;
        for (key, url) in [
            ("health.status_url", &self.health.status_url),
            ("health.ready_url", &self.health.ready_url),
        ] {
            if let Some(url) = url {
                check_http_url(url).map_err(|e| format!("key `{key}`: {e}"))?;
            }
        }
        for (key, ptr) in [
            ("health.version_pointer", &self.health.version_pointer),
            ("health.revision_pointer", &self.health.revision_pointer),
        ] {
            if !ptr.is_empty() && !ptr.starts_with('/') {
                return Err(format!("key `{key}`: a JSON pointer starts with '/'"));
            }
        }
        for (key, cmd) in [
            ("drain.drain_command", &self.drain.drain_command),
            ("drain.undrain_command", &self.drain.undrain_command),
        ] {
            if cmd
                .as_ref()
                .is_some_and(|c| c.is_empty() || c[0].is_empty())
            {
                return Err(format!("key `{key}`: must name a program"));
            }
        }
        self.validate_backup()
    }

    fn validate_service(&self) -> Result<(), String> {
        let s = &self.service;
        parse_signal(&s.stop_signal).map_err(|e| format!("key `service.stop_signal`: {e}"))?;
        match s.manager {
            ManagerKind::Exec => {
                if s.command.is_empty() || s.command[0].is_empty() {
                    return Err(
                        "key `service.command`: manager \"exec\" needs the gateway's command (argv)"
                            .into(),
                    );
                }
                if s.unit.is_some() {
                    return Err("key `service.unit`: only for manager = \"systemd\"".into());
                }
            }
            ManagerKind::Systemd => {
                match &s.unit {
                    None => {
                        return Err(
                            "key `service.unit`: manager \"systemd\" needs the gateway's unit"
                                .into(),
                        );
                    }
                    Some(u) if u.is_empty() || u.contains('/') || u.starts_with('-') => {
                        return Err(format!("key `service.unit`: {u:?} is not a unit name"));
                    }
                    Some(_) => {}
                }
                if !s.command.is_empty() || !s.env.is_empty() {
                    return Err(
                        "key `service.command`: only for manager = \"exec\" (systemd runs the unit)"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_backup(&self) -> Result<(), String> {
        let Some(b) = &self.backup else {
            return Ok(());
        };
        if self.agent.role != Role::Cp {
            return Err("key `backup`: only CP hosts (agent.role = \"cp\") take backups".into());
        }
        if b.keep == 0 {
            return Err("key `backup.keep`: must be at least 1".into());
        }
        if b.database_url.trim().is_empty() {
            return Err("key `backup.database_url`: is empty".into());
        }
        if b.export_url.is_some() && b.export_command.is_some() {
            return Err(
                "key `backup.export_command`: give either export_url or export_command, not both"
                    .into(),
            );
        }
        if let Some(url) = &b.export_url {
            check_http_url(url).map_err(|e| format!("key `backup.export_url`: {e}"))?;
        }
        if b.export_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("key `backup.export_command`: must name a program".into());
        }
        for t in &b.exclude_tables {
            if t.split('.').count() != 2 {
                return Err(format!(
                    "key `backup.exclude_tables`: {t:?} must be written schema.table"
                ));
            }
        }
        Ok(())
    }
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        s => Err(format!("{url:?}: scheme {s:?} is not http or https")),
    }
}

/// `SIGQUIT`, `QUIT` or `sigquit` → the signal.
pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse()
        .map_err(|_| format!("{name:?} is not a signal name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_in_deploy_are_valid() {
        let dp = parse(
            include_str!("../deploy/agent.toml"),
            Path::new("/etc/rollgate"),
        )
        .unwrap();
        assert_eq!(dp.agent.role, Role::Dp);
        assert_eq!(dp.service.manager, ManagerKind::Systemd);
        let cp = parse(
            include_str!("../deploy/agent-cp.toml"),
            Path::new("/etc/rollgate"),
        )
        .unwrap();
        assert!(cp.backup.is_some());
    }

    fn minimal() -> String {
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
[gateway]
install_root = "root"
[service]
manager = "exec"
command = ["bin/gw"]
"#
        .to_string()
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_dir() {
        let c = parse(&minimal(), Path::new("/srv/h1")).unwrap();
        assert_eq!(c.agent.state_dir, Path::new("/srv/h1/state"));
        assert_eq!(c.tls.ca, Path::new("/srv/h1/ca.pem"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                minimal().replace("role = \"dp\"", "role = \"edge\""),
                "unknown variant",
            ),
            (
                minimal().replace("[gateway]", "[gateway]\nkeep = 3"),
                "unknown field `keep`",
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
        ];
        for (text, want) in cases {
            let e = parse(&text, Path::new("/")).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGQUIT").unwrap(), nix::sys::signal::SIGQUIT);
        assert_eq!(parse_signal("term").unwrap(), nix::sys::signal::SIGTERM);
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
