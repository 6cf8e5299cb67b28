//! Rehearse: a CP upgrade tried on a scratch copy of production first.
//!
//! The backup is restored into a scratch database (`scratch.rs`); then, hop
//! by hop on the same database, the staged release is started with the
//! operator's `[rehearsal]` templates (pointed at the scratch database and a
//! spare loopback port), waited for, checked (the schema version it reached,
//! the version it reports, its declarative export), and stopped. Whatever
//! happens, the scratch database is dropped and every file made is removed.
//! Phases journalled: `scratch_created` (there is something to clean up),
//! `restored`, `started` and `checked` per hop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rollgate::outcome::{FailureCode, Rehearsed, RehearsedHop, StepOutput};
use rollgate::version::Version;

use super::{StepRun, pg, scratch};
use crate::config::{BackupSection, RehearsalSection};
use crate::http::HttpClient;
use crate::kind::Phase;
use crate::op::{OpCtx, StepError};
use crate::procfs::PidRecord;
use crate::state::AgentState;

/// How often the rehearsal CP is looked at while it starts.
const POLL: Duration = Duration::from_millis(100);
/// Log lines shown when a rehearsal fails.
const TAIL_LINES: usize = 12;

/// Where rehearsals keep their files (rendered configs, logs, unpacked
/// packages), one directory per rehearsal.
pub fn work_root(state: &AgentState) -> PathBuf {
    state.config.agent.state_dir.join("rehearsal")
}

/// The running rehearsal CP's pid file.
fn pid_file(state: &AgentState) -> PathBuf {
    state.config.agent.state_dir.join("rehearsal.pid")
}

fn section(state: &AgentState) -> Result<&RehearsalSection, StepError> {
    state.config.rehearsal.as_ref().ok_or_else(|| {
        StepError::precondition(
            "this host has no [rehearsal] section: it does not say how to start a CP against a scratch database",
        )
    })
}

pub async fn rehearse(
    state: &AgentState,
    ctx: &OpCtx,
    backup_id: &str,
    hops: &[(Version, i64)],
) -> StepRun {
    rollgate::ids::check_backup_id(backup_id).map_err(StepError::invalid)?;
    let cfg = pg::config(state)?;
    let rc = section(state)?;
    if hops.is_empty() {
        return Err(StepError::invalid("no hop to rehearse"));
    }
    for (v, _) in hops {
        if state.installer.marker(v).await.ok().flatten().is_none() {
            return Err(StepError::precondition(format!(
                "release {v} is not staged on this host"
            )));
        }
    }
    pg::check_backup(state, backup_id).await?;
    scratch::check_disk(cfg, state.config.install.min_free_bytes).await?;
    // What an earlier rehearsal left is removed first: a half-restored
    // scratch database is never reused.
    clean_up(state, &ctx.op).await;
    let name = scratch::name_for(&ctx.op);
    let work = work_root(state).join(&name);
    std::fs::create_dir_all(&work)
        .map_err(|e| StepError::internal(format!("cannot create {}: {e}", work.display())))?;
    let result = run(state, ctx, cfg, rc, backup_id, hops, &name, &work).await;
    clean_up(state, &ctx.op).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: &AgentState,
    ctx: &OpCtx,
    cfg: &BackupSection,
    rc: &RehearsalSection,
    backup_id: &str,
    hops: &[(Version, i64)],
    name: &str,
    work: &Path,
) -> StepRun {
    ctx.progress(
        "scratch",
        format!("creating the scratch database {name}"),
        0,
        0,
    );
    scratch::create(cfg, name).await?;
    ctx.phase(
        Phase::ScratchCreated,
        serde_json::json!({ "database": name }),
    )
    .await?;
    let url = scratch::url(cfg, name)?;
    let started = Instant::now();
    ctx.progress(
        "restore",
        format!("restoring backup {backup_id} into {name}"),
        0,
        0,
    );
    scratch::restore(cfg, backup_id, &url).await?;
    let restore_ms = started.elapsed().as_millis() as u64;
    ctx.phase(
        Phase::Restored,
        serde_json::json!({ "backup": backup_id, "ms": restore_ms }),
    )
    .await?;
    let mut out = Vec::new();
    for (v, expect) in hops {
        ctx.progress("rehearse", format!("rehearsing {v} on {name}"), 0, 0);
        let hop = Hop {
            state,
            rc,
            cfg,
            url: &url,
            name,
            work,
            version: v,
            expect: *expect,
        };
        let done = hop.run(ctx).await?;
        ctx.phase(Phase::Checked, serde_json::json!({ "version": v }))
            .await?;
        out.push(done);
    }
    Ok(StepOutput::Rehearse(Rehearsed {
        backup_id: backup_id.to_string(),
        restore_ms,
        hops: out,
    }))
}

/// Removes everything a rehearsal makes: its CP (by its pid file), what the
/// cleanup command removes, every scratch database, the work directories.
/// Also what recovery runs after a crash. Never fails: each part is tried
/// and logged.
pub async fn clean_up(state: &AgentState, op: &str) {
    if let Some(rec) = PidRecord::read(&pid_file(state))
        && rec.is_running()
    {
        tracing::warn!(pid = rec.pid, "stopping a rehearsal CP left running");
        let _ = killpg(Pid::from_raw(rec.pid as i32), Signal::SIGKILL);
        rec.wait_gone(Duration::from_secs(10)).await;
    }
    let _ = std::fs::remove_file(pid_file(state));
    if let (Some(rc), Ok(cfg)) = (state.config.rehearsal.as_ref(), pg::config(state)) {
        run_cleanup_command(rc, &scratch::name_for(op)).await;
        if let Err(e) = scratch::drop_all(cfg).await {
            tracing::error!(error = %e.message, "cannot drop the scratch database");
        }
    }
    let root = work_root(state);
    if root.exists()
        && let Err(e) = std::fs::remove_dir_all(&root)
    {
        tracing::warn!(dir = %root.display(), error = %e, "cannot remove the rehearsal files");
    }
}

/// The configured cleanup command for rehearsal `name` (a container left
/// by a killed `docker run`, for example); a failure is logged.
async fn run_cleanup_command(rc: &RehearsalSection, name: &str) {
    let Some(cmd) = &rc.cleanup_command else {
        return;
    };
    let vars = BTreeMap::from([("name", name.to_string())]);
    let argv: Vec<String> = cmd.iter().map(|a| render(a, &vars)).collect();
    if let Err(e) = crate::command::run_argv(&argv, Duration::from_secs(60)).await {
        tracing::warn!(error = %e, "the rehearsal cleanup command failed");
    }
}

/// `{key}` → value, for every placeholder given.
fn render(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// One hop of a rehearsal.
struct Hop<'a> {
    state: &'a AgentState,
    rc: &'a RehearsalSection,
    cfg: &'a BackupSection,
    url: &'a str,
    name: &'a str,
    work: &'a Path,
    version: &'a Version,
    expect: i64,
}

/// The rehearsal CP while it runs.
struct Running {
    child: tokio::process::Child,
    record: PidRecord,
    log: PathBuf,
}

impl Hop<'_> {
    async fn run(&self, ctx: &OpCtx) -> Result<RehearsedHop, StepError> {
        let v = self.version;
        let before = scratch::schema(self.url, &self.rc.schema_query)
            .await
            .unwrap_or(0);
        let (mut cp, listen) = self
            .start()
            .await
            .map_err(|e| StepError::new(e.code, format!("{v}: {}", e.message)).detail(e.detail))?;
        ctx.phase(
            Phase::Started,
            serde_json::json!({ "version": v, "pid": cp.record.pid, "listen": listen }),
        )
        .await?;
        let checked = self.check(&mut cp, &listen, before).await;
        let stop_ms = self.stop(&mut cp).await;
        match checked {
            Ok(mut hop) => {
                hop.stop_ms = stop_ms;
                Ok(hop)
            }
            // "<version>: why": the coordinator tells which hop failed.
            Err(e) => {
                Err(StepError::new(e.code, format!("{v}: {}", e.message)).detail(log_tail(&cp.log)))
            }
        }
    }

    /// Renders the templates and starts the release.
    async fn start(&self) -> Result<(Running, String), StepError> {
        let v = self.version;
        let (release_dir, image) = self
            .state
            .installer
            .for_rehearsal(v, &self.work.join(format!("release-{v}")))
            .await
            .map_err(|e| StepError::internal(format!("cannot prepare {v} for a rehearsal: {e}")))?;
        let port = std::net::TcpListener::bind((self.rc.listen_ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| {
                StepError::internal(format!("no spare port on {}: {e}", self.rc.listen_ip))
            })?
            .port();
        let listen = format!("{}:{port}", self.rc.listen_ip);
        let config_file = self.work.join(format!("{v}.conf"));
        let mut vars = BTreeMap::from([
            ("database_url", self.url.to_string()),
            ("listen", listen.clone()),
            ("port", port.to_string()),
            ("config", config_file.display().to_string()),
            ("name", self.name.to_string()),
        ]);
        if let Some(d) = &release_dir {
            vars.insert("release_dir", d.display().to_string());
        }
        if let Some(i) = &image {
            vars.insert("image", i.clone());
        }
        let mut rendered: Vec<String> = self.rc.command.iter().map(|a| render(a, &vars)).collect();
        let env: BTreeMap<String, String> = self
            .rc
            .env
            .iter()
            .map(|(k, t)| (k.clone(), render(t, &vars)))
            .collect();
        let mut texts: Vec<String> = rendered.clone();
        texts.extend(env.values().cloned());
        if let Some(t) = &self.rc.config_template {
            let text = std::fs::read_to_string(t)
                .map_err(|e| StepError::precondition(format!("{}: {e}", t.display())))?;
            let text = render(&text, &vars);
            std::fs::write(&config_file, &text)
                .map_err(|e| StepError::internal(format!("{}: {e}", config_file.display())))?;
            texts.push(text);
        }
        // The one thing a rehearsal must never do: point at production.
        if texts.iter().any(|t| t.contains(&self.cfg.database_url)) {
            return Err(StepError::precondition(
                "the rendered rehearsal command or config names the production database: refused",
            ));
        }
        if let Some(d) = &release_dir
            && Path::new(&rendered[0]).is_relative()
            && rendered[0].contains('/')
        {
            rendered[0] = d.join(&rendered[0]).display().to_string();
        }
        let log = self.work.join(format!("{v}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| StepError::internal(format!("{}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| StepError::internal(e.to_string()))?;
        let child = tokio::process::Command::new(&rendered[0])
            .args(&rendered[1..])
            .envs(&env)
            .current_dir(release_dir.as_deref().unwrap_or(self.work))
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: stopped as a whole, and never by a signal meant
            // for the agent.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                StepError::new(
                    FailureCode::ServiceFailed,
                    format!("cannot start the rehearsal CP {}: {e}", rendered[0]),
                )
            })?;
        let pid = child.id().ok_or_else(|| {
            StepError::new(
                FailureCode::ServiceFailed,
                "the rehearsal CP exited at once",
            )
        })?;
        let record = PidRecord::of(pid);
        rollgate::fsx::write_atomic(&pid_file(self.state), record.render().as_bytes())
            .map_err(|e| StepError::internal(format!("cannot record the rehearsal CP: {e}")))?;
        tracing::info!(version = %v, pid, %listen, "rehearsal CP started");
        Ok((Running { child, record, log }, listen))
    }

    /// Waits until it is ready (following its schema meanwhile), then
    /// checks the schema, its version and its export.
    async fn check(
        &self,
        cp: &mut Running,
        listen: &str,
        before: i64,
    ) -> Result<RehearsedHop, StepError> {
        let v = self.version;
        let client = HttpClient::new(Duration::from_secs(5), Some(Duration::from_secs(5)));
        let vars = BTreeMap::from([
            ("listen", listen.to_string()),
            (
                "port",
                listen.rsplit(':').next().unwrap_or_default().to_string(),
            ),
        ]);
        let ready_url = render(&self.rc.ready_url, &vars);
        let start = Instant::now();
        let end = start + self.rc.start_timeout;
        let mut schema = before;
        let mut schema_at = Duration::ZERO;
        let fail = |m: String| StepError::new(FailureCode::VerifyFailed, m);
        let ready_ms = loop {
            if let Ok(Some(st)) = cp.child.try_wait() {
                return Err(fail(format!(
                    "the rehearsal CP of {v} exited ({st}) before it was ready"
                )));
            }
            if let Some(s) = scratch::schema(self.url, &self.rc.schema_query).await
                && s != schema
            {
                schema = s;
                schema_at = start.elapsed();
            }
            if client
                .get(&ready_url)
                .await
                .is_ok_and(|r| r.status.is_success())
            {
                break start.elapsed().as_millis() as u64;
            }
            if Instant::now() >= end {
                return Err(fail(format!(
                    "the rehearsal CP of {v} was not ready within {:?}",
                    self.rc.start_timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        };
        let after = scratch::schema(self.url, &self.rc.schema_query)
            .await
            .unwrap_or(schema);
        if after < before || (self.expect > 0 && after < self.expect) {
            return Err(fail(format!(
                "the scratch database's schema is {after} after {v} (before: {before}; the release expects {})",
                if self.expect > 0 {
                    self.expect.to_string()
                } else {
                    "no older one".into()
                }
            )));
        }
        let mut reported = String::new();
        if let Some(u) = &self.rc.status_url {
            let body: Option<serde_json::Value> = match client.get(&render(u, &vars)).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok()),
                Err(_) => None,
            };
            reported = body
                .as_ref()
                .and_then(|b| b.pointer(&self.rc.version_pointer))
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string();
            if reported.parse::<Version>().ok().as_ref() != Some(v) {
                return Err(fail(format!(
                    "the rehearsal CP reports version {reported:?}, not {v}"
                )));
            }
        }
        let (mut export_ok, mut export_bytes) = (false, 0);
        if let Some(u) = &self.rc.export_url {
            let body = match client.get(&render(u, &vars)).await {
                Ok(r) if r.status.is_success() => r.bytes().await.ok(),
                _ => None,
            };
            let Some(body) = body else {
                return Err(fail(format!(
                    "the rehearsal CP of {v} gave no declarative export"
                )));
            };
            export_bytes = body.len() as u64;
            export_ok = valid_export(&body);
            if !export_ok {
                return Err(fail(format!(
                    "the rehearsal CP's declarative export ({export_bytes} bytes) is neither JSON nor YAML"
                )));
            }
        }
        Ok(RehearsedHop {
            version: v.clone(),
            schema_before: before,
            schema_after: after,
            migration_ms: if after != before {
                schema_at.as_millis() as u64
            } else {
                0
            },
            ready_ms,
            stop_ms: 0,
            export_ok,
            export_bytes,
            reported_version: reported,
        })
    }

    /// Stops the rehearsal CP (its group): the stop signal, SIGKILL after the
    /// timeout; then the cleanup command. Returns how long the stop took.
    async fn stop(&self, cp: &mut Running) -> u64 {
        let start = Instant::now();
        let group = Pid::from_raw(cp.record.pid as i32);
        let _ = killpg(group, self.rc.stop_signal);
        if tokio::time::timeout(self.rc.stop_timeout, cp.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = cp.record.pid,
                "the rehearsal CP did not stop in time: SIGKILL"
            );
            let _ = killpg(group, Signal::SIGKILL);
            let _ = cp.child.wait().await;
        }
        let ms = start.elapsed().as_millis() as u64;
        let _ = std::fs::remove_file(pid_file(self.state));
        run_cleanup_command(self.rc, self.name).await;
        ms
    }
}

/// A declarative export is JSON or YAML that parses to one document with at
/// least one node. (Duplicate keys, which the reference gateway's loader
/// also refuses, are not looked for.)
///
/// YAML is read as granit-parser's event stream (the parser under
/// serde-saphyr, which the reference gateway writes its exports with), not
/// deserialised: validity is all the rehearsal asks, and the serde layer
/// (≈ 430 KiB of code with its error renderer) would be resident in every
/// agent for this one check.
fn valid_export(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        return true;
    }
    let (mut nodes, mut documents) = (0usize, 0usize);
    for event in granit_parser::Parser::new_from_str(text) {
        match event {
            // One export is one document (the gateway's loader refuses more).
            Ok((granit_parser::Event::DocumentStart(..), _)) => {
                documents += 1;
                if documents > 1 {
                    return false;
                }
            }
            Ok((
                granit_parser::Event::Scalar(..)
                | granit_parser::Event::MappingStart(..)
                | granit_parser::Event::SequenceStart(..),
                _,
            )) => nodes += 1,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    nodes > 0
}

/// The last lines the rehearsal CP wrote.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if tail.is_empty() {
        return String::new();
    }
    format!("last lines of the rehearsal CP:\n{}", tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_rendered_with_known_placeholders_only() {
        let vars = BTreeMap::from([("listen", "127.0.0.1:9".to_string())]);
        assert_eq!(
            render("http://{listen}/x {other}", &vars),
            "http://127.0.0.1:9/x {other}"
        );
    }

    #[test]
    fn exports_must_parse() {
        assert!(valid_export(b"routes:\n- id: a\n  path_prefix: /a\n"));
        assert!(valid_export(br#"{"routes":[]}"#));
        assert!(!valid_export(b""));
        assert!(!valid_export(b"# a comment, no document\n"));
        assert!(!valid_export(b"routes: []\n---\nroutes: []\n"));
        assert!(!valid_export(b"routes:\n  - id: a\n bad: indent\n"));
        assert!(!valid_export(b"routes: [unclosed"));
        assert!(!valid_export(&[0xff, 0xfe]));
    }
}
