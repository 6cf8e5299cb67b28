//! Batch sizes (`--batch 2`, `--batch 25%`) and cutting the DPs into batches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// How many DPs go per batch after the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(usize),
    /// A share of all DPs, 1..=100, rounded up to at least one host.
    Percent(u8),
}

impl BatchSize {
    /// The number of hosts per batch for a fleet of `total` DPs.
    pub fn hosts(&self, total: usize) -> usize {
        match *self {
            BatchSize::Count(n) => n.max(1),
            BatchSize::Percent(p) => (total * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("batch {s:?} must be a host count (e.g. 2) or a share (e.g. 25%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(format!("batch {s:?}: a share must be 1% to 100%"));
            }
            Ok(BatchSize::Percent(p))
        } else {
            let n: usize = s.trim().parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(format!("batch {s:?}: must be at least 1 host"));
            }
            Ok(BatchSize::Count(n))
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Count(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How many DPs must stay in rotation while a batch is out: a count ("1")
/// or a share of the DPs ("50%", rounded up). 0 is allowed, and is the only
/// way to let a batch take every DP out at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InService {
    Count(usize),
    Percent(u8),
}

impl Default for InService {
    fn default() -> Self {
        InService::Count(1)
    }
}

impl InService {
    /// DPs that must stay in rotation out of `total`.
    pub fn hosts(&self, total: usize) -> usize {
        match *self {
            InService::Count(n) => n,
            InService::Percent(p) => (total * usize::from(p)).div_ceil(100),
        }
    }
}

impl FromStr for InService {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("min_in_service {s:?} must be a host count (e.g. 1) or a share (e.g. 50%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(format!("min_in_service {s:?}: a share must be 0% to 100%"));
            }
            Ok(InService::Percent(p))
        } else {
            Ok(InService::Count(s.trim().parse().map_err(|_| bad())?))
        }
    }
}

impl fmt::Display for InService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InService::Count(n) => write!(f, "{n}"),
            InService::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for InService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A TOML value that may be written as a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(i64),
    Text(String),
}

/// One DP as the in-service rule sees it: its name and its gateway group.
#[derive(Debug, Clone)]
pub struct Dp<'a> {
    pub name: &'a str,
    pub group: Option<&'a str>,
}

/// Checks that no batch takes so many DPs out of rotation that fewer than
/// `min` stay in, in the whole fleet and in each gateway group (DPs of one
/// group serve the same routes: all of them out is an outage of those
/// routes even when other groups serve). Returns one line per violation.
pub fn in_service_violations(
    dps: &[Dp<'_>],
    batches: &[Vec<String>],
    min: InService,
    label: &str,
) -> Vec<String> {
    use std::collections::{BTreeMap, HashMap};
    // Each DP's group, looked up per batch member: a scan of the members
    // for every host of every batch was quadratic (10,000 DPs: 10^8
    // string compares).
    let group_of: HashMap<&str, Option<&str>> = dps.iter().map(|d| (d.name, d.group)).collect();
    let mut sizes: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    for d in dps {
        *sizes.entry(d.group).or_default() += 1;
    }
    // (scope, its group: None for the whole fleet, its size)
    let mut scopes: Vec<(String, Option<&str>, usize)> =
        vec![("the fleet".into(), None, dps.len())];
    if sizes.len() > 1 || sizes.keys().any(Option::is_some) {
        scopes.extend(
            sizes
                .iter()
                .filter_map(|(g, n)| g.map(|g| (format!("gateway group {g:?}"), Some(g), *n))),
        );
    }
    let mut out = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let mut taken_in: HashMap<&str, usize> = HashMap::new();
        let mut taken_of_fleet = 0;
        for h in batch {
            if let Some(g) = group_of.get(h.as_str()) {
                taken_of_fleet += 1;
                if let Some(g) = g {
                    *taken_in.entry(g).or_default() += 1;
                }
            }
        }
        for (scope, group, total) in &scopes {
            let total = *total;
            let taken = match group {
                None => taken_of_fleet,
                Some(g) => taken_in.get(g).copied().unwrap_or(0),
            };
            if taken == 0 {
                continue;
            }
            let need = min.hosts(total);
            let left = total - taken;
            if left < need {
                out.push(format!(
                    "{label} batch {b} ({}) would take {taken} of the {total} DP(s) of {scope} out of rotation at once, leaving {left} to serve; the policy keeps at least {need} in service (min_in_service = {min}). Use a smaller canary or batch, or set min_in_service = 0 (--min-in-service 0) to accept the outage",
                    if b == 0 { "the canary" } else { "after the canary" },
                ));
            }
        }
    }
    out
}

/// Cuts `hosts` (in rollout order) into the canary batch and then batches of
/// `size`. Empty input gives no batches.
pub fn cut<T: Clone>(hosts: &[T], canary: usize, size: BatchSize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    if hosts.is_empty() {
        return out;
    }
    let canary = canary.clamp(1, hosts.len());
    out.push(hosts[..canary].to_vec());
    let per = size.hosts(hosts.len());
    out.extend(hosts[canary..].chunks(per).map(<[T]>::to_vec));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_shares() {
        assert_eq!("3".parse::<BatchSize>().unwrap(), BatchSize::Count(3));
        assert_eq!("25%".parse::<BatchSize>().unwrap(), BatchSize::Percent(25));
        for bad in ["0", "0%", "101%", "x", "-1", "2.5", ""] {
            assert!(bad.parse::<BatchSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn share_rounds_up_to_one_host() {
        assert_eq!(BatchSize::Percent(10).hosts(4), 1);
        assert_eq!(BatchSize::Percent(10).hosts(200), 20);
        assert_eq!(BatchSize::Percent(25).hosts(5), 2);
    }

    #[test]
    fn canary_first_then_batches() {
        let hosts: Vec<u32> = (1..=7).collect();
        let b = cut(&hosts, 1, BatchSize::Count(3));
        assert_eq!(b, vec![vec![1], vec![2, 3, 4], vec![5, 6, 7]]);
        let b = cut(&hosts, 10, BatchSize::Count(3));
        assert_eq!(b, vec![hosts.clone()]);
        assert!(cut::<u32>(&[], 1, BatchSize::Count(1)).is_empty());
    }

    #[test]
    fn in_service_parses_zero_counts_and_shares() {
        assert_eq!("0".parse::<InService>().unwrap(), InService::Count(0));
        assert_eq!("50%".parse::<InService>().unwrap(), InService::Percent(50));
        assert_eq!(InService::Percent(50).hosts(3), 2);
        for bad in ["101%", "x", "-1", ""] {
            assert!(bad.parse::<InService>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_batch_of_every_dp_violates_the_in_service_rule() {
        let names = ["dp-1", "dp-2", "dp-3"];
        let dps: Vec<Dp> = names
            .iter()
            .map(|n| Dp {
                name: n,
                group: None,
            })
            .collect();
        let hosts: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        // canary = 10 is clamped to the 3 DPs: all out at once.
        let all = cut(&hosts, 10, BatchSize::Count(1));
        let v = in_service_violations(&dps, &all, InService::default(), "hop 3.4.0");
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("3 of the 3") && v[0].contains("canary"),
            "{v:?}"
        );
        // batch = 100% after a canary of 1: 2 of 3 out, 1 left: fine.
        let ok = cut(&hosts, 1, BatchSize::Percent(100));
        assert!(in_service_violations(&dps, &ok, InService::default(), "x").is_empty());
        // ... unless two must stay.
        let v = in_service_violations(&dps, &ok, InService::Count(2), "x");
        assert_eq!(v.len(), 1, "{v:?}");
        // Explicitly allowed.
        assert!(in_service_violations(&dps, &all, InService::Count(0), "x").is_empty());
    }

    #[test]
    fn every_dp_of_one_group_counts_as_an_outage() {
        let dps = [
            Dp {
                name: "a-1",
                group: Some("a"),
            },
            Dp {
                name: "a-2",
                group: Some("a"),
            },
            Dp {
                name: "b-1",
                group: Some("b"),
            },
            Dp {
                name: "b-2",
                group: Some("b"),
            },
        ];
        let batches = vec![
            vec!["a-1".to_string()],
            vec!["a-2".into(), "b-1".into()],
            vec!["b-2".into()],
        ];
        assert!(in_service_violations(&dps, &batches, InService::default(), "x").is_empty());
        let batches = vec![
            vec!["a-1".to_string(), "a-2".into()],
            vec!["b-1".into(), "b-2".into()],
        ];
        let v = in_service_violations(&dps, &batches, InService::default(), "x");
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("gateway group \"a\""), "{v:?}");
    }
}
