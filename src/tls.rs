//! Mutual TLS between coordinator and agents (rustls through tonic).
//!
//! Both sides load a CA, a certificate and a key from PEM files. The agent
//! requires a client certificate signed by the fleet CA (`server_config`) and
//! then checks the certificate's name against its allow-list
//! (`AllowList::check`); the coordinator checks that the agent's certificate
//! carries the host name its inventory gives (`client_config`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// A problem with TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// PEM material for one side of a connection, read and checked.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the three files and checks that each holds what it should, so a
    /// wrong path fails at start-up with the file's name, not at first connect.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = read(ca)?;
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        first_cert_der(ca, &ca_pem)?;
        first_cert_der(cert, &cert_pem)?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(TlsError::NoKey { path: key.into() });
        }
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The agent's server side: present our certificate, require a client
    /// certificate chaining to the fleet CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// The DER of the first certificate in a PEM file.
fn first_cert_der(path: &Path, pem: &[u8]) -> Result<Vec<u8>, TlsError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| TlsError::NoCertificate { path: path.into() })?;
    if parsed.label != "CERTIFICATE" {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    x509_parser::parse_x509_certificate(&parsed.contents).map_err(|e| TlsError::Invalid {
        path: path.into(),
        reason: format!("not a valid X.509 certificate: {e}"),
    })?;
    Ok(parsed.contents)
}

/// The names a certificate speaks for: its subject common names and its DNS
/// subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The client names an agent answers. The TLS layer has already checked that
/// the client certificate chains to the fleet CA; this checks who it is.
#[derive(Debug, Clone)]
pub struct AllowList {
    names: Arc<Vec<String>>,
}

impl AllowList {
    pub fn new(names: Vec<String>) -> Self {
        AllowList {
            names: Arc::new(names),
        }
    }

    /// A tonic interceptor: lets the request through when the client
    /// certificate carries an allowed name, else PERMISSION_DENIED.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(certs) = req.peer_certs() else {
            tracing::warn!(peer = ?req.remote_addr(), "refused a request without a client certificate");
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        let names = certs
            .first()
            .map(|leaf| certificate_names(leaf.as_ref()))
            .unwrap_or_default();
        if names.iter().any(|n| self.names.contains(n)) {
            return Ok(req);
        }
        tracing::warn!(peer = ?req.remote_addr(), client_names = ?names, "refused a client not on the allow-list");
        Err(Status::permission_denied(format!(
            "client certificate names {names:?} are not on this agent's allow-list"
        )))
    }
}

/// Installs ring as the process-wide rustls provider for the HTTP clients
/// (probes, artifact downloads). tonic picks its provider explicitly.
pub fn install_crypto_provider() {
    // Err means another part of the process installed one first: keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
