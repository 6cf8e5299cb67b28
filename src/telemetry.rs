//! Logging for both binaries: tracing to stderr, as text or JSON lines.
//!
//! `RUST_LOG` picks what is logged (default `info` for the agent, `warn` for
//! the coordinator): a list of `level` and `target=level` directives, such as
//! `info,rollgate::fleet=debug`. Stdout stays free for a command's own output
//! (`--output json` documents).
//!
//! The filter is tracing-subscriber's `Targets`, not its `EnvFilter`: the
//! agent runs on every host, and `EnvFilter`'s span and field matching links
//! a regex engine (≈ 230 KiB of code, resident in every agent) for a syntax
//! nobody filtering a daemon's log needs.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter `rust_log` asks for, else `default_level`; a `rust_log` that
/// does not parse is reported (once logging works) and the default used.
fn filter(rust_log: Option<&str>, default_level: &str) -> (Targets, Option<String>) {
    let fallback = || Targets::from_str(default_level).unwrap_or_default();
    match rust_log {
        Some(s) if !s.trim().is_empty() => match Targets::from_str(s) {
            Ok(t) => (t, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "RUST_LOG={s:?} is not a list of `level` or `target=level` directives ({e}); logging at {default_level}"
                )),
            ),
        },
        _ => (fallback(), None),
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat, default_level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (targets, complaint) = filter(rust_log.as_deref(), default_level);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The filter is the registry's first layer, a global one: a callsite it
    // disables is never looked at again (a per-layer filter would be asked
    // at every event and span of tonic, h2 and hyper).
    let registry = tracing_subscriber::registry().with(targets);
    // A second init (tests that call it twice) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Some(c) = complaint {
        tracing::warn!("{c}");
    }
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    use super::*;

    #[test]
    fn rust_log_directives_pick_levels_per_target() {
        let (t, c) = filter(Some("warn,rollgate::fleet=debug"), "info");
        assert!(c.is_none());
        assert!(t.would_enable("rollgate::fleet::grpc", &tracing::Level::DEBUG));
        assert!(!t.would_enable("rollgate::driver", &tracing::Level::INFO));
    }

    #[test]
    fn without_rust_log_the_default_level_holds() {
        for unset in [None, Some(""), Some("  ")] {
            let (t, c) = filter(unset, "info");
            assert!(c.is_none());
            assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        }
    }

    #[test]
    fn a_bad_rust_log_is_named_and_the_default_kept() {
        let (t, c) = filter(Some("rollgate=loud"), "info");
        let c = c.expect("a complaint");
        assert!(c.contains("RUST_LOG=\"rollgate=loud\""), "{c}");
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
    }
}
