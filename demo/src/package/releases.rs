//! The releases `demo-gateway package` builds from one binary. Faulty ones carry a
//! pre-release tag so an upgrade planner never picks them as intermediate hops.

use std::time::Duration;

use crate::manifest::{Faults, Manifest};

pub struct ReleaseSpec {
    pub manifest: Manifest,
    /// One sentence each; what an operator must read before upgrading to it.
    pub breaking_changes: &'static [&'static str],
}

fn good(
    version: &str,
    migration_level: u32,
    breaking_changes: &'static [&'static str],
) -> ReleaseSpec {
    ReleaseSpec {
        manifest: Manifest {
            version: version.into(),
            migration_level,
            faults: Faults::default(),
        },
        breaking_changes,
    }
}

fn faulty(version: &str, faults: Faults) -> ReleaseSpec {
    ReleaseSpec {
        manifest: Manifest {
            version: version.into(),
            migration_level: 2,
            faults,
        },
        breaking_changes: &[],
    }
}

pub fn all() -> Vec<ReleaseSpec> {
    vec![
        good("3.3.0", 1, &[]),
        good("3.3.1", 1, &[]),
        good(
            "3.4.0",
            2,
            &[
                "The control plane migrates the database to schema version 2 (route descriptions), so rolling the control plane back to 3.3 needs a database restore.",
                "Data planes older than 3.3 can no longer connect to a 3.4 control plane.",
            ],
        ),
        good("3.4.1", 2, &[]),
        good(
            "3.5.0",
            3,
            &[
                "The control plane migrates the database to schema version 3 (config history), so rolling the control plane back to 3.4 needs a database restore.",
                "3.3 data planes are incompatible with a 3.5 control plane: upgrade every data plane to 3.4 before the control plane.",
            ],
        ),
        faulty(
            "3.4.0-never-ready",
            Faults {
                dp_never_ready: true,
                ..Faults::default()
            },
        ),
        faulty(
            "3.4.0-crash-after-ready",
            Faults {
                dp_exit_after_ready: Some(Duration::from_secs(3)),
                ..Faults::default()
            },
        ),
        faulty(
            "3.4.0-bad-migration",
            Faults {
                cp_fail_migration: true,
                ..Faults::default()
            },
        ),
    ]
}
