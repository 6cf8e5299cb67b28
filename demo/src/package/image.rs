//! A release as a container image, written the way `docker save` writes one
//! and `docker load` reads it: one layer holding the release under
//! `/opt/demo-gateway` plus the shared libraries its binary needs, a config
//! (entrypoint, SIGQUIT as the stop signal, the version as a label) and a
//! manifest tagging it `demo-gateway:<version>`. Built from files, with no
//! base image: no registry is reachable, and fleets that take images this
//! way are often air-gapped. The image ID is the SHA-256 of the config, so
//! the same inputs always give the same ID.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::archive::{Entry, Source};

/// Where the release lives inside the image.
pub const RELEASE_DIR: &str = "opt/demo-gateway";
/// The image repository every release is tagged in.
pub const REPOSITORY: &str = "demo-gateway";
/// 2024-01-01T00:00:00Z, as every archive of the package step.
const MTIME: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// What was written.
pub struct Written {
    pub sha256: String,
    pub size: u64,
    /// `sha256:<hex>`: the ID `docker load` gives the image.
    pub id: String,
}

/// The shared libraries `binary` loads (by `ldd`), to put beside it.
pub fn libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    if !out.status.success() {
        // A static binary: nothing to add.
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Writes the image of `version` (the release's `entries`, relative to the
/// release dir, and `libs` at their own paths) to `out` as a gzipped
/// `docker save` archive.
pub fn write(
    out: &Path,
    version: &str,
    entries: &[Entry],
    libs: &[PathBuf],
) -> io::Result<Written> {
    let layer = layer(entries, libs)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": [format!("/{RELEASE_DIR}/bin/demo-gateway")],
            "StopSignal": "SIGQUIT",
            "Labels": { "org.opencontainers.image.version": version },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": CREATED, "created_by": "demo-gateway package" }],
    }))
    .map_err(io::Error::other)?;
    let config_hex = hex::encode(Sha256::digest(&config));
    let layer_dir = diff_id.trim_start_matches("sha256:").to_string();
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{REPOSITORY}:{version}")],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]))
    .map_err(io::Error::other)?;

    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    let gz = GzBuilder::new().mtime(0).write(
        io::BufWriter::with_capacity(1 << 20, file),
        Compression::new(1),
    );
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8], dir: bool| -> io::Result<()> {
        let mut h = header(if dir { 0o755 } else { 0o644 });
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
        } else {
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, path, data)
        }
    };
    add(&layer_dir, &[], true)?;
    add(&format!("{layer_dir}/layer.tar"), &layer, false)?;
    add(&format!("{config_hex}.json"), &config, false)?;
    add("manifest.json", &manifest, false)?;
    let mut w = tar.into_inner()?.finish()?;
    w.flush()?;
    let file = w
        .into_inner()
        .map_err(|e| io::Error::other(e.to_string()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, out)?;
    let bytes = std::fs::read(out)?;
    Ok(Written {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        id: format!("sha256:{config_hex}"),
    })
}

fn header(mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The layer: every directory on the way, the release, the libraries.
fn layer(entries: &[Entry], libs: &[PathBuf]) -> io::Result<Vec<u8>> {
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for e in entries {
        let path = format!("{RELEASE_DIR}/{}", e.path);
        match &e.source {
            Source::Dir => {}
            Source::Bytes(b) => files.push((path, e.mode, b.clone())),
            Source::File(p) => {
                let mut data = Vec::new();
                std::fs::File::open(p)?.read_to_end(&mut data)?;
                files.push((path, e.mode, data));
            }
        }
    }
    for lib in libs {
        let data = std::fs::read(lib)?;
        let path = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push((path, 0o755, data));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dirs: Vec<String> = files
        .iter()
        .flat_map(|(p, ..)| {
            let parts: Vec<&str> = p.split('/').collect();
            (1..parts.len())
                .map(|i| parts[..i].join("/"))
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut tar = tar::Builder::new(Vec::new());
    for d in &dirs {
        let mut h = header(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, format!("{d}/"), io::empty())?;
    }
    for (path, mode, data) in &files {
        let mut h = header(*mode);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data.as_slice())?;
    }
    tar.into_inner()
}

/// The image architecture of this build, in Docker's words.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
