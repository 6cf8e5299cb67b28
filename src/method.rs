//! How a gateway is installed on a host: what an agent's `[install] method`
//! names, what its Hello reports, and which of a release's artifacts the
//! coordinator sends it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An install method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A release tarball unpacked into `releases/<version>`, an atomic
    /// `current` link.
    #[default]
    Tarball,
    /// A container image (a `docker save` archive) loaded into the host's
    /// Docker Engine; its tag pinned by one variable of a compose env file.
    Compose,
    /// An OS package (`.deb`) installed with dpkg.
    Deb,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tarball => "tarball",
            Method::Compose => "compose",
            Method::Deb => "deb",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tarball" => Ok(Method::Tarball),
            "compose" => Ok(Method::Compose),
            "deb" => Ok(Method::Deb),
            other => Err(format!(
                "unknown install method {other:?} (tarball, compose or deb)"
            )),
        }
    }
}
