//! Reading TOML config files, and turning parse errors into one line that
//! names the key.
//!
//! toml's messages say what is wrong ("unknown variant `edge`") and give a
//! byte span; this adds the dotted key at that span and its line number, so
//! "role = \"edge\"" in `[agent]` reads `key \`agent.role\` (line 3): ...`.

/// Reads a config file: its text, and the directory its relative paths are
/// relative to: the file's own, or, when `path` is a symbolic link, that of
/// the file it points to (a linked `fleet.toml` means the real one, with the
/// certificates and artifacts beside it).
pub fn read_file(path: &std::path::Path) -> Result<(String, std::path::PathBuf), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let real = if linked {
        std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the link: {e}"))?
    } else {
        path.to_path_buf()
    };
    let base = real
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    Ok((text, base))
}

/// Renders a toml error for `text` as `key `a.b` (line N): message`.
pub fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let Some(span) = e.span() else {
        return msg.to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if line.starts_with('[') {
        let table = line.trim_matches(|c| c == '[' || c == ']').trim();
        return format!("table `[{table}]` (line {line_no}): {msg}");
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty());
    match (section, key) {
        (Some(s), Some(k)) => format!("key `{s}.{k}` (line {line_no}): {msg}"),
        (None, Some(k)) => format!("key `{k}` (line {line_no}): {msg}"),
        _ => format!("line {line_no}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        agent: Agent,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Agent {
        name: String,
        role: crate::role::Role,
    }

    fn err(text: &str) -> String {
        describe(text, &toml::from_str::<Doc>(text).unwrap_err())
    }

    #[test]
    fn names_the_key_of_a_bad_value() {
        let e = err("[agent]\nname = \"a\"\nrole = \"edge\"\n");
        assert!(e.starts_with("key `agent.role` (line 3):"), "{e}");
        assert!(e.contains("edge"), "{e}");
    }

    #[test]
    fn names_an_unknown_key_and_a_missing_one() {
        let e = err("[agent]\nname = \"a\"\nrole = \"dp\"\nzone = 1\n");
        assert!(
            e.contains("agent.zone") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("[agent]\nname = \"a\"\n");
        assert!(
            e.contains("[agent]") && e.contains("missing field `role`"),
            "{e}"
        );
    }

    #[test]
    fn a_linked_file_resolves_relative_paths_beside_the_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("repo");
        std::fs::create_dir(&real_dir).unwrap();
        std::fs::write(real_dir.join("fleet.toml"), "x = 1\n").unwrap();
        let link = dir.path().join("fleet.toml");
        std::os::unix::fs::symlink(real_dir.join("fleet.toml"), &link).unwrap();
        let (text, base) = read_file(&link).unwrap();
        assert_eq!(text, "x = 1\n");
        assert_eq!(base, std::fs::canonicalize(&real_dir).unwrap());
        // A plain file keeps its own directory, as given.
        let (_, base) = read_file(&real_dir.join("fleet.toml")).unwrap();
        assert_eq!(base, real_dir);
    }
}
