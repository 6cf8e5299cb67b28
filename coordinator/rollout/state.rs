//! Where each host of a rollout stands, folded from the rollout journal: a
//! pure function of the records, so `resume`, `show` and the driver agree on
//! it, and a test can check it on any journal.

use std::collections::BTreeMap;

use serde::Serialize;

use super::log::{HostMark, Record};

/// A host's state in one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostState {
    /// No step of it has begun.
    Pending,
    /// A step began and its end is not journalled: running, or cut off (a
    /// resume re-attaches to it by operation id).
    InStep { step: String, op: String },
    /// Its last step ended well.
    Done { step: String },
    /// Its last step failed.
    Failed { step: String, reason: String },
    /// Failed within the failure budget: left on its old release, the
    /// rollout went on without it.
    Quarantined { step: String, reason: String },
    /// A step failed and the host could not be put back in rotation.
    LeftDrained { step: String, reason: String },
}

impl HostState {
    #[cfg(test)]
    pub fn is_quarantined(&self) -> bool {
        matches!(self, HostState::Quarantined { .. })
    }
}

/// Folds a rollout's records into one state per host of its plan (hosts
/// named only in records are included too).
pub fn fold(records: &[Record]) -> BTreeMap<String, HostState> {
    let mut out: BTreeMap<String, HostState> = BTreeMap::new();
    for r in records {
        match r {
            Record::Created { spec, .. } => {
                for h in &spec.hosts {
                    out.insert(h.name.clone(), HostState::Pending);
                }
            }
            Record::Begin { op, host, step, .. } => {
                let next = HostState::InStep {
                    step: step.clone(),
                    op: op.clone(),
                };
                out.insert(host.clone(), next);
            }
            Record::End {
                host, step, result, ..
            } => {
                let next = match result {
                    Ok(_) => HostState::Done { step: step.clone() },
                    Err(f) => HostState::Failed {
                        step: step.clone(),
                        reason: f.to_string(),
                    },
                };
                out.insert(host.clone(), next);
            }
            Record::Host { host, mark, .. } => {
                let next = match mark {
                    HostMark::Quarantined { step, reason } => HostState::Quarantined {
                        step: step.clone(),
                        reason: reason.clone(),
                    },
                    HostMark::LeftDrained { step, reason } => HostState::LeftDrained {
                        step: step.clone(),
                        reason: reason.clone(),
                    },
                };
                out.insert(host.clone(), next);
            }
            Record::BackupCopy { .. } | Record::Baseline { .. } | Record::Ended { .. } => {}
        }
    }
    out
}

/// The hosts quarantined so far: the definition `RolloutLog::quarantined`
/// keeps incrementally (the test below holds them equal).
#[cfg(test)]
pub fn quarantined(records: &[Record]) -> Vec<String> {
    fold(records)
        .into_iter()
        .filter(|(_, s)| s.is_quarantined())
        .map(|(h, _)| h)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rollout::log::{FORMAT, Outcome};
    use crate::rollout::spec::{HostPlan, Kind, PolicySnap, RolloutSpec};
    use rollgate::outcome::{Failure, FailureCode, StepOutput};
    use rollgate::role::Role;

    pub(crate) fn spec() -> RolloutSpec {
        let host = |name: &str, role| HostPlan {
            name: name.into(),
            role,
            from: "3.3.0".parse().unwrap(),
            group: None,
            drained: false,
            method: Default::default(),
            stage_from: false,
        };
        RolloutSpec {
            id: "r-20261130T105553Z-1a2b".into(),
            kind: Kind::Upgrade,
            inventory: "/f.toml".into(),
            catalog: None,
            created_ms: 0,
            target: "3.4.0".parse().unwrap(),
            hops: vec!["3.4.0".parse().unwrap()],
            hosts: vec![
                host("cp-1", Role::Cp),
                host("dp-1", Role::Dp),
                host("dp-2", Role::Dp),
                host("dp-3", Role::Dp),
                host("dp-4", Role::Dp),
            ],
            policy: PolicySnap::from_policy(&crate::inventory::Policy::default()),
            backup_id: None,
        }
    }

    fn begin(host: &str, step: &str) -> Record {
        Record::Begin {
            op: format!("r/{host}/{step}"),
            host: host.into(),
            step: step.into(),
            at_ms: 0,
        }
    }

    fn end(host: &str, step: &str, ok: bool) -> Record {
        Record::End {
            op: format!("r/{host}/{step}"),
            host: host.into(),
            step: step.into(),
            result: if ok {
                Ok(StepOutput::Undrain)
            } else {
                Err(Failure::new(FailureCode::HealthGateFailed, "bad"))
            },
            at_ms: 0,
        }
    }

    #[test]
    fn folds_each_host_to_where_its_last_record_left_it() {
        let records = vec![
            Record::Created {
                format: FORMAT,
                spec: Box::new(spec()),
            },
            begin("cp-1", "install"),
            end("cp-1", "install", true),
            begin("dp-1", "drain"),
            end("dp-1", "drain", true),
            begin("dp-1", "install"),
            end("dp-1", "install", false),
            Record::Host {
                host: "dp-1".into(),
                mark: HostMark::Quarantined {
                    step: "install".into(),
                    reason: "bad".into(),
                },
                at_ms: 0,
            },
            begin("dp-2", "drain"),
            begin("dp-3", "install"),
            end("dp-3", "install", false),
            Record::Host {
                host: "dp-3".into(),
                mark: HostMark::LeftDrained {
                    step: "install".into(),
                    reason: "bad".into(),
                },
                at_ms: 0,
            },
            Record::Ended {
                outcome: Outcome::Halted,
                reason: "x".into(),
                at_ms: 0,
            },
        ];
        let s = fold(&records);
        assert_eq!(
            s["cp-1"],
            HostState::Done {
                step: "install".into()
            }
        );
        assert!(s["dp-1"].is_quarantined());
        assert_eq!(
            s["dp-2"],
            HostState::InStep {
                step: "drain".into(),
                op: "r/dp-2/drain".into()
            }
        );
        assert!(matches!(s["dp-3"], HostState::LeftDrained { .. }));
        assert_eq!(s["dp-4"], HostState::Pending);
        assert_eq!(quarantined(&records), ["dp-1"]);
        // The journal's incremental set says the same after every record.
        // A quarantined host begun again (a resume's rollback) is not; a
        // later Created (only in a hand-made journal) restarts its own hosts.
        let mut more = records.clone();
        more.push(Record::Begin {
            op: "r/dp-1/rollback".into(),
            host: "dp-1".into(),
            step: "rollback".into(),
            at_ms: 0,
        });
        for h in ["dp-1", "dp-2"] {
            more.push(Record::Host {
                host: h.into(),
                mark: HostMark::Quarantined {
                    step: "install".into(),
                    reason: "bad".into(),
                },
                at_ms: 0,
            });
        }
        let mut only_dp_2 = spec();
        only_dp_2.hosts.retain(|h| h.name == "dp-2");
        more.push(Record::Created {
            format: FORMAT,
            spec: Box::new(only_dp_2),
        });
        for n in 1..=more.len() {
            let log = crate::rollout::log::RolloutLog::from_records(
                crate::rollout::log::Origin::File("r.jsonl".into()),
                more[..n].to_vec(),
            )
            .unwrap();
            assert_eq!(
                log.quarantined(),
                quarantined(&more[..n]),
                "after {n} records"
            );
        }
        assert_eq!(quarantined(&more), ["dp-1"]);
        // A failure without a mark is a plain failure.
        let s = fold(&records[..7]);
        assert!(matches!(s["dp-1"], HostState::Failed { .. }));
    }
}
