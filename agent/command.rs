//! Running the commands named in the agent's config (pg_dump, hooks, export).
//! Never a shell, never a command from a request: argv as configured.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procfs::PidRecord;

/// How a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// It could not be started.
    Spawn,
    /// It did not finish in time (it was killed).
    Timeout,
    /// It exited non-zero.
    Exit,
}

/// A command that failed: what ran (passwords hidden), how, and the tail of
/// its stderr.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: Failed,
    pub message: String,
    pub detail: String,
}

impl CommandError {
    fn new(kind: Failed, message: String) -> Self {
        CommandError {
            kind,
            message,
            detail: String::new(),
        }
    }
}

/// Runs `program args…` to completion within `timeout`. A non-zero exit is
/// an error carrying the tail of stderr.
pub async fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    timeout: Duration,
) -> Result<std::process::Output, CommandError> {
    exec(program, args, timeout, None).await
}

/// Where a tracked command is recorded, and what it adds to the environment.
type Tracking<'a> = Option<(&'a Path, &'a [(String, String)])>;

/// `run`, recording the child in `record` while it runs. A command that
/// changes the host (dpkg, compose) is recorded so that an agent restarted
/// after a crash can end it before recovering (`end_leftover`): the way
/// systemd ends every process of a unit whose main process died.
pub async fn run_tracked(
    argv: &[String],
    timeout: Duration,
    record: &Path,
    env: &[(String, String)],
) -> Result<std::process::Output, CommandError> {
    let (program, args) = split(argv)?;
    exec(Path::new(program), args, timeout, Some((record, env))).await
}

async fn exec<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    timeout: Duration,
    tracking: Tracking<'_>,
) -> Result<std::process::Output, CommandError> {
    let shown = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| redact(&a.as_ref().to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    tracing::debug!(command = %shown, "running");
    let mut cmd = tokio::process::Command::new(program);
    if let Some((_, env)) = tracking {
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    let child = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            CommandError::new(
                Failed::Spawn,
                format!("cannot run {}: {e}", program.display()),
            )
        })?;
    let _recorded = match (tracking, child.id()) {
        (Some((path, _)), Some(pid)) => Some(Recorded::write(path, pid)),
        _ => None,
    };
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            CommandError::new(
                Failed::Timeout,
                format!("{shown}: did not finish within {timeout:?}"),
            )
        })?
        .map_err(|e| {
            CommandError::new(
                Failed::Spawn,
                format!("cannot wait for {}: {e}", program.display()),
            )
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        tracing::warn!(command = %shown, status = %out.status, "command failed");
        return Err(CommandError {
            kind: Failed::Exit,
            message: format!("{shown}: {}", out.status),
            detail: tail,
        });
    }
    Ok(out)
}

/// A child recorded in a file for as long as this lives.
struct Recorded(PathBuf);

impl Recorded {
    fn write(path: &Path, pid: u32) -> Recorded {
        let rec = PidRecord::of(pid);
        if let Err(e) = rollgate::fsx::write_atomic(path, rec.render().as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record a running command");
        }
        Recorded(path.to_path_buf())
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ends a command a previous agent left running (recorded by
/// `run_tracked`), so recovery does not race it: SIGKILL, then waits (at
/// most 10 s) until it is gone. Returns its pid when there was one.
pub async fn end_leftover(record: &Path) -> Option<u32> {
    let rec = PidRecord::read(record)?;
    let mut ended = None;
    if rec.is_running() {
        tracing::warn!(pid = rec.pid, record = %record.display(), "ending a command the previous agent left running");
        if let Ok(raw) = i32::try_from(rec.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while rec.is_running() && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ended = Some(rec.pid);
    }
    let _ = std::fs::remove_file(record);
    ended
}

fn split(argv: &[String]) -> Result<(&String, &[String]), CommandError> {
    argv.split_first()
        .ok_or_else(|| CommandError::new(Failed::Spawn, "empty command in the config".into()))
}

/// Runs a configured argv (`[program, args…]`).
pub async fn run_argv(
    argv: &[String],
    timeout: Duration,
) -> Result<std::process::Output, CommandError> {
    let (program, args) = split(argv)?;
    run(Path::new(program), args, timeout).await
}

/// Hides passwords in an argument before it is shown (errors, logs, the
/// journal): `password=...` in a libpq key=value string and the password
/// part of a `scheme://user:password@host` URL.
pub fn redact(arg: &str) -> String {
    let mut out = arg
        .split(' ')
        .map(|w| match w.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((scheme, rest)) = out.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        out = format!("{scheme}://{user}:***@{host}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("host=db user=gw password=s3cret dbname=gw"),
            "host=db user=gw password=*** dbname=gw"
        );
        assert_eq!(
            redact("postgres://gw:s3cret@db:5432/gw"),
            "postgres://gw:***@db:5432/gw"
        );
        assert_eq!(redact("-Fc"), "-Fc");
    }
}
