//! `rollgate inventory import --ansible FILE`: an Ansible inventory (INI or
//! YAML) turned into a `fleet.toml`.
//!
//! Ansible's model, as far as rollgate needs it: groups hold hosts, child
//! groups and variables; a host belongs to a group directly or through its
//! children; `ansible_host` is where it is reached. Here:
//! - the role is the group: a host in the CP group's closure is a CP, in the
//!   DP group's closure a DP; a host var `rollgate_role = cp|dp` overrides
//!   it. In both groups, or a `rollgate_role` that is neither, is an error
//!   naming the host. Hosts in neither group (databases, bastions) are not
//!   rollgate's: they are left out and listed.
//! - the address is `ansible_host` (host vars first, then the vars of the
//!   groups it is in, the more specific group winning), else the inventory
//!   name; the agent port is `rollgate_agent_port`, else `--port`.
//! - `rollgate_group` becomes the host's `group` label (its gateway group).

mod ini;
mod model;
mod render;
mod yaml;

use std::path::Path;

pub use model::Inventory;
pub use render::{Options, render};

/// Reads an Ansible inventory file: YAML when it looks like YAML (`.yml`,
/// `.yaml`, or a first meaningful line ending in `:`), INI otherwise.
pub fn read(path: &Path) -> Result<Inventory, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && l != &"---");
    let yaml = matches!(ext, "yml" | "yaml")
        || text.trim_start().starts_with("---")
        || first.is_some_and(|l| l.ends_with(':') && !l.starts_with('['));
    if yaml {
        yaml::parse(&text)
    } else {
        ini::parse(&text)
    }
}
