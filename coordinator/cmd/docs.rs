//! `rollgate completions` and `rollgate man`: shell completions and man
//! pages rendered from the clap definitions themselves, so they cannot
//! drift from the options the binaries accept.

use std::path::Path;

use clap::CommandFactory;

use crate::Failure;
use crate::cli::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "rollgate", &mut std::io::stdout());
}

/// Writes rollgate.1, rollgate-<subcommand>.1 for every subcommand (nested
/// ones too) and rollgate-agent.8 into `dir`.
pub fn man(dir: &Path) -> Result<(), Failure> {
    let failed = |what: &str, e: std::io::Error| {
        tracing::error!(dir = %dir.display(), error = %e, what, "cannot write man pages");
        Failure::Failed(format!("cannot write {what} in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed("the directory", e))?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| failed("rollgate's pages", e))?;
    let agent = rollgate::cli::AgentArgs::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(agent)
        .section("8")
        .render(&mut page)
        .map_err(|e| failed("rollgate-agent.8", e))?;
    std::fs::write(dir.join("rollgate-agent.8"), page)
        .map_err(|e| failed("rollgate-agent.8", e))?;
    let written = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    println!("{written} man pages in {}", dir.display());
    Ok(())
}
