//! The coordinator's TLS towards agents: one rustls client configuration
//! for the whole fleet, and per agent a connector that dials it and checks
//! that its certificate is issued by the fleet CA for that host's name.
//!
//! tonic's own TLS option builds a fresh rustls configuration for every
//! endpoint: it parses the CA, the certificate and the private key again
//! (deriving the key's public half each time) and gives each its own
//! session cache. At 10,000 agents that was a measurable share of the
//! coordinator's CPU time and memory; one shared configuration costs it
//! once. The check is the same: webpki verification against the fleet CA
//! with the inventory's host name as the server name, plus our client
//! certificate.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rollgate::tls::TlsMaterial;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The fleet's client TLS configuration, shared by every agent connection.
#[derive(Clone)]
pub struct FleetTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTls").finish_non_exhaustive()
    }
}

impl FleetTls {
    /// Builds the configuration from PEM material; the error says which
    /// part is wrong.
    pub fn new(m: &TlsMaterial) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&m.ca_pem) {
            let c = c.map_err(|e| format!("the CA file: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("the CA certificate: {e}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(&m.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate file: {e}"))?;
        let key =
            PrivateKeyDer::from_pem_slice(&m.key_pem).map_err(|e| format!("the key file: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the certificate and key: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(FleetTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Dials `address` and completes the TLS handshake, requiring the
    /// agent's certificate to be valid for `server_name` and HTTP/2.
    pub async fn connect(
        &self,
        address: &str,
        server_name: &str,
    ) -> std::io::Result<TokioIo<TlsStream<tokio::net::TcpStream>>> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a valid TLS server name: {e}"),
            )
        })?;
        let tcp = tokio::net::TcpStream::connect(address).await?;
        // Without it Nagle holds a step's last frames until the agent's
        // delayed ACK.
        tcp.set_nodelay(true)?;
        let tls = self.connector.connect(name, tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other(
                "the agent did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(TokioIo::new(tls))
    }
}
