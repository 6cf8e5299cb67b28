//! Ansible's YAML inventory: top-level groups (usually `all`), each with
//! `hosts` (name → vars or nothing), `children` (name → group) and `vars`.

use serde_json::Value;

use super::model::{Inventory, Vars, expand};

pub fn parse(text: &str) -> Result<Inventory, String> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut inv = Inventory::default();
    match doc {
        Value::Object(groups) => {
            for (name, def) in groups {
                group(&mut inv, &name, &def)?;
            }
        }
        Value::Null => {}
        _ => return Err("the top level must map group names to groups".into()),
    }
    Ok(inv)
}

fn group(inv: &mut Inventory, name: &str, def: &Value) -> Result<(), String> {
    inv.group_mut(name);
    let def = match def {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => {
            return Err(format!(
                "group `{name}`: must be a mapping (hosts, children, vars)"
            ));
        }
    };
    for (key, v) in def {
        match key.as_str() {
            "hosts" => {
                for (pattern, hv) in mapping(v, &format!("group `{name}`: hosts"))? {
                    let vars = vars(hv, &format!("host `{pattern}`"))?;
                    for host in expand(pattern)? {
                        inv.group_mut(name).hosts.push((host, vars.clone()));
                    }
                }
            }
            "children" => {
                for (child, cv) in mapping(v, &format!("group `{name}`: children"))? {
                    inv.group_mut(name).children.insert(child.clone());
                    group(inv, child, cv)?;
                }
            }
            "vars" => {
                let vs = vars(v, &format!("group `{name}`: vars"))?;
                inv.group_mut(name).vars.extend(vs);
            }
            other => {
                return Err(format!(
                    "group `{name}`: unknown key `{other}` (hosts, children or vars)"
                ));
            }
        }
    }
    Ok(())
}

/// A mapping, or nothing (an empty `hosts:`).
fn mapping<'a>(v: &'a Value, what: &str) -> Result<Vec<(&'a String, &'a Value)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => Ok(m.iter().collect()),
        _ => Err(format!("{what}: must be a mapping")),
    }
}

fn vars(v: &Value, what: &str) -> Result<Vars, String> {
    let mut out = Vars::new();
    for (k, v) in mapping(v, what)? {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            // Lists and mappings are kept as JSON; rollgate reads none.
            other => other.to_string(),
        };
        out.insert(k.clone(), s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_children_host_vars_and_ranges() {
        let inv = parse(
            "all:\n  vars:\n    rollgate_agent_port: 7443\n  children:\n    cps:\n      hosts:\n        cp-1:\n          ansible_host: 10.0.0.10\n    dps:\n      children:\n        zone_a:\n          hosts:\n            dp[1:2].example.net:\n          vars:\n            rollgate_group: a\n",
        )
        .unwrap();
        assert_eq!(inv.members("all").unwrap().len(), 3);
        assert_eq!(inv.members("dps").unwrap().len(), 2);
        assert_eq!(inv.groups["cps"].hosts[0].1["ansible_host"], "10.0.0.10");
        assert_eq!(inv.groups["all"].vars["rollgate_agent_port"], "7443");
        assert_eq!(inv.groups["zone_a"].vars["rollgate_group"], "a");
    }

    #[test]
    fn a_bad_shape_is_named() {
        for (text, says) in [
            ("- a\n- b\n", "top level"),
            ("all:\n  hostz: {}\n", "unknown key `hostz`"),
            ("all:\n  hosts: [a, b]\n", "must be a mapping"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
