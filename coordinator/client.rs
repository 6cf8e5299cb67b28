//! Calls to one agent over mutual TLS, with per-call deadlines and retries.
//!
//! backon does the retrying (the `backoff` crate is unmaintained,
//! RUSTSEC-2025-0012): exponential delays with jitter, only for failures a
//! retry can cure (no connection, deadline passed, agent unavailable).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rollgate::convert::{self, WireError};
use rollgate::method::Method;
use rollgate::pb;
use rollgate::pb::agent_client::AgentClient;
use rollgate::role::Role;
use rollgate::version::Version;

use crate::agent_channel::{AgentChannel, Dialer};

use crate::inventory::{Host, Inventory};

/// Why a call to an agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("agent answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("agent sent {0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Mismatch(String),
}

impl CallError {
    /// Failures worth another attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Connect { .. } | CallError::Timeout(_) => true,
            CallError::Status { code, .. } => {
                matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                )
            }
            CallError::Wire(_) | CallError::Mismatch(_) => false,
        }
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        CallError::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// Renders an error with its causes: tonic's top-level message alone says
/// "transport error", the causes say which certificate was refused.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// How calls are made: from the inventory's `[coordinator]` section.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    pub call_timeout: Duration,
    pub retries: usize,
    /// How connections are made (TLS, connect timeout, HTTP/2 keep-alive):
    /// one for the fleet, shared by every agent's connection.
    dialer: Arc<Dialer>,
}

impl CallPolicy {
    pub fn from_inventory(inv: &Inventory) -> Self {
        let c = &inv.coordinator;
        CallPolicy {
            call_timeout: c.call_timeout,
            retries: c.retries,
            dialer: Arc::new(Dialer::new(
                inv.fleet_tls.clone(),
                c.connect_timeout,
                c.keepalive,
                c.keepalive_timeout,
            )),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(self.retries)
            .with_jitter()
    }
}

/// What an agent says about its host (Hello), as domain types.
#[derive(Debug, Clone)]
pub struct Hello {
    pub host_name: String,
    pub role: Role,
    pub agent_version: String,
    pub installed: Option<Version>,
    pub disk_free_bytes: u64,
    /// (path relative to the release, sha256) of each custom plugin file.
    pub custom_plugin_files: Vec<(String, String)>,
    pub database_backup: bool,
    /// A `[rehearsal]` is configured on the host.
    pub rehearsal: bool,
    /// How the host installs releases (an older agent says nothing: tarball).
    pub method: Method,
    /// Releases kept on the host, ready to switch to without a transfer.
    pub kept: Vec<Version>,
}

impl TryFrom<pb::HelloResponse> for Hello {
    type Error = WireError;

    fn try_from(h: pb::HelloResponse) -> Result<Self, WireError> {
        Ok(Hello {
            role: convert::role_from_wire(h.role, "HelloResponse")?,
            installed: convert::optional_version(
                &h.installed_version,
                "HelloResponse",
                "installed_version",
            )?,
            host_name: h.host_name,
            agent_version: h.agent_version,
            disk_free_bytes: h.disk_free_bytes,
            custom_plugin_files: h
                .custom_plugin_files
                .into_iter()
                .map(|f| (f.path, f.sha256))
                .collect(),
            database_backup: h.features.as_ref().is_some_and(|f| f.database_backup),
            rehearsal: h.features.as_ref().is_some_and(|f| f.rehearsal),
            method: if h.install_method.is_empty() {
                Method::Tarball
            } else {
                h.install_method.parse().map_err(|reason| WireError {
                    message: "HelloResponse",
                    field: "install_method",
                    reason,
                })?
            },
            // A kept release the coordinator cannot read is one it cannot
            // roll back to: left out, not an error.
            kept: h.releases.iter().filter_map(|r| r.parse().ok()).collect(),
        })
    }
}

/// Puts the fleet lease's fencing token on every call (postgres state), so
/// an agent refuses this coordinator once a newer holder has called it.
#[derive(Debug, Clone)]
pub struct Fencing(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Fencing {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut()
                .insert(rollgate::fencing::METADATA_KEY, v.clone());
        }
        Ok(r)
    }
}

/// The gRPC client of one agent.
pub type Client =
    AgentClient<tonic::service::interceptor::InterceptedService<AgentChannel, Fencing>>;

/// A connection to one agent.
#[derive(Debug, Clone)]
pub struct Agent {
    pub host: Host,
    pub client: Client,
    policy: CallPolicy,
}

impl Agent {
    /// Opens a verified mTLS channel: the agent's certificate must be issued
    /// by the fleet CA for `host.name`.
    pub async fn connect(
        host: &Host,
        inv: &Inventory,
        policy: &CallPolicy,
    ) -> Result<Self, CallError> {
        let address = host.address.to_string();
        let channel = AgentChannel::connect(&policy.dialer, &address, &host.name)
            .await
            .map_err(|reason| CallError::Connect {
                addr: address.clone(),
                reason,
            })?;
        // The calls' URIs: the scheme and authority HTTP/2 requests carry
        // (TLS is the connection's, below HTTP).
        let origin = format!("http://{address}")
            .parse::<tonic::codegen::http::Uri>()
            .map_err(|e| CallError::Connect {
                addr: address.clone(),
                reason: e.to_string(),
            })?;
        let fencing = Fencing(
            inv.fencing_token
                .map(tonic::metadata::AsciiMetadataValue::from),
        );
        Ok(Agent {
            host: host.clone(),
            client: AgentClient::with_origin(
                tonic::service::interceptor::InterceptedService::new(channel, fencing),
                origin,
            ),
            policy: policy.clone(),
        })
    }

    /// Connects with retries.
    pub async fn connect_retrying(
        host: &Host,
        inv: &Inventory,
        policy: &CallPolicy,
    ) -> Result<Self, CallError> {
        (|| Agent::connect(host, inv, policy))
            .retry(policy.backoff())
            .when(CallError::is_transient)
            .notify(|e, after| tracing::debug!(host = %host.name, error = %e, retry_in = ?after, "connect failed; retrying"))
            .await
    }

    /// Hello, checked against the inventory (the agent must say it is the
    /// host, with the role, that the inventory names), and a health report
    /// made as it answered: one round trip. An agent that predates Hello's
    /// `with_health` is asked for the report by a WatchHealth, as before.
    pub async fn hello_with_health(&self) -> Result<(Hello, pb::HealthReport), CallError> {
        let call = || async {
            let mut c = self.client.clone();
            let ask = pb::HelloRequest { with_health: true };
            let resp = tokio::time::timeout(self.policy.call_timeout, c.hello(ask))
                .await
                .map_err(|_| CallError::Timeout(self.policy.call_timeout))??;
            Ok::<_, CallError>(resp.into_inner())
        };
        let mut raw = call
            .retry(self.policy.backoff())
            .when(CallError::is_transient)
            .await?;
        let health = raw.health.take();
        let hello = Hello::try_from(raw)?;
        if hello.host_name != self.host.name {
            return Err(CallError::Mismatch(format!(
                "agent at {} calls itself {:?}, the inventory says {:?}",
                self.host.address, hello.host_name, self.host.name
            )));
        }
        if hello.role != self.host.role {
            return Err(CallError::Mismatch(format!(
                "agent {} has role {}, the inventory says {}",
                self.host.name, hello.role, self.host.role
            )));
        }
        let health = match health {
            Some(h) => h,
            None => self.health_once().await?,
        };
        Ok((hello, health))
    }

    /// One health report: the first of a WatchHealth stream.
    pub async fn health_once(&self) -> Result<pb::HealthReport, CallError> {
        let call = || async {
            let mut c = self.client.clone();
            let fut = async {
                let mut stream = c
                    .watch_health(pb::WatchHealthRequest {
                        interval_ms: 1000,
                        heartbeat_ms: 0,
                    })
                    .await?
                    .into_inner();
                stream.message().await?.ok_or_else(|| CallError::Status {
                    code: tonic::Code::Unavailable,
                    message: "health stream ended without a report".into(),
                })
            };
            tokio::time::timeout(self.policy.call_timeout, fut)
                .await
                .map_err(|_| CallError::Timeout(self.policy.call_timeout))?
        };
        call.retry(self.policy.backoff())
            .when(CallError::is_transient)
            .await
    }
}
