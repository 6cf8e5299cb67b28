//! The compose service manager: the gateway is the configured service(s) of
//! a Docker Compose project. Stop is `compose stop -t <grace>` (the compose
//! file's stop signal, SIGQUIT for APISIX, then SIGKILL after the grace);
//! start is `compose up -d --no-deps --force-recreate SERVICE…`, which
//! creates the containers from the image the env file pins now and leaves
//! every other service of the project alone. Whether it runs is read from
//! the engine by compose's labels.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ProcessStatus;
use crate::command;
use crate::config::ComposeConfig;
use crate::docker::{Container, Docker};

#[derive(Debug)]
pub struct ComposeService {
    cfg: ComposeConfig,
    docker: Docker,
    /// The running compose command's pid file (ended after a crash).
    child: PathBuf,
}

impl ComposeService {
    pub fn new(cfg: ComposeConfig, state_dir: &std::path::Path) -> Self {
        ComposeService {
            docker: Docker::new(cfg.docker_socket.clone()),
            child: state_dir.join("compose.pid"),
            cfg,
        }
    }

    pub fn child_record(&self) -> &std::path::Path {
        &self.child
    }

    /// Running when every service has a running container: the pid and
    /// image are the first service's (the gateway's).
    pub async fn status(&self) -> ProcessStatus {
        let mut first: Option<Container> = None;
        let mut down = Vec::new();
        for service in &self.cfg.services {
            let containers = match self
                .docker
                .service_containers(&self.cfg.project, service)
                .await
            {
                Ok(c) => c,
                Err(e) => return ProcessStatus::Unknown(e),
            };
            match containers.into_iter().find(|c| c.running) {
                Some(c) => {
                    first.get_or_insert(c);
                }
                None => down.push(service.as_str()),
            }
        }
        match first {
            Some(c) if down.is_empty() => ProcessStatus::Running {
                pid: c.pid.unwrap_or(0),
                image: Some(c.image),
            },
            _ => ProcessStatus::Stopped,
        }
    }

    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.cfg.base_argv();
        v.extend(args.iter().map(|a| a.to_string()));
        v.extend(self.cfg.services.iter().cloned());
        v
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![(
            "DOCKER_HOST".into(),
            format!("unix://{}", self.cfg.docker_socket.display()),
        )]
    }

    /// Stops the services gracefully within `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<(), String> {
        let secs = grace.as_secs().max(1).to_string();
        let argv = self.argv(&["stop", "-t", &secs]);
        command::run_tracked(
            &argv,
            grace + Duration::from_secs(60),
            &self.child,
            &self.env(),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {}", e.message, e.detail))?;
        match self.status().await {
            ProcessStatus::Running { pid, .. } => Err(format!(
                "the service still runs (pid {pid}) after compose stop"
            )),
            _ => Ok(()),
        }
    }

    /// Recreates the services from the image the env file pins, and waits
    /// (within `timeout`) until they run. Returns the gateway's pid.
    pub async fn start(&self, timeout: Duration) -> Result<u32, String> {
        let argv = self.argv(&["up", "-d", "--no-deps", "--force-recreate"]);
        if crate::failpoint::named("compose:recreating") {
            self.die_mid_recreate();
        }
        command::run_tracked(&argv, timeout, &self.child, &self.env())
            .await
            .map_err(|e| format!("{}: {}", e.message, e.detail))?;
        let end = Instant::now() + timeout;
        loop {
            match self.status().await {
                ProcessStatus::Running { pid, .. } => {
                    self.remove_leftovers().await;
                    return Ok(pid);
                }
                other if Instant::now() >= end => {
                    return Err(format!(
                        "compose up finished but the services do not run: {other:?}"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Removes the stopped containers of the services once they run again:
    /// what a recreate cut off by a crash left (compose renames the old
    /// container before it creates the new one). Every container of these
    /// services is recreated on each start, so a stopped one is never
    /// needed again.
    pub async fn remove_leftovers(&self) {
        for service in &self.cfg.services {
            let Ok(containers) = self
                .docker
                .service_containers(&self.cfg.project, service)
                .await
            else {
                continue;
            };
            for c in containers.iter().filter(|c| !c.running) {
                match self.docker.remove_container(&c.id).await {
                    Ok(()) => {
                        tracing::info!(service, container = %c.id, image = %c.image, "removed a container left by an interrupted recreate")
                    }
                    Err(e) => {
                        tracing::warn!(service, error = %e, "cannot remove a leftover container")
                    }
                }
            }
        }
    }

    /// Crash tests: kills compose and the agent once compose has begun
    /// replacing the containers (the gateway's container changed), the way
    /// a power cut mid-recreate would.
    fn die_mid_recreate(&self) {
        let docker = Docker::new(self.cfg.docker_socket.clone());
        let (project, service) = (self.cfg.project.clone(), self.cfg.services[0].clone());
        let child = self.child.clone();
        tokio::spawn(async move {
            let ids = |cs: Vec<Container>| cs.into_iter().map(|c| c.id).collect::<Vec<_>>();
            let before = ids(docker
                .service_containers(&project, &service)
                .await
                .unwrap_or_default());
            let end = Instant::now() + Duration::from_secs(120);
            while Instant::now() < end {
                let now = ids(docker
                    .service_containers(&project, &service)
                    .await
                    .unwrap_or_default());
                if now != before {
                    crate::failpoint::kill_with_child("compose:recreating", &child);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
