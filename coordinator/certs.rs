//! `rollgate certs init`: a fleet CA, the coordinator's client certificate
//! and one server certificate per agent.
//!
//! Layout of DIR: `ca.pem`, `ca.key`, and `<name>.pem` / `<name>.key` for every
//! identity (clients and agents alike). An existing CA in DIR is reused, so the
//! same command adds a host to a running fleet. Every file that would be
//! written is checked first: if one exists and `--force` is not given, the
//! command refuses and writes nothing. Private keys are created with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rollgate::ids::check_host_name;
use time::{Duration, OffsetDateTime};

/// The client name the coordinator uses unless told otherwise.
pub const DEFAULT_CLIENT: &str = "rollgate-coordinator";

/// Why certificates were not made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Usage(String),
    #[error("refusing to overwrite existing files (use --force): {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Exists(Vec<PathBuf>),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// One agent to certify: its host name and the IP it is reached at.
#[derive(Debug, Clone)]
pub struct AgentName {
    pub name: String,
    /// Where the agent is reached: an IP address or a DNS name; either goes
    /// into the certificate's subject alternative names with the host name.
    pub addr: Addr,
}

#[derive(Debug, Clone)]
pub enum Addr {
    Ip(IpAddr),
    Dns(String),
}

impl std::str::FromStr for AgentName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, at) = s.split_once('=').ok_or_else(|| {
            format!(
                "--agent {s:?}: expected NAME=ADDRESS (an IP or a DNS name), e.g. dp-1=10.0.0.5"
            )
        })?;
        check_host_name(name).map_err(|e| format!("--agent {s:?}: {e}"))?;
        let addr = match at.parse() {
            Ok(ip) => Addr::Ip(ip),
            Err(_) => {
                check_host_name(at).map_err(|_| {
                    format!("--agent {s:?}: {at:?} is neither an IP address nor a DNS name")
                })?;
                Addr::Dns(at.to_string())
            }
        };
        Ok(AgentName {
            name: name.to_string(),
            addr,
        })
    }
}

/// What `certs init` wrote.
#[derive(Debug, serde::Serialize)]
pub struct Written {
    pub dir: PathBuf,
    pub ca_reused: bool,
    pub files: Vec<PathBuf>,
}

/// Makes the CA (unless DIR has one) and the requested certificates.
pub fn init(
    dir: &Path,
    clients: &[String],
    agents: &[AgentName],
    force: bool,
    valid_days: i64,
) -> Result<Written, CertsError> {
    for c in clients {
        check_host_name(c).map_err(|e| CertsError::Usage(format!("--client: {e}")))?;
    }
    let mut names: Vec<&str> = clients.iter().map(String::as_str).collect();
    names.extend(agents.iter().map(|a| a.name.as_str()));
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if *n == "ca" {
            return Err(CertsError::Usage(
                "the name \"ca\" is reserved for the CA".into(),
            ));
        }
        if !seen.insert(*n) {
            return Err(CertsError::Usage(format!("{n:?} is named twice")));
        }
    }
    if valid_days < 1 {
        return Err(CertsError::Usage("--valid-days must be at least 1".into()));
    }

    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca_reused = match (ca_pem.exists(), ca_key.exists()) {
        (true, true) => true,
        (false, false) => false,
        _ => {
            return Err(CertsError::Usage(format!(
                "{} has only one of ca.pem and ca.key; restore the other or remove both",
                dir.display()
            )));
        }
    };

    // Check every target before writing anything.
    let mut targets = Vec::new();
    for n in &names {
        targets.push(dir.join(format!("{n}.pem")));
        targets.push(dir.join(format!("{n}.key")));
    }
    let existing: Vec<PathBuf> = targets.iter().filter(|p| p.exists()).cloned().collect();
    if !existing.is_empty() && !force {
        return Err(CertsError::Exists(existing));
    }

    let now = OffsetDateTime::now_utc();
    // Build everything in memory first: a failure here writes nothing.
    let (issuer, ca_files) = if ca_reused {
        let key_text = read(&ca_key)?;
        let cert_text = read(&ca_pem)?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| CertsError::Io {
            path: ca_key.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_text, key).map_err(|e| CertsError::Io {
            path: ca_pem.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
        (issuer, Vec::new())
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn("rollgate fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(valid_days.max(3650));
        let cert = params.self_signed(&key)?;
        let files = vec![
            (ca_pem.clone(), cert.pem(), false),
            (ca_key.clone(), key.serialize_pem(), true),
        ];
        (Issuer::new(params, key), files)
    };

    let mut files = ca_files;
    for c in clients {
        let (cert, key) = leaf(
            &issuer,
            c,
            None,
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            valid_days,
        )?;
        files.push((dir.join(format!("{c}.pem")), cert, false));
        files.push((dir.join(format!("{c}.key")), key, true));
    }
    for a in agents {
        let (cert, key) = leaf(
            &issuer,
            &a.name,
            Some(&a.addr),
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            valid_days,
        )?;
        files.push((dir.join(format!("{}.pem", a.name)), cert, false));
        files.push((dir.join(format!("{}.key", a.name)), key, true));
    }

    std::fs::create_dir_all(dir).map_err(|e| CertsError::Io {
        path: dir.into(),
        reason: e.to_string(),
    })?;
    let mut written = Vec::new();
    for (path, text, secret) in files {
        write_file(&path, text.as_bytes(), secret)?;
        tracing::info!(path = %path.display(), secret, "wrote");
        written.push(path);
    }
    Ok(Written {
        dir: dir.into(),
        ca_reused,
        files: written,
    })
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "rollgate");
    dn
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    addr: Option<&Addr>,
    usage: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    valid_days: i64,
) -> Result<(String, String), CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    match addr {
        Some(Addr::Ip(ip)) => params.subject_alt_names.push(SanType::IpAddress(*ip)),
        Some(Addr::Dns(d)) if d != name => params
            .subject_alt_names
            .push(SanType::DnsName(d.as_str().try_into()?)),
        _ => {}
    }
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(valid_days);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|e| CertsError::Io {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Writes a file; keys are created 0600 from the start, never widened later.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CertsError> {
    let io = |e: std::io::Error| CertsError::Io {
        path: path.into(),
        reason: e.to_string(),
    };
    // A forced overwrite of a key must not inherit a looser mode.
    if secret && path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}
