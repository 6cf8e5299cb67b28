//! Running the commands named in the agent's config (pg_dump, hooks, export).
//! Never a shell, never a command from a request: argv as configured.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

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
    let shown = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| redact(&a.as_ref().to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    tracing::debug!(command = %shown, "running");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
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
                format!("cannot run {}: {e}", program.display()),
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

/// Runs a configured argv (`[program, args…]`).
pub async fn run_argv(
    argv: &[String],
    timeout: Duration,
) -> Result<std::process::Output, CommandError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| CommandError::new(Failed::Spawn, "empty command in the config".into()))?;
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
