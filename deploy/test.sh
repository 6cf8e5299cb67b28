#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs missing prerequisites, builds
# every binary once (rollgate, rollgate-agent, demo-gateway), then runs all
# unit and end-to-end tests, then fuzzes each parser briefly.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/prereqs.sh
# One build of everything the tests spawn; the tests find demo-gateway next to
# the rollgate binaries.
cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci "$@"
else
  cargo test --workspace --locked "$@"
fi
# A short fuzz run of every parser of untrusted bytes (the corpus replay is
# one of the tests above); says so and goes on when no nightly toolchain.
# Skipped when arguments chose some tests only.
[ $# -gt 0 ] || deploy/fuzz.sh --seconds "${ROLLGATE_FUZZ_SECONDS:-10}"
