#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs missing prerequisites, builds
# every binary once (rollgate, rollgate-agent, demo-gateway), then runs all
# unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/prereqs.sh
# One build of everything the tests spawn; the tests find demo-gateway next to
# the rollgate binaries.
cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --profile ci "$@"
else
  exec cargo test --workspace --locked "$@"
fi
