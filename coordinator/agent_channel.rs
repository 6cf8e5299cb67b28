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
//! retry), and hyper's errors are mapped to gRPC codes by tonic. Beyond
//! it: a call the closing connection handed back unsent is sent once more
//! on a new one, and a reconnect is not abandoned with the call that
//! started it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::body::Body;

use crate::fleet_tls::FleetTls;

/// How connections to agents are made: the fleet's TLS configuration and
/// the HTTP/2 settings. One per fleet (`CallPolicy`), shared by every
/// agent's connection.
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
    dialer: Arc<Dialer>,
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
    pub async fn connect(dialer: &Arc<Dialer>, address: &str, name: &str) -> Result<Self, String> {
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
    /// The connect runs in a task of its own: a caller that gives up (its
    /// call's deadline passed) does not cut it off halfway, and the next
    /// call finds the connection made.
    async fn sender(self: &Arc<Self>) -> Result<SendRequest<Body>, tonic::Status> {
        if let Some(s) = self.open_sender() {
            return Ok(s);
        }
        let me = self.clone();
        tokio::spawn(async move { me.reconnect().await })
            .await
            .map_err(|e| {
                tonic::Status::unavailable(format!("connecting to {}: {e}", self.address))
            })?
    }

    async fn reconnect(&self) -> Result<SendRequest<Body>, tonic::Status> {
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

/// A call that failed on the connection. One it handed back was never sent
/// (the connection closed before taking it: a GOAWAY from an agent that is
/// stopping, an end not yet seen): `Unavailable`, which callers retry. The
/// rest are mapped by tonic, as its own channel does: a keep-alive timeout
/// or a refused stream is `Unavailable`, a cancel `Cancelled`.
fn failed(address: &str, mut e: TrySendError<Request<Body>>) -> tonic::Status {
    if e.take_message().is_some() {
        return tonic::Status::unavailable(format!(
            "the connection to {address} closed before the call was sent"
        ));
    }
    tonic::Status::from_error(Box::new(e.into_error()))
}

impl tower::Service<Request<Body>> for AgentChannel {
    type Response = Response<Incoming>;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, tonic::Status>> + Send>>;

    /// Always ready: a closed connection is replaced in the call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut sender = shared.sender().await?;
            let unsent = match sender.try_send_request(req).await {
                Ok(r) => return Ok(r),
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(failed(&shared.address, e)),
                },
            };
            // Never sent, and the connection is closed now: once more, on a
            // new one.
            tracing::debug!(address = %shared.address, "connection closed before the call was sent; sending it on a new one");
            let mut sender = shared.sender().await?;
            sender
                .try_send_request(unsent)
                .await
                .map_err(|e| failed(&shared.address, e))
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rollgate::tls::TlsMaterial;
    use tokio::sync::oneshot;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::certs::{Addr, AgentName};

    /// A gRPC server on `addr` with the agent's TLS (the fleet CA's
    /// certificate for `agent`, client certificates required), serving the
    /// standard health service; stops when `stop` fires, and the handle
    /// ends once it has.
    async fn serve(
        addr: SocketAddr,
        tls: &TlsMaterial,
        stop: oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .unwrap()
            .add_service(health);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        })
    }

    async fn check(c: &mut HealthClient<AgentChannel>) -> Result<(), tonic::Status> {
        c.check(HealthCheckRequest::default()).await.map(|_| ())
    }

    /// The agent restarts on the same address: the call after it goes
    /// through on a new connection, with no error first; while it is
    /// down a call is `Unavailable` (what callers retry).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_connection_is_replaced_on_the_next_call() {
        rollgate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentName {
            name: "dp-1".into(),
            addr: Addr::Ip("127.0.0.1".parse().unwrap()),
        };
        crate::certs::init(
            dir.path(),
            &["rollgate-coordinator".into()],
            &[agent],
            false,
            1,
        )
        .unwrap();
        let load = |n: &str| {
            TlsMaterial::load(
                &dir.path().join("ca.pem"),
                &dir.path().join(format!("{n}.pem")),
                &dir.path().join(format!("{n}.key")),
            )
            .unwrap()
        };
        let (server_tls, client_tls) = (load("dp-1"), load("rollgate-coordinator"));
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();

        let (stop, stopped) = oneshot::channel();
        let first = serve(addr, &server_tls, stopped).await;
        let dialer = Arc::new(Dialer::new(
            FleetTls::new(&client_tls).unwrap(),
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(5),
        ));
        let channel = AgentChannel::connect(&dialer, &addr.to_string(), "dp-1")
            .await
            .unwrap();
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        let mut client = HealthClient::with_origin(channel, origin);
        check(&mut client).await.unwrap();

        stop.send(()).unwrap();
        first.await.unwrap();
        let down = check(&mut client).await.unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");

        let (_stop, stopped) = oneshot::channel();
        let _second = serve(addr, &server_tls, stopped).await;
        check(&mut client).await.unwrap();
    }
}
