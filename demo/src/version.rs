//! Release versions (`3.4.0`, `3.4.0-never-ready`) and the CP/DP compatibility
//! rule the CP reports for its data planes.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A `MAJOR.MINOR.PATCH[-PRE]` version. Faulty releases carry a pre-release tag
/// so that an upgrade planner never picks them as intermediate hops.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid version {input:?}: expected MAJOR.MINOR.PATCH[-PRE]")]
pub struct VersionError {
    input: String,
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || VersionError {
            input: input.to_owned(),
        };
        let (core, pre) = match input.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (input, None),
        };
        if pre.is_some_and(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }) {
            return Err(err());
        }
        let mut parts = core.split('.');
        let mut next = || -> Result<u64, VersionError> {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            part.parse().map_err(|_| err())
        };
        let (major, minor, patch) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Version {
            major,
            minor,
            patch,
            pre: pre.map(str::to_owned),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Ord for Version {
    /// Semver precedence, simplified: a pre-release sorts before its release;
    /// pre-release tags compare as plain strings.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The rule of rollgate's ARCHITECTURE.md ("Targets"): a DP works with a CP of the same major whose minor is
/// the DP's or one above it, and a DP is never newer than its CP.
pub fn dp_compatible(cp: &Version, dp: &Version) -> bool {
    dp.major == cp.major && (dp.minor == cp.minor || dp.minor + 1 == cp.minor) && dp <= cp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_release_and_pre_release() {
        assert_eq!(v("3.4.1").to_string(), "3.4.1");
        assert_eq!(v("3.4.0-never-ready").pre.as_deref(), Some("never-ready"));
        for bad in ["3.4", "3.4.0.1", "a.b.c", "3.4.0-", "", "3..0", "3.4.0-x y"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn pre_release_sorts_before_its_release() {
        assert!(v("3.4.0-bad-migration") < v("3.4.0"));
        assert!(v("3.4.0") < v("3.4.1"));
        assert!(v("3.3.9") < v("3.4.0-crash-after-ready"));
    }

    #[test]
    fn compatibility_follows_the_design_rule() {
        assert!(dp_compatible(&v("3.4.0"), &v("3.4.0")));
        assert!(dp_compatible(&v("3.4.1"), &v("3.3.1")));
        assert!(dp_compatible(&v("3.4.0"), &v("3.4.0-never-ready")));
        assert!(
            !dp_compatible(&v("3.5.0"), &v("3.3.1")),
            "two minors behind"
        );
        assert!(!dp_compatible(&v("3.4.0"), &v("3.4.1")), "DP newer than CP");
        assert!(!dp_compatible(&v("3.4.0"), &v("3.5.0")), "DP minor newer");
        assert!(!dp_compatible(&v("4.0.0"), &v("3.9.0")), "other major");
    }
}
