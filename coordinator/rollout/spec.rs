//! What a rollout is asked to do, fixed when it is created and journalled
//! first, so `resume` replays exactly the same plan whatever changed since.

use std::path::PathBuf;
use std::time::Duration;

use rollgate::method::Method;
use rollgate::role::Role;
use rollgate::version::Version;
use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchSize, InService};
use crate::inventory::{Policy, Rehearse};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// Forward to `target` through `hops`.
    Upgrade,
    /// Back to each host's `from` version, after rollout `of`.
    Rollback { of: String, restore_db: bool },
    /// A verified CP backup, nothing else (`rollgate backup`).
    Backup,
    /// The CP hops to `target` rehearsed on a scratch copy of the database
    /// (`rollgate rehearse`); production is not changed.
    Rehearse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub role: Role,
    /// The release the host had when the rollout was planned.
    pub from: Version,
    /// The DP's gateway group (the inventory label `policy.group_label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Out of its load balancer when the rollout was planned (left there by
    /// an earlier rollout that halted): the rollout puts it back first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// How the host installs releases: which artifact it is sent.
    #[serde(default, skip_serializing_if = "is_tarball")]
    pub method: Method,
    /// The host does not keep its own release (`from`) as an artifact it
    /// can switch back to (an image loaded by hand, a package installed
    /// without rollgate): it is staged first, so a revert and a rollback
    /// need no transfer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stage_from: bool,
}

fn is_tarball(m: &Method) -> bool {
    *m == Method::Tarball
}

/// The policy in force, with durations in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySnap {
    pub batch: String,
    pub canary: usize,
    pub min_healthy_ms: u64,
    pub max_failures: usize,
    pub drain_timeout_ms: u64,
    pub health_timeout_ms: u64,
    pub agent_silence_ms: u64,
    /// `policy.min_in_service` as written ("1", "50%"); journals older than
    /// it read as "1", the default.
    #[serde(default = "one")]
    pub min_in_service: String,
    /// `policy.rehearse` as it applies to this rollout (journals older than
    /// it read as the default, "when-migrating").
    #[serde(default = "when_migrating")]
    pub rehearse: String,
}

fn when_migrating() -> String {
    Rehearse::WhenMigrating.as_str().into()
}

fn one() -> String {
    "1".into()
}

impl PolicySnap {
    pub fn from_policy(p: &Policy) -> Self {
        PolicySnap {
            batch: p.batch.to_string(),
            canary: p.canary,
            min_healthy_ms: p.min_healthy.as_millis() as u64,
            max_failures: p.max_failures,
            drain_timeout_ms: p.drain_timeout.as_millis() as u64,
            health_timeout_ms: p.health_timeout.as_millis() as u64,
            agent_silence_ms: p.agent_silence.as_millis() as u64,
            min_in_service: p.min_in_service.to_string(),
            rehearse: p.rehearse.as_str().into(),
        }
    }

    pub fn rehearse(&self) -> Rehearse {
        Rehearse::parse_snap(&self.rehearse)
    }

    pub fn min_healthy(&self) -> Duration {
        Duration::from_millis(self.min_healthy_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }
    pub fn agent_silence(&self) -> Duration {
        Duration::from_millis(self.agent_silence_ms)
    }
    pub fn batch_size(&self) -> BatchSize {
        self.batch.parse().unwrap_or(BatchSize::Count(1))
    }
    pub fn min_in_service(&self) -> InService {
        self.min_in_service.parse().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub id: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub inventory: PathBuf,
    pub catalog: Option<PathBuf>,
    pub created_ms: i64,
    pub target: Version,
    /// Versions installed in order (one for a patch or adjacent minor).
    pub hops: Vec<Version>,
    pub hosts: Vec<HostPlan>,
    pub policy: PolicySnap,
    /// The CP backup this rollout takes (upgrade) or restores (rollback).
    pub backup_id: Option<String>,
}

impl RolloutSpec {
    pub fn cps(&self) -> Vec<&HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Cp).collect()
    }

    #[cfg(test)]
    pub fn dps(&self) -> Vec<&HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Dp).collect()
    }

    /// The releases host `h` is sent, in order: its own release first when
    /// it keeps none as an artifact (`stage_from`: a failed gate's revert and
    /// a rollback switch back to it), then every hop above where it started.
    pub fn staged_for<'a>(&'a self, h: &'a HostPlan) -> Vec<&'a Version> {
        let above: Vec<&Version> = self.hops.iter().filter(|hop| h.from < **hop).collect();
        let own = (h.stage_from && !above.is_empty()).then_some(&h.from);
        own.into_iter().chain(above).collect()
    }

    /// Every release the rollout needs from its catalog: the hops, and the
    /// own releases hosts stage first.
    pub fn catalog_versions(&self) -> Vec<Version> {
        let mut v = self.hops.clone();
        for h in &self.hosts {
            for r in self.staged_for(h) {
                if !v.contains(r) {
                    v.push(r.clone());
                }
            }
        }
        v
    }

    /// Hosts of `role` that still need `hop` (they started below it).
    pub fn needing(&self, role: Role, hop: &Version) -> Vec<&HostPlan> {
        self.hosts
            .iter()
            .filter(|h| h.role == role && h.from < *hop)
            .collect()
    }

    /// The DP batches of a hop: canary first, then the batch size.
    pub fn batches(&self, hop: &Version) -> Vec<Vec<String>> {
        let names: Vec<String> = self
            .needing(Role::Dp, hop)
            .iter()
            .map(|h| h.name.clone())
            .collect();
        batch::cut(&names, self.policy.canary, self.policy.batch_size())
    }

    /// Every batch of every hop that would leave fewer DPs in rotation than
    /// the policy's `min_in_service`, in the fleet or in a gateway group.
    pub fn in_service_violations(&self) -> Vec<String> {
        let dps: Vec<batch::Dp> = self
            .hosts
            .iter()
            .filter(|h| h.role == Role::Dp)
            .map(|h| batch::Dp {
                name: &h.name,
                group: h.group.as_deref(),
            })
            .collect();
        self.hops
            .iter()
            .flat_map(|hop| {
                batch::in_service_violations(
                    &dps,
                    &self.batches(hop),
                    self.policy.min_in_service(),
                    &format!("hop {hop}:"),
                )
            })
            .collect()
    }
}

/// A new rollout id: `r-<UTC time>-<random>`, sortable by creation.
pub fn new_id(prefix: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let rand = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    format!("{prefix}-{stamp}-{:04x}", rand & 0xffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_ids_pass_the_rollout_id_check() {
        for prefix in rollgate::ids::ROLLOUT_PREFIXES {
            let id = super::new_id(prefix);
            rollgate::ids::check_rollout_id(&id).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
