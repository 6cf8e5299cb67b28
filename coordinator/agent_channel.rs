//! One HTTP/2 connection to one agent, opened again when it has closed:
//! what the gRPC client sends its calls through.
//!
//! tonic's `Channel` does this too, through a stack built for a general
//! client: a `tower::Buffer` in front (a task per channel and a 9 KiB
//! queue block, and a hop to that task on every call), a reconnecting
//! layer, a timeout layer and a boxed I/O type. The coordinator holds a
//! channel to every host of the fleet for the whole rollout, so that stack
//! is paid 10,000 times over at 10,000 hosts (benches/fleet_scale). Here a
//! call clones the connection's hyper `SendRequest` and sends on it: the
//! one hop left is hyper's own, to the connection task.
//!
//! The rest is what `Channel` gave the coordinator: the connection is
//! opened once at `connect` (whose error says why), a closed one (agent
//! restarted, keep-alive timed out) is replaced on the next call, one
//! connect at a time (a failed reconnect is `Unavailable`, which callers
//! retry), and hyper's errors are mapped to gRPC codes by tonic.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::body::Body;

use crate::fleet_tls::FleetTls;

/// How connections to agents are made: one for the whole fleet.
#[derive(Clone)]
pub struct Dialer {
    tls: FleetTls,
    http2: http2::Builder<TokioExecutor>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        tls: FleetTls,
        connect_timeout: Duration,
        keepalive: Duration,
        keepalive_timeout: Duration,
    ) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive_timeout)
            .keep_alive_while_idle(true);
        Dialer {
            tls,
            http2,
            connect_timeout,
        }
    }

    /// A TCP connection, the TLS handshake (the agent's certificate must
    /// name `name`) and the HTTP/2 handshake, within the connect timeout.
    async fn open(&self, address: &str, name: &str) -> Result<SendRequest<Body>, String> {
        let dial = async {
            let io = self
                .tls
                .connect(address, name)
                .await
                .map_err(|e| crate::client::error_chain(&e))?;
            let (sender, conn) = self
                .http2
                .handshake(io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {}", crate::client::error_chain(&e)))?;
            let (address, name) = (address.to_string(), name.to_string());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(host = %name, %address, error = %e, "agent connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))?
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection to the agent at `address`, named `name` in its certificate.
/// Clones share the connection.
#[derive(Clone)]
pub struct AgentChannel {
    shared: Arc<Shared>,
}

struct Shared {
    dialer: Dialer,
    address: String,
    name: String,
    /// The open connection; None once a reconnect failed.
    current: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting: concurrent calls on a closed connection wait
    /// for one new connection instead of each opening its own.
    connecting: tokio::sync::Mutex<()>,
}

impl AgentChannel {
    /// Opens the connection now: an agent that cannot be reached is an
    /// error here, saying why.
    pub async fn connect(dialer: &Dialer, address: &str, name: &str) -> Result<Self, String> {
        let sender = dialer.open(address, name).await?;
        Ok(AgentChannel {
            shared: Arc::new(Shared {
                dialer: dialer.clone(),
                address: address.to_string(),
                name: name.to_string(),
                current: Mutex::new(Some(sender)),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

impl Shared {
    fn open_sender(&self) -> Option<SendRequest<Body>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection's sender, connecting again if it has closed.
    async fn sender(&self) -> Result<SendRequest<Body>, tonic::Status> {
        if let Some(s) = self.open_sender() {
            return Ok(s);
        }
        let _turn = self.connecting.lock().await;
        if let Some(s) = self.open_sender() {
            return Ok(s);
        }
        tracing::debug!(host = %self.name, address = %self.address, "agent connection closed; connecting again");
        let opened = self.dialer.open(&self.address, &self.name).await;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match opened {
            Ok(s) => {
                *current = Some(s.clone());
                Ok(s)
            }
            Err(why) => {
                *current = None;
                Err(tonic::Status::unavailable(format!(
                    "cannot connect to {}: {why}",
                    self.address
                )))
            }
        }
    }
}

impl tower::Service<Request<Body>> for AgentChannel {
    type Response = Response<Incoming>;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, tonic::Status>> + Send>>;

    /// Always ready: the connection's own readiness is awaited in the call,
    /// after a closed connection has been replaced.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            // tonic's mapping, as its own channel has it: a keep-alive
            // timeout or a refused stream is Unavailable, a cancel Cancelled.
            let lost = |e: hyper::Error| tonic::Status::from_error(Box::new(e));
            let mut sender = shared.sender().await?;
            sender.ready().await.map_err(lost)?;
            sender.send_request(req).await.map_err(lost)
        })
    }
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannel")
            .field("address", &self.shared.address)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}
