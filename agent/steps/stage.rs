//! Stage: put a release on disk as `releases/<version>`, verified.
//!
//! The artifact is received (from the coordinator's stream, a file on the
//! host, or an http(s) URL) into `<state_dir>/staging/`, hashed while it
//! arrives, checked against the catalog's SHA-256 and size, unpacked into a
//! hidden directory next to `releases/<version>` and renamed into place. Any
//! failure removes what was written: nothing is left behind.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use rollgate::pb;
use rollgate::version::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Streaming;

use super::archive::{self, ArchiveError};
use super::{StepError, StepResult, phase};
use crate::config::ManagerKind;
use crate::ops::OpCtx;
use crate::state::AgentState;

/// Marker written into every unpacked release: where it came from.
pub const MARKER: &str = ".rollgate-release";

#[derive(Debug, Serialize, Deserialize)]
pub struct Marker {
    pub version: String,
    pub sha256: String,
}

/// Where the artifact's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Coordinator,
    File(PathBuf),
    Url(reqwest::Url),
}

/// A checked StageHeader.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: Version,
    pub sha256: String,
    pub size: u64,
    /// The catalog's unpacked size; 0 when it does not say.
    pub unpacked_size: u64,
    pub source: Source,
}

impl Header {
    pub fn parse(h: &pb::StageHeader) -> Result<Header, StepError> {
        let version: Version = h
            .version
            .parse()
            .map_err(|e| StepError::invalid(format!("{e}")))?;
        if h.sha256.len() != 64
            || !h
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(StepError::invalid(format!(
                "sha256 {:?} is not 64 lower-case hex digits",
                h.sha256
            )));
        }
        // Without a size nothing bounds what is read: a location naming a
        // device (/dev/zero) would fill the disk.
        if h.size == 0 {
            return Err(StepError::invalid(
                "the header gives no artifact size; every artifact needs its size from the catalog",
            ));
        }
        let source = match &h.source {
            Some(pb::stage_header::Source::Coordinator(_)) => Source::Coordinator,
            Some(pb::stage_header::Source::Location(loc)) if loc.starts_with('/') => {
                Source::File(PathBuf::from(loc))
            }
            Some(pb::stage_header::Source::Location(loc)) => {
                let url = reqwest::Url::parse(loc).map_err(|e| {
                    StepError::invalid(format!(
                        "location {loc:?} is neither an absolute path nor a URL: {e}"
                    ))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(StepError::invalid(format!(
                        "location {loc:?}: only http and https URLs"
                    )));
                }
                Source::Url(url)
            }
            None => return Err(StepError::invalid("the header names no source")),
        };
        Ok(Header {
            version,
            sha256: h.sha256.clone(),
            size: h.size,
            unpacked_size: h.unpacked_size,
            source,
        })
    }

    /// Bytes the release may unpack to: the catalog's figure, else the
    /// host's ratio times the archive.
    pub fn unpack_bound(&self, max_ratio: u64) -> u64 {
        if self.unpacked_size > 0 {
            self.unpacked_size
        } else {
            self.size.saturating_mul(max_ratio)
        }
    }
}

/// Removes a path when dropped, unless kept.
struct Cleanup {
    path: Option<PathBuf>,
}

impl Cleanup {
    fn new(path: PathBuf) -> Self {
        Cleanup { path: Some(path) }
    }

    fn keep(&mut self) {
        self.path = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a staging leftover");
            }
        }
    }
}

/// The staging directory for artifacts being received.
pub fn staging_dir(state: &AgentState) -> PathBuf {
    state.config.agent.state_dir.join("staging")
}

/// Removes everything in the staging areas (after a crash cut a Stage off).
pub fn clean_staging(state: &AgentState) {
    let dirs = [staging_dir(state), state.root.releases_dir()];
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let stale = d == staging_dir(state) || name.starts_with(".staging-");
            if stale {
                tracing::info!(path = %e.path().display(), "removing a staging leftover");
                drop(Cleanup::new(e.path()));
            }
        }
    }
}

pub async fn stage(
    state: &AgentState,
    ctx: &OpCtx,
    h: Header,
    stream: Option<Streaming<pb::StageRequest>>,
) -> StepResult {
    let dest = state.root.release_dir(&h.version);
    if dest.exists() {
        let marker: Option<Marker> = std::fs::read(dest.join(MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        return match marker {
            Some(m) if m.sha256 == h.sha256 => Ok(pb::success::Detail::Stage(pb::StageResult {
                version: h.version.to_string(),
                release_dir: dest.display().to_string(),
                bytes: 0,
                already_present: true,
            })),
            Some(m) => Err(StepError::precondition(format!(
                "release {} is already on disk from another artifact (sha256 {}); remove it first",
                h.version, m.sha256
            ))),
            None => Err(StepError::precondition(format!(
                "{} exists but was not staged by rollgate; remove it first",
                dest.display()
            ))),
        };
    }
    let min_free = state.config.gateway.min_free_bytes;
    let max_bytes = h.unpack_bound(state.config.gateway.max_unpack_ratio);
    check_disk(state, h.size, max_bytes, min_free)?;

    let staging = staging_dir(state);
    std::fs::create_dir_all(&staging)
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", staging.display())))?;
    let artifact = staging.join(format!("{}.tar.gz", ctx.op.replace(['/', ':'], "_")));
    let _artifact_cleanup = Cleanup::new(artifact.clone());
    let floor = Floor {
        dirs: [staging.clone(), state.root.path().to_path_buf()],
        min_free,
    };
    let received = receive(&h, &artifact, stream, ctx, &floor).await?;
    phase(ctx, "received", serde_json::json!({ "bytes": received }))?;

    // Unpack next to the final place so the publishing rename is atomic.
    let releases = state.root.releases_dir();
    std::fs::create_dir_all(&releases)
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", releases.display())))?;
    let tmp = releases.join(format!(".staging-{}-{}", h.version, std::process::id()));
    let mut tmp_cleanup = Cleanup::new(tmp.clone());
    drop(Cleanup::new(tmp.clone())); // a leftover of an earlier attempt
    std::fs::create_dir(&tmp)
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", tmp.display())))?;
    ctx.progress(
        "unpack",
        format!("unpacking {} bytes", received),
        0,
        received,
    );
    let free_fn = |p: &Path| crate::install_root::free_bytes(p);
    let (a, t) = (artifact.clone(), tmp.clone());
    let limits = archive::Limits {
        max_bytes,
        min_free,
    };
    let written = tokio::task::spawn_blocking(move || archive::unpack(&a, &t, limits, &free_fn))
        .await
        .map_err(|e| StepError::internal(format!("unpack task failed: {e}")))?
        .map_err(|e| match e {
            ArchiveError::Unsafe { .. }
            | ArchiveError::Malformed(_)
            | ArchiveError::TooLarge { .. } => {
                StepError::new(pb::FailureCode::BadArchive, e.to_string())
            }
            ArchiveError::DiskFull(_) => StepError::new(pb::FailureCode::DiskFull, e.to_string()),
            ArchiveError::Io(_) => StepError::internal(e.to_string()),
        })?;
    if state.config.service.manager == ManagerKind::Exec {
        let program = match &state.service {
            crate::service::Service::Exec(e) => e.program(&tmp),
            crate::service::Service::Systemd(_) => unreachable!("manager is exec"),
        };
        if program.starts_with(&tmp) && !program.is_file() {
            return Err(StepError::new(
                pb::FailureCode::BadArchive,
                format!(
                    "the release has no {} (the configured service command)",
                    program.strip_prefix(&tmp).unwrap_or(&program).display()
                ),
            ));
        }
    }
    let marker = serde_json::to_vec(&Marker {
        version: h.version.to_string(),
        sha256: h.sha256.clone(),
    })
    .map_err(|e| StepError::internal(e.to_string()))?;
    rollgate::fsx::write_atomic(&tmp.join(MARKER), &marker)
        .map_err(|e| StepError::internal(format!("cannot write the release marker: {e}")))?;
    std::fs::rename(&tmp, &dest)
        .and_then(|()| rollgate::fsx::sync_dir(&releases))
        .map_err(|e| {
            StepError::internal(format!(
                "cannot move the release into {}: {e}",
                dest.display()
            ))
        })?;
    tmp_cleanup.keep();
    phase(
        ctx,
        "unpacked",
        serde_json::json!({ "dir": dest, "bytes": written }),
    )?;
    Ok(pb::success::Detail::Stage(pb::StageResult {
        version: h.version.to_string(),
        release_dir: dest.display().to_string(),
        bytes: received,
        already_present: false,
    }))
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
    for p in [state.root.path(), state.config.agent.state_dir.as_path()] {
        if let Some(free) = crate::install_root::free_bytes(p)
            && free < need
        {
            return Err(StepError::new(
                pb::FailureCode::DiskFull,
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
            if let Some(free) = crate::install_root::free_bytes(d)
                && free < self.min_free
            {
                return Err(StepError::new(
                    pb::FailureCode::DiskFull,
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
    let fetch = |m: String| StepError::new(pb::FailureCode::FetchFailed, m);
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
    h: &Header,
    path: &Path,
    stream: Option<Streaming<pb::StageRequest>>,
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
    let fetch = |m: String| StepError::new(pb::FailureCode::FetchFailed, m);
    let mut since_floor = 0u64;
    let mut write = async |chunk: &[u8], got: &mut u64| -> Result<(), StepError> {
        *got += chunk.len() as u64;
        if *got > h.size {
            return Err(StepError::new(
                pb::FailureCode::ChecksumMismatch,
                format!("the artifact is larger than the {} bytes announced", h.size),
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
                StepError::new(
                    pb::FailureCode::DiskFull,
                    format!("{}: {e}", path.display()),
                )
            } else {
                StepError::internal(format!("{}: {e}", path.display()))
            }
        })
    };
    match (&h.source, stream) {
        (Source::Coordinator, Some(mut s)) => {
            while let Some(msg) = s.next().await {
                let msg = msg.map_err(|e| {
                    fetch(format!("the coordinator's stream broke: {}", e.message()))
                })?;
                match msg.msg {
                    Some(pb::stage_request::Msg::Chunk(c)) => write(&c, &mut got).await?,
                    Some(pb::stage_request::Msg::Header(_)) => {
                        return Err(StepError::invalid("a second header in the stream"));
                    }
                    None => {}
                }
                if got - last_report >= 4 << 20 {
                    last_report = got;
                    ctx.progress("receive", "receiving", got, h.size);
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
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| {
                    StepError::internal(format!("cannot build the download client: {e}"))
                })?;
            let resp = client
                .get(u.clone())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| {
                    fetch(format!(
                        "cannot download {u}: {}",
                        crate::health::error_chain(&e)
                    ))
                })?;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| fetch(format!("download of {u} broke: {e}")))?;
                write(&chunk, &mut got).await?;
                if got - last_report >= 4 << 20 {
                    last_report = got;
                    ctx.progress("receive", "downloading", got, h.size);
                }
            }
        }
    }
    file.sync_all()
        .await
        .map_err(|e| StepError::internal(format!("{}: {e}", path.display())))?;
    if got != h.size {
        return Err(StepError::new(
            pb::FailureCode::FetchFailed,
            format!(
                "received {got} of {} bytes: the artifact is truncated",
                h.size
            ),
        ));
    }
    let digest = hex::encode(hasher.finalize());
    if digest != h.sha256 {
        return Err(StepError::new(
            pb::FailureCode::ChecksumMismatch,
            format!(
                "the artifact's sha256 is {digest}, the catalog says {}",
                h.sha256
            ),
        ));
    }
    ctx.progress("receive", "received and verified", got, got);
    Ok(got)
}
