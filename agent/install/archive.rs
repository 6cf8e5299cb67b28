//! Unpacking a release archive (`.tar.gz`) without trusting it.
//!
//! Refused: absolute paths, `..`, entries placed through a symbolic link,
//! symbolic links that point outside the release (absolute, or climbing above
//! it), hard links, device files and FIFOs. setuid/setgid bits are dropped.
//! Every file is fsynced as it is written; the directories are fsynced by
//! `seal`, once the caller has added what else the release holds (its
//! marker), so they are synced once. Free disk is watched while writing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Why an archive was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive expands beyond {limit} bytes ({why}); refused as a decompression bomb")]
    TooLarge { limit: u64, why: &'static str },
    #[error("unsafe archive entry {entry:?}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("malformed or truncated archive: {0}")]
    Malformed(String),
    #[error("not enough disk: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Io(String),
}

/// Free bytes on the file system holding `path`.
pub type FreeBytes = dyn Fn(&Path) -> Option<u64> + Send + Sync;

/// How far an unpack may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file content the release may hold. Checked as each block is
    /// written, so a bomb stops here, not at a full disk.
    pub max_bytes: u64,
    /// Free bytes that must remain on the destination's file system.
    pub min_free: u64,
}

/// Headers, padding and pax records are not file content; a tar stream of
/// a release is never much larger than its content, so the decompressed
/// stream is bounded too (a huge pax record would otherwise be read into
/// memory whole by the tar reader).
fn stream_limit(max_bytes: u64) -> u64 {
    max_bytes.saturating_mul(2).saturating_add(16 << 20)
}

/// Counts decompressed bytes and fails the read once they pass `limit`.
pub(super) struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, BOMB_STREAM));
        }
        Ok(n)
    }
}

const BOMB_STREAM: &str = "decompressed stream too large";

impl<R> Bounded<R> {
    pub(super) fn new(inner: R, limit: u64) -> Self {
        Bounded {
            inner,
            read: 0,
            limit,
        }
    }
}

/// Unpacks `archive` into the (new, empty) directory `dest` within `limits`,
/// each file fsynced; `seal` then fsyncs the directories. Returns the bytes
/// written.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    limits: Limits,
    free: &FreeBytes,
) -> Result<u64, ArchiveError> {
    let Limits {
        max_bytes,
        min_free,
    } = limits;
    let file =
        File::open(archive).map_err(|e| ArchiveError::Io(format!("{}: {e}", archive.display())))?;
    let bounded = Bounded {
        inner: flate2::read::GzDecoder::new(io::BufReader::new(file)),
        read: 0,
        limit: stream_limit(max_bytes),
    };
    let mut tar = tar::Archive::new(bounded);
    let mut written = 0u64;
    let mut since_check = 0u64;
    let entries = tar.entries().map_err(malformed)?;
    for entry in entries {
        let mut entry = entry.map_err(malformed)?;
        let raw = entry.path().map_err(malformed)?.into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = clean_path(&raw).map_err(|why| unsafe_entry(&shown, why))? else {
            continue; // "./" itself
        };
        refuse_links_on_the_way(dest, &rel).map_err(|why| unsafe_entry(&shown, why))?;
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            EntryType::Directory => {
                fs::create_dir_all(&target).map_err(|e| io_err(&target, e))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                let mode = entry.header().mode().map_err(malformed)?;
                // Executable bits survive; setuid, setgid and sticky never do.
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => {
                            unsafe_entry(&shown, "appears twice".into())
                        }
                        _ => io_err(&target, e),
                    })?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(malformed)?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if written > max_bytes {
                        return Err(ArchiveError::TooLarge {
                            limit: max_bytes,
                            why: "file content",
                        });
                    }
                    out.write_all(&buf[..n]).map_err(|e| io_err(&target, e))?;
                    since_check += n as u64;
                    if since_check >= 8 << 20 {
                        since_check = 0;
                        check_free(dest, min_free, free)?;
                    }
                }
                out.sync_all().map_err(|e| io_err(&target, e))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(malformed)?
                    .ok_or_else(|| unsafe_entry(&shown, "symbolic link without a target".into()))?
                    .into_owned();
                check_link(&rel, &link).map_err(|why| unsafe_entry(&shown, why))?;
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(|e| io_err(&target, e))?;
            }
            EntryType::Link => {
                return Err(unsafe_entry(&shown, "hard links are not allowed".into()));
            }
            EntryType::Char | EntryType::Block => {
                return Err(unsafe_entry(&shown, "device files are not allowed".into()));
            }
            EntryType::Fifo => return Err(unsafe_entry(&shown, "FIFOs are not allowed".into())),
            // pax and GNU long-name headers are consumed by the tar crate.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            other => {
                return Err(unsafe_entry(
                    &shown,
                    format!("entry type {other:?} is not allowed"),
                ));
            }
        }
    }
    check_free(dest, min_free, free)?;
    links_stay_inside(dest)?;
    Ok(written)
}

/// fsyncs every directory of an unpacked tree (its files were synced as
/// written), so the rename that publishes it cannot outrun its content.
pub fn seal(dest: &Path) -> Result<(), ArchiveError> {
    sync_tree(dest).map_err(|e| io_err(dest, e))
}

/// Every symbolic link, followed as the kernel follows it (through other
/// links), must end inside the release. Each link was checked by its text
/// when unpacked, but links that lead through other links (`a -> .`,
/// `b -> a/..`) can only be judged once all of them exist.
fn links_stay_inside(dest: &Path) -> Result<(), ArchiveError> {
    let root = fs::canonicalize(dest).map_err(|e| io_err(dest, e))?;
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let e = e.map_err(|e| io_err(&dir, e))?;
            let p = e.path();
            let t = e.file_type().map_err(|e| io_err(&p, e))?;
            let shown = || p.strip_prefix(dest).unwrap_or(&p).display().to_string();
            if t.is_symlink() {
                match fs::canonicalize(&p) {
                    Ok(real) if real.starts_with(&root) => {}
                    Ok(real) => {
                        return Err(unsafe_entry(
                            &shown(),
                            format!(
                                "symbolic link resolves to {}, outside the release",
                                real.display()
                            ),
                        ));
                    }
                    Err(_) => {
                        return Err(unsafe_entry(&shown(), "symbolic link leads nowhere".into()));
                    }
                }
            } else if t.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

fn malformed(e: io::Error) -> ArchiveError {
    if is_disk_full(&e) {
        return ArchiveError::DiskFull(e.to_string());
    }
    // Only `Bounded` says FileTooLarge here; the tar reader keeps the kind
    // when it wraps the error.
    if e.kind() == io::ErrorKind::FileTooLarge {
        return ArchiveError::TooLarge {
            limit: 0,
            why: BOMB_STREAM,
        };
    }
    ArchiveError::Malformed(e.to_string())
}

fn io_err(path: &Path, e: io::Error) -> ArchiveError {
    if is_disk_full(&e) {
        return ArchiveError::DiskFull(format!("{}: {e}", path.display()));
    }
    ArchiveError::Io(format!("{}: {e}", path.display()))
}

pub fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32)
        || e.raw_os_error() == Some(nix::errno::Errno::EDQUOT as i32)
}

fn unsafe_entry(entry: &str, why: String) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.to_string(),
        why,
    }
}

fn check_free(dest: &Path, min_free: u64, free: &FreeBytes) -> Result<(), ArchiveError> {
    match free(dest) {
        Some(f) if f < min_free => Err(ArchiveError::DiskFull(format!(
            "{f} bytes free, the host keeps at least {min_free}"
        ))),
        _ => Ok(()),
    }
}

/// The entry path as plain relative components; None for the root itself.
fn clean_path(p: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// No entry may be written through a symbolic link made by an earlier entry:
/// the link could lead anywhere once another link is involved.
fn refuse_links_on_the_way(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut p = dest.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("goes through the symbolic link {}", p.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A symbolic link must be relative and, read from where it stands, stay
/// inside the release.
fn check_link(at: &Path, target: &Path) -> Result<(), String> {
    if target.is_absolute() {
        return Err(format!(
            "symbolic link to the absolute path {}",
            target.display()
        ));
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!(
                        "symbolic link {} points outside the release",
                        target.display()
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("symbolic link to an absolute path".into());
            }
        }
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    rollgate::fsx::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_limit(_: &Path) -> Option<u64> {
        None
    }

    const LOOSE: Limits = Limits {
        max_bytes: 1 << 30,
        min_free: 0,
    };

    /// Builds a .tar.gz with raw header names, so hostile names can be written.
    fn tarball(dir: &Path, entries: &[(&str, EntryType, &[u8], &str)]) -> PathBuf {
        let path = dir.join("a.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                let l = &mut h.as_old_mut().linkname;
                l[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn try_unpack(
        entries: &[(&str, EntryType, &[u8], &str)],
    ) -> (tempfile::TempDir, Result<u64, ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let a = tarball(dir.path(), entries);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let r = unpack(&a, &dest, LOOSE, &no_limit);
        (dir, r)
    }

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let (dir, r) = try_unpack(&[
            ("bin/", EntryType::Directory, b"", ""),
            ("bin/gw", EntryType::Regular, b"#!/bin/sh\n", ""),
            ("conf/a.toml", EntryType::Regular, b"x=1\n", ""),
            ("bin/conf", EntryType::Symlink, b"", "../conf"),
        ]);
        assert_eq!(r.unwrap(), 14);
        let out = dir.path().join("out");
        assert_eq!(fs::read(out.join("bin/gw")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::read(out.join("bin/conf/a.toml")).unwrap(), b"x=1\n");
    }

    #[test]
    fn refuses_hostile_entries() {
        type Entries<'a> = Vec<(&'a str, EntryType, &'a [u8], &'a str)>;
        let cases: Vec<(Entries, &str)> = vec![
            (vec![("../evil", EntryType::Regular, b"x", "")], "'..'"),
            (vec![("a/../../evil", EntryType::Regular, b"x", "")], "'..'"),
            (
                vec![("/etc/evil", EntryType::Regular, b"x", "")],
                "absolute",
            ),
            (vec![("l", EntryType::Symlink, b"", "/etc")], "absolute"),
            (
                vec![("a/l", EntryType::Symlink, b"", "../../etc")],
                "outside",
            ),
            (
                vec![
                    ("d", EntryType::Symlink, b"", "."),
                    ("d/x", EntryType::Regular, b"x", ""),
                ],
                "symbolic link",
            ),
            (vec![("h", EntryType::Link, b"", "bin/gw")], "hard links"),
            (vec![("dev", EntryType::Char, b"", "")], "device"),
            (vec![("p", EntryType::Fifo, b"", "")], "FIFO"),
            (
                vec![
                    ("f", EntryType::Regular, b"1", ""),
                    ("f", EntryType::Regular, b"2", ""),
                ],
                "twice",
            ),
            // Each link looks harmless alone; together they climb out.
            (
                vec![
                    ("a", EntryType::Symlink, b"", "."),
                    ("b", EntryType::Symlink, b"", "a/.."),
                    ("c", EntryType::Symlink, b"", "b/.."),
                ],
                "outside the release",
            ),
            (
                vec![("d", EntryType::Symlink, b"", "missing")],
                "leads nowhere",
            ),
        ];
        for (entries, want) in cases {
            let (dir, r) = try_unpack(&entries);
            let e = r.expect_err(want).to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn a_truncated_archive_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 100_000];
        let a = tarball(dir.path(), &[("big", EntryType::Regular, &data, "")]);
        let bytes = fs::read(&a).unwrap();
        fs::write(&a, &bytes[..bytes.len() / 2]).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let e = unpack(&a, &dest, LOOSE, &no_limit).unwrap_err();
        assert!(matches!(e, ArchiveError::Malformed(_)), "{e}");
    }

    #[test]
    fn stops_when_the_free_disk_floor_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let a = tarball(dir.path(), &[("f", EntryType::Regular, b"data", "")]);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let limits = Limits {
            min_free: 1000,
            ..LOOSE
        };
        let e = unpack(&a, &dest, limits, &|_: &Path| Some(10)).unwrap_err();
        assert!(matches!(e, ArchiveError::DiskFull(_)), "{e}");
    }

    /// A gzip bomb: megabytes of zeros that compress to a few kilobytes.
    fn bomb(dir: &Path, content: u64) -> PathBuf {
        let path = dir.join("bomb.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::best(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_path("zeros").unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(content);
        h.set_cksum();
        b.append(&h, io::repeat(0).take(content)).unwrap();
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_bound_not_at_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let a = bomb(dir.path(), 200 << 20);
        let archive_size = fs::metadata(&a).unwrap().len();
        assert!(archive_size < 1 << 20, "{archive_size}");
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let limits = Limits {
            max_bytes: 4 << 20,
            min_free: 0,
        };
        let e = unpack(&a, &dest, limits, &no_limit).unwrap_err();
        assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("bomb"), "{e}");
        let on_disk = fs::metadata(dest.join("zeros")).map_or(0, |m| m.len());
        assert!(on_disk <= 4 << 20, "wrote {on_disk} bytes past the bound");
    }
}
