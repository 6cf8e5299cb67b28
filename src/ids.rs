//! Identifiers checked the same way on both sides: host names, operation ids
//! and backup ids.
//!
//! An operation id is `<rollout-id>/<host>/<step>`. The agent only needs it to
//! be a safe, bounded journal key; the coordinator builds it from its parts.

/// Longest operation id accepted.
pub const MAX_OPERATION_ID: usize = 200;
/// Longest backup id accepted (it becomes a directory name).
pub const MAX_BACKUP_ID: usize = 100;

/// Checks an operation id: 1..=200 characters from `[A-Za-z0-9._:/-]`.
pub fn check_operation_id(id: &str) -> Result<(), String> {
    check(id, MAX_OPERATION_ID, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
    })
    .map_err(|why| format!("operation id {id:?} {why}"))
}

/// Checks a backup id: 1..=100 characters from `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_backup_id(id: &str) -> Result<(), String> {
    if id == "." || id == ".." {
        return Err(format!("backup id {id:?} is not a directory name"));
    }
    check(id, MAX_BACKUP_ID, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
    .map_err(|why| format!("backup id {id:?} {why}"))
}

fn check(id: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    match id.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!("contains {c:?}")),
        None => Ok(()),
    }
}

/// Host names become DNS names in certificates: letters, digits, `-` and `.`,
/// labels of at most 63 characters.
pub fn check_host_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid host name (letters, digits, '-' and '.')"
        ))
    }
}

/// Kinds of rollout, as the first part of a rollout id.
pub const ROLLOUT_PREFIXES: [&str; 4] = ["r", "rb", "b", "rh"];

/// Checks a rollout id the way the coordinator makes them:
/// `<kind>-<UTC time as YYYYMMDDTHHMMSSZ>-<4 hex digits>`, the kind one of
/// `r` (upgrade), `rb` (rollback) or `b` (backup). A rollout id names a file
/// in the state directory, so nothing else is accepted.
pub fn check_rollout_id(id: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "rollout id {id:?} {why}; rollout ids look like r-20261130T105553Z-1a2b (see `rollgate history`)"
        ))
    };
    let mut parts = id.splitn(3, '-');
    let (Some(kind), Some(stamp), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return bad("is not <kind>-<time>-<suffix>");
    };
    if !ROLLOUT_PREFIXES.contains(&kind) {
        return bad("does not start with r-, rb-, rh- or b-");
    }
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    if !stamp_ok {
        return bad("has no UTC time of the form 20261130T105553Z");
    }
    if tail.len() != 4
        || !tail
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return bad("does not end in 4 lower-case hex digits");
    }
    Ok(())
}

/// Builds the operation id of one step of one host in one rollout.
pub fn operation_id(rollout: &str, host: &str, step: &str) -> String {
    format!("{rollout}/{host}/{step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        check_operation_id("r-20261126T0100/dp-1/install:3.4.0").unwrap();
        check_backup_id("r-20261126T0100").unwrap();
    }

    #[test]
    fn host_names() {
        check_host_name("dp-1").unwrap();
        check_host_name("cp.zone-a").unwrap();
        assert!(check_host_name("dp_1").is_err());
        assert!(check_host_name("-dp").is_err());
        assert!(check_host_name("").is_err());
    }

    #[test]
    fn rollout_ids() {
        for ok in [
            "r-20261130T105553Z-1a2b",
            "rb-20261130T105553Z-0000",
            "b-20261130T105553Z-ffff",
        ] {
            check_rollout_id(ok).unwrap();
        }
        for bad in [
            "",
            "../../../../tmp/evil",
            "r-20261130T105553Z-1a2b/../x",
            "r-20261130T105553Z-1A2B",
            "r-20261130T105553Z-1a2",
            "x-20261130T105553Z-1a2b",
            "r-2026113OT105553Z-1a2b",
            "r-20261130T105553Z",
            "r-20261130T105553Z-1a2b.jsonl",
        ] {
            let e = check_rollout_id(bad).unwrap_err();
            assert!(e.contains("rollout id"), "{e}");
        }
    }

    #[test]
    fn rejects_unsafe_ids() {
        assert!(check_operation_id("").is_err());
        assert!(check_operation_id("a b").is_err());
        assert!(check_operation_id(&"x".repeat(201)).is_err());
        assert!(check_backup_id("../etc").is_err());
        assert!(check_backup_id("..").is_err());
        assert!(check_backup_id("a/b").is_err());
    }
}
