//! The host's Docker Engine, over its Unix socket (bollard): loading image
//! archives (no registry: fleets are often air-gapped), inspecting images,
//! and the containers of a compose project's services. The engine's API
//! version is negotiated on first use, so an older engine is spoken to in
//! its own version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{ImportImageOptions, ListContainersOptions, RemoveImageOptions};
use futures::StreamExt;
use tokio::sync::OnceCell;

/// A container of a compose service, as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub running: bool,
    /// The host pid of its main process, when running.
    pub pid: Option<u32>,
    /// The image reference it was created from (`demo-gateway:3.4.0`).
    pub image: String,
}

#[derive(Debug)]
pub struct Docker {
    socket: PathBuf,
    client: OnceCell<bollard::Docker>,
}

impl Docker {
    pub fn new(socket: PathBuf) -> Self {
        Docker {
            socket,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&bollard::Docker, String> {
        self.client
            .get_or_try_init(|| async {
                let path = self.socket.display().to_string();
                let d =
                    bollard::Docker::connect_with_socket(&path, 120, bollard::API_DEFAULT_VERSION)
                        .map_err(|e| format!("cannot reach the Docker Engine at {path}: {e}"))?;
                d.negotiate_version()
                    .await
                    .map_err(|e| format!("the Docker Engine at {path} does not answer: {e}"))
            })
            .await
    }

    /// Loads an image archive (`docker save` format, gzipped or not).
    /// Returns the references it loaded.
    pub async fn load(&self, archive: &Path) -> Result<Vec<String>, String> {
        let d = self.client().await?;
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
        let body = file_chunks(file);
        let mut events = d.import_image_stream(ImportImageOptions::default(), body, None);
        let mut loaded = Vec::new();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| format!("docker load of {} failed: {e}", archive.display()))?;
            if let Some(line) = ev.stream.as_deref() {
                for part in ["Loaded image: ", "Loaded image ID: "] {
                    if let Some(r) = line.trim().strip_prefix(part) {
                        loaded.push(r.to_string());
                    }
                }
            }
        }
        Ok(loaded)
    }

    /// The ID of an image reference; None when there is none.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, String> {
        match self.client().await?.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(format!("cannot inspect image {reference}: {e}")),
        }
    }

    /// Removes an image reference (its layers go when nothing else uses them).
    pub async fn remove_image(&self, reference: &str) -> Result<(), String> {
        match self
            .client()
            .await?
            .remove_image(reference, Some(RemoveImageOptions::default()), None)
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(format!("cannot remove image {reference}: {e}")),
        }
    }

    /// Removes a (stopped) container.
    pub async fn remove_container(&self, id: &str) -> Result<(), String> {
        match self.client().await?.remove_container(id, None).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(format!("cannot remove container {id}: {e}")),
        }
    }

    /// The containers of one service of a compose project (created ones
    /// included), by compose's labels.
    pub async fn service_containers(
        &self,
        project: &str,
        service: &str,
    ) -> Result<Vec<Container>, String> {
        let d = self.client().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("com.docker.compose.project={project}"),
                format!("com.docker.compose.service={service}"),
            ],
        )]);
        let list = d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("cannot list the containers of {project}/{service}: {e}"))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let inspect = d
                .inspect_container(&id, None)
                .await
                .map_err(|e| format!("cannot inspect container {id}: {e}"))?;
            let state = inspect.state.unwrap_or_default();
            let running = state.running.unwrap_or(false);
            out.push(Container {
                pid: state
                    .pid
                    .filter(|p| running && *p > 0)
                    .and_then(|p| u32::try_from(p).ok()),
                running,
                image: inspect
                    .config
                    .and_then(|c| c.image)
                    .or(c.image)
                    .unwrap_or_default(),
                id,
            });
        }
        Ok(out)
    }
}

/// A file as a stream of byte chunks, for a request body.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
