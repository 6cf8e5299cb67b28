//! Ansible's INI inventory: `[group]` host lines (`name key=value …`),
//! `[group:children]`, `[group:vars]`; hosts before any section are in
//! `ungrouped`; `#` and `;` start comments.

use super::model::{Inventory, Vars, expand};

/// Splits a line into words, honouring '…' and "…" quotes; a word that
/// starts with `#` ends the line.
fn words(line: &str, n: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None if c == '#' && !in_word => break,
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("line {n}: a quote is not closed"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn key_value(word: &str, n: usize) -> Result<(String, String), String> {
    match word.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("line {n}: `{word}` is not key=value")),
    }
}

enum Section {
    Hosts(String),
    Children(String),
    Vars(String),
}

pub fn parse(text: &str) -> Result<Inventory, String> {
    let mut inv = Inventory::default();
    let mut section = Section::Hosts("ungrouped".into());
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[') {
            let head = head
                .strip_suffix(']')
                .ok_or_else(|| format!("line {n}: `{line}` has no closing `]`"))?;
            section = match head.split_once(':') {
                None => Section::Hosts(head.to_string()),
                Some((g, "children")) => Section::Children(g.to_string()),
                Some((g, "vars")) => Section::Vars(g.to_string()),
                Some((_, kind)) => {
                    return Err(format!(
                        "line {n}: section `[{head}]`: unknown kind `{kind}` (children or vars)"
                    ));
                }
            };
            let name = match &section {
                Section::Hosts(g) | Section::Children(g) | Section::Vars(g) => g.clone(),
            };
            if name.is_empty() {
                return Err(format!("line {n}: a section without a group name"));
            }
            inv.group_mut(&name);
            continue;
        }
        let w = words(line, n)?;
        match &section {
            Section::Hosts(g) => {
                let mut vars = Vars::new();
                for kv in &w[1..] {
                    let (k, v) = key_value(kv, n)?;
                    vars.insert(k, v);
                }
                for host in expand(&w[0]).map_err(|e| format!("line {n}: {e}"))? {
                    inv.group_mut(g).hosts.push((host, vars.clone()));
                }
            }
            Section::Children(g) => {
                if w.len() != 1 {
                    return Err(format!(
                        "line {n}: `[{g}:children]` lists one group per line"
                    ));
                }
                inv.group_mut(&w[0]);
                inv.group_mut(g).children.insert(w[0].clone());
            }
            Section::Vars(g) => {
                // `key=value`, or `key = value` with spaces around `=`.
                let joined = w.join("");
                let (k, v) = key_value(&joined, n)?;
                inv.group_mut(g).vars.insert(k, v);
            }
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_children_vars_ranges_and_quotes() {
        let inv = parse(
            "lonely\n\
             [cps]\ncp-1 ansible_host=10.0.0.10 # the CP\n\
             [dps_a]\ndp[01:02].example.net rollgate_group=\"edge a\"\n\
             [dps:children]\ndps_a\n\
             [dps:vars]\nrollgate_agent_port = 7444\n",
        )
        .unwrap();
        assert_eq!(inv.groups["ungrouped"].hosts[0].0, "lonely");
        assert_eq!(inv.groups["cps"].hosts[0].1["ansible_host"], "10.0.0.10");
        let dps = inv.members("dps").unwrap();
        assert_eq!(
            dps.into_iter().collect::<Vec<_>>(),
            ["dp01.example.net", "dp02.example.net"]
        );
        assert_eq!(inv.groups["dps_a"].hosts[1].1["rollgate_group"], "edge a");
        assert_eq!(inv.groups["dps"].vars["rollgate_agent_port"], "7444");
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, says) in [
            ("[cps\nx", "line 1"),
            ("[cps:weird]\n", "unknown kind"),
            (
                "[cps]\nh ansible_host\n",
                "line 2: `ansible_host` is not key=value",
            ),
            ("[cps]\nh a='x\n", "quote"),
            ("[cps]\nh[3:1]\n", "ends before it starts"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
