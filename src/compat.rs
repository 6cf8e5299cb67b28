//! Which DP versions may run against which CP version.
//!
//! The runbook's rule (ARCHITECTURE.md, "Targets"): a newer CP minor works with the previous DP
//! minor, never the other way round. As policy: the DP's major equals the CP's,
//! the DP's minor is the CP's or one below, and the DP is never newer than the
//! CP. A release catalog can override the lower bound for a CP release
//! (`dp_min`), e.g. when a vendor certifies a wider window.

use crate::version::Version;

/// The verdict for one DP against one CP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat {
    Compatible,
    /// Not allowed, with the reason in words.
    Incompatible(String),
}

impl Compat {
    pub fn is_compatible(&self) -> bool {
        matches!(self, Compat::Compatible)
    }
}

/// Judges a DP version against a CP version. `dp_min`, when given, replaces
/// the "same major, minor or one below" lower bound.
pub fn dp_against_cp(cp: &Version, dp: &Version, dp_min: Option<&Version>) -> Compat {
    if dp > cp {
        return Compat::Incompatible(format!("DP {dp} is newer than CP {cp}"));
    }
    if let Some(min) = dp_min {
        return if dp >= min {
            Compat::Compatible
        } else {
            Compat::Incompatible(format!("CP {cp} accepts DPs from {min} (catalog override)"))
        };
    }
    if dp.major() != cp.major() {
        return Compat::Incompatible(format!(
            "DP major {} differs from CP major {}",
            dp.major(),
            cp.major()
        ));
    }
    if dp.minor() + 1 < cp.minor() {
        return Compat::Incompatible(format!("DP {dp} is more than one minor behind CP {cp}"));
    }
    Compat::Compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn same_minor_and_one_below_are_compatible() {
        assert!(dp_against_cp(&v("3.4.1"), &v("3.4.0"), None).is_compatible());
        assert!(dp_against_cp(&v("3.4.1"), &v("3.4.1"), None).is_compatible());
        assert!(dp_against_cp(&v("3.4.0"), &v("3.3.9"), None).is_compatible());
    }

    #[test]
    fn newer_dp_two_minors_behind_and_other_major_are_not() {
        assert!(!dp_against_cp(&v("3.3.0"), &v("3.4.0"), None).is_compatible());
        assert!(!dp_against_cp(&v("3.4.0"), &v("3.4.1"), None).is_compatible());
        assert!(!dp_against_cp(&v("3.5.0"), &v("3.3.0"), None).is_compatible());
        assert!(!dp_against_cp(&v("4.0.0"), &v("3.9.0"), None).is_compatible());
        let Compat::Incompatible(why) = dp_against_cp(&v("3.3.0"), &v("3.4.0"), None) else {
            panic!()
        };
        assert!(why.contains("newer"), "{why}");
    }

    #[test]
    fn catalog_override_widens_the_window_but_never_allows_newer() {
        let min = v("3.2.0");
        assert!(dp_against_cp(&v("3.5.0"), &v("3.2.0"), Some(&min)).is_compatible());
        assert!(!dp_against_cp(&v("3.5.0"), &v("3.1.9"), Some(&min)).is_compatible());
        assert!(!dp_against_cp(&v("3.5.0"), &v("3.6.0"), Some(&min)).is_compatible());
    }
}
