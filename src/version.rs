//! API7-style gateway versions: `3.4.0`, `3.2.14.6`, `3.5.0-rc.1`.
//!
//! Three or four numeric parts (major.minor.patch[.build]); an optional leading
//! `v` as operators write it (`v3.4.0`); an optional pre-release tag after `-`
//! ordered as SemVer orders it (`3.5.0-rc.1 < 3.5.0-rc.2 < 3.5.0`). A missing
//! build part equals `.0`, so `3.2.14` and `3.2.14.0` are the same version.
//! Build metadata (`+...`) is refused: two artifacts that differ only by it
//! could not be told apart by the upgrade path.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A gateway release version.
#[derive(Debug, Clone)]
pub struct Version {
    major: u32,
    minor: u32,
    patch: u32,
    build: u32,
    /// Whether the text had four numeric parts; only affects `Display`.
    four_parts: bool,
    pre: Vec<PreId>,
}

/// One dot-separated identifier of a pre-release tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PreId {
    Num(u64),
    Alnum(String),
}

/// Why a string is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: {reason}")]
pub struct ParseVersionError {
    input: String,
    reason: &'static str,
}

impl Version {
    /// A release version with three parts.
    pub fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
            build: 0,
            four_parts: false,
            pre: Vec::new(),
        }
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    pub fn patch(&self) -> u32 {
        self.patch
    }

    /// True for versions with a pre-release tag (`3.5.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// `(major, minor)`: the line a patch upgrade stays on.
    pub fn minor_line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    fn numeric(&self) -> (u32, u32, u32, u32) {
        (self.major, self.minor, self.patch, self.build)
    }
}

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseVersionError {
            input: input.to_string(),
            reason,
        };
        let s = input.strip_prefix('v').unwrap_or(input);
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.contains('+') {
            return Err(err("build metadata (+...) is not allowed"));
        }
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (s, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 && parts.len() != 4 {
            return Err(err("expected 3 or 4 numeric parts, like 3.4.0 or 3.2.14.6"));
        }
        let mut nums = [0u32; 4];
        for (slot, part) in nums.iter_mut().zip(&parts) {
            *slot = parse_numeric(part)
                .ok_or_else(|| err("each part must be a number without leading zeros or signs"))?;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => parse_pre(pre).ok_or_else(|| {
                err("the pre-release tag must be dot-separated [0-9A-Za-z-] identifiers")
            })?,
        };
        Ok(Version {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
            build: nums[3],
            four_parts: parts.len() == 4,
            pre,
        })
    }
}

fn parse_numeric(part: &str) -> Option<u32> {
    let ok = !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'));
    if ok { part.parse().ok() } else { None }
}

fn parse_pre(pre: &str) -> Option<Vec<PreId>> {
    pre.split('.')
        .map(|id| {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                None
            } else if id.bytes().all(|b| b.is_ascii_digit()) {
                if id.len() > 1 && id.starts_with('0') {
                    None
                } else {
                    id.parse().ok().map(PreId::Num)
                }
            } else {
                Some(PreId::Alnum(id.to_string()))
            }
        })
        .collect()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.four_parts {
            write!(f, ".{}", self.build)?;
        }
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match id {
                PreId::Num(n) => write!(f, "{n}")?,
                PreId::Alnum(s) => f.write_str(s)?,
            }
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numeric()
            .cmp(&other.numeric())
            .then_with(|| cmp_pre(&self.pre, &other.pre))
    }
}

/// SemVer precedence: no tag ranks above any tag; identifiers compare left to
/// right, numbers numerically and below words; a longer list wins a tie.
fn cmp_pre(a: &[PreId], b: &[PreId]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (PreId::Num(x), PreId::Num(y)) => x.cmp(y),
            (PreId::Num(_), PreId::Alnum(_)) => Ordering::Less,
            (PreId::Alnum(_), PreId::Num(_)) => Ordering::Greater,
            (PreId::Alnum(x), PreId::Alnum(y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `four_parts` is left out: it does not take part in equality.
        self.numeric().hash(state);
        self.pre.hash(state);
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_three_and_four_parts() {
        assert_eq!(v("3.4.0").to_string(), "3.4.0");
        assert_eq!(v("3.2.14.6").to_string(), "3.2.14.6");
        assert_eq!(v("v3.4.1").to_string(), "3.4.1");
        assert_eq!(v("3.2.14.6").minor_line(), (3, 2));
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(v("3.10.0") > v("3.9.9"));
        assert!(v("3.2.14.6") > v("3.2.14"));
        assert!(v("3.2.14.6") < v("3.2.15"));
        assert_eq!(v("3.2.14"), v("3.2.14.0"));
    }

    #[test]
    fn orders_prereleases_below_the_release() {
        assert!(v("3.5.0-rc.1") < v("3.5.0"));
        assert!(v("3.5.0-rc.1") < v("3.5.0-rc.2"));
        assert!(v("3.5.0-rc.2") < v("3.5.0-rc.10"));
        assert!(v("3.5.0-alpha") < v("3.5.0-alpha.1"));
        assert!(v("3.5.0-1") < v("3.5.0-alpha"));
        assert!(v("3.5.0-rc.1") > v("3.4.9"));
        assert!(v("3.5.0-rc.1").is_prerelease());
    }

    #[test]
    fn rejects_malformed_versions_with_a_reason() {
        for bad in [
            "",
            "v",
            "3",
            "3.4",
            "3.4.0.1.2",
            "3.4.x",
            "03.4.0",
            "3.-4.0",
            "3.4.0+build",
            "3.4.0-",
            "3.4.0-rc..1",
            "3.4.0-rc.01",
            " 3.4.0",
            "3.4.0 ",
            "3.4.0-r_c",
        ] {
            let e = bad.parse::<Version>().unwrap_err();
            assert!(e.to_string().contains("invalid version"), "{bad}: {e}");
        }
    }

    #[test]
    fn equal_versions_hash_equal() {
        use std::collections::HashSet;
        let set: HashSet<Version> = [v("3.2.14"), v("3.2.14.0")].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&v("3.2.14.6")).unwrap();
        assert_eq!(json, "\"3.2.14.6\"");
        let back: Version = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v("3.2.14.6"));
        assert!(serde_json::from_str::<Version>("\"3.x\"").is_err());
    }
}
