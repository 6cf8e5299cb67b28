//! `file::File` → `Config`: defaults filled in, paths resolved, every value
//! checked once; each error starts with the key it is about.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use rollgate::ids::check_host_name;
use rollgate::role::Role;

use super::file;
use super::*;

/// A required key.
fn need<T>(v: Option<T>, key: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("key `{key}`: missing"))
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() { base.join(p) } else { p }
}

impl Config {
    pub(super) fn from_file(f: file::File, base: &Path) -> Result<Config, String> {
        let agent = need(f.agent, "agent")?;
        let agent = AgentSection {
            name: need(agent.name, "agent.name")?,
            role: need(agent.role, "agent.role")?,
            listen: need(agent.listen, "agent.listen")?,
            state_dir: resolve(base, need(agent.state_dir, "agent.state_dir")?),
            keepalive: positive(agent.keepalive, "agent.keepalive", DEFAULT_KEEPALIVE)?,
            keepalive_timeout: positive(
                agent.keepalive_timeout,
                "agent.keepalive_timeout",
                DEFAULT_KEEPALIVE_TIMEOUT,
            )?,
        };
        check_host_name(&agent.name).map_err(|e| format!("key `agent.name`: {e}"))?;
        let tls = need(f.tls, "tls")?;
        let tls = TlsSection {
            ca: resolve(base, need(tls.ca, "tls.ca")?),
            cert: resolve(base, need(tls.cert, "tls.cert")?),
            key: resolve(base, need(tls.key, "tls.key")?),
            allowed_clients: need(tls.allowed_clients, "tls.allowed_clients")?,
        };
        if tls.allowed_clients.is_empty() {
            return Err("key `tls.allowed_clients`: must name at least one client".into());
        }
        let gateway = GatewaySection {
            custom_plugin_dirs: f
                .gateway
                .and_then(|g| g.custom_plugin_dirs)
                .unwrap_or_default(),
        };
        for d in &gateway.custom_plugin_dirs {
            if d.is_absolute() || d.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "key `gateway.custom_plugin_dirs`: {} must be relative to the release directory",
                    d.display()
                ));
            }
        }
        let backup = match f.backup {
            Some(b) => Some(backup(b, base, agent.role)?),
            None => None,
        };
        let install = install(need(f.install, "install")?, base, &agent.state_dir)?;
        let service = service(need(f.service, "service")?)?;
        let compose = matches!(install.method, InstallMethod::Compose(_));
        if compose != matches!(service.manager, Manager::Compose) {
            return Err(
                "key `service.manager`: \"compose\" goes with [install] method = \"compose\", and only with it"
                    .into(),
            );
        }
        if let (InstallMethod::Deb(_), Manager::Exec { command, .. }) =
            (&install.method, &service.manager)
            && !Path::new(&command[0]).is_absolute()
        {
            return Err(format!(
                "key `service.command`: with [install] method = \"deb\" the program is where the package installs it: an absolute path, not {:?}",
                command[0]
            ));
        }
        let health = health(f.health)?;
        let needs = |v: &VersionSource, m: &InstallMethod| match v {
            VersionSource::Image => matches!(m, InstallMethod::Compose(_)),
            VersionSource::Package => matches!(m, InstallMethod::Deb(_)),
            _ => true,
        };
        if !needs(&health.version, &install.method) {
            return Err(format!(
                "key `health.version`: this source is not available with [install] method = {:?}",
                install.method.name()
            ));
        }
        let rehearsal = match f.rehearsal {
            Some(r) => Some(super::rehearsal::rehearsal(r, base, backup.is_some())?),
            None => None,
        };
        if let Some(b) = &backup
            && crate::conninfo::dbname(&b.database_url)
                .is_some_and(|d| d.starts_with(crate::conninfo::SCRATCH_PREFIX))
        {
            return Err(format!(
                "key `backup.database_url`: a database named {}* is reserved for rehearsals",
                crate::conninfo::SCRATCH_PREFIX
            ));
        }
        Ok(Config {
            rehearsal,
            install,
            service,
            health,
            drain: drain(f.drain)?,
            backup,
            agent,
            tls,
            gateway,
        })
    }
}

fn install(f: file::InstallFile, base: &Path, state_dir: &Path) -> Result<InstallSection, String> {
    match f {
        file::InstallFile::Tarball {
            root,
            keep_releases,
            min_free_bytes,
            max_unpack_ratio,
        } => {
            let t = TarballConfig {
                root: resolve(base, need(root, "install.root")?),
                keep_releases: keep_releases.unwrap_or(3),
                max_unpack_ratio: max_unpack_ratio.unwrap_or(DEFAULT_MAX_UNPACK_RATIO),
            };
            if t.keep_releases < 2 {
                return Err(
                    "key `install.keep_releases`: must be at least 2, so the previous release stays for rollback"
                        .into(),
                );
            }
            if t.max_unpack_ratio == 0 {
                return Err("key `install.max_unpack_ratio`: must be at least 1".into());
            }
            Ok(InstallSection {
                method: InstallMethod::Tarball(t),
                min_free_bytes: min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            })
        }
        file::InstallFile::Compose {
            project_dir,
            project,
            files,
            env_file,
            variable,
            image,
            services,
            compose,
            docker_socket,
            keep_images,
            min_free_bytes,
        } => {
            let project_dir = resolve(base, need(project_dir, "install.project_dir")?);
            let project = match project {
                Some(p) => p,
                None => project_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                    .collect(),
            };
            if project.is_empty()
                || !project
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
            {
                return Err(format!(
                    "key `install.project`: {project:?} is not a compose project name (lower-case letters, digits, - and _)"
                ));
            }
            let variable = need(variable, "install.variable")?;
            if variable.is_empty()
                || !variable
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || variable.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!(
                    "key `install.variable`: {variable:?} is not an env variable name"
                ));
            }
            let image = need(image, "install.image")?;
            if image.is_empty()
                || image.contains(':') && !image.contains('/')
                || image.contains('@')
            {
                return Err(format!(
                    "key `install.image`: {image:?} must be an image repository without tag or digest"
                ));
            }
            let services = need(services, "install.services")?;
            if services.is_empty() || services.iter().any(|s| s.is_empty() || s.starts_with('-')) {
                return Err(
                    "key `install.services`: must name the compose service(s) to recreate".into(),
                );
            }
            let compose = compose.unwrap_or_else(|| vec!["docker".into(), "compose".into()]);
            if compose.is_empty() || compose[0].is_empty() {
                return Err("key `install.compose`: must name a program".into());
            }
            let files = files.unwrap_or_else(|| vec!["docker-compose.yml".into()]);
            if files.is_empty() {
                return Err("key `install.files`: must name at least one compose file".into());
            }
            let keep_images = keep_images.unwrap_or(2);
            if keep_images < 2 {
                return Err(
                    "key `install.keep_images`: must be at least 2, so the previous image stays for rollback"
                        .into(),
                );
            }
            Ok(InstallSection {
                method: InstallMethod::Compose(ComposeConfig {
                    files: files
                        .into_iter()
                        .map(|f| resolve(&project_dir, f))
                        .collect(),
                    env_file: resolve(&project_dir, env_file.unwrap_or_else(|| ".env".into())),
                    project_dir,
                    project,
                    variable,
                    image,
                    services,
                    compose,
                    docker_socket: docker_socket.unwrap_or_else(|| "/var/run/docker.sock".into()),
                    keep_images,
                }),
                min_free_bytes: min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            })
        }
        file::InstallFile::Deb {
            package,
            dpkg,
            dpkg_query,
            dpkg_deb,
            admin_dir,
            cache_dir,
            keep_packages,
            min_free_bytes,
        } => {
            let package = need(package, "install.package")?;
            if package.is_empty()
                || !package.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
                })
            {
                return Err(format!(
                    "key `install.package`: {package:?} is not a package name"
                ));
            }
            let argv =
                |v: Option<Vec<String>>, default: &str, key: &str| -> Result<Vec<String>, String> {
                    let v = v.unwrap_or_else(|| vec![default.to_string()]);
                    if v.is_empty() || v[0].is_empty() {
                        return Err(format!("key `install.{key}`: must name a program"));
                    }
                    Ok(v)
                };
            let keep_packages = keep_packages.unwrap_or(3);
            if keep_packages < 2 {
                return Err(
                    "key `install.keep_packages`: must be at least 2, so the previous package stays for rollback"
                        .into(),
                );
            }
            Ok(InstallSection {
                method: InstallMethod::Deb(DebConfig {
                    package,
                    dpkg: argv(dpkg, "dpkg", "dpkg")?,
                    dpkg_query: argv(dpkg_query, "dpkg-query", "dpkg_query")?,
                    dpkg_deb: argv(dpkg_deb, "dpkg-deb", "dpkg_deb")?,
                    admin_dir: admin_dir
                        .map(|d| resolve(base, d))
                        .unwrap_or_else(|| "/var/lib/dpkg".into()),
                    cache_dir: cache_dir
                        .map(|d| resolve(base, d))
                        .unwrap_or_else(|| state_dir.join("packages")),
                    keep_packages,
                }),
                min_free_bytes: min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            })
        }
    }
}

fn service(s: file::ServiceFile) -> Result<ServiceSection, String> {
    let stop_signal = parse_signal(s.stop_signal.as_deref().unwrap_or("SIGQUIT"))
        .map_err(|e| format!("key `service.stop_signal`: {e}"))?;
    let manager = match need(s.manager, "service.manager")?.as_str() {
        "exec" => {
            let command = s.command.unwrap_or_default();
            if command.is_empty() || command[0].is_empty() {
                return Err(
                    "key `service.command`: manager \"exec\" needs the gateway's command (argv)"
                        .into(),
                );
            }
            if s.unit.is_some() {
                return Err("key `service.unit`: only for manager = \"systemd\"".into());
            }
            Manager::Exec {
                command,
                env: s.env.unwrap_or_default(),
            }
        }
        "systemd" => {
            let unit = match s.unit {
                None => {
                    return Err(
                        "key `service.unit`: manager \"systemd\" needs the gateway's unit".into(),
                    );
                }
                Some(u) if u.is_empty() || u.contains('/') || u.starts_with('-') => {
                    return Err(format!("key `service.unit`: {u:?} is not a unit name"));
                }
                Some(u) => u,
            };
            if s.command.is_some() || s.env.is_some() {
                return Err(
                    "key `service.command`: only for manager = \"exec\" (systemd runs the unit)"
                        .into(),
                );
            }
            Manager::Systemd {
                unit,
                systemctl: s.systemctl.unwrap_or_else(|| "/usr/bin/systemctl".into()),
            }
        }
        "compose" => {
            if s.command.is_some() || s.env.is_some() || s.unit.is_some() {
                return Err(
                    "key `service.command`: manager \"compose\" runs the services of [install]; give no command or unit"
                        .into(),
                );
            }
            Manager::Compose
        }
        other => {
            return Err(format!(
                "key `service.manager`: unknown variant `{other}`, expected `exec`, `systemd` or `compose`"
            ));
        }
    };
    Ok(ServiceSection {
        manager,
        stop_signal,
        stop_timeout: s.stop_timeout.unwrap_or(Duration::from_secs(30)),
    })
}

fn health(h: Option<file::HealthFile>) -> Result<HealthSection, String> {
    let h = h.unwrap_or(file::HealthFile {
        status_url: None,
        ready_url: None,
        version: None,
        version_pointer: None,
        revision_pointer: None,
        probe_timeout: None,
        start_timeout: None,
        min_healthy: None,
    });
    for (key, url) in [
        ("health.status_url", &h.status_url),
        ("health.ready_url", &h.ready_url),
    ] {
        if let Some(url) = url {
            check_http_url(url).map_err(|e| format!("key `{key}`: {e}"))?;
        }
    }
    let revision_pointer = h
        .revision_pointer
        .unwrap_or_else(|| "/config_revision".into());
    let pointer = |key: &str, ptr: &str| -> Result<(), String> {
        if !ptr.is_empty() && !ptr.starts_with('/') {
            return Err(format!("key `{key}`: a JSON pointer starts with '/'"));
        }
        Ok(())
    };
    pointer("health.revision_pointer", &revision_pointer)?;
    let regex = |key: &str, p: &str| -> Result<regex_lite::Regex, String> {
        let r = regex_lite::Regex::new(p).map_err(|e| format!("key `{key}`: {e}"))?;
        if r.captures_len() < 2 {
            return Err(format!(
                "key `{key}`: {p:?} needs a group, ( ), around the version"
            ));
        }
        Ok(r)
    };
    let version = match (h.version, h.version_pointer) {
        (Some(_), Some(_)) => {
            return Err(
                "key `health.version_pointer`: give either version or version_pointer, not both"
                    .into(),
            );
        }
        (None, ptr) => {
            let ptr = ptr.unwrap_or_else(|| "/version".into());
            pointer("health.version_pointer", &ptr)?;
            VersionSource::Json(ptr)
        }
        (Some(file::VersionFile::Json { pointer: ptr }), None) => {
            let ptr = ptr.unwrap_or_else(|| "/version".into());
            pointer("health.version.pointer", &ptr)?;
            VersionSource::Json(ptr)
        }
        (Some(file::VersionFile::Header { name, pattern }), None) => VersionSource::Header {
            name: name.unwrap_or_else(|| "Server".into()),
            pattern: regex(
                "health.version.pattern",
                pattern.as_deref().unwrap_or(r"^APISIX/(\S+)$"),
            )?,
        },
        (Some(file::VersionFile::Image), None) => VersionSource::Image,
        (Some(file::VersionFile::Package), None) => VersionSource::Package,
        (Some(file::VersionFile::Command { command, pattern }), None) => {
            let command = need(command, "health.version.command")?;
            if command.is_empty() || command[0].is_empty() {
                return Err("key `health.version.command`: must name a program".into());
            }
            VersionSource::Command {
                command,
                pattern: regex(
                    "health.version.pattern",
                    pattern.as_deref().unwrap_or(r"(\d+\.\d+\.\d+\S*)"),
                )?,
            }
        }
    };
    Ok(HealthSection {
        status_url: h.status_url,
        ready_url: h.ready_url,
        version,
        revision_pointer,
        probe_timeout: h.probe_timeout.unwrap_or(Duration::from_secs(2)),
        start_timeout: h.start_timeout.unwrap_or(Duration::from_secs(60)),
        min_healthy: h.min_healthy.unwrap_or(Duration::from_secs(5)),
    })
}

fn drain(d: Option<file::DrainFile>) -> Result<DrainSection, String> {
    let d = d.unwrap_or(file::DrainFile {
        agent_check_listen: None,
        gateway_ports: None,
        timeout: None,
        drain_command: None,
        undrain_command: None,
        lease: None,
    });
    for (key, cmd) in [
        ("drain.drain_command", &d.drain_command),
        ("drain.undrain_command", &d.undrain_command),
    ] {
        if cmd
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err(format!("key `{key}`: must name a program"));
        }
    }
    Ok(DrainSection {
        agent_check_listen: d.agent_check_listen,
        gateway_ports: d.gateway_ports.unwrap_or_default(),
        timeout: d.timeout.unwrap_or(Duration::from_secs(30)),
        drain_command: d.drain_command,
        undrain_command: d.undrain_command,
        lease: positive(d.lease, "drain.lease", DEFAULT_DRAIN_LEASE)?,
    })
}

/// Keepalive defaults: a silent peer is dropped within 15 s.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for any rollout step and an operator's look at a halt.
const DEFAULT_DRAIN_LEASE: Duration = Duration::from_secs(600);

/// A duration key that must be above zero, or its default.
fn positive(v: Option<Duration>, key: &str, default: Duration) -> Result<Duration, String> {
    match v {
        Some(d) if d.is_zero() => Err(format!("key `{key}`: must be longer than 0s")),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

fn backup(b: file::BackupFile, base: &Path, role: Role) -> Result<BackupSection, String> {
    if role != Role::Cp {
        return Err("key `backup`: only CP hosts (agent.role = \"cp\") take backups".into());
    }
    let keep = b.keep.unwrap_or(5);
    if keep == 0 {
        return Err("key `backup.keep`: must be at least 1".into());
    }
    let database_url = need(b.database_url, "backup.database_url")?;
    if database_url.trim().is_empty() {
        return Err("key `backup.database_url`: is empty".into());
    }
    let export = match (b.export_url, b.export_command) {
        (Some(_), Some(_)) => {
            return Err(
                "key `backup.export_command`: give either export_url or export_command, not both"
                    .into(),
            );
        }
        (Some(url), None) => {
            check_http_url(&url).map_err(|e| format!("key `backup.export_url`: {e}"))?;
            Some(Export::Url(url))
        }
        (None, Some(cmd)) => {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err("key `backup.export_command`: must name a program".into());
            }
            Some(Export::Command(cmd))
        }
        (None, None) => None,
    };
    let exclude_tables = b.exclude_tables.unwrap_or_default();
    for t in &exclude_tables {
        if t.split('.').count() != 2 {
            return Err(format!(
                "key `backup.exclude_tables`: {t:?} must be written schema.table"
            ));
        }
    }
    Ok(BackupSection {
        dir: resolve(base, need(b.dir, "backup.dir")?),
        keep,
        pg_bin_dir: resolve(
            base,
            b.pg_bin_dir
                .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into()),
        ),
        database_url,
        exclude_tables,
        config_files: b
            .config_files
            .unwrap_or_default()
            .into_iter()
            .map(|p| resolve(base, p))
            .collect(),
        export,
    })
}

pub(super) fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        s => Err(format!("{url:?}: scheme {s:?} is not http or https")),
    }
}

/// `SIGQUIT`, `QUIT` or `sigquit` → the signal.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse()
        .map_err(|_| format!("{name:?} is not a signal name"))
}
