//! Deterministic `.tar.gz` writing: sorted entries, fixed mtime, root owner, no
//! gzip timestamp or file name, so the same inputs always give the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::GzBuilder;
use sha2::{Digest, Sha256};

/// 2024-01-01T00:00:00Z: a fixed, plausible mtime for every entry.
const MTIME: u64 = 1_704_067_200;
/// The binary dominates the archive; fast compression keeps packaging quick.
const LEVEL: u32 = 1;

pub enum Source {
    Dir,
    Bytes(Vec<u8>),
    File(PathBuf),
}

pub struct Entry {
    /// Relative, `/`-separated; directories without the trailing slash.
    pub path: String,
    pub mode: u32,
    pub source: Source,
}

/// What was written.
pub struct Written {
    pub sha256: String,
    pub size: u64,
}

/// Passes bytes through while hashing and counting them, so the archive is never
/// read back.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `entries` (in sorted path order) to `out` through a temp file and a
/// rename, so a reader never sees half an archive.
pub fn write(out: &Path, mut entries: Vec<Entry>) -> io::Result<Written> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let file = File::create(&tmp)?;
    let hashing = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let gz = GzBuilder::new()
        .mtime(0)
        .write(hashing, Compression::new(LEVEL));
    let mut tar = tar::Builder::new(gz);
    for entry in &entries {
        append(&mut tar, entry)?;
    }
    let gz = tar.into_inner()?;
    let mut hashing = gz.finish()?;
    hashing.flush()?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| io::Error::other(e.to_string()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, out)?;
    Ok(Written {
        sha256: hex::encode(hashing.hasher.finalize()),
        size: hashing.size,
    })
}

fn append<W: Write>(tar: &mut tar::Builder<W>, entry: &Entry) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("root")?;
    header.set_groupname("root")?;
    match &entry.source {
        Source::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.path), io::empty())
        }
        Source::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, &entry.path, bytes.as_slice())
        }
        Source::File(path) => {
            let file = File::open(path)?;
            let size = file.metadata()?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            // `take` guards against the file growing while it is archived.
            tar.append_data(&mut header, &entry.path, file.take(size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                path: "manifest.toml".into(),
                mode: 0o644,
                source: Source::Bytes(b"version = \"1.0.0\"\n".to_vec()),
            },
            Entry {
                path: "bin".into(),
                mode: 0o755,
                source: Source::Dir,
            },
            Entry {
                path: "bin/tool".into(),
                mode: 0o755,
                source: Source::Bytes(b"#!/bin/sh\n".to_vec()),
            },
        ]
    }

    #[test]
    fn same_inputs_give_the_same_bytes_in_sorted_order() {
        let dir =
            std::env::temp_dir().join(format!("demo-gateway-archive-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.tar.gz"), dir.join("b.tar.gz"));
        let wa = write(&a, entries()).unwrap();
        let wb = write(&b, entries()).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        assert_eq!((wa.sha256.clone(), wa.size), (wb.sha256, wb.size));
        assert_eq!(wa.size, bytes.len() as u64);
        assert_eq!(wa.sha256, hex::encode(Sha256::digest(&bytes)));

        let mut archive = tar::Archive::new(GzDecoder::new(bytes.as_slice()));
        let listed: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            vec![
                ("bin/".into(), 0o755, MTIME),
                ("bin/tool".into(), 0o755, MTIME),
                ("manifest.toml".into(), 0o644, MTIME),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
