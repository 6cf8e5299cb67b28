//! Fencing tokens: a number that only grows, given to a coordinator with
//! the fleet lease, and carried on its calls to agents as gRPC metadata.
//! An agent remembers the highest it has seen and refuses any call with a
//! lower one, so a coordinator that wakes up after another took over (a
//! frozen VM, a laptop lid, a partition) cannot change anything, not even
//! with one call.

/// The metadata key a coordinator's calls carry the token in (decimal).
pub const METADATA_KEY: &str = "rollgate-fencing-token";

/// Reads the token of a call: None when it carries none.
pub fn from_metadata(m: &tonic::metadata::MetadataMap) -> Result<Option<u64>, String> {
    let Some(v) = m.get(METADATA_KEY) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| format!("{METADATA_KEY} is not text"))?;
    s.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{METADATA_KEY} must be a number, not {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_token_and_refuses_a_malformed_one() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(from_metadata(&m), Ok(None));
        m.insert(METADATA_KEY, "42".parse().unwrap());
        assert_eq!(from_metadata(&m), Ok(Some(42)));
        m.insert(METADATA_KEY, "-1".parse().unwrap());
        assert!(from_metadata(&m).unwrap_err().contains("must be a number"));
    }
}
