//! `rollgate inventory import`: a fleet.toml from an Ansible inventory.

use std::path::Path;

use crate::Failure;
use crate::ansible;
use crate::cli::ImportArgs;

pub fn import(a: &ImportArgs) -> Result<(), Failure> {
    let usage = |e: String| Failure::Usage(format!("{}: {e}", a.ansible.display()));
    let inv = ansible::read(&a.ansible).map_err(usage)?;
    let opts = ansible::Options {
        cp_group: a.cp_group.clone(),
        dp_group: a.dp_group.clone(),
        port: a.port,
        source: a.ansible.display().to_string(),
    };
    let r = ansible::render(&inv, &opts).map_err(usage)?;
    // What is written must be what `rollgate` reads: checked before writing.
    let base = a
        .output
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    crate::inventory::parse(&r.toml, base)
        .map_err(|e| Failure::Failed(format!("the imported inventory does not read back: {e}")))?;
    if !r.left_out.is_empty() {
        eprintln!(
            "rollgate: left out, in neither `{}` nor `{}`: {}",
            a.cp_group,
            a.dp_group,
            r.left_out.join(", ")
        );
    }
    match &a.output {
        None => print!("{}", r.toml),
        Some(out) => {
            if out.exists() && !a.force {
                return Err(Failure::Usage(format!(
                    "{} exists; nothing was written (--force replaces it)",
                    out.display()
                )));
            }
            rollgate::fsx::write_atomic(out, r.toml.as_bytes()).map_err(|e| {
                tracing::error!(file = %out.display(), error = %e, "cannot write the inventory");
                Failure::Failed(format!("cannot write {}: {e}", out.display()))
            })?;
            eprintln!(
                "rollgate: wrote {} ({} CP, {} DP)",
                out.display(),
                r.cps,
                r.dps
            );
        }
    }
    Ok(())
}
