//! Artifacts sent to agents: each read once per rollout, checked against the
//! catalog (the plan verified the file; this is the bytes actually sent),
//! and shared as 1 MiB slices by every host's Stage stream.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rollgate::catalog::{Artifact, Package};
use rollgate::method::Method;
use rollgate::pb;
use rollgate::version::Version;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// An artifact's slices, shared by every Stage stream that sends it.
type Slices = Arc<Vec<Bytes>>;

/// Artifacts read so far, by version and install method.
#[derive(Default)]
pub struct Artifacts {
    cache: Mutex<HashMap<(String, Method), Slices>>,
}

impl Artifacts {
    /// A file artifact's slices, read from disk the first time only; URL
    /// artifacts are fetched by the agents (no slices).
    pub async fn slices(&self, v: &Version, r: &Package) -> Result<Arc<Vec<Bytes>>, String> {
        let key = (v.to_string(), r.method);
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let chunks = match &r.artifact {
            Artifact::Url(_) => Vec::new(),
            Artifact::File(p) => {
                let data = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("cannot read artifact {}: {e}", p.display()))?;
                let digest = hex::encode(Sha256::digest(&data));
                if data.len() as u64 != r.size || digest != r.sha256 {
                    return Err(format!(
                        "artifact {} changed since it was verified: {} bytes, sha256 {digest}",
                        p.display(),
                        data.len()
                    ));
                }
                let data = Bytes::from(data);
                (0..data.len())
                    .step_by(1 << 20)
                    .map(|o| data.slice(o..(o + (1 << 20)).min(data.len())))
                    .collect()
            }
        };
        let chunks = Arc::new(chunks);
        cache.insert(key, chunks.clone());
        Ok(chunks)
    }
}

/// The messages of a Stage call: streamed from here for files (the shared
/// slices, not copies), fetched by the agent for URLs.
pub fn stage_messages(
    op: &str,
    version: &Version,
    r: &Package,
    chunks: &[Bytes],
) -> Vec<pb::StageRequest> {
    let source = match &r.artifact {
        Artifact::Url(u) => pb::stage_header::Source::Location(u.clone()),
        Artifact::File(_) => pb::stage_header::Source::Coordinator(pb::CoordinatorSource {}),
    };
    let header = pb::StageHeader {
        operation_id: op.into(),
        version: version.to_string(),
        sha256: r.sha256.clone(),
        size: r.size,
        source: Some(source),
        unpacked_size: r.unpacked_size.unwrap_or(0),
        image_id: r.image_id.clone().unwrap_or_default(),
    };
    let mut msgs = vec![pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(header)),
    }];
    if matches!(r.artifact, Artifact::File(_)) {
        msgs.extend(chunks.iter().map(|c| pb::StageRequest {
            msg: Some(pb::stage_request::Msg::Chunk(c.clone())),
        }));
    }
    msgs
}
