//! The release layout on a host:
//!
//! ```text
//! <install_root>/releases/<version>/   unpacked releases
//! <install_root>/current -> releases/<version>
//! ```

use std::path::{Path, PathBuf};

use rollgate::version::Version;

/// Reads (never writes) an install root.
#[derive(Debug, Clone)]
pub struct InstallRoot {
    root: PathBuf,
}

impl InstallRoot {
    pub fn new(root: PathBuf) -> Self {
        InstallRoot { root }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn release_dir(&self, v: &Version) -> PathBuf {
        self.releases_dir().join(v.to_string())
    }

    /// The version `current` points at; None when there is no link or it
    /// does not point at `releases/<version>`.
    pub fn current(&self) -> Option<Version> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Versions unpacked under releases/, ascending. Entries that are not
    /// version-named directories (staging leftovers, files) are skipped.
    pub fn releases(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(self.releases_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<Version> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort();
        out
    }

    /// Free bytes for unprivileged use on the file system holding the root
    /// (or its nearest existing ancestor).
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.root)
    }
}

/// Free bytes for unprivileged use on the file system holding `path` (or its
/// nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let st = nix::sys::statvfs::statvfs(p).ok()?;
            return Some(st.blocks_available() as u64 * st.fragment_size() as u64);
        }
        p = p.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let root = InstallRoot::new(dir.path().into());
        assert_eq!(root.current(), None);
        assert!(root.releases().is_empty());
        for v in ["3.3.0", "3.10.0", "3.4.0"] {
            std::fs::create_dir_all(root.releases_dir().join(v)).unwrap();
        }
        std::fs::create_dir_all(root.releases_dir().join(".staging-x")).unwrap();
        std::os::unix::fs::symlink("releases/3.4.0", root.current_link()).unwrap();
        assert_eq!(root.current(), Some("3.4.0".parse().unwrap()));
        let names: Vec<String> = root.releases().iter().map(|v| v.to_string()).collect();
        assert_eq!(names, ["3.3.0", "3.4.0", "3.10.0"]);
        assert!(root.free_bytes().unwrap() > 0);
    }
}
