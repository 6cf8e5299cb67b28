//! Room for one connection per host: the coordinator keeps a connection
//! open to every agent for the whole rollout (the health watch), so a fleet
//! of N hosts needs N descriptors and some to spare. Most systems start a
//! process with a soft open-file limit of 1,024 and a hard limit far above
//! it; the soft limit is raised to the hard one (as Go's runtime does for
//! every program), and an inventory the hard limit cannot hold is refused
//! before anything is asked of any host, instead of failing connections
//! with "too many open files" halfway through a rollout.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Descriptors besides the agents' connections: stdio, the runtime's
/// epoll and wakers, the journal, the lock, PostgreSQL connections, the
/// artifact and backup files open while staging and copying.
pub const SPARE: u64 = 256;

/// Raises the soft open-file limit to the hard limit and checks that it
/// holds `hosts` connections and `SPARE`. The error says what to change.
pub fn make_room(hosts: usize) -> Result<(), String> {
    let need = (hosts as u64).saturating_add(SPARE);
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= need {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < need {
        return Err(format!(
            "the inventory has {hosts} hosts: the coordinator keeps a connection open to each, so it needs {need} open files, and this process may have at most {hard} (the hard limit; `ulimit -Hn`, or LimitNOFILE= in a systemd unit, raises it)"
        ));
    }
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).map_err(|e| {
        format!("cannot raise the open-file limit from {soft} to {hard} for {hosts} hosts: {e}")
    })?;
    tracing::debug!(hosts, from = soft, to = hard, "raised the open-file limit");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // nextest runs every test in its own process: these change only theirs.

    fn set_soft(v: u64) {
        let mut l = getrlimit(Resource::Nofile);
        l.current = Some(v);
        setrlimit(Resource::Nofile, l).unwrap();
    }

    #[test]
    fn a_low_soft_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
        assert!(
            hard >= 1024 + SPARE,
            "this machine's hard limit {hard} is too low for the test"
        );
        set_soft(64);
        make_room(1024).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }

    #[test]
    fn a_fleet_beyond_the_hard_limit_is_refused_naming_it() {
        let Some(hard) = getrlimit(Resource::Nofile).maximum else {
            panic!("this machine has no hard open-file limit to test against");
        };
        set_soft(64);
        let e = make_room(hard as usize).unwrap_err();
        assert!(e.contains(&format!("at most {hard}")), "{e}");
        assert!(e.contains(&format!("{hard} hosts")), "{e}");
        // Refused before anything changed: not even the soft limit.
        assert_eq!(getrlimit(Resource::Nofile).current, Some(64));
    }

    #[test]
    fn a_soft_limit_with_room_is_left_alone() {
        set_soft(2048);
        make_room(100).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(2048));
    }
}
