//! Judging the gateway: the process as the service manager sees it, plus the
//! configured HTTP probes. The running version comes from the configured
//! source (a JSON pointer in the status body, a response header such as
//! APISIX's `Server: APISIX/3.x`, the container's image, the package, a
//! command); the status body also tells the config revision loaded.

use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use std::sync::Mutex;

use crate::config::{HealthSection, VersionSource};
use crate::http::HttpClient;
use crate::install::Installer;
use crate::procfs;
use crate::service::{ProcessStatus, Service};

/// Longest body excerpt kept for failure reports.
const EXCERPT: usize = 256;

/// The result of one HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub name: &'static str,
    pub url: String,
    pub ok: bool,
    pub http_status: u16,
    pub error: String,
    pub latency: Duration,
    pub body_excerpt: String,
}

/// One look at the gateway.
#[derive(Debug, Clone)]
pub struct Observation {
    pub process: ProcessStatus,
    pub probes: Vec<Probe>,
    pub running_version: Option<String>,
    /// The version the install method says is there (image tag, package).
    pub artifact_version: Option<String>,
    pub config_revision: Option<i64>,
    pub rss_bytes: u64,
}

impl Observation {
    /// Healthy: running, and every probe answered 2xx.
    pub fn healthy(&self) -> bool {
        matches!(self.process, ProcessStatus::Running { .. }) && self.probes.iter().all(|p| p.ok)
    }

    /// One line for failure reports: what was wrong.
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.process {
            ProcessStatus::Running { pid, .. } => format!("process running (pid {pid})"),
            ProcessStatus::Stopped => "process not running".to_string(),
            ProcessStatus::Unknown(why) => format!("process state unknown: {why}"),
        }];
        for p in &self.probes {
            if p.ok {
                parts.push(format!("{} ok ({})", p.name, p.http_status));
            } else if p.http_status != 0 {
                parts.push(format!(
                    "{} answered {}: {}",
                    p.name, p.http_status, p.body_excerpt
                ));
            } else {
                parts.push(format!("{} failed: {}", p.name, p.error));
            }
        }
        if let Some(v) = &self.running_version {
            parts.push(format!("reports version {v}"));
        }
        parts.join("; ")
    }
}

/// Runs the configured probes.
#[derive(Debug)]
pub struct Prober {
    client: HttpClient,
    status_url: Option<String>,
    ready_url: Option<String>,
    version: VersionSource,
    revision_pointer: String,
    /// The version command's answer and the pid it was asked for: a
    /// running process's version does not change, so the command runs once
    /// per process.
    command_cache: Mutex<Option<(u32, Option<String>)>>,
}

impl Prober {
    pub fn new(cfg: &HealthSection) -> Self {
        // Probes go to the gateway on this host, never through a proxy, on a
        // fresh connection each (HttpClient keeps none).
        let client = HttpClient::new(cfg.probe_timeout, Some(cfg.probe_timeout));
        Prober {
            client,
            status_url: cfg.status_url.clone(),
            ready_url: cfg.ready_url.clone(),
            version: cfg.version.clone(),
            revision_pointer: cfg.revision_pointer.clone(),
            command_cache: Mutex::new(None),
        }
    }

    /// Whether a version is read at all (the JSON and header sources need
    /// the status probe).
    pub fn reads_version(&self) -> bool {
        match self.version {
            VersionSource::Json(_) | VersionSource::Header { .. } => self.status_url.is_some(),
            _ => true,
        }
    }

    /// Looks at the gateway once. Probes run only while the process runs: a
    /// stopped gateway's port may be answered by something else.
    pub async fn observe(&self, service: &Service, installer: &Installer) -> Observation {
        let process = service.status().await;
        let mut obs = Observation {
            rss_bytes: process
                .pid()
                .and_then(procfs::stat)
                .map(|s| s.rss_pages * procfs::page_size())
                .unwrap_or(0),
            artifact_version: installer.artifact_version(&process),
            process,
            probes: Vec::new(),
            running_version: None,
            config_revision: None,
        };
        let running = matches!(obs.process, ProcessStatus::Running { .. });
        let header = match &self.version {
            VersionSource::Header { name, .. } => Some(name.as_str()),
            _ => None,
        };
        // Both probes at once: a look costs one round trip to the gateway,
        // not two (the gate looks every few milliseconds after a start).
        let (status, ready) = tokio::join!(
            OptionFuture::from(
                (self.status_url.as_ref()).map(|url| self.probe("status", url, running, header))
            ),
            OptionFuture::from(
                (self.ready_url.as_ref()).map(|url| self.probe("ready", url, running, None))
            ),
        );
        if let Some((probe, body, header_value)) = status {
            let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            if let Some(json) = &json {
                obs.config_revision = json
                    .pointer(&self.revision_pointer)
                    .and_then(|v| v.as_i64());
            }
            obs.running_version = match &self.version {
                VersionSource::Json(ptr) => json
                    .as_ref()
                    .and_then(|j| j.pointer(ptr))
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                VersionSource::Header { pattern, .. } => header_value
                    .and_then(|h| Some(pattern.captures(&h)?.get(1)?.as_str().to_string())),
                _ => None,
            };
            obs.probes.push(probe);
        }
        match &self.version {
            VersionSource::Image | VersionSource::Package => {
                obs.running_version = obs.artifact_version.clone();
            }
            VersionSource::Command { command, pattern } => {
                if let Some(pid) = obs.process.pid() {
                    obs.running_version = self.command_version(pid, command, pattern).await;
                }
            }
            VersionSource::Json(_) | VersionSource::Header { .. } => {}
        }
        obs.probes.extend(ready.map(|(probe, _, _)| probe));
        obs
    }

    async fn command_version(
        &self,
        pid: u32,
        command: &[String],
        pattern: &regex_lite::Regex,
    ) -> Option<String> {
        if let Some((at, v)) = self.command_cache.lock().ok()?.as_ref()
            && *at == pid
        {
            return v.clone();
        }
        let v = match crate::command::run_argv(command, Duration::from_secs(10)).await {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                pattern
                    .captures(&text)
                    .and_then(|c| Some(c.get(1)?.as_str().to_string()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the version command failed");
                return None;
            }
        };
        if let Ok(mut c) = self.command_cache.lock() {
            *c = Some((pid, v.clone()));
        }
        v
    }

    /// One GET: the probe, the body, and the value of `header` if asked.
    async fn probe(
        &self,
        name: &'static str,
        url: &str,
        running: bool,
        header: Option<&str>,
    ) -> (Probe, Option<Vec<u8>>, Option<String>) {
        let start = Instant::now();
        let mut p = Probe {
            name,
            url: url.to_string(),
            ok: false,
            http_status: 0,
            error: String::new(),
            latency: Duration::ZERO,
            body_excerpt: String::new(),
        };
        if !running {
            p.error = "not probed: the gateway is not running".into();
            return (p, None, None);
        }
        let mut body = None;
        let mut header_value = None;
        match self.client.get(url).await {
            Ok(resp) => {
                header_value = header
                    .and_then(|h| resp.headers.get(h))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                p.http_status = resp.status.as_u16();
                p.ok = resp.status.is_success();
                match resp.bytes().await {
                    Ok(b) => {
                        p.body_excerpt = excerpt(&b);
                        body = Some(b.to_vec());
                    }
                    Err(e) => {
                        p.ok = false;
                        p.error = format!("reading the body: {e}");
                    }
                }
            }
            Err(e) => p.error = error_chain(&e),
        }
        p.latency = start.elapsed();
        (p, body, header_value)
    }
}

fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(EXCERPT)]);
    s.trim().to_string()
}

/// An HTTP client's top-level message hides the cause ("client error
/// (Connect)");
/// the chain says "connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
