//! Host configuration files (`CP.toml`, `DP.toml`). They live outside releases, so
//! every release must accept them; unknown keys are rejected so typos surface.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::http::UpstreamUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpConfig {
    /// Address of the admin, status and DP-facing HTTP API.
    pub listen: SocketAddr,
    /// libpq-style `key=value` connection string, as tokio-postgres parses it.
    pub database_url: String,
    /// A tracing filter (`info`, `demo_gateway=debug`); `RUST_LOG` wins.
    #[serde(default)]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpConfig {
    /// Address that serves proxied traffic and `/status`, `/status/ready`.
    pub listen: SocketAddr,
    /// Base URL of the CP (`http://host:port`).
    pub cp_url: String,
    /// Name this DP heartbeats under; unique in the fleet.
    pub instance_id: String,
    /// Where to serve the status API the APISIX way (APISIX listens on
    /// `127.0.0.1:7085`): `/status` and `/status/ready` with
    /// `{"status":"ok"}` / 503 `{"status":"error","error":...}` bodies and the
    /// version only in the `Server` header. None: not served.
    #[serde(default)]
    pub status_listen: Option<SocketAddr>,
    /// How often the DP polls the CP for config and heartbeats.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a graceful stop (SIGQUIT) may wait for in-flight requests.
    #[serde(default = "default_graceful_timeout", with = "humantime_serde")]
    pub graceful_timeout: Duration,
    #[serde(default)]
    pub log_level: Option<String>,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_graceful_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config file {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

impl CpConfig {
    pub fn load(path: &Path) -> Result<CpConfig, ConfigError> {
        CpConfig::parse(&read(path)?, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<CpConfig, ConfigError> {
        let config: CpConfig = parse_toml(text, path)?;
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        tokio_postgres::Config::from_str(&config.database_url)
            .map_err(|e| invalid("database_url", e.to_string()))?;
        Ok(config)
    }

    pub fn pg_config(&self) -> tokio_postgres::Config {
        // Validated in `load`.
        tokio_postgres::Config::from_str(&self.database_url).unwrap_or_default()
    }
}

impl DpConfig {
    pub fn load(path: &Path) -> Result<DpConfig, ConfigError> {
        DpConfig::parse(&read(path)?, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DpConfig, ConfigError> {
        let config: DpConfig = parse_toml(text, path)?;
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        UpstreamUrl::parse(&config.cp_url).map_err(|e| invalid("cp_url", e.to_string()))?;
        if config.instance_id.is_empty() || config.instance_id.len() > 128 {
            return Err(invalid("instance_id", "must be 1 to 128 characters".into()));
        }
        if config.poll_interval < Duration::from_millis(10) {
            return Err(invalid("poll_interval", "must be at least 10ms".into()));
        }
        Ok(config)
    }

    pub fn cp(&self) -> UpstreamUrl {
        // Validated in `load`.
        UpstreamUrl::parse(&self.cp_url).expect("cp_url validated on load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dp_config_parses_durations_and_rejects_unknown_keys() {
        let path = Path::new("DP.toml");
        let config = DpConfig::parse(
            "listen = \"127.0.0.3:9080\"\ncp_url = \"http://127.0.0.2:7080\"\ninstance_id = \"dp-1\"\npoll_interval = \"250ms\"\ngraceful_timeout = \"3s\"\n",
            path,
        )
        .unwrap();
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.graceful_timeout, Duration::from_secs(3));

        let err = DpConfig::parse(
            "listen = \"127.0.0.3:9080\"\ncp_url = \"http://127.0.0.2:7080\"\ninstance_id = \"dp-1\"\npol_interval = \"1s\"\n",
            path,
        )
        .unwrap_err();
        let err = format!("{:#}", anyhow::Error::new(err));
        assert!(
            err.contains("pol_interval") && err.contains("DP.toml"),
            "{err}"
        );
    }

    #[test]
    fn cp_config_rejects_a_bad_database_url() {
        let err = CpConfig::parse(
            "listen = \"127.0.0.2:7080\"\ndatabase_url = \"host=127.0.0.1 port=notaport\"\n",
            Path::new("CP.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database_url"), "{err}");
    }
}
