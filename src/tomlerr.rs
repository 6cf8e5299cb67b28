//! Reading TOML config files, and turning parse errors into one line that
//! names the key.
//!
//! toml's messages say what is wrong ("unknown variant `edge`") and give a
//! byte span; this adds the dotted key at that span and its line number, so
//! "role = \"edge\"" in `[agent]` reads `key \`agent.role\` (line 3): ...`.

/// Reads a config file: its text, and the directory its relative paths are
/// relative to.
pub fn read_file(path: &std::path::Path) -> Result<(String, &std::path::Path), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
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
}
