//! Command-line parsing shared by both binaries: clap's own usage errors exit
//! with 2, which rollgate reserves for "blocked by plan"; bad usage is 64.

use std::process::ExitCode;

use crate::exit;

/// Parses the command line, or prints clap's message and returns the exit
/// code to end with (0 for --help/--version, 64 for bad usage).
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(exit::USAGE)
        } else {
            ExitCode::from(exit::OK)
        }
    })
}
