//! `rollgate status`: one row per host, asked of every agent at once.

use std::collections::BTreeMap;

use futures::StreamExt;
use rollgate::compat::{self, Compat};
use rollgate::lb::LbState;
use rollgate::method::Method;
use rollgate::role::Role;
use rollgate::version::Version;
use serde::Serialize;
use tracing::Instrument;

use crate::Failure;
use crate::cli::StatusArgs;
use crate::client::{Agent, CallPolicy, Hello};
use crate::inventory::{Host, Inventory};
use crate::output::{Output, print_json, print_table, yes_no};

/// One host as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub role: Role,
    pub address: String,
    /// The inventory's labels (zone, gateway group, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The rollgate-agent version on the host.
    pub agent_version: Option<String>,
    /// The release the host's install root points at.
    pub version: Option<String>,
    /// The version the running gateway reports.
    pub running_version: Option<String>,
    /// How the host installs releases.
    pub method: Option<Method>,
    /// The version the install method says runs: the running container's
    /// image tag (compose), dpkg's version (deb), the `current` release.
    pub artifact_version: Option<String>,
    /// The pinned, artifact and reported versions disagree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    pub healthy: Option<bool>,
    /// Where the host stands towards its load balancer (as its agent says).
    pub load_balancer: Option<LbState>,
    /// DPs: compatible with every CP's version; CPs: true once their version
    /// is known. None when it cannot be judged.
    pub compatible: Option<bool>,
    pub reachable: bool,
    /// Why the host is unreachable, or what is inconsistent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a host is incompatible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What one agent answered.
struct Probe {
    host: Host,
    result: Result<(Hello, rollgate::pb::HealthReport), String>,
}

async fn probe(host: &Host, inv: &Inventory, policy: &CallPolicy) -> Probe {
    let result = async {
        let agent = Agent::connect_retrying(host, inv, policy).await?;
        agent.hello_with_health().await
    }
    .instrument(tracing::info_span!("status", host = %host.name, addr = %host.address))
    .await
    .map_err(|e| {
        tracing::warn!(host = %host.name, error = %e, "agent not reachable");
        e.to_string()
    });
    Probe {
        host: host.clone(),
        result,
    }
}

/// Asks every agent (at most `coordinator.concurrency` at once) and judges
/// compatibility from the CP versions found.
pub async fn collect(inv: &Inventory) -> Vec<HostStatus> {
    let policy = CallPolicy::from_inventory(inv);
    let probes: Vec<Probe> = futures::stream::iter(inv.hosts.iter())
        .map(|h| probe(h, inv, &policy))
        .buffered(inv.coordinator.concurrency)
        .collect()
        .await;
    let cp_versions: Vec<Version> = probes
        .iter()
        .filter(|p| p.host.role == Role::Cp)
        .filter_map(|p| p.result.as_ref().ok()?.0.installed.clone())
        .collect();
    probes.into_iter().map(|p| row(p, &cp_versions)).collect()
}

fn row(p: Probe, cp_versions: &[Version]) -> HostStatus {
    let mut s = HostStatus {
        name: p.host.name.clone(),
        role: p.host.role,
        address: p.host.address.to_string(),
        labels: p.host.labels.clone(),
        agent_version: None,
        version: None,
        running_version: None,
        method: None,
        artifact_version: None,
        mismatch: None,
        healthy: None,
        load_balancer: None,
        compatible: None,
        reachable: false,
        error: None,
        reason: None,
    };
    let (hello, health) = match p.result {
        Ok(ok) => ok,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    s.reachable = true;
    s.agent_version = Some(hello.agent_version.clone());
    s.version = hello.installed.as_ref().map(ToString::to_string);
    s.running_version = Some(health.running_version).filter(|v| !v.is_empty());
    s.method = Some(hello.method);
    s.artifact_version = Some(health.artifact_version).filter(|v| !v.is_empty());
    s.mismatch = mismatch(
        s.version.as_deref(),
        s.artifact_version.as_deref(),
        s.running_version.as_deref(),
    );
    s.healthy = Some(health.healthy);
    s.load_balancer = Some(rollgate::convert::lb_from_wire(health.drain_state));
    let (compatible, reason) = judge(p.host.role, hello.installed.as_ref(), cp_versions);
    s.compatible = compatible;
    s.reason = reason;
    s
}

/// What disagrees among the version the host pins (installed), the one its
/// artifact is (container image, package) and the one the gateway reports.
pub fn mismatch(
    installed: Option<&str>,
    artifact: Option<&str>,
    running: Option<&str>,
) -> Option<String> {
    let same = |a: &str, b: &str| match (a.parse::<Version>(), b.parse::<Version>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    let mut out = Vec::new();
    if let (Some(i), Some(a)) = (installed, artifact)
        && !same(i, a)
    {
        out.push(format!("pins {i} but its artifact is {a}"));
    }
    if let (Some(a), Some(r)) = (artifact, running)
        && !same(a, r)
    {
        out.push(format!("the artifact is {a} but the gateway reports {r}"));
    }
    (!out.is_empty()).then(|| format!("VERSION MISMATCH: {}", out.join("; ")))
}

/// The compatibility column. A DP must suit every CP, since during a CP
/// upgrade it may talk to any of them.
pub fn judge(
    role: Role,
    version: Option<&Version>,
    cps: &[Version],
) -> (Option<bool>, Option<String>) {
    let Some(v) = version else {
        return (None, Some("no release installed".into()));
    };
    if role == Role::Cp {
        return (Some(true), None);
    }
    if cps.is_empty() {
        return (None, Some("no CP version known".into()));
    }
    for cp in cps {
        if let Compat::Incompatible(why) = compat::dp_against_cp(cp, v, None) {
            return (Some(false), Some(why));
        }
    }
    (Some(true), None)
}

/// `rollgate status`: the table (or JSON document); exit 1 when a host is
/// unreachable.
pub async fn run(a: StatusArgs) -> Result<(), Failure> {
    let inv = crate::load_inventory(&a.inventory, a.state_dir.as_deref())?;
    let rows = collect(&inv).await;
    // The fleet lease (postgres state): who is changing the fleet, from any
    // machine. Not knowing it is said, and is not a failure of `status`.
    let lease = match inv.state.backend {
        crate::inventory::StateBackend::File => None,
        crate::inventory::StateBackend::Postgres => Some(crate::lease::current(&inv).await),
    };
    let lease_json = match &lease {
        None => serde_json::Value::Null,
        Some(Ok(h)) => serde_json::json!({ "held": h }),
        Some(Err(e)) => serde_json::json!({ "error": e }),
    };
    match a.output {
        Output::Json => print_json(&serde_json::json!({ "hosts": rows, "lease": lease_json })),
        Output::Text => print_table(
            &[
                "HOST",
                "ROLE",
                "METHOD",
                "VERSION",
                "ARTIFACT",
                "GATEWAY",
                "HEALTHY",
                "LOAD BALANCER",
                "COMPATIBLE",
                "REACHABLE",
                "NOTE",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.role.to_string(),
                        r.method.map_or_else(|| "-".into(), |m| m.to_string()),
                        r.version.clone().unwrap_or_else(|| "-".into()),
                        r.artifact_version.clone().unwrap_or_else(|| "-".into()),
                        r.running_version.clone().unwrap_or_else(|| "-".into()),
                        yes_no(r.healthy),
                        r.load_balancer
                            .map_or_else(|| "-".into(), |l| l.to_string()),
                        yes_no(r.compatible),
                        yes_no(Some(r.reachable)),
                        r.error
                            .clone()
                            .or_else(|| r.mismatch.clone())
                            .or_else(|| r.reason.clone())
                            .unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    if a.output == Output::Text {
        match &lease {
            None => {}
            Some(Ok(None)) => println!("\nfleet lease: free"),
            Some(Ok(Some(h))) => println!(
                "\nfleet lease: held by {} (pid {}) running `rollgate {}`, token {}, renewed {:.1}s ago, expires in {:.1}s",
                h.holder, h.pid, h.command, h.token, h.renewed_secs_ago, h.expires_in_secs
            ),
            Some(Err(e)) => println!("\nfleet lease: unknown: {e}"),
        }
    }
    let down: Vec<&str> = rows
        .iter()
        .filter(|r| !r.reachable)
        .map(|r| r.name.as_str())
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!("unreachable: {}", down.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn flags_a_version_mismatch() {
        assert_eq!(mismatch(Some("3.4.0"), Some("3.4.0"), Some("3.4.0")), None);
        assert_eq!(mismatch(Some("3.4.0"), None, None), None);
        let m = mismatch(Some("3.4.0"), Some("3.3.0"), Some("3.3.0")).unwrap();
        assert!(m.contains("pins 3.4.0 but its artifact is 3.3.0"), "{m}");
        let m = mismatch(Some("3.4.0"), Some("3.4.0"), Some("3.3.0")).unwrap();
        assert!(m.contains("gateway reports 3.3.0"), "{m}");
    }

    #[test]
    fn judges_dps_against_every_cp() {
        let cps = [v("3.4.0"), v("3.3.0")];
        assert_eq!(judge(Role::Dp, Some(&v("3.3.0")), &cps).0, Some(true));
        assert_eq!(
            judge(Role::Dp, Some(&v("3.4.0")), &cps).0,
            Some(false),
            "newer than one CP"
        );
        assert_eq!(judge(Role::Dp, Some(&v("3.3.0")), &[]).0, None);
        assert_eq!(judge(Role::Dp, None, &cps).0, None);
        assert_eq!(judge(Role::Cp, Some(&v("3.4.0")), &cps).0, Some(true));
    }
}
