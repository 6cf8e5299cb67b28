//! Stage: put a release on the host, verified.
//!
//! The artifact is received (from the coordinator's stream, a file on the
//! host, or an http(s) URL) into `<state_dir>/staging/`, hashed while it
//! arrives, checked against the catalog's SHA-256 and size, and handed to the
//! install method to put in place (`crate::install`). Any failure removes
//! what was written: nothing is left behind.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rollgate::outcome::{FailureCode, Staged, StepOutput};
use rollgate::version::Version;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::StepRun;
use crate::health::error_chain;
use crate::http::HttpClient;
use crate::install::tarball::Cleanup;
use crate::install::{Marker, archive};
use crate::kind::Phase;
use crate::op::{OpCtx, StepError};
use crate::service::Service;
use crate::state::AgentState;

/// Where the artifact's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The coordinator streams them after the request.
    Coordinator,
    File(PathBuf),
    Url(url::Url),
}

/// The artifact's bytes as the coordinator streams them; an error says why
/// the stream broke.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A checked stage request.
#[derive(Debug, Clone)]
pub struct Request {
    pub version: Version,
    pub sha256: String,
    pub size: u64,
    /// The catalog's unpacked size; 0 when it does not say.
    pub unpacked_size: u64,
    /// The catalog's image ID (`sha256:<hex>`, compose); empty otherwise.
    pub image_id: String,
    pub source: Source,
}

impl Request {
    /// Checks a request's fields (the rpc edge has taken them off the wire).
    pub fn new(
        version: &str,
        sha256: &str,
        size: u64,
        unpacked_size: u64,
        image_id: &str,
        source: Option<Result<Source, String>>,
    ) -> Result<Request, StepError> {
        let version: Version = version
            .parse()
            .map_err(|e| StepError::invalid(format!("{e}")))?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(StepError::invalid(format!(
                "sha256 {sha256:?} is not 64 lower-case hex digits"
            )));
        }
        // Without a size nothing bounds what is read: a location naming a
        // device (/dev/zero) would fill the disk.
        if size == 0 {
            return Err(StepError::invalid(
                "the header gives no artifact size; every artifact needs its size from the catalog",
            ));
        }
        if !image_id.is_empty()
            && !image_id.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        {
            return Err(StepError::invalid(format!(
                "image_id {image_id:?} is not sha256: and 64 lower-case hex digits"
            )));
        }
        let source = match source {
            None => return Err(StepError::invalid("the header names no source")),
            Some(s) => s.map_err(StepError::invalid)?,
        };
        Ok(Request {
            version,
            sha256: sha256.to_string(),
            size,
            unpacked_size,
            image_id: image_id.to_string(),
            source,
        })
    }
}

/// A location as the header gives it: an absolute path or an http(s) URL.
pub fn source_of_location(loc: &str) -> Result<Source, String> {
    if loc.starts_with('/') {
        return Ok(Source::File(PathBuf::from(loc)));
    }
    let url = url::Url::parse(loc)
        .map_err(|e| format!("location {loc:?} is neither an absolute path nor a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("location {loc:?}: only http and https URLs"));
    }
    Ok(Source::Url(url))
}

/// The staging directory for artifacts being received.
pub fn staging_dir(state: &AgentState) -> PathBuf {
    state.config.agent.state_dir.join("staging")
}

/// Removes everything half-made by a stage a crash cut off.
pub fn clean_staging(state: &AgentState) {
    if let Ok(entries) = std::fs::read_dir(staging_dir(state)) {
        for e in entries.flatten() {
            tracing::info!(path = %e.path().display(), "removing a staging leftover");
            drop(Cleanup::new(e.path()));
        }
    }
    state.installer.clean_leftovers();
}

pub async fn stage(state: &AgentState, ctx: &OpCtx, r: Request, chunks: Option<Chunks>) -> StepRun {
    match state.installer.marker(&r.version).await {
        Ok(Some(m)) if m.sha256 == r.sha256 => {
            return Ok(StepOutput::Stage(Staged {
                version: r.version.clone(),
                location: location(state, &r.version),
                bytes: 0,
                already_present: true,
            }));
        }
        Ok(Some(m)) => {
            return Err(StepError::precondition(format!(
                "release {} is already on this host from another artifact (sha256 {}); remove it first",
                r.version, m.sha256
            )));
        }
        Ok(None) => {}
        Err(e) => return Err(StepError::precondition(e)),
    }
    let min_free = state.config.install.min_free_bytes;
    let max_bytes = state.installer.bound(r.size, r.unpacked_size);
    check_disk(state, r.size, max_bytes, min_free)?;

    let staging = staging_dir(state);
    std::fs::create_dir_all(&staging)
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", staging.display())))?;
    let artifact = staging.join(format!("{}.artifact", ctx.op.replace(['/', ':'], "_")));
    let _artifact_cleanup = Cleanup::new(artifact.clone());
    let floor = Floor {
        dirs: [staging.clone(), state.installer.place().to_path_buf()],
        min_free,
    };
    let received = receive(&r, &artifact, chunks, ctx, &floor).await?;
    // Both phases are journalled behind (`OpCtx::phase_behind`): recovery
    // keeps a stage that reached Unpacked and otherwise only clears the
    // staging directory, which a published release is not in; the end
    // follows Unpacked at once and waits for both.
    ctx.phase_behind(Phase::Received, serde_json::json!({ "bytes": received }))
        .await?;

    ctx.progress(
        "unpack",
        format!("putting {received} bytes in place"),
        0,
        received,
    );
    let marker = Marker {
        version: r.version.to_string(),
        sha256: r.sha256.clone(),
        image_id: r.image_id.clone(),
    };
    let must_contain = match &state.service {
        Service::Exec(e) if state.installer.release_dir(&r.version).is_some() => {
            e.program_in_release()
        }
        _ => None,
    };
    let limits = archive::Limits {
        max_bytes,
        min_free,
    };
    let placed = state
        .installer
        .put_in_place(&r.version, &marker, &artifact, limits, must_contain)
        .await?;
    ctx.phase_behind(
        Phase::Unpacked,
        serde_json::json!({ "at": placed.location, "bytes": placed.bytes }),
    )
    .await?;
    Ok(StepOutput::Stage(Staged {
        version: r.version,
        location: placed.location,
        bytes: received,
        already_present: false,
    }))
}

/// Where a staged release is, for reports.
pub fn location(state: &AgentState, v: &Version) -> String {
    state
        .installer
        .release_dir(v)
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| v.to_string())
}

/// Free disk for the artifact and its unpacked release (at most `unpacked`
/// bytes: the unpack stops there), above the configured floor.
fn check_disk(
    state: &AgentState,
    size: u64,
    unpacked: u64,
    min_free: u64,
) -> Result<(), StepError> {
    let need = size.saturating_add(unpacked).saturating_add(min_free);
    for p in [
        state.installer.place(),
        state.config.agent.state_dir.as_path(),
    ] {
        if let Some(free) = crate::install::free_bytes(p)
            && free < need
        {
            return Err(StepError::new(
                FailureCode::DiskFull,
                format!(
                    "{} has {free} bytes free; staging a {size}-byte artifact needs {need} (the artifact, up to {unpacked} bytes unpacked, and min_free_bytes {min_free})",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The free-space floor kept while receiving.
struct Floor {
    dirs: [PathBuf; 2],
    min_free: u64,
}

/// How often (in bytes received) the floor is checked.
const FLOOR_EVERY: u64 = 4 << 20;

impl Floor {
    fn check(&self) -> Result<(), StepError> {
        for d in &self.dirs {
            if let Some(free) = crate::install::free_bytes(d)
                && free < self.min_free
            {
                return Err(StepError::new(
                    FailureCode::DiskFull,
                    format!(
                        "{} is down to {free} bytes free while receiving; the host keeps at least min_free_bytes {}",
                        d.display(),
                        self.min_free
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Opens a local artifact: only a regular file (after symbolic links) is
/// read. Opened non-blocking, so a FIFO swapped in after the check cannot
/// hang the agent, and checked again on the open descriptor.
async fn open_regular(p: &Path) -> Result<tokio::fs::File, StepError> {
    let fetch = |m: String| StepError::new(FailureCode::FetchFailed, m);
    let not_regular = |what: &str| {
        StepError::invalid(format!(
            "location {} is {what}, not a regular file",
            p.display()
        ))
    };
    let kind = |m: &std::fs::Metadata| {
        let t = m.file_type();
        if t.is_dir() {
            "a directory"
        } else if t.is_file() {
            "a regular file"
        } else {
            "a device, FIFO or socket"
        }
    };
    let m = tokio::fs::metadata(p)
        .await
        .map_err(|e| fetch(format!("cannot open {}: {e}", p.display())))?;
    if !m.is_file() {
        return Err(not_regular(kind(&m)));
    }
    let f = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(p)
        .await
        .map_err(|e| fetch(format!("cannot open {}: {e}", p.display())))?;
    let m = f
        .metadata()
        .await
        .map_err(|e| fetch(format!("cannot read {}: {e}", p.display())))?;
    if !m.is_file() {
        return Err(not_regular(kind(&m)));
    }
    Ok(f)
}

/// Receives the artifact into `path`, hashing it; checks size and SHA-256,
/// and keeps the free-space floor while writing.
async fn receive(
    r: &Request,
    path: &Path,
    chunks: Option<Chunks>,
    ctx: &OpCtx,
    floor: &Floor,
) -> Result<u64, StepError> {
    floor.check()?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut last_report = 0u64;
    let fetch = |m: String| StepError::new(FailureCode::FetchFailed, m);
    let mut since_floor = 0u64;
    let mut write = async |chunk: &[u8], got: &mut u64| -> Result<(), StepError> {
        *got += chunk.len() as u64;
        if *got > r.size {
            return Err(StepError::new(
                FailureCode::ChecksumMismatch,
                format!("the artifact is larger than the {} bytes announced", r.size),
            ));
        }
        since_floor += chunk.len() as u64;
        if since_floor >= FLOOR_EVERY {
            since_floor = 0;
            floor.check()?;
        }
        hasher.update(chunk);
        file.write_all(chunk).await.map_err(|e| {
            if archive::is_disk_full(&e) {
                StepError::new(FailureCode::DiskFull, format!("{}: {e}", path.display()))
            } else {
                StepError::internal(format!("{}: {e}", path.display()))
            }
        })
    };
    match (&r.source, chunks) {
        (Source::Coordinator, Some(mut s)) => {
            while let Some(chunk) = s.next().await {
                let chunk =
                    chunk.map_err(|e| fetch(format!("the coordinator's stream broke: {e}")))?;
                write(&chunk, &mut got).await?;
                if got - last_report >= 4 << 20 {
                    last_report = got;
                    ctx.progress("receive", "receiving", got, r.size);
                }
            }
        }
        (Source::Coordinator, None) => {
            return Err(StepError::internal("no stream to receive from"));
        }
        (Source::File(p), _) => {
            let mut f = open_regular(p).await?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
                    .await
                    .map_err(|e| fetch(format!("cannot read {}: {e}", p.display())))?;
                if n == 0 {
                    break;
                }
                write(&buf[..n], &mut got).await?;
            }
        }
        (Source::Url(u), _) => {
            // Bounded: a stalled download must end the step, not hold the
            // host's only operation slot forever.
            // Through the proxy the environment names, if any
            // (HTTP_PROXY, HTTPS_PROXY, NO_PROXY); probes of the agent's own
            // gateway never go through one.
            let client = HttpClient::new(Duration::from_secs(10), None)
                .stalling_after(Duration::from_secs(60))
                .through(hyper_util::client::proxy::matcher::Matcher::from_env());
            let mut resp = client
                .get(u.as_str())
                .await
                .map_err(|e| fetch(format!("cannot download {u}: {}", error_chain(&e))))?;
            if !resp.status.is_success() {
                return Err(fetch(format!(
                    "cannot download {u}: it answered {}",
                    resp.status
                )));
            }
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| fetch(format!("download of {u} broke: {}", error_chain(&e))))?
            {
                write(&chunk, &mut got).await?;
                if got - last_report >= 4 << 20 {
                    last_report = got;
                    ctx.progress("receive", "downloading", got, r.size);
                }
            }
        }
    }
    // Synced before anything reads it back: the SHA-256 was taken from the
    // stream, not from the disk, and a write-back error is reported only
    // to an fsync; after it the page cache may give back what was on disk
    // before. Nothing later re-checks the whole file (the tar reader stops
    // at its end marker, short of gzip's CRC; dpkg-deb -f reads only the
    // control part), so without this a damaged artifact could be published
    // under a marker whose sha256 vouches for it. Data only: the file's
    // name does not need to survive a crash (recovery clears staging).
    file.sync_data()
        .await
        .map_err(|e| StepError::internal(format!("{}: {e}", path.display())))?;
    if got != r.size {
        return Err(StepError::new(
            FailureCode::FetchFailed,
            format!(
                "received {got} of {} bytes: the artifact is truncated",
                r.size
            ),
        ));
    }
    let digest = hex::encode(hasher.finalize());
    if digest != r.sha256 {
        return Err(StepError::new(
            FailureCode::ChecksumMismatch,
            format!(
                "the artifact's sha256 is {digest}, the catalog says {}",
                r.sha256
            ),
        ));
    }
    ctx.progress("receive", "received and verified", got, got);
    Ok(got)
}
