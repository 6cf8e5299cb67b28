//! The `fleet.toml` an Ansible inventory becomes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use rollgate::role::Role;

use super::model::Inventory;

/// What the operator chose on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub cp_group: String,
    pub dp_group: String,
    /// The agents' port when a host has no `rollgate_agent_port`.
    pub port: u16,
    /// Where the inventory came from, for the header comment.
    pub source: String,
}

/// A rendered `fleet.toml`.
#[derive(Debug)]
pub struct Rendered {
    pub toml: String,
    pub cps: usize,
    pub dps: usize,
    /// Hosts in neither group: not rollgate's, left out.
    pub left_out: Vec<String>,
}

struct Entry {
    name: String,
    address: SocketAddr,
    role: Role,
    group: Option<String>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Text for a `#` comment: control characters (a newline would end the
/// comment, others are not allowed in TOML) escaped.
fn in_comment(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

pub fn render(inv: &Inventory, o: &Options) -> Result<Rendered, String> {
    let resolved = inv.resolve()?;
    let known: Vec<&str> = inv.groups.keys().map(String::as_str).collect();
    let group = |name: &str, flag: &str| {
        if let Some(m) = resolved.members.get(name) {
            Ok(m)
        } else {
            Err(format!(
                "no group `{name}` in the inventory (groups: {}); name it with {flag}",
                known.join(", ")
            ))
        }
    };
    let cps = group(&o.cp_group, "--cp-group")?;
    let dps = group(&o.dp_group, "--dp-group")?;
    let mut entries = Vec::new();
    let mut left_out = Vec::new();
    for (host, own) in inv.host_vars() {
        let role = match resolved.var(&host, &own, "rollgate_role").as_deref() {
            Some("cp") => Role::Cp,
            Some("dp") => Role::Dp,
            Some(other) => {
                return Err(format!(
                    "host `{host}`: rollgate_role = {other:?} is not a role (cp or dp)"
                ));
            }
            None => match (cps.contains(&host), dps.contains(&host)) {
                (true, true) => {
                    return Err(format!(
                        "host `{host}` is in both the CP group `{}` and the DP group `{}`: its role is ambiguous; set rollgate_role=cp or dp on it",
                        o.cp_group, o.dp_group
                    ));
                }
                (true, false) => Role::Cp,
                (false, true) => Role::Dp,
                (false, false) => {
                    left_out.push(host);
                    continue;
                }
            },
        };
        rollgate::ids::check_host_name(&host).map_err(|e| format!("host `{host}`: {e}"))?;
        let reached = resolved
            .var(&host, &own, "ansible_host")
            .unwrap_or_else(|| host.clone());
        let ip: IpAddr = reached.parse().map_err(|_| {
            format!(
                "host `{host}`: address {reached:?} is not an IP address; set ansible_host to the IP its agent listens on (fleet.toml takes IP addresses)"
            )
        })?;
        let port = match resolved.var(&host, &own, "rollgate_agent_port") {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("host `{host}`: rollgate_agent_port = {p:?} is not a port")
            })?,
            None => o.port,
        };
        entries.push(Entry {
            name: host.clone(),
            address: SocketAddr::new(ip, port),
            role,
            group: resolved.var(&host, &own, "rollgate_group"),
        });
    }
    if !entries.iter().any(|e| e.role == Role::Cp) {
        return Err(format!("no CP host: the group `{}` holds none", o.cp_group));
    }
    let mut seen: BTreeMap<SocketAddr, &str> = BTreeMap::new();
    for e in &entries {
        if let Some(other) = seen.insert(e.address, &e.name) {
            return Err(format!(
                "hosts `{other}` and `{}` have the same agent address {}",
                e.name, e.address
            ));
        }
    }
    // CPs first, then DPs, each by name: the order a rollout goes in.
    entries.sort_by(|a, b| (a.role != Role::Cp, &a.name).cmp(&(b.role != Role::Cp, &b.name)));
    let (ncp, ndp) = (
        entries.iter().filter(|e| e.role == Role::Cp).count(),
        entries.iter().filter(|e| e.role == Role::Dp).count(),
    );
    let mut t = format!(
        "# rollgate inventory, imported from the Ansible inventory {source}\n\
         # (`rollgate inventory import --ansible`): {ncp} CP and {ndp} DP host(s),\n\
         # CPs from group `{cp}`, DPs from group `{dp}`.\n",
        source = in_comment(&o.source),
        cp = in_comment(&o.cp_group),
        dp = in_comment(&o.dp_group),
    );
    if !left_out.is_empty() {
        t.push_str(&format!(
            "# Left out (in neither group): {}.\n",
            in_comment(&left_out.join(", "))
        ));
    }
    t.push_str(
        "# Relative paths are relative to this file's directory. Unknown keys are refused.\n\n\
         [tls]   # `rollgate certs init --dir certs --agent NAME=ADDRESS ...` writes these\n\
         ca = \"certs/ca.pem\"\n\
         cert = \"certs/rollgate-coordinator.pem\"\n\
         key = \"certs/rollgate-coordinator.key\"\n\n\
         [coordinator]\n\
         state_dir = \"rollgate-state\"   # rollout journals, the fleet lock, backup copies\n\n\
         [policy]   # the defaults; see `rollgate upgrade --help`\n\
         # batch = \"25%\"\n# canary = 1\n# min_healthy = \"10s\"\n# min_in_service = 1\n",
    );
    for e in &entries {
        t.push_str(&format!(
            "\n[[hosts]]\nname = {}\naddress = {}\nrole = {}\n",
            quote(&e.name),
            quote(&e.address.to_string()),
            quote(if e.role == Role::Cp { "cp" } else { "dp" }),
        ));
        if let Some(g) = &e.group {
            t.push_str(&format!("labels = {{ group = {} }}\n", quote(g)));
        }
    }
    Ok(Rendered {
        toml: t,
        cps: ncp,
        dps: ndp,
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ini, yaml};
    use super::*;

    fn opts() -> Options {
        Options {
            cp_group: "cps".into(),
            dp_group: "dps".into(),
            port: 7443,
            source: "hosts".into(),
        }
    }

    /// The rendered text parses as an inventory (certificates aside).
    fn hosts_of(r: &Rendered) -> Vec<(String, String, String)> {
        let raw = crate::inventory::parse(&r.toml, std::path::Path::new("/etc/rollgate"))
            .unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
        raw.hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    h.address.to_string(),
                    format!("{:?}", h.role).to_lowercase(),
                )
            })
            .collect()
    }

    #[test]
    fn an_ini_inventory_with_nested_groups_and_ranges_round_trips() {
        let inv = ini::parse(
            "[cps]\ncp-1 ansible_host=10.0.0.10\n\
             [zone_a]\n10.0.1.[11:30]\n\
             [zone_b]\ndp-b ansible_host=10.0.2.11 rollgate_agent_port=7444\n\
             [dps:children]\nzone_a\nzone_b\n\
             [zone_a:vars]\nrollgate_group=a\n\
             [db]\npg-1 ansible_host=10.0.9.1\n",
        )
        .unwrap();
        let r = render(&inv, &opts()).unwrap();
        let hosts = hosts_of(&r);
        assert_eq!((r.cps, r.dps), (1, 21));
        assert_eq!(
            hosts[0],
            ("cp-1".into(), "10.0.0.10:7443".into(), "cp".into())
        );
        assert!(hosts.contains(&("10.0.1.30".into(), "10.0.1.30:7443".into(), "dp".into())));
        assert!(hosts.contains(&("dp-b".into(), "10.0.2.11:7444".into(), "dp".into())));
        assert_eq!(r.left_out, ["pg-1"]);
        assert!(r.toml.contains("labels = { group = \"a\" }"), "{}", r.toml);
        assert!(r.toml.contains("# Left out (in neither group): pg-1."));
    }

    #[test]
    fn control_characters_in_left_out_names_stay_inside_the_comment() {
        let inv = ini::parse("[cps]\ncp-1 ansible_host=10.0.0.1\n[dps]\n[db]\npg\u{1}x\n").unwrap();
        let r = render(&inv, &opts()).unwrap();
        assert!(r.toml.contains("pg\\u{1}x"), "{}", r.toml);
        hosts_of(&r);
    }

    #[test]
    fn a_yaml_inventory_round_trips() {
        let inv = yaml::parse(
            "all:\n  vars:\n    rollgate_agent_port: 7500\n  children:\n    cps:\n      hosts:\n        cp-1: {ansible_host: 10.0.0.10}\n    dps:\n      children:\n        edge:\n          hosts:\n            dp-1: {ansible_host: 10.0.1.11}\n            dp-2: {ansible_host: 10.0.1.12, rollgate_agent_port: 7501}\n",
        )
        .unwrap();
        let hosts = hosts_of(&render(&inv, &opts()).unwrap());
        assert_eq!(
            hosts,
            [
                ("cp-1".into(), "10.0.0.10:7500".into(), "cp".into()),
                ("dp-1".into(), "10.0.1.11:7500".into(), "dp".into()),
                ("dp-2".into(), "10.0.1.12:7501".into(), "dp".into()),
            ]
        );
    }

    #[test]
    fn unknown_ambiguous_and_unreachable_hosts_are_named() {
        for (text, says) in [
            (
                "[cps]\ncp-1 ansible_host=10.0.0.1\n[dps]\ncp-1\n",
                "host `cp-1` is in both",
            ),
            (
                "[cps]\ncp-1 ansible_host=10.0.0.1 rollgate_role=edge\n[dps]\n",
                "host `cp-1`: rollgate_role = \"edge\"",
            ),
            (
                "[cps]\ncp-1 ansible_host=10.0.0.1\n[dps]\ndp01.example.net\n",
                "host `dp01.example.net`: address \"dp01.example.net\" is not an IP",
            ),
            ("[cps]\ncp-1 ansible_host=10.0.0.1\n", "no group `dps`"),
            ("[dps]\ndp-1 ansible_host=10.0.0.1\n[cps]\n", "no CP host"),
            (
                "[cps]\ncp-1 ansible_host=10.0.0.1\n[dps]\ndp-1 ansible_host=10.0.0.1 rollgate_agent_port=7443\n",
                "same agent address",
            ),
        ] {
            let inv = ini::parse(text).unwrap();
            let e = render(&inv, &opts()).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
