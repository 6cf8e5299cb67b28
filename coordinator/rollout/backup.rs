//! The backup phase and the write-freeze guard: the CP's verified backup
//! (and a copy here), the guard before each hop's first CP swap, and the
//! baseline a later hop's guard compares with.

use rollgate::fingerprint::Difference;
use rollgate::outcome::StepOutput;
use rollgate::version::Version;

use super::driver::{Driver, Halt};
use super::log::{Record, now_ms};
use super::steps::op_id;
use crate::fleet::FleetApi;
use crate::report::Event;

impl<F: FleetApi> Driver<F> {
    /// The verified CP backup, and a copy of it in the coordinator's state dir.
    pub(super) async fn backup(&mut self, cp: &str) -> Result<(), Halt> {
        let rid = self.rid();
        let op = op_id(&rid, cp, "backup", None);
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(
                Some(cp),
                ctx.run(cp, "backup", None, &op, || ctx.fleet.backup(cp, &op, &rid)),
            )
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        let detail = match r {
            Some(Ok(d)) => d,
            Some(Err(failure)) => {
                return Err(Halt::Step {
                    host: cp.into(),
                    step: "backup".into(),
                    failure: Box::new(failure),
                });
            }
            None => return Err(Halt::Other("backup abandoned".into())),
        };
        let StepOutput::Backup(b) = detail else {
            return Err(Halt::Other("the backup step returned no backup".into()));
        };
        if self.ctx.log().backup_copy.is_some() {
            return Ok(());
        }
        let into = self.state_dir.join("backups").join(&rid);
        let copy = self.ctx.fleet.fetch_backup(cp, &rid, &b.files, &into).await;
        match copy {
            Ok(()) => {
                self.record_or_warn(Record::BackupCopy {
                    dir: into.clone(),
                    files: b.files.len(),
                    at_ms: now_ms(),
                });
                self.emit(
                    Event::new("step", &rid, "succeeded")
                        .host(cp)
                        .step("backup-copy")
                        .detail(serde_json::json!({ "dir": into })),
                );
                Ok(())
            }
            Err(e) => Err(Halt::Other(format!(
                "cannot copy the backup from {cp}: {e}"
            ))),
        }
    }

    /// Journals a record that helps a later resume but is not a step: a
    /// failed write is logged, not fatal here (the hosts are where the
    /// report says). The journal then refuses every later record
    /// (fail-stop), ends held for this one included, so the next step's
    /// begin halts the rollout and it reads as cut off for `resume`.
    pub(super) fn record_or_warn(&self, rec: Record) {
        let mut log = self.ctx.log();
        if let Err(e) = log.append(rec) {
            tracing::warn!(journal = %log.origin, error = %e, "cannot journal a record");
        }
    }

    /// The write-freeze guard before hop `i`'s first CP swap.
    pub(super) async fn guard(&mut self, cp: &str, i: usize, hop: &Version) -> Result<(), Halt> {
        let rid = self.rid();
        let install_op = op_id(&rid, cp, "install", Some(hop));
        if self.ctx.log().begun(&install_op) {
            return Ok(()); // the swap already started: too late to guard, and no need
        }
        let baseline = if i == 0 { rid.clone() } else { String::new() };
        self.emit(
            Event::new("step", &rid, "started")
                .host(cp)
                .step("write-freeze-guard")
                .hop(hop)
                .detail(serde_json::json!({ "message": "hashing every watched table of the database in one snapshot" })),
        );
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(Some(cp), ctx.fleet.fingerprint(cp, &baseline))
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        let reading = match r {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                return Err(Halt::Other(format!(
                    "{cp}: cannot read the DB fingerprint: {e}"
                )));
            }
            None => return Err(Halt::Other("fingerprint abandoned".into())),
        };
        let diff = if i == 0 {
            match reading.baseline {
                Some((_, diff)) => diff,
                None => return Err(Halt::Other(format!("{cp} returned no backup fingerprint"))),
            }
        } else {
            let Some(before) = self.ctx.log().baselines.get(&i).cloned() else {
                return Ok(());
            };
            before.diff(&reading.current)
        };
        let ok = diff.is_empty();
        let Difference {
            changed_tables: tables,
            export_changed,
        } = diff;
        self.emit(
            Event::new("step", &rid, if ok { "succeeded" } else { "failed" })
                .host(cp)
                .step("write-freeze-guard")
                .hop(hop)
                .detail(serde_json::json!({ "changed_tables": tables, "export_changed": export_changed })),
        );
        if ok {
            Ok(())
        } else {
            Err(Halt::Guard {
                tables,
                export_changed,
            })
        }
    }

    /// Records the DB fingerprint after a hop's CPs: the next hop's baseline.
    pub(super) async fn note_baseline(&mut self, cp: &str, next: usize) -> Result<(), Halt> {
        if self.ctx.log().baselines.contains_key(&next) {
            return Ok(());
        }
        self.emit(
            Event::new("step", &self.rid(), "started")
                .host(cp)
                .step("db-baseline")
                .detail(serde_json::json!({ "message": "recording the database's table hashes for the next hop's guard" })),
        );
        let ctx = self.ctx.clone();
        let (r, halt) = self
            .monitored(Some(cp), ctx.fleet.fingerprint(cp, ""))
            .await;
        if let Some(h) = halt {
            return Err(h);
        }
        match r {
            Some(Ok(r)) => self
                .ctx
                .journal(Record::Baseline {
                    hop: next,
                    fingerprint: r.current,
                    at_ms: now_ms(),
                })
                .await
                .map_err(|f| Halt::Other(f.message)),
            Some(Err(e)) => Err(Halt::Other(format!(
                "{cp}: cannot record the next hop's DB baseline: {e}"
            ))),
            None => Err(Halt::Other("fingerprint abandoned".into())),
        }
    }
}
