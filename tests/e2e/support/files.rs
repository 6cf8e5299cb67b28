//! An HTTP artifact server on a loopback address, as air-gapped fleets run
//! next to their agents: files of one directory, optionally slow, over plain
//! HTTP or HTTPS.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Serves the files of `dir` over HTTPS on `ip`, presenting the certificate
/// chain `cert` (PEM) with its key `key`.
pub fn serve_dir_tls(ip: Ipv4Addr, dir: PathBuf, cert: &Path, key: &Path) -> SocketAddr {
    rollgate::tls::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (dir, config) = (dir.clone(), config.clone());
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                answer(rustls::StreamOwned::new(conn, s), &dir, Duration::ZERO);
            });
        }
    });
    addr
}

/// Serves the files of `dir` (by plain name) on `ip`, one thread per
/// connection; each answer starts after `delay`, like a slow download.
pub fn serve_dir(ip: Ipv4Addr, dir: PathBuf, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || answer(s, &dir, delay));
        }
    });
    addr
}

fn answer(mut s: impl Read + Write, dir: &Path, delay: Duration) {
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    let name = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    std::thread::sleep(delay);
    let body = (!name.contains('/') && !name.is_empty())
        .then(|| std::fs::read(dir.join(&name)).ok())
        .flatten();
    let _ = match body {
        Some(body) => s
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| s.write_all(&body)),
        None => {
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
    };
}
