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

# A short fuzz run of every parser of untrusted bytes follows the tests (the
# corpus replay is one of the tests); skipped when arguments chose some tests
# only. Its build (cargo-fuzz and the instrumented targets, minutes) runs
# while the tests do, at the lowest CPU priority: the end-to-end tests mostly
# wait on the processes they start, so it takes what they leave idle.
fuzz_build=
fuzz_log=target/fuzz-build.log
if [ $# -eq 0 ]; then
  mkdir -p target
  # Its own process group, so an early exit stops cargo with it.
  setsid nice -n 19 deploy/fuzz.sh --build-only >"$fuzz_log" 2>&1 &
  fuzz_build=$!
  trap '[ -z "$fuzz_build" ] || kill -- "-$fuzz_build" 2>/dev/null || true' EXIT
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci "$@"
else
  cargo test --workspace --locked "$@"
fi

if [ -n "$fuzz_build" ]; then
  if ! wait "$fuzz_build"; then
    fuzz_build=
    cat "$fuzz_log" >&2
    echo "deploy/test.sh: building the fuzz targets failed (above)" >&2
    exit 1
  fi
  fuzz_build=
  # Says so and goes on when no nightly toolchain (as the build step did, in
  # its log).
  deploy/fuzz.sh --seconds "${ROLLGATE_FUZZ_SECONDS:-10}"
fi
