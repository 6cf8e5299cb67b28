//! Groups, hosts and variables, whichever syntax they came in.

use std::collections::{BTreeMap, BTreeSet};

/// Variables: strings (numbers and booleans as Ansible would print them).
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Group {
    /// Hosts listed directly in the group, in order, with their own vars.
    pub hosts: Vec<(String, Vars)>,
    pub children: BTreeSet<String>,
    pub vars: Vars,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Inventory {
    pub groups: BTreeMap<String, Group>,
}

impl Inventory {
    pub fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    /// Every host's own vars (a host listed in several groups: merged, the
    /// later listing winning, as Ansible does).
    pub fn host_vars(&self) -> BTreeMap<String, Vars> {
        let mut out: BTreeMap<String, Vars> = BTreeMap::new();
        for g in self.groups.values() {
            for (h, vars) in &g.hosts {
                out.entry(h.clone()).or_default().extend(vars.clone());
            }
        }
        out
    }

    /// The hosts of `group`, through its children; a cycle is an error.
    pub fn members(&self, group: &str) -> Result<BTreeSet<String>, String> {
        let mut out = BTreeSet::new();
        self.collect(group, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn collect(
        &self,
        group: &str,
        path: &mut Vec<String>,
        out: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        if path.iter().any(|p| p == group) {
            path.push(group.to_string());
            return Err(format!(
                "group `{}` contains itself: {}",
                group,
                path.join(" > ")
            ));
        }
        let Some(g) = self.groups.get(group) else {
            return Ok(());
        };
        path.push(group.to_string());
        out.extend(g.hosts.iter().map(|(h, _)| h.clone()));
        for c in &g.children {
            self.collect(c, path, out)?;
        }
        path.pop();
        Ok(())
    }

    /// Every group's members and depth, computed once (a cycle is an
    /// error), for looking up many hosts' variables.
    pub fn resolve(&self) -> Result<Resolved<'_>, String> {
        let mut members = BTreeMap::new();
        for name in self.groups.keys() {
            members.insert(name.as_str(), self.members(name)?);
        }
        let mut depth = BTreeMap::new();
        for name in self.groups.keys() {
            depth.insert(name.as_str(), self.depth(name, &mut Vec::new()));
        }
        Ok(Resolved {
            inv: self,
            members,
            depth,
        })
    }

    /// How deep `group` sits below the groups that are nobody's child
    /// (cycles were refused before this is asked).
    fn depth(&self, group: &str, path: &mut Vec<String>) -> usize {
        if path.iter().any(|p| p == group) {
            return 0;
        }
        path.push(group.to_string());
        let d = self
            .groups
            .iter()
            .filter(|(_, g)| g.children.contains(group))
            .map(|(p, _)| 1 + self.depth(p, path))
            .max()
            .unwrap_or(usize::from(group != "all"));
        path.pop();
        d
    }
}

/// An inventory with its groups' closures worked out.
pub struct Resolved<'a> {
    inv: &'a Inventory,
    pub members: BTreeMap<&'a str, BTreeSet<String>>,
    depth: BTreeMap<&'a str, usize>,
}

impl Resolved<'_> {
    /// A variable of `host`: its own, else from the deepest group it is in
    /// (a child group's vars win over its parent's; `all` comes last).
    pub fn var(&self, host: &str, own: &Vars, key: &str) -> Option<String> {
        if let Some(v) = own.get(key) {
            return Some(v.clone());
        }
        let mut best: Option<(usize, &String)> = None;
        for (name, g) in &self.inv.groups {
            let Some(v) = g.vars.get(key) else { continue };
            if !self.members[name.as_str()].contains(host) {
                continue;
            }
            let depth = self.depth[name.as_str()];
            if best.is_none_or(|(d, _)| depth > d) {
                best = Some((depth, v));
            }
        }
        best.map(|(_, v)| v.clone())
    }
}

/// The most hosts one pattern may stand for.
const MAX_HOSTS: usize = 100_000;
const TOO_MANY: &str = "expands to more than 100,000 hosts";

/// Expands Ansible host ranges: `dp[01:20].example.net` (zero padding kept),
/// `node[a:c]`, `web[1:9:2]`; several ranges multiply. A name without one
/// is itself.
pub fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("host pattern `{pattern}`: `[` without `]`"))?;
    let (head, spec, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let bad = |why: &str| format!("host pattern `{pattern}`: range `[{spec}]` {why}");
    let parts: Vec<&str> = spec.split(':').collect();
    let (from, to, step) = match parts.as_slice() {
        [a, b] => (*a, *b, 1usize),
        [a, b, s] => (
            *a,
            *b,
            s.parse::<usize>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad("has a bad step"))?,
        ),
        _ => return Err(bad("must be [start:end] or [start:end:step]")),
    };
    let items: Vec<String> = if let (Ok(a), Ok(b)) = (from.parse::<u64>(), to.parse::<u64>()) {
        if a > b {
            return Err(bad("ends before it starts"));
        }
        if (b - a) / step as u64 >= MAX_HOSTS as u64 {
            return Err(bad(TOO_MANY));
        }
        let width = if from.len() > 1 && from.starts_with('0') {
            from.len()
        } else {
            0
        };
        (a..=b)
            .step_by(step)
            .map(|n| format!("{n:0width$}"))
            .collect()
    } else if let ([a], [b]) = (from.as_bytes(), to.as_bytes()) {
        if !a.is_ascii_alphabetic() || !b.is_ascii_alphabetic() || a > b {
            return Err(bad("must be numbers or single letters in order"));
        }
        (*a..=*b)
            .step_by(step)
            .map(|c| (c as char).to_string())
            .collect()
    } else {
        return Err(bad("must be numbers or single letters"));
    };
    let rests = expand(tail)?;
    if items.len().saturating_mul(rests.len()) > MAX_HOSTS {
        return Err(bad(TOO_MANY));
    }
    let mut out = Vec::new();
    for rest in rests {
        for i in &items {
            out.push(format!("{head}{i}{rest}"));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_with_padding_letters_steps_and_products() {
        assert_eq!(
            expand("dp[01:03].example.net").unwrap(),
            ["dp01.example.net", "dp02.example.net", "dp03.example.net"]
        );
        assert_eq!(expand("n[a:c]").unwrap(), ["na", "nb", "nc"]);
        assert_eq!(expand("w[1:9:4]").unwrap(), ["w1", "w5", "w9"]);
        assert_eq!(
            expand("r[1:2]-[a:b]").unwrap(),
            ["r1-a", "r1-b", "r2-a", "r2-b"]
        );
        assert_eq!(expand("plain").unwrap(), ["plain"]);
        for bad in [
            "x[3:1]",
            "x[1:2",
            "x[a:3]",
            "x[1:5:0]",
            "x[1]",
            "x[0:999999]",
            "x[0:999][0:999]",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn members_follow_children_and_a_cycle_is_an_error() {
        let mut inv = Inventory::default();
        inv.group_mut("dps").children.insert("zone_a".into());
        inv.group_mut("zone_a")
            .hosts
            .push(("dp-1".into(), Vars::new()));
        inv.group_mut("dps")
            .hosts
            .push(("dp-2".into(), Vars::new()));
        assert_eq!(inv.members("dps").unwrap().len(), 2);
        inv.group_mut("zone_a").children.insert("dps".into());
        assert!(inv.members("dps").unwrap_err().contains("contains itself"));
    }
}
