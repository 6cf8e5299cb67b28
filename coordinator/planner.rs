//! The upgrade path, from the runbook's guaranteed paths: a patch within a
//! minor (3.3.0 → 3.3.1) or the adjacent minor within a major (3.3.x →
//! 3.4.x). Any longer jump becomes hops through the latest patch of each minor
//! in between; a downgrade, a major jump or a missing minor is refused.

use rollgate::catalog::Release;
use rollgate::compat::{self, Compat};
use rollgate::version::Version;

/// Why no path exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not in the release catalog")]
    NotInCatalog(Version),
    #[error(
        "{to} is older than the fleet's {from}: a downgrade is a rollback (rollgate rollback), not an upgrade"
    )]
    Downgrade { from: Version, to: Version },
    #[error("{from} → {to} crosses a major version; only upgrades within a major are supported")]
    MajorJump { from: Version, to: Version },
    #[error("no release of {major}.{minor}.x in the catalog: {from} → {to} must pass through it")]
    MissingMinor {
        major: u32,
        minor: u32,
        from: Version,
        to: Version,
    },
}

/// The versions to install in order; empty when `from` is already `to`.
pub fn path(from: &Version, to: &Version, catalog: &[Release]) -> Result<Vec<Version>, Refusal> {
    if !catalog.iter().any(|r| r.version == *to) {
        return Err(Refusal::NotInCatalog(to.clone()));
    }
    if to < from {
        return Err(Refusal::Downgrade {
            from: from.clone(),
            to: to.clone(),
        });
    }
    if to == from {
        return Ok(Vec::new());
    }
    if to.major() != from.major() {
        return Err(Refusal::MajorJump {
            from: from.clone(),
            to: to.clone(),
        });
    }
    let mut hops = Vec::new();
    for minor in from.minor() + 1..to.minor() {
        // Pre-releases are never picked as stepping stones.
        let latest = catalog
            .iter()
            .map(|r| &r.version)
            .filter(|v| v.major() == from.major() && v.minor() == minor && !v.is_prerelease())
            .max()
            .ok_or(Refusal::MissingMinor {
                major: from.major(),
                minor,
                from: from.clone(),
                to: to.clone(),
            })?;
        hops.push(latest.clone());
    }
    hops.push(to.clone());
    Ok(hops)
}

/// Breaking changes of every release in (from, to], oldest first; only the
/// target itself among pre-releases.
pub fn breaking_changes<'a>(
    from: &Version,
    to: &Version,
    catalog: &'a [Release],
) -> Vec<(&'a Version, &'a str)> {
    catalog
        .iter()
        .filter(|r| {
            r.version > *from
                && r.version <= *to
                && (!r.version.is_prerelease() || r.version == *to)
        })
        .flat_map(|r| {
            r.breaking_changes
                .iter()
                .map(move |c| (&r.version, c.as_str()))
        })
        .collect()
}

/// Checks that, hop by hop, every DP still on the previous version may run
/// against a CP on the new one. Returns (hop, dp version, reason) for each
/// pair that may not.
pub fn dp_compat_per_hop(
    dp_versions: &[Version],
    hops: &[Version],
    catalog: &[Release],
) -> Vec<(Version, Version, String)> {
    let mut problems = Vec::new();
    let mut current: Vec<Version> = dp_versions.to_vec();
    for hop in hops {
        let dp_min = catalog
            .iter()
            .find(|r| r.version == *hop)
            .and_then(|r| r.dp_min.as_ref());
        for dp in &current {
            if let Compat::Incompatible(why) = compat::dp_against_cp(hop, dp, dp_min) {
                problems.push((hop.clone(), dp.clone(), why));
            }
        }
        // After the hop every DP runs it.
        current = current
            .iter()
            .map(|v| if v < hop { hop.clone() } else { v.clone() })
            .collect();
    }
    problems.sort();
    problems.dedup();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate::catalog::Artifact;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn cat(list: &[&str]) -> Vec<Release> {
        list.iter()
            .map(|s| Release {
                version: v(s),
                artifact: Artifact::File(format!("/a/{s}.tar.gz").into()),
                sha256: "0".repeat(64),
                size: 1,
                breaking_changes: vec![format!("change in {s}")],
                dp_min: None,
                migrates: false,
                schema_version: None,
                image: None,
                deb: None,
                unpacked_size: None,
            })
            .collect()
    }

    const ALL: &[&str] = &[
        "3.2.0",
        "3.3.0",
        "3.3.1",
        "3.4.0",
        "3.4.1",
        "3.4.0-never-ready",
        "3.5.0",
        "4.0.0",
    ];

    #[test]
    fn patch_and_adjacent_minor_are_one_hop() {
        let c = cat(ALL);
        assert_eq!(path(&v("3.3.0"), &v("3.3.1"), &c).unwrap(), [v("3.3.1")]);
        assert_eq!(path(&v("3.3.0"), &v("3.4.0"), &c).unwrap(), [v("3.4.0")]);
        assert!(path(&v("3.4.0"), &v("3.4.0"), &c).unwrap().is_empty());
    }

    #[test]
    fn longer_jumps_go_through_the_latest_patch_of_each_minor() {
        let c = cat(ALL);
        assert_eq!(
            path(&v("3.3.0"), &v("3.5.0"), &c).unwrap(),
            [v("3.4.1"), v("3.5.0")]
        );
        assert_eq!(
            path(&v("3.2.0"), &v("3.5.0"), &c).unwrap(),
            [v("3.3.1"), v("3.4.1"), v("3.5.0")]
        );
    }

    #[test]
    fn refuses_downgrade_major_jump_missing_minor_and_unknown_target() {
        let c = cat(ALL);
        assert!(matches!(
            path(&v("3.4.0"), &v("3.3.0"), &c),
            Err(Refusal::Downgrade { .. })
        ));
        assert!(matches!(
            path(&v("3.3.0"), &v("4.0.0"), &c),
            Err(Refusal::MajorJump { .. })
        ));
        assert!(matches!(
            path(&v("3.3.0"), &v("3.9.0"), &c),
            Err(Refusal::NotInCatalog(_))
        ));
        let gap = cat(&["3.2.0", "3.4.0"]);
        let e = path(&v("3.2.0"), &v("3.4.0"), &gap).unwrap_err();
        assert!(e.to_string().contains("3.3.x"), "{e}");
    }

    #[test]
    fn breaking_changes_between_versions_skip_other_prereleases() {
        let c = cat(ALL);
        let b: Vec<String> = breaking_changes(&v("3.3.0"), &v("3.5.0"), &c)
            .iter()
            .map(|(v, _)| v.to_string())
            .collect();
        assert_eq!(b, ["3.3.1", "3.4.0", "3.4.1", "3.5.0"]);
        let b = breaking_changes(&v("3.3.0"), &v("3.4.0-never-ready"), &c);
        assert!(b.iter().any(|(v, _)| v.to_string() == "3.4.0-never-ready"));
    }

    #[test]
    fn dps_must_suit_the_cp_at_every_hop() {
        let c = cat(ALL);
        assert!(dp_compat_per_hop(&[v("3.3.0")], &[v("3.4.1"), v("3.5.0")], &c).is_empty());
        let p = dp_compat_per_hop(&[v("3.2.0")], &[v("3.4.0")], &c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, v("3.4.0"));
    }
}
