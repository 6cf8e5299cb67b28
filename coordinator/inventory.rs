//! The fleet inventory (`fleet.toml`): hosts, TLS files, coordinator settings
//! and the rollout policy. Read and checked in full before any agent is called.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate::ids::check_host_name;
use rollgate::role::Role;
use rollgate::tls::TlsMaterial;
use serde::Deserialize;

use crate::batch::{BatchSize, InService};

/// An inventory that cannot be used: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct InventoryError {
    pub file: PathBuf,
    pub problem: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInventory {
    tls: TlsFiles,
    #[serde(default)]
    coordinator: CoordinatorSettings,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    state: StateSettings,
    #[serde(default)]
    pub(crate) hosts: Vec<Host>,
}

/// `[state]`: what coordinators on different machines share. `file` (the
/// default): nothing, the local state directory holds the lock. `postgres`:
/// the fleet lease and its fencing tokens live in a PostgreSQL database of
/// rollgate's own (`url`), so two operators on two bastions exclude each
/// other, and every call to an agent carries the holder's token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    #[serde(default)]
    pub backend: StateBackend,
    /// The state database (postgres only). Never the gateway's own database:
    /// that is what backups, the guard and `--restore-db` touch.
    pub url: Option<String>,
    /// How long the lease lasts unless renewed (a third of it between renewals).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// The fleet's name in the state database; by default derived from the
    /// fleet CA, so every inventory of one fleet names it alike.
    pub fleet: Option<String>,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            backend: StateBackend::File,
            url: None,
            lease: default_lease(),
            fleet: None,
        }
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    #[default]
    File,
    Postgres,
}

/// `[tls]`: the coordinator's client identity and the fleet CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[coordinator]`: how the coordinator talks to agents and where it keeps state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// Rollout journals, the fleet lock, copies of backups.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Agents called at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one read-only call (Hello, one health report).
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Retries of a call that failed to connect or timed out (backoff between).
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// HTTP/2 pings on an agent connection, and how long one may go
    /// unanswered: a connection to an agent cut off without a FIN or RST (a
    /// partition) fails within their sum instead of hanging a step.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        CoordinatorSettings {
            state_dir: default_state_dir(),
            concurrency: default_concurrency(),
            connect_timeout: default_connect_timeout(),
            call_timeout: default_call_timeout(),
            retries: default_retries(),
            keepalive: default_keepalive(),
            keepalive_timeout: default_keepalive_timeout(),
        }
    }
}

/// `[policy]`: how a rollout proceeds. Command-line flags override it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// DPs per batch after the canary: a count ("2") or a share ("25%").
    #[serde(default = "default_batch")]
    pub batch: BatchSize,
    /// DPs in the first (canary) batch.
    #[serde(default = "default_canary")]
    pub canary: usize,
    /// How long a host, and then its whole batch, must stay healthy.
    #[serde(default = "default_min_healthy", with = "humantime_serde")]
    pub min_healthy: Duration,
    /// Failed DPs that may be quarantined before the rollout halts.
    #[serde(default)]
    pub max_failures: usize,
    /// How long a drain waits for connections to finish.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a started gateway may take to become healthy.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// How long an agent may stay silent (no health report, no step progress)
    /// before the rollout treats it as lost and halts.
    #[serde(default = "default_agent_silence", with = "humantime_serde")]
    pub agent_silence: Duration,
    /// DPs that must stay in rotation while a batch is out, in the fleet and
    /// in each gateway group: a count ("1") or a share ("50%"). A plan whose
    /// canary or batch would leave fewer is blocked; 0 allows an outage.
    #[serde(default)]
    pub min_in_service: InService,
    /// The host label that names a DP's gateway group.
    #[serde(default = "default_group_label")]
    pub group_label: String,
    /// When a CP upgrade is rehearsed on a scratch copy of the database
    /// first: "always", "when-migrating" (a hop's release migrates the
    /// database, as its catalog entry says) or "never".
    #[serde(default)]
    pub rehearse: Rehearse,
}

/// `[policy] rehearse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rehearse {
    Always,
    #[default]
    WhenMigrating,
    Never,
    /// `upgrade --no-rehearse`: never, and the journal says why.
    #[serde(skip_deserializing)]
    SkippedByFlag,
}

impl Rehearse {
    pub fn as_str(self) -> &'static str {
        match self {
            Rehearse::Always => "always",
            Rehearse::WhenMigrating => "when-migrating",
            Rehearse::Never => "never",
            Rehearse::SkippedByFlag => "skipped (--no-rehearse)",
        }
    }

    /// As journalled; an unknown text (a newer coordinator's) reads as the
    /// default.
    pub fn parse_snap(s: &str) -> Rehearse {
        [
            Rehearse::Always,
            Rehearse::WhenMigrating,
            Rehearse::Never,
            Rehearse::SkippedByFlag,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .unwrap_or_default()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            batch: default_batch(),
            canary: default_canary(),
            min_healthy: default_min_healthy(),
            max_failures: 0,
            drain_timeout: default_drain_timeout(),
            health_timeout: default_health_timeout(),
            agent_silence: default_agent_silence(),
            min_in_service: InService::default(),
            group_label: default_group_label(),
            rehearse: Rehearse::default(),
        }
    }
}

/// `[[hosts]]`: one gateway host and its agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique; the name in the agent's certificate.
    pub name: String,
    /// The agent's gRPC address.
    pub address: SocketAddr,
    pub role: Role,
    /// Free-form labels (zone, gateway group), shown and usable for ordering.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_state_dir() -> PathBuf {
    "rollgate-state".into()
}
fn default_concurrency() -> usize {
    32
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> usize {
    2
}
fn default_batch() -> BatchSize {
    BatchSize::Percent(25)
}
fn default_canary() -> usize {
    1
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_agent_silence() -> Duration {
    Duration::from_secs(5)
}
fn default_group_label() -> String {
    "group".into()
}

/// A checked inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    pub tls: TlsMaterial,
    /// The client TLS configuration every agent connection shares.
    pub fleet_tls: crate::fleet_tls::FleetTls,
    pub coordinator: CoordinatorSettings,
    pub policy: Policy,
    pub state: StateSettings,
    pub hosts: Vec<Host>,
    /// The fencing token of the lease this command holds (postgres state):
    /// every agent call carries it.
    pub fencing_token: Option<u64>,
    /// `hosts` by name: a rollout looks hosts up by name for every call
    /// and watch, and a scan of 10,000 hosts each time was quadratic.
    by_name: HashMap<String, usize>,
}

impl Inventory {
    /// Reads and checks `path` and loads the TLS files it names. Relative
    /// paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let err = |problem: String| InventoryError {
            file: path.to_path_buf(),
            problem,
        };
        let (text, base) = rollgate::tomlerr::read_file(path).map_err(err)?;
        let parsed = parse(&text, &base).map_err(err)?;
        let tls = TlsMaterial::load(&parsed.tls.ca, &parsed.tls.cert, &parsed.tls.key)
            .map_err(|e| err(format!("key `tls`: {e}")))?;
        let fleet_tls =
            crate::fleet_tls::FleetTls::new(&tls).map_err(|e| err(format!("key `tls`: {e}")))?;
        Ok(Inventory {
            path: path.to_path_buf(),
            tls,
            fleet_tls,
            coordinator: parsed.coordinator,
            policy: parsed.policy,
            state: parsed.state,
            by_name: parsed
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), i))
                .collect(),
            hosts: parsed.hosts,
            fencing_token: None,
        })
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        let i = *self.by_name.get(name)?;
        self.hosts.get(i).filter(|h| h.name == name)
    }

    pub fn by_role(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.role == role)
    }
}

/// Parses and checks inventory text; relative paths are joined to `base`.
pub(crate) fn parse(text: &str, base: &Path) -> Result<RawInventory, String> {
    let mut raw: RawInventory =
        toml::from_str(text).map_err(|e| rollgate::tomlerr::describe(text, &e))?;
    let abs = |p: &Path| {
        if p.is_relative() {
            base.join(p)
        } else {
            p.to_path_buf()
        }
    };
    raw.tls = TlsFiles {
        ca: abs(&raw.tls.ca),
        cert: abs(&raw.tls.cert),
        key: abs(&raw.tls.key),
    };
    raw.coordinator.state_dir = abs(&raw.coordinator.state_dir);
    validate(&raw.hosts, &raw.coordinator, &raw.policy)?;
    validate_state(&raw.state)?;
    Ok(raw)
}

fn validate_state(s: &StateSettings) -> Result<(), String> {
    match (s.backend, &s.url) {
        (StateBackend::Postgres, None) => {
            return Err(
                "key `state.url`: backend = \"postgres\" needs the state database's URL".into(),
            );
        }
        (StateBackend::File, Some(_)) => {
            return Err("key `state.url`: only for backend = \"postgres\"".into());
        }
        _ => {}
    }
    if s.lease < Duration::from_secs(3) {
        return Err("key `state.lease`: at least 3s (it is renewed every third of it)".into());
    }
    if let Some(f) = &s.fleet
        && (f.is_empty() || f.len() > 128)
    {
        return Err("key `state.fleet`: 1 to 128 characters".into());
    }
    Ok(())
}

fn validate(hosts: &[Host], c: &CoordinatorSettings, p: &Policy) -> Result<(), String> {
    if hosts.is_empty() {
        return Err("key `hosts`: the inventory lists no hosts".into());
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, h) in hosts.iter().enumerate() {
        check_host_name(&h.name).map_err(|e| format!("key `hosts[{i}].name`: {e}"))?;
        if !names.insert(h.name.as_str()) {
            return Err(format!(
                "key `hosts[{i}].name`: host {:?} is listed twice",
                h.name
            ));
        }
        if !addrs.insert(h.address) {
            return Err(format!(
                "key `hosts[{i}].address`: {} is already the address of another host",
                h.address
            ));
        }
    }
    if c.concurrency == 0 {
        return Err("key `coordinator.concurrency`: must be at least 1".into());
    }
    if c.call_timeout.is_zero() || c.connect_timeout.is_zero() {
        return Err("key `coordinator.call_timeout`: timeouts must be above zero".into());
    }
    if c.keepalive.is_zero() || c.keepalive_timeout.is_zero() {
        return Err(
            "key `coordinator.keepalive`: keepalive and keepalive_timeout must be above zero"
                .into(),
        );
    }
    if p.canary == 0 {
        return Err("key `policy.canary`: the canary batch needs at least 1 host".into());
    }
    if p.agent_silence < Duration::from_millis(500) {
        return Err("key `policy.agent_silence`: must be at least 500ms".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_inventory_in_deploy_is_valid() {
        let inv = parse(
            include_str!("../deploy/fleet.toml"),
            Path::new("/etc/rollgate"),
        )
        .unwrap();
        assert_eq!(inv.hosts.len(), 3);
        assert_eq!(inv.tls.ca, Path::new("/etc/rollgate/certs/ca.pem"));
        assert_eq!(inv.policy.batch, BatchSize::Percent(25));
    }

    #[test]
    fn errors_name_the_key() {
        let base = include_str!("../deploy/fleet.toml");
        let cases = [
            (
                base.replace("name = \"dp-2\"", "name = \"dp-1\""),
                "hosts[2].name",
            ),
            (
                base.replace("10.0.2.12:7443", "10.0.1.11:7443"),
                "hosts[2].address",
            ),
            (base.replace("batch = \"25%\"", "batch = \"0%\""), "batch"),
            (
                base.replace("role = \"cp\"", "role = \"master\""),
                "unknown variant",
            ),
            (
                base.replace("canary = 1", "canary = 1\ncanary_size = 2"),
                "unknown field `canary_size`",
            ),
            (
                base.replace("address = \"10.0.0.10:7443\"", "address = \"nowhere\""),
                "socket address",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text, Path::new("/")).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }
}
