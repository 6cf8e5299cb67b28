//! The write-freeze fingerprint: what the guard reads of the CP database
//! and compares with the reading taken with the backup.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One reading of the CP database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// A content hash per watched table (`schema.table`): its row count and
    /// the sum of its rows' hashes, folded to 64 bits (the agent's
    /// `steps/snapshot.rs`); tables the gateway writes by itself left out.
    pub tables: BTreeMap<String, i64>,
    /// SHA-256 of the declarative export; None when no export is configured.
    #[serde(default)]
    pub export_sha256: Option<String>,
    /// The tables left out because the gateway writes them by itself.
    #[serde(default)]
    pub excluded_tables: Vec<String>,
    /// When it was taken, milliseconds since the Unix epoch.
    #[serde(default)]
    pub taken_at_ms: i64,
}

/// A Fingerprint answer: the reading now, and, with a baseline backup, the
/// reading recorded in it and what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub current: Fingerprint,
    pub baseline: Option<(Fingerprint, Difference)>,
}

/// What changed between two readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Tables whose counters differ, or that appeared or vanished; sorted.
    pub changed_tables: Vec<String>,
    /// The declarative export's hash differs.
    pub export_changed: bool,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.changed_tables.is_empty() && !self.export_changed
    }
}

impl Fingerprint {
    /// What changed from `self` (the earlier reading) to `now`.
    pub fn diff(&self, now: &Fingerprint) -> Difference {
        Difference {
            changed_tables: changed_tables(self, now),
            export_changed: self.export_sha256 != now.export_sha256,
        }
    }
}

/// Tables whose counters differ (or that appeared or vanished), sorted.
pub fn changed_tables(before: &Fingerprint, now: &Fingerprint) -> Vec<String> {
    let (a, b) = (&before.tables, &now.tables);
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(tables: &[(&str, i64)]) -> Fingerprint {
        Fingerprint {
            tables: tables.iter().map(|(t, w)| (t.to_string(), *w)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_changed_new_and_dropped_tables() {
        let a = fp(&[("public.routes", 5), ("public.meta", 1), ("public.old", 2)]);
        let b = fp(&[("public.routes", 6), ("public.meta", 1), ("public.new", 0)]);
        assert_eq!(
            changed_tables(&a, &b),
            ["public.new", "public.old", "public.routes"]
        );
        assert!(a.diff(&a).is_empty());
        let mut c = a.clone();
        c.export_sha256 = Some("x".into());
        assert!(a.diff(&c).export_changed);
    }
}
