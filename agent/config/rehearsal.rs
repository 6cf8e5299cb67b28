//! `[rehearsal]`: how this CP host starts a release against a scratch copy
//! of its database. Everything is a template the operator writes; the agent
//! fills in only these placeholders and never improvises the rest:
//!
//! | placeholder | value |
//! |---|---|
//! | `{database_url}` | the scratch database's connection string |
//! | `{listen}` / `{port}` | a spare loopback address / its port |
//! | `{config}` | the rendered `config_template` |
//! | `{release_dir}` | the staged release (tarball), or the unpacked .deb |
//! | `{image}` | the staged image, `<image>:<version>` (compose) |
//! | `{name}` | a name for this rehearsal's process or container |

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::file::RehearsalFile;
use super::from_file::{check_http_url, parse_signal};

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "database_url",
    "listen",
    "port",
    "config",
    "release_dir",
    "image",
    "name",
];

#[derive(Debug, Clone)]
pub struct RehearsalSection {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub config_template: Option<PathBuf>,
    pub listen_ip: Ipv4Addr,
    pub ready_url: String,
    pub status_url: Option<String>,
    pub version_pointer: String,
    pub export_url: Option<String>,
    pub schema_query: String,
    pub cleanup_command: Option<Vec<String>>,
    pub stop_signal: Signal,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
}

/// The `{name}`s a template uses that are not placeholders.
fn unknown_placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        rest = &rest[i + 1..];
        let Some(j) = rest.find('}') else { break };
        let name = &rest[..j];
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            out.push(name.to_string());
        }
        rest = &rest[j + 1..];
    }
    out
}

pub(super) fn rehearsal(
    f: RehearsalFile,
    base: &Path,
    has_backup: bool,
) -> Result<RehearsalSection, String> {
    if !has_backup {
        return Err(
            "key `rehearsal`: a rehearsal restores a backup: configure [backup] too".into(),
        );
    }
    let command = f.command.ok_or("key `rehearsal.command`: missing")?;
    if command.is_empty() || command[0].is_empty() {
        return Err("key `rehearsal.command`: must name a program".into());
    }
    let config_template = f
        .config_template
        .map(|p| if p.is_relative() { base.join(p) } else { p });
    let env = f.env.unwrap_or_default();
    let mut templates: Vec<(&str, String)> = command
        .iter()
        .map(|a| ("rehearsal.command", a.clone()))
        .chain(env.values().map(|v| ("rehearsal.env", v.clone())))
        .collect();
    if let Some(t) = &config_template {
        let text = std::fs::read_to_string(t)
            .map_err(|e| format!("key `rehearsal.config_template`: {}: {e}", t.display()))?;
        templates.push(("rehearsal.config_template", text));
    }
    for (key, t) in &templates {
        if let Some(u) = unknown_placeholders(t).first() {
            return Err(format!(
                "key `{key}`: unknown placeholder {{{u}}} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
    }
    // The rehearsal CP must be pointed at the scratch database: a template
    // that never says where the database is would leave the CP on its
    // default, which may be production.
    if !templates.iter().any(|(_, t)| t.contains("{database_url}")) {
        return Err(
            "key `rehearsal.command`: no template (command, env or config_template) uses {database_url}: the rehearsal CP must be pointed at the scratch database".into(),
        );
    }
    if config_template.is_some() && !command.iter().any(|a| a.contains("{config}")) {
        return Err("key `rehearsal.command`: config_template is set but the command does not pass {config}".into());
    }
    let ready_url = f.ready_url.ok_or("key `rehearsal.ready_url`: missing")?;
    for (key, url) in [
        ("rehearsal.ready_url", Some(&ready_url)),
        ("rehearsal.status_url", f.status_url.as_ref()),
        ("rehearsal.export_url", f.export_url.as_ref()),
    ] {
        if let Some(u) = url {
            let probe = u.replace("{listen}", "127.0.0.1:1").replace("{port}", "1");
            check_http_url(&probe).map_err(|e| format!("key `{key}`: {e}"))?;
            if !u.contains("{listen}") && !u.contains("{port}") {
                return Err(format!(
                    "key `{key}`: must use {{listen}} or {{port}}: the rehearsal CP listens on a spare port"
                ));
            }
        }
    }
    let version_pointer = f.version_pointer.unwrap_or_else(|| "/version".into());
    if !version_pointer.starts_with('/') {
        return Err("key `rehearsal.version_pointer`: a JSON pointer starts with '/'".into());
    }
    let schema_query = f
        .schema_query
        .unwrap_or_else(|| "SELECT max(version) FROM schema_version".into());
    if !schema_query
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("select")
    {
        return Err(
            "key `rehearsal.schema_query`: must be one SELECT giving the schema version".into(),
        );
    }
    if let Some(c) = &f.cleanup_command
        && (c.is_empty() || c[0].is_empty())
    {
        return Err("key `rehearsal.cleanup_command`: must name a program".into());
    }
    Ok(RehearsalSection {
        command,
        env,
        config_template,
        listen_ip: f.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST),
        ready_url,
        status_url: f.status_url,
        version_pointer,
        export_url: f.export_url,
        schema_query,
        cleanup_command: f.cleanup_command,
        stop_signal: match f.stop_signal {
            Some(s) => parse_signal(&s).map_err(|e| format!("key `rehearsal.stop_signal`: {e}"))?,
            None => Signal::SIGTERM,
        },
        start_timeout: f.start_timeout.unwrap_or(Duration::from_secs(120)),
        stop_timeout: f.stop_timeout.unwrap_or(Duration::from_secs(30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_placeholders_are_found() {
        assert!(unknown_placeholders("--db={database_url} {listen}").is_empty());
        assert_eq!(unknown_placeholders("{datbase_url}"), ["datbase_url"]);
        // Not placeholders: JSON, empty braces.
        assert!(unknown_placeholders(r#"{"a": 1} {}"#).is_empty());
    }
}
