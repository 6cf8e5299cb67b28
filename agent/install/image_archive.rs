//! Reading an image archive (`docker save` format, gzipped or not) before
//! it is loaded: the ID the engine will give the image (the SHA-256 of its
//! config) and the tags it carries. An image whose ID differs from the
//! catalog's, or that would tag anything but the release, is refused before
//! the engine sees a byte of it.

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::archive::Bounded;

/// Entries hashed while reading: configs and the manifest are small, layers
/// are not and need no hash here (the engine checks them against the
/// config's diff IDs).
const SMALL: u64 = 4 << 20;

/// What the archive says about its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedImage {
    /// `sha256:<hex>` of the config: the ID `docker load` gives it.
    pub id: String,
    /// The references it tags (`demo-gateway:3.4.0`).
    pub tags: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// Reads `archive` once, reading at most `limit` decompressed bytes.
pub fn inspect(archive: &Path, limit: u64) -> Result<ArchivedImage, String> {
    let file = std::fs::File::open(archive)
        .map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
    let mut reader = io::BufReader::new(file);
    let gzipped = reader
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("cannot read {}: {e}", archive.display()))?;
    let stream: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(Bounded::new(stream, limit));
    let mut hashes: HashMap<String, String> = HashMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    let bad = |e: io::Error| format!("not an image archive: {e}");
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() || entry.size() > SMALL {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        let mut body = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut body).map_err(bad)?;
        if name == "manifest.json" {
            manifest = Some(body);
        } else {
            hashes.insert(name, hex::encode(Sha256::digest(&body)));
        }
    }
    let manifest = manifest.ok_or("not an image archive: it has no manifest.json")?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| format!("the archive's manifest.json is malformed: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "the archive holds {} images; a release archive holds exactly one",
            entries.len()
        ));
    };
    let config = entry.config.trim_start_matches("./");
    let hash = hashes
        .get(config)
        .ok_or_else(|| format!("the archive's manifest names config {config:?}, which it lacks"))?;
    Ok(ArchivedImage {
        id: format!("sha256:{hash}"),
        tags: entry.repo_tags.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn the_id_is_the_config_hash_and_the_tags_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"config":{}}"#;
        let hex = hex::encode(Sha256::digest(config));
        let manifest =
            format!(r#"[{{"Config":"{hex}.json","RepoTags":["gw:1.0.0"],"Layers":[]}}]"#);
        let plain = dir.path().join("image.tar");
        std::fs::write(
            &plain,
            tar_with(&[
                ("manifest.json", manifest.as_bytes()),
                (&format!("{hex}.json"), config),
            ]),
        )
        .unwrap();
        let got = inspect(&plain, 1 << 30).unwrap();
        assert_eq!(got.id, format!("sha256:{hex}"));
        assert_eq!(got.tags, vec!["gw:1.0.0".to_string()]);

        let gz = dir.path().join("image.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &std::fs::read(&plain).unwrap()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(inspect(&gz, 1 << 30).unwrap(), got);
    }

    #[test]
    fn archives_without_a_manifest_or_config_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, tar_with(&[("x.json", b"{}")])).unwrap();
        assert!(
            inspect(&p, 1 << 30)
                .unwrap_err()
                .contains("no manifest.json")
        );
        std::fs::write(
            &p,
            tar_with(&[("manifest.json", br#"[{"Config":"missing.json"}]"#)]),
        )
        .unwrap();
        assert!(inspect(&p, 1 << 30).unwrap_err().contains("lacks"));
        std::fs::write(&p, b"not a tar at all, just text that is long enough").unwrap();
        assert!(inspect(&p, 1 << 30).is_err());
    }
}
