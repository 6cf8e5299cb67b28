//! The `compose` install method: a release is an image loaded into the
//! host's Docker Engine and tagged `<image>:<version>`; the release the host
//! runs is the one variable of the compose env file that pins the tag.
//!
//! ```text
//! <project_dir>/.env             GATEWAY_TAG=3.3.0   (switched: one variable)
//! <state_dir>/images/<v>.json    marker of every image rollgate loaded
//! ```
//!
//! The image is checked before the engine sees it (its ID and its tags, read
//! from the archive), loaded, and checked again as the engine reports it.
//! Switching rewrites the variable atomically; recreating the containers is
//! the service manager's start (`crate::service::compose`).

use std::path::{Path, PathBuf};

use rollgate::outcome::FailureCode;
use rollgate::version::Version;

use super::tarball::doomed_releases;
use super::{Marker, Placed, env_file, image_archive};
use crate::config::ComposeConfig;
use crate::docker::Docker;
use crate::op::StepError;

#[derive(Debug)]
pub struct Compose {
    cfg: ComposeConfig,
    markers: PathBuf,
    docker: Docker,
}

impl Compose {
    pub fn new(cfg: ComposeConfig, state_dir: &Path) -> Self {
        Compose {
            docker: Docker::new(cfg.docker_socket.clone()),
            markers: state_dir.join("images"),
            cfg,
        }
    }

    pub fn config(&self) -> &ComposeConfig {
        &self.cfg
    }

    /// `<image>:<version>`.
    pub fn reference(&self, v: &Version) -> String {
        format!("{}:{v}", self.cfg.image)
    }

    fn marker_path(&self, v: &Version) -> PathBuf {
        self.markers.join(format!("{v}.json"))
    }

    /// The version the env file pins; None when it does not pin one.
    pub fn current(&self) -> Option<Version> {
        match env_file::read(&self.cfg.env_file, &self.cfg.variable) {
            Ok(v) => v?.parse().ok(),
            Err(e) => {
                tracing::warn!(file = %self.cfg.env_file.display(), error = %e, "cannot read the env file");
                None
            }
        }
    }

    /// Versions rollgate loaded (they have a marker), ascending.
    pub fn releases(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(&self.markers) else {
            return Vec::new();
        };
        let mut out: Vec<Version> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        out.sort();
        out
    }

    /// The marker of a loaded release whose image is still on the engine
    /// with the ID it was loaded with. A marker whose image went (removed by
    /// hand) is dropped: the release is staged again.
    pub async fn marker(&self, v: &Version) -> Result<Option<Marker>, String> {
        let path = self.marker_path(v);
        let m: Marker = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{} is damaged ({e}); remove it", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let reference = self.reference(v);
        match self.docker.image_id(&reference).await? {
            Some(id) if id == m.image_id => Ok(Some(m)),
            other => {
                tracing::warn!(%reference, engine = ?other, marker = %m.image_id, "the staged image is gone from the engine; forgetting it");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Checks the archive, loads it, checks what the engine made of it, and
    /// records the marker. Nothing is loaded when a check before the load
    /// fails; a load the engine reports differently is removed again.
    pub async fn put_in_place(
        &self,
        v: &Version,
        marker: &Marker,
        artifact: &Path,
        max_bytes: u64,
    ) -> Result<Placed, StepError> {
        let reference = self.reference(v);
        if marker.image_id.is_empty() {
            return Err(StepError::invalid(format!(
                "the catalog gives no image ID for {reference}; a compose host checks every image it loads against one"
            )));
        }
        let a = artifact.to_path_buf();
        let archived = tokio::task::spawn_blocking(move || image_archive::inspect(&a, max_bytes))
            .await
            .map_err(|e| StepError::internal(format!("inspect task failed: {e}")))?
            .map_err(|e| StepError::new(FailureCode::BadArchive, e))?;
        if archived.id != marker.image_id {
            return Err(StepError::new(
                FailureCode::ChecksumMismatch,
                format!(
                    "the archive's image ID is {}, the catalog says {}; not loaded",
                    archived.id, marker.image_id
                ),
            ));
        }
        if archived.tags != [reference.clone()] {
            return Err(StepError::new(
                FailureCode::BadArchive,
                format!(
                    "the archive tags {:?}; a release archive tags exactly {reference:?} (loading it would move other tags); not loaded",
                    archived.tags
                ),
            ));
        }
        let engine = |e: String| StepError::new(FailureCode::CommandFailed, e);
        match self.docker.image_id(&reference).await.map_err(engine)? {
            Some(id) if id == marker.image_id => {
                tracing::info!(%reference, "the image is already on the engine; adopting it");
            }
            Some(id) => {
                return Err(StepError::precondition(format!(
                    "{reference} is already on the engine as image {id}, not the catalog's {}; remove it first",
                    marker.image_id
                )));
            }
            None => {
                let loaded = self.docker.load(artifact).await.map_err(engine)?;
                tracing::info!(%reference, ?loaded, "image loaded");
                let id = self.docker.image_id(&reference).await.map_err(engine)?;
                if id.as_deref() != Some(marker.image_id.as_str()) {
                    let _ = self.docker.remove_image(&reference).await;
                    return Err(StepError::new(
                        FailureCode::ChecksumMismatch,
                        format!(
                            "the engine loaded {reference} as {id:?}, the catalog says {}; removed again",
                            marker.image_id
                        ),
                    ));
                }
            }
        }
        std::fs::create_dir_all(&self.markers).map_err(|e| {
            StepError::internal(format!("cannot create {}: {e}", self.markers.display()))
        })?;
        let text = serde_json::to_vec(marker).map_err(|e| StepError::internal(e.to_string()))?;
        rollgate::fsx::write_atomic(&self.marker_path(v), &text)
            .map_err(|e| StepError::internal(format!("cannot write the image marker: {e}")))?;
        Ok(Placed {
            location: reference,
            bytes: std::fs::metadata(artifact).map(|m| m.len()).unwrap_or(0),
        })
    }

    /// Pins `v` in the env file (the containers follow on the next start).
    pub fn switch(&self, v: &Version) -> std::io::Result<()> {
        env_file::write(&self.cfg.env_file, &self.cfg.variable, &v.to_string())
    }

    /// Removes images beyond `keep_images`: never the current or the
    /// previous one, nor any newer than current. An image a container still
    /// uses stays (the engine refuses), and is tried again next time.
    pub async fn prune(&self, current: &Version, previous: Option<&Version>) {
        for v in doomed_releases(&self.releases(), current, previous, self.cfg.keep_images) {
            let reference = self.reference(&v);
            match self.docker.remove_image(&reference).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.marker_path(&v));
                    tracing::info!(%reference, "removed an old image");
                }
                Err(e) => tracing::warn!(%reference, error = %e, "cannot remove an old image"),
            }
        }
    }
}
