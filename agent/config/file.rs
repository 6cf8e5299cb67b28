//! `agent.toml` as written: every key optional here, unknown keys refused.
//! `super::Config::try_from` turns it into the checked config the agent uses,
//! with defaults filled in and every value (paths, signals, durations,
//! addresses) parsed exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rollgate::role::Role;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub agent: Option<AgentFile>,
    pub tls: Option<TlsFile>,
    pub install: Option<InstallFile>,
    pub gateway: Option<GatewayFile>,
    pub service: Option<ServiceFile>,
    pub health: Option<HealthFile>,
    pub drain: Option<DrainFile>,
    pub backup: Option<BackupFile>,
    pub rehearsal: Option<RehearsalFile>,
}

/// `[rehearsal]`: how a CP release is started against a scratch database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalFile {
    pub command: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub config_template: Option<PathBuf>,
    pub listen_ip: Option<std::net::Ipv4Addr>,
    pub ready_url: Option<String>,
    pub status_url: Option<String>,
    pub version_pointer: Option<String>,
    pub export_url: Option<String>,
    pub schema_query: Option<String>,
    pub cleanup_command: Option<Vec<String>>,
    pub stop_signal: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub keepalive_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub allowed_clients: Option<Vec<String>>,
}

/// `[install]`, tagged by `method`.
#[derive(Debug, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum InstallFile {
    Tarball {
        root: Option<PathBuf>,
        keep_releases: Option<usize>,
        min_free_bytes: Option<u64>,
        max_unpack_ratio: Option<u64>,
    },
    Compose {
        project_dir: Option<PathBuf>,
        project: Option<String>,
        files: Option<Vec<PathBuf>>,
        env_file: Option<PathBuf>,
        variable: Option<String>,
        image: Option<String>,
        services: Option<Vec<String>>,
        compose: Option<Vec<String>>,
        docker_socket: Option<PathBuf>,
        keep_images: Option<usize>,
        min_free_bytes: Option<u64>,
    },
    Deb {
        package: Option<String>,
        dpkg: Option<Vec<String>>,
        dpkg_query: Option<Vec<String>>,
        dpkg_deb: Option<Vec<String>>,
        admin_dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        keep_packages: Option<usize>,
        min_free_bytes: Option<u64>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub custom_plugin_dirs: Option<Vec<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub manager: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    pub unit: Option<String>,
    pub systemctl: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub status_url: Option<String>,
    pub ready_url: Option<String>,
    pub version: Option<VersionFile>,
    pub version_pointer: Option<String>,
    pub revision_pointer: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub probe_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_healthy: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainFile {
    pub agent_check_listen: Option<SocketAddr>,
    pub gateway_ports: Option<Vec<u16>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub drain_command: Option<Vec<String>>,
    pub undrain_command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    pub dir: Option<PathBuf>,
    pub keep: Option<usize>,
    pub pg_bin_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub exclude_tables: Option<Vec<String>>,
    pub config_files: Option<Vec<PathBuf>>,
    pub export_url: Option<String>,
    pub export_command: Option<Vec<String>>,
}

/// `[health] version = { from = ... }`: where the running version is read.
#[derive(Debug, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionFile {
    /// A JSON pointer into the status probe's body.
    Json { pointer: Option<String> },
    /// A response header of the status probe, through a pattern whose
    /// first group is the version.
    Header {
        name: Option<String>,
        pattern: Option<String>,
    },
    /// The running container's image tag (compose hosts).
    Image,
    /// The installed package's version (deb hosts).
    Package,
    /// A configured command's output, through an optional pattern.
    Command {
        command: Option<Vec<String>>,
        pattern: Option<String>,
    },
}
