//! What a rollout is asked to do, fixed when it is created and journalled
//! first, so `resume` replays exactly the same plan whatever changed since.

use std::path::PathBuf;
use std::time::Duration;

use rollgate::role::Role;
use rollgate::version::Version;
use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchSize};
use crate::inventory::Policy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// Forward to `target` through `hops`.
    Upgrade,
    /// Back to each host's `from` version, after rollout `of`.
    Rollback { of: String, restore_db: bool },
    /// A verified CP backup, nothing else (`rollgate backup`).
    Backup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub role: Role,
    /// The release the host had when the rollout was planned.
    pub from: Version,
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
        }
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
