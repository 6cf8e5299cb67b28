//! The write-freeze fingerprint: comparing two readings of the CP database.

use std::collections::BTreeMap;

use crate::pb;

/// Tables whose counters differ (or that appeared or vanished), sorted.
pub fn changed_tables(before: &pb::Fingerprint, now: &pb::Fingerprint) -> Vec<String> {
    let a: BTreeMap<&str, i64> = before
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.writes))
        .collect();
    let b: BTreeMap<&str, i64> = now
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.writes))
        .collect();
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// True when nothing the guard watches changed.
pub fn unchanged(before: &pb::Fingerprint, now: &pb::Fingerprint) -> bool {
    changed_tables(before, now).is_empty() && before.export_sha256 == now.export_sha256
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(tables: &[(&str, i64)]) -> pb::Fingerprint {
        pb::Fingerprint {
            tables: tables
                .iter()
                .map(|(t, w)| pb::TableWrites {
                    table: t.to_string(),
                    writes: *w,
                })
                .collect(),
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
        assert!(changed_tables(&a, &a).is_empty());
    }
}
