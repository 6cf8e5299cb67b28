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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
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
}
