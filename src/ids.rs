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
    fn rejects_unsafe_ids() {
        assert!(check_operation_id("").is_err());
        assert!(check_operation_id("a b").is_err());
        assert!(check_operation_id(&"x".repeat(201)).is_err());
        assert!(check_backup_id("../etc").is_err());
        assert!(check_backup_id("..").is_err());
        assert!(check_backup_id("a/b").is_err());
    }
}
