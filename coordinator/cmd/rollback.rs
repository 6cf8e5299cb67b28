//! `rollgate rollback [ROLLOUT] [--restore-db]`: every host back to the
//! release it had before the rollout; with `--restore-db` the CP database
//! goes back to the rollout's backup too, after saying what will be lost.

use rollgate::role::Role;

use super::upgrade::drive;
use super::{confirm, installed_versions};
use crate::Failure;
use crate::fleet::{FleetApi, GrpcFleet};
use crate::inventory::Inventory;
use crate::output::Output;
use crate::rollout::journals::Journals;
use crate::rollout::lock;
use crate::rollout::log::{RolloutLog, now_ms};
use crate::rollout::spec::{Kind, RolloutSpec, new_id};

pub struct RollbackArgs {
    pub rollout: Option<String>,
    pub restore_db: bool,
    pub yes: bool,
    pub output: Output,
}

/// The upgrade to undo: the one named, or the latest upgrade.
async fn target_rollout(journals: &Journals, id: Option<&str>) -> Result<RolloutLog, Failure> {
    if let Some(id) = id {
        return Ok(journals.read_by_id(id).await?);
    }
    journals
        .list()
        .await
        .map_err(|e| Failure::Failed(format!("{e}; nothing was changed")))?
        .into_iter()
        .rev()
        .filter_map(|l| l.log.ok())
        .find(|l| l.spec.kind == Kind::Upgrade)
        .ok_or_else(|| Failure::Usage(format!("no upgrade to roll back in {}", journals.place())))
}

pub async fn rollback(inv: Inventory, a: RollbackArgs) -> Result<(), Failure> {
    let state_dir = inv.coordinator.state_dir.clone();
    let journals = Journals::of(&inv);
    let orig = target_rollout(&journals, a.rollout.as_deref()).await?;
    if orig.spec.kind != Kind::Upgrade {
        return Err(Failure::Usage(format!(
            "{} is not an upgrade",
            orig.spec.id
        )));
    }
    let rid = new_id("rb");
    let _lock = lock::acquire(&state_dir, &rid, "rollback").map_err(Failure::Failed)?;
    if let Some(l) = super::upgrade::unfinished(&journals).await?
        && l.spec.id != orig.spec.id
    {
        return Err(Failure::Blocked(format!(
            "rollout {} is unfinished; resume it or roll it back first",
            l.spec.id
        )));
    }
    let current = installed_versions(&inv).await?;
    let moving: Vec<String> = orig
        .spec
        .hosts
        .iter()
        .filter(|h| current.get(&h.name) != Some(&h.from))
        .map(|h| {
            format!(
                "{} {} → {}",
                h.name,
                current
                    .get(&h.name)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                h.from
            )
        })
        .collect();
    if moving.is_empty() && !a.restore_db {
        println!(
            "every host is already on the release it had before {}",
            orig.spec.id
        );
        return Ok(());
    }
    println!("Rolling back {}:", orig.spec.id);
    for m in &moving {
        println!("  {m}");
    }
    let backup_id = orig.spec.backup_id.clone();
    if a.restore_db {
        let Some(b) = &backup_id else {
            return Err(Failure::Usage(format!(
                "rollout {} took no backup: nothing to restore",
                orig.spec.id
            )));
        };
        let Some(cp) = inv.by_role(Role::Cp).next() else {
            return Err(Failure::Usage("the inventory has no CP".into()));
        };
        let fleet = GrpcFleet::new(
            std::sync::Arc::new(inv.clone()),
            std::time::Duration::from_secs(60),
        );
        let reading = fleet.fingerprint(&cp.name, b).await.map_err(|e| {
            Failure::Failed(format!("cannot compare the database with backup {b}: {e}"))
        })?;
        let Some((base, diff)) = reading.baseline else {
            return Err(Failure::Failed(format!(
                "{} returned no fingerprint for backup {b}",
                cp.name
            )));
        };
        let taken = lock::fmt_ms(base.taken_at_ms);
        println!("\nThe database goes back to backup {b} (taken {taken}). Lost with it:");
        if diff.changed_tables.is_empty() && !diff.export_changed {
            println!(
                "  nothing the table hashes or the declarative export show (only the schema migrations)"
            );
        } else {
            for t in &diff.changed_tables {
                println!(
                    "  writes to {t} since the backup (this includes schema migrations of the new release)"
                );
            }
            if diff.export_changed {
                println!("  changes to the gateway configuration (the declarative export differs)");
            }
        }
        confirm(
            "Restoring the database discards every change made since the backup.",
            a.yes,
        )?;
    }
    let spec = RolloutSpec {
        id: rid,
        kind: Kind::Rollback {
            of: orig.spec.id.clone(),
            restore_db: a.restore_db,
        },
        inventory: orig.spec.inventory.clone(),
        catalog: None,
        created_ms: now_ms(),
        target: orig
            .spec
            .hosts
            .iter()
            .map(|h| h.from.clone())
            .min()
            .unwrap_or(orig.spec.target.clone()),
        hops: Vec::new(),
        hosts: orig.spec.hosts.clone(),
        policy: orig.spec.policy.clone(),
        backup_id,
    };
    let log = journals.create(spec).await.map_err(Failure::Failed)?;
    drive(inv, None, log, a.output, false, Vec::new()).await
}
