//! Not the product: one entry point per parser that reads bytes rollgate
//! does not control, for the cargo-fuzz targets (`fuzz/fuzz_targets/`) and
//! the corpus-replay test (`tests/corpus_replay.rs`).
//!
//! The parsers live in the two binaries, not in a library, so the binaries'
//! own source files are compiled here once more (`#[path]`), at the module
//! paths they expect (`crate::kind`, `crate::rollout::spec`, ...). Nothing is
//! copied: a change to a parser is fuzzed as it is.
//!
//! Each entry point asserts what must hold for any input, not only "does not
//! panic": a refused journal is left byte for byte as it was, a journal
//! that opened opens again to the same state, and an archive writes
//! nothing outside its release directory.
#![forbid(unsafe_code)]
// Only the parsers' entry points are used here; the rest of each module is
// compiled because the parsers live beside it.
#![allow(dead_code, unused_imports)]

// The agent's modules.
#[path = "../../../agent/install/archive.rs"]
mod archive;
#[path = "../../../agent/config/mod.rs"]
mod config;
#[path = "../../../agent/conninfo.rs"]
mod conninfo;
#[path = "../../../agent/journal.rs"]
mod journal;
#[path = "../../../agent/kind.rs"]
mod kind;

// The coordinator's modules.
#[path = "../../../coordinator/ansible/mod.rs"]
mod ansible;
#[path = "../../../coordinator/batch.rs"]
mod batch;
#[path = "../../../coordinator/fleet_tls.rs"]
mod fleet_tls;
#[path = "../../../coordinator/inventory.rs"]
mod inventory;
mod rollout;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Relative paths in a parsed file join this; it does not exist, so a
/// parser that looks for a file it names finds nothing.
const BASE: &str = "/nonexistent/rollgate-fuzz";

/// A fuzz target: any bytes in, a panic when a promise is broken.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("catalog", catalog),
    ("inventory", inventory),
    ("agent_config", agent_config),
    ("agent_journal", agent_journal),
    ("rollout_journal", rollout_journal),
    ("archive", archive),
    ("ansible_inventory", ansible_inventory),
];

/// The release catalog (`releases.toml`).
pub fn catalog(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rollgate::catalog::Catalog::parse(text, Path::new(BASE));
    }
}

/// The coordinator's inventory (`fleet.toml`).
pub fn inventory(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inventory::parse(text, Path::new(BASE));
    }
}

/// An Ansible inventory (INI or YAML, as `rollgate inventory import` reads
/// it), rendered to a fleet.toml: whatever renders must read back.
pub fn ansible_inventory(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let name = if data.first() == Some(&b'a') {
        "hosts.yml"
    } else {
        "hosts"
    };
    let path = dir.path().join(name);
    fs::write(&path, data).expect("write the inventory");
    let Ok(inv) = ansible::read(&path) else {
        return;
    };
    let opts = ansible::Options {
        cp_group: "cp".into(),
        dp_group: "dp".into(),
        port: 7443,
        source: "fuzz".into(),
    };
    if let Ok(r) = ansible::render(&inv, &opts)
        && let Err(e) = inventory::parse(&r.toml, Path::new(BASE))
    {
        panic!("a rendered inventory does not read back: {e}\n{}", r.toml);
    }
}

/// The agent's configuration (`agent.toml`).
pub fn agent_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::parse(text, Path::new(BASE));
    }
}

/// The agent's journal, replayed as the agent does at start.
pub fn agent_journal(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("journal");
    fs::write(&path, data).expect("write the journal");
    match journal::Journal::open(dir.path()) {
        Err(_) => assert_eq!(
            fs::read(&path).expect("read the journal"),
            data,
            "a journal the agent refuses is left as it was"
        ),
        Ok((j, ops)) => {
            drop(j);
            let after = fs::read(&path).expect("read the journal");
            let (j, again) =
                journal::Journal::open(dir.path()).expect("a journal that opened opens again");
            drop(j);
            assert_eq!(
                format!("{ops:?}"),
                format!("{again:?}"),
                "the second replay sees what the first saw"
            );
            assert_eq!(
                fs::read(&path).expect("read the journal"),
                after,
                "a second open changes nothing"
            );
        }
    }
}

/// A rollout journal, read (history) and opened to continue (resume).
pub fn rollout_journal(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rollout.jsonl");
    fs::write(&path, data).expect("write the journal");
    let read = rollout::log::RolloutLog::read(&path).map(|l| format!("{:?}", &l.records));
    assert_eq!(
        fs::read(&path).expect("read the journal"),
        data,
        "reading a journal changes nothing"
    );
    let opened = rollout::log::RolloutLog::open(&path).map(|l| format!("{:?}", &l.records));
    match (&read, &opened) {
        (Ok(r), Ok(o)) => {
            assert_eq!(r, o, "read and open see the same records");
            let again = rollout::log::RolloutLog::read(&path)
                .map(|l| format!("{:?}", &l.records))
                .expect("a journal that opened reads again");
            assert_eq!(&again, o, "cutting a torn tail keeps every record");
        }
        (Err(_), Err(_)) => assert_eq!(
            fs::read(&path).expect("read the journal"),
            data,
            "a journal that is refused is left as it was"
        ),
        _ => panic!("read gave {read:?} but open gave {opened:?}"),
    }
}

/// A release archive. The input is a tar stream; it is gzipped here, as
/// releases are, so the fuzzer mutates tar headers rather than deflate bits.
pub fn archive(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("release.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(&file).expect("create the archive"),
        flate2::Compression::fast(),
    );
    gz.write_all(data).expect("write the archive");
    gz.finish().expect("finish the archive");
    let dest = dir.path().join("release");
    fs::create_dir(&dest).expect("create the release directory");
    let limits = archive::Limits {
        max_bytes: 4 << 20,
        min_free: 0,
    };
    let unpacked = archive::unpack(&file, &dest, limits, &|_| None);

    let mut beside: Vec<_> = fs::read_dir(dir.path())
        .expect("list the temporary directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["release", "release.tar.gz"],
        "nothing is written beside the release"
    );
    if unpacked.is_ok() {
        let root = fs::canonicalize(&dest).expect("canonical release directory");
        walk(&dest, &mut |p, meta| {
            if meta.file_type().is_symlink() {
                let real = fs::canonicalize(p).expect("an unpacked link leads somewhere");
                assert!(
                    real.starts_with(&root),
                    "{} leaves the release",
                    p.display()
                );
            } else {
                assert_eq!(
                    meta.permissions().mode() & 0o7000,
                    0,
                    "{} keeps a setuid, setgid or sticky bit",
                    p.display()
                );
            }
        });
    }
}

/// Visits everything under `dir` without following links.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &fs::Metadata)) {
    for e in fs::read_dir(dir).expect("list a directory") {
        let p = e.expect("an entry").path();
        let meta = fs::symlink_metadata(&p).expect("stat an entry");
        visit(&p, &meta);
        if meta.is_dir() {
            walk(&p, visit);
        }
    }
}
