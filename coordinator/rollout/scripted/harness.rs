//! Builders for driver runs against a `ScriptedFleet`: a plan, its
//! catalog, a state dir, and what the run left behind.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollgate::catalog::{Artifact, Catalog, Release};
use rollgate::role::Role;
use rollgate::version::Version;
use tokio::sync::watch;

use super::{Call, ScriptedFleet, Step};
use crate::batch::BatchSize;
use crate::output::Output;
use crate::report::Reporter;
use crate::rollout::driver::Driver;
use crate::rollout::log::{HostMark, Outcome, Record, RolloutLog, now_ms};
use crate::rollout::spec::{HostPlan, Kind, PolicySnap, RolloutSpec};
use crate::rollout::steps::Ctx;
use rollgate::outcome::{Failure, FailureCode};

pub(super) const RID: &str = "r-scripted";
/// A driver that has not ended by then is stuck: fail instead of hanging.
pub(super) const RUN_DEADLINE: Duration = Duration::from_secs(30);

pub(super) fn v(s: &str) -> Version {
    s.parse().expect("a version")
}

/// A rollout plan and its catalog: `cps` CPs and `dps` DPs, all on 3.3.0,
/// to 3.4.0; canary 1, batch 2, no failure budget, short holds.
pub(super) struct Setup {
    pub spec: RolloutSpec,
    pub catalog: Catalog,
}

pub(super) fn setup(cps: usize, dps: usize) -> Setup {
    let host = |name: String, role| HostPlan {
        name,
        role,
        from: v("3.3.0"),
        group: None,
        drained: false,
        method: Default::default(),
        stage_from: false,
    };
    let hosts = (1..=cps)
        .map(|i| host(format!("cp-{i}"), Role::Cp))
        .chain((1..=dps).map(|i| host(format!("dp-{i}"), Role::Dp)))
        .collect();
    let spec = RolloutSpec {
        id: RID.into(),
        kind: Kind::Upgrade,
        inventory: "/scripted/fleet.toml".into(),
        catalog: Some("/scripted/releases.toml".into()),
        created_ms: now_ms(),
        target: v("3.4.0"),
        hops: vec![v("3.4.0")],
        hosts,
        policy: PolicySnap {
            batch: "2".into(),
            canary: 1,
            min_healthy_ms: 50,
            max_failures: 0,
            drain_timeout_ms: 1_000,
            health_timeout_ms: 1_000,
            agent_silence_ms: 2_000,
            min_in_service: "1".into(),
            rehearse: "when-migrating".into(),
        },
        backup_id: (cps > 0).then(|| RID.to_string()),
    };
    Setup {
        spec,
        catalog: Catalog {
            path: "/scripted/releases.toml".into(),
            releases: Vec::new(),
            artifact_dirs: vec!["/scripted".into()],
        },
    }
    .hops(&["3.4.0"])
}

impl Setup {
    pub fn hops(mut self, hops: &[&str]) -> Self {
        self.spec.hops = hops.iter().map(|h| v(h)).collect();
        self.spec.target = self.spec.hops.last().cloned().expect("a hop");
        self.catalog.releases = ["3.3.0"]
            .iter()
            .chain(hops)
            .map(|s| Release {
                version: v(s),
                artifact: Artifact::File(format!("/scripted/gw-{s}.tar.gz").into()),
                sha256: "0".repeat(64),
                size: 1,
                breaking_changes: Vec::new(),
                dp_min: None,
                migrates: false,
                schema_version: None,
                image: None,
                deb: None,
                unpacked_size: None,
            })
            .collect();
        self
    }
    pub fn from(mut self, host: &str, version: &str) -> Self {
        let h = self.spec.hosts.iter_mut().find(|h| h.name == host);
        h.expect("a planned host").from = v(version);
        self
    }
    /// The plan saw `host` out of rotation.
    pub fn drained(mut self, host: &str) -> Self {
        let h = self.spec.hosts.iter_mut().find(|h| h.name == host);
        h.expect("a planned host").drained = true;
        self
    }
    pub fn canary(mut self, n: usize) -> Self {
        self.spec.policy.canary = n;
        self
    }
    pub fn batch(mut self, b: &str) -> Self {
        assert!(b.parse::<BatchSize>().is_ok(), "batch {b}");
        self.spec.policy.batch = b.into();
        self
    }
    pub fn max_failures(mut self, n: usize) -> Self {
        self.spec.policy.max_failures = n;
        self
    }
    pub fn min_healthy_ms(mut self, ms: u64) -> Self {
        self.spec.policy.min_healthy_ms = ms;
        self
    }
    pub fn silence_ms(mut self, ms: u64) -> Self {
        self.spec.policy.agent_silence_ms = ms;
        self
    }

    pub fn dps(&self) -> Vec<String> {
        self.spec.dps().iter().map(|h| h.name.clone()).collect()
    }
    pub fn names(&self) -> Vec<String> {
        self.spec.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// Agents with every host on its planned `from` release.
    pub fn fleet(&self) -> ScriptedFleet {
        ScriptedFleet::new(
            self.spec
                .hosts
                .iter()
                .map(|h| (h.name.as_str(), h.role, h.from.clone())),
        )
    }

    /// Creates the rollout's journal in a new state dir and runs it.
    pub async fn run(&self, fleet: &ScriptedFleet) -> Ran {
        self.run_with(fleet, watch::channel(false)).await
    }

    pub async fn run_with(
        &self,
        fleet: &ScriptedFleet,
        interrupt: (watch::Sender<bool>, watch::Receiver<bool>),
    ) -> Ran {
        let dir = state_dir();
        let log = RolloutLog::create(dir.path(), self.spec.clone()).expect("a journal");
        drive(log, &self.catalog, fleet, dir, interrupt).await
    }
}

/// A state dir for one run. The journal fsyncs every record; on a disk the
/// hundred-odd resumes of the resume tests spend most of their time waiting
/// for fsync, which they do not test, so tmpfs is used where there is one.
pub(super) fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp dir")
}

/// How a driver run ended, and what it left behind.
pub(super) struct Ran {
    pub outcome: Outcome,
    pub reason: String,
    pub records: Vec<Record>,
    pub journal: PathBuf,
    /// When the driver returned.
    pub ended_at: Instant,
    pub state: tempfile::TempDir,
    /// The hosts the closing report would take from their watch.
    pub settled: std::collections::HashMap<String, crate::fleet::Health>,
}

impl Ran {
    pub fn expect(&self, outcome: Outcome, reason_has: &[&str]) {
        assert_eq!(self.outcome, outcome, "{}", self.reason);
        for part in reason_has {
            assert!(
                self.reason.contains(part),
                "{part:?} not in {:?}",
                self.reason
            );
        }
        assert!(
            matches!(self.records.last(), Some(Record::Ended { outcome: o, .. }) if *o == outcome),
            "the journal ends with the outcome"
        );
    }

    /// The records that are not steps, by name: `backup_copy`,
    /// `baseline:<hop>`, `quarantined:<host>`, `left_drained:<host>`.
    pub fn notes(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::BackupCopy { .. } => Some("backup_copy".to_string()),
                Record::Baseline { hop, .. } => Some(format!("baseline:{hop}")),
                Record::Host { host, mark, .. } => Some(match mark {
                    HostMark::Quarantined { .. } => format!("quarantined:{host}"),
                    HostMark::LeftDrained { .. } => format!("left_drained:{host}"),
                }),
                _ => None,
            })
            .collect()
    }
}

/// Runs a driver over `log` (new or resumed) to its end.
pub(super) async fn drive(
    log: RolloutLog,
    catalog: &Catalog,
    fleet: &ScriptedFleet,
    state: tempfile::TempDir,
    // The sender lives as long as the run: once it is dropped, `changed()`
    // is ready at once and the driver's select loops would spin.
    (_keep, interrupt): (watch::Sender<bool>, watch::Receiver<bool>),
) -> Ran {
    let journal = log.file().expect("a file journal").to_path_buf();
    let ctx = Arc::new(Ctx::new(
        Arc::new(fleet.clone()),
        log,
        Arc::new(Reporter::new(Output::Json)),
    ));
    let mut driver = Driver::new(
        ctx.clone(),
        Some(catalog.clone()),
        state.path().to_path_buf(),
        interrupt,
    );
    let (outcome, reason) = tokio::time::timeout(RUN_DEADLINE, driver.upgrade())
        .await
        .expect("the rollout ends");
    let ended_at = Instant::now();
    let settled = driver.settled_reports().await;
    let records = ctx.log().records.clone();
    Ran {
        outcome,
        reason,
        records,
        journal,
        ended_at,
        state,
        settled,
    }
}

pub(super) fn health_gate_failed(old: &str) -> Failure {
    Failure {
        code: FailureCode::HealthGateFailed,
        message: "the new release did not pass the health gate".into(),
        detail: "ready answered 503 for 1s".into(),
        reverted: true,
        active_version: Some(v(old)),
        gateway_healthy: true,
    }
}

/// The gateway is back on the old release but does not come up healthy.
pub(super) fn revert_unhealthy(old: &str) -> Failure {
    Failure {
        gateway_healthy: false,
        detail: "reverted; the old release does not answer /status/ready".into(),
        ..health_gate_failed(old)
    }
}

/// The first call of `step` on `host`.
pub(super) fn call<'a>(calls: &'a [Call], host: &str, step: Step) -> &'a Call {
    calls
        .iter()
        .find(|c| c.host == host && c.step == step && !c.replayed)
        .unwrap_or_else(|| panic!("no {step:?} call to {host}"))
}

pub(super) fn ended(c: &Call) -> Instant {
    c.ended
        .unwrap_or_else(|| panic!("{:?} on {} never returned", c.step, c.host))
}

/// Checks that the DPs went in exactly `batches`: the hosts of a batch
/// worked side by side, and a batch started only after every host of the
/// one before was undrained and the batch had held healthy.
pub(super) fn assert_batches(fleet: &ScriptedFleet, batches: &[Vec<String>], hold: Duration) {
    let calls = fleet.calls();
    let span = |h: &str| {
        (
            call(&calls, h, Step::Drain).started,
            ended(call(&calls, h, Step::Undrain)),
        )
    };
    let drained: BTreeSet<&str> = calls
        .iter()
        .filter(|c| c.step == Step::Drain)
        .map(|c| c.host.as_str())
        .collect();
    let planned: BTreeSet<&str> = batches.iter().flatten().map(String::as_str).collect();
    assert_eq!(drained, planned, "the DPs that were drained");
    let mut last_end: Option<Instant> = None;
    for (b, hosts) in batches.iter().enumerate() {
        let spans: Vec<(Instant, Instant)> = hosts.iter().map(|h| span(h)).collect();
        let first_start = spans.iter().map(|s| s.0).min().expect("a host");
        let last_start = spans.iter().map(|s| s.0).max().expect("a host");
        let first_end = spans.iter().map(|s| s.1).min().expect("a host");
        assert!(
            last_start < first_end,
            "batch {b} {hosts:?}: its hosts did not work side by side"
        );
        if let Some(prev) = last_end {
            assert!(
                first_start >= prev + hold,
                "batch {b} {hosts:?} started {:?} after the previous batch ended; the hold is {hold:?}",
                first_start.saturating_duration_since(prev)
            );
        }
        last_end = Some(spans.iter().map(|s| s.1).max().expect("a host"));
    }
}

pub(super) fn begun_ops(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Begin { op, .. } => Some(op.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn ended_ops(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::End { op, .. } => Some(op.clone()),
            _ => None,
        })
        .collect()
}
