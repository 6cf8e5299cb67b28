//! The one variable of a compose env file that pins the image tag
//! (`GATEWAY_TAG=3.3.0`). Read as compose reads it; rewritten atomically
//! (a temporary sibling with the file's own mode, fsynced, renamed over it,
//! the directory fsynced) with every other byte of the operator's file kept.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The value of `var` in the env file's text: the last assignment wins, as
/// in compose. Quotes around the value are removed.
pub fn value_in(text: &str, var: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| assignment(l, var))
        .map(|(_, v)| unquote(v.trim()).to_string())
}

/// Reads `var` from the env file at `path`.
pub fn read(path: &Path, var: &str) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(value_in(&t, var)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The text with every assignment of `var` set to `value`; an error when
/// the file does not assign it (rollgate pins what the operator pinned, it
/// does not add to their files).
pub fn with_value(text: &str, var: &str, value: &str) -> Result<String, String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + value.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        match assignment(body, var) {
            Some((prefix, _)) => {
                found = true;
                out.push_str(prefix);
                out.push_str(value);
                out.push_str(end);
            }
            None => out.push_str(line),
        }
    }
    if !found {
        return Err(format!(
            "it does not set {var}; add {var}=<the running version> to it first"
        ));
    }
    Ok(out)
}

/// Sets `var` to `value` in the env file at `path`, atomically and durably.
pub fn write(path: &Path, var: &str, value: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let new = with_value(&text, var, value).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if new == text {
        return Ok(());
    }
    let mode = std::fs::metadata(path)?.permissions().mode();
    let dir = rollgate::fsx::parent_of(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.rollgate-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        rollgate::fsx::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `VAR=value` (spaces around the name allowed): the prefix up to and
/// including `=`, and the value.
fn assignment<'a>(line: &'a str, var: &str) -> Option<(&'a str, &'a str)> {
    let (name, value) = line.split_once('=')?;
    if name.trim() != var || name.trim_start().starts_with('#') {
        return None;
    }
    let prefix = &line[..name.len() + 1];
    Some((prefix, value))
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# pinned by rollgate\nCOMPOSE_PROJECT_NAME=gw\nGATEWAY_TAG=3.3.0\n#GATEWAY_TAG=1.0.0\nOTHER=\"x y\"\n";

    #[test]
    fn reads_the_variable_as_compose_does() {
        assert_eq!(value_in(FILE, "GATEWAY_TAG").as_deref(), Some("3.3.0"));
        assert_eq!(value_in(FILE, "OTHER").as_deref(), Some("x y"));
        assert_eq!(value_in(FILE, "MISSING"), None);
        assert_eq!(value_in("A=1\nA=2", "A").as_deref(), Some("2"));
    }

    #[test]
    fn rewrites_only_that_variable() {
        let new = with_value(FILE, "GATEWAY_TAG", "3.4.0").unwrap();
        assert_eq!(new, FILE.replace("GATEWAY_TAG=3.3.0", "GATEWAY_TAG=3.4.0"));
        assert!(
            with_value(FILE, "NOPE", "1")
                .unwrap_err()
                .contains("does not set NOPE")
        );
        // No trailing newline stays none.
        assert_eq!(with_value("A=1", "A", "2").unwrap(), "A=2");
    }

    #[test]
    fn write_keeps_the_mode_and_the_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, FILE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, "GATEWAY_TAG", "3.4.0").unwrap();
        assert_eq!(read(&p, "GATEWAY_TAG").unwrap().as_deref(), Some("3.4.0"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let e = write(&p, "NOPE", "1").unwrap_err();
        assert!(e.to_string().contains("does not set NOPE"), "{e}");
    }
}
